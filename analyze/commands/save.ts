import type { ArgumentsCamelCase, Argv } from 'yargs';
import { RamsnapUsageError } from '../../format/errors.js';
import { liveSave, type LiveSaveResult, type ThenAction } from '../../vm/live-save.js';
import { loadPolicy } from '../../vm/policies.js';
import type { PrecopyPolicy } from '../../vm/precopy.js';
import { parallelWriters, qemuTailSettings, type SaveOptions } from '../../vm/save-options.js';
import { bytes, printable } from '../human.js';
import { interruptSignal } from '../interrupt.js';
import { MODE_OPTION, parseMode } from '../options.js';
import { saveOptionsFromArgv, withSaveOptions, type SaveFlagArgs } from '../save-flags.js';

interface SaveArgs extends SaveFlagArgs {
  qmp: string;
  ram?: string[];
  output: string;
  then: string;
  force?: boolean;
  mode?: string;
  json?: boolean;
  quiet?: boolean;
}

export const command = 'save';
export const describe = 'Save a running QEMU guest live (iterative precopy) into a mapped-ram file';

export function builder(y: Argv): Argv<SaveArgs> {
  return withSaveOptions(
    y
      .option('qmp', { type: 'string', demandOption: true, describe: 'QMP unix socket of the running QEMU' })
      .option('ram', {
        type: 'string',
        array: true,
        describe: 'BLOCK=FILE: the shared file behind a RAM block (default: the mem-path QEMU reports for each memory-backend-file with share=on)',
      })
      .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'snapshot file to write' })
      .option('then', { type: 'string', default: 'resume', describe: 'what the guest does once saved: stop (stay paused), resume, quit (QEMU exits)' })
      .option('force', { type: 'boolean', describe: 'replace an existing output file (a symlink is replaced, never followed; a device, FIFO, socket or directory never is)' })
      .option('mode', MODE_OPTION)
      .option('json', { type: 'boolean', describe: 'print the result as JSON' })
      .option('quiet', { alias: 'q', type: 'boolean', describe: 'no line per pass on stderr' })
      .example('$0 save --qmp /run/vm.qmp -o vm.snap', 'save with the downtime policy (the default), then let the guest run on')
      .example('$0 save --qmp /run/vm.qmp -o vm.snap --policy downtime --downtime-limit 100 --then quit', 'aim for a 100 ms pause, then stop QEMU'),
  ) as unknown as Argv<SaveArgs>;
}

export function parseRam(list: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of list ?? []) {
    const eq = item.lastIndexOf('=');
    if (eq <= 0 || eq === item.length - 1) throw new RamsnapUsageError('USAGE', `--ram ${JSON.stringify(item)}: expected BLOCK=FILE`, 'ram');
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

function parseThen(v: string): ThenAction {
  if (v === 'stop' || v === 'resume' || v === 'quit') return v;
  throw new RamsnapUsageError('USAGE', `--then must be stop, resume or quit, not ${JSON.stringify(v)}`, 'then');
}

/**
 * The policy the options ask for, inside the limits every policy obeys:
 * max-iterations (then stop-and-copy) and the time budget (then abort or
 * force, as on-budget says).
 */
export async function policyFromOptions(o: SaveOptions): Promise<PrecopyPolicy> {
  const p = o.precopy;
  const inner = await loadPolicy(p.policy, { thresholdBytes: p.threshold, downtimeLimitMs: o.parameters['downtime-limit'] });
  return async (s) => {
    if (p['time-budget'] > 0 && s.elapsedMs >= p['time-budget']) return p['on-budget'] === 'force' ? 'stop-and-copy' : 'abort';
    if (s.iteration >= p['max-iterations']) return 'stop-and-copy';
    return inner(s);
  };
}

export async function handler(args: ArgumentsCamelCase<SaveArgs>): Promise<void> {
  const o = saveOptionsFromArgv(args);
  const then = parseThen(args.then);
  const ram = parseRam(args.ram);
  const policy = await policyFromOptions(o);
  const tail = qemuTailSettings(o);
  const mode = parseMode(args.mode);
  // The first Ctrl-C or SIGTERM cancels the save cleanly (QEMU's migration cancelled, the guest resumed, nothing left
  // at the target); a second one stops the process at once (analyze/interrupt.ts).
  const signal = interruptSignal();
  const r: LiveSaveResult = await liveSave({
      qmp: args.qmp,
      output: args.output,
      ram,
      policy,
      then,
      channels: parallelWriters(o),
      maxBandwidth: o.parameters['max-bandwidth'],
      qemuCapabilities: Object.fromEntries(tail.capabilities.map((c) => [c.capability, c.state])),
      qemuParameters: { ...tail.parameters },
      force: args.force,
      mode,
      signal,
      onPass: args.quiet
        ? undefined
        : (s) =>
            process.stderr.write(
              `pass ${s.iteration}: ${bytes(s.lastPassBytes)} written in ${s.lastPassMs.toFixed(0)} ms (scan ${s.scanMs.toFixed(0)} ms), ` +
                `pending ${s.dirtyPages >= 0 ? '' : '~'}${bytes(s.pendingBytes)}\n`,
            ),
      log: args.quiet ? undefined : (line) => process.stderr.write(`${printable(line)}\n`),
  });
  if (args.json) {
    process.stdout.write(JSON.stringify(r, roundedNumbers, 2) + '\n');
    return;
  }
  const p = r.precopy;
  process.stdout.write(
    `${printable(r.output)}: saved ${r.machine} in ${p.iterations} passes and a stop-and-copy: ${bytes(p.totalBytes)} of pages written, ` +
      `${bytes(p.pausedBytes)} of them with the guest paused; guest paused ${r.pauseMs.toFixed(0)} ms; ` +
      `QEMU's part ${bytes(r.qemuPartBytes)}; file ${bytes(r.fileSize)}; guest ${r.then === 'resume' ? 'resumed' : r.then === 'quit' ? 'quit' : 'left paused'}\n`,
  );
}

/**
 * JSON.stringify replacer for the save result: times (keys ending in Ms)
 * to 0.1 ms, other fractions (bandwidths in bytes per second) to whole
 * numbers; what the clock and the division give beyond that is noise.
 */
export function roundedNumbers(key: string, value: unknown): unknown {
  if (typeof value !== 'number' || Number.isInteger(value)) return value;
  return key.endsWith('Ms') ? Math.round(value * 10) / 10 : Math.round(value);
}
