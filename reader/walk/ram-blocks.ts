/**
 * The RAM section's START body: the MEM_SIZE record and the block list
 * (ram.c ram_save_setup / parse_ramblocks). Each entry is a name and a used
 * length; in a mapped-ram stream its header, bitmap and page region follow
 * (mapped-ram.ts), in a legacy stream its pages come later as records
 * (legacy-records.ts).
 */
import { MAPPED_RAM_HDR_SIZE, RAM_FLAG_MASK, RamFlag } from '../../format/constants.js';
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import { toSafeNumber } from '../../format/int64.js';
import { LegacyIndex } from '../../format/legacy-index.js';
import { decodeMappedRamHeader } from '../../format/mapped-ram.js';
import type { RamBlock } from '../model.js';
import { LEGACY_RECORD_OVERHEAD } from './legacy-records.js';
import { mappedRamBlock } from './mapped-ram.js';
import { badLength } from './page-size.js';
import type { WalkState } from './state.js';

/**
 * RAMBlocks in one stream. Real VMs have tens (a few hundred with many
 * devices' ROMs and DIMMs); without a bound, a legacy block list of
 * one-page blocks costs 16 bytes of file and 350 bytes of memory each.
 */
export const MAX_BLOCKS = 65_536;

/** The MEM_SIZE record and the block list of the RAM section's START. */
export async function ramSetup(w: WalkState): Promise<void> {
  const m = w.model;
  const r = w.r;
  const at = r.pos;
  const v = await r.be64('ram.mem_size');
  const flags = Number(v & BigInt(RAM_FLAG_MASK));
  if (flags !== RamFlag.MEM_SIZE) {
    throw new RamsnapFormatError(FormatCode.BAD_RAM_FLAGS, 'RAM section does not start with the block list', {
      field: 'ram.mem_size.flags',
      offset: at,
      expected: '0x004 (MEM_SIZE)',
      actual: `0x${flags.toString(16).padStart(3, '0')}`,
    });
  }
  const total = toSafeNumber(v & ~BigInt(RAM_FLAG_MASK), 'ram.mem_size', at);
  m.ramTotal = total;
  let remaining = total;
  while (remaining > 0) {
    const block = await blockEntry(w, remaining);
    remaining -= block.usedLength;
  }
}

async function blockEntry(w: WalkState, remaining: number): Promise<RamBlock> {
  const m = w.model;
  const r = w.r;
  const entryOffset = r.pos;
  const c = await r.cursor(1 + 255 + 8 + 8 + MAPPED_RAM_HDR_SIZE);
  const name = c.string8('ramblock.name');
  const field = `ramblock[${name}]`;
  const lenAt = c.pos;
  const usedLength = c.be64n(`${field}.used_length`);
  if (w.blocksByName.has(name)) {
    throw new RamsnapFormatError(FormatCode.DUPLICATE_BLOCK, `RAMBlock ${JSON.stringify(name)} is listed twice`, {
      field: `${field}.name`,
      offset: entryOffset,
    });
  }
  if (usedLength === 0 || usedLength > remaining) {
    throw new RamsnapFormatError(FormatCode.RAM_SIZE_MISMATCH, `RAMBlock ${JSON.stringify(name)} length does not fit the announced RAM total`, {
      field: `${field}.used_length`,
      offset: lenAt,
      expected: `1..${remaining}`,
      actual: usedLength,
    });
  }
  if (m.blocks.length >= MAX_BLOCKS) {
    throw new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, 'stream lists more RAM blocks than ramsnap allows', {
      field: `${field}.name`,
      offset: entryOffset,
      expected: `<= ${MAX_BLOCKS} blocks`,
    });
  }
  const block: RamBlock = { name, usedLength, pageSize: m.pageSize, pages: 0, entryOffset, pagesPresent: 0 };
  if (w.ignoreShared) block.addr = c.be64n(`${field}.addr`);
  // Listed before its checks, so a lenient open (extract --salvage) still sees where it was.
  w.blocksByName.set(name, block);
  m.blocks.push(block);
  if (m.mappedRam) {
    const headerOffset = c.pos;
    const h = decodeMappedRamHeader(c, `${field}.mapped_ram`);
    r.commit(c);
    await mappedRamBlock(w, block, h, headerOffset);
  } else {
    r.commit(c);
    if (usedLength % m.pageSize !== 0) throw badLength(field, lenAt, usedLength, m.pageSize);
    block.pages = usedLength / m.pageSize;
    // A record is be64 + (u8 + name) + page: pages of consecutive records are at most that far apart.
    block.legacy = new LegacyIndex(m.pageSize + LEGACY_RECORD_OVERHEAD);
  }
  return block;
}
