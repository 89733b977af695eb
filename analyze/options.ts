/** Options shared by the commands, and the parsing of numbers given on the command line. */
import type { Argv } from 'yargs';
import { MAX_PAGE_SIZE, MIN_PAGE_SIZE } from '../format/constants.js';
import { RamsnapUsageError } from '../format/errors.js';
import type { OpenOptions } from '../reader/snapshot.js';

export interface CommonArgs {
  file: string;
  offset?: string;
  'page-size'?: string;
  json?: boolean;
}

export function withCommon<T>(y: Argv<T>): Argv<T & CommonArgs> {
  return y
    .positional('file', { type: 'string', describe: 'snapshot file (QEMU migration stream, possibly in a libvirt save image)', demandOption: true })
    .option('offset', { type: 'string', describe: 'the stream starts at this byte of the file (as with migrate file:PATH,offset=N); default 0, or after a libvirt header' })
    .option('page-size', { type: 'string', describe: 'target page size of a legacy stream that does not record it (default: from the stream, else 4096)' })
    .option('json', { type: 'boolean', describe: 'print JSON instead of text' }) as unknown as Argv<T & CommonArgs>;
}

export function openOptions(args: CommonArgs): OpenOptions {
  let pageSize: number | undefined;
  if (args['page-size'] !== undefined) {
    pageSize = parseSize(args['page-size'], 'page-size');
    if (pageSize < MIN_PAGE_SIZE || pageSize > MAX_PAGE_SIZE || (pageSize & (pageSize - 1)) !== 0) {
      throw new RamsnapUsageError('BAD_NUMBER', `--page-size must be a power of two from ${MIN_PAGE_SIZE} to ${MAX_PAGE_SIZE}, got ${args['page-size']}`, 'page-size');
    }
  }
  return { offset: args.offset === undefined ? undefined : parseSize(args.offset, 'offset'), pageSize };
}

const SUFFIX: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Decimal, 0x hex, or a number with a K/M/G/T (binary) suffix: 4096, 0x1000, 4k, 2GiB. */
export function parseSize(text: string, field: string): number {
  const t = String(text).trim();
  let n: number;
  const hex = /^0x([0-9a-f]+)$/i.exec(t);
  const dec = /^(\d+)\s*([kmgt]?)(i?b)?$/i.exec(t);
  if (hex) n = parseInt(hex[1], 16);
  else if (dec) n = Number(dec[1]) * SUFFIX[dec[2].toLowerCase()];
  else throw new RamsnapUsageError('BAD_NUMBER', `--${field} must be a number (e.g. 4096, 0x1000, 4k), got ${JSON.stringify(text)}`, field);
  if (!Number.isSafeInteger(n)) throw new RamsnapUsageError('BAD_NUMBER', `--${field} is too large: ${text}`, field);
  return n;
}

/** The --mode flag of every command that writes a new file. */
export const MODE_OPTION = {
  type: 'string',
  describe: 'permission bits of the output, in octal (e.g. 0640); default 0600 (guest memory is private, as in QEMU\'s own files), and a replaced file keeps its mode',
} as const;

/** --mode: octal permission bits, 0000 to 0777 (`640`, `0640` or `0o640`); undefined when not given. */
export function parseMode(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const m = /^(?:0o?)?([0-7]{1,3})$/i.exec(String(text).trim());
  if (!m) throw new RamsnapUsageError('BAD_MODE', `--mode must be octal permission bits from 0000 to 0777 (e.g. 0640), got ${JSON.stringify(text)}`, 'mode');
  return parseInt(m[1], 8);
}

/** The --map flag of the commands that work in guest-physical addresses. */
export const MAP_OPTION = {
  type: 'string',
  describe: 'a memory map file (the JSON that `ramsnap map --json` prints) instead of the machine\'s own map: for machines ramsnap does not know, or guests started with max-ram-below-4g, NUMA memory backends and the like',
} as const;
