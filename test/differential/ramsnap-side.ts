/**
 * ramsnap's verdict on a file: `verify --json` and `extract --block RAM`,
 * run in this process through the CLI module (as bin.js runs them), and for
 * a sample through the real binary, which must agree.
 *
 * cliInProcess swaps process.stdout while a command runs, so in-process
 * commands run one at a time even when two QEMUs load at once.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { cliInProcess, type CliOutcome } from '../fuzz/check.js';

export interface RamsnapVerdict {
  /** OK, or the error code verify ended with. */
  verify: string;
  warnings: string[];
  /** The field verify's error names (vmdescription.devices, section[apic].version_id, ...). */
  errorField?: string;
  /** Path of the extracted main RAM when verify said OK and extract succeeded. */
  extracted?: string;
  /** verify said OK but the file has no such block (no RAM section, or blocks of another VM): it leaves guest RAM as it is, zero in a fresh QEMU. */
  noRam?: boolean;
  /** extract's code when it failed after verify said OK (ramsnap disagreeing with itself). */
  extractError?: string;
  /** Set when the real binary ran and disagreed with the in-process run. */
  binaryMismatch?: string;
}

let queue: Promise<unknown> = Promise.resolve();
function serial<T>(fn: () => Promise<T>): Promise<T> {
  const p = queue.then(fn, fn);
  queue = p.catch(() => undefined);
  return p;
}

/** The code of a `ramsnap: CODE: message` line, or `EXIT n`. */
function codeOf(r: CliOutcome): string {
  if (r.exit === 0) return 'OK';
  return /^ramsnap: ([A-Z][A-Z0-9_]*):/.exec(r.stderr)?.[1] ?? `EXIT ${r.exit}`;
}

function runBinary(bin: string, argv: string[]): Promise<CliOutcome> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...argv], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ exit: code, stdout, stderr });
    });
  });
}

export async function ramsnapVerdict(file: string, ramBlock: string, out: string, opts: { offset?: number; bin?: string }): Promise<RamsnapVerdict> {
  const off = opts.offset !== undefined ? ['--offset', String(opts.offset)] : [];
  const verifyArgs = ['verify', '--json', file, ...off];
  const v = await serial(() => cliInProcess(verifyArgs));
  let warnings: string[] = [];
  let errorField: string | undefined;
  try {
    const j = JSON.parse(v.stdout) as { warnings?: { code: string }[]; checks?: { error?: { field?: string } }[] };
    warnings = j.warnings?.map((w) => w.code) ?? [];
    errorField = j.checks?.find((c) => c.error)?.error?.field;
  } catch {
    // verify printed no JSON (it failed before the report): the code is on stderr.
  }
  const verdict: RamsnapVerdict = { verify: codeOf(v), warnings, ...(errorField ? { errorField } : {}) };
  if (opts.bin) {
    const b = await runBinary(opts.bin, verifyArgs);
    if (b.exit !== v.exit || codeOf(b) !== verdict.verify) verdict.binaryMismatch = `verify: binary ${codeOf(b)} (exit ${b.exit}), in-process ${verdict.verify} (exit ${v.exit})`;
  }
  if (verdict.verify !== 'OK') return verdict;
  fs.rmSync(out, { force: true });
  const extractArgs = ['extract', file, ...off, '--block', ramBlock, '-o', out];
  const x = await serial(() => cliInProcess(extractArgs));
  if (x.exit !== 0) {
    if (codeOf(x) === 'UNKNOWN_BLOCK') verdict.noRam = true;
    else verdict.extractError = codeOf(x);
    return verdict;
  }
  if (opts.bin) {
    const copy = `${out}.bin`;
    const b = await runBinary(opts.bin, [...extractArgs.slice(0, -1), copy]);
    if (b.exit !== 0 || !sameFile(out, copy)) verdict.binaryMismatch = `extract: binary exit ${b.exit} ${codeOf(b)}, or different bytes`;
    fs.rmSync(copy, { force: true });
  }
  verdict.extracted = out;
  return verdict;
}

function sameFile(a: string, b: string): boolean {
  const x = fs.readFileSync(a);
  const y = fs.readFileSync(b);
  return x.equals(y);
}
