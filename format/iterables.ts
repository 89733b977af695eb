/**
 * Bodies of the iterable (START/PART/END) sections other than RAM that
 * machines QEMU 10 saves carry. Each has its own format, known from its
 * save and load handlers, and is read the same in every part:
 *
 * spapr/htab (hw/ppc/spapr.c htab_save_setup / htab_save_iterate /
 * htab_save_complete / htab_load), version 1, the pseries hash page table:
 *
 *   be32 header   0xffffffff: no hash page table (nothing follows);
 *                 non-zero: log2 of the table's size in bytes (nothing follows);
 *                 0: chunks follow
 *   chunk         be32 index, be16 n_valid, be16 n_invalid, n_valid * 16 bytes
 *                 of entries (slots index.. are set, the n_invalid after them cleared)
 *   end marker    a chunk of all zeros (index 0, n_valid 0, n_invalid 0)
 *
 * s390-storage_attributes (hw/s390x/s390-stattrib.c cmma_save / cmma_load),
 * version 0, the s390x CMMA page states; records until EOS:
 *
 *   be64          (first page frame << 12) | flags; flags one of
 *                 MORE (be64 count, then count bytes, one per page),
 *                 DONE (the last values have been sent), EOS (end of this part),
 *                 ERROR (the sender failed: the loader refuses it)
 */
import type { ByteCursor } from './cursor.js';

export const HTAB_SECTION = 'spapr/htab';
export const HTAB_VERSION = 1;
/** Bytes of one hash page table entry (HASH_PTE_SIZE_64). */
export const HASH_PTE_SIZE = 16;
/** The header that says "no hash page table" (a radix guest, or none allocated yet). */
export const HTAB_NO_HPT = 0xffffffff;
/** log2 sizes of a hash page table that sPAPR allows (256 KiB .. 64 TiB; spapr.c h_resize_hpt_prepare). */
export const HTAB_MIN_SHIFT = 18;
export const HTAB_MAX_SHIFT = 46;
/** Bytes of a chunk header. */
export const HTAB_CHUNK_HEADER = 8;

export interface HtabChunk {
  index: number;
  valid: number;
  invalid: number;
}

export function decodeHtabChunk(c: ByteCursor): HtabChunk {
  const index = c.be32('spapr/htab.chunk.index');
  const valid = c.be16('spapr/htab.chunk.n_valid');
  const invalid = c.be16('spapr/htab.chunk.n_invalid');
  return { index, valid, invalid };
}

export function isHtabEndMarker(k: HtabChunk): boolean {
  return k.index === 0 && k.valid === 0 && k.invalid === 0;
}

export const STATTR_SECTION = 's390-storage_attributes';
export const STATTR_VERSION = 0;
/** Flags in the low 12 bits of a storage-attribute record (s390x pages are 4 KiB). */
export const StattrFlag = {
  EOS: 0x01,
  MORE: 0x02,
  ERROR: 0x04,
  DONE: 0x08,
} as const;
export const STATTR_FLAG_MASK = 0xfff;
