/**
 * Timing and memory measurement for the benchmark. Contenders are timed in
 * rounds, one run of each per round, after one warm-up round: on a shared
 * two-core machine the load drifts over a minute, and interleaving puts the
 * same drift on both sides of a ratio instead of on one.
 */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

export interface Contender {
  name: string;
  /** Runs once and returns its wall time in ms (excluding its own setup and cleanup). */
  run(): Promise<number>;
}

/** Median wall time of each contender, by name. */
export type Medians = Map<string, { medianMs: number; runsMs: number[] }>;

export async function rounds(contenders: Contender[], runs: number, log: (s: string) => void): Promise<Medians> {
  const times = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  for (let round = 0; round <= runs; round++) {
    for (const c of contenders) {
      const ms = await c.run();
      // Round 0 warms the page cache, the binaries and QEMU's libraries; it is not counted.
      if (round > 0) times.get(c.name)?.push(ms);
      log(`  ${round === 0 ? 'warm' : `run ${round}`}  ${c.name}: ${(ms / 1000).toFixed(3)} s`);
    }
  }
  return new Map([...times].map(([k, v]) => [k, { medianMs: median(v), runsMs: v }]));
}

/** Removes an output (file or directory) if it is there. */
export const rmOut = (p: string): void => fs.rmSync(p, { recursive: true, force: true });

/** A contender's run: times `fn`, then removes `out` outside the timing (and before, in case a failed run left it). */
export function timedThenDrop(out: string, fn: () => number | Promise<number>): () => Promise<number> {
  return async () => {
    rmOut(out);
    try {
      return await fn();
    } finally {
      rmOut(out);
    }
  };
}

/** The median of the contender `name` (which must have run). */
export function ms(m: Medians, name: string): number {
  const r = m.get(name);
  if (!r) throw new Error(`no timing for ${name}`);
  return r.medianMs;
}

/** Every timed run of a group, in seconds, so the noise behind a median is on record. */
export function runsText(label: string, m: Medians): string {
  return `runs (s), ${label}: ${[...m].map(([name, r]) => `${name} ${r.runsMs.map((x) => (x / 1000).toFixed(2)).join('/')}`).join('; ')}`;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * Runs a command to completion and returns its wall time in ms; throws with
 * its stderr if it exits with another status than `okStatus` (1 for cmp and
 * `ramsnap diff` of files that differ).
 */
export function timeCommand(cmd: string, args: string[], opts: SpawnSyncOptions = {}, okStatus = 0): number {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 64 << 20, ...opts });
  const ms = performance.now() - t0;
  checkExit(cmd, args, r, okStatus);
  return ms;
}

function checkExit(cmd: string, args: string[], r: ReturnType<typeof spawnSync>, okStatus = 0): void {
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== okStatus) {
    const err = r.stderr ? r.stderr.toString().trim().split('\n').slice(-5).join('\n') : '';
    throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}: ${err}`);
  }
}

const GNU_TIME = '/usr/bin/time';

export function haveGnuTime(): boolean {
  try {
    fs.accessSync(GNU_TIME, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Peak resident memory (KiB) of a command, by GNU time's %M (the kernel's
 * maxrss of the child). The report goes to a file so the command's own
 * stderr cannot be mistaken for it.
 */
export function peakRssKiB(cmd: string, args: string[], scratchDir: string, opts: SpawnSyncOptions = {}, okStatus = 0): number {
  const report = path.join(scratchDir, `time-${process.pid}.txt`);
  try {
    const r = spawnSync(GNU_TIME, ['-f', '%M', '-o', report, cmd, ...args], { stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 64 << 20, ...opts });
    checkExit(cmd, args, r, okStatus);
    const kib = Number(fs.readFileSync(report, 'utf8').trim().split('\n').pop());
    if (!Number.isFinite(kib) || kib <= 0) throw new Error(`${GNU_TIME} gave no peak memory for ${cmd}`);
    return kib;
  } finally {
    fs.rmSync(report, { force: true });
  }
}

/** What test/bench/timed-cli.js reports about one in-process CLI run. */
export interface InProcess {
  /** Importing the CLI module graph (yargs and all commands). */
  importMs: number;
  /** The command itself: run(argv), from parse to exit code. */
  runMs: number;
  exitCode: number;
  /** process.resourceUsage().maxRSS of the whole process, KiB. */
  maxRssKiB: number;
}

export const IN_PROCESS_MARK = 'RAMSNAP_BENCH_RESULT ';

/** Runs the CLI through the timing wrapper and returns what it measured inside the process. */
export function inProcess(wrapper: string, args: string[], opts: SpawnSyncOptions = {}): InProcess {
  const r = spawnSync(process.execPath, [wrapper, ...args], { stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 64 << 20, ...opts });
  if (r.error) throw r.error;
  const line = r.stderr
    .toString()
    .split('\n')
    .find((l) => l.startsWith(IN_PROCESS_MARK));
  if (!line) throw new Error(`timing wrapper gave no result for ${args.join(' ')}: ${r.stderr.toString().trim()}`);
  const res = JSON.parse(line.slice(IN_PROCESS_MARK.length)) as InProcess;
  if (res.exitCode !== 0) throw new Error(`ramsnap ${args.join(' ')} exited with ${res.exitCode}: ${r.stderr.toString().trim()}`);
  return res;
}
