/**
 * Where a file holds data: its data extents, found with
 * lseek(SEEK_DATA/SEEK_HOLE), so that a sparse input (a 64 GiB raw image
 * with a few MiB in it) is read where it has data and not byte by byte.
 *
 * Node 20 has no lseek, WASI has no SEEK_DATA, and a native module would
 * need a compile step or a prebuilt binary ramsnap does not ship. Perl can:
 * perl-base is Essential on Debian, its sysseek passes any whence to
 * lseek, and it starts in about 20 ms here. So one small perl process per
 * file answers "data extents in [from, to)" for the file descriptor it is
 * handed (the same open file: no second open of a path that may have
 * changed), with one round trip per up to EXTENTS_PER_QUERY extents.
 *
 * Without perl, on a platform whose SEEK_DATA value is unknown, or on a
 * file whose lseek refuses SEEK_DATA, the map has kind 'none' and says
 * why: the whole range is one extent and the caller reads everything
 * (telling zero pages apart as it reads, with a reused buffer).
 * RAMSNAP_HOLE_MAP=off forces that path (tests, benchmarks).
 *
 * The helper is /usr/bin/perl, not the first perl on PATH (ramsnap may run
 * as root with a PATH it did not choose, and the helper is handed the open
 * file); PATH is searched only when /usr/bin/perl is missing. The map says
 * which perl it used (`helper`, and in `reason` when it failed).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { RamsnapIoError } from '../format/errors.js';

export interface DataExtent {
  /** First byte with data. */
  start: number;
  /** First byte after it (a hole or the end of the range). */
  end: number;
}

export type HoleMapKind = 'seek-data' | 'none';

/** Extents per answer: bounds the helper's reply and the caller's memory for a file of a million fragments. */
export const EXTENTS_PER_QUERY = 4096;

/** lseek's whence values where ramsnap knows them (Linux and the BSDs: 3 and 4; macOS swaps them). */
function whence(): { data: number; hole: number } | undefined {
  if (process.platform === 'linux' || process.platform === 'freebsd') return { data: 3, hole: 4 };
  if (process.platform === 'darwin') return { data: 4, hole: 3 };
  return undefined;
}

/** The perl the helper runs with. */
export const SYSTEM_PERL = '/usr/bin/perl';
let systemPerl = SYSTEM_PERL;

/** Tests only: where the system perl is looked for (to play a system without it). Returns the previous path. */
export function setSystemPerlPath(p: string): string {
  const was = systemPerl;
  systemPerl = p;
  return was;
}

/** The perl to run: the system's if it exists, else `perl` from PATH; `label` says which, for messages. */
export function perlCommand(): { command: string; label: string } {
  return fs.existsSync(systemPerl) ? { command: systemPerl, label: systemPerl } : { command: 'perl', label: `perl from PATH (${systemPerl} is missing)` };
}

/**
 * The helper: reads "FROM TO MAX" lines, answers with "START END" lines
 * (data extents clipped to [FROM, TO), at most MAX) and ". NEXT" (where to
 * ask next; TO when done), or "! ERRNO MESSAGE". ENXIO from SEEK_DATA
 * means no data after the offset.
 */
const HELPER = String.raw`
use strict; use warnings; use Errno qw(ENXIO);
my ($DATA, $HOLE) = @ARGV; $| = 1;
open(my $f, '<&=', 3) or do { print "! ", $! + 0, " $!\n"; exit 1 };
print "ready\n";
LINE: while (my $q = <STDIN>) {
  my ($at, $to, $max) = split ' ', $q;
  my @out;
  while ($at < $to && @out < $max) {
    my $d = sysseek($f, $at, $DATA);
    if (!defined $d) { if ($! == ENXIO) { $at = $to; last } print "! ", $! + 0, " $!\n"; next LINE }
    $d += 0;
    if ($d >= $to) { $at = $to; last }
    my $h = sysseek($f, $d, $HOLE);
    if (!defined $h) { print "! ", $! + 0, " $!\n"; next LINE }
    $h += 0; $h = $to if $h > $to;
    push @out, "$d $h"; $at = $h;
  }
  print map("$_\n", @out), ". $at\n";
}
`;

export class HoleMap {
  private lines: string[] = [];
  private partial = '';
  private waiter: (() => void) | undefined;
  private exited = false;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly kind: HoleMapKind,
    /** Why there is no map (kind 'none'). */
    readonly reason: string | undefined,
    private readonly file: string,
    private readonly child?: ChildProcess,
    /** Which perl answers (a map of kind 'seek-data'). */
    readonly helper?: string,
  ) {
    child?.stdout?.setEncoding('latin1').on('data', (s: string) => {
      const parts = (this.partial + s).split('\n');
      this.partial = parts.pop() as string;
      this.lines.push(...parts);
      this.wake();
    });
    // 'close', not 'exit': the last lines may still be in the pipe when the process has exited.
    child?.on('close', () => {
      this.exited = true;
      this.wake();
    });
    // A write to a helper that died is reported by the next read of its answer, not as an unhandled error.
    child?.stdin?.on('error', () => undefined);
  }

  /** A map of the open file `fd` (`file` names it in errors), or kind 'none' with the reason. */
  static async open(fd: number, file: string): Promise<HoleMap> {
    const w = whence();
    if (process.env.RAMSNAP_HOLE_MAP === 'off') return new HoleMap('none', 'RAMSNAP_HOLE_MAP=off', file);
    if (!w) return new HoleMap('none', `SEEK_DATA is not known on ${process.platform}`, file);
    const perl = perlCommand();
    let child: ChildProcess;
    try {
      child = spawn(perl.command, ['-e', HELPER, String(w.data), String(w.hole)], { stdio: ['pipe', 'pipe', 'ignore', fd] });
    } catch (err) {
      return new HoleMap('none', `${perl.label} could not be started (${(err as Error).message})`, file);
    }
    const started = await new Promise<string | undefined>((resolve) => {
      child.once('error', (err) => resolve(`${perl.label} could not be started (${(err as NodeJS.ErrnoException).code ?? err.message})`));
      child.once('spawn', () => resolve(undefined));
    });
    if (started) return new HoleMap('none', started, file);
    const map = new HoleMap('seek-data', undefined, file, child, perl.label);
    const hello = await map.nextLine();
    // One query proves the file takes SEEK_DATA (a file system without it, or a pipe, answers with an error).
    const probe = hello === 'ready' ? await map.ask(0, 1, 1).catch((err: Error) => err) : new Error(hello ?? 'the helper exited');
    if (probe instanceof Error) {
      map.close();
      return new HoleMap('none', `lseek(SEEK_DATA) failed (helper ${perl.label}): ${probe.message}`, file);
    }
    return map;
  }

  /**
   * Data extents in [from, to), in order, at most EXTENTS_PER_QUERY of them,
   * and where the next call should start (`to` when there are no more).
   * With kind 'none' the whole range is one extent.
   */
  extents(from: number, to: number): Promise<{ extents: DataExtent[]; next: number }> {
    if (this.kind === 'none' || from >= to) return Promise.resolve({ extents: from < to ? [{ start: from, end: to }] : [], next: to });
    const p = this.queue.then(() => this.ask(from, to, EXTENTS_PER_QUERY));
    this.queue = p.catch(() => undefined);
    return p;
  }

  /** Every data extent in [from, to), a query at a time. */
  async *dataExtents(from: number, to: number): AsyncGenerator<DataExtent> {
    for (let at = from; at < to; ) {
      const r = await this.extents(at, to);
      yield* r.extents;
      at = r.next;
    }
  }

  /** Ends the helper; call it when done (it also ends by itself if ramsnap dies: its stdin closes). */
  close(): void {
    if (!this.child || this.exited) return;
    this.child.stdin?.end();
    this.child.kill();
  }

  private async ask(from: number, to: number, max: number): Promise<{ extents: DataExtent[]; next: number }> {
    this.child?.stdin?.write(`${from} ${to} ${max}\n`);
    const extents: DataExtent[] = [];
    for (;;) {
      const line = await this.nextLine();
      if (line === undefined) throw new RamsnapIoError('IO_HOLE_MAP', `cannot map the holes of ${this.file}: the lseek helper (perl) exited`, this.file);
      if (line.startsWith('! ')) {
        const [, errno, ...msg] = line.split(' ');
        throw new RamsnapIoError('IO_HOLE_MAP', `cannot map the holes of ${this.file}: lseek: ${msg.join(' ')} (errno ${errno})`, this.file);
      }
      if (line.startsWith('. ')) return { extents, next: Number(line.slice(2)) };
      const [start, end] = line.split(' ').map(Number);
      extents.push({ start, end });
    }
  }

  private async nextLine(): Promise<string | undefined> {
    while (this.lines.length === 0) {
      if (this.exited) return undefined;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
    return this.lines.shift();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }
}
