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
  /** Sorted by `first`, non-overlapping. */
  readonly runs: LegacyRun[] = [];
  /** Records added, in stream order. */
  recordCount = 0;

  /**
   * `maxStride` bounds the distance between two pages' bytes in one run:
   * a run is read as one span, so records far apart (a hostile file, or a
   * section boundary between them) start a new run instead.
   */
  constructor(private readonly maxStride = Infinity) {}

  /**
   * Records that page `page` has its last copy at `dataOffset`, or is a
   * ZERO record when `dataOffset` is -1.
   */
  add(page: number, dataOffset: number): void {
    this.recordCount++;
    const runs = this.runs;
    const last = runs[runs.length - 1];
    if (last && page === last.first + last.count && (dataOffset === -1) === (last.dataOffset === -1)) {
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
    const run = { first: page, count: 1, dataOffset, stride: 0 };
    if (!last || page >= last.first + last.count) runs.push(run);
    else this.overwrite(run);
  }

  /** Splices a one-page run over whatever covered that page before. */
  private overwrite(run: LegacyRun): void {
    const runs = this.runs;
    // First run whose end is after run.first.
    let lo = 0;
    let hi = runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (runs[mid].first + runs[mid].count <= run.first) lo = mid + 1;
      else hi = mid;
    }
    const replaced: LegacyRun[] = [];
    const r = runs[lo];
    if (r && r.first <= run.first) {
      // Split r around the page.
      if (r.first < run.first) replaced.push(slice(r, r.first, run.first));
      replaced.push(run);
      const end = r.first + r.count;
      if (end > run.first + 1) replaced.push(slice(r, run.first + 1, end));
      runs.splice(lo, 1, ...replaced);
    } else {
      runs.splice(lo, 0, run);
    }
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
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.runs[mid].first + this.runs[mid].count <= first) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < this.runs.length && this.runs[i].first < end; i++) {
      const r = this.runs[i];
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
