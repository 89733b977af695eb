/**
 * `ramsnap diff`: properties against a page-by-page model over random
 * pairs of snapshots (mapped-ram and legacy, pages that become zero, stale
 * bytes under clear bits, present pages of zeros), real QEMU files, and the
 * CLI's cmp-like exit status.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { diffSnapshots } from '../reader/diff.js';
import { extractBlock } from '../reader/extract.js';
import { Snapshot } from '../reader/snapshot.js';
import { fixtureFiles } from './helpers/fixtures.js';
import { synthesize, type SynthBlock } from './helpers/synth.js';

const CLI = path.resolve('dist/analyze/bin.js');
const PS = 4096;
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-diff-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
}

/** A page: zeros, or a byte pattern from `seed`. */
const page = (seed: number): Uint8Array => (seed === 0 ? new Uint8Array(PS) : new Uint8Array(PS).fill(seed));

/** Blocks of a pair: the same names and sizes, each side's pages drawn separately (0 = a present page of zeros). */
const arbPair = fc
  .array(fc.integer({ min: 1, max: 24 }), { minLength: 1, maxLength: 3 })
  .chain((sizes) =>
    fc.tuple(
      ...sizes.map((pages) =>
        fc.tuple(
          fc.constant(pages),
          fc.dictionary(fc.integer({ min: 0, max: pages - 1 }).map(String), fc.integer({ min: 0, max: 3 })),
          fc.dictionary(fc.integer({ min: 0, max: pages - 1 }).map(String), fc.integer({ min: 0, max: 3 })),
        ),
      ),
    ),
  );

function blocksOf(pair: [number, Record<string, number>, Record<string, number>][], side: 1 | 2): SynthBlock[] {
  return pair.map((b, i) => ({
    name: `blk${i}`,
    usedLength: b[0] * PS,
    pages: new Map(Object.entries(b[side]).map(([p, seed]) => [Number(p), page(seed)])),
  }));
}

let runs = 0;

describe('diff properties', () => {
  it('agrees with a page-by-page comparison of both sides\' extract outputs, and is empty exactly when that memory is equal', async () => {
    await fc.assert(
      fc.asyncProperty(arbPair, fc.boolean(), fc.boolean(), fc.boolean(), async (pair, mappedA, mappedB, stale) => {
        const a = await Snapshot.open(synthesize({ blocks: blocksOf(pair, 1), mappedRam: mappedA, staleBytes: stale && mappedA }).source());
        const b = await Snapshot.open(synthesize({ blocks: blocksOf(pair, 2), mappedRam: mappedB }).source());
        const d = await diffSnapshots(a, b);
        let memoryEqual = true;
        for (const bd of d.blocks) {
          const kinds = new Map<number, string>();
          for (const kind of ['added', 'removed', 'changed'] as const) for (const r of bd[kind]) for (let p = r.first; p < r.first + r.count; p++) kinds.set(p, kind);
          // The model: each side's block as extract writes it, compared page by page.
          const ex = path.join(tmp, `x${runs}.raw`);
          const ey = path.join(tmp, `y${runs++}.raw`);
          await extractBlock(a, a.block(bd.block), ex);
          await extractBlock(b, b.block(bd.block), ey);
          const [imgA, imgB] = [fs.readFileSync(ex), fs.readFileSync(ey)];
          fs.rmSync(ex);
          fs.rmSync(ey);
          for (let p = 0; p < bd.pages; p++) {
            const x = imgA.subarray(p * PS, (p + 1) * PS);
            const y = imgB.subarray(p * PS, (p + 1) * PS);
            const zx = x.every((v) => v === 0);
            const zy = y.every((v) => v === 0);
            const want = Buffer.from(x).equals(Buffer.from(y)) ? undefined : zx ? 'added' : zy ? 'removed' : 'changed';
            expect(kinds.get(p), `${bd.block} page ${p}`).toBe(want);
            if (want) memoryEqual = false;
          }
          expect(bd.totals.added + bd.totals.removed + bd.totals.changed).toBe(kinds.size);
        }
        expect(d.devices.same).toBe(true);
        expect(d.same).toBe(memoryEqual && mappedA === mappedB);
        if (mappedA !== mappedB) expect(d.layout).toHaveLength(1);
      }),
      { numRuns: 60 },
    );
  });

  it('blocks of different sizes are not compared, and say so', async () => {
    const a = await Snapshot.open(synthesize({ blocks: [{ name: 'pc.ram', usedLength: 8 * PS }, { name: 'x', usedLength: PS }] }).source());
    const b = await Snapshot.open(synthesize({ blocks: [{ name: 'pc.ram', usedLength: 16 * PS }, { name: 'y', usedLength: PS }] }).source());
    const d = await diffSnapshots(a, b);
    expect(d.same).toBe(false);
    expect(d.resized).toEqual([{ block: 'pc.ram', a: 8 * PS, b: 16 * PS }]);
    expect([d.onlyInA, d.onlyInB]).toEqual([['x'], ['y']]);
  });
});

describe('diff of real QEMU files', () => {
  it('a guest before and after SeaBIOS ran: RAM added, device state changed; a file against itself (two names): same, nothing read', async () => {
    const before = await fixtureFiles('q35-mapped-ram');
    const during = await fixtureFiles('q35-mapped-ram-live');
    const a = await Snapshot.open(before.snap, { decodeDevices: true });
    const b = await Snapshot.open(during.snap, { decodeDevices: true });
    try {
      const d = await diffSnapshots(a, b);
      expect(d.same).toBe(false);
      const ram = d.blocks.find((x) => x.block === 'pc.ram')!;
      expect(ram.totals.added + ram.totals.changed).toBeGreaterThan(0);
      expect(d.devices.changed).toContain('cpu (0)');
      const link = path.join(tmp, 'same.snap');
      fs.symlinkSync(before.snap, link);
      const c = await Snapshot.open(link);
      expect((await diffSnapshots(a, c)).same).toBe(true);
      await c.close();
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('diff CLI: exit status as cmp', () => {
  it('0 same (a copy), 1 different, 2 trouble (an invalid file, a missing file, a bad flag), one line each', async () => {
    const before = await fixtureFiles('q35-mapped-ram');
    const other = await fixtureFiles('q35-mapped-ram-live');
    const copy = path.join(tmp, 'copy.snap');
    fs.copyFileSync(before.snap, copy);
    const same = cli('diff', before.snap, copy);
    expect([same.status, same.stdout.trim().split('\n').pop()]).toEqual([0, 'same']);
    const differ = cli('diff', before.snap, other.snap, '--json');
    expect(differ.status).toBe(1);
    expect(JSON.parse(differ.stdout).same).toBe(false);
    const garbage = path.join(tmp, 'garbage');
    fs.writeFileSync(garbage, 'not a snapshot');
    for (const args of [[before.snap, garbage], [path.join(tmp, 'missing'), before.snap], [before.snap, copy, '--bogus']]) {
      const r = cli('diff', ...args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^ramsnap: [A-Z_]+: /);
    }
  });
});
