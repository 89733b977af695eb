/**
 * What ramsnap reads back from a running QEMU besides plain QMP replies:
 * HMP tables (`info ramblock`, `info network`) and the progress of a
 * migration. Shared by the live save and restore.
 */
import { RamsnapError } from '../format/errors.js';
import type { QmpClient } from './qmp.js';

export interface RamblockRow {
  name: string;
  usedLength: number;
  /** The most the block can hold (Total): above usedLength only for a resizable block. */
  maxLength: number;
}

/**
 * Parses HMP `info ramblock`: a header line, then per block its name
 * (right-aligned, may hold spaces), page size ("4 KiB"), offset, used,
 * total, host address and ro/rw. Rows are in QEMU's RAMBlock list order,
 * which is the order migration writes blocks in.
 */
export function parseRamblocks(text: string): RamblockRow[] {
  const rows: RamblockRow[] = [];
  for (const line of text.split(/\r?\n/)) {
    const m = /^\s*(.+?)\s+\d+(?:\.\d+)?\s*[KMG]?i?B\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+r[ow]\s*$/i.exec(line);
    if (m) rows.push({ name: m[1], usedLength: Number.parseInt(m[2], 16), maxLength: Number.parseInt(m[3], 16) });
  }
  return rows;
}

/**
 * The network backends of type vhost-user in HMP `info network` (lines
 * such as ` \ net0: index=0,type=vhost-user,...` under their NIC).
 */
export function vhostUserNetdevs(text: string): string[] {
  const names: string[] = [];
  for (const line of text.split(/\r?\n/)) {
    const m = /^[\s\\]*([^\s:]+):\s.*\btype=vhost-user\b/.exec(line);
    if (m) names.push(m[1]);
  }
  return names;
}

/** Poll interval of query-migrate: small against a save or load of a second, few round trips against one of minutes. */
const POLL_MS = 5;

export interface WaitOptions {
  /** The error for QEMU's `failed` or `cancelled`, given its reason. */
  failed: (why: string) => RamsnapError;
  /** The error when `signal` aborts the wait (after `onAbort`). */
  aborted: () => RamsnapError;
  signal?: AbortSignal;
  /** Run when `signal` aborts, before `aborted` is thrown (the live save cancels QEMU's migration). */
  onAbort?: () => Promise<void>;
  timeoutMs?: number;
}

/** Waits for QEMU's migration (outgoing or incoming) to complete. */
export async function waitForMigration(qmp: QmpClient, o: WaitOptions): Promise<void> {
  const deadline = o.timeoutMs === undefined ? Infinity : performance.now() + o.timeoutMs;
  for (;;) {
    const st = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (st.status === 'completed') return;
    if (st.status === 'failed' || st.status === 'cancelled') throw o.failed(`${st.status}: ${st['error-desc'] ?? "no reason given (see QEMU's log)"}`);
    if (o.signal?.aborted) {
      await o.onAbort?.();
      throw o.aborted();
    }
    if (performance.now() > deadline) throw o.failed(`not finished within ${o.timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
