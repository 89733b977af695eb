/**
 * ramsnap benchmark: `npm run bench` (builds, then runs dist/test/bench/run.js).
 *
 * Prints one table of ramsnap's numbers next to references measured in the
 * same run, with the ratio, the target from the issue and a verdict. Only
 * ratios and a few generous absolute limits are judged; a missed target is
 * reported, never a failure (exit status 1 means the bench itself broke).
 *
 * What is measured, and how
 * - The guest: q35, 2 GiB of RAM, about 1 GiB of it non-zero pseudo-random
 *   pages in runs of 1 to 512 pages (guest.ts). Its RAM is a memory backend
 *   file (`-object memory-backend-file,id=mem0,share=on` on /dev/shm when it
 *   has room) that the bench fills before starting QEMU: much faster than
 *   `-device loader` blobs, which QEMU reads and copies at every start.
 * - QEMU saves that guest (never run, paused) with mapped-ram, with
 *   mapped-ram + multifd 4 channels, and as a legacy stream, max-bandwidth
 *   lifted. Saves are timed from `migrate` to the first query-migrate that
 *   says `completed` (what a user waits; QEMU's own total-time, in the
 *   notes, leaves out the close of the file, which on ext4 starts writeback
 *   because QEMU truncated the file at open), as context. QEMU cannot save
 *   a VM twice, so every save is a fresh QEMU. The last files are kept as
 *   the inputs below, and one extract of each is compared with the guest's
 *   memory file byte for byte before anything is timed.
 * - Writers (issue 3), while the guest's memory file still exists (it IS a
 *   raw image of the guest's RAM block, named after the backend id: `mem0`,
 *   read from `ramsnap info --json` of the mapped-ram file). Outputs go to
 *   the temp dir (disk), like every other output. ramsnap's writers fsync
 *   the file before the rename and the directory after, so every reference
 *   here is followed by a timed `sync FILE DIR` (the sync share is in the
 *   notes) to be on disk when its clock stops too; QEMU 10.0.2 does no
 *   fsync/fdatasync of a file migration (checked with strace).
 *   `ramsnap create -o OUT --ram mem0=<memory file> --template <mapped-ram
 *   file>` (process start included) against: QEMU's mapped-ram save of the
 *   same guest with multifd 4 channels, max-bandwidth lifted, + sync
 *   (target: ramsnap faster). QEMU is timed again in the same rounds as
 *   create, not taken from the saves above, so both sides see the same
 *   load and page cache; the same save without the sync is an info row.
 *   And `cp --sparse=always` of the memory file + sync (target <= 1.3x).
 *   `ramsnap convert` of the legacy file `--to mapped-ram` against
 *   `cp --sparse=always` of it + sync (target <= 1.5x); the mapped-ram file
 *   `--to legacy` likewise, as info. Before timing, each writer runs once,
 *   its output must pass `ramsnap verify`, and its mem0 block (`ramsnap
 *   extract --block`) must equal the memory file byte for byte.
 * - Also, the memory file lives on /dev/shm because it is guest RAM: on
 *   disk, its dirty pages would be written back while the bench runs.
 * - Extract (`ramsnap extract FILE -o DIR`, all blocks, process start
 *   included) of the mapped-ram file against: `cp --sparse=always` of the
 *   same file (target <= 1.3x); QEMU restoring it into a fresh QEMU started
 *   with `-incoming defer`, timed from `migrate-incoming` to `completed`
 *   (target: ramsnap faster); as context, the same restore with multifd 4
 *   channels, and into RAM preallocated at start (`prealloc=on`: only the
 *   reading is timed, not the faulting-in of guest RAM); and, when
 *   ANALYZE_MIGRATION names a copy of QEMU's analyze-migration.py, its `-x`
 *   (the script is never part of this repository). The legacy file's
 *   extract against cp likewise.
 * - A 64 GiB guest, mostly zero (3 MiB of data): QEMU saves it with
 *   mapped-ram (memory-backend-ram with reserve=off, as the kernel refuses
 *   to reserve 64 GiB on a smaller machine); the file is sparse (a few MiB
 *   on disk). `ramsnap verify` and `ramsnap info` on it (target < 1 s):
 *   with process start, against the CLI's floor (`ramsnap --version`), and
 *   without, run in-process by timed-cli.ts, against the same command on
 *   the 2 GiB file (how the time grows with the guest). Extract of it
 *   against cp too (no target: cp skips the holes and copies 3 MiB, so the
 *   row shows ramsnap's fixed costs).
 * - `ramsnap create --ram BLOCK=RAW` from a 64 GiB sparse raw image: that
 *   guest's RAM block, extracted (its 3 MiB of data in holes), against
 *   extract of the same memory from the snapshot (issue 13 item 15: target
 *   <= 3x; create also writes a 2 MiB bitmap and fsyncs) and
 *   `cp --sparse=always` of the raw image + sync; and one run of the same
 *   create without the hole map (RAMSNAP_HOLE_MAP=off: every byte read, as
 *   before item 15), as information. Checked first: the output verifies
 *   and its block equals the raw image (compared on their data extents).
 * - Peak memory (GNU time's %M, or the child's own maxRSS without it) of
 *   info, verify, extract and dump --state on the 2 GiB and the 64 GiB file,
 *   and of create and both converts on the 2 GiB guest (measured in the
 *   writer groups, printed with the others), against bare `node -e 0`
 *   (target < 200 MiB).
 * - Timing: every contender of a group runs once to warm the page cache
 *   (and binaries), then the group runs BENCH_RUNS rounds (default 3), one
 *   run of each contender per round, and the median is taken. Outputs are
 *   deleted after each run, outside the timed part.
 *
 * Without KVM, QEMU runs with TCG (the guest never runs, so that is
 * enough). Without QEMU, its rows are skipped with a note, and the 2 GiB
 * and 64 GiB mapped-ram files are synthesized with test/helpers/synth.ts
 * instead (the 2 GiB one with the memory file's pages, in a block named
 * pc.ram), so the extract, verify, info, memory, create-vs-cp (that file
 * as template, --ram pc.ram=...) and convert-to-legacy rows still run; the
 * legacy-input rows and create-vs-QEMU need QEMU.
 *
 * Everything is written under a fresh directory in $TMPDIR (or /tmp),
 * about 7 GiB at the peak (the 64 GiB files are sparse), and removed at
 * the end, also on error or Ctrl-C. The whole bench takes 4-5 minutes on
 * two cores. Environment: BENCH_RUNS, ANALYZE_MIGRATION, QEMU_SYSTEM_X86_64,
 * TMPDIR, BENCH_VERBOSE=1 (every run's time), BENCH_ONLY=precopy (only the
 * precopy table and the live saves of a real guest: test/bench/precopy.ts),
 * BENCH_ONLY=extract (only the 2 GiB mapped-ram extract group),
 * BENCH_ONLY=sparse-create (only the 64 GiB guest and the create from its
 * sparse raw image), BENCH_ONLY=restore (only the restore table:
 * test/bench/restore.ts), BENCH_ONLY=export (only the export table:
 * test/bench/export.ts), BENCH_ONLY=delta (only the delta table:
 * test/bench/delta.ts).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { qemuAvailable, kvmAvailable } from '../../fixtures/qemu.js';
import { GiB, MiB, PAGE_SIZE, PageFiller, sameContent, sameSparseContent, writeMemoryFile, writeSyntheticSnapshot } from './guest.js';
import { haveGnuTime, inProcess, median, ms, peakRssKiB, rmOut, rounds, runsText, timeCommand, timedThenDrop, type Contender, type Medians } from './measure.js';
import { QEMU_BINARY, q35Args, qemuRestore, qemuSave, quitAllQemu, type Guest } from './qemu-runs.js';
import { contextRow, memoryRow, ratioRow, renderTable, skipRow, timeLimitRow, type Row } from './table.js';
import { precopyTable, realSaves } from './precopy.js';
import { restoreTable } from './restore.js';
import { exportTable } from './export.js';
import { deltaTable } from './delta.js';
import type { TableCtx } from './snapshots.js';

const RUNS = Math.max(1, Number(process.env.BENCH_RUNS ?? 3));
const VERBOSE = process.env.BENCH_VERBOSE === '1';
const ONLY = process.env.BENCH_ONLY;
const HERE = path.dirname(fileURLToPath(import.meta.url));
const CLI = path.resolve(HERE, '../../analyze/bin.js');
const TIMED_CLI = path.join(HERE, 'timed-cli.js');

const GUEST_BYTES = 2 * GiB;
const BIG_GUEST_BYTES = 64 * GiB;
/** Non-zero MiB blobs in the 64 GiB guest: low RAM, 1 GiB, and high RAM above 4 GiB. */
const BIG_GUEST_BLOBS = [0x200000, 0x40000000, 0x1000000000];
/** Free space needed in the temp dir: snapshot files, extract and cp outputs, analyze-migration's non-sparse output. */
const NEEDED_BYTES = 8 * GiB;

const EXTRACT_RATIO = 1.3;
const CREATE_RATIO = 1.3;
const CONVERT_RATIO = 1.5;
const SPARSE_CREATE_RATIO = 3;
const INFO_LIMIT_MS = 1000;
const RSS_LIMIT_KIB = 200 * 1024;

const rows: Row[] = [];
/** QEMU's own save times: printed after ramsnap's rows. */
const contextRows: Row[] = [];
const notes: string[] = [];
const log = (s: string): void => {
  process.stderr.write(s + '\n');
};
const progress = (s: string): void => {
  if (VERBOSE || !s.startsWith('  ')) log(s);
};

let tmp = '';
let memFile = '';

function cleanup(): void {
  if (memFile) fs.rmSync(memFile, { force: true });
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
}

process.once('SIGINT', () => {
  log('interrupted: stopping QEMU and removing temp files');
  void quitAllQemu().finally(() => {
    cleanup();
    process.exit(130);
  });
});

const ramsnapArgs = (args: string[]): string[] => [CLI, ...args];
const ramsnap = (args: string[]): number => timeCommand(process.execPath, ramsnapArgs(args));

function fileFacts(label: string, file: string, made: string): void {
  const st = fs.statSync(file);
  notes.push(`${label}: ${file.replace(tmp, '$TMP')} ${(st.size / GiB).toFixed(2)} GiB, ${(st.blocks * 512 / MiB).toFixed(0)} MiB allocated (${made})`);
}

/** The 2 GiB guest's snapshots; its memory file (`memFile`) still exists while these are in use for the writer group. */
interface GuestInputs {
  /** mapped-ram file of the 2 GiB guest. */
  mapped: string;
  legacy?: string;
  /** Made by QEMU (else synthesized). */
  byQemu: boolean;
  /** The QEMU guest whose RAM is `memFile` (QEMU only): the writer group saves it again. */
  guest?: Guest;
}

interface BigInputs {
  big: string;
  bigByQemu: boolean;
}

type Inputs = GuestInputs & BigInputs;

async function main(): Promise<void> {
  const started = performance.now();
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run bench\`, which builds first`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-bench-'));
  const free = freeBytes(tmp);
  if (free < NEEDED_BYTES) throw new Error(`${tmp} has ${(free / GiB).toFixed(1)} GiB free; the bench needs ${NEEDED_BYTES / GiB} GiB (set TMPDIR elsewhere)`);
  log(`ramsnap bench: ${RUNS} timed runs after one warm-up per contender, temp dir ${tmp}`);

  const haveQemu = qemuAvailable(QEMU_BINARY);
  if (!haveQemu) notes.push(`QEMU: ${QEMU_BINARY} (>= 9) not found: QEMU rows skipped, 2 GiB and 64 GiB files synthesized with test/helpers/synth.ts, legacy rows skipped`);
  else notes.push(`QEMU: ${firstLine(spawnSync(QEMU_BINARY, ['--version'], { encoding: 'utf8' }).stdout)}, accel ${kvmAvailable() ? 'kvm' : 'tcg'}`);

  // BENCH_ONLY=extract: only the 2 GiB mapped-ram extract group (a minute or two).
  if (ONLY === 'extract') {
    const guestInputs = haveQemu ? await qemuInputs() : syntheticInputs();
    dropMemFile();
    await extractGroup({ ...guestInputs, big: '', bigByQemu: false }, haveQemu);
    process.stdout.write('\n' + renderTable([...rows, ...contextRows]) + '\n\n' + notes.map((n) => `- ${n}`).join('\n') + '\n');
    return;
  }
  // BENCH_ONLY=sparse-create: the 64 GiB guest and the create from its raw image (a minute or two).
  if (ONLY === 'sparse-create') {
    await sparseCreateGroup(haveQemu ? await qemuBigInput() : syntheticBigInput());
    process.stdout.write('\n' + renderTable([...rows, ...contextRows]) + '\n\n' + notes.map((n) => `- ${n}`).join('\n') + '\n');
    return;
  }
  // BENCH_ONLY=restore / export: only that table. Export's 64 GiB rows run without QEMU too.
  if (ONLY === 'restore' || (ONLY === undefined && haveQemu)) {
    log("restore: mapped restores against QEMU's own");
    if (await tableOfItsOwn('restore', 'Restore (issue 9)', restoreTable)) return;
  }
  if (ONLY === 'export' || ONLY === undefined) {
    log("export: ELF cores and raw images against QEMU's dump-guest-memory and cp");
    if (await tableOfItsOwn('export', 'Export (issue 10)', exportTable)) return;
  }
  if (ONLY === 'delta' || (ONLY === undefined && haveQemu)) {
    log('delta: delta sizes, diff against cmp, restore from a delta');
    if (await tableOfItsOwn('delta', 'Delta snapshots (issue 11)', deltaTable)) return;
  }
  // BENCH_ONLY=precopy: only the precopy table (issue 4), a minute or two.
  if (ONLY !== 'precopy') {
    const guestInputs = haveQemu ? await qemuInputs() : syntheticInputs();
    // The writers' checks (and create) read the guest's memory file; it is dropped right after, before the 64 GiB guest.
    await createGroup(guestInputs);
    await convertGroup(guestInputs);
    dropMemFile();
    const inputs: Inputs = { ...guestInputs, ...(haveQemu ? await qemuBigInput() : syntheticBigInput()) };
    await extractGroup(inputs, haveQemu);
    await legacyGroup(inputs);
    await bigGuestGroup(inputs);
    await sparseCreateGroup(inputs);
    memoryGroup(inputs);
    process.stdout.write('\n' + renderTable([...rows, ...contextRows]) + '\n\n');
  }

  log('precopy policies: simulated guests on a virtual clock, rates measured now');
  const pre = await precopyTable(tmp, progress);
  process.stdout.write(
    `Precopy (issue 4): write ${(pre.rates.writeBytesPerSec / MiB).toFixed(0)} MiB/s and hash scan ${(pre.rates.scanBytesPerSec / MiB).toFixed(0)} MiB/s measured now; ` +
      'hot working set = half the guest (90% of writes to its first 10%)\n\n' +
      pre.text +
      '\n\n',
  );
  if (haveQemu) {
    const real = await realSaves(tmp, progress);
    process.stdout.write(real + '\n\n');
  }
  const judged = rows.filter((r) => r.verdict === 'ok' || r.verdict === 'MISS');
  notes.push(`${judged.filter((r) => r.verdict === 'ok').length} of ${judged.length} targets met; bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
  process.stdout.write(notes.map((n) => `- ${n}`).join('\n') + '\n');
}

/** Writes the 2 GiB guest's memory file (raw image of its RAM): on /dev/shm when it has room, so the backing store costs nothing. */
function makeMemFile(): void {
  const shm = '/dev/shm';
  memFile = fs.existsSync(shm) && freeBytes(shm) > GUEST_BYTES + GiB ? path.join(shm, `ramsnap-bench-${process.pid}.mem`) : path.join(tmp, 'guest.mem');
  log(`writing the 2 GiB guest's memory to ${memFile}`);
  const present = writeMemoryFile(memFile, GUEST_BYTES);
  notes.push(`2 GiB guest: ${(present / GiB).toFixed(2)} GiB in non-zero pages, runs of 1-512 pages; its memory file is on ${memFile.startsWith('/dev/shm') ? '/dev/shm' : 'the temp dir'}`);
}

function dropMemFile(): void {
  if (memFile) fs.rmSync(memFile, { force: true });
  memFile = '';
}

/** The guest's snapshots, written by QEMU; QEMU's save times go in the table on the way. */
async function qemuInputs(): Promise<GuestInputs> {
  makeMemFile();
  const guest: Guest = { dir: tmp, args: q35Args(GUEST_BYTES, `memory-backend-file,id=mem0,mem-path=${memFile},share=on,size=${GUEST_BYTES}`) };

  const mapped = path.join(tmp, 'guest-mapped-ram.mig');
  const multifd = path.join(tmp, 'guest-multifd4.mig');
  const legacy = path.join(tmp, 'guest-legacy.mig');
  const qemuTotal = new Map<string, number[]>();
  const save = (name: string, file: string, caps: Record<string, boolean>, params: Record<string, unknown> = {}): Contender => ({
    name,
    async run() {
      fs.rmSync(file, { force: true });
      const t = await qemuSave(guest, file, caps, params);
      qemuTotal.set(name, [...(qemuTotal.get(name) ?? []), t.qemuTotalMs ?? NaN]);
      return t.wallMs;
    },
  });
  log('QEMU saves of the 2 GiB guest');
  const saves = await rounds(
    [
      save('mapped-ram', mapped, { 'mapped-ram': true }),
      save('mapped-ram multifd 4', multifd, { 'mapped-ram': true, multifd: true }, { 'multifd-channels': 4 }),
      save('legacy', legacy, {}),
    ],
    RUNS,
    progress,
  );
  fs.rmSync(multifd, { force: true });
  runsNote('QEMU saves', saves);
  for (const [name, m] of saves) {
    contextRows.push(contextRow(`QEMU save, ${name}, 2 GiB guest`, m.medianMs, 'QEMU'));
    notes.push(`QEMU save ${name}: median ${(m.medianMs / 1000).toFixed(2)} s to completed; QEMU's own total-time median ${(median(qemuTotal.get(name) ?? []) / 1000).toFixed(2)} s`);
  }
  fileFacts('mapped-ram file', mapped, 'QEMU');
  fileFacts('legacy file', legacy, 'QEMU');

  // Before timing anything, check that the extract being timed is right.
  for (const [label, file] of [['mapped-ram', mapped], ['legacy', legacy]]) {
    const out = path.join(tmp, 'check');
    rmOut(out);
    ramsnap(['extract', file, '-o', out]);
    const same = sameContent(path.join(out, 'mem0.raw'), memFile);
    rmOut(out);
    if (!same) throw new Error(`ramsnap extract of the ${label} file differs from the guest's memory: timing it would mean nothing`);
    notes.push(`check: extract of the ${label} file equals the guest's memory byte for byte`);
  }
  return { mapped, legacy, byQemu: true, guest };
}

/** The 64 GiB mostly-zero guest's mapped-ram file, saved by QEMU (a synthetic one if QEMU cannot). */
async function qemuBigInput(): Promise<BigInputs> {
  const big = path.join(tmp, 'guest64-mapped-ram.mig');
  let bigByQemu = true;
  if (!kvmAvailable()) {
    // Under TCG QEMU's save faults in all of guest RAM (an untouched 4 GiB guest ends at 4 GiB RSS), so a 64 GiB guest is killed for memory.
    notes.push('64 GiB guest: no KVM, and QEMU under TCG faults in all guest RAM while saving; using a synthetic file');
    writeSyntheticSnapshot(big, BIG_GUEST_BYTES, bigGuestPages());
    fileFacts('64 GiB file', big, 'synthetic');
    return { big, bigByQemu: false };
  }
  try {
    log('QEMU save of the 64 GiB guest');
    const filler = new PageFiller(0xb16);
    const loaders: string[] = [];
    BIG_GUEST_BLOBS.forEach((addr, i) => {
      const blob = path.join(tmp, `blob${i}.bin`);
      const buf = Buffer.alloc(MiB);
      filler.fill(buf, addr / PAGE_SIZE, MiB / PAGE_SIZE);
      fs.writeFileSync(blob, buf);
      loaders.push('-device', `loader,file=${blob},addr=0x${addr.toString(16)},force-raw=on`);
    });
    const bigGuest: Guest = { dir: tmp, args: [...q35Args(BIG_GUEST_BYTES, `memory-backend-ram,id=mem0,size=${BIG_GUEST_BYTES},reserve=off`), ...loaders] };
    const t = await qemuSave(bigGuest, big, { 'mapped-ram': true }, {}, 300_000);
    contextRows.push(contextRow('QEMU save, mapped-ram, 64 GiB mostly-zero guest (1 run)', t.wallMs, 'QEMU'));
    fileFacts('64 GiB file', big, `QEMU, ${BIG_GUEST_BLOBS.length} MiB of data`);
  } catch (err) {
    // A machine that cannot run a 64 GiB guest still gets the verify/info rows from a synthetic file.
    bigByQemu = false;
    notes.push(`64 GiB guest: QEMU could not save it (${(err as Error).message.split('\n')[0]}); using a synthetic file`);
    writeSyntheticSnapshot(big, BIG_GUEST_BYTES, bigGuestPages());
    fileFacts('64 GiB file', big, 'synthetic');
  }
  return { big, bigByQemu };
}

function bigGuestPages(): number[] {
  return BIG_GUEST_BLOBS.flatMap((addr) => Array.from({ length: MiB / PAGE_SIZE }, (_, i) => (addr >= 4 * GiB ? addr - 2 * GiB : addr) / PAGE_SIZE + i));
}

/** Without QEMU: the 2 GiB file is synthesized with the same pages as the memory file (block pc.ram). */
function syntheticInputs(): GuestInputs {
  makeMemFile();
  const mapped = path.join(tmp, 'guest-mapped-ram.mig');
  log('synthesizing the 2 GiB mapped-ram file');
  writeSyntheticSnapshot(mapped, GUEST_BYTES);
  fileFacts('mapped-ram file', mapped, 'synthetic');
  for (const what of ['QEMU save, mapped-ram, 2 GiB guest', 'QEMU save, mapped-ram multifd 4, 2 GiB guest', 'QEMU save, legacy, 2 GiB guest', 'QEMU save, mapped-ram, 64 GiB mostly-zero guest']) {
    contextRows.push(skipRow(what, '-', 'no QEMU'));
  }
  return { mapped, byQemu: false };
}

function syntheticBigInput(): BigInputs {
  const big = path.join(tmp, 'guest64-mapped-ram.mig');
  log('synthesizing the 64 GiB mapped-ram file');
  writeSyntheticSnapshot(big, BIG_GUEST_BYTES, bigGuestPages());
  fileFacts('64 GiB file', big, 'synthetic');
  return { big, bigByQemu: false };
}

/**
 * `sync FILE DIR`: fsync of a written file and of its directory. ramsnap's
 * writers fsync the file before renaming it into place and the directory
 * after, and cp and QEMU do neither, so their side of a writer row gets
 * this (timed) to be on disk when its clock stops too.
 */
function syncOut(file: string): number {
  return timeCommand('sync', [file, path.dirname(file)]);
}

/** Time of the `sync` part of each synced reference run, by contender (warm-up included; the median is noted). */
const syncRuns = new Map<string, number[]>();

function recordSync(name: string, msSync: number): void {
  syncRuns.set(name, [...(syncRuns.get(name) ?? []), msSync]);
}

/** `cp --sparse=always SRC DST` then `sync DST DIR`, timed together; DST dropped outside the timing. */
function copySynced(name: string, src: string, dst: string): Contender {
  return {
    name,
    run: timedThenDrop(dst, () => {
      const c = timeCommand('cp', ['--sparse=always', src, dst]);
      const sy = syncOut(dst);
      recordSync(name, sy);
      return c + sy;
    }),
  };
}

/** Notes the median `sync` share of the synced references of a group. */
function syncNote(names: string[]): void {
  const parts = names.filter((n) => syncRuns.has(n)).map((n) => `${n} ${(median(syncRuns.get(n)?.slice(1) ?? []) / 1000).toFixed(2)} s`);
  if (parts.length) notes.push(`of which \`sync FILE DIR\` (median): ${parts.join('; ')}`);
}

/** The RAM block of the 2 GiB guest in a snapshot, by `ramsnap info --json`: the block as large as the guest's RAM. */
function guestRamBlock(file: string): string {
  const r = spawnSync(process.execPath, ramsnapArgs(['info', '--json', file]), { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`ramsnap info ${file} exited with ${r.status ?? r.signal}: ${r.stderr.trim()}`);
  const info = JSON.parse(r.stdout) as { blocks: { name: string; usedLength: number }[] };
  const block = info.blocks.find((b) => b.usedLength === GUEST_BYTES);
  if (!block) throw new Error(`${file} has no ${GUEST_BYTES / GiB} GiB block: ${info.blocks.map((b) => `${b.name} ${b.usedLength}`).join(', ')}`);
  return block.name;
}

/** Runs a writer once, then checks that `block` of what it wrote equals the guest's memory file byte for byte. */
function checkWritten(label: string, args: string[], out: string, block: string, against: string): void {
  const raw = path.join(tmp, 'check.raw');
  rmOut(out);
  rmOut(raw);
  try {
    ramsnap(args);
    ramsnap(['verify', out]);
    ramsnap(['extract', out, '--block', block, '-o', raw]);
    if (!sameContent(raw, against)) throw new Error(`${label}: block ${block} of its output differs from the guest's memory: timing it would mean nothing`);
  } finally {
    rmOut(out);
    rmOut(raw);
  }
  notes.push(`check: ${label}: output verifies, and its ${block} block (ramsnap extract --block) equals the guest's memory byte for byte`);
}

/**
 * `ramsnap create` of the 2 GiB guest from its memory file, with the
 * mapped-ram file as template, against QEMU's own multifd save of the same
 * guest (timed again here, in the same rounds, so both sides see the same
 * load and page cache) and cp of the memory file.
 */
async function createGroup(inputs: GuestInputs): Promise<void> {
  const src = inputs.byQemu ? '' : ' (synthetic template)';
  const block = guestRamBlock(inputs.mapped);
  notes.push(`create: the guest's RAM block in the ${inputs.byQemu ? 'QEMU-made' : 'synthetic'} mapped-ram file is ${block} (ramsnap info), so --ram ${block}=<memory file>`);
  const out = path.join(tmp, 'out-create.mig');
  const args = ['create', '-o', out, '--ram', `${block}=${memFile}`, '--template', inputs.mapped];
  checkWritten('create', args, out, block, memFile);

  const cpOut = path.join(tmp, 'out-cp.raw');
  const qemuOut = path.join(tmp, 'out-qemu-multifd4.mig');
  const qemuUnsynced: number[] = [];
  const contenders: Contender[] = [{ name: 'ramsnap', run: timedThenDrop(out, () => ramsnap(args)) }, copySynced('cp + sync', memFile, cpOut)];
  const guest = inputs.guest;
  if (guest) {
    contenders.push({
      name: 'QEMU save mf4 + sync',
      run: async () => {
        rmOut(qemuOut);
        try {
          const t = await qemuSave(guest, qemuOut, { 'mapped-ram': true, multifd: true }, { 'multifd-channels': 4 });
          const sy = syncOut(qemuOut);
          recordSync('QEMU save mf4 + sync', sy);
          qemuUnsynced.push(t.wallMs);
          return t.wallMs + sy;
        } finally {
          rmOut(qemuOut);
        }
      },
    });
  }
  log('create from the 2 GiB memory file');
  const m = await rounds(contenders, RUNS, progress);
  runsNote('2 GiB create', m);
  syncNote(['cp + sync', 'QEMU save mf4 + sync']);
  const x = ms(m, 'ramsnap');
  if (guest) {
    rows.push(ratioRow('create, 2 GiB vs QEMU save mapped-ram multifd 4, both synced', x, ms(m, 'QEMU save mf4 + sync'), 'QEMU mf4 + sync', 1));
    // As a user waits for QEMU: to `completed`, the data still in the page cache (QEMU 10.0.2 neither fsyncs nor fdatasyncs the file).
    rows.push(ratioRow('create, 2 GiB vs QEMU save mapped-ram multifd 4, to completed', x, median(qemuUnsynced.slice(1)), 'QEMU mf4'));
  } else {
    rows.push(skipRow('create, 2 GiB vs QEMU save mapped-ram multifd 4', '< 1x (faster)', 'no QEMU'));
  }
  rows.push(ratioRow(`create, 2 GiB${src} vs cp --sparse=always of the raw image + sync`, x, ms(m, 'cp + sync'), 'cp + sync', CREATE_RATIO));
  writerPeaks.push({ label: `create, 2 GiB${src}`, kib: peakKiB(['create', '-o', rssOut(), '--ram', `${block}=${memFile}`, '--template', inputs.mapped]) });
}

/** `ramsnap convert` legacy -> mapped-ram (against cp of the input) and mapped-ram -> legacy (info). */
async function convertGroup(inputs: GuestInputs): Promise<void> {
  const src = inputs.byQemu ? '' : ' (synthetic)';
  const block = guestRamBlock(inputs.mapped);
  const toMapped = path.join(tmp, 'out-convert-mapped.mig');
  const toLegacy = path.join(tmp, 'out-convert-legacy.mig');
  const cpOut = path.join(tmp, 'out-cp.mig');
  const contenders: Contender[] = [];
  const legacy = inputs.legacy;
  if (legacy) {
    const args = ['convert', legacy, '-o', toMapped, '--to', 'mapped-ram'];
    checkWritten('convert legacy -> mapped-ram', args, toMapped, block, memFile);
    contenders.push({ name: 'to mapped-ram', run: timedThenDrop(toMapped, () => ramsnap(args)) }, copySynced('cp legacy + sync', legacy, cpOut));
  }
  const args = ['convert', inputs.mapped, '-o', toLegacy, '--to', 'legacy'];
  checkWritten('convert mapped-ram -> legacy', args, toLegacy, block, memFile);
  contenders.push({ name: 'to legacy', run: timedThenDrop(toLegacy, () => ramsnap(args)) }, copySynced('cp mapped-ram + sync', inputs.mapped, cpOut));
  log('convert of the 2 GiB files');
  const m = await rounds(contenders, RUNS, progress);
  runsNote('2 GiB convert', m);
  syncNote(['cp legacy + sync', 'cp mapped-ram + sync']);
  if (legacy) {
    rows.push(ratioRow('convert, 2 GiB legacy -> mapped-ram vs cp --sparse=always of the input + sync', ms(m, 'to mapped-ram'), ms(m, 'cp legacy + sync'), 'cp + sync', CONVERT_RATIO));
    writerPeaks.push({ label: 'convert legacy -> mapped-ram, 2 GiB', kib: peakKiB(['convert', legacy, '-o', rssOut(), '--to', 'mapped-ram']) });
  } else {
    rows.push(skipRow('convert, 2 GiB legacy -> mapped-ram vs cp --sparse=always of the input + sync', `<= ${CONVERT_RATIO}x`, 'no QEMU'));
  }
  rows.push(ratioRow(`convert, 2 GiB mapped-ram${src} -> legacy vs cp --sparse=always of the input + sync`, ms(m, 'to legacy'), ms(m, 'cp mapped-ram + sync'), 'cp + sync'));
  writerPeaks.push({ label: `convert mapped-ram -> legacy, 2 GiB${src}`, kib: peakKiB(['convert', inputs.mapped, '-o', rssOut(), '--to', 'legacy']) });
}

/** Extract of the 2 GiB mapped-ram file against cp, QEMU's restore and analyze-migration.py. */
async function extractGroup(inputs: Inputs, haveQemu: boolean): Promise<void> {
  const file = inputs.mapped;
  const out = path.join(tmp, 'out-extract');
  const cpOut = path.join(tmp, 'out-cp.mig');
  const contenders: Contender[] = [
    { name: 'ramsnap', run: timedThenDrop(out, () => ramsnap(['extract', file, '-o', out])) },
    { name: 'cp', run: timedThenDrop(cpOut, () => timeCommand('cp', ['--sparse=always', file, cpOut])) },
    // The same command with Node's start-up and the CLI's module load left out (timed-cli.ts), and
    // the start-up of an empty Node program: what any Node CLI pays before its first line runs.
    { name: 'ramsnap in-process', run: timedThenDrop(out, () => inProcess(TIMED_CLI, ['extract', file, '-o', out]).runMs) },
    { name: 'node -e 0', run: async () => timeCommand(process.execPath, ['-e', '0']) },
  ];
  // Restore into anonymous RAM under the same backend id: RAMBlock names must match the file's.
  const dest: Guest = { dir: tmp, args: q35Args(GUEST_BYTES, `memory-backend-ram,id=mem0,size=${GUEST_BYTES}`) };
  const preallocated: Guest = { dir: tmp, args: q35Args(GUEST_BYTES, `memory-backend-ram,id=mem0,size=${GUEST_BYTES},prealloc=on`) };
  if (haveQemu) {
    contenders.push({ name: 'restore', run: async () => (await qemuRestore(dest, file, { 'mapped-ram': true })).wallMs });
    contenders.push({ name: 'restore multifd 4', run: async () => (await qemuRestore(dest, file, { 'mapped-ram': true, multifd: true }, { 'multifd-channels': 4 })).wallMs });
    // With RAM preallocated at start (not timed), the restore is the reading alone: most of a plain restore is faulting in guest RAM.
    contenders.push({ name: 'restore prealloc', run: async () => (await qemuRestore(preallocated, file, { 'mapped-ram': true })).wallMs });
  }
  const analyzer = analyzeMigration();
  if ('script' in analyzer) {
    const amOut = path.join(tmp, 'out-analyze');
    contenders.push({
      name: 'analyze-migration',
      run: timedThenDrop(amOut, () => {
        fs.mkdirSync(amOut);
        // -x writes into the working directory: every block as a full-size (not sparse) file, plus desc.json and state.json.
        return timeCommand(analyzer.python, [analyzer.script, '-x', '-f', file], { cwd: amOut });
      }),
    });
  }
  log('extract of the 2 GiB mapped-ram file');
  const m = await rounds(contenders, RUNS, progress);
  runsNote('2 GiB mapped-ram extract', m);
  const x = ms(m, 'ramsnap');
  const src = inputs.byQemu ? '' : ' (synthetic file)';
  rows.push(ratioRow(`extract, 2 GiB mapped-ram${src} vs cp --sparse=always`, x, ms(m, 'cp'), 'cp', EXTRACT_RATIO));
  rows.push(ratioRow(`extract, 2 GiB mapped-ram${src}, in-process (no Node start-up or module load) vs cp --sparse=always`, ms(m, 'ramsnap in-process'), ms(m, 'cp'), 'cp'));
  contextRows.push(contextRow('start-up of an empty Node program (`node -e 0`), in every ramsnap command', ms(m, 'node -e 0'), 'node'));
  if (process.env.NODE_EXTRA_CA_CERTS) notes.push(`NODE_EXTRA_CA_CERTS is set here: Node reads ${process.env.NODE_EXTRA_CA_CERTS} at every start-up (about 45 ms on this machine), in every ramsnap run`);
  if (haveQemu) {
    rows.push(ratioRow('extract, 2 GiB mapped-ram vs QEMU restore', x, ms(m, 'restore'), 'QEMU restore', 1));
    rows.push(ratioRow('extract, 2 GiB mapped-ram vs QEMU restore, multifd 4', x, ms(m, 'restore multifd 4'), 'QEMU restore mf4'));
    rows.push(ratioRow('extract, 2 GiB mapped-ram vs QEMU restore, RAM preallocated', x, ms(m, 'restore prealloc'), 'QEMU restore prealloc'));
  } else {
    rows.push(skipRow('extract, 2 GiB mapped-ram vs QEMU restore', '< 1x (faster)', 'no QEMU'));
  }
  if ('script' in analyzer) {
    rows.push(ratioRow(`extract, 2 GiB mapped-ram${src} vs analyze-migration.py -x`, x, ms(m, 'analyze-migration'), 'analyze-migration'));
  } else {
    rows.push(skipRow('extract, 2 GiB mapped-ram vs analyze-migration.py -x', '-', analyzer.skip));
    notes.push("analyze-migration.py: set ANALYZE_MIGRATION to a copy of QEMU's scripts/analyze-migration.py (and have python3, or PYTHON) to compare with it");
  }
}

/**
 * A table printed on its own (restore.ts, export.ts); its judged rows also
 * count in the summary. True when BENCH_ONLY named it: the notes are then
 * printed and the bench is done.
 */
async function tableOfItsOwn(name: string, title: string, table: (c: TableCtx) => Promise<Row[]>): Promise<boolean> {
  const own = await table({ tmp, cli: CLI, runs: RUNS, log: progress, notes });
  process.stdout.write(`\n${title}\n\n${renderTable(own)}\n\n`);
  rows.push(...own.filter((r) => r.verdict !== 'info'));
  if (ONLY !== name) return false;
  process.stdout.write(notes.map((n) => `- ${n}`).join('\n') + '\n');
  return true;
}

/** QEMU's analyze-migration.py when ANALYZE_MIGRATION names a copy, or why it is not used. */
function analyzeMigration(): { python: string; script: string } | { skip: string } {
  const script = process.env.ANALYZE_MIGRATION;
  if (!script) return { skip: 'ANALYZE_MIGRATION unset' };
  if (!fs.existsSync(script)) return { skip: `no ${script}` };
  const python = process.env.PYTHON ?? 'python3';
  if (spawnSync(python, ['--version']).status !== 0) return { skip: `no ${python}` };
  return { python, script };
}

async function legacyGroup(inputs: Inputs): Promise<void> {
  const file = inputs.legacy;
  if (!file) {
    rows.push(skipRow('extract, 2 GiB legacy vs cp --sparse=always', `<= ${EXTRACT_RATIO}x`, 'no QEMU'));
    return;
  }
  const out = path.join(tmp, 'out-extract');
  const cpOut = path.join(tmp, 'out-cp.mig');
  log('extract of the 2 GiB legacy file');
  const m = await rounds(
    [
      { name: 'ramsnap', run: timedThenDrop(out, () => ramsnap(['extract', file, '-o', out])) },
      { name: 'cp', run: timedThenDrop(cpOut, () => timeCommand('cp', ['--sparse=always', file, cpOut])) },
    ],
    RUNS,
    progress,
  );
  runsNote('2 GiB legacy extract', m);
  rows.push(ratioRow('extract, 2 GiB legacy vs cp --sparse=always', ms(m, 'ramsnap'), ms(m, 'cp'), 'cp', EXTRACT_RATIO));
}

/** verify and info on the 64 GiB file, with and without process start; its extract against cp. */
async function bigGuestGroup(inputs: Inputs): Promise<void> {
  const big = inputs.big;
  const small = inputs.mapped;
  const tag = inputs.bigByQemu ? '' : ' (synthetic)';
  log('verify and info on the 64 GiB file, process start included');
  const proc = await rounds(
    [
      { name: 'verify', run: async () => ramsnap(['verify', big]) },
      { name: 'info', run: async () => ramsnap(['info', big]) },
      { name: 'floor', run: async () => ramsnap(['--version']) },
    ],
    RUNS,
    progress,
  );
  const floor = ms(proc, 'floor');
  for (const cmd of ['verify', 'info']) {
    rows.push(timeLimitRow(`${cmd}, 64 GiB${tag}, process start included`, ms(proc, cmd), floor, 'ramsnap --version', INFO_LIMIT_MS));
  }

  log('verify and info in-process, 64 GiB against 2 GiB');
  const importMs: number[] = [];
  const inProc = (args: string[]): Contender['run'] => async () => {
    const r = inProcess(TIMED_CLI, args);
    importMs.push(r.importMs);
    return r.runMs;
  };
  const ip = await rounds(
    [
      { name: 'verify 64', run: inProc(['verify', big]) },
      { name: 'info 64', run: inProc(['info', big]) },
      { name: 'verify 2', run: inProc(['verify', small]) },
      { name: 'info 2', run: inProc(['info', small]) },
    ],
    RUNS,
    progress,
  );
  for (const cmd of ['verify', 'info']) {
    rows.push(timeLimitRow(`${cmd}, 64 GiB${tag}, in-process (no start)`, ms(ip, `${cmd} 64`), ms(ip, `${cmd} 2`), `same on 2 GiB`, INFO_LIMIT_MS));
  }
  notes.push(`in-process rows time run(argv) only; importing the CLI took a median ${median(importMs).toFixed(0)} ms more, and ramsnap --version (node start + import) ${floor.toFixed(0)} ms`);

  log('extract of the 64 GiB file');
  const out = path.join(tmp, 'out-extract');
  const cpOut = path.join(tmp, 'out-cp.mig');
  const m = await rounds(
    [
      { name: 'ramsnap', run: timedThenDrop(out, () => ramsnap(['extract', big, '-o', out])) },
      { name: 'cp', run: timedThenDrop(cpOut, () => timeCommand('cp', ['--sparse=always', big, cpOut])) },
    ],
    RUNS,
    progress,
  );
  // No target: cp skips the holes with SEEK_DATA and has 3 MiB to copy; this row shows ramsnap's fixed costs (start, bitmap scan).
  rows.push(ratioRow(`extract, 64 GiB mostly-zero${tag} vs cp --sparse=always`, ms(m, 'ramsnap'), ms(m, 'cp'), 'cp'));
}

/**
 * `ramsnap create` from a 64 GiB sparse raw image (the 64 GiB guest's RAM
 * block, extracted) against extract of the same memory and cp of the image.
 */
async function sparseCreateGroup(inputs: BigInputs): Promise<void> {
  const info = JSON.parse(spawnSync(process.execPath, ramsnapArgs(['info', '--json', inputs.big]), { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout) as {
    machine: string;
    blocks: { name: string; usedLength: number }[];
  };
  const block = info.blocks.find((b) => b.usedLength === BIG_GUEST_BYTES)?.name;
  if (!block) throw new Error(`${inputs.big} has no ${BIG_GUEST_BYTES / GiB} GiB block`);
  const raw = path.join(tmp, 'guest64.raw');
  ramsnap(['extract', inputs.big, '--block', block, '-o', raw]);
  fileFacts('64 GiB raw image', raw, `ramsnap extract --block ${block} of the 64 GiB file`);
  const out = path.join(tmp, 'out-create64.mig');
  const create = ['create', '-o', out, '--machine', info.machine, '--arch', 'x86_64', '--ram', `${block}=${raw}`];
  const check = path.join(tmp, 'check64.raw');
  try {
    ramsnap(create);
    ramsnap(['verify', out]);
    ramsnap(['extract', out, '--block', block, '-o', check]);
    if (!(await sameSparseContent(check, raw))) throw new Error(`create from the 64 GiB raw image: block ${block} of its output differs from the image`);
  } finally {
    rmOut(out);
    rmOut(check);
  }
  notes.push(`check: create from the 64 GiB raw image: output verifies, and its ${block} block equals the image (compared on their data extents)`);
  log('create from the 64 GiB sparse raw image');
  const xOut = path.join(tmp, 'out-extract64.raw');
  const m = await rounds(
    [
      { name: 'create', run: timedThenDrop(out, () => ramsnap(create)) },
      { name: 'extract', run: timedThenDrop(xOut, () => ramsnap(['extract', inputs.big, '--block', block, '-o', xOut])) },
      copySynced('cp', raw, path.join(tmp, 'out-cp64.raw')),
    ],
    RUNS,
    progress,
  );
  const tag = inputs.bigByQemu ? '' : ' (synthetic)';
  rows.push(ratioRow(`create from a 64 GiB sparse raw image${tag} vs extract of the same memory`, ms(m, 'create'), ms(m, 'extract'), 'extract', SPARSE_CREATE_RATIO));
  rows.push(ratioRow(`create from a 64 GiB sparse raw image${tag} vs cp --sparse=always + sync`, ms(m, 'create'), ms(m, 'cp'), 'cp + sync'));
  syncNote(['cp']);
  log('the same create without the hole map (1 run)');
  rmOut(out);
  const noMap = timeCommand(process.execPath, ramsnapArgs(create), { env: { ...process.env, RAMSNAP_HOLE_MAP: 'off' } });
  rmOut(out);
  rows.push(ratioRow(`the same create without the hole map (RAMSNAP_HOLE_MAP=off, 1 run) vs extract`, noMap, ms(m, 'extract'), 'extract'));
  rmOut(raw);
}

const gnuTime = haveGnuTime();
/** Output path of the commands measured for peak memory (removed before and after). */
const rssOut = (): string => path.join(tmp, 'out-rss');

/** Peak RSS (KiB) of one ramsnap run, whose output (if any) is rssOut(). */
function peakKiB(args: string[]): number {
  const out = rssOut();
  rmOut(out);
  try {
    return gnuTime ? peakRssKiB(process.execPath, ramsnapArgs(args), tmp) : inProcess(TIMED_CLI, args).maxRssKiB;
  } finally {
    rmOut(out);
  }
}

/** Peaks of the writers, measured while their inputs exist (create needs the memory file), printed with the memory rows. */
const writerPeaks: { label: string; kib: number }[] = [];

/** Peak RSS of each command, one run each (it hardly varies), against bare Node. */
function memoryGroup(inputs: Inputs): void {
  log('peak memory');
  if (!gnuTime) notes.push('peak memory: /usr/bin/time not found, measured as the child\'s own process.resourceUsage().maxRSS (timed-cli.ts)');
  const out = rssOut();
  const peak = peakKiB;
  const nodeKib = gnuTime ? peakRssKiB(process.execPath, ['-e', '0'], tmp) : bareNodeMaxRssKiB();
  const files: [string, string][] = [
    [`2 GiB mapped-ram${inputs.byQemu ? '' : ' (synthetic)'}`, inputs.mapped],
    [`64 GiB${inputs.bigByQemu ? '' : ' (synthetic)'}`, inputs.big],
  ];
  if (inputs.legacy) files.push(['2 GiB legacy', inputs.legacy]);
  for (const [label, file] of files) {
    const cmds: [string, string[]][] = [
      ['info', ['info', file]],
      ['verify', ['verify', file]],
      ['extract', ['extract', file, '-o', out]],
      ['dump --state', ['dump', '--state', file]],
    ];
    for (const [name, args] of cmds) {
      if (file === inputs.legacy && name !== 'extract') continue; // legacy: only the command whose index grows with the file
      rows.push(memoryRow(`peak memory, ${name}, ${label}`, peak(args), nodeKib, 'node -e 0', RSS_LIMIT_KIB));
    }
  }
  for (const w of writerPeaks) rows.push(memoryRow(`peak memory, ${w.label}`, w.kib, nodeKib, 'node -e 0', RSS_LIMIT_KIB));
}

function bareNodeMaxRssKiB(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.resourceUsage().maxRSS))'], { encoding: 'utf8' });
  return Number(r.stdout);
}

function runsNote(label: string, m: Medians): void {
  notes.push(runsText(label, m));
}

function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return s.bavail * s.bsize;
}

function firstLine(s: string): string {
  return s.split('\n')[0].trim();
}

try {
  await main();
} catch (err) {
  log(`bench failed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  await quitAllQemu();
  cleanup();
}
