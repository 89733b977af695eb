/**
 * A simulated guest for tests and benchmarks of the precopy loop: one RAM
 * block whose pages are written at a set rate, in a set pattern, as time
 * passes on a clock (real, or virtual so a benchmark of a 4 GiB guest costs
 * no real seconds). Unlike a real guest it knows exactly which pages are
 * dirty, and what every page holds at any moment, so a test can compare a
 * finished snapshot with the memory the guest had when it was paused.
 */
import { RamsnapUsageError } from '../format/errors.js';
import type { CollectResult, DirtyRun, RamSource, SourceBlock } from './ram-source.js';

export interface Clock {
  /** Milliseconds, from any origin. */
  now(): number;
  /** Waits `ms` (a virtual clock just moves on). */
  sleep(ms: number): Promise<void>;
}

export const realClock: Clock = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms))),
};

/** A clock that only moves when told to: by a simulated disk, or by sleep(). */
export class VirtualClock implements Clock {
  private t = 0;
  now(): number {
    return this.t;
  }
  advance(ms: number): void {
    this.t += ms;
  }
  async sleep(ms: number): Promise<void> {
    this.t += Math.max(0, ms);
  }
}

/**
 * Which pages the guest writes:
 * - uniform: any page of the working set, equally likely;
 * - hot: `hotShare` of the writes go to the first `hotFraction` of the working set;
 * - sweep: the working set front to back, over and over (a memcpy, a scrub).
 */
export type DirtyPattern = 'uniform' | 'hot' | 'sweep';

export interface SimGuestOptions {
  /** Guest RAM in bytes (a whole number of pages). */
  size: number;
  pageSize?: number;
  /** Bytes at the start of RAM the guest uses (non-zero at boot); the rest stays zero. Default: half. */
  workingSet?: number;
  /** Page writes per second of clock time. */
  dirtyRate: number;
  pattern?: DirtyPattern;
  /** For `hot`: fraction of the working set that is hot (default 0.1) and share of writes it takes (default 0.9). */
  hotFraction?: number;
  hotShare?: number;
  seed?: number;
  clock?: Clock;
  blockName?: string;
  /** Fill emitted pages with their content (default true); a benchmark that only counts bytes can skip it. */
  content?: boolean;
}

/** Bytes emitted per run at most. */
const RUN_PAGES = 256;

export class SimulatedGuest implements RamSource {
  readonly pageSize: number;
  readonly blocks: readonly SourceBlock[];
  readonly pages: number;
  readonly workingPages: number;
  readonly clock: Clock;
  /** Writes so far to each page; 0: never written, so zero. */
  private readonly version: Uint32Array;
  /** One byte per page: dirty since the last collect. */
  private readonly dirty: Uint8Array;
  private dirtyCount = 0;
  private collected = false;
  private last: number;
  private carry = 0;
  private cursor = 0;
  private paused = false;
  private rand: () => number;
  private readonly buffers: Buffer[] = [];
  private readonly pattern = Buffer.alloc(16);
  /** Page writes the guest made (for tests and benchmarks). */
  writes = 0;

  constructor(readonly opts: SimGuestOptions) {
    this.pageSize = opts.pageSize ?? 4096;
    const ps = this.pageSize;
    if (!Number.isSafeInteger(opts.size) || opts.size <= 0 || opts.size % ps !== 0) {
      throw new RamsnapUsageError('BAD_BLOCK_LENGTH', `simulated guest size ${opts.size} is not a whole number of ${ps}-byte pages`, 'size');
    }
    if (!(opts.dirtyRate >= 0)) throw new RamsnapUsageError('BAD_RATE', `dirty rate ${opts.dirtyRate} is not a non-negative number`, 'dirtyRate');
    this.pages = opts.size / ps;
    this.workingPages = Math.min(this.pages, Math.max(1, Math.floor((opts.workingSet ?? opts.size / 2) / ps)));
    this.blocks = [{ name: opts.blockName ?? 'pc.ram', usedLength: opts.size }];
    this.clock = opts.clock ?? realClock;
    this.version = new Uint32Array(this.pages);
    this.version.fill(1, 0, this.workingPages);
    this.dirty = new Uint8Array(this.pages);
    this.rand = mulberry32(opts.seed ?? 1);
    this.last = this.clock.now();
  }

  /** Applies the page writes the guest made since the last look at the clock. */
  private advance(): void {
    const now = this.clock.now();
    if (this.paused) {
      this.last = now;
      return;
    }
    const due = ((now - this.last) * this.opts.dirtyRate) / 1000 + this.carry;
    this.last = now;
    const n = Math.floor(due);
    this.carry = due - n;
    for (let i = 0; i < n; i++) this.touch(this.pick());
  }

  private pick(): number {
    const ws = this.workingPages;
    switch (this.opts.pattern ?? 'uniform') {
      case 'sweep': {
        const p = this.cursor;
        this.cursor = (this.cursor + 1) % ws;
        return p;
      }
      case 'hot': {
        const hot = Math.max(1, Math.floor(ws * (this.opts.hotFraction ?? 0.1)));
        if (this.rand() < (this.opts.hotShare ?? 0.9)) return Math.floor(this.rand() * hot);
        return Math.floor(this.rand() * ws);
      }
      default:
        return Math.floor(this.rand() * ws);
    }
  }

  private touch(p: number): void {
    this.version[p]++;
    this.writes++;
    if (!this.dirty[p]) {
      this.dirty[p] = 1;
      this.dirtyCount++;
    }
  }

  /** The guest stops writing (the pause hook of a save). */
  pause(): void {
    this.advance();
    this.paused = true;
  }

  resume(): void {
    this.advance();
    this.paused = false;
  }

  /** What page `p` holds now. */
  pageContent(p: number, into: Uint8Array): void {
    const v = this.version[p];
    if (v === 0) {
      into.fill(0);
      return;
    }
    // 16 bytes that differ for every (page, version), repeated over the page.
    const pat = this.pattern;
    pat.writeUInt32LE(p, 0);
    pat.writeUInt32LE(v, 4);
    pat.writeUInt32LE(this.opts.seed ?? 1, 8);
    pat.writeUInt32LE(~p >>> 0, 12);
    Buffer.from(into.buffer, into.byteOffset, into.length).fill(pat);
  }

  private fillPages(first: number, into: Uint8Array): void {
    const ps = this.pageSize;
    for (let i = 0; i < into.length / ps; i++) this.pageContent(first + i, into.subarray(i * ps, (i + 1) * ps));
  }

  async read(block: string, first: number, into: Uint8Array): Promise<void> {
    this.check(block, first, into.length);
    this.advance();
    this.fillPages(first, into);
  }

  /** The whole memory as it is now (small guests only: tests). */
  memory(): Buffer {
    this.advance();
    const buf = Buffer.alloc(this.pages * this.pageSize);
    this.fillPages(0, buf);
    return buf;
  }

  dirtyPages(): number {
    this.advance();
    return this.collected ? this.dirtyCount : this.workingPages;
  }

  async collect(emit: (run: DirtyRun) => Promise<void>, concurrency = 2): Promise<CollectResult> {
    this.advance();
    // The set is taken at the start of the pass, as QEMU syncs its dirty bitmap: a page
    // written again while the pass runs is dirty again for the next one.
    const set = this.collected ? this.dirty.slice() : versionSet(this.version);
    this.collected = true;
    this.dirty.fill(0);
    this.dirtyCount = 0;
    const runs: [number, number][] = [];
    for (let p = 0; p < this.pages; ) {
      if (!set[p]) {
        p++;
        continue;
      }
      const s = p;
      while (p < this.pages && set[p] && p - s < RUN_PAGES) p++;
      runs.push([s, p]);
    }
    let next = 0;
    let pages = 0;
    const name = this.blocks[0].name;
    const worker = async (n: number): Promise<void> => {
      this.buffers[n] ??= Buffer.allocUnsafeSlow(RUN_PAGES * this.pageSize);
      while (next < runs.length) {
        const [s, e] = runs[next++];
        // The guest runs on while we copy: bytes are taken as the page is now.
        this.advance();
        const data = this.buffers[n].subarray(0, (e - s) * this.pageSize);
        if (this.opts.content ?? true) this.fillPages(s, data);
        pages += e - s;
        await emit({ block: name, first: s, data });
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, concurrency) }, (_, n) => worker(n)));
    return { pages, scanMs: 0 };
  }

  private check(block: string, first: number, length: number): void {
    if (block !== this.blocks[0].name) throw new RamsnapUsageError('UNKNOWN_BLOCK', `no block named ${JSON.stringify(block)}`, 'block');
    if (length % this.pageSize !== 0 || first < 0 || first + length / this.pageSize > this.pages) {
      throw new RamsnapUsageError('OUT_OF_RANGE', `pages ${first}+${length / this.pageSize} of ${this.pages}`, 'pages');
    }
  }

  async close(): Promise<void> {}
}

function versionSet(version: Uint32Array): Uint8Array {
  const set = new Uint8Array(version.length);
  for (let p = 0; p < version.length; p++) set[p] = version[p] === 0 ? 0 : 1;
  return set;
}

/** mulberry32: small, fast and reproducible. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
