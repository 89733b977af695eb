/**
 * What ramsnap writes, restored by a live QEMU: create (with a template,
 * and RAM-only) and convert (legacy -> mapped-ram, mapped-ram -> legacy),
 * each loaded into a fresh QEMU started with no -device loader (so the
 * bytes can only have come from the file), then compared with the memory
 * intended, byte for byte. Skipped without QEMU.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qemu, kvmAvailable, qemuAvailable } from '../fixtures/qemu.js';
import { Snapshot } from '../reader/snapshot.js';
import { convertSnapshot } from '../writer/convert.js';
import { createSnapshot } from '../writer/create.js';
import { pageBytes } from './helpers/synth.js';

const MiB = 1 << 20;
const MEM = 16 * MiB;
const PS = 4096;
/**
 * kvmclock off: SeaBIOS enables it, and KVM rewrites the guest's pvclock
 * page (its version field) when the destination restores the clock MSR, so
 * that page would differ from the file for reasons of the hypervisor's.
 */
const QEMU_ARGS = ['-machine', 'q35', '-accel', kvmAvailable() ? 'kvm' : 'tcg', '-cpu', 'qemu64,kvmclock=off', '-m', `${MEM / MiB}M`, '-smp', '1'];
/**
 * On an x86 guest whose firmware has not run, the chipset maps the BIOS ROM
 * at 0xe0000-0xfffff, so pmemsave shows the ROM there, not pc.ram (see
 * fixtures/make.ts X86_CANDIDATE_EXCLUSIONS); pc.ram itself is compared in
 * full through a re-save.
 */
const BIOS_WINDOW: [number, number] = [0xe0000, 0x100000];

/** QEMU 10 or later: the files here are compared with what QEMU 10.0.2 writes (switchover-start, machine types). */
function qemu10(): boolean {
  if (!qemuAvailable()) return false;
  const r = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' });
  const m = /version (\d+)\./.exec(r.stdout ?? '');
  return m !== null && Number(m[1]) >= 10;
}

/** 16 MiB of guest RAM: random pages at several addresses, zero pages between and inside the runs, nothing in 0xa0000-0xfffff. */
function memoryImage(seed: number): Uint8Array {
  const img = new Uint8Array(MEM);
  const runs: [number, number][] = [
    [0x1000, 3],
    [0x68000, 2],
    [0x100000, 8],
    [0x543000, 1],
    [0xa34000, 5],
    [MEM - 2 * PS, 2],
  ];
  for (const [addr, pages] of runs) {
    for (let p = 0; p < pages; p++) if (p !== 1) img.set(pageBytes(PS, seed + addr + p), addr + p * PS);
  }
  return img;
}

describe.skipIf(!qemu10())('QEMU restores what ramsnap writes', () => {
  let work: string;
  let machineType: string;
  const started: Qemu[] = [];
  const start = async (opts: { incoming?: boolean; args?: string[] } = {}): Promise<Qemu> => {
    const q = await Qemu.start({ binary: 'qemu-system-x86_64', dir: work, args: [...QEMU_ARGS, ...(opts.args ?? [])], incoming: opts.incoming });
    started.push(q);
    return q;
  };
  const save = async (q: Qemu, file: string, mappedRam: boolean, bandwidth = 2 ** 40): Promise<Record<string, number>> => {
    await q.setCapabilities({ 'mapped-ram': mappedRam });
    await q.cmd('migrate-set-parameters', { 'max-bandwidth': bandwidth });
    await q.cmd('migrate', { uri: `file:${file}` });
    return ((await q.waitMigration(30_000)).ram ?? {}) as Record<string, number>;
  };
  /** A fresh QEMU (no loader devices) that loaded `file`; paused afterwards. */
  const restore = async (file: string, mappedRam: boolean): Promise<Qemu> => {
    const q = await start({ incoming: true });
    await q.setCapabilities({ 'mapped-ram': mappedRam });
    await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
    await q.waitMigration(30_000);
    return q;
  };
  /** pmemsave of [0, MEM) compared with `want`, outside `exclude`; returns the first differing offsets. */
  const pmemDiff = async (q: Qemu, want: Uint8Array, name: string, exclude: [number, number][] = []): Promise<number[]> => {
    const pm = path.join(work, `${name}.pmem`);
    await q.pmemsave(pm, MEM);
    const got = fs.readFileSync(pm);
    const bad: number[] = [];
    for (let at = 0; at < MEM && bad.length < 8; at += PS) {
      if (exclude.some(([a, b]) => at >= a && at < b)) continue;
      if (!got.subarray(at, at + PS).equals(Buffer.from(want.buffer, want.byteOffset + at, PS))) bad.push(at);
    }
    return bad;
  };
  /** pc.ram as a re-save of the running destination holds it (the whole block, no window to exclude). */
  const pcRamAfterResave = async (q: Qemu, name: string): Promise<Buffer> => {
    const f = path.join(work, `${name}.resave`);
    await save(q, f, false);
    const s = await Snapshot.open(f);
    try {
      return Buffer.from(await s.read('pc.ram', 0, MEM));
    } finally {
      await s.close();
    }
  };

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-interop-writer-'));
    const q = await start();
    const machines = (await q.cmd('query-machines')) as { name: string; alias?: string }[];
    machineType = machines.find((m) => m.alias === 'q35')!.name;
    await q.quit();
  });
  afterAll(async () => {
    for (const q of started) await q.kill();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('create with a template: the VM restores with the new pc.ram', { timeout: 30_000 }, async () => {
    const tpl = path.join(work, 'tpl.snap');
    const src = await start();
    await save(src, tpl, true);
    await src.quit();
    const img = memoryImage(1);
    const raw = path.join(work, 'a.raw');
    fs.writeFileSync(raw, img);
    const out = path.join(work, 'a.snap');
    await createSnapshot(out, { images: [{ block: 'pc.ram', file: raw }], template: tpl, fsync: false });
    const q = await restore(out, true);
    expect(await pmemDiff(q, img, 'a', [BIOS_WINDOW])).toEqual([]);
    expect((await pcRamAfterResave(q, 'a')).equals(Buffer.from(img))).toBe(true);
    await q.quit();
  });

  it('RAM-only create: QEMU loads it and has exactly that pc.ram', { timeout: 30_000 }, async () => {
    const img = memoryImage(2);
    const raw = path.join(work, 'b.raw');
    fs.writeFileSync(raw, img);
    const out = path.join(work, 'b.snap');
    await createSnapshot(out, { images: [{ block: 'pc.ram', file: raw }], machine: machineType, fsync: false });
    const q = await restore(out, true);
    expect(await pmemDiff(q, img, 'b', [BIOS_WINDOW])).toEqual([]);
    expect((await pcRamAfterResave(q, 'b')).equals(Buffer.from(img))).toBe(true);
    await q.quit();
  });

  /** A guest with known blobs (loader devices) on the source only. */
  const blobArgs = (img: Uint8Array, name: string): string[] => {
    const args: string[] = [];
    for (const at of [0x100000, 0xa34000]) {
      const f = path.join(work, `${name}-${at.toString(16)}.blob`);
      fs.writeFileSync(f, img.subarray(at, at + 8 * PS));
      args.push('-device', `loader,file=${f},addr=0x${at.toString(16)},force-raw=on`);
    }
    return args;
  };

  it('convert legacy -> mapped-ram of a live save (pages sent repeatedly): restores as the source ended', { timeout: 40_000 }, async () => {
    const img = memoryImage(3);
    const src = await start({ args: blobArgs(img, 'c') });
    await src.cmd('cont');
    await new Promise((r) => setTimeout(r, 300));
    const leg = path.join(work, 'c.leg');
    // A slow save while SeaBIOS runs: dirtied pages are sent again.
    const stats = await save(src, leg, false, 2 * MiB);
    const truth = path.join(work, 'c.truth');
    await src.pmemsave(truth, MEM);
    await src.quit();
    const input = await Snapshot.open(leg);
    const present = input.blocks.reduce((n, b) => n + b.pagesPresent, 0);
    await input.close();
    expect(stats.normal, 'QEMU sent some pages more than once').toBeGreaterThan(present);
    const out = path.join(work, 'c.mr');
    await convertSnapshot(leg, out, { to: 'mapped-ram', fsync: false });
    const q = await restore(out, true);
    // The guest ran before the save, so the firmware has mapped RAM everywhere: no window to leave out.
    const diff = await pmemDiff(q, fs.readFileSync(truth), 'c');
    expect(diff).toEqual([]);
    await q.quit();
  });

  it('convert mapped-ram -> legacy: restores without mapped-ram, and the RAM section is QEMU\'s own', { timeout: 40_000 }, async () => {
    const img = memoryImage(4);
    const src = await start({ args: blobArgs(img, 'd') });
    const mr = path.join(work, 'd.mr');
    const qemuLeg = path.join(work, 'd.qemu-leg');
    await save(src, mr, true);
    // QEMU saves a VM once: a second one, started the same way and never run, has the same memory.
    const twin = await start({ args: blobArgs(img, 'd') });
    await save(twin, qemuLeg, false);
    await twin.quit();
    const truth = path.join(work, 'd.truth');
    await src.pmemsave(truth, MEM);
    await src.quit();
    const out = path.join(work, 'd.leg');
    await convertSnapshot(mr, out, { to: 'legacy', fsync: false });
    const q = await restore(out, false);
    expect(await pmemDiff(q, fs.readFileSync(truth), 'd')).toEqual([]);
    await q.quit();
    // Same memory, same QEMU: the stream up to the device sections is byte for byte what QEMU wrote.
    const s = await Snapshot.open(out);
    const ramEnd = s.model.devices[0].section.offset;
    await s.close();
    expect(Buffer.compare(fs.readFileSync(out).subarray(0, ramEnd), fs.readFileSync(qemuLeg).subarray(0, ramEnd))).toBe(0);
  });
});
