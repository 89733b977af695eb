import type { ArgumentsCamelCase, Argv } from 'yargs';
import { convertSnapshot, type Layout } from '../../writer/convert.js';
import { printable } from '../human.js';
import { withOffsetHint } from '../open.js';
import { MODE_OPTION, openOptions, parseMode, withCommon, type CommonArgs } from '../options.js';
import { withProgress } from '../progress.js';

interface ConvertArgs extends CommonArgs {
  output: string;
  to: Layout;
  force?: boolean;
  mode?: string;
}

export const command = 'convert <file>';
export const describe = 'Rewrite a snapshot as mapped-ram or legacy, keeping its device state';

export function builder(y: Argv): Argv<ConvertArgs> {
  return withCommon(y)
    .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'snapshot file to write (appears only when complete)' })
    .option('to', { type: 'string', choices: ['mapped-ram', 'legacy'], demandOption: true, describe: 'layout of the output' })
    .option('force', { type: 'boolean', describe: 'replace an existing output file (a symlink is replaced, never followed; a device, FIFO, socket or directory never is)' })
    .option('mode', MODE_OPTION)
    .example('$0 convert old.snap -o new.snap --to mapped-ram', 'a legacy save as a sparse mapped-ram file (last copy of each page)')
    .example('$0 convert vm.snap -o vm.legacy --to legacy', 'for a destination without mapped-ram') as unknown as Argv<ConvertArgs>;
}

export async function handler(args: ArgumentsCamelCase<ConvertArgs>): Promise<void> {
  const { offset, pageSize } = openOptions(args);
  const mode = parseMode(args.mode);
  const r = await withProgress('convert', args.json, (onProgress) =>
    convertSnapshot(args.file, args.output, { to: args.to, offset, pageSize, force: args.force, mode, onProgress }),
  ).catch((err: unknown) => {
    throw withOffsetHint(args.file, err);
  });
  if (args.json) {
    process.stdout.write(JSON.stringify({ input: args.file, output: args.output, ...r }, null, 2) + '\n');
    return;
  }
  for (const n of r.notes) process.stdout.write(`note: ${printable(n)}\n`);
  process.stdout.write(`${printable(args.file)} (${r.from}) -> ${printable(args.output)} (${r.to}): ${r.blocks} blocks, ${r.pagesCopied} pages copied\n`);
}
