/**
 * The small stream an instant restore loads: everything of the snapshot but
 * the pages of the blocks that QEMU maps straight from the snapshot file.
 *
 * QEMU's mapped-ram loader copies only the pages whose bit is set, so a
 * mapped block with an empty bitmap keeps what the mapping shows: the
 * snapshot's own page region, page i at pages_offset + i * page_size. The
 * small stream therefore holds the configuration, the other (small) blocks
 * with their pages, the device state, and for each mapped block a bitmap
 * that is empty but for its stale pages.
 *
 * Stale pages: a QEMU save of a running guest leaves the bytes of a page
 * that was sent and later became zero in the file under a clear bit. A
 * reader ignores them; a mapping would show them to the guest. They go into
 * the small stream as zero pages with their bits set (the bytes in the
 * small stream's page region are a hole), so QEMU writes zeros over them.
 * They are found without reading the holes of the snapshot: only the data
 * ranges under clear bits are read (see dataRanges).
 */
import { bitRuns } from '../format/bitmap.js';
import { FormatCode, RamsnapFormatError } from '../format/errors.js';
import { nonZeroRuns, zeroPageOf } from '../format/zero-pages.js';
import type { DataExtent } from '../reader/holes.js';
import type { RamBlock } from '../reader/model.js';
import type { Snapshot } from '../reader/snapshot.js';
import { checkConvertible, copyBlock, mappedRamWriterLike } from '../writer/convert.js';
import type { SnapshotWriter } from '../writer/snapshot-writer.js';

/** Bytes of snapshot read at a time when looking for stale pages. */
const STALE_SCAN_CHUNK = 1 << 20;

/** The extents of `[from, to)` that may hold data (the rest is known to be holes): HoleMap.dataExtents, or a stand-in. */
export type DataRanges = (from: number, to: number) => AsyncIterable<DataExtent> | Iterable<DataExtent>;

/** Without a hole map every byte may be data. */
export const everythingIsData: DataRanges = (start, end) => [{ start, end }];

export interface RestoreStreamResult {
  /** Pages of the mapped blocks that the stream overwrites with zeros, by block. */
  stalePages: Record<string, number>;
  /** Pages copied into the stream (the blocks that are not mapped). */
  pagesCopied: number;
  /** Bytes of the snapshot read to find stale pages. */
  staleBytesScanned: number;
}

/**
 * Writes the small stream for `snap` to `target`, leaving the pages of the
 * `mapped` blocks to the mapping. The snapshot must be a complete
 * mapped-ram file.
 */
export async function writeRestoreStream(snap: Snapshot, mapped: ReadonlySet<string>, target: string, dataRanges: DataRanges = everythingIsData): Promise<RestoreStreamResult> {
  const had = checkConvertible(snap, 'the snapshot');
  const writer = await mappedRamWriterLike(snap, had, target, { force: true, fsync: false });
  const result: RestoreStreamResult = { stalePages: {}, pagesCopied: 0, staleBytesScanned: 0 };
  try {
    for (const block of snap.blocks) {
      if (mapped.has(block.name)) {
        const stale = await markStalePages(snap, block, writer, dataRanges);
        result.stalePages[block.name] = stale.pages;
        result.staleBytesScanned += stale.bytesScanned;
      } else {
        result.pagesCopied += await copyBlock(snap, block, writer);
      }
    }
    await writer.finalize();
  } catch (err) {
    await writer.abort();
    throw err;
  }
  return result;
}

/**
 * Sets the bits of the pages of `block` that are clear in the snapshot but
 * not zero in its file, as zero pages of the small stream.
 */
async function markStalePages(snap: Snapshot, block: RamBlock, writer: SnapshotWriter, dataRanges: DataRanges): Promise<{ pages: number; bytesScanned: number }> {
  const mr = block.mappedRam;
  if (!mr || !block.bitmap) {
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, `block ${block.name} has no mapped-ram page region to map`, { field: `ramblock[${block.name}]`, offset: block.entryOffset });
  }
  const ps = block.pageSize;
  const buf = Buffer.alloc(Math.max(ps, Math.floor(STALE_SCAN_CHUNK / ps) * ps));
  const zeroPage = zeroPageOf(ps);
  let pages = 0;
  let bytesScanned = 0;
  let scannedTo = 0;
  const scanClear = async (first: number, count: number): Promise<void> => {
    const from = mr.pagesOffset + first * ps;
    const to = from + count * ps;
    for await (const { start: a, end: b } of dataRanges(from, to)) {
      // Whole pages around the data range (a range need not start on a page), each page scanned once.
      let at = Math.max(scannedTo, from + Math.floor((Math.max(a, from) - from) / ps) * ps);
      const end = from + Math.ceil((Math.min(b, to) - from) / ps) * ps;
      while (at < end) {
        const n = Math.min(buf.length, end - at);
        await snap.source.read(at, n, `ramblock[${block.name}].pages`, buf.subarray(0, n));
        bytesScanned += n;
        for (const [p0, p1] of nonZeroRuns(buf, n / ps, zeroPage)) {
          writer.zeroPagesPresent(block.name, (at - mr.pagesOffset) / ps + p0, p1 - p0);
          pages += p1 - p0;
        }
        at += n;
      }
      scannedTo = Math.max(scannedTo, end);
    }
  };
  // The clear runs are the gaps between the set runs.
  let next = 0;
  for (const r of bitRuns(block.bitmap, 0, block.pages)) {
    if (r.first > next) await scanClear(next, r.first - next);
    next = r.first + r.count;
  }
  if (next < block.pages) await scanClear(next, block.pages - next);
  return { pages, bytesScanned };
}
