/**
 * Delta benchmark (`BENCH_ONLY=delta npm run bench`, and part of the full
 * run): issue 11's figures. The issue sets no goals for them, so every row
 * is information.
 *
 * - Size: the allocated size of `ramsnap delta` of two saves against the
 *   later save's. (a) A series of the dirtying guest (256 MiB, 64 MiB
 *   working set, throttled so that it rewrites part of its working set
 *   between saves): saved paused, then live twice, 1.5 s apart; deltas of
 *   consecutive saves. (b) An idle guest: q35 with no disk, SeaBIOS settled
 *   in its boot-retry wait, saved paused twice 1 s apart (QEMU cannot save
 *   a guest paused by a migration again without `cont`).
 * - Diff time: `ramsnap diff A B` (whole command; exit 1 as the files
 *   differ) of two 2 GiB QEMU saves (savedGuest, and a copy with 16 MiB
 *   patched at the top of RAM by `ramsnap patch`) against `cmp -s` of their
 *   raw images, extracted beforehand: cmp stops at the first difference, so
 *   the patch sits at the top of RAM, where cmp gets only after reading
 *   both images almost whole. Plus diff's peak RSS against bare Node.
 * - Restore from a delta: the dirtying series' live-to-live delta, restored
 *   with `ramsnap restore D --base BASE --qmp` (whole command, into a QEMU
 *   started with the printed arguments and -incoming defer, untimed),
 *   against the full mapped restore of the later save (`ramsnap restore
 *   NEW --qmp`) and QEMU's own restore of it (migrate-incoming to
 *   completed). Host memory: the QEMU process's PSS right after the load
 *   and after reading all guest memory (pmemsave to /dev/null), as
 *   restore.ts's clone rows measure it; the median over the runs.
 */
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readDirtyGuestRecord, startDirtyGuest } from '../../fixtures/dirty-guest.js';
import { Qemu, kvmAvailable, qemuAvailable, sleep } from '../../fixtures/qemu.js';
import { GiB, MiB, PAGE_SIZE } from './guest.js';
import { haveGnuTime, median, ms, peakRssKiB, rounds, runsText, timeCommand } from './measure.js';
import { QEMU_BINARY, saveOf, withRestored, type Guest } from './qemu-runs.js';
import { dirtyTargetArgs, mappedArgs, pssKiB, runRestore, target } from './restore.js';
import { ramGuest, savedGuest, type TableCtx as Ctx } from './snapshots.js';
import { memoryRow, ratioRow, sizeRow, skipRow, type Row } from './table.js';

const SERIES_BYTES = 256 * MiB;
const SERIES_WS = 64 * MiB;
/**
 * Pause iterations after each page the guest writes: about 5000 pages/s
 * under TCG here (measured; about 120000 without), so it rewrites a part of
 * its working set between saves instead of all of it several times.
 */
const SERIES_DELAY = 50_000;
const SAVE_GAP_MS = 1500;
/** SeaBIOS under TCG finds no boot device within a few seconds and then waits 60 s before retrying. */
const IDLE_SETTLE_MS = 5000;
const IDLE_GAP_MS = 1000;
const DIFF_BYTES = 2 * GiB;
const PATCH_BYTES = 16 * MiB;

const MAPPED_RAM = { 'mapped-ram': true };
const allocated = (file: string): number => fs.statSync(file).blocks * 512;
const mibText = (bytes: number): string => `${(bytes / MiB).toFixed(0)} MiB`;

/** Runs the CLI; `okStatus` is the exit status expected (diff: 1 for files that differ). */
function ramsnap(c: Ctx, args: string[], okStatus = 0): string {
  const r = spawnSync(process.execPath, [c.cli, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== okStatus) throw new Error(`ramsnap ${args.join(' ')} exited with ${r.status ?? r.signal}: ${r.stderr.trim()}`);
  return r.stdout;
}

export async function deltaTable(c: Ctx): Promise<Row[]> {
  if (!qemuAvailable(QEMU_BINARY)) return [skipRow('delta snapshots (every row needs QEMU saves)', '-', `no ${QEMU_BINARY}`)];
  const rows: Row[] = [];
  // Other jobs may share the machine (two cores): the load says how much.
  c.notes.push(`delta table: load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')} at its start, on ${os.cpus().length} cores`);
  const series = await dirtySeries(c);
  try {
    const kinds = ['paused → live', 'live → live'];
    series.deltas.forEach((d, i) => {
      const later = series.saves[i + 1];
      rows.push(sizeRow(`size, delta of consecutive saves, dirtying guest (256 MiB, 64 MiB working set), ${kinds[i]}`, allocated(d), allocated(later), 'the later save'));
    });
    rows.push(await idleSize(c));
    rows.push(...(await restoreFromDelta(c, series)));
  } finally {
    for (const f of [...series.saves, ...series.deltas]) fs.rmSync(f, { force: true });
  }
  rows.push(...(await diffTime(c)));
  return rows;
}

interface Series {
  /** Saves in order: the first paused, the others live. */
  saves: string[];
  /** deltas[i] = delta(saves[i], saves[i + 1]). */
  deltas: string[];
  /** QEMU's own restore target for these saves (ordinary RAM). */
  guest: Guest;
}

async function dirtySeries(c: Ctx): Promise<Series> {
  c.log('delta: a series of the dirtying guest, saved paused, then live twice');
  const g = await startDirtyGuest({ dir: c.tmp, accel: kvmAvailable() ? 'kvm' : 'tcg', memory: SERIES_BYTES, params: { ws: SERIES_WS, delay: SERIES_DELAY } });
  const saves: string[] = [];
  /** The guest's page-write counter at the end of each save (the guest paused). */
  const writes: number[] = [];
  try {
    // One whole pass first, so the first save holds the whole working set.
    const start = readDirtyGuestRecord(g.ramPath).writes;
    while (readDirtyGuestRecord(g.ramPath).writes < start + SERIES_WS / PAGE_SIZE) await sleep(50);
    await g.qemu.cmd('stop');
    for (let i = 0; i < 3; i++) {
      const file = path.join(c.tmp, `delta-series-${i}.mig`);
      await saveOf(g.qemu, file, MAPPED_RAM, {}, 300_000);
      saves.push(file);
      writes.push(readDirtyGuestRecord(g.ramPath).writes);
      if (i < 2) {
        await g.qemu.cmd('cont');
        await sleep(SAVE_GAP_MS);
      }
    }
  } catch (e) {
    for (const f of saves) fs.rmSync(f, { force: true });
    throw e;
  } finally {
    await g.stop();
  }
  const deltas = saves.slice(1).map((later, i) => {
    const d = path.join(c.tmp, `delta-series-${i}${i + 1}.delta`);
    ramsnap(c, ['delta', saves[i], later, '-o', d]);
    return d;
  });
  const written = writes.slice(1).map((w, i) => mibText((w - writes[i]) * PAGE_SIZE));
  c.notes.push(
    `delta series: dirtying guest, delay=${SERIES_DELAY}; page writes between consecutive saves ${written.join(', ')} (counting rewrites); ` +
      `saves allocated ${saves.map((f) => mibText(allocated(f))).join(', ')}; deltas ${deltas.map((f) => mibText(allocated(f))).join(', ')}`,
  );
  return { saves, deltas, guest: { dir: c.tmp, args: g.destinationArgs } };
}

/** Two paused saves of a q35 guest that has nothing to do. */
async function idleSize(c: Ctx): Promise<Row> {
  c.log('delta: two saves of an idle guest');
  const files = ['a', 'b'].map((n) => path.join(c.tmp, `delta-idle-${n}.mig`));
  const d = path.join(c.tmp, 'delta-idle.delta');
  try {
    const q = await Qemu.start({ binary: QEMU_BINARY, dir: c.tmp, args: ramGuest(c.tmp, SERIES_BYTES).args });
    try {
      await q.cmd('cont');
      await sleep(IDLE_SETTLE_MS);
      for (const f of files) {
        await q.cmd('stop');
        await saveOf(q, f, MAPPED_RAM);
        await q.cmd('cont');
        await sleep(IDLE_GAP_MS);
      }
    } finally {
      await q.quit();
    }
    const made = JSON.parse(ramsnap(c, ['delta', ...files, '-o', d, '--json'])) as { pagesWritten: number; zeroPages: number };
    c.notes.push(`idle guest: q35 256 MiB, no disk, saved ${IDLE_SETTLE_MS / 1000} s after start and again ${IDLE_GAP_MS / 1000} s later; the delta carries ${made.pagesWritten} page(s), ${made.zeroPages} zero page(s) and the device state`);
    return sizeRow('size, delta of two saves of an idle guest (q35 256 MiB, paused saves 1 s apart)', allocated(d), allocated(files[1]), 'the later save');
  } finally {
    for (const f of [...files, d]) fs.rmSync(f, { force: true });
  }
}

type RestoreKind = 'delta' | 'full' | 'qemu';

/** The live-to-live delta of the series restored over its base, against the later save restored whole (mapped, and by QEMU). */
async function restoreFromDelta(c: Ctx, s: Series): Promise<Row[]> {
  c.log('delta: restore from a delta against full restores of the same save');
  const [base, later, d] = [s.saves[1], s.saves[2], s.deltas[1]];
  const pss: Record<RestoreKind, { loaded: number[]; read: number[] }> = { delta: { loaded: [], read: [] }, full: { loaded: [], read: [] }, qemu: { loaded: [], read: [] } };
  const measure = async (q: Qemu, kind: RestoreKind): Promise<void> => {
    pss[kind].loaded.push(pssKiB(q.pid));
    await q.pmemsave('/dev/null', SERIES_BYTES);
    pss[kind].read.push(pssKiB(q.pid));
  };
  const mapped = (kind: RestoreKind, file: string, extra: string[]) => {
    const args = [...dirtyTargetArgs(), ...mappedArgs(c, file, extra)];
    return {
      name: kind,
      async run(): Promise<number> {
        const { q, sock } = await target(c, args);
        try {
          const wall = await runRestore(c, file, sock, extra);
          await measure(q, kind);
          return wall;
        } finally {
          await q.quit();
        }
      },
    };
  };
  const m = await rounds(
    [
      mapped('delta', d, ['--base', base]),
      mapped('full', later, []),
      { name: 'qemu', run: async () => (await withRestored(s.guest, later, MAPPED_RAM, {}, (q) => measure(q, 'qemu'))).wallMs },
    ],
    c.runs,
    c.log,
  );
  c.notes.push(runsText('restore from a delta', m));
  c.notes.push(`restore from a delta: BASE ${mibText(allocated(base))} and NEW ${mibText(allocated(later))} allocated (live saves 1.5 s apart), the delta ${mibText(allocated(d))}; PSS KiB ${JSON.stringify(pss)}`);
  const at = (kind: RestoreKind, when: 'loaded' | 'read'): number => median(pss[kind][when]);
  const what = 'restore from a delta (restore D --base BASE, whole command), dirtying guest 256 MiB';
  return [
    ratioRow(`${what} vs full mapped restore of NEW`, ms(m, 'delta'), ms(m, 'full'), 'restore NEW (mapped)'),
    ratioRow(`${what} vs QEMU's restore of NEW`, ms(m, 'delta'), ms(m, 'qemu'), "QEMU's restore"),
    memoryRow('host memory (PSS of QEMU) after the load, from a delta vs full mapped restore', at('delta', 'loaded'), at('full', 'loaded'), 'full mapped'),
    memoryRow("the same vs QEMU's restore", at('delta', 'loaded'), at('qemu', 'loaded'), "QEMU's restore"),
    memoryRow('host memory (PSS of QEMU) after reading all guest memory, from a delta vs full mapped restore', at('delta', 'read'), at('full', 'read'), 'full mapped'),
    memoryRow("the same vs QEMU's restore", at('delta', 'read'), at('qemu', 'read'), "QEMU's restore"),
  ];
}

/** `ramsnap diff` of two 2 GiB saves that differ in PATCH_BYTES against `cmp -s` of their extracted images. */
async function diffTime(c: Ctx): Promise<Row[]> {
  c.log('delta: diff of two 2 GiB snapshots against cmp of their extracted images');
  const a = await savedGuest(c, 'delta-diff-a', DIFF_BYTES);
  const b = path.join(c.tmp, 'delta-diff-b.mig');
  const blob = path.join(c.tmp, 'delta-diff.blob');
  const raws = [a, b].map((f) => f.replace(/\.mig$/, '.raw'));
  try {
    timeCommand('cp', ['--sparse=always', a, b]);
    fs.writeFileSync(blob, randomBytes(PATCH_BYTES));
    ramsnap(c, ['patch', b, '--block', 'mem0', '--at', `0x${(DIFF_BYTES - PATCH_BYTES).toString(16)}`, '--data-file', blob]);
    [a, b].forEach((f, i) => ramsnap(c, ['extract', f, '--block', 'mem0', '-o', raws[i]]));
    // Checked first: diff finds exactly the patched pages (random bytes: none equal to what was there).
    const found = JSON.parse(ramsnap(c, ['diff', '--json', a, b], 1)) as { blocks: { totals: Record<string, number> }[] };
    const pages = found.blocks.reduce((sum, x) => sum + x.totals.added + x.totals.removed + x.totals.changed, 0);
    if (pages !== PATCH_BYTES / PAGE_SIZE) throw new Error(`diff of the 2 GiB pair found ${pages} pages, not the ${PATCH_BYTES / PAGE_SIZE} patched`);
    const cli = (args: string[]): string[] => [c.cli, ...args];
    const m = await rounds(
      [
        { name: 'diff', run: async () => timeCommand(process.execPath, cli(['diff', a, b]), {}, 1) },
        { name: 'cmp', run: async () => timeCommand('cmp', ['-s', ...raws], {}, 1) },
      ],
      c.runs,
      c.log,
    );
    c.notes.push(runsText('diff vs cmp', m));
    c.notes.push(`diff inputs: two 2 GiB QEMU saves, ${mibText(allocated(a))} allocated each, the second with ${mibText(PATCH_BYTES)} of random bytes patched at the top of RAM; extracted images ${raws.map((r) => mibText(allocated(r))).join(', ')} allocated (sparse)`);
    const rows = [ratioRow(`diff, two 2 GiB snapshots (${mibText(PATCH_BYTES)} differ, at the top of RAM)`, ms(m, 'diff'), ms(m, 'cmp'), 'cmp -s of the extracted images')];
    rows.push(
      haveGnuTime()
        ? memoryRow('peak memory, diff of the two 2 GiB snapshots', peakRssKiB(process.execPath, cli(['diff', a, b]), c.tmp, {}, 1), peakRssKiB(process.execPath, ['-e', '0'], c.tmp), 'node -e 0')
        : skipRow('peak memory, diff of the two 2 GiB snapshots', '-', 'no /usr/bin/time'),
    );
    return rows;
  } finally {
    for (const f of [a, b, blob, ...raws]) fs.rmSync(f, { force: true });
  }
}
