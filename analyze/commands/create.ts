import type { ArgumentsCamelCase, Argv } from 'yargs';
import { TARGET_NAMES } from '../../format/target.js';
import { createSnapshot, parseRamImage } from '../../writer/create.js';
import { bytes, printable } from '../human.js';
import { withOffsetHint } from '../open.js';
import { MODE_OPTION, parseMode, parseSize } from '../options.js';
import { withProgress } from '../progress.js';

interface CreateArgs {
  output: string;
  ram?: string[];
  template?: string;
  'template-offset'?: string;
  'page-size'?: string;
  machine?: string;
  arch?: string;
  force?: boolean;
  mode?: string;
  json?: boolean;
}

export const command = 'create';
export const describe = 'Build a mapped-ram snapshot from raw memory images, optionally on top of a template snapshot';

export function builder(y: Argv): Argv<CreateArgs> {
  return y
    .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'snapshot file to write (appears only when complete)' })
    .option('ram', { type: 'string', array: true, describe: 'NAME=FILE: RAM block NAME gets the raw image FILE (byte i of FILE = byte i of the block); repeatable' })
    .option('template', { type: 'string', describe: 'QEMU snapshot of the same machine: blocks, sizes, device state and configuration come from it; blocks without --ram keep its pages' })
    .option('template-offset', { type: 'string', describe: 'the template stream starts at this byte (as with migrate file:PATH,offset=N)' })
    .option('page-size', { type: 'string', describe: "target page size without a template (default: the machine's, e.g. 4096 for x86 and virt, 8192 for sun4u)" })
    .option('machine', { type: 'string', describe: 'machine type as QEMU records it, e.g. pc-q35-10.0, virt-10.0, sun4u, pseries-10.0, never an alias such as q35 (required without --template; must match the template)' })
    .option('arch', { type: 'string', describe: `QEMU target of a machine type whose name does not say it (${TARGET_NAMES.join(', ')}): decides the page size and target-page-bits` })
    .option('force', { type: 'boolean', describe: 'replace an existing output file (a symlink is replaced, never followed; a device, FIFO, socket or directory never is)' })
    .option('mode', MODE_OPTION)
    .option('json', { type: 'boolean', describe: 'print JSON instead of text' })
    .example('$0 create -o vm.snap --template saved.snap --ram pc.ram=mem.raw', 'saved.snap with its guest RAM replaced by mem.raw')
    .example('$0 create -o ram.snap --machine pc-q35-10.0 --ram pc.ram=mem.raw', 'a RAM-only stream (QEMU keeps its own device state)')
    .example('$0 create -o ram.snap --machine versatilepb --arch arm --page-size 1024 --ram versatile.ram=mem.raw', 'a machine ramsnap does not know: say its target (and, for Arm, its page size)') as unknown as Argv<CreateArgs>;
}

export async function handler(args: ArgumentsCamelCase<CreateArgs>): Promise<void> {
  // Flags are checked here as far as their text goes, the rest by createSnapshot before it opens anything (exit 2 for both).
  const pageSize = args['page-size'] === undefined ? undefined : parseSize(args['page-size'], 'page-size');
  const images = (args.ram ?? []).map((r) => parseRamImage(String(r)));
  const mode = parseMode(args.mode);
  const templateOffset = args['template-offset'] === undefined ? undefined : parseSize(args['template-offset'], 'template-offset');
  const r = await withProgress('create', args.json, (onProgress) =>
    createSnapshot(args.output, {
      images,
      template: args.template,
      templateOffset,
      pageSize,
      machine: args.machine === undefined ? undefined : String(args.machine),
      arch: args.arch === undefined ? undefined : String(args.arch),
      force: args.force,
      mode,
      onProgress,
    }),
  ).catch((err: unknown) => {
    throw args.template === undefined ? err : withOffsetHint(args.template, err, '--template-offset');
  });
  if (args.json) {
    process.stdout.write(JSON.stringify({ output: args.output, ...r }, null, 2) + '\n');
    return;
  }
  for (const b of r.blocks) {
    const read = b.read ? ` (read ${bytes(b.read.pages * r.pageSize)}${b.read.holeMap === 'seek-data' ? ` in ${b.read.extents} data extents` : ''})` : '';
    process.stdout.write(`${printable(b.name)} (${bytes(b.usedLength)}) <- ${printable(b.source)}${read}\n`);
  }
  for (const n of r.notes) process.stdout.write(`note: ${printable(n)}\n`);
  process.stdout.write(`page size ${r.pageSize}${r.targetPageBits !== undefined ? `, target-page-bits ${r.targetPageBits}` : ''}\n`);
  process.stdout.write(`wrote ${printable(args.output)} (mapped-ram)\n`);
}
