import { FormatCode, RamsnapFormatError } from './errors.js';

/**
 * The one place a 64-bit value from a file becomes a JS number. Offsets and
 * lengths above 2^53 - 1 cannot be represented exactly, and no real file is
 * that large, so they are refused rather than rounded.
 */
export function toSafeNumber(value: bigint, field: string, offset: number): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new RamsnapFormatError(FormatCode.VALUE_TOO_LARGE, `${field} is too large`, {
      field,
      offset,
      expected: `<= ${Number.MAX_SAFE_INTEGER}`,
      actual: `0x${value.toString(16)}`,
    });
  }
  return Number(value);
}

/** Writes a non-negative safe integer as big-endian u64. */
export function writeBe64(buf: Uint8Array, at: number, value: number | bigint): void {
  const v = BigInt(value);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  view.setBigUint64(at, v, false);
}
