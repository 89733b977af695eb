/**
 * Positional I/O between the format code and storage. Everything that reads
 * a snapshot goes through RandomAccessSource, so a test can hand the reader a
 * 1 TiB virtual file that costs nothing, and the CLI hands it a real file.
 */
import fs from 'node:fs';
import { FormatCode, RamsnapFormatError, ioError } from '../format/errors.js';

export interface RandomAccessSource {
  /** Bytes in the source. Every offset read from the file is checked against it. */
  readonly size: number;
  /**
   * Reads `length` bytes at `offset` into `into` (or a new buffer). Reading
   * past `size` is a TRUNCATED error naming `field`.
   */
  read(offset: number, length: number, field: string, into?: Uint8Array): Promise<Uint8Array>;
  /**
   * The same read, done at once on the calling thread. Optional: bulk copies
   * (extract) use it when present, since a hop through libuv's thread pool
   * per read costs more than the read itself when the bytes are cached.
   */
  readSync?(offset: number, length: number, field: string, into?: Uint8Array): Uint8Array;
  close?(): Promise<void>;
  /** A path when the source is a file (for messages). */
  readonly name: string;
}

export function checkRange(src: { size: number }, offset: number, length: number, field: string): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > src.size) {
    throw new RamsnapFormatError(FormatCode.TRUNCATED, `${field} lies beyond the end of the file`, {
      field,
      offset,
      expected: `end <= ${src.size}`,
      actual: `end ${offset + length}`,
    });
  }
}

/** A snapshot already in memory (tests, small files). */
export class BufferSource implements RandomAccessSource {
  readonly size: number;
  constructor(
    readonly bytes: Uint8Array,
    readonly name = '<buffer>',
  ) {
    this.size = bytes.length;
  }
  async read(offset: number, length: number, field: string, into?: Uint8Array): Promise<Uint8Array> {
    return this.readSync(offset, length, field, into);
  }
  readSync(offset: number, length: number, field: string, into?: Uint8Array): Uint8Array {
    checkRange(this, offset, length, field);
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    out.set(this.bytes.subarray(offset, offset + length));
    return out;
  }
}

/**
 * A sparse virtual file: a size and a few extents of data, zeros elsewhere.
 * Lets tests build 64 GiB or 1 TiB snapshots in a few KiB of memory.
 */
export class VirtualSource implements RandomAccessSource {
  readonly name: string;
  private readonly extents: { offset: number; data: Uint8Array }[];
  constructor(
    readonly size: number,
    extents: { offset: number; data: Uint8Array }[],
    name = '<virtual>',
  ) {
    this.name = name;
    this.extents = [...extents].sort((a, b) => a.offset - b.offset);
  }
  async read(offset: number, length: number, field: string, into?: Uint8Array): Promise<Uint8Array> {
    return this.readSync(offset, length, field, into);
  }
  readSync(offset: number, length: number, field: string, into?: Uint8Array): Uint8Array {
    checkRange(this, offset, length, field);
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    out.fill(0);
    const end = offset + length;
    for (const e of this.extents) {
      const eEnd = e.offset + e.data.length;
      if (eEnd <= offset || e.offset >= end) continue;
      const from = Math.max(offset, e.offset);
      const to = Math.min(end, eEnd);
      out.set(e.data.subarray(from - e.offset, to - e.offset), from - offset);
    }
    return out;
  }
}

/**
 * Reads up to this size are done at once on the calling thread: opening a
 * snapshot is a dozen small reads of headers, bitmaps and the description,
 * and a hop through libuv's thread pool for each made `info` 20-40 ms slower.
 */
const SYNC_READ_MAX = 2 << 20;

/** A file read with positional reads (pread) on one descriptor. */
export class FileSource implements RandomAccessSource {
  private constructor(
    readonly name: string,
    readonly fd: number,
    readonly size: number,
  ) {}

  static async open(path: string): Promise<FileSource> {
    let fd: number;
    try {
      fd = await new Promise<number>((resolve, reject) =>
        fs.open(path, 'r', (err, d) => (err ? reject(err) : resolve(d))),
      );
    } catch (err) {
      throw ioError(err, path, 'open');
    }
    const st = fs.fstatSync(fd);
    if (!st.isFile() && !st.isBlockDevice()) {
      fs.closeSync(fd);
      throw ioError(Object.assign(new Error('not a regular file'), { code: 'EISDIR' }), path, 'read');
    }
    return new FileSource(path, fd, st.size);
  }

  async read(offset: number, length: number, field: string, into?: Uint8Array): Promise<Uint8Array> {
    if (length <= SYNC_READ_MAX) return this.readSync(offset, length, field, into);
    checkRange(this, offset, length, field);
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const n = await new Promise<number>((resolve, reject) =>
        fs.read(this.fd, out, done, length - done, offset + done, (err, bytes) => (err ? reject(ioError(err, this.name, 'read')) : resolve(bytes))),
      );
      if (n === 0) throw shrank(field, offset + done);
      done += n;
    }
    return out;
  }

  readSync(offset: number, length: number, field: string, into?: Uint8Array): Uint8Array {
    checkRange(this, offset, length, field);
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        n = fs.readSync(this.fd, out, done, length - done, offset + done);
      } catch (err) {
        throw ioError(err, this.name, 'read');
      }
      if (n === 0) throw shrank(field, offset + done);
      done += n;
    }
    return out;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => fs.close(this.fd, () => resolve()));
  }
}

/** The file shrank under us: truncation at that point. */
function shrank(field: string, offset: number): RamsnapFormatError {
  return new RamsnapFormatError(FormatCode.TRUNCATED, `file shrank while reading ${field}`, { field, offset });
}
