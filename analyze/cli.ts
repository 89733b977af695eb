/**
 * The ramsnap command line. buildCli() builds the parser without running
 * it, so tests can drive it; run() maps errors to one line on stderr and an
 * exit code: 0 ok, 1 bad file or failed check, 2 bad usage.
 */
import yargs, { type Argv } from 'yargs';
import { RamsnapError, RamsnapUsageError } from '../format/errors.js';
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

import { EXIT_INTERNAL, EXIT_INVALID, EXIT_OK, EXIT_USAGE } from './exit.js';
import { errorLine, printable } from './human.js';

export function buildCli(argv: string[]): Argv {
  return yargs(argv)
    .scriptName('ramsnap')
    .usage('$0 <command> FILE [options]\n\nInspect, verify and extract QEMU mapped-ram (and legacy) snapshot files.')
    .command(info)
    .command(verify)
    .command(extract)
    .command(read)
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
    .version()
    .wrap(null)
    .epilogue('Exit status: 0 ok, 1 invalid or incomplete file (or failed check), 2 bad usage.\nSee SPEC.md for the format and every error code.')
    .fail((msg, err) => {
      if (err) throw err;
      throw new RamsnapUsageError('USAGE', msg, 'argv');
    })
    .exitProcess(false);
}

export async function run(argv: string[]): Promise<number> {
  process.exitCode = EXIT_OK;
  try {
    await buildCli(argv).parseAsync();
  } catch (err) {
    process.exitCode = report(err);
  }
  return Number(process.exitCode ?? 0);
}

/**
 * One line, no stack trace, for anything a user can cause. Messages can
 * quote names from the file, so they are escaped for the terminal.
 */
export function report(err: unknown): number {
  if (err instanceof RamsnapUsageError) {
    process.stderr.write(`${errorLine(err)} (see ramsnap --help)\n`);
    return EXIT_USAGE;
  }
  if (err instanceof RamsnapError) {
    process.stderr.write(`${errorLine(err)}\n`);
    return EXIT_INVALID;
  }
  // A bug, not a user error: say so in one line, with the detail behind an env switch.
  const e = err as Error;
  process.stderr.write(`ramsnap: internal error: ${printable(e?.message ?? String(err))} (set RAMSNAP_DEBUG=1 for a trace)\n`);
  if (process.env.RAMSNAP_DEBUG) process.stderr.write(`${e?.stack}\n`);
  return EXIT_INTERNAL;
}
