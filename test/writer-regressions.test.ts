/**
 * Issue 13, items 13 and 14 (writers): no writer produces a file that its
 * own `verify` rejects, `create` checks every input before it writes
 * anything, and `sparsify` never grows a file.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RamsnapUsageError } from '../format/errors.js';
import { HoleMap, setSystemPerlPath } from '../reader/holes.js';
import { Snapshot } from '../reader/snapshot.js';
import { convertSnapshot } from '../writer/convert.js';
import { createSnapshot } from '../writer/create.js';
import { LegacyWriter } from '../writer/legacy-writer.js';
import { patchSnapshot } from '../writer/patch.js';
import { SnapshotWriter } from '../writer/snapshot-writer.js';
import { sparsifySnapshot, type SparsifyResult } from '../writer/sparsify.js';
import { TEMP_MARK } from '../writer/sink.js';
import { fixtureFiles } from './helpers/fixtures.js';
import { pageBytes } from './helpers/synth.js';
import { applyOp, arbMachineName, arbSnapshotCase, arbWriterInput, mutatedWriterOptions, writeSnapshot } from '../writer/testing.js';

const BIN = path.resolve('dist/analyze/bin.js');
let dir: string;
let n = 0;
const fresh = (name: string): string => path.join(dir, `${n++}-${name}`);

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-writer-regressions-'));
});
afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** What `ramsnap verify` says of a file: the first rule that fails, or undefined. */
async function verifyError(file: string, offset?: number): Promise<string | undefined> {
  const s = await Snapshot.open(file, { offset, lenient: true });
  try {
    const e = s.model.error;
    return e && `${e.code}: ${e.message}`;
  } finally {
    await s.close();
  }
}

/** No temporary file or lock left in the directory. */
function noLeftovers(): void {
  const left = fs.readdirSync(dir).filter((f) => f.includes(TEMP_MARK) || f.includes('ramsnap-lock'));
  if (left.length > 0) throw new Error(`left behind: ${left.join(', ')}`);
}

/**
 * The contract of every writer: it refuses the input with a usage error
 * (a code and the field) and writes nothing, or what it writes verifies.
 */
async function refusedOrVerifies(write: () => Promise<unknown>, out: string, offset?: number): Promise<'refused' | 'written'> {
  try {
    await write();
  } catch (err) {
    if (!(err instanceof RamsnapUsageError) || !err.code || !err.field) throw err;
    if (fs.existsSync(out)) throw new Error(`${err.code} but ${out} exists`);
    noLeftovers();
    return 'refused';
  }
  const e = await verifyError(out, offset);
  if (e !== undefined) throw new Error(`the writer wrote a file that verify rejects: ${e}`);
  return 'written';
}

describe('13.13 no writer produces a file that verify rejects', () => {
  const small = { maxBlocks: 4, maxBlockBytes: 64 << 20, maxTotalPages: 1 << 16, maxOps: 12 };
  const tally = (t: Record<string, number>, k: string): void => void (t[k] = (t[k] ?? 0) + 1);

  it('13.13 SnapshotWriter: any configuration, page size and block list, valid or not, with any writes', { timeout: 120_000 }, async () => {
    const seen: Record<string, number> = {};
    await fc.assert(
      fc.asyncProperty(arbWriterInput({ ...small, layout: 'varied' }), async ({ set, ops, mutation }) => {
        const out = fresh('w.snap');
        const opts = mutatedWriterOptions(set, mutation);
        const r = await refusedOrVerifies(async () => {
          const w = await SnapshotWriter.create(out, opts);
          try {
            for (const op of ops) await applyOp(w, op);
          } catch (err) {
            // A write the writer refuses (a block the mutation renamed): the caller drops the file.
            await w.abort();
            throw err;
          }
          await w.finalize();
        }, out, set.streamOffset);
        tally(seen, r);
        fs.rmSync(out, { force: true });
      }),
      { numRuns: 150 },
    );
    // The generator reaches both sides of the contract.
    expect(seen.refused).toBeGreaterThan(10);
    expect(seen.written).toBeGreaterThan(10);
  });

  it('13.13 LegacyWriter: any configuration, page size and block list, valid or not, with any writes', { timeout: 120_000 }, async () => {
    const seen: Record<string, number> = {};
    await fc.assert(
      fc.asyncProperty(arbWriterInput(small), async ({ set, ops, mutation }) => {
        const out = fresh('l.snap');
        const o = mutatedWriterOptions(set, mutation);
        const r = await refusedOrVerifies(async () => {
          const w = await LegacyWriter.create(out, {
            configuration: { machine: o.machine, capabilities: o.capabilities ?? [], targetPageBits: o.targetPageBits, uuid: o.uuid },
            pageSize: o.pageSize,
            blocks: o.blocks,
            fsync: false,
          });
          try {
            for (const op of ops) {
              if (op.kind === 'zero') await w.zeroPages(op.block, op.first, op.count);
              else await w.writePages(op.block, op.first, op.data);
            }
          } catch (err) {
            await w.abort();
            throw err;
          }
          await w.finalize();
        }, out);
        tally(seen, r);
        fs.rmSync(out, { force: true });
      }),
      { numRuns: 150 },
    );
    expect(seen.refused).toBeGreaterThan(10);
    expect(seen.written).toBeGreaterThan(10);
  });

  it('13.13 createSnapshot: any images, block names, machine, --arch and --page-size', { timeout: 120_000 }, async () => {
    const seen: Record<string, number> = {};
    // Mostly what works (so both sides of the contract are reached), now and then an edge.
    const mostly = <T>(usual: fc.Arbitrary<T>, edge: fc.Arbitrary<T>): fc.Arbitrary<T> => fc.oneof({ weight: 6, arbitrary: usual }, { weight: 1, arbitrary: edge });
    const image = fc.record({
      block: mostly(fc.constantFrom('pc.ram', 'mach-virt.ram', 'sun4u.ram', 'a', 'x'.repeat(255)), fc.oneof(fc.constantFrom('', 'x'.repeat(256), 'ram\u0100'), fc.string({ maxLength: 12 }))),
      // Sizes in KiB: whole 8 KiB pages mostly; zero and odd sizes sometimes.
      size: mostly(fc.constantFrom(8, 16, 64, 1024), fc.constantFrom(0, 1, 3, 4, 12, 1000)),
      data: fc.array(fc.tuple(fc.nat({ max: 1 << 20 }), fc.integer({ min: 1, max: 255 })), { maxLength: 4 }),
    });
    const input = fc.record({
      images: mostly(fc.array(image, { minLength: 1, maxLength: 3 }), fc.array(image, { maxLength: 0 })),
      machine: mostly(fc.constantFrom('pc-q35-10.0', 'virt-10.0', 'sun4u', 'pseries-10.0'), fc.option(arbMachineName(), { nil: undefined })),
      arch: mostly(fc.constant(undefined), fc.constantFrom('x86_64', 'aarch64', 'arm', 'sparc64', 'ppc64', 'mips', '')),
      pageSize: mostly(fc.constant(undefined), fc.constantFrom(1024, 2048, 4096, 8192, 3000, 65536, 1 << 17)),
    });
    await fc.assert(
      fc.asyncProperty(input, async (inp) => {
        const out = fresh('c.snap');
        const files: string[] = [];
        const images = inp.images.map((img, i) => {
          const f = fresh(`img${i}.raw`);
          fs.writeFileSync(f, '');
          fs.truncateSync(f, img.size * 1024);
          const fd = fs.openSync(f, 'r+');
          for (const [at, v] of img.data) if (at < img.size * 1024) fs.writeSync(fd, Uint8Array.of(v), 0, 1, at);
          fs.closeSync(fd);
          files.push(path.basename(f));
          return { block: img.block, file: f };
        });
        tally(seen, await refusedOrVerifies(() => createSnapshot(out, { images, machine: inp.machine, arch: inp.arch, pageSize: inp.pageSize, fsync: false }), out));
        fs.rmSync(out, { force: true });
        for (const f of files) fs.rmSync(path.join(dir, f));
      }),
      { numRuns: 150 },
    );
    expect(seen.refused).toBeGreaterThan(10);
    expect(seen.written).toBeGreaterThan(10);
  });

  it('13.13 convertSnapshot, patchSnapshot and sparsifySnapshot of any written file', { timeout: 180_000 }, async () => {
    const patch = fc.record({ block: fc.nat(), at: fc.nat(), length: fc.integer({ min: 1, max: 3 * 8192 }), fill: fc.integer({ min: 0, max: 255 }) });
    await fc.assert(
      fc.asyncProperty(arbSnapshotCase({ ...small, maxTotalPages: 1 << 13, layout: 'varied' }), patch, async ({ set, ops }, p) => {
        const file = fresh('src.snap');
        await writeSnapshot(file, set, ops);
        const offset = set.streamOffset;
        const legacy = fresh('conv.legacy');
        // A legacy stream cannot record an odd page size for a machine nothing is known of: refused, or it verifies.
        if ((await refusedOrVerifies(() => convertSnapshot(file, legacy, { to: 'legacy', offset, fsync: false }), legacy)) === 'written') {
          const back = fresh('conv.mr');
          await refusedOrVerifies(() => convertSnapshot(legacy, back, { to: 'mapped-ram', pageSize: set.pageSize, fsync: false }), back);
          fs.rmSync(back, { force: true });
        }
        fs.rmSync(legacy, { force: true });
        const b = set.blocks[p.block % set.blocks.length];
        const at = p.at % b.usedLength;
        const length = Math.min(p.length, b.usedLength - at);
        await patchSnapshot(file, { block: b.name, at, data: { fill: p.fill, length }, offset, fsync: false });
        expect(await verifyError(file, offset)).toBeUndefined();
        await sparsifySnapshot(file, { offset, fsync: false });
        expect(await verifyError(file, offset)).toBeUndefined();
        fs.rmSync(file);
        noLeftovers();
      }),
      { numRuns: 20 },
    );
  });
});

describe('13.13 create checks its input before it writes anything', () => {
  const cli = (args: string[]): { code: number | null; stderr: string } => {
    const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
    return { code: r.status, stderr: r.stderr };
  };

  it('13.13 create --machine "" or a 300-byte name, bad block names, sizes and page sizes: exit 2, one line with the code, nothing written', () => {
    const img = fresh('img.raw');
    fs.writeFileSync(img, Buffer.alloc(64 << 10, 1));
    const odd = fresh('odd.raw');
    fs.writeFileSync(odd, Buffer.alloc(5000, 1));
    const empty = fresh('empty.raw');
    fs.writeFileSync(empty, '');
    const out = fresh('out.snap');
    const cases: [string[], string][] = [
      [['--machine', '', '--ram', `pc.ram=${img}`], 'BAD_MACHINE'],
      [['--machine', 'm'.repeat(300), '--ram', `pc.ram=${img}`], 'BAD_MACHINE'],
      [['--machine', 'pc q35', '--ram', `pc.ram=${img}`], 'BAD_MACHINE'],
      [['--machine', 'pc-q35-10.0', '--ram', `${'x'.repeat(256)}=${img}`], 'BAD_BLOCK_NAME'],
      [['--machine', 'pc-q35-10.0', '--ram', `pc.ram=${img}`, '--ram', `pc.ram=${img}`], 'DUPLICATE_BLOCK'],
      [['--machine', 'pc-q35-10.0', '--ram', `=${img}`], 'BAD_RAM'],
      [['--machine', 'pc-q35-10.0', '--ram', `pc.ram=${odd}`], 'BAD_BLOCK_LENGTH'],
      [['--machine', 'pc-q35-10.0', '--ram', `pc.ram=${empty}`], 'BAD_BLOCK_LENGTH'],
      [['--machine', 'pc-q35-10.0', '--page-size', '3000', '--ram', `pc.ram=${img}`], 'BAD_PAGE_SIZE'],
      [['--machine', 'pc-q35-10.0', '--page-size', '128K', '--ram', `pc.ram=${img}`], 'BAD_PAGE_SIZE'],
      [['--machine', 'pc-q35-10.0', '--page-size', '8192', '--ram', `pc.ram=${img}`], 'PAGE_SIZE_MISMATCH'],
      [['--machine', 'sun4u', '--page-size', '4096', '--ram', `sun4u.ram=${img}`], 'PAGE_SIZE_MISMATCH'],
      [['--machine', 'some-board', '--ram', `ram=${img}`], 'ARCH_REQUIRED'],
      [['--machine', 'some-board', '--arch', 'mips', '--ram', `ram=${img}`], 'BAD_ARCH'],
      [['--machine', 'some-board', '--arch', 'arm', '--ram', `ram=${img}`], 'PAGE_SIZE_REQUIRED'],
      [['--machine', 'virt-10.0', '--arch', 'x86_64', '--ram', `ram=${img}`], 'ARCH_MISMATCH'],
      [['--ram', `pc.ram=${img}`], 'MACHINE_REQUIRED'],
      [['--machine', 'pc-q35-10.0'], 'NO_BLOCKS'],
    ];
    for (const [args, code] of cases) {
      const r = cli(['create', '-o', out, ...args]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr.trimEnd().split('\n'), r.stderr).toHaveLength(1);
      expect(r.stderr).toMatch(new RegExp(`^ramsnap: ${code}: `));
      expect(fs.existsSync(out)).toBe(false);
    }
    noLeftovers();
  });

  it('13.13 an Arm machine ramsnap does not know, with --arch arm and 1 KiB pages, gets no target-page-bits (as QEMU writes versatilepb)', async () => {
    const img = fresh('arm.raw');
    fs.writeFileSync(img, Buffer.alloc(16 << 10, 7));
    const out = fresh('arm.snap');
    const r = await createSnapshot(out, { images: [{ block: 'versatile.ram', file: img }], machine: 'versatilepb', arch: 'arm', pageSize: 1024, fsync: false });
    expect(r).toMatchObject({ pageSize: 1024 });
    expect(r.targetPageBits).toBeUndefined();
    const s = await Snapshot.open(out);
    expect(s.model.configuration).toEqual({ machine: 'versatilepb', capabilities: ['mapped-ram'] });
    expect(s.model.pageSize).toBe(1024);
    await s.close();
    // The same board with 4 KiB pages (an ARMv7 CPU) carries 12.
    const out4 = fresh('arm4.snap');
    expect((await createSnapshot(out4, { images: [{ block: 'versatile.ram', file: img }], machine: 'versatilepb', arch: 'arm', pageSize: 4096, fsync: false })).targetPageBits).toBe(12);
  });

  it('13.13 the writers refuse what QEMU could not load: x-ignore-shared or unknown capabilities, a mismatched target-page-bits, a bad uuid', async () => {
    const base = { machine: 'pc-q35-10.0', pageSize: 4096, blocks: [{ name: 'pc.ram', usedLength: 4096 }], fsync: false };
    const out = fresh('refuse.snap');
    await expect(SnapshotWriter.create(out, { ...base, capabilities: ['x-ignore-shared'] })).rejects.toMatchObject({ code: 'BAD_CAPABILITIES' });
    await expect(SnapshotWriter.create(out, { ...base, capabilities: ['multifd'] })).rejects.toMatchObject({ code: 'BAD_CAPABILITIES' });
    await expect(SnapshotWriter.create(out, { ...base, targetPageBits: 13 })).rejects.toMatchObject({ code: 'BAD_TARGET_PAGE_BITS' });
    await expect(SnapshotWriter.create(out, { ...base, uuid: 'nope' })).rejects.toMatchObject({ code: 'BAD_UUID' });
    await expect(SnapshotWriter.create(out, { ...base, machine: '' })).rejects.toMatchObject({ code: 'BAD_MACHINE' });
    await expect(SnapshotWriter.create(out, { ...base, machine: 'x'.repeat(257) })).rejects.toMatchObject({ code: 'BAD_MACHINE' });
    await expect(LegacyWriter.create(out, { configuration: { machine: 'none', capabilities: [] }, pageSize: 8192, blocks: base.blocks.map((b) => ({ ...b, usedLength: 8192 })) })).rejects.toMatchObject({ code: 'PAGE_SIZE_UNRECORDED' });
    expect(fs.existsSync(out)).toBe(false);
    // A machine whose target decides it: the writer writes target-page-bits as QEMU does, whatever it was given.
    await (await SnapshotWriter.create(out, { ...base, machine: 'virt-10.0' })).finalize();
    const s = await Snapshot.open(out);
    expect(s.model.configuration?.targetPageBits).toBe(12);
    await s.close();
  });
});

describe('13.14 sparsify never grows a file', () => {
  /** Every block's bytes, hashed: the guest memory a reader sees. */
  async function memoryOf(file: string, offset?: number): Promise<string[]> {
    const s = await Snapshot.open(file, { offset });
    try {
      const out: string[] = [];
      for (const b of s.blocks) out.push(`${b.name}:${createHash('sha256').update(await s.read(b, 0, b.usedLength)).digest('hex')}`);
      return out;
    } finally {
      await s.close();
    }
  }

  /** sparsify `file`: the same guest memory, verifies, and no more allocated than before (st_blocks), as the result says. */
  async function sparsifyNoGrowth(file: string, offset?: number): Promise<SparsifyResult> {
    const mem = await memoryOf(file, offset);
    // Allocation as it is on disk (before writeback, ext4 leaves its extent blocks out of st_blocks).
    const fd = fs.openSync(file, 'r');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const blocksBefore = fs.statSync(file).blocks;
    const r = await sparsifySnapshot(file, { offset, fsync: false });
    expect(fs.statSync(file).blocks).toBeLessThanOrEqual(blocksBefore);
    expect(r.bytesFreed).toBeGreaterThanOrEqual(0);
    expect(r.bytesFreed).toBe(r.allocatedBefore - r.allocatedAfter);
    expect(r.allocatedBefore).toBe(blocksBefore * 512);
    expect(await verifyError(file, offset)).toBeUndefined();
    expect(await memoryOf(file, offset)).toEqual(mem);
    noLeftovers();
    return r;
  }

  const cp = (args: string[]): void => {
    const r = spawnSync('cp', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cp ${args.join(' ')}: ${r.stderr}`);
  };

  it('13.14 sparsify of a copy of an ,offset=1M stream keeps the 1 MiB hole before the stream (was: -1060864 B freed)', async () => {
    const set = { pageSize: 4096, blocks: [{ name: 'pc.ram', usedLength: 4 << 20 }, { name: 'pc.rom', usedLength: 128 << 10 }], machine: 'pc-q35-10.0', streamOffset: 1 << 20 };
    const ops = [1, 2, 3, 700, 1023].map((p) => ({ kind: 'write' as const, block: 'pc.ram', first: p, data: pageBytes(4096, p) }));
    const orig = fresh('offset.snap');
    await writeSnapshot(orig, set, ops);
    const file = fresh('offset-copy.snap');
    cp(['--sparse=always', orig, file]);
    const r = await sparsifyNoGrowth(file, 1 << 20);
    expect(r.holeMap).toBe('seek-data');
    // The first byte with data is the stream's first block, not byte 0.
    const fd = fs.openSync(file, 'r');
    const map = await HoleMap.open(fd, file);
    const first = (await map.extents(0, fs.fstatSync(fd).size)).extents[0];
    map.close();
    fs.closeSync(fd);
    expect(first.start).toBeGreaterThanOrEqual(1 << 20);
  });

  it('13.14 sparsify of a sparc64 sun4u file (8 KiB pages) whose zero 4 KiB halves are holes does not grow it (was: +400 KiB)', async () => {
    const { snap } = await fixtureFiles('sparc64-sun4u-mapped-ram');
    const file = fresh('sun4u.snap');
    cp(['--sparse=always', snap, file]);
    await sparsifyNoGrowth(file);
  });

  it('13.14 sparsify of a plain cp of a QEMU file frees what it can and never grows it (was: -12288 B)', async () => {
    for (const name of ['q35-mapped-ram', 'q35-mapped-ram-live', 'q35-libvirt-sparse', 'aarch64-virt-mapped-ram']) {
      const { snap, entry } = await fixtureFiles(name);
      const file = fresh(`${name}.snap`);
      cp([snap, file]);
      await sparsifyNoGrowth(file, entry.open.offset);
      // A second run has nothing left to free.
      expect((await sparsifyNoGrowth(file, entry.open.offset)).bytesFreed).toBe(0);
    }
  });

  it('13.14 sparsify of any file, holes punched or filled at random, with stale and zero pages, never grows it', { timeout: 120_000 }, async () => {
    const layout = fc.record({ sparse: fc.boolean(), patches: fc.array(fc.record({ block: fc.nat(), page: fc.nat(), fill: fc.integer({ min: 0, max: 255 }) }), { maxLength: 4 }) });
    await fc.assert(
      fc.asyncProperty(arbSnapshotCase({ maxBlocks: 3, maxBlockBytes: 8 << 20, maxTotalPages: 1 << 14, maxOps: 10, pageSizes: [1024, 4096, 8192, 16384], layout: 'varied' }), layout, async ({ set, ops }, l) => {
        const orig = fresh('r.snap');
        await writeSnapshot(orig, set, ops);
        // Zero patches leave zeroed bytes; a later patch of a clear page leaves stale-looking slots.
        for (const p of l.patches) {
          const b = set.blocks[p.block % set.blocks.length];
          const page = p.page % (b.usedLength / set.pageSize);
          await patchSnapshot(orig, { block: b.name, at: page * set.pageSize, data: { fill: p.fill, length: set.pageSize }, offset: set.streamOffset, fsync: false });
        }
        const file = fresh('r-copy.snap');
        // A copy with every zero block a hole, or one with nothing a hole.
        if (l.sparse) cp(['--sparse=always', orig, file]);
        else cp(['--sparse=never', orig, file]);
        await sparsifyNoGrowth(file, set.streamOffset);
        fs.rmSync(orig);
        fs.rmSync(file);
      }),
      { numRuns: 25 },
    );
  });
});

describe('13.15 create reads a sparse raw image only where it holds data', () => {
  it('13.15 create from a 64 GiB sparse raw image reads only its data extents (was: every byte, 16.5 s)', { timeout: 60_000 }, async () => {
    const img = fresh('big.raw');
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 64 * 2 ** 30);
    const fd = fs.openSync(img, 'r+');
    // Data at the start, across an extent edge inside a page, and at the very end.
    const spots = [0, 5 * 4096 + 100, 2 ** 33 + 4000, 64 * 2 ** 30 - 4096];
    for (const at of spots) fs.writeSync(fd, pageBytes(4096, at % 9973), 0, 4096, at);
    fs.closeSync(fd);
    const out = fresh('big.snap');
    const t0 = performance.now();
    const r = await createSnapshot(out, { images: [{ block: 'pc.ram', file: img }], machine: 'pc-q35-10.0', fsync: false });
    const ms = performance.now() - t0;
    const read = r.blocks[0].read!;
    expect(read.holeMap).toBe('seek-data');
    // Each 4 KiB write touches at most two pages (one crosses a page edge): at most 8 pages read, not 16 Mi.
    expect(read.pages).toBeLessThanOrEqual(8);
    expect(r.notes).toEqual([]);
    expect(ms, 'reading 64 GiB of holes took 16 s').toBeLessThan(10_000);
    const s = await Snapshot.open(out);
    for (const at of spots) expect(Buffer.from(await s.read('pc.ram', at, 4096)).equals(pageBytes(4096, at % 9973))).toBe(true);
    expect(s.block('pc.ram').pagesPresent).toBe(6);
    await s.close();
    fs.rmSync(img);
    fs.rmSync(out);
  });

  it('13.15 without a hole map (RAMSNAP_HOLE_MAP=off, or no perl) create reads everything, writes the same file and says why', async () => {
    const img = fresh('small.raw');
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 4 << 20);
    const fd = fs.openSync(img, 'r+');
    fs.writeSync(fd, pageBytes(8192, 3), 0, 8192, 1 << 20);
    fs.closeSync(fd);
    const withMap = fresh('map.snap');
    const a = await createSnapshot(withMap, { images: [{ block: 'pc.ram', file: img }], machine: 'pc-q35-10.0', fsync: false });
    expect(a.blocks[0].read).toMatchObject({ holeMap: 'seek-data', pages: 2, extents: 1 });
    const env = { ...process.env };
    // "No perl": neither /usr/bin/perl nor one on PATH.
    const systemPerl = setSystemPerlPath('/nonexistent/perl');
    try {
      for (const [k, v] of [['RAMSNAP_HOLE_MAP', 'off'], ['PATH', '/nonexistent']] as const) {
        process.env = { ...env, [k]: v };
        const out = fresh('nomap.snap');
        const b = await createSnapshot(out, { images: [{ block: 'pc.ram', file: img }], machine: 'pc-q35-10.0', fsync: false });
        expect(b.blocks[0].read).toMatchObject({ holeMap: 'none', pages: 1024, extents: 1 });
        expect(b.notes).toEqual([expect.stringMatching(k === 'PATH' ? /every byte read \(no hole map: perl from PATH \(\/nonexistent\/perl is missing\) could not be started/ : /every byte read \(no hole map: RAMSNAP_HOLE_MAP=off\)/)]);
        expect(fs.readFileSync(out).equals(fs.readFileSync(withMap))).toBe(true);
      }
    } finally {
      process.env = env;
      setSystemPerlPath(systemPerl);
    }
  });

  it('13.15 the hole map lists data extents in order, across queries, for empty and all-data files', async () => {
    const f = fresh('holes.raw');
    fs.writeFileSync(f, '');
    fs.truncateSync(f, 1 << 30);
    const fd = fs.openSync(f, 'r+');
    // 5000 separate extents: more than one query's worth (EXTENTS_PER_QUERY).
    for (let i = 0; i < 5000; i++) fs.writeSync(fd, Uint8Array.of(1), 0, 1, i * (128 << 10));
    const map = await HoleMap.open(fd, f);
    const got: number[] = [];
    for await (const e of map.dataExtents(0, 1 << 30)) {
      expect(e.end).toBeGreaterThan(e.start);
      got.push(e.start);
    }
    map.close();
    expect(got).toEqual(Array.from({ length: 5000 }, (_, i) => i * (128 << 10) - ((i * (128 << 10)) % 4096)));
    fs.ftruncateSync(fd, 0);
    const empty = await HoleMap.open(fd, f);
    expect(await empty.extents(0, 0)).toEqual({ extents: [], next: 0 });
    empty.close();
    fs.writeSync(fd, Buffer.alloc(10000, 1), 0, 10000, 0);
    const full = await HoleMap.open(fd, f);
    expect((await full.extents(0, 10000)).extents).toEqual([{ start: 0, end: 10000 }]);
    full.close();
    fs.closeSync(fd);
  });
});
