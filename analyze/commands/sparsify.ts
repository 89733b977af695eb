import type { ArgumentsCamelCase, Argv } from 'yargs';
import { sparsifySnapshot } from '../../writer/sparsify.js';
import { bytes, printable } from '../human.js';
import { withOffsetHint } from '../open.js';
import { parseSize } from '../options.js';
import { withProgress } from '../progress.js';

interface SparsifyArgs {
  file: string;
  offset?: string;
  json?: boolean;
}

export const command = 'sparsify <file>';
export const describe = 'Rewrite a mapped-ram file so absent and all-zero pages are holes (same layout, same guest memory)';

export function builder(y: Argv): Argv<SparsifyArgs> {
  return y
    .positional('file', { type: 'string', describe: 'mapped-ram snapshot file to rewrite in place', demandOption: true })
    .option('offset', { type: 'string', describe: 'the stream starts at this byte of the file (as with migrate file:PATH,offset=N)' })
    .option('json', { type: 'boolean', describe: 'print JSON instead of text' })
    .example('$0 sparsify vm.snap', 'free the disk space of stale and zero pages') as unknown as Argv<SparsifyArgs>;
}

export async function handler(args: ArgumentsCamelCase<SparsifyArgs>): Promise<void> {
  const offset = args.offset === undefined ? undefined : parseSize(args.offset, 'offset');
  const r = await withProgress('sparsify', args.json, (onProgress) => sparsifySnapshot(args.file, { offset, onProgress })).catch((err: unknown) => {
    throw withOffsetHint(args.file, err);
  });
  if (args.json) {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    return;
  }
  process.stdout.write(
    `${printable(r.file)}: ${bytes(r.bytesFreed)} freed (${r.bytesFreed} bytes; allocated ${r.allocatedBefore} -> ${r.allocatedAfter}), ` +
      `${r.pagesCleared} zero pages cleared, ${r.pagesKept} pages kept\n`,
  );
}
