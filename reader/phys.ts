/**
 * Guest-physical memory of a snapshot: the machine's memory map
 * (format/phys-map.ts, or a map file the user gives), and reads by
 * guest-physical address across it.
 */
import fs from 'node:fs';
import { FormatCode, RamsnapFormatError, RamsnapUsageError, ioError } from '../format/errors.js';
import { checkMap, hex, machineMap, noMemoryMap, type HostBridgeState, type PhysMap, type PhysRange, type RangeKind } from '../format/phys-map.js';
import type { StateMap } from '../format/vmstate.js';
import type { Snapshot } from './snapshot.js';

/** Where each host bridge keeps PAM0 and the SMRAM register in its PCI configuration space (hw/pci-host/q35.c, i440fx.c). */
const HOST_BRIDGES = [
  { section: /\/mch$/, pam: 0x90, smram: 0x9d },
  { section: /\/I440FX$/, pam: 0x59, smram: 0x72 },
];
const PAM_REGISTERS = 7;
/**
 * RAMBlocks of VGA devices, whose legacy window sits at 0xa0000
 * (hw/display/vga.c vga_common_init; qxl's VGA memory). A PCI device's
 * blocks are named after its address: "0000:00:01.0/vga.vram".
 */
const VGA_BLOCK = /(^|\/)(vga\.vram|qxl\.vgavram)$/;
/** A VGA framebuffer that BAR 0 of its PCI device maps (std VGA, virtio-vga: hw/display/vga-pci.c, virtio-vga.c). */
const PCI_FRAMEBUFFER = /^([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\/vga\.vram$/;
/** PCI configuration space: the command register (bit 1: memory space decoding on) and BAR 0 (hw/pci/pci_regs.h). */
const PCI_COMMAND = 0x04;
const PCI_COMMAND_MEMORY = 0x2;
const PCI_BAR0 = 0x10;
/** Most a map file may hold: a map is a few dozen ranges, and this one is read whole. */
const MAX_MAP_FILE = 1 << 20;

export interface MapOptions {
  /** A map file (the JSON of `ramsnap map --json`) instead of the machine's own map. */
  mapFile?: string;
}

/** The snapshot's memory map: the map file's if given, else the machine's. Checked against the blocks either way. */
export async function memoryMap(snap: Snapshot, o: MapOptions = {}): Promise<PhysMap> {
  const map = o.mapFile !== undefined ? readMapFile(o.mapFile) : await builtinMap(snap);
  checkMap(map, snap.blocks, o.mapFile !== undefined ? 'map' : snap.model.configuration?.machine ?? 'map');
  return map;
}

async function builtinMap(snap: Snapshot): Promise<PhysMap> {
  const machine = snap.model.configuration?.machine;
  if (!machine) throw noMemoryMap('(none: the file has no configuration section)');
  return machineMap({ machine, blocks: snap.blocks, hostBridge: await hostBridge(snap), vga: snap.blocks.some((b) => VGA_BLOCK.test(b.name)), pciRam: framebuffers(snap) });
}

/** Red Hat's PCI vendor id, which every virtio-pci device has (hw/pci/pci_ids.h PCI_VENDOR_ID_REDHAT_QUMRANET). */
const VIRTIO_PCI_VENDOR = 0x1af4;

/**
 * The saved PCI configuration space of a decoded device section:
 * `dev.config` or `parent_obj.config`; for a virtio-pci device, inside the
 * `virtio` field, whose transport state starts as the PCI device state
 * does (be32 version, then the configuration space; hw/virtio/virtio-pci.c
 * virtio_pci_save_config).
 */
function pciConfig(value: unknown): Uint8Array | undefined {
  if (!(value instanceof Map)) return undefined;
  const hex = (v: unknown): Buffer | undefined => (typeof v === 'string' ? Buffer.from(v.replaceAll(' ', ''), 'hex') : undefined);
  for (const key of ['dev', 'parent_obj']) {
    const dev = (value as StateMap).get(key);
    const config = dev instanceof Map ? hex(dev.get('config[0]') ?? dev.get('config')) : undefined;
    if (config) return config;
  }
  const virtio = hex((value as StateMap).get('virtio'));
  const config = virtio?.subarray(PCI_VERSION_ID_BYTES, PCI_VERSION_ID_BYTES + PCI_CONFIG_BYTES);
  return config && config.length === PCI_CONFIG_BYTES && config.readUInt16LE(0) === VIRTIO_PCI_VENDOR ? config : undefined;
}

/**
 * VGA framebuffers where the firmware put them: BAR 0 of the device whose
 * address names the block, when the device decodes memory. A device that
 * has not been set up yet (BAR 0 still 0, or decoding off) maps nothing.
 */
function framebuffers(snap: Snapshot): { block: string; start: number }[] {
  const out: { block: string; start: number }[] = [];
  for (const b of snap.blocks) {
    const pci = PCI_FRAMEBUFFER.exec(b.name)?.[1];
    if (!pci) continue;
    const config = snap.model.devices.filter((d) => d.section.name.startsWith(`${pci}/`)).map((d) => pciConfig(d.value)).find((c) => c && c.length >= 0x40);
    if (!config || !(config[PCI_COMMAND] & PCI_COMMAND_MEMORY)) continue;
    const bar = Buffer.from(config.buffer, config.byteOffset, config.length);
    const low = bar.readUInt32LE(PCI_BAR0);
    if (low & 1) continue; // an I/O BAR
    // Bits 2:1 = 2: a 64-bit BAR, its high half in the next one.
    const high = (low & 0x6) === 0x4 ? bar.readUInt32LE(PCI_BAR0 + 4) : 0;
    const start = high * 2 ** 32 + ((low & ~0xf) >>> 0);
    if (start > 0 && start % b.pageSize === 0 && Number.isSafeInteger(start + b.usedLength)) out.push({ block: b.name, start });
  }
  return out;
}

/** Bytes of a PCI device's state before its configuration space: the PCIDevice vmstate's version_id (hw/pci/pci.c vmstate_pci_device). */
const PCI_VERSION_ID_BYTES = 4;
const PCI_CONFIG_BYTES = 256;

/**
 * PAM and SMRAM from the host bridge's saved PCI configuration. Decoded
 * with the device description when the file has one; without it (QEMU's
 * suppress-vmdesc), read where both host bridges keep it: their state
 * begins with the PCIDevice state (q35 vmstate_mch, i440fx
 * vmstate_i440fx: parent_obj first), a be32 version then the 256 bytes.
 */
async function hostBridge(snap: Snapshot): Promise<HostBridgeState | undefined> {
  for (const d of snap.model.devices) {
    const hb = HOST_BRIDGES.find((h) => h.section.test(d.section.name));
    if (!hb) continue;
    const field = `${d.section.name}.parent_obj.config`;
    let config: Uint8Array | undefined;
    if (d.value instanceof Map) {
      const parent = (d.value as StateMap).get('parent_obj');
      const hexBytes = parent instanceof Map ? parent.get('config[0]') ?? parent.get('config') : undefined;
      config = typeof hexBytes === 'string' ? Buffer.from(hexBytes.replaceAll(' ', ''), 'hex') : undefined;
    } else {
      // Section header: type u8, section id be32, name length u8 and the name, instance id be32, version id be32.
      const body = d.section.offset + 1 + 4 + 1 + Buffer.byteLength(d.section.name, 'latin1') + 4 + 4;
      if (body + PCI_VERSION_ID_BYTES + PCI_CONFIG_BYTES <= d.section.end) {
        config = await snap.source.read(body + PCI_VERSION_ID_BYTES, PCI_CONFIG_BYTES, field);
      }
    }
    if (!config || config.length < PCI_CONFIG_BYTES) {
      throw new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `the host bridge's saved PCI configuration is not ${PCI_CONFIG_BYTES} bytes`, { field, offset: d.section.offset });
    }
    return { pam: config.slice(hb.pam, hb.pam + PAM_REGISTERS), smram: config[hb.smram] };
  }
  return undefined;
}

/**
 * A map file: `{"ranges": [{"start", "length", "block", "offset", "kind"}]}`,
 * numbers as JSON numbers or "0x..." strings, kind "ram", "rom" or "romd"
 * (default "ram"). `ramsnap map --json` writes this format.
 */
export function readMapFile(file: string): PhysMap {
  let text: string;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new RamsnapUsageError('BAD_MAP', `map ${file} is not a regular file`, 'map');
    if (st.size > MAX_MAP_FILE) throw new RamsnapUsageError('BAD_MAP', `map ${file} is ${st.size} bytes; a map is at most ${MAX_MAP_FILE}`, 'map');
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw err instanceof RamsnapUsageError ? err : ioError(err, file, 'read');
  }
  return parseMap(text, file);
}

export function parseMap(text: string, file = 'map'): PhysMap {
  const bad = (msg: string, field = 'map'): RamsnapUsageError => new RamsnapUsageError('BAD_MAP', `${file}: ${msg}`, field);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw bad(`not JSON (${(err as Error).message})`);
  }
  const list = (doc as { ranges?: unknown } | null)?.ranges;
  if (!Array.isArray(list)) throw bad('needs a "ranges" list');
  const ranges = list.map((x: unknown, i): PhysRange => {
    const field = `map.ranges[${i}]`;
    if (typeof x !== 'object' || x === null) throw bad(`range ${i} is not an object`, field);
    const o = x as Record<string, unknown>;
    const num = (k: string): number => {
      const v = o[k];
      const n = typeof v === 'number' ? v : typeof v === 'string' && /^(0x[0-9a-f]+|\d+)$/i.test(v) ? Number(v) : NaN;
      if (!Number.isSafeInteger(n) || n < 0) throw bad(`range ${i}: ${k} must be a whole number (or a "0x..." string), got ${JSON.stringify(v)}`, `${field}.${k}`);
      return n;
    };
    if (typeof o.block !== 'string') throw bad(`range ${i}: block must be a RAMBlock name`, `${field}.block`);
    const kind = o.kind ?? 'ram';
    if (kind !== 'ram' && kind !== 'rom' && kind !== 'romd') throw bad(`range ${i}: kind must be ram, rom or romd`, `${field}.kind`);
    return { start: num('start'), length: num('length'), block: o.block, offset: num('offset'), kind: kind as RangeKind };
  });
  return { machine: 'file', ranges: ranges.sort((a, b) => a.start - b.start), notes: [`from ${file}`] };
}

/** Reads guest memory by guest-physical address. */
export class PhysicalMemory {
  constructor(
    readonly snap: Snapshot,
    readonly map: PhysMap,
  ) {}

  static async open(snap: Snapshot, o: MapOptions = {}): Promise<PhysicalMemory> {
    return new PhysicalMemory(snap, await memoryMap(snap, o));
  }

  /** The ranges that hold [addr, addr + length), clipped to it; NO_MEMORY_AT where a byte of it has none behind it. */
  resolve(addr: number, length: number): PhysRange[] {
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(length) || addr < 0 || length < 0 || !Number.isSafeInteger(addr + length)) {
      throw new RamsnapUsageError('OUT_OF_RANGE', `address ${addr} and length ${length} must be whole numbers`, 'phys');
    }
    const out: PhysRange[] = [];
    let at = addr;
    const end = addr + length;
    for (const r of this.map.ranges) {
      if (at >= end) break;
      if (r.start + r.length <= at) continue;
      if (r.start > at) break;
      const take = Math.min(end, r.start + r.length) - at;
      out.push({ ...r, start: at, length: take, offset: r.offset + (at - r.start) });
      at += take;
    }
    if (at < end) {
      const next = this.map.ranges.find((r) => r.start > at);
      throw new RamsnapUsageError(
        'NO_MEMORY_AT',
        `nothing at guest-physical ${hex(at)}: no RAM or ROM there in the ${this.map.machine} memory map${next ? ` (the next range starts at ${hex(next.start)})` : ''}; see \`ramsnap map\``,
        'phys',
      );
    }
    return out;
  }

  /** Reads [addr, addr + length); absent pages read as zero. One read per run of present pages. */
  async read(addr: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    const parts = this.resolve(addr, length);
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    for (const p of parts) {
      await this.snap.read(p.block, p.offset, p.length, out.subarray(p.start - addr, p.start - addr + p.length));
    }
    return out;
  }
}
