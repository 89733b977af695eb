/**
 * Disagreements with QEMU's loader that are on purpose, each documented in
 * SPEC.md §12 with the reason. A class is explained when its row, ramsnap's
 * code and QEMU's message all match an entry.
 */
import type { Row } from './classify.js';
import type { QemuVerdict } from './qemu-load.js';

export interface Explained {
  row: Extract<Row, 'stricter' | 'false-accept'>;
  /** ramsnap's verify code (OK for a false accept). */
  ramsnap: RegExp;
  /** QEMU's verdict: `loads`, or its error text. */
  qemu: RegExp;
  /** The SPEC.md section that says why. */
  spec: string;
  why: string;
}

export const EXPLAINED: Explained[] = [];

export function explanationOf(row: Row, ramsnapCode: string, q: QemuVerdict): Explained | undefined {
  if (row !== 'stricter' && row !== 'false-accept') return undefined;
  const qemuText = q.kind === 'loaded' ? 'loads' : q.error;
  return EXPLAINED.find((e) => e.row === row && e.ramsnap.test(ramsnapCode) && e.qemu.test(qemuText));
}
