/**
 * `npm run differential`: ramsnap against QEMU's own loader on mutated real
 * QEMU snapshots (test/differential/engine.ts), printed as the agreement
 * matrix with every disagreement class.
 *
 * Environment:
 *   DIFF_INPUTS      inputs, the unmutated seeds included (default 1000)
 *   DIFF_SEED        seed of the random recipes (default 1)
 *   DIFF_JOBS        QEMUs at a time, 1 or 2 (default 2)
 *   DIFF_TIMEOUT_MS  a load not finished after this long is a hang (default 10000)
 *   DIFF_BINARY_EVERY every Nth input also runs the real binary (default 50; 0: never)
 *   DIFF_FIXTURES    comma-separated seed names (default: every seed QEMU here can load)
 *   DIFF_FINDINGS    directory for each class's first example (default .tmp/differential-findings)
 *   DIFF_REPLAY      a finding (.json) or a directory of them: run those recipes only
 *   DIFF_CACHE       where seeds saved under TCG are kept (default: the system temp directory)
 *
 * Exit status 1 on a false accept, a memory difference, a stricter class not
 * in test/differential/explained.ts, or the real binary disagreeing; 2 when
 * QEMU is missing.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { qemuAvailable } from '../../fixtures/qemu.js';
import type { Recipe } from '../fuzz/mutate.js';
import { failuresOf, runDifferential } from './engine.js';
import { formatReport } from './report.js';
import { loadSeeds } from './seeds.js';
import { envNumber } from '../helpers/env.js';

const env = process.env;
const num = envNumber;

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '..', '..', '..');

function loadReplay(p: string): Recipe[] {
  const files = fs.statSync(p).isDirectory() ? fs.readdirSync(p).filter((f) => f.endsWith('.json')).sort().map((f) => path.join(p, f)) : [p];
  return files.map((f) => (JSON.parse(fs.readFileSync(f, 'utf8')) as { recipe: Recipe }).recipe);
}

async function main(): Promise<number> {
  if (!qemuAvailable('qemu-system-x86_64')) {
    console.error('differential: qemu-system-x86_64 (QEMU >= 9) is not installed; nothing to compare with');
    return 2;
  }
  const seed = env.DIFF_SEED ? Number(env.DIFF_SEED) | 0 : 1;
  const findingsDir = env.DIFF_FINDINGS ?? path.join(repo, '.tmp', 'differential-findings');
  fs.rmSync(findingsDir, { recursive: true, force: true });
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-differential-'));
  // Straight to the file descriptor: the CLI runs in-process and captures process.stdout while it
  // does, so a progress line written through it would land inside a verify's JSON.
  const log = (s: string): void => void fs.writeSync(1, `differential: ${s}\n`);
  try {
    const seeds = await loadSeeds({ only: (env.DIFF_FIXTURES ?? '').split(',').filter(Boolean), log });
    log(`seeds: ${seeds.map((s) => s.name).join(', ')}; seed ${seed}`);
    const report = await runDifferential({
      seeds,
      inputs: num('DIFF_INPUTS', 1000),
      seed,
      jobs: num('DIFF_JOBS', 2),
      timeoutMs: num('DIFF_TIMEOUT_MS', 10_000),
      workDir,
      findingsDir,
      binaryEvery: num('DIFF_BINARY_EVERY', 50),
      bin: path.join(repo, 'dist', 'analyze', 'bin.js'),
      replay: env.DIFF_REPLAY ? loadReplay(env.DIFF_REPLAY) : undefined,
      log,
    });
    console.log(formatReport(report, { seed, findingsDir }));
    return failuresOf(report).length || report.binaryMismatches.length ? 1 : 0;
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error(`differential: ${(err as Error)?.stack ?? String(err)}`);
    process.exitCode = 2;
  },
);
