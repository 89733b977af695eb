import type { ArgumentsCamelCase, Argv } from 'yargs';
import { RamsnapUsageError } from '../../format/errors.js';
import { describeRecovery, patchSnapshot, recoverPatch, type PatchData } from '../../writer/patch.js';
import { hex, printable } from '../human.js';
import { withOffsetHint } from '../open.js';
import { parseSize } from '../options.js';
import { withProgress } from '../progress.js';

interface PatchArgs {
  file: string;
  block?: string;
  at?: string;
  recover?: boolean;
  'data-file'?: string;
  fill?: string;
  length?: string;
  offset?: string;
  json?: boolean;
}

export const command = 'patch <file>';
export const describe = 'Change guest memory in place in a mapped-ram file, all or nothing (through a journal beside it)';

export function builder(y: Argv): Argv<PatchArgs> {
  return y
    .positional('file', { type: 'string', describe: 'mapped-ram snapshot file to change', demandOption: true })
    .option('block', { type: 'string', describe: 'RAMBlock name (see info); required unless --recover' })
    .option('at', { type: 'string', describe: 'byte offset inside the block (e.g. 0x200000); required unless --recover' })
    .option('data-file', { type: 'string', describe: 'write the bytes of this file' })
    .option('fill', { type: 'string', describe: 'write this byte (0-255) --length times; --fill 0 makes whole pages zero (bits cleared)' })
    .option('length', { type: 'string', describe: 'bytes to fill (with --fill)' })
    .option('offset', { type: 'string', describe: 'the stream starts at this byte of the file (as with migrate file:PATH,offset=N)' })
    .option('recover', { type: 'boolean', describe: 'only finish (or drop) a patch of FILE that was interrupted, from its journal' })
    .option('json', { type: 'boolean', describe: 'print JSON instead of text' })
    .example('$0 patch vm.snap --block pc.ram --at 0x200000 --data-file blob', 'put blob into guest RAM at 2 MiB')
    .example('$0 patch vm.snap --block pc.ram --at 0x100000 --fill 0 --length 1M', 'zero 1 MiB of guest RAM')
    .example('$0 patch vm.snap --recover', 'complete a patch that was interrupted (or drop it if it had not started)') as unknown as Argv<PatchArgs>;
}

export function patchData(args: PatchArgs): PatchData {
  const hasFile = args['data-file'] !== undefined;
  const hasFill = args.fill !== undefined;
  if (hasFile === hasFill) throw new RamsnapUsageError('USAGE', 'give either --data-file F or --fill BYTE --length N', 'data-file');
  if (hasFile) {
    if (args.length !== undefined) throw new RamsnapUsageError('USAGE', '--length goes with --fill; a data file is written whole', 'length');
    return { file: args['data-file'] as string };
  }
  if (args.length === undefined) throw new RamsnapUsageError('USAGE', '--fill needs --length', 'length');
  const fill = parseSize(args.fill as string, 'fill');
  if (fill > 255) throw new RamsnapUsageError('BAD_NUMBER', `--fill must be a byte (0 to 255), got ${args.fill}`, 'fill');
  return { fill, length: parseSize(args.length, 'length') };
}

export async function handler(args: ArgumentsCamelCase<PatchArgs>): Promise<void> {
  const offset = args.offset === undefined ? undefined : parseSize(args.offset, 'offset');
  if (args.recover) {
    for (const flag of ['block', 'at', 'data-file', 'fill', 'length'] as const) {
      if (args[flag] !== undefined) throw new RamsnapUsageError('USAGE', `--recover takes no --${flag}: it only settles an interrupted patch`, flag);
    }
    const r = await recoverPatch(args.file, { offset });
    if (args.json) process.stdout.write(JSON.stringify({ file: args.file, ...r }, null, 2) + '\n');
    else process.stdout.write(`${printable(describeRecovery(args.file, r))}\n`);
    return;
  }
  if (args.block === undefined) throw new RamsnapUsageError('USAGE', 'patch needs --block NAME (or --recover)', 'block');
  if (args.at === undefined) throw new RamsnapUsageError('USAGE', 'patch needs --at N (or --recover)', 'at');
  const block = args.block;
  const data = patchData(args);
  const at = parseSize(args.at, 'at');
  const r = await withProgress('patch', args.json, (onProgress) => patchSnapshot(args.file, { block, at, data, offset, onProgress })).catch((err: unknown) => {
    throw withOffsetHint(args.file, err);
  });
  if (args.json) {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    return;
  }
  process.stdout.write(
    `${printable(r.file)}: patched ${r.length} bytes of ${printable(r.block)} at ${hex(r.at)}: ` +
      `${r.pages} pages touched (${r.firstPage}..${r.firstPage + r.pages - 1}), ${r.pagesWritten} written in ${r.pageWrites} writes, ` +
      `${r.bitsSet} bits set, ${r.bitsCleared} bits cleared\n`,
  );
}
