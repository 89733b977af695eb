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
  for (;;) {
    const at = r.pos;
    const c = await r.cursor(HTAB_CHUNK_HEADER);
    const chunk = decodeHtabChunk(c);
    r.commit(c);
    if (isHtabEndMarker(chunk)) return;
    if (chunk.index + chunk.valid + chunk.invalid > slots) {
      throw new RamsnapFormatError(FormatCode.BAD_HTAB, 'hash page table chunk lies past the end of the table', {
        field: 'spapr/htab.chunk.index',
        offset: at,
        expected: `index + n_valid + n_invalid <= ${slots}`,
        actual: `${chunk.index}+${chunk.valid}+${chunk.invalid}`,
      });
    }
    await r.skip(chunk.valid * HASH_PTE_SIZE, 'spapr/htab.chunk.entries');
  }
}

/** One part of s390-storage_attributes: records up to EOS. */
async function stattribBody(w: WalkState, rec: SectionRecord): Promise<void> {
  const r = w.r;
  for (;;) {
    const at = r.pos;
    const flags = Number((await r.be64(`${rec.name}.record`)) & BigInt(STATTR_FLAG_MASK));
    switch (flags) {
      case StattrFlag.EOS:
        return;
      case StattrFlag.DONE:
        break;
      case StattrFlag.MORE: {
        const countAt = r.pos;
        const count = await r.be64(`${rec.name}.count`);
        if (count > BigInt(r.size - r.pos)) {
          throw new RamsnapFormatError(FormatCode.TRUNCATED, `file ends inside ${rec.name}.values`, {
            field: `${rec.name}.values`,
            offset: countAt,
            expected: `${count} bytes`,
            actual: r.size - r.pos,
          });
        }
        await r.skip(Number(count), `${rec.name}.values`);
        break;
      }
      case StattrFlag.ERROR:
        throw new RamsnapFormatError(FormatCode.BAD_STORAGE_ATTRIBUTES, 'the saving QEMU marked its storage attributes incomplete', { field: `${rec.name}.record`, offset: at });
      default:
        throw new RamsnapFormatError(FormatCode.BAD_STORAGE_ATTRIBUTES, 'storage attribute record has unknown flags', {
          field: `${rec.name}.record`,
          offset: at,
          expected: 'one of 0x1 0x2 0x4 0x8',
          actual: `0x${flags.toString(16)}`,
        });
    }
  }
}
