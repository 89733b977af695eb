import { FormatCode, RamsnapFormatError } from './errors.js';
import { toSafeNumber } from './int64.js';

/**
 * Synchronous big-endian reads over an in-memory window of a file.
 * `base` is the absolute file offset of `bytes[0]`, so every error names the
 * real file offset. Reading past the window is TRUNCATED: the window is the
 * part of the file that can hold the structure, checked against the file
 * size by whoever loaded it.
 */
export class ByteCursor {
  readonly bytes: Uint8Array;
  readonly base: number;
  private readonly view: DataView;
  /** Index into `bytes` of the next byte to read. */
  index = 0;

  constructor(bytes: Uint8Array, base = 0) {
    this.bytes = bytes;
    this.base = base;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Absolute file offset of the next byte. */
  get pos(): number {
    return this.base + this.index;
  }

  get remaining(): number {
    return this.bytes.length - this.index;
  }

  need(n: number, field: string): void {
    if (n > this.remaining) {
      throw new RamsnapFormatError(FormatCode.TRUNCATED, `file ends inside ${field}`, {
        field,
        offset: this.pos,
        expected: `${n} more bytes`,
        actual: `${this.remaining}`,
      });
    }
  }

  peekU8(field: string): number {
    this.need(1, field);
    return this.bytes[this.index];
  }

  u8(field: string): number {
    this.need(1, field);
    return this.bytes[this.index++];
  }

  be16(field: string): number {
    this.need(2, field);
    const v = this.view.getUint16(this.index, false);
    this.index += 2;
    return v;
  }

  be32(field: string): number {
    this.need(4, field);
    const v = this.view.getUint32(this.index, false);
    this.index += 4;
    return v;
  }

  be64(field: string): bigint {
    this.need(8, field);
    const v = this.view.getBigUint64(this.index, false);
    this.index += 8;
    return v;
  }

  /** A be64 that must fit a JS number (offsets, lengths). */
  be64n(field: string): number {
    const at = this.pos;
    return toSafeNumber(this.be64(field), field, at);
  }

  /** A view (not a copy) of the next n bytes. */
  bytesView(n: number, field: string): Uint8Array {
    this.need(n, field);
    const v = this.bytes.subarray(this.index, this.index + n);
    this.index += n;
    return v;
  }

  skip(n: number, field: string): void {
    this.need(n, field);
    this.index += n;
  }

  /** u8 length + that many bytes, as QEMU writes idstrs and block names. */
  string8(field: string): string {
    const len = this.u8(`${field}.length`);
    return latin1(this.bytesView(len, field));
  }
}

/**
 * Names in the stream are bytes, not necessarily UTF-8. Decoding them as
 * latin1 keeps every byte distinct and reversible.
 */
export function latin1(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

export function latin1Bytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) throw new RangeError(`name has a character outside latin1: ${JSON.stringify(s)}`);
    out[i] = c;
  }
  return out;
}
