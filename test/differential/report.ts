/** The agreement matrix and its classes as text. */
import { ROW_TITLES, type Row } from './classify.js';
import { failuresOf, type DiffReport } from './engine.js';

const ORDER: Row[] = ['agree-ok', 'memory-differs', 'false-accept', 'stricter', 'both-reject', 'ramsnap-inconsistent'];

export function formatReport(r: DiffReport, o: { seed: number; findingsDir?: string }): string {
  const lines: string[] = [];
  const failing = new Set(failuresOf(r));
  lines.push('', `agreement matrix (${r.inputs} inputs, seed ${o.seed}, ${r.dropped} implausible recipes dropped)`);
  const explainedIn = (row: Row): number => r.classes.filter((c) => c.row === row && c.explained).reduce((a, c) => a + c.count, 0);
  const specsIn = (row: Row): string => [...new Set(r.classes.filter((c) => c.row === row && c.explained).map((c) => (c.explained as { spec: string }).spec.replace('§12.1 ', '')))].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1))).join(' ');
  for (const row of ORDER) {
    if (row === 'false-accept' || row === 'stricter') {
      const ex = explainedIn(row);
      lines.push(`  ${ROW_TITLES[row].padEnd(46)} ${String(r.rows[row] - ex).padStart(6)}   (unexplained)`);
      const what = row === 'false-accept' ? '    ramsnap OK, QEMU refuses: explained' : '    ramsnap rejects, QEMU loads: explained';
      lines.push(`  ${what.padEnd(46)} ${String(ex).padStart(6)}   (SPEC §12.1 ${specsIn(row) || '-'})`);
    } else lines.push(`  ${ROW_TITLES[row].padEnd(46)} ${String(r.rows[row]).padStart(6)}`);
  }
  lines.push('', 'classes (ramsnap code × QEMU message):');
  for (const row of ORDER) {
    for (const c of r.classes.filter((x) => x.row === row && row !== 'agree-ok')) {
      const tag = failing.has(c) ? 'UNEXPLAINED' : c.explained ? `explained, SPEC ${c.explained.spec}` : '';
      lines.push(`  [${row}] ${String(c.count).padStart(5)}  ${c.cls}${tag ? `  (${tag})` : ''}`);
      if (row !== 'both-reject' || failing.has(c)) lines.push(`        e.g. ${c.example.fixture}: ${c.example.ops.map((x) => x.why).join('; ') || 'unmutated'}`);
    }
  }
  const stricterExplained = explainedIn('stricter');
  const acceptExplained = explainedIn('false-accept');
  lines.push(
    '',
    `QEMU hangs: ${r.qemuHangs}, QEMU crashes: ${r.qemuCrashes} (QEMU's own, on files both refuse unless listed above); real binary on ${r.binaryRuns} inputs, ${r.binaryMismatches.length} disagreements`,
    ...r.binaryMismatches.slice(0, 5).map((m) => `  ${m}`),
    ...(o.findingsDir ? [`first example of each class: ${o.findingsDir}`] : []),
    `differential: ${r.inputs} inputs in ${(r.ms / 1000).toFixed(1)} s: ${r.rows['agree-ok']} agree OK, ${r.rows['both-reject']} both reject, ` +
      `${r.rows.stricter} stricter (${stricterExplained} explained), ${r.rows['false-accept'] - acceptExplained} false accepts ` +
      `(+${acceptExplained} explained: QEMU refuses the VM, not the file), ${r.rows['memory-differs']} memory differences, ` +
      `${failing.size} unexplained classes`,
  );
  return lines.join('\n');
}
