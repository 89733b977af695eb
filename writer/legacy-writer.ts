/**
 * Writes a legacy (sequential, non-mapped-ram) migration stream, as QEMU
 * 10.0.2 writes one to a file (migration/ram.c ram_save_setup,
 * save_page_header, save_zero_page, save_normal_page; savevm.c):
 *
 *   file header, CONFIGURATION (no mapped-ram capability)
 *   START ram: be64 total | MEM_SIZE, per block u8 len + name + be64 used_length,
 *              EOS, footer
 *   PART ram:  page records, each be64 (offset | flags), the block name unless
 *              CONTINUE (same block as the record before), then
 *              PAGE: page_size bytes / ZERO: one fill byte (0);  EOS, footer
 *   switchover-start, END ram (EOS, footer), device sections, EOF, description
 *
 * Unlike mapped-ram there is no place reserved for a page: records are
 * appended in the order pages are given, a page may come any number of
 * times and the last copy wins (the loader overwrites in stream order).
 *
 * Zero pages are sent as ZERO records, as QEMU does, not left out. A
 * destination's RAM is not all zero at load time: the fw_cfg-backed ROM
 * blocks (`/rom@etc/acpi/tables`, `/rom@etc/table-loader`, ...) are filled
 * when the destination starts, also with -incoming, and a page left out of
 * the stream keeps that content (checked on QEMU 10.0.2, see
 * test/interop-writer.test.ts). A ZERO record costs 9 bytes (8 + the fill
 * byte, with CONTINUE), so a mostly empty guest still gives a small file.
 *
 * The stream is written front to back through a 1 MiB buffer (one write
 * per MiB, not per record) into a temporary file next to the target, which
 * is fsynced and renamed to the target only when complete, and removed on
 * any error, as SnapshotWriter does.
 */
import { RamFlag, Section } from '../format/constants.js';
import { concat, encodeConfiguration, type Configuration } from '../format/configuration.js';
import { latin1Bytes } from '../format/cursor.js';
import { RamsnapUsageError } from '../format/errors.js';
import { LayoutError, be64, checkBlocks, checkRamSectionId, writableConfiguration, type PlanBlock } from '../format/layout.js';
import { encodeFileHeader, encodeSectionStart } from '../format/section.js';
import { encodeRamSetupEnd, encodeStreamEnd, type DeviceState } from '../format/tail.js';
import { isZeroPage, zeroPageOf } from '../format/zero-pages.js';
import { checkDescribedPageSize, checkReadable, unrecordedPageSize } from './readable.js';
import { Coverage, TempFile, type OutputOptions } from './sink.js';

export interface LegacyWriterOptions extends OutputOptions {
  blocks: PlanBlock[];
  pageSize: number;
  /** Machine type, capabilities (none can be written), target-page-bits (QEMU's rule for a known machine) and uuid. */
  configuration: Configuration;
  /** Section id of the RAM section (a template's, so device section ids stay unique). Default 1. */
  ramSectionId?: number;
  /** Device sections and description after the RAM (from a template); none: a RAM-only stream. */
  device?: DeviceState;
  /** Send a ZERO record for each zero page (default true, as QEMU); false leaves them out of the stream. */
  zeroRecords?: boolean;
  /** Replace an existing target (default: refuse). */
  force?: boolean;
  /** fsync before the rename (default true). */
  fsync?: boolean;
}

/** Bytes collected before one write to the file. */
export const LEGACY_WRITE_BUFFER = 1 << 20;

export class LegacyWriter {
  private readonly buf = Buffer.allocUnsafe(LEGACY_WRITE_BUFFER);
  private fill = 0;
  /** File offset of buf[0]. */
  private position = 0;
  private readonly byName: Map<string, PlanBlock>;
  /** Block of the previous page record: the next record for it carries CONTINUE and no name. */
  private lastBlock: string | undefined;
  private readonly zeroPage: Buffer;
  private readonly coverage: Coverage;
  private done = false;
  /** Records written so far (PAGE and ZERO). */
  pageRecords = 0;
  zeroRecords = 0;

  private constructor(
    readonly target: string,
    private readonly sink: TempFile,
    private readonly opts: LegacyWriterOptions,
  ) {
    this.byName = new Map(opts.blocks.map((b) => [b.name, b]));
    this.zeroPage = zeroPageOf(opts.pageSize);
    this.coverage = new Coverage(opts.blocks, opts.onProgress);
  }

  /** Refuses (RamsnapUsageError) what QEMU could not load or ramsnap could not read back: see writableConfiguration. */
  static async create(target: string, opts: LegacyWriterOptions): Promise<LegacyWriter> {
    let configuration: Configuration;
    try {
      // The same block rules as a mapped-ram file (page size, names, lengths), and the configuration as QEMU writes it.
      checkBlocks(opts.blocks, opts.pageSize);
      configuration = writableConfiguration(opts.configuration, opts.pageSize, 'legacy');
      checkRamSectionId(opts.ramSectionId);
    } catch (err) {
      if (err instanceof LayoutError) throw new RamsnapUsageError(err.code, err.message, err.field);
      throw err;
    }
    checkReadable(opts.blocks, opts.pageSize, 'legacy');
    const described = checkDescribedPageSize(opts.device, opts.pageSize);
    if (configuration.targetPageBits === undefined && described === undefined && opts.pageSize !== unrecordedPageSize(configuration.machine)) {
      // Page records do not carry the page size: without target-page-bits or the description, a reader takes the machine's usual one.
      throw new RamsnapUsageError(
        'PAGE_SIZE_UNRECORDED',
        `a legacy stream of machine ${configuration.machine} with ${opts.pageSize}-byte pages would not record its page size (no target-page-bits, no device description)`,
        'pageSize',
      );
    }
    opts = { ...opts, configuration };
    const w = new LegacyWriter(target, TempFile.create(target, { force: opts.force, mode: opts.mode }), opts);
    try {
      await w.append(encodeLegacyHead(opts));
    } catch (err) {
      await w.abort();
      throw err;
    }
    return w;
  }

  get pageSize(): number {
    return this.opts.pageSize;
  }

  /**
   * Appends one record per page of `data` (a multiple of the page size),
   * starting at page `first` of `blockName`: PAGE with the bytes, or ZERO
   * for an all-zero page. Calls must not overlap (the stream is sequential).
   */
  async writePages(blockName: string, first: number, data: Uint8Array): Promise<void> {
    const ps = this.opts.pageSize;
    const n = data.length / ps;
    this.checkRange(blockName, first, n, data.length);
    const buf = Buffer.from(data.buffer, data.byteOffset, data.length);
    for (let p = 0; p < n; p++) {
      if (isZeroPage(buf, p, this.zeroPage)) {
        if (this.opts.zeroRecords ?? true) await this.record(blockName, (first + p) * ps, RamFlag.ZERO, undefined);
      } else {
        await this.record(blockName, (first + p) * ps, RamFlag.PAGE, buf.subarray(p * ps, (p + 1) * ps));
      }
    }
    this.coverage.reached(blockName, (first + n) * ps);
  }

  /** Appends ZERO records for `count` pages from page `first` (nothing when zeroRecords is off). */
  async zeroPages(blockName: string, first: number, count: number): Promise<void> {
    this.checkRange(blockName, first, count, count * this.opts.pageSize);
    if (this.opts.zeroRecords ?? true) {
      for (let p = first; p < first + count; p++) await this.record(blockName, p * this.opts.pageSize, RamFlag.ZERO, undefined);
    }
    this.coverage.reached(blockName, (first + count) * this.opts.pageSize);
  }

  /** Ends the RAM section, writes the device state, syncs and renames to the target. */
  async finalize(): Promise<void> {
    this.checkOpen();
    try {
      await this.append(encodeStreamEnd(this.opts.ramSectionId ?? 1, this.opts.device));
      await this.flush();
      this.done = true;
      await this.sink.commit(this.position, this.opts.fsync ?? true);
      this.coverage.finished();
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  /** Drops the temporary file; the target is untouched. */
  async abort(): Promise<void> {
    this.done = true;
    await this.sink.discard();
  }

  /** Where the stream is built until finalize() renames it to the target. */
  get tempPath(): string {
    return this.sink.path;
  }

  private checkRange(blockName: string, first: number, n: number, bytes: number): void {
    this.checkOpen();
    const b = this.byName.get(blockName);
    if (!b) throw new RamsnapUsageError('UNKNOWN_BLOCK', `no block named ${JSON.stringify(blockName)} in this snapshot`, 'block');
    const pages = b.usedLength / this.opts.pageSize;
    if (!Number.isInteger(n) || !Number.isInteger(first) || first < 0 || first + n > pages) {
      throw new RamsnapUsageError('OUT_OF_RANGE', `pages ${first}..${first + n} of ${b.name} (${pages} pages), ${bytes} bytes`, 'pages');
    }
  }

  private async record(blockName: string, offset: number, type: number, page: Uint8Array | undefined): Promise<void> {
    const cont = this.lastBlock === blockName;
    const name = cont ? undefined : latin1Bytes(blockName);
    const need = 8 + (name ? 1 + name.length : 0) + (page ? page.length : 1);
    if (this.fill + need > this.buf.length) await this.flush();
    // be64 offset | flags: the offset is page aligned, so the flags fit in its low bits.
    this.buf.writeBigUInt64BE(BigInt(offset) | BigInt(type | (cont ? RamFlag.CONTINUE : 0)), this.fill);
    this.fill += 8;
    if (name) {
      this.buf[this.fill++] = name.length;
      this.buf.set(name, this.fill);
      this.fill += name.length;
    }
    if (page) {
      this.buf.set(page, this.fill);
      this.fill += page.length;
      this.pageRecords++;
    } else {
      this.buf[this.fill++] = 0; // fill byte: QEMU's loader refuses any other
      this.zeroRecords++;
    }
    this.lastBlock = blockName;
  }

  private async append(bytes: Uint8Array): Promise<void> {
    this.checkOpen();
    if (this.fill + bytes.length > this.buf.length) await this.flush();
    if (bytes.length > this.buf.length) {
      await this.sink.write(this.position, bytes);
      this.position += bytes.length;
      return;
    }
    this.buf.set(bytes, this.fill);
    this.fill += bytes.length;
  }

  private async flush(): Promise<void> {
    if (this.fill === 0) return;
    await this.sink.write(this.position, this.buf.subarray(0, this.fill));
    this.position += this.fill;
    this.fill = 0;
  }

  private checkOpen(): void {
    if (this.done) throw new RamsnapUsageError('WRITER_CLOSED', 'the writer was finalized or aborted', 'writer');
  }
}

/** Everything before the first page record: header, configuration, RAM START with the block list, and the PART that holds the records. */
export function encodeLegacyHead(o: Pick<LegacyWriterOptions, 'blocks' | 'configuration' | 'ramSectionId' | 'device'>): Uint8Array {
  const ramSectionId = o.ramSectionId ?? 1;
  const total = o.blocks.reduce((n, b) => n + b.usedLength, 0);
  const parts: Uint8Array[] = [
    encodeFileHeader(),
    encodeConfiguration(o.configuration),
    encodeSectionStart({ type: Section.START, sectionId: ramSectionId, idstr: 'ram', instanceId: 0, versionId: 4 }),
    be64(BigInt(total) | BigInt(RamFlag.MEM_SIZE)),
  ];
  for (const b of o.blocks) {
    const name = latin1Bytes(b.name);
    parts.push(Uint8Array.of(name.length), name, be64(b.usedLength));
  }
  parts.push(encodeRamSetupEnd(ramSectionId, o.device));
  return concat(parts);
}
