/**
 * Positional writes to a file, the writer's counterpart of
 * RandomAccessSource, with every OS error turned into a RamsnapIoError
 * (disk full is IO_ENOSPC).
 */
import fs from 'node:fs';
import path from 'node:path';
import { RamsnapIoError, RamsnapUsageError, StateCode, ioError } from '../format/errors.js';
import { onInterrupt } from './cleanup.js';
import { JOURNAL_SUFFIX, TEMP_MARK, TargetLock, notice, sidecarPath, tempPathFor } from './lock.js';

export class FileSink {
  /** Writes in flight: close() waits for them, so a reused descriptor number never receives them. */
  private readonly pending = new Set<Promise<void>>();
  /** Set by close(): later writes are refused instead of going to a descriptor number that may be reused. */
  private closing = false;

  constructor(
    readonly path: string,
    readonly fd: number,
  ) {}

  write(position: number, data: Uint8Array): Promise<void> {
    if (this.closing) return Promise.reject(new RamsnapIoError('IO_EBADF', `cannot write ${this.path}: it was closed (the write was aborted)`, this.path));
    const p = this.writeAll(position, data);
    this.pending.add(p);
    const settle = (): void => void this.pending.delete(p);
    p.then(settle, settle);
    return p;
  }

  private writeAll(position: number, data: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        if (done === data.length) return resolve();
        fs.write(this.fd, data, done, data.length - done, position + done, (err, n) => {
          if (err) return reject(ioError(err, this.path, 'write'));
          step(done + n);
        });
      };
      step(0);
    });
  }

  truncate(size: number): Promise<void> {
    return new Promise((resolve, reject) => fs.ftruncate(this.fd, size, (err) => (err ? reject(ioError(err, this.path, 'resize')) : resolve())));
  }

  /** fdatasync, tracked like a write so close() waits for it. */
  datasync(): Promise<void> {
    const p = new Promise<void>((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(ioError(err, this.path, 'sync')) : resolve())));
    this.pending.add(p);
    const settle = (): void => void this.pending.delete(p);
    p.then(settle, settle);
    return p;
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fsync(this.fd, (err) => (err ? reject(ioError(err, this.path, 'sync')) : resolve())));
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.allSettled([...this.pending]);
    await new Promise<void>((resolve) => fs.close(this.fd, () => resolve()));
  }
}

/** Makes a rename durable: fsync the directory that holds the entry. */
export function syncDirectory(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // Some file systems cannot fsync a directory; the data itself is synced.
  }
}

/** Temporary files are named so that a later run can find and remove what a killed one left. */
export { TEMP_MARK };

/**
 * Permission bits of a new output that holds guest memory: only the owner
 * may read it, as QEMU creates its migration files (migration/file.c opens
 * them 0600; observed on 10.0.2 under umask 022). Guest RAM holds keys and
 * passwords.
 */
export const DEFAULT_OUTPUT_MODE = 0o600;

/** What every writer of an output file takes besides its own options. */
export interface OutputOptions {
  /**
   * Permission bits of the output, set exactly (umask does not apply).
   * Default: a replaced file's own bits (not its owner), else
   * DEFAULT_OUTPUT_MODE (which umask can only narrow).
   */
  mode?: number;
  /** Called now and then with the bytes of guest memory handled so far and their total (progress bars). */
  onProgress?: (done: number, total: number) => void;
}

/** What a path that is not a regular file is, for messages. */
function kindOf(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/** The output path holds a device, FIFO, socket or directory: never replaced, with or without --force (exit 2: choose another -o). */
export function outputNotRegular(target: string, st: fs.Stats): RamsnapUsageError {
  return new RamsnapUsageError(
    'OUTPUT_NOT_REGULAR',
    `output ${target} is ${kindOf(st)}: ramsnap writes regular files only and never replaces anything else, even with --force`,
    'output',
  );
}

/**
 * Checks an output path before anything is written: nothing there is fine;
 * a regular file or a symlink is OUTPUT_EXISTS unless `force` (a symlink
 * is then replaced, never followed); anything else is OUTPUT_NOT_REGULAR
 * whatever `force` says. Returns what is there (lstat), if anything.
 */
export function checkOutput(target: string, force: boolean): fs.Stats | undefined {
  const st = lstatOrUndefined(target);
  if (!st) return undefined;
  if (!st.isFile() && !st.isSymbolicLink()) throw outputNotRegular(target, st);
  if (!force) throw new RamsnapIoError('OUTPUT_EXISTS', `output ${target} already exists (use --force to replace it)`, target);
  return st;
}

function lstatOrUndefined(p: string): fs.Stats | undefined {
  try {
    return fs.lstatSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(err, p, 'look at');
  }
}

/** Checks a --mode value (permission bits only: no setuid, setgid or sticky bit on a memory image). */
export function checkMode(mode: number | undefined): void {
  if (mode !== undefined && (!Number.isInteger(mode) || mode < 0 || mode > 0o777)) {
    throw new RamsnapUsageError('BAD_MODE', `mode must be permission bits from 0000 to 0777, got ${mode}`, 'mode');
  }
}

export interface TempFileOptions {
  /** Replace an existing regular file or symlink at the target (default: refuse). */
  force?: boolean;
  /** The target's lock, already held by the caller (who releases it); without it the TempFile takes the lock and releases it when committed or discarded. */
  lock?: TargetLock;
  /** OutputOptions.mode. */
  mode?: number;
  /**
   * Owner to give the file when sealed, where we may (as root): only for a
   * rewrite of the same file in place (sparsify), whose owner it stays. A
   * file replaced by --force never gets the old file's owner: that would
   * hand guest memory we wrote to whoever made the path.
   */
  owner?: { uid: number; gid: number };
}

/**
 * A file built under a temporary name next to its target and renamed onto
 * it only when complete: `.TARGET.ramsnap-tmp-PID-HEX`, created 0600 with
 * O_EXCL|O_NOFOLLOW in the target's directory (so the rename is atomic,
 * and no one else can read guest memory from it while it is written).
 *
 * It holds the target's lock (lock.ts) from creation until the rename or
 * the discard, so a second writer of the same target is refused with
 * TARGET_LOCKED. Holding it, it removes the temporary files that killed
 * writers of the same target left (their pid is gone), saying so on stderr.
 * Until then it is registered for removal if a signal stops the process
 * (cleanup.ts).
 */
export class TempFile extends FileSink {
  private closed = false;
  private readonly unregister: () => void;

  private constructor(
    path: string,
    fd: number,
    readonly target: string,
    private readonly lock: TargetLock,
    private readonly ownsLock: boolean,
    private readonly mode: number | undefined,
    private readonly owner: { uid: number; gid: number } | undefined,
  ) {
    super(path, fd);
    this.unregister = onInterrupt(() => fs.rmSync(path, { force: true }));
  }

  /** Refuses what checkOutput refuses, before taking the lock or creating anything. */
  static create(target: string, o: TempFileOptions = {}): TempFile {
    checkMode(o.mode);
    checkOutput(target, o.force ?? false);
    const held = o.lock ?? TargetLock.acquire(target, 'write');
    try {
      // Replacing a file whose patch was interrupted would orphan its journal: finish (or drop) the patch first.
      const journal = sidecarPath(target, JOURNAL_SUFFIX);
      if (fs.existsSync(journal)) {
        if (fs.existsSync(target)) {
          throw new RamsnapIoError(StateCode.PATCH_IN_PROGRESS, `${target} has an unfinished patch (journal ${journal}); finish it first with: ramsnap patch --recover ${target}`, target);
        }
        // The patched file is gone: its journal has nothing left to complete.
        fs.rmSync(journal, { force: true });
        notice(`removed the journal of a patch of ${target}, which no longer exists (${journal})`);
      }
      const tempPath = tempPathFor(target);
      let fd: number;
      try {
        fd = fs.openSync(tempPath, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, DEFAULT_OUTPUT_MODE);
      } catch (err) {
        throw ioError(err, tempPath, 'create');
      }
      return new TempFile(tempPath, fd, target, held, !o.lock, o.mode, o.owner);
    } catch (err) {
      if (!o.lock) held.release();
      throw err;
    }
  }

  /** Cuts the file at `size`, syncs it (unless told not to), and renames it onto the target. */
  async commit(size: number, fsync = true): Promise<void> {
    await this.seal(size, fsync);
    this.publish(fsync);
  }

  /**
   * Cuts the file at `size`, gives it its final mode (a replaced file's
   * permission bits unless `mode` says otherwise; the owner stays whoever
   * runs ramsnap, except for an in-place rewrite given `owner`), syncs it
   * unless told not to, and closes it. publish() then renames it: a command
   * with several outputs seals them all before it renames any.
   */
  async seal(size: number, fsync = true): Promise<void> {
    await this.truncate(size);
    const replaced = lstatOrUndefined(this.target);
    const mode = this.mode ?? (replaced?.isFile() ? replaced.mode & 0o777 : undefined);
    if (this.owner) {
      try {
        fs.fchownSync(this.fd, this.owner.uid, this.owner.gid);
      } catch {
        // Not root: the file is ours, as any file we write.
      }
    }
    // After fchown, which may clear permission bits.
    try {
      if (mode !== undefined) fs.fchmodSync(this.fd, mode);
    } catch (err) {
      throw ioError(err, this.path, 'set the mode of');
    }
    if (fsync) await this.sync();
    await this.closeOnce();
  }

  /**
   * Renames the sealed file onto the target, synchronously (a signal cannot
   * fall between the rename and forgetting the temporary name). What is at
   * the target is checked again first: a device node put there since
   * create() is not replaced either. With `keepLock` the target's lock
   * stays held until releaseLock() (a command with several outputs may
   * still put back what was there).
   */
  publish(fsync = true, keepLock = false): void {
    this.checkTarget();
    try {
      fs.renameSync(this.path, this.target);
    } catch (err) {
      throw ioError(err, this.target, 'rename the finished file to');
    }
    this.unregister();
    if (fsync) syncDirectory(path.dirname(path.resolve(this.target)));
    if (!keepLock) this.releaseLock();
  }

  /** Refuses (OUTPUT_NOT_REGULAR) a target that has become something publish() must not replace. */
  checkTarget(): void {
    const there = lstatOrUndefined(this.target);
    if (there && !there.isFile() && !there.isSymbolicLink()) throw outputNotRegular(this.target, there);
  }

  /** Releases the target's lock, if this file took it (publish does unless told to keep it). */
  releaseLock(): void {
    if (this.ownsLock) this.lock.release();
  }

  /** Closes (after writes in flight) and removes the temporary file; the target is untouched. */
  async discard(): Promise<void> {
    await this.closeOnce();
    fs.rmSync(this.path, { force: true });
    this.unregister();
    if (this.ownsLock) this.lock.release();
  }

  private async closeOnce(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.close();
  }
}

/**
 * Progress of a writer as the furthest byte of guest memory handed to it,
 * counting blocks in the file's order: pages arrive in order within a
 * block (a few chunks in flight at once), so this only ever grows.
 */
export class Coverage {
  private readonly base = new Map<string, number>();
  private readonly total: number;
  private done = 0;

  constructor(
    blocks: readonly { name: string; usedLength: number }[],
    private readonly report?: (done: number, total: number) => void,
  ) {
    let at = 0;
    for (const b of blocks) {
      this.base.set(b.name, at);
      at += b.usedLength;
    }
    this.total = at;
  }

  /** Bytes [0, end) of `block` have been handed over. */
  reached(block: string, end: number): void {
    if (!this.report) return;
    const at = (this.base.get(block) ?? 0) + end;
    if (at <= this.done) return;
    this.done = at;
    this.report(at, this.total);
  }

  /** Everything is written. */
  finished(): void {
    if (this.report && this.done < this.total) this.report((this.done = this.total), this.total);
  }
}
