/**
 * Guest-physical memory against QEMU's own view of it: every committed
 * fixture's pmemsave (fixtures/data, QEMU 10.0.2) is guest-physical memory
 * from pmemBase, so `read --phys` must equal it byte for byte, the x86
 * window at 0xe0000 included (the BIOS copy in a guest that never ran, RAM
 * in one whose SeaBIOS set the PAM registers). Cores and flat images are
 * checked against the same pmemsaves; test/export-interop.test.ts checks
 * them against QEMU's own dump-guest-memory.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { arm64Cpu, x86Cpu, x86Notes } from '../format/cpu-notes.js';
import { ELF64_EHDR_SIZE, ELF64_PHDR_SIZE, encodeElfHeader, encodeNotes, encodeProgramHeader, noteSize } from '../format/elf.js';
import { checkMap, coreSegments, machineMap, type PhysMap } from '../format/phys-map.js';
import type { StateMap } from '../format/vmstate.js';
import { PhysicalMemory, parseMap } from '../reader/phys.js';
import { Snapshot } from '../reader/snapshot.js';
import { exportSnapshot } from '../writer/export.js';
import { COMPARE_CHUNK, fixtureFiles, loadCatalog } from './helpers/fixtures.js';

const CLI = path.resolve('dist/analyze/bin.js');
const MiB = 1 << 20;
const GiB = 2 ** 30;
let tmp: string;

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-phys-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
}

/** Compares `read(addr, n)` with the pmem file over [base, base + size), a chunk at a time; the first differing addresses. */
async function compareToPmem(read: (addr: number, n: number, into: Uint8Array) => Promise<Uint8Array>, pmem: string, base: number, size: number): Promise<string[]> {
  const fd = fs.openSync(pmem, 'r');
  const truth = Buffer.alloc(COMPARE_CHUNK);
  const got = new Uint8Array(COMPARE_CHUNK);
  const diffs: string[] = [];
  try {
    for (let at = 0; at < size && diffs.length < 8; at += COMPARE_CHUNK) {
      const n = Math.min(COMPARE_CHUNK, size - at);
      fs.readSync(fd, truth, 0, n, at);
      const bytes = await read(base + at, n, got);
      const b = Buffer.from(bytes.buffer, bytes.byteOffset, n);
      if (!b.equals(truth.subarray(0, n))) {
        let i = 0;
        while (b[i] === truth[i]) i++;
        diffs.push(`0x${(base + at + i).toString(16)}`);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return diffs;
}

/** A minimal ELF64 reader for the checks (independent of format/elf.ts's encoder), either byte order. */
function readCore(file: string): { machine: number; loads: { paddr: number; offset: number; size: number }[]; notes: Buffer } {
  const fd = fs.openSync(file, 'r');
  try {
    const h = Buffer.alloc(64);
    fs.readSync(fd, h, 0, 64, 0);
    expect(h.subarray(0, 5).toString('latin1')).toBe('\x7fELF\x02');
    const le = h[5] === 1;
    const u16 = (b: Buffer, at: number): number => (le ? b.readUInt16LE(at) : b.readUInt16BE(at));
    const u32 = (b: Buffer, at: number): number => (le ? b.readUInt32LE(at) : b.readUInt32BE(at));
    const u64 = (b: Buffer, at: number): number => Number(le ? b.readBigUInt64LE(at) : b.readBigUInt64BE(at));
    const phnum = u16(h, 56);
    const ph = Buffer.alloc(phnum * 56);
    fs.readSync(fd, ph, 0, ph.length, u64(h, 32));
    const loads = [];
    let notes = Buffer.alloc(0);
    for (let i = 0; i < phnum; i++) {
      const p = ph.subarray(i * 56, i * 56 + 56);
      const offset = u64(p, 8);
      const size = u64(p, 32);
      if (u32(p, 0) === 1) loads.push({ paddr: u64(p, 24), offset, size });
      if (u32(p, 0) === 4) {
        notes = Buffer.alloc(size);
        fs.readSync(fd, notes, 0, size, offset);
      }
    }
    return { machine: u16(h, 18), loads, notes };
  } finally {
    fs.closeSync(fd);
  }
}

/** Fixtures of machines with a built-in map. */
const mapped = loadCatalog().fixtures.filter((f) => /^(pc-(q35|i440fx)-|virt-|sun4u$)/.test(f.machineType));
const unmapped = loadCatalog().fixtures.filter((f) => !mapped.includes(f));

describe('read by guest-physical address equals QEMU pmemsave', () => {
  it.each(mapped.map((f) => [f.name, f] as const))('%s', async (_, f) => {
    const files = await fixtureFiles(f.name);
    const snap = await Snapshot.open(files.snap, { ...f.open, decodeDevices: true });
    try {
      const mem = await PhysicalMemory.open(snap);
      const diffs = await compareToPmem((a, n, into) => mem.read(a, n, into), files.pmem, f.pmemBase, f.pmemSize);
      expect(diffs).toEqual([]);
    } finally {
      await snap.close();
    }
  });

  it('an x86 guest that never ran shows the BIOS copy at 0xe0000 (PAM 0), one whose SeaBIOS ran shows RAM there', async () => {
    for (const [name, block] of [['q35-mapped-ram', 'pc.bios'], ['pc-mapped-ram', 'pc.bios'], ['q35-mapped-ram-live', 'pc.ram'], ['q35-suppress-vmdesc', 'pc.bios']]) {
      const files = await fixtureFiles(name);
      const snap = await Snapshot.open(files.snap, { decodeDevices: true });
      try {
        const mem = await PhysicalMemory.open(snap);
        expect(mem.resolve(0xe0000, 0x20000).map((r) => r.block), name).toEqual([block]);
      } finally {
        await snap.close();
      }
    }
  });

  it.each(unmapped.map((f) => [f.name, f] as const))('%s: no built-in map (NO_MEMORY_MAP); a --map file maps it', async (_, f) => {
    const files = await fixtureFiles(f.name);
    const snap = await Snapshot.open(files.snap, { ...f.open, decodeDevices: true });
    try {
      await expect(PhysicalMemory.open(snap)).rejects.toMatchObject({ code: 'NO_MEMORY_MAP' });
      const main = f.comparisons[0];
      const file = path.join(tmp, `${f.name}.map`);
      fs.writeFileSync(file, JSON.stringify({ ranges: [{ start: `0x${f.pmemBase.toString(16)}`, length: main.length, block: main.block, offset: 0 }] }));
      const mem = await PhysicalMemory.open(snap, { mapFile: file });
      expect(await compareToPmem((a, n, into) => mem.read(a, n, into), files.pmem, f.pmemBase, f.pmemSize)).toEqual([]);
    } finally {
      await snap.close();
    }
  });
});

describe('the built-in maps follow QEMU 10 rules', () => {
  const blocks = (ram: number, extra: [string, number][] = [['pc.bios', 256 << 10], ['pc.rom', 128 << 10]]): { name: string; usedLength: number }[] => [{ name: 'pc.ram', usedLength: ram }, ...extra.map(([name, usedLength]) => ({ name, usedLength }))];
  const above4g = (m: PhysMap): number | undefined => m.ranges.find((r) => r.start === 4 * GiB)?.offset;

  it('q35 keeps up to 2.75 GiB below 4 GiB, else 2 GiB (pc_q35_init)', () => {
    expect(above4g(machineMap({ machine: 'pc-q35-10.0', blocks: blocks(0xb0000000 - 4096), vga: false }))).toBeUndefined();
    expect(above4g(machineMap({ machine: 'pc-q35-10.0', blocks: blocks(0xb0000000), vga: false }))).toBe(0x80000000);
    expect(above4g(machineMap({ machine: 'pc-q35-9.2', blocks: blocks(3 * GiB), vga: false }))).toBe(2 * GiB);
  });

  it('pc keeps up to 3.5 GiB below 4 GiB, else 3 GiB (pc_init1, gigabyte_align)', () => {
    expect(above4g(machineMap({ machine: 'pc-i440fx-10.0', blocks: blocks(0xe0000000 - 4096), vga: false }))).toBeUndefined();
    expect(above4g(machineMap({ machine: 'pc-i440fx-10.0', blocks: blocks(0xe0000000), vga: false }))).toBe(3 * GiB);
  });

  it('a guest large enough that an AMD CPU would move its RAM above 4 GiB to 1 TiB is AMBIGUOUS_MEMORY_MAP (the vendor is not in the stream)', () => {
    expect(() => machineMap({ machine: 'pc-q35-10.0', blocks: blocks(1000 * GiB), vga: false })).toThrow(expect.objectContaining({ code: 'AMBIGUOUS_MEMORY_MAP' }));
    // Machine types up to 7.0 never moved it.
    expect(above4g(machineMap({ machine: 'pc-q35-7.0', blocks: blocks(1000 * GiB), vga: false }))).toBe(2 * GiB);
    expect(above4g(machineMap({ machine: 'pc-q35-10.0', blocks: blocks(900 * GiB), vga: false }))).toBe(2 * GiB);
  });

  it('a VGA device takes 0xa0000-0xbffff while SMRAM is closed; flash firmware stacks down from 4 GiB and is left out of a core', () => {
    const m = machineMap({ machine: 'pc-q35-10.0', blocks: blocks(128 * MiB, [['system.flash0', 4 * MiB], ['system.flash1', 512 << 10], ['vga.vram', 16 * MiB]]), vga: true, hostBridge: { pam: new Uint8Array(7), smram: 0x02 } });
    expect(m.ranges.find((r) => r.start === 0xa0000)).toBeUndefined();
    expect(m.ranges.find((r) => r.block === 'system.flash0' && r.start > MiB)).toMatchObject({ start: 4 * GiB - 4 * MiB, kind: 'romd' });
    expect(m.ranges.find((r) => r.block === 'system.flash1')).toMatchObject({ start: 4 * GiB - 4 * MiB - (512 << 10) });
    // PAM 0 at 0xe0000 shows the top of flash0 (an alias since QEMU 9.1).
    expect(m.ranges.find((r) => r.start === 0xe0000)).toMatchObject({ block: 'system.flash0', offset: 4 * MiB - 0x20000 });
    expect(coreSegments(m).some((r) => r.block.startsWith('system.flash'))).toBe(false);
    const open = machineMap({ machine: 'pc-q35-10.0', blocks: blocks(128 * MiB), vga: true, hostBridge: { pam: new Uint8Array(7), smram: 0x40 } });
    expect(open.ranges[0]).toMatchObject({ start: 0, block: 'pc.ram' });
    expect(open.ranges[0].length).toBeGreaterThanOrEqual(0xc0000);
  });

  it('aarch64 virt: flash at 0 (not in a core), RAM at 1 GiB; sun4u: RAM at 0, the PROM at 0x1fff0000000', () => {
    const v = machineMap({ machine: 'virt-10.0', blocks: [{ name: 'mach-virt.ram', usedLength: 256 * MiB }, { name: 'virt.flash0', usedLength: 64 * MiB }, { name: 'virt.flash1', usedLength: 64 * MiB }], vga: false });
    expect(coreSegments(v)).toEqual([{ start: 0x40000000, length: 256 * MiB, block: 'mach-virt.ram', offset: 0, kind: 'ram' }]);
    const s = machineMap({ machine: 'sun4u', blocks: [{ name: 'sun4u.ram', usedLength: 16 * MiB }, { name: 'sun4u.prom', usedLength: 4 * MiB }], vga: false });
    expect(s.ranges.map((r) => [r.start, r.block])).toEqual([[0, 'sun4u.ram'], [0x1fff0000000, 'sun4u.prom']]);
  });

  it('an unknown machine is NO_MEMORY_MAP', () => {
    expect(() => machineMap({ machine: 'pseries-10.0', blocks: [], vga: false })).toThrow(expect.objectContaining({ code: 'NO_MEMORY_MAP' }));
  });
});

describe('map files', () => {
  const blocks = [{ name: 'pc.ram', usedLength: 16 * MiB, pageSize: 4096 }];
  const map = (ranges: object[]): PhysMap => parseMap(JSON.stringify({ ranges }));

  it('refuses overlaps, ranges past their block, misalignment and unknown blocks with their codes', () => {
    expect(() => checkMap(map([{ start: 0, length: '0x200000', block: 'pc.ram', offset: 0 }, { start: '0x100000', length: 4096, block: 'pc.ram', offset: 0 }]), blocks)).toThrow(expect.objectContaining({ code: 'MAP_OVERLAP' }));
    expect(() => checkMap(map([{ start: 0, length: 17 * MiB, block: 'pc.ram', offset: 0 }]), blocks)).toThrow(expect.objectContaining({ code: 'MAP_OUT_OF_BLOCK' }));
    expect(() => checkMap(map([{ start: 100, length: 4096, block: 'pc.ram', offset: 0 }]), blocks)).toThrow(expect.objectContaining({ code: 'MAP_MISALIGNED' }));
    expect(() => checkMap(map([{ start: 0, length: 4096, block: 'vga.vram', offset: 0 }]), blocks)).toThrow(expect.objectContaining({ code: 'UNKNOWN_BLOCK' }));
  });

  it('refuses what is not a map with BAD_MAP', () => {
    for (const text of ['{', '[]', '{"ranges": [1]}', '{"ranges": [{"start": -1, "length": 1, "block": "pc.ram", "offset": 0}]}', '{"ranges": [{"start": "12x", "length": 1, "block": "pc.ram", "offset": 0}]}', '{"ranges": [{"start": 0, "length": 4096, "block": "pc.ram", "offset": 0, "kind": "mmio"}]}']) {
      expect(() => parseMap(text), text).toThrow(expect.objectContaining({ code: 'BAD_MAP' }));
    }
  });
});

describe('export', () => {
  it.each([['q35-mapped-ram'], ['pc-legacy'], ['q35-offset'], ['q35-libvirt-sparse'], ['aarch64-virt-mapped-ram'], ['sparc64-sun4u-mapped-ram'], ['q35-legacy-live']])(
    '%s: the core holds pmemsave at every address of its PT_LOADs, sparse; the flat image too',
    async (name) => {
      const files = await fixtureFiles(name);
      const f = loadCatalog().fixtures.find((x) => x.name === name)!;
      const snap = await Snapshot.open(files.snap, { ...f.open, decodeDevices: true });
      try {
        const elf = path.join(tmp, `${name}.core`);
        const r = await exportSnapshot(snap, elf, { format: 'elf' });
        const core = readCore(elf);
        expect(core.loads.length).toBe(r.segments.length);
        const fd = fs.openSync(elf, 'r');
        const readLoad = async (a: number, n: number, into: Uint8Array): Promise<Uint8Array> => {
          const l = core.loads.find((x) => x.paddr <= a && a + n <= x.paddr + x.size);
          if (!l) throw new Error(`no PT_LOAD holds 0x${a.toString(16)}+${n}`);
          fs.readSync(fd, into, 0, n, l.offset + (a - l.paddr));
          return into.subarray(0, n);
        };
        // Compare the pmem range piece by piece along the segments (x86 cores hold it all but 0xa0000-0xbffff where a VGA would be).
        for (const l of core.loads) {
          const from = Math.max(l.paddr, f.pmemBase);
          const to = Math.min(l.paddr + l.size, f.pmemBase + f.pmemSize);
          if (from >= to) continue;
          const sub = path.join(tmp, `${name}.pmem-part`);
          const all = fs.readFileSync(files.pmem);
          fs.writeFileSync(sub, all.subarray(from - f.pmemBase, to - f.pmemBase));
          expect(await compareToPmem(readLoad, sub, from, to - from), `${name} PT_LOAD at 0x${l.paddr.toString(16)}`).toEqual([]);
        }
        fs.closeSync(fd);
        expect(fs.statSync(elf).blocks * 512).toBeLessThan(fs.statSync(elf).size);

        const raw = path.join(tmp, `${name}.phys`);
        await exportSnapshot(snap, raw, { format: 'raw' });
        const rfd = fs.openSync(raw, 'r');
        const readRaw = async (a: number, n: number, into: Uint8Array): Promise<Uint8Array> => {
          fs.readSync(rfd, into, 0, n, a);
          return into.subarray(0, n);
        };
        expect(await compareToPmem(readRaw, files.pmem, f.pmemBase, f.pmemSize)).toEqual([]);
        fs.closeSync(rfd);
        fs.rmSync(raw);
        fs.rmSync(elf);
      } finally {
        await snap.close();
      }
    },
  );

  it('writes the ELF header and program headers as the gABI lays them out', () => {
    const h = encodeElfHeader({ littleEndian: true, machine: 62, phnum: 3, phoff: 64 });
    expect(Buffer.from(h.subarray(0, 8)).toString('hex')).toBe('7f454c4602010100');
    expect(Buffer.from(h).readUInt16LE(16)).toBe(4); // ET_CORE
    expect(Buffer.from(h).readUInt16LE(52)).toBe(ELF64_EHDR_SIZE);
    const p = Buffer.from(encodeProgramHeader({ type: 1, flags: 0, offset: 0x1000, paddr: 0xfffc0000, filesz: 0x40000, memsz: 0x40000, align: 0 }, true));
    expect(p.length).toBe(ELF64_PHDR_SIZE);
    expect([p.readBigUInt64LE(16), p.readBigUInt64LE(24)]).toEqual([0xfffc0000n, 0xfffc0000n]);
    const notes = encodeNotes([{ name: 'CORE', type: 1, desc: new Uint8Array(144) }, { name: 'LINUX', type: 0x405, desc: new Uint8Array(6) }], true);
    expect(notes.length).toBe(noteSize({ name: 'CORE', type: 1, desc: new Uint8Array(144) }) + 12 + 8 + 8);
    expect(Buffer.from(notes).subarray(12, 20).toString('latin1')).toBe('CORE\0\0\0\0');
  });

  it('x86 notes are byte for byte those of QEMU 10.0.2 for a CPU at reset (golden bytes from its dump-guest-memory of a q35 guest at -S)', async () => {
    const golden = {
      prstatus: [
      '00000000000000000000000000000000000000000000000001000000000000000000000000000000000000000000000000000000000000000000000000000000',
      '00000000000000000000000000000000b10f0600000000000000000000000000000000000000000000000000000000000000000000000000f0ff000000f00000',
      '02000000000000000000000000000000',
      ].join(''),
      qemu: [
      '01000000b8010000000000000000000000000000000000000000000000000000b10f060000000000000000000000000000000000000000000000000000000000',
      '00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000',
      '0000000000000000f0ff000000000000020000000000000000f00000ffff0000009b0000000000000000ffff0000000000000000ffff00000093000000000000',
      '000000000000000000000000ffff00000093000000000000000000000000000000000000ffff00000093000000000000000000000000000000000000ffff0000',
      '0093000000000000000000000000000000000000ffff00000093000000000000000000000000000000000000ffff000000820000000000000000000000000000',
      '00000000ffff0000008b000000000000000000000000000000000000ffff00000000000000000000000000000000000000000000ffff00000000000000000000',
      '0000000000000000100000600000000000000000000000000000000000000000000000000000000000000000000000000000000000000000',
      ].join(''),
    };
    const files = await fixtureFiles('q35-mapped-ram');
    const snap = await Snapshot.open(files.snap, { decodeDevices: true });
    try {
      const cpu = snap.model.devices.find((d) => d.section.name === 'cpu')!;
      const { machine, notes } = x86Notes([x86Cpu({ index: 0, state: cpu.value as StateMap, offset: cpu.section.offset })]);
      expect(machine).toBe(3); // EM_386: the CPU is in real mode
      expect(notes.map((n) => [n.name, n.type, Buffer.from(n.desc).toString('hex')])).toEqual([
        ['CORE', 1, golden.prstatus],
        ['QEMU', 0, golden.qemu],
      ]);
    } finally {
      await snap.close();
    }
  });

  it('a CPU section without a register the notes need is BAD_CPU_STATE, naming the field', () => {
    const state: StateMap = new Map([['env.eip', '0x0000000000000000']]);
    expect(() => x86Cpu({ index: 1, state, offset: 1234 })).toThrow(expect.objectContaining({ code: 'BAD_CPU_STATE', field: 'cpu[1].env.regs', offset: 1234 }));
    expect(() => arm64Cpu({ index: 0, state: new Map([['cpsr', '40 00 03']]), offset: 9 })).toThrow(expect.objectContaining({ code: 'BAD_CPU_STATE' }));
    // An AArch32 CPU would need QEMU's register remapping: refused, not guessed.
    expect(() => arm64Cpu({ index: 0, state: new Map([['cpsr', '00 00 01 d3']]), offset: 9 })).toThrow(expect.objectContaining({ code: 'UNSUPPORTED' }));
  });
});

describe('CLI', () => {
  it('map prints the ranges; --json is a map file that --map takes back', async () => {
    const files = await fixtureFiles('q35-mapped-ram');
    const r = cli('map', files.snap);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/0xe0000\s+0xfffff\s+128 KiB\s+rom\s+pc\.bios\s+0x20000/);
    const j = cli('map', '--json', files.snap);
    const file = path.join(tmp, 'q35.map');
    fs.writeFileSync(file, j.stdout);
    const back = cli('map', '--json', '--map', file, files.snap);
    expect(back.status, back.stderr).toBe(0);
    expect(JSON.parse(back.stdout).ranges).toEqual(JSON.parse(j.stdout).ranges);
  });

  it('read --phys prints the reset vector from the BIOS at the top of 4 GiB; an address with nothing behind it is NO_MEMORY_AT, exit 2', async () => {
    const files = await fixtureFiles('q35-mapped-ram');
    const ok = cli('read', files.snap, '--phys', '0xfffffff0', '--length', '16', '--json');
    expect(ok.status, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout).hex).toMatch(/^ea5be000f0/); // jmp far f000:e05b, SeaBIOS's reset jump
    const bad = cli('read', files.snap, '--phys', '0xf0000000', '--length', '16');
    expect(bad.status).toBe(2);
    expect(bad.stderr.trim().split('\n')).toHaveLength(1);
    expect(bad.stderr).toMatch(/^ramsnap: NO_MEMORY_AT: nothing at guest-physical 0xf0000000/);
    expect(cli('read', files.snap, '--phys', '0', '--block', 'pc.ram', '--length', '1').status).toBe(2);
  });

  it('bad input writes nothing: unknown machine, overlapping map, corrupt CPU section', async () => {
    const out = path.join(tmp, 'never.core');
    const ppc = await fixtureFiles('ppc64-pseries-mapped-ram');
    const r1 = cli('export', ppc.snap, '--format', 'elf', '-o', out);
    expect([r1.status, r1.stderr.trim()]).toEqual([2, expect.stringMatching(/^ramsnap: NO_MEMORY_MAP: /)]);
    expect(fs.existsSync(out)).toBe(false);

    const q35 = await fixtureFiles('q35-mapped-ram');
    const overlapping = path.join(tmp, 'overlap.map');
    fs.writeFileSync(overlapping, JSON.stringify({ ranges: [{ start: 0, length: MiB, block: 'pc.ram', offset: 0 }, { start: 0x80000, length: MiB, block: 'pc.ram', offset: MiB }] }));
    const r2 = cli('export', q35.snap, '--format', 'raw', '-o', out, '--map', overlapping);
    expect([r2.status, r2.stderr.trim()]).toEqual([2, expect.stringMatching(/^ramsnap: MAP_OVERLAP: map: range 1: 0x80000 overlaps range 0/)]);
    const past = path.join(tmp, 'past.map');
    fs.writeFileSync(past, JSON.stringify({ ranges: [{ start: 0, length: 32 * MiB, block: 'pc.ram', offset: 0 }] }));
    const r3 = cli('export', q35.snap, '--format', 'elf', '-o', out, '--map', past);
    expect([r3.status, r3.stderr.trim()]).toEqual([2, expect.stringMatching(/^ramsnap: MAP_OUT_OF_BLOCK: /)]);

    // A CPU section whose contents do not end where its description says: the footer after them is gone.
    const snap = await Snapshot.open(q35.snap, { decodeDevices: true });
    const cpu = snap.model.devices.find((d) => d.section.name === 'cpu')!.section;
    await snap.close();
    const broken = path.join(tmp, 'broken-cpu.snap');
    fs.copyFileSync(q35.snap, broken);
    const fd = fs.openSync(broken, 'r+');
    fs.writeSync(fd, Buffer.from([0x5a]), 0, 1, cpu.end - 5);
    fs.closeSync(fd);
    const r4 = cli('export', broken, '--format', 'elf', '-o', out);
    expect(r4.status).toBe(1);
    expect(r4.stderr.trim().split('\n')).toHaveLength(1);
    expect(r4.stderr).toMatch(/^ramsnap: [A-Z_]+: /);
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.readdirSync(tmp).filter((n) => n.includes('never.core'))).toEqual([]);
  });
});
