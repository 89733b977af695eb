import type { ArgumentsCamelCase, Argv } from 'yargs';
import { RamsnapError } from '../../format/errors.js';
import { diffSnapshots, type SnapshotDiff } from '../../reader/diff.js';
import type { Snapshot } from '../../reader/snapshot.js';
import { checkWidth, plotDiff, plotFormatOf, writePlot } from '../../writer/plot.js';
import { checkOutput } from '../../writer/sink.js';
import { EXIT_INVALID, EXIT_OK, EXIT_USAGE } from '../exit.js';
import { bytes, hex, printable, table } from '../human.js';
import { openGuarded } from '../open.js';
import { WIDTH_OPTION } from './plot.js';

interface DiffArgs {
  a: string;
  b: string;
  json?: boolean;
  ranges?: number;
  plot?: string;
  force?: boolean;
  width?: number;
}

export const command = 'diff <a> <b>';
export const describe = 'What differs between two snapshots: per block the pages added, removed and changed, and the device state, machine and layout. Exit status as cmp: 0 same, 1 different, 2 trouble (an invalid file too). --plot draws the changes as SVG or PNG';

export function builder(y: Argv): Argv<DiffArgs> {
  return y
    .positional('a', { type: 'string', describe: 'the older snapshot', demandOption: true })
    .positional('b', { type: 'string', describe: 'the newer snapshot', demandOption: true })
    .option('json', { type: 'boolean', describe: 'print JSON: every range' })
    .option('ranges', { type: 'number', default: 8, describe: 'page ranges listed per block and kind in text output' })
    .option('plot', { type: 'string', describe: 'also draw the blocks both files hold, cells coloured by the pages added, removed and changed (as `ramsnap plot`, main RAM in B\'s guest-physical order): FILE.svg or FILE.png' })
    .option('force', { type: 'boolean', describe: 'replace an existing --plot file' })
    .option('width', WIDTH_OPTION)
    .epilogue('Exit status: 0 the snapshots hold the same memory, device state, machine and layout; 1 they differ; 2 trouble: a bad flag, or a file that cannot be read or is invalid (unlike the other commands, which use 1 for an invalid file, as cmp and diff do).')
    .example('$0 diff before.snap after.snap', 'pages that changed between two checkpoints')
    .example('$0 diff before.snap after.snap --plot changes.png', 'and a picture of where they are') as unknown as Argv<DiffArgs>;
}

export async function handler(args: ArgumentsCamelCase<DiffArgs>): Promise<void> {
  let a: Snapshot | undefined;
  let b: Snapshot | undefined;
  try {
    // A bad --plot is refused before a page is read.
    const format = args.plot !== undefined ? plotFormatOf(args.plot) : undefined;
    if (args.plot !== undefined) {
      checkWidth(args.width);
      checkOutput(args.plot, args.force ?? false);
    }
    // The picture's memory map needs the decoded chipset registers (x86 PAM and SMRAM).
    const ga = await openGuarded(args.a, { decodeDevices: format !== undefined });
    a = ga.snap;
    const gb = await openGuarded(args.b, { decodeDevices: format !== undefined });
    b = gb.snap;
    const d = await diffSnapshots(a, b);
    const image = format && (await plotDiff(a, b, { diff: d, format, width: args.width, names: [args.a, args.b] }));
    ga.guard.check(a.model.streamOffset);
    gb.guard.check(b.model.streamOffset);
    if (image && args.plot !== undefined) await writePlot(args.plot, image, { force: args.force });
    process.stdout.write(args.json ? JSON.stringify({ a: args.a, b: args.b, ...d }, null, 2) + '\n' : text(args, d));
    process.exitCode = d.same ? EXIT_OK : EXIT_INVALID;
  } catch (err) {
    // cmp's convention: 2 is trouble, whatever the trouble; 1 means "different".
    if (err instanceof RamsnapError) err.exitStatus = EXIT_USAGE;
    throw err;
  } finally {
    await a?.close();
    await b?.close();
  }
}

function text(args: DiffArgs, d: SnapshotDiff): string {
  const out: string[] = [`A  ${printable(args.a)}`, `B  ${printable(args.b)}`];
  if (d.machine) out.push(`machine differs: ${printable(d.machine.a ?? '(none)')} in A, ${printable(d.machine.b ?? '(none)')} in B`);
  for (const l of d.layout) out.push(`layout: ${l}`);
  for (const n of d.onlyInA) out.push(`block ${printable(n)} only in A`);
  for (const n of d.onlyInB) out.push(`block ${printable(n)} only in B`);
  for (const r of d.resized) out.push(`block ${printable(r.block)} is ${bytes(r.a)} in A and ${bytes(r.b)} in B: not compared`);
  const rows = [['block', 'added', 'removed', 'changed']];
  for (const b of d.blocks) {
    const cell = (n: number): string => (n ? `${n} page${n === 1 ? "" : "s"} (${bytes(n * b.pageSize)})` : "-");
    rows.push([printable(b.block), cell(b.totals.added), cell(b.totals.removed), cell(b.totals.changed)]);
  }
  out.push('', table(rows));
  for (const b of d.blocks) {
    for (const kind of ['added', 'removed', 'changed'] as const) {
      const list = b[kind];
      if (!list.length) continue;
      const shown = list.slice(0, args.ranges ?? 8).map((r) => `${hex(r.first * b.pageSize)}-${hex((r.first + r.count) * b.pageSize - 1)}`);
      out.push(`${printable(b.block)} ${kind}: ${shown.join(', ')}${list.length > shown.length ? `, and ${list.length - shown.length} more ranges (--json lists all)` : ''}`);
    }
  }
  const dev = d.devices;
  out.push('', dev.same ? 'device state: same' : `device state differs: ${[...dev.changed.map((k) => `${k} changed`), ...dev.onlyInA.map((k) => `${k} only in A`), ...dev.onlyInB.map((k) => `${k} only in B`)].map(printable).join(', ')}`);
  if (dev.unchecked) out.push('(a file has no device description: its sections were compared as bytes)');
  out.push(d.same ? 'same' : 'different');
  return out.join('\n') + '\n';
}
