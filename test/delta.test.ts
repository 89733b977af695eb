/**
 * Delta snapshots (writer/delta.ts): properties over random pairs and
 * chains, bad inputs, and a real QEMU 10 series of the dirtying guest
 * (saved paused, then live twice): apply(BASE, deltas) restores in QEMU to
 * the memory the guest had at each save.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDirtyGuest, type DirtyGuest } from '../fixtures/dirty-guest.js';
import { Qemu, qemuAvailable, sleep } from '../fixtures/qemu.js';
import { diffSnapshots } from '../reader/diff.js';
import { memoryFingerprint } from '../reader/fingerprint.js';
import { Snapshot } from '../reader/snapshot.js';
import { applyDeltas, deltaOf, writeDelta } from '../writer/delta.js';
import { synthesize, type SynthBlock } from './helpers/synth.js';

const CLI = path.resolve('dist/analyze/bin.js');
const PS = 4096;
const MiB = 1 << 20;
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-delta-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
}

let n = 0;
/** A synthetic snapshot on disk (the writers and the fingerprint read files like any other). */
function snapFile(blocks: SynthBlock[], mappedRam = true): string {
  const f = synthesize({ blocks, mappedRam });
  const file = path.join(tmp, `s${n++}.snap`);
  fs.writeFileSync(file, f.bytes());
  return file;
}

const page = (seed: number): Uint8Array => (seed === 0 ? new Uint8Array(PS) : new Uint8Array(PS).fill(seed));
/** Versions of one memory: per version, page -> seed (0: a page of zeros), over fixed block sizes. */
const arbSeries = (versions: number) =>
  fc.array(fc.integer({ min: 1, max: 16 }), { minLength: 1, maxLength: 3 }).chain((sizes) =>
    fc.tuple(
      fc.constant(sizes),
      fc.array(fc.tuple(...sizes.map((pages) => fc.dictionary(fc.integer({ min: 0, max: pages - 1 }).map(String), fc.integer({ min: 0, max: 3 })))), { minLength: versions, maxLength: versions }),
      fc.array(fc.boolean(), { minLength: versions, maxLength: versions }),
    ),
  );

function blocksFor(sizes: number[], pages: Record<string, number>[]): SynthBlock[] {
  return sizes.map((count, i) => ({ name: `blk${i}`, usedLength: count * PS, pages: new Map(Object.entries(pages[i]).map(([p, s]) => [Number(p), page(s)])) }));
}

async function open(file: string): Promise<Snapshot> {
  return Snapshot.open(file);
}

describe('delta and apply: properties', () => {
  it('apply(A, delta(A, B)) holds B\'s memory; a chain of three applies in order; identical inputs make an empty delta', async () => {
    await fc.assert(
      fc.asyncProperty(arbSeries(3), async ([sizes, versions, layouts]) => {
        const files = versions.map((v, i) => snapFile(blocksFor(sizes, v), layouts[i]));
        const [a, b, c] = await Promise.all(files.map(open));
        try {
          const d1 = path.join(tmp, `d${n++}.delta`);
          const d2 = path.join(tmp, `d${n++}.delta`);
          const r1 = await writeDelta(a, b, d1);
          await writeDelta(b, c, d2);
          const [da, db] = [await open(d1), await open(d2)];
          expect(deltaOf(da)).toEqual(r1.info);
          expect(r1.info.base).toBe(await memoryFingerprint(a));
          expect(r1.info.result).toBe(await memoryFingerprint(b));
          // The delta carries exactly the pages that differ.
          const diff = await diffSnapshots(a, b);
          const differing = diff.blocks.reduce((s, x) => s + x.totals.added + x.totals.changed + x.totals.removed, 0);
          expect(r1.pagesWritten + r1.zeroPages).toBe(differing);
          expect(da.blocks.reduce((s, x) => s + x.pagesPresent, 0)).toBe(differing);

          const ab = path.join(tmp, `ab${n++}.snap`);
          await applyDeltas(a, [{ snap: da, path: d1 }], ab);
          const abs = await open(ab);
          expect((await diffSnapshots(abs, b)).blocks.every((x) => x.added.length + x.removed.length + x.changed.length === 0)).toBe(true);
          const abc = path.join(tmp, `abc${n++}.snap`);
          await applyDeltas(a, [{ snap: da, path: d1 }, { snap: db, path: d2 }], abc);
          const abcs = await open(abc);
          expect(await memoryFingerprint(abcs)).toBe(await memoryFingerprint(c));
          for (const s of [da, db, abs, abcs]) await s.close();
          const same = path.join(tmp, `same${n++}.delta`);
          expect((await writeDelta(a, a, same)).pagesWritten).toBe(0);
        } finally {
          for (const s of [a, b, c]) await s.close();
        }
      }),
      { numRuns: 25 },
    );
  });
});

describe('delta and apply: bad inputs write nothing', () => {
  const base = (): string => snapFile([{ name: 'pc.ram', usedLength: 8 * PS, pages: new Map([[1, page(1)]]) }]);
  const newer = (): string => snapFile([{ name: 'pc.ram', usedLength: 8 * PS, pages: new Map([[1, page(2)], [3, page(3)]]) }]);

  it('a wrong base, a delta as base, a full snapshot as delta, blocks of other sizes: a code, exit 2, no output', () => {
    const [b, nw] = [base(), newer()];
    const d = path.join(tmp, 'good.delta');
    expect(cli('delta', b, nw, '-o', d).status).toBe(0);
    const out = path.join(tmp, 'never.snap');
    const other = snapFile([{ name: 'pc.ram', usedLength: 8 * PS, pages: new Map([[1, page(3)]]) }]);
    const bigger = snapFile([{ name: 'pc.ram', usedLength: 16 * PS }]);
    for (const [args, code] of [
      [['apply', other, d], 'DELTA_BASE_MISMATCH'],
      [['apply', d, d], 'DELTA_AS_BASE'],
      [['apply', b, nw], 'NOT_A_DELTA'],
      [['apply', bigger, d], 'DELTA_LAYOUT_MISMATCH'],
      [['delta', d, nw], 'DELTA_AS_BASE'],
      [['delta', b, bigger], 'DELTA_LAYOUT_MISMATCH'],
    ] as const) {
      const r = cli(...args, '-o', out);
      expect([r.status, r.stderr.trim().split('\n').length, r.stderr], args.join(' ')).toEqual([2, 1, expect.stringMatching(new RegExp(`^ramsnap: ${code}: `))]);
      expect(fs.existsSync(out)).toBe(false);
    }
  });

  it('a truncated delta is refused (exit 1) and writes nothing; a delta whose pages were damaged is BAD_DELTA', () => {
    const [b, nw] = [base(), newer()];
    const d = path.join(tmp, 'cut.delta');
    expect(cli('delta', b, nw, '-o', d).status).toBe(0);
    const cut = path.join(tmp, 'cut2.delta');
    fs.writeFileSync(cut, fs.readFileSync(d).subarray(0, fs.statSync(d).size - 40));
    const out = path.join(tmp, 'never2.snap');
    const r = cli('apply', b, cut, '-o', out);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^ramsnap: [A-Z_]+: /);
    expect(fs.existsSync(out)).toBe(false);

    // The same length, one carried page's bytes changed: the chain's result is not what the delta promised.
    const snap = spawnSync(process.execPath, [CLI, 'info', '--json', d], { encoding: 'utf8' });
    const pagesAt = Number(JSON.parse(snap.stdout).blocks[0].pagesOffset);
    const damaged = path.join(tmp, 'damaged.delta');
    const bytes = fs.readFileSync(d);
    bytes[pagesAt + 1 * PS] ^= 0xff;
    fs.writeFileSync(damaged, bytes);
    const r2 = cli('apply', b, damaged, '-o', out);
    expect([r2.status, r2.stderr]).toEqual([1, expect.stringMatching(/^ramsnap: BAD_DELTA: /)]);
    expect(fs.existsSync(out)).toBe(false);
  });
});

const HAVE_QEMU = qemuAvailable('qemu-system-x86_64');

describe.skipIf(!HAVE_QEMU)('a real QEMU 10 series of the dirtying guest', () => {
  let g: DirtyGuest | undefined;
  /** Each save, and the guest's memory at it (its shared RAM file, the guest paused). */
  const saves: { file: string; memory: Buffer }[] = [];

  beforeAll(async () => {
    g = await startDirtyGuest({ dir: fs.mkdtempSync(path.join(tmp, 'guest-')), memory: 64 * MiB, accel: 'tcg', params: { ws: 8 * MiB, delay: 5000 } });
    const q = g.qemu;
    await q.setCapabilities({ 'mapped-ram': true });
    await q.cmd('migrate-set-parameters', { 'max-bandwidth': 0 });
    // The first paused, the next two live (pages written during the save; stale bytes under clear bits).
    for (let i = 0; i < 3; i++) {
      if (i === 0) await q.cmd('stop');
      const file = path.join(tmp, `series-${i}.snap`);
      await q.cmd('migrate', { uri: `file:${file}` });
      await q.waitMigration(120_000);
      saves.push({ file, memory: fs.readFileSync(g.ramPath) });
      await q.cmd('cont');
      await sleep(400);
    }
  }, 180_000);
  afterAll(async () => g?.stop());

  /** A fresh QEMU restores `file`; its guest RAM. */
  async function restored(file: string): Promise<Buffer> {
    const dir = fs.mkdtempSync(path.join(tmp, 'dst-'));
    const q = await Qemu.start({ binary: 'qemu-system-x86_64', args: g!.destinationArgs, dir, incoming: true });
    try {
      await q.setCapabilities({ 'mapped-ram': true });
      await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
      await q.waitMigration(60_000);
      const out = path.join(dir, 'restored.pmem');
      await q.pmemsave(out, g!.size);
      return fs.readFileSync(out);
    } finally {
      await q.quit();
    }
  }

  it('the series differs save to save, and delta carries only what changed', async () => {
    expect(saves).toHaveLength(3);
    expect(saves[0].memory.equals(saves[1].memory)).toBe(false);
    for (const [i, j] of [[0, 1], [1, 2]]) {
      const d = path.join(tmp, `series-${i}${j}.delta`);
      const r = cli('delta', saves[i].file, saves[j].file, '-o', d, '--json');
      expect(r.status, r.stderr).toBe(0);
      expect(fs.statSync(d).blocks * 512).toBeLessThan(fs.statSync(saves[j].file).blocks * 512);
      expect(cli('verify', d).status).toBe(0);
    }
  });

  it('apply(BASE, delta) restores in QEMU to the memory of the later save, byte for byte; a chain of two too', { timeout: 120_000 }, async () => {
    const one = path.join(tmp, 'series-applied-1.snap');
    expect(cli('apply', saves[0].file, path.join(tmp, 'series-01.delta'), '-o', one).status).toBe(0);
    expect((await restored(one)).equals(saves[1].memory)).toBe(true);
    const two = path.join(tmp, 'series-applied-2.snap');
    const r = cli('apply', saves[0].file, path.join(tmp, 'series-01.delta'), path.join(tmp, 'series-12.delta'), '-o', two);
    expect(r.status, r.stderr).toBe(0);
    expect((await restored(two)).equals(saves[2].memory)).toBe(true);
  });

  /** `restore FILES --base BASE` into a QEMU started with the arguments that map BASE; the guest's RAM after the load, and the base's hash before and after. */
  async function restoredOverBase(base: string, deltas: string[], name: string): Promise<{ memory: Buffer; out: string }> {
    const plan = JSON.parse(cli('restore', deltas[0], '--base', base, '--print-qemu-args', '--json').stdout) as { args: string[] };
    const dir = fs.mkdtempSync(path.join(tmp, `${name}-`));
    const sock = path.join(dir, 'cli.sock');
    const q = await Qemu.start({ binary: 'qemu-system-x86_64', dir, args: ['-accel', 'tcg', '-cpu', 'qemu64,kvmclock=off', '-smp', '1', '-qmp', `unix:${sock},server=on,wait=off`, ...plan.args], incoming: true });
    try {
      const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const c = spawn(process.execPath, [CLI, 'restore', ...deltas, '--base', base, '--qmp', sock], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        c.stdout.on('data', (d: Buffer) => (out += d.toString()));
        c.stderr.on('data', (d: Buffer) => (out += d.toString()));
        c.on('exit', (code) => resolve({ code, out }));
      });
      expect(r.code, r.out).toBe(0);
      const pm = path.join(dir, 'restored.pmem');
      await q.pmemsave(pm, g!.size);
      return { memory: fs.readFileSync(pm), out: r.out };
    } finally {
      await q.quit();
    }
  }

  it('restore --base maps BASE and loads only the deltas: the guest has the later save\'s memory, for one delta and for a chain; BASE is unchanged', { timeout: 180_000 }, async () => {
    const before = fs.readFileSync(saves[0].file);
    const one = await restoredOverBase(saves[0].file, [path.join(tmp, 'series-01.delta')], 'over-1');
    expect(one.memory.equals(saves[1].memory)).toBe(true);
    expect(one.out).toMatch(/mapped from the file/);
    const two = await restoredOverBase(saves[0].file, [path.join(tmp, 'series-01.delta'), path.join(tmp, 'series-12.delta')], 'over-2');
    expect(two.memory.equals(saves[2].memory)).toBe(true);
    expect(fs.readFileSync(saves[0].file).equals(before)).toBe(true);
  });

  it('restore --base with the wrong base is refused before anything is loaded', () => {
    const r = cli('restore', path.join(tmp, 'series-12.delta'), '--base', saves[0].file, '--qmp', path.join(tmp, 'no.sock'));
    expect([r.status, r.stderr]).toEqual([2, expect.stringMatching(/^ramsnap: DELTA_BASE_MISMATCH: /)]);
  });
});
