/**
 * Which block of a snapshot an instant restore maps from the file, and the
 * QEMU arguments that map it.
 *
 * A mapped-ram page region is laid out exactly like the RAM it holds (page
 * i at pages_offset + i * page_size, pages_offset aligned to 1 MiB), so a
 * memory-backend-file with `offset=pages_offset` over the snapshot is the
 * block's memory. `share=off` makes the mapping private (copy-on-write: the
 * guest's writes never reach the file) and `readonly=on,rom=off` opens the
 * file read-only while keeping the mapping writable; `reserve=off` charges
 * the mapping only for the pages the guest writes. The backend becomes
 * the machine's RAM with `-machine memory-backend=ID`; naming it after the
 * block gives the RAMBlock the block's name, so the stream matches it.
 */
import fs from 'node:fs';
import { RamsnapError, RamsnapUsageError } from '../format/errors.js';
import { MAPPED_RAM_ALIGNMENT } from '../format/constants.js';
import { mainRamBlock } from '../format/main-ram.js';
import type { RamBlock } from '../reader/model.js';
import type { Snapshot } from '../reader/snapshot.js';

/**
 * Boards whose RAM is not the machine's memory backend: QEMU allocates it
 * itself, so `-machine memory-backend=` aborts ("RAMBlock sun4u.ram already
 * registered").
 */
const NO_RAM_BACKEND = /^sun4[uv]/;

/** mmap() maps whole host pages: the page region must start on one (4 KiB on x86; 16 or 64 KiB on some Arm and POWER hosts). */
let hostPage: number | undefined;
export function hostPageSize(): number {
  // The kernel says it for every mapping in /proc/self/smaps; the first one will do (no process to spawn).
  if (hostPage === undefined) {
    let n = NaN;
    try {
      const fd = fs.openSync('/proc/self/smaps', 'r');
      try {
        const buf = Buffer.alloc(4096);
        const m = /KernelPageSize:\s+(\d+) kB/.exec(buf.toString('latin1', 0, fs.readSync(fd, buf, 0, buf.length, null)));
        n = m ? Number(m[1]) * 1024 : NaN;
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      /* not Linux */
    }
    hostPage = Number.isInteger(n) && n > 0 ? n : 4096;
  }
  return hostPage;
}

/** Where restore found the block it maps. */
export type MappedBlockSource = 'named' | 'machine RAM' | 'largest block';

export interface RestorePlan {
  /** The snapshot file, absolute (QEMU may run elsewhere). */
  snapshot: string;
  machine: string;
  block: RamBlock;
  /** How the block was chosen. */
  found: MappedBlockSource;
  /** File offset of the block's page region: the backend's offset=. */
  pagesOffset: number;
  /** The QEMU arguments that map the block, one word each. */
  qemuArgs: string[];
}

export interface PlanRestoreOptions {
  /** The block to map, instead of the machine's RAM. */
  ramBlock?: string;
}

/** Why the snapshot cannot be mapped; `--copy` restores it the ordinary way. */
function unsupported(message: string): RamsnapError {
  return new RamsnapError('RESTORE_UNSUPPORTED', `${message}; ramsnap restore --copy restores it by copying instead`);
}

/** Chooses the block to map and checks that mapping it can work. */
export function planRestore(snap: Snapshot, snapshotPath: string, o: PlanRestoreOptions = {}): RestorePlan {
  const m = snap.model;
  const machine = m.configuration?.machine;
  if (!machine) throw unsupported('the snapshot has no configuration section, so its machine type is unknown');
  if (!m.mappedRam) throw unsupported('the snapshot is a legacy (sequential) stream: its pages have no fixed place in the file to map');
  if (m.configuration?.capabilities.includes('x-ignore-shared')) throw unsupported('the snapshot was saved with x-ignore-shared: its shared blocks are not in the file');
  if (NO_RAM_BACKEND.test(machine)) throw unsupported(`machine ${machine} allocates its RAM itself and cannot take a memory backend for it`);
  const { block, found } = chooseBlock(snap, o.ramBlock);
  if (!/^[A-Za-z][A-Za-z0-9._-]*$/.test(block.name)) {
    // The backend's id names the RAMBlock; QEMU ids take letters, digits, '-', '.', '_', starting with a letter.
    throw new RamsnapUsageError('RESTORE_UNSUPPORTED', `block ${JSON.stringify(block.name)} cannot be mapped: no memory backend can have that id (name the machine's RAM block with --ram-block)`, 'ram-block');
  }
  const mr = block.mappedRam;
  if (!mr) throw unsupported(`block ${block.name} has no page region in the file`);
  const host = hostPageSize();
  if (mr.pagesOffset % host !== 0) {
    throw unsupported(`the page region of ${block.name} starts at ${mr.pagesOffset}, not on a ${host}-byte host page, so it cannot be mapped`);
  }
  if (block.usedLength % host !== 0) {
    throw unsupported(`block ${block.name} is ${block.usedLength} bytes, not a whole number of ${host}-byte host pages`);
  }
  const qemuArgs = [
    '-machine', `${machine},memory-backend=${block.name}`,
    '-m', memorySize(block.usedLength),
    '-object',
    [
      'memory-backend-file',
      `id=${block.name}`,
      `size=${block.usedLength}`,
      `mem-path=${snapshotPath.replaceAll(',', ',,')}`,
      `offset=${mr.pagesOffset}`,
      'share=off',
      'readonly=on',
      'rom=off',
      // MAP_NORESERVE: a private mapping is charged only for the pages the guest writes; without it the kernel
      // refuses one larger than it can promise (a 64 GiB guest on a 24 GiB host), though nothing is copied up front.
      'reserve=off',
    ].join(','),
  ];
  return { snapshot: snapshotPath, machine, block, found, pagesOffset: mr.pagesOffset, qemuArgs };
}

function chooseBlock(snap: Snapshot, name: string | undefined): { block: RamBlock; found: MappedBlockSource } {
  if (name !== undefined) return { block: snap.block(name), found: 'named' };
  const main = mainRamBlock(snap.blocks);
  if (!main) throw unsupported('the snapshot has no RAM blocks');
  return main;
}

/** `-m` takes MiB by default; say the unit so that any size in KiB is exact. */
function memorySize(bytes: number): string {
  return bytes % MAPPED_RAM_ALIGNMENT === 0 ? `${bytes / MAPPED_RAM_ALIGNMENT}M` : `${bytes / 1024}K`;
}

/** One line of shell words: quoted only where the shell would split or expand. */
export function shellWords(words: string[]): string {
  return words.map((w) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(w) ? w : `'${w.replaceAll("'", `'\\''`)}'`)).join(' ');
}
