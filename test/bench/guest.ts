/**
 * Guest memory content for the benchmark: which pages are non-zero and what
 * they hold, written either as QEMU's memory backing file (QEMU then saves
 * it) or straight into a synthetic snapshot when QEMU is missing.
 *
 * The layout alternates runs of present and absent pages whose lengths are
 * powers of two from 1 to 512 pages, so about half of memory is non-zero
 * and the extractor sees both long runs and single pages, as in a guest
 * that has been up for a while. Every present page starts with its page
 * number + 1, so no present page is all-zero (QEMU would skip it) and no two
 * are equal.
 */
import fs from 'node:fs';
import { HoleMap, type DataExtent } from '../../reader/holes.js';
import { synthesize } from '../helpers/synth.js';

export const PAGE_SIZE = 4096;
export const GiB = 2 ** 30;
export const MiB = 2 ** 20;

/** A run of pages that are all present (non-zero) or all absent (zero). */
export interface PageRun {
  firstPage: number;
  pages: number;
  present: boolean;
}

/** Longest run, in pages (2 MiB: a huge page's worth). */
const MAX_RUN_LOG2 = 9;

/** xorshift32: deterministic, so every run of the bench sees the same guest. */
function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

export function* pageRuns(totalPages: number, seed = 0x5eed): Generator<PageRun> {
  const next = xorshift(seed);
  let present = true;
  for (let p = 0; p < totalPages; ) {
    const pages = Math.min(totalPages - p, 2 ** (next() % (MAX_RUN_LOG2 + 1)));
    yield { firstPage: p, pages, present };
    p += pages;
    present = !present;
  }
}

/**
 * Fills page contents from a 16 MiB pseudo-random pool: generating 1 GiB of
 * fresh random bytes takes ~2 s here, copying from a pool ~0.1 s.
 */
export class PageFiller {
  private readonly pool: Buffer;
  private readonly poolPages: number;
  constructor(seed = 0xc0ffee) {
    const words = new Uint32Array((16 * MiB) / 4);
    const next = xorshift(seed);
    for (let i = 0; i < words.length; i++) words[i] = next();
    this.pool = Buffer.from(words.buffer);
    this.poolPages = this.pool.length / PAGE_SIZE;
  }

  /** Writes pages [firstPage, firstPage + pages) of guest memory into `out` at 0. */
  fill(out: Buffer, firstPage: number, pages: number): void {
    const from = (firstPage * 7919) % (this.poolPages - pages + 1);
    this.pool.copy(out, 0, from * PAGE_SIZE, (from + pages) * PAGE_SIZE);
    for (let i = 0; i < pages; i++) out.writeBigUInt64LE(BigInt(firstPage + i + 1), i * PAGE_SIZE);
  }
}

/**
 * Writes the whole of guest memory to `path`, zero pages included. The
 * file must have no holes: QEMU maps it shared, and reading a hole through
 * a shared mapping allocates a page per fault, which doubled QEMU's save
 * time here and would measure the backing store instead of the save.
 * Returns the bytes of non-zero pages.
 */
export function writeMemoryFile(path: string, memBytes: number): number {
  const fd = fs.openSync(path, 'w');
  try {
    const filler = new PageFiller();
    const buf = Buffer.alloc((2 ** MAX_RUN_LOG2) * PAGE_SIZE);
    let present = 0;
    for (const r of pageRuns(memBytes / PAGE_SIZE)) {
      const bytes = r.pages * PAGE_SIZE;
      if (r.present) {
        filler.fill(buf, r.firstPage, r.pages);
        present += bytes;
      } else {
        buf.fill(0, 0, bytes);
      }
      writeFully(fd, buf.subarray(0, bytes), r.firstPage * PAGE_SIZE);
    }
    return present;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A mapped-ram snapshot built without QEMU (test/helpers/synth.ts), for when
 * QEMU is missing: one block `pc.ram` with the layout above, or with only
 * `onlyPages` present (for a sparse 64 GiB guest). The synthesizer is given
 * one shared page per present page so it stays small in memory; the real
 * contents are written over it afterwards.
 */
export function writeSyntheticSnapshot(path: string, memBytes: number, onlyPages?: number[]): number {
  const placeholder = new Uint8Array(PAGE_SIZE).fill(1);
  const pages = new Map<number, Uint8Array>();
  const runs = onlyPages ? onlyPages.map((p) => ({ firstPage: p, pages: 1, present: true })) : [...pageRuns(memBytes / PAGE_SIZE)];
  for (const r of runs) if (r.present) for (let i = 0; i < r.pages; i++) pages.set(r.firstPage + i, placeholder);
  const synth = synthesize({ blocks: [{ name: 'pc.ram', usedLength: memBytes, pages }] });
  const pagesOffset = synth.layout.blocks[0].pagesOffset;
  const fd = fs.openSync(path, 'w');
  try {
    fs.ftruncateSync(fd, synth.size);
    for (const e of synth.extents) if (e.data !== placeholder) writeFully(fd, e.data, e.offset);
    const filler = new PageFiller();
    const buf = Buffer.alloc((2 ** MAX_RUN_LOG2) * PAGE_SIZE);
    for (const r of runs) {
      if (!r.present) continue;
      filler.fill(buf, r.firstPage, r.pages);
      writeFully(fd, buf.subarray(0, r.pages * PAGE_SIZE), pagesOffset + r.firstPage * PAGE_SIZE);
    }
  } finally {
    fs.closeSync(fd);
  }
  return pages.size * PAGE_SIZE;
}

function writeFully(fd: number, data: Uint8Array, position: number): void {
  for (let done = 0; done < data.length; ) done += fs.writeSync(fd, data, done, data.length - done, position + done);
}

/** True when the two files hold the same bytes (read in 16 MiB chunks). */
export function sameContent(a: string, b: string): boolean {
  const sa = fs.statSync(a).size;
  if (sa !== fs.statSync(b).size) return false;
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  try {
    const ba = Buffer.alloc(16 * MiB);
    const bb = Buffer.alloc(16 * MiB);
    for (let at = 0; at < sa; at += ba.length) {
      const n = Math.min(ba.length, sa - at);
      readFully(fa, ba.subarray(0, n), at);
      readFully(fb, bb.subarray(0, n), at);
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
    }
    return true;
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

/** sameContent for sparse files: only the data extents of either (reader/holes.ts) are read; elsewhere both are holes, so zero. */
export async function sameSparseContent(a: string, b: string): Promise<boolean> {
  const size = fs.statSync(a).size;
  if (size !== fs.statSync(b).size) return false;
  const fds = [fs.openSync(a, 'r'), fs.openSync(b, 'r')];
  const maps = await Promise.all(fds.map((fd, i) => HoleMap.open(fd, [a, b][i])));
  try {
    const ranges: DataExtent[] = [];
    for (const m of maps) for await (const e of m.dataExtents(0, size)) ranges.push(e);
    const ba = Buffer.alloc(16 * MiB);
    const bb = Buffer.alloc(16 * MiB);
    for (const r of ranges) {
      for (let at = r.start; at < r.end; at += ba.length) {
        const n = Math.min(ba.length, r.end - at);
        readFully(fds[0], ba.subarray(0, n), at);
        readFully(fds[1], bb.subarray(0, n), at);
        if (!ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
      }
    }
    return true;
  } finally {
    for (const m of maps) m.close();
    for (const fd of fds) fs.closeSync(fd);
  }
}

function readFully(fd: number, into: Buffer, position: number): void {
  for (let done = 0; done < into.length; ) {
    const n = fs.readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) throw new Error(`short read at ${position + done}`);
    done += n;
  }
}
