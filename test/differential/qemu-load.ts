/**
 * QEMU's own verdict on a file: a fresh QEMU of the seed's machine (no
 * -device loader, so memory can only come from the file) started with
 * `-incoming defer`, `migrate-incoming` of the file with exit-on-error
 * false, then either a pmemsave of main RAM or QEMU's error text. A QEMU
 * loads only once, so every input gets its own.
 */
import path from 'node:path';
import { Qemu, sleep } from '../../fixtures/qemu.js';
import type { LoadConfig } from './seeds.js';

export type QemuVerdict =
  | { kind: 'loaded'; pmem: string; ms: number }
  | { kind: 'failed'; error: string; ms: number }
  /** Still loading when the timeout struck: QEMU stuck on the file. */
  | { kind: 'hang'; error: string; ms: number }
  /** QEMU died while loading (a signal or an exit). */
  | { kind: 'crashed'; error: string; ms: number };

/** Lines QEMU writes for every failed load, after the line that says why. */
const GENERIC = [/^load of migration failed/, /^Make sure that your current VM setup/, /^error while loading state/i];

/** QEMU's reason, from stderr (error_report lines), else query-migrate's error-desc. */
export function qemuReason(stderr: string, desc: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.replace(/^qemu-system-[\w]+: /, '').trim())
    .filter((l) => l && !/^warning:/i.test(l));
  const specific = lines.filter((l) => !GENERIC.some((g) => g.test(l)));
  return (specific[0] ?? lines[0] ?? desc ?? '').slice(0, 400);
}

export async function qemuLoad(cfg: LoadConfig, file: string, workDir: string, tag: string, timeoutMs: number): Promise<QemuVerdict> {
  const t0 = Date.now();
  const ms = (): number => Date.now() - t0;
  const q = await Qemu.start({
    binary: cfg.binary,
    dir: workDir,
    args: ['-machine', cfg.machine, '-accel', cfg.accel, '-m', `${cfg.memory >> 20}M`, '-smp', '1', ...cfg.extraArgs],
    incoming: true,
  });
  // A file load runs in QEMU's main loop, so a QEMU stuck on a file stops answering QMP too:
  // the deadline is a timer beside the conversation, not a check between its commands.
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<QemuVerdict>((resolve) => {
    timer = setTimeout(() => resolve({ kind: 'hang', error: `no completion after ${timeoutMs} ms`, ms: ms() }), timeoutMs);
  });
  try {
    return await Promise.race([converse(q, cfg, file, workDir, tag, ms), hang]);
  } finally {
    clearTimeout(timer);
    await q.kill();
  }
}

async function converse(q: Qemu, cfg: LoadConfig, file: string, workDir: string, tag: string, ms: () => number): Promise<QemuVerdict> {
  try {
    if (cfg.mappedRam) await q.setCapabilities({ 'mapped-ram': true });
    const uri = `file:${file}${cfg.offset !== undefined ? `,offset=${cfg.offset}` : ''}`;
    await q.cmd('migrate-incoming', { uri, 'exit-on-error': false });
    for (;;) {
      const st = (await q.cmd('query-migrate')) as { status?: string; 'error-desc'?: string };
      if (st.status === 'completed') break;
      if (st.status === 'failed' || st.status === 'cancelled') {
        // error_report reaches stderr before the status turns; let the pipe catch up.
        await sleep(30);
        return { kind: 'failed', error: qemuReason(q.log, st['error-desc'] ?? String(st.status)), ms: ms() };
      }
      await sleep(10);
    }
    const pmem = path.join(workDir, `${tag}.pmem`);
    await q.pmemsave(pmem, cfg.memory, 0);
    return { kind: 'loaded', pmem, ms: ms() };
  } catch (err) {
    // QEMU died under us (Qemu.cmd says how), or was killed at the deadline.
    return { kind: 'crashed', error: qemuReason(q.log, (err as Error).message), ms: ms() };
  }
}
