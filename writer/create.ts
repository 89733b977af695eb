/**
 * Builds a mapped-ram snapshot from raw memory images (byte i of the image
 * is byte i of the RAMBlock), optionally on top of a template snapshot.
 *
 * With a template, the blocks, their sizes and order, the device sections,
 * the description, the RAM section id and the configuration (machine type,
 * target-page-bits) are the template's, so QEMU restores a working VM with
 * the new memory; blocks without an image keep the template's pages.
 * Without one, the stream holds only the RAM (QEMU loads it and keeps its
 * own device state), one block per image, as large as the image, with the
 * page size and configuration QEMU writes for the machine's target
 * (format/target.ts; `arch` says the target where the name does not).
 *
 * Images are read where they hold data (reader/holes.ts: SEEK_DATA and
 * SEEK_HOLE), in 1 MiB chunks with a few reads in flight; only non-zero
 * pages are written (SnapshotWriter.writePages tells them apart), so the
 * output is as sparse as QEMU's own files.
 */
import fs from 'node:fs';
import { MAX_MACHINE_NAME } from '../format/configuration.js';
import { MAX_PAGE_SIZE, MIN_PAGE_SIZE } from '../format/constants.js';
import { RamsnapIoError, RamsnapUsageError, ioError } from '../format/errors.js';
import { LayoutError, checkBlocks } from '../format/layout.js';
import { TARGETS, TARGET_NAMES, machineAliasProblem, machineTarget, samePageRule, targetPageBitsFor, type TargetInfo } from '../format/target.js';
import { HoleMap, type DataExtent, type HoleMapKind } from '../reader/holes.js';
import type { Snapshot } from '../reader/snapshot.js';
import { openUnpatched, type ReadGuard } from './journal.js';
import { COPY_CHUNK, checkConvertible, copyBlock, mappedRamWriterLike, pump, type Chunk, type PageSink } from './convert.js';
import { checkOutput, type OutputOptions } from './sink.js';
import { SnapshotWriter } from './snapshot-writer.js';

export interface RamImage {
  /** RAMBlock name, e.g. pc.ram. */
  block: string;
  /** Raw image file. */
  file: string;
}

export interface CreateOptions extends OutputOptions {
  images: RamImage[];
  /** A QEMU snapshot of the same machine to take blocks and device state from. */
  template?: string;
  /** Where the template's stream starts (default: 0 or after a libvirt header). */
  templateOffset?: number;
  /** Page size (without a template; default: the target's). With one it must match the template's. */
  pageSize?: number;
  /** Machine type (required without a template; with one it must match the template's). */
  machine?: string;
  /**
   * QEMU target (qemu-system-ARCH, one of TARGET_NAMES) of the machine, for
   * a machine type whose name does not say it: it decides the page size and
   * whether the stream carries target-page-bits (format/target.ts).
   */
  arch?: string;
  force?: boolean;
  fsync?: boolean;
}

export interface CreateResult {
  /** Each block written and where its pages came from: an image (`read` says how it was read) or the template. */
  blocks: { name: string; usedLength: number; source: string; read?: ImageRead }[];
  /** The page size written, and target-page-bits when the stream carries it. */
  pageSize: number;
  targetPageBits?: number;
  /** Pages read: the pages of each image's data extents, and the template's present pages of the other blocks (zero pages among them are not written). */
  pagesRead: number;
  notes: string[];
}

/** Parses NAME=FILE (the first '=' splits, so the file name may contain more). */
export function parseRamImage(text: string): RamImage {
  const eq = text.indexOf('=');
  if (eq <= 0 || eq === text.length - 1) {
    throw new RamsnapUsageError('BAD_RAM', `--ram must be NAME=FILE (e.g. pc.ram=mem.raw), got ${JSON.stringify(text)}`, 'ram');
  }
  return { block: text.slice(0, eq), file: text.slice(eq + 1) };
}

interface OpenImage extends RamImage {
  fd: number;
  size: number;
}

export async function createSnapshot(output: string, o: CreateOptions): Promise<CreateResult> {
  // Every input is checked before anything is opened or written: a usage error names its field.
  const target = checkCreateOptions(o);
  checkOutput(output, o.force ?? false);
  const images: OpenImage[] = [];
  let template: Snapshot | undefined;
  let guard: ReadGuard | undefined;
  try {
    for (const img of o.images) images.push(openImage(img));
    // A template being patched is refused, and one patched while we copy is not written out (journal.ts ReadGuard).
    if (o.template) ({ snap: template, guard } = await openUnpatched(o.template, { offset: o.templateOffset }));
    return await build(output, o, target, images, template, guard);
  } finally {
    await template?.close();
    for (const img of images) fs.closeSync(img.fd);
  }
}

/** What a RAM-only stream is written for: the page size and target-page-bits of the machine's target. */
interface RamOnlyTarget {
  pageSize: number;
  targetPageBits?: number;
}

/**
 * Checks the options on their own (the images' sizes and the template are
 * checked once opened). Without a template, decides the page size and
 * target-page-bits from the machine type, or from `arch` where the name
 * does not say the target; refuses what it cannot decide.
 */
export function checkCreateOptions(o: CreateOptions): RamOnlyTarget | undefined {
  const usage = (code: string, message: string, field: string): never => {
    throw new RamsnapUsageError(code, message, field);
  };
  if (!Array.isArray(o.images)) usage('BAD_RAM', 'images must be a list of { block, file }', 'ram');
  if (o.images.length === 0 && o.template === undefined) usage('NO_BLOCKS', 'name at least one --ram NAME=FILE (or a --template to copy)', 'ram');
  const seen = new Set<string>();
  for (const img of o.images) {
    checkBlockName(img.block);
    if (typeof img.file !== 'string' || img.file === '') usage('BAD_RAM', `--ram ${JSON.stringify(img.block)} names no file`, 'ram');
    if (seen.has(img.block)) usage('DUPLICATE_BLOCK', `--ram names block ${JSON.stringify(img.block)} twice`, 'ram');
    seen.add(img.block);
  }
  if (o.pageSize !== undefined && !isPageSize(o.pageSize)) {
    usage('BAD_PAGE_SIZE', `--page-size must be a power of two from ${MIN_PAGE_SIZE} to ${MAX_PAGE_SIZE}, got ${o.pageSize}`, 'page-size');
  }
  if (o.templateOffset !== undefined && (!Number.isSafeInteger(o.templateOffset) || o.templateOffset < 0)) {
    usage('BAD_OFFSET', `--template-offset must be a byte offset, got ${o.templateOffset}`, 'template-offset');
  }
  if (o.machine !== undefined) checkMachineName(o.machine);
  const info = o.arch === undefined ? undefined : TARGETS[o.arch];
  if (o.arch !== undefined && !info) usage('BAD_ARCH', `--arch ${JSON.stringify(o.arch)} is not one of ${TARGET_NAMES.join(', ')}`, 'arch');
  // With a template, its configuration is the machine's: only the consistency checks in build() apply.
  if (o.template !== undefined) return undefined;
  if (o.machine === undefined) {
    return usage('MACHINE_REQUIRED', 'without --template, --machine is required (the exact machine type of the VM that will load it, e.g. pc-q35-10.0)', 'machine');
  }
  const known = machineTarget(o.machine);
  if (known && info && !samePageRule(info, TARGETS[known.target])) {
    usage('ARCH_MISMATCH', `machine ${o.machine} is a ${known.target} machine, not ${o.arch}`, 'arch');
  }
  if (!known && !info) {
    return usage(
      'ARCH_REQUIRED',
      `ramsnap cannot tell the QEMU target of machine ${JSON.stringify(o.machine)} from its name, so not its page size or whether QEMU records target-page-bits: say --arch (${TARGET_NAMES.join(', ')}) or use --template`,
      'arch',
    );
  }
  const rule = known ? TARGETS[known.target] : (info as TargetInfo);
  let pageSize = o.pageSize ?? known?.pageSize;
  if (pageSize === undefined) {
    if (rule.pageSizes.length > 1) {
      return usage('PAGE_SIZE_REQUIRED', `${o.arch} CPUs have ${rule.pageSizes.join(' or ')}-byte target pages (Arm: 4096 from ARMv7 on, 1024 before): say --page-size`, 'page-size');
    }
    pageSize = rule.pageSizes[0];
  }
  const allowed = known ? [known.pageSize] : rule.pageSizes;
  if (!allowed.includes(pageSize)) {
    usage('PAGE_SIZE_MISMATCH', `machine ${o.machine} (${known?.target ?? o.arch}) has ${allowed.join(' or ')}-byte target pages, not ${pageSize}: QEMU would load the pages at the wrong addresses`, 'page-size');
  }
  const targetPageBits = targetPageBitsFor(rule, pageSize);
  return { pageSize, ...(targetPageBits !== undefined ? { targetPageBits } : {}) };
}

function checkBlockName(name: unknown): void {
  try {
    checkBlocks([{ name: name as string, usedLength: MIN_PAGE_SIZE }], MIN_PAGE_SIZE);
  } catch (err) {
    if (err instanceof LayoutError) throw new RamsnapUsageError(err.code, `--ram: ${err.message}`, 'ram');
    throw err;
  }
}

function checkMachineName(machine: unknown): void {
  // QEMU's machine types are short ASCII identifiers (pc-q35-10.0, virt-10.0, sun4u); the format allows 1..256 bytes.
  if (typeof machine !== 'string' || !/^[\x21-\x7e]+$/.test(machine) || machine.length > MAX_MACHINE_NAME) {
    throw new RamsnapUsageError('BAD_MACHINE', `--machine must be a QEMU machine type (1 to ${MAX_MACHINE_NAME} printable ASCII characters, no spaces), got ${JSON.stringify(machine)}`, 'machine');
  }
  const alias = machineAliasProblem(machine);
  if (alias) throw new RamsnapUsageError('BAD_MACHINE', `--machine ${alias}`, 'machine');
}

const isPageSize = (ps: number): boolean => Number.isInteger(ps) && ps >= MIN_PAGE_SIZE && ps <= MAX_PAGE_SIZE && (ps & (ps - 1)) === 0;

async function build(
  output: string,
  o: CreateOptions,
  target: RamOnlyTarget | undefined,
  images: OpenImage[],
  template: Snapshot | undefined,
  guard: ReadGuard | undefined,
): Promise<CreateResult> {
  const byBlock = new Map(images.map((i) => [i.block, i]));
  const notes: string[] = [];
  let writer: SnapshotWriter;
  if (template) {
    const m = template.model;
    const had = checkConvertible(template, `template ${o.template}`);
    if (o.machine !== undefined && o.machine !== had.machine) {
      throw new RamsnapUsageError('MACHINE_MISMATCH', `--machine ${o.machine} differs from the template's machine type ${had.machine}`, 'machine');
    }
    if (o.pageSize !== undefined && o.pageSize !== m.pageSize) {
      throw new RamsnapUsageError('PAGE_SIZE_MISMATCH', `--page-size ${o.pageSize} differs from the template's page size ${m.pageSize}`, 'page-size');
    }
    for (const img of images) {
      const b = template.blocks.find((x) => x.name === img.block);
      if (!b) {
        throw new RamsnapUsageError('UNKNOWN_BLOCK', `the template has no RAM block ${JSON.stringify(img.block)} (blocks: ${template.blocks.map((x) => x.name).join(', ')})`, 'ram');
      }
      if (img.size !== b.usedLength) {
        throw new RamsnapUsageError('RAM_SIZE_MISMATCH', `${img.file} is ${img.size} bytes but block ${img.block} of the template is ${b.usedLength} bytes`, 'ram');
      }
    }
    if (o.arch !== undefined) {
      const known = machineTarget(had.machine);
      if (known && !samePageRule(TARGETS[o.arch], TARGETS[known.target])) {
        throw new RamsnapUsageError('ARCH_MISMATCH', `the template's machine ${had.machine} is a ${known.target} machine, not ${o.arch}`, 'arch');
      }
    }
    writer = await mappedRamWriterLike(template, had, output, o);
  } else {
    const t = target as RamOnlyTarget;
    for (const img of images) {
      if (img.size === 0 || img.size % t.pageSize !== 0) {
        throw new RamsnapUsageError('BAD_BLOCK_LENGTH', `${img.file} is ${img.size} bytes: an image must be a positive whole number of ${t.pageSize}-byte pages`, 'ram');
      }
    }
    writer = await SnapshotWriter.create(output, {
      machine: o.machine as string,
      pageSize: t.pageSize,
      targetPageBits: t.targetPageBits,
      blocks: images.map((i) => ({ name: i.block, usedLength: i.size })),
      force: o.force,
      fsync: o.fsync,
      mode: o.mode,
      onProgress: o.onProgress,
    });
  }
  let pagesRead = 0;
  const result: CreateResult['blocks'] = [];
  try {
    for (const b of writer.plan.blocks) {
      const img = byBlock.get(b.name);
      if (img) {
        const read = await copyImage(img, writer);
        pagesRead += read.pages;
        result.push({ name: b.name, usedLength: b.usedLength, source: img.file, read });
        if (read.holeMap === 'none') notes.push(`${img.file}: every byte read (no hole map: ${read.reason})`);
      } else if (template) {
        pagesRead += await copyBlock(template, template.block(b.name), writer);
        result.push({ name: b.name, usedLength: b.usedLength, source: 'template' });
      }
    }
    if (template) guard?.check(template.model.streamOffset);
    await writer.finalize();
  } catch (err) {
    await writer.abort();
    throw err;
  }
  const cfg = writer.plan.configuration;
  return { blocks: result, pageSize: writer.plan.pageSize, ...(cfg.targetPageBits !== undefined ? { targetPageBits: cfg.targetPageBits } : {}), pagesRead, notes };
}

function openImage(img: RamImage): OpenImage {
  let fd: number;
  try {
    fd = fs.openSync(img.file, 'r');
  } catch (err) {
    throw ioError(err, img.file, 'open');
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new RamsnapIoError('NOT_A_FILE', `${img.file} is not a regular file`, img.file);
    return { ...img, fd, size: st.size };
  } catch (err) {
    fs.closeSync(fd);
    throw ioError(err, img.file, 'read');
  }
}

/** What reading one image took. */
export interface ImageRead {
  /** Pages read (those in data extents; the rest are holes, zero without a read). */
  pages: number;
  /** Data extents the hole map gave (1 when there is no map: everything is read). */
  extents: number;
  /** How holes were found: lseek(SEEK_DATA/SEEK_HOLE), or not at all (every page read and compared with zero). */
  holeMap: HoleMapKind;
  /** Why there was no hole map. */
  reason?: string;
}

/**
 * Copies a raw image into a block: the pages of its data extents, in
 * chunks of up to 1 MiB with a few reads in flight; holes are zero pages,
 * which a fresh block already has (a clear bit), so they are not read.
 */
async function copyImage(img: OpenImage, sink: PageSink): Promise<ImageRead> {
  const ps = sink.pageSize;
  const chunkPages = Math.max(1, Math.floor(COPY_CHUNK / ps));
  const map = await HoleMap.open(img.fd, img.file);
  try {
    let pages = 0;
    let extents = 0;
    const covered = { pages: 0 };
    for (let at = 0; at < img.size; ) {
      const r = await map.extents(at, img.size);
      extents += r.extents.length;
      pages += await pump(imageChunks(img.block, r.extents, ps, chunkPages, covered), sink, (c, slot) => readFully(img, c.first * ps, c.count * ps, slot.buf), { chunkBytes: chunkPages * ps });
      at = r.next;
    }
    return { pages, extents, holeMap: map.kind, ...(map.reason !== undefined ? { reason: map.reason } : {}) };
  } finally {
    map.close();
  }
}

/**
 * The chunks of up to `chunkPages` pages that cover `extents` (byte ranges
 * of an image), made as the copy asks for them: a dense 1 TiB image is one
 * extent of a million chunks, which are never all in memory at once.
 * `covered.pages` is the first page not yet handed out: an extent that ends
 * inside a page and the next that starts in it share the page, which is
 * copied once.
 */
export function* imageChunks(block: string, extents: readonly DataExtent[], pageSize: number, chunkPages: number, covered: { pages: number }): Generator<Chunk> {
  for (const e of extents) {
    const first = Math.max(covered.pages, Math.floor(e.start / pageSize));
    const end = Math.ceil(e.end / pageSize);
    for (let p = first; p < end; p += chunkPages) {
      covered.pages = Math.min(end, p + chunkPages);
      yield { block, first: p, count: covered.pages - p, data: true };
    }
  }
}

function readFully(img: OpenImage, position: number, length: number, buf: Buffer): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      if (done === length) return resolve(buf.subarray(0, length));
      fs.read(img.fd, buf, done, length - done, position + done, (err, n) => {
        if (err) return reject(ioError(err, img.file, 'read'));
        if (n === 0) return reject(new RamsnapIoError('IO_SHORT_READ', `cannot read ${img.file}: it ended at byte ${position + done}, expected ${img.size} bytes (changed while reading?)`, img.file));
        step(done + n);
      });
    };
    step(0);
  });
}
