/**
 * Magic numbers of the QEMU migration stream (migration/savevm.c,
 * migration/ram.c). Each is declared once here; SPEC.md says where it comes
 * from.
 */

/** "QEVM", big-endian, at the start of every stream. */
export const QEMU_VM_FILE_MAGIC = 0x5145564d;
/** The only stream version QEMU has written since 2009 (v2 was "QEVM" + 2). */
export const QEMU_VM_FILE_VERSION = 3;

/** Section type bytes of the top-level stream. */
export const Section = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

export const SECTION_NAMES: Record<number, string> = {
  0x00: 'EOF',
  0x01: 'START',
  0x02: 'PART',
  0x03: 'END',
  0x04: 'FULL',
  0x05: 'SUBSECTION',
  0x06: 'VMDESCRIPTION',
  0x07: 'CONFIGURATION',
  0x08: 'COMMAND',
  0x7e: 'FOOTER',
};

/** Command ids of a COMMAND section (migration/savevm.c, enum qemu_vm_cmd). */
export const MigCommand = {
  OPEN_RETURN_PATH: 1,
  PING: 2,
  POSTCOPY_ADVISE: 3,
  POSTCOPY_LISTEN: 4,
  POSTCOPY_RUN: 5,
  POSTCOPY_RAM_DISCARD: 6,
  PACKAGED: 7,
  ENABLE_COLO: 8,
  POSTCOPY_RESUME: 9,
  RECV_BITMAP: 10,
  SWITCHOVER_START: 11,
} as const;

/** Name and data length of each command (savevm.c mig_cmd_args; -1: variable). */
export const COMMANDS: Record<number, { name: string; length: number }> = {
  1: { name: 'open-return-path', length: 0 },
  2: { name: 'ping', length: 4 },
  3: { name: 'postcopy-advise', length: -1 },
  4: { name: 'postcopy-listen', length: 0 },
  5: { name: 'postcopy-run', length: 0 },
  6: { name: 'postcopy-ram-discard', length: -1 },
  7: { name: 'packaged', length: 4 },
  8: { name: 'enable-colo', length: 0 },
  9: { name: 'postcopy-resume', length: 0 },
  10: { name: 'recv-bitmap', length: -1 },
  11: { name: 'switchover-start', length: 0 },
};

/**
 * Flags in the low bits of each be64 record of the RAM section. The high bits
 * hold a page-aligned offset (or, with MEM_SIZE, the total RAM size).
 */
export const RamFlag = {
  /** Obsolete "full page" flag; never written by QEMU 2.x or later. */
  FULL: 0x01,
  /** A page whose bytes are all one value: one fill byte follows. */
  ZERO: 0x02,
  /** The block list follows: total RAM size in the high bits. */
  MEM_SIZE: 0x04,
  /** A full page of bytes follows. */
  PAGE: 0x08,
  /** End of this part of the RAM section. */
  EOS: 0x10,
  /** Same block as the previous record: no block name follows. */
  CONTINUE: 0x20,
  /** XBZRLE-encoded page (not produced with mapped-ram). */
  XBZRLE: 0x40,
  /** Obsolete RDMA hook. */
  HOOK: 0x80,
  /**
   * Compressed page: be32 length + zlib data follow. Written by QEMU up to
   * 9.0 with the compress capability (removed in 9.1, whose loader refuses
   * it); a valid record that ramsnap does not decode.
   */
  COMPRESS_PAGE: 0x100,
  /** Multifd sync point; carries no data. */
  MULTIFD_FLUSH: 0x200,
} as const;

/**
 * The low bits of a RAM record that can hold flags. QEMU keeps offsets
 * aligned to the target page size (at least 1 KiB on every target), so the
 * flags fit below bit 10. We mask with 0x3ff.
 */
export const RAM_FLAG_MASK = 0x3ff;

/** Version of the per-block mapped-ram header that QEMU writes and accepts. */
export const MAPPED_RAM_HDR_VERSION = 1;
/** Bytes of the mapped-ram header: be32 version, be64 page_size, be64 bitmap_offset, be64 pages_offset. */
export const MAPPED_RAM_HDR_SIZE = 28;
/**
 * QEMU aligns every block's page region to 1 MiB. The alignment keeps pages
 * usable with O_DIRECT and makes offsets stable across QEMU versions; the
 * loader itself only requires alignment to the page size.
 */
export const MAPPED_RAM_ALIGNMENT = 1 << 20;

/** Capabilities that QEMU puts into configuration/capabilities. */
export const CAP_MAPPED_RAM = 'mapped-ram';
export const CAP_X_IGNORE_SHARED = 'x-ignore-shared';

/** Longest name a length-prefixed u8 string can hold. */
export const MAX_IDSTR = 255;

/**
 * Smallest and largest target page sizes ramsnap accepts: 1 KiB (Arm's
 * legacy page) to 64 KiB (the largest TARGET_PAGE_SIZE of any QEMU target).
 * A bound, too: extraction buffers are a few pages.
 */
export const MIN_PAGE_SIZE = 1 << 10;
export const MAX_PAGE_SIZE = 1 << 16;
