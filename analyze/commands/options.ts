import type { ArgumentsCamelCase, Argv } from 'yargs';
import { qemuTailSettings, type SaveOptions, type Violation } from '../../vm/save-options.js';
import { EXIT_INVALID, EXIT_USAGE } from '../exit.js';
import { bytes, printable, table } from '../human.js';
import { flagFields, resolveSaveOptions, withSaveOptions, type SaveFlagArgs } from '../save-flags.js';

interface OptionsArgs extends SaveFlagArgs {
  check?: string;
  json?: boolean;
}

export const command = 'options';
export const describe = 'Show the save options in effect (defaults, or a config file and flags); --check reports every violation, the same ones save stops at';

export function builder(y: Argv): Argv<OptionsArgs> {
  return withSaveOptions(y, { config: false })
    .option('check', { type: 'string', describe: 'config file (JSON) to validate; the save flags given here are merged over it' })
    .option('json', { type: 'boolean', describe: 'print JSON instead of text' })
    .example('$0 options', 'the defaults')
    .example('$0 options --check save.json', 'every violation in save.json, one line each on stderr; exit 1 if any (2 if a flag is at fault)')
    .example('$0 options --cap multifd=on --multifd-channels 4', 'what save would use with these flags') as unknown as Argv<OptionsArgs>;
}

export async function handler(args: ArgumentsCamelCase<OptionsArgs>): Promise<void> {
  const { options, violations } = resolveSaveOptions(args, args.check);
  if (args.json) {
    const out = options ? { ok: true, options, qemuTail: qemuTailSettings(options) } : { ok: false, violations };
    process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  } else if (options) {
    process.stdout.write(describeOptions(options));
  }
  if (options) return;
  process.stderr.write(violations.map(violationLine).join(''));
  // A value given as a flag is bad usage, as save says of it; the rest came from the config file.
  const fromFlags = flagFields(args);
  process.exitCode = violations.some((v) => fromFlags.has(v.field)) ? EXIT_USAGE : EXIT_INVALID;
}

/** One line per violation, as every ramsnap error: `ramsnap: CODE: field: message`. */
export function violationLine(v: Violation): string {
  return `ramsnap: ${v.code}: ${printable(v.field)}: ${printable(v.message)}\n`;
}

function onOff(b: boolean): string {
  return b ? 'on' : 'off';
}

function describeOptions(o: SaveOptions): string {
  const c = o.capabilities;
  const p = o.parameters;
  const q = o.precopy;
  const tail = qemuTailSettings(o);
  const rows = [
    ['capabilities', ''],
    ['  mapped-ram', onOff(c['mapped-ram'])],
    ['  multifd', onOff(c.multifd)],
    ['  x-ignore-shared', onOff(c['x-ignore-shared'])],
    ['  xbzrle', onOff(c.xbzrle)],
    ['  postcopy-ram', onOff(c['postcopy-ram'])],
    ['  compress', `${onOff(c.compress)} (removed in QEMU 9.1)`],
    ['parameters', ''],
    ['  multifd-channels', `${p['multifd-channels']}${c.multifd ? '' : ' (unused: multifd off, one writer)'}`],
    ['  direct-io', onOff(p['direct-io'])],
    ['  downtime-limit', `${p['downtime-limit']} ms`],
    ['  max-bandwidth', p['max-bandwidth'] === 0 ? '0 (no limit)' : `${p['max-bandwidth']} bytes/s (${bytes(p['max-bandwidth'])}/s)`],
    ['  x-checkpoint-delay', `${p['x-checkpoint-delay']} ms`],
    ['precopy', ''],
    ['  policy', printable(q.policy)],
    ['  threshold', `${q.threshold} bytes (${bytes(q.threshold)})`],
    ['  max-iterations', String(q['max-iterations'])],
    ['  time-budget', q['time-budget'] === 0 ? '0 (no budget)' : `${q['time-budget']} ms`],
    ['  on-budget', q['on-budget']],
  ];
  return (
    `${table(rows)}\n\n` +
    `sent to QEMU for the tail save:\n` +
    `  migrate-set-capabilities ${JSON.stringify(tail.capabilities)}\n` +
    `  migrate-set-parameters ${JSON.stringify(tail.parameters)}\n`
  );
}
