/**
 * A child process for test/crash.test.ts and the fault runner
 * (test/faults/run.ts), to be killed with SIGKILL at random points or
 * given an I/O error at a chosen write. It writes a snapshot with
 * SnapshotWriter, or runs a `ramsnap` command (create, convert, patch,
 * sparsify, ...) in-process, with Node's fs calls wrapped so that
 *   - every operation is slowed down (a few ms each), so random kills land
 *     in every phase, and
 *   - the phase each operation belongs to is printed on stdout as
 *     `@phase NAME` *before* the operation starts, with a synchronous
 *     write: after a kill, the last line is the phase the process was in.
 *     Writes to a temporary file or the patched file are named by the
 *     region they hit (head, pages, bitmaps, tail; for a patch: hidden
 *     pages before the journal, the marker as invalidate/restore), writes
 *     to a patch journal are `journal`, and fsyncs, renames, unlinks and
 *     the lock have their own names;
 *   - with `fail`, the n-th write of a phase fails with the given errno
 *     instead of happening (an in-process fault-injecting disk);
 *   - at exit, the number of writes per phase is printed as `@writes {...}`.
 * The wrappers replace properties of the `fs` module object, which the
 * writer's FileSink, TempFile, lock and journal look up at call time;
 * nothing in the library is changed for the test.
 *
 * Usage: node dist/test/helpers/crash-child.js '<json Job>'
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { report, run } from '../../analyze/cli.js';
import { planLayout, type PlanOptions } from '../../format/layout.js';
import { Snapshot } from '../../reader/snapshot.js';
import { MARKER_LENGTH } from '../../writer/journal.js';
import { JOURNAL_SUFFIX, LOCK_SUFFIX } from '../../writer/lock.js';
import { SnapshotWriter, TEMP_MARK } from '../../writer/snapshot-writer.js';
import { randomPage } from '../../writer/testing.js';

/** The n-th write (1-based) classified as `phase` fails with `errno`. */
export interface Fault {
  phase: string;
  nth: number;
  errno: 'EIO' | 'ENOSPC';
}

/**
 * `holdAt`: on entering this phase the child stops (blocks) for up to
 * HOLD_MS, so that a parent killing it a few ms after the phase line is
 * sure to land in that phase however loaded the machine is.
 */
export type Job =
  | { mode: 'write'; target: string; plan: PlanOptions; seed: number; delayMs: number; fail?: Fault; holdAt?: string }
  /** `layout`: a mapped-ram file laid out like the one written or patched, to name the regions writes hit. */
  | { mode: 'cli'; argv: string[]; layout?: string; offset?: number; delayMs: number; fail?: Fault; holdAt?: string };

/** Longest hold at `holdAt` (the parent's kill normally ends it within ms). */
const HOLD_MS = 10_000;
let holdAt: string | undefined;

/** What the writer writes in mode 'write': page p of block b is non-zero when (p + b) is even. */
export function intendedPage(blockIndex: number, page: number, pageSize: number, seed: number): Uint8Array | undefined {
  if ((page + blockIndex) % 2 !== 0) return undefined;
  const out = randomPage(pageSize, (seed * 7919 + blockIndex * 104729 + page * 31 + 1) >>> 0);
  out[0] |= 1; // never an all-zero page
  return out;
}

interface Region {
  from: number;
  to: number;
  phase: string;
}

let last = '';
function phase(name: string): void {
  if (name === last) return;
  last = name;
  seen.add(name);
  fs.writeSync(1, `@phase ${name}\n`);
  if (name === holdAt) {
    holdAt = undefined;
    spin(HOLD_MS);
  }
}

function spin(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Paths of the descriptors the code under test opened, to tell a journal from the file it patches. */
const fdPaths = new Map<number, string>();
/** Writes per phase, printed as `@writes {...}` when the process exits (the fault runner picks the n-th write to fail from these). */
const writes = new Map<string, number>();
const seen = new Set<string>();

/** Wraps fs so each write is classified by file and offset into `regions`, delayed, and maybe failed. */
function instrument(regions: () => Region[], delayMs: number, fail?: Fault): void {
  const classify = (fd: number, pos: number): string => {
    const file = fdPaths.get(fd) ?? '';
    if (file.includes(JOURNAL_SUFFIX)) return 'journal';
    const r = regions().find((x) => pos >= x.from && pos < x.to)?.phase;
    if (file.includes(TEMP_MARK)) return r === 'marker' ? 'head' : (r ?? (regions().length ? 'tail' : 'write'));
    // The patched file: its pages before the journal are hidden (clear bits); the marker goes on, then back.
    if (r === 'pages') return seen.has('invalidate') ? 'pages' : 'hidden';
    if (r === 'marker') return seen.has('bitmaps') ? 'restore' : 'invalidate';
    return r ?? 'write';
  };
  let failed = 0;
  process.on('exit', () => fs.writeSync(1, `@writes ${JSON.stringify(Object.fromEntries(writes))}\n`));
  const openSync = fs.openSync;
  (fs as unknown as Record<string, unknown>).openSync = (...a: unknown[]): number => {
    const p = String(a[0]);
    const fd = (openSync as (...x: unknown[]) => number)(...a);
    fdPaths.set(fd, p);
    return fd;
  };
  const write = fs.write as unknown as (...a: unknown[]) => void;
  (fs as unknown as Record<string, unknown>).write = (...a: unknown[]): void => {
    const p = classify(Number(a[0]), Number(a[4]));
    phase(p);
    writes.set(p, (writes.get(p) ?? 0) + 1);
    const cb = a[a.length - 1] as (err: NodeJS.ErrnoException | null, n?: number) => void;
    if (fail && p === fail.phase && ++failed === fail.nth) {
      const err = Object.assign(new Error(`${fail.errno}: injected fault, write`), { code: fail.errno, errno: fail.errno === 'EIO' ? -5 : -28, syscall: 'write' });
      setTimeout(() => cb(err), delayMs);
      return;
    }
    // Pages are many writes; every other phase is one or two: make those last long enough for kills to land in them.
    setTimeout(() => write(...a), p === 'pages' || p === 'hidden' || p === 'journal' || p === 'write' ? delayMs : delayMs * 5);
  };
  const ftruncate = fs.ftruncate as unknown as (...a: unknown[]) => void;
  (fs as unknown as Record<string, unknown>).ftruncate = (...a: unknown[]): void => {
    // The writer sizes the file when it creates it (head) and cuts it after the tail.
    phase(last === '' || last === 'start' || last === 'open' || last === 'lock' || last === 'head' ? 'head' : 'tail');
    setTimeout(() => ftruncate(...a), delayMs * 5);
  };
  const fsync = fs.fsync as unknown as (...a: unknown[]) => void;
  (fs as unknown as Record<string, unknown>).fsync = (...a: unknown[]): void => {
    // A patch syncs its hidden pages between journal records: name that sync by the file, not by the last write.
    const journal = (fdPaths.get(Number(a[0])) ?? '').includes(JOURNAL_SUFFIX);
    phase(journal ? 'fsync:journal' : last === 'journal' || last === 'hidden' ? 'fsync:hidden' : `fsync:${last}`);
    setTimeout(() => fsync(...a), delayMs * 5);
  };
  const futimes = fs.futimes as unknown as (...a: unknown[]) => void;
  (fs as unknown as Record<string, unknown>).futimes = (...a: unknown[]): void => {
    phase('restore');
    setTimeout(() => futimes(...a), delayMs * 5);
  };
  const renameSync = fs.renameSync;
  fs.renameSync = (from, to): void => {
    const lockAside = String(from).endsWith(LOCK_SUFFIX);
    if (!lockAside) phase('rename');
    spin(delayMs * 5);
    renameSync(from, to);
    if (!lockAside) phase('renamed');
    spin(delayMs * 5);
  };
  const fsyncSync = fs.fsyncSync;
  fs.fsyncSync = (fd): void => {
    phase(last === 'fsync:journal' ? 'dirsync:journal' : 'dirsync');
    spin(delayMs);
    fsyncSync(fd);
  };
  const rmSync = fs.rmSync;
  fs.rmSync = (p, o): void => {
    if (String(p).includes(JOURNAL_SUFFIX) && seen.has('restore')) {
      phase('unlink:journal');
      spin(delayMs * 5);
    }
    rmSync(p, o);
  };
  const linkSync = fs.linkSync;
  fs.linkSync = (from, to): void => {
    // writer/lock.ts takes the lock by linking a written temporary file to the lock's name.
    if (String(to).endsWith(LOCK_SUFFIX)) {
      phase('lock');
      spin(delayMs * 5);
    }
    linkSync(from, to);
  };
  const unlinkSync = fs.unlinkSync;
  fs.unlinkSync = (p): void => {
    if (String(p).endsWith(LOCK_SUFFIX)) {
      phase('unlock');
      spin(delayMs * 5);
    }
    unlinkSync(p);
  };
}

async function main(job: Job): Promise<number> {
  holdAt = job.holdAt;
  if (job.mode === 'write') {
    const plan = planLayout(job.plan);
    const regions: Region[] = [];
    for (const b of plan.blocks) {
      regions.push({ from: b.bitmapOffset, to: b.bitmapOffset + b.bitmapSize, phase: 'bitmaps' });
      regions.push({ from: b.pagesOffset, to: b.end, phase: 'pages' });
    }
    regions.push({ from: 0, to: plan.tailOffset, phase: 'head' });
    instrument(() => regions, job.delayMs, job.fail);
    phase('start');
    let w: SnapshotWriter | undefined;
    try {
      w = await SnapshotWriter.create(job.target, job.plan);
      for (let bi = 0; bi < plan.blocks.length; bi++) {
        const b = plan.blocks[bi];
        // One page per call: many small positional writes.
        for (let p = 0; p < b.pages; p++) {
          const page = intendedPage(bi, p, plan.pageSize, job.seed);
          if (page) await w.writePages(b.name, p, page);
        }
      }
      await w.finalize();
    } catch (err) {
      // writePages leaves the temporary file on an error (create and finalize remove it themselves).
      await w?.abort();
      return report(err);
    }
    phase('done');
    return 0;
  }
  // A command: name regions by the layout of a file like the one written or patched (sparsify's new file has the same offsets).
  phase('open');
  const regions: Region[] = [];
  if (job.layout) {
    const snap = await Snapshot.open(job.layout, { offset: job.offset, lenient: true });
    for (const b of snap.blocks) {
      if (!b.mappedRam) continue;
      regions.push({ from: b.mappedRam.bitmapOffset, to: b.mappedRam.bitmapOffset + b.mappedRam.bitmapSize, phase: 'bitmaps' });
      regions.push({ from: b.mappedRam.pagesOffset, to: b.mappedRam.pagesOffset + b.usedLength, phase: 'pages' });
    }
    const lastBlock = snap.blocks[snap.blocks.length - 1];
    const tailOffset = lastBlock?.mappedRam ? lastBlock.mappedRam.pagesOffset + lastBlock.usedLength : snap.model.fileSize;
    regions.push({ from: snap.model.streamOffset, to: snap.model.streamOffset + MARKER_LENGTH, phase: 'marker' });
    regions.push({ from: 0, to: tailOffset, phase: 'head' });
    await snap.close();
  }
  instrument(() => regions, job.delayMs, job.fail);
  const code = await run(job.argv);
  if (code === 0) phase('done');
  return code;
}

// Run only as a program; the test imports intendedPage from here.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(JSON.parse(process.argv[2] ?? '{}') as Job);
}
