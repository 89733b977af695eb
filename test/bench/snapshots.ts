/**
 * Snapshot inputs shared by the restore and export tables: a guest saved by
 * QEMU with mapped-ram, a RAM-only snapshot made by `ramsnap create` for
 * sizes QEMU cannot save here, and the plain QEMU guest that restores them.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { kvmAvailable } from '../../fixtures/qemu.js';
import { MiB, PAGE_SIZE, PageFiller, writeMemoryFile } from './guest.js';
import { qemuSave, type Guest } from './qemu-runs.js';

/** What a table gets from run.ts. */
export interface TableCtx {
  tmp: string;
  /** dist/analyze/bin.js. */
  cli: string;
  runs: number;
  log: (s: string) => void;
  notes: string[];
}

export const accel = (): string[] => ['-accel', kvmAvailable() ? 'kvm' : 'tcg'];

/** q35 whose RAM is the backend `block` (a RAMBlock takes its backend's id as its name). */
export function machine(bytes: number, block = 'mem0'): string[] {
  return ['-machine', `q35,memory-backend=${block}`, ...accel(), '-m', `${bytes / MiB}M`];
}

/** A q35 guest with ordinary RAM named `block`, as QEMU's own restore target for a file whose RAM block is `block`. */
export function ramGuest(dir: string, bytes: number, block = 'mem0'): Guest {
  return { dir, args: [...machine(bytes, block), '-object', `memory-backend-ram,id=${block},size=${bytes},reserve=off`] };
}

/** A guest of `bytes` (half of it data, from writeMemoryFile) saved by QEMU with mapped-ram, never run: `<tmp>/<name>.mig`. Its RAM block is mem0. */
export async function savedGuest(c: TableCtx, name: string, bytes: number): Promise<string> {
  const file = path.join(c.tmp, `${name}.mig`);
  const memFile = path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : c.tmp, `ramsnap-bench-${process.pid}-${name}.mem`);
  writeMemoryFile(memFile, bytes);
  try {
    const backend = `memory-backend-file,id=mem0,mem-path=${memFile},share=on,size=${bytes}`;
    await qemuSave({ dir: c.tmp, args: [...machine(bytes), '-object', backend] }, file, { 'mapped-ram': true }, {}, 600_000);
  } finally {
    fs.rmSync(memFile, { force: true });
  }
  return file;
}

/** Guest physical addresses of the 1 MiB blobs of the RAM-only guests (as the 64 GiB guest of the main bench). */
const BLOBS = [0x200000, 0x40000000, 0x1000000000];

/**
 * A RAM-only q35 snapshot of `bytes` (`<tmp>/<name>.mig`, block pc.ram)
 * made by `ramsnap create` from a sparse raw image with 1 MiB at each of
 * BLOBS below its size. QEMU cannot save a 64 GiB guest here: under TCG its
 * save faults in every page of guest RAM (4 GiB of RSS for an untouched
 * 4 GiB guest, measured), so the kernel kills it long before 64 GiB.
 */
export function createdGuest(c: TableCtx, name: string, bytes: number): string {
  const raw = path.join(c.tmp, `${name}.raw`);
  const file = path.join(c.tmp, `${name}.mig`);
  const fd = fs.openSync(raw, 'w');
  try {
    fs.ftruncateSync(fd, bytes);
    const filler = new PageFiller(0xb16);
    const buf = Buffer.alloc(MiB);
    for (const at of BLOBS.filter((a) => a + MiB <= bytes)) {
      filler.fill(buf, at / PAGE_SIZE, MiB / PAGE_SIZE);
      fs.writeSync(fd, buf, 0, MiB, at);
    }
  } finally {
    fs.closeSync(fd);
  }
  const r = spawnSync(process.execPath, [c.cli, 'create', '-o', file, '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${raw}`], { encoding: 'utf8' });
  fs.rmSync(raw, { force: true });
  if (r.status !== 0) throw new Error(`ramsnap create: ${r.stderr}`);
  return file;
}
