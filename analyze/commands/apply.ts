import type { ArgumentsCamelCase, Argv } from 'yargs';
import type { Snapshot } from '../../reader/snapshot.js';
import { applyDeltas } from '../../writer/delta.js';
import type { ReadGuard } from '../../writer/journal.js';
import { printable } from '../human.js';
import { openGuarded } from '../open.js';
import { MODE_OPTION, parseMode } from '../options.js';
import { withProgress } from '../progress.js';

interface ApplyArgs {
  base: string;
  deltas: string[];
  output: string;
  force?: boolean;
  mode?: string;
  json?: boolean;
}

export const command = 'apply <base> <deltas..>';
export const describe = 'Writes the full snapshot that a chain of deltas makes from BASE (each delta applies to what the ones before it made; a wrong base writes nothing)';

export function builder(y: Argv): Argv<ApplyArgs> {
  return y
    .positional('base', { type: 'string', demandOption: true, describe: 'the full snapshot the first delta was made against' })
    .positional('deltas', { type: 'string', array: true, demandOption: true, describe: 'deltas, oldest first' })
    .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'the full snapshot to write' })
    .option('force', { type: 'boolean', describe: 'replace an existing file (never a device, FIFO, socket or directory)' })
    .option('mode', MODE_OPTION)
    .option('json', { type: 'boolean', describe: 'print JSON' })
    .example('$0 apply mon.snap tue.delta wed.delta -o wed.snap', "Wednesday's snapshot from Monday's and two deltas") as unknown as Argv<ApplyArgs>;
}

export async function handler(args: ArgumentsCamelCase<ApplyArgs>): Promise<void> {
  const mode = parseMode(args.mode);
  const opened: { snap: Snapshot; guard: ReadGuard; path: string }[] = [];
  try {
    for (const p of [args.base, ...args.deltas]) opened.push({ ...(await openGuarded(p, {})), path: p });
    const [base, ...deltas] = opened;
    const beforeCommit = (): void => {
      for (const o of opened) o.guard.check(o.snap.model.streamOffset);
    };
    const r = await withProgress('apply', args.json, (onProgress) => applyDeltas(base.snap, deltas, args.output, { force: args.force, mode, onProgress, beforeCommit }));
    if (args.json) process.stdout.write(JSON.stringify({ output: args.output, ...r }, null, 2) + '\n');
    else process.stdout.write(`${printable(args.output)}: ${r.deltas} delta${r.deltas === 1 ? '' : 's'} applied, ${r.pagesWritten} pages; memory ${r.fingerprint}\n`);
  } finally {
    for (const o of opened) await o.snap.close();
  }
}
