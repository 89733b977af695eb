/**
 * Positional writes to a file, the writer's counterpart of
 * RandomAccessSource, with every OS error turned into a RamsnapIoError
 * (disk full is IO_ENOSPC).
 */
import fs from 'node:fs';
import path from 'node:path';
import { RamsnapIoError, StateCode, ioError } from '../format/errors.js';
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
 * A file built under a temporary name next to its target and renamed onto
 * it only when complete: `.TARGET.ramsnap-tmp-PID-HEX`, created with
 * O_EXCL|O_NOFOLLOW in the target's directory (so the rename is atomic).
 *
 * It holds the target's lock (lock.ts) from creation until the rename or
 * the discard, so a second writer of the same target is refused with
 * TARGET_LOCKED. Holding it, it removes the temporary files that killed
 * writers of the same target left (their pid is gone), saying so on stderr.
 */
export class TempFile extends FileSink {
  private closed = false;

  private constructor(
    path: string,
    fd: number,
    readonly target: string,
    private readonly lock: TargetLock,
    private readonly ownsLock: boolean,
  ) {
    super(path, fd);
  }

  /**
   * Refuses an existing target unless `force`. `lock`: the target's lock,
   * already held by the caller (who releases it); without it the TempFile
   * takes the lock and releases it when it is committed or discarded.
   */
  static create(target: string, force = false, lock?: TargetLock): TempFile {
    if (!force && fs.existsSync(target)) {
      throw new RamsnapIoError('OUTPUT_EXISTS', `output ${target} already exists (use --force to replace it)`, target);
    }
    const held = lock ?? TargetLock.acquire(target, 'write');
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
        fd = fs.openSync(tempPath, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o644);
      } catch (err) {
        throw ioError(err, tempPath, 'create');
      }
      return new TempFile(tempPath, fd, target, held, !lock);
    } catch (err) {
      if (!lock) held.release();
      throw err;
    }
  }

  /** Cuts the file at `size`, syncs it (unless told not to), and renames it onto the target. */
  async commit(size: number, fsync = true): Promise<void> {
    await this.truncate(size);
    if (fsync) await this.sync();
    await this.closeOnce();
    try {
      fs.renameSync(this.path, this.target);
    } catch (err) {
      throw ioError(err, this.target, 'rename the finished snapshot to');
    }
    if (fsync) syncDirectory(path.dirname(path.resolve(this.target)));
    if (this.ownsLock) this.lock.release();
  }

  /** Closes (after writes in flight) and removes the temporary file; the target is untouched. */
  async discard(): Promise<void> {
    await this.closeOnce();
    fs.rmSync(this.path, { force: true });
    if (this.ownsLock) this.lock.release();
  }

  private async closeOnce(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.close();
  }
}

