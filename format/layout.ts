/**
 * Where everything goes in a mapped-ram stream, computed before a byte is
 * written (the writer reserves, then patches). QEMU's placement, from
 * migration/ram.c (mapped_ram_setup_ramblock), observed on QEMU 10.0.2
 * files:
 *
 *   stream start:  file header, configuration, RAM START, MEM_SIZE record
 *   per block:     u8 len + name, be64 used_length, 28-byte mapped-ram header,
 *                  bitmap right after the header,
 *                  pages at the next multiple of `alignment` (1 MiB) after the
 *                  bitmap, measured from file byte 0,
 *                  the stream resumes at pages_offset + used_length
 *   tail:          after the last block's pages (EOS, footer, ... , EOF,
 *                  device description)
 *
 * Every offset is absolute, also when the stream starts at `streamOffset`.
 */
import { CAP_MAPPED_RAM, MAPPED_RAM_ALIGNMENT, MAPPED_RAM_HDR_SIZE, MAPPED_RAM_HDR_VERSION, MAX_IDSTR, MAX_PAGE_SIZE, MIN_PAGE_SIZE, RamFlag, Section } from './constants.js';
import { concat, encodeConfiguration, type Configuration } from './configuration.js';
import { latin1Bytes } from './cursor.js';
import { bitmapBytes } from './bitmap.js';
import { encodeMappedRamHeader, mappedRamPlacement } from './mapped-ram.js';
import { encodeFileHeader, encodeSectionStart } from './section.js';

export interface PlanBlock {
  name: string;
  usedLength: number;
}

export interface PlanOptions {
  blocks: PlanBlock[];
  pageSize: number;
  machine: string;
  /** Capabilities to record besides mapped-ram (only x-ignore-shared is meaningful to QEMU). */
  capabilities?: string[];
  /** Alignment of every page region, from file byte 0 (default 1 MiB; at least the page size). */
  alignment?: number;
  /** File offset where the stream starts (file:PATH,offset=N). */
  streamOffset?: number;
  /** Section id of the RAM section (a template's, so device section ids stay unique). */
  ramSectionId?: number;
  targetPageBits?: number;
  /** The configuration/uuid subsection (QEMU's validate-uuid), kept when converting. */
  uuid?: string;
}

export interface BlockPlan {
  name: string;
  usedLength: number;
  pages: number;
  /** Offset of the block's entry (name length byte). */
  entryOffset: number;
  headerOffset: number;
  bitmapOffset: number;
  bitmapSize: number;
  pagesOffset: number;
  /** pagesOffset + usedLength: where the stream resumes. */
  end: number;
}

export interface LayoutPlan {
  streamOffset: number;
  pageSize: number;
  alignment: number;
  ramSectionId: number;
  configuration: Configuration;
  blocks: BlockPlan[];
  /** Bytes of stream to write before the first block's entry, at streamOffset. */
  head: Uint8Array;
  /** Where the tail of the stream (after the last block) starts. */
  tailOffset: number;
}

export class LayoutError extends RangeError {
  constructor(
    readonly code: string,
    message: string,
    readonly field: string,
  ) {
    super(message);
  }
}

/** Plans a mapped-ram file; throws LayoutError for blocks or options QEMU could not load. */
export function planLayout(o: PlanOptions): LayoutPlan {
  const ps = o.pageSize;
  if (!Number.isInteger(ps) || ps < MIN_PAGE_SIZE || ps > MAX_PAGE_SIZE || (ps & (ps - 1)) !== 0) {
    throw new LayoutError('BAD_PAGE_SIZE', `page size ${ps} is not a power of two from ${MIN_PAGE_SIZE} to ${MAX_PAGE_SIZE}`, 'pageSize');
  }
  const alignment = o.alignment ?? MAPPED_RAM_ALIGNMENT;
  // QEMU's loader needs pages_offset aligned to the page size; 1 MiB is the writer's choice (O_DIRECT friendly).
  if (!Number.isSafeInteger(alignment) || alignment < ps || alignment % ps !== 0) {
    throw new LayoutError('BAD_ALIGNMENT', `alignment ${alignment} must be a multiple of the page size ${ps}`, 'alignment');
  }
  const streamOffset = o.streamOffset ?? 0;
  if (!Number.isSafeInteger(streamOffset) || streamOffset < 0) throw new LayoutError('BAD_OFFSET', `stream offset ${streamOffset} is not a file offset`, 'streamOffset');
  if (o.blocks.length === 0) throw new LayoutError('NO_BLOCKS', 'a snapshot needs at least one RAMBlock', 'blocks');
  const names = new Set<string>();
  for (const b of o.blocks) {
    // Names are bytes in the stream (u8 length + bytes): a character above 0xff cannot be written.
    if (typeof b.name !== 'string' || /[^\x00-\xff]/.test(b.name)) {
      throw new LayoutError('BAD_BLOCK_NAME', `block name ${JSON.stringify(b.name)} has characters that are not single bytes`, 'blocks.name');
    }
    const n = latin1Bytes(b.name).length;
    if (n === 0 || n > MAX_IDSTR) throw new LayoutError('BAD_BLOCK_NAME', `block name ${JSON.stringify(b.name)} must be 1 to ${MAX_IDSTR} bytes`, 'blocks.name');
    if (names.has(b.name)) throw new LayoutError('DUPLICATE_BLOCK', `block ${JSON.stringify(b.name)} is listed twice`, 'blocks.name');
    names.add(b.name);
    if (!Number.isSafeInteger(b.usedLength) || b.usedLength <= 0 || b.usedLength % ps !== 0) {
      throw new LayoutError('BAD_BLOCK_LENGTH', `block ${JSON.stringify(b.name)}: length ${b.usedLength} is not a positive multiple of the page size ${ps}`, 'blocks.usedLength');
    }
  }
  const ramSectionId = o.ramSectionId ?? 1;
  const configuration: Configuration = {
    machine: o.machine,
    capabilities: [...new Set([...(o.capabilities ?? []), CAP_MAPPED_RAM])],
    ...(o.targetPageBits !== undefined ? { targetPageBits: o.targetPageBits } : {}),
    ...(o.uuid !== undefined ? { uuid: o.uuid } : {}),
  };
  const total = o.blocks.reduce((n, b) => n + b.usedLength, 0);
  const head = concat([
    encodeFileHeader(),
    encodeConfiguration(configuration),
    encodeSectionStart({ type: Section.START, sectionId: ramSectionId, idstr: 'ram', instanceId: 0, versionId: 4 }),
    be64(BigInt(total) | BigInt(RamFlag.MEM_SIZE)),
  ]);
  let at = streamOffset + head.length;
  const blocks: BlockPlan[] = [];
  for (const b of o.blocks) {
    const entryOffset = at;
    const headerOffset = entryOffset + 1 + latin1Bytes(b.name).length + 8;
    const p = mappedRamPlacement(headerOffset + MAPPED_RAM_HDR_SIZE, b.usedLength, ps, alignment);
    blocks.push({
      name: b.name,
      usedLength: b.usedLength,
      pages: b.usedLength / ps,
      entryOffset,
      headerOffset,
      bitmapOffset: p.bitmapOffset,
      bitmapSize: p.bitmapSize,
      pagesOffset: p.pagesOffset,
      end: p.streamResumes,
    });
    at = p.streamResumes;
  }
  return { streamOffset, pageSize: ps, alignment, ramSectionId, configuration, blocks, head, tailOffset: at };
}

/** The bytes of a block's entry: name, used length, mapped-ram header (the bitmap follows). */
export function encodeBlockEntry(b: BlockPlan, pageSize: number): Uint8Array {
  const name = latin1Bytes(b.name);
  return concat([
    Uint8Array.of(name.length),
    name,
    be64(b.usedLength),
    encodeMappedRamHeader({ version: MAPPED_RAM_HDR_VERSION, pageSize, bitmapOffset: b.bitmapOffset, pagesOffset: b.pagesOffset }),
  ]);
}

export function be64(v: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), false);
  return b;
}

export { bitmapBytes };
