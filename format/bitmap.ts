/**
 * The mapped-ram bitmap: one bit per page, set when the page's bytes are in
 * the file. QEMU stores it as an array of host `unsigned long` words, so on
 * the 64-bit little-endian hosts QEMU runs on (x86_64, aarch64, riscv64,
 * ppc64le) page i is bit (i % 8) of byte (i / 8), and the size is rounded up
 * to whole 8-byte words. Files from big-endian hosts are not supported.
 */

/** Bytes of bitmap for `pages` pages: whole 64-bit words, as QEMU sizes it. */
export function bitmapBytes(pages: number): number {
  return Math.ceil(pages / 64) * 8;
}

export function testBit(bm: Uint8Array, page: number): boolean {
  return (bm[page >>> 3] & (1 << (page & 7))) !== 0;
}

export function setBit(bm: Uint8Array, page: number): void {
  bm[page >>> 3] |= 1 << (page & 7);
}

export function clearBit(bm: Uint8Array, page: number): void {
  bm[page >>> 3] &= ~(1 << (page & 7));
}

/** Sets or clears bits [first, first + count). */
export function setRange(bm: Uint8Array, first: number, count: number, value: boolean): void {
  let i = first;
  const end = first + count;
  while (i < end && (i & 7) !== 0) {
    if (value) setBit(bm, i);
    else clearBit(bm, i);
    i++;
  }
  const fullEnd = end - ((end - i) & 7);
  if (fullEnd > i) {
    bm.fill(value ? 0xff : 0, i >>> 3, fullEnd >>> 3);
    i = fullEnd;
  }
  while (i < end) {
    if (value) setBit(bm, i);
    else clearBit(bm, i);
    i++;
  }
}

const POPCOUNT = new Uint8Array(256);
for (let i = 1; i < 256; i++) POPCOUNT[i] = (i & 1) + POPCOUNT[i >>> 1];

/** Number of set bits among the first `pages` bits. */
export function countBits(bm: Uint8Array, pages: number): number {
  const whole = pages >>> 3;
  let n = 0;
  for (let i = 0; i < whole; i++) n += POPCOUNT[bm[i]];
  for (let p = whole << 3; p < pages; p++) if (testBit(bm, p)) n++;
  return n;
}

/** The first set bit at or after `pages` (the padding QEMU leaves clear), or -1. */
export function firstTailBit(bm: Uint8Array, pages: number): number {
  const totalBits = bm.length * 8;
  for (let p = pages; p < totalBits && (p & 7) !== 0; p++) if (testBit(bm, p)) return p;
  for (let i = Math.ceil(pages / 8); i < bm.length; i++) {
    if (bm[i] !== 0) {
      for (let b = 0; b < 8; b++) if (bm[i] & (1 << b)) return i * 8 + b;
    }
  }
  return -1;
}

export interface PageRun {
  /** First page of the run. */
  first: number;
  /** Pages in the run. */
  count: number;
}

/**
 * Runs of set bits in [from, to), longest first-to-last. Whole zero and
 * whole 0xff bytes are skipped a byte at a time, so a sparse 100 GiB
 * bitmap is walked in milliseconds.
 */
export function* bitRuns(bm: Uint8Array, from: number, to: number, maxRun = Infinity): Generator<PageRun> {
  let p = from;
  while (p < to) {
    // Skip clear bits.
    while (p < to) {
      if ((p & 7) === 0 && bm[p >>> 3] === 0) {
        p += 8;
        continue;
      }
      if (testBit(bm, p)) break;
      p++;
    }
    if (p >= to) return;
    const first = p;
    while (p < to && p - first < maxRun) {
      if ((p & 7) === 0 && bm[p >>> 3] === 0xff && p + 8 <= to && p + 8 - first <= maxRun) {
        p += 8;
        continue;
      }
      if (!testBit(bm, p)) break;
      p++;
    }
    yield { first, count: Math.min(p, to) - first };
  }
}
