/**
 * Defects an independent review found in the integrated issue-13 work,
 * each pinned by a test named after it ("review N ...").
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Qemu, qemuAvailable } from '../fixtures/qemu.js';
import { MACHINE_ALIASES } from '../format/target.js';
import { createSnapshot, imageChunks } from '../writer/create.js';
import { LegacyWriter } from '../writer/legacy-writer.js';
import { SnapshotWriter } from '../writer/snapshot-writer.js';
import { sparsifySnapshot } from '../writer/sparsify.js';
import { testBit } from '../format/bitmap.js';
import { isZeroRange } from '../format/zero-pages.js';
import { Snapshot } from '../reader/snapshot.js';
import { extractBlock, extractBlocks } from '../reader/extract.js';
import { HoleMap, SYSTEM_PERL, setSystemPerlPath } from '../reader/holes.js';
import { splitDev } from '../reader/source.js';
import { compareSegments, fixtureFiles } from './helpers/fixtures.js';
import { pageBytes } from './helpers/synth.js';

const PS = 4096;
const BIN = path.resolve('dist/analyze/bin.js');
let dir: string;
let n = 0;
const fresh = (name: string): string => path.join(dir, `${n++}-${name}`);
/** A small mapped-ram snapshot with a few non-zero pages. */
async function smallSnapshot(file: string, opts: { force?: boolean } = {}): Promise<void> {
  const w = await SnapshotWriter.create(file, { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 64 * PS }], fsync: false, ...opts });
  await w.writePages('pc.ram', 3, Buffer.concat([pageBytes(PS, 1), pageBytes(PS, 2)]));
  await w.writePages('pc.ram', 40, pageBytes(PS, 3));
  await w.finalize();
}

const cli = (args: string[]): { code: number | null; stdout: string; stderr: string } => {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-review-fixes-'));
});
afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('review 1: machine aliases', () => {
  it('review 1 create --machine q35 --arch x86_64 (an alias QEMU never records) exits 2 with BAD_MACHINE naming pc-q35-10.0, nothing written', () => {
    const img = fresh('img.raw');
    fs.writeFileSync(img, Buffer.alloc(64 << 10, 1));
    const out = fresh('out.snap');
    const r = cli(['create', '-o', out, '--machine', 'q35', '--arch', 'x86_64', '--ram', `pc.ram=${img}`]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^ramsnap: BAD_MACHINE: .*alias.*pc-q35-10\.0/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('review 1 every known alias is refused by create and by both writers, with the field machine', async () => {
    const img = fresh('img.raw');
    fs.writeFileSync(img, Buffer.alloc(64 << 10, 1));
    for (const alias of Object.keys(MACHINE_ALIASES)) {
      const out = fresh(`${alias}.snap`);
      await expect(createSnapshot(out, { images: [{ block: 'ram', file: img }], machine: alias, arch: 'x86_64' })).rejects.toMatchObject({ code: 'BAD_MACHINE', field: 'machine' });
      const blocks = [{ name: 'ram', usedLength: 4096 }];
      await expect(SnapshotWriter.create(out, { machine: alias, pageSize: 4096, blocks })).rejects.toMatchObject({ code: 'BAD_MACHINE', field: 'machine' });
      await expect(LegacyWriter.create(out, { configuration: { machine: alias, capabilities: [] }, pageSize: 4096, blocks })).rejects.toMatchObject({ code: 'BAD_MACHINE', field: 'machine' });
      expect(fs.existsSync(out)).toBe(false);
    }
  });
});

describe('review 2: a replaced file keeps its mode, not its owner', () => {
  const isRoot = process.getuid?.() === 0;

  it.skipIf(!isRoot)('review 2 as root, convert -o X --force over a 0666 file another user made gives root the new file (mode kept); sparsify keeps the user\'s owner', async () => {
    const src = fresh('src.snap');
    await smallSnapshot(src);
    const planted = fresh('planted.snap');
    fs.writeFileSync(planted, 'made by someone else');
    fs.chmodSync(planted, 0o666);
    fs.chownSync(planted, 4321, 4322);
    const r = cli(['convert', src, '-o', planted, '--to', 'mapped-ram', '--force']);
    expect(r.code, r.stderr).toBe(0);
    const st = fs.statSync(planted);
    expect([st.uid, st.gid]).toEqual([0, process.getgid!()]);
    expect((st.mode & 0o777).toString(8)).toBe('666');

    // sparsify rewrites the same file: a user's snapshot stays theirs, with its mode.
    const theirs = fresh('theirs.snap');
    await smallSnapshot(theirs);
    fs.chmodSync(theirs, 0o640);
    fs.chownSync(theirs, 4321, 4322);
    expect(cli(['sparsify', theirs]).code).toBe(0);
    const after = fs.statSync(theirs);
    expect([after.uid, after.gid, (after.mode & 0o777).toString(8)]).toEqual([4321, 4322, '640']);
  });
});

describe('review 3: one zero-page test (format/zero-pages) in every writer and extract', () => {
  /** Pages 0..7: zero, last byte only, zero, first byte only, zero, zero, a middle byte, zero. */
  function pattern(): Buffer {
    const b = Buffer.alloc(8 * PS);
    b[2 * PS - 1] = 1;
    b[3 * PS] = 2;
    b[6 * PS + 1234] = 3;
    return b;
  }
  const nonZero = [1, 3, 6];

  it('review 3 SnapshotWriter, sparsify and extract tell a page with one non-zero byte (first, middle or last) from a zero page', async () => {
    const file = fresh('zp.snap');
    const w = await SnapshotWriter.create(file, { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 16 * PS }], fsync: false });
    // Every page present first, then the pattern over pages 4..11: its zero pages lose their bit.
    await w.writePages('pc.ram', 0, Buffer.alloc(16 * PS, 9));
    await w.writePages('pc.ram', 4, pattern());
    await w.finalize();
    const want = Buffer.alloc(16 * PS, 9);
    pattern().copy(want, 4 * PS);
    const check = async (): Promise<void> => {
      const s = await Snapshot.open(file);
      const b = s.block('pc.ram');
      const present = Array.from({ length: 16 }, (_, p) => testBit(b.bitmap!, p));
      expect(present).toEqual(Array.from({ length: 16 }, (_, p) => p < 4 || p >= 12 || nonZero.includes(p - 4)));
      const raw = fresh('zp.raw');
      const r = await extractBlock(s, b, raw);
      await s.close();
      expect(fs.readFileSync(raw).equals(want)).toBe(true);
      // Extract writes only non-zero pages: 8 of 9s plus the 3 pattern pages.
      expect(r.bytesWritten).toBe(11 * PS);
    };
    await check();
    const sp = await sparsifySnapshot(file, { fsync: false });
    expect(sp.pagesCleared).toBe(0);
    await check();
  });

  it('review 3 sparsify clears present pages that hold only zeros and keeps one whose last byte is set', async () => {
    const file = fresh('stale.snap');
    const w = await SnapshotWriter.create(file, { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 8 * PS }], fsync: false });
    await w.writePages('pc.ram', 0, pattern());
    // Pages written present with zero bytes (as a live save leaves them): set the bits directly.
    w.zeroPagesPresent('pc.ram', 4, 2);
    await w.finalize();
    const r = await sparsifySnapshot(file, { fsync: false });
    expect(r.pagesCleared).toBe(2);
    expect(r.pagesKept).toBe(3);
  });

  it('review 3 isZeroRange compares any byte range without a view', () => {
    const zero = Buffer.alloc(64);
    const b = Buffer.alloc(100);
    expect(isZeroRange(b, 10, 74, zero)).toBe(true);
    b[73] = 1;
    expect(isZeroRange(b, 10, 74, zero)).toBe(false);
    expect(isZeroRange(b, 10, 73, zero)).toBe(true);
    expect(isZeroRange(b, 5, 5, zero)).toBe(true);
  });
});

describe('review 4: the hole map runs /usr/bin/perl, not the first perl on PATH', () => {
  it.skipIf(!fs.existsSync(SYSTEM_PERL))('review 4 a perl planted first on PATH is not run while /usr/bin/perl exists; without it, PATH is used and the map says so', async () => {
    const bin = fresh('bin');
    fs.mkdirSync(bin);
    const marker = path.join(bin, 'ran');
    // A "perl" that records that it ran, then behaves as perl.
    fs.writeFileSync(path.join(bin, 'perl'), `#!/bin/sh\ntouch '${marker}'\nexec ${SYSTEM_PERL} "$@"\n`, { mode: 0o755 });
    const img = fresh('holes.raw');
    fs.writeFileSync(img, '');
    fs.truncateSync(img, 4 << 20);
    const fd = fs.openSync(img, 'r+');
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 1 << 20);
    const env = { ...process.env };
    process.env = { ...env, PATH: `${bin}:${env.PATH ?? ''}` };
    try {
      const map = await HoleMap.open(fd, img);
      expect(map.kind).toBe('seek-data');
      expect(map.helper).toBe(SYSTEM_PERL);
      expect((await map.extents(0, 4 << 20)).extents).toEqual([{ start: 1 << 20, end: (1 << 20) + 4096 }]);
      map.close();
      expect(fs.existsSync(marker)).toBe(false);

      // /usr/bin/perl missing: the PATH one runs, and the map says which it used.
      const was = setSystemPerlPath('/nonexistent/perl');
      try {
        const fallback = await HoleMap.open(fd, img);
        expect(fallback.kind).toBe('seek-data');
        expect(fallback.helper).toBe('perl from PATH (/nonexistent/perl is missing)');
        fallback.close();
        expect(fs.existsSync(marker)).toBe(true);
        process.env = { ...env, PATH: '/nonexistent' };
        const none = await HoleMap.open(fd, img);
        expect(none.kind).toBe('none');
        expect(none.reason).toMatch(/^perl from PATH \(\/nonexistent\/perl is missing\) could not be started/);
      } finally {
        setSystemPerlPath(was);
      }
    } finally {
      process.env = env;
      fs.closeSync(fd);
    }
  });
});

describe('review 5: block device numbers', () => {
  /** glibc's gnu_dev_makedev. */
  const makedev = (major: bigint, minor: bigint): bigint =>
    (minor & 0xffn) | ((major & 0xfffn) << 8n) | ((minor & ~0xffn) << 12n) | ((major & ~0xfffn) << 32n);

  it('review 5 splitDev decodes a large dev_t as glibc major()/minor() do (the minor no longer takes the major\'s high bits)', () => {
    for (const [major, minor] of [
      [8n, 1n],
      [259n, 0n],
      [0x12345n, 0x6789an],
      [0xfffff_fffn, 0xfffff_fffn],
      [0xabcn, 0x1_0000n],
    ]) {
      expect(splitDev(makedev(major, minor))).toEqual({ major, minor });
    }
    // /dev/sda on Linux: 8:0.
    expect(splitDev(0x800n)).toEqual({ major: 8n, minor: 0n });
  });

  it.skipIf(process.platform !== 'linux')('review 5 splitDev agrees with stat(1) on this machine\'s devices', () => {
    for (const dev of ['/dev/null', '/dev/zero', ...fs.readdirSync('/dev').filter((d) => /^(sd|vd|nvme|loop)/.test(d)).slice(0, 4).map((d) => `/dev/${d}`)]) {
      const r = spawnSync('stat', ['-c', '%t %T', dev], { encoding: 'utf8' });
      if (r.status !== 0) continue;
      const [major, minor] = r.stdout.trim().split(' ').map((h) => BigInt(`0x${h}`));
      expect(splitDev(fs.statSync(dev, { bigint: true }).rdev), dev).toEqual({ major, minor });
    }
  });
});

describe('review 6: extract puts back what --force replaced when a later rename fails', () => {
  /** A snapshot with two blocks, and a directory holding the two outputs as they were before. */
  async function setUp(): Promise<{ snap: Snapshot; out: string; a: string; b: string }> {
    const file = fresh('two.snap');
    const w = await SnapshotWriter.create(file, { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 8 * PS }, { name: 'rom', usedLength: 2 * PS }], fsync: false });
    await w.writePages('pc.ram', 1, pageBytes(PS, 5));
    await w.writePages('rom', 0, pageBytes(PS, 6));
    await w.finalize();
    const out = fresh('out');
    fs.mkdirSync(out);
    const a = path.join(out, 'a.raw');
    const b = path.join(out, 'b.raw');
    fs.writeFileSync(a, 'the user\'s old a');
    fs.writeFileSync(b, 'the user\'s old b');
    return { snap: await Snapshot.open(file), out, a, b };
  }

  it('review 6 a rename that fails after another output was renamed leaves both targets as they were, and nothing else', async () => {
    const { snap, out, a, b } = await setUp();
    const rename = fs.renameSync;
    const spy = vi.spyOn(fs, 'renameSync').mockImplementation((from, to) => {
      if (to === b) throw Object.assign(new Error('EIO: i/o error, rename'), { code: 'EIO', errno: -5, syscall: 'rename' });
      return rename(from, to);
    });
    try {
      const outputs = [
        { block: snap.block('pc.ram'), path: a },
        { block: snap.block('rom'), path: b },
      ];
      await expect(extractBlocks(snap, outputs, { force: true })).rejects.toMatchObject({ code: 'IO_EIO' });
    } finally {
      spy.mockRestore();
      await snap.close();
    }
    expect(fs.readFileSync(a, 'utf8')).toBe("the user's old a");
    expect(fs.readFileSync(b, 'utf8')).toBe("the user's old b");
    expect(fs.readdirSync(out).sort()).toEqual(['a.raw', 'b.raw']);
  });

  it('review 6 every target is looked at again before the first rename: one turned into a directory meanwhile leaves the other untouched', async () => {
    const { snap, out, a, b } = await setUp();
    const outputs = [
      { block: snap.block('pc.ram'), path: a },
      { block: snap.block('rom'), path: b },
    ];
    const swap = (): void => {
      fs.rmSync(b);
      fs.mkdirSync(b);
    };
    await expect(extractBlocks(snap, outputs, { force: true, beforeCommit: swap })).rejects.toMatchObject({ code: 'OUTPUT_NOT_REGULAR' });
    await snap.close();
    expect(fs.readFileSync(a, 'utf8')).toBe("the user's old a");
    expect(fs.statSync(b).isDirectory()).toBe(true);
    expect(fs.readdirSync(out).sort()).toEqual(['a.raw', 'b.raw']);
  });

  it('review 6 on success the outputs hold the blocks and no aside link is left', async () => {
    const { snap, out, a, b } = await setUp();
    const outputs = [
      { block: snap.block('pc.ram'), path: a },
      { block: snap.block('rom'), path: b },
    ];
    await extractBlocks(snap, outputs, { force: true });
    await snap.close();
    expect(fs.readFileSync(a).subarray(PS, 2 * PS).equals(pageBytes(PS, 5))).toBe(true);
    expect(fs.readFileSync(b).subarray(0, PS).equals(pageBytes(PS, 6))).toBe(true);
    expect(fs.statSync(a).nlink).toBe(1);
    expect(fs.readdirSync(out).sort()).toEqual(['a.raw', 'b.raw']);
  });
});

describe('review 7: create hands out an image\'s chunks as the copy asks for them', () => {
  it('review 7 the chunks of a dense 1 TiB extent are made lazily, a million of 1 MiB in all, and a page two extents share is copied once', () => {
    const TiB = 2 ** 40;
    const covered = { pages: 0 };
    const chunks = imageChunks('pc.ram', [{ start: 0, end: TiB }], PS, 256, covered);
    // A generator: nothing is made before it is asked for.
    expect(covered.pages).toBe(0);
    expect(chunks.next().value).toEqual({ block: 'pc.ram', first: 0, count: 256, data: true });
    expect(covered.pages).toBe(256);
    let n = 1;
    let last = 0;
    for (const c of chunks) {
      n++;
      last = c.first + c.count;
    }
    expect(n).toBe(TiB / (256 * PS));
    expect(last).toBe(TiB / PS);

    // Extents [100, 5000) and [5000, 9000) share page 1: it is copied once, with the first.
    const shared = { pages: 0 };
    expect([...imageChunks('b', [{ start: 100, end: 5000 }, { start: 5000, end: 9000 }], PS, 256, shared)]).toEqual([
      { block: 'b', first: 0, count: 2, data: true },
      { block: 'b', first: 2, count: 1, data: true },
    ]);
    // The next query of the hole map starts where this one left off.
    expect([...imageChunks('b', [{ start: 9000, end: 3 * PS }], PS, 256, shared)]).toEqual([]);
    expect([...imageChunks('b', [{ start: 3 * PS, end: 4 * PS }], PS, 256, shared)]).toEqual([{ block: 'b', first: 3, count: 1, data: true }]);
  });
});

/**
 * A suppress-vmdesc=on save written over an older save on a reused device:
 * the committed q35-suppress-vmdesc fixture, then q35-mapped-ram's tail from
 * its first device section (device sections, EOF, its description).
 */
async function suppressedOverForeignTail(file: string): Promise<{ tailBytes: number; foreignAt: number }> {
  const base = await fixtureFiles('q35-suppress-vmdesc');
  const other = await fixtureFiles('q35-mapped-ram');
  const o = await Snapshot.open(other.snap);
  const from = o.model.devices[0].section.offset;
  const foreignIn = o.model.vmdesc!.offset;
  await o.close();
  const size = fs.statSync(other.snap).size;
  const tail = Buffer.alloc(size - from);
  const fd = fs.openSync(other.snap, 'r');
  try {
    fs.readSync(fd, tail, 0, tail.length, from);
  } finally {
    fs.closeSync(fd);
  }
  fs.copyFileSync(base.snap, file);
  fs.appendFileSync(file, tail);
  return { tailBytes: tail.length, foreignAt: fs.statSync(base.snap).size + (foreignIn - from) };
}

describe('review 8: a description farther on than right after EOF is not this stream\'s', () => {
  it('review 8 a suppress-vmdesc=on save followed by an older save\'s tail verifies OK (DEVICE_STATE_UNCHECKED, TRAILING_DATA with the count) and extracts what pmemsave shows', { timeout: 60_000 }, async () => {
    const file = fresh('suppressed-over-old.mig');
    const { tailBytes, foreignAt } = await suppressedOverForeignTail(file);
    const v = cli(['verify', '--json', file]);
    expect(v.code, v.stderr).toBe(0);
    const json = JSON.parse(v.stdout) as { ok: boolean; warnings: { code: string; message: string }[] };
    expect(json.ok).toBe(true);
    expect(json.warnings.map((w) => w.code)).toEqual(['DEVICE_STATE_UNCHECKED', 'TRAILING_DATA']);
    expect(json.warnings[1].message).toMatch(new RegExp(`^${tailBytes} bytes after the EOF byte .*description at offset ${foreignAt}`));

    const s = await Snapshot.open(file);
    try {
      expect(s.model.vmdesc).toBeUndefined();
      expect(s.model.trailingBytes).toBe(tailBytes);
      expect(s.model.devices.length).toBeGreaterThan(20);
      expect(s.model.devices.every((d) => !d.checked && d.value === undefined)).toBe(true);
    } finally {
      await s.close();
    }

    const { entry, pmem } = await fixtureFiles('q35-suppress-vmdesc');
    const truth = fs.readFileSync(pmem);
    for (const cmp of entry.comparisons) {
      const raw = fresh(`${cmp.block.replace(/\W/g, '_')}.raw`);
      const x = cli(['extract', file, '--block', cmp.block, '-o', raw]);
      expect(x.code, x.stderr).toBe(0);
      const got = fs.readFileSync(raw);
      for (const [from, to] of compareSegments(cmp.guestAddr, cmp.guestAddr + cmp.length, cmp.exclude)) {
        const at = cmp.blockOffset + (from - cmp.guestAddr);
        expect(got.subarray(at, at + (to - from)).equals(truth.subarray(from, to)), `${cmp.block} [${from}, ${to})`).toBe(true);
      }
    }
  });

  it.skipIf(!qemuAvailable('qemu-system-x86_64'))('review 8 QEMU 10 restores that file (it only logs "Expected vmdescription section") to the memory pmemsave showed', { timeout: 120_000 }, async () => {
    const file = fresh('suppressed-over-old-qemu.mig');
    await suppressedOverForeignTail(file);
    const { entry, pmem } = await fixtureFiles('q35-suppress-vmdesc');
    // No -device loader: the bytes can only come from the file.
    const q = await Qemu.start({ binary: entry.binary, dir: fresh('qemu'), args: ['-machine', entry.machine, '-accel', 'tcg', '-m', `${entry.memory >> 20}M`, '-smp', '1'], incoming: true });
    const restored = fresh('restored.pmem');
    try {
      await q.setCapabilities({ 'mapped-ram': true });
      await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
      await q.waitMigration(60_000);
      await q.pmemsave(restored, entry.pmemSize, entry.pmemBase);
    } finally {
      await q.quit();
    }
    const got = fs.readFileSync(restored);
    const truth = fs.readFileSync(pmem);
    for (const cmp of entry.comparisons) {
      for (const [from, to] of compareSegments(cmp.guestAddr, cmp.guestAddr + cmp.length, cmp.exclude)) {
        expect(got.subarray(from, to).equals(truth.subarray(from, to)), `[${from}, ${to})`).toBe(true);
      }
    }
  });
});
