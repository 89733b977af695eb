import type { ArgumentsCamelCase, Argv } from 'yargs';
import { RamsnapUsageError } from '../../format/errors.js';
import { openGuarded } from '../open.js';
import { MAP_OPTION, openOptions, parseSize, withCommon, type CommonArgs } from '../options.js';
import { PhysicalMemory } from '../../reader/phys.js';

interface ReadArgs extends CommonArgs {
  block?: string;
  at?: string;
  phys?: string;
  map?: string;
  length: string;
  raw?: boolean;
}

export const command = 'read <file>';
export const describe = 'Print a byte range of a RAMBlock, or of guest-physical memory, as a hexdump (or raw bytes)';

export function builder(y: Argv): Argv<ReadArgs> {
  return withCommon(y)
    .option('block', { type: 'string', describe: 'RAMBlock name (see info); with --at' })
    .option('at', { type: 'string', describe: 'byte offset inside the block (e.g. 0x200000)' })
    .option('phys', { type: 'string', describe: 'guest-physical address instead of --block/--at (see `ramsnap map`); an address with no RAM or ROM behind it is NO_MEMORY_AT' })
    .option('map', MAP_OPTION)
    .option('length', { type: 'string', demandOption: true, describe: 'bytes to read (e.g. 4096, 1M)' })
    .option('raw', { type: 'boolean', describe: 'write the bytes themselves to stdout' })
    .example('$0 read vm.snap --block pc.ram --at 0x200000 --length 64', 'hexdump of 64 bytes of guest RAM')
    .example('$0 read vm.snap --phys 0xfffffff0 --length 16', 'the x86 reset vector, in the BIOS at the top of 4 GiB') as unknown as Argv<ReadArgs>;
}

const CHUNK = 1 << 16;
/** --json holds the range in memory as hex: keep it to what a person or script looks at. */
const MAX_JSON_READ = 16 << 20;

export async function handler(args: ArgumentsCamelCase<ReadArgs>): Promise<void> {
  const phys = args.phys !== undefined;
  if (phys === (args.block !== undefined || args.at !== undefined) || (!phys && (args.block === undefined || args.at === undefined))) {
    throw new RamsnapUsageError('USAGE', 'give either --phys ADDR, or --block NAME with --at OFFSET', phys ? 'phys' : 'block');
  }
  if (args.map !== undefined && !phys) throw new RamsnapUsageError('USAGE', '--map goes with --phys', 'map');
  const at = parseSize((phys ? args.phys : args.at) as string, phys ? 'phys' : 'at');
  const length = parseSize(args.length, 'length');
  if (args.raw && args.json) throw new RamsnapUsageError('USAGE', '--raw and --json cannot go together: --raw writes the bytes themselves, --json a JSON object with them as hex', 'raw');
  if (args.raw && process.stdout.isTTY) {
    throw new RamsnapUsageError('RAW_TO_TERMINAL', 'refusing to write raw bytes to a terminal; redirect stdout or drop --raw', 'raw');
  }
  const { snap, guard } = await openGuarded(args.file, { ...openOptions(args), decodeDevices: phys });
  try {
    // What is read: a block range, or guest-physical memory through the machine's map (checked whole before any byte is printed).
    let read: (from: number, n: number, into?: Uint8Array) => Promise<Uint8Array>;
    let what: Record<string, string | number>;
    if (phys) {
      const mem = await PhysicalMemory.open(snap, { mapFile: args.map });
      mem.resolve(at, length);
      read = (from, n, into) => mem.read(from, n, into);
      what = { phys: `0x${at.toString(16)}` };
    } else {
      const block = snap.block(args.block as string);
      if (at + length > block.usedLength) {
        throw new RamsnapUsageError('OUT_OF_RANGE', `--at ${at} --length ${length} runs past the end of ${block.name} (${block.usedLength} bytes)`, 'length');
      }
      read = (from, n, into) => snap.read(block, from, n, into);
      what = { block: block.name };
    }
    if (args.json) {
      if (length > MAX_JSON_READ) {
        throw new RamsnapUsageError('OUT_OF_RANGE', `--json prints at most ${MAX_JSON_READ} bytes; use --raw for more`, 'length');
      }
      const data = await read(at, length);
      guard.check(snap.model.streamOffset);
      process.stdout.write(JSON.stringify({ ...what, at, length, hex: Buffer.from(data).toString('hex') }) + '\n');
      return;
    }
    const buf = new Uint8Array(Math.min(CHUNK, Math.max(1, length)));
    for (let done = 0; done < length; ) {
      const n = Math.min(buf.length, length - done);
      const data = await read(at + done, n, buf);
      const text = args.raw ? data : hexdump(data, at + done);
      if (!process.stdout.write(text)) await new Promise((r) => process.stdout.once('drain', r));
      done += n;
    }
    // Printed bytes cannot be taken back: a file that changed meanwhile at least ends in FILE_CHANGED, exit 1.
    guard.check(snap.model.streamOffset);
  } finally {
    await snap.close();
  }
}

/** Lines of 16 bytes: offset in the block (or guest-physical address), hex, printable ASCII. */
export function hexdump(data: Uint8Array, base: number): string {
  let out = '';
  for (let i = 0; i < data.length; i += 16) {
    const row = data.subarray(i, Math.min(i + 16, data.length));
    let hx = '';
    let asc = '';
    for (let j = 0; j < 16; j++) {
      if (j < row.length) {
        hx += row[j].toString(16).padStart(2, '0') + ' ';
        asc += row[j] >= 0x20 && row[j] < 0x7f ? String.fromCharCode(row[j]) : '.';
      } else hx += '   ';
      if (j === 7) hx += ' ';
    }
    out += `${(base + i).toString(16).padStart(8, '0')}  ${hx} |${asc}|\n`;
  }
  return out;
}
