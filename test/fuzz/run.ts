/**
 * `npm run fuzz`: structure-aware mutation fuzzing of everything that reads
 * a snapshot (test/fuzz/mutate.ts says what is mutated, hot.ts and
 * check.ts what must hold), guided by block coverage.
 *
 * Seeds are the real QEMU fixtures cut down to a few pages per block, one
 * with many blocks, the small legacy fixtures whole, and a few files of
 * ramsnap's own writer (seeds.ts), all in memory. Each input is read from
 * memory in a worker thread (hot.ts); one in FUZZ_SAMPLE_EVERY is also
 * written to disk and run through the CLI in-process and the writers
 * (check.ts), and one in FUZZ_BINARY_EVERY through the real binary too.
 *
 * Workers run batches of inputs. After each batch a worker takes V8's
 * block coverage of ramsnap's code (coverage.ts); when the batch ran new
 * blocks, its inputs are run again one at a time to find which did, and
 * those join the corpus, from which half of the later inputs grow.
 *
 * A watchdog reads each worker's current input and its start time from
 * shared memory: an input past FUZZ_INPUT_TIMEOUT_MS is a hang (the worker
 * is terminated and a new one started), a worker that dies (out of memory:
 * its heap is capped) is a crash.
 *
 * Environment:
 *   FUZZ_SECONDS          stop starting batches after this long, counted once the seeds are made (default 90)
 *   FUZZ_COUNT            stop after about this many inputs (default: no limit)
 *   FUZZ_SEED             seed of the random recipes (default: random, printed)
 *   FUZZ_WORKERS          worker threads (default 2)
 *   FUZZ_BATCH            inputs per batch (default 64)
 *   FUZZ_INPUT_TIMEOUT_MS watchdog per input (default 10000; a sampled input gets a minute more)
 *   FUZZ_SAMPLE_EVERY     every Nth input also goes through the CLI and the writers on a file (default 1000; 0: never)
 *   FUZZ_BINARY_EVERY     every Nth input also runs the real binary (default 10000; 0: never)
 *   FUZZ_COVERAGE         0: no coverage guidance (default 1)
 *   FUZZ_WHOLE            1: the whole fixtures are seeds too, besides the cut-down ones (slower)
 *   FUZZ_HEAP_LIMIT_MIB   an input whose heap peak passes this is a crash (default 512)
 *   FUZZ_FIXTURES         comma-separated fixture names (default: all)
 *   FUZZ_REPLAY           a saved finding (.json) or a directory of them: run those recipes only
 *
 * The last line is `fuzz: N inputs, E error codes, C crashes, H hangs, peak heap M MiB`;
 * the exit status is 1 when there were crashes or hangs.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { runInput, type CheckContext, type Failure, type FixtureBase, type InputResult } from './check.js';
import { loadCorpus, type Seed } from './corpus.js';
import { CoverageMap } from './coverage.js';
import { runHot } from './hot.js';
import { boundaryCuts, type Recipe } from './mutate.js';
import { smallSeeds } from './seeds.js';
import type { BatchRequest, BatchStats, WorkerInit, WorkerMessage } from './worker.js';
import { envNumber } from '../helpers/env.js';

const env = process.env;
const num = envNumber;

const SECONDS = num('FUZZ_SECONDS', 90);
const COUNT = num('FUZZ_COUNT', Infinity);
const SEED = env.FUZZ_SEED ? Number(env.FUZZ_SEED) | 0 : (Math.random() * 2 ** 31) | 0;
const WORKERS = Math.max(1, num('FUZZ_WORKERS', 2));
const BATCH = Math.max(1, num('FUZZ_BATCH', 64));
const INPUT_TIMEOUT = num('FUZZ_INPUT_TIMEOUT_MS', 10_000);
const SAMPLE_EVERY = num('FUZZ_SAMPLE_EVERY', 1000);
const BINARY_EVERY = num('FUZZ_BINARY_EVERY', 10000);
const COVERAGE = num('FUZZ_COVERAGE', 1) > 0;
const WHOLE = num('FUZZ_WHOLE', 0) > 0;
const HEAP_LIMIT = num('FUZZ_HEAP_LIMIT_MIB', 512) * 2 ** 20;
const FIXTURES = (env.FUZZ_FIXTURES ?? '').split(',').filter(Boolean);
const REPLAY = env.FUZZ_REPLAY || (process.argv[2] === '--replay' ? process.argv[3] : undefined);
/** Seed of the writer-made seeds: fixed, so that a saved recipe names the same seed file in every run. */
const WRITER_SEEDS = 20_261_206;

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..', '..');
const BIN = path.join(repo, 'dist', 'analyze', 'bin.js');
const MiB = (n: number): string => (n / 2 ** 20).toFixed(1);
/** A recipe in one line, its control characters escaped (the operations name hostile block names). */
const describeRecipe = (r: Recipe): string =>
  `${r.fixture} [${r.ops.map((o) => o.why).join('; ')}]`.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
/** Scratch space: tmpfs when there is one (the sampled inputs write files). */
const TMP = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

/** The seeds of a run (or of a replay: those its recipes name). */
async function loadSeeds(only: string[]): Promise<Seed[]> {
  const fixtures = await loadCorpus(only);
  const small = await smallSeeds(fixtures, WRITER_SEEDS);
  return WHOLE ? [...small, ...fixtures.filter((f) => !small.includes(f))] : small;
}

interface Stats {
  inputs: number;
  primary: Map<string, number>;
  codes: Map<string, number>;
  crashes: { recipe?: Recipe; failures: Failure[]; file?: string }[];
  hangs: { recipe?: Recipe; file?: string }[];
  peakHeap: number;
  peakRecipe?: Recipe;
  slowest: { ms: number; recipe?: Recipe };
  binaryRuns: number;
  sampled: number;
  steps: Map<string, number>;
}

async function main(): Promise<number> {
  if (REPLAY) return replay(REPLAY);
  const t0 = Date.now();
  const seeds = await loadSeeds(FIXTURES);
  const sweep = boundaryCuts(seeds.map((s) => s.map), SEED);
  process.stderr.write(
    `fuzz: seed ${SEED} (FUZZ_SEED=${SEED} repeats the random recipes), ${seeds.length} seeds (${seeds.map((s) => s.name).join(', ')}), ` +
      `${sweep.length} boundary cuts, ${SECONDS} s / ${COUNT === Infinity ? 'no' : COUNT} input limit, ${WORKERS} worker(s), batches of ${BATCH}, ` +
      `coverage ${COVERAGE ? 'on' : 'off'}; seeds made in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`,
  );

  const scratch = fs.mkdtempSync(path.join(TMP, 'ramsnap-fuzz-'));
  // Interrupted (^C): the sandboxes go too; findings already saved stay.
  process.once('SIGINT', () => {
    fs.rmSync(scratch, { recursive: true, force: true });
    process.exit(130);
  });
  let findingsDir: string | undefined;
  const stats: Stats = { inputs: 0, primary: new Map(), codes: new Map(), crashes: [], hangs: [], peakHeap: 0, slowest: { ms: 0 }, binaryRuns: 0, sampled: 0, steps: new Map() };
  const save = (kind: string, recipe: Recipe | undefined, failures: Failure[]): string => {
    findingsDir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-fuzz-findings-'));
    const file = path.join(findingsDir, `${kind}-${String(stats.crashes.length + stats.hangs.length).padStart(3, '0')}.json`);
    fs.writeFileSync(file, JSON.stringify({ kind, seed: SEED, recipe, failures }, null, 2) + '\n');
    return file;
  };
  const crash = (recipe: Recipe | undefined, failures: Failure[]): void => {
    const file = save('crash', recipe, failures);
    stats.crashes.push({ recipe, failures, file });
    process.stderr.write(`CRASH ${recipe ? describeRecipe(recipe) : '(between inputs)'}: ${failures.map((f) => `${f.kind} in ${f.step}: ${f.message}`).join(' | ')}\n  saved ${file}\n`);
  };

  const coverage = new CoverageMap();
  const corpus: Recipe[] = [];
  const packed = seeds.map((s) => ({ name: s.name, packed: s.image.pack(), offset: s.offset, map: s.map, reference: s.reference }));
  const bin = fs.existsSync(BIN) ? BIN : undefined;
  if (!bin) process.stderr.write(`fuzz: ${BIN} missing (npm run build): no binary samples\n`);

  let nextIndex = 0;
  let sweepIndex = 0;
  // The time limit counts from here: making the seeds takes 5 s on an idle machine and far longer on a loaded one.
  const tFuzz = Date.now();
  const cpu0 = process.cpuUsage();
  const deadline = tFuzz + SECONDS * 1000;
  let batchId = 0;
  let lastReport = Date.now();
  const workers: (Worker | undefined)[] = [];

  const merge = (s: BatchStats): void => {
    stats.inputs += s.inputs;
    for (const [k, n] of Object.entries(s.primary)) stats.primary.set(k, (stats.primary.get(k) ?? 0) + n);
    for (const [k, n] of Object.entries(s.codes)) stats.codes.set(k, (stats.codes.get(k) ?? 0) + n);
    for (const [k, n] of Object.entries(s.steps)) stats.steps.set(k, (stats.steps.get(k) ?? 0) + n);
    if (s.peakHeap > stats.peakHeap) {
      stats.peakHeap = s.peakHeap;
      stats.peakRecipe = s.peakRecipe;
    }
    if (s.slowest.ms > stats.slowest.ms) stats.slowest = s.slowest;
    stats.binaryRuns += s.binaryRuns;
    stats.sampled += s.sampled;
  };

  /** One worker slot: batches until the time or the count is up; restarted after a hang or a death. */
  const runSlot = async (k: number): Promise<void> => {
    const workDir = path.join(scratch, `w${k}`);
    const progress = new SharedArrayBuffer(16);
    const busy = new Int32Array(progress, 0, 2);
    const startedAt = new Float64Array(progress, 8, 1);
    for (;;) {
      if (Date.now() >= deadline || nextIndex >= COUNT) break;
      const w = new Worker(path.join(here, 'worker.js'), {
        workerData: { seeds: packed, seed: SEED, workDir, bin, coverage: COVERAGE, ran: [...coverage.ran], corpus, progress, heapLimit: HEAP_LIMIT } satisfies WorkerInit,
        // A reader that allocates without bound dies here (counted as a crash) instead of taking the machine down.
        resourceLimits: { maxOldGenerationSizeMb: Math.ceil(HEAP_LIMIT / 2 ** 20) + 256 },
      });
      workers[k] = w;
      const ended = await new Promise<'done' | 'restart'>((resolve) => {
        let recipes: Recipe[] = [];
        let inBatch = false;
        let finished = false;
        const finish = (how: 'done' | 'restart'): void => {
          if (finished) return;
          finished = true;
          clearInterval(watchdog);
          w.removeAllListeners();
          w.on('error', () => undefined);
          resolve(how);
        };
        const dispatch = (): void => {
          const count = Math.min(BATCH, COUNT - nextIndex);
          if (Date.now() >= deadline || count <= 0) {
            void w.terminate();
            finish('done');
            return;
          }
          const from = nextIndex;
          nextIndex += count;
          // The boundary sweep goes first, a quarter of each batch, until it is done.
          const cuts = sweep.slice(sweepIndex, sweepIndex + Math.min(Math.ceil(count / 4), sweep.length - sweepIndex));
          sweepIndex += cuts.length;
          inBatch = true;
          w.postMessage({ type: 'batch', id: ++batchId, from, count, sampleEvery: SAMPLE_EVERY, binaryEvery: BINARY_EVERY, sweep: cuts } satisfies BatchRequest);
        };
        const lost = (kind: 'hang' | 'died', message: string): void => {
          const at = Atomics.load(busy, 0);
          const recipe = at > 0 ? recipes[at - 1] : undefined;
          // The inputs of the batch before this one finished; their outcomes went with the worker.
          stats.inputs += at > 0 ? at : 0;
          if (kind === 'hang') {
            const file = save('hang', recipe, [{ kind: 'worker', step: 'input', message }]);
            stats.hangs.push({ recipe, file });
            process.stderr.write(`HANG ${recipe ? describeRecipe(recipe) : '(between inputs)'}: ${message}\n  saved ${file}\n`);
          } else if (inBatch || at > 0) {
            crash(recipe, [{ kind: 'worker', step: 'input', message }]);
          }
          Atomics.store(busy, 0, 0);
          void w.terminate();
          finish('restart');
        };
        const watchdog = setInterval(() => {
          const at = Atomics.load(busy, 0);
          if (at > 0 && Date.now() - startedAt[0] > INPUT_TIMEOUT + Atomics.load(busy, 1)) lost('hang', `no result after ${INPUT_TIMEOUT + Atomics.load(busy, 1)} ms`);
        }, 100);
        w.on('message', (m: WorkerMessage | { type: 'harness-error'; message: string }) => {
          switch (m.type) {
            case 'ready':
              dispatch();
              break;
            case 'batch-start':
              recipes = m.recipes;
              break;
            case 'finding':
              crash(m.recipe, m.failures);
              break;
            case 'batch-done': {
              inBatch = false;
              merge(m.stats);
              coverage.add(m.known, m.ran);
              if (m.interesting.length) {
                corpus.push(...m.interesting);
                for (const other of workers) if (other && other !== w) other.postMessage({ type: 'corpus', recipes: m.interesting });
              }
              if (Date.now() - lastReport > 15_000) {
                lastReport = Date.now();
                const cov = coverage.byFolder().map((c) => `${c.folder}/ ${((100 * c.ran) / Math.max(1, c.known)).toFixed(1)}%`).join(', ');
                process.stderr.write(
                  `fuzz: ${stats.inputs} inputs after ${((Date.now() - t0) / 1000).toFixed(0)} s, ${stats.codes.size} codes, ${stats.crashes.length} crashes, ${stats.hangs.length} hangs, corpus ${corpus.length}${COVERAGE ? `, blocks ${cov}` : ''}\n`,
                );
              }
              dispatch();
              break;
            }
            case 'harness-error':
              process.stderr.write(`fuzz: harness error in worker ${k}: ${m.message}\n`);
              lost('died', `harness error: ${m.message.split('\n')[0]}`);
              break;
          }
        });
        w.on('error', (e: Error) => lost('died', `${e.name}: ${e.message}${(e as NodeJS.ErrnoException).code ? ` (${(e as NodeJS.ErrnoException).code})` : ''}`));
        w.on('exit', (code) => lost('died', `worker exited with ${code}`));
      });
      workers[k] = undefined;
      if (ended === 'done') break;
    }
  };
  try {
    await Promise.all(Array.from({ length: WORKERS }, (_, k) => runSlot(k)));
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }

  // Summary.
  const elapsed = (Date.now() - tFuzz) / 1000;
  // CPU time of every thread of the process: inputs per CPU second do not depend on what else the machine runs.
  const cpu = process.cpuUsage(cpu0);
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  const sorted = (m: Map<string, number>): string => [...m].sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(', ');
  const out: string[] = [];
  out.push(`strict open outcome per input: ${sorted(stats.primary)}`);
  out.push(`error codes seen in any step (inputs): ${sorted(stats.codes)}`);
  out.push(`time per step (s, all inputs): ${[...stats.steps].sort((a, b) => b[1] - a[1]).map(([s, ms]) => `${s} ${(ms / 1000).toFixed(1)}`).join(', ')}`);
  out.push(
    `boundary cuts: ${sweepIndex} of ${sweep.length}; inputs through the CLI and writers on a file: ${stats.sampled}; real binary runs: ${stats.binaryRuns}; ` +
      `slowest input ${stats.slowest.ms.toFixed(0)} ms${stats.slowest.recipe ? ` (${describeRecipe(stats.slowest.recipe)})` : ''}`,
  );
  out.push(
    `${elapsed.toFixed(0)} s of fuzzing (after ${((tFuzz - t0) / 1000).toFixed(0)} s making seeds): ${(stats.inputs / elapsed).toFixed(0)} inputs/s; ` +
      `${cpuSeconds.toFixed(0)} s of CPU in all threads, ${(stats.inputs / Math.max(1e-3, cpuSeconds)).toFixed(0)} inputs per CPU second; load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`,
  );
  if (COVERAGE) {
    coverage.add(census(), []);
    out.push(`corpus: ${corpus.length} inputs that reached new blocks`);
    out.push(
      `block coverage (V8 blocks of dist/ that the fuzz inputs ran, of all V8 lists with every function compiled): ${coverage
        .byFolder()
        .map((c) => `${c.folder}/ ${c.ran} of ${c.known} (${((100 * c.ran) / Math.max(1, c.known)).toFixed(1)}%)`)
        .join(', ')}`,
    );
  }
  if (stats.peakRecipe) out.push(`peak heap ${MiB(stats.peakHeap)} MiB with ${describeRecipe(stats.peakRecipe)}`);
  if (findingsDir) out.push(`findings saved in ${findingsDir}; reproduce one with: FUZZ_REPLAY=${findingsDir}/<file>.json npm run fuzz (or node dist/test/fuzz/run.js --replay FILE)`);
  out.push(`fuzz: ${stats.inputs} inputs, ${stats.codes.size} error codes, ${stats.crashes.length} crashes, ${stats.hangs.length} hangs, peak heap ${Math.ceil(stats.peakHeap / 2 ** 20)} MiB`);
  process.stdout.write(out.join('\n') + '\n');
  return stats.crashes.length + stats.hangs.length > 0 ? 1 : 0;
}

/** Every block of the tracked folders, compiled eagerly in a child process (census.ts); none when that fails. */
function census(): string[] {
  try {
    return JSON.parse(execFileSync(process.execPath, ['--no-lazy', path.join(here, 'census.js')], { encoding: 'utf8', maxBuffer: 256 << 20 })) as string[];
  } catch (err) {
    process.stderr.write(`fuzz: no block census (${(err as Error).message.split('\n')[0]}): coverage counts only the functions the inputs compiled\n`);
    return [];
  }
}

/** Runs saved recipes in this thread, through the hot path and the whole slow path with the binary. */
async function replay(p: string): Promise<number> {
  const files = fs.statSync(p).isDirectory() ? fs.readdirSync(p).filter((f) => f.endsWith('.json')).map((f) => path.join(p, f)) : [p];
  const recipes = files.map((f) => (JSON.parse(fs.readFileSync(f, 'utf8')) as { recipe: Recipe }).recipe).filter(Boolean);
  const only = [...new Set(recipes.map((r) => r.fixture.replace(/~.*$/, '')).filter((n) => !n.startsWith('writer-')))];
  const seeds = await loadSeeds(only.length ? only : ['q35-mapped-ram']);
  const bases = new Map<string, FixtureBase>(seeds.map((s) => [s.name, { image: s.image, offset: s.offset }]));
  const scratch = fs.mkdtempSync(path.join(TMP, 'ramsnap-fuzz-replay-'));
  const hotDir = path.join(scratch, 'hot');
  fs.mkdirSync(hotDir);
  const ctx: CheckContext = { fixtures: bases, workDir: scratch, bin: fs.existsSync(BIN) ? BIN : undefined };
  let failures = 0;
  let peak = 0;
  const codes = new Set<string>();
  try {
    for (const [i, recipe] of recipes.entries()) {
      const base = bases.get(recipe.fixture);
      if (!base) throw new Error(`unknown seed ${recipe.fixture} (seeds: ${[...bases.keys()].join(', ')})`);
      const ref = bases.get(seeds.find((s) => s.name === recipe.fixture)?.reference ?? recipe.fixture);
      const hot = await runHot(base, recipe, { writers: true, scratch: hotDir, reference: ref });
      const full: InputResult = await runInput(ctx, recipe, { binary: true, variant: i, reference: ref });
      const all = [...hot.failures, ...full.failures];
      failures += all.length ? 1 : 0;
      peak = Math.max(peak, hot.peakHeap, full.peakHeap);
      for (const c of [...hot.codes, ...full.codes]) codes.add(c);
      process.stderr.write(
        `replay ${describeRecipe(recipe)}: ${hot.primary}, codes ${[...new Set([...hot.codes, ...full.codes])].join(' ') || '-'}, ${hot.ms.toFixed(0)} + ${full.ms.toFixed(0)} ms, ` +
          `${all.length} failures${all.map((f) => `\n  ${f.kind} in ${f.step}: ${f.message}`).join('')}\n`,
      );
    }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  process.stdout.write(`fuzz: ${recipes.length} inputs, ${codes.size} error codes, ${failures} crashes, 0 hangs, peak heap ${Math.ceil(peak / 2 ** 20)} MiB\n`);
  return failures ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`fuzz: harness failure: ${err.stack ?? String(err)}\n`);
    process.exitCode = 2;
  },
);
