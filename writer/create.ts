/**
 * Builds a mapped-ram snapshot from raw memory images (byte i of the image
 * is byte i of the RAMBlock), optionally on top of a template snapshot.
 *
 * With a template, the blocks, their sizes and order, the device sections,
 * the description, the RAM section id and the configuration (machine type,
 * target-page-bits) are the template's, so QEMU restores a working VM with
 * the new memory; blocks without an image keep the template's pages.
 * Without one, the stream holds only the RAM (QEMU loads it and keeps its
 * own device state), one block per image, as large as the image.
 *
 * Images are read in 1 MiB chunks with a few reads in flight; only non-zero
 * pages are written (SnapshotWriter.writePages tells them apart), so the
 * output is as sparse as QEMU's own files.
 */
import fs from 'node:fs';
import { RamsnapIoError, RamsnapUsageError, ioError } from '../format/errors.js';
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
  /** Page size (without a template; default 4096). With one it must match the template's. */
  pageSize?: number;
  /** Machine type (required without a template; with one it must match the template's). */
  machine?: string;
  force?: boolean;
  fsync?: boolean;
}

export interface CreateResult {
  blocks: { name: string; usedLength: number; source: string }[];
  /** Pages read: every page of each image, and the template's present pages of the other blocks (zero pages among them are not written). */
  pagesRead: number;
  notes: string[];
}

export const DEFAULT_PAGE_SIZE = 4096;

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
  const seen = new Set<string>();
  for (const img of o.images) {
    if (seen.has(img.block)) throw new RamsnapUsageError('DUPLICATE_BLOCK', `--ram names block ${JSON.stringify(img.block)} twice`, 'ram');
    seen.add(img.block);
  }
  if (!o.template && o.machine === undefined) {
    throw new RamsnapUsageError('MACHINE_REQUIRED', 'without --template, --machine is required (the exact machine type of the VM that will load it, e.g. pc-q35-10.0)', 'machine');
  }
  checkOutput(output, o.force ?? false);
  const images: OpenImage[] = [];
  let template: Snapshot | undefined;
  let guard: ReadGuard | undefined;
  try {
    for (const img of o.images) images.push(openImage(img));
    // A template being patched is refused, and one patched while we copy is not written out (journal.ts ReadGuard).
    if (o.template) ({ snap: template, guard } = await openUnpatched(o.template, { offset: o.templateOffset }));
    return await build(output, o, images, template, guard);
  } finally {
    await template?.close();
    for (const img of images) fs.closeSync(img.fd);
  }
}

async function build(output: string, o: CreateOptions, images: OpenImage[], template: Snapshot | undefined, guard: ReadGuard | undefined): Promise<CreateResult> {
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
    writer = await mappedRamWriterLike(template, had, output, o);
  } else {
    writer = await SnapshotWriter.create(output, {
      machine: o.machine as string,
      pageSize: o.pageSize ?? DEFAULT_PAGE_SIZE,
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
        pagesRead += await copyImage(img, b.pages, writer);
        result.push({ name: b.name, usedLength: b.usedLength, source: img.file });
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
  return { blocks: result, pagesRead, notes };
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

/** Copies a raw image into a block, 1 MiB at a time; returns the pages read. */
function copyImage(img: OpenImage, pages: number, sink: PageSink): Promise<number> {
  const ps = sink.pageSize;
  const chunkPages = Math.max(1, Math.floor(COPY_CHUNK / ps));
  function* chunks(): Generator<Chunk> {
    for (let p = 0; p < pages; p += chunkPages) yield { block: img.block, first: p, count: Math.min(chunkPages, pages - p), data: true };
  }
  return pump(chunks(), sink, (c, slot) => readFully(img, c.first * ps, c.count * ps, slot.buf), { chunkBytes: chunkPages * ps });
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
