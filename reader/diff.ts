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
import type { PresentRun, Snapshot } from './snapshot.js';

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

/** The union of two sorted run lists, cut into pieces of at most `max` pages. */
function* unionRuns(x: Iterator<PresentRun>, y: Iterator<PresentRun>, max: number): Generator<PageRange> {
  let rx = x.next();
  let ry = y.next();
  let cur: PageRange | undefined;
  const take = (r: PresentRun): PageRange | undefined => {
    if (cur && r.first <= cur.first + cur.count) {
      cur.count = Math.max(cur.count, r.first + r.count - cur.first);
      return undefined;
    }
    const done = cur;
    cur = { first: r.first, count: r.count };
    return done;
  };
  const emit = function* (r: PageRange): Generator<PageRange> {
    for (let at = r.first; at < r.first + r.count; at += max) yield { first: at, count: Math.min(max, r.first + r.count - at) };
  };
  while (!rx.done || !ry.done) {
    let done: PageRange | undefined;
    if (ry.done || (!rx.done && rx.value.first <= ry.value.first)) {
      done = take(rx.value);
      rx = x.next();
    } else {
      done = take(ry.value);
      ry = y.next();
    }
    if (done) yield* emit(done);
  }
  if (cur) yield* emit(cur);
}

async function diffBlock(a: Snapshot, blockA: RamBlock, b: Snapshot, blockB: RamBlock): Promise<BlockDiff> {
  const d = emptyDiff(blockA);
  const ps = blockA.pageSize;
  const bufA = Buffer.allocUnsafe(CHUNK_PAGES * ps);
  const bufB = Buffer.allocUnsafe(CHUNK_PAGES * ps);
  const zero = zeroPageOf(ps);
  const note = (kind: PageChange, page: number): void => {
    const list = d[kind];
    const last = list[list.length - 1];
    if (last && last.first + last.count === page) last.count++;
    else list.push({ first: page, count: 1 });
    d.totals[kind]++;
  };
  const runs = unionRuns(a.presentRuns(blockA)[Symbol.iterator](), b.presentRuns(blockB)[Symbol.iterator](), CHUNK_PAGES);
  for (const r of runs) {
    const n = r.count * ps;
    await a.read(blockA, r.first * ps, n, bufA);
    await b.read(blockB, r.first * ps, n, bufB);
    for (let p = 0; p < r.count; p++) {
      const at = p * ps;
      if (bufA.compare(bufB, at, at + ps, at, at + ps) === 0) continue;
      const za = isZeroPage(bufA, p, zero);
      const zb = isZeroPage(bufB, p, zero);
      note(za ? 'added' : zb ? 'removed' : 'changed', r.first + p);
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
