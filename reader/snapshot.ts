/**
 * The library's entry point for reading: open a snapshot file (or any
 * RandomAccessSource) into a SnapshotModel, then read guest memory from it
 * at random.
 */
import { bitRuns } from '../format/bitmap.js';
import { FormatCode, RamsnapFormatError, RamsnapUsageError } from '../format/errors.js';
import { LIBVIRT_HEADER_SIZE, decodeLibvirtHeader, hasLibvirtMagic } from '../format/libvirt.js';
import type { RamBlock, SnapshotModel } from './model.js';
import { FileSource, type RandomAccessSource } from './source.js';
import { walkStream } from './walk.js';

export interface OpenOptions {
  /** File offset where the QEMU stream starts. Default: 0, or after a libvirt header if there is one. */
  offset?: number;
  /** Page size of a legacy stream that does not record it. */
  pageSize?: number;
  /** Decode device sections into model.devices[].value (dump --state). */
  decodeDevices?: boolean;
  /**
   * Return the model even when a rule fails (model.error says which).
   * Default false: the first failure is thrown.
   */
  lenient?: boolean;
}

/** A run of present pages and where its bytes are. */
export interface PresentRun {
  first: number;
  count: number;
  /** File offset of the first page's bytes. */
  fileOffset: number;
  /** Bytes from one page's bytes to the next page's in the file (pageSize for mapped-ram). */
  stride: number;
}

export class Snapshot {
  private constructor(
    readonly source: RandomAccessSource,
    readonly model: SnapshotModel,
    private readonly ownsSource: boolean,
  ) {}

  static async open(file: string | RandomAccessSource, opts: OpenOptions = {}): Promise<Snapshot> {
    const owns = typeof file === 'string';
    const source = typeof file === 'string' ? await FileSource.open(file) : file;
    try {
      const model = await openModel(source, opts);
      if (model.error && !opts.lenient) throw model.error;
      return new Snapshot(source, model, owns);
    } catch (err) {
      if (owns) await source.close?.();
      throw err;
    }
  }

  get blocks(): RamBlock[] {
    return this.model.blocks;
  }

  block(name: string): RamBlock {
    const b = this.model.blocks.find((x) => x.name === name);
    if (!b) {
      throw new RamsnapUsageError('UNKNOWN_BLOCK', `no RAMBlock named ${JSON.stringify(name)} (blocks: ${this.model.blocks.map((x) => x.name).join(', ')})`, 'block');
    }
    return b;
  }

  /**
   * Runs of pages of `block` in [from, to) whose bytes are in the file, in
   * page order. Absent pages (clear bit, never sent, or sent as ZERO) are
   * zero and are not visited.
   */
  *presentRuns(block: RamBlock, from = 0, to = block.pages, maxRun = Infinity): Generator<PresentRun> {
    if (block.mappedRam && block.bitmap) {
      const base = block.mappedRam.pagesOffset;
      for (const r of bitRuns(block.bitmap, from, to, maxRun)) {
        yield { first: r.first, count: r.count, fileOffset: base + r.first * block.pageSize, stride: block.pageSize };
      }
    } else if (block.legacy) {
      for (const r of block.legacy.overlapping(from, to - from)) {
        if (r.dataOffset === -1) continue;
        for (let done = 0; done < r.count; done += Math.min(maxRun, r.count - done)) {
          const n = Math.min(maxRun, r.count - done);
          yield { first: r.first + done, count: n, fileOffset: r.dataOffset + done * r.stride, stride: r.count === 1 ? block.pageSize : r.stride };
        }
      }
    }
  }

  /**
   * Reads `length` bytes of guest memory at byte `at` of `block`. Pages that
   * are not present read as zero, whatever bytes the file holds there (a
   * clear bit wins over stale data: QEMU clears the bit of a page that
   * became zero but does not rewrite its bytes). One positional read per
   * run of present pages.
   */
  /**
   * `scratch`, when given, holds a legacy run's record span (page bytes with
   * record headers between them) instead of a new buffer per call.
   */
  async read(blockName: string | RamBlock, at: number, length: number, into?: Uint8Array, scratch?: Uint8Array): Promise<Uint8Array> {
    const block = typeof blockName === 'string' ? this.block(blockName) : blockName;
    if (!Number.isSafeInteger(at) || !Number.isSafeInteger(length) || at < 0 || length < 0 || at + length > block.usedLength) {
      throw new RamsnapUsageError('OUT_OF_RANGE', `range ${at}+${length} is outside block ${block.name} (${block.usedLength} bytes)`, 'at');
    }
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    if (length === 0) return out;
    const ps = block.pageSize;
    const firstPage = Math.floor(at / ps);
    const endPage = Math.ceil((at + length) / ps);
    // Only the gaps between present runs are zeroed: a buffer from a pool may hold old bytes.
    let filled = at;
    for (const run of this.presentRuns(block, firstPage, endPage)) {
      const runStart = Math.max(at, run.first * ps);
      const runEnd = Math.min(at + length, (run.first + run.count) * ps);
      if (runStart > filled) out.fill(0, filled - at, runStart - at);
      filled = runEnd;
      if (run.stride === ps) {
        const fileAt = run.fileOffset + (runStart - run.first * ps);
        await this.source.read(fileAt, runEnd - runStart, `ramblock[${block.name}].pages`, out.subarray(runStart - at, runEnd - at));
      } else {
        // Legacy records: page bytes separated by record headers. Read the span once, copy the pages out.
        const pIn = (runStart - run.first * ps) % ps;
        const p0 = Math.floor((runStart - run.first * ps) / ps);
        const p1 = Math.ceil((runEnd - run.first * ps) / ps);
        const spanStart = run.fileOffset + p0 * run.stride;
        const spanLength = (p1 - p0 - 1) * run.stride + ps;
        const span = await this.source.read(spanStart, spanLength, `ramblock[${block.name}].pages`, scratch && scratch.length >= spanLength ? scratch : undefined);
        let dst = runStart - at;
        for (let p = p0; p < p1; p++) {
          const from = (p - p0) * run.stride + (p === p0 ? pIn : 0);
          const take = Math.min(ps - (p === p0 ? pIn : 0), runEnd - at - dst);
          out.set(span.subarray(from, from + take), dst);
          dst += take;
        }
      }
    }
    if (filled < at + length) out.fill(0, filled - at, length);
    return out;
  }

  async close(): Promise<void> {
    if (this.ownsSource) await this.source.close?.();
  }
}

async function openModel(source: RandomAccessSource, opts: OpenOptions): Promise<SnapshotModel> {
  if (opts.offset !== undefined && (!Number.isSafeInteger(opts.offset) || opts.offset < 0 || opts.offset >= source.size)) {
    throw new RamsnapUsageError('BAD_OFFSET', `--offset ${opts.offset} is outside the file (${source.size} bytes)`, 'offset');
  }
  let streamOffset = opts.offset ?? 0;
  let libvirt;
  if (opts.offset === undefined && source.size >= 16) {
    const head = await source.read(0, Math.min(LIBVIRT_HEADER_SIZE, source.size), 'libvirt.header');
    if (hasLibvirtMagic(head)) {
      libvirt = decodeLibvirtHeader(head, source.size);
      streamOffset = libvirt.streamOffset;
    }
  }
  if (source.size - streamOffset < 8) {
    throw new RamsnapFormatError(source.size === streamOffset ? FormatCode.INCOMPLETE : FormatCode.BAD_MAGIC, 'file is too short to be a QEMU migration stream', {
      field: 'file.magic',
      offset: streamOffset,
      expected: '>= 8 bytes',
      actual: source.size - streamOffset,
    });
  }
  const model = await walkStream(source, { streamOffset, pageSize: opts.pageSize, decodeDevices: opts.decodeDevices });
  if (libvirt) {
    model.libvirt = libvirt;
    if (libvirt.partial && !model.error) {
      model.error = new RamsnapFormatError(FormatCode.INCOMPLETE, 'libvirt marks this save image as partial (the save did not finish)', {
        field: 'libvirt.magic',
        offset: 0,
      });
      model.complete = false;
    }
  }
  return model;
}
