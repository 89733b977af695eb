/**
 * All-or-nothing patches in place: a redo journal beside the file, and the
 * guard that keeps readers from taking a torn file for a complete one.
 *
 * mapped-ram has no spare slot for a page, so a patch must overwrite
 * present pages where they are. To make that all-or-nothing, `patch`
 * (holding the file's lock, lock.ts):
 *
 *   1. writes the new bytes of pages that were absent into their slots
 *      (invisible: their bits are still clear) and fsyncs the file;
 *   2. writes the journal `.NAME.ramsnap-journal`: the 8 bytes at the
 *      stream's start, the new bytes of every present page it changes (or
 *      a zero run), the bitmap bytes before and after, a SHA-256 of each
 *      run of step 1, and last a SHA-256 of the whole journal; fsyncs it
 *      and the directory. Only a journal that ends in a matching checksum
 *      counts;
 *   3. invalidates the file: writes `RSPJ` + a 4-byte token over the
 *      stream's `QEVM` magic and version, fsync. QEMU refuses the file
 *      ("not a migration stream") and ramsnap's readers say
 *      PATCH_IN_PROGRESS;
 *   4. writes the present pages and the bitmap bytes, fsync;
 *   5. writes the magic and version back, sets the file's mtime past any
 *      value it had (see ReadGuard), fsync;
 *   6. removes the journal and fsyncs the directory.
 *
 * Killed before step 2 is complete, the file is the original (step 1's
 * bytes are under clear bits) and an incomplete journal is simply removed
 * by the next run. Killed after it, the next `ramsnap patch` of the file
 * (or `ramsnap patch --recover FILE`) replays steps 3 to 6 from the journal;
 * replaying is idempotent, so a kill during recovery is recovered the same
 * way. So a patch leaves the original or the fully patched file, never a
 * mixture that verifies.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { FormatCode, RamsnapIoError, StateCode, ioError, type RamsnapError } from '../format/errors.js';
import { Snapshot, type OpenOptions } from '../reader/snapshot.js';
import { onInterrupt } from './cleanup.js';
import { JOURNAL_SUFFIX, sidecarPath } from './lock.js';
import { FileSink, syncDirectory } from './sink.js';

/** Written over the stream's `QEVM` while the file is torn; the next 4 bytes (over the stream version) are the journal's token. */
export const PATCH_MARKER = 'RSPJ';
/** Bytes replaced at the stream's start: magic (4) and stream version (4). */
export const MARKER_LENGTH = 8;

const JOURNAL_MAGIC = 'RSNPJRNL';
const JOURNAL_VERSION = 1;

/**
 * Journal header, big-endian:
 *    0  8  "RSNPJRNL"
 *    8  4  version (1)
 *   12  4  reserved (0)
 *   16  8  size of the patched file
 *   24  8  file offset of the stream (where the marker goes)
 *   32  8  the 8 bytes there before the patch (QEVM, version 3)
 *   40  8  the marker: "RSPJ" and the token
 *   48  8  the file's mtime before the patch, in ms (float64)
 */
const HEADER_SIZE = 56;

/**
 * Records follow, each a 16-byte head and its data:
 *    0  1  kind
 *    1  3  reserved (0)
 *    4  4  length: bytes of the file it covers
 *    8  8  file offset
 * Data by kind: HIDDEN a SHA-256 of the bytes step 1 wrote there (32);
 * PAGES the new bytes (length); ZEROS none; BITMAP new then old bytes
 * (2 × length); END the SHA-256 of every journal byte before the END
 * record (32), whose offset field holds that byte count.
 */
const RECORD_HEAD = 16;
export const RecordKind = { HIDDEN: 1, PAGES: 2, ZEROS: 3, BITMAP: 4, END: 0xff } as const;
type RecordKind = (typeof RecordKind)[keyof typeof RecordKind];

/** Bytes copied per read/write when replaying, and per journal record of pages. */
const COPY_CHUNK = 1 << 20;

export interface JournalHead {
  fileSize: number;
  markerOffset: number;
  /** The 8 bytes at markerOffset before the patch. */
  original: Uint8Array;
  /** The 8 bytes written there while the file is torn. */
  marker: Uint8Array;
  mtimeBeforeMs: number;
}

export function journalPath(file: string): string {
  return sidecarPath(realFile(file), JOURNAL_SUFFIX);
}

/** The file's real path (readers follow symlinks; patch refuses them, so both name the same journal). */
function realFile(file: string): string {
  try {
    return fs.realpathSync(file);
  } catch {
    return file;
  }
}

/** A fresh marker: "RSPJ" and a random token. */
export function newMarker(): Uint8Array {
  const m = new Uint8Array(MARKER_LENGTH);
  m.set(Buffer.from(PATCH_MARKER, 'latin1'), 0);
  m.set(crypto.randomBytes(4), 4);
  return m;
}

export function patchInProgress(file: string, journal: string | undefined): RamsnapIoError {
  const why = journal
    ? `${file} is being patched, or a patch of it was interrupted (journal ${journal}); wait for it, or finish it with: ramsnap patch --recover ${file}`
    : `${file} was being patched and its journal ${journalPath(file)} is gone: its pages may be torn and cannot be recovered`;
  return new RamsnapIoError(StateCode.PATCH_IN_PROGRESS, why, file);
}

/** Whether the 4 bytes at `offset` of `file` are the patch marker. */
export function hasPatchMarker(file: string, offset: number): boolean {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const b = Buffer.alloc(PATCH_MARKER.length);
      return fs.readSync(fd, b, 0, b.length, offset) === b.length && b.toString('latin1') === PATCH_MARKER;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Writing a journal

export class JournalWriter {
  private pos = HEADER_SIZE;
  private readonly hash = crypto.createHash('sha256');
  private readonly records: JournalRecord[] = [];
  private done = false;
  /**
   * If a signal stops the process: an unfinished journal is removed (the
   * file was not touched); a finished one stays, to be replayed by the
   * next patch or `--recover`, and the CLI's line says so.
   */
  private readonly unregister = onInterrupt(() => {
    if (!this.done) return void fs.rmSync(this.path, { force: true });
    if (fs.existsSync(this.path)) return `the patch of ${this.file} is whole in its journal: finish it with: ramsnap patch --recover ${this.file}`;
  });

  private constructor(
    readonly path: string,
    private readonly file: string,
    private readonly sink: FileSink,
    private readonly head: JournalHead,
  ) {}

  /** Creates the journal of `file` (O_EXCL: the caller holds the lock and has recovered any earlier journal) and writes its header. */
  static async create(file: string, head: JournalHead): Promise<JournalWriter> {
    const p = journalPath(file);
    let fd: number;
    try {
      fd = fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
    } catch (err) {
      throw ioError(err, p, 'create the patch journal');
    }
    const j = new JournalWriter(p, file, new FileSink(p, fd), head);
    try {
      const h = Buffer.alloc(HEADER_SIZE);
      h.write(JOURNAL_MAGIC, 0, 'latin1');
      h.writeUInt32BE(JOURNAL_VERSION, 8);
      h.writeBigUInt64BE(BigInt(head.fileSize), 16);
      h.writeBigUInt64BE(BigInt(head.markerOffset), 24);
      h.set(head.original, 32);
      h.set(head.marker, 40);
      h.writeDoubleBE(head.mtimeBeforeMs, 48);
      j.hash.update(h);
      await j.sink.write(0, h);
    } catch (err) {
      await j.discard();
      throw err;
    }
    return j;
  }

  private async record(kind: RecordKind, offset: number, length: number, ...data: Uint8Array[]): Promise<void> {
    const head = Buffer.alloc(RECORD_HEAD);
    head.writeUInt8(kind, 0);
    head.writeUInt32BE(length, 4);
    head.writeBigUInt64BE(BigInt(offset), 8);
    if (kind !== RecordKind.END) this.records.push({ kind, offset, length, dataAt: this.pos + RECORD_HEAD });
    for (const part of [head, ...data]) {
      if (kind !== RecordKind.END) this.hash.update(part);
      await this.sink.write(this.pos, part);
      this.pos += part.length;
    }
  }

  /** Bytes already written to the file under clear bits (step 1): only their checksum. */
  hidden(offset: number, bytes: Uint8Array): Promise<void> {
    return this.record(RecordKind.HIDDEN, offset, bytes.length, crypto.createHash('sha256').update(bytes).digest());
  }

  pages(offset: number, bytes: Uint8Array): Promise<void> {
    return this.record(RecordKind.PAGES, offset, bytes.length, bytes);
  }

  zeros(offset: number, length: number): Promise<void> {
    return this.record(RecordKind.ZEROS, offset, length);
  }

  bitmap(offset: number, after: Uint8Array, before: Uint8Array): Promise<void> {
    return this.record(RecordKind.BITMAP, offset, after.length, after, before);
  }

  /** The END record, then fsync of the journal and its directory: from here on the patch happens, whatever kills us. */
  async finish(sync: boolean): Promise<void> {
    const before = this.pos;
    await this.record(RecordKind.END, before, 32, this.hash.digest());
    if (sync) await this.sink.sync();
    await this.sink.close();
    this.done = true;
    if (sync) syncDirectory(path.dirname(this.path));
  }

  /** The finished journal, as readJournal() would parse it. */
  parsed(): ParsedJournal {
    if (!this.done) throw new Error('the journal is not finished');
    return { path: this.path, head: this.head, records: this.records };
  }

  /** Removes an unfinished journal (the file was not touched). */
  async discard(): Promise<void> {
    if (!this.done) await this.sink.close();
    this.done = true;
    fs.rmSync(this.path, { force: true });
    this.unregister();
  }

  /** The finished journal was replayed (and removed), or its failure reported: a signal has nothing more to say about it. */
  settled(): void {
    this.unregister();
  }
}

// ---------------------------------------------------------------------------
// Reading and replaying a journal

interface JournalRecord {
  kind: RecordKind;
  offset: number;
  length: number;
  /** Journal offset of the record's data. */
  dataAt: number;
}

export interface ParsedJournal {
  path: string;
  head: JournalHead;
  records: JournalRecord[];
}

/** Reads exactly `length` bytes, or fewer at the end of the file. */
function readAt(fd: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, b, done, length - done, offset + done);
    if (n === 0) break;
    done += n;
  }
  return done === length ? b : b.subarray(0, done);
}

function dataLength(r: { kind: number; length: number }): number | undefined {
  switch (r.kind) {
    case RecordKind.HIDDEN:
    case RecordKind.END:
      return 32;
    case RecordKind.PAGES:
      return r.length;
    case RecordKind.ZEROS:
      return 0;
    case RecordKind.BITMAP:
      return 2 * r.length;
    default:
      return undefined;
  }
}

/**
 * Parses a journal. `complete: false` when it is cut short, damaged or its
 * checksum does not match: it was never finished, so the file was never
 * touched. `head` is there when the header itself was readable.
 */
export function readJournal(p: string): { complete: true; journal: ParsedJournal } | { complete: false; head?: JournalHead } {
  let fd: number;
  try {
    fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    throw ioError(err, p, 'open the patch journal');
  }
  try {
    const size = fs.fstatSync(fd).size;
    const h = readAt(fd, 0, HEADER_SIZE);
    if (h.length < HEADER_SIZE || h.toString('latin1', 0, 8) !== JOURNAL_MAGIC || h.readUInt32BE(8) !== JOURNAL_VERSION) return { complete: false };
    const head: JournalHead = {
      fileSize: Number(h.readBigUInt64BE(16)),
      markerOffset: Number(h.readBigUInt64BE(24)),
      original: new Uint8Array(h.subarray(32, 40)),
      marker: new Uint8Array(h.subarray(40, 48)),
      mtimeBeforeMs: h.readDoubleBE(48),
    };
    const records: JournalRecord[] = [];
    let pos = HEADER_SIZE;
    for (;;) {
      const r = readAt(fd, pos, RECORD_HEAD);
      if (r.length < RECORD_HEAD) return { complete: false, head };
      const rec = { kind: r.readUInt8(0) as RecordKind, length: r.readUInt32BE(4), offset: Number(r.readBigUInt64BE(8)), dataAt: pos + RECORD_HEAD };
      const n = dataLength(rec);
      if (n === undefined || rec.dataAt + n > size) return { complete: false, head };
      if (rec.kind === RecordKind.END) {
        if (rec.offset !== pos) return { complete: false, head };
        // The checksum of everything before the END record.
        const hash = crypto.createHash('sha256');
        for (let at = 0; at < pos; at += COPY_CHUNK) hash.update(readAt(fd, at, Math.min(COPY_CHUNK, pos - at)));
        if (!hash.digest().equals(readAt(fd, rec.dataAt, 32))) return { complete: false, head };
        return { complete: true, journal: { path: p, head, records } };
      }
      records.push(rec);
      pos = rec.dataAt + n;
    }
  } finally {
    fs.closeSync(fd);
  }
}

export type RecoverOutcome =
  | { action: 'none' }
  /** An unfinished journal was removed: the file had not been touched. */
  | { action: 'discarded'; journal: string }
  /** A finished journal was replayed: the file is fully patched. */
  | { action: 'rolled-forward'; journal: string; bytes: number };

/**
 * Settles the journal of `file`, if any. The caller holds the file's lock.
 * A journal that was never finished is removed; a finished one is checked
 * against the file (size, the marker or the original bytes, the bitmap
 * bytes before or after, the checksums of step 1's runs) and replayed.
 * JOURNAL_MISMATCH when the file beside it is not the one it was made for.
 */
export async function recoverJournal(file: string, opts: { fsync?: boolean } = {}): Promise<RecoverOutcome> {
  const p = journalPath(file);
  if (!fs.existsSync(p)) return { action: 'none' };
  const r = readJournal(p);
  if (!r.complete) {
    if (r.head && markerState(file, r.head) === 'marker') {
      throw mismatch(file, p, 'the journal is damaged but the patch had started (the file carries its marker)');
    }
    fs.rmSync(p, { force: true });
    syncDirectory(path.dirname(p));
    return { action: 'discarded', journal: p };
  }
  const j = r.journal;
  checkBelongs(file, j);
  const bytes = await replayJournal(file, j, { fsync: opts.fsync ?? true });
  return { action: 'rolled-forward', journal: p, bytes };
}

function mismatch(file: string, journal: string, why: string): RamsnapIoError {
  return new RamsnapIoError(StateCode.JOURNAL_MISMATCH, `${journal} does not belong to ${file}: ${why}; if ${file} is what you want, remove the journal`, file);
}

function markerState(file: string, head: JournalHead): 'original' | 'marker' | 'other' {
  let got: Buffer;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      got = readAt(fd, head.markerOffset, MARKER_LENGTH);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return 'other';
  }
  if (got.equals(head.marker)) return 'marker';
  if (got.equals(head.original)) return 'original';
  return 'other';
}

/** Refuses to replay a journal onto a file it was not made for. */
function checkBelongs(file: string, j: ParsedJournal): void {
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch (err) {
    throw ioError(err, file, 'open');
  }
  if (size !== j.head.fileSize) throw mismatch(file, j.path, `the file is ${size} bytes, the journal was made for ${j.head.fileSize}`);
  const state = markerState(file, j.head);
  if (state === 'other') throw mismatch(file, j.path, `the bytes at offset ${j.head.markerOffset} are neither the stream's start nor this journal's marker`);
  const fd = fs.openSync(file, 'r');
  try {
    for (const r of j.records) {
      if (r.kind === RecordKind.HIDDEN) {
        // Step 1 wrote these before the journal was finished; they must still be there.
        const hash = crypto.createHash('sha256');
        for (let at = 0; at < r.length; at += COPY_CHUNK) hash.update(readAt(fd, r.offset + at, Math.min(COPY_CHUNK, r.length - at)));
        if (!hash.digest().equals(readJournalBytes(j.path, r.dataAt, 32))) throw mismatch(file, j.path, `the pages at offset ${r.offset} are not the ones the patch wrote`);
      } else if (r.kind === RecordKind.BITMAP && state === 'original') {
        // Not started or fully done: the bitmap bytes are all before or all after.
        const got = readAt(fd, r.offset, r.length);
        const both = readJournalBytes(j.path, r.dataAt, 2 * r.length);
        if (!got.equals(both.subarray(0, r.length)) && !got.equals(both.subarray(r.length))) {
          throw mismatch(file, j.path, `the bitmap bytes at offset ${r.offset} are neither the ones before the patch nor after it`);
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

function readJournalBytes(p: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(p, 'r');
  try {
    return readAt(fd, offset, length);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Steps 3 to 6 from a finished journal: marker, pages, bitmap, fsync,
 * original bytes and mtime, fsync, journal removed. Idempotent. Returns
 * the bytes of pages written.
 */
export async function replayJournal(file: string, j: ParsedJournal, opts: { fsync: boolean }): Promise<number> {
  let fd: number;
  let jfd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
  } catch (err) {
    throw ioError(err, file, 'open for writing');
  }
  try {
    jfd = fs.openSync(j.path, 'r');
  } catch (err) {
    fs.closeSync(fd);
    throw ioError(err, j.path, 'open the patch journal');
  }
  const sink = new FileSink(file, fd);
  let bytes = 0;
  try {
    await sink.write(j.head.markerOffset, j.head.marker);
    if (opts.fsync) await sink.sync();
    const zeros = new Uint8Array(Math.min(COPY_CHUNK, Math.max(0, ...j.records.filter((r) => r.kind === RecordKind.ZEROS).map((r) => r.length))));
    let bitmap: JournalRecord | undefined;
    for (const r of j.records) {
      if (r.kind === RecordKind.PAGES) {
        for (let at = 0; at < r.length; at += COPY_CHUNK) {
          const n = Math.min(COPY_CHUNK, r.length - at);
          await sink.write(r.offset + at, readAt(jfd, r.dataAt + at, n));
        }
        bytes += r.length;
      } else if (r.kind === RecordKind.ZEROS) {
        for (let at = 0; at < r.length; at += zeros.length) await sink.write(r.offset + at, zeros.subarray(0, Math.min(zeros.length, r.length - at)));
        bytes += r.length;
      } else if (r.kind === RecordKind.BITMAP) {
        bitmap = r;
      }
    }
    // The bitmap last: as in QEMU's own files, a set bit is what makes a page's bytes count.
    if (bitmap) await sink.write(bitmap.offset, readAt(jfd, bitmap.dataAt, bitmap.length));
    if (opts.fsync) await sink.sync();
    await sink.write(j.head.markerOffset, j.head.original);
    await bumpMtime(fd, file, j.head.mtimeBeforeMs);
    if (opts.fsync) await sink.sync();
  } finally {
    await sink.close();
    fs.closeSync(jfd);
  }
  fs.rmSync(j.path, { force: true });
  if (opts.fsync) syncDirectory(path.dirname(j.path));
  return bytes;
}

/**
 * Sets the file's mtime past every value it had: past the mtime before the
 * patch, the current one and the clock. File systems stamp writes with a
 * coarse clock (a few ms), so a whole patch can leave the mtime where a
 * reader saw it; after this, a reader that compares the file's status
 * before and after reading (ReadGuard) sees any patch that ran in between.
 */
async function bumpMtime(fd: number, file: string, beforeMs: number): Promise<void> {
  const st = fs.fstatSync(fd);
  const ms = Math.max(Date.now(), beforeMs, st.mtimeMs) + 1;
  await new Promise<void>((resolve, reject) => fs.futimes(fd, st.atime, ms / 1000, (err) => (err ? reject(ioError(err, file, 'set the time of')) : resolve())));
}

// ---------------------------------------------------------------------------
// Readers

/**
 * How a reader avoids taking a file that is being patched for a complete
 * one, without writing anything: `begin()` before reading refuses a file
 * with a journal (PATCH_IN_PROGRESS) and records the file's status;
 * `check()` after the last read refuses it if the patch marker is at the
 * stream's start, if a journal appeared, or if the status changed
 * (FILE_CHANGED). A patch keeps its journal from before its first write to
 * after its last, writes the marker first and the original bytes last, and
 * moves the mtime past any earlier value; so a patch that overlapped the
 * read in any way is seen by one of the checks.
 */
export class ReadGuard {
  private constructor(
    readonly file: string,
    private readonly real: string | undefined,
    private readonly before: fs.BigIntStats | undefined,
  ) {}

  /** Throws PATCH_IN_PROGRESS when the file has a journal. A file that cannot be stat'ed is left for the open to report. */
  static begin(file: string): ReadGuard {
    let real: string;
    try {
      real = fs.realpathSync(file);
    } catch {
      return new ReadGuard(file, undefined, undefined);
    }
    const journal = sidecarPath(real, JOURNAL_SUFFIX);
    if (fs.existsSync(journal)) throw patchInProgress(file, journal);
    let before: fs.BigIntStats | undefined;
    try {
      before = fs.statSync(real, { bigint: true });
    } catch {
      before = undefined;
    }
    return new ReadGuard(file, real, before);
  }

  /** After the last read: `streamOffset` is where the marker would be. */
  check(streamOffset?: number): void {
    if (!this.real || !this.before) return;
    let after: fs.BigIntStats | undefined;
    try {
      after = fs.statSync(this.real, { bigint: true });
    } catch {
      after = undefined;
    }
    if (streamOffset !== undefined && hasPatchMarker(this.real, streamOffset)) {
      const journal = sidecarPath(this.real, JOURNAL_SUFFIX);
      throw patchInProgress(this.file, fs.existsSync(journal) ? journal : undefined);
    }
    const journal = sidecarPath(this.real, JOURNAL_SUFFIX);
    if (fs.existsSync(journal)) throw patchInProgress(this.file, journal);
    const b = this.before;
    if (
      !after ||
      after.ino !== b.ino ||
      after.dev !== b.dev ||
      after.size !== b.size ||
      after.mtimeNs !== b.mtimeNs ||
      after.ctimeNs !== b.ctimeNs
    ) {
      throw new RamsnapIoError(StateCode.FILE_CHANGED, `${this.file} changed while it was being read (another process wrote it); read it again when that is done`, this.file);
    }
  }
}

/**
 * Snapshot.open for a reader that must not take a file being patched for
 * a complete one: PATCH_IN_PROGRESS for a journal or the marker (not
 * BAD_MAGIC). Call `guard.check(snap.model.streamOffset)` after the last
 * read, before trusting (or writing out) what was read.
 */
export async function openUnpatched(file: string, opts: OpenOptions = {}): Promise<{ snap: Snapshot; guard: ReadGuard }> {
  const guard = ReadGuard.begin(file);
  let snap: Snapshot;
  try {
    snap = await Snapshot.open(file, opts);
  } catch (err) {
    const e = err as { code?: string; offset?: number };
    if (e?.code === FormatCode.BAD_MAGIC && typeof e.offset === 'number' && hasPatchMarker(file, e.offset)) throw patchMarked(file);
    throw err;
  }
  const e = snap.model.error;
  if (e?.code === FormatCode.BAD_MAGIC && hasPatchMarker(file, e.offset)) {
    await snap.close();
    throw patchMarked(file);
  }
  return { snap, guard };
}

/** The marker is there: the journal too, unless it was lost. */
function patchMarked(file: string): RamsnapError {
  try {
    ReadGuard.begin(file);
  } catch (err) {
    return err as RamsnapError; // PATCH_IN_PROGRESS, naming the journal
  }
  return patchInProgress(file, undefined);
}
