/**
 * Makes a mapped-ram file sparse again: slots under clear bits (stale
 * bytes QEMU left, or pages a patch zeroed) and present pages that hold
 * only zeros become holes, and those pages' bits are cleared.
 *
 * Node cannot punch holes (no fallocate(PUNCH_HOLE)), so the file is
 * copied into a new one beside it, byte for byte at the same offsets,
 * except that nothing is written where the result is zero: only the data
 * extents of the original are read (reader/holes.ts) outside the page
 * regions, only present pages inside them, and of those bytes only the
 * file-system blocks that are not all zero are written. So every block the
 * copy allocates holds a non-zero byte that the original held at the same
 * offset (the new bitmaps only clear bits): the copy is never more
 * allocated than the original, the bytes before the stream (a libvirt
 * header, the gap before a `,offset=` stream) keep their holes, and the
 * tail is QEMU's own. Both files are synced and their allocations compared
 * (should the file system need more for the copy, for its own metadata, the
 * original stays and nothing is freed); then the copy is renamed over the
 * original. A
 * crash leaves the original (or, after the rename, the new file) at the
 * path, plus at most a temporary file named with TEMP_MARK. The file's
 * lock is held from the first read to the rename (a patch in between would
 * be lost), and an interrupted patch of the file is completed first.
 */
import fs from 'node:fs';
import path from 'node:path';
import { clearBit } from '../format/bitmap.js';
import { FormatCode, RamsnapFormatError, ioError } from '../format/errors.js';
import { isZeroPage, isZeroRange, zeroPageOf } from '../format/zero-pages.js';
import { HoleMap, type HoleMapKind } from '../reader/holes.js';
import type { RamBlock } from '../reader/model.js';
import { Snapshot } from '../reader/snapshot.js';
import type { FileSource } from '../reader/source.js';
import { recoverJournal } from './journal.js';
import { TargetLock, notice } from './lock.js';
import { describeRecovery } from './patch.js';
import { Coverage, TempFile } from './sink.js';

export interface SparsifyOptions {
  /** File offset where the stream starts (as Snapshot.open). */
  offset?: number;
  /** fsync before the rename (default true). */
  fsync?: boolean;
  /** Called with the temporary file's path once it exists (tests, progress). */
  onTemp?: (tempPath: string) => void;
  /** Called now and then with the bytes of guest memory rewritten so far and their total. */
  onProgress?: (done: number, total: number) => void;
}

export interface SparsifyResult {
  file: string;
  /** Allocated bytes (st_blocks * 512) before and after. */
  allocatedBefore: number;
  allocatedAfter: number;
  /** allocatedBefore - allocatedAfter: never negative. */
  bytesFreed: number;
  sizeBefore: number;
  sizeAfter: number;
  /** Present pages that held only zeros: their bits were cleared. */
  pagesCleared: number;
  /** Present non-zero pages copied. */
  pagesKept: number;
  /** The unit of holes: the file system's block size. */
  blockSize: number;
  /** How the original's holes outside page regions were found (reader/holes.ts). */
  holeMap: HoleMapKind;
  /** False when the copy would have taken more blocks than the original (file-system metadata): the original was kept. */
  replaced: boolean;
}

/** Bytes read and examined at a time. */
const CHUNK = 1 << 20;

export async function sparsifySnapshot(file: string, o: SparsifyOptions = {}): Promise<SparsifyResult> {
  // Replace the file a symlink points to, not the symlink.
  let target: string;
  try {
    target = fs.realpathSync(file);
  } catch (err) {
    throw ioError(err, file, 'open');
  }
  // The lock is held from the read to the rename: a patch in between would be lost with the old file.
  const lock = TargetLock.acquire(target, 'sparsify');
  try {
    const recovered = await recoverJournal(target, { fsync: o.fsync });
    if (recovered.action !== 'none') notice(describeRecovery(file, recovered));
    return await rewrite(file, target, lock, o);
  } finally {
    lock.release();
  }
}

/** A byte range of the file [start, end). */
interface Range {
  start: number;
  end: number;
}

async function rewrite(file: string, target: string, lock: TargetLock, o: SparsifyOptions): Promise<SparsifyResult> {
  const snap = await Snapshot.open(target, { offset: o.offset });
  const fd = (snap.source as FileSource).fd;
  let before: fs.Stats;
  try {
    // Allocation is compared once both files are on disk: before writeback, delayed allocation leaves out
    // the blocks a file system adds for its own bookkeeping (an ext4 extent block past four extents).
    fs.fdatasyncSync(fd);
    before = fs.fstatSync(fd);
  } catch (err) {
    await snap.close();
    throw ioError(err, target, 'sync');
  }
  let temp: TempFile | undefined;
  let map: HoleMap | undefined;
  const fsync = o.fsync ?? true;
  try {
    const m = snap.model;
    if (!m.mappedRam) {
      throw new RamsnapFormatError(FormatCode.UNSUPPORTED, 'sparsify works on mapped-ram files only; this is a legacy (sequential) stream: convert it to mapped-ram first', {
        field: 'configuration.capabilities',
        offset: m.streamOffset,
      });
    }
    const blockSize = fileSystemBlock(target);
    const blocks = snap.blocks.filter((b) => b.mappedRam && b.bitmap);
    // Page regions and bitmaps are rebuilt; every other byte of the file is copied where it is not zero.
    const rebuilt: Range[] = blocks.flatMap((b) => {
      const mr = b.mappedRam!;
      return [
        { start: mr.bitmapOffset, end: mr.bitmapOffset + mr.bitmapSize },
        { start: mr.pagesOffset, end: mr.pagesOffset + b.usedLength },
      ];
    });
    const copied = complement(rebuilt, m.fileSize);
    const tailStart = Math.max(0, ...rebuilt.map((r) => r.end));

    // The rewrite is the same file: it keeps the original's permission bits (a snapshot holds guest memory)
    // and, when we may (root sparsifying a user's file), its owner, applied once the file is complete.
    temp = TempFile.create(target, { force: true, lock, mode: before.mode & 0o777, owner: { uid: before.uid, gid: before.gid } });
    o.onTemp?.(temp.path);
    const out = new SparseWriter(temp, blockSize);
    map = await HoleMap.open(fd, target);
    const buf = Buffer.allocUnsafe(CHUNK);
    const copyData = async (ranges: Range[]): Promise<void> => {
      for (const r of ranges) {
        for await (const e of map!.dataExtents(r.start, r.end)) {
          for (let at = e.start; at < e.end; at += CHUNK) {
            const n = Math.min(CHUNK, e.end - at);
            await out.write(at, await snap.source.read(at, n, 'sparsify', buf));
          }
        }
      }
    };
    // In the writer's order (docs/writers.md §1): the head, the pages, the bitmaps (a set bit is what makes a page count), the tail.
    await copyData(copied.filter((r) => r.start < tailStart));
    let pagesCleared = 0;
    let pagesKept = 0;
    const bitmaps: Uint8Array[] = [];
    const coverage = new Coverage(blocks, o.onProgress);
    for (const b of blocks) {
      const r = await copyPresentPages(snap, b, out, buf, coverage);
      pagesCleared += r.cleared;
      pagesKept += r.kept;
      bitmaps.push(r.bitmap);
    }
    for (let i = 0; i < blocks.length; i++) await out.write(blocks[i].mappedRam!.bitmapOffset, bitmaps[i]);
    await copyData(copied.filter((r) => r.start >= tailStart));
    coverage.finished();

    await temp.truncate(m.fileSize);
    // Synced whatever `fsync` says: only then does st_blocks count every block the copy takes.
    await temp.sync();
    const allocatedAfter = fs.fstatSync(temp.fd).blocks * 512;
    const allocatedBefore = before.blocks * 512;
    const replaced = allocatedAfter <= allocatedBefore;
    if (replaced) await temp.commit(m.fileSize, fsync);
    else await temp.discard();
    return {
      file,
      allocatedBefore,
      allocatedAfter: replaced ? allocatedAfter : allocatedBefore,
      bytesFreed: replaced ? allocatedBefore - allocatedAfter : 0,
      sizeBefore: before.size,
      sizeAfter: m.fileSize,
      pagesCleared: replaced ? pagesCleared : 0,
      pagesKept,
      blockSize,
      holeMap: map.kind,
      replaced,
    };
  } catch (err) {
    await temp?.discard();
    throw err;
  } finally {
    map?.close();
    await snap.close();
  }
}

/**
 * Copies the present pages of a block, a run at a time, and returns its
 * new bitmap: a present page that holds only zeros loses its bit and is
 * not written.
 */
async function copyPresentPages(snap: Snapshot, b: RamBlock, out: SparseWriter, buf: Buffer, coverage: Coverage): Promise<{ bitmap: Uint8Array; cleared: number; kept: number }> {
  const ps = b.pageSize;
  const bitmap = Uint8Array.from(b.bitmap!);
  const runPages = Math.max(1, Math.floor(buf.length / ps));
  const zeroPage = zeroPageOf(ps);
  let cleared = 0;
  let kept = 0;
  for (const run of snap.presentRuns(b, 0, b.pages, runPages)) {
    const bytes = await snap.read(b, run.first * ps, run.count * ps, buf);
    const data = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    for (let p = 0; p < run.count; p++) {
      if (isZeroPage(data, p, zeroPage)) {
        clearBit(bitmap, run.first + p);
        cleared++;
      } else {
        kept++;
      }
    }
    // Zero pages are zero blocks too: the writer leaves them (and any other zero block) as holes.
    await out.write(run.fileOffset, data);
    coverage.reached(b.name, (run.first + run.count) * ps);
  }
  return { bitmap, cleared, kept };
}

/**
 * Positional writes of only the file-system blocks (at absolute offsets)
 * that hold a non-zero byte, each run of them in one write: what is not
 * written stays a hole in the new file.
 */
class SparseWriter {
  private readonly zero: Buffer;

  constructor(
    private readonly sink: TempFile,
    private readonly blockSize: number,
  ) {
    this.zero = Buffer.alloc(blockSize);
  }

  async write(offset: number, bytes: Uint8Array): Promise<void> {
    const data = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
    const bs = this.blockSize;
    let runStart = -1;
    for (let at = 0; at < data.length; ) {
      const next = Math.min(data.length, (Math.floor((offset + at) / bs) + 1) * bs - offset);
      const zero = isZeroRange(data, at, next, this.zero);
      if (!zero && runStart < 0) runStart = at;
      if (zero && runStart >= 0) {
        await this.sink.write(offset + runStart, data.subarray(runStart, at));
        runStart = -1;
      }
      at = next;
    }
    if (runStart >= 0) await this.sink.write(offset + runStart, data.subarray(runStart));
  }
}

/** [0, size) without `ranges`, in order. */
function complement(ranges: Range[], size: number): Range[] {
  const out: Range[] = [];
  let at = 0;
  for (const r of [...ranges].sort((a, b) => a.start - b.start)) {
    if (r.start > at) out.push({ start: at, end: r.start });
    at = Math.max(at, r.end);
  }
  if (at < size) out.push({ start: at, end: size });
  return out;
}

/** The file system's block size where the file is: the unit of allocation, so of holes. */
function fileSystemBlock(file: string): number {
  try {
    const bs = fs.statfsSync(path.dirname(file)).bsize;
    return Number.isInteger(bs) && bs >= 512 && bs <= 1 << 20 ? bs : 4096;
  } catch {
    return 4096;
  }
}
