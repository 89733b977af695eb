/** Text formatting for human output. */
import type { RamsnapError } from '../format/errors.js';

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`;
}

export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * A name from a file, safe to print on a terminal: control characters,
 * DEL and non-ASCII bytes are shown as \xNN, so a hostile block name cannot
 * move the cursor or change colours.
 */
export function printable(name: string): string {
  return name.replace(/[\x00-\x1f\x7f-\uffff\\]/g, (c) => (c === '\\' ? '\\\\' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
}

/** The one line a failure prints: `ramsnap: CODE: message`, escaped. */
export function errorLine(err: RamsnapError): string {
  return `ramsnap: ${err.code}: ${printable(err.message)}`;
}

export function table(rows: string[][], rightAlign: number[] = []): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows
    .map((r) => r.map((c, i) => (rightAlign.includes(i) ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd())
    .join('\n');
}
