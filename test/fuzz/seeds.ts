/**
 * Small seeds for the fast fuzzer: the real QEMU fixtures cut down to a
 * few pages per RAM block (their configuration, device sections and
 * description kept byte for byte), one with many blocks added, and a few
 * snapshots written by ramsnap's own writer from writer/testing.ts. Each
 * is a SparseImage with its structure map, all held in memory.
 *
 * Why cut down: a real q35 bitmap has thousands of pages and an aarch64 or
 * ppc64 guest is 150-270 MiB of sparse file; every read, run and map over
 * them costs per page. A seed of 8 pages a block reaches the same rules
 * (every structure is still there) for a small fraction of the work.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { bitmapBytes, setBit, testBit } from '../../format/bitmap.js';
import { MAPPED_RAM_HDR_SIZE, RamFlag } from '../../format/constants.js';
import { latin1Bytes } from '../../format/cursor.js';
import { encodeMappedRamHeader, mappedRamPlacement } from '../../format/mapped-ram.js';
import type { SnapshotModel } from '../../reader/model.js';
import { Snapshot } from '../../reader/snapshot.js';
import { writeDelta } from '../../writer/delta.js';
import { arbSnapshotCase, writeSnapshot } from '../../writer/testing.js';
import type { Seed } from './corpus.js';
import { CHUNK, SparseImage } from './image.js';
import { ImageSource, buildFixtureMap } from './map.js';

/** Pages kept of each block of a cut-down fixture. */
export const SEED_PAGES = 8;
/**
 * Device sections larger than this are left out of a cut-down fixture:
 * decoding them (a 19 KiB ICH9 state, 4 KiB of vmmouse queue) and parsing
 * their part of the description is most of an open. The `~devices` seed
 * keeps them all.
 */
export const SEED_DEVICE_BYTES = 512;
/** Blocks added to the many-blocks seed. */
const EXTRA_BLOCKS = 40;

const be64 = (v: bigint): Uint8Array => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v, false);
  return b;
};

interface NewBlock {
  /** Name as the file spells it (latin1). */
  name: Uint8Array;
  usedLength: number;
  /** Page index -> where its bytes are in the source image. */
  pages: Map<number, number>;
}

/**
 * A mapped-ram fixture rebuilt with each block cut to `maxPages` pages
 * (and `extra` blocks of a few pages appended) and its device sections
 * over `maxDevice` bytes left out (with their entries in the
 * description): the bytes before the RAM section's total and the rest of
 * the stream after the last page region are the fixture's own. Undefined when the fixture is not a
 * complete mapped-ram file laid out as QEMU lays one out.
 */
export async function cutDown(name: string, image: SparseImage, offset: number | undefined, maxPages = SEED_PAGES, extra = 0, maxDevice = SEED_DEVICE_BYTES): Promise<SparseImage | undefined> {
  const snap = await Snapshot.open(new ImageSource(image, name), { lenient: true, offset });
  const m = snap.model;
  await snap.close();
  if (m.error || !m.blocks.length) return undefined;
  const out = new SparseImage(0, new Map());
  if (!m.mappedRam) return withoutLargeDevices(image, m, out, 0, 0, maxDevice);
  if (m.blocks.some((b) => !b.mappedRam || !b.bitmap)) return undefined;
  const ram = m.sections.find((s) => s.sectionId === m.ramSectionId && s.kind === 'start');
  if (!ram) return undefined;
  const memSizeAt = ram.offset + 14 + image.read(ram.offset + 5, 1)[0];
  if (memSizeAt !== m.blocks[0].entryOffset - 8) return undefined;
  const ps = m.blocks[0].pageSize;
  const blocks: NewBlock[] = [];
  for (const [i, b] of m.blocks.entries()) {
    const mr = b.mappedRam as NonNullable<typeof b.mappedRam>;
    const next = m.blocks[i + 1];
    // QEMU's layout: each entry starts where the previous page region ends.
    if (next && next.entryOffset !== mr.pagesOffset + b.usedLength) return undefined;
    const keep = Math.min(b.pages, maxPages);
    const pages = new Map<number, number>();
    for (let p = 0; p < keep; p++) if (testBit(b.bitmap as Uint8Array, p)) pages.set(p, mr.pagesOffset + p * b.pageSize);
    const usedLength = b.usedLength <= keep * b.pageSize ? b.usedLength : keep * b.pageSize;
    blocks.push({ name: image.read(b.entryOffset + 1, image.read(b.entryOffset, 1)[0]), usedLength, pages });
  }
  for (let k = 0; k < extra; k++) {
    // Pages taken from the first block's kept pages, so the extra blocks hold real guest bytes.
    const src = [...blocks[0].pages.values()];
    const pages = new Map<number, number>();
    for (let p = 0; p < 1 + (k % 4); p++) if (src.length) pages.set(p, src[(k + p) % src.length]);
    blocks.push({ name: latin1Bytes(`fuzz-extra-${k}`), usedLength: (1 + (k % 4)) * ps, pages });
  }
  const last = m.blocks[m.blocks.length - 1];
  const tailStart = (last.mappedRam as NonNullable<typeof last.mappedRam>).pagesOffset + last.usedLength;

  out.write(0, image.read(0, memSizeAt));
  const flags = BigInt.asUintN(64, new DataView(image.read(memSizeAt, 8).buffer).getBigUint64(0, false)) & BigInt(ps - 1);
  out.write(memSizeAt, be64(BigInt(blocks.reduce((n, b) => n + b.usedLength, 0)) | flags | BigInt(RamFlag.MEM_SIZE)));
  let at = memSizeAt + 8;
  for (const b of blocks) {
    out.write(at, Uint8Array.of(b.name.length, ...b.name));
    at += 1 + b.name.length;
    out.write(at, be64(BigInt(b.usedLength)));
    at += 8;
    const place = mappedRamPlacement(at + MAPPED_RAM_HDR_SIZE, b.usedLength, ps);
    out.write(at, encodeMappedRamHeader({ version: 1, pageSize: ps, bitmapOffset: place.bitmapOffset, pagesOffset: place.pagesOffset }));
    const bm = new Uint8Array(bitmapBytes(Math.floor(b.usedLength / ps)));
    for (const [p, from] of b.pages) {
      setBit(bm, p);
      out.write(place.pagesOffset + p * ps, image.read(from, ps));
    }
    out.write(place.bitmapOffset, bm);
    at = place.streamResumes;
  }
  out.resize(at);
  return withoutLargeDevices(image, m, out, at, tailStart, maxDevice);
}

/**
 * Copies `image` from `tailStart` to the end onto `out` at `at`, without
 * the device sections over `maxDevice` bytes and their entries in the
 * description.
 */
function withoutLargeDevices(image: SparseImage, m: SnapshotModel, out: SparseImage, at: number, tailStart: number, maxDevice: number): SparseImage {
  const dropped = m.sections.filter((s) => s.kind === 'full' && s.offset >= tailStart && s.end - s.offset > maxDevice);
  const vmdesc = m.vmdesc && m.vmdesc.offset >= tailStart ? m.vmdesc : undefined;
  let from = tailStart;
  const copy = (to: number): void => {
    for (const e of image.extents(from, to - from)) out.write(at + (e.offset - from), e.data);
    at += to - from;
    out.resize(at);
  };
  for (const s of dropped) {
    copy(s.offset);
    from = s.end;
  }
  if (vmdesc && dropped.length) {
    copy(vmdesc.offset);
    const doc = JSON.parse(Buffer.from(image.read(vmdesc.offset + 5, vmdesc.length)).toString('utf8')) as { devices?: { name: string; instance_id: number }[] };
    doc.devices = doc.devices?.filter((d) => !dropped.some((s) => s.name === d.name && s.instanceId === d.instance_id));
    const json = Buffer.from(JSON.stringify(doc), 'utf8');
    const head = new Uint8Array(5);
    head[0] = image.read(vmdesc.offset, 1)[0];
    new DataView(head.buffer).setUint32(1, json.length, false);
    out.write(at, head);
    out.write(at + 5, json);
    at += 5 + json.length;
    from = vmdesc.offset + 5 + vmdesc.length;
  }
  copy(image.size);
  return out;
}

/**
 * A delta (`ramsnap delta`) of `base` against a copy of it whose first
 * block's first page changed: its reference, for diff and apply, is `base`.
 */
async function deltaSeed(base: Seed): Promise<Seed | undefined> {
  const b = base.map.blocks.find((x) => x.pagesOffset !== undefined && x.bitmapOffset !== undefined);
  if (!b) return undefined;
  const neu = base.image.clone();
  neu.write(b.pagesOffset as number, new Uint8Array(4096).fill(0x5a));
  neu.write(b.bitmapOffset as number, Uint8Array.of(base.image.read(b.bitmapOffset as number, 1)[0] | 1));
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'ramsnap-fuzz-delta-'));
  try {
    const open = (img: SparseImage): Promise<Snapshot> => Snapshot.open(new ImageSource(img), { offset: base.offset });
    const file = path.join(dir, 'delta.snap');
    await writeDelta(await open(base.image), await open(neu), file);
    const image = imageOfFile(file);
    const name = base.name.replace(/~.*$/, '~delta');
    return { name, image, map: await buildFixtureMap(name, image), reference: base.name };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** A few snapshots written by ramsnap's SnapshotWriter (many blocks, few pages, odd names), read back as images. */
async function writerSeeds(seed: number, count: number): Promise<{ name: string; image: SparseImage; offset?: number }[]> {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'ramsnap-fuzz-seeds-'));
  try {
    const cases = fc.sample(arbSnapshotCase({ minBlocks: 3, maxBlocks: 12, maxTotalPages: 256, layout: 'varied' }), { seed, numRuns: count });
    const out: { name: string; image: SparseImage; offset?: number }[] = [];
    for (const [i, c] of cases.entries()) {
      const file = path.join(dir, `w${i}.snap`);
      const model = await writeSnapshot(file, c.set, c.ops);
      out.push({ name: `writer-${i}`, image: imageOfFile(file), offset: model.streamOffset || undefined });
    }
    return out;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** A sparse file read into an image, chunk by chunk (its holes are not read). */
function imageOfFile(file: string): SparseImage {
  const buf = fs.readFileSync(file);
  const chunks = new Map<number, Uint8Array>();
  for (let at = 0; at < buf.length; at += CHUNK) {
    const c = buf.subarray(at, Math.min(buf.length, at + CHUNK));
    if (c.some((x) => x !== 0)) {
      const keep = new Uint8Array(CHUNK);
      keep.set(c);
      chunks.set(at / CHUNK, keep);
    }
  }
  return new SparseImage(buf.length, chunks);
}

/**
 * The fast fuzzer's seeds from the real fixtures: each mapped-ram fixture
 * cut down, the first also with many blocks added; legacy fixtures (a few
 * hundred KiB already) and fixtures that cannot be cut stay whole. Then
 * `writers` snapshots of ramsnap's own writer.
 */
export async function smallSeeds(fixtures: Seed[], seed: number, writers = 4): Promise<Seed[]> {
  const out: Seed[] = [];
  // The many-blocks seed: q35's own device state (the one machine every tool knows), else the first that can be cut.
  const manyFrom = fixtures.find((f) => f.name === 'q35-mapped-ram')?.name;
  let many = false;
  for (const f of fixtures) {
    const small = await cutDown(f.name, f.image, f.offset);
    if (!small) {
      out.push(f);
      continue;
    }
    out.push({ name: `${f.name}~small`, image: small, offset: f.offset, map: await buildFixtureMap(`${f.name}~small`, small, f.offset) });
    if (!many && (manyFrom === undefined || f.name === manyFrom)) {
      const big = await cutDown(f.name, f.image, f.offset, 2, EXTRA_BLOCKS);
      // And the same fixture with all its device sections: the large ones reach decoding paths the small ones do not.
      const devices = await cutDown(f.name, f.image, f.offset, SEED_PAGES, 0, Infinity);
      if (big && devices) {
        many = true;
        const delta = await deltaSeed(out[out.length - 1]);
        if (delta) out.push(delta);
        out.push({ name: `${f.name}~many`, image: big, offset: f.offset, map: await buildFixtureMap(`${f.name}~many`, big, f.offset) });
        out.push({ name: `${f.name}~devices`, image: devices, offset: f.offset, map: await buildFixtureMap(`${f.name}~devices`, devices, f.offset) });
      }
    }
  }
  for (const w of await writerSeeds(seed, writers)) out.push({ ...w, map: await buildFixtureMap(w.name, w.image, w.offset) });
  return out;
}

