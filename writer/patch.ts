/**
 * Changes guest memory in place in a mapped-ram file, all or nothing.
 *
 * A page's bytes count only when its bitmap bit is set: a clear bit is a
 * zero page whatever the slot holds (QEMU leaves stale bytes under clear
 * bits). So a patch works on whole pages: each touched page is read as the
 * guest sees it (zeros for a clear bit), the patch is laid over it, and the
 * whole page is written back, one positional write per run of pages.
 *
 * A page that ends all zero gets its bit cleared. If it was present its
 * bytes are overwritten with zeros too, so data wiped with a zero patch does
 * not linger in the file; stale bytes already under a clear bit are left as
 * they are (`ramsnap sparsify` removes those).
 *
 * Present pages have no spare slot, so they are overwritten in place under
 * a redo journal (journal.ts): pages that were absent are written first,
 * invisibly; then the journal; then, with the file marked as torn, the
 * present pages and the bitmap. An interrupted patch leaves the original
 * file (journal unfinished) or one that the next `ramsnap patch` of it, or
 * `ramsnap patch --recover`, completes; in between, neither QEMU nor
 * ramsnap takes it for a complete snapshot. The file's lock (lock.ts) keeps
 * a second writer out.
 */
import fs from 'node:fs';
import { clearBit, setBit, testBit } from '../format/bitmap.js';
import { FormatCode, RamsnapError, RamsnapFormatError, RamsnapIoError, RamsnapUsageError, ioError } from '../format/errors.js';
import { isZeroPage, zeroPageOf } from '../format/zero-pages.js';
import type { RamBlock } from '../reader/model.js';
import type { Snapshot } from '../reader/snapshot.js';
import { JournalWriter, MARKER_LENGTH, newMarker, openUnpatched, recoverJournal, replayJournal, type RecoverOutcome } from './journal.js';
import { TargetLock, notice } from './lock.js';
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
  /** fsync between the steps (default true). */
  fsync?: boolean;
  /** Called now and then with the bytes of the patch handled so far and their total. */
  onProgress?: (done: number, total: number) => void;
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
  /** Positional writes of page bytes: one per run of pages that were absent, that were present, or that were present and are now zero. */
  pageWrites: number;
  /** Pages that were absent and are now present. */
  bitsSet: number;
  /** Pages that were present and are now zero. */
  bitsCleared: number;
  /** What an interrupted earlier patch of the file left, settled before this one. */
  recovered?: RecoverOutcome['action'];
}

/** Pages read, patched and written per step: bounds memory for a patch as large as a block. */
const CHUNK_PAGES = 256;

export async function patchSnapshot(file: string, o: PatchOptions): Promise<PatchResult> {
  const data = await openPatchData(o.data);
  try {
    mustExist(file);
    const lock = TargetLock.acquire(file, 'patch');
    try {
      const recovered = await recoverJournal(file, { fsync: o.fsync });
      if (recovered.action !== 'none') notice(describeRecovery(file, recovered));
      const snap = await openForPatch(file, o.offset);
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
        const r = await applyPatch(snap, file, block, o.at, data, o.fsync ?? true, o.onProgress);
        return recovered.action === 'none' ? r : { ...r, recovered: recovered.action };
      } finally {
        await snap.close();
      }
    } finally {
      lock.release();
    }
  } finally {
    await data.close();
  }
}

/**
 * `ramsnap patch --recover FILE`: settles what an interrupted patch left,
 * under the file's lock. A file that carries the patch marker but has no
 * journal cannot be recovered (PATCH_IN_PROGRESS).
 */
export async function recoverPatch(file: string, o: { offset?: number; fsync?: boolean } = {}): Promise<RecoverOutcome> {
  mustExist(file);
  const lock = TargetLock.acquire(file, 'recover');
  try {
    const r = await recoverJournal(file, { fsync: o.fsync });
    if (r.action === 'none') await (await openForPatch(file, o.offset, true)).close();
    return r;
  } finally {
    lock.release();
  }
}

/** A missing file is reported as itself, not as a lock file that cannot be created beside it. */
function mustExist(file: string): void {
  try {
    fs.lstatSync(file);
  } catch (err) {
    throw ioError(err, file, 'open');
  }
}

export function describeRecovery(file: string, r: RecoverOutcome): string {
  switch (r.action) {
    case 'none':
      return `${file}: no interrupted patch to recover`;
    case 'discarded':
      return `removed the journal of a patch of ${file} that was interrupted before it changed the file (${r.journal})`;
    case 'rolled-forward':
      return `completed the interrupted patch of ${file} from its journal (${r.bytes} bytes of pages)`;
  }
}

/** Opens the file strictly (the lock is held and any journal settled); the patch marker without a journal is PATCH_IN_PROGRESS, not BAD_MAGIC. */
async function openForPatch(file: string, offset: number | undefined, lenient = false): Promise<Snapshot> {
  return (await openUnpatched(file, { offset, lenient })).snap;
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

/** What happens to a touched page. */
const enum Fate {
  /** Absent and still zero: nothing. */
  NONE,
  /** Absent, now non-zero: written before the journal, invisible until its bit is set. */
  HIDDEN,
  /** Present, now different bytes: through the journal. */
  PAGES,
  /** Present, now zero: zeros through the journal, bit cleared. */
  ZEROS,
}

async function applyPatch(
  snap: Snapshot,
  file: string,
  block: RamBlock,
  at: number,
  data: OpenPatchData,
  sync: boolean,
  onProgress?: (done: number, total: number) => void,
): Promise<PatchResult> {
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
  let journal: JournalWriter | undefined;
  try {
    const st = fs.fstatSync(fd);
    const markerOffset = snap.model.streamOffset;
    const original = await snap.source.read(markerOffset, MARKER_LENGTH, 'file.magic');
    journal = await JournalWriter.create(file, { fileSize: st.size, markerOffset, original, marker: newMarker(), mtimeBeforeMs: st.mtimeMs });
    let hidden = 0;
    let visible = 0;
    const buf = new Uint8Array(CHUNK_PAGES * ps);
    const chunkBytes = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
    const zeroPage = zeroPageOf(ps);
    const fate = new Uint8Array(CHUNK_PAGES);
    for (let c0 = firstPage; c0 < endPage; c0 += CHUNK_PAGES) {
      const n = Math.min(CHUNK_PAGES, endPage - c0);
      const chunk = buf.subarray(0, n * ps);
      // Guest memory as it is: zeros under clear bits, whatever the slots hold.
      await snap.read(block, c0 * ps, n * ps, chunk);
      const from = Math.max(at, c0 * ps);
      const to = Math.min(end, (c0 + n) * ps);
      await data.read(from - at, chunk.subarray(from - c0 * ps, to - c0 * ps));
      for (let i = 0; i < n; i++) {
        const page = c0 + i;
        // Zero-ness of each page, once.
        const zero = isZeroPage(chunkBytes, i, zeroPage);
        const present = testBit(before, page);
        fate[i] = present ? (zero ? Fate.ZEROS : Fate.PAGES) : zero ? Fate.NONE : Fate.HIDDEN;
        if (fate[i] === Fate.HIDDEN) {
          setBit(bits, bitOf(page));
          result.bitsSet++;
        } else if (fate[i] === Fate.ZEROS) {
          clearBit(bits, bitOf(page));
          result.bitsCleared++;
        }
      }
      // One write (or journal record) per run of pages with the same fate.
      let p = 0;
      while (p < n) {
        const f = fate[p];
        const start = p;
        while (p < n && fate[p] === f) p++;
        if (f === Fate.NONE) continue;
        const offset = mr.pagesOffset + (c0 + start) * ps;
        const bytes = chunk.subarray(start * ps, p * ps);
        if (f === Fate.HIDDEN) {
          await sink.write(offset, bytes);
          await journal.hidden(offset, bytes);
          hidden++;
        } else if (f === Fate.PAGES) {
          await journal.pages(offset, bytes);
          visible++;
        } else {
          await journal.zeros(offset, bytes.length);
          visible++;
        }
        result.pagesWritten += p - start;
        result.pageWrites++;
      }
      onProgress?.((c0 + n - firstPage) * ps, (endPage - firstPage) * ps);
    }
    if (visible === 0 && result.bitsSet === 0) {
      // Nothing the guest would see changes (zeros over absent pages): no journal, no marker.
      await journal.discard();
      return result;
    }
    // The bytes under clear bits are durable before the journal that will set their bits.
    if (sync && hidden > 0) await sink.sync();
    await journal.bitmap(mr.bitmapOffset + bmFrom, bits, before.subarray(bmFrom, bmTo));
    await journal.finish(sync);
  } catch (err) {
    // The file has not been touched (only slots under clear bits): the patch did not happen.
    await journal?.discard();
    throw err;
  } finally {
    await sink.close();
  }
  // From here on the patch happens: now, or at the next recovery.
  try {
    await replayJournal(file, journal.parsed(), { fsync: sync });
  } catch (err) {
    const e = err instanceof RamsnapError ? err : ioError(err, file, 'write');
    throw new RamsnapIoError(e.code, `${e.message}; the patch is in the journal: finish it with: ramsnap patch --recover ${file}`, file);
  } finally {
    journal.settled();
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
