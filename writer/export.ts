/**
 * `ramsnap export`: a snapshot's guest-physical memory as the files that
 * forensic tools open, without a running QEMU.
 *
 * - elf: an ELF64 core like QEMU's dump-guest-memory with paging off: one
 *   PT_NOTE with the CPU notes (format/cpu-notes.ts), then one PT_LOAD per
 *   segment of the memory map, p_vaddr = p_paddr = the guest-physical
 *   address (format/elf.ts). Unlike QEMU's, each segment's bytes start on
 *   a page boundary of the file, so that absent and zero pages stay holes.
 * - raw: a flat image, byte A of the file = guest-physical byte A, holes
 *   wherever there is no memory or only zeros.
 *
 * Atomic like every writer: built under a temporary name (0600) and
 * renamed only when complete; an error or a signal removes it.
 */
import { arm64Cpu, arm64Notes, type CpuSection, x86Cpu, x86Notes } from '../format/cpu-notes.js';
import {
  ELF64_EHDR_SIZE,
  ELF64_PHDR_SIZE,
  ELF64_SHDR_SIZE,
  EM_SPARCV9,
  PN_XNUM,
  PT_LOAD,
  PT_NOTE,
  type ElfNote,
  encodeElfHeader,
  encodeNotes,
  encodeProgramHeader,
  encodeXnumSectionHeader,
} from '../format/elf.js';
import { coreSegments, type PhysMap, type PhysRange } from '../format/phys-map.js';
import { machineTarget } from '../format/target.js';
import type { StateMap } from '../format/vmstate.js';
import { copyBlock } from '../reader/extract.js';
import { memoryMap } from '../reader/phys.js';
import type { Snapshot } from '../reader/snapshot.js';
import { TempFile, type OutputOptions } from './sink.js';

export type ExportFormat = 'elf' | 'raw';

export interface ExportOptions extends OutputOptions {
  format: ExportFormat;
  /** Replace an existing regular file (never a device, FIFO, socket or directory). */
  force?: boolean;
  /** A map file instead of the machine's own map (reader/phys.ts). */
  mapFile?: string;
  /** Runs after the last byte is written and before the rename: throw to leave nothing (the CLI checks that the snapshot did not change). */
  beforeCommit?: () => void;
}

export interface ExportResult {
  path: string;
  format: ExportFormat;
  /** The ranges written: the core's PT_LOAD segments, or every mapped range of a flat image. */
  segments: PhysRange[];
  /** Size of the output (its holes included). */
  size: number;
  /** Bytes written (non-zero pages and headers). */
  bytesWritten: number;
  /** ELF notes written (0 for raw). */
  notes: number;
  /** What the output lacks that a user may expect (CPU notes that could not be made). */
  warnings: string[];
}

/** File offsets of segment data are multiples of this (and of every block's page size), so holes line up with pages. */
const DATA_ALIGN = 4096;

export async function exportSnapshot(snap: Snapshot, output: string, o: ExportOptions): Promise<ExportResult> {
  // Everything that can refuse (the map, the CPU state) is settled before the output is created.
  const map = await memoryMap(snap, { mapFile: o.mapFile });
  const plan = o.format === 'elf' ? planElf(snap, map) : planRaw(snap, map);
  const temp = TempFile.create(output, { force: o.force, mode: o.mode });
  try {
    let bytesWritten = 0;
    if (plan.header.length) {
      await temp.write(0, plan.header);
      bytesWritten += plan.header.length;
    }
    const total = plan.placed.reduce((n, p) => n + p.range.length, 0);
    let before = 0;
    for (const { range, fileOffset } of plan.placed) {
      const block = snap.block(range.block);
      const onProgress = o.onProgress && ((d: number): void => o.onProgress?.(before + d - range.offset, total));
      const r = await copyBlock(snap, block, temp.fd, temp.path, { window: { from: range.offset, length: range.length, outputAt: fileOffset }, onProgress });
      bytesWritten += r.bytesWritten;
      before += range.length;
    }
    await temp.seal(plan.size, false);
    o.beforeCommit?.();
    temp.publish(false);
    return { path: output, format: o.format, segments: plan.placed.map((p) => p.range), size: plan.size, bytesWritten, notes: plan.notes, warnings: plan.warnings };
  } catch (err) {
    await temp.discard();
    throw err;
  }
}

interface Plan {
  header: Uint8Array;
  placed: { range: PhysRange; fileOffset: number }[];
  size: number;
  notes: number;
  warnings: string[];
}

function planRaw(snap: Snapshot, map: PhysMap): Plan {
  const placed = map.ranges.map((range) => ({ range, fileOffset: range.start }));
  const size = Math.max(0, ...map.ranges.map((r) => r.start + r.length));
  return { header: new Uint8Array(0), placed, size, notes: 0, warnings: [] };
}

function planElf(snap: Snapshot, map: PhysMap): Plan {
  const segments = coreSegments(map);
  const cpu = coreNotes(snap, map);
  const phnum = 1 + segments.length;
  const xnum = phnum >= PN_XNUM;
  const phoff = ELF64_EHDR_SIZE;
  const shoff = phoff + phnum * ELF64_PHDR_SIZE;
  const noteOffset = shoff + (xnum ? ELF64_SHDR_SIZE : 0);
  const notes = encodeNotes(cpu.notes, cpu.littleEndian);
  const align = Math.max(DATA_ALIGN, ...snap.blocks.map((b) => b.pageSize));
  let at = Math.ceil((noteOffset + notes.length) / align) * align;
  const placed = segments.map((range) => {
    const p = { range, fileOffset: at };
    at += Math.ceil(range.length / align) * align;
    return p;
  });
  const last = placed[placed.length - 1];
  const size = last ? last.fileOffset + last.range.length : noteOffset + notes.length;

  const header = new Uint8Array(noteOffset + notes.length);
  header.set(encodeElfHeader({ littleEndian: cpu.littleEndian, machine: cpu.machine, phnum, phoff, shoff }), 0);
  // QEMU's own values: flags 0 and align 0 on every program header; the note segment at address 0.
  encodeProgramHeader({ type: PT_NOTE, flags: 0, offset: noteOffset, paddr: 0, filesz: notes.length, memsz: notes.length, align: 0 }, cpu.littleEndian, header, phoff);
  placed.forEach((p, i) => {
    const seg = { type: PT_LOAD, flags: 0, offset: p.fileOffset, paddr: p.range.start, filesz: p.range.length, memsz: p.range.length, align: 0 };
    encodeProgramHeader(seg, cpu.littleEndian, header, phoff + (i + 1) * ELF64_PHDR_SIZE);
  });
  if (xnum) header.set(encodeXnumSectionHeader(phnum, cpu.littleEndian), shoff);
  header.set(notes, noteOffset);
  return { header, placed, size, notes: cpu.notes.length, warnings: cpu.warnings };
}

/** The CPU notes for the snapshot's machine, in the byte order and with the ELF machine QEMU would use. */
export function coreNotes(snap: Snapshot, map: PhysMap): { machine: number; littleEndian: boolean; notes: ElfNote[]; warnings: string[] } {
  const machineType = snap.model.configuration?.machine ?? '';
  const target = machineTarget(machineType)?.target;
  const sections = snap.model.devices.filter((d) => d.section.name === 'cpu').sort((a, b) => a.section.instanceId - b.section.instanceId);
  const cpus: CpuSection[] = [];
  for (const d of sections) {
    if (d.value instanceof Map) cpus.push({ index: d.section.instanceId, state: d.value as StateMap, offset: d.section.offset });
  }
  const none = (machine: number, littleEndian: boolean, why: string): ReturnType<typeof coreNotes> => ({ machine, littleEndian, notes: [], warnings: [why] });
  if (target === 'sparc64') return none(EM_SPARCV9, false, 'no CPU notes: QEMU writes no cores for sparc64, so there is no note layout to follow');
  if (target !== 'x86_64' && target !== 'aarch64') {
    return none(0, true, `no CPU notes and no ELF machine: ramsnap makes notes for x86 and aarch64 machines, not ${machineType || 'an unknown machine'}${map.machine === 'file' ? ' (mapped by a map file)' : ''}`);
  }
  if (cpus.length === 0) {
    const why = sections.length ? 'the file has no device description, so the CPU state cannot be decoded' : 'the file has no CPU state';
    return none(target === 'x86_64' ? x86Notes([]).machine : arm64Notes([]).machine, true, `no CPU notes: ${why}`);
  }
  if (target === 'x86_64') return { ...x86Notes(cpus.map(x86Cpu)), littleEndian: true, warnings: [] };
  return { ...arm64Notes(cpus.map(arm64Cpu)), warnings: [] };
}
