/**
 * The differential run: mutated seeds, each through ramsnap (verify,
 * extract) and through a fresh QEMU's loader, at most `jobs` QEMUs at a
 * time, tallied into the agreement matrix by class.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomRecipe, applyRecipe, type Recipe } from '../fuzz/mutate.js';
import type { SparseImage } from '../fuzz/image.js';
import { classify, type Row } from './classify.js';
import { explanationOf, type Explained } from './explained.js';
import { qemuLoad, type QemuVerdict } from './qemu-load.js';
import { ramsnapVerdict } from './ramsnap-side.js';
import type { DiffSeed } from './seeds.js';

export interface DiffOptions {
  seeds: DiffSeed[];
  inputs: number;
  seed: number;
  /** QEMUs at a time (the machine has 2 cores). */
  jobs: number;
  /** A load still running after this long is a hang. */
  timeoutMs: number;
  workDir: string;
  /** Where each class's first example goes (recipe, and the file for disagreements). */
  findingsDir?: string;
  /** Every Nth input also runs the real binary (0: never). */
  binaryEvery: number;
  bin?: string;
  /** Recipes to run instead of random ones. */
  replay?: Recipe[];
  log?: (s: string) => void;
}

export interface ClassTally {
  row: Row;
  cls: string;
  count: number;
  example: Recipe;
  detail: string;
  explained?: Explained;
}

export interface DiffReport {
  inputs: number;
  rows: Record<Row, number>;
  classes: ClassTally[];
  qemuHangs: number;
  qemuCrashes: number;
  binaryRuns: number;
  binaryMismatches: string[];
  /** Recipes generated but dropped as implausible. */
  dropped: number;
  ms: number;
}

/** The mutated file still names the seed's machine right after a QEVM version 3 header: QEMU gets as far as its sections. */
export function plausible(img: SparseImage, s: DiffSeed, recipe: Recipe): boolean {
  // A renamed block or section belongs to a VM the destination is not: QEMU refuses it by
  // configuration ("Unknown ramblock", "Unknown savevm section"), which says nothing about the file's format.
  if (recipe.ops.some((o) => o.op === 'rename')) return false;
  const at = s.load.offset ?? 0;
  const mt = Buffer.from(s.load.machineType, 'latin1');
  const head = Buffer.from(img.read(at, 13 + mt.length));
  return head.subarray(0, 8).equals(Buffer.from('QEVM\0\0\0\x03', 'latin1')) && head[8] === 0x07 && head.readUInt32BE(9) === mt.length && head.subarray(13).equals(mt);
}

function* recipes(o: DiffOptions, dropped: { n: number }): Generator<{ recipe: Recipe; seed: DiffSeed; image: SparseImage }> {
  const byName = new Map(o.seeds.map((s) => [s.name, s]));
  if (o.replay) {
    for (const recipe of o.replay) {
      const seed = byName.get(recipe.fixture);
      if (seed) yield { recipe, seed, image: applyRecipe(seed.image, recipe) };
    }
    return;
  }
  // The seeds themselves first: each must be row (a), or the harness, not the reader, is wrong.
  for (const seed of o.seeds) yield { recipe: { fixture: seed.name, origin: 'unmutated seed', ops: [] }, seed, image: seed.image };
  const maps = o.seeds.map((s) => s.map);
  for (let i = 0; ; i++) {
    const recipe = randomRecipe(maps, o.seed, i);
    const seed = byName.get(recipe.fixture) as DiffSeed;
    const image = applyRecipe(seed.image, recipe);
    if (plausible(image, seed, recipe)) yield { recipe, seed, image };
    else dropped.n++;
  }
}

let findings = 0;
/** The first example of a class: its recipe (replayable with DIFF_REPLAY), and for a disagreement the mutated file. */
function saveFinding(dir: string, t: ClassTally, image: SparseImage, withFile: boolean): void {
  fs.mkdirSync(dir, { recursive: true });
  const base = `${t.row}-${String(findings++).padStart(3, '0')}`;
  fs.writeFileSync(path.join(dir, `${base}.json`), JSON.stringify({ row: t.row, class: t.cls, detail: t.detail, recipe: t.example }, null, 2) + '\n');
  if (withFile) image.writeFile(path.join(dir, `${base}.snap`));
}

export async function runDifferential(o: DiffOptions): Promise<DiffReport> {
  const t0 = Date.now();
  const log = o.log ?? (() => undefined);
  const rows: Record<Row, number> = { 'agree-ok': 0, 'memory-differs': 0, 'false-accept': 0, stricter: 0, 'both-reject': 0, 'ramsnap-inconsistent': 0 };
  const classes = new Map<string, ClassTally>();
  const dropped = { n: 0 };
  const report: DiffReport = { inputs: 0, rows, classes: [], qemuHangs: 0, qemuCrashes: 0, binaryRuns: 0, binaryMismatches: [], dropped: 0, ms: 0 };
  const gen = recipes(o, dropped);
  let started = 0;
  const total = o.replay ? o.replay.length : o.inputs;

  async function lane(id: number): Promise<void> {
    const dir = path.join(o.workDir, `lane${id}`);
    for (;;) {
      if (started >= total) return;
      const next = gen.next();
      if (next.done) return;
      const index = started++;
      const { recipe, seed, image } = next.value;
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(dir, { recursive: true });
      const file = path.join(dir, 'input.snap');
      image.writeFile(file);
      const binary = o.bin !== undefined && o.binaryEvery > 0 && index % o.binaryEvery === 0;
      if (binary) report.binaryRuns++;
      const [r, q] = await Promise.all([
        ramsnapVerdict(file, seed.load.ramBlock, path.join(dir, 'ram.raw'), { offset: seed.load.offset, bin: binary ? o.bin : undefined }),
        qemuLoad(seed.load, file, dir, 'qemu', o.timeoutMs).catch((err: Error): QemuVerdict => ({ kind: 'crashed', error: `harness: ${err.message}`, ms: 0 })),
      ]);
      if (r.binaryMismatch) report.binaryMismatches.push(`${recipe.origin}: ${r.binaryMismatch}`);
      if (q.kind === 'hang') report.qemuHangs++;
      if (q.kind === 'crashed') report.qemuCrashes++;
      const out = classify(r, q);
      rows[out.row]++;
      report.inputs++;
      const explained = explanationOf(out.row, r, q, recipe, seed);
      // One class per explanation too: an input that matches a class's code and message but not its explanation is its own class.
      const key = `${out.row}|${out.cls}|${explained?.spec ?? ''}`;
      let t = classes.get(key);
      if (!t) {
        t = { row: out.row, cls: out.cls, count: 0, example: recipe, detail: out.detail, explained };
        classes.set(key, t);
        if (o.findingsDir) saveFinding(o.findingsDir, t, image, out.row !== 'agree-ok' && out.row !== 'both-reject');
        if (out.row !== 'agree-ok') log(`new class [${out.row}] ${out.cls}  (${recipe.fixture}: ${recipe.ops.map((x) => x.why).join('; ') || 'unmutated'})`);
      }
      t.count++;
      if (report.inputs % 100 === 0) log(`${report.inputs}/${total} inputs, ${Math.round((Date.now() - t0) / 1000)} s`);
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(2, o.jobs)) }, (_, i) => lane(i)));
  report.classes = [...classes.values()].sort((a, b) => a.row.localeCompare(b.row) || b.count - a.count);
  report.dropped = dropped.n;
  report.ms = Date.now() - t0;
  return report;
}

/** Disagreements that fail the run: false accepts, memory differences, unexplained stricter classes, ramsnap inconsistent with itself. */
export function failuresOf(r: DiffReport): ClassTally[] {
  return r.classes.filter((c) => (c.row === 'false-accept' || c.row === 'stricter') ? !c.explained : c.row === 'memory-differs' || c.row === 'ramsnap-inconsistent');
}
