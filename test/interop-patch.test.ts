/**
 * ramsnap patch (and sparsify) on a real QEMU save, restored by a fresh
 * QEMU started without -device loader options, so guest memory can only
 * have come from the file; compared byte for byte with the memory
 * intended (the source's pmemsave with the patches laid over it).
 * Skipped without QEMU 10.
 */
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { Qemu, kvmAvailable, qemuAvailable } from '../fixtures/qemu.js';
import { testBit } from '../format/bitmap.js';
import { Snapshot } from '../reader/snapshot.js';
import { pageBytes } from './helpers/synth.js';

const run = promisify(execFile);
const BIN = path.resolve('dist/analyze/bin.js');
const MiB = 1 << 20;
const MEM = 16 * MiB;
const PS = 4096;
const QEMU_ARGS = ['-machine', 'q35', '-accel', kvmAvailable() ? 'kvm' : 'tcg', '-cpu', 'qemu64,kvmclock=off', '-m', `${MEM / MiB}M`, '-smp', '1'];
/** On a guest that never ran, pmemsave shows the BIOS ROM here, not pc.ram (qemu-facts; fixtures/make.ts). */
const BIOS_WINDOW: [number, number] = [0xe0000, 0x100000];
/** Three pages loaded at 2 MiB: pages 0x200..0x202 present, 0x203 onward absent. */
const BLOB_AT = 0x200000;

function qemu10(): boolean {
  if (!qemuAvailable()) return false;
  const r = spawnSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' });
  const m = /version (\d+)\./.exec(r.stdout ?? '');
  return m !== null && Number(m[1]) >= 10;
}

describe.skipIf(!qemu10())('QEMU restores a patched mapped-ram save', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-interop-patch-'));
  const started: Qemu[] = [];
  const start = async (args: string[], incoming = false): Promise<Qemu> => {
    const q = await Qemu.start({ binary: 'qemu-system-x86_64', dir: work, args: [...QEMU_ARGS, ...args], incoming });
    started.push(q);
    return q;
  };
  afterAll(async () => {
    for (const q of started) await q.kill();
    fs.rmSync(work, { recursive: true, force: true });
  });

  /** Pages of [0, MEM) where the restored pmem differs from `want`, outside the BIOS window. */
  const restoredDiff = async (file: string, want: Buffer, name: string): Promise<number[]> => {
    const q = await start([], true);
    await q.setCapabilities({ 'mapped-ram': true });
    await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
    await q.waitMigration(30_000);
    const pm = path.join(work, `${name}.pmem`);
    await q.pmemsave(pm, MEM);
    await q.quit();
    const got = fs.readFileSync(pm);
    const bad: number[] = [];
    for (let at = 0; at < MEM; at += PS) {
      if (at >= BIOS_WINDOW[0] && at < BIOS_WINDOW[1]) continue;
      if (!got.subarray(at, at + PS).equals(want.subarray(at, at + PS))) bad.push(at);
    }
    return bad;
  };

  it('a range over a present page, an absent page and page boundaries, and a zeroed page', { timeout: 30_000 }, async () => {
    const blob = path.join(work, 'blob');
    fs.writeFileSync(blob, Buffer.concat([0, 1, 2].map((i) => Buffer.from(pageBytes(PS, 0xb10b + i)))));
    const snap = path.join(work, 'vm.snap');
    const src = await start(['-device', `loader,file=${blob},addr=0x${BLOB_AT.toString(16)},force-raw=on`]);
    await src.setCapabilities({ 'mapped-ram': true });
    await src.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    await src.cmd('migrate', { uri: `file:${snap}` });
    await src.waitMigration(30_000);
    const srcPmem = path.join(work, 'src.pmem');
    await src.pmemsave(srcPmem, MEM);
    await src.quit();

    // The range: from 3000 bytes into page 0x202 (present) through page 0x203 (absent) into 0x204 (absent).
    const s0 = await Snapshot.open(snap);
    const bm = s0.block('pc.ram').bitmap!;
    expect([0x200, 0x202, 0x203, 0x204].map((p) => testBit(bm, p))).toEqual([true, true, false, false]);
    await s0.close();
    const at = BLOB_AT + 2 * PS + 3000;
    const data = Buffer.from(pageBytes(PS + 2000, 0xda7a));
    const dataFile = path.join(work, 'patch.bin');
    fs.writeFileSync(dataFile, data);
    const p1 = await run(process.execPath, [BIN, 'patch', snap, '--block', 'pc.ram', '--at', `0x${at.toString(16)}`, '--data-file', dataFile, '--json']);
    expect(JSON.parse(p1.stdout)).toMatchObject({ firstPage: 0x202, pages: 3, pagesWritten: 3, bitsSet: 2, bitsCleared: 0 });
    // And a whole present page made zero: its bit is cleared.
    const p2 = await run(process.execPath, [BIN, 'patch', snap, '--block', 'pc.ram', '--at', `0x${BLOB_AT.toString(16)}`, '--fill', '0', '--length', '4k', '--json']);
    expect(JSON.parse(p2.stdout)).toMatchObject({ firstPage: 0x200, pages: 1, bitsSet: 0, bitsCleared: 1 });

    // pc.ram sits at guest physical 0 on a 16 MiB q35: block offset = guest address.
    const want = fs.readFileSync(srcPmem);
    data.copy(want, at);
    want.fill(0, BLOB_AT, BLOB_AT + PS);

    const s1 = await Snapshot.open(snap);
    const mem = Buffer.from(await s1.read('pc.ram', 0, MEM));
    await s1.close();
    expect(mem.subarray(0, BIOS_WINDOW[0]).equals(want.subarray(0, BIOS_WINDOW[0]))).toBe(true);
    expect(mem.subarray(BIOS_WINDOW[1]).equals(want.subarray(BIOS_WINDOW[1]))).toBe(true);

    expect(await restoredDiff(snap, want, 'patched')).toEqual([]);

    // Sparsified, QEMU still restores the same memory.
    const sp = await run(process.execPath, [BIN, 'sparsify', snap, '--json']);
    expect(JSON.parse(sp.stdout).pagesCleared).toBe(0);
    expect(await restoredDiff(snap, want, 'sparsified')).toEqual([]);
  });
});
