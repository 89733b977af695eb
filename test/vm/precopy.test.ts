/**
 * The precopy loop against simulated guests: whatever the policy, the
 * pattern and the dirty rate, the finished file reads back as the guest's
 * memory at the pause; an abort at any pass leaves nothing behind; the
 * file is as large as a one-pass save of the same guest. The file-backed
 * (hashing) source is checked against a file we change between passes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { RamsnapError } from '../../format/errors.js';
import { Snapshot } from '../../reader/snapshot.js';
import { classicPolicy, downtimePolicy, expectedDowntimeMs, loadPolicy, thresholdPolicy } from '../../vm/policies.js';
import { precopy, type PageWriter, type PrecopyPolicy, type PrecopyStats } from '../../vm/precopy.js';
import { SharedFileSource, hashPage } from '../../vm/ram-source.js';
import { SimulatedGuest, VirtualClock, type DirtyPattern } from '../../vm/sim-guest.js';
import { SnapshotWriter, TEMP_MARK } from '../../writer/snapshot-writer.js';

const PS = 4096;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-precopy-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
let n = 0;
const target = (): string => path.join(work, `snap-${n++}.ram`);

/** A writer whose writes take virtual time: bytes / bandwidth. */
function timed(w: SnapshotWriter, clock: VirtualClock, bytesPerSec: number): PageWriter {
  return {
    pageSize: w.pageSize,
    async writePages(block, first, data) {
      clock.advance((data.length / bytesPerSec) * 1000);
      await w.writePages(block, first, data);
    },
  };
}

async function writerFor(guest: SimulatedGuest, file: string): Promise<SnapshotWriter> {
  return SnapshotWriter.create(file, { blocks: [...guest.blocks], pageSize: guest.pageSize, machine: 'pc-q35-10.0', fsync: false });
}

async function readBlock(file: string, name: string): Promise<Buffer> {
  const snap = await Snapshot.open(file);
  try {
    const b = snap.blocks.find((x) => x.name === name);
    if (!b) throw new Error(`no block ${name}`);
    return Buffer.from(await snap.read(b, 0, b.usedLength));
  } finally {
    await snap.close();
  }
}

function leftovers(): string[] {
  return fs.readdirSync(work).filter((f) => f.includes(TEMP_MARK));
}

describe('precopy with a simulated guest', () => {
  it('any policy, pattern and rate: the file is the memory at the pause, and no larger than a one-pass save', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          pages: fc.integer({ min: 16, max: 768 }),
          working: fc.double({ min: 0.05, max: 1, noNaN: true }),
          rate: fc.integer({ min: 0, max: 200_000 }),
          pattern: fc.constantFrom<DirtyPattern>('uniform', 'hot', 'sweep'),
          policy: fc.constantFrom('classic', 'threshold', 'downtime', 'never'),
          channels: fc.integer({ min: 1, max: 4 }),
          seed: fc.integer({ min: 1, max: 1e9 }),
        }),
        async (c) => {
          const clock = new VirtualClock();
          const guest = new SimulatedGuest({
            size: c.pages * PS,
            workingSet: Math.max(PS, Math.floor(c.pages * c.working) * PS),
            dirtyRate: c.rate,
            pattern: c.pattern,
            seed: c.seed,
            clock,
          });
          const policy: PrecopyPolicy =
            c.policy === 'classic'
              ? classicPolicy()
              : c.policy === 'threshold'
                ? thresholdPolicy({ thresholdBytes: 16 * PS, maxIterations: 6 })
                : c.policy === 'downtime'
                  ? downtimePolicy({ downtimeLimitMs: 5, timeBudgetMs: 200 })
                  : (s) => (s.iteration >= 1 ? 'stop-and-copy' : 'continue');
          const file = target();
          const w = await writerFor(guest, file);
          const r = await precopy({
            source: guest,
            writer: timed(w, clock, 100 << 20),
            policy,
            pause: async () => guest.pause(),
            channels: c.channels,
            clock,
          });
          await w.finalize();
          expect((await readBlock(file, 'pc.ram')).equals(guest.memory())).toBe(true);
          expect(r.totalBytes).toBeGreaterThanOrEqual(r.pausedBytes);
          expect(r.history.length).toBe(r.iterations);

          // One pass of the same memory makes a file of the same size.
          const once = target();
          const w1 = await writerFor(guest, once);
          await w1.writePages('pc.ram', 0, guest.memory());
          await w1.finalize();
          expect(fs.statSync(file).size).toBe(fs.statSync(once).size);
          fs.rmSync(file);
          fs.rmSync(once);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('abort at any pass, an error in the writer, or a signal: nothing at the target, no temporary file', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 5 }), fc.constantFrom('policy', 'signal', 'write'), async (at, how) => {
        const clock = new VirtualClock();
        const guest = new SimulatedGuest({ size: 128 * PS, dirtyRate: 50_000, clock, seed: at });
        const file = target();
        const w = await writerFor(guest, file);
        const ac = new AbortController();
        let writes = 0;
        const writer: PageWriter = {
          pageSize: PS,
          async writePages(b, f, d) {
            clock.advance(1);
            if (how === 'write' && ++writes === at * 3) throw new RamsnapError('IO_EIO', 'injected write failure');
            await w.writePages(b, f, d);
          },
        };
        const run = precopy({
          source: guest,
          writer,
          pause: async () => guest.pause(),
          signal: ac.signal,
          policy: (s) => {
            if (s.iteration === at && how === 'policy') return 'abort';
            if (s.iteration === at && how === 'signal') ac.abort();
            return 'continue';
          },
        }).finally(() => w.abort());
        await expect(run).rejects.toMatchObject({ code: how === 'write' ? 'IO_EIO' : 'SAVE_ABORTED' });
        expect(fs.existsSync(file)).toBe(false);
        expect(leftovers()).toEqual([]);
      }),
      { numRuns: 15 },
    );
  });

  it('a policy answering nonsense ends the save with BAD_POLICY_DECISION', async () => {
    const guest = new SimulatedGuest({ size: 16 * PS, dirtyRate: 0 });
    const w = await writerFor(guest, target());
    const run = precopy({ source: guest, writer: w, pause: async () => {}, policy: () => 'later' as never }).finally(() => w.abort());
    await expect(run).rejects.toMatchObject({ code: 'BAD_POLICY_DECISION' });
  });

  it('max-bandwidth holds the passes back while the guest runs, not the stop-and-copy', async () => {
    const clock = new VirtualClock();
    const guest = new SimulatedGuest({ size: 256 * PS, workingSet: 256 * PS, dirtyRate: 0, clock });
    const w = await writerFor(guest, target());
    const r = await precopy({
      source: guest,
      writer: w,
      clock,
      maxBandwidth: 1 << 20,
      pause: async () => guest.pause(),
      policy: () => 'stop-and-copy',
    }).finally(() => w.abort());
    // 1 MiB at 1 MiB/s: the first pass takes a second of (virtual) time.
    expect(r.history[0].lastPassMs).toBeGreaterThanOrEqual(990);
    expect(r.pausedMs).toBe(0);
  });

  it('stats: pass 0 writes the working set; dirty pages and pending bytes are exact for a simulated guest', async () => {
    const clock = new VirtualClock();
    const guest = new SimulatedGuest({ size: 512 * PS, workingSet: 100 * PS, dirtyRate: 1000, pattern: 'sweep', clock });
    const w = await writerFor(guest, target());
    const seen: PrecopyStats[] = [];
    await precopy({
      source: guest,
      writer: timed(w, clock, 4096 * 1000), // 1 ms a page
      clock,
      channels: 1,
      pause: async () => guest.pause(),
      policy: (s) => (seen.push({ ...s }), s.iteration >= 3 ? 'stop-and-copy' : 'continue'),
    }).finally(() => w.abort());
    expect(seen[0].lastPassBytes).toBe(100 * PS);
    // 100 pages at 1 ms each: 100 ms, during which the guest wrote 100 pages (a sweep: all 100 distinct).
    expect(seen[0].lastPassMs).toBeCloseTo(100, 5);
    expect(seen[0].dirtyPages).toBe(100);
    expect(seen[0].pendingBytes).toBe(100 * PS);
    expect(seen[0].bandwidth).toBeCloseTo(4096 * 1000, 0);
    expect(seen.map((s) => s.iteration)).toEqual([1, 2, 3]);
  });
});

describe('policies', () => {
  const base: PrecopyStats = {
    pageSize: PS,
    iteration: 1,
    totalBytes: 0,
    dirtyPages: 1000,
    pendingBytes: 1000 * PS,
    elapsedMs: 10,
    bandwidth: 100 << 20,
    lastPassBytes: 0,
    lastPassMs: 0,
    scanMs: 0,
  };
  it('classic: fewer than 50 dirty pages, or 5 iterations', () => {
    const p = classicPolicy();
    expect(p({ ...base, dirtyPages: 49 })).toBe('stop-and-copy');
    expect(p({ ...base, dirtyPages: 50, pendingBytes: 50 * PS })).toBe('continue');
    expect(p({ ...base, iteration: 5 })).toBe('stop-and-copy');
    // Unknown count: judged by the pending estimate.
    expect(p({ ...base, dirtyPages: -1, pendingBytes: 10 * PS })).toBe('stop-and-copy');
    expect(p({ ...base, dirtyPages: -1, pendingBytes: 60 * PS })).toBe('continue');
  });
  it('threshold: pending under 100 MiB, or 10 iterations', () => {
    const p = thresholdPolicy();
    expect(p({ ...base, pendingBytes: 100 * 2 ** 20 - 1 })).toBe('stop-and-copy');
    expect(p({ ...base, pendingBytes: 100 * 2 ** 20 })).toBe('continue');
    expect(p({ ...base, pendingBytes: 1e12, iteration: 10 })).toBe('stop-and-copy');
  });
  it('downtime: scan + pending / bandwidth under the limit, or the copy alone under it; stalls and the budget end it', () => {
    const p = downtimePolicy();
    // 30 MiB at 100 MiB/s = 300 ms.
    expect(p({ ...base, pendingBytes: 30 * 2 ** 20 })).toBe('stop-and-copy');
    expect(expectedDowntimeMs({ ...base, pendingBytes: 50 * 2 ** 20, scanMs: 200 })).toBeCloseTo(700);
    // The scan is a floor no pass lowers: once the copying fits, stop.
    expect(p({ ...base, pendingBytes: 30 * 2 ** 20, scanMs: 5000 })).toBe('stop-and-copy');
    expect(downtimePolicy()({ ...base, pendingBytes: 31 * 2 ** 20, scanMs: 0 })).toBe('continue');
    // No progress for 3 passes: stop.
    const q = downtimePolicy();
    const big = { ...base, pendingBytes: 500 * 2 ** 20 };
    expect([q(big), q(big), q(big), q(big)]).toEqual(['continue', 'continue', 'continue', 'stop-and-copy']);
    const r = downtimePolicy();
    expect([400, 300, 200, 100].map((m) => r({ ...base, pendingBytes: m * 2 ** 20 }))).toEqual(['continue', 'continue', 'continue', 'continue']);
    // The budget: force or abort.
    expect(downtimePolicy({ timeBudgetMs: 10 })({ ...big, elapsedMs: 10 })).toBe('stop-and-copy');
    expect(downtimePolicy({ onBudget: 'abort', timeBudgetMs: 10 })({ ...big, elapsedMs: 10 })).toBe('abort');
  });
  it('a user policy module: loaded by path; a bad one is refused with BAD_POLICY, a throwing one ends with POLICY_FAILED', async () => {
    const good = path.join(work, 'good.mjs');
    fs.writeFileSync(good, "export default (s) => (s.iteration >= 2 ? 'stop-and-copy' : 'continue');\n");
    const p = await loadPolicy(good);
    expect(await p({ ...base, iteration: 2 })).toBe('stop-and-copy');
    expect(await p({ ...base, iteration: 1 })).toBe('continue');
    const none = path.join(work, 'none.mjs');
    fs.writeFileSync(none, 'export const x = 1;\n');
    await expect(loadPolicy(none)).rejects.toMatchObject({ code: 'BAD_POLICY' });
    await expect(loadPolicy(path.join(work, 'missing.mjs'))).rejects.toMatchObject({ code: 'BAD_POLICY' });
    const throws = path.join(work, 'throws.mjs');
    fs.writeFileSync(throws, "export default () => { throw new Error('no'); };\n");
    await expect((await loadPolicy(throws))(base)).rejects.toMatchObject({ code: 'POLICY_FAILED' });
  });
});

describe('the file-backed (hashing) source', () => {
  it('finds exactly the pages changed between passes, including pages changed back to zero', async () => {
    const file = path.join(work, 'guest.ram');
    const pages = 64;
    const mem = Buffer.alloc(pages * PS);
    for (const p of [0, 1, 2, 10, 63]) mem.fill(p + 1, p * PS, (p + 1) * PS);
    fs.writeFileSync(file, mem);
    const src = SharedFileSource.open([{ name: 'pc.ram', usedLength: pages * PS, path: file }], PS);
    const seen = async (): Promise<number[]> => {
      const out: number[] = [];
      await src.collect(async (r) => {
        for (let i = 0; i < r.data.length / PS; i++) out.push(r.first + i);
      });
      return out.sort((a, b) => a - b);
    };
    try {
      expect(await seen()).toEqual([0, 1, 2, 10, 63]);
      expect(await seen()).toEqual([]);
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, Buffer.from([7]), 0, 1, 5 * PS + 4095); // one byte of a zero page
      fs.writeSync(fd, Buffer.alloc(PS), 0, PS, 10 * PS); // back to zero
      fs.writeSync(fd, Buffer.from([2]), 0, 1, 1 * PS); // page 1 changed then...
      fs.writeSync(fd, Buffer.from([2]), 0, 1, 1 * PS); // ...to the same byte it had: not a change
      fs.closeSync(fd);
      expect(await seen()).toEqual([5, 10]);
      expect(src.dirtyPages()).toBe(-1);
    } finally {
      await src.close();
    }
  });

  it('hashPage sees any single changed word', () => {
    fc.assert(
      fc.property(fc.uint32Array({ minLength: 1024, maxLength: 1024 }), fc.nat(1023), fc.integer({ min: 1, max: 0xffffffff }), (words, at, x) => {
        const a = new Uint32Array(2);
        const b = new Uint32Array(2);
        hashPage(words, 0, 1024, a);
        const changed = words.slice();
        changed[at] ^= x;
        hashPage(changed, 0, 1024, b);
        return a[0] !== b[0] && a[1] !== b[1];
      }),
    );
  });

  it('a RAM file cut short under the scan threads: a typed I/O error, not a crash', async () => {
    const file = path.join(work, 'shrinks.ram');
    fs.writeFileSync(file, Buffer.alloc(32 * PS, 1));
    const src = SharedFileSource.open([{ name: 'pc.ram', usedLength: 32 * PS, path: file }], PS);
    try {
      fs.truncateSync(file, 8 * PS);
      await expect(src.collect(async () => {})).rejects.toMatchObject({ code: 'IO_SHORT' });
    } finally {
      await src.close();
    }
  });

  it('refuses a RAM file smaller than its block', () => {
    const file = path.join(work, 'small.ram');
    fs.writeFileSync(file, Buffer.alloc(PS));
    expect(() => SharedFileSource.open([{ name: 'pc.ram', usedLength: 2 * PS, path: file }], PS)).toThrow(expect.objectContaining({ code: 'RAM_FILE_TOO_SMALL' }));
  });
});
