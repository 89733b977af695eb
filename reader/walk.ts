/**
 * Walks a migration stream from its first byte to EOF and the device
 * description, building a SnapshotModel. Structural damage stops the walk:
 * the error is kept in `model.error` with what was read before it, so
 * `info` and `extract --salvage` can still use the good part.
 */
import {
  CAP_MAPPED_RAM,
  CAP_X_IGNORE_SHARED,
  COMMANDS,
  MigCommand,
  MAPPED_RAM_ALIGNMENT,
  MAPPED_RAM_HDR_SIZE,
  MAPPED_RAM_HDR_VERSION,
  MAX_PAGE_SIZE,
  MIN_PAGE_SIZE,
  RAM_FLAG_MASK,
  RamFlag,
  Section,
} from '../format/constants.js';
import { decodeConfiguration } from '../format/configuration.js';
import type { ByteCursor } from '../format/cursor.js';
import { FormatCode, RamsnapFormatError } from '../format/errors.js';
import { toSafeNumber } from '../format/int64.js';
import { LegacyIndex } from '../format/legacy-index.js';
import { decodeMappedRamHeader } from '../format/mapped-ram.js';
import { bitmapBytes, countBits, firstTailBit } from '../format/bitmap.js';
import {
  MAX_SECTION_HEADER,
  decodeCommand,
  decodeFileHeader,
  decodeFooter,
  decodeSectionStart,
} from '../format/section.js';
import { MAX_VMDESC, findDevice, locateVmDescription, parseVmDescription } from '../format/vmdesc.js';
import { decodeDeviceState, skipDeviceState, type ValueBudget } from '../format/vmstate.js';
import type { RamBlock, SectionRecord, SnapshotModel } from './model.js';
import type { RandomAccessSource } from './source.js';
import { StreamReader } from './stream-reader.js';

export interface WalkOptions {
  /** File offset where the stream starts. */
  streamOffset: number;
  /** Page size of a legacy stream that does not say it (default: from the stream, else 4096). */
  pageSize?: number;
  /** Keep decoded device state in model.devices[].value (for dump --state). */
  decodeDevices?: boolean;
}

/** Device sections are loaded whole to be decoded; none real comes near this. */
export const MAX_DEVICE_SECTION = 64 << 20;
/** First window a device section is decoded from (grown 4x at a time up to MAX_DEVICE_SECTION): real ones are KiB. */
const DEVICE_WINDOW = 64 * 1024;
/** Bytes of bitmap held in memory at once: enough for 4 TiB of 4 KiB pages. */
export const MAX_BITMAP_MEMORY = 128 << 20;
/**
 * RAMBlocks in one stream. Real VMs have tens (a few hundred with many
 * devices' ROMs and DIMMs); without a bound, a legacy block list of
 * one-page blocks costs 16 bytes of file and 350 bytes of memory each.
 */
export const MAX_BLOCKS = 65_536;
/** Runs in a legacy index (memory bound for hostile streams of alternating records). */
export const MAX_LEGACY_RUNS = 2_000_000;
/** Bytes of stream parsed at a time for page records. */
const RECORD_WINDOW = 1 << 20;
const KNOWN_RECORD_FLAGS = RamFlag.ZERO | RamFlag.PAGE | RamFlag.EOS | RamFlag.CONTINUE | RamFlag.MULTIFD_FLUSH | RamFlag.XBZRLE;
/** Most bytes a legacy PAGE record adds before its page: be64 header, u8 length and a 255-byte name. */
export const LEGACY_RECORD_OVERHEAD = 8 + 1 + 255;
/** Bytes of the configuration section: a machine name and a few capability names. */
const MAX_CONFIGURATION = 64 * 1024;
/** Sections and commands in one stream: real ones have hundreds to thousands. */
export const MAX_SECTIONS = 1_000_000;
/** How far from the end the device description is looked for (analyze-migration.py looks at 10 MiB). */
export const VMDESC_SEARCH = MAX_VMDESC + 5;
const VMDESC_STEP = 1 << 20;

export async function walkStream(source: RandomAccessSource, opts: WalkOptions): Promise<SnapshotModel> {
  const model: SnapshotModel = {
    fileSize: source.size,
    streamOffset: opts.streamOffset,
    mappedRam: false,
    pageSize: opts.pageSize ?? 0,
    blocks: [],
    sections: [],
    commands: [],
    devices: [],
    complete: false,
    warnings: [],
  };
  const walker = new Walker(source, model, opts);
  try {
    await walker.run();
  } catch (err) {
    if (!(err instanceof RamsnapFormatError)) throw err;
    model.error = err.code === FormatCode.TRUNCATED && walker.sequential ? asIncomplete(err) : err;
  }
  model.complete = model.error === undefined;
  return model;
}

/** The stream itself ran out: the snapshot was never finished (or was cut). */
function asIncomplete(err: RamsnapFormatError): RamsnapFormatError {
  return new RamsnapFormatError(FormatCode.INCOMPLETE, `snapshot is incomplete: the file ends inside ${err.field}`, {
    field: err.field,
    offset: err.offset,
  });
}

class Walker {
  private readonly r: StreamReader;
  private blocksByName = new Map<string, RamBlock>();
  private openSections = new Map<number, SectionRecord>();
  private startedIds = new Set<number>();
  /** Where configuration fields were read, for errors about them. */
  private configOffsets: Record<string, number> = {};
  private lastBlock: RamBlock | undefined;
  private bitmapMemory = 0;
  private legacyRuns = 0;
  /** Device-state values decoded in all sections (format/vmstate.ts MAX_VALUES). */
  private deviceValues: ValueBudget = { values: 0 };
  private ignoreShared = false;
  /** Intervals of the file that hold something, for the overlap rule. */
  private regions: { start: number; end: number; what: string }[] = [];
  private segmentStart: number;
  /** True while reading the stream sequentially (a TRUNCATED then means incomplete). */
  sequential = true;

  constructor(
    private readonly source: RandomAccessSource,
    private readonly model: SnapshotModel,
    private readonly opts: WalkOptions,
  ) {
    this.r = new StreamReader(source, opts.streamOffset);
    this.segmentStart = opts.streamOffset;
  }

  async run(): Promise<void> {
    const m = this.model;
    const r = this.r;
    let c = await r.cursor(8);
    m.version = decodeFileHeader(c).version;
    r.commit(c);
    await this.loadVmDescription();

    if ((await r.peekU8('section.type')) === Section.CONFIGURATION) {
      await r.u8('section.type');
      c = await r.cursor(MAX_CONFIGURATION);
      try {
        m.configuration = decodeConfiguration(c, this.configOffsets, c.pos + c.remaining >= this.source.size);
      } catch (err) {
        // Running off a window that stops short of the end of the file is a broken section, not a cut file.
        if (err instanceof RamsnapFormatError && err.code === FormatCode.TRUNCATED && c.pos + c.remaining < this.source.size) {
          throw new RamsnapFormatError(FormatCode.BAD_CONFIGURATION, `configuration section is longer than ${MAX_CONFIGURATION} bytes`, { field: err.field, offset: err.offset });
        }
        throw err;
      }
      r.commit(c);
      m.mappedRam = m.configuration.capabilities.includes(CAP_MAPPED_RAM);
      this.ignoreShared = m.configuration.capabilities.includes(CAP_X_IGNORE_SHARED);
    } else {
      this.warn('NO_CONFIGURATION', 'stream has no configuration section (machine type unknown)', 'configuration', r.pos);
    }
    this.decidePageSize();

    for (;;) {
      const typeAt = r.pos;
      const type = await r.u8('section.type');
      switch (type) {
        case Section.EOF:
          m.eofOffset = typeAt;
          this.endSegment(r.pos);
          this.finish();
          return;
        case Section.START:
        case Section.FULL:
          await this.startSection(type, typeAt);
          break;
        case Section.PART:
        case Section.END:
          await this.partSection(type, typeAt);
          break;
        case Section.COMMAND: {
          c = await r.cursor(4 + 0xffff);
          const cmd = decodeCommand(c);
          r.commit(c);
          this.command(cmd.command, cmd.data.length, typeAt);
          break;
        }
        default:
          throw new RamsnapFormatError(FormatCode.UNKNOWN_SECTION_TYPE, `unknown section type 0x${type.toString(16).padStart(2, '0')}`, {
            field: 'section.type',
            offset: typeAt,
            expected: 'one of 00 01 02 03 04 08',
            actual: `0x${type.toString(16).padStart(2, '0')}`,
          });
      }
    }
  }

  /** Checks a COMMAND as QEMU's loader does (known id, fixed length where it has one). */
  private command(id: number, length: number, at: number): void {
    const spec = COMMANDS[id];
    if (!spec) {
      throw new RamsnapFormatError(FormatCode.BAD_COMMAND, `unknown migration command ${id}`, { field: 'command.id', offset: at + 1, expected: '1..11', actual: id });
    }
    if (spec.length >= 0 && length !== spec.length) {
      throw new RamsnapFormatError(FormatCode.BAD_COMMAND, `${spec.name} command has the wrong length`, {
        field: 'command.length',
        offset: at + 3,
        expected: spec.length,
        actual: length,
      });
    }
    if (id === MigCommand.PACKAGED) {
      // A nested stream (postcopy's package): never in a file save.
      throw new RamsnapFormatError(FormatCode.UNSUPPORTED, 'packaged (nested) streams are not supported', { field: 'command.id', offset: at + 1 });
    }
    if (id === MigCommand.POSTCOPY_ADVISE) {
      this.warn('POSTCOPY', 'stream was saved with postcopy-ram: blocks with huge pages carry a page size ramsnap cannot see', 'command', at);
    }
    this.model.commands.push({ offset: at, command: id, name: spec.name, length });
    this.checkCount(at);
  }

  /**
   * The description sits after EOF at the very end, but device sections
   * come before it and cannot be parsed without it, so it is found first.
   */
  private async loadVmDescription(): Promise<void> {
    const size = this.source.size;
    const floor = Math.max(this.opts.streamOffset, size - VMDESC_SEARCH);
    // Walk the tail backwards a step at a time; steps overlap by 5 bytes so a header on a boundary is seen.
    for (let end = size; end - floor >= 6; end -= VMDESC_STEP) {
      const start = Math.max(floor, end - VMDESC_STEP - 5);
      const chunk = await this.source.read(start, Math.min(end + 5, size) - start, 'vmdescription');
      const loc = locateVmDescription(chunk, start, size);
      if (loc) {
        if (loc.length > MAX_VMDESC) return;
        const json = await this.source.read(loc.offset + 5, loc.length, 'vmdescription');
        const desc = parseVmDescription(json, loc.offset + 5);
        this.model.vmdesc = { offset: loc.offset, length: loc.length, desc };
        return;
      }
      if (start === floor) return;
    }
  }

  private decidePageSize(): void {
    const m = this.model;
    if (m.configuration?.targetPageBits !== undefined) {
      const bits = m.configuration.targetPageBits;
      const at = this.configOffsets['configuration/target-page-bits.value'] ?? this.opts.streamOffset;
      if (bits < 10 || bits > 16) {
        throw new RamsnapFormatError(FormatCode.BAD_PAGE_SIZE, 'target page bits out of range', {
          field: 'configuration/target-page-bits',
          offset: at,
          expected: '10..16',
          actual: bits,
        });
      }
      m.pageSize = 2 ** bits;
    } else if (m.vmdesc?.desc.page_size !== undefined) {
      m.pageSize = m.vmdesc.desc.page_size;
      checkPageSize(m.pageSize, 'vmdescription.page_size', m.vmdesc.offset + 5);
    } else if (!m.pageSize) {
      // sun4u/sun4v (sparc64) use 8 KiB target pages; every other QEMU target that saves RAM uses 4 KiB.
      m.pageSize = /^sun4[uv]/.test(m.configuration?.machine ?? '') ? 8192 : 4096;
    }
    if (this.opts.pageSize && this.opts.pageSize !== m.pageSize) {
      if (m.configuration?.targetPageBits !== undefined || m.vmdesc?.desc.page_size !== undefined) {
        this.warn('PAGE_SIZE_OVERRIDDEN', `--page-size ${this.opts.pageSize} overrides the stream's page size ${m.pageSize}`, 'page_size', this.opts.streamOffset);
      }
      m.pageSize = this.opts.pageSize;
    }
    checkPageSize(m.pageSize, 'page_size', this.opts.streamOffset);
  }

  private async startSection(type: typeof Section.START | typeof Section.FULL, typeAt: number): Promise<void> {
    const r = this.r;
    const c = await r.cursor(MAX_SECTION_HEADER);
    const h = decodeSectionStart(c, type);
    r.commit(c);
    if (this.startedIds.has(h.sectionId)) {
      throw new RamsnapFormatError(FormatCode.DUPLICATE_SECTION_ID, `section id ${h.sectionId} is used twice`, {
        field: 'section.section_id',
        offset: typeAt + 1,
        actual: h.sectionId,
      });
    }
    const rec: SectionRecord = {
      kind: type === Section.START ? 'start' : 'full',
      sectionId: h.sectionId,
      name: h.idstr,
      instanceId: h.instanceId,
      versionId: h.versionId,
      offset: typeAt,
      end: 0,
    };
    this.startedIds.add(h.sectionId);
    if (type === Section.START) this.openSections.set(h.sectionId, rec);
    if (type === Section.START && h.idstr === 'ram') {
      if (h.versionId !== 4) {
        throw new RamsnapFormatError(FormatCode.BAD_VERSION, 'unsupported RAM section version', {
          field: 'section[ram].version_id',
          offset: typeAt + 6 + h.idstr.length + 4,
          expected: 4,
          actual: h.versionId,
        });
      }
      this.model.ramSectionId = h.sectionId;
      await this.ramSetup();
      await this.ramRecords();
    } else {
      await this.deviceSection(rec);
    }
    await this.footer(rec);
  }

  private async partSection(type: typeof Section.PART | typeof Section.END, typeAt: number): Promise<void> {
    const r = this.r;
    const id = await r.be32('section.section_id');
    const open = this.openSections.get(id);
    if (!open) {
      throw new RamsnapFormatError(FormatCode.UNKNOWN_SECTION_ID, `section ${type === Section.PART ? 'part' : 'end'} for a section that was never started`, {
        field: 'section.section_id',
        offset: typeAt + 1,
        actual: id,
      });
    }
    const rec: SectionRecord = { ...open, kind: type === Section.PART ? 'part' : 'end', offset: typeAt, end: 0 };
    if (type === Section.END) this.openSections.delete(id);
    if (id === this.model.ramSectionId) await this.ramRecords();
    else await this.deviceSection(rec);
    await this.footer(rec);
  }

  private async footer(rec: SectionRecord): Promise<void> {
    const c = await this.r.cursor(5);
    decodeFooter(c, rec.sectionId, rec.name);
    this.r.commit(c);
    rec.end = this.r.pos;
    this.model.sections.push(rec);
    this.checkCount(rec.offset);
  }

  private checkCount(offset: number): void {
    if (this.model.sections.length + this.model.commands.length > MAX_SECTIONS) {
      throw new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, 'stream has more sections than ramsnap allows', {
        field: 'section',
        offset,
        expected: `<= ${MAX_SECTIONS}`,
      });
    }
  }

  /** A device section: decoded with the device description, which gives its length. */
  private async deviceSection(rec: SectionRecord): Promise<void> {
    const m = this.model;
    const dev = m.vmdesc ? findDevice(m.vmdesc.desc, rec.name, rec.instanceId) : undefined;
    if (!dev || rec.kind !== 'full') {
      throw new RamsnapFormatError(
        FormatCode.UNDESCRIBED_SECTION,
        m.vmdesc
          ? `section ${rec.name} (instance ${rec.instanceId}) is not in the device description, so its length is unknown`
          : `section ${rec.name} cannot be parsed: the file has no device description (is the end of the file missing?)`,
        { field: `section[${rec.name}]`, offset: rec.offset },
      );
    }
    const r = this.r;
    const available = (m.vmdesc?.offset ?? this.source.size) - r.pos;
    const limit = Math.max(0, Math.min(MAX_DEVICE_SECTION, available));
    // A section carries no length: decode it from a small window, and from a larger one only if it runs
    // out. A window of everything up to the description (up to 64 MiB) was read again for every
    // section, so a file with its description far behind thousands of small sections took hours.
    let want = Math.min(limit, DEVICE_WINDOW);
    let c: ByteCursor;
    let value;
    for (;;) {
      c = await r.cursor(want);
      const valuesBefore = this.deviceValues.values;
      try {
        if (this.opts.decodeDevices) value = decodeDeviceState(c, dev, rec.versionId, this.deviceValues);
        else skipDeviceState(c, dev, this.deviceValues);
        break;
      } catch (err) {
        if (!(err instanceof RamsnapFormatError) || err.code !== FormatCode.TRUNCATED) throw err;
        if (want < limit) {
          this.deviceValues.values = valuesBefore;
          want = Math.min(limit, want * 4);
          continue;
        }
        // The description is after EOF: running into it means the fields do not match the section.
        throw available > MAX_DEVICE_SECTION
          ? new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, `device section ${rec.name} is larger than ${MAX_DEVICE_SECTION} bytes`, { field: err.field, offset: err.offset })
          : new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `device section ${rec.name} does not match its description (it runs into the description)`, {
              field: err.field,
              offset: err.offset,
            });
      }
    }
    r.commit(c);
    m.devices.push({ section: rec, value });
  }

  /** The MEM_SIZE record and the block list of the RAM section's START. */
  private async ramSetup(): Promise<void> {
    const m = this.model;
    const r = this.r;
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
      const block = await this.blockEntry(remaining);
      remaining -= block.usedLength;
    }
  }

  private async blockEntry(remaining: number): Promise<RamBlock> {
    const m = this.model;
    const r = this.r;
    const entryOffset = r.pos;
    const c = await r.cursor(1 + 255 + 8 + 8 + MAPPED_RAM_HDR_SIZE);
    const name = c.string8('ramblock.name');
    const field = `ramblock[${name}]`;
    const lenAt = c.pos;
    const usedLength = c.be64n(`${field}.used_length`);
    if (this.blocksByName.has(name)) {
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
    if (this.ignoreShared) block.addr = c.be64n(`${field}.addr`);
    // Listed before its checks, so a lenient open (extract --salvage) still sees where it was.
    this.blocksByName.set(name, block);
    m.blocks.push(block);
    if (m.mappedRam) {
      const headerOffset = c.pos;
      const h = decodeMappedRamHeader(c, `${field}.mapped_ram`);
      r.commit(c);
      await this.mappedRamBlock(block, h, headerOffset);
    } else {
      r.commit(c);
      if (usedLength % m.pageSize !== 0) throw badLength(field, lenAt, usedLength, m.pageSize);
      block.pages = usedLength / m.pageSize;
      // A record is be64 + (u8 + name) + page: pages of consecutive records are at most that far apart.
      block.legacy = new LegacyIndex(m.pageSize + LEGACY_RECORD_OVERHEAD);
    }
    return block;
  }

  private async mappedRamBlock(block: RamBlock, h: ReturnType<typeof decodeMappedRamHeader>, headerOffset: number): Promise<void> {
    const m = this.model;
    const field = `ramblock[${block.name}]`;
    const headerEnd = headerOffset + MAPPED_RAM_HDR_SIZE;
    if (h.version !== MAPPED_RAM_HDR_VERSION) {
      throw new RamsnapFormatError(FormatCode.BAD_MAPPED_RAM_VERSION, 'unsupported mapped-ram header version', {
        field: `${field}.mapped_ram.version`,
        offset: headerOffset,
        expected: MAPPED_RAM_HDR_VERSION,
        actual: h.version,
      });
    }
    checkPageSize(h.pageSize, `${field}.mapped_ram.page_size`, headerOffset + 4);
    const first = m.blocks.find((b) => b !== block && b.mappedRam);
    if (first && first.pageSize !== h.pageSize) {
      throw new RamsnapFormatError(FormatCode.PAGE_SIZE_MISMATCH, 'blocks disagree on the page size', {
        field: `${field}.mapped_ram.page_size`,
        offset: headerOffset + 4,
        expected: first.pageSize,
        actual: h.pageSize,
      });
    }
    if (h.pageSize !== m.pageSize && (m.configuration?.targetPageBits !== undefined || m.vmdesc?.desc.page_size !== undefined)) {
      throw new RamsnapFormatError(FormatCode.PAGE_SIZE_MISMATCH, 'mapped-ram page size differs from the stream target page size', {
        field: `${field}.mapped_ram.page_size`,
        offset: headerOffset + 4,
        expected: m.pageSize,
        actual: h.pageSize,
      });
    }
    m.pageSize = h.pageSize;
    block.pageSize = h.pageSize;
    if (block.usedLength % h.pageSize !== 0) throw badLength(field, block.entryOffset + 1 + block.name.length, block.usedLength, h.pageSize);
    block.pages = block.usedLength / h.pageSize;
    if (this.ignoreShared && h.bitmapOffset === 0 && h.pagesOffset === 0) {
      // QEMU 11 writes a shared block (x-ignore-shared) with no bitmap or pages: the stream goes straight on.
      block.shared = true;
      return;
    }
    const bitmapSize = bitmapBytes(block.pages);
    block.mappedRam = { headerOffset, version: h.version, bitmapOffset: h.bitmapOffset, bitmapSize, pagesOffset: h.pagesOffset };
    const size = this.source.size;
    if (h.bitmapOffset + bitmapSize > size) {
      throw new RamsnapFormatError(FormatCode.BITMAP_OUT_OF_FILE, 'bitmap lies beyond the end of the file', {
        field: `${field}.mapped_ram.bitmap_offset`,
        offset: headerOffset + 12,
        expected: `end <= ${size}`,
        actual: `${h.bitmapOffset}+${bitmapSize}`,
      });
    }
    if (h.pagesOffset < headerEnd) {
      // The stream resumes at pages_offset + used_length: going backwards would overlap the header stream.
      throw new RamsnapFormatError(FormatCode.PAGES_OVERLAP, 'page region starts before the end of its header', {
        field: `${field}.mapped_ram.pages_offset`,
        offset: headerOffset + 20,
        expected: `>= ${headerEnd}`,
        actual: h.pagesOffset,
      });
    }
    if (h.pagesOffset % h.pageSize !== 0) {
      throw new RamsnapFormatError(FormatCode.PAGES_MISALIGNED, 'page region is not aligned to the page size', {
        field: `${field}.mapped_ram.pages_offset`,
        offset: headerOffset + 20,
        expected: `multiple of ${h.pageSize}`,
        actual: h.pagesOffset,
      });
    }
    if (h.pagesOffset % MAPPED_RAM_ALIGNMENT !== 0) {
      this.warn('PAGES_UNALIGNED_1M', `page region of ${block.name} is not 1 MiB aligned (QEMU aligns it; its loader only needs page alignment)`, `${field}.mapped_ram.pages_offset`, headerOffset + 20);
    }
    if (h.bitmapOffset !== headerEnd) {
      this.warn('BITMAP_NOT_AFTER_HEADER', `bitmap of ${block.name} is not right after its header, where QEMU puts it`, `${field}.mapped_ram.bitmap_offset`, headerOffset + 12);
    }
    this.bitmapMemory += bitmapSize;
    if (this.bitmapMemory > MAX_BITMAP_MEMORY) {
      throw new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, 'bitmaps exceed the memory ramsnap allows for them', {
        field: `${field}.mapped_ram.bitmap_offset`,
        offset: headerOffset + 12,
        expected: `<= ${MAX_BITMAP_MEMORY} bytes in all`,
        actual: this.bitmapMemory,
      });
    }
    this.sequential = false;
    block.bitmap = await this.source.read(h.bitmapOffset, bitmapSize, `${field}.bitmap`);
    this.sequential = true;
    const tail = firstTailBit(block.bitmap, block.pages);
    if (tail >= 0) {
      throw new RamsnapFormatError(FormatCode.BITMAP_TAIL_BITS_SET, 'bitmap has a bit set past the last page', {
        field: `${field}.bitmap`,
        offset: h.bitmapOffset + (tail >>> 3),
        expected: `pages < ${block.pages}`,
        actual: `page ${tail}`,
      });
    }
    block.pagesPresent = countBits(block.bitmap, block.pages);
    if (h.pagesOffset + block.usedLength > size) {
      throw new RamsnapFormatError(FormatCode.PAGES_OUT_OF_FILE, 'page region lies beyond the end of the file (truncated?)', {
        field: `${field}.mapped_ram.pages_offset`,
        offset: headerOffset + 20,
        expected: `end <= ${size}`,
        actual: `${h.pagesOffset}+${block.usedLength}`,
      });
    }
    this.endSegment(headerEnd);
    this.regions.push({ start: h.bitmapOffset, end: h.bitmapOffset + bitmapSize, what: `${field}.bitmap` });
    this.regions.push({ start: h.pagesOffset, end: h.pagesOffset + block.usedLength, what: `${field}.pages` });
    // The stream goes on after the block's page region.
    this.r.pos = h.pagesOffset + block.usedLength;
    this.segmentStart = this.r.pos;
  }

  /**
   * Page records up to EOS, in any part of the RAM section. A legacy stream
   * has a record per page, so records are parsed synchronously from a
   * window of RECORD_WINDOW bytes, refilled when the next record might not
   * fit, rather than with an await per field.
   */
  private async ramRecords(): Promise<void> {
    const r = this.r;
    const maxRecord = LEGACY_RECORD_OVERHEAD + this.model.pageSize;
    for (;;) {
      // At least one record, and whatever else the window holds: asking for a whole RECORD_WINDOW ahead
      // re-read 1 MiB for every RAM part (a million 18-byte parts took minutes).
      const c = await r.cursor(maxRecord, RECORD_WINDOW);
      const reachesEof = c.pos + c.remaining >= this.source.size;
      // Near the end of the file the last records are parsed from what is there (a cut one is TRUNCATED).
      while (reachesEof || c.remaining >= maxRecord) {
        if (this.ramRecord(c)) {
          r.commit(c);
          return;
        }
      }
      r.commit(c);
    }
  }

  /** One RAM record; true at EOS. */
  private ramRecord(c: ByteCursor): boolean {
    const m = this.model;
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
    if (kind !== RamFlag.ZERO && kind !== RamFlag.PAGE && kind !== RamFlag.XBZRLE) {
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
      block = this.lastBlock;
      if (!block) {
        throw new RamsnapFormatError(FormatCode.UNKNOWN_BLOCK, 'CONTINUE record with no block before it', { field: 'ram.record.flags', offset: at });
      }
    } else {
      const nameAt = c.pos;
      const name = c.string8('ram.record.block');
      block = this.blocksByName.get(name);
      if (!block) {
        throw new RamsnapFormatError(FormatCode.UNKNOWN_BLOCK, `page record for unknown RAMBlock ${JSON.stringify(name)}`, {
          field: 'ram.record.block',
          offset: nameAt,
        });
      }
      this.lastBlock = block;
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
    } else {
      throw new RamsnapFormatError(FormatCode.UNSUPPORTED, 'XBZRLE-encoded pages are not supported', { field: 'ram.record.flags', offset: at });
    }
    this.legacyRuns += index.runCount - before;
    if (this.legacyRuns > MAX_LEGACY_RUNS) {
      throw new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, 'legacy stream is too fragmented to index', {
        field: 'ram.record',
        offset: at,
        expected: `<= ${MAX_LEGACY_RUNS} runs`,
      });
    }
    return false;
  }

  private endSegment(end: number): void {
    if (end > this.segmentStart) this.regions.push({ start: this.segmentStart, end, what: `stream[${this.segmentStart}..${end})` });
    this.segmentStart = end;
  }

  /** After EOF: regions disjoint, nothing left open, the description in place. */
  private finish(): void {
    const m = this.model;
    const r = this.r;
    this.checkOverlaps();
    if (m.ramSectionId === undefined) this.warn('NO_RAM_SECTION', 'stream has no RAM section', 'section[ram]', m.streamOffset);
    for (const open of this.openSections.values()) {
      throw new RamsnapFormatError(FormatCode.INCOMPLETE, `section ${open.name} was started but never ended`, {
        field: `section[${open.name}]`,
        offset: open.offset,
      });
    }
    for (const b of m.blocks) if (b.legacy) b.pagesPresent = b.legacy.pagesWithData;
    if (m.vmdesc) {
      if (r.pos !== m.vmdesc.offset) {
        throw new RamsnapFormatError(FormatCode.TRAILING_DATA, 'bytes between EOF and the device description', {
          field: 'vmdescription',
          offset: r.pos,
          expected: m.vmdesc.offset,
          actual: r.pos,
        });
      }
    } else if (r.pos < this.source.size) {
      throw new RamsnapFormatError(FormatCode.TRAILING_DATA, 'bytes after EOF that are not a device description', {
        field: 'vmdescription',
        offset: r.pos,
        expected: this.source.size,
        actual: r.pos,
      });
    } else {
      // QEMU loads such a stream ("Expected vmdescription section"); there were no device sections to describe.
      this.warn('NO_DEVICE_DESCRIPTION', 'stream has no device description (RAM only)', 'vmdescription', r.pos);
    }
    if (this.ignoreShared) {
      this.warn('IGNORE_SHARED', 'saved with x-ignore-shared: blocks on shared memory were left out of the file and read as zero here', 'configuration/capabilities', m.streamOffset);
    }
  }

  private checkOverlaps(): void {
    const regions = [...this.regions].sort((a, b) => a.start - b.start);
    for (let i = 1; i < regions.length; i++) {
      const a = regions[i - 1];
      const b = regions[i];
      if (b.start < a.end) {
        throw new RamsnapFormatError(FormatCode.PAGES_OVERLAP, `${b.what} overlaps ${a.what}`, {
          field: b.what,
          offset: b.start,
          expected: `>= ${a.end}`,
          actual: b.start,
        });
      }
    }
  }

  private warn(code: string, message: string, field: string, offset: number): void {
    this.model.warnings.push({ code, message, field, offset });
  }
}

function checkPageSize(pageSize: number, field: string, offset: number): void {
  if (!Number.isInteger(pageSize) || pageSize < MIN_PAGE_SIZE || pageSize > MAX_PAGE_SIZE || (pageSize & (pageSize - 1)) !== 0) {
    throw new RamsnapFormatError(FormatCode.BAD_PAGE_SIZE, `page size is not a power of two between ${MIN_PAGE_SIZE} and ${MAX_PAGE_SIZE}`, {
      field,
      offset,
      expected: `power of two in ${MIN_PAGE_SIZE}..${MAX_PAGE_SIZE}`,
      actual: pageSize,
    });
  }
}

function badLength(field: string, offset: number, usedLength: number, pageSize: number): RamsnapFormatError {
  return new RamsnapFormatError(FormatCode.BAD_BLOCK_LENGTH, 'block length is not a whole number of pages', {
    field: `${field}.used_length`,
    offset,
    expected: `multiple of ${pageSize}`,
    actual: usedLength,
  });
}


