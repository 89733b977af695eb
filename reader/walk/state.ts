/**
 * What the walk of one stream carries from section to section: the model
 * being built, the reader's position, and the bookkeeping that rules
 * spanning several sections need (open sections and ids, blocks by name,
 * memory spent on bitmaps and legacy runs, the regions of the file used so
 * far for the overlap rule).
 */
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import type { ValueBudget } from '../../format/vmstate.js';
import type { RamBlock, RuleGroup, SectionRecord, SnapshotModel } from '../model.js';
import type { RandomAccessSource } from '../source.js';
import { StreamReader } from '../stream-reader.js';

export interface WalkOptions {
  /** File offset where the stream starts. */
  streamOffset: number;
  /** Page size of a legacy stream that does not say it (default: from the stream, else 4096). */
  pageSize?: number;
  /** Keep decoded device state in model.devices[].value (for dump --state). */
  decodeDevices?: boolean;
}

/** Sections and commands in one stream: real ones have hundreds to thousands. */
export const MAX_SECTIONS = 1_000_000;

export class WalkState {
  readonly r: StreamReader;
  readonly blocksByName = new Map<string, RamBlock>();
  readonly openSections = new Map<number, SectionRecord>();
  readonly startedIds = new Set<number>();
  /** Where configuration fields were read, for errors about them. */
  readonly configOffsets: Record<string, number> = {};
  /** The block of the last named legacy record (a CONTINUE record's block). */
  lastBlock: RamBlock | undefined;
  bitmapMemory = 0;
  legacyRuns = 0;
  /** Device-state values decoded in all sections (format/vmstate.ts MAX_VALUES). */
  readonly deviceValues: ValueBudget = { values: 0 };
  ignoreShared = false;
  /** Intervals of the file that hold something, for the overlap rule. */
  readonly regions: { start: number; end: number; what: string }[] = [];
  /** Start of the stream bytes not yet recorded in `regions`. */
  segmentStart: number;
  /** True while reading the stream sequentially (a TRUNCATED then means incomplete). */
  sequential = true;
  /** Where each device section's body lies (model.devices[i]): [start, end) before its footer. */
  readonly deviceBodies: { start: number; end: number }[] = [];
  /** The description was searched for in front of trailing bytes already (devices.ts). */
  searchedBeforeTrailing = false;
  /**
   * The description found at the end of the file did not describe a device
   * section, so the sections were stepped over from there: the error, to
   * be raised if no other description turns up right after EOF.
   */
  rejectedVmdesc: { offset: number; error: RamsnapFormatError } | undefined;
  /** Hash page table size (log2 bytes) from spapr/htab's first part, once known. */
  htabShift: number | undefined;

  constructor(
    readonly source: RandomAccessSource,
    readonly model: SnapshotModel,
    readonly opts: WalkOptions,
  ) {
    this.r = new StreamReader(source, opts.streamOffset);
    this.segmentStart = opts.streamOffset;
  }

  warn(code: string, message: string, field: string, offset: number): void {
    this.model.warnings.push({ code, message, field, offset });
  }

  /** Every rule of `group` has now been checked for the whole file. */
  passed(...groups: RuleGroup[]): void {
    for (const g of groups) if (!this.model.checked.includes(g)) this.model.checked.push(g);
  }

  /**
   * Footers are on or off for the whole stream (QEMU's send-section-footer
   * property); undefined until the first section has ended.
   */
  get footers(): boolean | undefined {
    return this.model.sectionFooters;
  }

  checkCount(offset: number): void {
    if (this.model.sections.length + this.model.commands.length > MAX_SECTIONS) {
      throw new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, 'stream has more sections than ramsnap allows', {
        field: 'section',
        offset,
        expected: `<= ${MAX_SECTIONS}`,
      });
    }
  }

  /** Records the stream bytes from segmentStart to `end` as used. */
  endSegment(end: number): void {
    if (end > this.segmentStart) this.regions.push({ start: this.segmentStart, end, what: `stream[${this.segmentStart}..${end})` });
    this.segmentStart = end;
  }
}
