/**
 * The ramsnap command line. buildCli() builds the parser without running
 * it, so tests can drive it; run() maps errors to one line on stderr (and,
 * with --json, a JSON error object on stdout) and an exit code: 0 ok, 1 bad
 * file or failed check, 2 bad usage, 128 + N when signal N stopped it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import yargs, { type Arguments, type Argv } from 'yargs';
import { RamsnapError, RamsnapIoError, RamsnapUsageError, ioError } from '../format/errors.js';
import { undoPending } from '../writer/cleanup.js';
import * as info from './commands/info.js';
import * as verify from './commands/verify.js';
import * as extract from './commands/extract.js';
import * as read from './commands/read.js';
import * as dump from './commands/dump.js';
import * as create from './commands/create.js';
import * as convert from './commands/convert.js';
import * as patch from './commands/patch.js';
import * as sparsify from './commands/sparsify.js';
import * as options from './commands/options.js';
import * as save from './commands/save.js';
import * as restore from './commands/restore.js';
import * as map from './commands/map.js';
import * as exportCommand from './commands/export.js';
import * as diff from './commands/diff.js';
import * as delta from './commands/delta.js';
import * as apply from './commands/apply.js';
import * as plot from './commands/plot.js';

import { EXIT_INTERNAL, EXIT_INVALID, EXIT_OK, EXIT_USAGE } from './exit.js';
import { errorLine, printable } from './human.js';
import { handleSignals, receivedSignal, signalExitCode } from './interrupt.js';
import { errorJson } from './open.js';

export function buildCli(argv: string[]): Argv {
  const y: Argv = yargs(argv);
  return y
    .scriptName('ramsnap')
    .usage('$0 <command> FILE [options]\n\nInspect, verify and extract QEMU mapped-ram (and legacy) snapshot files.')
    .command(info)
    .command(verify)
    .command(extract)
    .command(read)
    .command(map)
    .command(exportCommand)
    .command(diff)
    .command(delta)
    .command(apply)
    .command(plot)
    .command(dump)
    .command(create)
    .command(convert)
    .command(patch)
    .command(sparsify)
    .command(options)
    .command(save)
    .command(restore)
    .demandCommand(1, 'name a command')
    .strict()
    .help()
    .alias('h', 'help')
    .version(packageVersion())
    .middleware((a) => oneValueEach(a, y), true)
    .wrap(null)
    .epilogue(
      'Exit status: 0 ok, 1 invalid or incomplete file (or failed check, or an I/O error), 2 bad usage, 130/143 stopped by SIGINT/SIGTERM (what it had not finished is removed); diff, as cmp: 0 same, 1 different, 2 trouble.\n' +
        'Outputs holding guest memory are created 0600 (--mode to change); --force never replaces a device, FIFO, socket or directory.\n' +
        'See SPEC.md for the format and every error code, docs/writers.md for outputs.',
    )
    .fail((msg, err) => {
      if (err) throw err;
      throw new RamsnapUsageError('USAGE', msg, 'argv');
    })
    .exitProcess(false);
}

/**
 * The version in package.json. Read at run time from the nearest
 * package.json named ramsnap above this module, which is the same file
 * whether this runs from source, from tsc's dist/ or from esbuild's
 * bundle (where yargs' own lookup finds nothing and says "unknown").
 */
export function packageVersion(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'ramsnap' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // no package.json here: look further up
    }
    const up = path.dirname(dir);
    if (up === dir) return 'unknown';
    dir = up;
  }
}

/**
 * A flag that takes one value, given twice (`--block a --block b`), is a
 * usage error: yargs would hand the command an array. Flags declared as
 * arrays, and --capability (documented as repeatable), may repeat. `-o -`
 * is refused here too, for every command that writes: outputs are sparse
 * files built under a temporary name and renamed, which stdout cannot be.
 */
function oneValueEach(argv: Arguments, y: Argv): void {
  const repeatable = new Set([...((y as unknown as { getOptions(): { array: string[] } }).getOptions().array ?? []), 'capability', 'cap', '_']);
  for (const [key, value] of Object.entries(argv)) {
    if (Array.isArray(value) && !repeatable.has(key) && key.length > 1) {
      throw new RamsnapUsageError('USAGE', `--${key} was given ${value.length} times (${value.map((v) => JSON.stringify(String(v))).join(', ')}); give it once`, key);
    }
  }
  if (argv.output === '-') {
    throw new RamsnapUsageError(
      'BAD_OUTPUT',
      '-o - (standard output) is not supported: outputs are sparse files built under a temporary name and renamed when complete; for guest memory on stdout use: ramsnap read FILE --block NAME --at 0 --length N --raw, or give -o ./- for a file named "-"',
      'output',
    );
  }
}

/** Whether the command line asks for JSON (a JSON error object is then printed on stdout too). */
export function wantsJson(argv: string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--json' || a === '--json=true') return true;
  }
  return false;
}

export async function run(argv: string[]): Promise<number> {
  process.exitCode = EXIT_OK;
  errorReported = false;
  const stopHandling = handleSignals();
  try {
    await buildCli(argv).parseAsync();
  } catch (err) {
    process.exitCode = report(err, { json: wantsJson(argv) });
  } finally {
    stopHandling();
  }
  // A command that stopped cleanly on a signal (save) has printed its line; the status is the signal's.
  const sig = receivedSignal();
  if (sig) process.exitCode = signalExitCode(sig);
  return Number(process.exitCode ?? 0);
}

/** Set once report() has printed an error line: a later failure of stdout adds no second one. */
let errorReported = false;

/**
 * One line, no stack trace, for anything a user can cause. Messages can
 * quote names from the file, so they are escaped for the terminal. With
 * `json`, the error as a JSON object on stdout too:
 * `{"ok": false, "error": {"code", "message", "field", "offset", ...}}`.
 */
export function report(err: unknown, o: { json?: boolean } = {}): number {
  errorReported = true;
  const exit = err instanceof RamsnapError && err.exitStatus !== undefined ? err.exitStatus : err instanceof RamsnapUsageError ? EXIT_USAGE : err instanceof RamsnapError ? EXIT_INVALID : EXIT_INTERNAL;
  if (o.json) {
    const error = err instanceof RamsnapError ? errorJson(err) : { code: 'INTERNAL', message: String((err as Error)?.message ?? err) };
    process.stdout.write(JSON.stringify({ ok: false, exitCode: exit, error }, null, 2) + '\n');
  }
  if (err instanceof RamsnapUsageError) {
    process.stderr.write(`${errorLine(err)} (see ramsnap --help)\n`);
  } else if (err instanceof RamsnapError) {
    process.stderr.write(`${errorLine(err)}\n`);
  } else {
    // A bug, not a user error: say so in one line, with the detail behind an env switch.
    const e = err as Error;
    process.stderr.write(`ramsnap: internal error: ${printable(e?.message ?? String(err))} (set RAMSNAP_DEBUG=1 for a trace)\n`);
    if (process.env.RAMSNAP_DEBUG) process.stderr.write(`${e?.stack}\n`);
  }
  return exit;
}

/**
 * Standard output failed (its 'error' event: Node reports a failed write
 * there, not to the writer). A closed pipe (`| head`) ends the command
 * quietly with status 0: the reader has what it wanted. Anything else (a
 * full disk, /dev/full) is one `ramsnap: IO_<errno>` line and status 1.
 * Either way nothing the command had not finished is left behind. Returns
 * the status to exit with.
 */
export function stdoutFailed(err: NodeJS.ErrnoException): number {
  undoPending();
  if (err.code === 'EPIPE') return EXIT_OK;
  if (errorReported) return Number(process.exitCode ?? EXIT_INVALID) || EXIT_INVALID;
  // Node's message ends with the syscall ("..., write"), which says nothing here.
  const e = ioError(err, 'standard output', 'write to');
  return report(new RamsnapIoError(e.code, e.message.replace(/, write$/, ''), 'standard output'));
}
