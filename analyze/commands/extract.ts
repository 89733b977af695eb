import fs from 'node:fs';
import path from 'node:path';
import type { ArgumentsCamelCase, Argv } from 'yargs';
import { FormatCode, RamsnapUsageError, ioError } from '../../format/errors.js';
import { blockFileNames, extractBlock, type ExtractResult } from '../../reader/extract.js';
import type { RamBlock } from '../../reader/model.js';
import type { Snapshot } from '../../reader/snapshot.js';
import { EXIT_INVALID } from '../exit.js';
import { bytes, errorLine, printable } from '../human.js';
import { errorJson, openGuarded } from '../open.js';
import { openOptions, withCommon, type CommonArgs } from '../options.js';
import { progressBar } from '../progress.js';

interface ExtractArgs extends CommonArgs {
  output: string;
  block?: string;
  force?: boolean;
  salvage?: boolean;
}

export const command = 'extract <file>';
export const describe = 'Write each RAMBlock to a sparse raw file (absent and zero pages stay holes)';

export function builder(y: Argv): Argv<ExtractArgs> {
  return withCommon(y)
    .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'directory for all blocks, or the file for --block' })
    .option('block', { type: 'string', describe: 'extract only this block, to the file named by -o' })
    .option('force', { type: 'boolean', describe: 'replace existing output files (a symlink is replaced, never followed)' })
    .option('salvage', { type: 'boolean', describe: 'recover what can be recovered from a damaged or incomplete file, and say what cannot be trusted' })
    .example('$0 extract vm.snap -o mem/', 'one NAME.raw per block in mem/')
    .example('$0 extract vm.snap --block pc.ram -o ram.img', 'guest RAM below 4 GiB of an x86 guest') as unknown as Argv<ExtractArgs>;
}

interface Planned {
  block: RamBlock;
  path: string;
  /** Copy the page region as found, ignoring the bitmap. */
  raw: boolean;
  trusted: boolean;
  limitBytes?: number;
  note?: string;
}

export async function handler(args: ArgumentsCamelCase<ExtractArgs>): Promise<void> {
  // Guarded: a file being patched is PATCH_IN_PROGRESS, and one that changed while its pages were copied is FILE_CHANGED.
  const { snap, guard } = await openGuarded(args.file, { ...openOptions(args), lenient: args.salvage ?? false });
  try {
    const m = snap.model;
    const plan = planOutputs(snap, args);
    const total = plan.reduce((n, p) => n + p.block.usedLength, 0);
    const bar = await progressBar(total, 'extract');
    const results: (ExtractResult & { trusted: boolean; note?: string })[] = [];
    let base = 0;
    try {
      for (const p of plan) {
        const r = await extractBlock(snap, p.block, p.path, { force: args.force, raw: p.raw, limitBytes: p.limitBytes, onProgress: (d) => bar.update(base + d) });
        base += p.block.usedLength;
        results.push({ ...r, trusted: p.trusted, ...(p.note ? { note: p.note } : {}) });
      }
    } finally {
      bar.stop();
    }
    try {
      guard.check(m.streamOffset);
    } catch (err) {
      // What was copied may mix two versions of the file: it goes.
      for (const r of results) fs.rmSync(r.path, { force: true });
      throw err;
    }
    if (args.json) {
      process.stdout.write(
        JSON.stringify({ file: args.file, complete: m.complete, error: errorJson(m.error), outputs: results }, null, 2) + '\n',
      );
    } else {
      for (const r of results) {
        process.stdout.write(`${printable(r.block)} -> ${printable(r.path)} (${bytes(r.usedLength)}, ${bytes(r.bytesWritten)} written)${r.note ? `: ${r.note}` : ''}\n`);
      }
      if (m.error) process.stdout.write(`salvaged from an invalid file: ${m.error.code}: ${printable(m.error.message)}\n`);
    }
    if (m.error) {
      process.stderr.write(`${errorLine(m.error)}\n`);
      process.exitCode = EXIT_INVALID;
    }
  } finally {
    await snap.close();
  }
}

function planOutputs(snap: Snapshot, args: ExtractArgs): Planned[] {
  const m = snap.model;
  const blocks = args.block !== undefined ? [snap.block(args.block)] : m.blocks;
  const paths = new Map<RamBlock, string>();
  if (args.block !== undefined) {
    paths.set(blocks[0], args.output);
  } else {
    try {
      fs.mkdirSync(args.output, { recursive: true });
    } catch (err) {
      throw ioError(err, args.output, 'create directory');
    }
    if (!fs.statSync(args.output).isDirectory()) {
      throw new RamsnapUsageError('BAD_OUTPUT', `-o ${args.output} is not a directory (use --block NAME -o FILE for one block)`, 'output');
    }
    const names = blockFileNames(blocks.map((b) => b.name));
    // Names are single path components (no separators, no leading dots), so they stay inside the directory.
    for (const b of blocks) paths.set(b, path.join(args.output, names.get(b.name) as string));
  }
  return blocks.map((b) => ({ block: b, path: paths.get(b) as string, ...trust(snap, b) }));
}

/** How far a block of a (possibly damaged) snapshot can be trusted. */
function trust(snap: Snapshot, b: RamBlock): { raw: boolean; trusted: boolean; limitBytes?: number; note?: string } {
  const m = snap.model;
  if (!m.error) return { raw: false, trusted: true };
  const lastBlock = m.blocks[m.blocks.length - 1] === b;
  if (b.mappedRam) {
    const incomplete = m.error.code === FormatCode.INCOMPLETE;
    const regionEnd = b.mappedRam.pagesOffset + b.usedLength;
    if (!b.bitmap || (incomplete && b.pagesPresent === 0)) {
      const cut = regionEnd > m.fileSize ? `; the file ends ${m.fileSize - b.mappedRam.pagesOffset} bytes into the page region, the rest is zero` : '';
      return {
        raw: true,
        trusted: false,
        note: `bitmap ${b.bitmap ? 'not written yet' : 'unreadable'}: page region copied as found (zero and stale pages cannot be told apart)${cut}`,
      };
    }
    if (regionEnd > m.fileSize) {
      const limitBytes = Math.max(0, m.fileSize - b.mappedRam.pagesOffset);
      return { raw: false, trusted: false, limitBytes, note: `the file ends ${limitBytes} bytes into the page region: present pages copied up to there, the rest is zero` };
    }
    if (lastBlock && m.error.offset >= b.mappedRam.headerOffset) {
      return { raw: false, trusted: false, note: `this block failed validation (${m.error.code}); pages copied as its bitmap says` };
    }
    return { raw: false, trusted: true };
  }
  return {
    raw: false,
    trusted: false,
    note: `legacy stream read up to offset ${m.error.offset}; later copies of pages, if any, were lost`,
  };
}
