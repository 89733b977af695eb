import type { ArgumentsCamelCase, Argv } from 'yargs';
import type { PhysMap } from '../../format/phys-map.js';
import { memoryMap } from '../../reader/phys.js';
import { bytes, hex, printable, table } from '../human.js';
import { openGuarded } from '../open.js';
import { MAP_OPTION, openOptions, withCommon, type CommonArgs } from '../options.js';

interface MapArgs extends CommonArgs {
  map?: string;
}

export const command = 'map <file>';
export const describe = "The guest-physical memory map: which addresses show which RAMBlock at which offset (from the machine type, the RAM size and the saved chipset registers)";

export function builder(y: Argv): Argv<MapArgs> {
  return withCommon(y)
    .option('map', { ...MAP_OPTION, describe: 'check this map file against the snapshot and print it, instead of the machine\'s own map' })
    .example('$0 map vm.snap', 'the map of an x86, aarch64 virt or sun4u guest')
    .example('$0 map --json vm.snap > vm.map', 'a map file to edit and give back with --map') as unknown as Argv<MapArgs>;
}

/** The JSON of a map: also the format --map reads (numbers as "0x..." strings). */
export function mapJson(map: PhysMap, blocks: { name: string }[]): object {
  const used = new Set(map.ranges.map((r) => r.block));
  return {
    machine: map.machine,
    ranges: map.ranges.map((r) => ({ start: hex(r.start), length: hex(r.length), block: r.block, offset: hex(r.offset), kind: r.kind })),
    unmapped: blocks.filter((b) => !used.has(b.name)).map((b) => b.name),
    notes: map.notes,
  };
}

export async function handler(args: ArgumentsCamelCase<MapArgs>): Promise<void> {
  const { snap, guard } = await openGuarded(args.file, { ...openOptions(args), decodeDevices: true });
  try {
    const map = await memoryMap(snap, { mapFile: args.map });
    guard.check(snap.model.streamOffset);
    if (args.json) {
      process.stdout.write(JSON.stringify(mapJson(map, snap.blocks), null, 2) + '\n');
      return;
    }
    const rows = [['start', 'end', 'size', 'kind', 'block', 'offset']];
    for (const r of map.ranges) {
      rows.push([hex(r.start).padStart(14), hex(r.start + r.length - 1).padStart(14), bytes(r.length), r.kind, printable(r.block), hex(r.offset)]);
    }
    const out = [`machine  ${printable(map.machine)}`, '', table(rows, [2, 5])];
    const unmapped = (mapJson(map, snap.blocks) as { unmapped: string[] }).unmapped;
    if (unmapped.length) out.push('', `not in guest-physical memory: ${unmapped.map(printable).join(', ')}`);
    for (const n of map.notes) out.push(`note: ${printable(n)}`);
    process.stdout.write(out.join('\n') + '\n');
  } finally {
    await snap.close();
  }
}
