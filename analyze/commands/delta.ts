import type { ArgumentsCamelCase, Argv } from 'yargs';
import { writeDelta } from '../../writer/delta.js';
import { bytes, printable } from '../human.js';
import { openGuarded } from '../open.js';
import { MODE_OPTION, parseMode } from '../options.js';
import { withProgress } from '../progress.js';

interface DeltaArgs {
  base: string;
  new: string;
  output: string;
  force?: boolean;
  mode?: string;
  json?: boolean;
}

export const command = 'delta <base> <new>';
export const describe = "A delta snapshot: only NEW's pages that differ from BASE (pages that became zero as explicit zero pages), NEW's configuration and device state, and BASE's fingerprint; a mapped-ram file QEMU loads over memory that holds BASE";

export function builder(y: Argv): Argv<DeltaArgs> {
  return y
    .positional('base', { type: 'string', demandOption: true, describe: 'the snapshot the delta applies to' })
    .positional('new', { type: 'string', demandOption: true, describe: 'the snapshot the delta makes' })
    .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'the delta file to write' })
    .option('force', { type: 'boolean', describe: 'replace an existing file (never a device, FIFO, socket or directory)' })
    .option('mode', MODE_OPTION)
    .option('json', { type: 'boolean', describe: 'print JSON' })
    .example('$0 delta mon.snap tue.snap -o tue.delta', "Tuesday's checkpoint for the price of what changed since Monday")
    .example('$0 apply mon.snap tue.delta -o tue.snap', 'the full snapshot back') as unknown as Argv<DeltaArgs>;
}

export async function handler(args: ArgumentsCamelCase<DeltaArgs>): Promise<void> {
  const mode = parseMode(args.mode);
  const base = await openGuarded(args.base, {});
  try {
    const neu = await openGuarded(args.new, {});
    try {
      const beforeCommit = (): void => {
        base.guard.check(base.snap.model.streamOffset);
        neu.guard.check(neu.snap.model.streamOffset);
      };
      const r = await withProgress('delta', args.json, (onProgress) => writeDelta(base.snap, neu.snap, args.output, { force: args.force, mode, onProgress, beforeCommit }));
      const ps = neu.snap.model.pageSize;
      if (args.json) process.stdout.write(JSON.stringify({ output: args.output, ...r }, null, 2) + '\n');
      else process.stdout.write(`${printable(args.output)}: ${r.pagesWritten} pages carried (${bytes(r.pagesWritten * ps)}), ${r.zeroPages} pages that became zero; base ${r.info.base}\n`);
    } finally {
      await neu.snap.close();
    }
  } finally {
    await base.snap.close();
  }
}
