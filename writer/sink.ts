/**
 * Positional writes to a file, the writer's counterpart of
 * RandomAccessSource, with every OS error turned into a RamsnapIoError
 * (disk full is IO_ENOSPC).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { RamsnapIoError, ioError } from '../format/errors.js';

export class FileSink {
  /** Writes in flight: close() waits for them, so a reused descriptor number never receives them. */
  private readonly pending = new Set<Promise<void>>();

  constructor(
    readonly path: string,
    readonly fd: number,
  ) {}

  write(position: number, data: Uint8Array): Promise<void> {
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
export const TEMP_MARK = '.ramsnap-tmp-';

/**
 * A file built under a temporary name next to its target and renamed onto
 * it only when complete: `.TARGET.ramsnap-tmp-PID-HEX`, created with
 * O_EXCL|O_NOFOLLOW in the target's directory (so the rename is atomic).
 */
export class TempFile extends FileSink {
  private closed = false;

  private constructor(
    path: string,
    fd: number,
    readonly target: string,
  ) {
    super(path, fd);
  }

  /** Refuses an existing target unless `force`. */
  static create(target: string, force = false): TempFile {
    if (!force && fs.existsSync(target)) {
      throw new RamsnapIoError('OUTPUT_EXISTS', `output ${target} already exists (use --force to replace it)`, target);
    }
    const dir = path.dirname(path.resolve(target));
    const tempPath = path.join(dir, `.${path.basename(target)}${TEMP_MARK}${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
    try {
      const fd = fs.openSync(tempPath, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o644);
      return new TempFile(tempPath, fd, target);
    } catch (err) {
      throw ioError(err, tempPath, 'create');
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
  }

  /** Closes (after writes in flight) and removes the temporary file; the target is untouched. */
  async discard(): Promise<void> {
    await this.closeOnce();
    fs.rmSync(this.path, { force: true });
  }

  private async closeOnce(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.close();
  }
}
