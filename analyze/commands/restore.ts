import path from 'node:path';
import type { ArgumentsCamelCase, Argv } from 'yargs';
import { RamsnapUsageError } from '../../format/errors.js';
import { planRestore, shellWords } from '../../vm/restore-plan.js';
import { prefetch, restoreSnapshot, type RestoreResult } from '../../vm/restore.js';
import { bytes, printable } from '../human.js';
import { interruptSignal } from '../interrupt.js';
import { openGuarded } from '../open.js';
import type { Snapshot } from '../../reader/snapshot.js';
import type { ReadGuard } from '../../writer/journal.js';
import { openOptions, withCommon, type CommonArgs } from '../options.js';

interface RestoreArgs extends CommonArgs {
  deltas?: string[];
  base?: string;
  qmp?: string;
  'print-qemu-args'?: boolean;
  copy?: boolean;
  'ram-block'?: string;
  prefetch?: boolean;
}

export const command = 'restore <file> [deltas..]';
export const describe = 'Restore a snapshot into QEMU, mapping its RAM from the file (copy-on-write) instead of copying it; with --base, deltas over a mapped base';

export function builder(y: Argv): Argv<RestoreArgs> {
  return withCommon(y)
    .option('print-qemu-args', { type: 'boolean', describe: 'print the QEMU arguments that map the snapshot\'s RAM from FILE (one line of shell words; --json: a list) and exit' })
    .option('qmp', { type: 'string', describe: 'QMP socket of a QEMU started with those arguments and -incoming defer: load the snapshot into it' })
    .option('copy', { type: 'boolean', describe: 'let QEMU copy the whole file into its memory (its own restore), where mapping cannot work' })
    .option('ram-block', { type: 'string', describe: 'the block to map (default: the machine\'s RAM, e.g. pc.ram or mach-virt.ram, else the largest block)' })
    .positional('deltas', { type: 'string', array: true, describe: 'with --base: more deltas after FILE, oldest first' })
    .option('base', { type: 'string', describe: 'FILE (and any DELTAS after it) are deltas of this snapshot: map its RAM and load only the deltas\' pages over it (a chain restores without writing the full file); --print-qemu-args prints the arguments that map BASE' })
    .option('prefetch', { type: 'boolean', describe: 'after the load, read the mapped block\'s present pages into the page cache while the guest runs, so its first touches do not wait for the disk (the command returns when done)' })
    .conflicts('print-qemu-args', 'qmp')
    .conflicts('print-qemu-args', 'prefetch')
    .conflicts('prefetch', 'copy')
    .conflicts('print-qemu-args', 'copy')
    .example('$0 restore vm.snap --print-qemu-args', 'the -machine, -m and -object arguments for QEMU')
    .example('$0 restore vm.snap --qmp /run/vm.qmp', 'load vm.snap into that QEMU (started with the printed arguments and -incoming defer)')
    .example('$0 restore tue.delta --base mon.snap --qmp /run/vm.qmp', "Tuesday's VM: Monday's RAM mapped, Tuesday's changed pages loaded over it")
    .example('$0 restore vm.snap --qmp /run/vm.qmp --copy', 'QEMU\'s own restore: reads the whole file into memory') as unknown as Argv<RestoreArgs>;
}

export async function handler(args: ArgumentsCamelCase<RestoreArgs>): Promise<void> {
  if (!args.printQemuArgs && !args.qmp) {
    throw new RamsnapUsageError('USAGE', 'name --print-qemu-args or --qmp SOCKET', 'qmp');
  }
  if (args.deltas?.length && !args.base) throw new RamsnapUsageError('USAGE', 'more than one file is a chain of deltas: name their base with --base', 'deltas');
  // With --base the snapshot that is mapped is the base; FILE and the rest are deltas loaded over it.
  const file = path.resolve(args.base ?? args.file);
  const { snap, guard } = await openGuarded(file, openOptions(args));
  const deltas: { snap: Snapshot; path: string; guard: ReadGuard }[] = [];
  try {
    if (args.base) for (const p of [args.file, ...(args.deltas ?? [])]) deltas.push({ ...(await openGuarded(path.resolve(p), {})), path: p });
    if (args.printQemuArgs) {
      const plan = planRestore(snap, file, { ramBlock: args.ramBlock });
      guard.check(snap.model.streamOffset);
      if (args.json) {
        process.stdout.write(JSON.stringify({ args: plan.qemuArgs, block: plan.block.name, found: plan.found, pagesOffset: plan.pagesOffset }, null, 2) + '\n');
      } else {
        process.stdout.write(`${shellWords(plan.qemuArgs)}\n`);
      }
      return;
    }
    // The first Ctrl-C or SIGTERM stops the wait for QEMU (RESTORE_ABORTED) or ends the prefetch early; the small
    // stream is removed either way, and a second signal ends the process at once (analyze/interrupt.ts).
    const signal = interruptSignal();
    const r = await restoreSnapshot(snap, file, {
      qmp: args.qmp as string,
      copy: args.copy,
      ramBlock: args.ramBlock,
      signal,
      // The whole command, from the process's start.
      startedAt: 0,
      // What was read into the small stream is what the file held: checked before QEMU loads it.
      beforeLoad: () => {
        guard.check(snap.model.streamOffset);
        for (const d of deltas) d.guard.check(d.snap.model.streamOffset);
      },
      deltas,
    });
    if (r.stream?.holeMap === 'none') {
      process.stderr.write(`note: no hole map (${printable(r.stream.holeMapReason ?? 'unavailable')}): every byte under a clear bit was read to find stale pages\n`);
    }
    if (!args.json) process.stdout.write(`${printable(file)}: restored ${r.machine} in ${r.elapsedMs.toFixed(0)} ms: ${describeLoad(r)}; guest ${r.status}\n`);
    const pre = args.prefetch && r.mapped && !signal.aborted ? await prefetch(snap, r.mapped.block, signal) : undefined;
    if (pre && !args.json) process.stdout.write(`prefetched ${bytes(pre.bytes)} of ${r.mapped?.block} into the page cache in ${pre.ms.toFixed(0)} ms\n`);
    if (args.json) {
      const round = (ms: number): number => Math.round(ms * 10) / 10;
      process.stdout.write(JSON.stringify({ file, ...r, elapsedMs: round(r.elapsedMs), ...(pre ? { prefetch: { bytes: pre.bytes, ms: round(pre.ms) } } : {}) }, null, 2) + '\n');
    }
  } finally {
    await snap.close();
    for (const d of deltas) await d.snap.close();
  }
}

function describeLoad(r: RestoreResult): string {
  if (!r.mapped) return 'copied by QEMU';
  const stale = Object.values(r.stream?.stalePages ?? {}).reduce((a, b) => a + b, 0);
  return `${r.mapped.block} (${bytes(r.mapped.usedLength)}) mapped from the file, ${bytes(r.stream?.bytes ?? 0)} stream loaded${stale ? `, ${stale} stale pages zeroed` : ''}`;
}

