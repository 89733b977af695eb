/**
 * Finding the pages of a buffer that are not all zero, without a view or
 * any other allocation per page.
 */

/** A zero page of `pageSize` bytes to compare against (allocate once, reuse). */
export function zeroPageOf(pageSize: number): Buffer {
  return Buffer.alloc(pageSize);
}

/** Whether page `p` of `buf` is all zero. The first byte settles most pages; compare() checks the rest. */
export function isZeroPage(buf: Buffer, p: number, zeroPage: Buffer): boolean {
  const ps = zeroPage.length;
  return buf[p * ps] === 0 && zeroPage.compare(buf, p * ps, (p + 1) * ps) === 0;
}

/** Whether bytes [start, end) of `buf` are all zero; `zero` is a zero buffer at least end - start long. */
export function isZeroRange(buf: Buffer, start: number, end: number, zero: Buffer): boolean {
  return end <= start || (buf[start] === 0 && zero.compare(buf, start, end, 0, end - start) === 0);
}

/** Runs [start, end) of non-zero pages among the first `pages` pages of `buf`. */
export function* nonZeroRuns(buf: Buffer, pages: number, zeroPage: Buffer): Generator<[number, number]> {
  for (let p = 0; p < pages; ) {
    while (p < pages && isZeroPage(buf, p, zeroPage)) p++;
    const start = p;
    while (p < pages && !isZeroPage(buf, p, zeroPage)) p++;
    if (p > start) yield [start, p];
  }
}
