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
import { writeOverlaidBlock } from '../writer/delta.js';
import { withoutDeltaMember } from '../format/delta.js';

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
export async function writeRestoreStream(snap: Snapshot, mapped: ReadonlySet<string>, target: string, dataRanges: DataRanges = everythingIsData, deltas: Snapshot[] = []): Promise<RestoreStreamResult> {
  // With deltas (restore --base), the configuration and device state are the last delta's, its record left out.
  const top = deltas.length ? deltas[deltas.length - 1] : snap;
  const writer = await mappedRamWriterLike(top, checkConvertible(top, 'the snapshot'), target, { force: true, fsync: false });
  const result: RestoreStreamResult = { stalePages: {}, pagesCopied: 0, staleBytesScanned: 0 };
  try {
    if (deltas.length && writer.device?.vmdesc) await writer.retarget({ device: { ...writer.device, vmdesc: withoutDeltaMember(writer.device.vmdesc) } });
    for (const block of snap.blocks) {
      if (mapped.has(block.name)) {
        const stale = await markStalePages(snap, block, writer, dataRanges);
        result.stalePages[block.name] = stale.pages;
        result.staleBytesScanned += stale.bytesScanned;
        // The deltas' pages go over the mapping (after the stale zeros: a carried page wins).
        if (deltas.length) result.pagesCopied += (await writeOverlaidBlock(snap, deltas, block.name, writer, true)).pages;
      } else {
        result.pagesCopied += deltas.length ? (await writeOverlaidBlock(snap, deltas, block.name, writer)).pages : await copyBlock(snap, block, writer);
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
 * not zero in its file, as zero pages of the small stream. The data extents
 * of the page region are asked for once, in file order, and only their
 * pages with a clear bit are read: the cost follows what the file holds,
 * not the guest's size or how fragmented its bitmap is.
 */
async function markStalePages(snap: Snapshot, block: RamBlock, writer: SnapshotWriter, dataRanges: DataRanges): Promise<{ pages: number; bytesScanned: number }> {
  const mr = block.mappedRam;
  const bitmap = block.bitmap;
  if (!mr || !bitmap) {
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, `block ${block.name} has no mapped-ram page region to map`, { field: `ramblock[${block.name}]`, offset: block.entryOffset });
  }
  const ps = block.pageSize;
  const buf = Buffer.alloc(Math.max(ps, Math.floor(STALE_SCAN_CHUNK / ps) * ps));
  const zeroPage = zeroPageOf(ps);
  const field = `ramblock[${block.name}].pages`;
  let pages = 0;
  let bytesScanned = 0;
  /** Reads pages [first, end) and marks the non-zero ones. */
  const scan = async (first: number, end: number): Promise<void> => {
    for (let p = first; p < end; ) {
      const n = Math.min(buf.length / ps, end - p);
      await snap.source.read(mr.pagesOffset + p * ps, n * ps, field, buf.subarray(0, n * ps));
      bytesScanned += n * ps;
      for (const [p0, p1] of nonZeroRuns(buf, n, zeroPage)) {
        writer.zeroPagesPresent(block.name, p + p0, p1 - p0);
        pages += p1 - p0;
      }
      p += n;
    }
  };
  let done = 0; // pages before this are scanned (or present)
  for await (const extent of dataRanges(mr.pagesOffset, mr.pagesOffset + block.usedLength)) {
    // Whole pages around the extent (an extent need not start on a page), each page once.
    const first = Math.max(done, Math.floor((extent.start - mr.pagesOffset) / ps));
    const end = Math.min(block.pages, Math.ceil((extent.end - mr.pagesOffset) / ps));
    // The clear runs inside the extent are the gaps between its set runs.
    let next = first;
    for (const r of bitRuns(bitmap, first, end)) {
      if (r.first > next) await scan(next, r.first);
      next = r.first + r.count;
    }
    if (next < end) await scan(next, end);
    done = Math.max(done, end);
  }
  return { pages, bytesScanned };
}
