/**
 * Where every structure of a real fixture is, from the reader's own model
 * of it (block headers, bitmaps, page regions, sections, commands, the
 * description) plus a small hand parse of what the model does not keep
 * (configuration fields, section headers, legacy record headers). The
 * mutator aims at these: a cut at a boundary, an offset field set past the
 * end of the file, a block name set to "../..".
 */
import { MAPPED_RAM_HDR_SIZE, RamFlag, Section } from '../../format/constants.js';
import { RamsnapError } from '../../format/errors.js';
import { LIBVIRT_HEADER_SIZE } from '../../format/libvirt.js';
import { Snapshot } from '../../reader/snapshot.js';
import { checkRange, type RandomAccessSource } from '../../reader/source.js';
import type { SparseImage } from './image.js';

/** An integer field of the file: a length, an offset, a count, a version. */
export interface FieldMark {
  at: number;
  width: 1 | 2 | 4 | 8;
  /** Host order of libvirt's header. */
  le?: boolean;
  label: string;
  /** What it holds: lengths and offsets get the "past EOF" and "overlapping" values. */
  kind: 'offset' | 'length' | 'count' | 'id' | 'version' | 'flags' | 'type';
  /** The value in the fixture (decimal, as a bigint can hold a be64). */
  value?: string;
}

/** A structure: [start, end) of the file. */
export interface RegionMark {
  start: number;
  end: number;
  label: string;
  kind: 'header' | 'configuration' | 'section' | 'block-entry' | 'mapped-ram-header' | 'bitmap' | 'pages' | 'vmdesc' | 'libvirt' | 'command' | 'record';
}

/** A u8-length-prefixed name: where its length byte is, for every place the same name is written. */
export interface NameMark {
  label: string;
  name: string;
  /** Offsets of the length byte of each copy (a legacy stream repeats block names in page records). */
  copies: number[];
  kind: 'block' | 'section';
}

export interface BlockMark {
  name: string;
  entryOffset: number;
  /** Bytes from the entry's length byte to the end of its mapped-ram header (or its used_length). */
  entryLength: number;
  usedLength: number;
  headerOffset?: number;
  bitmapOffset?: number;
  bitmapSize?: number;
  pagesOffset?: number;
}

export interface SectionMark {
  offset: number;
  end: number;
  name: string;
  kind: string;
}

export interface FixtureMap {
  name: string;
  size: number;
  streamOffset: number;
  mappedRam: boolean;
  pageSize: number;
  /** Structure starts and ends (header, configuration, each section and footer, block entry, header, bitmap, pages, EOF, description), each once, sorted. */
  boundaries: number[];
  /** More places worth cutting at: inside headers, between fields, legacy page records. */
  cutPoints: number[];
  fields: FieldMark[];
  regions: RegionMark[];
  names: NameMark[];
  blocks: BlockMark[];
  sections: SectionMark[];
  vmdesc?: { offset: number; length: number };
  /** Devices in the description and fields of each (for JSON-level edits). */
  vmdescShape?: { fields: number[]; subsections: number[] };
  libvirt: boolean;
}

/** The reader's view of an image, without writing it to disk. */
export class ImageSource implements RandomAccessSource {
  readonly name: string;
  readonly size: number;
  constructor(
    private readonly image: SparseImage,
    name = '<image>',
  ) {
    this.size = image.size;
    this.name = name;
  }
  async read(offset: number, length: number, field: string, into?: Uint8Array): Promise<Uint8Array> {
    return this.readSync(offset, length, field, into);
  }
  readSync(offset: number, length: number, field: string, into?: Uint8Array): Uint8Array {
    checkRange(this, offset, length, field);
    return this.image.read(offset, length, into);
  }
}

/** Most legacy record headers kept as marks per fixture (a live legacy save has thousands). */
const MAX_RECORD_MARKS = 100;

export async function buildFixtureMap(name: string, image: SparseImage, offset?: number): Promise<FixtureMap> {
  const src = new ImageSource(image, name);
  let snap: Snapshot;
  try {
    snap = await Snapshot.open(src, { lenient: true, offset });
  } catch (err) {
    if (err instanceof RamsnapError) throw new Error(`fixture ${name} does not open: ${err.message}`);
    throw err;
  }
  const m = snap.model;
  const fields: FieldMark[] = [];
  const regions: RegionMark[] = [];
  const names = new Map<string, NameMark>();
  const bounds = new Set<number>();
  const points = new Set<number>();
  const b = (...xs: number[]): void => xs.forEach((x) => bounds.add(x));
  /** A cut point that is not a structure boundary. */
  const p = (...xs: number[]): void => xs.forEach((x) => points.add(x));
  const u8 = (at: number): number => image.read(at, 1)[0];
  const be32 = (at: number): number => new DataView(image.read(at, 4).buffer).getUint32(0, false);
  const latin1 = (at: number, n: number): string => String.fromCharCode(...image.read(at, n));
  const addName = (kind: NameMark['kind'], nm: string, at: number): void => {
    const key = `${kind}:${nm}`;
    const e = names.get(key) ?? { label: `${kind}[${nm}]`, name: nm, copies: [], kind };
    if (!e.copies.includes(at)) e.copies.push(at);
    names.set(key, e);
  };

  const s0 = m.streamOffset;
  b(0, m.fileSize, s0);
  if (m.libvirt) {
    regions.push({ start: 0, end: LIBVIRT_HEADER_SIZE, label: 'libvirt.header', kind: 'libvirt' });
    fields.push(
      { at: 16, width: 4, le: m.libvirt.littleEndian, label: 'libvirt.version', kind: 'version' },
      { at: 20, width: 4, le: m.libvirt.littleEndian, label: 'libvirt.data_len', kind: 'length' },
      { at: 28, width: 4, le: m.libvirt.littleEndian, label: 'libvirt.format', kind: 'type' },
      { at: 32, width: 4, le: m.libvirt.littleEndian, label: 'libvirt.cookieOffset', kind: 'offset' },
    );
    p(16, 20, 24, 28);
    b(LIBVIRT_HEADER_SIZE);
  }
  regions.push({ start: s0, end: s0 + 8, label: 'file.header', kind: 'header' });
  fields.push({ at: s0, width: 4, label: 'file.magic', kind: 'type' }, { at: s0 + 4, width: 4, label: 'file.version', kind: 'version' });
  p(s0 + 4);
  b(s0 + 8);

  // Configuration: u8 0x07, be32 name length, name, subsections (no footer).
  let at = s0 + 8;
  if (u8(at) === Section.CONFIGURATION) {
    const start = at;
    fields.push({ at: at + 1, width: 4, label: 'configuration.name.length', kind: 'length' });
    at += 5 + be32(at + 1);
    p(start + 1, start + 5);
    b(at);
    while (at < m.fileSize && u8(at) === Section.SUBSECTION) {
      const len = u8(at + 1);
      const sub = latin1(at + 2, len);
      fields.push({ at: at + 1, width: 1, label: `${sub}.name.length`, kind: 'length' });
      const vAt = at + 2 + len;
      fields.push({ at: vAt, width: 4, label: `${sub}.version_id`, kind: 'version' });
      at = vAt + 4;
      if (sub === 'configuration/target-page-bits') {
        fields.push({ at, width: 4, label: sub, kind: 'count' });
        at += 4;
      } else if (sub === 'configuration/capabilities') {
        fields.push({ at, width: 4, label: `${sub}.count`, kind: 'count' });
        const n = be32(at);
        at += 4;
        for (let i = 0; i < n && i < 64; i++) {
          fields.push({ at, width: 1, label: `${sub}[${i}].length`, kind: 'length' });
          at += 1 + u8(at);
        }
      } else if (sub === 'configuration/uuid') {
        at += 16;
      } else break;
      p(at);
    }
    regions.push({ start, end: at, label: 'configuration', kind: 'configuration' });
  }

  // Sections: header fields, footer, and the idstr as a name.
  for (const s of m.sections) {
    b(s.offset, s.end, s.end - 5);
    regions.push({ start: s.offset, end: s.end, label: `section[${s.name}].${s.kind}`, kind: 'section' });
    fields.push({ at: s.offset, width: 1, label: `section[${s.name}].type`, kind: 'type' });
    fields.push({ at: s.offset + 1, width: 4, label: `section[${s.name}].section_id`, kind: 'id' });
    fields.push({ at: s.end - 5, width: 1, label: `section[${s.name}].footer`, kind: 'type' });
    fields.push({ at: s.end - 4, width: 4, label: `section[${s.name}].footer.section_id`, kind: 'id' });
    if (s.kind === 'start' || s.kind === 'full') {
      const len = u8(s.offset + 5);
      fields.push({ at: s.offset + 5, width: 1, label: `section[${s.name}].idstr.length`, kind: 'length' });
      fields.push({ at: s.offset + 6 + len, width: 4, label: `section[${s.name}].instance_id`, kind: 'id' });
      fields.push({ at: s.offset + 10 + len, width: 4, label: `section[${s.name}].version_id`, kind: 'version' });
      p(s.offset + 5, s.offset + 6 + len, s.offset + 14 + len);
      addName('section', s.name, s.offset + 5);
      if (s.sectionId === m.ramSectionId && s.kind === 'start') {
        const memSize = s.offset + 14 + len;
        fields.push({ at: memSize, width: 8, label: 'ram.mem_size', kind: 'length' });
        p(memSize + 8);
      }
    }
  }
  for (const c of m.commands) {
    b(c.offset, c.offset + 5 + c.length);
    regions.push({ start: c.offset, end: c.offset + 5 + c.length, label: `command[${c.name}]`, kind: 'command' });
    fields.push({ at: c.offset + 1, width: 2, label: `command[${c.name}].id`, kind: 'id' }, { at: c.offset + 3, width: 2, label: `command[${c.name}].length`, kind: 'length' });
  }

  // RAM blocks: entry, used_length, mapped-ram header, bitmap, pages.
  const blocks: BlockMark[] = [];
  for (const blk of m.blocks) {
    const e = blk.entryOffset;
    const nameLen = u8(e);
    addName('block', blk.name, e);
    const lenAt = e + 1 + nameLen;
    fields.push({ at: e, width: 1, label: `ramblock[${blk.name}].name.length`, kind: 'length' });
    fields.push({ at: lenAt, width: 8, label: `ramblock[${blk.name}].used_length`, kind: 'length' });
    b(e);
    p(e + 1, lenAt, lenAt + 8);
    const mark: BlockMark = { name: blk.name, entryOffset: e, entryLength: 1 + nameLen + 8 + (blk.addr !== undefined ? 8 : 0), usedLength: blk.usedLength };
    if (blk.mappedRam) {
      const h = blk.mappedRam.headerOffset;
      mark.entryLength = h + MAPPED_RAM_HDR_SIZE - e;
      Object.assign(mark, { headerOffset: h, bitmapOffset: blk.mappedRam.bitmapOffset, bitmapSize: blk.mappedRam.bitmapSize, pagesOffset: blk.mappedRam.pagesOffset });
      fields.push(
        { at: h, width: 4, label: `ramblock[${blk.name}].mapped_ram.version`, kind: 'version' },
        { at: h + 4, width: 8, label: `ramblock[${blk.name}].mapped_ram.page_size`, kind: 'length' },
        { at: h + 12, width: 8, label: `ramblock[${blk.name}].mapped_ram.bitmap_offset`, kind: 'offset' },
        { at: h + 20, width: 8, label: `ramblock[${blk.name}].mapped_ram.pages_offset`, kind: 'offset' },
      );
      regions.push({ start: e, end: h + MAPPED_RAM_HDR_SIZE, label: `ramblock[${blk.name}].entry`, kind: 'block-entry' });
      regions.push({ start: h, end: h + MAPPED_RAM_HDR_SIZE, label: `ramblock[${blk.name}].mapped_ram`, kind: 'mapped-ram-header' });
      const bm = blk.mappedRam.bitmapOffset;
      regions.push({ start: bm, end: bm + blk.mappedRam.bitmapSize, label: `ramblock[${blk.name}].bitmap`, kind: 'bitmap' });
      const po = blk.mappedRam.pagesOffset;
      regions.push({ start: po, end: po + blk.usedLength, label: `ramblock[${blk.name}].pages`, kind: 'pages' });
      b(h, h + MAPPED_RAM_HDR_SIZE, bm, bm + blk.mappedRam.bitmapSize, po, po + blk.usedLength);
      p(h + 4, h + 12, h + 20, po + blk.pageSize, po + blk.usedLength - blk.pageSize);
    } else {
      regions.push({ start: e, end: e + mark.entryLength, label: `ramblock[${blk.name}].entry`, kind: 'block-entry' });
    }
    blocks.push(mark);
  }

  // Legacy page records name their block whenever it changes (PAGE and ZERO records without CONTINUE):
  // find every copy, so that a rename can be consistent. Legacy fixtures are small enough to search whole.
  if (!m.mappedRam && m.blocks.length && m.fileSize <= 64 << 20) {
    const all = Buffer.from(image.read(0, m.fileSize));
    const mask = BigInt(m.pageSize - 1);
    for (const blk of m.blocks) {
      const needle = Buffer.from([blk.name.length, ...Buffer.from(blk.name, 'latin1')]);
      for (let q = all.indexOf(needle, blk.entryOffset + 1); q >= 0; q = all.indexOf(needle, q + 1)) {
        if (q < 8) continue;
        const flags = Number(all.readBigUInt64BE(q - 8) & mask);
        if ((flags & RamFlag.CONTINUE) === 0 && (flags & (RamFlag.PAGE | RamFlag.ZERO)) !== 0) addName('block', blk.name, q);
      }
    }
  }

  // Legacy page records: the header before each run's first page.
  let records = 0;
  for (const blk of m.blocks) {
    if (!blk.legacy) continue;
    const nb = blk.name.length;
    for (const r of blk.legacy.runs) {
      if (records >= MAX_RECORD_MARKS) break;
      if (r.dataOffset < 0) continue;
      const named = r.dataOffset - 1 - nb >= 9 && u8(r.dataOffset - 1 - nb) === nb && latin1(r.dataOffset - nb, nb) === blk.name;
      const head = named ? r.dataOffset - 9 - nb : r.dataOffset - 8;
      fields.push({ at: head, width: 8, label: `ram.record[${blk.name}:${r.first}]`, kind: 'flags' });
      regions.push({ start: head, end: r.dataOffset + blk.pageSize, label: `ram.record[${blk.name}:${r.first}]`, kind: 'record' });
      p(head, r.dataOffset, r.dataOffset + blk.pageSize);
      records++;
    }
  }

  if (m.eofOffset !== undefined) {
    b(m.eofOffset, m.eofOffset + 1);
    fields.push({ at: m.eofOffset, width: 1, label: 'eof', kind: 'type' });
  }
  if (m.vmdesc) {
    const v = m.vmdesc;
    b(v.offset, v.offset + 5);
    p(v.offset + 1, v.offset + 6);
    regions.push({ start: v.offset, end: v.offset + 5 + v.length, label: 'vmdescription', kind: 'vmdesc' });
    fields.push({ at: v.offset, width: 1, label: 'vmdescription.type', kind: 'type' }, { at: v.offset + 1, width: 4, label: 'vmdescription.length', kind: 'length' });
  }
  await snap.close();
  const size = m.fileSize;
  for (const f of fields) {
    if (f.at < 0 || f.at + f.width > size) continue;
    const v = new DataView(image.read(f.at, f.width).buffer);
    const le = f.le ?? false;
    f.value = String(f.width === 1 ? v.getUint8(0) : f.width === 2 ? v.getUint16(0, le) : f.width === 4 ? v.getUint32(0, le) : v.getBigUint64(0, le));
  }
  return {
    name,
    size,
    streamOffset: s0,
    mappedRam: m.mappedRam,
    pageSize: m.pageSize,
    boundaries: [...bounds].filter((x) => x >= 0 && x < size).sort((x, y) => x - y),
    cutPoints: [...points].filter((x) => x >= 0 && x < size && !bounds.has(x)).sort((x, y) => x - y),
    fields: fields.filter((f) => f.at >= 0 && f.at + f.width <= size),
    regions: regions.filter((r) => r.start < r.end && r.end <= size),
    names: [...names.values()],
    blocks,
    sections: m.sections.map((s) => ({ offset: s.offset, end: s.end, name: s.name, kind: s.kind })),
    vmdesc: m.vmdesc ? { offset: m.vmdesc.offset, length: m.vmdesc.length } : undefined,
    vmdescShape: m.vmdesc
      ? { fields: m.vmdesc.desc.devices.map((d) => (Array.isArray(d.fields) ? d.fields.length : 0)), subsections: m.vmdesc.desc.devices.map((d) => (Array.isArray(d.subsections) ? d.subsections.length : 0)) }
      : undefined,
    libvirt: m.libvirt !== undefined,
  };
}
