/**
 * One writer per target.
 *
 * Node has no flock(), so the lock is a file beside the target,
 * `.NAME.ramsnap-lock`, made by hard-linking a temporary file that already
 * holds its content (atomic: of two processes, one links it and the other
 * gets EEXIST; and a lock is never seen empty). It holds one line of JSON: the
 * owner's pid, its start time (field 22 of /proc/PID/stat, so that a pid
 * the kernel has since given to another process is not taken for the
 * owner), the host name, what it is doing and a random token.
 *
 * A lock whose owner is gone (same host, and the pid is not running or was
 * started at another time) is stale: the next writer takes it over and says
 * so on stderr. It is renamed aside first and checked to be the very lock
 * that was judged stale, so two processes breaking the same stale lock at
 * once cannot both win. A lock from another host is never broken.
 *
 * Every ramsnap writer of a file takes its lock: the SnapshotWriter and
 * LegacyWriter (create, convert, sparsify, and anything else built on
 * TempFile) and patch. Readers never take it (they may not be able to
 * write in the directory); see journal.ts ReadGuard for how they avoid
 * torn reads.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RamsnapIoError, StateCode, ioError } from '../format/errors.js';
import { onInterrupt } from './cleanup.js';
import { processesMapping } from './mapped.js';

export const LOCK_SUFFIX = '.ramsnap-lock';
/** Temporary files beside a target: `.NAME.ramsnap-tmp-PID-HEX` (the writer's, QEMU's part of a save, a lock being made). */
export const TEMP_MARK = '.ramsnap-tmp-';
/** A patch's redo journal (journal.ts); named here so that every writer can see that one is pending. */
export const JOURNAL_SUFFIX = '.ramsnap-journal';

/**
 * `.NAME<suffix>` in the directory of `target`, with the directory's real
 * path: every process names a target's lock, journal and temporary files
 * the same way however it reached the directory.
 */
export function sidecarPath(target: string, suffix: string): string {
  const abs = path.resolve(target);
  let dir = path.dirname(abs);
  try {
    dir = fs.realpathSync(dir);
  } catch {
    // A missing directory: creating the sidecar fails with a clear ENOENT.
  }
  return path.join(dir, `.${path.basename(abs)}${suffix}`);
}

/**
 * A new temporary file's path beside `target`: `.NAME.ramsnap-tmp-PID-HEX`,
 * named so that a later writer of the target can tell whose it is and
 * remove it once that process is gone (removeStaleTemps).
 */
export function tempPathFor(target: string): string {
  return sidecarPath(target, `${TEMP_MARK}${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
}

/** Where notices go (stale locks taken over, temporary files removed): one line each. */
let noticeHandler: (line: string) => void = (line) => void process.stderr.write(`ramsnap: ${line}\n`);

/** Replaces where notices go (tests, or a library user who wants them elsewhere); returns the previous handler. */
export function setNoticeHandler(fn: (line: string) => void): (line: string) => void {
  const prev = noticeHandler;
  noticeHandler = fn;
  return prev;
}

export function notice(line: string): void {
  noticeHandler(line);
}

/** The start time of a process in clock ticks since boot (Linux), or undefined when it cannot be known. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so count fields after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19]; // field 22 of the whole line
  } catch {
    return undefined;
  }
}

/** Linux process state letter (`R`, `S`, `Z`, ...) from /proc, or undefined. */
function processState(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/** Whether process `pid` (started at `start`, when known) is still running on this host. */
export function processAlive(pid: number, start?: string): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // A killed process stays a zombie until its parent reaps it: it writes nothing and holds nothing.
  const state = processState(pid);
  if (state === 'Z' || state === 'X') return false;
  if (start === undefined) return true;
  const now = processStartTime(pid);
  return now === undefined || now === start;
}

interface LockOwner {
  pid: number;
  start?: string;
  host: string;
  op: string;
  since: string;
  token: string;
}

function parseOwner(text: string): LockOwner | undefined {
  try {
    const o = JSON.parse(text) as Partial<LockOwner>;
    if (typeof o.pid !== 'number' || typeof o.token !== 'string' || typeof o.host !== 'string') return undefined;
    return { pid: o.pid, start: typeof o.start === 'string' ? o.start : undefined, host: o.host, op: String(o.op ?? 'write'), since: String(o.since ?? ''), token: o.token };
  } catch {
    return undefined;
  }
}

/** An owner writes its line right after creating the file: an unreadable lock older than this was left by a process killed in between. */
const UNREADABLE_STALE_MS = 10_000;

export class TargetLock {
  private released = false;
  /** Until released, a signal that stops the process releases it too (cleanup.ts). */
  private readonly unregister = onInterrupt(() => this.release());

  private constructor(
    readonly target: string,
    readonly path: string,
    private readonly token: string,
  ) {}

  /**
   * Takes the lock of `target` for `op` ("patch", "write"), or throws
   * TARGET_LOCKED naming the owner. A stale lock is taken over (notice).
   */
  static acquire(target: string, op: string): TargetLock {
    const lockPath = sidecarPath(target, LOCK_SUFFIX);
    const me: LockOwner = {
      pid: process.pid,
      start: processStartTime(process.pid),
      host: os.hostname(),
      op,
      since: new Date().toISOString(),
      token: crypto.randomBytes(8).toString('hex'),
    };
    // The lock appears whole or not at all: written under a temporary name (which the next
    // writer removes if we are killed before the link), then hard-linked to the lock's name,
    // which fails with EEXIST when the lock is held. An O_EXCL create followed by a write
    // would leave an empty lock to a process killed between the two.
    const tempPath = tempPathFor(target);
    try {
      // 0644, unlike every file that holds guest memory: a lock holds only its owner's line, which
      // another user's ramsnap must be able to read to tell a stale lock from a live one.
      fs.writeFileSync(tempPath, `${JSON.stringify(me)}\n`, { flag: 'wx', mode: 0o644 });
    } catch (err) {
      // EEXIST: the name is someone else's file, not ours to remove.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') fs.rmSync(tempPath, { force: true });
      throw ioError(err, tempPath, 'create the lock file');
    }
    let taken = false;
    try {
      // Two rounds: the second after breaking a stale lock.
      for (let round = 0; round < 2 && !taken; round++) {
        try {
          fs.linkSync(tempPath, lockPath);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw ioError(err, lockPath, 'create the lock file');
          const stale = staleOwner(lockPath);
          if (stale === 'gone') continue; // released meanwhile: try again
          if (!stale.stale) throw lockedError(target, lockPath, stale.owner);
          if (breakStale(lockPath, stale.text)) {
            notice(`took over the lock of ${target} left by ${stale.owner ? `pid ${stale.owner.pid} (${stale.owner.op}), which is no longer running` : 'a process killed while taking it'}`);
          }
          continue;
        }
        taken = true;
      }
    } finally {
      fs.rmSync(tempPath, { force: true });
    }
    if (taken) {
      // Holding the lock, no ramsnap writer of this target runs but us: what killed ones left can go.
      removeStaleTemps(path.dirname(lockPath), path.basename(path.resolve(target)));
      const lock = new TargetLock(target, lockPath, me.token);
      refuseMapped(target, lock);
      return lock;
    }
    const again = staleOwner(lockPath);
    throw lockedError(target, lockPath, again === 'gone' ? undefined : again.owner);
  }

  /** Removes the lock file if it is still ours. Idempotent. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.unregister();
    try {
      const owner = parseOwner(fs.readFileSync(this.path, 'utf8'));
      if (owner?.token === this.token) fs.unlinkSync(this.path);
    } catch {
      // Already gone (or taken over by someone who judged us dead): nothing of ours to remove.
    }
  }
}

function lockedError(target: string, lockPath: string, owner: LockOwner | undefined): RamsnapIoError {
  const who = owner
    ? `pid ${owner.pid}${owner.host !== os.hostname() ? ` on host ${owner.host}` : ''} (${owner.op}${owner.since ? ` since ${owner.since}` : ''})`
    : 'another process';
  const hint = owner && owner.host !== os.hostname() ? `; if that process is gone, remove ${lockPath}` : '; try again when it is done';
  return new RamsnapIoError(StateCode.TARGET_LOCKED, `${target} is being written by ${who}${hint}`, target);
}

/** Reads a lock file and judges it. */
function staleOwner(lockPath: string): 'gone' | { stale: boolean; owner?: LockOwner; text: string } {
  let text: string;
  let st: fs.Stats;
  try {
    text = fs.readFileSync(lockPath, 'utf8');
    st = fs.statSync(lockPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    throw ioError(err, lockPath, 'read the lock file');
  }
  const owner = parseOwner(text);
  if (!owner) return { stale: Date.now() - st.mtimeMs > UNREADABLE_STALE_MS, text };
  if (owner.host !== os.hostname()) return { stale: false, owner, text };
  return { stale: !processAlive(owner.pid, owner.start), owner, text };
}

/**
 * Removes a stale lock: renames it aside, and deletes it only if it is
 * the one judged stale; a lock taken by someone else in between goes back.
 */
function breakStale(lockPath: string, staleText: string): boolean {
  const aside = `${lockPath}.stale-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  try {
    fs.renameSync(lockPath, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw ioError(err, lockPath, 'take over the stale lock');
  }
  let text = '';
  try {
    text = fs.readFileSync(aside, 'utf8');
  } catch {
    // unreadable: treat as the stale one
  }
  if (text === staleText) {
    fs.rmSync(aside, { force: true });
    return true;
  }
  // Someone took the lock between our read and our rename: give it back.
  try {
    fs.linkSync(aside, lockPath);
  } catch {
    // Another process holds a new lock already; the one we moved is lost to its owner, who will find it gone on release.
  }
  fs.rmSync(aside, { force: true });
  return false;
}

/** `.NAME.ramsnap-tmp-PID-HEX`: the pid that made it. */
const TEMP_NAME = /^(\d+)-[0-9a-f]{8}$/;

/**
 * Removes the temporary files of target `name` in `dir` whose writer is
 * gone, one notice each; reports those it cannot remove or whose pid still
 * runs. Called by TargetLock.acquire once the lock is ours, so none of
 * them is being written by a ramsnap writer of this target (our own pid's
 * are leftovers too; a running pid's may be a lock that another process
 * is trying to take).
 */
export function removeStaleTemps(dir: string, name: string): void {
  const prefix = `.${name}${TEMP_MARK}`;
  let entries: string[];
  try {
    entries = fs.readdirSync(dir);
  } catch {
    return; // an unreadable directory: creating the temporary file will say what is wrong
  }
  for (const entry of entries) {
    if (!entry.startsWith(prefix)) continue;
    const m = TEMP_NAME.exec(entry.slice(prefix.length));
    if (!m) continue;
    const pid = Number(m[1]);
    const file = path.join(dir, entry);
    if (pid !== process.pid && processAlive(pid)) {
      notice(`temporary file ${file} belongs to running pid ${pid}; left in place`);
      continue;
    }
    try {
      fs.unlinkSync(file);
      notice(`removed stale temporary file ${file} (left by pid ${pid})`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') notice(`cannot remove stale temporary file ${file}: ${(err as Error).message}`);
    }
  }
}

/**
 * A file that a running process maps (a VM restored from it by `ramsnap
 * restore`) is not changed or replaced: a private mapping still shows the
 * file in every page the guest has not written, so a change would reach a
 * running guest's memory. Checked with the lock held (releasing it when
 * refusing).
 */
function refuseMapped(target: string, lock: TargetLock): void {
  const users = processesMapping(target);
  if (users.length === 0) return;
  lock.release();
  const who = users.map((u) => `pid ${u.pid}${u.command ? ` (${u.command})` : ''}`).join(', ');
  throw new RamsnapIoError('FILE_MAPPED', `${target} is mapped by ${who}: a VM running from it would see the change; stop it (or write another file) first`, target);
}

