/**
 * The failure corpus: one case per way a file can be broken, each named
 * after the error it must produce (yauzl's test/failure/<message>.zip, built
 * here from synthesize() so every offset comes from the layout, not from a
 * hex editor). Each case corrupts one thing and asserts the exact code, the
 * field and the absolute file offset of the offending bytes.
 *
 * Then two properties: a file cut at any offset, and a file damaged
 * anywhere, fails with a RamsnapFormatError (never a TypeError or
 * RangeError), in bounded time and with bounded reads.
 *
 * Cases marked `bug` document reader behaviour that is wrong today; they
 * run as `it.fails` so the suite stays green, and start failing (loudly)
 * once the reader is fixed, at which point the mark should go.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Snapshot, type OpenOptions } from '../reader/snapshot.js';
import { BufferSource, checkRange, type RandomAccessSource } from '../reader/source.js';
import { FormatCode, RamsnapError, RamsnapFormatError } from '../format/errors.js';
import { MAPPED_RAM_HDR_SIZE, RamFlag, Section } from '../format/constants.js';
import { FILE_HEADER_SIZE } from '../format/section.js';
import { LIBVIRT_HEADER_SIZE, encodeLibvirtHeader } from '../format/libvirt.js';
import { MAX_BITMAP_MEMORY } from '../reader/walk.js';
import { DEVICE_DESC, pageBytes, synthesize, type SynthFile } from './helpers/synth.js';
import { be64, htab, iterableSection, startHeaderLength, stattr, withSectionsBeforeDevices } from './helpers/iterables.js';

const PS = 4096;

// Sizes of the small stream structures (format/section.ts describes them).
/** PART/END header: u8 type, be32 section_id. */
const PART_HEADER = 5;
/** Footer: u8 0x7e, be32 section_id. */
const FOOTER = 5;
/** A RAM record: be64 offset | flags. */
const RECORD = 8;
/** COMMAND header: u8 0x08, be16 id, be16 length. */
const COMMAND_HEADER = 5;
/** START/FULL header without its idstr: u8 type, be32 id, u8 len, be32 instance, be32 version. */
const START_HEADER = 1 + 4 + 1 + 4 + 4;
/** VMDESCRIPTION header: u8 0x06, be32 length. */
const VMDESC_HEADER = 5;
/** Offsets of the fields of a mapped-ram header (format/mapped-ram.ts). */
const MR = { version: 0, pageSize: 4, bitmapOffset: 12, pagesOffset: 20 } as const;

const MACHINE = 'pc-q35-10.0';
const CAPS = 'configuration/capabilities';
const PAGE_BITS = 'configuration/target-page-bits';

// ---------------------------------------------------------------------------
// Files and damage

/** A source over a file with some bytes replaced and possibly another size (cut, or grown with zeros). */
class Damaged implements RandomAccessSource {
  readonly name = '<damaged>';
  size: number;
  /** Largest single read the reader asked for. */
  largestRead = 0;
  private readonly patches: { offset: number; data: Uint8Array }[] = [];

  constructor(private readonly base: RandomAccessSource) {
    this.size = base.size;
  }

  put(offset: number, data: Uint8Array): this {
    this.patches.push({ offset, data });
    return this;
  }
  u8(offset: number, v: number): this {
    return this.put(offset, Uint8Array.of(v));
  }
  be16(offset: number, v: number): this {
    const b = new Uint8Array(2);
    new DataView(b.buffer).setUint16(0, v, false);
    return this.put(offset, b);
  }
  be32(offset: number, v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, false);
    return this.put(offset, b);
  }
  le32(offset: number, v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v, true);
    return this.put(offset, b);
  }
  be64(offset: number, v: number | bigint): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(v), false);
    return this.put(offset, b);
  }
  ascii(offset: number, s: string): this {
    return this.put(offset, new TextEncoder().encode(s));
  }
  /** Cuts the file (or grows it with zeros). */
  resize(size: number): this {
    this.size = size;
    return this;
  }

  async read(offset: number, length: number, field: string, into?: Uint8Array): Promise<Uint8Array> {
    checkRange(this, offset, length, field);
    this.largestRead = Math.max(this.largestRead, length);
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    out.fill(0);
    const fromBase = Math.min(offset + length, this.base.size) - offset;
    if (fromBase > 0) await this.base.read(offset, fromBase, field, out.subarray(0, fromBase));
    for (const p of this.patches) {
      const from = Math.max(offset, p.offset);
      const to = Math.min(offset + length, p.offset + p.data.length);
      if (from < to) out.set(p.data.subarray(from - p.offset, to - p.offset), from - offset);
    }
    return out;
  }
}

function damage(f: SynthFile | Uint8Array): Damaged {
  return new Damaged(f instanceof Uint8Array ? new BufferSource(f) : f.source());
}

const ram16 = () => new Map([
  [0, pageBytes(PS, 1)],
  [1, pageBytes(PS, 2)],
  [7, pageBytes(PS, 3)],
]);

/** One mapped-ram block of 16 pages (0, 1 and 7 present), a device section and its description. */
function mapped(over: Partial<Parameters<typeof synthesize>[0]> = {}): SynthFile {
  return synthesize({ blocks: [{ name: 'pc.ram', usedLength: 16 * PS, pages: ram16() }], ...over });
}

/** Two mapped-ram blocks "a" (16 pages, 0 1 7 present) and "b" (4 pages). */
function mappedTwo(): SynthFile {
  return synthesize({ blocks: [{ name: 'a', usedLength: 16 * PS, pages: ram16() }, { name: 'b', usedLength: 4 * PS }] });
}

/**
 * A legacy stream whose iteration PART holds three records for pc.ram:
 * PAGE 1 (with the block name), ZERO 2 (CONTINUE), PAGE 3 (CONTINUE).
 */
function legacy(over: Partial<Parameters<typeof synthesize>[0]> = {}): SynthFile {
  const pages = new Map([
    [1, pageBytes(PS, 1)],
    [2, new Uint8Array(PS)],
    [3, pageBytes(PS, 3)],
  ]);
  return synthesize({ mappedRam: false, blocks: [{ name: 'pc.ram', usedLength: 16 * PS, pages }], ...over });
}

/** Where things are in a synthetic file (stream at `stream`), beyond what the synth layout records. */
function where(f: SynthFile, stream = 0, machine = MACHINE) {
  const L = f.layout;
  const config = stream + FILE_HEADER_SIZE;
  const nameLength = config + 1;
  const firstSubsection = nameLength + 4 + machine.length;
  const block = (i: number) => {
    const b = L.blocks[i];
    return { ...b, usedLengthAt: b.entryOffset + 1 + b.name.length };
  };
  // Iteration PART: header, then (legacy) the records.
  const firstRecord = L.tailOffset + PART_HEADER;
  const legacyName = 'pc.ram';
  const secondRecord = firstRecord + RECORD + 1 + legacyName.length + PS;
  // After ZERO 2 (record + fill byte) and PAGE 3 (record + page): the round's MULTIFD_FLUSH.
  const flush = secondRecord + RECORD + 1 + RECORD + PS;
  // Mapped-ram PART: header, EOS, footer, then the switchover-start command.
  const command = L.tailOffset + PART_HEADER + RECORD + FOOTER;
  const deviceBody = L.deviceSectionOffset === undefined ? -1 : L.deviceSectionOffset + START_HEADER + 'timer'.length;
  return { stream, config, nameLength, firstSubsection, block, firstRecord, secondRecord, flush, command, deviceBody };
}

/** A subsection of the configuration: 0x05, u8 name length, name, be32 version, then its fields. */
function subsection(at: number, name: string) {
  return { nameAt: at + 1, versionAt: at + 2 + name.length, fieldsAt: at + 2 + name.length + 4 };
}

/** The file with its description replaced by `desc` (the file is cut or grown to fit). */
function withDescription(f: SynthFile, desc: unknown): Damaged {
  const at = f.layout.vmdescOffset as number;
  const json = new TextEncoder().encode(typeof desc === 'string' ? desc : JSON.stringify(desc));
  const h = new Uint8Array(VMDESC_HEADER);
  h[0] = Section.VMDESCRIPTION;
  new DataView(h.buffer).setUint32(1, json.length, false);
  return damage(f).put(at, h).put(at + VMDESC_HEADER, json).resize(at + VMDESC_HEADER + json.length);
}

/** The synthetic device description, for variations. */
const TIMER = DEVICE_DESC;

/** A libvirt save image: header + XML padded to 4 KiB, then a legacy stream. */
function libvirtImage(over: { format?: number; partial?: boolean } = {}) {
  const streamOffset = 4096;
  const dataLength = streamOffset - LIBVIRT_HEADER_SIZE;
  const f = legacy({ streamOffset });
  const d = damage(f)
    .put(0, encodeLibvirtHeader({ dataLength, format: over.format ?? 0, partial: over.partial }))
    .put(LIBVIRT_HEADER_SIZE, new Uint8Array(dataLength)) // XML area: zeros, not synthesize's filler
    .ascii(LIBVIRT_HEADER_SIZE, '<domain type="kvm"/>');
  return { f, d, streamOffset, dataLength };
}

// ---------------------------------------------------------------------------
// The corpus

interface Expectation {
  src: RandomAccessSource;
  /** Left out only where the right field is a matter for the fix (bug cases). */
  field?: string;
  offset: number;
  opts?: OpenOptions;
}

interface Case {
  code: FormatCode;
  what: string;
  build: () => Expectation;
  /** The reader is wrong here today: what it does instead. The case runs as it.fails. */
  bug?: string;
}

const cases: Case[] = [];
const add = (code: FormatCode, what: string, build: () => Expectation, bug?: string) => cases.push({ code, what, build, bug });

// --- file header
add('BAD_MAGIC', 'magic is not QEVM', () => ({ src: damage(mapped()).ascii(0, 'QEVN'), field: 'file.magic', offset: 0 }));
add('BAD_MAGIC', 'a 5-byte file that is not a stream', () => ({ src: new BufferSource(new TextEncoder().encode('hello')), field: 'file.magic', offset: 0 }));
add('BAD_MAGIC', '--offset that does not point at the stream names the absolute offset', () => {
  const f = mapped({ streamOffset: 8192 });
  return { src: f.source(), field: 'file.magic', offset: 8000, opts: { offset: 8000 } };
});
add('BAD_VERSION', 'stream version 2', () => ({ src: damage(mapped()).be32(4, 2), field: 'file.version', offset: 4 }));
add('BAD_VERSION', 'RAM section version 5', () => {
  const f = mapped();
  const at = f.layout.ramSectionOffset + START_HEADER - 4 + 'ram'.length;
  return { src: damage(f).be32(at, 5), field: 'section[ram].version_id', offset: at };
});

// --- section framing
add('UNKNOWN_SECTION_TYPE', 'type 0x09 where the iteration PART starts', () => {
  const f = mapped();
  return { src: damage(f).u8(f.layout.tailOffset, 0x09), field: 'section.type', offset: f.layout.tailOffset };
});
add('UNKNOWN_SECTION_TYPE', 'a subsection marker (0x05) at top level', () => {
  const f = legacy();
  return { src: damage(f).u8(f.layout.tailOffset, Section.SUBSECTION), field: 'section.type', offset: f.layout.tailOffset };
});
add('UNKNOWN_SECTION_ID', 'PART for a section id never started', () => {
  const f = mapped();
  return { src: damage(f).be32(f.layout.tailOffset + 1, 9), field: 'section.section_id', offset: f.layout.tailOffset + 1 };
});
add('UNKNOWN_SECTION_ID', 'PART of the RAM section after its END', () => {
  // The device FULL becomes a PART of section 1 (RAM), which its END has closed.
  const f = mapped();
  const dev = f.layout.deviceSectionOffset as number;
  return { src: damage(f).u8(dev, Section.PART).be32(dev + 1, 1), field: 'section.section_id', offset: dev + 1 };
});
add('DUPLICATE_SECTION_ID', 'device FULL reuses the RAM section id', () => {
  const f = mapped();
  const dev = f.layout.deviceSectionOffset as number;
  return { src: damage(f).be32(dev + 1, 1), field: 'section.section_id', offset: dev + 1 };
});
add('BAD_SECTION_FOOTER', 'RAM START footer marker is 0x7f', () => {
  const f = mapped();
  const at = f.layout.tailOffset - FOOTER;
  return { src: damage(f).u8(at, 0x7f), field: 'section[ram].footer', offset: at };
});
add('BAD_SECTION_FOOTER', 'device footer names another section id', () => {
  const f = mapped();
  const at = f.layout.eofOffset - FOOTER;
  return { src: damage(f).be32(at + 1, 3), field: 'section[timer].footer', offset: at };
});
add('BAD_COMMAND', 'command id 0', () => {
  const f = mapped();
  const at = where(f).command;
  return { src: damage(f).be16(at + 1, 0), field: 'command.id', offset: at + 1 };
});
add('BAD_COMMAND', 'ping with no data (it carries 4 bytes)', () => {
  const f = mapped();
  const at = where(f).command;
  return { src: damage(f).be16(at + 1, 2), field: 'command.length', offset: at + 3 };
});
add('UNSUPPORTED', 'packaged (nested) stream command', () => {
  const f = mapped();
  const at = where(f).command;
  return { src: damage(f).be16(at + 1, 7).be16(at + 3, 4), field: 'command.id', offset: at + 1 };
});

// --- configuration
add('BAD_CONFIGURATION', 'machine name length 0', () => {
  const f = mapped();
  const at = where(f).nameLength;
  return { src: damage(f).be32(at, 0), field: 'configuration.name.length', offset: at };
});
add('BAD_CONFIGURATION', 'machine name length 300', () => {
  const f = mapped();
  const at = where(f).nameLength;
  return { src: damage(f).be32(at, 300), field: 'configuration.name.length', offset: at };
});
add('BAD_CONFIGURATION', 'unknown subsection name', () => {
  const f = mapped();
  const s = subsection(where(f).firstSubsection, CAPS);
  return { src: damage(f).ascii(s.nameAt + 1, 'x'), field: 'configuration.subsection.name', offset: s.nameAt };
});
add('BAD_CONFIGURATION', 'capabilities subsection version 2', () => {
  const f = mapped();
  const s = subsection(where(f).firstSubsection, CAPS);
  return { src: damage(f).be32(s.versionAt, 2), field: `${CAPS}.version_id`, offset: s.versionAt };
});
add('BAD_CONFIGURATION', 'capability count larger than the section', () => {
  const f = mapped();
  const s = subsection(where(f).firstSubsection, CAPS);
  return { src: damage(f).be32(s.fieldsAt, 0xffffffff), field: `${CAPS}.count`, offset: s.fieldsAt };
});

add(
  'INCOMPLETE',
  'file cut right after the capability count',
  () => {
    const f = mapped();
    const count = subsection(where(f).firstSubsection, CAPS).fieldsAt;
    return { src: damage(f).resize(count + 4), offset: count + 4 };
  },
);

// --- page size
for (const [what, v] of [
  ['0', 0],
  ['3000', 3000],
  ['2^40', 2 ** 40],
  ['512 (below 1 KiB)', 512],
] as const) {
  add('BAD_PAGE_SIZE', `mapped-ram header page size ${what}`, () => {
    const f = mapped();
    const at = f.layout.blocks[0].headerOffset + MR.pageSize;
    return { src: damage(f).be64(at, v), field: 'ramblock[pc.ram].mapped_ram.page_size', offset: at };
  });
}
add(
  'BAD_PAGE_SIZE',
  'target-page-bits 9 names the bytes of the value',
  () => {
    const f = synthesize({ pageSize: 16384, blocks: [{ name: 'pc.ram', usedLength: 4 * 16384 }] });
    const s = subsection(where(f).firstSubsection, PAGE_BITS);
    return { src: damage(f).be32(s.fieldsAt, 9), field: PAGE_BITS, offset: s.fieldsAt };
  },
);
add(
  'BAD_PAGE_SIZE',
  'description page_size 3000 names the description',
  () => {
    const f = legacy();
    return { src: withDescription(f, { page_size: 3000, devices: [TIMER] }), field: 'vmdescription.page_size', offset: (f.layout.vmdescOffset as number) + VMDESC_HEADER };
  },
);
add('PAGE_SIZE_MISMATCH', "second block's header says 8 KiB pages", () => {
  const f = mappedTwo();
  const at = f.layout.blocks[1].headerOffset + MR.pageSize;
  return { src: damage(f).be64(at, 8192), field: 'ramblock[b].mapped_ram.page_size', offset: at };
});
add('PAGE_SIZE_MISMATCH', 'header page size differs from the description page_size', () => {
  const f = mapped();
  const at = f.layout.blocks[0].headerOffset + MR.pageSize;
  return { src: damage(f).be64(at, 8192), field: 'ramblock[pc.ram].mapped_ram.page_size', offset: at };
});

// --- RAM section: block list
add('BAD_RAM_FLAGS', 'RAM section does not start with MEM_SIZE', () => {
  const f = mapped();
  const at = f.layout.memSizeOffset;
  return { src: damage(f).be64(at, 16 * PS), field: 'ram.mem_size.flags', offset: at };
});
add('RAM_SIZE_MISMATCH', 'MEM_SIZE total smaller than the first block', () => {
  const f = mapped();
  return { src: damage(f).be64(f.layout.memSizeOffset, 8 * PS + RamFlag.MEM_SIZE), field: 'ramblock[pc.ram].used_length', offset: where(f).block(0).usedLengthAt };
});
add('RAM_SIZE_MISMATCH', 'MEM_SIZE total one page more than the blocks: the EOS record is read as a block entry', () => {
  // No terminator ends the block list, so the walker reads on: the EOS record
  // after the page region becomes a block with an empty name whose
  // used_length (bytes 1..8 of EOS + footer: 0x107e) exceeds the page left.
  const f = mapped();
  const resume = f.layout.tailOffset - FOOTER - RECORD;
  return { src: damage(f).be64(f.layout.memSizeOffset, 17 * PS + RamFlag.MEM_SIZE), field: 'ramblock[].used_length', offset: resume + 1 };
});
add('RAM_SIZE_MISMATCH', 'block used_length 0', () => {
  const f = legacy();
  const at = where(f).block(0).usedLengthAt;
  return { src: damage(f).be64(at, 0), field: 'ramblock[pc.ram].used_length', offset: at };
});
add('DUPLICATE_BLOCK', 'mapped-ram: second block is named like the first', () => {
  const f = mappedTwo();
  const b = f.layout.blocks[1];
  return { src: damage(f).ascii(b.entryOffset + 1, 'a'), field: 'ramblock[a].name', offset: b.entryOffset };
});
add('DUPLICATE_BLOCK', 'legacy: second block is named like the first', () => {
  const f = synthesize({ mappedRam: false, blocks: [{ name: 'a', usedLength: 4 * PS }, { name: 'b', usedLength: 4 * PS }] });
  const b = f.layout.blocks[1];
  return { src: damage(f).ascii(b.entryOffset + 1, 'a'), field: 'ramblock[a].name', offset: b.entryOffset };
});
add('BAD_BLOCK_LENGTH', 'legacy used_length not a whole number of pages', () => {
  const f = legacy();
  const at = where(f).block(0).usedLengthAt;
  return { src: damage(f).be64(at, 16 * PS - 1024), field: 'ramblock[pc.ram].used_length', offset: at };
});
add('BAD_BLOCK_LENGTH', 'mapped-ram used_length not a whole number of pages', () => {
  const f = mapped();
  const at = where(f).block(0).usedLengthAt;
  return { src: damage(f).be64(at, 16 * PS - 1024), field: 'ramblock[pc.ram].used_length', offset: at };
});
add('VALUE_TOO_LARGE', 'MEM_SIZE total above 2^53', () => {
  const f = mapped();
  const at = f.layout.memSizeOffset;
  return { src: damage(f).be64(at, (1n << 60n) | BigInt(RamFlag.MEM_SIZE)), field: 'ram.mem_size', offset: at };
});
add('VALUE_TOO_LARGE', 'used_length 2^63', () => {
  const f = mapped();
  const at = where(f).block(0).usedLengthAt;
  return { src: damage(f).be64(at, 1n << 63n), field: 'ramblock[pc.ram].used_length', offset: at };
});

// --- mapped-ram header, bitmap, page region
add('BAD_MAPPED_RAM_VERSION', 'header version 2', () => {
  const f = mapped();
  const at = f.layout.blocks[0].headerOffset;
  return { src: damage(f).be32(at, 2), field: 'ramblock[pc.ram].mapped_ram.version', offset: at };
});
add('BAD_MAPPED_RAM_VERSION', 'header version 0', () => {
  const f = mapped();
  const at = f.layout.blocks[0].headerOffset;
  return { src: damage(f).be32(at, 0), field: 'ramblock[pc.ram].mapped_ram.version', offset: at };
});
for (const [what, v] of [
  ['2^53 (one past the largest safe integer)', 2n ** 53n],
  ['2^64 - 1', 2n ** 64n - 1n],
] as const) {
  for (const [name, off] of [
    ['page_size', MR.pageSize],
    ['bitmap_offset', MR.bitmapOffset],
    ['pages_offset', MR.pagesOffset],
  ] as const) {
    add('VALUE_TOO_LARGE', `mapped-ram ${name} ${what}`, () => {
      const f = mapped();
      const at = f.layout.blocks[0].headerOffset + off;
      return { src: damage(f).be64(at, v), field: `ramblock[pc.ram].mapped_ram.${name}`, offset: at };
    });
  }
}
add('BITMAP_OUT_OF_FILE', 'bitmap starts 4 bytes before the end of the file', () => {
  const f = mapped();
  const at = f.layout.blocks[0].headerOffset + MR.bitmapOffset;
  return { src: damage(f).be64(at, f.size - 4), field: 'ramblock[pc.ram].mapped_ram.bitmap_offset', offset: at };
});
add('BITMAP_OUT_OF_FILE', 'bitmap offset 2^52', () => {
  const f = mapped();
  const at = f.layout.blocks[0].headerOffset + MR.bitmapOffset;
  return { src: damage(f).be64(at, 2 ** 52), field: 'ramblock[pc.ram].mapped_ram.bitmap_offset', offset: at };
});
add('BITMAP_OUT_OF_FILE', 'file cut inside the bitmap', () => {
  const f = mapped({ devices: false });
  const b = f.layout.blocks[0];
  return { src: damage(f).resize(b.bitmapOffset + 3), field: 'ramblock[pc.ram].mapped_ram.bitmap_offset', offset: b.headerOffset + MR.bitmapOffset };
});
add('BITMAP_TAIL_BITS_SET', 'bit 13 set in the bitmap of a 10-page block', () => {
  const f = synthesize({ blocks: [{ name: 'pc.ram', usedLength: 10 * PS, pages: new Map([[2, pageBytes(PS, 2)]]) }] });
  const b = f.layout.blocks[0];
  // Page 13 is bit 5 of byte 1; byte 1 also holds pages 8 and 9, left clear.
  return { src: damage(f).u8(b.bitmapOffset + 1, 1 << 5), field: 'ramblock[pc.ram].bitmap', offset: b.bitmapOffset + 1 };
});
add('BITMAP_TAIL_BITS_SET', 'last byte of the padding word set', () => {
  const f = synthesize({ blocks: [{ name: 'pc.ram', usedLength: 10 * PS }] });
  const b = f.layout.blocks[0];
  return { src: damage(f).u8(b.bitmapOffset + b.bitmapSize - 1, 0x80), field: 'ramblock[pc.ram].bitmap', offset: b.bitmapOffset + b.bitmapSize - 1 };
});
add('PAGES_MISALIGNED', 'pages_offset 1 KiB past a page boundary', () => {
  const f = mapped();
  const b = f.layout.blocks[0];
  const at = b.headerOffset + MR.pagesOffset;
  return { src: damage(f).be64(at, b.pagesOffset + 1024), field: 'ramblock[pc.ram].mapped_ram.pages_offset', offset: at };
});
add('PAGES_OVERLAP', 'pages_offset 0 (before the end of its header)', () => {
  const f = mapped();
  const at = f.layout.blocks[0].headerOffset + MR.pagesOffset;
  return { src: damage(f).be64(at, 0), field: 'ramblock[pc.ram].mapped_ram.pages_offset', offset: at };
});
add('PAGES_OVERLAP', 'pages_offset inside its own header', () => {
  const f = mapped();
  const b = f.layout.blocks[0];
  const at = b.headerOffset + MR.pagesOffset;
  return { src: damage(f).be64(at, b.headerOffset + MAPPED_RAM_HDR_SIZE - 1), field: 'ramblock[pc.ram].mapped_ram.pages_offset', offset: at };
});
add('PAGES_OVERLAP', "block b's bitmap inside block a's page region (reported at EOF, on the later region)", () => {
  // Page regions of two blocks cannot overlap: each header is after the
  // previous block's region and pages must follow their header. A bitmap can
  // be anywhere, so that is the overlap a file can have. Page 8 of a is
  // absent, so the bitmap reads as zeros and passes its own checks.
  const f = mappedTwo();
  const [a, b] = f.layout.blocks;
  const bitmapAt = a.pagesOffset + 8 * PS;
  return { src: damage(f).be64(b.headerOffset + MR.bitmapOffset, bitmapAt), field: 'ramblock[b].bitmap', offset: bitmapAt };
});
add('PAGES_OVERLAP', "a block's bitmap on top of the stream (the iteration PART's EOS record)", () => {
  // 64 pages: every bit of the 8-byte bitmap is a real page, so any 8 bytes pass as a bitmap.
  const f = synthesize({ blocks: [{ name: 'pc.ram', usedLength: 64 * PS }] });
  const eos = f.layout.tailOffset + PART_HEADER;
  return { src: damage(f).be64(f.layout.blocks[0].headerOffset + MR.bitmapOffset, eos), field: 'ramblock[pc.ram].bitmap', offset: eos };
});
add('PAGES_OUT_OF_FILE', 'file cut inside the page region', () => {
  const f = mapped();
  const b = f.layout.blocks[0];
  return { src: damage(f).resize(b.pagesOffset + 4 * PS), field: 'ramblock[pc.ram].mapped_ram.pages_offset', offset: b.headerOffset + MR.pagesOffset };
});
add('PAGES_OUT_OF_FILE', 'pages_offset 2^40', () => {
  const f = mapped();
  const at = f.layout.blocks[0].headerOffset + MR.pagesOffset;
  return { src: damage(f).be64(at, 2 ** 40), field: 'ramblock[pc.ram].mapped_ram.pages_offset', offset: at };
});
add('LIMIT_EXCEEDED', `bitmaps above ${MAX_BITMAP_MEMORY} bytes (a 4 TiB + 256 KiB block, in a grown virtual file)`, () => {
  const f = mapped();
  const pages = MAX_BITMAP_MEMORY * 8 + 64;
  const usedLength = pages * PS;
  const b = where(f).block(0);
  return {
    src: damage(f)
      .be64(f.layout.memSizeOffset, BigInt(usedLength) | BigInt(RamFlag.MEM_SIZE))
      .be64(b.usedLengthAt, usedLength)
      .resize(2 * MAX_BITMAP_MEMORY),
    field: 'ramblock[pc.ram].mapped_ram.bitmap_offset',
    offset: b.headerOffset + MR.bitmapOffset,
  };
});

// --- RAM records
add('BAD_RAM_FLAGS', 'legacy record with the obsolete HOOK flag', () => {
  const f = legacy();
  const at = where(f).firstRecord;
  return { src: damage(f).be64(at, PS | RamFlag.PAGE | RamFlag.HOOK), field: 'ram.record.flags', offset: at };
});
add('UNSUPPORTED', "legacy record with QEMU 9.0's COMPRESS_PAGE flag (valid, not supported)", () => {
  const f = legacy();
  const at = where(f).firstRecord;
  return { src: damage(f).be64(at, PS | RamFlag.COMPRESS_PAGE), field: 'ram.record.flags', offset: at };
});
add('BAD_RAM_FLAGS', 'legacy record that is both ZERO and PAGE', () => {
  const f = legacy();
  const at = where(f).firstRecord;
  return { src: damage(f).be64(at, PS | RamFlag.PAGE | RamFlag.ZERO), field: 'ram.record.flags', offset: at };
});
add('BAD_RAM_FLAGS', 'legacy CONTINUE record with no page type', () => {
  const f = legacy();
  const at = where(f).secondRecord;
  return { src: damage(f).be64(at, 2 * PS + RamFlag.CONTINUE), field: 'ram.record.flags', offset: at };
});
add('BAD_RAM_FLAGS', 'EOS record carrying an offset', () => {
  const f = mapped();
  const at = f.layout.tailOffset + PART_HEADER;
  return { src: damage(f).be64(at, PS | RamFlag.EOS), field: 'ram.record.flags', offset: at };
});
add('BAD_RAM_FLAGS', 'ZERO page record in a mapped-ram stream', () => {
  const f = mapped();
  const at = f.layout.tailOffset + PART_HEADER;
  return { src: damage(f).be64(at, RamFlag.ZERO), field: 'ram.record.flags', offset: at };
});
add('BAD_RAM_FLAGS', 'MULTIFD_FLUSH record in a mapped-ram stream', () => {
  const f = mapped();
  const at = f.layout.tailOffset + PART_HEADER;
  return { src: damage(f).be64(at, RamFlag.MULTIFD_FLUSH), field: 'ram.record.flags', offset: at };
});
add('BAD_RAM_FLAGS', 'ZERO record with fill byte 0x55', () => {
  const f = legacy();
  const at = where(f).secondRecord + RECORD;
  return { src: damage(f).u8(at, 0x55), field: 'ram.record.fill', offset: at };
});
add('BAD_RAM_FLAGS', 'legacy MULTIFD_FLUSH record carrying an offset', () => {
  const f = legacy();
  const at = where(f).flush;
  return { src: damage(f).be64(at, PS | RamFlag.MULTIFD_FLUSH), field: 'ram.record.flags', offset: at };
});
add('UNKNOWN_BLOCK', 'legacy record names a block that is not in the list', () => {
  const f = legacy();
  const at = where(f).firstRecord + RECORD;
  return { src: damage(f).ascii(at + 1, 'x'), field: 'ram.record.block', offset: at };
});
add('UNKNOWN_BLOCK', 'first legacy record says CONTINUE', () => {
  const f = legacy();
  const at = where(f).firstRecord;
  return { src: damage(f).be64(at, PS | RamFlag.PAGE | RamFlag.CONTINUE), field: 'ram.record.flags', offset: at };
});
add('PAGE_OUT_OF_BLOCK', 'legacy page offset = used_length', () => {
  const f = legacy();
  const at = where(f).firstRecord;
  return { src: damage(f).be64(at, 16 * PS + RamFlag.PAGE), field: 'ramblock[pc.ram].page', offset: at };
});
add('PAGE_OUT_OF_BLOCK', 'legacy CONTINUE page past the block', () => {
  const f = legacy();
  const at = where(f).secondRecord;
  return { src: damage(f).be64(at, 1000 * PS + (RamFlag.ZERO | RamFlag.CONTINUE)), field: 'ramblock[pc.ram].page', offset: at };
});
add('VALUE_TOO_LARGE', 'legacy record offset 2^60', () => {
  const f = legacy();
  const at = where(f).firstRecord;
  return { src: damage(f).be64(at, (1n << 60n) | BigInt(RamFlag.PAGE)), field: 'ram.record.offset', offset: at };
});
add('UNSUPPORTED', 'XBZRLE page record', () => {
  const f = legacy();
  const at = where(f).firstRecord;
  return { src: damage(f).be64(at, PS | RamFlag.XBZRLE), field: 'ram.record.flags', offset: at };
});

// --- devices and their description
add('BAD_DEVICE_DESCRIPTION', 'description is not JSON', () => {
  const f = mapped();
  const json = (f.layout.vmdescOffset as number) + VMDESC_HEADER;
  return { src: damage(f).ascii(f.size - 1, ' '), field: 'vmdescription', offset: json };
});
add('BAD_DEVICE_DESCRIPTION', 'description has no devices list', () => {
  const f = mapped();
  return { src: withDescription(f, { page_size: PS }), field: 'vmdescription.devices', offset: (f.layout.vmdescOffset as number) + VMDESC_HEADER };
});
add('BAD_DEVICE_DESCRIPTION', 'device without a name', () => {
  const f = mapped();
  return { src: withDescription(f, { page_size: PS, devices: [{ instance_id: 0 }] }), field: 'vmdescription.devices[0]', offset: (f.layout.vmdescOffset as number) + VMDESC_HEADER };
});
add('BAD_DEVICE_DESCRIPTION', 'field with a negative size', () => {
  const f = mapped();
  const dev = { ...TIMER, fields: [{ name: 'x', type: 'uint8', size: -1 }] };
  return { src: withDescription(f, { page_size: PS, devices: [dev] }), field: 'vmdescription.devices[0]', offset: (f.layout.vmdescOffset as number) + VMDESC_HEADER };
});
add('DEVICE_STATE_MISMATCH', 'nullptr field where the section has 0xff', () => {
  const f = mapped();
  const dev = { ...TIMER, fields: [{ name: 'p', type: 'nullptr', size: 1 }, ...TIMER.fields] };
  return { src: withDescription(f, { page_size: PS, devices: [dev] }), field: 'timer.p', offset: where(f).deviceBody };
});
add('DEVICE_STATE_MISMATCH', 'description has a subsection the section lacks', () => {
  const f = mapped();
  const dev = { ...TIMER, subsections: [{ vmsd_name: 'timer/extra', version: 1, fields: [] }] };
  return { src: withDescription(f, { page_size: PS, devices: [dev] }), field: 'timer.subsection', offset: where(f).deviceBody + 13 };
});
add('DEVICE_STATE_MISMATCH', 'described fields run into the description', () => {
  const f = mapped();
  const dev = { ...TIMER, fields: [{ name: 'blob', type: 'buffer', size: 1000 }] };
  return { src: withDescription(f, { page_size: PS, devices: [dev] }), field: 'timer.blob', offset: where(f).deviceBody };
});
// --- iterable sections with formats of their own (ppc64 pseries, s390x)
add('BAD_HTAB', 'spapr/htab chunk past the end of a 256 KiB hash page table', () => {
  const body = htab.chunks([[16380, [new Uint8Array(16), new Uint8Array(16)], 3]]);
  const { bytes, at } = withSectionsBeforeDevices(legacy(), iterableSection(7, 'spapr/htab', 1, [htab.size(18), body]));
  const chunk = at + startHeaderLength('spapr/htab') + 4 + FOOTER + PART_HEADER + 4;
  return { src: new Damaged(new BufferSource(bytes)), field: 'spapr/htab.chunk.index', offset: chunk };
});
add('BAD_STORAGE_ATTRIBUTES', 's390 storage attributes marked failed by the sender (ERROR flag)', () => {
  const { bytes, at } = withSectionsBeforeDevices(legacy(), iterableSection(7, 's390-storage_attributes', 0, [stattr.eos(), be64(0x04)]));
  const record = at + startHeaderLength('s390-storage_attributes') + 8 + FOOTER + PART_HEADER;
  return { src: new Damaged(new BufferSource(bytes)), field: 's390-storage_attributes.record', offset: record };
});
add('UNDESCRIBED_SECTION', 'device section name not in the description', () => {
  const f = mapped();
  const dev = f.layout.deviceSectionOffset as number;
  return { src: damage(f).ascii(dev + 6 + 4, 'R'), field: 'section[timeR]', offset: dev };
});
add('UNDESCRIBED_SECTION', 'device instance id not in the description', () => {
  const f = mapped();
  const dev = f.layout.deviceSectionOffset as number;
  return { src: damage(f).be32(dev + 6 + 'timer'.length, 1), field: 'section[timer]', offset: dev };
});
add('UNDESCRIBED_SECTION', 'no description, and bytes after EOF that are not one (the last device section cannot be stepped over)', () => {
  const f = legacy();
  return { src: damage(f).resize(f.layout.eofOffset + 4).ascii(f.layout.eofOffset + 1, 'xyz'), field: 'section[timer]', offset: f.layout.deviceSectionOffset as number };
});

// --- end of stream
add('INCOMPLETE', 'empty file', () => ({ src: new BufferSource(new Uint8Array(0)), field: 'file.magic', offset: 0 }));
add('INCOMPLETE', 'file header only', () => ({ src: damage(mapped()).resize(FILE_HEADER_SIZE), field: 'section.type', offset: FILE_HEADER_SIZE }));
add('INCOMPLETE', 'cut inside the machine name', () => {
  const f = mapped();
  const name = where(f).nameLength + 4;
  return { src: damage(f).resize(name + 3), field: 'configuration.name', offset: name };
});
add('INCOMPLETE', 'cut inside a mapped-ram header', () => {
  const f = mapped();
  const h = f.layout.blocks[0].headerOffset;
  return { src: damage(f).resize(h + 10), field: 'ramblock[pc.ram].mapped_ram', offset: h };
});
add('INCOMPLETE', 'unfinished mapped-ram save: bitmaps all zero, stream stops after the block list', () => {
  const f = synthesize({ blocks: [{ name: 'pc.ram', usedLength: 16 * PS }, { name: 'pc.bios', usedLength: 4 * PS }] });
  return { src: damage(f).resize(f.layout.tailOffset), field: 'section.type', offset: f.layout.tailOffset };
});
add('INCOMPLETE', 'legacy: cut inside the bytes of a page', () => {
  const f = legacy();
  const data = where(f).firstRecord + RECORD + 1 + 'pc.ram'.length;
  return { src: damage(f).resize(data + 100), field: 'ramblock[pc.ram].page[1]', offset: data };
});
add('INCOMPLETE', 'legacy: cut inside a record', () => {
  const f = legacy();
  const at = where(f).secondRecord;
  return { src: damage(f).resize(at + 3), field: 'ram.record', offset: at };
});
add('INCOMPLETE', 'RAM-only stream cut before its EOF byte', () => {
  const f = mapped({ devices: false });
  return { src: damage(f).resize(f.layout.eofOffset), field: 'section.type', offset: f.layout.eofOffset };
});
add('INCOMPLETE', 'RAM section never ended (its END became a PART)', () => {
  const f = mapped();
  return { src: damage(f).u8(where(f).command + COMMAND_HEADER, Section.PART), field: 'section[ram]', offset: f.layout.ramSectionOffset };
});
add('INCOMPLETE', 'libvirt header still says LibvirtQemudPart', () => ({ src: libvirtImage({ partial: true }).d, field: 'libvirt.magic', offset: 0 }));
// --- libvirt wrapper
add('BAD_LIBVIRT_HEADER', 'libvirt version 3', () => ({ src: libvirtImage().d.le32(16, 3), field: 'libvirt.version', offset: 16 }));
add('BAD_LIBVIRT_HEADER', 'libvirt data_len 0', () => ({ src: libvirtImage().d.le32(20, 0), field: 'libvirt.data_len', offset: 20 }));
add('BAD_LIBVIRT_HEADER', 'libvirt data_len past the end of the file', () => {
  const { d, f } = libvirtImage();
  return { src: d.le32(20, f.size), field: 'libvirt.data_len', offset: 20 };
});
add('UNSUPPORTED', 'gzip-compressed libvirt image', () => ({ src: libvirtImage({ format: 1 }).d, field: 'libvirt.format', offset: 28 }));
add('TRUNCATED', 'libvirt magic in a file shorter than the libvirt header', () => ({
  src: new BufferSource(encodeLibvirtHeader({ dataLength: 100, format: 0 }).subarray(0, 50)),
  field: 'libvirt.header',
  offset: 50,
}));

// --- streams that do not start at byte 0: offsets stay absolute
add('BAD_CONFIGURATION', 'stream at --offset 8192: machine name length 0', () => {
  const f = mapped({ streamOffset: 8192 });
  const at = where(f, 8192).nameLength;
  return { src: damage(f).be32(at, 0), field: 'configuration.name.length', offset: at, opts: { offset: 8192 } };
});
add('BAD_MAPPED_RAM_VERSION', 'stream at --offset 8192: header version 2', () => {
  const f = mapped({ streamOffset: 8192 });
  const at = f.layout.blocks[0].headerOffset;
  return { src: damage(f).be32(at, 2), field: 'ramblock[pc.ram].mapped_ram.version', offset: at, opts: { offset: 8192 } };
});
add('PAGE_OUT_OF_BLOCK', 'inside a libvirt save image', () => {
  const { f, d, streamOffset } = libvirtImage();
  const at = where(f, streamOffset).firstRecord;
  return { src: d.be64(at, 16 * PS + RamFlag.PAGE), field: 'ramblock[pc.ram].page', offset: at };
});
add('BAD_VERSION', 'inside a libvirt save image: stream version 4', () => {
  const { d, streamOffset } = libvirtImage();
  return { src: d.be32(streamOffset + 4, 4), field: 'file.version', offset: streamOffset + 4 };
});

describe('failure corpus', () => {
  for (const c of cases) {
    const title = `${c.code}: ${c.what}`;
    const test = async () => {
      const { src, field, offset, opts } = c.build();
      const p = Snapshot.open(src, opts);
      await expect(p).rejects.toBeInstanceOf(RamsnapFormatError);
      await expect(p).rejects.toMatchObject({ code: c.code, offset, ...(field !== undefined ? { field } : {}) });
    };
    if (c.bug) {
      // BUG: see c.bug. Remove the mark when the reader is fixed.
      it.fails(`${title} [BUG: ${c.bug}]`, test);
    } else {
      it(title, test);
    }
  }

  it('covers every code the reader raises', () => {
    const covered = new Set(cases.filter((c) => !c.bug).map((c) => c.code));
    // TRAILING_DATA is only a warning: bytes after EOF, a description among them included, are never refused (SPEC §7.3, rules 59-60).
    // BAD_CPU_STATE comes from the CPU notes of an ELF export (test/phys.test.ts covers it), BAD_DELTA from
    // delta, apply and restore --base (test/delta.test.ts): not from the reader.
    const notReader: string[] = [FormatCode.TRAILING_DATA, FormatCode.BAD_CPU_STATE, FormatCode.BAD_DELTA];
    const missing = Object.values(FormatCode).filter((code) => !covered.has(code) && !notReader.includes(code));
    expect(missing).toEqual([]);
  });

  it('a lenient open of a cut file keeps what was read before the cut', async () => {
    const f = synthesize({ blocks: [{ name: 'pc.ram', usedLength: 16 * PS }, { name: 'pc.bios', usedLength: 4 * PS }] });
    const snap = await Snapshot.open(damage(f).resize(f.layout.tailOffset), { lenient: true });
    expect(snap.model.complete).toBe(false);
    expect(snap.model.error).toMatchObject({ code: 'INCOMPLETE', offset: f.layout.tailOffset });
    expect(snap.model.blocks.map((b) => [b.name, b.pagesPresent])).toEqual([
      ['pc.ram', 0],
      ['pc.bios', 0],
    ]);
  });

  it('a non-integer description page_size is BAD_PAGE_SIZE, not a RangeError', async () => {
    // Regression: BigInt(4095.5) threw a RangeError before checkPageSize() required an integer.
    for (const f of [legacy(), synthesize({ blocks: [] })]) {
      await expect(Snapshot.open(withDescription(f, { page_size: 4096.5, devices: [TIMER] }))).rejects.toMatchObject({ code: 'BAD_PAGE_SIZE' });
    }
  });

  // Regression: the first block's header page size was compared with its own
  // provisional page size (the 4096 default), so a file whose only statement
  // of the page size is the mapped-ram header opened only with 4 KiB pages.
  it('mapped-ram with 8 KiB pages and no other page-size source opens', async () => {
    const ps = 8192;
    const f = synthesize({ pageSize: ps, devices: false, blocks: [{ name: 'ram', usedLength: 4 * ps, pages: new Map([[1, pageBytes(ps, 1)]]) }] });
    const snap = await Snapshot.open(f.source());
    expect(snap.model.pageSize).toBe(ps);
  });
});

// ---------------------------------------------------------------------------
// Properties

const ALL_CODES = new Set<string>(Object.values(FormatCode));

/** Opens `src` and classifies the outcome; anything but a RamsnapFormatError fails the property. */
async function openOutcome(src: Damaged, opts?: OpenOptions): Promise<{ ok: true; snap: Snapshot } | { ok: false; err: RamsnapFormatError }> {
  try {
    return { ok: true, snap: await Snapshot.open(src, opts) };
  } catch (err) {
    if (!(err instanceof RamsnapFormatError)) throw new Error(`open threw a non-format error: ${String(err)}`, { cause: err });
    expect(ALL_CODES.has(err.code)).toBe(true);
    expect(Number.isSafeInteger(err.offset) && err.offset >= 0 && err.offset <= src.size).toBe(true);
    return { ok: false, err };
  }
}

describe('truncation at any offset', () => {
  // Where a cut can land and what it may then be called.
  const allowed = new Set<string>([
    'INCOMPLETE', // the sequential stream ends
    'BAD_MAGIC', // fewer than 8 bytes, not empty
    'BITMAP_OUT_OF_FILE', // cut inside a bitmap
    'PAGES_OUT_OF_FILE', // cut inside a page region
    'UNDESCRIBED_SECTION', // the description (at the very end) is gone, so device sections cannot be parsed
  ]);
  /**
   * BUG (pinned in the corpus: "file cut right after the capability count"):
   * that one cut is BAD_CONFIGURATION today. Tolerated here so the property
   * stays about everything else; drop this when the reader is fixed.
   */
  const knownBug = (err: RamsnapFormatError, at: number) => err.code === 'BAD_CONFIGURATION' && err.field === `${CAPS}.count` && at === err.offset + 4;
  const files: [string, () => { f: SynthFile; src?: () => Damaged; extra?: string[] }][] = [
    ['legacy', () => ({ f: legacy() })],
    ['mapped-ram', () => ({ f: mappedTwo() })],
    ['mapped-ram, RAM only', () => ({ f: mapped({ devices: false }) })],
    [
      'libvirt save image',
      // Cut inside the libvirt header (TRUNCATED), or before the stream it announces (BAD_LIBVIRT_HEADER: data_len past the end).
      () => ({ f: libvirtImage().f, src: () => libvirtImage().d, extra: ['TRUNCATED', 'BAD_LIBVIRT_HEADER'] }),
    ],
  ];
  for (const [kind, make] of files) {
    it(`${kind}: every cut is a RamsnapFormatError of an allowed code, at or before the cut`, async () => {
      const { f, src: base = () => damage(f), extra = [] } = make();
      const ok = new Set([...allowed, ...extra]);
      // Every structure boundary the layout knows, and the bytes around it.
      const L = f.layout;
      const marks = [L.ramSectionOffset, L.memSizeOffset, L.tailOffset, L.eofOffset, L.deviceSectionOffset ?? 0, L.vmdescOffset ?? 0, ...L.blocks.flatMap((b) => [b.entryOffset, b.headerOffset, b.bitmapOffset, b.pagesOffset])];
      const boundaries = [...new Set(marks.flatMap((m) => [m - 1, m, m + 1]).filter((m) => m >= 0 && m < f.size))];
      // Random cuts: biased to the bytes the extents hold (page regions are mostly zero holes).
      const inExtent = fc.nat({ max: f.extents.length - 1 }).chain((i) => fc.nat({ max: f.extents[i].data.length - 1 }).map((k) => f.extents[i].offset + k));
      const cut = fc.oneof(fc.constantFrom(...boundaries), inExtent, fc.nat({ max: f.size - 1 }));
      await fc.assert(
        fc.asyncProperty(cut, async (at) => {
          const src = base().resize(at);
          const r = await openOutcome(src);
          if (r.ok) {
            // Cut right after EOF, a stream with footers is what suppress-vmdesc=on writes: it opens, its device state unchecked.
            const unchecked = r.snap.model.warnings.some((x) => x.code === 'DEVICE_STATE_UNCHECKED');
            if (at === f.layout.eofOffset + 1 && unchecked) return;
            throw new Error(`a file cut at ${at} of ${f.size} opened`);
          }
          if (knownBug(r.err, at)) return;
          if (!ok.has(r.err.code)) throw new Error(`cut at ${at}: ${r.err.code} is not an allowed code (${r.err.message})`);
          expect(r.err.offset).toBeLessThanOrEqual(at);
        }),
        // timeout: a run that never settles fails instead of hanging the suite.
        { numRuns: 200, timeout: 5000 },
      );
    });
  }

  it('the full file opens (the property above is not vacuous)', async () => {
    for (const [, make] of files) {
      const { f, src = () => damage(f) } = make();
      const r = await openOutcome(src());
      expect(r.ok).toBe(true);
    }
  });
});

describe('random damage', () => {
  interface Hit {
    at: number;
    kind: 'xor' | 'set' | 'be32' | 'be64';
    value: bigint;
  }
  const INTERESTING64 = [0n, 1n, 0xffffffffn, 2n ** 53n - 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n, 4096n, 1n << 20n];
  const hit = (f: SynthFile): fc.Arbitrary<Hit> => {
    const at = fc.nat({ max: f.extents.length - 1 }).chain((i) => fc.nat({ max: f.extents[i].data.length - 1 }).map((k) => f.extents[i].offset + k));
    return fc.record({
      at,
      kind: fc.constantFrom<Hit['kind']>('xor', 'set', 'be32', 'be64'),
      value: fc.oneof(fc.bigInt({ min: 1n, max: 255n }), fc.constantFrom(...INTERESTING64), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
    });
  };
  const originals = new Map<SynthFile, Uint8Array>();
  const apply = (f: SynthFile, hits: Hit[]): Damaged => {
    const d = damage(f);
    if (!originals.has(f)) originals.set(f, f.bytes());
    const orig = originals.get(f) as Uint8Array;
    for (const h of hits) {
      if (h.kind === 'xor') d.u8(h.at, orig[h.at] ^ Number(h.value & 0xffn || 1n));
      else if (h.kind === 'set') d.u8(h.at, Number(h.value & 0xffn));
      else if (h.kind === 'be32') d.be32(h.at, Number(h.value & 0xffffffffn));
      else d.be64(h.at, h.value);
    }
    return d;
  };
  const files: [string, SynthFile][] = [
    ['legacy', legacy({ legacyRepeats: 2 })],
    ['mapped-ram', mappedTwo()],
  ];
  for (const [kind, f] of files) {
    it(`${kind}: opens, or fails with a RamsnapFormatError, quickly and with bounded reads`, async () => {
      // No single read may be larger than the file (plus 64 MiB of window headroom): a damaged length must be
      // checked against the file before anything is allocated for it.
      const LIMIT_READ = f.size + (64 << 20);
      await fc.assert(
        fc.asyncProperty(fc.array(hit(f), { minLength: 1, maxLength: 4 }), async (hits) => {
          const src = apply(f, hits);
          const t = performance.now();
          const r = await openOutcome(src);
          expect(performance.now() - t).toBeLessThan(2000);
          expect(src.largestRead).toBeLessThanOrEqual(LIMIT_READ);
          if (r.ok) {
            // A file that opens must also read: every block's first and last pages.
            for (const b of r.snap.blocks) {
              const n = Math.min(b.usedLength, 2 * b.pageSize);
              for (const at of [0, b.usedLength - n]) {
                try {
                  await r.snap.read(b, at, n);
                } catch (err) {
                  if (!(err instanceof RamsnapError)) throw new Error(`read of ${b.name} threw a non-ramsnap error: ${String(err)}`, { cause: err });
                }
              }
            }
          }
        }),
        { numRuns: 400, timeout: 5000 },
      );
    });
  }
});
