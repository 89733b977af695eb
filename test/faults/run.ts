/**
 * Fault injection figures: `npm run faults` (builds, then runs
 * dist/test/faults/run.js). `FAULTS_N` faults per kind (default 20),
 * `FAULTS_SEED` for the random points (default: the clock; printed).
 *
 * Kinds, each through the `ramsnap` command line (in-process in the crash
 * child, test/helpers/crash-child.ts, where a kill or an error must land at
 * a point of the run; as the real binary otherwise):
 * - SIGKILL at a random point of create, convert (to legacy and to
 *   mapped-ram, alternately), patch (over present and absent pages) and
 *   sparsify: at a random phase the run announces, a random few ms in;
 * - ENOSPC: the output (or the patched file) on a tmpfs sized at random
 *   between too small for the first write and almost big enough (root
 *   only: tmpfs needs mount; skipped otherwise, and said so);
 * - EFBIG: `ulimit -f` at a random size below what the run writes;
 * - EIO: the n-th write (n at random among the run's writes) fails;
 * - concurrent writers: a second create, convert, patch or sparsify of a
 *   target while a first, slowed down, is writing it;
 * - readers during patches: `readerView` (ramsnap's open + read + guard,
 *   as every command reads) in a loop while patches run.
 *
 * Per fault, what the run left: `intact` (nothing at a new target, or the
 * original file unchanged), `complete` (the finished output, or the file
 * fully patched), or `refused` (the command failed with one line naming a
 * code, or a reader refused the file with a code); `torn` counts files at
 * the target that verify as complete while being neither the original nor
 * the expected output (must be 0), and `left after next run` counts
 * temporary files, locks and journals still there after the next run of
 * the same command (`ramsnap patch --recover` for patch; must be 0).
 * Exit status 1 if either is not 0.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Snapshot } from '../../reader/snapshot.js';
import type { Fault, Job } from '../helpers/crash-child.js';
import { pageBytes } from '../helpers/synth.js';
import { BIN, beside, cli, errorCode, memory, pool, readerView, rng, runChild, sameMemory, writeSynth, type Beside, type CliRun } from './harness.js';

const N = Number(process.env.FAULTS_N ?? 20);
const SEED = Number(process.env.FAULTS_SEED ?? Date.now() % 1e9);
const random = rng(SEED);
const PS = 4096;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-faults-'));
/** ms each write of the first of two concurrent writers is held back, so that the second meets it at work. */
const SLOW = 15;
/** About how long `ramsnap` takes to start, before it takes a lock. */
const STARTUP_MS = 250;

type Outcome = 'intact' | 'complete' | 'refused';

interface Result {
  outcome: Outcome;
  /** The code the command or a reader refused with. */
  code?: string;
  /** A file at the target that verifies as complete but is neither state it may be (or a malformed error). */
  torn?: string;
  /** Temporary files, locks and journals left after the next run. */
  left: number;
}

interface Row {
  kind: string;
  results: Result[];
  note?: string;
}

const leftCount = (b: Beside): number => b.temps.length + (b.lock ? 1 : 0) + (b.journal ? 1 : 0);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
let serial = 0;
const freshDir = (root = work): string => {
  const d = path.join(root, `f${serial++}`);
  fs.mkdirSync(d);
  return d;
};

// ---------------------------------------------------------------------------
// Inputs and the states each command may leave

/** A mapped-ram file with device state: `n` pages, two thirds present, zero pages and stale bytes to sparsify. */
function snapInput(file: string, n: number): void {
  const pages = new Map<number, Uint8Array>();
  for (let p = 0; p < n; p++) if (p % 3 !== 1) pages.set(p, p % 7 === 0 ? new Uint8Array(PS) : pageBytes(PS, p + 3));
  writeSynth(file, { blocks: [{ name: 'pc.ram', usedLength: n * PS, pages }, { name: 'pc.rom', usedLength: 4 * PS, pages: new Map([[2, pageBytes(PS, 9)]]) }], staleBytes: true });
}

interface WriterCmd {
  name: string;
  argv: (out: string) => string[];
  /** The uninterrupted output. */
  want: Buffer;
  /** A mapped-ram output names the regions writes hit. */
  layout?: string;
  /** Bytes of disk the output takes (allocated): a tmpfs smaller than what is left of this fills up. */
  bytes: number;
  /** Writes per phase of an uninterrupted run, to pick the one that fails. */
  writes: Record<string, number>;
  /** How long an uninterrupted run slowed down by SLOW works after taking the lock (ms). */
  workMs: number;
}

const inputs = {
  image: path.join(work, 'image.raw'),
  snap: path.join(work, 'input.snap'),
};

async function writerCommands(): Promise<WriterCmd[]> {
  fs.writeFileSync(inputs.image, pageBytes(512 * PS, 17));
  snapInput(inputs.snap, 768);
  const defs: { name: string; argv: (out: string) => string[]; mapped: boolean }[] = [
    { name: 'create', argv: (out) => ['create', '-o', out, '--force', '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${inputs.image}`], mapped: true },
    { name: 'convert to legacy', argv: (out) => ['convert', inputs.snap, '-o', out, '--force', '--to', 'legacy'], mapped: false },
    { name: 'convert to mapped-ram', argv: (out) => ['convert', inputs.snap, '-o', out, '--force', '--to', 'mapped-ram'], mapped: true },
  ];
  const out: WriterCmd[] = [];
  for (const d of defs) {
    const ref = path.join(freshDir(), 'ref.snap');
    const r = await cli(d.argv(ref));
    if (r.code !== 0) throw new Error(`${d.name}: ${r.stderr}`);
    const want = fs.readFileSync(ref);
    const layout = d.mapped ? ref : undefined;
    const dry = await runChild({ mode: 'cli', argv: d.argv(path.join(freshDir(), 'out.snap')), layout, delayMs: SLOW });
    out.push({ name: d.name, argv: d.argv, want, layout, bytes: fs.statSync(ref).blocks * 512, writes: dry.writes, workMs: dry.ms - (dry.phaseAt.lock ?? 0) });
  }
  return out;
}

/** What a writer left at `target` (which did not exist before): nothing, the finished output, or something torn. */
function judgeWriter(target: string, want: Buffer): { outcome: Outcome; torn?: string } {
  if (!fs.existsSync(target)) return { outcome: 'intact' };
  if (fs.readFileSync(target).equals(want)) return { outcome: 'complete' };
  return { outcome: 'intact', torn: `${target} is at the target and differs from the finished output` };
}

/** The next run of a writer: the same command, uninterrupted; then what is left beside the target. */
async function nextWriterRun(cmd: WriterCmd, target: string): Promise<number> {
  const r = await cli(cmd.argv(target));
  if (r.code !== 0) return 1000; // counted as left behind: the next run must succeed
  return leftCount(beside(target));
}

/** A command's failure must be one line naming a code, and exit 1. */
function refusal(r: CliRun | { code: number | null; stderr: string }): { code?: string; torn?: string } {
  const code = errorCode(r.stderr);
  if (r.code !== 1 || !code) return { torn: `exit ${r.code}, stderr ${JSON.stringify(r.stderr)}` };
  return { code };
}

interface PatchSetup {
  file: string;
  argv: string[];
  original: Map<string, Buffer>;
  patched: Map<string, Buffer>;
  /** Bytes of disk the patch needs (pages written before the journal, and the journal). */
  need: number;
  /** The end of the furthest write into the file (a file size limit below it fails the patch). */
  reach: number;
}

/** pc.ram of 256 pages, half present in runs; the patch covers present and absent pages, with zero pages in it. */
async function patchSetup(dir: string, name = 'vm.snap'): Promise<PatchSetup> {
  const file = path.join(dir, name);
  const pages = new Map<number, Uint8Array>();
  for (let p = 0; p < 256; p++) if (Math.floor(p / 16) % 2 === 0) pages.set(p, pageBytes(PS, p + 11));
  writeSynth(file, { blocks: [{ name: 'pc.ram', usedLength: 256 * PS, pages }], staleBytes: true });
  const at = 8 * PS + 123;
  const length = 160 * PS;
  const data = pageBytes(length, 5);
  for (let p = 3; p * PS < length; p += 5) data.fill(0, p * PS, Math.min(length, (p + 1) * PS));
  const dataFile = path.join(dir, 'patch.bin');
  fs.writeFileSync(dataFile, data);
  const original = await memory(file);
  const ram = Buffer.from(original.get('pc.ram')!);
  ram.set(data, at);
  // Disk the patch takes: every touched page that ends non-zero (absent ones in the file, present ones in the journal).
  let need = 0;
  let reach = 0;
  for (let p = Math.floor(at / PS); p < Math.ceil((at + length) / PS); p++) {
    if (!ram.subarray(p * PS, (p + 1) * PS).some((b) => b !== 0)) continue;
    need += PS;
    reach = (p + 1) * PS;
  }
  const snap = await Snapshot.open(file);
  reach += snap.block('pc.ram').mappedRam!.pagesOffset;
  await snap.close();
  return { file, argv: ['patch', file, '--block', 'pc.ram', '--at', String(at), '--data-file', dataFile], original, patched: new Map([['pc.ram', ram]]), need, reach };
}

/** What a patch left: a reader's view of the file (refused, or exactly one of the two states), then recovery. */
async function judgePatch(s: PatchSetup): Promise<Result> {
  const view = await readerView(s.file);
  let outcome: Outcome;
  let code: string | undefined;
  let torn: string | undefined;
  if (!view.complete) {
    outcome = 'refused';
    code = view.code;
    if (code !== 'PATCH_IN_PROGRESS') torn = `a reader refused the file with ${code}`;
  } else if (sameMemory(view.mem, s.original)) outcome = 'intact';
  else if (sameMemory(view.mem, s.patched)) outcome = 'complete';
  else {
    outcome = 'complete';
    torn = 'the file verifies as complete with memory that is neither the original nor the patched';
  }
  const r = await cli(['patch', s.file, '--recover']);
  const after = await readerView(s.file);
  if (r.code !== 0 || !after.complete || !(sameMemory(after.mem, s.original) || sameMemory(after.mem, s.patched))) torn ??= `after --recover: ${r.stderr.trim() || 'not exactly original or patched'}`;
  return { outcome, code, torn, left: leftCount(beside(s.file)) };
}

interface SparsifySetup {
  file: string;
  bytes: Buffer;
  mem: Map<string, Buffer>;
  ino: number;
}

function sparsifySetup(dir: string): SparsifySetup {
  const file = path.join(dir, 'vm.snap');
  snapInput(file, 384);
  return { file, bytes: fs.readFileSync(file), mem: new Map(), ino: fs.statSync(file).ino };
}

/** What sparsify left: the original bytes, or a new file with the same memory and layout. */
async function judgeSparsify(s: SparsifySetup): Promise<{ outcome: Outcome; torn?: string }> {
  if (s.mem.size === 0) s.mem = await memory(s.file); // the original's memory, read once before any run
  if (fs.statSync(s.file).ino === s.ino) return fs.readFileSync(s.file).equals(s.bytes) ? { outcome: 'intact' } : { outcome: 'intact', torn: 'the original was changed in place' };
  const view = await readerView(s.file);
  if (view.complete && sameMemory(view.mem, s.mem)) return { outcome: 'complete' };
  return { outcome: 'complete', torn: 'the sparsified file is not the same memory' };
}

async function nextSparsify(file: string): Promise<number> {
  const r = await cli(['sparsify', file]);
  return r.code === 0 ? leftCount(beside(file)) : 1000;
}

// ---------------------------------------------------------------------------
// Kinds

/** Writes per phase of an uninterrupted patch, and the disk and writes of a sparsify (set in main). */
let patchWrites: Record<string, number> = {};
let patchWorkMs = 0;
let sparsifyNeed: { bytes: number; writes: Record<string, number> } = { bytes: 0, writes: {} };

async function measure(): Promise<void> {
  const s = await patchSetup(freshDir());
  const p = await runChild({ mode: 'cli', argv: s.argv, layout: s.file, delayMs: SLOW });
  if (p.code !== 0) throw new Error(`patch: ${p.stderr}`);
  patchWrites = p.writes;
  patchWorkMs = p.ms - (p.phaseAt.lock ?? 0);
  const sp = sparsifySetup(freshDir());
  const r = await runChild({ mode: 'cli', argv: ['sparsify', sp.file], layout: sp.file, delayMs: 0 });
  if (r.code !== 0) throw new Error(`sparsify: ${r.stderr}`);
  sparsifyNeed = { bytes: fs.statSync(sp.file).blocks * 512, writes: r.writes };
}

const WRITER_PHASES = ['lock', 'head', 'pages', 'bitmaps', 'tail', 'fsync:tail', 'rename', 'renamed', 'dirsync', 'unlock'];
const PATCH_PHASES = ['lock', 'hidden', 'fsync:hidden', 'journal', 'fsync:journal', 'invalidate', 'pages', 'bitmaps', 'fsync:bitmaps', 'restore', 'fsync:restore', 'unlink:journal', 'unlock'];

async function killWriters(cmds: WriterCmd[], name: string): Promise<Row> {
  const results = await pool(
    2,
    Array.from({ length: N }, (_, i) => async (): Promise<Result> => {
      const cmd = name === 'create' ? cmds[0] : cmds[1 + (i % 2)];
      const target = path.join(freshDir(), 'out.snap');
      const phase = cmd.name === 'convert to legacy' ? pick(['open', 'lock', 'write', 'fsync:tail', 'rename']) : pick(WRITER_PHASES);
      const job: Job = { mode: 'cli', argv: cmd.argv(target), layout: cmd.layout, delayMs: 2 };
      await runChild(job, phase, random() * 20);
      const j = judgeWriter(target, cmd.want);
      return { ...j, left: await nextWriterRun(cmd, target) };
    }),
  );
  return { kind: `SIGKILL ${name}`, results };
}

async function killPatch(): Promise<Row> {
  const results = await pool(
    2,
    Array.from({ length: N }, () => async (): Promise<Result> => {
      const s = await patchSetup(freshDir());
      await runChild({ mode: 'cli', argv: s.argv, layout: s.file, delayMs: 2 }, pick(PATCH_PHASES), random() * 15);
      return judgePatch(s);
    }),
  );
  return { kind: 'SIGKILL patch', results };
}

async function killSparsify(): Promise<Row> {
  const results = await pool(
    2,
    Array.from({ length: N }, () => async (): Promise<Result> => {
      const s = sparsifySetup(freshDir());
      s.mem = await memory(s.file);
      await runChild({ mode: 'cli', argv: ['sparsify', s.file], layout: s.file, delayMs: 2 }, pick(['open', ...WRITER_PHASES]), random() * 15);
      const j = await judgeSparsify(s);
      return { ...j, left: await nextSparsify(s.file) };
    }),
  );
  return { kind: 'SIGKILL sparsify', results };
}

/** One of the four commands with a fault injected by `inject`, which runs the command and returns how it ended. */
interface Target {
  /** Disk the run takes. */
  bytes: number;
  /** The end of the furthest write (default: the output's or the file's size). */
  reach?: number;
  layout?: string;
  /** Writes per phase of an uninterrupted run. */
  writes: Record<string, number>;
  /** Phases whose writes may fail (EIO). */
  phases: string[];
}

async function faultEach(kind: string, cmds: WriterCmd[], inject: (argv: string[], dir: string, t: Target) => Promise<CliRun>, dirFor: () => string): Promise<Row> {
  const results: Result[] = [];
  for (let i = 0; i < N; i++) {
    const which = i % 4;
    const dir = dirFor();
    if (which < 2) {
      const cmd = which === 0 ? cmds[0] : cmds[1 + (Math.floor(i / 4) % 2)];
      const target = path.join(dir, 'out.snap');
      const r = await inject(cmd.argv(target), dir, { bytes: cmd.bytes, layout: cmd.layout, writes: cmd.writes, phases: cmd.layout ? ['pages', 'bitmaps', 'tail'] : ['write'] });
      const j = judgeWriter(target, cmd.want);
      const f = r.code === 0 ? {} : refusal(r);
      results.push({ outcome: r.code === 0 ? j.outcome : 'refused', code: f.code, torn: j.torn ?? f.torn, left: leftCount(beside(target)) });
    } else if (which === 2) {
      const s = await patchSetup(dir);
      const r = await inject(s.argv, dir, { bytes: s.need, reach: s.reach, layout: s.file, writes: patchWrites, phases: ['hidden', 'journal', 'pages', 'bitmaps', 'restore'] });
      const j = await judgePatch(s);
      const f = r.code === 0 ? {} : refusal(r);
      results.push({ ...j, outcome: r.code === 0 ? j.outcome : 'refused', code: f.code ?? j.code, torn: j.torn ?? f.torn });
    } else {
      const s = sparsifySetup(dir);
      s.mem = await memory(s.file);
      const r = await inject(['sparsify', s.file], dir, { bytes: sparsifyNeed.bytes, layout: s.file, writes: sparsifyNeed.writes, phases: ['pages', 'bitmaps', 'tail'] });
      const j = await judgeSparsify(s);
      const f = r.code === 0 ? {} : refusal(r);
      results.push({ outcome: r.code === 0 ? j.outcome : 'refused', code: f.code, torn: j.torn ?? f.torn, left: leftCount(beside(s.file)) });
    }
  }
  return { kind, results };
}

async function enospc(cmds: WriterCmd[]): Promise<Row> {
  if (process.getuid?.() !== 0) return { kind: 'ENOSPC (tmpfs)', results: [], note: 'skipped: mounting a tmpfs needs root' };
  const mounts: string[] = [];
  try {
    return await faultEach(
      'ENOSPC (tmpfs)',
      cmds,
      async (argv, dir, o) => {
        // The run's directory is a tmpfs, shrunk now to what its files use plus a random share of what the run writes.
        const st = fs.statfsSync(dir);
        const used = (st.blocks - st.bfree) * st.bsize;
        const size = Math.ceil((used + random() * o.bytes * 0.95) / 4096) * 4096;
        const m = spawnSync('mount', ['-o', `remount,size=${size}`, dir]);
        if (m.status !== 0) throw new Error(`remount: ${m.stderr}`);
        return cli(argv);
      },
      () => {
        const dir = freshDir();
        const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', dir]);
        if (m.status !== 0) throw new Error(`mount: ${m.stderr}`);
        mounts.push(dir);
        return dir;
      },
    );
  } finally {
    for (const m of mounts) spawnSync('umount', [m]);
  }
}

async function efbig(cmds: WriterCmd[]): Promise<Row> {
  return faultEach(
    'EFBIG (ulimit -f)',
    cmds,
    (argv, dir, o) => {
      // A limit at a random point below the furthest byte the run writes: the end of the new file (its size: the writers size it first), or of a patch's last page.
      const existing = fs.readdirSync(dir).reduce((n, f) => Math.max(n, fs.statSync(path.join(dir, f)).size), 0);
      const reach = o.reach ?? (existing || (o.layout ? fs.statSync(o.layout).size : o.bytes));
      const limitKiB = Math.max(64, Math.floor((reach * (0.2 + 0.75 * random())) / 1024));
      return cli([], 'bash', ['-c', `ulimit -f ${limitKiB}; exec "${process.execPath}" "${BIN}" ${argv.map((a) => `"${a}"`).join(' ')}`]);
    },
    () => freshDir(),
  );
}

async function eio(cmds: WriterCmd[]): Promise<Row> {
  return faultEach(
    'EIO mid-write',
    cmds,
    async (argv, _dir, o) => {
      const phase = pick(o.phases.filter((p) => (o.writes[p] ?? 0) > 0));
      const fail: Fault = { phase, nth: 1 + Math.floor(random() * o.writes[phase]), errno: 'EIO' };
      const r = await runChild({ mode: 'cli', argv, layout: o.layout, delayMs: 0, fail });
      return { code: r.code ?? 1, stdout: r.stdout, stderr: r.stderr };
    },
    () => freshDir(),
  );
}

/** A second writer of a target while a first, slowed down, writes it: one finishes, the other is refused with TARGET_LOCKED. */
async function concurrent(cmds: WriterCmd[]): Promise<Row> {
  const results: Result[] = [];
  for (let i = 0; i < N; i++) {
    const dir = freshDir();
    const pair = i % 4;
    let first: Job;
    let second: string[];
    let judge: () => Promise<{ outcome: Outcome; torn?: string }>;
    let s: PatchSetup | undefined;
    if (pair === 0 || pair === 1) {
      const a = cmds[0];
      const b = pair === 0 ? cmds[0] : cmds[2];
      const target = path.join(dir, 'out.snap');
      first = { mode: 'cli', argv: a.argv(target), layout: a.layout, delayMs: SLOW };
      second = b.argv(target);
      judge = async () => {
        const bytes = fs.existsSync(target) ? fs.readFileSync(target) : undefined;
        return bytes && (bytes.equals(a.want) || bytes.equals(b.want)) ? { outcome: 'complete' } : { outcome: 'intact', torn: 'the target is neither output' };
      };
    } else {
      s = await patchSetup(dir);
      first = { mode: 'cli', argv: s.argv, layout: s.file, delayMs: SLOW };
      second = pair === 2 ? s.argv : ['sparsify', s.file];
      const setup = s;
      judge = async () => {
        const v = await readerView(setup.file);
        return v.complete && sameMemory(v.mem, setup.patched) ? { outcome: 'complete' } : { outcome: 'intact', torn: 'the file is not the patched memory' };
      };
    }
    // The second starts at a random point of the first's work (from when it took the lock), less its own start-up.
    const workMs = pair < 2 ? cmds[0].workMs : patchWorkMs;
    let second2: Promise<CliRun> | undefined;
    const r1 = await runChild(first, undefined, Infinity, (phase) => {
      if (phase === 'lock' && !second2) second2 = new Promise((res) => setTimeout(() => res(cli(second)), Math.max(0, random() * (workMs - STARTUP_MS))));
    });
    if (!second2) throw new Error(`the first writer never took the lock: ${r1.stderr}`);
    const r2 = await second2;
    const j = await judge();
    let outcome: Outcome = j.outcome;
    let code: string | undefined;
    let torn = j.torn;
    if (r1.code !== 0) torn ??= `the first writer failed: ${r1.stderr}`;
    if (r2.code !== 0) {
      const f = refusal(r2);
      outcome = 'refused';
      code = f.code;
      torn ??= f.torn;
      if (code && code !== 'TARGET_LOCKED') torn ??= `refused with ${code}`;
    }
    results.push({ outcome, code, torn, left: leftCount(beside(s ? s.file : path.join(dir, 'out.snap'))) });
  }
  return { kind: 'concurrent writers', results, note: 'the second of two writers of one target, started while the first (slowed down) runs' };
}

/** Readers in a loop while N patches run: each read is complete (and exactly one of the states) or refused. */
async function readersDuringPatch(): Promise<Row> {
  const dir = freshDir();
  const s = await patchSetup(dir);
  const fills = [0x41, 0x42];
  const states = [s.original];
  for (const f of fills) {
    const m = Buffer.from(s.original.get('pc.ram')!);
    m.fill(f, 5 * PS + 7, 200 * PS + 9);
    states.push(new Map([['pc.ram', m]]));
  }
  let running = true;
  const results: Result[] = [];
  const writer = (async () => {
    for (let i = 0; i < N; i++) {
      await runChild({ mode: 'cli', argv: ['patch', s.file, '--block', 'pc.ram', '--at', String(5 * PS + 7), '--fill', String(fills[i % 2]), '--length', String(195 * PS + 2)], layout: s.file, delayMs: 1 });
    }
    running = false;
  })();
  const reader = async (): Promise<void> => {
    while (running) {
      const v = await readerView(s.file);
      if (!v.complete) results.push({ outcome: 'refused', code: v.code, left: 0, torn: ['PATCH_IN_PROGRESS', 'FILE_CHANGED'].includes(v.code) ? undefined : `refused with ${v.code}` });
      else {
        const i = states.findIndex((st) => sameMemory(st, v.mem));
        results.push({ outcome: i === 0 ? 'intact' : 'complete', left: 0, torn: i < 0 ? 'a torn state read as complete' : undefined });
      }
    }
  };
  await Promise.all([writer, reader(), reader()]);
  const left = leftCount(beside(s.file));
  if (results.length) results[results.length - 1].left = left;
  return { kind: 'reader during patch', results, note: `${results.length} reads by 2 readers during ${N} patches; intact = read as the original, complete = read as one of the patched states` };
}

// ---------------------------------------------------------------------------

function table(rows: Row[]): string {
  const out = ['| kind | injected | intact | complete | refused (codes) | complete-looking files left behind | temp files left after the next run |', '|---|---:|---:|---:|---|---:|---:|'];
  for (const r of rows) {
    if (r.results.length === 0) {
      out.push(`| ${r.kind} | 0 | | | ${r.note ?? ''} | | |`);
      continue;
    }
    const n = (o: Outcome) => r.results.filter((x) => x.outcome === o).length;
    const codes: Record<string, number> = {};
    for (const x of r.results) if (x.outcome === 'refused') codes[x.code ?? '?'] = (codes[x.code ?? '?'] ?? 0) + 1;
    const refused = n('refused') ? `${n('refused')} (${Object.entries(codes).map(([c, k]) => `${c} ${k}`).join(', ')})` : '0';
    const torn = r.results.filter((x) => x.torn).length;
    const left = r.results.reduce((s, x) => s + x.left, 0);
    out.push(`| ${r.kind} | ${r.results.length} | ${n('intact')} | ${n('complete')} | ${refused} | ${torn} | ${left} |`);
  }
  return out.join('\n');
}

async function main(): Promise<number> {
  const t0 = Date.now();
  console.log(`ramsnap faults: ${N} per kind, seed ${SEED} (FAULTS_SEED=${SEED} to repeat), ${new Date().toISOString()}, node ${process.version}, ${os.type()} ${os.release()}`);
  const cmds = await writerCommands();
  await measure();
  const rows: Row[] = [];
  const step = async (f: () => Promise<Row>): Promise<void> => {
    const r = await f();
    rows.push(r);
    const torn = r.results.filter((x) => x.torn);
    console.log(`  ${r.kind}: ${r.results.length} done${torn.length ? `, ${torn.length} BAD: ${torn.slice(0, 3).map((x) => x.torn).join('; ')}` : ''}`);
  };
  await step(() => killWriters(cmds, 'create'));
  await step(() => killWriters(cmds, 'convert'));
  await step(killPatch);
  await step(killSparsify);
  await step(() => enospc(cmds));
  await step(() => efbig(cmds));
  await step(() => eio(cmds));
  await step(() => concurrent(cmds));
  await step(readersDuringPatch);
  console.log('');
  console.log(table(rows));
  for (const r of rows) if (r.note) console.log(`- ${r.kind}: ${r.note}`);
  console.log(`\n${((Date.now() - t0) / 1000).toFixed(0)} s`);
  const bad = rows.some((r) => r.results.some((x) => x.torn || x.left));
  fs.rmSync(work, { recursive: true, force: true });
  return bad ? 1 : 0;
}

process.exitCode = await main();
