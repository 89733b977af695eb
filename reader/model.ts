import type { Configuration } from '../format/configuration.js';
import type { RamsnapFormatError } from '../format/errors.js';
import type { LegacyIndex } from '../format/legacy-index.js';
import type { VmDescription } from '../format/vmdesc.js';
import type { LibvirtHeader } from '../format/libvirt.js';

/** A RAMBlock as the stream declares it. */
export interface RamBlock {
  name: string;
  /** Bytes of guest memory in the block. */
  usedLength: number;
  pageSize: number;
  /** usedLength / pageSize. */
  pages: number;
  /** File offset of the block's entry (its name length byte) in the RAM section. */
  entryOffset: number;
  /** Guest physical address of the block, present with x-ignore-shared. */
  addr?: number;
  /** mapped-ram: the block's header and bitmap. */
  mappedRam?: {
    headerOffset: number;
    version: number;
    bitmapOffset: number;
    bitmapSize: number;
    pagesOffset: number;
  };
  /** mapped-ram: one bit per page, loaded from bitmapOffset. */
  bitmap?: Uint8Array;
  /** legacy: where the last copy of each page is. */
  legacy?: LegacyIndex;
  /** x-ignore-shared: the block lives in shared memory and is not in the file (QEMU 11 mapped-ram). */
  shared?: boolean;
  /** Pages whose bytes are in the file (set bit, or a PAGE record). */
  pagesPresent: number;
}

export type SectionKind = 'start' | 'part' | 'end' | 'full';

export interface SectionRecord {
  kind: SectionKind;
  sectionId: number;
  name: string;
  instanceId: number;
  versionId: number;
  /** File offset of the section's type byte. */
  offset: number;
  /** File offset just past its footer. */
  end: number;
}

export interface CommandRecord {
  offset: number;
  command: number;
  name: string;
  length: number;
}

export interface DeviceState {
  section: SectionRecord;
  /**
   * True when the fields were decoded with the device description; false
   * when the file has none and the section was stepped over by its footer
   * (its contents unchecked).
   */
  checked: boolean;
  /** Decoded fields, when the open asked for them. */
  value?: unknown;
}

/**
 * The groups of validation rules (SPEC.md §10) as `verify` reports them.
 * The walk records a group once every rule of it has been checked for the
 * whole file, so a failure later on does not hide what passed before it.
 */
export const RULE_GROUPS = [
  'header',
  'configuration',
  'sections',
  'ram-blocks',
  'page-records',
  'mapped-ram-header',
  'page-size',
  'bitmaps',
  'page-regions',
  'device-state',
  'end-of-stream',
  'limits',
] as const;
export type RuleGroup = (typeof RULE_GROUPS)[number];

export interface Finding {
  code: string;
  message: string;
  field: string;
  offset: number;
}

export interface SnapshotModel {
  fileSize: number;
  /** File offset where the QEMU stream starts (0, --offset, or behind a libvirt header). */
  streamOffset: number;
  libvirt?: LibvirtHeader;
  version?: number;
  configuration?: Configuration;
  /** The stream is a mapped-ram stream (capability in the configuration). */
  mappedRam: boolean;
  /** Target page size used by the RAM section. */
  pageSize: number;
  ramSectionId?: number;
  /** Total RAM bytes announced by the MEM_SIZE record. */
  ramTotal?: number;
  blocks: RamBlock[];
  sections: SectionRecord[];
  commands: CommandRecord[];
  devices: DeviceState[];
  /**
   * Whether sections end with a footer (0x7e + id). QEMU's migration
   * property send-section-footer decides it and the stream does not say
   * it: the walk learns it at the end of the first section.
   */
  sectionFooters?: boolean;
  /** File offset of the EOF byte, when reached. */
  eofOffset?: number;
  /** Bytes after EOF (and after the description, if any) that QEMU's loader never reads. */
  trailingBytes?: number;
  vmdesc?: { offset: number; length: number; desc: VmDescription };
  /** Every structural rule held and the stream reached its end. */
  complete: boolean;
  /** The rule that failed first; the model holds what was read before it. */
  error?: RamsnapFormatError;
  /** Oddities a real QEMU can produce: reported, never fatal. */
  warnings: Finding[];
  /** Rule groups checked over the whole file (all of them but those a failure or a missing description left unchecked). */
  checked: RuleGroup[];
}
