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
import { CAP_MAPPED_RAM, CAP_X_IGNORE_SHARED, MAPPED_RAM_ALIGNMENT, MAPPED_RAM_HDR_SIZE, MAPPED_RAM_HDR_VERSION, MAX_IDSTR, MAX_PAGE_SIZE, MIN_PAGE_SIZE, RamFlag, Section } from './constants.js';
import { MAX_MACHINE_NAME, concat, encodeConfiguration, isUuid, type Configuration } from './configuration.js';
import { latin1Bytes } from './cursor.js';
import { bitmapBytes } from './bitmap.js';
import { encodeMappedRamHeader, mappedRamPlacement } from './mapped-ram.js';
import { encodeFileHeader, encodeSectionStart } from './section.js';
import { TARGETS, machineAliasProblem, machineTarget, targetPageBitsFor } from './target.js';

export interface PlanBlock {
  name: string;
  usedLength: number;
}

export interface PlanOptions {
  blocks: PlanBlock[];
  pageSize: number;
  machine: string;
  /** Capabilities besides mapped-ram: none can be written (see writableConfiguration). */
  capabilities?: string[];
  /** Alignment of every page region, from file byte 0 (default 1 MiB; at least the page size). */
  alignment?: number;
  /** File offset where the stream starts (file:PATH,offset=N). */
  streamOffset?: number;
  /** Section id of the RAM section (a template's, so device section ids stay unique). */
  ramSectionId?: number;
  /**
   * configuration/target-page-bits. For a machine type that decides its
   * target (format/target.ts) the value QEMU writes is used; a given value
   * must then agree with the page size.
   */
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
  checkPageSize(ps);
  const alignment = o.alignment ?? MAPPED_RAM_ALIGNMENT;
  // QEMU's loader needs pages_offset aligned to the page size; 1 MiB is the writer's choice (O_DIRECT friendly).
  if (!Number.isSafeInteger(alignment) || alignment < ps || alignment % ps !== 0) {
    throw new LayoutError('BAD_ALIGNMENT', `alignment ${alignment} must be a multiple of the page size ${ps}`, 'alignment');
  }
  const streamOffset = o.streamOffset ?? 0;
  if (!Number.isSafeInteger(streamOffset) || streamOffset < 0) throw new LayoutError('BAD_OFFSET', `stream offset ${streamOffset} is not a file offset`, 'streamOffset');
  checkBlocks(o.blocks, ps);
  const ramSectionId = checkRamSectionId(o.ramSectionId);
  const configuration = writableConfiguration({ ...o, capabilities: [...(o.capabilities ?? []), CAP_MAPPED_RAM] }, ps, 'mapped-ram');
  const total = o.blocks.reduce((n, b) => n + b.usedLength, 0);
  if (!Number.isSafeInteger(total)) throw new LayoutError('BAD_BLOCK_LENGTH', `the blocks add up to more than ${Number.MAX_SAFE_INTEGER} bytes`, 'blocks.usedLength');
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

/** The RAM section's id (default 1): a be32. */
export function checkRamSectionId(id = 1): number {
  if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) throw new LayoutError('BAD_SECTION_ID', `RAM section id ${id} is not a be32`, 'ramSectionId');
  return id;
}

function checkPageSize(ps: number): void {
  if (!Number.isInteger(ps) || ps < MIN_PAGE_SIZE || ps > MAX_PAGE_SIZE || (ps & (ps - 1)) !== 0) {
    throw new LayoutError('BAD_PAGE_SIZE', `page size ${ps} is not a power of two from ${MIN_PAGE_SIZE} to ${MAX_PAGE_SIZE}`, 'pageSize');
  }
}

/** The block list rules of both layouts: names of 1..255 single bytes, each once, lengths a positive whole number of pages. */
export function checkBlocks(blocks: PlanBlock[], pageSize: number): void {
  checkPageSize(pageSize);
  if (blocks.length === 0) throw new LayoutError('NO_BLOCKS', 'a snapshot needs at least one RAMBlock', 'blocks');
  const names = new Set<string>();
  for (const b of blocks) {
    // Names are bytes in the stream (u8 length + bytes): a character above 0xff cannot be written.
    if (typeof b.name !== 'string' || /[^\x00-\xff]/.test(b.name)) {
      throw new LayoutError('BAD_BLOCK_NAME', `block name ${JSON.stringify(b.name)} has characters that are not single bytes`, 'blocks.name');
    }
    const n = latin1Bytes(b.name).length;
    if (n === 0 || n > MAX_IDSTR) throw new LayoutError('BAD_BLOCK_NAME', `block name ${JSON.stringify(b.name)} must be 1 to ${MAX_IDSTR} bytes`, 'blocks.name');
    if (names.has(b.name)) throw new LayoutError('DUPLICATE_BLOCK', `block ${JSON.stringify(b.name)} is listed twice`, 'blocks.name');
    names.add(b.name);
    if (!Number.isSafeInteger(b.usedLength) || b.usedLength <= 0 || b.usedLength % pageSize !== 0) {
      throw new LayoutError('BAD_BLOCK_LENGTH', `block ${JSON.stringify(b.name)}: length ${b.usedLength} is not a positive multiple of the page size ${pageSize}`, 'blocks.usedLength');
    }
  }
}

/**
 * The CONFIGURATION section a writer puts in a stream of `layout`, as
 * QEMU 10 would write it for the same machine, or a LayoutError for what
 * QEMU could not load (or ramsnap could not read back):
 *
 * - the machine type: 1 to 256 single bytes (the reader's bound);
 * - capabilities: QEMU lists only the ones it validates, mapped-ram and
 *   x-ignore-shared (savevm.c should_validate_capability), and refuses a
 *   name it does not know. mapped-ram goes with the mapped-ram layout only;
 *   x-ignore-shared streams carry each block's address and leave shared
 *   blocks' pages out, which these writers do not do;
 * - target-page-bits: for a machine type that decides its target
 *   (format/target.ts), the page size must be the target's, and the
 *   subsection is there exactly when QEMU writes it; for another, a given
 *   value must be log2 of the page size;
 * - uuid: a UUID.
 */
export function writableConfiguration(
  o: { machine: string; capabilities?: string[]; targetPageBits?: number; uuid?: string },
  pageSize: number,
  layout: 'mapped-ram' | 'legacy',
): Configuration {
  const machine = o.machine;
  if (typeof machine !== 'string' || /[^\x00-\xff]/.test(machine) || machine.length === 0 || machine.length > MAX_MACHINE_NAME) {
    throw new LayoutError('BAD_MACHINE', `machine type ${JSON.stringify(machine)} must be 1 to ${MAX_MACHINE_NAME} single bytes`, 'machine');
  }
  const alias = machineAliasProblem(machine);
  if (alias) throw new LayoutError('BAD_MACHINE', `machine type ${alias}`, 'machine');
  const capabilities: string[] = [];
  for (const cap of o.capabilities ?? []) {
    if (cap === CAP_MAPPED_RAM && layout === 'mapped-ram') {
      if (!capabilities.includes(cap)) capabilities.push(cap);
    } else if (cap === CAP_MAPPED_RAM) {
      throw new LayoutError('BAD_CAPABILITIES', 'a legacy stream cannot list the mapped-ram capability', 'configuration.capabilities');
    } else if (cap === CAP_X_IGNORE_SHARED) {
      throw new LayoutError('BAD_CAPABILITIES', 'ramsnap does not write x-ignore-shared streams (shared blocks carry an address and no pages)', 'configuration.capabilities');
    } else {
      throw new LayoutError('BAD_CAPABILITIES', `capability ${JSON.stringify(cap)} is not one QEMU 10 records in a stream (mapped-ram, x-ignore-shared)`, 'configuration.capabilities');
    }
  }
  const bits = Math.log2(pageSize);
  if (o.targetPageBits !== undefined && o.targetPageBits !== bits) {
    throw new LayoutError('BAD_TARGET_PAGE_BITS', `target-page-bits ${o.targetPageBits} does not match the page size ${pageSize} (${bits} bits)`, 'targetPageBits');
  }
  let targetPageBits = o.targetPageBits;
  const known = machineTarget(machine);
  if (known) {
    if (pageSize !== known.pageSize) {
      throw new LayoutError('PAGE_SIZE_MISMATCH', `machine ${machine} (${known.target}) has ${known.pageSize}-byte target pages, not ${pageSize}`, 'pageSize');
    }
    targetPageBits = targetPageBitsFor(TARGETS[known.target], pageSize);
  }
  if (o.uuid !== undefined && !isUuid(o.uuid)) throw new LayoutError('BAD_UUID', `uuid ${JSON.stringify(o.uuid)} is not a UUID`, 'uuid');
  return {
    machine,
    capabilities,
    ...(targetPageBits !== undefined ? { targetPageBits } : {}),
    ...(o.uuid !== undefined ? { uuid: o.uuid } : {}),
  };
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
