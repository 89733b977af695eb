/**
 * What differs between two snapshots: per RAMBlock, the page ranges that
 * were added (zero or absent in A, data in B), removed (data in A, zero or
 * absent in B) and changed (data in both, different bytes); whether the
 * machine, the layout or the device state differ.
 *
 * Memory is compared as the guest sees it: an absent page and a present
 * page of zeros are the same memory. Pages absent from both files are
 * never read (the union of both files' present runs is walked); pages
 * present in either are read a chunk at a time into two reused buffers,
 * one read per run of present pages. Two names for one file are the same
 * without reading anything.
 */
import fs from 'node:fs';
import { zeroPageOf, isZeroPage } from '../format/zero-pages.js';
import type { RamBlock } from './model.js';
import { FileSource } from './source.js';
import type { Snapshot } from './snapshot.js';

export type PageChange = 'added' | 'removed' | 'changed';

export interface PageRange {
  first: number;
  count: number;
}

export interface BlockDiff {
  block: string;
  pageSize: number;
  pages: number;
  added: PageRange[];
  removed: PageRange[];
  changed: PageRange[];
  /** Pages in each list. */
  totals: Record<PageChange, number>;
}

export interface SnapshotDiff {
  /** Memory, device state, machine and layout all equal. */
  same: boolean;
  machine?: { a?: string; b?: string };
  /** Layout differences that do not change memory (mapped-ram against legacy, page size, the stream's offset). */
  layout: string[];
  blocks: BlockDiff[];
  onlyInA: string[];
  onlyInB: string[];
  /** Blocks of one name but different sizes or page sizes: their pages are not compared. */
  resized: { block: string; a: number; b: number }[];
  devices: { same: boolean; changed: string[]; onlyInA: string[]; onlyInB: string[]; unchecked: boolean };
}

/** Pages compared at a time: two buffers of this many pages. */
const CHUNK_PAGES = 64;

export async function diffSnapshots(a: Snapshot, b: Snapshot): Promise<SnapshotDiff> {
  const machineA = a.model.configuration?.machine;
  const machineB = b.model.configuration?.machine;
  const layout: string[] = [];
  if (a.model.mappedRam !== b.model.mappedRam) layout.push(`A is ${a.model.mappedRam ? 'mapped-ram' : 'legacy'}, B is ${b.model.mappedRam ? 'mapped-ram' : 'legacy'}`);
  if (a.model.pageSize !== b.model.pageSize) layout.push(`page size ${a.model.pageSize} in A, ${b.model.pageSize} in B`);
  const namesB = new Set(b.blocks.map((x) => x.name));
  const namesA = new Set(a.blocks.map((x) => x.name));
  const sameFile = sameInode(a, b);
  const blocks: BlockDiff[] = [];
  const resized: SnapshotDiff['resized'] = [];
  for (const blockA of a.blocks) {
    if (!namesB.has(blockA.name)) continue;
    const blockB = b.block(blockA.name);
    if (blockA.usedLength !== blockB.usedLength || blockA.pageSize !== blockB.pageSize) {
      resized.push({ block: blockA.name, a: blockA.usedLength, b: blockB.usedLength });
      continue;
    }
    blocks.push(sameFile ? emptyDiff(blockA) : await diffBlock(a, blockA, b, blockB));
  }
  const devices = sameFile ? { same: true, changed: [], onlyInA: [], onlyInB: [], unchecked: false } : await diffDevices(a, b);
  const onlyInA = a.blocks.filter((x) => !namesB.has(x.name)).map((x) => x.name);
  const onlyInB = b.blocks.filter((x) => !namesA.has(x.name)).map((x) => x.name);
  const memorySame = blocks.every((d) => d.added.length + d.removed.length + d.changed.length === 0);
  const same = memorySame && devices.same && machineA === machineB && !layout.length && !onlyInA.length && !onlyInB.length && !resized.length;
  return { same, ...(machineA !== machineB ? { machine: { a: machineA, b: machineB } } : {}), layout, blocks, onlyInA, onlyInB, resized, devices };
}

function sameInode(a: Snapshot, b: Snapshot): boolean {
  if (!(a.source instanceof FileSource) || !(b.source instanceof FileSource)) return false;
  if (a.model.streamOffset !== b.model.streamOffset) return false;
  const x = fs.fstatSync(a.source.fd);
  const y = fs.fstatSync(b.source.fd);
  return x.dev === y.dev && x.ino === y.ino;
}

function emptyDiff(block: RamBlock): BlockDiff {
  return { block: block.name, pageSize: block.pageSize, pages: block.pages, added: [], removed: [], changed: [], totals: { added: 0, removed: 0, changed: 0 } };
}

/** The union of sorted run lists (each file's present runs of one block), cut into pieces of at most `max` pages. */
export function* unionRuns(lists: Iterator<PageRange>[], max: number): Generator<PageRange> {
  const heads = lists.map((it) => it.next());
  let cur: PageRange | undefined;
  const emit = function* (r: PageRange): Generator<PageRange> {
    for (let at = r.first; at < r.first + r.count; at += max) yield { first: at, count: Math.min(max, r.first + r.count - at) };
  };
  for (;;) {
    // The list whose next run starts first (a handful of lists: a scan is enough).
    let i = -1;
    for (let k = 0; k < heads.length; k++) if (!heads[k].done && (i < 0 || heads[k].value.first < heads[i].value.first)) i = k;
    if (i < 0) break;
    const r = heads[i].value as PageRange;
    heads[i] = lists[i].next();
    if (cur && r.first <= cur.first + cur.count) {
      cur.count = Math.max(cur.count, r.first + r.count - cur.first);
    } else {
      if (cur) yield* emit(cur);
      cur = { first: r.first, count: r.count };
    }
  }
  if (cur) yield* emit(cur);
}

/** How a page of B compares with the same page of A. */
export const PageKind = { SAME: 0, ADDED: 1, REMOVED: 2, CHANGED: 3 } as const;

export interface ComparedChunk {
  /** First page of the chunk. */
  first: number;
  count: number;
  /** B's bytes of the chunk (a buffer reused for the next chunk). */
  bytesB: Buffer;
  /** A's bytes of the chunk (reused too). */
  bytesA: Buffer;
  /** PageKind of each page of the chunk (reused too). */
  kinds: Uint8Array;
}

/**
 * Compares a block of A with the same block of B, a chunk of pages at a
 * time, over the union of both files' present runs: pages absent from
 * both are never read. Used by diff and by delta.
 */
export async function* comparePages(a: Snapshot, blockA: RamBlock, b: Snapshot, blockB: RamBlock): AsyncGenerator<ComparedChunk> {
  const ps = blockA.pageSize;
  const bufA = Buffer.allocUnsafe(CHUNK_PAGES * ps);
  const bufB = Buffer.allocUnsafe(CHUNK_PAGES * ps);
  const kinds = new Uint8Array(CHUNK_PAGES);
  const zero = zeroPageOf(ps);
  for (const r of unionRuns([a.presentRuns(blockA), b.presentRuns(blockB)], CHUNK_PAGES)) {
    const n = r.count * ps;
    await a.read(blockA, r.first * ps, n, bufA);
    await b.read(blockB, r.first * ps, n, bufB);
    for (let p = 0; p < r.count; p++) {
      const at = p * ps;
      if (bufA.compare(bufB, at, at + ps, at, at + ps) === 0) kinds[p] = PageKind.SAME;
      else if (isZeroPage(bufA, p, zero)) kinds[p] = PageKind.ADDED;
      else kinds[p] = isZeroPage(bufB, p, zero) ? PageKind.REMOVED : PageKind.CHANGED;
    }
    yield { first: r.first, count: r.count, bytesB: bufB, bytesA: bufA, kinds };
  }
}

const KIND_NAMES: Record<number, PageChange> = { [PageKind.ADDED]: 'added', [PageKind.REMOVED]: 'removed', [PageKind.CHANGED]: 'changed' };

async function diffBlock(a: Snapshot, blockA: RamBlock, b: Snapshot, blockB: RamBlock): Promise<BlockDiff> {
  const d = emptyDiff(blockA);
  for await (const c of comparePages(a, blockA, b, blockB)) {
    for (let p = 0; p < c.count; p++) {
      if (c.kinds[p] === PageKind.SAME) continue;
      const kind = KIND_NAMES[c.kinds[p]];
      const list = d[kind];
      const last = list[list.length - 1];
      if (last && last.first + last.count === c.first + p) last.count++;
      else list.push({ first: c.first + p, count: 1 });
      d.totals[kind]++;
    }
  }
  return d;
}

/** Bytes of a device section compared at a time. */
const DEVICE_CHUNK = 64 << 10;

/**
 * Device sections by name and instance, compared by the bytes of their
 * contents (the section header's id may differ between two saves of one
 * VM, the contents may not).
 */
async function diffDevices(a: Snapshot, b: Snapshot): Promise<SnapshotDiff['devices']> {
  const key = (d: { section: { name: string; instanceId: number } }): string => `${d.section.name} (${d.section.instanceId})`;
  const inB = new Map(b.model.devices.map((d) => [key(d), d]));
  const inA = new Set(a.model.devices.map(key));
  const changed: string[] = [];
  const bufA = Buffer.allocUnsafe(DEVICE_CHUNK);
  const bufB = Buffer.allocUnsafe(DEVICE_CHUNK);
  for (const da of a.model.devices) {
    const db = inB.get(key(da));
    if (!db) continue;
    const [fromA, toA] = contents(a, da.section);
    const [fromB, toB] = contents(b, db.section);
    let equal = toA - fromA === toB - fromB && da.section.versionId === db.section.versionId;
    for (let at = 0; equal && at < toA - fromA; at += DEVICE_CHUNK) {
      const n = Math.min(DEVICE_CHUNK, toA - fromA - at);
      await a.source.read(fromA + at, n, `section[${da.section.name}]`, bufA);
      await b.source.read(fromB + at, n, `section[${db.section.name}]`, bufB);
      equal = bufA.compare(bufB, 0, n, 0, n) === 0;
    }
    if (!equal) changed.push(key(da));
  }
  const onlyInA = a.model.devices.map(key).filter((k) => !inB.has(k));
  const onlyInB = b.model.devices.map(key).filter((k) => !inA.has(k));
  const unchecked = [...a.model.devices, ...b.model.devices].some((d) => !d.checked);
  return { same: !changed.length && !onlyInA.length && !onlyInB.length, changed, onlyInA, onlyInB, unchecked };
}

/** [start, end) of a device section's contents: after the header (type, id, name, instance, version), before the footer. */
function contents(s: Snapshot, sec: { offset: number; end: number; name: string }): [number, number] {
  const start = sec.offset + 1 + 4 + 1 + Buffer.byteLength(sec.name, 'latin1') + 4 + 4;
  const end = sec.end - (s.model.sectionFooters === false ? 0 : 5);
  return [start, Math.max(start, end)];
}
