/**
 * Every failure a user can cause (a bad file, a bad flag, a bad disk) is one
 * of these, with a stable `code` that tests and scripts can match on.
 *
 * `offset` is an absolute byte offset in the file being read (not in the
 * stream), so a user can go straight to it with a hex editor.
 */

/** Stable codes for structural problems in a file. SPEC.md lists them all. */
export const FormatCode = {
  TRUNCATED: 'TRUNCATED',
  BAD_MAGIC: 'BAD_MAGIC',
  BAD_VERSION: 'BAD_VERSION',
  UNKNOWN_SECTION_TYPE: 'UNKNOWN_SECTION_TYPE',
  BAD_SECTION_FOOTER: 'BAD_SECTION_FOOTER',
  UNKNOWN_SECTION_ID: 'UNKNOWN_SECTION_ID',
  DUPLICATE_SECTION_ID: 'DUPLICATE_SECTION_ID',
  BAD_CONFIGURATION: 'BAD_CONFIGURATION',
  BAD_RAM_FLAGS: 'BAD_RAM_FLAGS',
  RAM_SIZE_MISMATCH: 'RAM_SIZE_MISMATCH',
  DUPLICATE_BLOCK: 'DUPLICATE_BLOCK',
  UNKNOWN_BLOCK: 'UNKNOWN_BLOCK',
  BAD_BLOCK_LENGTH: 'BAD_BLOCK_LENGTH',
  BAD_MAPPED_RAM_VERSION: 'BAD_MAPPED_RAM_VERSION',
  BAD_PAGE_SIZE: 'BAD_PAGE_SIZE',
  PAGE_SIZE_MISMATCH: 'PAGE_SIZE_MISMATCH',
  BITMAP_OUT_OF_FILE: 'BITMAP_OUT_OF_FILE',
  BITMAP_TAIL_BITS_SET: 'BITMAP_TAIL_BITS_SET',
  PAGES_MISALIGNED: 'PAGES_MISALIGNED',
  PAGES_OVERLAP: 'PAGES_OVERLAP',
  PAGES_OUT_OF_FILE: 'PAGES_OUT_OF_FILE',
  PAGE_OUT_OF_BLOCK: 'PAGE_OUT_OF_BLOCK',
  VALUE_TOO_LARGE: 'VALUE_TOO_LARGE',
  BAD_COMMAND: 'BAD_COMMAND',
  BAD_DEVICE_DESCRIPTION: 'BAD_DEVICE_DESCRIPTION',
  DEVICE_STATE_MISMATCH: 'DEVICE_STATE_MISMATCH',
  UNDESCRIBED_SECTION: 'UNDESCRIBED_SECTION',
  /** spapr/htab (pseries hash page table) breaks its own format (format/iterables.ts). */
  BAD_HTAB: 'BAD_HTAB',
  /** s390-storage_attributes breaks its own format, or its sender marked it failed. */
  BAD_STORAGE_ATTRIBUTES: 'BAD_STORAGE_ATTRIBUTES',
  /** A CPU section lacks a register an ELF core's notes need, or holds it in an unexpected shape (format/cpu-notes.ts). */
  BAD_CPU_STATE: 'BAD_CPU_STATE',
  /** A delta's record of its base (format/delta.ts) is malformed, or its pages do not make the memory it promises. */
  BAD_DELTA: 'BAD_DELTA',
  INCOMPLETE: 'INCOMPLETE',
  /** Only a warning code: bytes after EOF are never refused (SPEC §7.3, rules 59-60). */
  TRAILING_DATA: 'TRAILING_DATA',
  BAD_LIBVIRT_HEADER: 'BAD_LIBVIRT_HEADER',
  UNSUPPORTED: 'UNSUPPORTED',
  LIMIT_EXCEEDED: 'LIMIT_EXCEEDED',
} as const;
export type FormatCode = (typeof FormatCode)[keyof typeof FormatCode];

/**
 * Codes for the state of a file that ramsnap is writing or patching: not
 * rules of the format (a RamsnapIoError carries them). docs/writers.md §7.
 */
export const StateCode = {
  /** Another ramsnap process holds the target's lock file. */
  TARGET_LOCKED: 'TARGET_LOCKED',
  /** A patch journal or the patch marker is there: the file is being patched, or a patch was interrupted. */
  PATCH_IN_PROGRESS: 'PATCH_IN_PROGRESS',
  /** The file changed while it was being read (a writer that ignores the lock, or a race the reader lost repeatedly). */
  FILE_CHANGED: 'FILE_CHANGED',
  /** A patch journal that does not belong to the file beside it (the file was replaced or changed after the patch was interrupted). */
  JOURNAL_MISMATCH: 'JOURNAL_MISMATCH',
} as const;
export type StateCode = (typeof StateCode)[keyof typeof StateCode];

/**
 * Stable codes for migration options (`ramsnap save` flags and config files,
 * `ramsnap options --check`). SPEC.md, "Save options", lists every rule.
 */
export const OptionCode = {
  /** A key or name ramsnap does not know (a typo, or a QEMU option ramsnap does not model). */
  OPTION_UNKNOWN: 'OPTION_UNKNOWN',
  /** A value of the wrong type: a string where a number is needed, a fraction, an array. */
  OPTION_TYPE: 'OPTION_TYPE',
  /** A number outside the range QEMU (or ramsnap) accepts. */
  OPTION_RANGE: 'OPTION_RANGE',
  /** Two capabilities that cannot be on together. */
  OPTION_CONFLICT: 'OPTION_CONFLICT',
  /** An option that needs another one on. */
  OPTION_REQUIRES: 'OPTION_REQUIRES',
  /** An option ramsnap's own save does not implement (e.g. xbzrle, postcopy-ram without mapped-ram). */
  OPTION_UNSUPPORTED: 'OPTION_UNSUPPORTED',
  /** An option QEMU 10 no longer has (e.g. the compress capability, removed in 9.1). */
  OPTION_REMOVED: 'OPTION_REMOVED',
  /** A policy module path that names no file. */
  OPTION_NOT_FOUND: 'OPTION_NOT_FOUND',
  /** A config file that is not a JSON object. */
  OPTION_CONFIG: 'OPTION_CONFIG',
} as const;
export type OptionCode = (typeof OptionCode)[keyof typeof OptionCode];

export interface FormatErrorDetails {
  /** The field or rule that failed, e.g. `ramblock[pc.ram].bitmap_offset`. */
  field: string;
  /** Absolute file offset of the offending bytes. */
  offset: number;
  expected?: string | number | bigint;
  actual?: string | number | bigint;
}

/** Base class: everything ramsnap throws on purpose. */
export class RamsnapError extends Error {
  readonly code: string;
  /** The status the CLI exits with, where a command sets its own (diff: 2 for any trouble, as cmp); else by class. */
  exitStatus?: number;
  constructor(code: string, message: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The file breaks a rule of the format (or is not a QEMU file at all). */
export class RamsnapFormatError extends RamsnapError {
  declare readonly code: FormatCode;
  readonly field: string;
  readonly offset: number;
  readonly expected?: string | number | bigint;
  readonly actual?: string | number | bigint;

  constructor(code: FormatCode, message: string, details: FormatErrorDetails) {
    super(code, `${message} (${details.field} at offset ${details.offset}${describeExpected(details)})`);
    this.field = details.field;
    this.offset = details.offset;
    this.expected = details.expected;
    this.actual = details.actual;
  }
}

function describeExpected(d: FormatErrorDetails): string {
  const parts: string[] = [];
  if (d.expected !== undefined) parts.push(`expected ${String(d.expected)}`);
  if (d.actual !== undefined) parts.push(`got ${String(d.actual)}`);
  return parts.length ? `: ${parts.join(', ')}` : '';
}

/** A bad flag or argument: the CLI exits 2 for these. */
export class RamsnapUsageError extends RamsnapError {
  readonly field: string;
  constructor(code: string, message: string, field: string) {
    super(code, message);
    this.field = field;
  }
}

/** An operating-system failure (missing file, disk full, permission). */
export class RamsnapIoError extends RamsnapError {
  readonly path: string;
  constructor(code: string, message: string, path: string) {
    super(code, message);
    this.path = path;
  }
}

/** Wraps a Node system error (ENOENT, ENOSPC, ...) as a RamsnapIoError. */
export function ioError(err: unknown, path: string, action: string): RamsnapError {
  if (err instanceof RamsnapError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = typeof e?.code === 'string' ? e.code : 'EIO';
  // Node says "ENOENT: no such file or directory, open '/x'": keep the reason only.
  const reason = typeof e?.message === 'string' ? e.message.replace(/^[A-Z]+: /, '').replace(/, \w+ '.*'$/, '') : String(err);
  return new RamsnapIoError(`IO_${code}`, `cannot ${action} ${path}: ${reason}`, path);
}
