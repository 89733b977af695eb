/**
 * Where ramsnap and QEMU's loader stand on one input, which row of the
 * agreement matrix that puts it in, and which disagreement class: ramsnap's
 * error code × the pattern of QEMU's error message.
 */
import fs from 'node:fs';
import type { QemuVerdict } from './qemu-load.js';
import type { RamsnapVerdict } from './ramsnap-side.js';

export type Row =
  /** (a) ramsnap OK, QEMU loads, memory equal. */
  | 'agree-ok'
  /** ramsnap OK, QEMU loads, memory differs: a bug. */
  | 'memory-differs'
  /** (b) ramsnap OK, QEMU refuses (or hangs, or dies): a false accept. */
  | 'false-accept'
  /** (c) ramsnap refuses, QEMU loads: stricter than QEMU. */
  | 'stricter'
  /** (d) both refuse. */
  | 'both-reject'
  /** verify said OK but extract failed: ramsnap disagrees with itself. */
  | 'ramsnap-inconsistent';

export const ROW_TITLES: Record<Row, string> = {
  'agree-ok': '(a) ramsnap OK, QEMU loads, equal memory',
  'memory-differs': '    ramsnap OK, QEMU loads, MEMORY DIFFERS',
  'false-accept': '(b) ramsnap OK, QEMU fails: FALSE ACCEPT',
  stricter: '(c) ramsnap rejects, QEMU loads: stricter',
  'both-reject': '(d) both reject',
  'ramsnap-inconsistent': '    verify OK but extract fails',
};

/**
 * QEMU's message with the parts that vary per input (numbers, quoted names,
 * addresses) replaced, so that one kind of refusal is one pattern.
 */
export function qemuPattern(v: QemuVerdict): string {
  if (v.kind === 'loaded') return 'loads';
  if (v.kind === 'hang') return 'HANG';
  const msg = v.error
    .replace(/'[^']*'/g, "'…'")
    .replace(/"[^"]*"/g, '"…"')
    .replace(/0x[0-9a-f]+/gi, '0xN')
    .replace(/\b\d+\b/g, 'N');
  return `${v.kind === 'crashed' ? 'CRASH ' : ''}${msg}`.slice(0, 160);
}

/**
 * Guest-physical 0xc0000-0xfffff: what pmemsave shows there is chosen by the
 * chipset's PAM registers (option ROMs and the BIOS at reset, pc.ram once
 * the firmware has shadowed itself), restored from the mch/i440FX device
 * section, not from pc.ram. A file whose device state is cut off (an EOF
 * inserted early) restores pc.ram right and leaves the ROMs showing there;
 * an unbooted guest shows the BIOS at 0xe0000-0xfffff (qemu-facts).
 */
export const PAM_WINDOW: [number, number] = [0xc0000, 0x100000];

/** First offset where the extracted RAM and QEMU's pmemsave differ outside the PAM window, or -1. */
export function firstDifference(extracted: string | undefined, pmem: string): number {
  const b0 = fs.readFileSync(pmem);
  // No RAM section: the file leaves a fresh QEMU's RAM as it is, zero.
  const a = extracted === undefined ? Buffer.alloc(b0.length) : fs.readFileSync(extracted);
  const b = b0;
  if (a.length !== b.length) return Math.min(a.length, b.length);
  const parts: [number, number][] = [
    [0, PAM_WINDOW[0]],
    [PAM_WINDOW[1], a.length],
  ];
  for (const [from, to] of parts) {
    if (a.subarray(from, to).equals(b.subarray(from, to))) continue;
    for (let i = from; i < to; i++) if (a[i] !== b[i]) return i;
  }
  return -1;
}

export interface Outcome {
  row: Row;
  /** `ramsnap code × QEMU pattern`; one class per kind of disagreement. */
  cls: string;
  detail: string;
}

export function classify(r: RamsnapVerdict, q: QemuVerdict): Outcome {
  const rs = r.verify === 'OK' && r.extractError ? `OK, extract ${r.extractError}` : r.verify;
  const cls = `${rs} × ${qemuPattern(q)}`;
  if (r.verify === 'OK' && r.extractError) return { row: 'ramsnap-inconsistent', cls, detail: `extract failed with ${r.extractError}` };
  if (r.verify === 'OK') {
    if (q.kind !== 'loaded') return { row: 'false-accept', cls, detail: q.error };
    const at = firstDifference(r.noRam ? undefined : (r.extracted as string), q.pmem);
    if (at >= 0) return { row: 'memory-differs', cls: `${rs} × loads, memory differs`, detail: `first difference at 0x${at.toString(16)}` };
    return { row: 'agree-ok', cls, detail: '' };
  }
  if (q.kind === 'loaded') return { row: 'stricter', cls, detail: `ramsnap ${r.verify}` };
  return { row: 'both-reject', cls, detail: q.error };
}
