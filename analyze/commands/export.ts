import type { ArgumentsCamelCase, Argv } from 'yargs';
import { RamsnapUsageError } from '../../format/errors.js';
import { exportSnapshot, type ExportFormat } from '../../writer/export.js';
import { bytes, hex, printable } from '../human.js';
import { openGuarded } from '../open.js';
import { MAP_OPTION, MODE_OPTION, openOptions, parseMode, withCommon, type CommonArgs } from '../options.js';
import { withProgress } from '../progress.js';

interface ExportArgs extends CommonArgs {
  format: string;
  output: string;
  force?: boolean;
  mode?: string;
  map?: string;
}

export const command = 'export <file>';
export const describe = "Write the guest's physical memory as an ELF core (as QEMU's dump-guest-memory, with the CPU notes) or a flat raw image; sparse";

export function builder(y: Argv): Argv<ExportArgs> {
  return withCommon(y)
    .option('format', { type: 'string', choices: ['elf', 'raw'], demandOption: true, describe: 'elf: an ELF64 core, one PT_LOAD per guest-physical range, CPU notes from the saved state (gdb, crash, drgn, Volatility); raw: byte A of the file is guest-physical byte A' })
    .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'the file to write' })
    .option('force', { type: 'boolean', describe: 'replace an existing file (a symlink is replaced, never followed; a device, FIFO, socket or directory never is)' })
    .option('mode', MODE_OPTION)
    .option('map', MAP_OPTION)
    .example('$0 export vm.snap --format elf -o vm.core', 'a core that gdb, crash and Volatility open')
    .example('$0 export vm.snap --format raw -o vm.phys', 'a flat image of physical memory (sparse)') as unknown as Argv<ExportArgs>;
}

export async function handler(args: ArgumentsCamelCase<ExportArgs>): Promise<void> {
  const mode = parseMode(args.mode);
  const format = args.format as ExportFormat;
  if (format !== 'elf' && format !== 'raw') throw new RamsnapUsageError('USAGE', `--format must be elf or raw, got ${args.format}`, 'format');
  const { snap, guard } = await openGuarded(args.file, { ...openOptions(args), decodeDevices: true });
  try {
    const r = await withProgress('export', args.json, (onProgress) =>
      exportSnapshot(snap, args.output, { format, force: args.force, mode, mapFile: args.map, onProgress, beforeCommit: () => guard.check(snap.model.streamOffset) }),
    );
    if (args.json) {
      const segments = r.segments.map((s) => ({ start: hex(s.start), length: hex(s.length), block: s.block, offset: hex(s.offset) }));
      process.stdout.write(JSON.stringify({ ...r, segments }, null, 2) + '\n');
    } else {
      const what = format === 'elf' ? `ELF core, ${r.segments.length} PT_LOAD segments, ${r.notes} notes` : `flat image of ${r.segments.length} ranges`;
      process.stdout.write(`${printable(args.file)} -> ${printable(r.path)}: ${what}, ${bytes(r.size)} (${bytes(r.bytesWritten)} written, the rest holes)\n`);
    }
    for (const w of r.warnings) process.stderr.write(`ramsnap: warning: ${printable(w)}\n`);
  } finally {
    await snap.close();
  }
}
