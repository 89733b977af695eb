/**
 * `ramsnap restore`: loads a snapshot into a QEMU started with
 * `-incoming defer`, either by mapping the machine's RAM from the snapshot
 * file (instant: only a small stream is loaded, see restore-stream.ts) or,
 * with `copy`, by QEMU's own restore of the whole file.
 *
 * The target is checked over QMP before anything is loaded: it must wait
 * for an incoming migration, be the snapshot's machine type with the same
 * RAM blocks, and (when mapping) back the mapped block with a private,
 * read-only memory-backend-file over this very file at the block's page
 * region. A target that fails a check gets one line and nothing loaded.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CAP_MAPPED_RAM } from '../format/constants.js';
import { RamsnapError, RamsnapUsageError } from '../format/errors.js';
import { checkChain } from '../writer/delta.js';
import { HoleMap, type HoleMapKind } from '../reader/holes.js';
import type { Snapshot } from '../reader/snapshot.js';
import { FileSource } from '../reader/source.js';
import { onInterrupt } from '../writer/cleanup.js';
import { processesMapping, type FileMapping } from '../writer/mapped.js';
import { parseRamblocks, vhostUserNetdevs, waitForMigration } from './qemu-info.js';
import { QmpClient } from './qmp.js';
import { planRestore, type RestorePlan } from './restore-plan.js';
import { everythingIsData, writeRestoreStream, type DataRanges, type RestoreStreamResult } from './restore-stream.js';

export interface RestoreOptions {
  /** QMP socket of a QEMU started with -incoming defer. */
  qmp: string;
  /** QEMU's own restore of the whole file instead of mapping it. */
  copy?: boolean;
  /** The block to map instead of the machine's RAM. */
  ramBlock?: string;
  /** Where the snapshot's data is (the rest are holes), for finding stale pages without reading holes. */
  dataRanges?: DataRanges;
  /** Longest wait for QEMU's load (default 10 minutes). */
  timeoutMs?: number;
  /** Stops waiting for QEMU (SIGINT): RESTORE_ABORTED. QEMU itself goes on loading what it has open. */
  signal?: AbortSignal;
  /** Called after the small stream is built and before QEMU loads anything: throw to stop (the CLI checks there that the file did not change while read). */
  beforeLoad?: () => void;
  /** Which processes map a file (default: /proc, writer/mapped.ts); a test stands in for QEMU's mapping here. */
  mappedBy?: (file: string) => FileMapping[];
  /** performance.now() at which the timing starts (default: when restoreSnapshot is called; the CLI passes 0, its process start). */
  startedAt?: number;
  /**
   * Deltas to load over the snapshot (restore --base): the snapshot is their
   * base, mapped as usual; the small stream carries their pages, and the last
   * one's configuration and device state. Checked to apply to the base first.
   */
  deltas?: { snap: Snapshot; path: string }[];
}

export interface RestoreResult {
  mode: 'mapped' | 'copy';
  machine: string;
  /** The mapped block (mapped mode). */
  mapped?: { block: string; usedLength: number; pagesOffset: number; found: string };
  /** The small stream: what it held, and its allocated bytes (the mapped blocks' page regions in it are holes). */
  stream?: RestoreStreamResult & { bytes: number; holeMap: HoleMapKind | 'given'; holeMapReason?: string };
  /** From the start of restore() to QEMU's `completed`. */
  elapsedMs: number;
  /** QEMU's run state afterwards (running unless it was started with -S). */
  status: string;
}

/** A target that does not match the snapshot (`field` names what differs): nothing was loaded. */
export class RestoreTargetError extends RamsnapError {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super('RESTORE_TARGET_MISMATCH', `${message}; nothing was loaded`);
  }
}

export async function restoreSnapshot(snap: Snapshot, snapshotPath: string, o: RestoreOptions): Promise<RestoreResult> {
  const started = o.startedAt ?? performance.now();
  const file = path.resolve(snapshotPath);
  // Mapping is checked before QMP is touched: a snapshot that cannot be mapped needs another QEMU command line.
  const plan = o.copy ? undefined : planRestore(snap, file, { ramBlock: o.ramBlock });
  const deltas = o.deltas ?? [];
  if (deltas.length && !plan) throw new RamsnapUsageError('USAGE', 'deltas are loaded over a mapping of their base: --copy cannot take them (ramsnap apply writes the full snapshot)', 'copy');
  // A delta made against other memory would load into a guest that never existed: refused before QMP is touched.
  if (deltas.length) await checkChain(snap, deltas);
  // The hole map's helper starts while QEMU is checked (it takes a process start).
  const holeMap = plan && !o.dataRanges && snap.source instanceof FileSource ? HoleMap.open(snap.source.fd, file) : undefined;
  holeMap?.catch(() => undefined);
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect(o.qmp);
    const machine = await checkTarget(qmp, snap, plan, file, o.mappedBy ?? processesMapping);
    const caps = streamCapabilities(deltas.length ? deltas[deltas.length - 1].snap : snap);
    let uri: string;
    let stream: RestoreResult['stream'];
    let scratch: string | undefined;
    let forgetScratch: (() => void) | undefined;
    try {
      if (plan) {
        // Private to this user (0700): the stream holds the small blocks' memory. Registered for removal
        // if a signal ends the process, removed below in any other case.
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-restore-'));
        scratch = dir;
        forgetScratch = onInterrupt(() => fs.rmSync(dir, { recursive: true, force: true }));
        const streamPath = path.join(dir, 'stream');
        stream = await buildStream(snap, plan, streamPath, o.dataRanges, await holeMap, deltas.map((d) => d.snap));
        uri = `file:${streamPath}`;
      } else {
        uri = `file:${file}${snap.model.streamOffset ? `,offset=${snap.model.streamOffset}` : ''}`;
      }
      o.beforeLoad?.();
      await qmp.execute('migrate-set-capabilities', { capabilities: caps.map(([capability, state]) => ({ capability, state })) });
      await qmp.execute('migrate-incoming', { uri, 'exit-on-error': false });
      await waitForMigration(qmp, {
        timeoutMs: o.timeoutMs ?? 600_000,
        signal: o.signal,
        failed: (why) => new RamsnapError('RESTORE_FAILED', `QEMU's load failed: ${why}`),
        aborted: () => new RamsnapError('RESTORE_ABORTED', 'the restore was interrupted; QEMU goes on loading what it has open, so quit that QEMU and start again'),
      });
    } finally {
      if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
      forgetScratch?.();
    }
    const elapsedMs = performance.now() - started;
    const status = (await qmp.execute<{ status: string }>('query-status')).status;
    return {
      mode: plan ? 'mapped' : 'copy',
      machine,
      mapped: plan && { block: plan.block.name, usedLength: plan.block.usedLength, pagesOffset: plan.pagesOffset, found: plan.found },
      stream,
      elapsedMs,
      status,
    };
  } finally {
    qmp?.close();
    (await holeMap?.catch(() => undefined))?.close();
  }
}

/** Builds the small stream, looking for stale pages only in the snapshot's data extents (reader/holes.ts). */
async function buildStream(snap: Snapshot, plan: RestorePlan, streamPath: string, given: DataRanges | undefined, map: HoleMap | undefined, deltas: Snapshot[]): Promise<NonNullable<RestoreResult['stream']>> {
  try {
    const dataRanges = given ?? (map ? (a: number, b: number) => map.dataExtents(a, b) : everythingIsData);
    const written = await writeRestoreStream(snap, new Set([plan.block.name]), streamPath, dataRanges, deltas);
    return {
      ...written,
      bytes: fs.statSync(streamPath).blocks * 512,
      holeMap: given ? 'given' : (map?.kind ?? 'none'),
      ...(map?.reason ? { holeMapReason: map.reason } : {}),
    };
  } finally {
    map?.close();
  }
}

/** The capabilities the stream needs, as QEMU's loader compares them with its own: every one the file records, and mapped-ram either way. */
function streamCapabilities(snap: Snapshot): [string, boolean][] {
  const recorded = snap.model.configuration?.capabilities ?? [];
  const caps = new Map<string, boolean>(recorded.map((c) => [c, true]));
  caps.set(CAP_MAPPED_RAM, snap.model.mappedRam);
  return [...caps];
}

/** Checks the target against the snapshot; returns its machine type. */
async function checkTarget(qmp: QmpClient, snap: Snapshot, plan: RestorePlan | undefined, file: string, mappedBy: (file: string) => FileMapping[]): Promise<string> {
  const status = await qmp.execute<{ status: string }>('query-status');
  if (status.status !== 'inmigrate') {
    throw new RestoreTargetError('status', `QEMU is ${status.status}, not waiting for an incoming migration: start it with -incoming defer`);
  }
  const mig = await qmp.execute<{ status?: string }>('query-migrate');
  if (mig.status && mig.status !== 'none') throw new RestoreTargetError('status', `QEMU's incoming migration is already ${mig.status}`);

  const type = (await qmp.execute<string>('qom-get', { path: '/machine', property: 'type' })).replace(/-machine$/, '');
  const wanted = snap.model.configuration?.machine;
  if (wanted && type !== wanted) throw new RestoreTargetError('machine', `QEMU runs machine ${type}, the snapshot is of ${wanted}`);

  const rows = parseRamblocks(await qmp.hmp('info ramblock'));
  for (const b of snap.blocks) {
    const row = rows.find((r) => r.name === b.name);
    if (!row) throw new RestoreTargetError('blocks', `QEMU has no RAM block ${JSON.stringify(b.name)} (it has ${rows.map((r) => r.name).join(', ')})`);
    // QEMU's loader resizes a resizable block (its Total, the most it can hold, exceeds what it uses) to the stream's length.
    const resizable = row.maxLength > row.usedLength && b.usedLength <= row.maxLength;
    if (row.usedLength !== b.usedLength && !resizable) {
      throw new RestoreTargetError('blocks', `RAM block ${b.name} is ${row.usedLength} bytes in QEMU and ${b.usedLength} in the snapshot (is -m right?)`);
    }
  }
  if (plan) {
    await checkBackend(qmp, plan, file, mappedBy);
    await checkNoSharedMemoryDevices(qmp);
  }
  return type;
}

/** The mapped block must be the machine's RAM, on a private read-only mapping of this file at the block's page region. */
async function checkBackend(qmp: QmpClient, plan: RestorePlan, file: string, mappedBy: (file: string) => FileMapping[]): Promise<void> {
  const id = plan.block.name;
  const hint = `start QEMU with ${plan.qemuArgs.join(' ')}`;
  const objects = await qmp.execute<{ name: string; type: string }[]>('qom-list', { path: '/objects' });
  const obj = objects.find((x) => x.name === id);
  if (obj?.type !== 'child<memory-backend-file>') {
    throw new RestoreTargetError('backend', `QEMU has no memory-backend-file named ${id} to map the snapshot (${hint})`);
  }
  const get = <T>(property: string): Promise<T> => qmp.execute<T>('qom-get', { path: `/objects/${id}`, property });
  const memPath = await get<string>('mem-path');
  // QEMU resolved a relative path against its own directory, which is not ours to know.
  if (!path.isAbsolute(memPath)) throw new RestoreTargetError('backend', `backend ${id} names its file by a relative path (${memPath}): give mem-path as an absolute path`);
  if (!sameFile(memPath, file)) throw new RestoreTargetError('backend', `backend ${id} maps ${memPath}, not the snapshot ${file}`);
  const offset = await get<number>('offset');
  if (offset !== plan.pagesOffset) throw new RestoreTargetError('backend', `backend ${id} maps the file at offset ${offset}; ${id}'s pages are at ${plan.pagesOffset}`);
  // The path names this file now; a snapshot replaced by rename since QEMU started would leave QEMU mapping the old one.
  // What counts is what is mapped: some process must map this very file (device and inode) at the page region.
  if (!mappedBy(file).some((m) => m.offsets.includes(plan.pagesOffset))) {
    throw new RestoreTargetError('backend', `no process maps ${file} at offset ${plan.pagesOffset}: QEMU maps another file of that name (was the snapshot replaced after QEMU started?)`);
  }
  if (await get<boolean>('share')) {
    // A shared mapping would write the guest's memory into the snapshot.
    throw new RestoreTargetError('backend', `backend ${id} is share=on: the guest would write into the snapshot (use share=off)`);
  }
  if (!(await get<boolean>('readonly'))) throw new RestoreTargetError('backend', `backend ${id} opens the snapshot for writing (use readonly=on,rom=off)`);
  if ((await get<string>('rom')) !== 'off') throw new RestoreTargetError('backend', `backend ${id} maps the snapshot read-only for the guest too (use rom=off)`);
  const machineBackend = await qmp.execute<string>('qom-get', { path: '/machine', property: 'memory-backend' }).catch(() => '');
  if (machineBackend.replace(/^\/objects\//, '') !== id) {
    throw new RestoreTargetError('backend', `backend ${id} is not the machine's RAM (-machine memory-backend=${id})`);
  }
}

/**
 * vhost-user devices (and their kin) hand guest memory to another process,
 * which needs share=on; a private mapping cannot give that.
 */
async function checkNoSharedMemoryDevices(qmp: QmpClient): Promise<void> {
  for (const container of ['/machine/peripheral', '/machine/peripheral-anon']) {
    const children = await qmp.execute<{ name: string; type: string }[]>('qom-list', { path: container }).catch(() => []);
    const dev = children.find((c) => /^child<vhost-user/.test(c.type));
    if (dev) {
      throw new RestoreTargetError('devices', `device ${dev.name} (${dev.type.slice(6, -1)}) needs guest RAM shared with another process (share=on), which a private mapping of the snapshot cannot give: use --copy into shared RAM`);
    }
  }
  // A vhost-user network backend sits behind an ordinary virtio-net device: only the network list names it.
  const netdevs = vhostUserNetdevs(await qmp.hmp('info network').catch(() => ''));
  if (netdevs.length) {
    throw new RestoreTargetError('devices', `network backend ${netdevs[0]} is vhost-user, which needs guest RAM shared with another process (share=on): a private mapping of the snapshot cannot give that; use --copy into shared RAM`);
  }
}

/** Same device and inode, so a path spelled another way still counts. */
function sameFile(a: string, b: string): boolean {
  try {
    const x = fs.statSync(a);
    const y = fs.statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}


/** Bytes read at a time by prefetch: large reads, one buffer. */
const PREFETCH_CHUNK = 4 << 20;

export interface PrefetchResult {
  bytes: number;
  ms: number;
}

/**
 * Reads the present pages of the mapped block into the page cache, so the
 * guest's first touch of each is a minor fault (a page-cache hit) instead
 * of a read from disk. Run after the load: the guest is already running
 * while this goes on. Stops early when `signal` aborts.
 */
export async function prefetch(snap: Snapshot, blockName: string, signal?: AbortSignal): Promise<PrefetchResult> {
  const started = performance.now();
  const block = snap.block(blockName);
  const ps = block.pageSize;
  const buf = Buffer.allocUnsafe(Math.max(ps, Math.floor(PREFETCH_CHUNK / ps) * ps));
  let bytes = 0;
  for (const run of snap.presentRuns(block, 0, block.pages, buf.length / ps)) {
    if (signal?.aborted) break;
    const n = run.count * ps;
    await snap.source.read(run.fileOffset, n, `ramblock[${block.name}].pages`, buf.subarray(0, n));
    bytes += n;
  }
  return { bytes, ms: performance.now() - started };
}

