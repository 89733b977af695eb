/**
 * Page records of a legacy (sequential) RAM section (ram.c
 * save_page_header, ram_load_precopy): be64 offset|flags, the block name
 * unless CONTINUE, then the payload. Pages are indexed, not copied: the
 * index says where the last copy of each page is (format/legacy-index.ts).
 * A mapped-ram stream's PART and END bodies are just the EOS record.
 */
import { RamFlag } from '../../format/constants.js';
import type { ByteCursor } from '../../format/cursor.js';
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import { toSafeNumber } from '../../format/int64.js';
import type { LegacyIndex } from '../../format/legacy-index.js';
import type { RamBlock } from '../model.js';
import type { WalkState } from './state.js';

/** Runs in a legacy index (memory bound for hostile streams of alternating records). */
export const MAX_LEGACY_RUNS = 2_000_000;
/** Bytes of stream parsed at a time for page records. */
const RECORD_WINDOW = 1 << 20;
/** COMPRESS_PAGE is known too: QEMU up to 9.0 wrote it (capability compress), and it is valid but not supported here. */
const KNOWN_RECORD_FLAGS = RamFlag.ZERO | RamFlag.PAGE | RamFlag.EOS | RamFlag.CONTINUE | RamFlag.MULTIFD_FLUSH | RamFlag.XBZRLE | RamFlag.COMPRESS_PAGE;
/** Most bytes a legacy PAGE record adds before its page: be64 header, u8 length and a 255-byte name. */
export const LEGACY_RECORD_OVERHEAD = 8 + 1 + 255;

/**
 * Page records up to EOS, in any part of the RAM section. A legacy stream
 * has a record per page, so records are parsed synchronously from a
 * window of RECORD_WINDOW bytes, refilled when the next record might not
 * fit, rather than with an await per field.
 */
export async function ramRecords(w: WalkState): Promise<void> {
  const r = w.r;
  const maxRecord = LEGACY_RECORD_OVERHEAD + w.model.pageSize;
  for (;;) {
    // At least one record, and whatever else the window holds: asking for a whole RECORD_WINDOW ahead
    // re-read 1 MiB for every RAM part (a million 18-byte parts took minutes).
    const c = await r.cursor(maxRecord, RECORD_WINDOW);
    const reachesEof = c.pos + c.remaining >= w.source.size;
    // Near the end of the file the last records are parsed from what is there (a cut one is TRUNCATED).
    while (reachesEof || c.remaining >= maxRecord) {
      if (ramRecord(w, c)) {
        r.commit(c);
        return;
      }
    }
    r.commit(c);
  }
}

/** One RAM record; true at EOS. */
function ramRecord(w: WalkState, c: ByteCursor): boolean {
  const m = w.model;
  const mask = BigInt(m.pageSize - 1);
  const at = c.pos;
  const v = c.be64('ram.record');
  const flags = Number(v & mask);
  const addr = toSafeNumber(v & ~mask, 'ram.record.offset', at);
  if ((flags & ~KNOWN_RECORD_FLAGS) !== 0) {
    throw new RamsnapFormatError(FormatCode.BAD_RAM_FLAGS, 'RAM record has unknown or obsolete flags', {
      field: 'ram.record.flags',
      offset: at,
      actual: `0x${flags.toString(16)}`,
    });
  }
  if (flags & RamFlag.EOS) {
    if (flags !== RamFlag.EOS || addr !== 0) {
      throw new RamsnapFormatError(FormatCode.BAD_RAM_FLAGS, 'end-of-section record carries other flags or an offset', {
        field: 'ram.record.flags',
        offset: at,
        actual: `0x${v.toString(16)}`,
      });
    }
    return true;
  }
  if (flags === RamFlag.MULTIFD_FLUSH) {
    if (m.mappedRam || addr !== 0) {
      // QEMU's mapped-ram loader refuses it ("Unexpected RAM flags"): mapped-ram syncs through the file.
      throw new RamsnapFormatError(FormatCode.BAD_RAM_FLAGS, m.mappedRam ? 'multifd flush record in a mapped-ram stream' : 'multifd flush record carries an offset', {
        field: 'ram.record.flags',
        offset: at,
        actual: `0x${v.toString(16)}`,
      });
    }
    return false;
  }
  const kind = flags & ~RamFlag.CONTINUE;
  if (kind !== RamFlag.ZERO && kind !== RamFlag.PAGE && kind !== RamFlag.XBZRLE && kind !== RamFlag.COMPRESS_PAGE) {
    throw new RamsnapFormatError(FormatCode.BAD_RAM_FLAGS, 'RAM record has no page type', {
      field: 'ram.record.flags',
      offset: at,
      actual: `0x${flags.toString(16)}`,
    });
  }
  if (m.mappedRam) {
    throw new RamsnapFormatError(FormatCode.BAD_RAM_FLAGS, 'page record in a mapped-ram stream (pages belong at their file offsets)', {
      field: 'ram.record.flags',
      offset: at,
      actual: `0x${flags.toString(16)}`,
    });
  }
  let block: RamBlock | undefined;
  if (flags & RamFlag.CONTINUE) {
    block = w.lastBlock;
    if (!block) {
      throw new RamsnapFormatError(FormatCode.UNKNOWN_BLOCK, 'CONTINUE record with no block before it', { field: 'ram.record.flags', offset: at });
    }
  } else {
    const nameAt = c.pos;
    const name = c.string8('ram.record.block');
    block = w.blocksByName.get(name);
    if (!block) {
      throw new RamsnapFormatError(FormatCode.UNKNOWN_BLOCK, `page record for unknown RAMBlock ${JSON.stringify(name)}`, {
        field: 'ram.record.block',
        offset: nameAt,
      });
    }
    w.lastBlock = block;
  }
  if (addr >= block.usedLength) {
    throw new RamsnapFormatError(FormatCode.PAGE_OUT_OF_BLOCK, `page offset past the end of ${block.name}`, {
      field: `ramblock[${block.name}].page`,
      offset: at,
      expected: `< ${block.usedLength}`,
      actual: addr,
    });
  }
  const page = addr / m.pageSize;
  const index = block.legacy as LegacyIndex;
  // runCount, not runs.length: looking at the runs would merge pending records on every record.
  const before = index.runCount;
  if (kind === RamFlag.ZERO) {
    const fillAt = c.pos;
    const fill = c.u8('ram.record.fill');
    if (fill !== 0) {
      // QEMU's loader refuses these too ("Found a zero page with value").
      throw new RamsnapFormatError(FormatCode.BAD_RAM_FLAGS, 'ZERO record with a non-zero fill byte', {
        field: 'ram.record.fill',
        offset: fillAt,
        expected: 0,
        actual: fill,
      });
    }
    index.add(page, -1);
  } else if (kind === RamFlag.PAGE) {
    index.add(page, c.pos);
    c.skip(m.pageSize, `ramblock[${block.name}].page[${page}]`);
  } else if (kind === RamFlag.XBZRLE) {
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, 'XBZRLE-encoded pages are not supported', { field: 'ram.record.flags', offset: at });
  } else {
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, "compressed pages (QEMU 9.0's compress capability, removed in 9.1) are not supported", {
      field: 'ram.record.flags',
      offset: at,
    });
  }
  w.legacyRuns += index.runCount - before;
  if (w.legacyRuns > MAX_LEGACY_RUNS) {
    throw new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, 'legacy stream is too fragmented to index', {
      field: 'ram.record',
      offset: at,
      expected: `<= ${MAX_LEGACY_RUNS} runs`,
    });
  }
  return false;
}
