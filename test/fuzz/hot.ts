/**
 * The fuzzer's hot path: one mutated image, read in this thread from
 * memory (no file, no CLI), through everything that reads a snapshot:
 *
 * - strict and lenient opens (the walk and every rule verify reports), with
 *   the device sections decoded;
 * - reads of every block (start, middle, end, the whole of a small block)
 *   and its present runs;
 * - the `dump --state` document;
 * - the guest-physical map, reads through it, and the ELF core's segments
 *   and CPU notes;
 * - the instant-restore plan, the SVG plot, the delta record, and the
 *   diff against the unmutated seed both ways;
 * - on a sample (`writers`), the writers that take a snapshot in memory:
 *   export (ELF), the instant-restore stream, delta and apply against the
 *   reference, and extract, into a scratch
 *   directory on tmpfs; a failed writer must leave nothing behind.
 *
 * The same rules as check.ts: whatever is thrown must be a RamsnapError
 * with a code (a format error with a field and an offset inside the file
 * for an open), and the strict and lenient opens agree.
 */
import fs from 'node:fs';
import path from 'node:path';
import { stateDocument } from '../../analyze/dump-state.js';
import { encodeNotes } from '../../format/elf.js';
import { coreSegments } from '../../format/phys-map.js';
import { pythonJson } from '../../format/vmstate.js';
import { extractBlocks } from '../../reader/extract.js';
import { PhysicalMemory, memoryMap } from '../../reader/phys.js';
import { Snapshot, type OpenOptions } from '../../reader/snapshot.js';
import { planRestore } from '../../vm/restore-plan.js';
import { writeRestoreStream } from '../../vm/restore-stream.js';
import { applyDeltas, deltaOf, writeDelta } from '../../writer/delta.js';
import { coreNotes, exportSnapshot } from '../../writer/export.js';
import { plotSnapshot } from '../../writer/plot.js';
import { diffSnapshots } from '../../reader/diff.js';
import { Run, peakHeap, resetPeak, sampleHeap, type FixtureBase, type InputResult } from './check.js';
import { ImageSource } from './map.js';
import { applyRecipe, type Recipe } from './mutate.js';

/** Blocks read per input (a mutated file may declare thousands). */
const MAX_BLOCKS = 64;
/** A block up to this size is also read whole. */
const WHOLE_BLOCK = 1 << 20;
/** Guest-physical ranges read per input. */
const MAX_RANGES = 32;

export interface HotOptions {
  /**
   * The snapshot diff, delta and apply compare the input with: its seed
   * unmutated, or for a delta seed the delta's base.
   */
  reference?: FixtureBase;
  /** Also plot the snapshot and diff it against the reference (default true). */
  compare?: boolean;
  /** Also open strictly, and check that it fails on the rule the lenient open names (default true). */
  strict?: boolean;
  /** Also run the writers that take a Snapshot (export, restore stream, extract) into `scratch`. */
  writers?: boolean;
  /** A directory of this worker's own, emptied after each sampled input. */
  scratch?: string;
}

export async function runHot(base: FixtureBase, recipe: Recipe, opts: HotOptions = {}): Promise<InputResult> {
  const t0 = performance.now();
  resetPeak();
  const img = applyRecipe(base.image, recipe);
  const source = new ImageSource(img, 'input.snap');
  const run = new Run(() => img.size, false);
  run.steps.mutate = performance.now() - t0;
  const openOpts: OpenOptions = base.offset !== undefined ? { offset: base.offset } : {};

  const strict = opts.strict === false ? undefined : await run.guard('open strict', async () => (await Snapshot.open(source, openOpts)).close());
  const lenient = await run.guard('open lenient', () => Snapshot.open(source, { ...openOpts, lenient: true, decodeDevices: true }));
  if (!lenient.ok) {
    if (!strict) return result(run, lenient.code, t0);
    const primary = strict.ok ? 'OK' : strict.code;
    if (!strict.ok && lenient.code !== primary && primary !== 'CRASH' && lenient.code !== 'CRASH') run.fail('inconsistent', 'open', `strict open: ${primary}, lenient open threw ${lenient.code}`);
    return result(run, primary, t0);
  }
  const snap = lenient.value;
  const m = snap.model;
  const lenientCode = m.error?.code ?? 'OK';
  const primary = !strict ? lenientCode : strict.ok ? 'OK' : strict.code;
  if (lenientCode !== primary && primary !== 'CRASH') run.fail('inconsistent', 'open', `strict open: ${primary}, lenient open: ${lenientCode}`);

  for (const b of m.blocks.slice(0, MAX_BLOCKS)) {
    if (b.pages === 0) continue;
    const n = Math.min(b.usedLength, 2 * b.pageSize);
    for (const at of [0, b.usedLength - n, Math.floor(b.pages / 2) * b.pageSize]) {
      if (at < 0 || at + n > b.usedLength) continue;
      await run.guard('read', () => snap.read(b, at, n));
    }
    if (b.usedLength <= WHOLE_BLOCK) await run.guard('read', () => snap.read(b, 0, b.usedLength));
    await run.guard('presentRuns', async () => {
      let k = 0;
      for (const _ of snap.presentRuns(b)) if (++k > 100_000) break;
    });
  }
  await run.guard('dump', async () => pythonJson(stateDocument(m)));

  // Guest-physical memory: the machine's map (its type, the block sizes and chipset registers all come from the file).
  const map = await run.guard('map', () => memoryMap(snap));
  if (map.ok) {
    const phys = new PhysicalMemory(snap, map.value);
    for (const r of map.value.ranges.slice(0, MAX_RANGES)) {
      const n = Math.min(r.length, 16);
      await run.guard('phys', () => phys.read(r.start, n));
      await run.guard('phys', () => phys.read(r.start + r.length - n, n));
    }
    await run.guard('phys', () => phys.read(0xfffffff0, 16));
    await run.guard('core', async () => {
      coreSegments(map.value);
      const notes = coreNotes(snap, map.value);
      return encodeNotes(notes.notes, notes.littleEndian);
    });
  }
  const plan = await run.guard('restore plan', async () => planRestore(snap, '/fuzz/input.snap'));
  await run.guard('delta', async () => deltaOf(snap));
  const ref = opts.reference ? await referenceSnapshot(opts.reference) : undefined;
  if (opts.compare !== false) {
    // The plot and the diff both ways against the reference (each costs about a fifth of an open).
    await run.guard('plot', () => plotSnapshot(snap, { format: 'svg' }));
  }
  if (ref && opts.compare !== false) {
    await run.guard('diff', () => diffSnapshots(ref, snap));
    await run.guard('diff', () => diffSnapshots(snap, ref));
  }

  if (opts.writers && opts.scratch) {
    const dir = opts.scratch;
    const leftovers = (step: string): void => {
      const left = fs.readdirSync(dir);
      if (left.length) run.fail('escape', step, `a failed ${step} left ${left.join(', ')}`);
    };
    const writer = async (step: string, out: string, fn: () => Promise<unknown>): Promise<void> => {
      const r = await run.guard(step, fn);
      if (!r.ok) leftovers(step);
      fs.rmSync(out, { recursive: true, force: true });
    };
    const core = path.join(dir, 'core');
    await writer('export', core, () => exportSnapshot(snap, core, { format: 'elf' }));
    const stream = path.join(dir, 'stream');
    const mapped = new Set(plan.ok ? [plan.value.block.name] : m.blocks.slice(0, 1).map((b) => b.name));
    await writer('restore stream', stream, () => writeRestoreStream(snap, mapped, stream));
    if (ref) {
      // The input as the new side of a delta, and as a delta applied to the reference.
      const delta = path.join(dir, 'delta');
      await writer('delta', delta, () => writeDelta(ref, snap, delta));
      const applied = path.join(dir, 'applied');
      await writer('apply', applied, () => applyDeltas(ref, [{ snap, path: 'input.snap' }], applied));
    }
    const out = path.join(dir, 'blocks');
    fs.mkdirSync(out);
    const outputs = m.blocks.slice(0, 8).map((block, i) => ({ block, path: path.join(out, `b${i}.raw`) }));
    const r = await run.guard('extract', () => extractBlocks(snap, outputs));
    if (!r.ok && fs.readdirSync(out).length) run.fail('escape', 'extract', `a failed extract left ${fs.readdirSync(out).join(', ')}`);
    fs.rmSync(out, { recursive: true, force: true });
    leftovers('writers');
  }
  await run.guard('close', () => snap.close());
  return result(run, primary, t0);
}

/** The reference snapshots, opened once each (they are read, never mutated); none for a seed that is not sound (the killed save). */
const references = new WeakMap<FixtureBase, Promise<Snapshot | undefined>>();
function referenceSnapshot(base: FixtureBase): Promise<Snapshot | undefined> {
  let p = references.get(base);
  if (!p) {
    p = Snapshot.open(new ImageSource(base.image, 'reference.snap'), { offset: base.offset, decodeDevices: true }).catch(() => undefined);
    references.set(base, p);
  }
  return p;
}

function result(run: Run, primary: string, t0: number): InputResult {
  sampleHeap();
  return { primary, codes: [...run.codes], failures: run.failures, ms: performance.now() - t0, peakHeap: peakHeap(), binaryRuns: 0, steps: run.steps };
}
