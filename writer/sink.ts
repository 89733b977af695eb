/**
 * Positional writes to a file, the writer's counterpart of
 * RandomAccessSource, with every OS error turned into a RamsnapIoError
 * (disk full is IO_ENOSPC).
 */
import fs from 'node:fs';
import { ioError } from '../format/errors.js';

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
