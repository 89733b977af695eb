/**
 * Iterable sections other than RAM: each START, PART and END body is read
 * with the section's own format (format/iterables.ts), as QEMU's loader
 * hands every part to the same load handler. Nothing is kept: the walk
 * checks them and finds where they end; `dump --state` shows them as
 * analyze-migration.py does, as an empty string.
 */
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import {
  HASH_PTE_SIZE,
  HTAB_CHUNK_HEADER,
  HTAB_MAX_SHIFT,
  HTAB_MIN_SHIFT,
  HTAB_NO_HPT,
  HTAB_SECTION,
  HTAB_VERSION,
  STATTR_FLAG_MASK,
  STATTR_SECTION,
  STATTR_VERSION,
  StattrFlag,
  decodeHtabChunk,
  isHtabEndMarker,
} from '../../format/iterables.js';
import type { SectionRecord } from '../model.js';
import type { WalkState } from './state.js';

/** Bytes of a part parsed at a time. */
const CHUNK_WINDOW = 1 << 20;
/** A storage-attribute record header with its count. */
const STATTR_RECORD_MAX = 16;

interface IterableFormat {
  version: number;
  /** The code of a body that breaks the format. */
  code: FormatCode;
  body(w: WalkState, rec: SectionRecord): Promise<void>;
}

/** By idstr: the iterable sections ramsnap can read besides RAM. */
export const ITERABLE_SECTIONS: Record<string, IterableFormat> = {
  [HTAB_SECTION]: { version: HTAB_VERSION, code: FormatCode.BAD_HTAB, body: htabBody },
  [STATTR_SECTION]: { version: STATTR_VERSION, code: FormatCode.BAD_STORAGE_ATTRIBUTES, body: stattribBody },
};

export function iterableFormat(name: string): IterableFormat | undefined {
  return Object.hasOwn(ITERABLE_SECTIONS, name) ? ITERABLE_SECTIONS[name] : undefined;
}

/** Checks the version of an iterable section's START (the loaders refuse others). */
export function checkIterableVersion(rec: SectionRecord, fmt: IterableFormat): void {
  if (rec.versionId !== fmt.version) {
    throw new RamsnapFormatError(FormatCode.BAD_VERSION, `unsupported ${rec.name} section version`, {
      field: `section[${rec.name}].version_id`,
      offset: rec.offset + 6 + rec.name.length + 4,
      expected: fmt.version,
      actual: rec.versionId,
    });
  }
}

/** One part of spapr/htab: a header, and chunks up to the end marker when the header is 0. */
async function htabBody(w: WalkState, rec: SectionRecord): Promise<void> {
  const r = w.r;
  const headerAt = r.pos;
  const header = await r.be32('spapr/htab.header');
  if (header === HTAB_NO_HPT) return;
  if (header !== 0) {
    if (header < HTAB_MIN_SHIFT || header > HTAB_MAX_SHIFT) {
      throw new RamsnapFormatError(FormatCode.BAD_HTAB, 'hash page table size out of range', {
        field: 'spapr/htab.header',
        offset: headerAt,
        expected: `log2 size in ${HTAB_MIN_SHIFT}..${HTAB_MAX_SHIFT}, 0 or 0xffffffff`,
        actual: header,
      });
    }
    w.htabShift = header;
    return;
  }
  if (w.htabShift === undefined) {
    // QEMU's loader would write them into a table it never allocated.
    throw new RamsnapFormatError(FormatCode.BAD_HTAB, `${rec.name} sends entries before the size of its table`, { field: 'spapr/htab.header', offset: headerAt });
  }
  const slots = 2 ** w.htabShift / HASH_PTE_SIZE;
  // Chunks are parsed from the reader's window without an await each: a hostile part of millions of
  // 8-byte chunks (invalid entries only) is then as cheap as legacy page records.
  chunks: for (;;) {
    // At least a chunk header, unless the file ends first (then the decode below is TRUNCATED).
    const c = await r.cursor(HTAB_CHUNK_HEADER, CHUNK_WINDOW);
    do {
      const at = c.pos;
      const chunk = decodeHtabChunk(c);
      if (isHtabEndMarker(chunk)) {
        r.commit(c);
        return;
      }
      if (chunk.index + chunk.valid + chunk.invalid > slots) {
        throw new RamsnapFormatError(FormatCode.BAD_HTAB, 'hash page table chunk lies past the end of the table', {
          field: 'spapr/htab.chunk.index',
          offset: at,
          expected: `index + n_valid + n_invalid <= ${slots}`,
          actual: `${chunk.index}+${chunk.valid}+${chunk.invalid}`,
        });
      }
      const entries = chunk.valid * HASH_PTE_SIZE;
      if (entries > c.remaining) {
        // Past the window (or the file): skipped by offset, checked against the file size.
        r.commit(c);
        await r.skip(entries, 'spapr/htab.chunk.entries');
        continue chunks;
      }
      c.skip(entries, 'spapr/htab.chunk.entries');
    } while (c.remaining >= HTAB_CHUNK_HEADER);
    r.commit(c);
  }
}

/** One part of s390-storage_attributes: records up to EOS, parsed from the window as spapr/htab's chunks are. */
async function stattribBody(w: WalkState, rec: SectionRecord): Promise<void> {
  const r = w.r;
  const field = `${rec.name}.record`;
  records: for (;;) {
    // A record with its count (MORE) is 16 bytes: the window holds that much unless the file ends.
    const c = await r.cursor(STATTR_RECORD_MAX, CHUNK_WINDOW);
    do {
      const at = c.pos;
      const flags = Number(c.be64(field) & BigInt(STATTR_FLAG_MASK));
      if (flags === StattrFlag.EOS) {
        r.commit(c);
        return;
      }
      if (flags === StattrFlag.MORE) {
        const countAt = c.pos;
        const count = c.be64(`${rec.name}.count`);
        if (count > BigInt(c.remaining)) {
          // Past the window: skipped by offset; a count past the end of the file is a cut file, not an allocation.
          r.commit(c);
          if (count > BigInt(r.size - r.pos)) {
            throw new RamsnapFormatError(FormatCode.TRUNCATED, `file ends inside ${rec.name}.values`, {
              field: `${rec.name}.values`,
              offset: countAt,
              expected: `${count} bytes`,
              actual: r.size - r.pos,
            });
          }
          await r.skip(Number(count), `${rec.name}.values`);
          continue records;
        }
        c.skip(Number(count), `${rec.name}.values`);
      } else if (flags === StattrFlag.ERROR) {
        throw new RamsnapFormatError(FormatCode.BAD_STORAGE_ATTRIBUTES, 'the saving QEMU marked its storage attributes incomplete', { field, offset: at });
      } else if (flags !== StattrFlag.DONE) {
        throw new RamsnapFormatError(FormatCode.BAD_STORAGE_ATTRIBUTES, 'storage attribute record has unknown flags', {
          field,
          offset: at,
          expected: 'one of 0x1 0x2 0x4 0x8',
          actual: `0x${flags.toString(16)}`,
        });
      }
    } while (c.remaining >= STATTR_RECORD_MAX);
    r.commit(c);
  }
}
