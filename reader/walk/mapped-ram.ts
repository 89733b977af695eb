/**
 * A mapped-ram block after its name and used length: the 28-byte header
 * (format/mapped-ram.ts), the bitmap it points to, and the page region.
 * The bitmap is loaded whole (it says which pages are in the file); the
 * pages are not read here. The stream goes on after the page region.
 */
import { MAPPED_RAM_ALIGNMENT, MAPPED_RAM_HDR_SIZE, MAPPED_RAM_HDR_VERSION } from '../../format/constants.js';
import { bitmapBytes, countBits, firstTailBit } from '../../format/bitmap.js';
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import type { MappedRamHeader } from '../../format/mapped-ram.js';
import type { RamBlock } from '../model.js';
import { badLength, checkPageSize } from './page-size.js';
import type { WalkState } from './state.js';

/** Bytes of bitmap held in memory at once: enough for 4 TiB of 4 KiB pages. */
export const MAX_BITMAP_MEMORY = 128 << 20;

export async function mappedRamBlock(w: WalkState, block: RamBlock, h: MappedRamHeader, headerOffset: number): Promise<void> {
  const m = w.model;
  const field = `ramblock[${block.name}]`;
  const headerEnd = headerOffset + MAPPED_RAM_HDR_SIZE;
  if (h.version !== MAPPED_RAM_HDR_VERSION) {
    throw new RamsnapFormatError(FormatCode.BAD_MAPPED_RAM_VERSION, 'unsupported mapped-ram header version', {
      field: `${field}.mapped_ram.version`,
      offset: headerOffset,
      expected: MAPPED_RAM_HDR_VERSION,
      actual: h.version,
    });
  }
  checkPageSize(h.pageSize, `${field}.mapped_ram.page_size`, headerOffset + 4);
  const first = m.blocks.find((b) => b !== block && b.mappedRam);
  if (first && first.pageSize !== h.pageSize) {
    throw new RamsnapFormatError(FormatCode.PAGE_SIZE_MISMATCH, 'blocks disagree on the page size', {
      field: `${field}.mapped_ram.page_size`,
      offset: headerOffset + 4,
      expected: first.pageSize,
      actual: h.pageSize,
    });
  }
  if (h.pageSize !== m.pageSize && (m.configuration?.targetPageBits !== undefined || m.vmdesc?.desc.page_size !== undefined)) {
    throw new RamsnapFormatError(FormatCode.PAGE_SIZE_MISMATCH, 'mapped-ram page size differs from the stream target page size', {
      field: `${field}.mapped_ram.page_size`,
      offset: headerOffset + 4,
      expected: m.pageSize,
      actual: h.pageSize,
    });
  }
  m.pageSize = h.pageSize;
  block.pageSize = h.pageSize;
  if (block.usedLength % h.pageSize !== 0) throw badLength(field, block.entryOffset + 1 + block.name.length, block.usedLength, h.pageSize);
  block.pages = block.usedLength / h.pageSize;
  if (w.ignoreShared && h.bitmapOffset === 0 && h.pagesOffset === 0) {
    // QEMU 11 writes a shared block (x-ignore-shared) with no bitmap or pages: the stream goes straight on.
    block.shared = true;
    return;
  }
  const bitmapSize = bitmapBytes(block.pages);
  block.mappedRam = { headerOffset, version: h.version, bitmapOffset: h.bitmapOffset, bitmapSize, pagesOffset: h.pagesOffset };
  const size = w.source.size;
  if (h.bitmapOffset + bitmapSize > size) {
    throw new RamsnapFormatError(FormatCode.BITMAP_OUT_OF_FILE, 'bitmap lies beyond the end of the file', {
      field: `${field}.mapped_ram.bitmap_offset`,
      offset: headerOffset + 12,
      expected: `end <= ${size}`,
      actual: `${h.bitmapOffset}+${bitmapSize}`,
    });
  }
  if (h.pagesOffset < headerEnd) {
    // The stream resumes at pages_offset + used_length: going backwards would overlap the header stream.
    throw new RamsnapFormatError(FormatCode.PAGES_OVERLAP, 'page region starts before the end of its header', {
      field: `${field}.mapped_ram.pages_offset`,
      offset: headerOffset + 20,
      expected: `>= ${headerEnd}`,
      actual: h.pagesOffset,
    });
  }
  if (h.pagesOffset % h.pageSize !== 0) {
    throw new RamsnapFormatError(FormatCode.PAGES_MISALIGNED, 'page region is not aligned to the page size', {
      field: `${field}.mapped_ram.pages_offset`,
      offset: headerOffset + 20,
      expected: `multiple of ${h.pageSize}`,
      actual: h.pagesOffset,
    });
  }
  if (h.pagesOffset % MAPPED_RAM_ALIGNMENT !== 0) {
    w.warn('PAGES_UNALIGNED_1M', `page region of ${block.name} is not 1 MiB aligned (QEMU aligns it; its loader only needs page alignment)`, `${field}.mapped_ram.pages_offset`, headerOffset + 20);
  }
  if (h.bitmapOffset !== headerEnd) {
    w.warn('BITMAP_NOT_AFTER_HEADER', `bitmap of ${block.name} is not right after its header, where QEMU puts it`, `${field}.mapped_ram.bitmap_offset`, headerOffset + 12);
  }
  w.bitmapMemory += bitmapSize;
  if (w.bitmapMemory > MAX_BITMAP_MEMORY) {
    throw new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, 'bitmaps exceed the memory ramsnap allows for them', {
      field: `${field}.mapped_ram.bitmap_offset`,
      offset: headerOffset + 12,
      expected: `<= ${MAX_BITMAP_MEMORY} bytes in all`,
      actual: w.bitmapMemory,
    });
  }
  w.sequential = false;
  block.bitmap = await w.source.read(h.bitmapOffset, bitmapSize, `${field}.bitmap`);
  w.sequential = true;
  const tail = firstTailBit(block.bitmap, block.pages);
  if (tail >= 0) {
    throw new RamsnapFormatError(FormatCode.BITMAP_TAIL_BITS_SET, 'bitmap has a bit set past the last page', {
      field: `${field}.bitmap`,
      offset: h.bitmapOffset + (tail >>> 3),
      expected: `pages < ${block.pages}`,
      actual: `page ${tail}`,
    });
  }
  block.pagesPresent = countBits(block.bitmap, block.pages);
  if (h.pagesOffset + block.usedLength > size) {
    throw new RamsnapFormatError(FormatCode.PAGES_OUT_OF_FILE, 'page region lies beyond the end of the file (truncated?)', {
      field: `${field}.mapped_ram.pages_offset`,
      offset: headerOffset + 20,
      expected: `end <= ${size}`,
      actual: `${h.pagesOffset}+${block.usedLength}`,
    });
  }
  w.endSegment(headerEnd);
  w.regions.push({ start: h.bitmapOffset, end: h.bitmapOffset + bitmapSize, what: `${field}.bitmap` });
  w.regions.push({ start: h.pagesOffset, end: h.pagesOffset + block.usedLength, what: `${field}.pages` });
  // The stream goes on after the block's page region.
  w.r.pos = h.pagesOffset + block.usedLength;
  w.segmentStart = w.r.pos;
}
