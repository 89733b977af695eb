/**
 * What test/crash.test.ts, test/lock.test.ts and the fault runner
 * (test/faults/run.ts, `npm run faults`) share: running the crash child
 * (test/helpers/crash-child.ts) and killing it at a phase, running the CLI,
 * and looking at what a fault left: the reader's view of a file (complete,
 * with its memory, or refused with a code), the files beside a target, and
 * what the next run cleans. No test framework here: the runner uses it
 * too.
 */
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { RamsnapError } from '../../format/errors.js';
import { openGuarded } from '../../analyze/open.js';
import { Snapshot } from '../../reader/snapshot.js';
import { JOURNAL_SUFFIX, LOCK_SUFFIX, setNoticeHandler } from '../../writer/lock.js';
import { SnapshotWriter, TEMP_MARK } from '../../writer/snapshot-writer.js';
import type { Job } from '../helpers/crash-child.js';
import { synthesize, type SynthOptions } from '../helpers/synth.js';

export const CHILD = path.resolve('dist/test/helpers/crash-child.js');
export const BIN = path.resolve('dist/analyze/bin.js');

/** mulberry32: kill schedules are reproducible from a seed (the simulated guest's generator). */
export { mulberry32 as rng } from '../../vm/sim-guest.js';

export interface ChildRun {
  /** Phases the child announced, in order; after a kill, the last is where it was. */
  phases: string[];
  /** When each phase was first announced, in ms after the spawn. */
  phaseAt: Record<string, number>;
  /** Writes per phase, when the child got to exit by itself. */
  writes: Record<string, number>;
  pid: number;
  signal: NodeJS.Signals | null;
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Runs the crash child and kills it `delay` ms after it announces `at`
 * (after it starts when `at` is undefined; never when `delay` is
 * Infinity). Resolves however the child ends.
 */
export function runChild(job: Job, at?: string, delay = Infinity, onPhase?: (name: string) => void): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [CHILD, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const phases: string[] = [];
    const phaseAt: Record<string, number> = {};
    let writes: Record<string, number> = {};
    let buf = '';
    let stdout = '';
    let armed = false;
    const arm = (): void => {
      if (armed || delay === Infinity) return;
      armed = true;
      setTimeout(() => child.kill('SIGKILL'), delay);
    };
    if (at === undefined) arm();
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const p = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (p.startsWith('@writes ')) {
          writes = JSON.parse(p.slice(8)) as Record<string, number>;
          continue;
        }
        if (!p.startsWith('@phase ')) {
          stdout += `${p}\n`; // the command's own output
          continue;
        }
        const name = p.slice(7);
        phases.push(name);
        phaseAt[name] ??= Date.now() - t0;
        onPhase?.(name);
        if (name === at) arm();
      }
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ phases, phaseAt, writes, pid: child.pid as number, signal, code, stdout, stderr, ms: Date.now() - t0 }));
  });
}

export const lastPhase = (r: ChildRun): string => r.phases[r.phases.length - 1] ?? '(none)';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `ramsnap ARGS` as a binary, or `cmd` with `args` when cmd is given (e.g. bash -c 'ulimit ...'). */
export function cli(args: string[], cmd = process.execPath, cmdArgs?: string[]): Promise<CliRun> {
  return new Promise((resolve) =>
    execFile(cmd, cmdArgs ?? [BIN, ...args], { maxBuffer: 1 << 24 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  );
}

/** Notices a writer may print before its result (a stale lock taken over, temporary files cleaned, a journal settled). */
const NOTICE = /^ramsnap: (took over the lock of |removed stale temporary file |temporary file .* belongs to running pid |cannot remove stale temporary file |completed the interrupted patch of |removed the journal of a patch of )/;

/**
 * The error line on stderr, `ramsnap: CODE: ...`: its code, or undefined
 * when stderr is not exactly that one line after any notices.
 */
export function errorCode(stderr: string): string | undefined {
  const lines = stderr.trimEnd().split('\n');
  const last = lines.pop() as string;
  if (!lines.every((l) => NOTICE.test(l))) return undefined;
  return /^ramsnap: ([A-Z0-9_]+): /.exec(last)?.[1];
}

/** Runs tasks a few at a time (the machine has two cores). */
export async function pool<T>(n: number, tasks: (() => Promise<T>)[]): Promise<T[]> {
  const out: T[] = new Array(tasks.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < tasks.length) {
        const i = next++;
        out[i] = await tasks[i]();
      }
    }),
  );
  return out;
}

/** Counts outcomes per phase. */
export function tally(rows: { phase: string; outcome: string }[]): Record<string, Record<string, number>> {
  const t: Record<string, Record<string, number>> = {};
  for (const r of rows) {
    t[r.phase] ??= {};
    t[r.phase][r.outcome] = (t[r.phase][r.outcome] ?? 0) + 1;
  }
  return t;
}

/** Writes a synthesized stream as a real sparse file. */
export function writeSynth(file: string, opts: SynthOptions): void {
  const f = synthesize(opts);
  const fd = fs.openSync(file, 'w');
  for (const e of f.extents) fs.writeSync(fd, e.data, 0, e.data.length, e.offset);
  fs.ftruncateSync(fd, f.size);
  fs.closeSync(fd);
}

/** Guest memory of every block (strict open, no guard: for files known to be settled). */
export async function memory(file: string, opts: { offset?: number } = {}): Promise<Map<string, Buffer>> {
  const s = await Snapshot.open(file, opts);
  try {
    const out = new Map<string, Buffer>();
    for (const b of s.blocks) out.set(b.name, Buffer.from(await s.read(b, 0, b.usedLength)));
    return out;
  } finally {
    await s.close();
  }
}

export type View = { complete: true; mem: Map<string, Buffer> } | { complete: false; code: string };

/**
 * What a reader makes of `file`, as ramsnap's commands read it
 * (analyze/open.ts openGuarded): complete with its guest memory, or
 * refused with a code.
 */
export async function readerView(file: string, opts: { offset?: number } = {}): Promise<View> {
  try {
    const { snap, guard } = await openGuarded(file, opts);
    try {
      const mem = new Map<string, Buffer>();
      for (const b of snap.blocks) mem.set(b.name, Buffer.from(await snap.read(b, 0, b.usedLength)));
      guard.check(snap.model.streamOffset);
      return { complete: true, mem };
    } finally {
      await snap.close();
    }
  } catch (err) {
    return { complete: false, code: String((err as RamsnapError).code ?? 'THROWN') };
  }
}

export function sameMemory(a: Map<string, Buffer>, b: Map<string, Buffer>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (!b.get(k)?.equals(v)) return false;
  return true;
}

export interface Beside {
  /** Temporary files of the target (`.NAME.ramsnap-tmp-PID-HEX`). */
  temps: string[];
  lock: boolean;
  journal: boolean;
  /** Anything else in the directory but the target. */
  others: string[];
}

/** What is in the target's directory besides the target. */
export function beside(target: string): Beside {
  const dir = path.dirname(target);
  const name = path.basename(target);
  const out: Beside = { temps: [], lock: false, journal: false, others: [] };
  for (const n of fs.readdirSync(dir)) {
    if (n === name) continue;
    if (n.startsWith(`.${name}${TEMP_MARK}`) && /^\d+-[0-9a-f]{8}$/.test(n.slice(`.${name}${TEMP_MARK}`.length))) out.temps.push(n);
    else if (n === `.${name}${LOCK_SUFFIX}`) out.lock = true;
    else if (n === `.${name}${JOURNAL_SUFFIX}`) out.journal = true;
    else out.others.push(n);
  }
  return out;
}

/**
 * Whether temporary file `file` is a lock being taken (writer/lock.ts
 * writes the lock under a temporary name, then links it into place): a
 * writer killed in between leaves it, and the next run removes it.
 */
export function isLockTemp(file: string): boolean {
  try {
    const owner = JSON.parse(fs.readFileSync(file, 'utf8')) as { token?: unknown; pid?: unknown };
    return typeof owner.token === 'string' && typeof owner.pid === 'number';
  } catch {
    return false;
  }
}

/**
 * The next run of a writer of `target`: opens a SnapshotWriter on it
 * (force) and aborts, which takes over a stale lock and removes stale
 * temporary files. Returns its notices and what is left beside the target.
 */
export async function nextWriterRun(target: string): Promise<{ notices: string[]; after: Beside }> {
  const notices: string[] = [];
  const prev = setNoticeHandler((l) => notices.push(l));
  try {
    const w = await SnapshotWriter.create(target, { machine: 'm', pageSize: 4096, blocks: [{ name: 'a', usedLength: 4096 }], force: true, fsync: false });
    await w.abort();
  } finally {
    setNoticeHandler(prev);
  }
  return { notices, after: beside(target) };
}
