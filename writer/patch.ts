/**
 * Changes guest memory in place in a mapped-ram file.
 *
 * A page's bytes count only when its bitmap bit is set: a clear bit is a
 * zero page whatever the slot holds (QEMU leaves stale bytes under clear
 * bits). So a patch works on whole pages: each touched page is read as the
 * guest sees it (zeros for a clear bit), the patch is laid over it, and the
 * whole page is written back, one positional write per run of pages.
 *
 * Order of writes, so that a crash never makes a page present whose bytes
 * are not written yet:
 *   1. page bytes (every touched page that ends non-zero, and zeros over
 *      every touched page that ends zero but was present), then fsync;
 *   2. the bitmap bytes that cover the touched pages, in one write, then fsync.
 * A page that ends all zero gets its bit cleared. If it was present its
 * bytes are overwritten with zeros too, so data wiped with a zero patch does
 * not linger in the file; stale bytes already under a clear bit are left as
 * they are (`ramsnap sparsify` removes those).
 *
 * What this does not give: all-or-nothing for pages that were already
 * present. Their slots are overwritten in place (mapped-ram has no spare
 * slot to write to first), so a crash during step 1 can leave some of them
 * patched and others not; each page is either old or new. Pages that were
 * absent become visible only in step 2.
 */
import fs from 'node:fs';
import { clearBit, setBit, testBit } from '../format/bitmap.js';
import { FormatCode, RamsnapFormatError, RamsnapUsageError, ioError } from '../format/errors.js';
import type { RamBlock } from '../reader/model.js';
import { Snapshot } from '../reader/snapshot.js';
import { FileSink } from './sink.js';

/** What to write: bytes, a file's bytes, or one byte repeated. */
export type PatchData = { bytes: Uint8Array } | { file: string } | { fill: number; length: number };

export interface PatchOptions {
  block: string;
  /** Byte offset inside the block. */
  at: number;
  data: PatchData;
  /** File offset where the stream starts (as Snapshot.open). */
  offset?: number;
  /** fsync after the page bytes and after the bitmap (default true). */
  fsync?: boolean;
}

export interface PatchResult {
  file: string;
  block: string;
  at: number;
  length: number;
  /** Pages [firstPage, firstPage + pages) were touched. */
  firstPage: number;
  pages: number;
  /** Pages whose bytes were written (patched pages, and zeros over present pages that became zero). */
  pagesWritten: number;
  /** Positional writes of page bytes (one per run of pages within a chunk). */
  pageWrites: number;
  /** Pages that were absent and are now present. */
  bitsSet: number;
  /** Pages that were present and are now zero. */
  bitsCleared: number;
}

/** Pages read, patched and written per step: bounds memory for a patch as large as a block. */
const CHUNK_PAGES = 256;

export async function patchSnapshot(file: string, o: PatchOptions): Promise<PatchResult> {
  const data = await openPatchData(o.data);
  try {
    const snap = await Snapshot.open(file, { offset: o.offset });
    try {
      const block = patchableBlock(snap, o.block);
      const length = data.length;
      if (length > block.usedLength) {
        throw new RamsnapUsageError('DATA_TOO_LARGE', `the patch is ${length} bytes, larger than block ${block.name} (${block.usedLength} bytes)`, 'data-file');
      }
      if (length === 0) throw new RamsnapUsageError('EMPTY_PATCH', 'the patch is empty (0 bytes)', 'length');
      if (!Number.isSafeInteger(o.at) || o.at < 0 || o.at + length > block.usedLength) {
        throw new RamsnapUsageError('OUT_OF_RANGE', `--at ${o.at} with ${length} bytes runs past the end of ${block.name} (${block.usedLength} bytes)`, 'at');
      }
      return await applyPatch(snap, file, block, o.at, data, o.fsync ?? true);
    } finally {
      await snap.close();
    }
  } finally {
    await data.close();
  }
}

/** The block to patch: only a mapped-ram block has fixed slots to patch in place. */
function patchableBlock(snap: Snapshot, name: string): RamBlock {
  const m = snap.model;
  if (!m.mappedRam) {
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, 'patch works on mapped-ram files only; this is a legacy (sequential) stream: convert it to mapped-ram first', {
      field: 'configuration.capabilities',
      offset: m.streamOffset,
      expected: 'mapped-ram',
    });
  }
  const block = snap.block(name);
  if (!block.mappedRam || !block.bitmap || block.shared) {
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, `block ${name} is shared (x-ignore-shared): its pages are not in the file`, {
      field: `ramblock[${name}]`,
      offset: block.entryOffset,
    });
  }
  return block;
}

async function applyPatch(snap: Snapshot, file: string, block: RamBlock, at: number, data: OpenPatchData, sync: boolean): Promise<PatchResult> {
  const mr = block.mappedRam as NonNullable<RamBlock['mappedRam']>;
  const ps = block.pageSize;
  const end = at + data.length;
  const firstPage = Math.floor(at / ps);
  const endPage = Math.ceil(end / ps);
  const before = block.bitmap as Uint8Array;
  // The bitmap bytes that hold the touched pages' bits (bits of neighbouring pages in the same bytes ride along unchanged).
  const bmFrom = firstPage >>> 3;
  const bmTo = ((endPage - 1) >>> 3) + 1;
  const bits = before.slice(bmFrom, bmTo);
  const bitOf = (p: number): number => p - bmFrom * 8;

  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
  } catch (err) {
    throw ioError(err, file, 'open for writing');
  }
  const sink = new FileSink(file, fd);
  const result: PatchResult = { file, block: block.name, at, length: data.length, firstPage, pages: endPage - firstPage, pagesWritten: 0, pageWrites: 0, bitsSet: 0, bitsCleared: 0 };
  try {
    const buf = new Uint8Array(CHUNK_PAGES * ps);
    const zeroPage = Buffer.alloc(ps);
    const zero = new Uint8Array(CHUNK_PAGES);
    for (let c0 = firstPage; c0 < endPage; c0 += CHUNK_PAGES) {
      const n = Math.min(CHUNK_PAGES, endPage - c0);
      const chunk = buf.subarray(0, n * ps);
      // Guest memory as it is: zeros under clear bits, whatever the slots hold.
      await snap.read(block, c0 * ps, n * ps, chunk);
      const from = Math.max(at, c0 * ps);
      const to = Math.min(end, (c0 + n) * ps);
      await data.read(from - at, chunk.subarray(from - c0 * ps, to - c0 * ps));
      // Zero-ness of each page, once: the first byte settles most pages, memcmp the rest.
      for (let i = 0; i < n; i++) zero[i] = chunk[i * ps] === 0 && zeroPage.equals(chunk.subarray(i * ps, (i + 1) * ps)) ? 1 : 0;
      // Which pages to write: the non-zero ones, and zeros over present pages that became zero.
      let p = 0;
      while (p < n) {
        const write = (i: number): boolean => zero[i] === 0 || testBit(before, c0 + i);
        while (p < n && !write(p)) p++;
        const start = p;
        while (p < n && write(p)) p++;
        if (p > start) {
          await sink.write(mr.pagesOffset + (c0 + start) * ps, chunk.subarray(start * ps, p * ps));
          result.pagesWritten += p - start;
          result.pageWrites++;
        }
      }
      for (let i = 0; i < n; i++) {
        const page = c0 + i;
        const present = testBit(before, page);
        const nonZero = zero[i] === 0;
        if (nonZero && !present) {
          setBit(bits, bitOf(page));
          result.bitsSet++;
        } else if (!nonZero && present) {
          clearBit(bits, bitOf(page));
          result.bitsCleared++;
        }
      }
    }
    // The bytes are durable before any bit says they count.
    if (sync && result.pageWrites > 0) await sink.sync();
    if (result.bitsSet + result.bitsCleared > 0) {
      await sink.write(mr.bitmapOffset + bmFrom, bits);
      if (sync) await sink.sync();
    }
  } finally {
    await sink.close();
  }
  return result;
}

interface OpenPatchData {
  length: number;
  /** Fills `into` with the patch's bytes from `offset`. */
  read(offset: number, into: Uint8Array): Promise<void>;
  close(): Promise<void>;
}

async function openPatchData(d: PatchData): Promise<OpenPatchData> {
  if ('bytes' in d) {
    return { length: d.bytes.length, read: async (off, into) => into.set(d.bytes.subarray(off, off + into.length)), close: async () => {} };
  }
  if ('fill' in d) {
    if (!Number.isInteger(d.fill) || d.fill < 0 || d.fill > 255) throw new RamsnapUsageError('BAD_NUMBER', `--fill must be a byte (0 to 255), got ${d.fill}`, 'fill');
    if (!Number.isSafeInteger(d.length) || d.length < 0) throw new RamsnapUsageError('BAD_NUMBER', `--length must be a byte count, got ${d.length}`, 'length');
    return { length: d.length, read: async (_off, into) => void into.fill(d.fill), close: async () => {} };
  }
  let fd: number;
  let size: number;
  try {
    fd = fs.openSync(d.file, 'r');
    size = fs.fstatSync(fd).size;
  } catch (err) {
    throw ioError(err, d.file, 'open');
  }
  return {
    length: size,
    read: async (off, into) => {
      let done = 0;
      while (done < into.length) {
        const got = await new Promise<number>((resolve, reject) =>
          fs.read(fd, into, done, into.length - done, off + done, (err, b) => (err ? reject(ioError(err, d.file, 'read')) : resolve(b))),
        );
        if (got === 0) throw new RamsnapUsageError('DATA_CHANGED', `${d.file} shrank while being read`, 'data-file');
        done += got;
      }
    },
    close: async () => fs.closeSync(fd),
  };
}
