/**
 * Where each page of a legacy (sequential) RAM section ended up. A legacy
 * stream sends a page as often as it was dirtied and the last copy wins, so
 * the index keeps, per block, sorted non-overlapping runs of pages with
 * where their last copy lies. Consecutive records of consecutive pages
 * coalesce into one run, so memory follows the number of runs, not pages.
 */

export interface LegacyRun {
  first: number;
  count: number;
  /** File offset of the first page's bytes, or -1 for a ZERO record run. */
  dataOffset: number;
  /** Bytes from one page's data to the next page's data in this run. */
  stride: number;
}

export class LegacyIndex {
  /** Sorted by `first`, non-overlapping; `pending` not yet applied. */
  private sorted: LegacyRun[] = [];
  /**
   * Records for pages at or below the end of the runs so far (a page sent
   * again, or pages sent out of order), in stream order. Splicing each into
   * the sorted runs as it comes costs a move of every run after it, so a
   * stream of records in descending page order took quadratic time (80 000
   * ZERO records, 720 KB: 27 s). They are merged in one pass when the runs
   * are next looked at, or when there are as many of them as runs.
   */
  private pending: LegacyRun[] = [];
  /** Records added, in stream order. */
  recordCount = 0;

  /**
   * `maxStride` bounds the distance between two pages' bytes in one run:
   * a run is read as one span, so records far apart (a hostile file, or a
   * section boundary between them) start a new run instead.
   */
  constructor(private readonly maxStride = Infinity) {}

  /** Sorted by `first`, non-overlapping. */
  get runs(): LegacyRun[] {
    this.settle();
    return this.sorted;
  }

  /**
   * An upper bound of runs.length that does not merge: a pending record
   * splits at most one run in three. For memory limits checked per record.
   */
  get runCount(): number {
    return this.sorted.length + 2 * this.pending.length;
  }

  /**
   * Records that page `page` has its last copy at `dataOffset`, or is a
   * ZERO record when `dataOffset` is -1.
   */
  add(page: number, dataOffset: number): void {
    this.recordCount++;
    const runs = this.sorted;
    const last = runs[runs.length - 1];
    const end = last ? last.first + last.count : 0;
    if (page < end) {
      // Pending records only ever name pages below `end`, and pages appended from here on are at or above it,
      // so appends never cover a pending page and applying the pending ones last keeps stream order.
      this.pending.push({ first: page, count: 1, dataOffset, stride: 0 });
      if (this.pending.length >= Math.max(4096, runs.length)) this.settle();
      return;
    }
    if (last && page === end && (dataOffset === -1) === (last.dataOffset === -1)) {
      if (dataOffset === -1) {
        last.count++;
        return;
      }
      // Page data of consecutive records is evenly spaced (record header + page).
      if (last.count === 1 && dataOffset > last.dataOffset && dataOffset - last.dataOffset <= this.maxStride) {
        last.stride = dataOffset - last.dataOffset;
        last.count++;
        return;
      }
      if (dataOffset === last.dataOffset + last.count * last.stride) {
        last.count++;
        return;
      }
    }
    runs.push({ first: page, count: 1, dataOffset, stride: 0 });
  }

  /** Applies the pending records: the last one per page wins, each splits the run it lands in. One pass. */
  private settle(): void {
    if (this.pending.length === 0) return;
    // A stable sort keeps stream order among records of one page; the last of them is the copy that counts.
    const sorted = this.pending.sort((a, b) => a.first - b.first);
    const over: LegacyRun[] = [];
    for (const r of sorted) {
      if (over.length && over[over.length - 1].first === r.first) over[over.length - 1] = r;
      else over.push(r);
    }
    const out: LegacyRun[] = [];
    let j = 0;
    for (const r of this.sorted) {
      while (j < over.length && over[j].first < r.first) out.push(over[j++]);
      const end = r.first + r.count;
      let from = r.first;
      while (j < over.length && over[j].first < end) {
        const p = over[j].first;
        if (p > from) out.push(slice(r, from, p));
        out.push(over[j++]);
        from = p + 1;
      }
      if (from < end) out.push(from === r.first ? r : slice(r, from, end));
    }
    while (j < over.length) out.push(over[j++]);
    this.sorted = out;
    this.pending = [];
  }

  /** The run holding `page`, or undefined when the stream never sent it (it reads as zero). */
  find(page: number): LegacyRun | undefined {
    const runs = this.runs;
    let lo = 0;
    let hi = runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (runs[mid].first + runs[mid].count <= page) lo = mid + 1;
      else hi = mid;
    }
    const r = runs[lo];
    return r && r.first <= page ? r : undefined;
  }

  /** Runs overlapping [first, first + count), clipped to it. */
  *overlapping(first: number, count: number): Generator<LegacyRun> {
    const end = first + count;
    const runs = this.runs;
    let lo = 0;
    let hi = runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (runs[mid].first + runs[mid].count <= first) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < runs.length && runs[i].first < end; i++) {
      const r = runs[i];
      yield slice(r, Math.max(first, r.first), Math.min(end, r.first + r.count));
    }
  }

  /** Pages whose last copy holds data (not a ZERO record). */
  get pagesWithData(): number {
    let n = 0;
    for (const r of this.runs) if (r.dataOffset !== -1) n += r.count;
    return n;
  }
}

function slice(r: LegacyRun, from: number, to: number): LegacyRun {
  return {
    first: from,
    count: to - from,
    dataOffset: r.dataOffset === -1 ? -1 : r.dataOffset + (from - r.first) * r.stride,
    stride: r.stride,
  };
}
