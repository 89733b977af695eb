/**
 * Makes a mapped-ram file sparse again: slots under clear bits (stale bytes
 * QEMU left, or pages a patch zeroed) and present pages that hold only
 * zeros become holes, and those pages' bits are cleared.
 *
 * Node cannot punch holes (no fallocate(PUNCH_HOLE)), so the file is
 * rewritten: a new file through SnapshotWriter with the same layout (same
 * prefix bytes before the stream, same stream head, same block offsets,
 * same device state) holding only the present non-zero pages, fsynced and
 * renamed over the original. A crash leaves the original (or, after the
 * rename, the new file) at the path, plus at most a temporary file named
 * with TEMP_MARK. The file's lock is held from the first read to the rename
 * (a patch in between would be lost), and an interrupted patch of the file
 * is completed first.
 */
import fs from 'node:fs';
import { MAPPED_RAM_ALIGNMENT, CAP_X_IGNORE_SHARED } from '../format/constants.js';
import { FormatCode, RamsnapFormatError, ioError } from '../format/errors.js';
import { planLayout, type LayoutPlan, type PlanOptions } from '../format/layout.js';
import { Snapshot } from '../reader/snapshot.js';
import { recoverJournal } from './journal.js';
import { TargetLock, notice } from './lock.js';
import { describeRecovery } from './patch.js';
import { SnapshotWriter } from './snapshot-writer.js';
import { deviceStateOf } from './template.js';

export interface SparsifyOptions {
  /** File offset where the stream starts (as Snapshot.open). */
  offset?: number;
  /** fsync before the rename (default true). */
  fsync?: boolean;
  /** Called with the temporary file's path once it exists (tests, progress). */
  onTemp?: (tempPath: string) => void;
  /** Called now and then with the bytes of guest memory rewritten so far and their total. */
  onProgress?: (done: number, total: number) => void;
}

export interface SparsifyResult {
  file: string;
  /** Allocated bytes (st_blocks * 512) before and after. */
  allocatedBefore: number;
  allocatedAfter: number;
  bytesFreed: number;
  sizeBefore: number;
  sizeAfter: number;
  /** Present pages that held only zeros: their bits were cleared. */
  pagesCleared: number;
  /** Present non-zero pages copied. */
  pagesKept: number;
  /** The alignment of page regions the layout was reproduced with. */
  alignment: number;
}

/** Bytes before the stream (a libvirt header and XML) copied into the new file, held in memory. */
const MAX_PREFIX = 64 << 20;

/** Pages copied per read: a few MiB at most in memory. */
const RUN_PAGES = 256;

export async function sparsifySnapshot(file: string, o: SparsifyOptions = {}): Promise<SparsifyResult> {
  // Replace the file a symlink points to, not the symlink.
  let target: string;
  let before: fs.Stats;
  try {
    target = fs.realpathSync(file);
    before = fs.statSync(target);
  } catch (err) {
    throw ioError(err, file, 'open');
  }
  // The lock is held from the read to the rename: a patch in between would be lost with the old file.
  const lock = TargetLock.acquire(target, 'sparsify');
  try {
    const recovered = await recoverJournal(target, { fsync: o.fsync });
    if (recovered.action !== 'none') notice(describeRecovery(file, recovered));
    return await rewrite(file, target, before, lock, o);
  } finally {
    lock.release();
  }
}

async function rewrite(file: string, target: string, before: fs.Stats, lock: TargetLock, o: SparsifyOptions): Promise<SparsifyResult> {
  const snap = await Snapshot.open(target, { offset: o.offset });
  let w: SnapshotWriter | undefined;
  let pagesCleared = 0;
  let pagesKept = 0;
  let alignment: number;
  try {
    const { plan, opts } = await reproducibleLayout(snap);
    alignment = plan.alignment;
    const m = snap.model;
    if (m.streamOffset > MAX_PREFIX) {
      throw new RamsnapFormatError(FormatCode.UNSUPPORTED, `the stream starts ${m.streamOffset} bytes into the file; sparsify copies at most ${MAX_PREFIX} bytes before it`, {
        field: 'stream offset',
        offset: m.streamOffset,
        expected: `<= ${MAX_PREFIX}`,
      });
    }
    const prefix = m.streamOffset > 0 ? await snap.source.read(0, m.streamOffset, 'prefix') : undefined;
    w = await SnapshotWriter.create(target, { ...opts, device: await deviceStateOf(snap), prefix, force: true, fsync: o.fsync ?? true, lock, onProgress: o.onProgress });
    o.onTemp?.(w.tempPath);
    // The new file keeps the original's permissions (a snapshot holds guest memory) and, when we may, its owner.
    fs.chmodSync(w.tempPath, before.mode & 0o7777);
    try {
      fs.chownSync(w.tempPath, before.uid, before.gid);
    } catch {
      // Not root: the file is ours, as any file we write.
    }
    for (const b of snap.blocks) {
      for (const run of snap.presentRuns(b, 0, b.pages, RUN_PAGES)) {
        const bytes = await snap.read(b, run.first * b.pageSize, run.count * b.pageSize);
        // writePages writes runs of non-zero pages and leaves zero pages clear (holes).
        await w.writePages(b.name, run.first, bytes);
        for (let p = 0; p < run.count; p++) {
          if (w.isPresent(b.name, run.first + p)) pagesKept++;
          else pagesCleared++;
        }
      }
    }
    await w.finalize();
  } catch (err) {
    await w?.abort();
    throw err;
  } finally {
    await snap.close();
  }
  const after = fs.statSync(target);
  return {
    file,
    allocatedBefore: before.blocks * 512,
    allocatedAfter: after.blocks * 512,
    bytesFreed: (before.blocks - after.blocks) * 512,
    sizeBefore: before.size,
    sizeAfter: after.size,
    pagesCleared,
    pagesKept,
    alignment,
  };
}

/**
 * The writer options that reproduce the file's layout: the same blocks,
 * page size, stream offset, RAM section id and configuration, and the
 * page-region alignment (1 MiB as QEMU, or the smallest that gives the same
 * offsets). Refuses what SnapshotWriter cannot write the same way.
 */
async function reproducibleLayout(snap: Snapshot): Promise<{ plan: LayoutPlan; opts: PlanOptions }> {
  const m = snap.model;
  const cfg = m.configuration;
  const refuse = (why: string, field: string, offset: number): never => {
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, why, { field, offset });
  };
  if (!m.mappedRam || !cfg) refuse('sparsify works on mapped-ram files only; this is a legacy (sequential) stream: convert it to mapped-ram first', 'configuration.capabilities', m.streamOffset);
  if (cfg!.capabilities.includes(CAP_X_IGNORE_SHARED)) refuse('sparsify cannot rewrite x-ignore-shared files (the writer does not write shared blocks)', 'configuration.capabilities', m.streamOffset);
  const opts: PlanOptions = {
    machine: cfg!.machine,
    pageSize: m.pageSize,
    blocks: m.blocks.map((b) => ({ name: b.name, usedLength: b.usedLength })),
    capabilities: cfg!.capabilities,
    targetPageBits: cfg!.targetPageBits,
    ...(cfg!.uuid !== undefined ? { uuid: cfg!.uuid } : {}),
    ramSectionId: m.ramSectionId,
    streamOffset: m.streamOffset,
  };
  const same = (plan: LayoutPlan): boolean =>
    plan.blocks.every((pb, i) => {
      const b = m.blocks[i];
      return pb.entryOffset === b.entryOffset && pb.bitmapOffset === b.mappedRam?.bitmapOffset && pb.pagesOffset === b.mappedRam?.pagesOffset;
    });
  let plan: LayoutPlan | undefined;
  for (let a = MAPPED_RAM_ALIGNMENT; a >= m.pageSize && !plan; a /= 2) {
    const p = planLayout({ ...opts, alignment: a });
    if (same(p)) plan = p;
  }
  if (!plan) refuse('the page regions of this file are not where ramsnap\'s writer would put them at any alignment; cannot rewrite it with the same offsets', 'ramblock.pages_offset', m.blocks[0].entryOffset);
  // The head (header, configuration, RAM START, MEM_SIZE) must be the file's own bytes: nothing the writer would drop or reorder.
  const head = await snap.source.read(m.streamOffset, plan!.head.length, 'stream.head');
  if (!Buffer.from(head).equals(Buffer.from(plan!.head))) refuse('the stream head (configuration) has parts ramsnap\'s writer does not reproduce', 'configuration', m.streamOffset);
  return { plan: plan!, opts: { ...opts, alignment: plan!.alignment } };
}
