/**
 * ramsnap restore against real QEMU 10: the snapshot's RAM mapped from the
 * file (copy-on-write) plus a small stream, and QEMU's own restore with
 * --copy. Memory is compared with the source's pmemsave; the snapshot file
 * must be byte for byte unchanged afterwards. Skipped without QEMU 10.
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkDirtyGuestMemory, readDirtyGuestRecord, startDirtyGuest } from '../../fixtures/dirty-guest.js';
import { Qemu, kvmAvailable, qemuAvailable, sleep } from '../../fixtures/qemu.js';
import { Snapshot } from '../../reader/snapshot.js';
import { fixtureFiles } from '../helpers/fixtures.js';
import { pageBytes } from '../helpers/synth.js';

const run = promisify(execFile);
const BIN = path.resolve('dist/analyze/bin.js');
const MiB = 1 << 20;
const MEM = 16 * MiB;
const PS = 4096;
const ACCEL = ['-accel', kvmAvailable() ? 'kvm' : 'tcg', '-cpu', 'qemu64,kvmclock=off', '-smp', '1'];
/** On a guest that never ran, pmemsave shows the BIOS ROM here, not pc.ram (qemu-facts). */
const BIOS_WINDOW: [number, number] = [0xe0000, 0x100000];
const BLOB_AT = 0x200000;

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [BIN, ...args]);
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** Pages of pc.ram whose bit is clear but whose bytes in the file are not zero. */
async function stalePagesOf(file: string): Promise<number> {
  const s = await Snapshot.open(file);
  try {
    const b = s.block('pc.ram');
    let stale = 0;
    for (let p = 0; p < b.pages; p++) {
      if (b.bitmap![p >> 3] & (1 << (p & 7))) continue;
      const bytes = await s.source.read(b.mappedRam!.pagesOffset + p * PS, PS, 'page');
      if (bytes.some((x) => x !== 0)) stale++;
    }
    return stale;
  } finally {
    await s.close();
  }
}

function sha(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Page offsets of [0, size) where a and b differ, outside `skip`. */
function differingPages(a: Buffer, b: Buffer, size: number, skip?: [number, number]): number[] {
  const bad: number[] = [];
  for (let at = 0; at < size; at += PS) {
    if (skip && at >= skip[0] && at < skip[1]) continue;
    if (!a.subarray(at, at + PS).equals(b.subarray(at, at + PS))) bad.push(at);
  }
  return bad;
}

describe.skipIf(!qemuAvailable())('ramsnap restore maps a snapshot into QEMU', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-restore-'));
  const started: Qemu[] = [];
  /** Second QMP monitor of each QEMU, for the CLI (a QMP socket takes one client at a time). */
  const cliSocket = new Map<Qemu, string>();
  const start = async (args: string[], incoming = false): Promise<Qemu> => {
    const sock = path.join(work, `cli-${started.length}.sock`);
    const q = await Qemu.start({ binary: 'qemu-system-x86_64', dir: work, args: [...ACCEL, '-qmp', `unix:${sock},server=on,wait=off`, ...args], incoming });
    started.push(q);
    cliSocket.set(q, sock);
    return q;
  };
  const dstSocket = (q: Qemu): string => cliSocket.get(q) as string;
  afterAll(async () => {
    for (const q of started) await q.kill();
    fs.rmSync(work, { recursive: true, force: true });
  });

  /** Saves a guest with known bytes; `runMs` > 0 lets it boot first. Returns the snapshot and the source's pmemsave. */
  const save = async (name: string, machine: string, runMs: number, extra: string[] = []): Promise<{ snap: string; pmem: string }> => {
    const blob = path.join(work, `${name}.blob`);
    fs.writeFileSync(blob, Buffer.concat([0, 1, 2].map((i) => Buffer.from(pageBytes(PS, 0x5e57 + i)))));
    const snap = path.join(work, `${name}.snap`);
    const src = await start(['-machine', machine, '-m', `${MEM / MiB}M`, '-device', `loader,file=${blob},addr=0x${BLOB_AT.toString(16)},force-raw=on`, ...extra]);
    if (runMs > 0) {
      await src.cmd('cont');
      await sleep(runMs);
      await src.cmd('stop');
    }
    await src.setCapabilities({ 'mapped-ram': true });
    await src.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    await src.cmd('migrate', { uri: `file:${snap}` });
    await src.waitMigration(60_000);
    const pmem = path.join(work, `${name}.src.pmem`);
    await src.pmemsave(pmem, MEM);
    await src.quit();
    return { snap, pmem };
  };

  const qemuArgs = async (snap: string): Promise<string[]> => {
    const r = await cli(['restore', snap, '--print-qemu-args', '--json']);
    expect(r.code, r.stderr).toBe(0);
    return (JSON.parse(r.stdout) as { args: string[] }).args;
  };

  let booted: { snap: string; pmem: string };
  beforeAll(async () => {
    booted = await save('booted', 'q35', 400);
  }, 120_000);

  it('prints the arguments that map pc.ram at its page region, privately and read-only', async () => {
    const s = await Snapshot.open(booted.snap);
    const pagesOffset = s.block('pc.ram').mappedRam!.pagesOffset;
    await s.close();
    const text = await cli(['restore', booted.snap, '--print-qemu-args']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout.trim()).toBe(
      `-machine pc-q35-10.0,memory-backend=pc.ram -m 16M -object memory-backend-file,id=pc.ram,size=${MEM},mem-path=${booted.snap},offset=${pagesOffset},share=off,readonly=on,rom=off,reserve=off`,
    );
    const json = JSON.parse((await cli(['restore', booted.snap, '--print-qemu-args', '--json'])).stdout);
    expect(json).toMatchObject({ block: 'pc.ram', found: 'machine RAM', pagesOffset });
  });

  it('q35, booted: memory equals the source; after cont and a while running, the file is unchanged', { timeout: 120_000 }, async () => {
    const before = sha(booted.snap);
    const dst = await start(await qemuArgs(booted.snap), true);
    const r = await cli(['restore', booted.snap, '--qmp', dstSocket(dst), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ mode: 'mapped', machine: 'pc-q35-10.0', mapped: { block: 'pc.ram', usedLength: MEM } });
    // The stream holds the small blocks and the device state, not pc.ram's 16 MiB.
    expect(out.stream.pagesCopied).toBeGreaterThan(0);
    const pm = path.join(work, 'booted.dst.pmem');
    await dst.pmemsave(pm, MEM);
    expect(differingPages(fs.readFileSync(pm), fs.readFileSync(booted.pmem), MEM)).toEqual([]);
    // The guest runs and writes to its memory; the file must not see it.
    await dst.cmd('cont');
    await sleep(300);
    await dst.quit();
    expect(sha(booted.snap)).toBe(before);
  });

  it('a mapped VM saved again by QEMU restores to equal memory; ramsnap save refuses its private RAM', { timeout: 180_000 }, async () => {
    const dst = await start(await qemuArgs(booted.snap), true);
    const r = await cli(['restore', booted.snap, '--qmp', dstSocket(dst)]);
    expect(r.code, r.stderr).toBe(0);
    const refused = await cli(['save', '--qmp', dstSocket(dst), '-o', path.join(work, 'nope.snap')]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/^ramsnap: NO_SHARED_RAM: the guest's RAM pc\.ram is a private \(share=off\) mapping/);
    expect(fs.existsSync(path.join(work, 'nope.snap'))).toBe(false);
    const again = path.join(work, 'again.snap');
    await dst.setCapabilities({ 'mapped-ram': true });
    await dst.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    await dst.cmd('migrate', { uri: `file:${again}` });
    await dst.waitMigration(60_000);
    await dst.quit();
    const third = await start(['-machine', 'q35', '-m', '16M'], true);
    const r2 = await cli(['restore', again, '--qmp', dstSocket(third), '--copy']);
    expect(r2.code, r2.stderr).toBe(0);
    const pm = path.join(work, 'again.pmem');
    await third.pmemsave(pm, MEM);
    expect(differingPages(fs.readFileSync(pm), fs.readFileSync(booted.pmem), MEM)).toEqual([]);
    await third.quit();
  });

  it('writers refuse a file a running VM maps (patch, sparsify, convert --force onto it): FILE_MAPPED, file unchanged', { timeout: 120_000 }, async () => {
    const dst = await start(await qemuArgs(booted.snap), true);
    const r = await cli(['restore', booted.snap, '--qmp', dstSocket(dst)]);
    expect(r.code, r.stderr).toBe(0);
    const before = sha(booted.snap);
    const other = path.join(work, 'other-for-convert.snap');
    fs.copyFileSync(booted.snap, other);
    for (const args of [
      ['patch', booted.snap, '--block', 'pc.ram', '--at', '0x200000', '--fill', '0x55', '--length', '4k'],
      ['sparsify', booted.snap],
      ['convert', other, '-o', booted.snap, '--to', 'mapped-ram', '--force'],
    ]) {
      const w = await cli(args);
      expect(w.code, args[0]).toBe(1);
      expect(w.stderr.trim().split('\n'), args[0]).toHaveLength(1);
      expect(w.stderr, args[0]).toMatch(/^ramsnap: FILE_MAPPED: .* is mapped by pid \d+ \(qemu-system-x86\)/);
    }
    expect(sha(booted.snap)).toBe(before);
    await dst.quit();
    // Once no VM maps it, the same patch goes through.
    const ok = await cli(['patch', other, '--block', 'pc.ram', '--at', '0x200000', '--fill', '0x55', '--length', '4k']);
    expect(ok.code, ok.stderr).toBe(0);
  });

  it('--prefetch reads the mapped block\'s present pages after the load', { timeout: 120_000 }, async () => {
    const s = await Snapshot.open(booted.snap);
    const present = s.block('pc.ram').pagesPresent * PS;
    await s.close();
    const dst = await start(await qemuArgs(booted.snap), true);
    const r = await cli(['restore', booted.snap, '--qmp', dstSocket(dst), '--prefetch', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.prefetch.bytes).toBe(present);
    expect(out.stream.bytes).toBeLessThan(MEM);
    const pm = path.join(work, 'prefetch.dst.pmem');
    await dst.pmemsave(pm, MEM);
    expect(differingPages(fs.readFileSync(pm), fs.readFileSync(booted.pmem), MEM)).toEqual([]);
    await dst.quit();
  });

  it('pc, never ran: memory equals the source outside the BIOS window', { timeout: 120_000 }, async () => {
    const pc = await save('pc', 'pc', 0);
    const dst = await start(await qemuArgs(pc.snap), true);
    const r = await cli(['restore', pc.snap, '--qmp', dstSocket(dst)]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/restored pc-i440fx-10\.0 in \d+ ms: pc\.ram \(16\.0 MiB\) mapped from the file/);
    const pm = path.join(work, 'pc.dst.pmem');
    await dst.pmemsave(pm, MEM);
    expect(differingPages(fs.readFileSync(pm), fs.readFileSync(pc.pmem), MEM, BIOS_WINDOW)).toEqual([]);
    await dst.quit();
  });

  it('stale bytes under clear bits read as zero in the restored guest', { timeout: 120_000 }, async () => {
    // What QEMU leaves after a page went non-zero then zero during a live save: bytes under a clear bit.
    const stale = path.join(work, 'stale.snap');
    fs.copyFileSync(booted.snap, stale);
    const s = await Snapshot.open(stale);
    const pc = s.block('pc.ram');
    const { pagesOffset } = pc.mappedRam!;
    const clear: number[] = [];
    for (let p = 0x300; clear.length < 3; p++) if (!(pc.bitmap![p >> 3] & (1 << (p & 7)))) clear.push(p);
    await s.close();
    const fd = fs.openSync(stale, 'r+');
    for (const p of clear) fs.writeSync(fd, Buffer.alloc(PS, 0xee), 0, PS, pagesOffset + p * PS);
    fs.closeSync(fd);
    const dst = await start(await qemuArgs(stale), true);
    const r = await cli(['restore', stale, '--qmp', dstSocket(dst), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).stream.stalePages).toMatchObject({ 'pc.ram': 3 });
    const pm = path.join(work, 'stale.dst.pmem');
    await dst.pmemsave(pm, MEM);
    expect(differingPages(fs.readFileSync(pm), fs.readFileSync(booted.pmem), MEM)).toEqual([]);
    await dst.quit();
  });

  it('a live save of a booting guest leaves stale pages; restored, memory equals the source at the end of the save', { timeout: 180_000 }, async () => {
    // SeaBIOS writes pages and clears them again while it boots: saved slowly enough, some are sent
    // non-zero and cleared later, which QEMU records by clearing their bits only (qemu-facts).
    let found: { snap: string; pmem: string; stale: number } | undefined;
    for (let attempt = 0; attempt < 3 && !found; attempt++) {
      const snap = path.join(work, `live-${attempt}.snap`);
      const src = await start(['-machine', 'q35', '-m', `${MEM / MiB}M`]);
      await src.setCapabilities({ 'mapped-ram': true });
      await src.cmd('migrate-set-parameters', { 'max-bandwidth': (attempt === 0 ? 2 : 1) * MiB });
      await src.cmd('cont');
      await src.cmd('migrate', { uri: `file:${snap}` });
      await src.waitMigration(120_000);
      const pmem = path.join(work, `live-${attempt}.src.pmem`);
      await src.pmemsave(pmem, MEM);
      await src.quit();
      const stale = await stalePagesOf(snap);
      if (stale > 0) found = { snap, pmem, stale };
    }
    expect(found, 'no save of the booting guest had stale pages').toBeDefined();
    const { snap, pmem, stale } = found!;
    const dst = await start(await qemuArgs(snap), true);
    const r = await cli(['restore', snap, '--qmp', dstSocket(dst), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).stream.stalePages['pc.ram']).toBe(stale);
    const pm = path.join(work, 'live.dst.pmem');
    await dst.pmemsave(pm, MEM);
    expect(differingPages(fs.readFileSync(pm), fs.readFileSync(pmem), MEM)).toEqual([]);
    await dst.quit();
  });

  /** pmemsave of [addr, addr + length) of a QEMU. */
  const pmemWindow = async (q: Qemu, name: string, addr: number, length: number): Promise<Buffer> => {
    const pm = path.join(work, `${name}.pmem`);
    await q.pmemsave(pm, length, addr);
    const b = fs.readFileSync(pm);
    fs.rmSync(pm);
    return b;
  };

  it('q35 with 3 GiB: RAM split at 2 GiB and 4 GiB, both parts come from the one mapped block', { timeout: 240_000 }, async () => {
    const GiB = 1024 * MiB;
    const low = 0x10000000;
    const high = 4 * GiB + 0x100000;
    const blob = path.join(work, 'split.blob');
    fs.writeFileSync(blob, Buffer.from(pageBytes(2 * PS, 0x5b1)));
    const snap = path.join(work, 'split.snap');
    const machineArgs = ['-machine', 'q35', '-m', '3G'];
    const src = await start([...machineArgs, '-device', `loader,file=${blob},addr=0x${low.toString(16)},force-raw=on`, '-device', `loader,file=${blob},addr=0x${high.toString(16)},force-raw=on`]);
    await src.setCapabilities({ 'mapped-ram': true });
    await src.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    await src.cmd('migrate', { uri: `file:${snap}` });
    await src.waitMigration(120_000);
    const want = [await pmemWindow(src, 'split-low', low - MiB, 4 * MiB), await pmemWindow(src, 'split-high', high - MiB, 4 * MiB)];
    await src.quit();
    const args = await qemuArgs(snap);
    expect(args).toContain('3072M');
    const dst = await start(args, true);
    const r = await cli(['restore', snap, '--qmp', dstSocket(dst), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).mapped).toMatchObject({ block: 'pc.ram', usedLength: 3 * GiB });
    const got = [await pmemWindow(dst, 'split-low-dst', low - MiB, 4 * MiB), await pmemWindow(dst, 'split-high-dst', high - MiB, 4 * MiB)];
    expect(got[0].equals(want[0])).toBe(true);
    expect(got[1].equals(want[1])).toBe(true);
    // The blob really is in both windows (not two windows of zeros).
    expect(got[0].subarray(MiB, MiB + 2 * PS).equals(fs.readFileSync(blob))).toBe(true);
    expect(got[1].subarray(MiB, MiB + 2 * PS).equals(fs.readFileSync(blob))).toBe(true);
    await dst.quit();
    fs.rmSync(snap);
  });

  it('a stream saved at ,offset=N maps at its absolute page offset and restores; --copy restores it too', { timeout: 180_000 }, async () => {
    const OFF = 3 * MiB;
    const blob = path.join(work, 'offset.blob');
    fs.writeFileSync(blob, Buffer.from(pageBytes(PS, 0x0ff)));
    const snap = path.join(work, 'offset.snap');
    const src = await start(['-machine', 'q35', '-m', '16M', '-device', `loader,file=${blob},addr=0x${BLOB_AT.toString(16)},force-raw=on`]);
    await src.setCapabilities({ 'mapped-ram': true });
    await src.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    await src.cmd('migrate', { uri: `file:${snap},offset=${OFF}` });
    await src.waitMigration(60_000);
    const pmem = path.join(work, 'offset.src.pmem');
    await src.pmemsave(pmem, MEM);
    await src.quit();
    const r0 = await cli(['restore', snap, '--offset', String(OFF), '--print-qemu-args', '--json']);
    expect(r0.code, r0.stderr).toBe(0);
    const { args, pagesOffset } = JSON.parse(r0.stdout) as { args: string[]; pagesOffset: number };
    expect(pagesOffset).toBeGreaterThan(OFF);
    for (const copy of [false, true]) {
      const dst = await start(copy ? ['-machine', 'q35', '-m', '16M'] : args, true);
      const r = await cli(['restore', snap, '--offset', String(OFF), '--qmp', dstSocket(dst), ...(copy ? ['--copy'] : [])]);
      expect(r.code, r.stderr).toBe(0);
      const pm = path.join(work, `offset.dst-${copy}.pmem`);
      await dst.pmemsave(pm, MEM);
      expect(differingPages(fs.readFileSync(pm), fs.readFileSync(pmem), MEM, BIOS_WINDOW), `copy=${copy}`).toEqual([]);
      await dst.quit();
    }
  });

  it('a libvirt save image (header, XML, then the stream) maps at its absolute page offset', { timeout: 120_000 }, async () => {
    // libvirt's own prefix, taken from the committed libvirt fixture; QEMU writes the stream behind it, as under libvirt.
    const { snap: fixture } = await fixtureFiles('q35-libvirt-sparse');
    const fx = await Snapshot.open(fixture);
    const streamOffset = fx.model.streamOffset;
    await fx.close();
    const image = path.join(work, 'libvirt.img');
    const fd = fs.openSync(image, 'w', 0o600);
    const prefix = Buffer.alloc(streamOffset);
    const ffd = fs.openSync(fixture, 'r');
    fs.readSync(ffd, prefix, 0, streamOffset, 0);
    fs.closeSync(ffd);
    fs.writeSync(fd, prefix, 0, streamOffset, 0);
    fs.closeSync(fd);
    const blob = path.join(work, 'libvirt.blob');
    fs.writeFileSync(blob, Buffer.from(pageBytes(PS, 0x11b)));
    const src = await start(['-machine', 'q35', '-m', '16M', '-device', `loader,file=${blob},addr=0x${BLOB_AT.toString(16)},force-raw=on`]);
    await src.setCapabilities({ 'mapped-ram': true });
    await src.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    await src.cmd('migrate', { uri: `file:${image},offset=${streamOffset}` });
    await src.waitMigration(60_000);
    const pmem = path.join(work, 'libvirt.src.pmem');
    await src.pmemsave(pmem, MEM);
    await src.quit();
    const opened = await Snapshot.open(image);
    expect(opened.model.libvirt).toBeDefined();
    await opened.close();
    const dst = await start(await qemuArgs(image), true);
    const r = await cli(['restore', image, '--qmp', dstSocket(dst)]);
    expect(r.code, r.stderr).toBe(0);
    const pm = path.join(work, 'libvirt.dst.pmem');
    await dst.pmemsave(pm, MEM);
    expect(differingPages(fs.readFileSync(pm), fs.readFileSync(pmem), MEM, BIOS_WINDOW)).toEqual([]);
    await dst.quit();
  });

  it('a snapshot made by ramsnap create maps and restores to its images', { timeout: 120_000 }, async () => {
    const raw = path.join(work, 'create.raw');
    const image = Buffer.alloc(MEM);
    Buffer.from(pageBytes(4 * PS, 0xc4ea7e)).copy(image, 0x400000);
    Buffer.from(pageBytes(PS, 0xc4ea7f)).copy(image, MEM - PS);
    fs.writeFileSync(raw, image);
    // The template never ran: a booted one's device state (kvmvapic's) refers to option ROM code in pc.ram that the image replaces.
    const template = await save('create-template', 'q35', 0);
    const snap = path.join(work, 'created.snap');
    const c = await cli(['create', '-o', snap, '--template', template.snap, '--ram', `pc.ram=${raw}`]);
    expect(c.code, c.stderr).toBe(0);
    const dst = await start(await qemuArgs(snap), true);
    const r = await cli(['restore', snap, '--qmp', dstSocket(dst)]);
    expect(r.code, r.stderr).toBe(0);
    const pm = path.join(work, 'created.dst.pmem');
    await dst.pmemsave(pm, MEM);
    // pc.ram is the image, all of [0, 16 MiB) but the BIOS window of a guest that never ran.
    expect(differingPages(fs.readFileSync(pm), image, MEM, BIOS_WINDOW)).toEqual([]);
    await dst.quit();
  });

  it('bad targets get one line and a non-zero exit, and nothing is loaded', { timeout: 180_000 }, async () => {
    const args = await qemuArgs(booted.snap);
    const s = await Snapshot.open(booted.snap);
    const pagesOffset = s.block('pc.ram').mappedRam!.pagesOffset;
    await s.close();
    const other = path.join(work, 'other.snap');
    fs.copyFileSync(booted.snap, other);
    const backend = (over: string): string[] => ['-machine', 'pc-q35-10.0,memory-backend=pc.ram', '-m', '16M', '-object', `memory-backend-file,id=pc.ram,size=${MEM},${over}`];
    const cases: [string, string[], RegExp][] = [
      ['not incoming', args, /QEMU is prelaunch, not waiting for an incoming migration/],
      ['wrong -m', ['-machine', 'pc-q35-10.0', '-m', '32M'], /RAM block pc\.ram is 33554432 bytes in QEMU/],
      ['another machine', ['-machine', 'pc-i440fx-10.0', '-m', '16M'], /QEMU runs machine pc-i440fx-10\.0, the snapshot is of pc-q35-10\.0/],
      ['no backend', ['-machine', 'pc-q35-10.0', '-m', '16M'], /no memory-backend-file named pc\.ram/],
      ['another file', backend(`mem-path=${other},offset=${pagesOffset},share=off,readonly=on,rom=off`), /maps .*other\.snap, not the snapshot/],
      // readonly=on keeps QEMU from writing the file whatever it is told; rom=off with share=on is refused by QEMU itself.
      ['a shared mapping', backend(`mem-path=${booted.snap},offset=${pagesOffset},share=on,readonly=on`), /is share=on/],
      ['another offset', backend(`mem-path=${booted.snap},offset=0,share=off,readonly=on,rom=off`), new RegExp(`at offset 0; pc\\.ram's pages are at ${pagesOffset}`)],
      ['writable', backend(`mem-path=${booted.snap},offset=${pagesOffset},share=off`), /opens the snapshot for writing/],
    ];
    const before = sha(booted.snap);
    for (const [what, qargs, message] of cases) {
      const dst = await start(qargs, what !== 'not incoming');
      const r = await cli(['restore', booted.snap, '--qmp', dstSocket(dst)]);
      expect(r.code, what).toBe(1);
      expect(r.stderr.trim().split('\n'), what).toHaveLength(1);
      expect(r.stderr, what).toMatch(/^ramsnap: RESTORE_TARGET_MISMATCH: /);
      expect(r.stderr, what).toMatch(message);
      const st = (await dst.cmd('query-migrate')) as { status?: string };
      expect(st.status ?? 'none', what).toBe('none');
      await dst.kill();
    }
    expect(sha(booted.snap)).toBe(before);
  });

  it('--copy restores a legacy stream that cannot be mapped', { timeout: 120_000 }, async () => {
    const blob = path.join(work, 'legacy.blob');
    fs.writeFileSync(blob, Buffer.from(pageBytes(PS, 0x1e6)));
    const snap = path.join(work, 'legacy.snap');
    const src = await start(['-machine', 'q35', '-m', '16M', '-device', `loader,file=${blob},addr=0x${BLOB_AT.toString(16)},force-raw=on`]);
    await src.cmd('migrate', { uri: `file:${snap}` });
    await src.waitMigration(60_000);
    const pmem = path.join(work, 'legacy.src.pmem');
    await src.pmemsave(pmem, MEM);
    await src.quit();

    const refused = await cli(['restore', snap, '--print-qemu-args']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^ramsnap: RESTORE_UNSUPPORTED: the snapshot is a legacy \(sequential\) stream.*--copy/);

    const dst = await start(['-machine', 'q35', '-m', '16M'], true);
    const r = await cli(['restore', snap, '--qmp', dstSocket(dst), '--copy', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ mode: 'copy', machine: 'pc-q35-10.0' });
    const pm = path.join(work, 'legacy.dst.pmem');
    await dst.pmemsave(pm, MEM);
    expect(differingPages(fs.readFileSync(pm), fs.readFileSync(pmem), MEM, BIOS_WINDOW)).toEqual([]);
    await dst.quit();
  });
});

describe.skipIf(!qemuAvailable())('clones of one snapshot', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-restore-clones-'));
  const started: Qemu[] = [];
  afterAll(async () => {
    for (const q of started) await q.kill();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('a snapshot made by ramsnap save of the running dirtying guest maps and restores to the guest at the pause', { timeout: 180_000 }, async () => {
    // A second QMP socket for ramsnap save (QEMU serves one client per socket).
    const sock = path.join(work, 'saved-guest.sock');
    const g = await startDirtyGuest({ dir: work, accel: 'tcg', memory: 64 * MiB, params: { ws: 8 * MiB }, extraArgs: ['-qmp', `unix:${sock},server=on,wait=off`] });
    const snap = path.join(work, 'live-saved.snap');
    let atPause: Buffer;
    try {
      await sleep(200);
      const r = await cli(['save', '--qmp', sock, '-o', snap, '--then', 'stop', '--max-bandwidth', '0', '-q']);
      expect(r.code, r.stderr).toBe(0);
      atPause = fs.readFileSync(g.ramPath);
    } finally {
      await g.stop();
    }
    const plan = JSON.parse((await cli(['restore', snap, '--print-qemu-args', '--json'])).stdout) as { args: string[] };
    const dstSock = path.join(work, 'saved-dst.sock');
    const dst = await Qemu.start({ binary: 'qemu-system-x86_64', dir: work, args: ['-accel', 'tcg', '-cpu', 'qemu64,kvmclock=off', '-smp', '1', '-qmp', `unix:${dstSock},server=on,wait=off`, ...plan.args], incoming: true });
    started.push(dst);
    const r = await cli(['restore', snap, '--qmp', dstSock]);
    expect(r.code, r.stderr).toBe(0);
    const pm = path.join(work, 'saved.dst.pmem');
    await dst.pmemsave(pm, 64 * MiB);
    expect(differingPages(fs.readFileSync(pm), atPause!, 64 * MiB)).toEqual([]);
    await dst.quit();
  });

  it('two VMs restored from one file run at once, make progress, diverge, and leave the file unchanged', { timeout: 180_000 }, async () => {
    const g = await startDirtyGuest({ dir: work, accel: 'tcg', memory: 64 * MiB, params: { ws: 8 * MiB } });
    const snap = path.join(work, 'dirty.snap');
    let atSave: number;
    try {
      await sleep(300);
      await g.qemu.cmd('stop');
      await g.qemu.setCapabilities({ 'mapped-ram': true });
      await g.qemu.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
      await g.qemu.cmd('migrate', { uri: `file:${snap}` });
      await g.qemu.waitMigration();
      atSave = readDirtyGuestRecord(g.ramPath).writes;
    } finally {
      await g.stop();
    }
    const before = sha(snap);
    const plan = JSON.parse((await cli(['restore', snap, '--print-qemu-args', '--json'])).stdout) as { args: string[] };
    const clones: { q: Qemu; sock: string }[] = [];
    for (let i = 0; i < 2; i++) {
      const sock = path.join(work, `clone-${i}.sock`);
      const q = await Qemu.start({ binary: 'qemu-system-x86_64', dir: work, args: ['-accel', 'tcg', '-cpu', 'qemu64,kvmclock=off', '-smp', '1', '-qmp', `unix:${sock},server=on,wait=off`, ...plan.args], incoming: true });
      started.push(q);
      clones.push({ q, sock });
      const r = await cli(['restore', snap, '--qmp', sock]);
      expect(r.code, r.stderr).toBe(0);
    }
    // Both run at once, for different times.
    await Promise.all(clones.map((c) => c.q.cmd('cont')));
    await sleep(200);
    await clones[1].q.cmd('stop');
    await sleep(600);
    await clones[0].q.cmd('stop');
    const images: Buffer[] = [];
    for (const [i, c] of clones.entries()) {
      const pm = path.join(work, `clone-${i}.pmem`);
      await c.q.pmemsave(pm, 64 * MiB);
      images.push(fs.readFileSync(pm));
      await c.q.quit();
    }
    const checks = images.map((m) => checkDirtyGuestMemory(m));
    for (const c of checks) {
      expect(c.problems).toEqual([]);
      expect(c.record!.writes).toBeGreaterThan(atSave);
    }
    expect(checks[0].record!.writes).not.toBe(checks[1].record!.writes);
    expect(images[0].equals(images[1])).toBe(false);
    expect(sha(snap)).toBe(before);
  });
});

describe.skipIf(!qemuAvailable('qemu-system-aarch64'))('ramsnap restore on aarch64 virt', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-restore-arm-'));
  const started: Qemu[] = [];
  const start = async (args: string[], incoming = false): Promise<{ q: Qemu; sock: string }> => {
    const sock = path.join(work, `cli-${started.length}.sock`);
    const q = await Qemu.start({ binary: 'qemu-system-aarch64', dir: work, args: ['-accel', 'tcg', '-cpu', 'cortex-a57', '-qmp', `unix:${sock},server=on,wait=off`, ...args], incoming });
    started.push(q);
    return { q, sock };
  };
  afterAll(async () => {
    for (const q of started) await q.kill();
    fs.rmSync(work, { recursive: true, force: true });
  });

  it('mach-virt.ram is mapped; memory at 0x40000000 equals the source', { timeout: 180_000 }, async () => {
    const RAM_BASE = 0x40000000;
    const blob = path.join(work, 'arm.blob');
    fs.writeFileSync(blob, Buffer.from(pageBytes(2 * PS, 0xa64)));
    const snap = path.join(work, 'arm.snap');
    const { q: src } = await start(['-machine', 'virt', '-m', '64M', '-device', `loader,file=${blob},addr=0x${(RAM_BASE + 0x300000).toString(16)},force-raw=on`]);
    await src.setCapabilities({ 'mapped-ram': true });
    await src.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    await src.cmd('migrate', { uri: `file:${snap}` });
    await src.waitMigration(60_000);
    const pmem = path.join(work, 'arm.src.pmem');
    await src.pmemsave(pmem, 64 * MiB, RAM_BASE);
    await src.quit();
    const p = await cli(['restore', snap, '--print-qemu-args', '--json']);
    expect(p.code, p.stderr).toBe(0);
    const plan = JSON.parse(p.stdout) as { args: string[]; block: string };
    expect(plan.block).toBe('mach-virt.ram');
    const { q: dst, sock } = await start(plan.args, true);
    const r = await cli(['restore', snap, '--qmp', sock]);
    expect(r.code, r.stderr).toBe(0);
    const pm = path.join(work, 'arm.dst.pmem');
    await dst.pmemsave(pm, 64 * MiB, RAM_BASE);
    expect(differingPages(fs.readFileSync(pm), fs.readFileSync(pmem), 64 * MiB)).toEqual([]);
    expect(fs.readFileSync(pm).subarray(0x300000, 0x300000 + 2 * PS).equals(fs.readFileSync(blob))).toBe(true);
    await dst.quit();
  });
});

describe.skipIf(!qemuAvailable('qemu-system-sparc64'))('ramsnap restore on sparc64 sun4u', () => {
  it('refuses to map (RESTORE_UNSUPPORTED, naming --copy), and --copy restores', { timeout: 180_000 }, async () => {
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-restore-sparc-'));
    const started: Qemu[] = [];
    try {
      const snap = path.join(work, 'sun4u.snap');
      const src = await Qemu.start({ binary: 'qemu-system-sparc64', dir: work, args: ['-machine', 'sun4u', '-m', '64M'] });
      started.push(src);
      await src.setCapabilities({ 'mapped-ram': true });
      await src.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
      await src.cmd('migrate', { uri: `file:${snap}` });
      await src.waitMigration(60_000);
      const pmem = path.join(work, 'src.pmem');
      await src.pmemsave(pmem, 64 * MiB);
      await src.quit();
      const refused = await cli(['restore', snap, '--print-qemu-args']);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/^ramsnap: RESTORE_UNSUPPORTED: machine sun4u.* cannot take a memory backend.*--copy/);
      const sock = path.join(work, 'cli.sock');
      const dst = await Qemu.start({ binary: 'qemu-system-sparc64', dir: work, args: ['-qmp', `unix:${sock},server=on,wait=off`, '-machine', 'sun4u', '-m', '64M'], incoming: true });
      started.push(dst);
      const r = await cli(['restore', snap, '--qmp', sock, '--copy']);
      expect(r.code, r.stderr).toBe(0);
      const pm = path.join(work, 'dst.pmem');
      await dst.pmemsave(pm, 64 * MiB);
      expect(fs.readFileSync(pm).equals(fs.readFileSync(pmem))).toBe(true);
      await dst.quit();
    } finally {
      for (const q of started) await q.kill();
      fs.rmSync(work, { recursive: true, force: true });
    }
  });
});
