/**
 * A fuzz worker thread: holds the seeds' images, makes and runs the
 * inputs of each batch the main thread asks for (input i of the run is
 * always the same random recipe, or one grown from the corpus), and
 * reports per batch: outcomes, findings, heap, and the blocks of ramsnap's
 * code the batch ran (coverage.ts).
 *
 * Before each input it writes the input's place in the batch and its start
 * time to a shared buffer, where the main thread's watchdog reads them: an
 * input over its time budget is a hang, and the worker is terminated.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { runInput, sampleHeap, type CheckContext, type Failure, type FixtureBase, type InputResult } from './check.js';
import { CoverageMap, CoverageProbe } from './coverage.js';
import { runHot } from './hot.js';
import { SparseImage, type PackedImage } from './image.js';
import type { FixtureMap } from './map.js';
import { extendRecipe, inputSeed, randomRecipe, type Recipe } from './mutate.js';

export interface WorkerInit {
  seeds: { name: string; packed: PackedImage; offset?: number; map: FixtureMap; reference?: string }[];
  seed: number;
  /** This worker's own scratch directory (tmpfs when there is one). */
  workDir: string;
  bin?: string;
  coverage: boolean;
  /** Blocks already run (a restarted worker does not rediscover them). */
  ran: string[];
  corpus: Recipe[];
  /** Shared with the watchdog: [busy (input index in batch + 1, 0 when idle), budget ms] as Int32; start time as Float64 at byte 8. */
  progress: SharedArrayBuffer;
  /** An input whose heap peak passes this (bytes) is a crash. */
  heapLimit: number;
}

/** A batch: inputs [from, from + count) of the run, and which of them also take the slow paths. */
export interface BatchRequest {
  type: 'batch';
  id: number;
  from: number;
  count: number;
  /** Every Nth input (by index) also runs in-process CLI and the writers on a file (check.ts runInput). */
  sampleEvery: number;
  /** Every Nth input also runs the real binary. */
  binaryEvery: number;
  /** Boundary cuts to run first in this batch (the sweep), then random or corpus recipes. */
  sweep: Recipe[];
}

export interface BatchStats {
  inputs: number;
  primary: Record<string, number>;
  codes: Record<string, number>;
  peakHeap: number;
  peakRecipe?: Recipe;
  slowest: { ms: number; recipe?: Recipe };
  binaryRuns: number;
  sampled: number;
  steps: Record<string, number>;
}

export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'batch-start'; id: number; recipes: Recipe[] }
  | { type: 'finding'; recipe: Recipe; failures: Failure[] }
  | { type: 'batch-done'; id: number; stats: BatchStats; known: string[]; ran: string[]; interesting: Recipe[] }
  | { type: 'corpus'; recipes: Recipe[] };

const init = workerData as WorkerInit;
const bases = new Map<string, FixtureBase>(init.seeds.map((s) => [s.name, { image: SparseImage.unpack(s.packed), offset: s.offset }]));
// Seeds that could not be cut down (a save killed half-way) or keep their large device sections cost several times
// the others: one input in HEAVY_EVERY.
const HEAVY_EVERY = 16;
const isHeavy = (name: string): boolean => (!name.includes('~') && !name.startsWith('writer-')) || name.endsWith('~devices');
const maps = init.seeds.filter((s) => !isHeavy(s.name)).map((s) => s.map);
const heavyMaps = init.seeds.filter((s) => isHeavy(s.name)).map((s) => s.map);
/** One input in STRICT_EVERY also opens strictly (the check that strict and lenient opens agree), another is plotted and diffed. */
const STRICT_EVERY = 4;
const mapOf = new Map(init.seeds.map((s) => [s.name, s.map]));
const referenceOf = new Map(init.seeds.map((s) => [s.name, bases.get(s.reference ?? s.name) as FixtureBase]));
const ctx: CheckContext = { fixtures: bases, workDir: path.join(init.workDir, 'cli'), bin: init.bin };
const hotScratch = path.join(init.workDir, 'hot');
fs.mkdirSync(ctx.workDir, { recursive: true });
fs.mkdirSync(hotScratch, { recursive: true });
const busy = new Int32Array(init.progress, 0, 2);
const startedAt = new Float64Array(init.progress, 8, 1);

const corpus: Recipe[] = [...init.corpus];
const covered = new CoverageMap();
covered.add([], init.ran);
/** Known blocks already sent to the main thread. */
const knownSent = new Set<string>();
const probe = init.coverage ? new CoverageProbe() : undefined;
/**
 * Most of the worker's time that finding which input of a batch reached
 * new blocks may take: early in a run nearly every batch does, and running
 * them all again would halve the throughput.
 */
const RERUN_SHARE = 0.05;
const startMs = performance.now();
let rerunMs = 0;

// Between awaits the reader yields often, so a timer sees most peaks; each input ends with a sample too.
setInterval(sampleHeap, 10).unref();

/** Input `index`: half of them grown from the corpus once there is one. */
function recipeFor(index: number): Recipe {
  const s = inputSeed(init.seed ^ 0x5bd1e995, index) >>> 0;
  if (corpus.length && s % 2 === 0) {
    const parent = corpus[(s >>> 1) % corpus.length];
    const map = mapOf.get(parent.fixture);
    if (map) return extendRecipe(parent, map, init.seed, index);
  }
  if (heavyMaps.length && (index % HEAVY_EVERY === 0 || !maps.length)) return randomRecipe(heavyMaps, init.seed, index);
  return randomRecipe(maps, init.seed, index);
}

async function runOne(recipe: Recipe, index: number, req: BatchRequest): Promise<InputResult> {
  const base = bases.get(recipe.fixture);
  if (!base) throw new Error(`unknown seed ${recipe.fixture}`);
  const sample = req.sampleEvery > 0 && index % req.sampleEvery === 0;
  const hot = await runHot(base, recipe, { writers: sample, scratch: hotScratch, strict: sample || index % STRICT_EVERY === 0, compare: sample || index % STRICT_EVERY === 1, reference: referenceOf.get(recipe.fixture) });
  if (!sample) return hot;
  const binary = !!init.bin && req.binaryEvery > 0 && index % req.binaryEvery === 0;
  const full = await runInput(ctx, recipe, { binary, variant: index, reference: referenceOf.get(recipe.fixture) });
  return {
    primary: hot.primary,
    codes: [...new Set([...hot.codes, ...full.codes])],
    failures: [...hot.failures, ...full.failures],
    ms: hot.ms + full.ms,
    peakHeap: Math.max(hot.peakHeap, full.peakHeap),
    binaryRuns: full.binaryRuns,
    steps: { ...hot.steps, sampled: full.ms },
  };
}

async function runBatch(req: BatchRequest): Promise<void> {
  const tb = performance.now();
  const recipes = [...req.sweep];
  for (let i = req.sweep.length; i < req.count; i++) recipes.push(recipeFor(req.from + i));
  const tRecipes = performance.now() - tb;
  port.postMessage({ type: 'batch-start', id: req.id, recipes } satisfies WorkerMessage);
  const stats: BatchStats = { inputs: 0, primary: {}, codes: {}, peakHeap: 0, slowest: { ms: 0 }, binaryRuns: 0, sampled: 0, steps: {} };
  for (const [k, recipe] of recipes.entries()) {
    const index = req.from + k;
    const sample = req.sampleEvery > 0 && index % req.sampleEvery === 0;
    startedAt[0] = Date.now();
    // Sampled inputs write files and start the binary: they get a minute more.
    Atomics.store(busy, 1, sample ? 60_000 : 0);
    Atomics.store(busy, 0, k + 1);
    const r = await runOne(recipe, index, req);
    Atomics.store(busy, 0, 0);
    stats.inputs++;
    stats.primary[r.primary] = (stats.primary[r.primary] ?? 0) + 1;
    for (const c of r.codes) stats.codes[c] = (stats.codes[c] ?? 0) + 1;
    if (r.peakHeap > stats.peakHeap) {
      stats.peakHeap = r.peakHeap;
      stats.peakRecipe = recipe;
    }
    stats.binaryRuns += r.binaryRuns;
    if (sample) stats.sampled++;
    const ms = r.ms - (r.steps.sampled ?? 0);
    if (ms > stats.slowest.ms) stats.slowest = { ms, recipe };
    for (const [s, t] of Object.entries(r.steps)) stats.steps[s] = (stats.steps[s] ?? 0) + t;
    if (r.peakHeap > init.heapLimit) r.failures.push({ kind: 'heap', step: 'input', message: `heap peaked at ${(r.peakHeap / 2 ** 20).toFixed(1)} MiB (limit ${(init.heapLimit / 2 ** 20).toFixed(0)} MiB)` });
    if (r.failures.length) port.postMessage({ type: 'finding', recipe, failures: r.failures } satisfies WorkerMessage);
  }
  stats.steps.recipes = tRecipes;
  stats.steps.inputs = performance.now() - tb - tRecipes;
  const tc = performance.now();
  const interesting: Recipe[] = [];
  let known: string[] = [];
  const ran: string[] = [];
  if (probe) {
    const take = await probe.take();
    known = take.known.filter((k) => !knownSent.has(k));
    for (const k of known) knownSent.add(k);
    if (covered.adds(take.ran) && rerunMs < RERUN_SHARE * (performance.now() - startMs)) {
      // The batch reached new blocks: run its inputs again one at a time (the hot path only) to find which did.
      for (const [k, recipe] of recipes.entries()) {
        startedAt[0] = Date.now();
        Atomics.store(busy, 1, 0);
        Atomics.store(busy, 0, k + 1);
        await runHot(bases.get(recipe.fixture) as FixtureBase, recipe, { strict: false, compare: true, reference: referenceOf.get(recipe.fixture) });
        Atomics.store(busy, 0, 0);
        const fresh = covered.add([], (await probe.take()).ran);
        if (fresh.length) interesting.push(recipe);
        ran.push(...fresh);
      }
      corpus.push(...interesting);
      rerunMs += performance.now() - tc;
    }
    // What only the writers of a sampled input ran (or a batch past the rerun budget) is attributed to no input, but counts.
    ran.push(...covered.add([], take.ran));
  }
  stats.steps.coverage = performance.now() - tc;
  port.postMessage({ type: 'batch-done', id: req.id, stats, known, ran, interesting } satisfies WorkerMessage);
}

const port = parentPort as NonNullable<typeof parentPort>;
if (!port) throw new Error('worker.ts runs as a worker thread');
let queue = Promise.resolve();
port.on('message', (m: BatchRequest | { type: 'corpus'; recipes: Recipe[] }) => {
  if (m.type === 'corpus') {
    corpus.push(...m.recipes);
    return;
  }
  queue = queue.then(() => runBatch(m)).catch((err: Error) => {
    port.postMessage({ type: 'harness-error', message: err?.stack ?? String(err) });
  });
});
(async () => {
  await probe?.start();
  port.postMessage({ type: 'ready' } satisfies WorkerMessage);
})();
