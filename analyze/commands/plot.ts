import type { ArgumentsCamelCase, Argv } from 'yargs';
import { checkOutput } from '../../writer/sink.js';
import { checkWidth, plotFormatOf, plotSnapshot, writePlot } from '../../writer/plot.js';
import { bytes, printable } from '../human.js';
import { openGuarded } from '../open.js';
import { MAP_OPTION, MODE_OPTION, openOptions, parseMode, withCommon, type CommonArgs } from '../options.js';

interface PlotArgs extends CommonArgs {
  output: string;
  force?: boolean;
  width?: number;
  mode?: string;
  map?: string;
}

export const command = 'plot <file>';
export const describe = 'Draw an occupancy map of each RAMBlock as SVG or PNG: per cell (a run of pages) how much is data, present zeros or absent; main RAM in guest-physical order where the machine\'s memory map is known';

/** --width of a command that draws a picture (plot, diff --plot). */
export const WIDTH_OPTION = { type: 'number', describe: 'width of the picture in pixels (the height follows); default 900' } as const;

export function builder(y: Argv): Argv<PlotArgs> {
  return withCommon(y)
    .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'the picture to write: FILE.svg or FILE.png' })
    .option('force', { type: 'boolean', describe: 'replace an existing file (a symlink is replaced, never followed; a device, FIFO, socket or directory never is)' })
    .option('width', WIDTH_OPTION)
    .option('mode', MODE_OPTION)
    .option('map', MAP_OPTION)
    .epilogue('One cell stands for a run of pages, chosen from the block\'s size so that a picture has at most a few thousand cells whatever the guest\'s size; a cell is coloured by the mix of pages it holds. Present pages are read to tell data from zeros; absent pages are not.')
    .example('$0 plot vm.snap -o vm.svg', 'where the guest\'s memory holds data')
    .example('$0 plot vm.snap -o vm.png --width 1600', 'the same as a PNG') as unknown as Argv<PlotArgs>;
}

export async function handler(args: ArgumentsCamelCase<PlotArgs>): Promise<void> {
  // Refuse what can be refused before reading a page.
  const format = plotFormatOf(args.output);
  checkWidth(args.width);
  const mode = parseMode(args.mode);
  checkOutput(args.output, args.force ?? false);
  const { snap, guard } = await openGuarded(args.file, { ...openOptions(args), decodeDevices: true });
  try {
    const image = await plotSnapshot(snap, { format, width: args.width, name: args.file, mapFile: args.map });
    guard.check(snap.model.streamOffset);
    const written = await writePlot(args.output, image, { force: args.force, mode });
    if (args.json) process.stdout.write(JSON.stringify({ path: args.output, format, bytes: written }) + '\n');
    else process.stdout.write(`${printable(args.file)} -> ${printable(args.output)}: ${format.toUpperCase()}, ${bytes(written)}\n`);
  } finally {
    await snap.close();
  }
}
