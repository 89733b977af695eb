/**
 * Properties of the writer, checked through the reader, with the
 * arbitraries users get from `ramsnap/testing`: whatever the blocks and
 * the write sequence, the file verifies and reads back as the model; the
 * planner's offsets keep their invariants; rewrites never grow the file;
 * abort leaves nothing behind.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { MAPPED_RAM_ALIGNMENT, MAPPED_RAM_HDR_SIZE } from '../format/constants.js';
import { LayoutError, planLayout, type LayoutPlan } from '../format/layout.js';
import { encodeTail } from '../format/tail.js';
import { Snapshot } from '../reader/snapshot.js';
import { SnapshotWriter } from '../writer/snapshot-writer.js';
import {
  ALL_PAGE_SIZES,
  applyOp,
  arbBlockSet,
  arbSnapshotCase,
  arbWriteSequence,
  assertMatchesModel,
  modelOf,
  writeSnapshot,
  writerOptions,
  type BlockSet,
} from '../writer/testing.js';

const GiB = 1024 ** 3;
const TiB = 1024 ** 4;

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-writer-props-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

let serial = 0;
/** A fresh empty directory per case, so that a leftover temporary file is visible. */
function caseDir(): string {
  const d = path.join(root, `case-${serial++}`);
  fs.mkdirSync(d);
  return d;
}

function planOf(set: BlockSet): LayoutPlan {
  return planLayout(writerOptions(set));
}

async function openStrict(file: string, set: BlockSet): Promise<Snapshot> {
  return Snapshot.open(file, { offset: set.streamOffset });
}

describe('written snapshots read back as the model', () => {
  it('any blocks (up to 64 GiB), any write sequence with rewrites, any layout: every page, unwritten pages and present runs', async () => {
    await fc.assert(
      fc.asyncProperty(arbSnapshotCase({ layout: 'varied', maxBlockBytes: 64 * GiB, maxTotalPages: 2 ** 24 }), async ({ set, ops }) => {
        const file = path.join(caseDir(), 'snap');
        const model = await writeSnapshot(file, set, ops);
        const snap = await openStrict(file, set);
        try {
          expect(snap.model.complete).toBe(true);
          await assertMatchesModel(snap, model);
        } finally {
          await snap.close();
          fs.rmSync(path.dirname(file), { recursive: true });
        }
      }),
      { numRuns: 30 },
    );
  });

  it('every page size from 1 KiB to 64 KiB', async () => {
    await fc.assert(
      fc.asyncProperty(arbSnapshotCase({ pageSizes: ALL_PAGE_SIZES, layout: 'varied', maxBlockBytes: 4 * GiB, maxTotalPages: 2 ** 22, maxOps: 20 }), async ({ set, ops }) => {
        const file = path.join(caseDir(), 'snap');
        const model = await writeSnapshot(file, set, ops);
        const snap = await openStrict(file, set);
        try {
          await assertMatchesModel(snap, model);
        } finally {
          await snap.close();
          fs.rmSync(path.dirname(file), { recursive: true });
        }
      }),
      { numRuns: 15 },
    );
  });

  it('a 1 TiB block (sparse: its bitmap and a few pages on disk) next to small ones', async () => {
    const withHuge = fc.tuple(arbBlockSet({ maxBlocks: 3, maxBlockBytes: GiB }), fc.nat({ max: 3 })).map(([set, at]): BlockSet => {
      const blocks = set.blocks.filter((b) => b.name !== 'pc.ram');
      blocks.splice(Math.min(at, blocks.length), 0, { name: 'pc.ram', usedLength: TiB });
      return { ...set, blocks };
    });
    await fc.assert(
      fc.asyncProperty(
        withHuge.chain((set) => arbWriteSequence(set).map((ops) => ({ set, ops }))),
        async ({ set, ops }) => {
          const file = path.join(caseDir(), 'snap');
          const model = await writeSnapshot(file, set, ops);
          const st = fs.statSync(file);
          expect(st.size).toBeGreaterThan(TiB);
          expect(st.blocks * 512).toBeLessThan(64 << 20); // bitmaps (32 MiB at most) and the few pages written
          const snap = await openStrict(file, set);
          try {
            await assertMatchesModel(snap, model);
          } finally {
            await snap.close();
            fs.rmSync(path.dirname(file), { recursive: true });
          }
        },
      ),
      { numRuns: 3 },
    );
  });
});

/** Half-open byte ranges [start, end) of a file, named for messages. */
type Region = { what: string; start: number; end: number };

function regionsOf(plan: LayoutPlan): Region[] {
  const r: Region[] = [{ what: 'head', start: plan.streamOffset, end: plan.streamOffset + plan.head.length }];
  for (const b of plan.blocks) {
    r.push({ what: `${JSON.stringify(b.name)} entry+header`, start: b.entryOffset, end: b.headerOffset + MAPPED_RAM_HDR_SIZE });
    r.push({ what: `${JSON.stringify(b.name)} bitmap`, start: b.bitmapOffset, end: b.bitmapOffset + b.bitmapSize });
    r.push({ what: `${JSON.stringify(b.name)} pages`, start: b.pagesOffset, end: b.pagesOffset + b.usedLength });
  }
  r.push({ what: 'tail', start: plan.tailOffset, end: Number.MAX_SAFE_INTEGER });
  return r;
}

describe('planLayout', () => {
  // Any alignment that is a multiple of the page size (not only powers of two), any stream offset.
  const planInput = arbBlockSet({ pageSizes: ALL_PAGE_SIZES, maxBlocks: 8 }).chain((set) =>
    fc.record({
      set: fc.constant(set),
      alignment: fc.oneof(fc.constant(undefined), fc.integer({ min: 1, max: 4096 }).map((k) => k * set.pageSize)),
      streamOffset: fc.oneof(fc.constant(0), fc.nat({ max: 1 << 30 }), fc.nat({ max: 2 ** 44 })),
    }),
  );

  it('every plan keeps the layout invariants', () => {
    fc.assert(
      fc.property(planInput, ({ set, alignment, streamOffset }) => {
        const plan = planLayout({ ...writerOptions(set), alignment, streamOffset });
        const align = alignment ?? MAPPED_RAM_ALIGNMENT;
        expect(plan.alignment).toBe(align);
        expect(plan.streamOffset).toBe(streamOffset);
        expect(plan.blocks.map((b) => [b.name, b.usedLength])).toEqual(set.blocks.map((b) => [b.name, b.usedLength]));
        let expectEntry = streamOffset + plan.head.length;
        for (const b of plan.blocks) {
          // Stream continuity: each entry starts where the previous block's pages end.
          expect(b.entryOffset).toBe(expectEntry);
          expect(b.headerOffset).toBe(b.entryOffset + 1 + b.name.length + 8);
          expect(b.pages).toBe(b.usedLength / set.pageSize);
          // Bitmap right after the header, whole 64-bit words.
          expect(b.bitmapOffset).toBe(b.headerOffset + MAPPED_RAM_HDR_SIZE);
          expect(b.bitmapSize).toBe(Math.ceil(b.pages / 64) * 8);
          // Pages after the bitmap, at the first multiple of the alignment from file byte 0.
          expect(b.pagesOffset % align).toBe(0);
          expect(b.pagesOffset).toBeGreaterThanOrEqual(b.bitmapOffset + b.bitmapSize);
          expect(b.pagesOffset - (b.bitmapOffset + b.bitmapSize)).toBeLessThan(align);
          expect(b.end).toBe(b.pagesOffset + b.usedLength);
          expectEntry = b.end;
        }
        // The tail comes after the last block.
        expect(plan.tailOffset).toBe(plan.blocks[plan.blocks.length - 1].end);
        // No two structures overlap, and they come in file order.
        const regions = regionsOf(plan);
        for (let i = 1; i < regions.length; i++) {
          if (regions[i].start < regions[i - 1].end) throw new Error(`${regions[i].what} [${regions[i].start}, …) overlaps ${regions[i - 1].what} (ends ${regions[i - 1].end})`);
        }
      }),
      { numRuns: 400 },
    );
  });

  it('refuses an alignment that is not a multiple of the page size', () => {
    fc.assert(
      fc.property(planInput, fc.integer({ min: 1, max: 1 << 24 }), ({ set }, alignment) => {
        fc.pre(alignment % set.pageSize !== 0);
        expect(() => planLayout({ ...writerOptions(set), alignment })).toThrow(expect.objectContaining({ code: 'BAD_ALIGNMENT' }));
        expect(() => planLayout({ ...writerOptions(set), alignment })).toThrow(LayoutError);
      }),
      { numRuns: 100 },
    );
  });
});

describe('rewrites', () => {
  it('file size is fixed by the block set, and allocated size does not grow with rewrites of the same pages', async () => {
    await fc.assert(
      fc.asyncProperty(arbSnapshotCase({ layout: 'varied', maxBlockBytes: GiB, maxOps: 25 }), fc.integer({ min: 1, max: 4 }), async ({ set, ops }, rewrites) => {
        const dir = caseDir();
        const once = path.join(dir, 'once');
        const again = path.join(dir, 'again');
        const model = await writeSnapshot(once, set, ops);
        // The same sequence replayed: every page written again (some several times, some to zero), same final memory.
        const replayed = Array.from({ length: rewrites + 1 }, () => ops).flat();
        await writeSnapshot(again, set, replayed);
        const a = fs.statSync(once);
        const b = fs.statSync(again);
        const plan = planOf(set);
        const size = plan.tailOffset + encodeTail(plan.ramSectionId, undefined).length;
        expect(a.size).toBe(size);
        expect(b.size).toBe(size);
        // Allocation is up to the file system; a few of its blocks of slack.
        expect(Math.abs(a.blocks - b.blocks) * 512).toBeLessThanOrEqual(8 * a.blksize);
        const snap = await openStrict(again, set);
        try {
          await assertMatchesModel(snap, model);
        } finally {
          await snap.close();
          fs.rmSync(dir, { recursive: true });
        }
      }),
      { numRuns: 15 },
    );
  });
});

describe('abort', () => {
  it('at any point (before, between or during writes, twice) leaves nothing at the target and no temporary file', async () => {
    await fc.assert(
      fc.asyncProperty(
        arbSnapshotCase({ layout: 'varied', maxBlockBytes: GiB, maxOps: 20 }).chain(({ set, ops }) =>
          fc.record({ set: fc.constant(set), ops: fc.constant(ops), at: fc.integer({ min: 0, max: ops.length }), inFlight: fc.boolean(), twice: fc.boolean() }),
        ),
        async ({ set, ops, at, inFlight, twice }) => {
          const dir = caseDir();
          const target = path.join(dir, 'snap');
          const w = await SnapshotWriter.create(target, writerOptions(set));
          for (const op of ops.slice(0, at)) await applyOp(w, op);
          // With inFlight, the remaining writes are started and not awaited before abort.
          const pending = inFlight ? ops.slice(at).map((op) => applyOp(w, op)) : [];
          await w.abort();
          if (twice) await w.abort();
          await Promise.allSettled(pending);
          expect(fs.existsSync(target)).toBe(false);
          expect(fs.readdirSync(dir)).toEqual([]);
          await expect(w.finalize()).rejects.toMatchObject({ code: 'WRITER_CLOSED' });
          await expect(w.writePages(set.blocks[0].name, 0, new Uint8Array(set.pageSize).fill(1))).rejects.toMatchObject({ code: 'WRITER_CLOSED' });
          expect(fs.readdirSync(dir)).toEqual([]);
          fs.rmSync(dir, { recursive: true });
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('verification', () => {
  it('whatever the blocks, layout and sequence, the file verifies strictly with only the expected warnings', async () => {
    await fc.assert(
      fc.asyncProperty(arbSnapshotCase({ pageSizes: ALL_PAGE_SIZES, layout: 'varied', maxBlockBytes: 16 * GiB, maxTotalPages: 2 ** 22, maxOps: 15 }), async ({ set, ops }) => {
        const file = path.join(caseDir(), 'snap');
        await writeSnapshot(file, set, ops);
        const snap = await openStrict(file, set); // strict: any broken rule throws
        try {
          const m = snap.model;
          expect(m.error).toBeUndefined();
          expect(m.complete).toBe(true);
          expect(m.mappedRam).toBe(true);
          expect(m.configuration?.machine).toBe(set.machine);
          expect(m.ramTotal).toBe(set.blocks.reduce((n, b) => n + b.usedLength, 0));
          expect(m.blocks.map((b) => b.pagesPresent)).toEqual(modelOf(set, ops).blocks.map((b) => [...b.pages.values()].filter((d) => d.some((x) => x !== 0)).length));
          // A RAM-only stream has no description; page regions off 1 MiB only when the alignment puts them there.
          const plan = planOf(set);
          const expected = new Set(['NO_DEVICE_DESCRIPTION']);
          if (plan.blocks.some((b) => b.pagesOffset % MAPPED_RAM_ALIGNMENT !== 0)) expected.add('PAGES_UNALIGNED_1M');
          expect(new Set(m.warnings.map((w) => w.code))).toEqual(expected);
        } finally {
          await snap.close();
          fs.rmSync(path.dirname(file), { recursive: true });
        }
      }),
      { numRuns: 15 },
    );
  });
});

// Regressions: bugs these properties found in the writer, pinned with
// it.fails and a minimal repro, then fixed (6496df2).
describe('writer regressions', () => {
  const opts = (blocks: { name: string; usedLength: number }[]) => ({ machine: 'pc-q35-10.0', pageSize: 4096, blocks, fsync: false });

  // Regression (was a bug): writePages checked `first < 0 || first + n > pages` only, so a page
  // index that is NaN or not an integer passes. NaN becomes a write at the
  // descriptor's current position (file byte 0) and overwrites the stream
  // head; 1.5 writes at a misaligned offset and sets a bit from a fraction.
  // Minimal repro:
  //   const w = await SnapshotWriter.create(f, { machine: 'm', pageSize: 4096, blocks: [{ name: 'pc.ram', usedLength: 8 * 4096 }] });
  //   await w.writePages('pc.ram', NaN, new Uint8Array(4096).fill(7)); // resolves
  //   await w.finalize();
  //   await Snapshot.open(f); // BAD_MAGIC: got 0x07070707
  it('writePages refuses a page index that is NaN or not an integer, and the file stays valid', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.constant(Number.NaN), fc.double({ min: 0, max: 7, noNaN: true }).filter((x) => !Number.isInteger(x))), async (first) => {
        const dir = caseDir();
        const file = path.join(dir, 'snap');
        const w = await SnapshotWriter.create(file, opts([{ name: 'pc.ram', usedLength: 8 * 4096 }]));
        await expect(w.writePages('pc.ram', first, new Uint8Array(4096).fill(7))).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
        await w.finalize();
        const snap = await Snapshot.open(file);
        try {
          expect(snap.block('pc.ram').pagesPresent).toBe(0);
        } finally {
          await snap.close();
          fs.rmSync(dir, { recursive: true });
        }
      }),
      { numRuns: 10 },
    );
  });

  // Regression (was a bug): zeroPages did not check that the writer is open (writePages does),
  // nor that `first` is an integer and `count` is not negative: after
  // finalize() or abort() it returns as if the pages had been recorded.
  // Minimal repro:
  //   const w = await SnapshotWriter.create(f, { machine: 'm', pageSize: 4096, blocks: [{ name: 'pc.ram', usedLength: 8 * 4096 }] });
  //   await w.finalize();
  //   w.zeroPages('pc.ram', 0, 1);    // no WRITER_CLOSED
  //   w.zeroPages('pc.ram', 0.5, 1);  // no OUT_OF_RANGE (nor with count -1)
  it('zeroPages refuses a closed writer and ranges that are not whole pages', async () => {
    const dir = caseDir();
    const w = await SnapshotWriter.create(path.join(dir, 'snap'), opts([{ name: 'pc.ram', usedLength: 8 * 4096 }]));
    expect(() => w.zeroPages('pc.ram', 0.5, 1)).toThrow(expect.objectContaining({ code: 'OUT_OF_RANGE' }));
    expect(() => w.zeroPages('pc.ram', 2, -1)).toThrow(expect.objectContaining({ code: 'OUT_OF_RANGE' }));
    await w.finalize();
    expect(() => w.zeroPages('pc.ram', 0, 1)).toThrow(expect.objectContaining({ code: 'WRITER_CLOSED' }));
  });

  // Regression (was a bug): a block name with a character above 0xff (it cannot be written as
  // one byte) escapes planLayout as a bare RangeError from latin1Bytes, not
  // as LayoutError / RamsnapUsageError BAD_BLOCK_NAME like other bad names.
  // Minimal repro:
  //   planLayout({ machine: 'm', pageSize: 4096, blocks: [{ name: 'pc.ram\u0100', usedLength: 4096 }] }); // RangeError, no code
  it('a block name that is not bytes is BAD_BLOCK_NAME, as other bad names', async () => {
    const blocks = [{ name: 'pc.ram\u0100', usedLength: 4096 }];
    expect(() => planLayout(opts(blocks))).toThrow(expect.objectContaining({ code: 'BAD_BLOCK_NAME' }));
    const dir = caseDir();
    await expect(SnapshotWriter.create(path.join(dir, 'snap'), opts(blocks))).rejects.toMatchObject({ code: 'BAD_BLOCK_NAME' });
  });
});
