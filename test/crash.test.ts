/**
 * Crash safety: a process writing a snapshot (SnapshotWriter, `ramsnap
 * create`, `ramsnap convert`), patching one (`ramsnap patch`) or rewriting
 * one (`ramsnap sparsify`) is killed with SIGKILL at random points in
 * every phase (test/helpers/crash-child.ts slows each operation down and
 * says which phase it is in), or given an I/O error in the middle of its
 * writes, and what it leaves is checked. Then disk full: a tmpfs of 8 MiB
 * (ENOSPC) and a file size limit (`ulimit -f`, EFBIG).
 *
 * What holds (docs/writers.md §6, §7; the per-phase tables are printed):
 * - writers: nothing is at the target until the rename; after it, the
 *   complete file. A killed run leaves at most one temporary file
 *   `.TARGET.ramsnap-tmp-PID-RANDOM` and the lock `.TARGET.ramsnap-lock`;
 *   the next writer of the target removes both, one notice each.
 * - sparsify: the path always holds a file that verifies and reads as the
 *   same guest memory with the same layout.
 * - patch, killed anywhere: a reader (ramsnap's, through analyze/open.ts)
 *   either refuses the file with PATCH_IN_PROGRESS or finds it complete
 *   with exactly the original or exactly the patched memory; the marker is
 *   never there without its journal. After `ramsnap patch --recover` the
 *   file verifies and is the original when the kill came before the
 *   journal was finished, the patched file after.
 * - an I/O error in the middle: one line with the code, exit 1, nothing
 *   at the target, no temporary file, no lock; a patch whose error came
 *   after its journal was finished is refused until recovered, and then
 *   fully patched.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PlanOptions } from '../format/layout.js';
import { Snapshot } from '../reader/snapshot.js';
import { PATCH_MARKER } from '../writer/journal.js';
import { intendedPage, type Job } from './helpers/crash-child.js';
import { pageBytes } from './helpers/synth.js';
import { BIN, CHILD, beside, cli, isLockTemp, lastPhase, memory, nextWriterRun, pool, readerView, rng, runChild, sameMemory, tally, writeSynth, type ChildRun } from './faults/harness.js';

const PS = 4096;
const SEED = Number(process.env.CRASH_SEED ?? Date.now() % 1e9);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-crash-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
const random = rng(SEED);

/** A killed child must have been killed (or have finished): any other exit is a failure of the test itself. */
function killed(r: ChildRun): ChildRun {
  if (r.signal !== 'SIGKILL' && r.code !== 0) throw new Error(`child failed (${r.code}): ${r.stderr}`);
  return r;
}

/**
 * What a killed writer left beside `target`: at most one temporary file of
 * the killed pid and maybe the lock, nothing else; then the next run
 * removes them, one notice each.
 */
async function leftBehindIsCleaned(target: string, pid: number, ctx: string): Promise<{ temps: number; lock: boolean }> {
  const b = beside(target);
  expect(b.others, ctx).toEqual([]);
  expect(b.journal, ctx).toBe(false);
  expect(b.temps.length, ctx).toBeLessThanOrEqual(1);
  for (const t of b.temps) expect(t, ctx).toContain(`-tmp-${pid}-`);
  const next = await nextWriterRun(target);
  expect(next.after, ctx).toEqual({ temps: [], lock: false, journal: false, others: [] });
  const removed = next.notices.filter((n) => n.startsWith('removed stale temporary file '));
  expect(removed.length, ctx).toBe(b.temps.length);
  expect(next.notices.some((n) => n.startsWith('took over the lock of ')), ctx).toBe(b.lock);
  return { temps: b.temps.length, lock: b.lock };
}

const WRITER_PHASES = ['start', 'lock', 'head', 'pages', 'bitmaps', 'tail', 'fsync:tail', 'rename', 'renamed', 'dirsync', 'unlock'];

describe('SIGKILL while writing a snapshot', () => {
  it('never leaves a file at the target unless the rename happened; the next run cleans the temp file and the lock', { timeout: 90_000 }, async () => {
    const plan: PlanOptions = { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 48 * PS }, { name: 'pc.rom', usedLength: 8 * PS }], streamOffset: 0 };
    // Round 0 holds the child at the phase, so its kill lands there on a loaded machine too; round 1 lets it run on.
    const schedule: { at?: string; delay: number; hold?: boolean }[] = [];
    for (let round = 0; round < 2; round++) for (const p of WRITER_PHASES) schedule.push({ at: p, delay: random() * 12, hold: round === 0 });
    for (let i = 0; i < 4; i++) schedule.push({ at: 'start', delay: random() * 250 });
    const rows = await pool(
      3,
      schedule.map((s, i) => async () => {
        const dir = path.join(work, `write-${i}`);
        fs.mkdirSync(dir);
        const target = path.join(dir, 'out.snap');
        const k = killed(await runChild({ mode: 'write', target, plan, seed: SEED + i, delayMs: 3, holdAt: s.hold ? s.at : undefined }, s.at, s.delay));
        const last = lastPhase(k);
        const ctx = `seed ${SEED}, run ${i}, killed in ${last} (${k.phases.join(' > ')})`;
        const renamed = k.phases.includes('renamed');
        let outcome: string;
        if (fs.existsSync(target)) {
          // Only the rename puts a file here, and then it is the complete one.
          expect(renamed || last === 'rename', ctx).toBe(true);
          const mem = await memory(target);
          plan.blocks.forEach((b, bi) => {
            const want = Buffer.alloc(b.usedLength);
            for (let p = 0; p < b.usedLength / PS; p++) {
              const page = intendedPage(bi, p, PS, SEED + i);
              if (page) want.set(page, p * PS);
            }
            expect(mem.get(b.name)!.equals(want), ctx).toBe(true);
          });
          expect(beside(target).temps, ctx).toEqual([]);
          outcome = 'complete at target';
        } else {
          expect(renamed, ctx).toBe(false);
          outcome = 'nothing at target';
        }
        const left = await leftBehindIsCleaned(target, k.pid, ctx);
        return { phase: last, outcome: `${outcome}${left.temps ? ', temp' : ''}${left.lock ? ', lock' : ''} left` };
      }),
    );
    const t = tally(rows);
    console.log(`writer kills (seed ${SEED}):`, JSON.stringify(t));
    for (const p of ['head', 'pages', 'bitmaps', 'tail', 'fsync:tail', 'rename']) expect(Object.keys(t), `no kill landed in ${p}`).toContain(p);
  });
});

/** A synthetic mapped-ram file with device state: `n` pages, two thirds present, stale bytes under clear bits. */
function convertInput(file: string, n = 96): void {
  const pages = new Map<number, Uint8Array>();
  for (let p = 0; p < n; p++) if (p % 3 !== 1) pages.set(p, pageBytes(PS, p + 3));
  writeSynth(file, { blocks: [{ name: 'pc.ram', usedLength: n * PS, pages }, { name: 'pc.rom', usedLength: 4 * PS, pages: new Map([[2, pageBytes(PS, 9)]]) }], staleBytes: true });
}

describe('SIGKILL during ramsnap create and convert (the CLI, in-process in the child)', () => {
  const commands: { name: string; argv: (input: string, out: string) => string[] }[] = [
    { name: 'create', argv: (input, out) => ['create', '-o', out, '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${input}`] },
    { name: 'convert to legacy', argv: (input, out) => ['convert', input, '-o', out, '--to', 'legacy'] },
    { name: 'convert to mapped-ram', argv: (input, out) => ['convert', input, '-o', out, '--to', 'mapped-ram'] },
  ];
  for (const c of commands) {
    it(`${c.name}: the target is absent or byte for byte the uninterrupted output; the next run cleans up`, { timeout: 90_000 }, async () => {
      const base = path.join(work, `${c.name.replace(/ /g, '-')}-input`);
      if (c.name === 'create') fs.writeFileSync(base, pageBytes(256 * PS, 17));
      else convertInput(base, 512);
      // The uninterrupted output, and how long an instrumented run works (from its first phase to its end).
      const refDir = path.join(work, `${c.name.replace(/ /g, '-')}-ref`);
      fs.mkdirSync(refDir);
      const ref = path.join(refDir, 'out.snap');
      const full = await runChild({ mode: 'cli', argv: c.argv(base, ref), delayMs: 3 });
      expect(full.code, full.stderr).toBe(0);
      const want = fs.readFileSync(ref);
      const workMs = full.ms - full.phaseAt.open;
      const rows = await pool(
        3,
        Array.from({ length: 14 }, (_, i) => async () => {
          const dir = path.join(work, `${c.name.replace(/ /g, '-')}-${i}`);
          fs.mkdirSync(dir);
          const out = path.join(dir, 'out.snap');
          const k = killed(await runChild({ mode: 'cli', argv: c.argv(base, out), layout: c.name === 'convert to legacy' ? undefined : ref, delayMs: 3 }, 'open', random() * workMs * 1.05));
          const last = lastPhase(k);
          const ctx = `seed ${SEED}, ${c.name} run ${i}, killed in ${last} (${k.phases.join(' > ')})`;
          let outcome = 'nothing at target';
          if (fs.existsSync(out)) {
            expect(k.phases.includes('renamed') || last === 'rename', ctx).toBe(true);
            expect(fs.readFileSync(out).equals(want), ctx).toBe(true);
            outcome = 'complete at target';
          }
          const left = await leftBehindIsCleaned(out, k.pid, ctx);
          return { phase: last, outcome: `${outcome}${left.temps ? ', temp' : ''}${left.lock ? ', lock' : ''} left` };
        }),
      );
      const t = tally(rows);
      console.log(`${c.name} kills (seed ${SEED}):`, JSON.stringify(t));
      expect(rows.some((r) => r.outcome.startsWith('nothing')), 'no kill landed before the rename').toBe(true);
      expect(rows.some((r) => r.outcome.includes('temp')), 'no kill landed while the temporary file was being written').toBe(true);
    });
  }
});

/** pc.ram of 160 pages: 0..63 present (non-zero), 64..127 absent, 128..159 present; stale bytes in an absent slot. */
function patchBase(file: string): void {
  const pages = new Map<number, Uint8Array>();
  for (let p = 0; p < 160; p++) if (p < 64 || p >= 128) pages.set(p, pageBytes(PS, p + 11));
  writeSynth(file, { blocks: [{ name: 'pc.ram', usedLength: 160 * PS, pages }], staleBytes: true });
}

/** Alternating non-zero and zero pages (relative to the block), so the patch is many runs. */
function patchData(at: number, length: number): Uint8Array {
  const d = pageBytes(length, 5);
  for (let i = 0; i < length; i++) if (d[i] === 0) d[i] = 1;
  for (let p = Math.floor(at / PS); p * PS < at + length; p += 2) d.fill(0, Math.max(0, p * PS - at), Math.min(length, (p + 1) * PS - at));
  return d;
}

/** Phases of a patch, in order. Before the journal is finished the patch has not happened; after, it has (or will, at recovery). */
const PATCH_PHASES = ['lock', 'hidden', 'fsync:hidden', 'journal', 'fsync:journal', 'dirsync:journal', 'invalidate', 'fsync:invalidate', 'pages', 'bitmaps', 'fsync:bitmaps', 'restore', 'fsync:restore', 'unlink:journal', 'dirsync', 'unlock'];
const BEFORE_JOURNAL = new Set(['open', 'lock', 'hidden', 'fsync:hidden']);
const AFTER_JOURNAL = new Set(PATCH_PHASES.slice(PATCH_PHASES.indexOf('fsync:journal')).concat('done'));

interface PatchCase {
  name: string;
  at: number;
  length: number;
}

const PATCH_CASES: PatchCase[] = [
  { name: 'absent pages only', at: 64 * PS, length: 64 * PS },
  { name: 'present and absent pages, across page boundaries', at: 40 * PS + 100, length: 50 * PS },
];

async function patchFixture(c: PatchCase, tag: string): Promise<{ base: string; dataFile: string; original: Map<string, Buffer>; patched: Map<string, Buffer> }> {
  const base = path.join(work, `patch-base-${tag}.snap`);
  patchBase(base);
  const dataFile = path.join(work, `patch-data-${tag}`);
  const data = patchData(c.at, c.length);
  fs.writeFileSync(dataFile, data);
  const original = await memory(base);
  const ram = Buffer.from(original.get('pc.ram')!);
  ram.set(data, c.at);
  return { base, dataFile, original, patched: new Map([['pc.ram', ram]]) };
}

/** Names a settled file's memory. */
function which(mem: Map<string, Buffer>, original: Map<string, Buffer>, patched: Map<string, Buffer>): 'original' | 'patched' | 'mixed' {
  return sameMemory(mem, original) ? 'original' : sameMemory(mem, patched) ? 'patched' : 'mixed';
}

describe('SIGKILL during ramsnap patch', () => {
  for (const c of PATCH_CASES) {
    it(`${c.name}: refused or exactly original/patched; after --recover, original before the journal is finished, patched after`, { timeout: 120_000 }, async () => {
      const { base, dataFile, original, patched } = await patchFixture(c, String(c.at));
      const schedule: { at?: string; delay: number; hold?: boolean }[] = [];
      for (let round = 0; round < 2; round++) for (const p of PATCH_PHASES) schedule.push({ at: p, delay: random() * (p === 'pages' || p === 'journal' || p === 'hidden' ? 30 : 10), hold: round === 0 });
      const rows = await pool(
        3,
        schedule.map((s, i) => async () => {
          const dir = path.join(work, `patch-${c.at}-${i}`);
          fs.mkdirSync(dir);
          const file = path.join(dir, 'vm.snap');
          fs.copyFileSync(base, file);
          const argv = ['patch', file, '--block', 'pc.ram', '--at', String(c.at), '--data-file', dataFile];
          const k = killed(await runChild({ mode: 'cli', argv, layout: file, delayMs: 3, holdAt: s.hold ? s.at : undefined }, s.at, s.delay));
          const last = lastPhase(k);
          const ctx = `seed ${SEED}, ${c.name}, run ${i}, killed in ${last} (${k.phases.join(' > ')})`;
          // Before recovery: refused, or complete and exactly one of the two.
          const left = beside(file);
          expect(left.others, ctx).toEqual([]);
          // A patch writes in place: its only possible temporary file is a lock it was taking.
          expect(left.temps.filter((t) => !isLockTemp(path.join(dir, t))), ctx).toEqual([]);
          const marked = fs.readFileSync(file).subarray(0, 4).toString('latin1') === PATCH_MARKER;
          if (marked) expect(left.journal, `${ctx}: marker without journal`).toBe(true);
          const view = await readerView(file);
          let before: string;
          if (view.complete) {
            before = which(view.mem, original, patched);
            expect(before, ctx).not.toBe('mixed');
          } else {
            expect(view.code, ctx).toBe('PATCH_IN_PROGRESS');
            before = 'refused';
          }
          // QEMU's view: the magic is QEVM exactly when ramsnap's strict reader could open the file.
          if (marked) await expect(Snapshot.open(file)).rejects.toMatchObject({ code: 'BAD_MAGIC' });
          // Recovery through the CLI.
          const r = await cli(['patch', file, '--recover']);
          expect(r.code, `${ctx}: ${r.stderr}`).toBe(0);
          expect(beside(file), ctx).toEqual({ temps: [], lock: false, journal: false, others: [] });
          const after = await readerView(file);
          expect(after.complete, ctx).toBe(true);
          const settled = which((after as { mem: Map<string, Buffer> }).mem, original, patched);
          expect(settled, ctx).not.toBe('mixed');
          if (BEFORE_JOURNAL.has(last)) expect(settled, ctx).toBe('original');
          if (AFTER_JOURNAL.has(last)) expect(settled, ctx).toBe('patched');
          if (view.complete) expect(settled, `${ctx}: a complete file changed at recovery`).toBe(before);
          return { phase: last, outcome: `${before} -> ${settled}` };
        }),
      );
      const t = tally(rows);
      console.log(`patch kills, ${c.name} (seed ${SEED}):`, JSON.stringify(t));
      const want = ['journal', 'invalidate', 'bitmaps', 'restore'].concat(c.name.startsWith('present') ? ['pages'] : []);
      for (const p of want) expect(Object.keys(t), `no kill landed in ${p}`).toContain(p);
      expect(rows.some((r) => r.outcome === 'refused -> original'), 'no kill landed before the journal was finished').toBe(true);
    });
  }

  it('a kill during recovery is recovered the same way', { timeout: 60_000 }, async () => {
    const c = PATCH_CASES[1];
    const { base, dataFile, original, patched } = await patchFixture(c, 'rerecover');
    const outcomes: string[] = [];
    for (let i = 0; i < 4; i++) {
      const dir = path.join(work, `rerecover-${i}`);
      fs.mkdirSync(dir);
      const file = path.join(dir, 'vm.snap');
      fs.copyFileSync(base, file);
      killed(await runChild({ mode: 'cli', argv: ['patch', file, '--block', 'pc.ram', '--at', String(c.at), '--data-file', dataFile], layout: file, delayMs: 3 }, 'pages', 1));
      expect(beside(file).journal).toBe(true);
      const k = killed(await runChild({ mode: 'cli', argv: ['patch', file, '--recover'], layout: file, delayMs: 3 }, ['invalidate', 'pages', 'bitmaps', 'restore'][i], 2));
      const r = await cli(['patch', file, '--recover']);
      expect(r.code, r.stderr).toBe(0);
      const v = await readerView(file);
      expect(v.complete && which(v.mem, original, patched), `killed in ${lastPhase(k)}`).toBe('patched');
      outcomes.push(lastPhase(k));
    }
    console.log('recovery kills:', outcomes.join(', '));
  });
});

describe('SIGKILL during ramsnap sparsify', () => {
  it('the path always holds a verifying file with the same guest memory and layout; the next run cleans up', { timeout: 90_000 }, async () => {
    const base = path.join(work, 'sparsify-base.snap');
    const pages = new Map<number, Uint8Array>();
    for (let p = 0; p < 96; p++) pages.set(p, p % 4 === 1 ? new Uint8Array(PS) : pageBytes(PS, p));
    writeSynth(base, { blocks: [{ name: 'pc.ram', usedLength: 96 * PS, pages }, { name: 'pc.rom', usedLength: 4 * PS, pages: new Map([[0, pageBytes(PS, 1)]]) }], streamOffset: 777, staleBytes: true });
    const original = await memory(base, { offset: 777 });
    const s0 = await Snapshot.open(base, { offset: 777 });
    const layout = s0.blocks.map((b) => ({ ...b.mappedRam }));
    await s0.close();
    const schedule: { at?: string; delay: number; hold?: boolean }[] = [];
    for (let round = 0; round < 2; round++) for (const p of ['open', 'lock', ...WRITER_PHASES.slice(2)]) schedule.push({ at: p, delay: random() * 12, hold: round === 0 });
    const rows = await pool(
      3,
      schedule.map((s, i) => async () => {
        const dir = path.join(work, `sparsify-${i}`);
        fs.mkdirSync(dir);
        const file = path.join(dir, 'vm.snap');
        fs.copyFileSync(base, file);
        const ino = fs.statSync(file).ino;
        const k = killed(await runChild({ mode: 'cli', argv: ['sparsify', file, '--offset', '777'], layout: file, offset: 777, delayMs: 3, holdAt: s.hold ? s.at : undefined }, s.at, s.delay));
        const last = lastPhase(k);
        const ctx = `seed ${SEED}, run ${i}, killed in ${last} (${k.phases.join(' > ')})`;
        const snap = await Snapshot.open(file, { offset: 777 });
        expect(snap.blocks.map((b) => ({ ...b.mappedRam })), ctx).toEqual(layout);
        for (const b of snap.blocks) expect(Buffer.from(await snap.read(b, 0, b.usedLength)).equals(original.get(b.name)!), ctx).toBe(true);
        await snap.close();
        const replaced = fs.statSync(file).ino !== ino;
        if (replaced) expect(beside(file).temps, ctx).toEqual([]);
        const left = await leftBehindIsCleaned(file, k.pid, ctx);
        return { phase: last, outcome: `${replaced ? 'sparsified' : 'original'}${left.temps ? ', temp' : ''}${left.lock ? ', lock' : ''} left` };
      }),
    );
    const t = tally(rows);
    console.log(`sparsify kills (seed ${SEED}):`, JSON.stringify(t));
    for (const p of ['head', 'pages', 'bitmaps', 'tail', 'fsync:tail', 'rename']) expect(Object.keys(t), `no kill landed in ${p}`).toContain(p);
  });
});

const oneLine = (stderr: string, code: string): void => {
  expect(stderr.trimEnd().split('\n'), stderr).toHaveLength(1);
  expect(stderr).toMatch(new RegExp(`^ramsnap: ${code}: `));
};

describe('an I/O error in the middle of a write (EIO from an fs that fails the n-th write)', () => {
  const writers: { name: string; argv: (input: string, out: string) => string[]; fail: string; writes: number }[] = [
    { name: 'create', argv: (input, out) => ['create', '-o', out, '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${input}`], fail: 'pages', writes: 3 },
    { name: 'convert to legacy', argv: (input, out) => ['convert', input, '-o', out, '--to', 'legacy'], fail: 'write', writes: 3 },
    { name: 'convert to mapped-ram', argv: (input, out) => ['convert', input, '-o', out, '--to', 'mapped-ram'], fail: 'pages', writes: 3 },
  ];
  for (const w of writers) {
    it(`${w.name}: one line IO_EIO, exit 1, nothing at the target, no temporary file, no lock`, { timeout: 30_000 }, async () => {
      const input = path.join(work, `eio-${w.name.replace(/ /g, '-')}-in`);
      // 4 MiB and more: several page writes, and several 1 MiB flushes of the legacy writer.
      if (w.name === 'create') fs.writeFileSync(input, pageBytes(1024 * PS, 17));
      else convertInput(input, 1536);
      const ref = path.join(work, `eio-${w.name.replace(/ /g, '-')}-ref.snap`);
      expect((await cli(w.argv(input, ref))).code).toBe(0);
      for (const nth of [1, 1 + Math.floor(random() * w.writes)]) {
        const dir = fs.mkdtempSync(path.join(work, 'eio-'));
        const out = path.join(dir, 'out.snap');
        const r = await runChild({ mode: 'cli', argv: w.argv(input, out), layout: w.name === 'convert to legacy' ? undefined : ref, delayMs: 0, fail: { phase: w.fail, nth, errno: 'EIO' } });
        expect(r.code, r.stderr).toBe(1);
        oneLine(r.stderr, 'IO_EIO');
        expect(fs.readdirSync(dir)).toEqual([]);
      }
    });
  }

  it('sparsify: one line IO_EIO, exit 1, the original untouched, nothing left beside it', async () => {
    const dir = fs.mkdtempSync(path.join(work, 'eio-'));
    const file = path.join(dir, 'vm.snap');
    convertInput(file);
    const bytes = fs.readFileSync(file);
    const r = await runChild({ mode: 'cli', argv: ['sparsify', file], layout: file, delayMs: 0, fail: { phase: 'pages', nth: 5, errno: 'EIO' } });
    expect(r.code, r.stderr).toBe(1);
    oneLine(r.stderr, 'IO_EIO');
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    expect(fs.readFileSync(file).equals(bytes)).toBe(true);
  });

  const c = PATCH_CASES[1];
  for (const at of ['hidden', 'journal', 'pages', 'bitmaps']) {
    const started = at === 'pages' || at === 'bitmaps';
    it(`patch, error in ${at}: one line IO_EIO, exit 1; ${started ? 'refused until --recover, then fully patched' : 'the original, no journal'}`, { timeout: 30_000 }, async () => {
      const { base, dataFile, original, patched } = await patchFixture(c, `eio-${at}`);
      const dir = fs.mkdtempSync(path.join(work, 'eio-'));
      const file = path.join(dir, 'vm.snap');
      fs.copyFileSync(base, file);
      const nth = at === 'bitmaps' ? 1 : 2; // one bitmap write
      const r = await runChild({ mode: 'cli', argv: ['patch', file, '--block', 'pc.ram', '--at', String(c.at), '--data-file', dataFile], layout: file, delayMs: 0, fail: { phase: at, nth, errno: 'EIO' } });
      expect(r.code, r.stderr).toBe(1);
      oneLine(r.stderr, 'IO_EIO');
      const view = await readerView(file);
      if (started) {
        expect(r.stderr).toContain(`ramsnap patch --recover ${file}`);
        expect(view).toEqual({ complete: false, code: 'PATCH_IN_PROGRESS' });
        const v = await cli(['verify', file]);
        expect(v.code).toBe(1);
        oneLine(v.stderr, 'PATCH_IN_PROGRESS');
        expect((await cli(['patch', file, '--recover'])).code).toBe(0);
        const after = await readerView(file);
        expect(after.complete && which(after.mem, original, patched)).toBe('patched');
      } else {
        expect(view.complete && which(view.mem, original, patched)).toBe('original');
      }
      expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    });
  }
});

describe('disk full', () => {
  let mnt: string | undefined;
  beforeAll(() => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-tmpfs-'));
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir]);
    if (r.status === 0) mnt = dir;
    else fs.rmSync(dir, { recursive: true, force: true });
  });
  afterAll(() => {
    if (mnt) {
      spawnSync('umount', [mnt]);
      fs.rmSync(mnt, { recursive: true, force: true });
    }
  });

  it('tmpfs of 8 MiB: the writer fails with IO_ENOSPC, exit 1, nothing at the target, no temp file', async (ctx) => {
    if (!mnt) return ctx.skip();
    const dir = path.join(mnt, 'w');
    fs.mkdirSync(dir);
    const target = path.join(dir, 'big.snap');
    const plan: PlanOptions = { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 4096 * PS }] };
    const job: Job = { mode: 'write', target, plan, seed: 1, delayMs: 0 };
    const r = await cli([], process.execPath, [CHILD, JSON.stringify(job)]);
    expect(r.code).toBe(1);
    oneLine(r.stderr, 'IO_ENOSPC');
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('tmpfs of 8 MiB: create and convert fail mid-way with IO_ENOSPC, exit 1, nothing left', async (ctx) => {
    if (!mnt) return ctx.skip();
    const dir = path.join(mnt, 'c');
    fs.mkdirSync(dir);
    // The inputs live elsewhere: only the output fills the tmpfs.
    const image = path.join(work, 'enospc-image');
    fs.writeFileSync(image, pageBytes(2560 * PS, 3)); // 10 MiB of non-zero pages
    const c = await cli(['create', '-o', path.join(dir, 'c.snap'), '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${image}`]);
    expect(c.code, c.stderr).toBe(1);
    oneLine(c.stderr, 'IO_ENOSPC');
    expect(fs.readdirSync(dir)).toEqual([]);
    const snap = path.join(work, 'enospc-input.snap');
    expect((await cli(['create', '-o', snap, '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${image}`])).code).toBe(0);
    for (const to of ['legacy', 'mapped-ram']) {
      const v = await cli(['convert', snap, '-o', path.join(dir, `${to}.snap`), '--to', to]);
      expect(v.code).toBe(1);
      oneLine(v.stderr, 'IO_ENOSPC');
      expect(fs.readdirSync(dir)).toEqual([]);
    }
  });

  it('tmpfs of 8 MiB: sparsify and patch fail with IO_ENOSPC and leave the file as it was', async (ctx) => {
    if (!mnt) return ctx.skip();
    const dir = path.join(mnt, 's');
    fs.mkdirSync(dir);
    const file = path.join(dir, 'vm.snap');
    // 5 MiB of present pages: a second copy does not fit.
    const pages = new Map<number, Uint8Array>();
    for (let p = 0; p < 1280; p++) pages.set(p, pageBytes(PS, p + 1));
    writeSynth(file, { blocks: [{ name: 'pc.ram', usedLength: 3072 * PS, pages }] });
    const before = fs.readFileSync(file);
    const memBefore = (await memory(file)).get('pc.ram')!;
    const s = await cli(['sparsify', file]);
    expect(s.code).toBe(1);
    oneLine(s.stderr, 'IO_ENOSPC');
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    // Patch 7 MiB into the absent pages: their bytes (written before the journal, under clear bits) run out of space.
    const p = await cli(['patch', file, '--block', 'pc.ram', '--at', String(1280 * PS), '--fill', '7', '--length', String(1792 * PS)]);
    expect(p.code).toBe(1);
    oneLine(p.stderr, 'IO_ENOSPC');
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    expect((await memory(file)).get('pc.ram')!.equals(memBefore)).toBe(true);
    // Patch 4 MiB of present pages: the journal holding their new bytes does not fit; the file is not touched.
    const q = await cli(['patch', file, '--block', 'pc.ram', '--at', '0', '--fill', '9', '--length', String(1024 * PS)]);
    expect(q.code).toBe(1);
    oneLine(q.stderr, 'IO_ENOSPC');
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    const view = await readerView(file);
    expect(view.complete && view.mem.get('pc.ram')!.equals(memBefore)).toBe(true);
    const snap = await Snapshot.open(file);
    expect(snap.block('pc.ram').pagesPresent).toBe(1280);
    await snap.close();
  });

  it('ulimit -f: sparsify, create and a patch journal fail with IO_EFBIG, exit 1, nothing left', async () => {
    const dir = path.join(work, 'efbig');
    fs.mkdirSync(dir);
    const file = path.join(dir, 'vm.snap');
    const pages = new Map<number, Uint8Array>();
    for (let p = 0; p < 512; p++) if (p < 384 || p % 2 === 0) pages.set(p, pageBytes(PS, p + 1));
    writeSynth(file, { blocks: [{ name: 'pc.ram', usedLength: 512 * PS, pages }] });
    const before = fs.readFileSync(file);
    const memBefore = await memory(file);
    // 1 MiB limit (1024-byte blocks). Node ignores SIGXFSZ, so the write fails with EFBIG.
    const limited = (args: string[]) => cli([], 'bash', ['-c', `ulimit -f 1024; exec "${process.execPath}" "${BIN}" ${args.map((a) => `"${a}"`).join(' ')}`]);
    const r = await limited(['sparsify', file]);
    expect(r.code).toBe(1);
    oneLine(r.stderr, 'IO_EFBIG');
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    const image = path.join(work, 'efbig-image');
    fs.writeFileSync(image, pageBytes(512 * PS, 4));
    const c = await limited(['create', '-o', path.join(dir, 'c.snap'), '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${image}`]);
    expect(c.code).toBe(1);
    oneLine(c.stderr, 'IO_EFBIG');
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    // 1.5 MiB over present pages: the journal passes the limit before the file is touched.
    const p = await limited(['patch', file, '--block', 'pc.ram', '--at', '0', '--fill', '3', '--length', String(384 * PS)]);
    expect(p.code).toBe(1);
    oneLine(p.stderr, 'IO_EFBIG');
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    const view = await readerView(file);
    expect(view.complete && sameMemory(view.mem, memBefore)).toBe(true);
    expect(fs.readFileSync(file).subarray(0, 4).toString('latin1')).toBe('QEVM');
  });
});
