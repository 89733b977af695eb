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
import os from 'node:os';
import { Worker } from 'node:worker_threads';
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
  /** Per block, two 32-bit words per page, shared with the scan threads. */
  private readonly hashes: SharedArrayBuffer[];
  private readonly threads: ScanThread[] = [];

  private constructor(
    readonly pageSize: number,
    readonly blocks: readonly SharedBlock[],
    private readonly fds: number[],
  ) {
    const zero = new Uint32Array(2);
    hashPage(new Uint32Array(pageSize / 4), 0, pageSize / 4, zero);
    // Before the first pass the file we write holds nothing: every page reads as zero there.
    this.hashes = blocks.map((b) => {
      const sab = new SharedArrayBuffer((b.usedLength / pageSize) * 8);
      const h = new Uint32Array(sab);
      for (let i = 0; i < h.length; i += 2) h.set(zero, i);
      return sab;
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

  /**
   * Scans with `concurrency` threads (at most the cores there are): each
   * reads a chunk into its own shared buffer, hashes it and updates the
   * hashes, and answers with the runs of changed pages, which are emitted
   * from that same buffer before the thread gets its next chunk.
   */
  async collect(emit: (run: DirtyRun) => Promise<void>, concurrency = 2): Promise<CollectResult> {
    const ps = this.pageSize;
    const chunkPages = Math.max(1, Math.floor(SCAN_CHUNK / ps));
    let pages = 0;
    let scanMs = 0;
    const jobs: ScanJob[] = [];
    this.blocks.forEach((b, block) => {
      const total = b.usedLength / ps;
      for (let first = 0; first < total; first += chunkPages) jobs.push({ block, first, count: Math.min(chunkPages, total - first) });
    });
    const n = Math.max(1, Math.min(concurrency, os.availableParallelism(), jobs.length));
    while (this.threads.length < n) {
      this.threads.push(
        new ScanThread({ blocks: this.blocks.map((b, i) => ({ path: b.path, offset: b.offset ?? 0, hashes: this.hashes[i] })), pageSize: ps, chunkBytes: chunkPages * ps }),
      );
    }
    let next = 0;
    const run = async (t: ScanThread): Promise<void> => {
      while (next < jobs.length) {
        const job = jobs[next++];
        const t0 = performance.now();
        const runs = await t.scan(job);
        scanMs += performance.now() - t0;
        const name = this.blocks[job.block].name;
        for (let i = 0; i < runs.length; i += 2) {
          const [s, e] = [runs[i], runs[i + 1]];
          pages += e - s;
          await emit({ block: name, first: job.first + s, data: t.data.subarray(s * ps, e * ps) });
        }
      }
    };
    await Promise.all(this.threads.slice(0, n).map(run));
    // The threads scan side by side: the pass spent about their sum over their number finding pages.
    return { pages, scanMs: scanMs / n };
  }

  async close(): Promise<void> {
    await Promise.all(this.threads.splice(0).map((t) => t.stop()));
    for (const fd of this.fds.splice(0)) fs.closeSync(fd);
  }
}

interface ScanJob {
  block: number;
  first: number;
  count: number;
}

interface ScanSetup {
  blocks: { path: string; offset: number; hashes: SharedArrayBuffer }[];
  pageSize: number;
  chunkBytes: number;
  buffer?: SharedArrayBuffer;
}

/**
 * The body of a scan thread, as source text run with `eval`: hashPage's own
 * source is put before it, so the thread needs no file of its own (the
 * built package, a bundle and the tests run from source all work) and the
 * hash exists once. It is plain JavaScript in a string so no compiler or
 * bundler rewrites its `require` calls.
 */
const SCAN_THREAD_MAIN = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const setup = workerData;
const fds = setup.blocks.map((b) => fs.openSync(b.path, 'r'));
const hashes = setup.blocks.map((b) => new Uint32Array(b.hashes));
const buf = new Uint8Array(setup.buffer);
const words = new Uint32Array(setup.buffer);
const wordsPerPage = setup.pageSize / 4;
const now = new Uint32Array(2);
parentPort.on('message', (job) => {
  if (job === null) {
    for (const fd of fds) fs.closeSync(fd);
    parentPort.close();
    return;
  }
  try {
    const length = job.count * setup.pageSize;
    const position = setup.blocks[job.block].offset + job.first * setup.pageSize;
    for (let done = 0; done < length; ) {
      const got = fs.readSync(fds[job.block], buf, done, length - done, position + done);
      if (got === 0) throw Object.assign(new Error('ended at ' + (position + done)), { code: 'SHORT' });
      done += got;
    }
    const h = hashes[job.block];
    const runs = [];
    let runStart = -1;
    for (let p = 0; p < job.count; p++) {
      hashPage(words, p * wordsPerPage, wordsPerPage, now);
      const k = (job.first + p) * 2;
      if (h[k] !== now[0] || h[k + 1] !== now[1]) {
        h[k] = now[0];
        h[k + 1] = now[1];
        if (runStart < 0) runStart = p;
      } else if (runStart >= 0) {
        runs.push(runStart, p);
        runStart = -1;
      }
    }
    if (runStart >= 0) runs.push(runStart, job.count);
    parentPort.postMessage({ runs });
  } catch (err) {
    parentPort.postMessage({ error: { code: err.code || 'EIO', message: err.message } });
  }
});
`;

const SCAN_THREAD_SOURCE = `const hashPage = ${hashPage.toString()};\n${SCAN_THREAD_MAIN}`;

/** One scan thread, one chunk at a time, its buffer shared with us. */
class ScanThread {
  readonly data: Buffer;
  private readonly worker: Worker;
  private waiting: { resolve: (runs: number[]) => void; reject: (e: Error) => void } | undefined;
  private readonly paths: string[];

  constructor(setup: ScanSetup) {
    const buffer = new SharedArrayBuffer(setup.chunkBytes);
    this.data = Buffer.from(buffer);
    this.paths = setup.blocks.map((b) => b.path);
    this.worker = new Worker(SCAN_THREAD_SOURCE, { eval: true, workerData: { ...setup, buffer } });
    this.worker.on('message', (m: { runs?: number[]; error?: { code: string; message: string } }) => {
      const w = this.waiting;
      this.waiting = undefined;
      this.worker.unref();
      if (!w) return;
      if (m.error) w.reject(ioError(Object.assign(new Error(m.error.message), { code: m.error.code }), this.paths.join(', '), 'read guest RAM from'));
      else w.resolve(m.runs ?? []);
    });
    this.worker.on('error', (err) => {
      this.waiting?.reject(ioError(err, this.paths.join(', '), 'scan'));
      this.waiting = undefined;
    });
    this.worker.unref();
  }

  scan(job: ScanJob): Promise<number[]> {
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      // Held only while a chunk is out: an idle thread never keeps the process alive.
      this.worker.ref();
      this.worker.postMessage(job);
    });
  }

  async stop(): Promise<void> {
    this.worker.postMessage(null);
    await this.worker.terminate();
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
