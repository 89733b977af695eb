import type { ArgumentsCamelCase, Argv } from 'yargs';
import { RamsnapUsageError } from '../../format/errors.js';
import { pythonJson } from '../../format/vmstate.js';
import { Snapshot } from '../../reader/snapshot.js';
import { stateDocument } from '../dump-state.js';
import { openOptions, withCommon, type CommonArgs } from '../options.js';

interface DumpArgs extends CommonArgs {
  state?: boolean;
  desc?: boolean;
}

export const command = 'dump <file>';
export const describe = "Device state decoded with the file's device description (--state), or the description itself (--desc); same JSON as QEMU's analyze-migration.py -d state / -d desc";

export function builder(y: Argv): Argv<DumpArgs> {
  return withCommon(y)
    .option('state', { type: 'boolean', describe: 'every section, device fields decoded' })
    .option('desc', { type: 'boolean', describe: 'the device description JSON stored in the file' })
    .check((a) => {
      if (Boolean(a.state) === Boolean(a.desc)) throw new RamsnapUsageError('USAGE', 'give exactly one of --state or --desc', 'state');
      return true;
    })
    .example('$0 dump --state vm.snap', 'device registers, timers, ... (the output is JSON with or without --json)') as unknown as Argv<DumpArgs>;
}

export async function handler(args: ArgumentsCamelCase<DumpArgs>): Promise<void> {
  const snap = await Snapshot.open(args.file, { ...openOptions(args), decodeDevices: Boolean(args.state) });
  try {
    const m = snap.model;
    if (args.desc) {
      if (!m.vmdesc) {
        throw new RamsnapUsageError('NO_DEVICE_DESCRIPTION', 'this file has no device description (a RAM-only stream, or an old machine type)', 'desc');
      }
      process.stdout.write(pythonJson(m.vmdesc.desc.raw) + '\n');
    } else {
      process.stdout.write(pythonJson(stateDocument(m)) + '\n');
    }
  } finally {
    await snap.close();
  }
}
