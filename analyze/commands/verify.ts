import type { ArgumentsCamelCase, Argv } from 'yargs';
import { FormatCode, type RamsnapFormatError } from '../../format/errors.js';
import type { RuleGroup } from '../../reader/model.js';
import { errorLine, hex, printable } from '../human.js';
import { errorJson, openLenient } from '../open.js';
import { openOptions, withCommon, type CommonArgs } from '../options.js';
import { EXIT_INVALID } from '../exit.js';

export const command = 'verify <file>';
export const describe = 'Check every structural rule of the format; exit 1 on the first that fails';

/**
 * The rules, grouped as SPEC.md lists them, with the error codes each can
 * raise (and, for a code two groups share, which fields are this group's).
 */
export const CHECKS: { id: RuleGroup; title: string; codes: string[]; fields?: RegExp }[] = [
  { id: 'header', title: 'magic, version and wrapper header', codes: [FormatCode.BAD_MAGIC, FormatCode.BAD_VERSION, FormatCode.BAD_LIBVIRT_HEADER] },
  { id: 'configuration', title: 'configuration section and capabilities', codes: [FormatCode.BAD_CONFIGURATION] },
  { id: 'sections', title: 'section kinds, ids and footers', codes: [FormatCode.UNKNOWN_SECTION_TYPE, FormatCode.BAD_SECTION_FOOTER, FormatCode.UNKNOWN_SECTION_ID, FormatCode.DUPLICATE_SECTION_ID, FormatCode.BAD_COMMAND] },
  {
    id: 'ram-blocks',
    title: 'RAM block list and block lengths',
    codes: [FormatCode.BAD_RAM_FLAGS, FormatCode.RAM_SIZE_MISMATCH, FormatCode.DUPLICATE_BLOCK, FormatCode.BAD_BLOCK_LENGTH],
    fields: /^(?!ram\.record)/,
  },
  { id: 'page-records', title: 'legacy page records', codes: [FormatCode.BAD_RAM_FLAGS, FormatCode.UNKNOWN_BLOCK, FormatCode.PAGE_OUT_OF_BLOCK], fields: /^(ram\.record|ramblock\[.*\]\.page$)/ },
  { id: 'mapped-ram-header', title: 'mapped-ram header version', codes: [FormatCode.BAD_MAPPED_RAM_VERSION] },
  { id: 'page-size', title: 'page size a power of two and the same everywhere', codes: [FormatCode.BAD_PAGE_SIZE, FormatCode.PAGE_SIZE_MISMATCH] },
  { id: 'bitmaps', title: 'bitmaps inside the file, sized for their block, no bits past the last page', codes: [FormatCode.BITMAP_OUT_OF_FILE, FormatCode.BITMAP_TAIL_BITS_SET] },
  { id: 'page-regions', title: 'page regions aligned, inside the file, overlapping nothing', codes: [FormatCode.PAGES_MISALIGNED, FormatCode.PAGES_OVERLAP, FormatCode.PAGES_OUT_OF_FILE] },
  {
    id: 'device-state',
    title: 'device sections match the device description; spapr/htab and s390 storage attributes their own format',
    codes: [FormatCode.BAD_DEVICE_DESCRIPTION, FormatCode.DEVICE_STATE_MISMATCH, FormatCode.UNDESCRIBED_SECTION, FormatCode.BAD_HTAB, FormatCode.BAD_STORAGE_ATTRIBUTES],
  },
  { id: 'end-of-stream', title: 'stream complete: EOF reached, sections closed, the description right after EOF', codes: [FormatCode.INCOMPLETE, FormatCode.TRUNCATED] },
  { id: 'limits', title: 'values within what ramsnap supports', codes: [FormatCode.VALUE_TOO_LARGE, FormatCode.LIMIT_EXCEEDED, FormatCode.UNSUPPORTED] },
];

function failedHere(check: (typeof CHECKS)[number], err: RamsnapFormatError): boolean {
  return check.codes.includes(err.code) && (!check.fields || check.fields.test(err.field));
}

type Status = 'pass' | 'fail' | 'unchecked';

export function builder(y: Argv): Argv<CommonArgs> {
  return withCommon(y).example('$0 verify vm.snap', 'exit 0 when the file is a complete, sound snapshot');
}

export async function handler(args: ArgumentsCamelCase<CommonArgs>): Promise<void> {
  const snap = await openLenient(args.file, openOptions(args));
  try {
    const m = snap.model;
    const err = m.error;
    // The walk records each group of rules it has checked over the whole file: a group the failure
    // belongs to failed, one the walk finished before it passed, and the rest were not (fully) checked.
    const checks: { id: string; title: string; status: Status; error?: Record<string, unknown> }[] = CHECKS.map((c) => {
      const status: Status = err && failedHere(c, err) ? 'fail' : m.checked.includes(c.id) ? 'pass' : 'unchecked';
      return { id: c.id, title: c.title, status, ...(status === 'fail' ? { error: errorJson(err) } : {}) };
    });
    if (err && !checks.some((c) => c.status === 'fail')) {
      checks.push({ id: 'other', title: 'other', status: 'fail', error: errorJson(err) });
    }
    if (args.json) {
      process.stdout.write(
        JSON.stringify({ file: args.file, ok: !err, complete: m.complete, checks, warnings: m.warnings, stoppedAt: err?.offset }, null, 2) + '\n',
      );
    } else {
      for (const c of checks) {
        const mark = c.status === 'pass' ? 'ok  ' : c.status === 'fail' ? 'FAIL' : '--  ';
        process.stdout.write(`${mark}  ${c.title}\n`);
      }
      // The field names the block ("ramblock[NAME].…"), so it is escaped like the message.
      for (const w of m.warnings) process.stdout.write(`warn  ${w.code}: ${printable(w.message)} (${printable(w.field)} at ${hex(w.offset)})\n`);
      if (err) {
        process.stdout.write(`\n${printable(args.file)}: INVALID: ${err.code}: ${printable(err.message)}\n(rules marked -- were not fully checked: the walk stopped at offset ${err.offset})\n`);
      } else {
        const present = m.blocks.reduce((n, b) => n + b.pagesPresent * b.pageSize, 0);
        const unchecked = m.devices.filter((d) => !d.checked).length;
        const devices = unchecked ? `${m.devices.length} device sections, ${unchecked} of them NOT CHECKED (no device description)` : `${m.devices.length} device sections`;
        process.stdout.write(`\n${printable(args.file)}: OK: complete ${m.mappedRam ? 'mapped-ram' : 'legacy'} snapshot, ${m.blocks.length} blocks, ${present} bytes present, ${devices}\n`);
        if (unchecked) process.stdout.write('(rules marked -- could not be checked: the file has no device description)\n');
      }
    }
    if (err) {
      process.stderr.write(`${errorLine(err)}\n`);
      process.exitCode = EXIT_INVALID;
    }
  } finally {
    await snap.close();
  }
}
