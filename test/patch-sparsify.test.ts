/**
 * ramsnap patch and sparsify: round trips through the reader against a
 * model of guest memory, the exact error codes, and the CLI as a binary.
 */
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { testBit } from '../format/bitmap.js';
import { Snapshot } from '../reader/snapshot.js';
import { patchSnapshot } from '../writer/patch.js';
import { sparsifySnapshot } from '../writer/sparsify.js';
import { TEMP_MARK } from '../writer/snapshot-writer.js';
import { Qemu, kvmAvailable, qemuAvailable } from '../fixtures/qemu.js';
import { fixtureFiles } from './helpers/fixtures.js';
import { beside, runChild } from './faults/harness.js';
import { pageBytes, synthesize, type SynthOptions } from './helpers/synth.js';

const run = promisify(execFile);
const BIN = path.resolve('dist/analyze/bin.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-patch-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const PS = 4096;
let serial = 0;

/** Writes a synthesized stream as a real sparse file. */
function writeSynth(opts: SynthOptions): string {
  const f = synthesize(opts);
  const file = path.join(dir, `synth-${serial++}.snap`);
  const fd = fs.openSync(file, 'w');
  for (const e of f.extents) fs.writeSync(fd, e.data, 0, e.data.length, e.offset);
  fs.ftruncateSync(fd, f.size);
  fs.closeSync(fd);
  return file;
}

/** pc.ram of 64 pages: every third page present, page 5 present but all zero, stale bytes under a clear bit. */
function sampleOpts(extra: Partial<SynthOptions> = {}): SynthOptions {
  const pages = new Map<number, Uint8Array>();
  for (let p = 0; p < 64; p += 3) pages.set(p, pageBytes(PS, p + 1));
  pages.set(5, new Uint8Array(PS));
  return { blocks: [{ name: 'pc.ram', usedLength: 64 * PS, pages }, { name: 'pc.rom', usedLength: 8 * PS, pages: new Map([[1, pageBytes(PS, 99)]]) }], staleBytes: true, ...extra };
}

async function guestMemory(file: string, opts: { offset?: number } = {}): Promise<Map<string, Buffer>> {
  const s = await Snapshot.open(file, opts);
  try {
    const out = new Map<string, Buffer>();
    for (const b of s.blocks) out.set(b.name, Buffer.from(await s.read(b, 0, b.usedLength)));
    return out;
  } finally {
    await s.close();
  }
}

async function layoutOf(file: string, opts: { offset?: number } = {}): Promise<unknown[]> {
  const s = await Snapshot.open(file, opts);
  await s.close();
  return s.blocks.map((b) => ({ name: b.name, entry: b.entryOffset, ...b.mappedRam }));
}

describe('patchSnapshot', () => {
  it('reads back as the model: guest memory with the patch laid over it, for any range and content', async () => {
    const base = writeSynth(sampleOpts());
    const arb = fc.record({
      at: fc.integer({ min: 0, max: 64 * PS - 1 }),
      length: fc.integer({ min: 1, max: 6 * PS }),
      kind: fc.constantFrom('random', 'zero', 'fill', 'zero-pages'),
      seed: fc.integer({ min: 1, max: 1e6 }),
    });
    await fc.assert(
      fc.asyncProperty(arb, async ({ at, length, kind, seed }) => {
        const len = Math.min(length, 64 * PS - at);
        const file = path.join(dir, 'prop.snap');
        fs.copyFileSync(base, file);
        const before = await guestMemory(file);
        let data: Uint8Array;
        if (kind === 'random') data = pageBytes(len, seed);
        else if (kind === 'zero') data = new Uint8Array(len);
        else if (kind === 'fill') data = new Uint8Array(len).fill(seed & 0xff || 1);
        else {
          // Alternate non-zero and zero pages: many runs, bits set and cleared in one patch.
          data = pageBytes(len, seed);
          for (let p = Math.floor(at / PS); p * PS < at + len; p += 2) data.fill(0, Math.max(0, p * PS - at), Math.min(len, (p + 1) * PS - at));
        }
        const r = await patchSnapshot(file, { block: 'pc.ram', at, data: { bytes: data }, fsync: false });
        const want = Buffer.from(before.get('pc.ram')!);
        want.set(data, at);
        const after = await guestMemory(file);
        expect(after.get('pc.ram')!.equals(want)).toBe(true);
        expect(after.get('pc.rom')!.equals(before.get('pc.rom')!)).toBe(true);
        // Touched pages: present exactly when non-zero.
        const s = await Snapshot.open(file);
        const b = s.block('pc.ram');
        for (let p = r.firstPage; p < r.firstPage + r.pages; p++) {
          const zero = want.subarray(p * PS, (p + 1) * PS).every((x) => x === 0);
          expect(testBit(b.bitmap!, p)).toBe(!zero);
        }
        await s.close();
      }),
      { numRuns: 40 },
    );
  });

  it('a partial page over a clear bit is written whole as zeros + patch, never the stale bytes', async () => {
    const file = writeSynth(sampleOpts());
    // synth puts stale 0xee bytes in the first absent page (page 1) under its clear bit.
    const s0 = await Snapshot.open(file);
    const slot = s0.block('pc.ram').mappedRam!.pagesOffset + PS;
    await s0.close();
    const raw = Buffer.alloc(PS);
    fs.readSync(fs.openSync(file, 'r'), raw, 0, PS, slot);
    expect(raw[0]).toBe(0xee);
    const r = await patchSnapshot(file, { block: 'pc.ram', at: PS + 100, data: { fill: 0x41, length: 10 } });
    expect(r).toMatchObject({ pages: 1, pagesWritten: 1, bitsSet: 1, bitsCleared: 0 });
    const page = (await guestMemory(file)).get('pc.ram')!.subarray(PS, 2 * PS);
    const want = Buffer.alloc(PS);
    want.fill(0x41, 100, 110);
    expect(page.equals(want)).toBe(true);
  });

  it('zeros make pages zero: bits cleared and, for pages that were present, the bytes zeroed too', async () => {
    const file = writeSynth(sampleOpts());
    const r = await patchSnapshot(file, { block: 'pc.ram', at: 3 * PS, data: { fill: 0, length: 4 * PS } });
    // Pages 3..6: 3 and 6 present with data, 5 present but zero, 4 absent.
    expect(r).toMatchObject({ pages: 4, pagesWritten: 3, bitsSet: 0, bitsCleared: 3 });
    const s = await Snapshot.open(file);
    const b = s.block('pc.ram');
    const raw = Buffer.alloc(PS);
    const fd = fs.openSync(file, 'r');
    fs.readSync(fd, raw, 0, PS, b.mappedRam!.pagesOffset + 3 * PS);
    fs.closeSync(fd);
    expect(raw.every((x) => x === 0)).toBe(true);
    expect([3, 4, 5, 6].map((p) => testBit(b.bitmap!, p))).toEqual([false, false, false, false]);
    await s.close();
  });

  it('patches behind a stream offset and in a libvirt image (absolute offsets)', async () => {
    const file = writeSynth(sampleOpts({ streamOffset: 5000 }));
    await patchSnapshot(file, { block: 'pc.rom', at: 10, data: { bytes: Uint8Array.of(1, 2, 3) }, offset: 5000 });
    expect([...(await guestMemory(file, { offset: 5000 })).get('pc.rom')!.subarray(10, 13)]).toEqual([1, 2, 3]);

    const { snap } = await fixtureFiles('q35-libvirt-sparse');
    const lv = path.join(dir, 'libvirt.img');
    fs.copyFileSync(snap, lv);
    const before = (await guestMemory(lv)).get('pc.ram')!;
    await patchSnapshot(lv, { block: 'pc.ram', at: 0x1ff000 + 4000, data: { fill: 0x5a, length: 300 } });
    const want = Buffer.from(before);
    want.fill(0x5a, 0x1ff000 + 4000, 0x1ff000 + 4300);
    expect((await guestMemory(lv)).get('pc.ram')!.equals(want)).toBe(true);
  });

  it('refuses with exact codes: legacy, invalid file, unknown block, out of range, data larger than the block', async () => {
    const legacy = writeSynth({ ...sampleOpts(), mappedRam: false, staleBytes: false });
    await expect(patchSnapshot(legacy, { block: 'pc.ram', at: 0, data: { fill: 1, length: 1 } })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('convert it to mapped-ram first') });
    const cut = writeSynth(sampleOpts());
    fs.truncateSync(cut, 100000);
    const cutBytes = fs.readFileSync(cut);
    await expect(patchSnapshot(cut, { block: 'pc.ram', at: 0, data: { fill: 1, length: 1 } })).rejects.toMatchObject({ code: 'PAGES_OUT_OF_FILE' });
    expect(fs.readFileSync(cut).equals(cutBytes)).toBe(true);
    const ok = writeSynth(sampleOpts());
    const okBytes = fs.readFileSync(ok);
    await expect(patchSnapshot(ok, { block: 'nope', at: 0, data: { fill: 1, length: 1 } })).rejects.toMatchObject({ code: 'UNKNOWN_BLOCK' });
    await expect(patchSnapshot(ok, { block: 'pc.rom', at: 8 * PS - 2, data: { fill: 1, length: 3 } })).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await expect(patchSnapshot(ok, { block: 'pc.rom', at: 0, data: { bytes: new Uint8Array(8 * PS + 1) } })).rejects.toMatchObject({ code: 'DATA_TOO_LARGE' });
    await expect(patchSnapshot(ok, { block: 'pc.rom', at: 0, data: { fill: 1, length: 0 } })).rejects.toMatchObject({ code: 'EMPTY_PATCH' });
    expect(fs.readFileSync(ok).equals(okBytes)).toBe(true);
  });
});

describe('sparsifySnapshot', () => {
  it('holes stale slots and zero pages; guest memory, layout and permissions unchanged', async () => {
    const file = writeSynth(sampleOpts({ streamOffset: 3000 }));
    fs.chmodSync(file, 0o600);
    // Make stale bytes and an allocated zero page the way a live save or a patch does.
    await patchSnapshot(file, { block: 'pc.ram', at: 9 * PS, data: { fill: 0, length: PS }, offset: 3000 });
    const mem = await guestMemory(file, { offset: 3000 });
    const layout = await layoutOf(file, { offset: 3000 });
    const prefix = fs.readFileSync(file).subarray(0, 3000);
    const r = await sparsifySnapshot(file, { offset: 3000 });
    // Page 5 was present and all zero.
    expect(r.pagesCleared).toBe(1);
    expect(r.pagesKept).toBe(21 + 1);
    expect(r.bytesFreed).toBe(r.allocatedBefore - r.allocatedAfter);
    expect(r.bytesFreed).toBeGreaterThan(0);
    expect(await layoutOf(file, { offset: 3000 })).toEqual(layout);
    const after = await guestMemory(file, { offset: 3000 });
    for (const [name, bytes] of mem) expect(after.get(name)!.equals(bytes), name).toBe(true);
    expect(fs.readFileSync(file).subarray(0, 3000).equals(prefix)).toBe(true);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(dir).filter((n) => n.includes(TEMP_MARK))).toEqual([]);
  });

  for (const name of ['q35-mapped-ram-live', 'q35-libvirt-sparse', 'q35-offset']) {
    it(`${name}: the reader returns the same bytes for every block, at the same offsets`, async () => {
      const { snap, entry } = await fixtureFiles(name);
      const file = path.join(dir, `${name}.snap`);
      fs.copyFileSync(snap, file);
      const before = await guestMemory(file, entry.open);
      const layout = await layoutOf(file, entry.open);
      const r = await sparsifySnapshot(file, entry.open);
      expect(await layoutOf(file, entry.open)).toEqual(layout);
      const after = await guestMemory(file, entry.open);
      for (const [b, bytes] of before) expect(after.get(b)!.equals(bytes), b).toBe(true);
      expect(r.allocatedAfter).toBeLessThanOrEqual(r.allocatedBefore + 4096 * 16);
    });
  }

  it('keeps a configuration uuid (validate-uuid) byte for byte in the stream head', async () => {
    const file = writeSynth(sampleOpts({ uuid: '12345678-9abc-def0-1234-56789abcdef0' }));
    const head = fs.readFileSync(file).subarray(0, 0x80);
    const mem = await guestMemory(file);
    await sparsifySnapshot(file);
    expect(fs.readFileSync(file).subarray(0, 0x80).equals(head)).toBe(true);
    const s = await Snapshot.open(file);
    expect(s.model.configuration?.uuid).toBe('12345678-9abc-def0-1234-56789abcdef0');
    await s.close();
    for (const [name, bytes] of await guestMemory(file)) expect(bytes.equals(mem.get(name)!), name).toBe(true);
  });

  it('refuses a file that does not verify, and a legacy one, leaving them alone', async () => {
    const cut = writeSynth(sampleOpts());
    const bytes = fs.readFileSync(cut);
    bytes[0] = 0x51 ^ 0xff; // not "QEVM"
    fs.writeFileSync(cut, bytes);
    await expect(sparsifySnapshot(cut)).rejects.toMatchObject({ code: 'BAD_MAGIC' });
    expect(fs.readFileSync(cut).equals(bytes)).toBe(true);
    const legacy = writeSynth({ ...sampleOpts(), mappedRam: false, staleBytes: false });
    await expect(sparsifySnapshot(legacy)).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    expect(fs.readdirSync(dir).filter((n) => n.includes(TEMP_MARK))).toEqual([]);
  });
});

describe('CLI', () => {
  async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const r = await run(process.execPath, [BIN, ...args]);
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }
  const oneLine = (stderr: string, code: string): void => {
    expect(stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(stderr).toMatch(new RegExp(`^ramsnap: ${code}: `));
  };

  it('patch: text and --json report what changed', async () => {
    const file = writeSynth(sampleOpts());
    const blob = path.join(dir, 'blob');
    fs.writeFileSync(blob, pageBytes(PS + 0x200, 7));
    const t = await cli(['patch', file, '--block', 'pc.ram', '--at', '0x2f00', '--data-file', blob]);
    expect(t).toMatchObject({ code: 0, stderr: '' });
    expect(t.stdout).toMatch(/3 pages touched .* 3 written in 3 writes, 2 bits set, 0 bits cleared/);
    const j = await cli(['patch', file, '--block', 'pc.ram', '--at', '0x3000', '--fill', '0', '--length', '8k', '--json']);
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toMatchObject({ block: 'pc.ram', at: 0x3000, length: 8192, firstPage: 3, pages: 2, bitsSet: 0, bitsCleared: 2 });
  });

  it('patch: usage errors exit 2, file errors exit 1, one line each', async () => {
    const file = writeSynth(sampleOpts());
    const cases: [string[], number, string][] = [
      [['--block', 'nope', '--at', '0', '--fill', '1', '--length', '1'], 2, 'UNKNOWN_BLOCK'],
      [['--block', 'pc.rom', '--at', '32k', '--fill', '1', '--length', '1'], 2, 'OUT_OF_RANGE'],
      [['--block', 'pc.rom', '--at', '0', '--fill', '300', '--length', '1'], 2, 'BAD_NUMBER'],
      [['--block', 'pc.rom', '--at', '0', '--fill', '1'], 2, 'USAGE'],
      [['--block', 'pc.rom', '--at', '0'], 2, 'USAGE'],
      [['--block', 'pc.rom', '--at', '0', '--data-file', path.join(dir, 'missing')], 1, 'IO_ENOENT'],
    ];
    const big = path.join(dir, 'big');
    fs.writeFileSync(big, new Uint8Array(8 * PS + 1));
    cases.push([['--block', 'pc.rom', '--at', '0', '--data-file', big], 2, 'DATA_TOO_LARGE']);
    for (const [args, code, err] of cases) {
      const r = await cli(['patch', file, ...args]);
      expect(r.code, args.join(' ')).toBe(code);
      oneLine(r.stderr, err);
    }
    const legacy = writeSynth({ ...sampleOpts(), mappedRam: false, staleBytes: false });
    const l = await cli(['patch', legacy, '--block', 'pc.ram', '--at', '0', '--fill', '1', '--length', '1']);
    expect(l.code).toBe(1);
    oneLine(l.stderr, 'UNSUPPORTED');
    expect(l.stderr).toContain('convert it to mapped-ram first');
    const cut = writeSynth(sampleOpts());
    fs.truncateSync(cut, 100000);
    const c = await cli(['patch', cut, '--block', 'pc.ram', '--at', '0', '--fill', '1', '--length', '1']);
    expect(c.code).toBe(1);
    oneLine(c.stderr, 'PAGES_OUT_OF_FILE');
  });

  it('sparsify: text and --json, and exit 1 on a bad file', async () => {
    const file = writeSynth(sampleOpts());
    const t = await cli(['sparsify', file]);
    expect(t.code).toBe(0);
    expect(t.stdout).toMatch(/freed .* 1 zero pages cleared, 23 pages kept/);
    const j = await cli(['sparsify', file, '--json']);
    expect(JSON.parse(j.stdout)).toMatchObject({ pagesCleared: 0, pagesKept: 23, bytesFreed: 0 });
    const cut = writeSynth(sampleOpts());
    fs.truncateSync(cut, 100000);
    const c = await cli(['sparsify', cut]);
    expect(c.code).toBe(1);
    oneLine(c.stderr, 'PAGES_OUT_OF_FILE');
  });
});

function qemu10(): boolean {
  if (!qemuAvailable()) return false;
  const r = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' });
  const m = /version (\d+)\./.exec(r.stdout ?? '');
  return m !== null && Number(m[1]) >= 10;
}

describe.skipIf(!qemu10())('QEMU 10 and an interrupted patch', () => {
  it('refuses the file while the patch marker is on ("Not a migration stream"), and restores it once recovered', { timeout: 60_000 }, async () => {
    const file = path.join(dir, 'qemu-interrupted.snap');
    // Saved here, with the accelerator the load below uses: the committed fixtures were saved
    // under KVM and hold a kvmclock section that QEMU under TCG cannot load.
    const qemuArgs = ['-machine', 'q35', '-accel', kvmAvailable() ? 'kvm' : 'tcg', '-cpu', 'qemu64,kvmclock=off', '-m', '16M'];
    const src = await Qemu.start({ binary: 'qemu-system-x86_64', dir, args: qemuArgs });
    try {
      await src.setCapabilities({ 'mapped-ram': true });
      await src.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
      await src.cmd('migrate', { uri: `file:${file}` });
      await src.waitMigration(30_000);
      await src.quit();
    } finally {
      await src.kill();
    }
    // A patch of 64 KiB at 2 MiB, killed after its journal, once the marker is on.
    const k = await runChild({ mode: 'cli', argv: ['patch', file, '--block', 'pc.ram', '--at', '0x200000', '--fill', '0x5a', '--length', '64k'], layout: file, delayMs: 5 }, 'fsync:invalidate', 2);
    expect(k.signal).toBe('SIGKILL');
    expect(beside(file).journal).toBe(true);
    const load = async (): Promise<string> => {
      const q = await Qemu.start({ binary: 'qemu-system-x86_64', dir, args: qemuArgs, incoming: true });
      try {
        await q.setCapabilities({ 'mapped-ram': true });
        await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
        await q.waitMigration(30_000);
        const pm = path.join(dir, 'qemu-interrupted.pmem');
        await q.pmemsave(pm, 0x210000);
        return fs.readFileSync(pm).subarray(0x200000, 0x210000).every((b) => b === 0x5a) ? 'patched' : 'not patched';
      } catch (err) {
        return (err as Error).message;
      } finally {
        await q.kill();
      }
    };
    expect(await load()).toMatch(/Not a migration stream/);
    const r = await promisify(execFile)(process.execPath, [BIN, 'patch', file, '--recover']);
    expect(r.stdout).toMatch(/completed the interrupted patch/);
    expect(await load()).toBe('patched');
  });
});
