/**
 * Builds small or virtually huge migration streams for tests, from the
 * format codecs, and records where every field landed so a test can
 * corrupt exactly one of them. Real QEMU files (fixtures/) are the ground
 * truth; these streams cover what QEMU cannot be made to write.
 */
import { encodeConfiguration, concat } from '../../format/configuration.js';
import { MAPPED_RAM_HDR_VERSION, RamFlag, Section } from '../../format/constants.js';
import { latin1Bytes } from '../../format/cursor.js';
import { encodeMappedRamHeader, mappedRamPlacement } from '../../format/mapped-ram.js';
import { bitmapBytes, setBit } from '../../format/bitmap.js';
import { encodeCommand, encodeFileHeader, encodeFooter, encodeSectionPart, encodeSectionStart } from '../../format/section.js';
import { VirtualSource, BufferSource } from '../../reader/source.js';
import { randomPage } from '../../writer/testing.js';

export interface SynthBlock {
  name: string;
  usedLength: number;
  /** Page number -> page bytes (pageSize long). Pages not listed are absent. */
  pages?: Map<number, Uint8Array>;
}

export interface SynthOptions {
  mappedRam?: boolean;
  pageSize?: number;
  machine?: string;
  /** Bytes before the stream (as with file:PATH,offset=N). */
  streamOffset?: number;
  blocks: SynthBlock[];
  /** Add a small device section and its description (default true). */
  devices?: boolean;
  /** Legacy: send every present page this many times, with different bytes before the last (default 1). */
  legacyRepeats?: number;
  /** mapped-ram: bytes left in the page region under a clear bit, to check they read as zero. */
  staleBytes?: boolean;
  /** A configuration/uuid subsection (QEMU's validate-uuid). */
  uuid?: string;
}

export interface SynthLayout {
  ramSectionOffset: number;
  memSizeOffset: number;
  blocks: { name: string; entryOffset: number; headerOffset: number; bitmapOffset: number; bitmapSize: number; pagesOffset: number }[];
  tailOffset: number;
  deviceSectionOffset?: number;
  eofOffset: number;
  vmdescOffset?: number;
}

export interface SynthFile {
  size: number;
  extents: { offset: number; data: Uint8Array }[];
  layout: SynthLayout;
  source(): VirtualSource;
  /** The whole file in memory (only for small files). */
  bytes(): Uint8Array;
}

/** The synthetic device's description (a `timer` with an int64, a bool and a two-element array). */
export const DEVICE_DESC = {
  name: 'timer',
  instance_id: 0,
  vmsd_name: 'timer',
  version: 2,
  fields: [
    { name: 'cpu_ticks_offset', type: 'int64', size: 8 },
    { name: 'enabled', type: 'bool', size: 1 },
    { name: 'regs', array_len: 2, type: 'uint16', size: 2 },
  ],
};
const DEVICE_BYTES = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, 1, 0x12, 0x34, 0x56, 0x78);

function be64(v: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), false);
  return b;
}

/** Sequential writer that collects extents and skips over page regions. */
class Builder {
  extents: { offset: number; data: Uint8Array }[] = [];
  pos: number;
  private pending: Uint8Array[] = [];
  private pendingAt: number;
  constructor(start: number) {
    this.pos = start;
    this.pendingAt = start;
  }
  put(b: Uint8Array): number {
    const at = this.pos;
    this.pending.push(b);
    this.pos += b.length;
    return at;
  }
  flush(): void {
    if (this.pending.length) this.extents.push({ offset: this.pendingAt, data: concat(this.pending) });
    this.pending = [];
    this.pendingAt = this.pos;
  }
  seek(to: number): void {
    this.flush();
    this.pos = to;
    this.pendingAt = to;
  }
  at(offset: number, data: Uint8Array): void {
    this.extents.push({ offset, data });
  }
}

export function synthesize(opts: SynthOptions): SynthFile {
  const ps = opts.pageSize ?? 4096;
  const mapped = opts.mappedRam ?? true;
  const withDevices = opts.devices ?? true;
  const b = new Builder(opts.streamOffset ?? 0);
  if (opts.streamOffset) b.at(0, new Uint8Array(opts.streamOffset).fill(0xa5));
  b.put(encodeFileHeader());
  b.put(
    encodeConfiguration({
      machine: opts.machine ?? 'pc-q35-10.0',
      capabilities: mapped ? ['mapped-ram'] : [],
      ...(ps !== 4096 && ps !== 8192 ? { targetPageBits: Math.log2(ps) } : {}),
      ...(opts.uuid ? { uuid: opts.uuid } : {}),
    }),
  );
  const ramId = 1;
  const ramSectionOffset = b.put(encodeSectionStart({ type: Section.START, sectionId: ramId, idstr: 'ram', instanceId: 0, versionId: 4 }));
  const total = opts.blocks.reduce((n, x) => n + x.usedLength, 0);
  const memSizeOffset = b.put(be64(BigInt(total) | BigInt(RamFlag.MEM_SIZE)));
  const layout: SynthLayout = { ramSectionOffset, memSizeOffset, blocks: [], tailOffset: 0, eofOffset: 0 };
  for (const blk of opts.blocks) {
    const name = latin1Bytes(blk.name);
    const entryOffset = b.put(Uint8Array.of(name.length));
    b.put(name);
    b.put(be64(blk.usedLength));
    if (!mapped) {
      layout.blocks.push({ name: blk.name, entryOffset, headerOffset: 0, bitmapOffset: 0, bitmapSize: 0, pagesOffset: 0 });
      continue;
    }
    const headerOffset = b.pos;
    const place = mappedRamPlacement(headerOffset + 28, blk.usedLength, ps);
    b.put(encodeMappedRamHeader({ version: MAPPED_RAM_HDR_VERSION, pageSize: ps, bitmapOffset: place.bitmapOffset, pagesOffset: place.pagesOffset }));
    const pages = Math.floor(blk.usedLength / ps);
    const bm = new Uint8Array(bitmapBytes(pages));
    for (const [p, data] of blk.pages ?? []) {
      setBit(bm, p);
      b.at(place.pagesOffset + p * ps, data);
    }
    if (opts.staleBytes) {
      // A page rewritten as zero keeps its old bytes under a clear bit.
      for (let p = 0; p < pages; p++) {
        if (!blk.pages?.has(p)) {
          b.at(place.pagesOffset + p * ps, new Uint8Array(ps).fill(0xee));
          break;
        }
      }
    }
    b.put(bm);
    layout.blocks.push({ name: blk.name, entryOffset, headerOffset, bitmapOffset: place.bitmapOffset, bitmapSize: bm.length, pagesOffset: place.pagesOffset });
    b.seek(place.streamResumes);
  }
  b.put(be64(RamFlag.EOS));
  b.put(encodeFooter(ramId));
  layout.tailOffset = b.pos;
  // Iteration part: legacy pages go here; mapped-ram parts hold only EOS.
  b.put(encodeSectionPart(Section.PART, ramId));
  if (!mapped) {
    const repeats = opts.legacyRepeats ?? 1;
    for (let round = 0; round < repeats; round++) {
      opts.blocks.forEach((blk) => {
        let first = true;
        for (const [p, data] of [...(blk.pages ?? [])].sort((x, y) => x[0] - y[0])) {
          const stale = round < repeats - 1;
          const zero = data.every((x) => x === 0);
          const flags = (zero && !stale ? RamFlag.ZERO : RamFlag.PAGE) | (first ? 0 : RamFlag.CONTINUE);
          b.put(be64(BigInt(p * ps) | BigInt(flags)));
          if (first) {
            const nb = latin1Bytes(blk.name);
            b.put(Uint8Array.of(nb.length));
            b.put(nb);
          }
          if (flags & RamFlag.ZERO) b.put(Uint8Array.of(0));
          else b.put(stale ? new Uint8Array(ps).fill(0x77) : data);
          first = false;
        }
      });
      b.put(be64(RamFlag.MULTIFD_FLUSH));
    }
  }
  b.put(be64(RamFlag.EOS));
  b.put(encodeFooter(ramId));
  b.put(encodeCommand({ command: 11, data: new Uint8Array(0) }));
  b.put(encodeSectionPart(Section.END, ramId));
  b.put(be64(RamFlag.EOS));
  b.put(encodeFooter(ramId));
  if (withDevices) {
    layout.deviceSectionOffset = b.put(encodeSectionStart({ type: Section.FULL, sectionId: 0, idstr: 'timer', instanceId: 0, versionId: 2 }));
    b.put(DEVICE_BYTES);
    b.put(encodeFooter(0));
  }
  layout.eofOffset = b.put(Uint8Array.of(Section.EOF));
  if (withDevices) {
    const json = new TextEncoder().encode(JSON.stringify({ page_size: ps, devices: [DEVICE_DESC] }));
    const h = new Uint8Array(5);
    h[0] = Section.VMDESCRIPTION;
    new DataView(h.buffer).setUint32(1, json.length, false);
    layout.vmdescOffset = b.put(h);
    b.put(json);
  }
  b.flush();
  const size = b.pos;
  const extents = b.extents;
  return {
    size,
    extents,
    layout,
    source: () => new VirtualSource(size, extents),
    bytes: () => {
      const out = new Uint8Array(size);
      for (const e of extents) out.set(e.data, e.offset);
      return out;
    },
  };
}

export function bufferSource(bytes: Uint8Array): BufferSource {
  return new BufferSource(bytes);
}

/** Deterministic page contents, seeded: ramsnap/testing's random page. */
export const pageBytes = randomPage;
