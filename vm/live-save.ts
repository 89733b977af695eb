/**
 * `ramsnap save`: a live, iterative save of a running QEMU guest into one
 * self-contained mapped-ram file.
 *
 * The guest's RAM must be a memory-backend-file with share=on (QEMU and we
 * map the same file). While the guest runs, the precopy loop copies that
 * RAM pass after pass into the snapshot, at its fixed offsets. When the
 * policy says stop, the guest is paused over QMP, the last dirty pages are
 * copied, and QEMU itself saves everything else (device state and the small
 * RAM blocks it does not share: BIOS, option ROMs, ACPI tables) with
 * x-ignore-shared into a temporary legacy stream; that stream's blocks and
 * device sections are merged into the snapshot, whose configuration then
 * says mapped-ram only. A fresh QEMU restores the file without the shared
 * RAM file (SPEC.md, live save).
 *
 * Why not let QEMU write the final file: x-ignore-shared with mapped-ram
 * fails in QEMU 10.0.2 ("Unable to write to file: Bad address"), and a
 * file with x-ignore-shared in its configuration only restores where the
 * shared RAM is.
 */
import fs from 'node:fs';
import type { Configuration } from '../format/configuration.js';
import { CAP_X_IGNORE_SHARED } from '../format/constants.js';
import { RamsnapError, RamsnapUsageError } from '../format/errors.js';
import { Snapshot } from '../reader/snapshot.js';
import { copyBlock, mappedRamConfiguration, withConfiguration } from '../writer/convert.js';
import { precopy, type PrecopyPolicy, type PrecopyResult, type PrecopyStats } from './precopy.js';
import { QmpClient, type Json } from './qmp.js';
import { parseRamblocks, waitForMigration, type RamblockRow } from './qemu-info.js';
import { SharedFileSource, type SharedBlock } from './ram-source.js';
import { realClock } from './sim-guest.js';
import { onInterrupt } from '../writer/cleanup.js';
import { tempPathFor } from '../writer/lock.js';
import { checkOutput } from '../writer/sink.js';
import { SnapshotWriter } from '../writer/snapshot-writer.js';
import { deviceStateOf } from '../writer/template.js';

/** What happens to the source guest once its state is saved. */
export type ThenAction = 'stop' | 'resume' | 'quit';

export interface LiveSaveOptions {
  /** QMP unix socket of the running QEMU. */
  qmp: string;
  output: string;
  /** Shared block name -> file. Blocks on shared memory-backend-files not given here are found through QOM (mem-path). */
  ram?: Record<string, string>;
  policy: PrecopyPolicy;
  then?: ThenAction;
  /** Writes in flight (multifd-channels). */
  channels?: number;
  /** Bytes per second while the guest runs (max-bandwidth); 0: no limit. */
  maxBandwidth?: number;
  /** Capabilities and parameters for QEMU's own part of the save (x-ignore-shared is always set). */
  qemuCapabilities?: Record<string, boolean>;
  qemuParameters?: Json;
  /** Page size of the snapshot; default: the target's (4096, or 8192 for sparc64). */
  pageSize?: number;
  force?: boolean;
  fsync?: boolean;
  /** Permission bits of the snapshot (default 0600, or those of the file it replaces; writer/sink.ts OutputOptions). */
  mode?: number;
  signal?: AbortSignal;
  onPass?(stats: Readonly<PrecopyStats>): void;
  /** Progress lines (discovery, pause, resume). */
  log?(line: string): void;
}

export interface LiveSaveResult {
  output: string;
  machine: string;
  blocks: { name: string; usedLength: number; shared: boolean; path?: string }[];
  precopy: PrecopyResult;
  /** Guest paused: from `stop` to `cont` (or to the end of QEMU's part when not resumed). */
  pauseMs: number;
  /** Bytes of QEMU's own part (device state and unshared blocks). */
  qemuPartBytes: number;
  fileSize: number;
  then: ThenAction;
}

/** Target page size by QEMU target (query-target arch). */
const TARGET_PAGE_SIZE: Record<string, number> = { sparc64: 8192, sparc: 4096, alpha: 8192 };

interface Discovered {
  machine: string;
  pageSize: number;
  rows: RamblockRow[];
  shared: SharedBlock[];
  running: boolean;
}

async function discover(qmp: QmpClient, o: LiveSaveOptions): Promise<Discovered> {
  const status = await qmp.execute<{ status: string; running: boolean }>('query-status');
  if (status.status === 'postmigrate') {
    // QEMU refuses a second migrate here ("Can't migrate the vm that was paused due to previous migration").
    throw new RamsnapError('GUEST_STATE', 'the guest is paused by an earlier migration or save (postmigrate), which QEMU will not save again: cont it first');
  }
  if (!['running', 'paused', 'prelaunch'].includes(status.status)) {
    throw new RamsnapError('GUEST_STATE', `the guest is ${status.status}; ramsnap save needs a running or paused guest`);
  }
  const mig = await qmp.execute<{ status?: string }>('query-migrate');
  if (mig.status && !['none', 'completed', 'failed', 'cancelled'].includes(mig.status)) {
    throw new RamsnapError('MIGRATION_ACTIVE', `a migration is already ${mig.status} on this QEMU`);
  }
  const type = await qmp.execute<string>('qom-get', { path: '/machine', property: 'type' });
  const machine = type.replace(/-machine$/, '');
  const arch = (await qmp.execute<{ arch: string }>('query-target')).arch;
  const pageSize = o.pageSize ?? TARGET_PAGE_SIZE[arch] ?? 4096;
  const rows = parseRamblocks(await qmp.hmp('info ramblock'));
  if (rows.length === 0) throw new RamsnapError('QMP_UNEXPECTED', 'QEMU listed no RAM blocks (info ramblock)');

  // Shared file-backed memory backends: the blocks x-ignore-shared leaves out of QEMU's stream.
  const memdevs = await qmp.execute<{ id?: string; share: boolean; size: number }[]>('query-memdev');
  const objects = await qmp.execute<{ name: string; type: string }[]>('qom-list', { path: '/objects' });
  const shared: SharedBlock[] = [];
  const given = new Map(Object.entries(o.ram ?? {}));
  for (const d of memdevs) {
    if (!d.share || !d.id) continue;
    const obj = objects.find((x) => x.name === d.id);
    if (obj?.type !== 'child<memory-backend-file>') continue;
    const row = rows.find((r) => r.name === d.id || r.name.endsWith(`/${d.id}`));
    if (!row) continue;
    const memPath = await qmp.execute<string>('qom-get', { path: `/objects/${d.id}`, property: 'mem-path' });
    const file = given.get(row.name) ?? given.get(d.id) ?? memPath;
    given.delete(row.name);
    given.delete(d.id);
    checkSameFile(file, memPath, row.name);
    shared.push({ name: row.name, usedLength: row.usedLength, path: file });
  }
  for (const name of given.keys()) {
    throw new RamsnapUsageError('NOT_SHARED', `--ram ${name}: no memory-backend-file with share=on backs a RAM block of that name`, 'ram');
  }
  if (shared.length === 0) {
    const privateFile = memdevs.find((d) => !d.share && d.id && objects.find((x) => x.name === d.id)?.type === 'child<memory-backend-file>');
    if (privateFile) {
      // What ramsnap restore sets up: the guest's writes stay in its private copy, out of any file ramsnap could read.
      throw new RamsnapUsageError(
        'NO_SHARED_RAM',
        `the guest's RAM ${privateFile.id} is a private (share=off) mapping of a file, as ramsnap restore sets up: ramsnap save cannot see the guest's writes there; save it with QEMU's own migrate to a file, or restore with --copy into shared RAM`,
        'ram',
      );
    }
    throw new RamsnapUsageError(
      'NO_SHARED_RAM',
      'the guest has no RAM on a memory-backend-file with share=on, so ramsnap cannot read it while it runs (start QEMU with -object memory-backend-file,id=pc.ram,mem-path=...,share=on -machine memory-backend=pc.ram)',
      'ram',
    );
  }
  return { machine, pageSize, rows, shared, running: status.running };
}

/** The file we read must be the one QEMU maps: same device and inode. */
function checkSameFile(file: string, memPath: string, block: string): void {
  let a: fs.Stats;
  try {
    a = fs.statSync(file);
  } catch {
    throw new RamsnapUsageError('RAM_FILE', `block ${block}: cannot read ${file}`, 'ram');
  }
  if (!a.isFile()) {
    throw new RamsnapUsageError('RAM_FILE', `block ${block}: ${file} is not a regular file (a mem-path directory holds an unlinked file ramsnap cannot open)`, 'ram');
  }
  let b: fs.Stats | undefined;
  try {
    b = fs.statSync(memPath);
  } catch {
    b = undefined;
  }
  if (b && (a.dev !== b.dev || a.ino !== b.ino)) {
    throw new RamsnapUsageError('RAM_FILE', `block ${block}: ${file} is not the file QEMU maps (${memPath})`, 'ram');
  }
}

export async function liveSave(o: LiveSaveOptions): Promise<LiveSaveResult> {
  const log = o.log ?? (() => {});
  const then = o.then ?? 'resume';
  // A bad output is refused before the guest is touched (the writer checks again when it creates the file).
  checkOutput(o.output, o.force ?? false);
  const qmp = await QmpClient.connect(o.qmp);
  let writer: SnapshotWriter | undefined;
  let source: SharedFileSource | undefined;
  let paused = false;
  let wasRunning = false;
  let saved: Settings | undefined;
  // Named like the writer's temporary file, so a killed save's leftover is removed by the next writer of the target.
  // QEMU creates it 0600 (migration/file.c), as ramsnap creates its own temporary files.
  const tailPath = tempPathFor(o.output);
  const forgetTail = onInterrupt(() => fs.rmSync(tailPath, { force: true }));
  try {
    const d = await discover(qmp, o);
    wasRunning = d.running;
    const sharedNames = new Set(d.shared.map((s) => s.name));
    log(`guest ${d.machine}: ${d.rows.length} RAM blocks; shared: ${d.shared.map((s) => `${s.name} (${s.path})`).join(', ')}`);
    writer = await SnapshotWriter.create(o.output, {
      blocks: d.rows,
      pageSize: d.pageSize,
      machine: d.machine,
      force: o.force,
      fsync: o.fsync,
      mode: o.mode,
    });
    source = SharedFileSource.open(d.shared, d.pageSize);

    let stoppedAt = 0;
    let qemuPart: Promise<void> | undefined;
    const clock = realClock;
    const result = await precopy({
      source,
      writer,
      policy: o.policy,
      channels: o.channels,
      maxBandwidth: o.maxBandwidth,
      signal: o.signal,
      onPass: o.onPass,
      clock,
      pause: async () => {
        await qmp.execute('stop');
        paused = true;
        stoppedAt = clock.now();
        log('guest paused');
        // QEMU writes its part while we copy the last pages: both only read the paused guest.
        saved = await saveSettings(qmp);
        qemuPart = saveQemuPart(qmp, tailPath, o);
        qemuPart.catch(() => undefined);
      },
    });
    await qemuPart;
    let pauseMs: number;
    if (then === 'resume' && wasRunning) {
      await qmp.execute('cont');
      paused = false;
      pauseMs = clock.now() - stoppedAt;
      log(`guest resumed after ${pauseMs.toFixed(0)} ms`);
    } else {
      pauseMs = clock.now() - stoppedAt;
    }
    await restoreSettings(qmp, saved, o);
    saved = undefined;

    const qemuPartBytes = fs.statSync(tailPath).size;
    await mergeQemuPart(writer, tailPath, d, sharedNames);
    fs.rmSync(tailPath, { force: true });
    await writer.finalize();
    writer = undefined;
    if (then === 'quit') {
      await qmp.execute('quit').catch(() => undefined);
      log('QEMU told to quit');
    }
    return {
      output: o.output,
      machine: d.machine,
      blocks: d.rows.map((r) => ({ ...r, shared: sharedNames.has(r.name), path: d.shared.find((s) => s.name === r.name)?.path })),
      precopy: result,
      pauseMs,
      qemuPartBytes,
      fileSize: fs.statSync(o.output).size,
      then,
    };
  } catch (err) {
    await writer?.abort().catch(() => undefined);
    fs.rmSync(tailPath, { force: true });
    // Our failure must not cost the guest its run: resume it if it ran before.
    if (saved) await restoreSettings(qmp, saved, o).catch(() => undefined);
    if (paused && wasRunning) {
      await qmp.execute('cont').catch(() => undefined);
      log('guest resumed (the save failed)');
    }
    throw err;
  } finally {
    forgetTail();
    await source?.close();
    qmp.close();
  }
}

/** The capabilities QEMU's part is saved with: the options', x-ignore-shared on, no mapped-ram nor multifd. */
function partCapabilities(o: LiveSaveOptions): Record<string, boolean> {
  return { ...(o.qemuCapabilities ?? {}), [CAP_X_IGNORE_SHARED]: true, 'mapped-ram': false, multifd: false };
}

/** QEMU saves what we do not copy: device state and unshared blocks, x-ignore-shared, legacy stream. */
async function saveQemuPart(qmp: QmpClient, file: string, o: LiveSaveOptions): Promise<void> {
  const caps = partCapabilities(o);
  await qmp.execute('migrate-set-capabilities', { capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })) });
  if (o.qemuParameters && Object.keys(o.qemuParameters).length > 0) await qmp.execute('migrate-set-parameters', o.qemuParameters);
  fs.rmSync(file, { force: true });
  await qmp.execute('migrate', { uri: `file:${file}` });
  await waitForMigration(qmp, {
    signal: o.signal,
    failed: (why) => new RamsnapError('QEMU_SAVE_FAILED', `QEMU's save of the device state ${why}`),
    onAbort: async () => {
      await qmp.execute('migrate_cancel').catch(() => undefined);
    },
    aborted: () => new RamsnapError('SAVE_ABORTED', 'the save was interrupted; nothing was left at the target'),
  });
}

interface Settings {
  capabilities: { capability: string; state: boolean }[];
  parameters: Json;
}

async function saveSettings(qmp: QmpClient): Promise<Settings> {
  return {
    capabilities: await qmp.execute<{ capability: string; state: boolean }[]>('query-migrate-capabilities'),
    parameters: await qmp.execute<Json>('query-migrate-parameters'),
  };
}

/** Puts back the capabilities and parameters QEMU's part changed, as they were before the save. */
async function restoreSettings(qmp: QmpClient, before: Settings | undefined, o: LiveSaveOptions): Promise<void> {
  if (!before) return;
  const changed = new Set(Object.keys(partCapabilities(o)));
  const caps = before.capabilities.filter((c) => changed.has(c.capability));
  if (caps.length) await qmp.execute('migrate-set-capabilities', { capabilities: caps });
  const params = Object.fromEntries(Object.keys(o.qemuParameters ?? {}).filter((k) => k in before.parameters).map((k) => [k, before.parameters[k]]));
  if (Object.keys(params).length) await qmp.execute('migrate-set-parameters', params);
}

/** Copies QEMU's unshared blocks and device state into the snapshot and makes its head say mapped-ram only. */
async function mergeQemuPart(writer: SnapshotWriter, file: string, d: Discovered, shared: Set<string>): Promise<void> {
  const snap = await Snapshot.open(file);
  try {
    const m = snap.model;
    const had = m.configuration as Configuration;
    const listed = snap.blocks.map((b) => `${b.name}:${b.usedLength}`).join(', ');
    const planned = d.rows.map((b) => `${b.name}:${b.usedLength}`).join(', ');
    if (listed !== planned) {
      throw new RamsnapError('LAYOUT_CHANGED', `QEMU's blocks at the pause (${listed}) are not those listed when the save began (${planned})`);
    }
    if (had.machine !== d.machine) throw new RamsnapError('LAYOUT_CHANGED', `QEMU saved machine ${had.machine}, not ${d.machine}`);
    for (const b of snap.blocks) {
      if (!shared.has(b.name)) {
        await copyBlock(snap, b, writer);
      } else if (snap.presentRuns(b).next().done === false) {
        throw new RamsnapError('SHARED_BLOCK_SAVED', `QEMU saved pages of ${b.name}, which ramsnap took as shared: it would not know which copy is right`);
      }
    }
    const cfg: Configuration = { ...had, capabilities: had.capabilities.filter((c) => c !== CAP_X_IGNORE_SHARED) };
    const written = mappedRamConfiguration(cfg, d.rows, d.pageSize, m.ramSectionId);
    await writer.retarget({
      machine: written.machine,
      capabilities: written.capabilities,
      targetPageBits: written.targetPageBits,
      uuid: written.uuid,
      ramSectionId: m.ramSectionId,
      device: withConfiguration(await deviceStateOf(snap), had, written),
    });
  } finally {
    await snap.close();
  }
}
