/**
 * Restore benchmark (`BENCH_ONLY=restore npm run bench`, and part of the
 * full run): ramsnap's mapped restore against QEMU's own restore of the
 * same file, each into a fresh QEMU started with -incoming defer.
 *
 * - Restore time: the whole `ramsnap restore FILE --qmp SOCK` command
 *   (Node start, open, target checks, the small stream, QEMU's load) from
 *   its start to its exit right after QEMU's `completed`, against QEMU's
 *   restore timed from `migrate-incoming` to `completed` (QEMU's start not
 *   counted on either side). Guests: 128 MiB and 2 GiB (half of each
 *   data) saved by QEMU with mapped-ram, never run; and 128 MiB and
 *   64 GiB RAM-only snapshots made by `ramsnap create` (3 MiB of data), as
 *   QEMU under TCG cannot save a 64 GiB guest here (createdGuest). Goals:
 *   at most 0.25x QEMU on the 2 GiB file; the 64 GiB restore within 2x of
 *   the 128 MiB one (both RAM-only). Warm page cache, and for the 2 GiB
 *   guest also cold (the page cache dropped before each run of either).
 * - Clone memory: N VMs (1, 2, 4) restored from the 2 GiB file, each then
 *   reading all of its memory (pmemsave to /dev/null), against N VMs that
 *   QEMU restored; the sum of their PSS (smaps_rollup), which charges a
 *   page-cache page mapped by N VMs 1/N to each.
 * - First pass after restore: the dirtying guest (1 GiB, 256 MiB working
 *   set) is saved, then restored mapped, mapped with --prefetch, and by
 *   QEMU, each with the page cache dropped first, and mapped once more with
 *   the cache warm; the guest is continued the moment QEMU says
 *   `completed`, and the time until it has written every page of its
 *   working set once more is measured from its own progress record. The
 *   load and the first pass are also shown together: a mapped restore
 *   moves the reading from the load to the guest's first touches.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { RECORD_ADDR, RECORD_SIZE, decodeDirtyGuestRecord, startDirtyGuest } from '../../fixtures/dirty-guest.js';
import { Qemu, kvmAvailable, sleep } from '../../fixtures/qemu.js';
import { GiB, MiB, PAGE_SIZE } from './guest.js';
import { median, rounds } from './measure.js';
import { QEMU_BINARY, qemuRestore, saveOf } from './qemu-runs.js';
import { accel, createdGuest, ramGuest, savedGuest, type TableCtx as Ctx } from './snapshots.js';
import { memoryRow, ratioRow, type Row } from './table.js';

const RESTORE_GOAL = 0.25;
const FLAT_GOAL = 2;

/** The QEMU arguments ramsnap prints for `file` (machine, memory, backend); `extra`: more restore options (`--base BASE`). */
export function mappedArgs(c: Ctx, file: string, extra: string[] = []): string[] {
  const r = spawnSync(process.execPath, [c.cli, 'restore', file, ...extra, '--print-qemu-args', '--json'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ramsnap restore --print-qemu-args: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { args: string[] }).args;
}

/** A target QEMU with a second QMP socket for the CLI. */
export async function target(c: Ctx, args: string[]): Promise<{ q: Qemu; sock: string }> {
  const sock = path.join(c.tmp, `restore-cli-${Math.random().toString(36).slice(2)}.sock`);
  const q = await Qemu.start({ binary: QEMU_BINARY, dir: c.tmp, args: ['-qmp', `unix:${sock},server=on,wait=off`, ...args], incoming: true });
  return { q, sock };
}

/** Runs `ramsnap restore` and resolves with its wall time when it exits (0 expected). */
export function runRestore(c: Ctx, file: string, sock: string, extra: string[] = []): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [c.cli, 'restore', file, '--qmp', sock, ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve(performance.now() - t0) : reject(new Error(`ramsnap restore exited ${code}: ${err.trim()}`))));
  });
}

export async function restoreTable(c: Ctx): Promise<Row[]> {
  const rows: Row[] = [];
  const guests: { label: string; bytes: number; made: 'qemu' | 'create' }[] = [
    { label: '128 MiB', bytes: 128 * MiB, made: 'qemu' },
    { label: '2 GiB', bytes: 2 * GiB, made: 'qemu' },
    { label: '128 MiB RAM-only', bytes: 128 * MiB, made: 'create' },
    { label: '64 GiB RAM-only', bytes: 64 * GiB, made: 'create' },
  ];
  const mappedMs = new Map<string, number>();
  let twoGiB = '';
  for (const { label, bytes, made } of guests) {
    c.log(`restore: the ${label} guest (${made === 'qemu' ? "QEMU's save" : 'ramsnap create'})`);
    const name = label.replaceAll(' ', '-');
    const file = made === 'qemu' ? await savedGuest(c, `restore-${name}`, bytes) : createdGuest(c, `restore-${name}`, bytes);
    if (bytes === 2 * GiB) twoGiB = file;
    const args = [...accel(), ...mappedArgs(c, file)];
    // QEMU's restore target: the same machine with ordinary RAM named as the block (mem0 or pc.ram).
    const block = made === 'qemu' ? 'mem0' : 'pc.ram';
    const plain = ramGuest(c.tmp, bytes, block);
    const m = await rounds(
      [
        {
          name: 'ramsnap',
          async run() {
            const { q, sock } = await target(c, args);
            try {
              return await runRestore(c, file, sock);
            } finally {
              await q.quit();
            }
          },
        },
        { name: 'qemu', run: async () => (await qemuRestore(plain, file, { 'mapped-ram': true })).wallMs },
        // Cold: the page cache dropped first, as for a snapshot restored after a reboot or not read lately.
        ...(bytes === 2 * GiB
          ? [
              {
                name: 'ramsnap cold',
                async run() {
                  const { q, sock } = await target(c, args);
                  try {
                    dropCaches();
                    return await runRestore(c, file, sock);
                  } finally {
                    await q.quit();
                  }
                },
              },
              {
                name: 'qemu cold',
                run: async () => {
                  dropCaches();
                  return (await qemuRestore(plain, file, { 'mapped-ram': true })).wallMs;
                },
              },
            ]
          : []),
      ],
      c.runs,
      c.log,
    );
    const r = m.get('ramsnap')!.medianMs;
    mappedMs.set(label, r);
    rows.push(ratioRow(`restore, ${label} guest (whole command, mapped), warm cache`, r, m.get('qemu')!.medianMs, "QEMU's restore", bytes === 2 * GiB ? RESTORE_GOAL : undefined));
    if (m.has('ramsnap cold')) {
      rows.push(ratioRow(`restore, ${label} guest (whole command, mapped), cold cache`, m.get('ramsnap cold')!.medianMs, m.get('qemu cold')!.medianMs, "QEMU's restore, cold", RESTORE_GOAL));
    }
    c.notes.push(`restore input ${label}: ${(fs.statSync(file).size / GiB).toFixed(2)} GiB, ${(fs.statSync(file).blocks * 512 / MiB).toFixed(0)} MiB allocated, made by ${made === 'qemu' ? "QEMU's mapped-ram save of a guest that never ran" : 'ramsnap create (RAM only: 3 MiB of data)'}`);
    if (bytes !== 2 * GiB) fs.rmSync(file, { force: true });
  }
  rows.push(ratioRow('restore, 64 GiB against 128 MiB RAM-only guest (flat in size)', mappedMs.get('64 GiB RAM-only')!, mappedMs.get('128 MiB RAM-only')!, 'ramsnap, 128 MiB', FLAT_GOAL));

  rows.push(...(await cloneMemory(c, twoGiB)));
  fs.rmSync(twoGiB, { force: true });
  rows.push(...(await firstPass(c)));
  return rows;
}

/** Proportional set size of a process (KiB): a page-cache page mapped by N processes counts 1/N to each. */
export function pssKiB(pid: number): number {
  const m = /^Pss:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** Sum of PSS of N mapped clones against N QEMU-restored VMs, each having read all its memory. */
async function cloneMemory(c: Ctx, file: string): Promise<Row[]> {
  const rows: Row[] = [];
  const bytes = 2 * GiB;
  const args = [...accel(), ...mappedArgs(c, file)];
  for (const n of [1, 2, 4]) {
    const sums: Record<'mapped' | 'qemu', number> = { mapped: 0, qemu: 0 };
    for (const kind of ['mapped', 'qemu'] as const) {
      const vms: Qemu[] = [];
      try {
        for (let i = 0; i < n; i++) {
          const { q, sock } = await target(c, kind === 'mapped' ? args : ramGuest(c.tmp, bytes).args);
          vms.push(q);
          if (kind === 'mapped') await runRestore(c, file, sock);
          else {
            await q.setCapabilities({ 'mapped-ram': true });
            await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
            await q.waitMigration(300_000);
          }
          await q.pmemsave('/dev/null', bytes);
        }
        sums[kind] = vms.reduce((a, q) => a + pssKiB(q.pid), 0);
      } finally {
        for (const q of vms) await q.quit();
      }
    }
    rows.push(memoryRow(`host memory (sum of PSS), ${n} clone${n > 1 ? 's' : ''} of the 2 GiB guest, each read whole`, sums.mapped, sums.qemu, 'QEMU-restored'));
  }
  return rows;
}

/** What a restore target of the dirtying guest needs besides ramsnap's printed arguments (as startDirtyGuest's machineArgs). */
export const dirtyTargetArgs = (): string[] => [...accel(), '-cpu', 'qemu64,kvmclock=off', '-smp', '1'];

/** Time until the restored dirtying guest has written its whole working set once more. */
async function firstPass(c: Ctx): Promise<Row[]> {
  const mem = GiB;
  const ws = 256 * MiB;
  c.log('restore: the dirtying guest, saved after it has written its working set');
  const g = await startDirtyGuest({ dir: c.tmp, accel: kvmAvailable() ? 'kvm' : 'tcg', memory: mem, params: { ws } });
  const file = path.join(c.tmp, 'restore-dirty.mig');
  try {
    // One full pass first, so every working-set page is present in the file.
    const start = decodeDirtyGuestRecord(readRecord(g.ramPath)).writes;
    while (decodeDirtyGuestRecord(readRecord(g.ramPath)).writes < start + ws / PAGE_SIZE) await sleep(50);
    await g.qemu.cmd('stop');
    await saveOf(g.qemu, file, { 'mapped-ram': true }, {}, 300_000);
  } finally {
    await g.stop();
  }
  const args = [...dirtyTargetArgs(), ...mappedArgs(c, file)];
  const qemuArgs = [...dirtyTargetArgs(), '-machine', 'pc', '-m', `${mem / MiB}M`, '-object', `memory-backend-ram,id=pc.ram,size=${mem}`, '-machine', 'memory-backend=pc.ram'];
  type Kind = 'mapped' | 'prefetch' | 'warm' | 'qemu';
  const kinds: Kind[] = ['mapped', 'prefetch', 'warm', 'qemu'];
  const pass: Record<Kind, number[]> = { mapped: [], prefetch: [], warm: [], qemu: [] };
  const load: Record<Kind, number[]> = { mapped: [], prefetch: [], warm: [], qemu: [] };
  for (let round = 0; round < c.runs; round++) {
    for (const kind of kinds) {
      // Cold: the file's pages come from the disk, as after a reboot or for a snapshot not touched lately.
      if (kind !== 'warm') dropCaches();
      const { q, sock } = await target(c, kind === 'qemu' ? qemuArgs : args);
      try {
        const t0 = performance.now();
        const cli = kind === 'qemu' ? undefined : runRestore(c, file, sock, kind === 'prefetch' ? ['--prefetch'] : []);
        if (kind === 'qemu') {
          await q.setCapabilities({ 'mapped-ram': true });
          await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
        }
        await q.waitMigration(300_000);
        load[kind].push(performance.now() - t0);
        const before = recordOf(await readGuestRecord(q, c.tmp));
        await q.cmd('cont');
        const t1 = performance.now();
        for (;;) {
          const now = recordOf(await readGuestRecord(q, c.tmp));
          if (now - before >= ws / PAGE_SIZE) break;
          await sleep(10);
        }
        pass[kind].push(performance.now() - t1);
        await cli;
      } finally {
        await q.quit();
      }
    }
  }
  fs.rmSync(file, { force: true });
  c.notes.push(`first pass: page cache dropped before each restore but the warm row's (${fs.existsSync('/proc/sys/vm/drop_caches') ? 'echo 1 > /proc/sys/vm/drop_caches' : 'not possible here'}); pass ms ${JSON.stringify(pass)}; load ms ${JSON.stringify(load)}`);
  const m = (k: Kind): number => median(pass[k]);
  const both = (k: Kind): number => median(pass[k].map((x, i) => x + load[k][i]));
  const ref = "after QEMU's restore, cold";
  return [
    ratioRow('dirtying guest (256 MiB working set), first full pass after a mapped restore, cold cache', m('mapped'), m('qemu'), ref),
    ratioRow('the same with --prefetch, cold cache', m('prefetch'), m('qemu'), ref),
    ratioRow('the same, mapped, warm cache', m('warm'), m('qemu'), ref),
    ratioRow('restore and first pass together, mapped, cold cache', both('mapped'), both('qemu'), "QEMU's restore and first pass, cold"),
  ];
}

function readRecord(ramPath: string): Uint8Array {
  const fd = fs.openSync(ramPath, 'r');
  try {
    const b = Buffer.alloc(RECORD_SIZE);
    fs.readSync(fd, b, 0, RECORD_SIZE, RECORD_ADDR);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

async function readGuestRecord(q: Qemu, dir: string): Promise<Uint8Array> {
  const f = path.join(dir, `record-${q.pid}.bin`);
  await q.pmemsave(f, RECORD_SIZE, RECORD_ADDR);
  return fs.readFileSync(f);
}

function recordOf(bytes: Uint8Array): number {
  return decodeDirtyGuestRecord(bytes).writes;
}

function dropCaches(): void {
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '1');
  } catch {
    /* not root, or not Linux: the note says so */
  }
}

