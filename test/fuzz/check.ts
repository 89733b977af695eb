/**
 * One fuzz input, end to end: the mutated file is written (sparse) into a
 * fresh sandbox and goes through the library (strict and lenient open,
 * reads of every block, the dump document) and through the CLI commands
 * in-process (info, verify, extract, read, dump, map, export, convert,
 * restore --print-qemu-args, plot, diff, delta, apply, text and JSON), and now and then through the
 * real binary. The fast fuzzer (run.ts) sends a sample of its inputs here. What must hold:
 *
 * - every failure is a RamsnapError with a code (a RamsnapFormatError with
 *   a sane offset); anything else thrown is a crash;
 * - strict and lenient opens agree on the first broken rule;
 * - text output has no terminal control characters, JSON output parses,
 *   stderr is at most one `ramsnap: CODE: ...` line, the binary never
 *   exits 70 or prints a stack trace, and exits as the in-process run did;
 * - extract creates files only inside its output directory, never follows
 *   a symlink planted there, and never replaces a file without --force.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import v8 from 'node:v8';
import { buildCli, report } from '../../analyze/cli.js';
import { stateDocument } from '../../analyze/dump-state.js';
import { RamsnapError, RamsnapFormatError } from '../../format/errors.js';
import { pythonJson } from '../../format/vmstate.js';
import { blockFileNames } from '../../reader/extract.js';
import { Snapshot, type OpenOptions } from '../../reader/snapshot.js';
import type { SparseImage } from './image.js';
import { applyRecipe, type Recipe } from './mutate.js';

export interface Failure {
  kind: 'exception' | 'bad-error' | 'inconsistent' | 'output' | 'escape' | 'symlink' | 'overwrite' | 'cli' | 'heap' | 'worker';
  step: string;
  message: string;
}

export interface InputResult {
  /** The strict open's outcome: OK or the error code. */
  primary: string;
  /** Every error code any step ended with. */
  codes: string[];
  failures: Failure[];
  ms: number;
  /** Largest heapUsed + external (which includes array buffers) seen while the input ran. */
  peakHeap: number;
  /** Binary runs made for this input. */
  binaryRuns: number;
  /** Milliseconds per step (for finding what is slow). */
  steps: Record<string, number>;
}

export interface FixtureBase {
  image: SparseImage;
  /** Open options the fixture needs (q35-offset: its stream offset). */
  offset?: number;
}

export interface CheckContext {
  fixtures: Map<string, FixtureBase>;
  /** Scratch directory of this worker; each input gets a fresh sandbox in it. */
  workDir: string;
  /** dist/analyze/bin.js, for the binary samples (left out: no binary runs). */
  bin?: string;
}

// ---------------------------------------------------------------------------
// Heap

let peak = 0;
/** The largest heap seen since resetPeak. */
export const peakHeap = (): number => peak;
export function resetPeak(): void {
  peak = 0;
  sampleHeap();
}
/** Samples the heap now; a timer calls it while inputs run, and every step ends with a call. */
export function sampleHeap(): void {
  // V8's own figures (what process.memoryUsage reports as heapUsed and external, which counts array buffers), without its RSS read.
  const h = v8.getHeapStatistics();
  peak = Math.max(peak, h.used_heap_size + h.external_memory);
}

// ---------------------------------------------------------------------------
// Checks

/** Terminal control characters (C0 other than newline, DEL, C1). */
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;
/** What extract may name a file: one safe path component (reader/extract.ts blockFileName). */
const SAFE_OUTPUT = /^[A-Za-z0-9+@-][A-Za-z0-9._+@-]*\.raw$/;
const VICTIM_TEXT = 'precious';

/** One input's findings: the error codes it ended with and what broke a rule. */
export class Run {
  codes = new Set<string>();
  failures: Failure[] = [];
  steps: Record<string, number> = {};
  time(step: string, t0: number): void {
    this.steps[step] = (this.steps[step] ?? 0) + performance.now() - t0;
  }
  constructor(
    readonly fileSize: () => number,
    /** Sample the heap after every step (the hot path samples on a timer instead: a sample costs a system call). */
    readonly sampleEachStep = true,
  ) {}

  fail(kind: Failure['kind'], step: string, message: string): void {
    this.failures.push({ kind, step, message });
  }

  /** Classifies a thrown value: a RamsnapError with a code is an outcome, anything else a crash. */
  thrown(step: string, err: unknown): string {
    if (err instanceof RamsnapError && typeof err.code === 'string' && err.code.length > 0) {
      this.codes.add(err.code);
      if (err instanceof RamsnapFormatError) {
        // Opening names where the file broke (inside it); a later read of a region past the end names where it tried to read.
        const inFile = !step.startsWith('open') || err.offset <= this.fileSize();
        if (!Number.isSafeInteger(err.offset) || err.offset < 0 || !inFile) {
          this.fail('bad-error', step, `${err.code} with offset ${err.offset} outside the file (${this.fileSize()} bytes): ${err.message}`);
        }
        if (typeof err.field !== 'string' || !err.field) this.fail('bad-error', step, `${err.code} without a field`);
      }
      return err.code;
    }
    const e = err as Error;
    const where = (e?.stack ?? '').split('\n').slice(1, 4).map((l) => l.trim()).join(' < ');
    this.fail('exception', step, `${e?.name ?? typeof err}: ${e?.message ?? String(err)}${where ? ` @ ${where}` : ''}`);
    return 'CRASH';
  }

  async guard<T>(step: string, fn: () => Promise<T>): Promise<{ ok: true; value: T } | { ok: false; code: string }> {
    const t0 = performance.now();
    try {
      const value = await fn();
      return { ok: true, value };
    } catch (err) {
      return { ok: false, code: this.thrown(step, err) };
    } finally {
      this.time(step.split(' ')[0], t0);
      if (this.sampleEachStep) sampleHeap();
    }
  }
}

export interface CliOutcome {
  exit: number;
  stdout: string;
  stderr: string;
  /** What the command threw, if it did (report() turned it into the exit status and stderr line). */
  thrown?: unknown;
}

/** Runs the CLI in this thread as bin.js would (buildCli, then report() on a throw), with stdout and stderr captured. */
export async function cliInProcess(argv: string[]): Promise<CliOutcome> {
  const out: string[] = [];
  const err: string[] = [];
  const capture = (into: string[]) =>
    ((chunk: string | Uint8Array, enc?: unknown, cb?: unknown): boolean => {
      into.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      const done = typeof enc === 'function' ? enc : cb;
      if (typeof done === 'function') (done as () => void)();
      return true;
    }) as typeof process.stdout.write;
  const origOut = process.stdout.write;
  const origErr = process.stderr.write;
  process.stdout.write = capture(out);
  process.stderr.write = capture(err);
  let exit: number;
  let thrown: unknown;
  let threw = false;
  process.exitCode = 0;
  try {
    await buildCli(argv).parseAsync();
    exit = Number(process.exitCode ?? 0);
  } catch (e) {
    threw = true;
    thrown = e;
    exit = report(e);
  } finally {
    process.stdout.write = origOut;
    process.stderr.write = origErr;
    process.exitCode = 0;
    sampleHeap();
  }
  return { exit, stdout: out.join(''), stderr: err.join(''), ...(threw ? { thrown } : {}) };
}

function checkStreams(run: Run, step: string, r: CliOutcome, json: boolean): void {
  if (![0, 1, 2].includes(r.exit)) run.fail('cli', step, `exit status ${r.exit}`);
  if (r.stderr) {
    if (!/^ramsnap: [^\n]*\n$/.test(r.stderr)) run.fail('output', step, `stderr is not one "ramsnap: " line: ${JSON.stringify(r.stderr.slice(0, 300))}`);
    if (/^ramsnap: [A-Z][A-Z0-9_]*: /.test(r.stderr) === false && r.exit !== 0) run.fail('output', step, `stderr line has no code: ${JSON.stringify(r.stderr.slice(0, 200))}`);
    if (CONTROL.test(r.stderr.slice(0, -1))) run.fail('output', step, `control character on stderr: ${JSON.stringify(r.stderr.slice(0, 200))}`);
    if (/^\s+at /m.test(r.stderr)) run.fail('output', step, 'stack trace on stderr');
  }
  if (json) {
    if (r.stdout) {
      try {
        JSON.parse(r.stdout);
      } catch (e) {
        run.fail('output', step, `stdout is not JSON: ${(e as Error).message}`);
      }
    }
  } else {
    const bad = CONTROL.exec(r.stdout.replace(/\n/g, ''));
    if (bad) {
      const at = r.stdout.indexOf(bad[0]);
      run.fail('output', step, `control character 0x${bad[0].charCodeAt(0).toString(16)} in text output: ${JSON.stringify(r.stdout.slice(Math.max(0, at - 60), at + 20))}`);
    }
  }
}

/** Everything under `dir` (not following symlinks), as relative paths with their type. */
function walk(dir: string, rel = ''): { rel: string; type: 'file' | 'dir' | 'symlink' | 'other' }[] {
  const out: { rel: string; type: 'file' | 'dir' | 'symlink' | 'other' }[] = [];
  for (const name of fs.readdirSync(path.join(dir, rel))) {
    const r = path.join(rel, name);
    const st = fs.lstatSync(path.join(dir, r));
    const type = st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
    out.push({ rel: r, type });
    if (type === 'dir') out.push(...walk(dir, r));
  }
  return out;
}

function runBinary(bin: string, argv: string[]): Promise<CliOutcome> {
  const env = { ...process.env };
  delete env.RAMSNAP_DEBUG;
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...argv], { encoding: 'utf8', maxBuffer: 64 << 20, env, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : err.killed ? -1 : -2) : 0;
      resolve({ exit: code, stdout, stderr });
    });
  });
}

// ---------------------------------------------------------------------------
// The input

export interface RunOptions {
  /** Also run the real binary on this input. */
  binary?: boolean;
  /** Even: info as text and verify as JSON; odd: the other way round (each input runs both commands). */
  variant?: number;
  /** The snapshot diff, delta and apply compare the input with (run.ts: the unmutated seed, or a delta's base). */
  reference?: FixtureBase;
}

export async function runInput(ctx: CheckContext, recipe: Recipe, opts: RunOptions = {}): Promise<InputResult> {
  const t0 = performance.now();
  peak = 0;
  sampleHeap();
  const base = ctx.fixtures.get(recipe.fixture);
  if (!base) throw new Error(`unknown fixture ${recipe.fixture}`);
  const img = applyRecipe(base.image, recipe);
  const tw = performance.now();
  const sandbox = path.join(ctx.workDir, 'in');
  fs.rmSync(sandbox, { recursive: true, force: true });
  // Outputs two levels down, so a name taken as a path ("../../x") would still land in the sandbox, where it is seen.
  const deep = path.join(sandbox, 'd1', 'd2');
  fs.mkdirSync(deep, { recursive: true });
  const file = path.join(sandbox, 'input.snap');
  img.writeFile(file);
  const victim = path.join(sandbox, 'victim.txt');
  fs.writeFileSync(victim, VICTIM_TEXT);
  const setupMs = performance.now() - tw;
  const dangling = path.join(sandbox, 'dangling-target');

  const run = new Run(() => img.size);
  run.steps.setup = setupMs;
  const openOpts: OpenOptions = base.offset !== undefined ? { offset: base.offset } : {};
  const offArgs = base.offset !== undefined ? ['--offset', String(base.offset)] : [];

  // 1. The library: strict, then lenient with device decoding, then reads.
  const strict = await run.guard('open strict', async () => (await Snapshot.open(file, openOpts)).close());
  const primary = strict.ok ? 'OK' : strict.code;
  const lenient = await run.guard('open lenient', () => Snapshot.open(file, { ...openOpts, lenient: true, decodeDevices: true }));
  let blockNames: string[] = [];
  if (lenient.ok) {
    const snap = lenient.value;
    const m = snap.model;
    const lenientCode = m.error?.code ?? 'OK';
    if (lenientCode !== primary && primary !== 'CRASH') run.fail('inconsistent', 'open', `strict open: ${primary}, lenient open: ${lenientCode}`);
    blockNames = m.blocks.map((b) => b.name);
    for (const b of m.blocks.slice(0, 8)) {
      if (b.pages === 0) continue;
      const n = Math.min(b.usedLength, 2 * b.pageSize);
      for (const at of [0, b.usedLength - n, Math.floor(b.pages / 2) * b.pageSize - (b.pages > 1 ? b.pageSize / 2 : 0)]) {
        if (at < 0 || at + n > b.usedLength) continue;
        await run.guard(`read ${b.name}`, () => snap.read(b, at, n));
      }
      await run.guard(`presentRuns ${b.name}`, async () => {
        let k = 0;
        for (const _ of snap.presentRuns(b)) if (++k > 1_000_000) break;
      });
    }
    await run.guard('dump document', async () => pythonJson(stateDocument(m)));
    await run.guard('close', () => snap.close());
  } else if (!strict.ok && lenient.code !== primary && primary !== 'CRASH' && lenient.code !== 'CRASH') {
    run.fail('inconsistent', 'open', `strict open: ${primary}, lenient open threw ${lenient.code}`);
  }

  // 2. The CLI, in this thread.
  const cli = async (argv: string[], json: boolean): Promise<CliOutcome> => {
    const t = performance.now();
    const r = await cliInProcess(argv);
    if ('thrown' in r) run.thrown(`cli ${argv[0]}`, r.thrown);
    run.time(`cli ${argv[0]}`, t);
    checkStreams(run, argv.filter((a) => a !== file).join(' '), r, json);
    if (r.exit !== 0) {
      const code = /^ramsnap: ([A-Z][A-Z0-9_]*): /.exec(r.stderr)?.[1];
      if (code) run.codes.add(code);
    }
    return r;
  };
  const results = new Map<string, CliOutcome>();
  const even = (opts.variant ?? 0) % 2 === 0;
  const readOnly: [string[], boolean][] = [
    even ? [['info', file], false] : [['info', '--json', file], true],
    even ? [['verify', '--json', file], true] : [['verify', file], false],
    [['dump', '--state', file], true],
    [['dump', '--desc', file], true],
  ];
  if (blockNames.length) readOnly.push([['read', file, '--block', blockNames[0], '--at', '0', '--length', '64'], false]);
  // Guest-physical memory: the map (machine type, block sizes and the chipset registers all come from the file) and a core.
  readOnly.push([['map', '--json', file], true], [['read', file, '--phys', even ? '0xfffffff0' : '0x40000000', '--length', '16'], false]);
  for (const [argv, json] of readOnly) results.set(argv.join(' '), await cli([...argv, ...offArgs], json));
  const core = path.join(deep, 'core');
  const exported = await cli(['export', file, '--format', 'elf', '-o', core, ...offArgs], false);
  results.set('export', exported);
  // A failed export leaves nothing; a core that was written is removed before the sandbox is looked at.
  if (exported.exit !== 0 && fs.existsSync(core)) run.fail('escape', 'export', `export failed (${exported.exit}) and left ${core}`);
  fs.rmSync(core, { force: true });
  // convert to the other layout: a failure leaves nothing, and what it writes opens.
  const converted = path.join(deep, 'converted.snap');
  const conv = await cli(['convert', file, '--to', even ? 'legacy' : 'mapped-ram', '-o', converted, ...offArgs], false);
  if (conv.exit !== 0 && fs.existsSync(converted)) run.fail('escape', 'convert', `convert failed (${conv.exit}) and left ${converted}`);
  if (conv.exit === 0) await run.guard('open converted', async () => (await Snapshot.open(converted)).close());
  fs.rmSync(converted, { force: true });
  // The instant-restore plan, as the command prints it.
  await cli(['restore', file, '--print-qemu-args', '--json', ...offArgs], true);
  // The picture, and diff, delta and apply against the reference (the unmutated seed, or a delta's base): a failure leaves nothing.
  const written = async (argv: string[], out: string): Promise<void> => {
    const r = await cli(argv, argv.includes('--json'));
    if (r.exit !== 0 && fs.existsSync(out)) run.fail('escape', argv[0], `${argv[0]} failed (${r.exit}) and left ${out}`);
    fs.rmSync(out, { force: true });
  };
  const picture = path.join(deep, 'plot.svg');
  await written(['plot', file, '-o', picture, ...offArgs], picture);
  if (opts.reference) {
    const ref = path.join(sandbox, 'reference.snap');
    opts.reference.image.writeFile(ref);
    const refArgs = opts.reference.offset !== undefined ? ['--offset', String(opts.reference.offset)] : [];
    // diff, delta and apply open both files with one --offset: only when the two agree.
    if (refArgs.join() === offArgs.join()) {
      await cli(['diff', '--json', ref, file, ...offArgs], true);
      const delta = path.join(deep, 'delta.snap');
      await written(['delta', ref, file, '-o', delta, ...offArgs], delta);
      const applied = path.join(deep, 'applied.snap');
      await written(['apply', ref, file, '-o', applied, ...offArgs], applied);
    }
  }

  // 3. extract: strict into out1; --salvage into out2 with symlinks planted at the names it will use, then --force.
  const out1 = path.join(deep, 'out1');
  const out2 = path.join(deep, 'out2');
  const single = path.join(deep, 'single.img');
  results.set('extract', await cli(['extract', file, '-o', out1, ...offArgs], false));
  fs.mkdirSync(out2);
  const names = [...blockFileNames(blockNames).values()];
  const planted: { name: string; target: string }[] = [];
  if (names[0]) planted.push({ name: names[0], target: victim });
  if (names[1]) planted.push({ name: names[1], target: dangling });
  for (const p of [...planted]) {
    try {
      fs.symlinkSync(p.target, path.join(out2, p.name));
    } catch {
      // A name the file system refuses (too long) cannot be planted, and extract cannot create it either.
      planted.splice(planted.indexOf(p), 1);
    }
  }
  await cli(['extract', file, '-o', out2, '--salvage', ...offArgs], false);
  for (const p of planted) {
    if (!fs.lstatSync(path.join(out2, p.name)).isSymbolicLink()) run.fail('overwrite', 'extract --salvage', `${p.name} (a planted symlink) was replaced without --force`);
  }
  const checkVictim = (step: string): void => {
    if (fs.readFileSync(victim, 'utf8') !== VICTIM_TEXT) run.fail('symlink', step, 'the file behind a planted symlink was written');
    if (fs.existsSync(dangling)) run.fail('symlink', step, 'a dangling planted symlink was followed (its target was created)');
  };
  checkVictim('extract --salvage');
  const forced = await cli(['extract', '--json', file, '-o', out2, '--salvage', '--force', ...offArgs], true);
  checkVictim('extract --salvage --force');
  if (forced.exit === 0 || forced.stdout) {
    try {
      const outputs = (JSON.parse(forced.stdout || '{}').outputs ?? []) as { path: string }[];
      const real = fs.realpathSync(out2);
      for (const o of outputs) {
        if (path.dirname(path.resolve(o.path)) !== path.resolve(out2) || !fs.realpathSync(o.path).startsWith(real + path.sep)) {
          run.fail('escape', 'extract --force', `output ${JSON.stringify(o.path)} is not directly inside the output directory`);
        } else if (!fs.lstatSync(o.path).isFile()) {
          run.fail('symlink', 'extract --force', `output ${JSON.stringify(o.path)} is not a regular file`);
        }
      }
    } catch {
      // Not JSON: already reported by checkStreams.
    }
  }
  if (blockNames.length) {
    // --block NAME -o FILE, with a file already there: refused without --force.
    fs.writeFileSync(single, VICTIM_TEXT);
    const r = await cli(['extract', file, '--block', blockNames[blockNames.length - 1], '-o', single, '--salvage', ...offArgs], false);
    if (r.exit === 0 || fs.readFileSync(single, 'utf8') !== VICTIM_TEXT) run.fail('overwrite', 'extract --block', 'an existing output file was replaced without --force');
  }

  // 4. Nothing created outside the output directories.
  for (const e of walk(sandbox)) {
    const parts = e.rel.split(path.sep);
    const inOut = parts.length === 4 && parts[0] === 'd1' && parts[1] === 'd2' && (parts[2] === 'out1' || parts[2] === 'out2');
    const expected =
      e.rel === 'input.snap' ||
      e.rel === 'reference.snap' ||
      e.rel === 'victim.txt' ||
      ['d1', path.join('d1', 'd2'), path.join('d1', 'd2', 'out1'), path.join('d1', 'd2', 'out2'), path.join('d1', 'd2', 'single.img')].includes(e.rel) ||
      (inOut && SAFE_OUTPUT.test(parts[3]) && (e.type === 'file' || (e.type === 'symlink' && parts[2] === 'out2')));
    if (!expected) run.fail('escape', 'extract', `unexpected ${e.type} ${JSON.stringify(e.rel)} in the sandbox`);
  }

  // 5. The real binary, now and then: same exit status, one error line, never 70.
  let binaryRuns = 0;
  if (opts.binary && ctx.bin) {
    const samples: [string, string[]][] = [
      even ? ['info', ['info', file]] : ['info --json', ['info', '--json', file]],
      even ? ['verify --json', ['verify', '--json', file]] : ['verify', ['verify', file]],
      ['dump --state', ['dump', '--state', file]],
      ['extract', ['extract', file, '-o', path.join(deep, 'out-bin'), ...offArgs]],
    ];
    for (const [key, argv] of samples) {
      const t = performance.now();
      const b = await runBinary(ctx.bin, key === 'extract' ? argv : [...argv, ...offArgs]);
      run.time('binary', t);
      binaryRuns++;
      const step = `binary ${key}`;
      if (b.exit === 70) run.fail('cli', step, `exit 70 (internal error): ${b.stderr.trim().slice(0, 300)}`);
      else if (b.exit < 0) run.fail('cli', step, `did not finish: ${b.stderr.trim().slice(0, 200)}`);
      checkStreams(run, step, b, key.includes('json') || key.startsWith('dump'));
      const inProc = key === 'extract' ? results.get('extract') : results.get(argv.join(' '));
      if (inProc && inProc.exit !== b.exit) run.fail('cli', step, `binary exits ${b.exit}, in-process ${inProc.exit}`);
      if (inProc && inProc.exit !== 0 && inProc.stderr !== b.stderr && key !== 'extract') {
        run.fail('cli', step, `binary says ${JSON.stringify(b.stderr.slice(0, 200))}, in-process ${JSON.stringify(inProc.stderr.slice(0, 200))}`);
      }
    }
  }
  sampleHeap();
  fs.rmSync(sandbox, { recursive: true, force: true });
  return { primary, codes: [...run.codes], failures: run.failures, ms: performance.now() - t0, peakHeap: peak, binaryRuns, steps: run.steps };
}
