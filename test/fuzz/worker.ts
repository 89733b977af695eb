/**
 * A fuzz worker thread: holds the fixtures' images, runs the inputs the
 * main thread sends one at a time, and samples its heap while they run.
 * The main thread's watchdog terminates it when an input takes too long
 * (a hang), and its resource limits end it if the heap grows without
 * bound.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runInput, sampleHeap, type CheckContext, type FixtureBase } from './check.js';
import { SparseImage, type PackedImage } from './image.js';
import type { Recipe } from './mutate.js';

export interface WorkerInit {
  fixtures: { name: string; packed: PackedImage; offset?: number }[];
  workDir: string;
  bin?: string;
}

export interface WorkerRequest {
  id: number;
  recipe: Recipe;
  binary: boolean;
  variant: number;
}

const init = workerData as WorkerInit;
const fixtures = new Map<string, FixtureBase>(init.fixtures.map((f) => [f.name, { image: SparseImage.unpack(f.packed), offset: f.offset }]));
const ctx: CheckContext = { fixtures, workDir: init.workDir, bin: init.bin };

// Between awaits the reader yields often (every positional read), so a 5 ms timer sees most peaks; each step ends with a sample too.
const timer = setInterval(sampleHeap, 5);
timer.unref();

const port = parentPort;
if (!port) throw new Error('worker.ts runs as a worker thread');
port.on('message', (req: WorkerRequest) => {
  runInput(ctx, req.recipe, { binary: req.binary, variant: req.variant }).then(
    (result) => port.postMessage({ id: req.id, result }),
    (err: Error) => port.postMessage({ id: req.id, harnessError: `${err?.stack ?? String(err)}` }),
  );
});
port.postMessage({ ready: true });
