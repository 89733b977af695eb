/**
 * Export benchmark (`BENCH_ONLY=export npm run bench`, and part of the full
 * run): `ramsnap export --format elf|raw` against what a user has instead.
 *
 * - Export time, 2 GiB q35 guest (half of it data) saved by QEMU with
 *   mapped-ram (savedGuest): the whole `ramsnap export` command, process
 *   start included, against QEMU's `dump-guest-memory` {paging: false} of
 *   the same guest (the file restored into a QEMU first, not timed; the dump
 *   timed from the QMP command to the query-dump that says `completed`) and
 *   against `cp --sparse=always` of the snapshot. No side fsyncs: QEMU's
 *   dump does not, nor does export (its temporary file is renamed unsynced,
 *   as extract's outputs are), nor cp.
 * - Export time, 64 GiB RAM-only q35 snapshot made by `ramsnap create`
 *   (createdGuest: QEMU under TCG cannot save a 64 GiB guest here) against
 *   cp --sparse=always of it. QEMU's dump of that guest is not run: it
 *   would write 64 GiB densely, more than this disk has to spare.
 * - Output: space allocated by the core against QEMU's dump (2 GiB guest),
 *   and against the core's own apparent size (64 GiB guest).
 * - Memory: peak RSS of the export (GNU time's %M) at both sizes, against
 *   bare `node -e 0`; goal below 200 MiB.
 *
 * Before timing, one export is checked against QEMU's dump: every PT_LOAD
 * range of QEMU's core holds the same bytes in ours (and at the same
 * address of the raw image), and the ranges add up to the same total.
 */
import fs from 'node:fs';
import path from 'node:path';
import { qemuAvailable, type Qemu } from '../../fixtures/qemu.js';
import { GiB, MiB } from './guest.js';
import { haveGnuTime, ms, peakRssKiB, rmOut, rounds, runsText, timeCommand, timedThenDrop } from './measure.js';
import { QEMU_BINARY, qemuDump, withRestored } from './qemu-runs.js';
import { createdGuest, ramGuest, savedGuest, type TableCtx } from './snapshots.js';
import { memoryRow, ratioRow, sizeRow, skipRow, type Row } from './table.js';

const SMALL_BYTES = 2 * GiB;
const BIG_BYTES = 64 * GiB;
const RSS_LIMIT_KIB = 200 * 1024;
const FORMATS = ['elf', 'raw'] as const;
type Format = (typeof FORMATS)[number];

export async function exportTable(c: TableCtx): Promise<Row[]> {
  const rows: Row[] = [];
  const peaks: { label: string; kib: number }[] = [];
  const gnuTime = haveGnuTime();
  const exportArgs = (file: string, format: Format, out: string): string[] => [c.cli, 'export', file, '--format', format, '-o', out];
  const peak = (label: string, args: string[], out: string): void => {
    if (!gnuTime) return;
    rmOut(out);
    try {
      peaks.push({ label, kib: peakRssKiB(process.execPath, args, c.tmp) });
    } finally {
      rmOut(out);
    }
  };
  const out = (format: Format): string => path.join(c.tmp, `export-out.${format}`);
  const cpOut = path.join(c.tmp, 'export-cp.mig');
  const ramsnapRuns = (file: string) =>
    FORMATS.map((format) => ({ name: format, run: timedThenDrop(out(format), () => timeCommand(process.execPath, exportArgs(file, format, out(format)))) }));
  const cpRun = (file: string) => ({ name: 'cp', run: timedThenDrop(cpOut, () => timeCommand('cp', ['--sparse=always', file, cpOut])) });

  if (qemuAvailable(QEMU_BINARY)) {
    c.log('export: the 2 GiB guest, saved by QEMU, then restored into QEMU for its dump-guest-memory');
    const file = await savedGuest(c, 'export-2GiB', SMALL_BYTES);
    try {
      inputNote(c, '2 GiB', file, "QEMU's mapped-ram save of a guest that never ran");
      c.notes.push("export timing: no side fsyncs its output (QEMU's dump does not, export renames its temporary file unsynced, cp does not); warm page cache; outputs removed after each run, outside the timing");
      const qemuCore = path.join(c.tmp, 'export-qemu.core');
      await withRestored(ramGuest(c.tmp, SMALL_BYTES), file, { 'mapped-ram': true }, {}, async (q) => {
        const sizes = await checkAgainstQemu(c, q, file, qemuCore, exportArgs, out);
        rows.push(sizeRow('output allocated, ELF core, 2 GiB guest', sizes.elf, sizes.qemu, "QEMU's dump"));
        rows.push(sizeRow('output allocated, raw image, 2 GiB guest', sizes.raw, sizes.qemu, "QEMU's dump"));
        const m = await rounds([...ramsnapRuns(file), { name: 'qemu', run: timedThenDrop(qemuCore, () => qemuDump(q, qemuCore)) }, cpRun(file)], c.runs, c.log);
        c.notes.push(runsText('2 GiB export', m));
        for (const format of FORMATS) {
          rows.push(ratioRow(`export --format ${format}, 2 GiB guest (whole command) vs QEMU dump-guest-memory`, ms(m, format), ms(m, 'qemu'), "QEMU's dump"));
          rows.push(ratioRow(`export --format ${format}, 2 GiB guest (whole command) vs cp --sparse=always`, ms(m, format), ms(m, 'cp'), 'cp'));
        }
      });
      for (const format of FORMATS) peak(`${format}, 2 GiB guest`, exportArgs(file, format, out(format)), out(format));
    } finally {
      rmOut(file);
    }
  } else {
    rows.push(skipRow('export, 2 GiB guest vs QEMU dump-guest-memory and cp', '-', 'no QEMU to save the guest'));
  }

  c.log('export: the 64 GiB RAM-only guest (ramsnap create)');
  const big = createdGuest(c, 'export-64GiB', BIG_BYTES);
  try {
    inputNote(c, '64 GiB', big, 'ramsnap create, RAM only');
    const sizes = checkBig(c, big, exportArgs, out);
    rows.push(sizeRow('output allocated, ELF core, 64 GiB RAM-only guest', sizes.allocated, sizes.apparent, 'apparent size'));
    const m = await rounds([...ramsnapRuns(big), cpRun(big)], c.runs, c.log);
    c.notes.push(runsText('64 GiB export', m));
    for (const format of FORMATS) rows.push(ratioRow(`export --format ${format}, 64 GiB RAM-only guest (whole command) vs cp --sparse=always`, ms(m, format), ms(m, 'cp'), 'cp'));
    const free = fs.statfsSync(c.tmp);
    const why = `not run: QEMU would write all ${BIG_BYTES / GiB} GiB densely, and ${((free.bavail * free.bsize) / GiB).toFixed(0)} GiB are free here`;
    rows.push(skipRow("export, 64 GiB guest vs QEMU dump-guest-memory", '-', why));
    c.notes.push(`QEMU's dump-guest-memory of the 64 GiB guest: ${why}; its core would be ${BIG_BYTES / GiB} GiB on disk against ${(sizes.allocated / MiB).toFixed(1)} MiB for ramsnap's`);
    for (const format of FORMATS) peak(`${format}, 64 GiB RAM-only guest`, exportArgs(big, format, out(format)), out(format));
  } finally {
    rmOut(big);
  }

  if (gnuTime) {
    const nodeKib = peakRssKiB(process.execPath, ['-e', '0'], c.tmp);
    for (const p of peaks) rows.push(memoryRow(`peak memory, export --format ${p.label}`, p.kib, nodeKib, 'node -e 0', RSS_LIMIT_KIB));
  } else {
    rows.push(skipRow('peak memory, export', `< ${RSS_LIMIT_KIB / 1024} MiB`, '/usr/bin/time not found'));
  }
  return rows;
}

const allocated = (file: string): number => fs.statSync(file).blocks * 512;

function inputNote(c: TableCtx, label: string, file: string, made: string): void {
  const st = fs.statSync(file);
  c.notes.push(`export input ${label}: ${(st.size / GiB).toFixed(2)} GiB, ${(allocated(file) / MiB).toFixed(0)} MiB allocated, made by ${made}`);
}

/**
 * One export of each format and one QEMU dump (the page cache warm for
 * both), checked against each other; the outputs' allocated sizes.
 */
async function checkAgainstQemu(
  c: TableCtx,
  q: Qemu,
  file: string,
  qemuCore: string,
  exportArgs: (file: string, format: Format, out: string) => string[],
  out: (format: Format) => string,
): Promise<Record<Format | 'qemu', number>> {
  try {
    await qemuDump(q, qemuCore);
    for (const format of FORMATS) timeCommand(process.execPath, exportArgs(file, format, out(format)));
    const theirs = loads(qemuCore);
    const ours = loads(out('elf'));
    const total = (ls: Load[]): number => ls.reduce((n, l) => n + l.size, 0);
    if (total(ours) !== total(theirs)) throw new Error(`export check: our PT_LOADs cover ${total(ours)} bytes, QEMU's ${total(theirs)}: timing it would mean nothing`);
    const rawSize = fs.statSync(out('raw')).size;
    const differs =
      firstDifference(qemuCore, theirs, out('elf'), (paddr) => locate(ours, paddr)) ??
      firstDifference(qemuCore, theirs, out('raw'), (paddr) => (paddr < rawSize ? { offset: paddr, avail: rawSize - paddr } : undefined));
    if (differs) throw new Error(`export check: ${differs}: timing it would mean nothing`);
    c.notes.push(`check: export of the 2 GiB guest (elf and raw) holds QEMU's dump-guest-memory bytes at every address of its ${theirs.length} PT_LOADs (${theirs.map((l) => `0x${l.paddr.toString(16)}+0x${l.size.toString(16)}`).join(', ')}); our core has ${ours.length}`);
    return { elf: allocated(out('elf')), raw: allocated(out('raw')), qemu: allocated(qemuCore) };
  } finally {
    for (const f of [qemuCore, out('elf'), out('raw')]) rmOut(f);
  }
}

/** The 64 GiB core once: its PT_LOADs must cover the whole of RAM. Its allocated and apparent sizes. */
function checkBig(c: TableCtx, file: string, exportArgs: (file: string, format: Format, out: string) => string[], out: (format: Format) => string): { allocated: number; apparent: number } {
  const core = out('elf');
  try {
    timeCommand(process.execPath, exportArgs(file, 'elf', core));
    const ls = loads(core);
    const covered = ls.reduce((n, l) => n + l.size, 0);
    if (covered !== BIG_BYTES) throw new Error(`export check: the 64 GiB guest's core covers ${covered} bytes of RAM`);
    c.notes.push(`check: the 64 GiB guest's core has ${ls.length} PT_LOADs covering 64 GiB (${ls.map((l) => `0x${l.paddr.toString(16)}+0x${l.size.toString(16)}`).join(', ')})`);
    return { allocated: allocated(core), apparent: fs.statSync(core).size };
  } finally {
    rmOut(core);
  }
}

/** A PT_LOAD segment: guest-physical address, file offset and length of its data. */
interface Load {
  paddr: number;
  offset: number;
  size: number;
}

const PT_LOAD = 1;
const PN_XNUM = 0xffff;

/** The PT_LOAD segments of a little-endian ELF64 core (x86_64 here), with the extended count of section 0 when e_phnum is PN_XNUM. */
function loads(file: string): Load[] {
  const fd = fs.openSync(file, 'r');
  try {
    const read = (at: number, length: number): Buffer => {
      const b = Buffer.alloc(length);
      if (fs.readSync(fd, b, 0, length, at) !== length) throw new Error(`${file}: short read at ${at}`);
      return b;
    };
    const eh = read(0, 64);
    if (eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2 || eh[5] !== 1) throw new Error(`${file}: not a little-endian ELF64 file`);
    const phoff = Number(eh.readBigUInt64LE(0x20));
    const phentsize = eh.readUInt16LE(0x36);
    let phnum = eh.readUInt16LE(0x38);
    if (phnum === PN_XNUM) phnum = read(Number(eh.readBigUInt64LE(0x28)), 64).readUInt32LE(0x2c);
    const ph = read(phoff, phnum * phentsize);
    const out: Load[] = [];
    for (let i = 0; i < phnum; i++) {
      const at = i * phentsize;
      if (ph.readUInt32LE(at) !== PT_LOAD) continue;
      out.push({ offset: Number(ph.readBigUInt64LE(at + 8)), paddr: Number(ph.readBigUInt64LE(at + 24)), size: Number(ph.readBigUInt64LE(at + 32)) });
    }
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

function locate(ls: Load[], paddr: number): { offset: number; avail: number } | undefined {
  const l = ls.find((s) => paddr >= s.paddr && paddr < s.paddr + s.size);
  return l && { offset: l.offset + paddr - l.paddr, avail: l.paddr + l.size - paddr };
}

/** Where `ours` first differs from QEMU's core over QEMU's PT_LOADs (ours located by `at`), or undefined. */
function firstDifference(qemuCore: string, theirs: Load[], ours: string, at: (paddr: number) => { offset: number; avail: number } | undefined): string | undefined {
  const chunk = MiB;
  const a = Buffer.alloc(chunk);
  const b = Buffer.alloc(chunk);
  const fa = fs.openSync(qemuCore, 'r');
  const fb = fs.openSync(ours, 'r');
  try {
    for (const l of theirs) {
      for (let done = 0; done < l.size; ) {
        const paddr = l.paddr + done;
        const where = at(paddr);
        if (!where) return `${path.basename(ours)} has nothing at 0x${paddr.toString(16)}`;
        const n = Math.min(chunk, l.size - done, where.avail);
        // Reads past the end of a sparse file's data return zeros as holes do; a short read is only the end of the file.
        b.fill(0, 0, n);
        fs.readSync(fa, a, 0, n, l.offset + done);
        fs.readSync(fb, b, 0, n, where.offset);
        if (a.compare(b, 0, n, 0, n) !== 0) return `${path.basename(ours)} differs from QEMU's dump in [0x${paddr.toString(16)}, +0x${n.toString(16)})`;
        done += n;
      }
    }
    return undefined;
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}
