/**
 * Writes a mapped-ram snapshot that QEMU restores.
 *
 * Reserve, then patch: the stream head and every block header are written
 * when the writer is created, pages are written at their fixed offsets as
 * they come (any page any number of times: the file does not grow), and the
 * bitmaps and the rest of the stream are written by finalize(), as QEMU
 * does: a bitmap written last is what makes the pages valid. The file is
 * built under a temporary name in the target's directory, fsynced, and
 * only then renamed to the target, so an interrupted or failed write never
 * leaves a file at the target path.
 */
import { setRange, testBit } from '../format/bitmap.js';
import { RamsnapUsageError } from '../format/errors.js';
import { LayoutError, encodeBlockEntry, planLayout, type BlockPlan, type LayoutPlan, type PlanOptions } from '../format/layout.js';
import { encodeTail, type DeviceState } from '../format/tail.js';
import { nonZeroRuns, zeroPageOf } from '../format/zero-pages.js';
import type { TargetLock } from './lock.js';
import { checkDescribedPageSize, checkReadable } from './readable.js';
import { Coverage, TempFile, type OutputOptions } from './sink.js';

export interface WriterOptions extends PlanOptions, OutputOptions {
  /** Device sections and description to put after the RAM (from a template); none: a RAM-only stream. */
  device?: DeviceState;
  /** Bytes before the stream (with streamOffset), e.g. a libvirt header; zeros when absent. */
  prefix?: Uint8Array;
  /** Replace an existing target (default: refuse). */
  force?: boolean;
  /** fsync before the rename (default true). */
  fsync?: boolean;
  /** The target's lock, when the caller already holds it (sparsify: across reading and rewriting); else the writer takes it. */
  lock?: TargetLock;
}

export { TEMP_MARK } from './sink.js';

/**
 * Page bytes written between two background fdatasyncs. The kernel starts
 * writeback of a file only at a fraction of all memory; syncing as we go
 * lets the disk work while pages are still being copied, so the fsync
 * before the rename has little left to do.
 */
const WRITEBACK_EVERY = 128 << 20;

export class SnapshotWriter {
  /** Pages may be written in any order and concurrently (different pages). */
  readonly ordered = false;
  private readonly bitmaps: Uint8Array[];
  private sinceWriteback = 0;
  private writeback: Promise<void> | undefined;
  private readonly byName: Map<string, number>;
  private readonly zeroPage: Buffer;
  private done = false;
  /** The error that made the writer give up: later calls report it, not WRITER_CLOSED (concurrent writePages race to fail). */
  private failure: unknown;
  /** abort() was called by the user (not after a failure, nor after finalize). */
  private aborted = false;
  private readonly coverage: Coverage;

  private constructor(
    readonly target: string,
    private readonly sink: TempFile,
    private currentPlan: LayoutPlan,
    private opts: WriterOptions,
  ) {
    this.bitmaps = currentPlan.blocks.map((b) => new Uint8Array(b.bitmapSize));
    this.byName = new Map(currentPlan.blocks.map((b, i) => [b.name, i]));
    this.zeroPage = zeroPageOf(currentPlan.pageSize);
    this.coverage = new Coverage(currentPlan.blocks, opts.onProgress);
  }

  get plan(): LayoutPlan {
    return this.currentPlan;
  }

  static async create(target: string, opts: WriterOptions): Promise<SnapshotWriter> {
    let plan: LayoutPlan;
    try {
      plan = planLayout(opts);
      checkReadable(opts.blocks, opts.pageSize, 'mapped-ram');
      checkDescribedPageSize(opts.device, opts.pageSize);
    } catch (err) {
      if (err instanceof LayoutError) throw new RamsnapUsageError(err.code, err.message, err.field);
      throw err;
    }
    if (opts.prefix && (opts.streamOffset ?? 0) !== opts.prefix.length) {
      throw new RamsnapUsageError('BAD_OFFSET', `prefix is ${opts.prefix.length} bytes but the stream offset is ${opts.streamOffset ?? 0}`, 'streamOffset');
    }
    const w = new SnapshotWriter(target, TempFile.create(target, { force: opts.force, lock: opts.lock, mode: opts.mode }), plan, opts);
    try {
      if (opts.prefix) await w.sink.write(0, opts.prefix);
      await w.sink.write(plan.streamOffset, plan.head);
      for (const b of plan.blocks) await w.sink.write(b.entryOffset, encodeBlockEntry(b, plan.pageSize));
      // The page regions are holes until pages arrive; the file already has its final size but for the tail.
      await w.sink.truncate(plan.tailOffset);
    } catch (err) {
      await w.abort();
      throw err;
    }
    return w;
  }

  /** Where the file is built until finalize() renames it to the target. */
  get tempPath(): string {
    return this.sink.path;
  }

  get pageSize(): number {
    return this.plan.pageSize;
  }

  block(name: string): BlockPlan {
    const i = this.byName.get(name);
    if (i === undefined) throw new RamsnapUsageError('UNKNOWN_BLOCK', `no block named ${JSON.stringify(name)} in this snapshot`, 'block');
    return this.plan.blocks[i];
  }

  /**
   * Writes whole pages starting at page `first` of `block`: `data` is a
   * multiple of the page size. Runs of non-zero pages are written with one
   * positional write each and their bits set; zero pages only get their
   * bit cleared (a hole, or stale bytes a clear bit makes invisible, as in
   * QEMU's files). Concurrent calls on different pages are fine.
   */
  async writePages(blockName: string, first: number, data: Uint8Array): Promise<void> {
    const b = this.block(blockName);
    const i = this.byName.get(blockName) as number;
    const ps = this.plan.pageSize;
    const n = data.length / ps;
    if (!Number.isInteger(n) || !Number.isSafeInteger(first) || first < 0 || first + n > b.pages) {
      throw new RamsnapUsageError('OUT_OF_RANGE', `pages ${first}..${first + n} of ${b.name} (${b.pages} pages), ${data.length} bytes`, 'pages');
    }
    this.checkOpen();
    const bm = this.bitmaps[i];
    const buf = Buffer.from(data.buffer, data.byteOffset, data.length);
    // Pages before `done` are settled: zero ones have their bit cleared, the others are written with it set.
    let done = 0;
    for (const [start, end] of nonZeroRuns(buf, n, this.zeroPage)) {
      setRange(bm, first + done, start - done, false);
      // Aborted while this call was in flight: the rest of its pages are dropped with the file.
      if (this.aborted) return;
      try {
        await this.sink.write(b.pagesOffset + (first + start) * ps, buf.subarray(start * ps, end * ps));
      } catch (err) {
        if (this.aborted) return; // the write was refused because the file was closed by abort()
        // Disk full or an I/O error: the file cannot be finished, so it goes now (SPEC 13.3).
        this.failure ??= err;
        await this.abort();
        // Concurrent calls all report the first failure (the others' writes were refused as the file closed).
        throw this.failure;
      }
      setRange(bm, first + start, end - start, true);
      this.startWriteback((end - start) * ps);
      done = end;
    }
    setRange(bm, first + done, n - done, false);
    this.coverage.reached(blockName, (first + n) * ps);
  }

  private startWriteback(bytes: number): void {
    if (!(this.opts.fsync ?? true)) return;
    this.sinceWriteback += bytes;
    if (this.sinceWriteback < WRITEBACK_EVERY || this.writeback) return;
    this.sinceWriteback = 0;
    // Not awaited: a failure here shows again, and is reported, at the fsync in finalize().
    this.writeback = this.sink.datasync().then(
      () => {
        this.writeback = undefined;
      },
      () => {
        this.writeback = undefined;
      },
    );
  }

  /** The device state the stream will end with (retarget() changes it). */
  get device(): DeviceState | undefined {
    return this.opts.device;
  }

  /** Marks pages as zero (their bits clear); their bytes, if any, stay and are ignored. */
  zeroPages(blockName: string, first: number, count: number): void {
    setRange(this.pageRange(blockName, first, count), first, count, false);
    this.coverage.reached(blockName, (first + count) * this.plan.pageSize);
  }

  /**
   * Changes what the stream says around the pages (machine, capabilities,
   * RAM section id, device state) before finalize(), keeping every block
   * where it is: a live save learns the RAM section id and the device state
   * only once the guest is paused, long after its pages were written.
   */
  async retarget(o: Partial<Pick<WriterOptions, 'machine' | 'capabilities' | 'ramSectionId' | 'targetPageBits' | 'uuid' | 'device'>>): Promise<void> {
    this.checkOpen();
    const blocks = this.plan.blocks.map((b) => ({ name: b.name, usedLength: b.usedLength }));
    let plan: LayoutPlan;
    try {
      plan = planLayout({ ...this.opts, ...o, blocks });
    } catch (err) {
      if (err instanceof LayoutError) throw new RamsnapUsageError(err.code, err.message, err.field);
      throw err;
    }
    const moved = plan.tailOffset !== this.plan.tailOffset || plan.blocks.some((b, i) => b.entryOffset !== this.plan.blocks[i].entryOffset || b.pagesOffset !== this.plan.blocks[i].pagesOffset);
    if (moved) {
      throw new RamsnapUsageError('LAYOUT_CHANGED', `the new stream head is ${plan.head.length} bytes where ${this.plan.head.length} were reserved: the blocks would move`, 'head');
    }
    await this.sink.write(plan.streamOffset, plan.head);
    this.currentPlan = plan;
    this.opts = { ...this.opts, ...o };
  }

  /**
   * Marks pages present whose bytes are zero, without writing them: their
   * bytes in the page region are the hole the writer left there. For pages
   * never written: an instant restore's stream uses them to make QEMU write
   * zeros over stale bytes of a mapped snapshot.
   */
  zeroPagesPresent(blockName: string, first: number, count: number): void {
    setRange(this.pageRange(blockName, first, count), first, count, true);
  }

  /** The bitmap of `blockName`, once [first, first + count) is checked to be its pages and the writer open. */
  private pageRange(blockName: string, first: number, count: number): Uint8Array {
    const b = this.block(blockName);
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 0 || first + count > b.pages) {
      throw new RamsnapUsageError('OUT_OF_RANGE', `pages ${first}..${first + count} of ${b.name} (${b.pages} pages)`, 'pages');
    }
    this.checkOpen();
    return this.bitmaps[this.byName.get(blockName) as number];
  }

  /** Whether a page is currently marked present. */
  isPresent(blockName: string, page: number): boolean {
    this.block(blockName);
    return testBit(this.bitmaps[this.byName.get(blockName) as number], page);
  }

  /**
   * Writes the bitmaps and the rest of the stream, syncs, and renames the
   * file to the target. Until this returns, nothing is at the target path.
   */
  async finalize(): Promise<void> {
    this.checkOpen();
    try {
      for (let i = 0; i < this.plan.blocks.length; i++) await this.sink.write(this.plan.blocks[i].bitmapOffset, this.bitmaps[i]);
      const tail = encodeTail(this.plan.ramSectionId, this.opts.device);
      await this.sink.write(this.plan.tailOffset, tail);
      this.done = true;
      await this.sink.commit(this.plan.tailOffset + tail.length, this.opts.fsync ?? true);
      this.coverage.finished();
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  /** Drops the temporary file; the target is untouched. Page writes still in flight are dropped. */
  async abort(): Promise<void> {
    if (this.failure === undefined && !this.done) this.aborted = true;
    this.done = true;
    await this.sink.discard();
  }

  private checkOpen(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.done) throw new RamsnapUsageError('WRITER_CLOSED', 'the writer was finalized or aborted', 'writer');
  }
}
