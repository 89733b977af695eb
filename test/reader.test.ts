import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { extractBlock } from '../reader/extract.js';
import { Snapshot } from '../reader/snapshot.js';
import { pageBytes, synthesize, type SynthBlock } from './helpers/synth.js';

const GiB = 1024 ** 3;

/** Guest memory the way a test means it: absent pages are zero. */
function expected(block: SynthBlock, ps: number, at: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (const [p, data] of block.pages ?? []) {
    const start = p * ps;
    const from = Math.max(start, at);
    const to = Math.min(start + ps, at + length);
    if (from < to) out.set(data.subarray(from - start, to - start), from - at);
  }
  return out;
}

describe('mapped-ram stream (synthetic)', () => {
  it('opens, validates and reads pages at their fixed offsets', async () => {
    const ps = 4096;
    const pages = new Map([
      [0, pageBytes(ps, 1)],
      [1, pageBytes(ps, 2)],
      [7, pageBytes(ps, 3)],
    ]);
    const f = synthesize({ blocks: [{ name: 'pc.ram', usedLength: 16 * ps, pages }, { name: 'pc.bios', usedLength: 4 * ps }] });
    const snap = await Snapshot.open(f.source());
    const m = snap.model;
    expect(m.complete).toBe(true);
    expect(m.mappedRam).toBe(true);
    expect(m.blocks.map((b) => [b.name, b.pagesPresent])).toEqual([
      ['pc.ram', 3],
      ['pc.bios', 0],
    ]);
    expect(m.devices).toHaveLength(1);
    const got = await snap.read('pc.ram', 100, 8 * ps);
    expect(Buffer.from(got).equals(Buffer.from(expected({ name: 'pc.ram', usedLength: 16 * ps, pages }, ps, 100, 8 * ps)))).toBe(true);
    expect([...snap.presentRuns(m.blocks[0])].map((r) => [r.first, r.count])).toEqual([
      [0, 2],
      [7, 1],
    ]);
  });

  it('a clear bit reads as zero even where the file holds stale bytes', async () => {
    const ps = 4096;
    const f = synthesize({ blocks: [{ name: 'pc.ram', usedLength: 8 * ps, pages: new Map([[3, pageBytes(ps, 9)]]) }], staleBytes: true });
    const snap = await Snapshot.open(f.source());
    const all = await snap.read('pc.ram', 0, 8 * ps);
    expect(all.subarray(0, 3 * ps).every((x) => x === 0)).toBe(true);
    expect(Buffer.from(all.subarray(3 * ps, 4 * ps)).equals(Buffer.from(pageBytes(ps, 9)))).toBe(true);
  });

  it('opens a 64 GiB guest by reading only headers and bitmaps', async () => {
    const ps = 4096;
    const pages = new Map([
      [0, pageBytes(ps, 1)],
      [(64 * GiB) / ps - 1, pageBytes(ps, 2)],
    ]);
    const f = synthesize({ blocks: [{ name: 'pc.ram', usedLength: 64 * GiB, pages }] });
    let bytesRead = 0;
    const src = f.source();
    const read = src.read.bind(src);
    src.read = (o, l, field, into) => {
      bytesRead += l;
      return read(o, l, field, into);
    };
    const t = performance.now();
    const snap = await Snapshot.open(src);
    expect(performance.now() - t).toBeLessThan(5000); // the bench holds the real target; this only catches a full scan
    expect(snap.model.blocks[0].pagesPresent).toBe(2);
    // Bitmap (2 MiB) + stream windows, never the 64 GiB of pages.
    expect(bytesRead).toBeLessThan(8 << 20);
    const last = await snap.read('pc.ram', 64 * GiB - ps, ps);
    expect(Buffer.from(last).equals(Buffer.from(pageBytes(ps, 2)))).toBe(true);
  });

  it('supports 8 KiB pages and a stream at an offset', async () => {
    const ps = 8192;
    const pages = new Map([[2, pageBytes(ps, 5)]]);
    const f = synthesize({ pageSize: ps, machine: 'sun4u', streamOffset: 12345, blocks: [{ name: 'sun4u.ram', usedLength: 4 * ps, pages }] });
    const snap = await Snapshot.open(f.source(), { offset: 12345 });
    expect(snap.model.pageSize).toBe(8192);
    expect(Buffer.from(await snap.read('sun4u.ram', 2 * ps, ps)).equals(Buffer.from(pageBytes(ps, 5)))).toBe(true);
  });
});

describe('legacy stream (synthetic)', () => {
  it('the last copy of a repeated page wins, and ZERO overrides an earlier PAGE', async () => {
    const ps = 4096;
    const pages = new Map([
      [1, pageBytes(ps, 1)],
      [2, new Uint8Array(ps)],
      [3, pageBytes(ps, 3)],
    ]);
    const f = synthesize({ mappedRam: false, legacyRepeats: 3, blocks: [{ name: 'pc.ram', usedLength: 8 * ps, pages }] });
    const snap = await Snapshot.open(f.source());
    expect(snap.model.complete).toBe(true);
    const all = await snap.read('pc.ram', 0, 8 * ps);
    expect(Buffer.from(all).equals(Buffer.from(expected({ name: 'pc.ram', usedLength: 8 * ps, pages }, ps, 0, 8 * ps)))).toBe(true);
    expect(snap.model.blocks[0].pagesPresent).toBe(2);
  });
});

/** Arbitrary block sets with sparse random pages, for both stream kinds. */
const blockSet = (ps: number) =>
  fc
    .uniqueArray(
      fc.record({
        name: fc.string({ minLength: 1, maxLength: 40, unit: fc.integer({ min: 0x20, max: 0xff }).map((c) => String.fromCharCode(c)) }),
        pages: fc.integer({ min: 1, max: 300 }),
        present: fc.uniqueArray(fc.nat({ max: 299 }), { maxLength: 20 }),
        seed: fc.nat(),
      }),
      { minLength: 1, maxLength: 4, selector: (b) => b.name },
    )
    .map((bs) =>
      bs.map<SynthBlock>((b) => ({
        name: b.name,
        usedLength: b.pages * ps,
        pages: new Map(b.present.filter((p) => p < b.pages).map((p) => [p, p % 5 === 0 ? new Uint8Array(ps) : pageBytes(ps, b.seed + p)] as [number, Uint8Array])),
      })),
    );

describe('round trip properties', () => {
  for (const mappedRam of [true, false]) {
    it(`${mappedRam ? 'mapped-ram' : 'legacy'}: any blocks and pages read back equal to the model`, async () => {
      await fc.assert(
        fc.asyncProperty(blockSet(4096), fc.integer({ min: 1, max: 3 }), fc.nat(), fc.nat(), async (blocks, repeats, atSeed, lenSeed) => {
          const ps = 4096;
          const f = synthesize({ mappedRam, legacyRepeats: repeats, blocks });
          const snap = await Snapshot.open(f.source());
          expect(snap.model.complete).toBe(true);
          for (const b of blocks) {
            const at = atSeed % b.usedLength;
            const length = lenSeed % (b.usedLength - at + 1);
            const got = await snap.read(b.name, at, length);
            expect(Buffer.from(got).equals(Buffer.from(expected(b, ps, at, length)))).toBe(true);
            // Every listed page with non-zero bytes is present, and nothing else is.
            const nonZero = [...(b.pages ?? [])].filter(([, d]) => d.some((x) => x !== 0)).length;
            const listed = (b.pages ?? new Map()).size;
            const present = snap.block(b.name).pagesPresent;
            expect(present).toBe(mappedRam ? listed : nonZero);
          }
        }),
        { numRuns: 60 },
      );
    });
  }
});

describe('extractBlock: the same file on this thread and on the thread pool', () => {
  it('any pages, chunk size and source: the output is the guest memory, present zero pages and absent ones are holes', async () => {
    const ps = 4096;
    const pagesN = 48;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-extract-'));
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.uniqueArray(fc.integer({ min: 0, max: pagesN - 1 }), { maxLength: pagesN }),
          fc.integer({ min: 1, max: 9 }),
          fc.boolean(),
          async (present, chunkPages, hideSync) => {
            // Every third present page is all zero: it must stay a hole although its bit is set.
            const pages = new Map(present.map((p, i) => [p, i % 3 === 2 ? new Uint8Array(ps) : pageBytes(ps, p + 1)]));
            const block: SynthBlock = { name: 'pc.ram', usedLength: pagesN * ps, pages };
            const src = synthesize({ blocks: [block] }).source();
            // Without readSync, a mapped-ram block goes through Snapshot.read on libuv's pool.
            const source = hideSync ? { size: src.size, name: src.name, read: src.read.bind(src) } : src;
            const snap = await Snapshot.open(source);
            const out = path.join(dir, 'out.raw');
            const r = await extractBlock(snap, snap.block('pc.ram'), out, { force: true, chunkBytes: chunkPages * ps });
            const got = fs.readFileSync(out);
            expect(got.equals(Buffer.from(expected(block, ps, 0, pagesN * ps)))).toBe(true);
            const nonZero = [...pages.values()].filter((d) => d.some((x) => x !== 0)).length;
            expect(r.bytesWritten).toBe(nonZero * ps);
            expect(r.bytesPresent).toBe(present.length * ps);
          },
        ),
        { numRuns: 60 },
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
