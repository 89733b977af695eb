import { ByteCursor } from '../format/cursor.js';
import { FormatCode, RamsnapFormatError } from '../format/errors.js';
import { latin1 } from '../format/cursor.js';
import { checkRange, type RandomAccessSource } from './source.js';

/**
 * Sequential reads over a RandomAccessSource through a window, for walking
 * the migration stream. The stream is mostly small records with large jumps
 * (a mapped-ram block's pages, a legacy page's bytes), so a window that is
 * refilled on demand reads only what is parsed. Primitive reads go straight
 * to the window (a legacy stream has a record per page: nothing is
 * allocated per record); decoders of larger structures get a ByteCursor.
 */
export class StreamReader {
  private buffer: Uint8Array = new Uint8Array(0);
  private window: Uint8Array = new Uint8Array(0);
  private view: DataView = new DataView(new ArrayBuffer(0));
  private windowStart = 0;
  /** Absolute file offset of the next byte. */
  pos: number;

  constructor(
    readonly source: RandomAccessSource,
    start: number,
    private readonly windowSize = 256 * 1024,
  ) {
    this.pos = start;
  }

  get size(): number {
    return this.source.size;
  }

  /** Makes at least `n` bytes at pos available, or as many as the file has. Returns the window index of pos. */
  private async fill(n: number): Promise<number> {
    const idx = this.pos - this.windowStart;
    if (idx >= 0 && idx + n <= this.window.length) return idx;
    const len = Math.max(0, Math.min(Math.max(n, this.windowSize), this.source.size - this.pos));
    // One buffer, grown when a larger window is asked for, reused for every refill.
    // Nothing keeps a view into it across refills: decoders return strings and numbers.
    if (this.buffer.length < len) this.buffer = new Uint8Array(len);
    this.window = await this.source.read(this.pos, len, 'stream', this.buffer);
    this.view = new DataView(this.window.buffer, this.window.byteOffset, this.window.byteLength);
    this.windowStart = this.pos;
    return 0;
  }

  private async take(n: number, field: string): Promise<number> {
    const idx = await this.fill(n);
    if (idx + n > this.window.length) {
      throw new RamsnapFormatError(FormatCode.TRUNCATED, `file ends inside ${field}`, {
        field,
        offset: this.pos,
        expected: `${n} more bytes`,
        actual: `${this.window.length - idx}`,
      });
    }
    this.pos += n;
    return idx;
  }

  /**
   * A cursor over at least `n` bytes at the current position (fewer if the
   * file ends first: the cursor then reports TRUNCATED with the offset),
   * and over up to `upTo` when the window already holds them: the window is
   * refilled only when fewer than `n` bytes are left in it. Advance with
   * `commit(cursor)`.
   */
  async cursor(n: number, upTo = n): Promise<ByteCursor> {
    const idx = await this.fill(n);
    const avail = Math.max(0, Math.min(Math.max(n, upTo), this.window.length - idx));
    return new ByteCursor(this.window.subarray(idx, idx + avail), this.pos);
  }

  commit(c: ByteCursor): void {
    this.pos = c.pos;
  }

  // Each read awaits take() before touching this.window/this.view: take() may replace them,
  // and `this.view.get(await …)` would read the old window.
  async u8(field: string): Promise<number> {
    const i = await this.take(1, field);
    return this.window[i];
  }

  async peekU8(field: string): Promise<number> {
    const idx = await this.take(1, field);
    this.pos--;
    return this.window[idx];
  }

  async be16(field: string): Promise<number> {
    const i = await this.take(2, field);
    return this.view.getUint16(i, false);
  }

  async be32(field: string): Promise<number> {
    const i = await this.take(4, field);
    return this.view.getUint32(i, false);
  }

  async be64(field: string): Promise<bigint> {
    const i = await this.take(8, field);
    return this.view.getBigUint64(i, false);
  }

  /** u8 length + that many bytes (latin1), as QEMU writes idstrs and block names. */
  async string8(field: string): Promise<string> {
    const len = await this.u8(`${field}.length`);
    const idx = await this.take(len, field);
    return latin1(this.window.subarray(idx, idx + len));
  }

  /** Skips n bytes, checked against the file size. */
  async skip(n: number, field: string): Promise<void> {
    checkRange(this.source, this.pos, n, field);
    this.pos += n;
  }

  atEnd(): boolean {
    return this.pos >= this.source.size;
  }
}
