/**
 * Precopy policies compared (issue 4): simulated guests of 1 GiB and 4 GiB
 * with a hot working set, at several dirty rates, saved with each built-in
 * policy and with a one-shot stop-and-copy (pause first, copy everything).
 *
 * The guests run on a virtual clock so a 4 GiB guest costs no real
 * minutes, but the two rates that set the clock are measured on this
 * machine in the same run:
 * - write bandwidth: SnapshotWriter writing 512 MiB of pages to a file in
 *   the temp dir, fsync included;
 * - scan rate: the hashing source (SharedFileSource) reading and hashing a
 *   512 MiB RAM file on /dev/shm (or the temp dir), with 2 workers.
 * Each pass costs guest size / scan rate (ramsnap save hashes all of RAM to
 * find dirty pages; the stop-and-copy pass too, with the guest paused) plus
 * the bytes it writes / write bandwidth, and the guest dirties pages all
 * along. The policies run as `ramsnap save` runs them (max-iterations 30
 * on top of each). Downtime = scan + paused bytes / bandwidth; the column
 * "no scan" is what it would be with a dirty log like KVM's.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { policyFromOptions } from '../../analyze/commands/save.js';
import { precopy, type PageWriter, type PrecopyPolicy } from '../../vm/precopy.js';
import { SharedFileSource, type CollectResult, type DirtyRun, type RamSource } from '../../vm/ram-source.js';
import { defaultSaveOptions, type SaveOptions } from '../../vm/save-options.js';
import { SimulatedGuest, VirtualClock } from '../../vm/sim-guest.js';
import { SnapshotWriter } from '../../writer/snapshot-writer.js';

const MiB = 1 << 20;
const GiB = 1 << 30;
const PS = 4096;

/** A simulated guest whose dirty pages are found by hashing all of RAM, as ramsnap save does: each pass first costs a scan. */
class HashingCost implements RamSource {
  readonly pageSize: number;
  readonly blocks;
  constructor(
    private readonly guest: SimulatedGuest,
    private readonly clock: VirtualClock,
    private readonly scanBytesPerSec: number,
  ) {
    this.pageSize = guest.pageSize;
    this.blocks = guest.blocks;
  }
  read(block: string, first: number, into: Uint8Array): Promise<void> {
    return this.guest.read(block, first, into);
  }
  async collect(emit: (run: DirtyRun) => Promise<void>, concurrency?: number): Promise<CollectResult> {
    const scanMs = ((this.guest.pages * this.pageSize) / this.scanBytesPerSec) * 1000;
    this.clock.advance(scanMs);
    const r = await this.guest.collect(emit, concurrency);
    return { pages: r.pages, scanMs };
  }
  dirtyPages(): number {
    return -1;
  }
  close(): Promise<void> {
    return this.guest.close();
  }
}

export interface Rates {
  writeBytesPerSec: number;
  scanBytesPerSec: number;
}

/** Measures the write bandwidth of SnapshotWriter and the scan rate of the hashing source, on this machine, now. */
export async function measureRates(tmp: string): Promise<Rates> {
  const size = 512 * MiB;
  const chunk = Buffer.alloc(4 * MiB);
  for (let i = 0; i < chunk.length; i += 8) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  const out = path.join(tmp, 'precopy-bw.snap');
  const t0 = performance.now();
  const w = await SnapshotWriter.create(out, { blocks: [{ name: 'pc.ram', usedLength: size }], pageSize: PS, machine: 'pc-q35-10.0', force: true });
  const pending: Promise<void>[] = [];
  for (let off = 0; off < size; off += chunk.length) {
    chunk.writeUInt32LE(off, 0);
    pending.push(w.writePages('pc.ram', off / PS, chunk));
    if (pending.length >= 4) await pending.shift();
  }
  await Promise.all(pending);
  await w.finalize();
  const writeBytesPerSec = size / ((performance.now() - t0) / 1000);
  fs.rmSync(out, { force: true });

  const dir = fs.existsSync('/dev/shm') ? '/dev/shm' : tmp;
  const ram = path.join(dir, `ramsnap-bench-scan-${process.pid}.ram`);
  try {
    const fd = fs.openSync(ram, 'w');
    for (let off = 0; off < size; off += chunk.length) fs.writeSync(fd, chunk, 0, chunk.length, off);
    fs.closeSync(fd);
    const src = SharedFileSource.open([{ name: 'pc.ram', usedLength: size, path: ram }], PS);
    await src.collect(async () => {}, 2); // warm-up: first hashes
    const t1 = performance.now();
    await src.collect(async () => {}, 2);
    const scanBytesPerSec = size / ((performance.now() - t1) / 1000);
    await src.close();
    return { writeBytesPerSec, scanBytesPerSec };
  } finally {
    fs.rmSync(ram, { force: true });
  }
}

export interface PrecopyRow {
  guest: string;
  rate: string;
  policy: string;
  iterations: number;
  totalBytes: number;
  pausedBytes: number;
  downtimeMs: number;
  noScanMs: number;
  totalMs: number;
}

const countingWriter = (clock: VirtualClock, bw: number): PageWriter => ({
  pageSize: PS,
  async writePages(_b, _f, data) {
    clock.advance((data.length / bw) * 1000);
  },
});

async function run(size: number, pagesPerSec: number, policyName: string, rates: Rates): Promise<PrecopyRow> {
  const clock = new VirtualClock();
  const guest = new SimulatedGuest({ size, workingSet: size / 2, dirtyRate: pagesPerSec, pattern: 'hot', seed: 7, clock, content: false });
  const source = new HashingCost(guest, clock, rates.scanBytesPerSec);
  let policy: PrecopyPolicy;
  if (policyName === 'one-shot') policy = () => 'stop-and-copy';
  else {
    const o: SaveOptions = defaultSaveOptions();
    o.precopy.policy = policyName;
    policy = await policyFromOptions(o);
  }
  const oneShot = policyName === 'one-shot';
  // One-shot: the guest is paused before anything is copied, so its first pass is the whole downtime.
  if (oneShot) guest.pause();
  const r = await precopy({
    source,
    writer: countingWriter(clock, rates.writeBytesPerSec),
    clock,
    channels: 1,
    policy,
    pause: async () => guest.pause(),
  });
  const pausedBytes = oneShot ? r.totalBytes : r.pausedBytes;
  const noScanMs = (pausedBytes / rates.writeBytesPerSec) * 1000;
  return {
    guest: `${size / GiB} GiB`,
    rate: `${((pagesPerSec * PS) / MiB).toFixed(0)} MiB/s`,
    policy: policyName,
    iterations: oneShot ? 0 : r.iterations,
    totalBytes: r.totalBytes,
    pausedBytes,
    downtimeMs: oneShot ? r.history[0].lastPassMs : r.pausedMs,
    noScanMs,
    totalMs: oneShot ? r.history[0].lastPassMs : clock.now(),
  };
}

/** Guest sizes, dirty rates (pages per second) and policies of the table. */
export const SIZES = [1 * GiB, 4 * GiB];
export const RATES = [2_560, 12_800, 51_200]; // 10, 50 and 200 MiB/s of 4 KiB pages
export const POLICIES = ['one-shot', 'classic', 'threshold', 'downtime'];

export async function precopyTable(tmp: string, log: (s: string) => void = () => {}): Promise<{ rates: Rates; rows: PrecopyRow[]; text: string }> {
  const rates = await measureRates(tmp);
  log(`precopy: write ${(rates.writeBytesPerSec / MiB).toFixed(0)} MiB/s, scan ${(rates.scanBytesPerSec / MiB).toFixed(0)} MiB/s`);
  const rows: PrecopyRow[] = [];
  for (const size of SIZES) for (const rate of RATES) for (const p of POLICIES) rows.push(await run(size, rate, p, rates));
  const fmt = (b: number): string => (b >= GiB ? `${(b / GiB).toFixed(2)} GiB` : `${(b / MiB).toFixed(1)} MiB`);
  const header = ['guest', 'dirty rate', 'policy', 'passes', 'written', 'copied paused', 'downtime', 'no scan', 'save took'];
  const body = rows.map((r) => [
    r.guest,
    r.rate,
    r.policy,
    String(r.iterations),
    fmt(r.totalBytes),
    fmt(r.pausedBytes),
    `${r.downtimeMs.toFixed(0)} ms`,
    `${r.noScanMs.toFixed(0)} ms`,
    `${(r.totalMs / 1000).toFixed(1)} s`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  const text = [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)].join('\n');
  return { rates, rows, text };
}

/** `node dist/test/bench/precopy.js`: the table alone. */
if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-precopy-bench-'));
  precopyTable(tmp, (s) => process.stderr.write(s + '\n'))
    .then((t) => process.stdout.write(t.text + '\n'))
    .finally(() => fs.rmSync(tmp, { recursive: true, force: true }));
}

/**
 * The real thing: a 1 GiB QEMU guest running fixtures/guest/dirty.elf
 * (256 MiB working set, a hot 16 MiB), at a moderate and a heavy dirty
 * rate, saved live by ramsnap with each built-in policy (the guest resumed
 * after each), then by QEMU itself (mapped-ram to a file, its own precopy
 * with KVM's dirty log), whose downtime QEMU reports. The pause ramsnap
 * reports is QMP `stop` to `cont`.
 */
export async function realSaves(tmp: string, log: (s: string) => void = () => {}): Promise<string> {
  const lines: string[] = [
    'Live saves of a real QEMU guest (1 GiB, dirty.elf: 256 MiB working set, hot 16 MiB; rate = page writes measured over 1 s before the saves):',
    '',
    '| guest dirty rate | saver | policy | passes | written | copied paused | guest paused |',
    '|---|---|---|---|---|---|---|',
  ];
  for (const delay of [50_000, 2_000]) lines.push(...(await realGuest(tmp, delay, log)));
  return lines.join('\n');
}

async function realGuest(tmp: string, delay: number, log: (s: string) => void): Promise<string[]> {
  const { startDirtyGuest, measureDirtyRate } = await import('../../fixtures/dirty-guest.js');
  const { liveSave } = await import('../../vm/live-save.js');
  const dir = fs.mkdtempSync(path.join(tmp, 'live-'));
  const sock = path.join(dir, 'save.qmp');
  const g = await startDirtyGuest({
    dir,
    memory: 1 * GiB,
    params: { ws: 256 * MiB, hot: 16 * MiB, hotRate: 4, delay },
    extraArgs: ['-qmp', `unix:${sock},server=on,wait=off`],
  });
  const lines: string[] = [];
  try {
    const rate = `${(((await measureDirtyRate(g.ramPath, 1000)) * PS) / MiB).toFixed(0)} MiB/s (${g.accel})`;
    for (const name of ['classic', 'threshold', 'downtime']) {
      const o = defaultSaveOptions();
      o.precopy.policy = name;
      const out = path.join(dir, `${name}.snap`);
      log(`  live save, ${name}, guest delay=${delay}`);
      const r = await liveSave({ qmp: sock, output: out, policy: await policyFromOptions(o), then: 'resume', channels: 2, maxBandwidth: 0 });
      lines.push(
        `| ${rate} | ramsnap save | ${name} | ${r.precopy.iterations} | ${(r.precopy.totalBytes / MiB).toFixed(0)} MiB | ${(r.precopy.pausedBytes / MiB).toFixed(1)} MiB | ${r.pauseMs.toFixed(0)} ms |`,
      );
      fs.rmSync(out, { force: true });
    }
    log(`  QEMU migrate, mapped-ram, guest delay=${delay}`);
    const qemuFile = path.join(dir, 'qemu.snap');
    await g.qemu.setCapabilities({ 'mapped-ram': true });
    await g.qemu.cmd('migrate-set-parameters', { 'max-bandwidth': 0 });
    await g.qemu.cmd('migrate', { uri: `file:${qemuFile}` });
    const st = (await g.qemu.waitMigration(300_000)) as { downtime?: number; ram?: { 'dirty-sync-count'?: number; transferred?: number } };
    lines.push(
      `| ${rate} | QEMU migrate (mapped-ram, KVM dirty log) | QEMU's | ${st.ram?.['dirty-sync-count'] ?? '?'} syncs | ${((st.ram?.transferred ?? 0) / MiB).toFixed(0)} MiB | - | ${st.downtime ?? '?'} ms |`,
    );
  } finally {
    await g.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return lines;
}
