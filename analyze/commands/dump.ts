import type { ArgumentsCamelCase, Argv } from 'yargs';
import { openGuarded } from '../open.js';
import { RamsnapUsageError } from '../../format/errors.js';
import { pythonJsonChunks } from '../../format/vmstate.js';
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
  const { snap, guard } = await openGuarded(args.file, { ...openOptions(args), decodeDevices: Boolean(args.state) });
  try {
    const m = snap.model;
    if (args.desc && !m.vmdesc) {
      throw new RamsnapUsageError('NO_DEVICE_DESCRIPTION', 'this file has no device description (a RAM-only stream, or saved with suppress-vmdesc=on)', 'desc');
    }
    if (args.state && m.devices.some((d) => !d.checked)) {
      throw new RamsnapUsageError('NO_DEVICE_DESCRIPTION', 'the device sections cannot be decoded: this file has no device description (saved with suppress-vmdesc=on)', 'state');
    }
    // Written a chunk at a time: a document of millions of values (or a 64 MiB buffer as hex) is not made one string.
    // Everything dump prints was read by the open: check before printing any of it.
    guard.check(m.streamOffset);
    const chunks = pythonJsonChunks(args.desc ? m.vmdesc?.desc.raw : stateDocument(m));
    chunks.push('\n');
    for (let i = 0; i < chunks.length; i++) {
      const text = chunks[i];
      chunks[i] = '';
      if (!process.stdout.write(text)) await new Promise((r) => process.stdout.once('drain', r));
    }
  } finally {
    await snap.close();
  }
}
