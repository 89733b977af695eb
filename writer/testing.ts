/**
 * `ramsnap/testing`: fast-check arbitraries that describe mapped-ram
 * snapshots, a helper that writes one with ramsnap's SnapshotWriter, and
 * the in-memory model it must read back as. Another project uses them to
 * fuzz its own loader: generate a block set and a write sequence, write the
 * file, load it with your code, and compare what you read with the model.
 *
 * ```ts
 * import fc from 'fast-check';
 * import { arbSnapshotCase, writeSnapshot, pageOf } from 'ramsnap/testing';
 * import { myLoader } from './my-loader.js';
 *
 * await fc.assert(
 *   fc.asyncProperty(arbSnapshotCase(), async ({ set, ops }) => {
 *     const file = path.join(tmpDir, 'case.snap');
 *     const model = await writeSnapshot(file, set, ops, { force: true });
 *     const vm = await myLoader(file, { offset: model.streamOffset });
 *     for (const b of model.blocks) {
 *       for (const p of b.pages.keys()) assert.deepEqual(vm.page(b.name, p), pageOf(model, b.name, p));
 *     }
 *   }),
 * );
 * ```
 *
 * ramsnap checks itself the same way: `assertMatchesModel(await
 * Snapshot.open(file, { offset: model.streamOffset }), model)` is the
 * reference a loader can be compared with (test/writer-properties.test.ts).
 *
 * Huge blocks stay cheap: a write sequence touches a bounded number of
 * pages, everything else is a hole in a sparse file, so a 1 TiB block costs
 * its bitmap (32 MiB at 4 KiB pages) and a few pages of disk.
 *
 * This module imports fast-check (an optional peer dependency of ramsnap:
 * install it in the project that uses `ramsnap/testing`) and nothing from
 * any test runner; failures are thrown as plain Errors or returned as a
 * `ModelDifference`.
 */
import fc from 'fast-check';
import { MAX_IDSTR, MAX_PAGE_SIZE, MIN_PAGE_SIZE } from '../format/constants.js';
import type { RamBlock } from '../reader/model.js';
import type { Snapshot } from '../reader/snapshot.js';
import { SnapshotWriter, type WriterOptions } from './snapshot-writer.js';

const KiB = 1024;
const TiB = 1024 ** 4;

/** Page sizes QEMU targets use most (x86, Arm, ... and sparc64/Alpha). */
export const COMMON_PAGE_SIZES: readonly number[] = [4 * KiB, 8 * KiB];
/** Every page size ramsnap (and the mapped-ram format) accepts: 1 KiB to 64 KiB. */
export const ALL_PAGE_SIZES: readonly number[] = [1, 2, 4, 8, 16, 32, 64].map((k) => k * KiB);

/** Names of RAMBlocks as real QEMU machines call them (q35, pc, virt, sun4u, PCI ROMs and VRAM, memory backends). */
export const QEMU_BLOCK_NAMES: readonly string[] = [
  'pc.ram',
  'pc.bios',
  'pc.rom',
  '/rom@etc/acpi/tables',
  '/rom@etc/table-loader',
  '/rom@etc/acpi/rsdp',
  '0000:00:02.0/vga.vram',
  '0000:00:02.0/qxl.vram',
  '0000:00:02.0/qxl.vrom',
  '0000:00:03.0/e1000.rom',
  '0000:00:01.0/virtio-net-pci.rom',
  'vga.vram',
  'mach-virt.ram',
  'virt.flash0',
  'virt.flash1',
  'sun4u.ram',
  'sun4u.prom',
  '/objects/mem0',
  'ram-node0',
  'isa-bios',
];

/** One RAMBlock: its name (1 to 255 bytes, each char a byte 0x01..0xff) and its size in bytes. */
export interface BlockSpec {
  name: string;
  usedLength: number;
}

/** What a snapshot is made of: its blocks and how they are laid out. */
export interface BlockSet {
  pageSize: number;
  blocks: BlockSpec[];
  /** Machine type recorded in the configuration. */
  machine: string;
  /** configuration/target-page-bits, when the stream declares its page size (QEMU does for non-default sizes). */
  targetPageBits?: number;
  /** Alignment of every page region from file byte 0 (default: QEMU's 1 MiB). */
  alignment?: number;
  /** Where the stream starts in the file (`migrate file:PATH,offset=N`); open the file with this offset. */
  streamOffset: number;
}

export interface BlockSetOptions {
  /** Page sizes to choose from (default 4 KiB and 8 KiB; `ALL_PAGE_SIZES` for 1 KiB..64 KiB). */
  pageSizes?: readonly number[];
  minBlocks?: number;
  /** Default 6. */
  maxBlocks?: number;
  /** Largest block in bytes (default 1 TiB; the file is sparse, so this costs only the bitmap). */
  maxBlockBytes?: number;
  /**
   * Most pages in all blocks together (default 2^28: 32 MiB of bitmaps, a
   * quarter of what ramsnap's reader accepts). Blocks are shrunk to fit.
   */
  maxTotalPages?: number;
  /**
   * 'qemu' (default): QEMU's layout, 1 MiB alignment, stream at byte 0.
   * 'varied': also other alignments (page size times a power of two) and
   * stream offsets up to 3 MiB.
   */
  layout?: 'qemu' | 'varied';
}

const byteChar = fc.integer({ min: 0x01, max: 0xff }).map((c) => String.fromCharCode(c));

/**
 * RAMBlock names: QEMU's own, short and long strings of any bytes 0x01..0xff
 * (spaces, slashes, control characters, latin1 bytes that are not valid
 * UTF-8), names of exactly 255 bytes, and QEMU names with odd suffixes.
 */
export function arbBlockName(): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...QEMU_BLOCK_NAMES) },
    { weight: 4, arbitrary: fc.string({ unit: byteChar, minLength: 1, maxLength: 24 }) },
    { weight: 1, arbitrary: fc.string({ unit: byteChar, minLength: 200, maxLength: MAX_IDSTR }) },
    { weight: 1, arbitrary: fc.string({ unit: byteChar, minLength: MAX_IDSTR, maxLength: MAX_IDSTR }) },
    {
      weight: 2,
      arbitrary: fc
        .tuple(fc.constantFrom(...QEMU_BLOCK_NAMES), fc.constantFrom('/', '.', ' ', '\n', '\xff', '\x01'), fc.string({ unit: byteChar, maxLength: 300 }))
        .map(([a, sep, b]) => (a + sep + b).slice(0, MAX_IDSTR)),
    },
  );
}

/** A block size in pages: mostly small, sometimes a few thousand, sometimes huge (2^k ± 1 pages). */
function arbBlockPages(maxPages: number): fc.Arbitrary<number> {
  const small = Math.min(64, maxPages);
  const arbs: fc.WeightedArbitrary<number>[] = [
    { weight: 5, arbitrary: fc.integer({ min: 1, max: small }) },
    { weight: 1, arbitrary: fc.constantFrom(1, Math.min(63, maxPages), Math.min(64, maxPages), Math.min(65, maxPages)) },
  ];
  if (maxPages > 64) arbs.push({ weight: 3, arbitrary: fc.integer({ min: 65, max: Math.min(1 << 14, maxPages) }) });
  const topBit = Math.floor(Math.log2(maxPages));
  if (topBit > 14) {
    arbs.push({
      weight: 1,
      arbitrary: fc.tuple(fc.integer({ min: 15, max: topBit }), fc.integer({ min: -1, max: 1 })).map(([k, d]) => Math.min(maxPages, 2 ** k + d)),
    });
  }
  return fc.oneof(...arbs);
}

/**
 * Sets of RAMBlocks, as `BlockSet`s: 1 to 6 blocks (by default) with unique
 * odd names (see `arbBlockName`), sizes from one page to `maxBlockBytes`
 * (1 TiB by default), page size 4 KiB or 8 KiB (or any of `pageSizes`), a
 * machine type that goes with the page size (`machinesFor`), with or
 * without target-page-bits (the writer writes it where QEMU would), and
 * with `layout: 'varied'` other alignments and stream offsets.
 */
export function arbBlockSet(opts: BlockSetOptions = {}): fc.Arbitrary<BlockSet> {
  const pageSizes = opts.pageSizes ?? COMMON_PAGE_SIZES;
  for (const ps of pageSizes) {
    if (!Number.isInteger(ps) || ps < MIN_PAGE_SIZE || ps > MAX_PAGE_SIZE || (ps & (ps - 1)) !== 0) throw new RangeError(`page size ${ps} is not a power of two in 1 KiB..64 KiB`);
  }
  const minBlocks = opts.minBlocks ?? 1;
  const maxBlocks = opts.maxBlocks ?? 6;
  const maxBlockBytes = opts.maxBlockBytes ?? TiB;
  const maxTotalPages = Math.max(opts.maxTotalPages ?? 2 ** 28, maxBlocks);
  return fc.constantFrom(...pageSizes).chain((pageSize) => {
    const maxPages = Math.max(1, Math.min(Math.floor(maxBlockBytes / pageSize), maxTotalPages));
    const blocks = fc.uniqueArray(fc.record({ name: arbBlockName(), pages: arbBlockPages(maxPages) }), {
      minLength: minBlocks,
      maxLength: maxBlocks,
      selector: (b) => b.name,
    });
    const machine = fc.constantFrom(...machinesFor(pageSize));
    const targetPageBits = fc.option(fc.constant(Math.log2(pageSize)), { nil: undefined });
    const layout =
      opts.layout === 'varied'
        ? fc.record({
            alignment: fc.option(fc.integer({ min: 0, max: 10 }).map((k) => pageSize * 2 ** k), { nil: undefined }),
            streamOffset: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 3 << 20 })),
          })
        : fc.constant({ alignment: undefined, streamOffset: 0 });
    return fc.record({ blocks, machine, targetPageBits, layout }).map(({ blocks: bs, machine: m, targetPageBits: tpb, layout: l }) => {
      // Shrink blocks in order so that all of them fit maxTotalPages (each keeps at least one page).
      let budget = maxTotalPages;
      const specs = bs.map((b, i) => {
        const pages = Math.max(1, Math.min(b.pages, budget - (bs.length - i - 1)));
        budget -= pages;
        return { name: b.name, usedLength: pages * pageSize };
      });
      const set: BlockSet = { pageSize, blocks: specs, machine: m, streamOffset: l.streamOffset };
      if (tpb !== undefined) set.targetPageBits = tpb;
      if (l.alignment !== undefined) set.alignment = l.alignment;
      return set;
    });
  });
}

/**
 * Machine types a stream with this page size can name: QEMU's own (q35,
 * pc, virt, pseries at 4 KiB, sun4u at 8 KiB, versatilepb at 1 KiB) and
 * `none`, whose target the name does not say (format/target.ts).
 */
export function machinesFor(pageSize: number): string[] {
  const own: Record<number, string[]> = { 1024: ['versatilepb'], 4096: ['pc-q35-10.0', 'pc-i440fx-10.0', 'virt-10.0', 'pseries-10.0'], 8192: ['sun4u'] };
  return [...(own[pageSize] ?? []), 'none'];
}

/**
 * Machine type names for a writer's input, valid or not: QEMU's own,
 * names whose target ramsnap cannot tell, and edge cases a writer must
 * refuse or write so that its reader takes them back: empty, 256 and 257
 * bytes (the reader's bound is 256), 300 bytes, bytes 0x01..0xff, and a
 * character that is not one byte.
 */
export function arbMachineName(): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom('pc-q35-10.0', 'pc-i440fx-10.0', 'virt-10.0', 'sun4u', 'pseries-10.0', 'versatilepb', 'none') },
    { weight: 2, arbitrary: fc.string({ unit: byteChar, minLength: 1, maxLength: 40 }) },
    { weight: 2, arbitrary: fc.constantFrom('', 'x'.repeat(256), 'x'.repeat(257), 'm'.repeat(300), 'pc-q35-10.0\u0100', 'q35', 'pc', 'virt', 'pseries', 's390-ccw-virtio') },
  );
}

/** Everything a writer is given about the stream, possibly wrong: what `arbWriterInput` mutates a valid block set with. */
export interface WriterInputMutation {
  machine?: string;
  capabilities?: string[];
  targetPageBits?: number;
  uuid?: string;
  pageSize?: number;
  /** Replaces block i's name or length (names may collide, be empty or 256 bytes; lengths may be 0, not whole pages, huge). */
  block?: { index: number; name?: string; usedLength?: number };
}

/**
 * A writer's input: a valid `BlockSet` with a write sequence for it, and a
 * mutation that may make it invalid (or valid in an unusual way): every
 * field of the configuration, the page size, a block's name or length. A
 * writer must either refuse it with a usage error before writing anything,
 * or write a file that its reader accepts whole.
 */
export function arbWriterInput(opts: BlockSetOptions & WriteSequenceOptions = {}): fc.Arbitrary<{ set: BlockSet; ops: WriteOp[]; mutation: WriterInputMutation }> {
  // Each field is changed now and then, so that about half the inputs stay valid.
  const sometimes = <T>(a: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.oneof({ weight: 9, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: a });
  const mutation: fc.Arbitrary<WriterInputMutation> = fc
    .record({
      machine: sometimes(arbMachineName()),
      capabilities: sometimes(fc.subarray(['mapped-ram', 'x-ignore-shared', 'multifd', 'validate-uuid', '', 'x'.repeat(300)])),
      targetPageBits: sometimes(fc.integer({ min: 8, max: 18 })),
      uuid: sometimes(fc.oneof(fc.uuid(), fc.constantFrom('', 'not-a-uuid', '12345678123456781234567812345678'))),
      pageSize: sometimes(fc.constantFrom(512, 1000, 2048, 3000, 4096, 8192, 1 << 17)),
      block: sometimes(
        fc.record(
          {
            index: fc.nat({ max: 5 }),
            name: fc.oneof(arbBlockName(), fc.constantFrom('', 'x'.repeat(256), 'pc.ram', 'pc.ram\u0100')),
            usedLength: fc.constantFrom(0, 1, 4095, 4096, 8192, -4096, 2 ** 60, 1.5),
          },
          { requiredKeys: ['index'] },
        ),
      ),
    })
    .map((m) => Object.fromEntries(Object.entries(m).filter(([, v]) => v !== undefined)) as WriterInputMutation);
  return arbSnapshotCase(opts).chain(({ set, ops }) => mutation.map((m) => ({ set, ops, mutation: m })));
}

/** SnapshotWriter options for a writer input (`writerOptions` of the set with the mutation laid over it). */
export function mutatedWriterOptions(set: BlockSet, m: WriterInputMutation, extra: Partial<WriterOptions> = {}): WriterOptions {
  const o = writerOptions(set, extra);
  const blocks = o.blocks.map((b) => ({ ...b }));
  if (m.block && blocks.length > 0) {
    const b = blocks[m.block.index % blocks.length];
    if (m.block.name !== undefined) b.name = m.block.name;
    if (m.block.usedLength !== undefined) b.usedLength = m.block.usedLength;
  }
  return {
    ...o,
    blocks,
    ...(m.machine !== undefined ? { machine: m.machine } : {}),
    ...(m.capabilities !== undefined ? { capabilities: m.capabilities } : {}),
    ...(m.targetPageBits !== undefined ? { targetPageBits: m.targetPageBits } : {}),
    ...(m.uuid !== undefined ? { uuid: m.uuid } : {}),
    ...(m.pageSize !== undefined ? { pageSize: m.pageSize } : {}),
  };
}

/** Labels a page so that fast-check prints `fill(4096, 0x7f)` rather than 4096 numbers. */
function labelled(bytes: Uint8Array, label: string): Uint8Array {
  Object.defineProperty(bytes, fc.toStringMethod, { value: () => label, enumerable: false });
  return bytes;
}

/** Deterministic pseudo-random bytes (xorshift32): what a "random page" holds. */
export function randomPage(pageSize: number, seed: number): Uint8Array {
  const out = new Uint8Array(pageSize);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < pageSize; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return labelled(out, `randomPage(${pageSize}, ${seed})`);
}

/**
 * The content of one page: all zero, one repeated byte, pseudo-random
 * bytes, or zero but for one byte (first, last or anywhere), which a
 * loader that only samples a page's first bytes gets wrong.
 */
export function arbPageContent(pageSize: number): fc.Arbitrary<Uint8Array> {
  const zero = fc.constant(null).map(() => labelled(new Uint8Array(pageSize), `zeroPage(${pageSize})`));
  const fill = fc.integer({ min: 1, max: 0xff }).map((v) => labelled(new Uint8Array(pageSize).fill(v), `fill(${pageSize}, 0x${v.toString(16)})`));
  const random = fc.nat().map((seed) => randomPage(pageSize, seed));
  const oneByte = fc
    .tuple(fc.oneof(fc.constantFrom(0, pageSize - 1), fc.integer({ min: 0, max: pageSize - 1 })), fc.integer({ min: 1, max: 0xff }))
    .map(([at, v]) => {
      const b = new Uint8Array(pageSize);
      b[at] = v;
      return labelled(b, `oneByte(${pageSize}, at ${at}, 0x${v.toString(16)})`);
    });
  return fc.oneof({ weight: 2, arbitrary: zero }, { weight: 2, arbitrary: fill }, { weight: 3, arbitrary: random }, { weight: 2, arbitrary: oneByte });
}

/** One step of a write sequence, in SnapshotWriter's terms. */
export type WriteOp =
  /** `writePages(block, first, data)`: data is one or more whole pages. */
  | { kind: 'write'; block: string; first: number; data: Uint8Array }
  /** `zeroPages(block, first, count)`: the pages become zero. */
  | { kind: 'zero'; block: string; first: number; count: number };

export interface WriteSequenceOptions {
  /** Most operations (default 40): the number of pages written stays bounded whatever the block sizes. */
  maxOps?: number;
  /** Longest run of pages in one operation (default 4). */
  maxRun?: number;
}

/**
 * Sequences of page writes for the blocks of `set`: single pages and short
 * runs, at the first and last page, at bitmap word edges (63, 64) and
 * anywhere in the block, with rewrites (a small pool of hot pages is
 * written again and again, with new bytes or with zeros) and zeroPages
 * calls. At most `maxOps` operations of at most `maxRun` pages each.
 */
export function arbWriteSequence(set: BlockSet, opts: WriteSequenceOptions = {}): fc.Arbitrary<WriteOp[]> {
  const maxOps = opts.maxOps ?? 40;
  const maxRun = opts.maxRun ?? 4;
  const ps = set.pageSize;
  const position = fc.integer({ min: 0, max: set.blocks.length - 1 }).chain((block) => {
    const pages = set.blocks[block].usedLength / ps;
    const edges = [0, pages - 1, Math.min(63, pages - 1), Math.min(64, pages - 1)];
    return fc.oneof(fc.constantFrom(...edges), fc.integer({ min: 0, max: pages - 1 })).map((page) => ({ block, page }));
  });
  return fc.uniqueArray(position, { minLength: 1, maxLength: 6, selector: (p) => `${p.block}:${p.page}` }).chain((hot) => {
    const where = fc.oneof({ weight: 3, arbitrary: fc.constantFrom(...hot) }, { weight: 2, arbitrary: position });
    const op = fc.tuple(where, fc.integer({ min: 1, max: maxRun }), fc.nat({ max: 9 })).chain(([w, run, kind]) => {
      const b = set.blocks[w.block];
      const count = Math.min(run, b.usedLength / ps - w.page);
      if (kind === 0) return fc.constant<WriteOp>({ kind: 'zero', block: b.name, first: w.page, count });
      return fc.array(arbPageContent(ps), { minLength: count, maxLength: count }).map<WriteOp>((pages) => {
        const data = new Uint8Array(count * ps);
        pages.forEach((p, i) => data.set(p, i * ps));
        return { kind: 'write', block: b.name, first: w.page, data: labelled(data, pages.map((p) => fc.stringify(p)).join(' + ')) };
      });
    });
    return fc.array(op, { minLength: 0, maxLength: maxOps });
  });
}

/** A block set and a write sequence for it. */
export function arbSnapshotCase(opts: BlockSetOptions & WriteSequenceOptions = {}): fc.Arbitrary<{ set: BlockSet; ops: WriteOp[] }> {
  return arbBlockSet(opts).chain((set) => arbWriteSequence(set, opts).map((ops) => ({ set, ops })));
}

/** Guest memory as a test means it: per block, the last bytes written to each page. Pages not listed are zero. */
export interface MemoryModel {
  pageSize: number;
  streamOffset: number;
  blocks: { name: string; usedLength: number; pages: Map<number, Uint8Array> }[];
}

/** The model a write sequence must produce, without writing anything. */
export function modelOf(set: BlockSet, ops: readonly WriteOp[]): MemoryModel {
  const ps = set.pageSize;
  const model: MemoryModel = { pageSize: ps, streamOffset: set.streamOffset, blocks: set.blocks.map((b) => ({ name: b.name, usedLength: b.usedLength, pages: new Map() })) };
  const byName = new Map(model.blocks.map((b) => [b.name, b]));
  for (const op of ops) {
    const b = byName.get(op.block);
    if (!b) throw new RangeError(`write sequence names block ${JSON.stringify(op.block)}, which is not in the set`);
    if (op.kind === 'zero') {
      for (let p = op.first; p < op.first + op.count; p++) b.pages.set(p, new Uint8Array(ps));
    } else {
      for (let i = 0; i < op.data.length / ps; i++) b.pages.set(op.first + i, op.data.slice(i * ps, (i + 1) * ps));
    }
  }
  return model;
}

/** The bytes the model holds for a page (zero when it was never written). */
export function pageOf(model: MemoryModel, block: string, page: number): Uint8Array {
  const b = model.blocks.find((x) => x.name === block);
  if (!b) throw new RangeError(`no block ${JSON.stringify(block)} in the model`);
  return b.pages.get(page) ?? new Uint8Array(model.pageSize);
}

/** SnapshotWriter options for a block set (RAM only: no device state). */
export function writerOptions(set: BlockSet, extra: Partial<WriterOptions> = {}): WriterOptions {
  return {
    machine: set.machine,
    pageSize: set.pageSize,
    blocks: set.blocks.map((b) => ({ name: b.name, usedLength: b.usedLength })),
    ...(set.targetPageBits !== undefined ? { targetPageBits: set.targetPageBits } : {}),
    ...(set.alignment !== undefined ? { alignment: set.alignment } : {}),
    streamOffset: set.streamOffset,
    fsync: false,
    ...extra,
  };
}

/** Applies one operation to an open writer. */
export async function applyOp(writer: SnapshotWriter, op: WriteOp): Promise<void> {
  if (op.kind === 'zero') writer.zeroPages(op.block, op.first, op.count);
  else await writer.writePages(op.block, op.first, op.data);
}

export interface WriteSnapshotOptions {
  /** Replace an existing file at `path` (default false). */
  force?: boolean;
  /** fsync before the rename (default false: test files need not survive a crash). */
  fsync?: boolean;
}

/**
 * Writes `set` with `ops` applied in order to `path` with SnapshotWriter
 * (create, writePages/zeroPages, finalize) and returns the model the file
 * must read back as. The file is sparse: only the pages written take disk.
 * Open it with `{ offset: model.streamOffset }` when the set has a stream
 * offset (the bytes before the stream are zeros).
 */
export async function writeSnapshot(path: string, set: BlockSet, ops: readonly WriteOp[], opts: WriteSnapshotOptions = {}): Promise<MemoryModel> {
  const model = modelOf(set, ops);
  const w = await SnapshotWriter.create(path, writerOptions(set, { force: opts.force ?? false, fsync: opts.fsync ?? false }));
  try {
    for (const op of ops) await applyOp(w, op);
  } catch (err) {
    await w.abort();
    throw err;
  }
  await w.finalize();
  return model;
}

/** The first place where a snapshot and a model disagree. */
export interface ModelDifference {
  what: 'page size' | 'blocks' | 'bytes' | 'not zero' | 'present runs' | 'pages present';
  block?: string;
  page?: number;
  /** Byte inside the page, for 'bytes' and 'not zero'. */
  byte?: number;
  expected: unknown;
  actual: unknown;
  message: string;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);

/** Pages never written that a reader must still read as zero: block edges, neighbours of written pages, word edges and a few spread pages. */
function spotPages(pages: number, written: Map<number, Uint8Array>, count = 8): number[] {
  const out = new Set<number>([0, pages - 1, Math.min(63, pages - 1), Math.min(64, pages - 1)]);
  for (const p of written.keys()) {
    if (p > 0) out.add(p - 1);
    if (p + 1 < pages) out.add(p + 1);
  }
  let x = (pages * 2654435761) >>> 0 || 1;
  for (let i = 0; i < count; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out.add(Math.floor((x / 2 ** 32) * pages));
  }
  return [...out].filter((p) => !written.has(p)).sort((a, b) => a - b);
}

/** Runs of consecutive non-zero pages of a block of the model. */
function expectedRuns(pages: Map<number, Uint8Array>): { first: number; count: number }[] {
  const present = [...pages].filter(([, d]) => !isZero(d)).map(([p]) => p).sort((a, b) => a - b);
  const runs: { first: number; count: number }[] = [];
  for (const p of present) {
    const last = runs[runs.length - 1];
    if (last && last.first + last.count === p) last.count++;
    else runs.push({ first: p, count: 1 });
  }
  return runs;
}

/**
 * Compares a ramsnap Snapshot with a model and returns the first
 * difference, or undefined when they agree: the page size, the block list
 * (names, lengths, order), every page of the model (read back byte for
 * byte), spot checks of pages never written (they read zero), and
 * `presentRuns` listing exactly the model's non-zero pages.
 */
export async function compareWithModel(snap: Snapshot, model: MemoryModel): Promise<ModelDifference | undefined> {
  const ps = model.pageSize;
  if (snap.model.pageSize !== ps) return { what: 'page size', expected: ps, actual: snap.model.pageSize, message: `page size is ${snap.model.pageSize}, expected ${ps}` };
  const want = model.blocks.map((b) => [b.name, b.usedLength]);
  const got = snap.blocks.map((b) => [b.name, b.usedLength]);
  if (JSON.stringify(want) !== JSON.stringify(got)) return { what: 'blocks', expected: want, actual: got, message: `blocks differ: expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}` };
  for (let i = 0; i < model.blocks.length; i++) {
    const mb = model.blocks[i];
    const block: RamBlock = snap.blocks[i];
    const label = JSON.stringify(mb.name);
    for (const [p, bytes] of [...mb.pages].sort((a, b) => a[0] - b[0])) {
      const read = await snap.read(block, p * ps, ps);
      const at = firstDifference(bytes, read);
      if (at !== -1) return { what: 'bytes', block: mb.name, page: p, byte: at, expected: bytes[at], actual: read[at], message: `block ${label} page ${p} byte ${at}: expected 0x${bytes[at].toString(16)}, read 0x${read[at].toString(16)}` };
    }
    for (const p of spotPages(mb.usedLength / ps, mb.pages)) {
      const read = await snap.read(block, p * ps, ps);
      const at = read.findIndex((x) => x !== 0);
      if (at !== -1) return { what: 'not zero', block: mb.name, page: p, byte: at, expected: 0, actual: read[at], message: `block ${label} page ${p} was never written but byte ${at} reads 0x${read[at].toString(16)}` };
    }
    const runs = expectedRuns(mb.pages);
    const listed: { first: number; count: number }[] = [];
    for (const r of snap.presentRuns(block)) {
      listed.push({ first: r.first, count: r.count });
      if (listed.length > runs.length) break; // a broken bitmap of a huge block must not be walked to the end
    }
    if (JSON.stringify(listed) !== JSON.stringify(runs)) return { what: 'present runs', block: mb.name, expected: runs, actual: listed, message: `block ${label}: present runs ${JSON.stringify(listed)}, expected ${JSON.stringify(runs)}` };
    const present = runs.reduce((n, r) => n + r.count, 0);
    if (block.pagesPresent !== present) return { what: 'pages present', block: mb.name, expected: present, actual: block.pagesPresent, message: `block ${label}: ${block.pagesPresent} pages present, expected ${present}` };
  }
  return undefined;
}

/** `compareWithModel`, throwing an Error that names the first difference (for any test runner, and inside fc.assert). */
export async function assertMatchesModel(snap: Snapshot, model: MemoryModel): Promise<void> {
  const d = await compareWithModel(snap, model);
  if (d) throw Object.assign(new Error(`snapshot differs from the model: ${d.message}`), { difference: d });
}
