/**
 * The per-RAMBlock header of a mapped-ram stream (migration/ram.c,
 * MappedRamHeader), written right after the block's name and used length:
 *
 *   +0   be32 version        1 (the loader refuses anything newer)
 *   +4   be64 page_size      the target page size, one bitmap bit per page
 *   +12  be64 bitmap_offset  absolute file offset of the block's bitmap
 *   +20  be64 pages_offset   absolute file offset of page 0 of the block
 *
 * Page i of the block lives at pages_offset + i * page_size, and the stream
 * goes on at pages_offset + used_length.
 */
import { Parser } from 'binary-parser';
import { MAPPED_RAM_HDR_SIZE, MAPPED_RAM_ALIGNMENT } from './constants.js';
import type { ByteCursor } from './cursor.js';
import { toSafeNumber } from './int64.js';
import { bitmapBytes } from './bitmap.js';

export interface MappedRamHeader {
  version: number;
  pageSize: number;
  bitmapOffset: number;
  pagesOffset: number;
}

const headerParser = new Parser()
  .endianness('big')
  .uint32('version')
  .uint64('pageSize')
  .uint64('bitmapOffset')
  .uint64('pagesOffset');

/** Decodes the 28 bytes at the cursor; 64-bit fields must fit a JS number. */
export function decodeMappedRamHeader(c: ByteCursor, field: string): MappedRamHeader {
  const at = c.pos;
  const raw = c.bytesView(MAPPED_RAM_HDR_SIZE, field);
  const h = headerParser.parse(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength)) as {
    version: number;
    pageSize: bigint;
    bitmapOffset: bigint;
    pagesOffset: bigint;
  };
  return {
    version: h.version,
    pageSize: toSafeNumber(h.pageSize, `${field}.page_size`, at + 4),
    bitmapOffset: toSafeNumber(h.bitmapOffset, `${field}.bitmap_offset`, at + 12),
    pagesOffset: toSafeNumber(h.pagesOffset, `${field}.pages_offset`, at + 20),
  };
}

export function encodeMappedRamHeader(h: MappedRamHeader): Uint8Array {
  const b = new Uint8Array(MAPPED_RAM_HDR_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, h.version, false);
  v.setBigUint64(4, BigInt(h.pageSize), false);
  v.setBigUint64(12, BigInt(h.bitmapOffset), false);
  v.setBigUint64(20, BigInt(h.pagesOffset), false);
  return b;
}

/** Where QEMU puts a block's bitmap and pages, given where its header ends. */
export function mappedRamPlacement(
  headerEnd: number,
  usedLength: number,
  pageSize: number,
  alignment = MAPPED_RAM_ALIGNMENT,
): { bitmapOffset: number; bitmapSize: number; pagesOffset: number; streamResumes: number } {
  const bitmapSize = bitmapBytes(Math.floor(usedLength / pageSize));
  const bitmapOffset = headerEnd;
  const pagesOffset = alignUp(bitmapOffset + bitmapSize, alignment);
  return { bitmapOffset, bitmapSize, pagesOffset, streamResumes: pagesOffset + usedLength };
}

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
