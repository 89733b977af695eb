/**
 * Converts a snapshot between the mapped-ram and the legacy layout (or
 * re-lays it out in the same one), keeping the device state: the device
 * sections and the description are copied verbatim, except the
 * description's "configuration" entry, which is rewritten to describe the
 * CONFIGURATION section actually written (see describeConfiguration).
 *
 * Pages are copied as the reader resolves them: a legacy input gives the
 * last copy of each page, a mapped-ram input only pages whose bit is set
 * (stale bytes under a clear bit are dropped).
 */
import { CAP_MAPPED_RAM, CAP_X_IGNORE_SHARED } from '../format/constants.js';
import type { Configuration } from '../format/configuration.js';
import { FormatCode, RamsnapFormatError, RamsnapUsageError } from '../format/errors.js';
import { LayoutError, planLayout, writableConfiguration } from '../format/layout.js';
import type { DeviceState } from '../format/tail.js';
import type { RamBlock } from '../reader/model.js';
import { Snapshot } from '../reader/snapshot.js';
import { LEGACY_RECORD_OVERHEAD } from '../reader/walk.js';
import { openUnpatched } from './journal.js';
import { LegacyWriter } from './legacy-writer.js';
import { checkOutput, type OutputOptions } from './sink.js';
import { SnapshotWriter } from './snapshot-writer.js';
import { deviceStateOf } from './template.js';

export type Layout = 'mapped-ram' | 'legacy';

export interface ConvertOptions extends OutputOptions {
  to: Layout;
  /** Where the input's stream starts (default: 0 or after a libvirt header). */
  offset?: number;
  /** Page size of a legacy input that does not record it. */
  pageSize?: number;
  force?: boolean;
  fsync?: boolean;
}

export interface ConvertResult {
  from: Layout;
  to: Layout;
  blocks: number;
  /** Present pages of the input copied (the rest are zero). */
  pagesCopied: number;
  /** What the input had that the output cannot carry. */
  notes: string[];
}

/** Bytes read per chunk when copying pages. */
export const COPY_CHUNK = 1 << 20;
/** Chunks read ahead while the previous one is written. */
export const COPY_DEPTH = 4;

/** What both writers accept. */
export interface PageSink {
  readonly pageSize: number;
  /** Pages must arrive in order (a sequential stream); else chunks are written as they are read. */
  readonly ordered?: boolean;
  writePages(block: string, first: number, data: Uint8Array): Promise<void>;
  zeroPages(block: string, first: number, count: number): void | Promise<void>;
}

/** Pages [first, first + count) of a block: bytes to read (`data`), or known to be zero. */
export interface Chunk {
  block: string;
  first: number;
  count: number;
  data: boolean;
}

export interface Slot {
  buf: Buffer;
  scratch: Buffer;
}

/**
 * Reads chunks with up to `depth` reads in flight and hands them to `sink`
 * in order (a legacy stream is written front to back). Buffers come from a
 * pool of `depth` slots and are reused once their chunk is written. On an
 * error the reads still in flight are waited for, so no buffer or file
 * descriptor is used after this returns.
 */
export async function pump(
  chunks: Iterable<Chunk>,
  sink: PageSink,
  read: (c: Chunk, slot: Slot) => Promise<Uint8Array>,
  opts: { chunkBytes?: number; scratchBytes?: number; depth?: number } = {},
): Promise<number> {
  const depth = Math.max(1, opts.depth ?? COPY_DEPTH);
  const bytes = opts.chunkBytes ?? COPY_CHUNK;
  const pool: Slot[] = Array.from({ length: depth }, () => {
    const buf = Buffer.allocUnsafe(bytes);
    return { buf, scratch: opts.scratchBytes ? Buffer.allocUnsafe(opts.scratchBytes) : buf };
  });
  const it = chunks[Symbol.iterator]();
  if (sink.ordered === false) return pumpUnordered(it, sink, read, pool);
  const inflight: { c: Chunk; slot?: Slot; p: Promise<Uint8Array | undefined> }[] = [];
  let pages = 0;
  const fill = (): void => {
    while (inflight.length < depth && pool.length > 0) {
      const n = it.next();
      if (n.done) return;
      const c = n.value;
      if (!c.data) {
        inflight.push({ c, p: Promise.resolve(undefined) });
        continue;
      }
      const slot = pool.pop() as Slot;
      const p = read(c, slot);
      p.catch(() => undefined); // handled when its turn comes, or waited for below
      inflight.push({ c, slot, p });
    }
  };
  try {
    fill();
    while (inflight.length > 0) {
      const head = inflight[0];
      const data = await head.p;
      if (data) {
        await sink.writePages(head.c.block, head.c.first, data);
        pages += head.c.count;
      } else {
        await sink.zeroPages(head.c.block, head.c.first, head.c.count);
      }
      inflight.shift();
      if (head.slot) pool.push(head.slot);
      fill();
    }
  } finally {
    await Promise.allSettled(inflight.map((x) => x.p));
  }
  return pages;
}

/**
 * For a positional sink (mapped-ram): one worker per slot reads a chunk and
 * writes it, so reads and writes of several chunks overlap. After an error
 * the workers finish what they hold and take no more.
 */
async function pumpUnordered(it: Iterator<Chunk>, sink: PageSink, read: (c: Chunk, slot: Slot) => Promise<Uint8Array>, pool: Slot[]): Promise<number> {
  let pages = 0;
  let failed = false;
  const worker = async (slot: Slot): Promise<void> => {
    while (!failed) {
      const n = it.next();
      if (n.done) return;
      const c = n.value;
      try {
        if (c.data) {
          await sink.writePages(c.block, c.first, await read(c, slot));
          pages += c.count;
        } else {
          await sink.zeroPages(c.block, c.first, c.count);
        }
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const results = await Promise.allSettled(pool.map(worker));
  const err = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (err) throw err.reason;
  return pages;
}

/** A block of a snapshot as chunks: present runs to read, the gaps between them as zero. */
export function* snapshotChunks(snap: Snapshot, block: RamBlock, chunkPages: number): Generator<Chunk> {
  let next = 0;
  for (const r of snap.presentRuns(block, 0, block.pages, chunkPages)) {
    if (r.first > next) yield { block: block.name, first: next, count: r.first - next, data: false };
    yield { block: block.name, first: r.first, count: r.count, data: true };
    next = r.first + r.count;
  }
  if (next < block.pages) yield { block: block.name, first: next, count: block.pages - next, data: false };
}

/** Copies every page of `block` from `snap` into `sink`; returns the pages read. */
export function copyBlock(snap: Snapshot, block: RamBlock, sink: PageSink): Promise<number> {
  const ps = block.pageSize;
  const chunkPages = Math.max(1, Math.floor(COPY_CHUNK / ps));
  return pump(snapshotChunks(snap, block, chunkPages), sink, (c, slot) => snap.read(block, c.first * ps, c.count * ps, slot.buf, slot.scratch), {
    chunkBytes: chunkPages * ps,
    // Legacy page records are spread out by their headers: the reader reads the span into scratch.
    scratchBytes: block.legacy ? chunkPages * (ps + LEGACY_RECORD_OVERHEAD) : undefined,
  });
}

/** Refuses inputs whose meaning a conversion cannot keep. */
export function checkConvertible(snap: Snapshot, what: string): Configuration {
  const m = snap.model;
  if (!m.configuration) {
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, `${what} has no configuration section, so its machine type is unknown`, { field: 'configuration', offset: m.streamOffset + 8 });
  }
  if (m.configuration.capabilities.includes(CAP_X_IGNORE_SHARED)) {
    // Shared blocks are not in such a file; a copy would claim they are zero (and mapped-ram + x-ignore-shared does not load in QEMU 10).
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, `${what} was saved with x-ignore-shared: its shared RAM blocks are not in the file`, {
      field: 'configuration/capabilities',
      offset: m.streamOffset + 8,
    });
  }
  return m.configuration;
}

/** The configuration a mapped-ram file gets from `cfg`, as planLayout writes it. */
export function mappedRamConfiguration(cfg: Configuration, blocks: { name: string; usedLength: number }[], pageSize: number, ramSectionId?: number): Configuration {
  try {
    return planLayout({
      blocks,
      pageSize,
      machine: cfg.machine,
      capabilities: cfg.capabilities.filter((c) => c !== CAP_MAPPED_RAM),
      targetPageBits: cfg.targetPageBits,
      uuid: cfg.uuid,
      ramSectionId,
    }).configuration;
  } catch (err) {
    if (err instanceof LayoutError) throw new RamsnapUsageError(err.code, err.message, err.field);
    throw err;
  }
}

/** The configuration a legacy file gets from `cfg`, as LegacyWriter writes it. */
function legacyConfiguration(cfg: Configuration, pageSize: number): Configuration {
  try {
    return writableConfiguration({ ...cfg, capabilities: cfg.capabilities.filter((c) => c !== CAP_MAPPED_RAM) }, pageSize, 'legacy');
  } catch (err) {
    if (err instanceof LayoutError) throw new RamsnapUsageError(err.code, err.message, err.field);
    throw err;
  }
}

/**
 * A mapped-ram writer for `output` laid out like `snap` (blocks, page size,
 * RAM section id, configuration with mapped-ram) and carrying its device
 * state, the description's configuration entry rewritten to match.
 */
export async function mappedRamWriterLike(snap: Snapshot, had: Configuration, output: string, o: { force?: boolean; fsync?: boolean } & OutputOptions): Promise<SnapshotWriter> {
  const m = snap.model;
  const blocks = snap.blocks.map((b) => ({ name: b.name, usedLength: b.usedLength }));
  const written = mappedRamConfiguration(had, blocks, m.pageSize, m.ramSectionId);
  return SnapshotWriter.create(output, {
    machine: written.machine,
    capabilities: written.capabilities,
    targetPageBits: written.targetPageBits,
    uuid: written.uuid,
    pageSize: m.pageSize,
    blocks,
    ramSectionId: m.ramSectionId,
    device: withConfiguration(await deviceStateOf(snap), had, written),
    force: o.force,
    fsync: o.fsync,
    mode: o.mode,
    onProgress: o.onProgress,
  });
}

/** Device state whose description describes `written` instead of the configuration the source file had. */
export function withConfiguration(dev: DeviceState, had: Configuration, written: Configuration): DeviceState {
  if (!dev.vmdesc || sameConfiguration(had, written)) return dev;
  return { ...dev, vmdesc: rewriteDescriptionConfiguration(dev.vmdesc, written) };
}

export async function convertSnapshot(input: string, output: string, o: ConvertOptions): Promise<ConvertResult> {
  // Fail before reading anything (the writers check again when they create the file).
  checkOutput(output, o.force ?? false);
  // A file being patched is refused, and one patched while we copy is not written out (journal.ts ReadGuard).
  const { snap, guard } = await openUnpatched(input, { offset: o.offset, pageSize: o.pageSize });
  try {
    const m = snap.model;
    const had = checkConvertible(snap, input);
    const blocks = snap.blocks.map((b) => ({ name: b.name, usedLength: b.usedLength }));
    const notes: string[] = [];
    let sink: SnapshotWriter | LegacyWriter;
    if (o.to === 'mapped-ram') {
      sink = await mappedRamWriterLike(snap, had, output, o);
    } else {
      const dev = await deviceStateOf(snap);
      const written = legacyConfiguration(had, m.pageSize);
      sink = await LegacyWriter.create(output, {
        configuration: written,
        pageSize: m.pageSize,
        blocks,
        ramSectionId: m.ramSectionId,
        device: withConfiguration(dev, had, written),
        force: o.force,
        fsync: o.fsync,
        mode: o.mode,
        onProgress: o.onProgress,
      });
    }
    let pagesCopied = 0;
    try {
      for (const b of snap.blocks) pagesCopied += await copyBlock(snap, b, sink);
      guard.check(m.streamOffset);
      await sink.finalize();
    } catch (err) {
      await sink.abort();
      throw err;
    }
    return { from: m.mappedRam ? 'mapped-ram' : 'legacy', to: o.to, blocks: blocks.length, pagesCopied, notes };
  } finally {
    await snap.close();
  }
}

function sameConfiguration(a: Configuration, b: Configuration): boolean {
  return a.machine === b.machine && a.targetPageBits === b.targetPageBits && a.uuid === b.uuid && a.capabilities.join('\0') === b.capabilities.join('\0');
}

/**
 * The description's "configuration" entry describes the CONFIGURATION
 * section field by field. QEMU's loader ignores the JSON, but
 * analyze-migration.py parses the configuration section with it: a
 * subsection listed there must be in the stream (it expects the 0x05
 * marker), `array_len` says how many capabilities to read, and the
 * capabilities it finds decide whether it reads the RAM section as
 * mapped-ram. So the entry must match the section written.
 *
 * QEMU 10.0.2 writes (observed, q35): no capabilities -> no "subsections";
 * one -> {"name": "capabilities", "type": "capability", "size": 1 + name
 * length}; two -> the same with "array_len": 2 and the size of the first
 * element only (vmstate.c describes a compressible array by its first
 * element). The other subsections (target-page-bits, uuid) are kept as
 * the source described them when they are written, dropped otherwise;
 * target-page-bits written where the source had none (a machine whose
 * target QEMU writes it for) gets QEMU's entry for it.
 * Everything else in the description is kept byte for byte; the new entry
 * is written in QEMU's JSON style (", " and ": " separators).
 */
export function rewriteDescriptionConfiguration(vmdesc: Uint8Array, cfg: Configuration): Uint8Array {
  const text = Buffer.from(vmdesc.buffer, vmdesc.byteOffset, vmdesc.length).toString('utf8');
  const span = topLevelMember(text, 'configuration');
  if (!span) return vmdesc; // an old stream's description without the entry
  const entry = JSON.parse(text.slice(span.start, span.end)) as Record<string, unknown>;
  const old = Array.isArray(entry.subsections) ? (entry.subsections as Record<string, unknown>[]) : [];
  const find = (n: string): Record<string, unknown> | undefined => old.find((s) => s.vmsd_name === n);
  const subs: Record<string, unknown>[] = [];
  if (cfg.targetPageBits !== undefined) subs.push(find('configuration/target-page-bits') ?? TARGET_PAGE_BITS_ENTRY);
  if (cfg.capabilities.length > 0) {
    const first = Buffer.byteLength(cfg.capabilities[0], 'latin1');
    subs.push({
      vmsd_name: 'configuration/capabilities',
      version: 1,
      fields: [
        { name: 'caps_count', type: 'uint32', size: 4 },
        cfg.capabilities.length > 1
          ? { name: 'capabilities', array_len: cfg.capabilities.length, type: 'capability', size: 1 + first }
          : { name: 'capabilities', type: 'capability', size: 1 + first },
      ],
    });
  }
  const uuid = find('configuration/uuid');
  if (cfg.uuid !== undefined && uuid) subs.push(uuid);
  const next: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(entry)) if (k !== 'subsections') next[k] = v;
  if (subs.length > 0) next.subsections = subs;
  return Buffer.from(text.slice(0, span.start) + qemuJson(next) + text.slice(span.end), 'utf8');
}

/** QEMU 10.0.2's description of configuration/target-page-bits (aarch64 virt). */
const TARGET_PAGE_BITS_ENTRY = {
  vmsd_name: 'configuration/target-page-bits',
  version: 1,
  fields: [{ name: 'target_page_bits', type: 'uint32', size: 4 }],
};

/** JSON as QEMU's json-writer prints it: `{"a": 1, "b": [2, 3]}`. */
export function qemuJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(qemuJson).join(', ')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.entries(v as Record<string, unknown>)
      .map(([k, x]) => `${JSON.stringify(k)}: ${qemuJson(x)}`)
      .join(', ')}}`;
  }
  return JSON.stringify(v);
}

/** Where the value of a top-level member of a JSON object is in `text`, without parsing the rest. */
export function topLevelMember(text: string, key: string): { start: number; end: number } | undefined {
  let i = skipWs(text, 0);
  if (text[i] !== '{') return undefined;
  i = skipWs(text, i + 1);
  while (i < text.length && text[i] !== '}') {
    if (text[i] !== '"') return undefined;
    const keyEnd = skipString(text, i);
    const name = JSON.parse(text.slice(i, keyEnd)) as string;
    i = skipWs(text, keyEnd);
    if (text[i] !== ':') return undefined;
    const start = skipWs(text, i + 1);
    const end = skipValue(text, start);
    if (name === key) return { start, end };
    i = skipWs(text, end);
    if (text[i] === ',') i = skipWs(text, i + 1);
  }
  return undefined;
}

function skipWs(t: string, i: number): number {
  while (i < t.length && /\s/.test(t[i])) i++;
  return i;
}

/** `i` at an opening quote; returns the index after the closing one. */
function skipString(t: string, i: number): number {
  for (let j = i + 1; j < t.length; j++) {
    if (t[j] === '\\') j++;
    else if (t[j] === '"') return j + 1;
  }
  return t.length;
}

function skipValue(t: string, i: number): number {
  if (t[i] === '"') return skipString(t, i);
  if (t[i] === '{' || t[i] === '[') {
    let depth = 0;
    for (let j = i; j < t.length; j++) {
      const ch = t[j];
      if (ch === '"') j = skipString(t, j) - 1;
      else if (ch === '{' || ch === '[') depth++;
      else if (ch === '}' || ch === ']') {
        if (--depth === 0) return j + 1;
      }
    }
    return t.length;
  }
  let j = i;
  while (j < t.length && !/[\s,}\]]/.test(t[j])) j++;
  return j;
}
