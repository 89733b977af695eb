import fs from 'node:fs';
import path from 'node:path';
import type { ArgumentsCamelCase, Argv } from 'yargs';
import { FormatCode, RamsnapUsageError, ioError } from '../../format/errors.js';
import { blockFileNames, extractBlocks } from '../../reader/extract.js';
import type { RamBlock } from '../../reader/model.js';
import type { Snapshot } from '../../reader/snapshot.js';
import { EXIT_INVALID } from '../exit.js';
import { bytes, errorLine, printable } from '../human.js';
import { errorJson, openGuarded } from '../open.js';
import { MODE_OPTION, openOptions, parseMode, withCommon, type CommonArgs } from '../options.js';
import { progressBar } from '../progress.js';
import { onInterrupt } from '../../writer/cleanup.js';

interface ExtractArgs extends CommonArgs {
  output: string;
  block?: string;
  force?: boolean;
  mode?: string;
  salvage?: boolean;
}

export const command = 'extract <file>';
export const describe = 'Write each RAMBlock to a sparse raw file (absent and zero pages stay holes)';

export function builder(y: Argv): Argv<ExtractArgs> {
  return withCommon(y)
    .option('output', { alias: 'o', type: 'string', demandOption: true, describe: 'directory for all blocks, or the file for --block' })
    .option('block', { type: 'string', describe: 'extract only this block, to the file named by -o' })
    .option('force', { type: 'boolean', describe: 'replace existing output files (a symlink is replaced, never followed; a device, FIFO, socket or directory never is)' })
    .option('mode', MODE_OPTION)
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
  const mode = parseMode(args.mode);
  // Guarded: a file being patched is PATCH_IN_PROGRESS, and one that changed while its pages were copied is FILE_CHANGED.
  const { snap, guard } = await openGuarded(args.file, { ...openOptions(args), lenient: args.salvage ?? false });
  let createdDir: ReturnType<typeof outputDirectory>;
  try {
    if (args.block === undefined) createdDir = outputDirectory(args.output);
    const m = snap.model;
    const plan = planOutputs(snap, args);
    const total = plan.reduce((n, p) => n + p.block.usedLength, 0);
    const bar = await progressBar('extract', { total, json: args.json });
    let outputs;
    try {
      // All or nothing: no output appears until every one is complete and the file is known not to have changed meanwhile.
      outputs = await extractBlocks(snap, plan, { force: args.force, mode, onProgress: (d) => bar.update(d), beforeCommit: () => guard.check(m.streamOffset) });
    } finally {
      bar.stop();
    }
    createdDir?.keep();
    const results = outputs.map((r, i) => ({ ...r, trusted: plan[i].trusted, ...(plan[i].note ? { note: plan[i].note } : {}) }));
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
    createdDir?.removeIfEmpty();
    await snap.close();
  }
}

/**
 * Makes the output directory (with its parents) if it is not there. Until
 * keep(), the directories this run made are removed when empty, on an
 * error or a signal: a failed extract leaves no empty directory behind.
 */
function outputDirectory(dir: string): { keep(): void; removeIfEmpty(): void } | undefined {
  const notDirectory = (): RamsnapUsageError => new RamsnapUsageError('BAD_OUTPUT', `-o ${dir} is not a directory (use --block NAME -o FILE for one block)`, 'output');
  // Followed: a symlink to a directory is a directory to write into.
  let there: fs.Stats | undefined;
  try {
    there = fs.statSync(dir, { throwIfNoEntry: false });
  } catch (err) {
    throw ioError(err, dir, 'look at');
  }
  if (there) {
    if (!there.isDirectory()) throw notDirectory();
    return undefined;
  }
  let first: string | undefined;
  try {
    first = fs.mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw ioError(err, dir, 'create directory');
  }
  if (first === undefined) return undefined;
  // From the deepest directory made up to the first: rmdir removes only empty ones.
  const made: string[] = [];
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    made.push(d);
    if (d === path.resolve(first) || path.dirname(d) === d) break;
  }
  const removeIfEmpty = (): void => {
    for (const d of made) {
      try {
        fs.rmdirSync(d);
      } catch {
        return; // not empty (or gone): neither are its parents
      }
    }
  };
  const unregister = onInterrupt(removeIfEmpty);
  let kept = false;
  return {
    keep() {
      kept = true;
      unregister();
    },
    removeIfEmpty() {
      if (kept) return;
      unregister();
      removeIfEmpty();
    },
  };
}

function planOutputs(snap: Snapshot, args: ExtractArgs): Planned[] {
  const m = snap.model;
  const blocks = args.block !== undefined ? [snap.block(args.block)] : m.blocks;
  const paths = new Map<RamBlock, string>();
  if (args.block !== undefined) {
    paths.set(blocks[0], args.output);
  } else {
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
