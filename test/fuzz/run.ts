/**
 * `npm run fuzz`: structure-aware mutation fuzzing of the reader and the
 * CLI on real QEMU fixtures (test/fuzz/mutate.ts says what is mutated,
 * test/fuzz/check.ts what must hold).
 *
 * Inputs run in worker threads with a watchdog: an input that takes longer
 * than FUZZ_INPUT_TIMEOUT_MS is a hang (the worker is terminated and a new
 * one started), a worker that dies (out of memory: its heap is capped) is a
 * crash. Half of the inputs, until they run out, cut a fixture at one of its
 * structure boundaries; the rest are random recipes from the seed.
 *
 * Environment:
 *   FUZZ_SECONDS          stop starting inputs after this long (default 90)
 *   FUZZ_COUNT            stop after this many inputs (default: no limit)
 *   FUZZ_SEED             seed of the random recipes (default: random, printed)
 *   FUZZ_WORKERS          worker threads (default 1: the machine is shared)
 *   FUZZ_INPUT_TIMEOUT_MS watchdog per input (default 20000)
 *   FUZZ_BINARY_EVERY     every Nth input also runs the real binary (default 100; 0: never)
 *   FUZZ_HEAP_LIMIT_MIB   an input whose heap peak passes this is a crash (default 512)
 *   FUZZ_FIXTURES         comma-separated fixture names (default: all)
 *   FUZZ_REPLAY           a saved crash (.json) or a directory of them: run those recipes only
 *
 * The last line is `fuzz: N inputs, E error codes, C crashes, H hangs, peak heap M MiB`;
 * the exit status is 1 when there were crashes or hangs.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Failure, InputResult } from './check.js';
import { loadCorpus } from './corpus.js';
import { boundaryCuts, randomRecipe, type Recipe } from './mutate.js';
import type { WorkerInit, WorkerRequest } from './worker.js';

const env = process.env;
const num = (name: string, dflt: number): number => {
  const v = env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${v}`);
  return n;
};

const SECONDS = num('FUZZ_SECONDS', 90);
const COUNT = num('FUZZ_COUNT', Infinity);
const SEED = env.FUZZ_SEED ? Number(env.FUZZ_SEED) | 0 : (Math.random() * 2 ** 31) | 0;
const WORKERS = Math.max(1, num('FUZZ_WORKERS', 1));
const INPUT_TIMEOUT = num('FUZZ_INPUT_TIMEOUT_MS', 20_000);
const BINARY_EVERY = num('FUZZ_BINARY_EVERY', 100);
const HEAP_LIMIT = num('FUZZ_HEAP_LIMIT_MIB', 512) * 2 ** 20;
const FIXTURES = (env.FUZZ_FIXTURES ?? '').split(',').filter(Boolean);
const REPLAY = env.FUZZ_REPLAY || (process.argv[2] === '--replay' ? process.argv[3] : undefined);

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..', '..');
const BIN = path.join(repo, 'dist', 'analyze', 'bin.js');
const MiB = (n: number): string => (n / 2 ** 20).toFixed(1);

interface Stats {
  inputs: number;
  primary: Map<string, number>;
  codes: Map<string, number>;
  crashes: { recipe: Recipe; failures: Failure[]; file?: string }[];
  hangs: { recipe: Recipe; file?: string }[];
  peakHeap: number;
  peakRecipe?: Recipe;
  slowest: { ms: number; recipe?: Recipe };
  binaryRuns: number;
  sweepDone: number;
}

function loadReplay(p: string): Recipe[] {
  const files = fs.statSync(p).isDirectory() ? fs.readdirSync(p).filter((f) => f.endsWith('.json')).map((f) => path.join(p, f)) : [p];
  return files.map((f) => (JSON.parse(fs.readFileSync(f, 'utf8')) as { recipe: Recipe }).recipe);
}

async function main(): Promise<number> {
  const t0 = Date.now();
  const replay = REPLAY ? loadReplay(REPLAY) : undefined;
  const only = replay ? [...new Set(replay.map((r) => r.fixture))] : FIXTURES;
  const seeds = await loadCorpus(only);
  const maps = seeds.map((s) => s.map);
  const sweep = replay ? [] : boundaryCuts(maps, SEED);
  process.stderr.write(
    `fuzz: seed ${SEED} (FUZZ_SEED=${SEED} repeats this run), ${seeds.length} fixtures (${seeds.map((s) => s.name).join(', ')}), ` +
      `${sweep.length} boundary cuts, ${SECONDS} s / ${COUNT === Infinity ? 'no' : COUNT} input limit, ${WORKERS} worker(s); fixtures loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`,
  );

  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-fuzz-'));
  // Interrupted (^C): the sandboxes go too; findings already saved stay.
  process.once('SIGINT', () => {
    fs.rmSync(scratch, { recursive: true, force: true });
    process.exit(130);
  });
  let crashDir: string | undefined;
  const save = (kind: string, recipe: Recipe, failures: Failure[]): string => {
    crashDir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-fuzz-findings-'));
    const file = path.join(crashDir, `${kind}-${String(stats.crashes.length + stats.hangs.length).padStart(3, '0')}.json`);
    fs.writeFileSync(file, JSON.stringify({ kind, seed: SEED, recipe, failures }, null, 2) + '\n');
    return file;
  };

  const stats: Stats = { inputs: 0, primary: new Map(), codes: new Map(), crashes: [], hangs: [], peakHeap: 0, slowest: { ms: 0 }, binaryRuns: 0, sweepDone: 0 };
  const init: Omit<WorkerInit, 'workDir'> = {
    fixtures: seeds.map((s) => ({ name: s.name, packed: s.image.pack(), offset: s.offset })),
    bin: fs.existsSync(BIN) ? BIN : undefined,
  };
  if (!init.bin) process.stderr.write(`fuzz: ${BIN} missing (run tsc -p .): no binary samples\n`);

  // The input stream: replayed recipes, or boundary cuts interleaved with random recipes.
  let next = 0;
  let randomIndex = 0;
  let sweepIndex = 0;
  const deadline = t0 + SECONDS * 1000;
  const nextRecipe = (): Recipe | undefined => {
    if (replay) return next < replay.length ? replay[next++] : undefined;
    if (next >= COUNT || Date.now() >= deadline) return undefined;
    next++;
    if (sweepIndex < sweep.length && next % 2 === 1) return sweep[sweepIndex++];
    return randomRecipe(maps, SEED, randomIndex++);
  };

  const record = (recipe: Recipe, r: InputResult): void => {
    stats.inputs++;
    if (recipe.origin.startsWith('boundary')) stats.sweepDone++;
    stats.primary.set(r.primary, (stats.primary.get(r.primary) ?? 0) + 1);
    for (const c of r.codes) stats.codes.set(c, (stats.codes.get(c) ?? 0) + 1);
    if (r.peakHeap > stats.peakHeap) {
      stats.peakHeap = r.peakHeap;
      stats.peakRecipe = recipe;
    }
    stats.binaryRuns += r.binaryRuns;
    // Binary runs are node start-ups, not the reader: left out of the slowest input.
    const ms = r.ms - (r.steps.binary ?? 0);
    if (ms > stats.slowest.ms) stats.slowest = { ms, recipe };
    const failures = [...r.failures];
    if (r.peakHeap > HEAP_LIMIT) failures.push({ kind: 'heap', step: 'input', message: `heap peaked at ${MiB(r.peakHeap)} MiB (limit ${MiB(HEAP_LIMIT)} MiB)` });
    if (failures.length) {
      const file = save('crash', recipe, failures);
      stats.crashes.push({ recipe, failures, file });
      process.stderr.write(`CRASH ${recipe.fixture} [${recipe.ops.map((o) => o.why).join('; ')}]: ${failures.map((f) => `${f.kind} in ${f.step}: ${f.message}`).join(' | ')}\n  saved ${file}\n`);
    }
    if (replay) {
      process.stderr.write(`replay ${recipe.fixture} [${recipe.ops.map((o) => o.why).join('; ')}]: ${r.primary}, codes ${r.codes.join(' ') || '-'}, ${r.ms.toFixed(0)} ms, heap ${MiB(r.peakHeap)} MiB, ${failures.length} failures\n`);
    }
  };

  // Workers, each with a watchdog on its current input.
  let lastReport = Date.now();
  let requests = 0;
  const runWorker = async (k: number): Promise<void> => {
    const workDir = path.join(scratch, `w${k}`);
    fs.mkdirSync(workDir, { recursive: true });
    let worker: Worker | undefined;
    let ready: Promise<void> | undefined;
    const start = (): void => {
      worker = new Worker(path.join(here, 'worker.js'), {
        workerData: { ...init, workDir } satisfies WorkerInit,
        // A reader that allocates without bound dies here (counted as a crash) instead of taking the machine down.
        resourceLimits: { maxOldGenerationSizeMb: Math.ceil(HEAP_LIMIT / 2 ** 20) + 256 },
      });
      const w = worker;
      ready = new Promise((resolve, reject) => {
        w.once('message', () => resolve());
        w.once('error', reject);
      });
    };
    for (;;) {
      const recipe = nextRecipe();
      if (!recipe) break;
      if (!worker) start();
      await ready;
      const w = worker as Worker;
      const id = ++requests;
      const req: WorkerRequest = { id, recipe, binary: BINARY_EVERY > 0 && next % BINARY_EVERY === 0, variant: next };
      const outcome = await new Promise<{ result?: InputResult; hang?: boolean; died?: string; harness?: string }>((resolve) => {
        const timer = setTimeout(() => resolve({ hang: true }), INPUT_TIMEOUT + (req.binary ? 60_000 : 0));
        const onMessage = (m: { id?: number; result?: InputResult; harnessError?: string }): void => {
          if (m.id !== id) return;
          done();
          resolve(m.harnessError ? { harness: m.harnessError } : { result: m.result });
        };
        const onError = (e: Error): void => {
          done();
          resolve({ died: `${e.name}: ${e.message}${(e as NodeJS.ErrnoException).code ? ` (${(e as NodeJS.ErrnoException).code})` : ''}` });
        };
        const onExit = (code: number): void => {
          done();
          resolve({ died: `worker exited with ${code}` });
        };
        const done = (): void => {
          clearTimeout(timer);
          w.off('message', onMessage);
          w.off('error', onError);
          w.off('exit', onExit);
        };
        w.on('message', onMessage);
        w.once('error', onError);
        w.once('exit', onExit);
        w.postMessage(req);
      });
      if (outcome.result) {
        record(recipe, outcome.result);
      } else if (outcome.harness) {
        await w.terminate();
        throw new Error(`harness error on ${JSON.stringify(recipe)}:\n${outcome.harness}`);
      } else {
        await w.terminate();
        worker = undefined;
        stats.inputs++;
        if (outcome.hang) {
          const file = save('hang', recipe, [{ kind: 'worker', step: 'input', message: `no result after ${INPUT_TIMEOUT} ms` }]);
          stats.hangs.push({ recipe, file });
          process.stderr.write(`HANG ${recipe.fixture} [${recipe.ops.map((o) => o.why).join('; ')}]\n  saved ${file}\n`);
        } else {
          const failures: Failure[] = [{ kind: 'worker', step: 'input', message: outcome.died as string }];
          const file = save('crash', recipe, failures);
          stats.crashes.push({ recipe, failures, file });
          process.stderr.write(`CRASH ${recipe.fixture} [${recipe.ops.map((o) => o.why).join('; ')}]: worker died: ${outcome.died}\n  saved ${file}\n`);
        }
      }
      if (Date.now() - lastReport > 15_000) {
        lastReport = Date.now();
        process.stderr.write(`fuzz: ${stats.inputs} inputs after ${((Date.now() - t0) / 1000).toFixed(0)} s, ${stats.codes.size} codes, ${stats.crashes.length} crashes, ${stats.hangs.length} hangs\n`);
      }
    }
    if (worker) await worker.terminate();
  };
  try {
    await Promise.all(Array.from({ length: WORKERS }, (_, k) => runWorker(k)));
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }

  // Summary.
  const elapsed = (Date.now() - t0) / 1000;
  const sorted = (m: Map<string, number>): string => [...m].sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(', ');
  const out: string[] = [];
  out.push(`strict open outcome per input: ${sorted(stats.primary)}`);
  out.push(`error codes seen in any step (inputs): ${sorted(stats.codes)}`);
  out.push(`boundary cuts: ${stats.sweepDone} of ${sweep.length}; real binary runs: ${stats.binaryRuns}; slowest input ${stats.slowest.ms.toFixed(0)} ms${stats.slowest.recipe ? ` (${stats.slowest.recipe.fixture}: ${stats.slowest.recipe.ops.map((o) => o.why).join('; ')})` : ''}; ${elapsed.toFixed(0)} s`);
  if (stats.peakRecipe) out.push(`peak heap ${MiB(stats.peakHeap)} MiB with ${stats.peakRecipe.fixture}: ${stats.peakRecipe.ops.map((o) => o.why).join('; ')}`);
  if (crashDir) {
    out.push(`findings saved in ${crashDir}; reproduce one with: FUZZ_REPLAY=${crashDir}/<file>.json npm run fuzz (or node dist/test/fuzz/run.js --replay FILE)`);
  }
  out.push(`fuzz: ${stats.inputs} inputs, ${stats.codes.size} error codes, ${stats.crashes.length} crashes, ${stats.hangs.length} hangs, peak heap ${Math.ceil(stats.peakHeap / 2 ** 20)} MiB`);
  process.stdout.write(out.join('\n') + '\n');
  return stats.crashes.length + stats.hangs.length > 0 ? 1 : 0;
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
