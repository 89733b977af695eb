/**
 * Delta snapshots: `delta BASE NEW` keeps only the pages of NEW whose
 * memory differs from BASE, in a mapped-ram file laid out like NEW (the
 * same blocks, headers and page regions, NEW's configuration and device
 * state), with bitmaps that mark just the carried pages. A page that
 * became zero is carried as an explicit zero page: its bit set, its bytes
 * a hole, so QEMU's loader writes zeros over the base's page. The delta
 * records the fingerprints of BASE's memory and of NEW's
 * (format/delta.ts, reader/fingerprint.ts).
 *
 * `apply BASE D1 D2 ...` writes the full snapshot back: every page from
 * the last delta that carries it, else from BASE; NEW's device state from
 * the last delta. Each delta must apply to what the chain has made so far
 * (its base fingerprint), and the result must be the memory the last one
 * promises, else nothing is written.
 */
import { RamsnapFormatError, RamsnapUsageError, FormatCode } from '../format/errors.js';
import { DELTA_VERSION, deltaInfoOf, withDeltaMember, withoutDeltaMember, type DeltaInfo } from '../format/delta.js';
import { nonZeroRuns, zeroPageOf } from '../format/zero-pages.js';
import { comparePages, PageKind, unionRuns } from '../reader/diff.js';
import { BlockHasher, combineFingerprint, memoryFingerprint } from '../reader/fingerprint.js';
import type { Snapshot } from '../reader/snapshot.js';
import { checkConvertible, mappedRamWriterLike } from './convert.js';
import type { OutputOptions } from './sink.js';
import type { SnapshotWriter } from './snapshot-writer.js';

export interface DeltaWriteOptions extends OutputOptions {
  force?: boolean;
  /** fsync before the rename (default true). */
  fsync?: boolean;
  /** Runs after the last page is written and before the rename: throw to leave nothing (the CLI checks that no input changed). */
  beforeCommit?: () => void;
}

export interface DeltaResult {
  info: DeltaInfo;
  /** Pages carried with NEW's bytes (added or changed). */
  pagesWritten: number;
  /** Pages carried as explicit zeros (data in BASE, zero in NEW). */
  zeroPages: number;
}

/** The delta record of a snapshot, or undefined for a full one. */
export function deltaOf(snap: Snapshot): DeltaInfo | undefined {
  const d = snap.model.vmdesc;
  return deltaInfoOf(d?.desc.raw, d?.offset ?? 0);
}

/** Every snapshot of a chain has the same blocks, sizes and page size. */
function checkSameBlocks(snaps: { snap: Snapshot; what: string }[]): void {
  const [first, ...rest] = snaps;
  const shape = (s: Snapshot): string => `${s.model.pageSize}:${s.blocks.map((b) => `${b.name}=${b.usedLength}`).join(',')}`;
  for (const o of rest) {
    if (shape(o.snap) !== shape(first.snap)) {
      const a = first.snap.blocks.map((b) => `${b.name} ${b.usedLength}`).join(', ');
      const b = o.snap.blocks.map((x) => `${x.name} ${x.usedLength}`).join(', ');
      throw new RamsnapUsageError('DELTA_LAYOUT_MISMATCH', `${o.what} does not have ${first.what}'s blocks and page size (${first.what}: ${a}, page size ${first.snap.model.pageSize}; ${o.what}: ${b}, page size ${o.snap.model.pageSize})`, 'blocks');
    }
  }
}

function refuseDelta(snap: Snapshot, what: string, code: string): void {
  if (deltaOf(snap)) throw new RamsnapUsageError(code, `${what} is a delta, not a full snapshot: apply it to its base first (ramsnap apply)`, 'input');
}

/** Writes the delta of `neu` against `base` to `output`. */
export async function writeDelta(base: Snapshot, neu: Snapshot, output: string, o: DeltaWriteOptions = {}): Promise<DeltaResult> {
  refuseDelta(base, 'BASE', 'DELTA_AS_BASE');
  refuseDelta(neu, 'NEW', 'DELTA_AS_INPUT');
  checkSameBlocks([{ snap: base, what: 'BASE' }, { snap: neu, what: 'NEW' }]);
  const had = checkConvertible(neu, 'NEW');
  const w = await mappedRamWriterLike(neu, had, output, o);
  let pagesWritten = 0;
  let zeroPages = 0;
  try {
    const digestsA: { name: string; usedLength: number; digest: Buffer }[] = [];
    const digestsB: typeof digestsA = [];
    for (const blockB of neu.blocks) {
      const blockA = base.block(blockB.name);
      const ps = blockB.pageSize;
      const [ha, hb] = [new BlockHasher(blockA), new BlockHasher(blockB)];
      for await (const c of comparePages(base, blockA, neu, blockB)) {
        ha.pages(c.first, c.count, c.bytesA);
        hb.pages(c.first, c.count, c.bytesB);
        // Runs of pages of one kind: one write per run of added or changed pages.
        for (let p = 0; p < c.count; ) {
          const kind = c.kinds[p];
          let e = p + 1;
          const carried = kind === PageKind.ADDED || kind === PageKind.CHANGED;
          while (e < c.count && (carried ? c.kinds[e] === PageKind.ADDED || c.kinds[e] === PageKind.CHANGED : c.kinds[e] === kind)) e++;
          if (carried) {
            await w.writePages(blockB.name, c.first + p, c.bytesB.subarray(p * ps, e * ps));
            pagesWritten += e - p;
          } else if (kind === PageKind.REMOVED) {
            w.zeroPagesPresent(blockB.name, c.first + p, e - p);
            zeroPages += e - p;
          }
          p = e;
        }
      }
      digestsA.push({ name: blockA.name, usedLength: blockA.usedLength, digest: ha.digest() });
      digestsB.push({ name: blockB.name, usedLength: blockB.usedLength, digest: hb.digest() });
    }
    const info: DeltaInfo = { version: DELTA_VERSION, base: combineFingerprint(digestsA), result: combineFingerprint(digestsB) };
    await w.retarget({ device: { ...(w.device ?? { sections: new Uint8Array(0), switchoverStart: true }), vmdesc: withDeltaMember(w.device?.vmdesc, info, neu.model.pageSize) } });
    o.beforeCommit?.();
    await w.finalize();
    return { info, pagesWritten, zeroPages };
  } catch (err) {
    await w.abort();
    throw err;
  }
}

export interface ApplyResult {
  /** Fingerprint of the memory written (the last delta's result). */
  fingerprint: string;
  deltas: number;
  pagesWritten: number;
}

/**
 * Applies a chain of deltas to `base` and writes the full snapshot. Every
 * check that can refuse (a full snapshot where a delta belongs, a delta
 * given as base, blocks that differ, a base or link of the chain that is
 * not the one a delta was made against) runs before the output is created.
 */
export async function applyDeltas(base: Snapshot, deltas: { snap: Snapshot; path: string }[], output: string, o: DeltaWriteOptions = {}): Promise<ApplyResult> {
  const infos = await checkChain(base, deltas);
  const last = deltas[deltas.length - 1];
  const w = await mappedRamWriterLike(last.snap, checkConvertible(last.snap, last.path), output, o);
  try {
    const device = w.device;
    if (device?.vmdesc) await w.retarget({ device: { ...device, vmdesc: withoutDeltaMember(device.vmdesc) } });
    let pagesWritten = 0;
    const digests: { name: string; usedLength: number; digest: Buffer }[] = [];
    for (const block of base.blocks) {
      const r = await writeOverlaidBlock(base, deltas.map((d) => d.snap), block.name, w);
      pagesWritten += r.pages;
      digests.push({ name: block.name, usedLength: block.usedLength, digest: r.digest });
    }
    const made = combineFingerprint(digests);
    const promised = infos[infos.length - 1].result;
    if (made !== promised) {
      throw new RamsnapFormatError(FormatCode.BAD_DELTA, `applying the chain made memory ${made}, not the ${promised} that ${last.path} records: a delta's pages are damaged`, { field: 'vmdescription.ramsnap-delta.result', offset: last.snap.model.vmdesc?.offset ?? 0 });
    }
    o.beforeCommit?.();
    await w.finalize();
    return { fingerprint: made, deltas: deltas.length, pagesWritten };
  } catch (err) {
    await w.abort();
    throw err;
  }
}

/**
 * Checks that `deltas` apply to `base` in this order, before anything is
 * written: BASE is a full snapshot, each delta is one, all have the same
 * blocks, BASE's memory is what the first delta was made against and each
 * delta applies to what the one before makes. Returns the deltas' records.
 */
export async function checkChain(base: Snapshot, deltas: { snap: Snapshot; path: string }[]): Promise<DeltaInfo[]> {
  if (!deltas.length) throw new RamsnapUsageError('USAGE', 'give at least one delta to apply', 'delta');
  refuseDelta(base, 'BASE', 'DELTA_AS_BASE');
  const infos = deltas.map((d) => {
    const info = deltaOf(d.snap);
    if (!info) throw new RamsnapUsageError('NOT_A_DELTA', `${d.path} is a full snapshot, not a delta (it has no ramsnap-delta record)`, 'delta');
    return info;
  });
  checkSameBlocks([{ snap: base, what: 'BASE' }, ...deltas.map((d) => ({ snap: d.snap, what: d.path }))]);
  const have = await memoryFingerprint(base);
  infos.forEach((info, i) => {
    const expected = i === 0 ? have : infos[i - 1].result;
    if (info.base !== expected) {
      const was = i === 0 ? `BASE's memory is ${have}` : `${deltas[i - 1].path} makes ${expected}`;
      throw new RamsnapUsageError('DELTA_BASE_MISMATCH', `${deltas[i].path} was made against another base: it needs memory ${info.base}, but ${was}`, 'base');
    }
  });
  return infos;
}

const CHUNK_PAGES = 64;

/**
 * One block: BASE's pages overlaid by each delta's carried pages in order;
 * non-zero pages written, one write per run. With `carriedOnly`, only the
 * pages some delta carries, and zero ones as explicit zero pages: what an
 * instant restore loads over a mapping of BASE (vm/restore-stream.ts).
 */
export async function writeOverlaidBlock(base: Snapshot, deltas: Snapshot[], name: string, w: SnapshotWriter, carriedOnly = false): Promise<{ pages: number; digest: Buffer }> {
  const block = base.block(name);
  const ps = block.pageSize;
  const buf = Buffer.allocUnsafe(CHUNK_PAGES * ps);
  const zero = zeroPageOf(ps);
  // Over a mapping of BASE only the carried pages are written: their digest means nothing, so none is taken.
  const hasher = carriedOnly ? undefined : new BlockHasher(block);
  const dBlocks = deltas.map((d) => d.block(name));
  let pages = 0;
  const sources = deltas.map((d, i) => d.presentRuns(dBlocks[i]));
  for (const r of unionRuns(carriedOnly ? sources : [base.presentRuns(block), ...sources], CHUNK_PAGES)) {
    if (carriedOnly) buf.fill(0, 0, r.count * ps);
    else await base.read(block, r.first * ps, r.count * ps, buf);
    for (let i = 0; i < deltas.length; i++) {
      for (const run of deltas[i].presentRuns(dBlocks[i], r.first, r.first + r.count)) {
        const at = (run.first - r.first) * ps;
        await deltas[i].read(dBlocks[i], run.first * ps, run.count * ps, buf.subarray(at, at + run.count * ps));
      }
    }
    hasher?.pages(r.first, r.count, buf);
    let done = 0;
    for (const [s, e] of nonZeroRuns(buf, r.count, zero)) {
      // Carried pages of zeros must still overwrite what the mapping of BASE shows.
      if (carriedOnly && s > done) w.zeroPagesPresent(name, r.first + done, s - done);
      await w.writePages(name, r.first + s, buf.subarray(s * ps, e * ps));
      pages += e - s;
      done = e;
    }
    if (carriedOnly && done < r.count) w.zeroPagesPresent(name, r.first + done, r.count - done);
  }
  return { pages, digest: hasher?.digest() ?? Buffer.alloc(0) };
}
