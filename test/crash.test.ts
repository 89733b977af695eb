/**
 * Crash safety: a process writing a snapshot (SnapshotWriter), patching one
 * (`ramsnap patch`) or rewriting one (`ramsnap sparsify`) is killed with
 * SIGKILL at random points in every phase (test/helpers/crash-child.ts
 * slows each operation down and says which phase it is in), and what it
 * leaves is checked. Then disk full: a tmpfs of 8 MiB (ENOSPC) and a file
 * size limit (`ulimit -f`, EFBIG).
 *
 * What holds, per phase (the per-phase tables are printed):
 * - writer: nothing is at the target until the rename; after it, the
 *   complete file. A killed run leaves at most one temporary file, named
 *   `.TARGET.ramsnap-tmp-PID-RANDOM` (TEMP_MARK and the child's pid).
 * - sparsify: the path always holds a file that verifies and reads as the
 *   same guest memory with the same layout: the original before the
 *   rename, the new one after.
 * - patch over pages that were absent: original or fully patched in every
 *   phase (the bytes go to invisible slots; one bitmap write makes them count).
 * - patch over pages that were present: the slots are overwritten in place,
 *   so a kill in the page or first fsync phase can leave some pages patched
 *   and others not. Always: the file verifies, every page is either its
 *   original or its patched content, and a page that was absent is never
 *   present without its patched bytes.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testBit } from '../format/bitmap.js';
import type { PlanOptions } from '../format/layout.js';
import { Snapshot } from '../reader/snapshot.js';
import { TEMP_MARK } from '../writer/snapshot-writer.js';
import { intendedPage, type Job } from './helpers/crash-child.js';
import { pageBytes, synthesize, type SynthOptions } from './helpers/synth.js';

const CHILD = path.resolve('dist/test/helpers/crash-child.js');
const BIN = path.resolve('dist/analyze/bin.js');
const PS = 4096;
const SEED = Number(process.env.CRASH_SEED ?? Date.now() % 1e9);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-crash-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

/** mulberry32: the kill schedule is reproducible from CRASH_SEED. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = rng(SEED);

interface Killed {
  /** Phases the child announced, in order; the last is where it was killed. */
  phases: string[];
  pid: number;
  signal: NodeJS.Signals | null;
  code: number | null;
}

/**
 * Runs the child and kills it `delay` ms after it announces `at` (or after
 * it starts, when `at` is undefined).
 */
function runAndKill(job: Job, at: string | undefined, delay: number): Promise<Killed> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const phases: string[] = [];
    let buf = '';
    let armed = false;
    const arm = (): void => {
      if (armed) return;
      armed = true;
      setTimeout(() => child.kill('SIGKILL'), delay);
    };
    if (at === undefined) arm();
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const p = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!p.startsWith('@phase ')) continue; // the command's own output
        const name = p.slice(7);
        phases.push(name);
        if (name === at) arm();
      }
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code !== null && code !== 0) return reject(new Error(`child failed (${code}): ${stderr}`));
      resolve({ phases, pid: child.pid as number, signal, code });
    });
  });
}

/** Runs jobs a few at a time (two cores). */
async function pool<T>(n: number, tasks: (() => Promise<T>)[]): Promise<T[]> {
  const out: T[] = new Array(tasks.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < tasks.length) {
        const i = next++;
        out[i] = await tasks[i]();
      }
    }),
  );
  return out;
}

function tally(rows: { phase: string; outcome: string }[]): Record<string, Record<string, number>> {
  const t: Record<string, Record<string, number>> = {};
  for (const r of rows) {
    t[r.phase] ??= {};
    t[r.phase][r.outcome] = (t[r.phase][r.outcome] ?? 0) + 1;
  }
  return t;
}

function writeSynth(file: string, opts: SynthOptions): void {
  const f = synthesize(opts);
  const fd = fs.openSync(file, 'w');
  for (const e of f.extents) fs.writeSync(fd, e.data, 0, e.data.length, e.offset);
  fs.ftruncateSync(fd, f.size);
  fs.closeSync(fd);
}

async function memory(file: string, opts: { offset?: number } = {}): Promise<Map<string, Buffer>> {
  const s = await Snapshot.open(file, opts);
  try {
    const out = new Map<string, Buffer>();
    for (const b of s.blocks) out.set(b.name, Buffer.from(await s.read(b, 0, b.usedLength)));
    return out;
  } finally {
    await s.close();
  }
}

/** Files in `dir` other than `keep`: each must be a temporary file of `target` made by `pid`. */
function leftovers(dir: string, target: string, pid: number): string[] {
  const others = fs.readdirSync(dir).filter((n) => n !== path.basename(target));
  const pattern = new RegExp(`^\\.${path.basename(target).replace(/\./g, '\\.')}${TEMP_MARK.replace(/\./g, '\\.')}${pid}-[0-9a-f]{8}$`);
  for (const n of others) expect(n, `stray file ${n}`).toMatch(pattern);
  return others;
}

const WRITER_PHASES = ['start', 'head', 'pages', 'bitmaps', 'tail', 'fsync:tail', 'rename', 'renamed', 'dirsync'];

describe('SIGKILL while writing a snapshot', () => {
  it('never leaves a file at the target that verifies unless the rename happened; temp files carry TEMP_MARK', { timeout: 60_000 }, async () => {
    const plan: PlanOptions = { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 48 * PS }, { name: 'pc.rom', usedLength: 8 * PS }], streamOffset: 0 };
    const schedule: { at?: string; delay: number }[] = [];
    for (let round = 0; round < 2; round++) for (const p of WRITER_PHASES) schedule.push({ at: p, delay: random() * 12 });
    for (let i = 0; i < 4; i++) schedule.push({ at: 'start', delay: random() * 250 });
    const rows = await pool(
      3,
      schedule.map((s, i) => async () => {
        const dir = path.join(work, `write-${i}`);
        fs.mkdirSync(dir);
        const target = path.join(dir, 'out.snap');
        const k = await runAndKill({ mode: 'write', target, plan, seed: SEED + i, delayMs: 3 }, s.at, s.delay);
        const last = k.phases[k.phases.length - 1] ?? '(none)';
        const ctx = `seed ${SEED}, run ${i}, killed in ${last} (${k.phases.join(' > ')})`;
        const temps = leftovers(dir, target, k.pid);
        expect(temps.length, ctx).toBeLessThanOrEqual(1);
        const renamed = k.phases.includes('renamed') || last === 'done';
        let outcome: string;
        if (fs.existsSync(target)) {
          // Only the rename puts a file here, and then it is the complete one.
          expect(['rename', 'renamed', 'dirsync', 'done'], ctx).toContain(last);
          const mem = await memory(target);
          plan.blocks.forEach((b, bi) => {
            const want = Buffer.alloc(b.usedLength);
            for (let p = 0; p < b.usedLength / PS; p++) {
              const page = intendedPage(bi, p, PS, SEED + i);
              if (page) want.set(page, p * PS);
            }
            expect(mem.get(b.name)!.equals(want), ctx).toBe(true);
          });
          expect(temps, ctx).toEqual([]);
          outcome = 'complete at target';
        } else {
          expect(renamed, ctx).toBe(false);
          outcome = temps.length ? 'no target, temp left' : 'nothing';
        }
        return { phase: last, outcome };
      }),
    );
    const t = tally(rows);
    console.log(`writer kills (seed ${SEED}):`, JSON.stringify(t));
    for (const p of ['head', 'pages', 'bitmaps', 'tail', 'fsync:tail', 'rename']) expect(Object.keys(t), `no kill landed in ${p}`).toContain(p);
  });
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

const PATCH_PHASES = ['open', 'pages', 'fsync:pages', 'bitmaps', 'fsync:bitmaps'];

describe('SIGKILL during ramsnap patch', () => {
  const cases = [
    { name: 'absent pages only', at: 64 * PS, length: 64 * PS, strong: true },
    { name: 'present and absent pages, across page boundaries', at: 40 * PS + 100, length: 50 * PS, strong: false },
  ];
  for (const c of cases) {
    it(`${c.name}: verifies, every page old or new${c.strong ? ', whole file original or fully patched' : ''}`, { timeout: 60_000 }, async () => {
      const base = path.join(work, `patch-base-${c.at}.snap`);
      patchBase(base);
      const dataFile = path.join(work, `patch-data-${c.at}`);
      const data = patchData(c.at, c.length);
      fs.writeFileSync(dataFile, data);
      const original = (await memory(base)).get('pc.ram')!;
      const patched = Buffer.from(original);
      patched.set(data, c.at);
      const origBits = (await Snapshot.open(base)).block('pc.ram').bitmap!.slice();
      const schedule: { at?: string; delay: number }[] = [];
      for (let round = 0; round < 2; round++) for (const p of PATCH_PHASES) schedule.push({ at: p, delay: random() * (p === 'pages' ? 40 : 12) });
      const rows = await pool(
        3,
        schedule.map((s, i) => async () => {
          const file = path.join(work, `patch-${c.at}-${i}.snap`);
          fs.copyFileSync(base, file);
          const argv = ['patch', file, '--block', 'pc.ram', '--at', String(c.at), '--data-file', dataFile];
          const k = await runAndKill({ mode: 'cli', argv, file, delayMs: 3 }, s.at, s.delay);
          const last = k.phases[k.phases.length - 1];
          const ctx = `seed ${SEED}, ${c.name}, run ${i}, killed in ${last} (${k.phases.join(' > ')})`;
          const snap = await Snapshot.open(file); // throws if the file no longer verifies
          const mem = Buffer.from(await snap.read('pc.ram', 0, 160 * PS));
          const bits = snap.block('pc.ram').bitmap!;
          await snap.close();
          for (let p = 0; p < 160; p++) {
            const got = mem.subarray(p * PS, (p + 1) * PS);
            const old = original.subarray(p * PS, (p + 1) * PS);
            const neu = patched.subarray(p * PS, (p + 1) * PS);
            expect(got.equals(old) || got.equals(neu), `${ctx}: page ${p} is neither`).toBe(true);
            if (!testBit(origBits, p) && testBit(bits, p)) expect(got.equals(neu), `${ctx}: page ${p} present without its bytes`).toBe(true);
          }
          const outcome = mem.equals(original) ? 'original' : mem.equals(patched) ? 'patched' : 'mixed';
          if (c.strong) expect(outcome, ctx).not.toBe('mixed');
          if (last === 'open') expect(outcome, ctx).toBe('original');
          if (last === 'fsync:bitmaps' || last === 'done') expect(outcome, ctx).toBe('patched');
          return { phase: last, outcome };
        }),
      );
      const t = tally(rows);
      console.log(`patch kills, ${c.name} (seed ${SEED}):`, JSON.stringify(t));
      for (const p of ['pages', 'fsync:pages', 'bitmaps']) expect(Object.keys(t), `no kill landed in ${p}`).toContain(p);
    });
  }
});

describe('SIGKILL during ramsnap sparsify', () => {
  it('the path always holds a verifying file with the same guest memory and layout; temp files carry TEMP_MARK', { timeout: 60_000 }, async () => {
    const base = path.join(work, 'sparsify-base.snap');
    const pages = new Map<number, Uint8Array>();
    for (let p = 0; p < 96; p++) pages.set(p, p % 4 === 1 ? new Uint8Array(PS) : pageBytes(PS, p));
    writeSynth(base, { blocks: [{ name: 'pc.ram', usedLength: 96 * PS, pages }, { name: 'pc.rom', usedLength: 4 * PS, pages: new Map([[0, pageBytes(PS, 1)]]) }], streamOffset: 777, staleBytes: true });
    const original = await memory(base, { offset: 777 });
    const s0 = await Snapshot.open(base, { offset: 777 });
    const layout = s0.blocks.map((b) => ({ ...b.mappedRam }));
    await s0.close();
    const schedule: { at?: string; delay: number }[] = [];
    for (let round = 0; round < 2; round++) for (const p of ['open', ...WRITER_PHASES.slice(1)]) schedule.push({ at: p, delay: random() * 12 });
    const rows = await pool(
      3,
      schedule.map((s, i) => async () => {
        const dir = path.join(work, `sparsify-${i}`);
        fs.mkdirSync(dir);
        const file = path.join(dir, 'vm.snap');
        fs.copyFileSync(base, file);
        const ino = fs.statSync(file).ino;
        const k = await runAndKill({ mode: 'cli', argv: ['sparsify', file, '--offset', '777'], file, offset: 777, delayMs: 3 }, s.at, s.delay);
        const last = k.phases[k.phases.length - 1];
        const ctx = `seed ${SEED}, run ${i}, killed in ${last} (${k.phases.join(' > ')})`;
        const temps = leftovers(dir, file, k.pid);
        const snap = await Snapshot.open(file, { offset: 777 });
        expect(snap.blocks.map((b) => ({ ...b.mappedRam })), ctx).toEqual(layout);
        for (const b of snap.blocks) expect(Buffer.from(await snap.read(b, 0, b.usedLength)).equals(original.get(b.name)!), ctx).toBe(true);
        await snap.close();
        const replaced = fs.statSync(file).ino !== ino;
        if (replaced) expect(temps, ctx).toEqual([]);
        return { phase: last, outcome: replaced ? 'sparsified' : temps.length ? 'original, temp left' : 'original' };
      }),
    );
    const t = tally(rows);
    console.log(`sparsify kills (seed ${SEED}):`, JSON.stringify(t));
    for (const p of ['head', 'pages', 'bitmaps', 'tail', 'fsync:tail', 'rename']) expect(Object.keys(t), `no kill landed in ${p}`).toContain(p);
  });
});

describe('disk full', () => {
  const oneLine = (stderr: string, code: string): void => {
    expect(stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(new RegExp(`^ramsnap: ${code}: `));
  };
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

  const exec = (cmd: string, args: string[]): Promise<{ code: number; stderr: string }> =>
    new Promise((resolve) => execFile(cmd, args, (err, _out, stderr) => resolve({ code: err ? Number((err as { code?: number }).code) : 0, stderr })));

  it('tmpfs of 8 MiB: the writer fails with IO_ENOSPC, exit 1, nothing at the target, no temp file', async (ctx) => {
    if (!mnt) return ctx.skip();
    const dir = path.join(mnt, 'w');
    fs.mkdirSync(dir);
    const target = path.join(dir, 'big.snap');
    const plan: PlanOptions = { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 4096 * PS }] };
    const job: Job = { mode: 'write', target, plan, seed: 1, delayMs: 0 };
    const r = await exec(process.execPath, [CHILD, JSON.stringify(job)]);
    expect(r.code).toBe(1);
    oneLine(r.stderr, 'IO_ENOSPC');
    expect(fs.readdirSync(dir)).toEqual([]);
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
    const s = await exec(process.execPath, [BIN, 'sparsify', file]);
    expect(s.code).toBe(1);
    oneLine(s.stderr, 'IO_ENOSPC');
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    // Patch 3 MiB into the absent pages: the bytes run out of space before any bit is set.
    const p = await exec(process.execPath, [BIN, 'patch', file, '--block', 'pc.ram', '--at', String(1280 * PS), '--fill', '7', '--length', String(1792 * PS)]);
    expect(p.code).toBe(1);
    oneLine(p.stderr, 'IO_ENOSPC');
    expect((await memory(file)).get('pc.ram')!.equals(memBefore)).toBe(true);
    const snap = await Snapshot.open(file);
    expect(snap.block('pc.ram').pagesPresent).toBe(1280);
    expect(Buffer.from(await snap.read('pc.ram', 1280 * PS, 1792 * PS)).every((x) => x === 0)).toBe(true);
    await snap.close();
  });

  it('ulimit -f: sparsify fails with IO_EFBIG, exit 1, original intact, no temp file', async () => {
    const dir = path.join(work, 'efbig');
    fs.mkdirSync(dir);
    const file = path.join(dir, 'vm.snap');
    const pages = new Map<number, Uint8Array>();
    for (let p = 0; p < 64; p += 2) pages.set(p, pageBytes(PS, p + 1));
    writeSynth(file, { blocks: [{ name: 'pc.ram', usedLength: 512 * PS, pages }] });
    const before = fs.readFileSync(file);
    // 1 MiB limit (1024-byte blocks): the new file cannot even be sized. Node ignores SIGXFSZ, so the write fails with EFBIG.
    const r = await exec('bash', ['-c', `ulimit -f 1024; exec "${process.execPath}" "${BIN}" sparsify "${file}"`]);
    expect(r.code).toBe(1);
    oneLine(r.stderr, 'IO_EFBIG');
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
  });
});
