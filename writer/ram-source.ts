/**
 * Where a live save takes guest memory from.
 *
 * A precopy save copies memory while the guest keeps writing it, so besides
 * the blocks and their bytes a source must say which pages changed since it
 * was last asked. QEMU asks KVM's dirty log; a process outside QEMU has no
 * such log, so the file-backed source below finds changed pages by hashing
 * every page on each pass and comparing with the hash of what it handed out
 * last time.
 */
import fs from 'node:fs';
import { RamsnapUsageError, ioError } from '../format/errors.js';

export interface SourceBlock {
  name: string;
  usedLength: number;
}

/** A run of pages of one block, with their bytes at the moment they were found dirty. */
export interface DirtyRun {
  block: string;
  first: number;
  data: Uint8Array;
}

export interface CollectResult {
  /** Pages handed to `emit` (dirty since the previous collect). */
  pages: number;
  /** Milliseconds of the pass spent finding them (reading and hashing), besides emitting. */
  scanMs: number;
}

export interface RamSource {
  readonly pageSize: number;
  readonly blocks: readonly SourceBlock[];
  /** Reads whole pages of `block` from page `first` into `into` (a multiple of the page size). */
  read(block: string, first: number, into: Uint8Array): Promise<void>;
  /**
   * Hands every run of pages dirtied since the previous call to `emit`
   * (at the first call: every page that may be non-zero), with the bytes the
   * page had when it was found. The bytes are only valid until `emit`'s
   * promise settles: the source reuses its buffers. Runs are emitted with
   * up to `concurrency` emits in flight.
   */
  collect(emit: (run: DirtyRun) => Promise<void>, concurrency?: number): Promise<CollectResult>;
  /** Pages known to be dirty now, or -1 when the source cannot know without a pass. */
  dirtyPages(): number;
  close(): Promise<void>;
}

/** Bytes read per chunk while scanning a file-backed block. */
export const SCAN_CHUNK = 4 << 20;

/**
 * A 64-bit fingerprint of one page, as two 32-bit lanes that each take every
 * 32-bit word. Each step (xor, multiply by an odd constant, rotate) is a
 * bijection of the lane for a fixed word, so a page that differs in a
 * single word always hashes differently; pages that differ in several
 * words collide with probability about 2^-64. Not a cryptographic hash: a
 * guest that wants its own snapshot inconsistent could aim for a collision
 * (SPEC.md, live save). About 2 GB/s on one core of the reference machine.
 */
export function hashPage(words: Uint32Array, start: number, count: number, out: Uint32Array, at = 0): void {
  let a = 0x9e3779b9 ^ count;
  let b = 0x7f4a7c15;
  const end = start + count;
  for (let i = start; i < end; i++) {
    const w = words[i];
    a = Math.imul(a ^ w, 0x85ebca77);
    a = (a << 13) | (a >>> 19);
    b = Math.imul(b ^ w, 0xc2b2ae3d);
    b = (b << 17) | (b >>> 15);
  }
  out[at] = a;
  out[at + 1] = b;
}

/** A guest RAM block that lives in a file QEMU shares with us (memory-backend-file, share=on). */
export interface SharedBlock extends SourceBlock {
  path: string;
  /** Byte offset of the block in the file (default 0). */
  offset?: number;
}

/**
 * Live guest RAM read from shared files (e.g. /dev/shm). Dirty pages are
 * found by hashing: a page is dirty when its hash differs from the hash of
 * the bytes last handed out for it. The hash is taken of the very bytes
 * that are handed out (one read serves both), so what the file holds and
 * what the hash remembers can never drift apart; a page that changes and
 * changes back between two passes is, rightly, not dirty. Memory: 8 bytes
 * per page (0.2% of the guest with 4 KiB pages).
 */
export class SharedFileSource implements RamSource {
  private readonly hashes: Uint32Array[];
  private readonly buffers: Buffer[] = [];

  private constructor(
    readonly pageSize: number,
    readonly blocks: readonly SharedBlock[],
    private readonly fds: number[],
  ) {
    const zero = new Uint32Array(2);
    hashPage(new Uint32Array(pageSize / 4), 0, pageSize / 4, zero);
    // Before the first pass the file we write holds nothing: every page reads as zero there.
    this.hashes = blocks.map((b) => {
      const h = new Uint32Array((b.usedLength / pageSize) * 2);
      for (let i = 0; i < h.length; i += 2) h.set(zero, i);
      return h;
    });
  }

  static open(blocks: SharedBlock[], pageSize: number): SharedFileSource {
    if (!Number.isInteger(pageSize) || pageSize < 4096 || pageSize % 4096 !== 0) {
      throw new RamsnapUsageError('BAD_PAGE_SIZE', `page size ${pageSize} is not a multiple of 4096`, 'pageSize');
    }
    const fds: number[] = [];
    try {
      for (const b of blocks) {
        if (b.usedLength % pageSize !== 0) {
          throw new RamsnapUsageError('BAD_BLOCK_LENGTH', `block ${b.name} is ${b.usedLength} bytes, not a whole number of ${pageSize}-byte pages`, 'usedLength');
        }
        let fd: number;
        try {
          fd = fs.openSync(b.path, fs.constants.O_RDONLY);
        } catch (err) {
          throw ioError(err, b.path, 'open');
        }
        fds.push(fd);
        const size = fs.fstatSync(fd).size;
        if (size < (b.offset ?? 0) + b.usedLength) {
          throw new RamsnapUsageError('RAM_FILE_TOO_SMALL', `${b.path} is ${size} bytes but block ${b.name} needs ${(b.offset ?? 0) + b.usedLength}`, 'ram');
        }
      }
    } catch (err) {
      for (const fd of fds) fs.closeSync(fd);
      throw err;
    }
    return new SharedFileSource(pageSize, blocks, fds);
  }

  private index(name: string): number {
    const i = this.blocks.findIndex((b) => b.name === name);
    if (i < 0) throw new RamsnapUsageError('UNKNOWN_BLOCK', `no shared block named ${JSON.stringify(name)}`, 'block');
    return i;
  }

  async read(block: string, first: number, into: Uint8Array): Promise<void> {
    const i = this.index(block);
    const b = this.blocks[i];
    await readFully(this.fds[i], into, (b.offset ?? 0) + first * this.pageSize, b.path);
  }

  dirtyPages(): number {
    return -1;
  }

  async collect(emit: (run: DirtyRun) => Promise<void>, concurrency = 2): Promise<CollectResult> {
    const ps = this.pageSize;
    const wordsPerPage = ps / 4;
    const chunkPages = Math.max(1, Math.floor(SCAN_CHUNK / ps));
    let pages = 0;
    let scanMs = 0;
    const jobs: { block: number; first: number; count: number }[] = [];
    this.blocks.forEach((b, block) => {
      const total = b.usedLength / ps;
      for (let first = 0; first < total; first += chunkPages) jobs.push({ block, first, count: Math.min(chunkPages, total - first) });
    });
    let next = 0;
    const worker = async (n: number): Promise<void> => {
      // Chunk buffers are kept from pass to pass.
      this.buffers[n] ??= Buffer.allocUnsafeSlow(chunkPages * ps);
      const buf = this.buffers[n];
      const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length / 4);
      const now = new Uint32Array(2);
      while (next < jobs.length) {
        const job = jobs[next++];
        const b = this.blocks[job.block];
        const h = this.hashes[job.block];
        const t0 = performance.now();
        const data = buf.subarray(0, job.count * ps);
        await readFully(this.fds[job.block], data, (b.offset ?? 0) + job.first * ps, b.path);
        // Runs of changed pages, emitted after the scan of the chunk: one write per run.
        const runs: [number, number][] = [];
        let runStart = -1;
        for (let p = 0; p < job.count; p++) {
          hashPage(words, p * wordsPerPage, wordsPerPage, now);
          const k = (job.first + p) * 2;
          if (h[k] !== now[0] || h[k + 1] !== now[1]) {
            h[k] = now[0];
            h[k + 1] = now[1];
            if (runStart < 0) runStart = p;
          } else if (runStart >= 0) {
            runs.push([runStart, p]);
            runStart = -1;
          }
        }
        if (runStart >= 0) runs.push([runStart, job.count]);
        scanMs += performance.now() - t0;
        for (const [s, e] of runs) {
          pages += e - s;
          await emit({ block: b.name, first: job.first + s, data: data.subarray(s * ps, e * ps) });
        }
      }
    };
    const workers = Math.max(1, Math.min(concurrency, jobs.length));
    await Promise.all(Array.from({ length: workers }, (_, n) => worker(n)));
    // The workers scan side by side: the pass spent about their sum over their number finding pages.
    return { pages, scanMs: scanMs / workers };
  }

  async close(): Promise<void> {
    for (const fd of this.fds.splice(0)) fs.closeSync(fd);
  }
}

async function readFully(fd: number, into: Uint8Array, position: number, path: string): Promise<void> {
  let done = 0;
  while (done < into.length) {
    let n: number;
    try {
      n = await new Promise<number>((resolve, reject) =>
        fs.read(fd, into, done, into.length - done, position + done, (err, bytes) => (err ? reject(err) : resolve(bytes))),
      );
    } catch (err) {
      throw ioError(err, path, 'read');
    }
    if (n === 0) throw new RamsnapUsageError('RAM_FILE_TOO_SMALL', `${path} ended at ${position + done} while reading guest RAM`, 'ram');
    done += n;
  }
}
