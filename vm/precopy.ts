/**
 * The precopy loop: copy guest memory into a mapped-ram file while the guest
 * runs, pass after pass, each pass rewriting only the pages dirtied since
 * the one before at their fixed offsets (the file never grows), until a
 * policy says the rest is small enough to copy with the guest paused
 * (stop-and-copy), or gives up (abort).
 *
 * The loop is QEMU's migration_iteration_run() turned inside out, with the
 * decision taken out of it as Xen's libxc does (xc_sr_save.c hands a
 * precopy_stats to a precopy_policy callback after every iteration).
 */
import { RamsnapError } from '../format/errors.js';
import type { RamSource } from './ram-source.js';
import { realClock, type Clock } from './sim-guest.js';

/** What the policy is told after each pass. */
export interface PrecopyStats {
  pageSize: number;
  /** Passes done: 1 after the first (full) pass. */
  iteration: number;
  /** Page bytes written so far, over all passes. */
  totalBytes: number;
  /** Pages dirty now and not yet copied, or -1 when the source cannot know without another pass. */
  dirtyPages: number;
  /**
   * Bytes still to copy: dirtyPages times the page size when that is known,
   * else the bytes the last pass had to write (what the guest dirtied in the
   * time of one pass: the best estimate a hashing source has).
   */
  pendingBytes: number;
  /** Milliseconds since the loop started. */
  elapsedMs: number;
  /** Bytes per second the passes wrote at (time spent finding pages left out). */
  bandwidth: number;
  lastPassBytes: number;
  lastPassMs: number;
  /** Milliseconds the last pass spent finding dirty pages; a stop-and-copy pass spends it again with the guest paused. */
  scanMs: number;
}

export type PrecopyDecision = 'continue' | 'stop-and-copy' | 'abort';

/** Decides, after each pass, what happens next. */
export type PrecopyPolicy = (stats: Readonly<PrecopyStats>) => PrecopyDecision | Promise<PrecopyDecision>;

/** Where pages go: a SnapshotWriter, or a counting sink in a benchmark. */
export interface PageWriter {
  readonly pageSize: number;
  writePages(block: string, first: number, data: Uint8Array): Promise<void>;
}

export interface PrecopyOptions {
  source: RamSource;
  writer: PageWriter;
  policy: PrecopyPolicy;
  /** Stops the guest (QMP `stop`); after it resolves no page may change. */
  pause(): Promise<void>;
  /** Writes in flight at once (QEMU's multifd-channels plays this part). Default 2. */
  channels?: number;
  /** Bytes per second at most (QEMU's max-bandwidth); 0 or absent: no limit. Never applied while paused. */
  maxBandwidth?: number;
  clock?: Clock;
  /** Aborts the loop (SIGINT): it stops at the next run and throws SAVE_ABORTED. */
  signal?: AbortSignal;
  /** Told after every pass, before the policy. */
  onPass?(stats: Readonly<PrecopyStats>): void;
}

export interface PrecopyResult {
  /** Passes with the guest running. */
  iterations: number;
  /** Page bytes written, all passes and the stop-and-copy. */
  totalBytes: number;
  /** Pages and bytes copied with the guest paused. */
  pausedPages: number;
  pausedBytes: number;
  /** From the pause request to the last page written (the RAM part of the downtime). */
  pausedMs: number;
  /** The stats of every pass, in order. */
  history: PrecopyStats[];
}

const DECISIONS: readonly string[] = ['continue', 'stop-and-copy', 'abort'];

export async function precopy(o: PrecopyOptions): Promise<PrecopyResult> {
  const clock = o.clock ?? realClock;
  const ps = o.source.pageSize;
  if (o.writer.pageSize !== ps) {
    throw new RamsnapError('PAGE_SIZE_MISMATCH', `the source has ${ps}-byte pages but the snapshot ${o.writer.pageSize}-byte pages`);
  }
  const channels = Math.max(1, Math.floor(o.channels ?? 2));
  const started = clock.now();
  const history: PrecopyStats[] = [];
  let totalBytes = 0;
  let writeMs = 0;

  const checkSignal = (): void => {
    if (o.signal?.aborted) throw new RamsnapError('SAVE_ABORTED', 'the save was interrupted; nothing was left at the target');
  };

  /** One pass: every dirty run to the writer, rate-limited while the guest runs. */
  const pass = async (throttle: boolean): Promise<{ bytes: number; pages: number; ms: number; scanMs: number }> => {
    const t0 = clock.now();
    let bytes = 0;
    const limit = throttle ? (o.maxBandwidth ?? 0) : 0;
    const r = await o.source.collect(async (run) => {
      checkSignal();
      if (limit > 0) {
        // A token bucket of one pass: do not get ahead of limit bytes per second.
        const due = t0 + ((bytes + run.data.length) / limit) * 1000;
        const wait = due - clock.now();
        if (wait > 0) await clock.sleep(wait);
      }
      bytes += run.data.length;
      await o.writer.writePages(run.block, run.first, run.data);
    }, channels);
    checkSignal();
    return { bytes, pages: r.pages, ms: clock.now() - t0, scanMs: r.scanMs };
  };

  for (;;) {
    checkSignal();
    const p = await pass(true);
    totalBytes += p.bytes;
    writeMs += Math.max(p.ms - p.scanMs, 0);
    const dirtyPages = o.source.dirtyPages();
    const stats: PrecopyStats = {
      pageSize: ps,
      iteration: history.length + 1,
      totalBytes,
      dirtyPages,
      pendingBytes: dirtyPages >= 0 ? dirtyPages * ps : p.bytes,
      elapsedMs: clock.now() - started,
      bandwidth: writeMs > 0 ? (totalBytes / writeMs) * 1000 : Infinity,
      lastPassBytes: p.bytes,
      lastPassMs: p.ms,
      scanMs: p.scanMs,
    };
    history.push(stats);
    o.onPass?.(stats);
    const decision = await o.policy(stats);
    if (!DECISIONS.includes(decision)) {
      throw new RamsnapError('BAD_POLICY_DECISION', `the policy answered ${JSON.stringify(decision)}; it must answer continue, stop-and-copy or abort`);
    }
    if (decision === 'abort') throw new RamsnapError('SAVE_ABORTED', `the policy aborted the save after ${stats.iteration} passes; nothing was left at the target`);
    if (decision === 'stop-and-copy') break;
  }

  const t0 = clock.now();
  await o.pause();
  const last = await pass(false);
  totalBytes += last.bytes;
  return {
    iterations: history.length,
    totalBytes,
    pausedPages: last.pages,
    pausedBytes: last.bytes,
    pausedMs: clock.now() - t0,
    history,
  };
}
