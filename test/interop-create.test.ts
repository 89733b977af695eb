/**
 * Issue 13, item 12: a RAM-only `create` (no template) for every
 * architecture in the fixtures, restored by a fresh QEMU of that
 * architecture (no -device loader on it, so the bytes can only come from
 * the file) and compared with pmemsave.
 *
 * QEMU's mapped-ram loader reads only the pages whose bit is set: the
 * others keep what the destination had before the load (firmware, ROM
 * copies). So the expected memory is, page by page, the image where it is
 * not zero and the destination's own pmemsave before the load elsewhere.
 * Each case skips, saying so, where its QEMU binary is missing.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qemu, qemuAvailable } from '../fixtures/qemu.js';
import { Snapshot } from '../reader/snapshot.js';
import { createSnapshot } from '../writer/create.js';
import { pageBytes } from './helpers/synth.js';

const MiB = 1 << 20;

interface Case {
  arch: string;
  binary: string;
  /** -machine value (an alias); QEMU records the versioned name, asked with query-machines. */
  machine: string;
  block: string;
  memory: number;
  /** Guest-physical address of the block's byte 0. */
  base: number;
  pageSize: number;
  /** What QEMU 10.0.2 writes in its own saves of this machine (format/target.ts). */
  targetPageBits?: number;
  args?: string[];
}

const CASES: Case[] = [
  { arch: 'x86_64 q35', binary: 'qemu-system-x86_64', machine: 'q35', block: 'pc.ram', memory: 16 * MiB, base: 0, pageSize: 4096 },
  { arch: 'x86_64 pc', binary: 'qemu-system-x86_64', machine: 'pc', block: 'pc.ram', memory: 16 * MiB, base: 0, pageSize: 4096 },
  { arch: 'aarch64 virt', binary: 'qemu-system-aarch64', machine: 'virt', block: 'mach-virt.ram', memory: 64 * MiB, base: 0x4000_0000, pageSize: 4096, targetPageBits: 12 },
  { arch: 'sparc64 sun4u', binary: 'qemu-system-sparc64', machine: 'sun4u', block: 'sun4u.ram', memory: 16 * MiB, base: 0, pageSize: 8192 },
  { arch: 'ppc64 pseries', binary: 'qemu-system-ppc64', machine: 'pseries', block: 'ppc_spapr.ram', memory: 256 * MiB, base: 0, pageSize: 4096 },
];

/** A guest image: random pages at the start, in the middle (a zero page inside the run) and at the end; none in x86's BIOS window 0xa0000-0xfffff. */
function image(c: Case, seed: number): Buffer {
  const img = Buffer.alloc(c.memory);
  const ps = c.pageSize;
  const pages = c.memory / ps;
  const at = [1, 2, Math.floor(pages / 2), Math.floor(pages / 2) + 2, Math.floor(pages / 2) + 3, pages - 2, pages - 1];
  for (const p of at) img.set(pageBytes(ps, seed + p), p * ps);
  return img;
}

describe('13.12 RAM-only create restored by QEMU on every fixture architecture', () => {
  let work: string;
  const started: Qemu[] = [];
  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-interop-create-'));
  });
  afterAll(async () => {
    for (const q of started) await q.kill();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  const start = async (c: Case, incoming: boolean): Promise<Qemu> => {
    const q = await Qemu.start({ binary: c.binary, dir: work, args: ['-machine', c.machine, '-accel', 'tcg', '-m', `${c.memory / MiB}M`, ...(c.args ?? [])], incoming });
    started.push(q);
    return q;
  };

  for (const c of CASES) {
    it(`13.12 RAM-only create for ${c.arch} carries target-page-bits as QEMU does and QEMU restores it`, { timeout: 90_000 }, async (ctx) => {
      if (!qemuAvailable(c.binary)) return ctx.skip(`${c.binary} is not installed`);
      const name = c.arch.replace(/\W+/g, '-');
      // The machine type as QEMU records it in a stream (the alias resolved).
      const probe = await start(c, false);
      const machines = (await probe.cmd('query-machines')) as { name: string; alias?: string }[];
      await probe.quit();
      const machineType = machines.find((m) => m.alias === c.machine)?.name ?? c.machine;

      const raw = path.join(work, `${name}.raw`);
      const img = image(c, 0x5eed);
      fs.writeFileSync(raw, img);
      const file = path.join(work, `${name}.snap`);
      // Neither --page-size nor --arch: the machine type decides both.
      const r = await createSnapshot(file, { images: [{ block: c.block, file: raw }], machine: machineType, fsync: false });
      expect(r.pageSize).toBe(c.pageSize);
      const s = await Snapshot.open(file);
      expect(s.model.configuration).toEqual({ machine: machineType, capabilities: ['mapped-ram'], ...(c.targetPageBits !== undefined ? { targetPageBits: c.targetPageBits } : {}) });
      await s.close();

      const q = await start(c, true);
      const before = path.join(work, `${name}.before`);
      await q.pmemsave(before, c.memory, c.base);
      await q.setCapabilities({ 'mapped-ram': true });
      await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
      await q.waitMigration(60_000);
      const after = path.join(work, `${name}.after`);
      await q.pmemsave(after, c.memory, c.base);
      await q.quit();

      const was = fs.readFileSync(before);
      const got = fs.readFileSync(after);
      const zero = Buffer.alloc(c.pageSize);
      const wrong: number[] = [];
      let loaded = 0;
      for (let at = 0; at < c.memory && wrong.length < 8; at += c.pageSize) {
        const page = img.subarray(at, at + c.pageSize);
        const want = page.equals(zero) ? was.subarray(at, at + c.pageSize) : page;
        if (!got.subarray(at, at + c.pageSize).equals(want)) wrong.push(at);
        else if (!page.equals(zero)) loaded++;
      }
      expect(wrong, `pages of ${c.block} that differ (byte offsets)`).toEqual([]);
      expect(loaded).toBe(7);
    });
  }
});
