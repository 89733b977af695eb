/**
 * Positional I/O between the format code and storage. Everything that reads
 * a snapshot goes through RandomAccessSource, so a test can hand the reader a
 * 1 TiB virtual file that costs nothing, and the CLI hands it a real file.
 */
import fs from 'node:fs';
import { FormatCode, RamsnapFormatError, RamsnapIoError, ioError } from '../format/errors.js';

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

  /**
   * Opens a regular file, or a block device (libvirt can save a domain to
   * one; its size comes from sysfs, as stat gives 0). Anything else (a
   * directory, a character device such as /dev/null, a FIFO, a socket) is
   * NOT_A_FILE: a snapshot is read at random offsets, which none of them
   * allows. O_NONBLOCK keeps a FIFO from blocking the open until a writer
   * comes; it changes nothing for files and block devices.
   */
  static async open(path: string): Promise<FileSource> {
    let fd: number;
    try {
      fd = await new Promise<number>((resolve, reject) =>
        fs.open(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK, (err, d) => (err ? reject(err) : resolve(d))),
      );
    } catch (err) {
      throw ioError(err, path, 'open');
    }
    try {
      const st = fs.fstatSync(fd, { bigint: true });
      if (st.isFile()) return new FileSource(path, fd, Number(st.size));
      if (st.isBlockDevice()) return new FileSource(path, fd, blockDeviceSize(path, st.rdev));
      throw new RamsnapIoError('NOT_A_FILE', `${path} is ${kindOf(st)}, not a regular file: a snapshot is read at random offsets, which it cannot be`, path);
    } catch (err) {
      fs.closeSync(fd);
      throw ioError(err, path, 'read');
    }
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

function kindOf(st: fs.BigIntStats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'something else';
}

/**
 * glibc's split of a 64-bit dev_t (gnu_dev_major, gnu_dev_minor): the
 * major is bits 8-19 and 44-63, the minor bits 0-7 and 20-43.
 */
export function splitDev(rdev: bigint): { major: bigint; minor: bigint } {
  return {
    major: ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & 0xfffff000n),
    minor: (rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n),
  };
}

/** A block device's size in bytes: /sys/dev/block/MAJOR:MINOR/size counts 512-byte sectors (Linux). */
function blockDeviceSize(path: string, rdev: bigint): number {
  const { major, minor } = splitDev(rdev);
  let text: string;
  try {
    text = fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'latin1');
  } catch (err) {
    throw new RamsnapIoError('NOT_A_FILE', `${path} is a block device whose size cannot be read from /sys (${(err as NodeJS.ErrnoException).code ?? 'error'})`, path);
  }
  const size = Number(text.trim()) * 512;
  if (!Number.isSafeInteger(size)) throw new RamsnapIoError('NOT_A_FILE', `${path} is a block device of unknown size (${JSON.stringify(text.trim())} sectors)`, path);
  return size;
}
