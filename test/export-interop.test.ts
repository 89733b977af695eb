/**
 * Issue 10 against real QEMU 10: `ramsnap export`, `read --phys` and `map`
 * on snapshots of four guests, each compared with what the same QEMU showed
 * at the same paused moment: its own ELF core (`dump-guest-memory`, paging
 * off) and `pmemsave`. binutils' readelf, elfutils' eu-readelf and gdb must
 * take our core as they take QEMU's. Everything runs the real binary
 * (dist/analyze/bin.js); the cores are read with test/helpers/elf-core.ts,
 * not with format/elf.ts, so that a mistake there cannot hide.
 * Skipped without QEMU 10; the tool checks are skipped without the tool
 * (.ci/run installs gdb, binutils and elfutils).
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qemu, kvmAvailable, qemuAvailable, sleep } from '../fixtures/qemu.js';
import { ElfCore, type Range } from './helpers/elf-core.js';

const run = promisify(execFile);
const BIN = path.resolve('dist/analyze/bin.js');
const KiB = 1024;
const MiB = 1 << 20;
const GiB = 2 ** 30;
const FOUR_GIB = 4 * GiB;
const BLOB_SIZE = 4 * KiB;
const CHUNK = MiB;
const EM_386 = 3;
const EM_AARCH64 = 183;

function haveTool(tool: string): boolean {
  return spawnSync(tool, ['--version'], { encoding: 'utf8' }).status === 0;
}
const TOOLS = { gdb: haveTool('gdb'), readelf: haveTool('readelf'), 'eu-readelf': haveTool('eu-readelf') };
/** A title that says why the test did not run. */
const needs = (tool: keyof typeof TOOLS): string => (TOOLS[tool] ? '' : ` (skipped: ${tool} is not installed; .ci/run installs it)`);

/** 4 KiB of 16-byte records "RSPHYS" + index (4 hex) + low 24 bits of the address (6 hex): a misplaced page shows where it came from. */
function blob(addr: number): Buffer {
  let s = '';
  for (let i = 0; i < BLOB_SIZE / 16; i++) s += `RSPHYS${i.toString(16).padStart(4, '0')}${((addr + i * 16) % 0x1000000).toString(16).padStart(6, '0')}`;
  return Buffer.from(s, 'latin1');
}

const hex = (n: number): string => `0x${n.toString(16)}`;

interface Guest {
  title: string;
  binary: string;
  args: string[];
  /** Let SeaBIOS run this long before the pause (0: the guest never runs). */
  bootMs: number;
  blobs: number[];
  /** pmemsave ranges: [0, 1 MiB), the low RAM, the BIOS below 4 GiB, RAM above it. */
  pmem: Range[];
  /** e_machine of QEMU's core: EM_386 for an x86 guest whose first CPU is not in long mode (SeaBIOS leaves it in real mode). */
  machine: number;
  /** The notes QEMU writes, per core, as name/type. */
  notes: string[];
  /** x86: what pmemsave shows at 0xe0000-0xfffff, the BIOS copy (PAM to PCI, at reset) or RAM (after SeaBIOS). */
  window?: 'bios' | 'ram';
  /** What `map --json` must say: the range holding `at` shows `block` at offset `offset`. */
  map: { at: number; block: string; offset: number }[];
  /** Windows gdb reads from both cores. */
  gdb: Range[];
}

const X86_ACCEL = ['-accel', kvmAvailable() ? 'kvm' : 'tcg'];
const X86_BIOS: Range = [FOUR_GIB - 256 * KiB, FOUR_GIB];
/** 0xc0000-0xfffff in 16 KiB pieces, the granularity of the PAM registers. */
const PAM_PIECES = Array.from({ length: 16 }, (_, i) => 0xc0000 + i * 0x4000);
const pcRamAt = (at: number): { at: number; block: string; offset: number } => ({ at, block: 'pc.ram', offset: at });

const GUESTS: Guest[] = [
  {
    title: 'q35 128 MiB, booted',
    binary: 'qemu-system-x86_64',
    args: [...X86_ACCEL, '-machine', 'q35', '-m', '128M', '-smp', '1'],
    bootMs: 3000,
    window: 'ram',
    blobs: [0x200000],
    pmem: [[0, MiB], [0, 128 * MiB], X86_BIOS],
    machine: EM_386,
    notes: ['CORE/1', 'QEMU/0'],
    // Once SeaBIOS has set the PAM registers, the whole window shows pc.ram.
    map: [...PAM_PIECES.map(pcRamAt), pcRamAt(0x200000), { at: X86_BIOS[0], block: 'pc.bios', offset: 0 }],
    gdb: [[0x200000, 0x201000], [0xe0000, 0x100000], [FOUR_GIB - 0x1000, FOUR_GIB]],
  },
  {
    title: 'pc 128 MiB, two CPUs, never run',
    binary: 'qemu-system-x86_64',
    args: [...X86_ACCEL, '-machine', 'pc', '-m', '128M', '-smp', '2'],
    bootMs: 0,
    window: 'bios',
    blobs: [0x200000],
    pmem: [[0, MiB], [0, 128 * MiB], X86_BIOS],
    machine: EM_386,
    // QEMU writes every CPU's NT_PRSTATUS, then every CPU's QEMU note.
    notes: ['CORE/1', 'CORE/1', 'QEMU/0', 'QEMU/0'],
    // At reset the PAM registers send 0xc0000-0xfffff to PCI: pc.rom, then the last 128 KiB of pc.bios.
    map: [{ at: 0xc0000, block: 'pc.rom', offset: 0 }, { at: 0xe0000, block: 'pc.bios', offset: 0x20000 }, pcRamAt(0x100000), { at: X86_BIOS[0], block: 'pc.bios', offset: 0 }],
    gdb: [[0x200000, 0x201000], [0xe0000, 0x100000], [FOUR_GIB - 0x1000, FOUR_GIB]],
  },
  {
    title: 'q35 3 GiB, booted (RAM split around 4 GiB)',
    binary: 'qemu-system-x86_64',
    args: [...X86_ACCEL, '-machine', 'q35', '-m', '3G', '-smp', '1'],
    bootMs: 3000,
    window: 'ram',
    blobs: [0x200000, 0x100200000],
    pmem: [[0, MiB], [0, 2 * GiB], X86_BIOS, [FOUR_GIB, FOUR_GIB + 4 * MiB]],
    machine: EM_386,
    notes: ['CORE/1', 'QEMU/0'],
    // q35 keeps 2 GiB below 4 GiB when the guest has more than 2.75 GiB; the rest of pc.ram starts at 4 GiB.
    map: [...PAM_PIECES.map(pcRamAt), pcRamAt(2 * GiB - 0x1000), { at: FOUR_GIB, block: 'pc.ram', offset: 2 * GiB }],
    gdb: [[0x200000, 0x201000], [0xe0000, 0x100000], [FOUR_GIB - 0x1000, FOUR_GIB], [0x100200000, 0x100201000]],
  },
  {
    title: 'q35 128 MiB with a std VGA, booted (the VGA window, the framebuffer at its BAR)',
    binary: 'qemu-system-x86_64',
    args: [...X86_ACCEL, '-machine', 'q35', '-m', '128M', '-smp', '1', '-device', 'VGA'],
    bootMs: 3000,
    window: 'ram',
    blobs: [0x200000],
    // 0xa0000-0xbffff is the VGA's window (device memory), in neither core; SeaBIOS put the framebuffer at 0xfd000000.
    pmem: [[0, 0xa0000], [0xc0000, 128 * MiB], [0xfd000000, 0xfe000000], X86_BIOS],
    machine: EM_386,
    notes: ['CORE/1', 'QEMU/0'],
    map: [pcRamAt(0x200000), { at: 0xfd000000, block: '0000:00:01.0/vga.vram', offset: 0 }],
    gdb: [[0x200000, 0x201000], [0xfd000000, 0xfd001000]],
  },
  {
    title: 'aarch64 virt cortex-a57 256 MiB, two CPUs, never run',
    binary: 'qemu-system-aarch64',
    args: ['-accel', 'tcg', '-machine', 'virt', '-cpu', 'cortex-a57', '-m', '256M', '-smp', '2'],
    bootMs: 0,
    blobs: [0x40200000],
    pmem: [[0, MiB], [GiB, GiB + 256 * MiB]],
    machine: EM_AARCH64,
    // aarch64 writes NT_PRSTATUS and NT_PRFPREG together, CPU by CPU.
    notes: ['CORE/1', 'CORE/2', 'CORE/1', 'CORE/2'],
    map: [{ at: 0, block: 'virt.flash0', offset: 0 }, { at: GiB, block: 'mach-virt.ram', offset: 0 }],
    gdb: [[0x40200000, 0x40201000], [GiB, GiB + 0x1000]],
  },
];

/** Addresses (chunk starts, at most 4) in `ranges` where two readers disagree. */
function differingChunks(ranges: Range[], a: (addr: number, into: Buffer) => Buffer, b: (addr: number, into: Buffer) => Buffer): string[] {
  const x = Buffer.alloc(CHUNK);
  const y = Buffer.alloc(CHUNK);
  const bad: string[] = [];
  for (const [start, end] of ranges) {
    for (let at = start; at < end && bad.length < 4; at += CHUNK) {
      const n = Math.min(CHUNK, end - at);
      if (!a(at, x.subarray(0, n)).equals(b(at, y.subarray(0, n)))) bad.push(hex(at));
    }
  }
  return bad;
}

/** A reader of a file where byte `base + i` of guest memory is byte i of the file. */
function fileReader(file: string, base: number): { read: (addr: number, into: Buffer) => Buffer; close: () => void } {
  const fd = fs.openSync(file, 'r');
  return {
    read: (addr, into) => {
      const n = fs.readSync(fd, into, 0, into.length, addr - base);
      if (n !== into.length) throw new Error(`${file}: short read at ${hex(addr)}`);
      return into;
    },
    close: () => fs.closeSync(fd),
  };
}

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [BIN, ...args], { maxBuffer: 16 * MiB });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** `read --phys START --length N --raw`, compared as it streams with `file` (a pmemsave from START): GiBs never sit in memory. */
async function readPhysAgainst(snap: string, [start, end]: Range, file: string): Promise<{ code: number | null; stderr: string; bytes: number; firstDiff?: string }> {
  const child = spawn(process.execPath, [BIN, 'read', snap, '--phys', hex(start), '--length', String(end - start), '--raw'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const fd = fs.openSync(file, 'r');
  let want = Buffer.alloc(CHUNK);
  let bytes = 0;
  let firstDiff: string | undefined;
  try {
    for await (const got of child.stdout as AsyncIterable<Buffer>) {
      if (want.length < got.length) want = Buffer.alloc(got.length);
      const w = want.subarray(0, fs.readSync(fd, want, 0, got.length, bytes));
      if (firstDiff === undefined && !w.equals(got)) {
        let i = 0;
        while (i < w.length && w[i] === got[i]) i++;
        firstDiff = hex(start + bytes + i);
      }
      bytes += got.length;
    }
  } finally {
    fs.closeSync(fd);
  }
  return { code: await exited, stderr, bytes, firstDiff };
}

/** Bytes the file system allocated (holes not counted). */
const allocated = (file: string): number => fs.statSync(file).blocks * 512;

/** One QEMU run: the guest paused, then QEMU's core, pmemsave of each range, and a mapped-ram save, all of the same moment. */
interface Capture {
  dir: string;
  qemuCore: string;
  snap: string;
  pmem: Map<Range, string>;
}

async function capture(g: Guest, dir: string): Promise<Capture> {
  const loaders = g.blobs.flatMap((addr) => {
    const file = path.join(dir, `blob-${addr.toString(16)}.bin`);
    fs.writeFileSync(file, blob(addr));
    return ['-device', `loader,file=${file},addr=${hex(addr)},force-raw=on`];
  });
  const q = await Qemu.start({ binary: g.binary, dir, args: [...g.args, ...loaders] });
  try {
    if (g.bootMs) {
      await q.cmd('cont');
      await sleep(g.bootMs);
      await q.cmd('stop');
    }
    const qemuCore = path.join(dir, 'qemu.core');
    await q.cmd('dump-guest-memory', { paging: false, protocol: `file:${qemuCore}` });
    for (;;) {
      const st = (await q.cmd('query-dump')) as { status: string };
      if (st.status === 'completed') break;
      if (st.status === 'failed') throw new Error(`dump-guest-memory failed: ${q.log}`);
      await sleep(50);
    }
    const pmem = new Map<Range, string>();
    for (const r of g.pmem) {
      const file = path.join(dir, `pmem-${r[0].toString(16)}-${r[1].toString(16)}.bin`);
      await q.pmemsave(file, r[1] - r[0], r[0]);
      pmem.set(r, file);
    }
    const snap = path.join(dir, 'guest.snap');
    await q.setCapabilities({ 'mapped-ram': true });
    // The default 128 MiB/s limit also throttles a save to a file.
    await q.cmd('migrate-set-parameters', { 'max-bandwidth': 2 ** 40 });
    await q.cmd('migrate', { uri: `file:${snap}` });
    await q.waitMigration();
    return { dir, qemuCore, snap, pmem };
  } finally {
    await q.quit();
  }
}

/** gdb's view of `windows` in a core: one file per window. */
function gdbDump(core: string, windows: Range[], dir: string, tag: string): Buffer[] {
  const outs = windows.map(([s], i) => path.join(dir, `gdb-${tag}-${i}-${s.toString(16)}.bin`));
  const args = ['-batch', '-nx', '-ex', `core-file ${core}`, ...windows.flatMap(([s, e], i) => ['-ex', `dump binary memory ${outs[i]} ${hex(s)} ${hex(e)}`])];
  const r = spawnSync('gdb', args, { encoding: 'utf8' });
  expect(r.status, `gdb ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return outs.map((f, i) => {
    expect(fs.existsSync(f), `gdb wrote no ${hex(windows[i][0])}..${hex(windows[i][1])} from ${core}: ${r.stderr}`).toBe(true);
    return fs.readFileSync(f);
  });
}

/** What readelf or eu-readelf make of a core: exit status, stderr lines that say Error or Warning, how many PT_LOADs they list. */
function readerView(tool: string, core: string): { core: string; status: number | null; stdout: string; complaints: string[]; loads: number } {
  const r = spawnSync(tool, ['-h', '-l', '-n', core], { encoding: 'utf8', maxBuffer: 16 * MiB });
  const complaints = r.stderr.split('\n').filter((l) => /error|warning/i.test(l));
  return { core, status: r.status, stdout: r.stdout, complaints, loads: (r.stdout.match(/^\s*LOAD\s/gm) ?? []).length };
}

const HAVE_QEMU = { x86: qemuAvailable('qemu-system-x86_64'), arm: qemuAvailable('qemu-system-aarch64') };

for (const g of GUESTS) {
  const have = g.binary === 'qemu-system-aarch64' ? HAVE_QEMU.arm : HAVE_QEMU.x86;
  describe.skipIf(!have)(`10 export, read --phys and map against QEMU's own core: ${g.title}${have ? '' : ` (skipped: ${g.binary} 10 is not installed)`}`, () => {
    let dir: string | undefined;
    let c: Capture;
    let ourCore: string;
    let ourRaw: string;
    const exports: Record<string, { code: number; stderr: string }> = {};

    beforeAll(async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-export-interop-'));
      c = await capture(g, dir);
      ourCore = path.join(dir, 'ours.core');
      ourRaw = path.join(dir, 'ours.raw');
      for (const [format, out] of [['elf', ourCore], ['raw', ourRaw]] as const) {
        exports[format] = await cli(['export', c.snap, '--format', format, '-o', out]);
      }
    }, 300_000);
    afterAll(() => {
      // QEMU's core and the pmemsaves are dense: 3 GiB and 2 GiB for the 3 GiB guest.
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    it('10 export --format elf: the machine, the PT_LOAD ranges, every byte and the CPU notes are QEMU\'s', () => {
      expect(exports.elf.code, exports.elf.stderr).toBe(0);
      expect(exports.elf.stderr).toBe('');
      const theirs = ElfCore.open(c.qemuCore);
      const ours = ElfCore.open(ourCore);
      try {
        expect(ours.machine).toBe(theirs.machine);
        expect(ours.machine).toBe(g.machine);
        expect(ours.union().map((r) => r.map(hex))).toEqual(theirs.union().map((r) => r.map(hex)));
        expect(differingChunks(theirs.union(), (a, b) => ours.read(a, b), (a, b) => theirs.read(a, b))).toEqual([]);
        expect(theirs.noteList()).toEqual(g.notes);
        expect(ours.noteList()).toEqual(g.notes);
        expect(ours.noteBytes().toString('hex')).toBe(theirs.noteBytes().toString('hex'));
        // The blobs are where they were put: the comparison above was of something.
        for (const addr of g.blobs) expect(ours.read(addr, Buffer.alloc(BLOB_SIZE)).equals(blob(addr)), hex(addr)).toBe(true);
      } finally {
        ours.close();
        theirs.close();
      }
    });

    it('10 export --format elf is sparse: far less allocated than QEMU\'s dense core, and than its own size', () => {
      const ours = allocated(ourCore);
      expect(ours).toBeLessThan(allocated(c.qemuCore) / 16);
      expect(ours).toBeLessThan(fs.statSync(ourCore).size / 16);
    });

    // QEMU's core has two section headers (a null one and a string table), so eu-readelf looks for
    // notes in sections and lists none; ours has none, and both readers decode its NT_PRSTATUS.
    for (const tool of ['readelf', 'eu-readelf'] as const) {
      it.skipIf(!TOOLS[tool])(`10 ${tool} -h -l -n takes our core as it takes QEMU's, and decodes its NT_PRSTATUS${needs(tool)}`, () => {
        const ours = readerView(tool, ourCore);
        const theirs = readerView(tool, c.qemuCore);
        for (const r of [ours, theirs]) {
          expect(r.status, `${tool} ${r.core}`).toBe(0);
          expect(r.complaints, `${tool} ${r.core}`).toEqual([]);
        }
        expect(ours.loads).toBe(theirs.loads);
        expect(ours.loads).toBeGreaterThan(0);
        expect(ours.stdout).toMatch(/PRSTATUS/);
      });
    }

    it.skipIf(!TOOLS.gdb)(`10 gdb reads the same guest-physical bytes from our core as from QEMU's${needs('gdb')}`, () => {
      const ours = gdbDump(ourCore, g.gdb, c.dir, 'ours');
      const theirs = gdbDump(c.qemuCore, g.gdb, c.dir, 'qemu');
      g.gdb.forEach(([s, e], i) => {
        expect(ours[i].length, hex(s)).toBe(e - s);
        expect(ours[i].equals(theirs[i]), `gdb at ${hex(s)}`).toBe(true);
        if (g.blobs.includes(s)) expect(ours[i].equals(blob(s)), `gdb at ${hex(s)}: the blob`).toBe(true);
      });
    });

    it('10 read --phys --raw equals pmemsave over each range (the 0xe0000 window, the low RAM, the BIOS, RAM above 4 GiB)', async () => {
      for (const [range, file] of c.pmem) {
        const r = await readPhysAgainst(c.snap, range, file);
        expect(r.stderr, hex(range[0])).toBe('');
        expect(r.code, hex(range[0])).toBe(0);
        expect(r.bytes, hex(range[0])).toBe(range[1] - range[0]);
        expect(r.firstDiff, `read --phys ${hex(range[0])}..${hex(range[1])} against pmemsave`).toBeUndefined();
      }
    });

    if (g.window) it(`10 the 0xe0000 window that read --phys was compared over shows ${g.window === 'bios' ? 'the BIOS copy (never run)' : 'RAM (booted)'}`, () => {
      const low = fs.readFileSync(c.pmem.get(g.pmem[0]) as string).subarray(0xe0000, 0x100000);
      const biosTop = fs.readFileSync(c.pmem.get(X86_BIOS) as string).subarray(0x20000);
      expect(low.equals(biosTop)).toBe(g.window === 'bios');
    });

    it('10 export --format raw: byte A of the image is pmemsave\'s byte A; sparse', () => {
      expect(exports.raw.code, exports.raw.stderr).toBe(0);
      expect(exports.raw.stderr).toBe('');
      const image = fileReader(ourRaw, 0);
      try {
        for (const [range, file] of c.pmem) {
          const pmem = fileReader(file, range[0]);
          try {
            expect(differingChunks([range], image.read, pmem.read), `${hex(range[0])}..${hex(range[1])}`).toEqual([]);
          } finally {
            pmem.close();
          }
        }
      } finally {
        image.close();
      }
      expect(allocated(ourRaw)).toBeLessThan(fs.statSync(ourRaw).size / 16);
    });

    it('10 map --json shows which block each address comes from', async () => {
      const r = await cli(['map', '--json', c.snap]);
      expect(r.code, r.stderr).toBe(0);
      const map = JSON.parse(r.stdout) as { ranges: { start: string; length: string; block: string; offset: string }[] };
      const ranges = map.ranges.map((x) => ({ start: Number(x.start), end: Number(x.start) + Number(x.length), block: x.block, offset: Number(x.offset) }));
      for (const want of g.map) {
        const hit = ranges.find((x) => want.at >= x.start && want.at < x.end);
        expect(hit ? { at: hex(want.at), block: hit.block, offset: hex(hit.offset + want.at - hit.start) } : `nothing at ${hex(want.at)}`).toEqual({ at: hex(want.at), block: want.block, offset: hex(want.offset) });
      }
    });
  });
}
