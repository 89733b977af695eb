import { ByteCursor } from '../format/cursor.js';
import { checkRange, type RandomAccessSource } from './source.js';

/**
 * Sequential reads over a RandomAccessSource through a window, for walking
 * the migration stream. The stream is mostly small records with large jumps
 * (a mapped-ram block's pages, a legacy page's bytes), so a small window
 * that is refilled on demand reads only what is parsed.
 */
export class StreamReader {
  private window: Uint8Array = new Uint8Array(0);
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

  /**
   * A cursor over at least `n` bytes at the current position (fewer if the
   * file ends first: the cursor then reports TRUNCATED with the offset).
   * Advance with `commit(cursor)`.
   */
  async cursor(n: number): Promise<ByteCursor> {
    const have = this.windowStart + this.window.length - this.pos;
    if (this.pos < this.windowStart || have < n) {
      const len = Math.min(Math.max(n, this.windowSize), this.source.size - this.pos);
      this.window = len > 0 ? await this.source.read(this.pos, len, 'stream') : new Uint8Array(0);
      this.windowStart = this.pos;
    }
    const startIdx = this.pos - this.windowStart;
    const avail = Math.max(0, Math.min(n, this.window.length - startIdx));
    return new ByteCursor(this.window.subarray(startIdx, startIdx + avail), this.pos);
  }

  commit(c: ByteCursor): void {
    this.pos = c.pos;
  }

  async u8(field: string): Promise<number> {
    const c = await this.cursor(1);
    const v = c.u8(field);
    this.commit(c);
    return v;
  }

  async peekU8(field: string): Promise<number> {
    const c = await this.cursor(1);
    return c.peekU8(field);
  }

  async be16(field: string): Promise<number> {
    const c = await this.cursor(2);
    const v = c.be16(field);
    this.commit(c);
    return v;
  }

  async be32(field: string): Promise<number> {
    const c = await this.cursor(4);
    const v = c.be32(field);
    this.commit(c);
    return v;
  }

  async be64(field: string): Promise<bigint> {
    const c = await this.cursor(8);
    const v = c.be64(field);
    this.commit(c);
    return v;
  }

  async string8(field: string): Promise<string> {
    const c = await this.cursor(256);
    const v = c.string8(field);
    this.commit(c);
    return v;
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
