/**
 * A child process for test/crash.test.ts, to be killed with SIGKILL at
 * random points. It writes a snapshot with SnapshotWriter, or runs
 * `ramsnap patch` / `ramsnap sparsify` in-process, with Node's fs calls
 * wrapped so that
 *   - every operation is slowed down (a few ms each), so random kills land
 *     in every phase, and
 *   - the phase each write belongs to (head, pages, bitmaps, tail, fsync,
 *     rename, ...) is printed on stdout as `@phase NAME` *before* the
 *     operation starts, with a synchronous write: after a kill, the last line is the phase the
 *     process was in.
 * The wrappers replace properties of the `fs` module object, which the
 * writer's FileSink and SnapshotWriter look up at call time; nothing in the
 * library is changed for the test.
 *
 * Usage: node dist/test/helpers/crash-child.js '<json Job>'
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { report, run } from '../../analyze/cli.js';
import { planLayout, type PlanOptions } from '../../format/layout.js';
import { Snapshot } from '../../reader/snapshot.js';
import { SnapshotWriter } from '../../writer/snapshot-writer.js';
import { randomPage } from '../../writer/testing.js';

export type Job =
  | { mode: 'write'; target: string; plan: PlanOptions; seed: number; delayMs: number }
  | { mode: 'cli'; argv: string[]; file: string; offset?: number; delayMs: number };

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
  fs.writeSync(1, `@phase ${name}\n`);
}

function spin(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Wraps fs so each write is classified by offset into `regions` and delayed. */
function instrument(regions: () => Region[], delayMs: number): void {
  const classify = (pos: number): string => regions().find((r) => pos >= r.from && pos < r.to)?.phase ?? 'tail';
  const write = fs.write as unknown as (...a: unknown[]) => void;
  (fs as unknown as Record<string, unknown>).write = (...a: unknown[]): void => {
    const p = classify(Number(a[4]));
    phase(p);
    // Pages are many writes; every other phase is one or two: make those last long enough for kills to land in them.
    setTimeout(() => write(...a), p === 'pages' ? delayMs : delayMs * 5);
  };
  const ftruncate = fs.ftruncate as unknown as (...a: unknown[]) => void;
  (fs as unknown as Record<string, unknown>).ftruncate = (...a: unknown[]): void => {
    // The writer sizes the file when it creates it (head) and cuts it after the tail.
    phase(last === '' || last === 'start' || last === 'open' || last === 'head' ? 'head' : 'tail');
    setTimeout(() => ftruncate(...a), delayMs * 5);
  };
  const fsync = fs.fsync as unknown as (...a: unknown[]) => void;
  (fs as unknown as Record<string, unknown>).fsync = (...a: unknown[]): void => {
    phase(`fsync:${last}`);
    setTimeout(() => fsync(...a), delayMs * 5);
  };
  const renameSync = fs.renameSync;
  fs.renameSync = (from, to): void => {
    phase('rename');
    spin(delayMs * 5);
    renameSync(from, to);
    phase('renamed');
    spin(delayMs * 5);
  };
  const fsyncSync = fs.fsyncSync;
  fs.fsyncSync = (fd): void => {
    phase('dirsync');
    fsyncSync(fd);
  };
}

async function main(job: Job): Promise<number> {
  if (job.mode === 'write') {
    const plan = planLayout(job.plan);
    const regions: Region[] = [];
    for (const b of plan.blocks) {
      regions.push({ from: b.bitmapOffset, to: b.bitmapOffset + b.bitmapSize, phase: 'bitmaps' });
      regions.push({ from: b.pagesOffset, to: b.end, phase: 'pages' });
    }
    regions.push({ from: 0, to: plan.tailOffset, phase: 'head' });
    instrument(() => regions, job.delayMs);
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
  // patch / sparsify: classify by the file's own layout (sparsify's new file has the same offsets).
  phase('open');
  const snap = await Snapshot.open(job.file, { offset: job.offset, lenient: true });
  const regions: Region[] = [];
  for (const b of snap.blocks) {
    if (!b.mappedRam) continue;
    regions.push({ from: b.mappedRam.bitmapOffset, to: b.mappedRam.bitmapOffset + b.mappedRam.bitmapSize, phase: 'bitmaps' });
    regions.push({ from: b.mappedRam.pagesOffset, to: b.mappedRam.pagesOffset + b.usedLength, phase: 'pages' });
  }
  const lastBlock = snap.blocks[snap.blocks.length - 1];
  const tailOffset = lastBlock.mappedRam ? lastBlock.mappedRam.pagesOffset + lastBlock.usedLength : snap.model.fileSize;
  regions.push({ from: 0, to: tailOffset, phase: 'head' });
  await snap.close();
  instrument(() => regions, job.delayMs);
  const code = await run(job.argv);
  if (code === 0) phase('done');
  return code;
}

// Run only as a program; the test imports intendedPage from here.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(JSON.parse(process.argv[2] ?? '{}') as Job);
}
