/**
 * QEMU's own save, restore and dump, timed as a user waits for them: from
 * the QMP command (`migrate` / `migrate-incoming` / `dump-guest-memory`) to
 * the first query-migrate / query-dump that says `completed`. QEMU's start
 * and quit are not counted.
 */
import { performance } from 'node:perf_hooks';
import { Qemu, kvmAvailable, sleep } from '../../fixtures/qemu.js';

export const QEMU_BINARY = process.env.QEMU_SYSTEM_X86_64 ?? 'qemu-system-x86_64';

/**
 * The default max-bandwidth (128 MiB/s) throttles file migrations too; 1 TiB/s
 * lifts it without going past what QEMU accepts.
 */
const MAX_BANDWIDTH = 2 ** 40;

/** Poll interval: 5 ms keeps the error well under 1% of a one-second save. */
const POLL_MS = 5;

/** QEMU processes still running, so an interrupted bench can quit them. */
const live = new Set<Qemu>();

export async function quitAllQemu(): Promise<void> {
  await Promise.all([...live].map((q) => q.quit()));
  live.clear();
}

export interface Guest {
  /** Everything after QEMU's common arguments: machine, memory, backend, loaders. */
  args: string[];
  /** Directory for QMP sockets. */
  dir: string;
}

/** q35 whose RAM is the memory backend `mem0` described by `backend`. */
export function q35Args(memBytes: number, backend: string): string[] {
  return ['-machine', 'q35', '-accel', kvmAvailable() ? 'kvm' : 'tcg', '-m', `${memBytes / 2 ** 20}M`, '-object', backend, '-machine', 'memory-backend=mem0'];
}

export interface Timed {
  wallMs: number;
  /** QEMU's own `total-time` from query-migrate (save only). */
  qemuTotalMs?: number;
}

async function withQemu<T>(guest: Guest, incoming: boolean, fn: (q: Qemu) => Promise<T>): Promise<T> {
  const q = await Qemu.start({ binary: QEMU_BINARY, args: guest.args, dir: guest.dir, incoming });
  live.add(q);
  try {
    return await fn(q);
  } finally {
    live.delete(q);
    await q.quit();
  }
}

async function waitCompleted(q: Qemu, timeoutMs: number): Promise<Record<string, unknown>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const st = (await q.cmd('query-migrate')) as Record<string, unknown>;
    if (st.status === 'completed') return st;
    if (st.status === 'failed' || st.status === 'cancelled') {
      throw new Error(`migration ${String(st.status)}: ${String(st['error-desc'] ?? '')} ${q.log.trim()}`);
    }
    if (performance.now() > deadline) throw new Error(`migration did not finish in ${timeoutMs} ms: ${JSON.stringify(st)}`);
    await sleep(POLL_MS);
  }
}

async function configure(q: Qemu, caps: Record<string, boolean>, params: Record<string, unknown>): Promise<void> {
  await q.cmd('migrate-set-parameters', { 'max-bandwidth': MAX_BANDWIDTH, ...params });
  if (Object.keys(caps).length) await q.setCapabilities(caps);
}

/** Saves a freshly started (never run) guest to `file`. */
export async function qemuSave(guest: Guest, file: string, caps: Record<string, boolean>, params: Record<string, unknown> = {}, timeoutMs = 120_000): Promise<Timed> {
  return withQemu(guest, false, (q) => saveOf(q, file, caps, params, timeoutMs));
}

/**
 * Saves the guest of a QEMU that is already running (or paused) to `file`:
 * a live save while the guest runs. QEMU leaves the guest paused after it
 * (`cont` resumes it, and it can be saved again then).
 */
export async function saveOf(q: Qemu, file: string, caps: Record<string, boolean>, params: Record<string, unknown> = {}, timeoutMs = 120_000): Promise<Timed> {
  await configure(q, caps, params);
  const t0 = performance.now();
  await q.cmd('migrate', { uri: `file:${file}` });
  const st = await waitCompleted(q, timeoutMs);
  return { wallMs: performance.now() - t0, qemuTotalMs: Number(st['total-time']) };
}

/** Restores `file` into a fresh QEMU started with -incoming defer. */
export async function qemuRestore(guest: Guest, file: string, caps: Record<string, boolean>, params: Record<string, unknown> = {}): Promise<Timed> {
  return withRestored(guest, file, caps, params, async () => undefined);
}

/** Restores `file` into a fresh QEMU (timed as qemuRestore), then hands the paused VM to `fn`; QEMU quits after. */
export async function withRestored<T>(guest: Guest, file: string, caps: Record<string, boolean>, params: Record<string, unknown>, fn: (q: Qemu) => Promise<T>): Promise<Timed & { result: T }> {
  return withQemu(guest, true, async (q) => {
    await configure(q, caps, params);
    const t0 = performance.now();
    await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
    await waitCompleted(q, 120_000);
    const wallMs = performance.now() - t0;
    return { wallMs, result: await fn(q) };
  });
}

/**
 * QEMU's `dump-guest-memory` of a running QEMU's guest to `out`, paging off
 * (an ELF core of guest-physical memory, written densely), detached so the
 * clock stops at the first query-dump that says `completed`: its wall time.
 */
export async function qemuDump(q: Qemu, out: string, timeoutMs = 300_000): Promise<number> {
  const t0 = performance.now();
  await q.cmd('dump-guest-memory', { paging: false, protocol: `file:${out}`, detach: true });
  for (;;) {
    const st = (await q.cmd('query-dump')) as { status: string };
    if (st.status === 'completed') return performance.now() - t0;
    if (st.status === 'failed') throw new Error(`dump-guest-memory failed: ${q.log.trim()}`);
    if (performance.now() - t0 > timeoutMs) throw new Error(`dump-guest-memory did not finish in ${timeoutMs} ms: ${JSON.stringify(st)}`);
    await sleep(POLL_MS);
  }
}
