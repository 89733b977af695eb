import type { ArgumentsCamelCase, Argv } from 'yargs';
import { bytes, errorLine, hex, printable, table } from '../human.js';
import { modelJson, openLenient, allocatedBytes } from '../open.js';
import { openOptions, withCommon, type CommonArgs } from '../options.js';
import { EXIT_INVALID } from '../exit.js';

export const command = 'info <file>';
export const describe = 'What a snapshot holds: machine, capabilities, page size, blocks, device sections, completeness';

export function builder(y: Argv): Argv<CommonArgs> {
  return withCommon(y).example('$0 info vm.snap', 'summary of a QEMU mapped-ram file').example('$0 info --json vm.snap', 'the same as JSON');
}

export async function handler(args: ArgumentsCamelCase<CommonArgs>): Promise<void> {
  const snap = await openLenient(args.file, openOptions(args));
  try {
    const m = snap.model;
    // Not a QEMU stream at all: nothing to show but the reason.
    if (m.version === undefined && m.error) throw m.error;
    if (args.json) {
      process.stdout.write(JSON.stringify(modelJson(args.file, m), null, 2) + '\n');
    } else {
      const alloc = allocatedBytes(args.file);
      const lines: string[] = [];
      lines.push(`file          ${printable(args.file)}`);
      lines.push(`size          ${bytes(m.fileSize)} (${m.fileSize} bytes)${alloc !== undefined ? `, ${bytes(alloc)} allocated` : ''}`);
      if (m.libvirt) lines.push(`libvirt       save image v${m.libvirt.version}, format ${m.libvirt.formatName}${m.libvirt.partial ? ', PARTIAL' : ''}, stream at ${hex(m.libvirt.streamOffset)}`);
      else if (m.streamOffset) lines.push(`stream at     ${hex(m.streamOffset)}`);
      lines.push(`machine       ${printable(m.configuration?.machine ?? '(not recorded)')}`);
      lines.push(`capabilities  ${m.configuration?.capabilities.map(printable).join(', ') || '(none)'}`);
      lines.push(`kind          ${m.mappedRam ? 'mapped-ram' : 'legacy (sequential)'}, page size ${m.pageSize}`);
      if (m.ramTotal !== undefined) lines.push(`RAM           ${bytes(m.ramTotal)} in ${m.blocks.length} blocks`);
      lines.push(`devices       ${m.devices.length} device sections${m.vmdesc ? `, description ${bytes(m.vmdesc.length)} at ${hex(m.vmdesc.offset)}` : ', no description'}`);
      lines.push(`complete      ${m.complete ? 'yes' : `no: ${m.error?.code}: ${printable(m.error?.message ?? '')}`}`);
      for (const w of m.warnings) lines.push(`warning       ${w.code}: ${printable(w.message)}`);
      process.stdout.write(lines.join('\n') + '\n\n');
      const rows = [['block', 'used length', 'pages present', 'bytes present', 'pages at']];
      for (const b of m.blocks) {
        rows.push([printable(b.name), bytes(b.usedLength), `${b.pagesPresent}/${b.pages}`, bytes(b.pagesPresent * b.pageSize), b.mappedRam ? hex(b.mappedRam.pagesOffset) : '-']);
      }
      process.stdout.write(table(rows, [1, 2, 3]) + '\n');
    }
    if (m.error) {
      process.stderr.write(`${errorLine(m.error)}\n`);
      process.exitCode = EXIT_INVALID;
    }
  } finally {
    await snap.close();
  }
}
