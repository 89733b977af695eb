/**
 * The guest-physical memory map: which guest-physical ranges show which
 * RAMBlock at which offset. The stream carries each block's bytes but not
 * where the guest sees them; that follows from the machine type, the RAM
 * size and, on x86, the chipset registers in the saved device state.
 * SPEC.md §14 gives every rule with the QEMU code it comes from; the rules
 * were checked against QEMU 10.0.2's own flat view (`info mtree -f`),
 * pmemsave and dump-guest-memory (test/phys-interop.test.ts).
 *
 * Pure: the caller reads the registers out of the snapshot (reader/phys.ts).
 */
import { RamsnapUsageError } from './errors.js';
import { mainRamBlock, type NamedBlock } from './main-ram.js';

/**
 * What the guest sees in a range, as QEMU's flat view names it: RAM, ROM
 * (read-only RAM, e.g. the BIOS, or RAM that the chipset made read-only),
 * or a ROM device (flash in read mode). dump-guest-memory writes RAM and
 * ROM, never ROM devices (system/memory_mapping.c).
 */
export type RangeKind = 'ram' | 'rom' | 'romd';

export interface PhysRange {
  /** Guest-physical address of the first byte. */
  start: number;
  length: number;
  block: string;
  /** Byte offset in the block of the range's first byte. */
  offset: number;
  kind: RangeKind;
}

export interface PhysMap {
  /** The machine type the map is for, or "file" for a --map file. */
  machine: string;
  /** In address order, none overlapping. */
  ranges: PhysRange[];
  /** What the map rests on that a user may want to know (assumptions, registers read). */
  notes: string[];
}

/** The saved chipset state that decides the x86 window 0xa0000-0xfffff. */
export interface HostBridgeState {
  /** PAM0..PAM6. */
  pam: Uint8Array;
  /** The SMRAM control register. */
  smram: number;
}

export interface MachineFacts {
  /** Versioned machine type from the configuration section, e.g. "pc-q35-10.0". */
  machine: string;
  blocks: readonly NamedBlock[];
  /** The x86 host bridge's registers, when the device state could be decoded. */
  hostBridge?: HostBridgeState;
  /** A VGA device answers at 0xa0000-0xbffff (its legacy window) while SMRAM is closed. */
  vga: boolean;
  /** RAM of PCI devices at the address their BAR was given (a VGA framebuffer), when memory decoding is on. */
  pciRam?: { block: string; start: number }[];
}

const KiB = 1024;
const MiB = 1 << 20;
const GiB = 2 ** 30;
const FOUR_GIB = 4 * GiB;

/** x86 (hw/i386/pc_q35.c pc_q35_init, hw/i386/pc_piix.c pc_init1): the RAM kept below 4 GiB. */
const Q35_LOWMEM = 0xb0000000;
const Q35_LOWMEM_SPLIT = 0x80000000;
const I440FX_LOWMEM = 0xe0000000;
const I440FX_LOWMEM_SPLIT = 0xc0000000;
/** hw/i386/pc.c: AMD CPUs keep the HyperTransport hole from 0xfd00000000 free, moving RAM above 4 GiB to 1 TiB. */
const AMD_HT_START = 0xfd00000000;
/** Default 64-bit PCI hole after RAM: q35 32 GiB (hw/pci-host/q35.c), i440fx 2 GiB (hw/pci-host/i440fx.c). */
const Q35_HOLE64 = 2 ** 35;
const I440FX_HOLE64 = 2 ** 31;
/** The legacy window: VGA memory (or SMRAM) at 0xa0000, option ROMs and the BIOS copy up to 1 MiB, in 16 KiB PAM pieces. */
const VGA_WINDOW = 0xa0000;
const PAM_START = 0xc0000;
const PAM_SEGMENT = 16 * KiB;
const ISA_BIOS_MAX = 128 * KiB;
/** SMRAM control: D_OPEN makes RAM at 0xa0000 visible to every access (hw/pci-host/q35.c, i440fx.c). */
const SMRAM_D_OPEN = 0x40;

/** aarch64 virt (hw/arm/virt.c base_memmap): flash banks at 0, RAM from 1 GiB. */
const VIRT_FLASH1 = 0x04000000;
const VIRT_RAM = 0x40000000;
/** sparc64 sun4u (hw/sparc64/sun4u.c): RAM at 0, the PROM at PROM_ADDR. */
const SUN4U_PROM = 0x1fff0000000;

export function noMemoryMap(machine: string): RamsnapUsageError {
  return new RamsnapUsageError(
    'NO_MEMORY_MAP',
    `ramsnap does not know where machine ${machine} puts its memory (it knows pc-i440fx-*, pc-q35-*, virt-* and sun4u): give the map with --map FILE (the format of \`ramsnap map --json\`)`,
    'map',
  );
}

/** The built-in map of a machine ramsnap knows; NO_MEMORY_MAP for any other. */
export function machineMap(f: MachineFacts): PhysMap {
  const m = /^pc-(q35|i440fx)-(\d+)\.(\d+)$/.exec(f.machine);
  if (m) return x86Map(f, m[1] === 'q35', Number(m[2]) * 1000 + Number(m[3]));
  if (/^virt-\d+\.\d+$/.test(f.machine)) return virtMap(f);
  if (f.machine === 'sun4u') return sun4uMap(f);
  throw noMemoryMap(f.machine);
}

class Ranges {
  readonly list: PhysRange[] = [];
  constructor(private readonly blocks: readonly NamedBlock[]) {}

  size(name: string): number | undefined {
    return this.blocks.find((b) => b.name === name)?.usedLength;
  }

  add(start: number, length: number, block: string, offset: number, kind: RangeKind): void {
    if (length > 0) this.list.push({ start, length, block, offset, kind });
  }

  /** The ranges in address order, neighbours of the same block, offsets and kind joined into one. */
  map(machine: string, notes: string[]): PhysMap {
    const ranges: PhysRange[] = [];
    for (const x of this.list.sort((a, b) => a.start - b.start)) {
      const last = ranges[ranges.length - 1];
      if (last && last.block === x.block && last.kind === x.kind && last.start + last.length === x.start && last.offset + last.length === x.offset) last.length += x.length;
      else ranges.push({ ...x });
    }
    return { machine, ranges, notes };
  }
}

function mainRam(f: MachineFacts): NamedBlock {
  const ram = mainRamBlock(f.blocks);
  if (!ram) throw new RamsnapUsageError('NO_MEMORY_MAP', `the snapshot of ${f.machine} has no RAM blocks to map`, 'map');
  return ram.block;
}

function x86Map(f: MachineFacts, q35: boolean, version: number): PhysMap {
  const notes: string[] = [];
  const r = new Ranges(f.blocks);
  const ram = mainRam(f);
  const size = ram.usedLength;
  // The split below and above 4 GiB (max-ram-below-4g at its default; the stream does not record it).
  let below = size;
  if (q35) {
    const lowmem = size >= Q35_LOWMEM ? Q35_LOWMEM_SPLIT : Q35_LOWMEM;
    if (size >= lowmem) below = lowmem;
  } else if (size >= I440FX_LOWMEM) {
    below = I440FX_LOWMEM_SPLIT;
  }
  const above = size - below;
  if (above > 0 && version > 7000) {
    // AMD CPUs (qemu64 under TCG, any AMD host under KVM) move RAM above 4 GiB to 1 TiB when the 64-bit
    // PCI hole after it would reach the HyperTransport hole. The vendor is not in the stream.
    const hole64Start = Math.ceil((FOUR_GIB + above) / GiB) * GiB;
    if (hole64Start + (q35 ? Q35_HOLE64 : I440FX_HOLE64) - 1 >= AMD_HT_START) {
      throw new RamsnapUsageError(
        'AMBIGUOUS_MEMORY_MAP',
        `${f.machine} with ${size} bytes of RAM puts the RAM above 4 GiB at 4 GiB or at 1 TiB depending on the CPU's vendor, which the snapshot does not record: give the map with --map FILE`,
        'map',
      );
    }
  }
  notes.push(`${ram.name}: ${below} bytes below 4 GiB${above ? `, ${above} from 4 GiB` : ''} (max-ram-below-4g at its default)`);

  if (below <= PAM_START) {
    r.add(0, below, ram.name, 0, 'ram');
  } else {
    r.add(0, VGA_WINDOW, ram.name, 0, 'ram');
    const smramOpen = f.hostBridge ? (f.hostBridge.smram & SMRAM_D_OPEN) !== 0 : false;
    // Closed SMRAM shows the PCI window there: a VGA device's memory if there is one, else RAM shows through.
    if (!f.vga || smramOpen) r.add(VGA_WINDOW, PAM_START - VGA_WINDOW, ram.name, VGA_WINDOW, 'ram');
    else notes.push('0xa0000-0xbffff: the VGA window (device memory, not RAM)');
    legacyWindow(f, r, ram.name, Math.min(below, MiB), notes);
    r.add(MiB, below - MiB, ram.name, MiB, 'ram');
  }
  r.add(FOUR_GIB, above, ram.name, below, 'ram');
  firmware(f, r, notes);
  for (const bar of f.pciRam ?? []) {
    const size = r.size(bar.block);
    if (size === undefined) continue;
    // A BAR over RAM or the BIOS: the saved registers are not what a working firmware leaves; map nothing there.
    if (r.list.some((x) => x.start < bar.start + size && bar.start < x.start + x.length)) notes.push(`${bar.block}: its BAR (${hex(bar.start)}) overlaps other memory; not mapped`);
    else r.add(bar.start, size, bar.block, 0, 'ram');
  }
  return r.map(f.machine, notes);
}

/**
 * 0xc0000-0xfffff, piece by piece as the PAM registers say
 * (hw/pci-host/pam.c): 0 sends reads to the PCI window (the option ROM
 * area pc.rom below 0xe0000, the BIOS's last 128 KiB above), 1 shows RAM
 * read-only, 2 and 3 show RAM (QEMU 10 maps RAM for reads in mode 2 too).
 */
function legacyWindow(f: MachineFacts, r: Ranges, ram: string, end: number, notes: string[]): void {
  const isa = isaBios(f, r);
  const pcRom = r.size('pc.rom');
  if (!f.hostBridge) notes.push('0xc0000-0xfffff: the chipset registers are unknown (no device description), so RAM is assumed there, as after the firmware has run');
  for (let at = PAM_START; at < end; at += PAM_SEGMENT) {
    const mode = f.hostBridge ? pamMode(f.hostBridge.pam, at) : 3;
    if (mode !== 0) {
      r.add(at, PAM_SEGMENT, ram, at, mode === 1 ? 'rom' : 'ram');
    } else if (at < 0xe0000 && pcRom !== undefined && at + PAM_SEGMENT - PAM_START <= pcRom) {
      r.add(at, PAM_SEGMENT, 'pc.rom', at - PAM_START, 'rom');
    } else if (isa && at >= MiB - isa.length) {
      r.add(at, PAM_SEGMENT, isa.block, isa.offset + (at - (MiB - isa.length)), isa.kind);
    } else {
      // Nothing in the PCI window there: RAM shows through.
      r.add(at, PAM_SEGMENT, ram, at, 'ram');
    }
  }
}

/** PAM mode of the 16 KiB piece at `at`: PAM0's high nibble covers 0xf0000-0xfffff, PAM1-6 two pieces each. */
function pamMode(pam: Uint8Array, at: number): number {
  if (at >= 0xf0000) return (pam[0] >> 4) & 3;
  const piece = (at - PAM_START) / PAM_SEGMENT; // 0..11
  const reg = pam[1 + (piece >> 1)];
  return (piece & 1 ? reg >> 4 : reg) & 3;
}

/**
 * The BIOS copy below 1 MiB ("isa-bios", hw/i386/pc_sysfw.c and x86-common.c):
 * the last min(size, 128 KiB) of pc.bios; with flash firmware, of
 * system.flash0 (an alias, QEMU 9.1 and later) or a block of its own
 * named isa-bios (older machine types).
 */
function isaBios(f: MachineFacts, r: Ranges): { block: string; offset: number; length: number; kind: RangeKind } | undefined {
  const copy = r.size('isa-bios');
  if (copy !== undefined) return { block: 'isa-bios', offset: 0, length: Math.min(copy, ISA_BIOS_MAX), kind: 'rom' };
  for (const [name, kind] of [['pc.bios', 'rom'], ['system.flash0', 'romd']] as const) {
    const size = r.size(name);
    if (size !== undefined) {
      const length = Math.min(size, ISA_BIOS_MAX);
      return { block: name, offset: size - length, length, kind };
    }
  }
  return undefined;
}

/** The firmware at the top of 4 GiB: pc.bios, or flash banks stacked down from 4 GiB (flash0 on top). */
function firmware(f: MachineFacts, r: Ranges, notes: string[]): void {
  const bios = r.size('pc.bios');
  if (bios !== undefined) {
    r.add(FOUR_GIB - bios, bios, 'pc.bios', 0, 'rom');
    return;
  }
  let top = FOUR_GIB;
  for (const name of ['system.flash0', 'system.flash1']) {
    const size = r.size(name);
    if (size === undefined) break;
    top -= size;
    r.add(top, size, name, 0, 'romd');
  }
  if (top === FOUR_GIB) notes.push('no pc.bios or system.flash0 block: nothing mapped below 4 GiB for the firmware');
}

function virtMap(f: MachineFacts): PhysMap {
  const r = new Ranges(f.blocks);
  const ram = mainRam(f);
  r.add(VIRT_RAM, ram.usedLength, ram.name, 0, 'ram');
  const flash0 = r.size('virt.flash0');
  const flash1 = r.size('virt.flash1');
  if (flash0 !== undefined) r.add(0, Math.min(flash0, VIRT_FLASH1), 'virt.flash0', 0, 'romd');
  if (flash1 !== undefined) r.add(VIRT_FLASH1, Math.min(flash1, VIRT_FLASH1), 'virt.flash1', 0, 'romd');
  return r.map(f.machine, [`${ram.name} from 0x40000000`]);
}

function sun4uMap(f: MachineFacts): PhysMap {
  const r = new Ranges(f.blocks);
  const ram = mainRam(f);
  r.add(0, ram.usedLength, ram.name, 0, 'ram');
  const prom = r.size('sun4u.prom');
  if (prom !== undefined) r.add(SUN4U_PROM, prom, 'sun4u.prom', 0, 'rom');
  return r.map(f.machine, []);
}

/**
 * Checks a map against the snapshot's blocks: every range inside its block,
 * on the block's page boundaries (the ELF and raw exports copy whole pages
 * and leave holes), and no two ranges overlapping. `where` names the
 * source in errors ("map" for --map, the machine for a built-in map).
 */
export function checkMap(map: PhysMap, blocks: readonly (NamedBlock & { pageSize: number })[], where = 'map'): void {
  const bad = (code: string, i: number, msg: string): RamsnapUsageError => new RamsnapUsageError(code, `${where}: range ${i}: ${msg}`, `${where}.ranges[${i}]`);
  map.ranges.forEach((x, i) => {
    const b = blocks.find((y) => y.name === x.block);
    if (!b) throw bad('UNKNOWN_BLOCK', i, `no RAMBlock named ${JSON.stringify(x.block)} (blocks: ${blocks.map((y) => y.name).join(', ')})`);
    for (const [k, v] of [['start', x.start], ['length', x.length], ['offset', x.offset]] as const) {
      if (!Number.isSafeInteger(v) || v < 0) throw bad('BAD_MAP', i, `${k} must be a whole number of bytes, got ${v}`);
    }
    if (x.length === 0) throw bad('BAD_MAP', i, 'length is 0');
    if (x.offset + x.length > b.usedLength) {
      throw bad('MAP_OUT_OF_BLOCK', i, `${hex(x.offset)}+${hex(x.length)} runs past the end of ${b.name} (${hex(b.usedLength)} bytes)`);
    }
    if (x.start % b.pageSize || x.length % b.pageSize || x.offset % b.pageSize) {
      throw bad('MAP_MISALIGNED', i, `start, length and offset must be multiples of ${b.name}'s page size (${b.pageSize})`);
    }
    if (!Number.isSafeInteger(x.start + x.length)) throw bad('BAD_MAP', i, 'ends past 2^53');
  });
  const sorted = map.ranges.map((x, i) => ({ x, i })).sort((a, b) => a.x.start - b.x.start);
  for (let k = 1; k < sorted.length; k++) {
    const prev = sorted[k - 1].x;
    if (sorted[k].x.start < prev.start + prev.length) {
      throw bad('MAP_OVERLAP', sorted[k].i, `${hex(sorted[k].x.start)} overlaps range ${sorted[k - 1].i} (${hex(prev.start)}-${hex(prev.start + prev.length - 1)})`);
    }
  }
}

/**
 * The segments of a core as QEMU's dump-guest-memory makes them: RAM and ROM
 * only (never ROM devices), neighbours joined when they are contiguous in
 * both the guest and the same block (system/memory_mapping.c).
 */
export function coreSegments(map: PhysMap): PhysRange[] {
  const out: PhysRange[] = [];
  for (const x of map.ranges) {
    if (x.kind === 'romd') continue;
    const last = out[out.length - 1];
    if (last && last.block === x.block && last.start + last.length === x.start && last.offset + last.length === x.offset) {
      last.length += x.length;
      if (x.kind === 'ram') last.kind = 'ram';
    } else {
      out.push({ ...x });
    }
  }
  return out;
}

export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
