/** The benchmark's result table: one row per metric, printed as an aligned Markdown table. */

export type Verdict = 'ok' | 'MISS' | 'skip' | 'info';

export interface Row {
  metric: string;
  ramsnap: string;
  reference: string;
  ratio: string;
  target: string;
  verdict: Verdict;
}

export const seconds = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
export const mib = (kib: number): string => `${(kib / 1024).toFixed(0)} MiB`;
const times = (r: number): string => `${r.toFixed(2)}x`;

/** ramsnap against a reference, judged on the ratio (ramsnap / reference <= maxRatio). */
export function ratioRow(metric: string, ramsnapMs: number, refMs: number, refName: string, maxRatio?: number): Row {
  const r = ramsnapMs / refMs;
  return {
    metric,
    ramsnap: seconds(ramsnapMs),
    reference: `${seconds(refMs)} ${refName}`,
    ratio: times(r),
    target: maxRatio === undefined ? '-' : maxRatio === 1 ? '< 1x (faster)' : `<= ${maxRatio}x`,
    verdict: maxRatio === undefined ? 'info' : (maxRatio === 1 ? r < 1 : r <= maxRatio) ? 'ok' : 'MISS',
  };
}

/** A wall time judged against an absolute limit; the reference puts it in proportion. */
export function timeLimitRow(metric: string, ramsnapMs: number, refMs: number, refName: string, limitMs: number): Row {
  return {
    metric,
    ramsnap: seconds(ramsnapMs),
    reference: `${seconds(refMs)} ${refName}`,
    ratio: times(ramsnapMs / refMs),
    target: `< ${seconds(limitMs)}`,
    verdict: ramsnapMs < limitMs ? 'ok' : 'MISS',
  };
}

/** Memory (KiB) next to a reference's, judged against an absolute limit when there is one (else information). */
export function memoryRow(metric: string, kib: number, refKib: number, refName: string, limitKib?: number): Row {
  return {
    metric,
    ramsnap: mib(kib),
    reference: `${mib(refKib)} ${refName}`,
    ratio: times(kib / refKib),
    target: limitKib === undefined ? '-' : `< ${mib(limitKib)}`,
    verdict: limitKib === undefined ? 'info' : kib < limitKib ? 'ok' : 'MISS',
  };
}

const sizeText = (bytes: number): string => (bytes >= 10 * 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(0)} MiB` : `${(bytes / 1024).toFixed(0)} KiB`);

/** A size in bytes (an output's allocated space) against a reference size; information, no goal. */
export function sizeRow(metric: string, bytes: number, refBytes: number, refName: string): Row {
  const r = bytes / refBytes;
  return { metric, ramsnap: sizeText(bytes), reference: `${sizeText(refBytes)} ${refName}`, ratio: r < 0.01 ? `${r.toExponential(1)}x` : times(r), target: '-', verdict: 'info' };
}

/** A number about QEMU kept for later comparisons (no ramsnap side yet). */
export function contextRow(metric: string, refMs: number, refName: string): Row {
  return { metric, ramsnap: '-', reference: `${seconds(refMs)} ${refName}`, ratio: '-', target: '-', verdict: 'info' };
}

/** A row that could not be measured here; `why` goes where the reference would be. */
export function skipRow(metric: string, target: string, why: string): Row {
  return { metric, ramsnap: '-', reference: why, ratio: '-', target, verdict: 'skip' };
}

export function renderTable(rows: Row[]): string {
  const head: Record<keyof Row, string> = { metric: 'metric', ramsnap: 'ramsnap', reference: 'reference', ratio: 'ratio', target: 'target', verdict: 'verdict' };
  const keys = Object.keys(head) as (keyof Row)[];
  const width = keys.map((k) => Math.max(...[head, ...rows].map((r) => r[k].length)));
  const line = (r: Record<keyof Row, string>): string => `| ${keys.map((k, i) => r[k].padEnd(width[i])).join(' | ')} |`;
  const rule = `|${width.map((w) => '-'.repeat(w + 2)).join('|')}|`;
  return [line(head), rule, ...rows.map(line)].join('\n');
}
