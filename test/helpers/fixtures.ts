/**
 * The committed QEMU fixtures (fixtures/data, made by fixtures/make.ts):
 * the catalog, the files decompressed on demand, and the byte-for-byte
 * comparison with pmemsave that the fixture and interop tests share.
 *
 * Snapshots are mostly holes (a 16 MiB guest's mapped-ram file is ~24 MiB
 * of which a few hundred KiB are data; aarch64 virt's is 90 MiB), so they
 * are decompressed as sparse files: all-zero 64 KiB chunks are skipped and
 * the file is truncated to its size. Each file is decompressed once per
 * process into one temporary directory, removed at exit.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Catalog, CatalogEntry, Comparison } from '../../fixtures/make.js';
import { gunzipSparse, isZero } from '../../fixtures/unpack.js';
import type { Snapshot } from '../../reader/snapshot.js';

export type { Catalog, CatalogEntry, Comparison };

/** Bytes compared at a time: a few MiB, never a whole guest. */
export const COMPARE_CHUNK = 4 * 1024 * 1024;

/** fixtures/data, found from this file (works from test/helpers and dist/test/helpers). */
export function fixturesDataDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = path.join(dir, 'fixtures', 'data', 'catalog.json');
    if (fs.existsSync(candidate)) return path.dirname(candidate);
    const up = path.dirname(dir);
    if (up === dir) throw new Error('fixtures/data/catalog.json not found above test/helpers; run node dist/fixtures/make.js');
    dir = up;
  }
}

let catalog: Catalog | undefined;

export function loadCatalog(): Catalog {
  catalog ??= JSON.parse(fs.readFileSync(path.join(fixturesDataDir(), 'catalog.json'), 'utf8')) as Catalog;
  return catalog;
}

export function catalogEntry(name: string): CatalogEntry {
  const e = loadCatalog().fixtures.find((f) => f.name === name);
  if (!e) throw new Error(`no fixture ${name} in the catalog`);
  return e;
}

let tempDir: string | undefined;
const cache = new Map<string, Promise<string>>();

function scratch(): string {
  if (!tempDir) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-fixtures-'));
    tempDir = dir;
    process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  }
  return tempDir;
}

async function decompressed(file: string, expectedSize: number): Promise<string> {
  let p = cache.get(file);
  if (!p) {
    p = (async () => {
      const dst = path.join(scratch(), file.replace(/\.gz$/, ''));
      const size = await gunzipSparse(path.join(fixturesDataDir(), file), dst);
      if (size !== expectedSize) throw new Error(`${file} decompresses to ${size} bytes, the catalog says ${expectedSize}`);
      return dst;
    })();
    cache.set(file, p);
  }
  return p;
}

export interface FixtureFiles {
  entry: CatalogEntry;
  snap: string;
  pmem: string;
}

/** Paths of a fixture's decompressed snapshot and pmem files (decompressed once per process). */
export async function fixtureFiles(name: string): Promise<FixtureFiles> {
  const entry = catalogEntry(name);
  const [snap, pmem] = await Promise.all([decompressed(entry.snap.file, entry.snap.size), decompressed(entry.pmem.file, entry.pmem.size)]);
  return { entry, snap, pmem };
}

/** Removes the decompressed files now (they are removed at exit anyway). */
export function releaseFixtures(): void {
  if (tempDir) fs.rmSync(tempDir, { recursive: true, force: true });
  tempDir = undefined;
  cache.clear();
}

export interface Mismatch {
  /** Offset into the pmem file. */
  pmemOffset: number;
  blockOffset: number;
  expected: number;
  actual: number;
}

/** [from, to) pieces of [start, end) outside the excluded ranges. */
export function compareSegments(start: number, end: number, exclude: [number, number][]): [number, number][] {
  let segs: [number, number][] = [[start, end]];
  for (const [xf, xt] of exclude) {
    segs = segs.flatMap(([a, b]): [number, number][] => {
      if (xt <= a || xf >= b) return [[a, b]];
      const out: [number, number][] = [];
      if (a < xf) out.push([a, xf]);
      if (xt < b) out.push([xt, b]);
      return out;
    });
  }
  return segs;
}

/**
 * Compares `cmp.block` as the reader returns it with the pmem file, outside
 * the excluded ranges, COMPARE_CHUNK bytes at a time. Returns the first
 * differing byte of each differing chunk (at most `limit`), so a failure
 * says where; an empty list means byte-for-byte equal.
 */
export async function compareWithPmem(snap: Snapshot, pmemPath: string, cmp: Comparison, limit = 8): Promise<{ compared: number; mismatches: Mismatch[] }> {
  const fd = fs.openSync(pmemPath, 'r');
  const truth = Buffer.alloc(COMPARE_CHUNK);
  const got = new Uint8Array(COMPARE_CHUNK);
  const mismatches: Mismatch[] = [];
  let compared = 0;
  try {
    for (const [from, to] of compareSegments(cmp.guestAddr, cmp.guestAddr + cmp.length, cmp.exclude)) {
      for (let at = from; at < to && mismatches.length < limit; at += COMPARE_CHUNK) {
        const n = Math.min(COMPARE_CHUNK, to - at);
        const blockOffset = cmp.blockOffset + (at - cmp.guestAddr);
        const bytes = await snap.read(cmp.block, blockOffset, n, got);
        const read = fs.readSync(fd, truth, 0, n, at);
        if (read !== n) throw new Error(`pmem file ends at ${at + read}, wanted ${at + n}`);
        compared += n;
        if (Buffer.compare(Buffer.from(bytes.buffer, bytes.byteOffset, n), truth.subarray(0, n)) !== 0) {
          let i = 0;
          while (bytes[i] === truth[i]) i++;
          mismatches.push({ pmemOffset: at + i, blockOffset: blockOffset + i, expected: truth[i], actual: bytes[i] });
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return { compared, mismatches };
}

/**
 * Ranges of pages [first, end) of `block` that the reader does not list as
 * present (clear bit, never sent, or sent as a ZERO record).
 */
export function absentPageRanges(snap: Snapshot, blockName: string): [number, number][] {
  const block = snap.block(blockName);
  const out: [number, number][] = [];
  let next = 0;
  for (const run of snap.presentRuns(block)) {
    if (run.first > next) out.push([next, run.first]);
    next = run.first + run.count;
  }
  if (next < block.pages) out.push([next, block.pages]);
  return out;
}

/** Pages in the listed ranges whose bytes, as the reader returns them, are not all zero. */
export async function nonZeroPages(snap: Snapshot, blockName: string, ranges: [number, number][]): Promise<number[]> {
  const block = snap.block(blockName);
  const ps = block.pageSize;
  const buf = new Uint8Array(COMPARE_CHUNK);
  const bad: number[] = [];
  for (const [first, end] of ranges) {
    for (let p = first; p < end; ) {
      const n = Math.min(end - p, Math.floor(COMPARE_CHUNK / ps));
      const bytes = await snap.read(block, p * ps, n * ps, buf);
      if (!isZero(bytes)) {
        for (let i = 0; i < n; i++) if (!isZero(bytes.subarray(i * ps, (i + 1) * ps))) bad.push(p + i);
      }
      p += n;
    }
  }
  return bad;
}
