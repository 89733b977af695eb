/**
 * Runs the ramsnap CLI inside this process and reports, on one stderr line
 * marked RAMSNAP_BENCH_RESULT, how long the module import and the command
 * took and the process's peak memory: the benchmark's "without process
 * start" numbers. Usage: node dist/test/bench/timed-cli.js COMMAND FILE ...
 */
import { performance } from 'node:perf_hooks';
import { IN_PROCESS_MARK, type InProcess } from './measure.js';

const t0 = performance.now();
const { run } = await import('../../analyze/cli.js');
const t1 = performance.now();
const exitCode = await run(process.argv.slice(2));
const t2 = performance.now();
const result: InProcess = { importMs: t1 - t0, runMs: t2 - t1, exitCode, maxRssKiB: process.resourceUsage().maxRSS };
process.stderr.write(`\n${IN_PROCESS_MARK}${JSON.stringify(result)}\n`);
