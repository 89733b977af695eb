/**
 * The dirty guest (fixtures/guest, fixtures/dirty-guest.ts): the checker on
 * synthetic images, the committed kernel against a rebuild, and the real
 * kernel under QEMU: it progresses, stops when stopped, leaves a consistent
 * image, and QEMU's own save/restore reproduces that image byte for byte.
 * The live tests are skipped without QEMU 9+.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  PAGE_SIZE,
  RECORD_ADDR,
  RECORD_MAGIC,
  RECORD_VERSION,
  STATUS_RUNNING,
  checkDirtyGuestMemory,
  dirtyGuestPage,
  dirtyKernelPath,
  measureDirtyRate,
  readDirtyGuestRecord,
  startDirtyGuest,
  type DirtyGuest,
  type StreamPosition,
} from '../../fixtures/dirty-guest.js';
import { Qemu, kvmAvailable, qemuAvailable, sleep } from '../../fixtures/qemu.js';
import { Snapshot } from '../../reader/snapshot.js';

const MiB = 1 << 20;

// ---------------------------------------------------------------------------
// Synthetic images: what the guest would leave at one instant.

interface SynthSpec {
  base: number;
  pages: number;
  hotPages: number;
  cold: StreamPosition;
  hot: StreamPosition;
}

/** A pmemsave-like image (guest physical address = index) of the guest at `spec`'s instant, no page mid-write. */
function synthImage(spec: SynthSpec): Uint8Array {
  const mem = new Uint8Array(spec.base + spec.pages * PAGE_SIZE);
  const rec = new DataView(mem.buffer, RECORD_ADDR, 64);
  const fields = [RECORD_MAGIC, RECORD_VERSION, spec.base, spec.pages, spec.hotPages, 1, 0, STATUS_RUNNING, 0, spec.pages * PAGE_SIZE];
  fields.forEach((v, i) => rec.setUint32(i * 4, v, true));
  rec.setUint32(40, spec.cold.gen, true);
  rec.setUint32(44, spec.cold.cursor, true);
  rec.setUint32(48, spec.hot.gen, true);
  rec.setUint32(52, spec.hot.cursor, true);
  rec.setBigUint64(56, 12345n, true);
  const fill = (first: number, count: number, pos: StreamPosition) => {
    for (let p = first; p < first + count; p++) {
      const gen = p < pos.cursor ? pos.gen : pos.gen - 1;
      if (gen > 0) mem.set(dirtyGuestPage(p, gen), spec.base + p * PAGE_SIZE);
    }
  };
  fill(0, spec.hotPages, spec.hot);
  fill(spec.hotPages, spec.pages - spec.hotPages, spec.cold);
  return mem;
}

/** Page `p` caught after the guest wrote its first `words` words of generation `gen`. */
function writePrefix(mem: Uint8Array, base: number, p: number, gen: number, words: number): void {
  mem.set(dirtyGuestPage(p, gen).subarray(0, words * 4), base + p * PAGE_SIZE);
}

const BASE = 0x200000;
const SPEC: SynthSpec = { base: BASE, pages: 64, hotPages: 8, cold: { gen: 5, cursor: 30 }, hot: { gen: 40, cursor: 3 } };

describe('checkDirtyGuestMemory on synthetic images', () => {
  it('accepts an instant of both sweeps, with each cursor page mid-write', () => {
    const mem = synthImage(SPEC);
    let r = checkDirtyGuestMemory(mem);
    expect(r.problems).toEqual([]);
    expect(r).toMatchObject({ consistent: true, pagesChecked: 64, torn: 0, inProgress: 0 });
    expect(r.streams.map((s) => [s.name, s.generations.min, s.generations.max])).toEqual([
      ['hot', 39, 40],
      ['cold', 4, 5],
    ]);
    expect(r.generations).toEqual({ min: 4, max: 40 });

    writePrefix(mem, BASE, 30, 5, 700); // the cold cursor page, 700 words into generation 5
    writePrefix(mem, BASE, 3, 40, 3); // the hot one, just its header
    r = checkDirtyGuestMemory(mem);
    expect(r.problems).toEqual([]);
    expect(r).toMatchObject({ consistent: true, torn: 2, inProgress: 2 });
    // The same image judged by the pages alone.
    expect(checkDirtyGuestMemory(mem, { useRecord: false })).toMatchObject({ consistent: true, torn: 2, inProgress: 2 });
  });

  it('accepts the first sweep over never-written pages and a wrap caught on its first page', () => {
    const first = synthImage({ ...SPEC, cold: { gen: 1, cursor: 8 }, hot: { gen: 1, cursor: 0 } });
    writePrefix(first, BASE, 8, 1, 100);
    expect(checkDirtyGuestMemory(first).problems).toEqual([]);
    expect(checkDirtyGuestMemory(first, { useRecord: false }).problems).toEqual([]);

    const wrap = synthImage({ ...SPEC, cold: { gen: 6, cursor: 8 } }); // cold pages all at 5 ...
    writePrefix(wrap, BASE, 8, 6, 3); // ... the first one 3 words into 6
    const r = checkDirtyGuestMemory(wrap, { useRecord: false });
    expect(r.problems).toEqual([]);
    expect(r.streams.find((s) => s.name === 'cold')?.position).toEqual({ gen: 6, cursor: 8 });
  });

  it('finds a torn page away from the cursor', () => {
    const mem = synthImage(SPEC);
    writePrefix(mem, BASE, 50, 5, 512); // page 50 holds generation 4; half of 5 over it is no instant
    for (const useRecord of [true, false]) {
      const r = checkDirtyGuestMemory(mem, { useRecord });
      expect(r.consistent).toBe(false);
      expect(r.torn).toBe(1);
      expect(r.inProgress).toBe(0);
      expect(r.problems.join('\n')).toMatch(/page 50 .*torn/);
    }
  });

  it('finds a torn page at the cursor that is not the new generation over the old', () => {
    const mem = synthImage(SPEC);
    writePrefix(mem, BASE, 30, 3, 600); // generation 3 over 4: the guest never writes backwards
    const r = checkDirtyGuestMemory(mem);
    expect(r.consistent).toBe(false);
    expect(r.torn).toBe(1);
    expect(r.inProgress).toBe(0);
    expect(r.problems.join('\n')).toMatch(/page 30 .*cursor/);
  });

  it('finds a flipped word', () => {
    const mem = synthImage(SPEC);
    mem[BASE + 20 * PAGE_SIZE + 1234] ^= 0x40;
    const r = checkDirtyGuestMemory(mem);
    expect(r).toMatchObject({ consistent: false, torn: 1 });
    expect(r.problems[0]).toMatch(/page 20 .*torn.*word 308/);
  });

  it('finds whole pages of the wrong generation', () => {
    const stale = synthImage(SPEC);
    stale.set(dirtyGuestPage(12, 3), BASE + 12 * PAGE_SIZE); // should be 5: a page lost two sweeps ago
    const future = synthImage(SPEC);
    future.set(dirtyGuestPage(40, 5), BASE + 40 * PAGE_SIZE); // should be 4: a second boundary
    for (const mem of [stale, future]) {
      for (const useRecord of [true, false]) {
        const r = checkDirtyGuestMemory(mem, { useRecord });
        expect(r.torn).toBe(0);
        expect(r.consistent).toBe(false);
        expect(r.problems.join('\n')).toMatch(/has generation/);
      }
    }
    // The record and the pages disagree: the pages alone are an instant, but not the published one.
    const moved = synthImage({ ...SPEC, cold: { gen: 5, cursor: 20 } });
    new DataView(moved.buffer).setUint32(RECORD_ADDR + 44, 25, true);
    expect(checkDirtyGuestMemory(moved).consistent).toBe(false);
    expect(checkDirtyGuestMemory(moved, { useRecord: false }).consistent).toBe(true);
  });

  it('finds a page at the wrong address and a missing page', () => {
    const misplaced = synthImage(SPEC);
    misplaced.set(dirtyGuestPage(44, 4), BASE + 45 * PAGE_SIZE);
    let r = checkDirtyGuestMemory(misplaced);
    expect(r.consistent).toBe(false);
    expect(r.problems[0]).toMatch(/page 45 .*header says page 44/);

    const zeroed = synthImage(SPEC);
    zeroed.fill(0, BASE + 10 * PAGE_SIZE, BASE + 11 * PAGE_SIZE);
    r = checkDirtyGuestMemory(zeroed);
    expect(r.consistent).toBe(false);
    expect(r.problems[0]).toMatch(/page 10 has generation 0, expected 5/);
  });

  it('says so when there is no record, a short image or a rejected parameter', () => {
    const none = new Uint8Array(BASE + 64 * PAGE_SIZE);
    expect(checkDirtyGuestMemory(none)).toMatchObject({ consistent: false, pagesChecked: 0 });
    expect(checkDirtyGuestMemory(none).problems[0]).toMatch(/no record/);
    // Given the layout, an untouched image is the instant before the first write.
    expect(checkDirtyGuestMemory(none, { layout: { base: BASE, pages: 64, hotPages: 0 } })).toMatchObject({ consistent: true, generations: { min: 0, max: 0 } });

    const short = synthImage(SPEC).subarray(0, BASE + 10 * PAGE_SIZE);
    expect(checkDirtyGuestMemory(short).problems[0]).toMatch(/ends before the working set/);

    const bad = synthImage(SPEC);
    new DataView(bad.buffer).setUint32(RECORD_ADDR + 28, 2, true);
    new DataView(bad.buffer).setUint32(RECORD_ADDR + 32, 3, true);
    expect(checkDirtyGuestMemory(bad).problems[0]).toMatch(/rejected its parameters: base \+ ws beyond the RAM/);
  });

  it('caps the problem list', () => {
    const mem = synthImage(SPEC);
    for (let p = 40; p < 64; p++) mem[BASE + p * PAGE_SIZE + 100] ^= 1;
    const r = checkDirtyGuestMemory(mem, { maxProblems: 3 });
    expect(r.problems).toHaveLength(3);
    expect(r.problemCount).toBe(24);
    expect(r.torn).toBe(24);
  });
});

// ---------------------------------------------------------------------------

function haveBinutils(): boolean {
  return ['as', 'ld'].every((t) => spawnSync(t, ['--version'], { encoding: 'utf8' }).status === 0);
}

describe('the committed kernel', () => {
  it.skipIf(!haveBinutils())('is what fixtures/guest/build.sh makes from dirty.S', () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-dirty-build-')), 'dirty.elf');
    try {
      const r = spawnSync('sh', [path.join(path.dirname(dirtyKernelPath()), 'build.sh'), out], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      // Built with GNU binutils 2.40 (Debian 12); another version may lay the file out differently.
      expect(Buffer.compare(fs.readFileSync(out), fs.readFileSync(dirtyKernelPath()))).toBe(0);
    } finally {
      fs.rmSync(path.dirname(out), { recursive: true, force: true });
    }
  });

  it('is a 32-bit ELF with a multiboot header in its first 8 KiB', () => {
    const elf = fs.readFileSync(dirtyKernelPath());
    expect(elf.subarray(0, 5)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1]));
    const at = elf.indexOf(Buffer.from([0x02, 0xb0, 0xad, 0x1b]));
    expect(at).toBeGreaterThanOrEqual(0);
    expect(at).toBeLessThan(8192);
    expect(at % 4).toBe(0);
    expect((elf.readUInt32LE(at) + elf.readUInt32LE(at + 4) + elf.readUInt32LE(at + 8)) >>> 0).toBe(0);
  });
});

// ---------------------------------------------------------------------------

const ACCELS: ('kvm' | 'tcg')[] = kvmAvailable() ? ['kvm', 'tcg'] : ['tcg'];
const PARAMS = { ws: 64 * MiB, hot: 4 * MiB };

describe.skipIf(!qemuAvailable())('the dirty guest under QEMU', () => {
  let work: string;
  const guests: DirtyGuest[] = [];
  const extraQemus: Qemu[] = [];
  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-dirty-'));
  });
  afterAll(async () => {
    for (const q of extraQemus) await q.kill();
    for (const g of guests) await g.stop(); // also removes the shared RAM file
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  async function start(accel: 'kvm' | 'tcg'): Promise<DirtyGuest> {
    const g = await startDirtyGuest({ dir: work, accel, params: PARAMS });
    guests.push(g);
    return g;
  }

  for (const accel of ACCELS) {
    it(`${accel}: progresses, stops when stopped, and leaves a consistent image`, { timeout: 120_000 }, async () => {
      const g = await start(accel);
      const r0 = readDirtyGuestRecord(g.ramPath);
      expect(r0).toMatchObject({ base: 4 * MiB, pages: 64 * MiB / PAGE_SIZE, hotPages: 4 * MiB / PAGE_SIZE, hotRate: 1, delay: 0 });

      const rate = await measureDirtyRate(g.ramPath, 1000);
      console.log(`dirty guest under ${accel}: ${Math.round(rate)} pages/s (${(rate * PAGE_SIZE / MiB).toFixed(0)} MiB/s)`);
      expect(rate).toBeGreaterThan(1000);
      const r1 = readDirtyGuestRecord(g.ramPath);
      expect(r1.writes).toBeGreaterThan(r0.writes);
      expect(r1.cold.gen * 1e9 + r1.cold.cursor).toBeGreaterThan(r0.cold.gen * 1e9 + r0.cold.cursor);

      await g.qemu.cmd('stop');
      const first = fs.readFileSync(g.ramPath);
      await sleep(300);
      const second = fs.readFileSync(g.ramPath);
      expect(Buffer.compare(first, second), 'the shared file changed after stop').toBe(0);

      const r = checkDirtyGuestMemory(first);
      expect(r.problems).toEqual([]);
      expect(r.consistent).toBe(true);
      expect(r.pagesChecked).toBe(16384);
      expect(r.torn).toBeLessThanOrEqual(2);
      const cold = r.streams.find((s) => s.name === 'cold')!;
      expect(cold.generations.max - cold.generations.min).toBeLessThanOrEqual(1);
      expect(cold.position).toEqual(r.record!.cold);

      await g.stop();
      expect(fs.existsSync(g.ramPath)).toBe(false);
    });
  }

  it('a QEMU save (legacy stream) restored by a fresh QEMU without -kernel is the image at the pause, byte for byte', { timeout: 120_000 }, async () => {
    const g = await start(ACCELS[0]);
    await sleep(300);
    await g.qemu.cmd('stop');
    const atPause = fs.readFileSync(g.ramPath);
    const saved = path.join(work, 'legacy.mig');
    await g.qemu.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 }); // the default 128 MiB/s throttles file saves
    await g.qemu.cmd('migrate', { uri: `file:${saved}` });
    await g.qemu.waitMigration();
    expect(await g.qemu.cmd('query-status')).toMatchObject({ status: 'postmigrate', running: false });
    // Saving did not touch guest memory.
    expect(Buffer.compare(fs.readFileSync(g.ramPath), atPause)).toBe(0);
    await g.stop();

    const dst = await Qemu.start({ binary: 'qemu-system-x86_64', args: g.destinationArgs, dir: work, incoming: true });
    extraQemus.push(dst);
    await dst.cmd('migrate-incoming', { uri: `file:${saved}` });
    await dst.waitMigration();
    const pmem = path.join(work, 'restored.pmem');
    await dst.pmemsave(pmem, g.size);
    const restored = fs.readFileSync(pmem);
    expect(restored.length).toBe(atPause.length);
    // All of it: with the firmware run, the 0xa0000-0xfffff window shows RAM on both sides.
    expect(firstDifference(restored, atPause)).toBeUndefined();
    expect(checkDirtyGuestMemory(restored).consistent).toBe(true);

    // And the restored guest carries on from where it was.
    const before = checkDirtyGuestMemory(restored).record!;
    await dst.cmd('cont');
    await sleep(500);
    await dst.cmd('stop');
    await dst.pmemsave(pmem, g.size);
    const after = fs.readFileSync(pmem);
    const r = checkDirtyGuestMemory(after);
    expect(r.problems).toEqual([]);
    expect(r.record!.writes).toBeGreaterThan(before.writes);
    await dst.quit();
  });

  it('x-ignore-shared without mapped-ram leaves the shared RAM out, each block with its address; the source can carry on', { timeout: 120_000 }, async () => {
    const g = await start('tcg'); // the stream does not depend on the accelerator, and TCG boots in a fraction of a second
    await g.qemu.cmd('stop');
    const info = String(await g.qemu.cmd('human-monitor-command', { 'command-line': 'info ramblock' }));
    expect(info).toMatch(/^\s*pc\.ram\s+4 KiB\s+0x0{16}\s+0x0*10000000\s/m);
    // The stream's machine name is the QOM type without its suffix.
    const type = String(await g.qemu.cmd('qom-get', { path: '/machine', property: 'type' }));
    expect(type).toBe('pc-i440fx-10.0-machine');

    await g.qemu.setCapabilities({ 'x-ignore-shared': true });
    await g.qemu.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    const saved = path.join(work, 'ignore-shared.mig');
    await g.qemu.cmd('migrate', { uri: `file:${saved}` });
    await g.qemu.waitMigration();
    expect(fs.statSync(saved).size).toBeLessThan(MiB); // 256 MiB of RAM, 64 MiB of it dirty: none of it here

    const snap = await Snapshot.open(saved);
    try {
      expect(snap.model.configuration?.machine).toBe(type.replace(/-machine$/, ''));
      expect(snap.model.configuration?.capabilities).toEqual(['x-ignore-shared']);
      const blocks = Object.fromEntries(snap.blocks.map((b) => [b.name, b]));
      expect(blocks['pc.ram']).toMatchObject({ usedLength: 256 * MiB, addr: 0, pagesPresent: 0 });
      expect(blocks['pc.bios']).toMatchObject({ usedLength: 256 * 1024, addr: 0xfffc0000 });
      expect(blocks['pc.rom']).toMatchObject({ addr: 0xc0000 });
    } finally {
      await snap.close();
    }

    expect(await g.qemu.cmd('query-status')).toMatchObject({ status: 'postmigrate', running: false });
    const before = readDirtyGuestRecord(g.ramPath).writes;
    await g.qemu.cmd('cont');
    expect(await g.qemu.cmd('query-status')).toMatchObject({ status: 'running', running: true });
    await sleep(200);
    expect(readDirtyGuestRecord(g.ramPath).writes).toBeGreaterThan(before);
    await g.stop();
  });

  it('throttles with delay=', { timeout: 120_000 }, async () => {
    const g = await startDirtyGuest({ dir: work, accel: 'tcg', params: { ws: 8 * MiB, delay: 100_000 } });
    guests.push(g);
    const slow = await measureDirtyRate(g.ramPath, 1000);
    console.log(`dirty guest under tcg with delay=100000: ${Math.round(slow)} pages/s`);
    expect(slow).toBeGreaterThan(0);
    expect(slow).toBeLessThan(50_000);
    await g.qemu.cmd('stop');
    expect(checkDirtyGuestMemory(fs.readFileSync(g.ramPath)).problems).toEqual([]);
    await g.stop();
  });
});

function firstDifference(a: Uint8Array, b: Uint8Array): string | undefined {
  for (let off = 0; off < a.length; off += PAGE_SIZE) {
    if (Buffer.compare(a.subarray(off, off + PAGE_SIZE), b.subarray(off, off + PAGE_SIZE)) !== 0) return `page at 0x${off.toString(16)}`;
  }
  return undefined;
}
