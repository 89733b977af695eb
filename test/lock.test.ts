/**
 * Concurrency: one writer per target (writer/lock.ts), the cleanup of what
 * killed writers left, a patch's journal as readers and writers see it,
 * and readers racing a patch (writer/journal.ts ReadGuard): a reader never
 * takes a torn file for a complete one.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { processAlive, setNoticeHandler } from '../writer/lock.js';
import { patchSnapshot } from '../writer/patch.js';
import { SnapshotWriter } from '../writer/snapshot-writer.js';
import { openGuarded } from '../analyze/open.js';
import { pageBytes } from './helpers/synth.js';
import { CHILD, beside, cli, errorCode, memory, readerView, runChild, sameMemory, writeSynth } from './faults/harness.js';
import type { Job } from './helpers/crash-child.js';

const PS = 4096;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-lock-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

let serial = 0;
const fresh = (): string => {
  const d = path.join(work, `d${serial++}`);
  fs.mkdirSync(d);
  return d;
};

/** A pid that is certainly not running: a child that has exited. */
function deadPid(): number {
  return spawnSync(process.execPath, ['-e', '0']).pid as number;
}

/** pc.ram of 64 pages, every other one present; a device section. */
function base(file: string): void {
  const pages = new Map<number, Uint8Array>();
  for (let p = 0; p < 64; p += 2) pages.set(p, pageBytes(PS, p + 1));
  writeSynth(file, { blocks: [{ name: 'pc.ram', usedLength: 64 * PS, pages }] });
}

/** Starts the crash child slowed down; resolves when it announces `phase`, with the run's end as a promise. */
function startSlow(job: Job, phase: string): Promise<{ done: Promise<number | null> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const done = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
    let buf = '';
    let started = false;
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      if (!started && buf.includes(`@phase ${phase}\n`)) {
        started = true;
        resolve({ done });
      }
    });
    child.on('error', reject);
    void done.then((code) => {
      if (!started) reject(new Error(`child ended (${code}) before ${phase}`));
    });
  });
}

describe('one writer per target', () => {
  it('a second SnapshotWriter on the same target is refused with TARGET_LOCKED; after the first, the lock is gone', async () => {
    const dir = fresh();
    const target = path.join(dir, 'out.snap');
    const opts = { machine: 'm', pageSize: PS, blocks: [{ name: 'a', usedLength: 4 * PS }], fsync: false };
    const w1 = await SnapshotWriter.create(target, opts);
    await expect(SnapshotWriter.create(target, opts)).rejects.toMatchObject({ code: 'TARGET_LOCKED', message: expect.stringContaining(`pid ${process.pid}`) });
    expect(beside(target).lock).toBe(true);
    await w1.writePages('a', 0, pageBytes(PS, 1));
    await w1.finalize();
    expect(beside(target)).toEqual({ temps: [], lock: false, journal: false, others: [] });
    const w2 = await SnapshotWriter.create(target, { ...opts, force: true });
    await w2.abort();
    expect(fs.readdirSync(dir)).toEqual(['out.snap']);
  });

  it('CLI: create, convert, patch and sparsify of a target another process is writing: one line TARGET_LOCKED, exit 1, the writer unharmed', { timeout: 60_000 }, async () => {
    const dir = fresh();
    const target = path.join(dir, 'out.snap');
    const input = path.join(dir, 'in.snap');
    base(input);
    const image = path.join(dir, 'img');
    fs.writeFileSync(image, pageBytes(64 * PS, 2));
    // A slow writer of `target` (the library, through the crash child): it holds the lock for a few seconds.
    const plan = { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 256 * PS }] };
    const w = await startSlow({ mode: 'write', target, plan, seed: 1, delayMs: 20 }, 'pages');
    const attempts = [
      ['create', '-o', target, '--force', '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${image}`],
      ['convert', input, '-o', target, '--force', '--to', 'legacy'],
    ];
    for (const a of attempts) {
      const r = await cli(a);
      expect(r.code, r.stderr).toBe(1);
      expect(errorCode(r.stderr), r.stderr).toBe('TARGET_LOCKED');
      expect(r.stderr).toMatch(/is being written by pid \d+ \(write since/);
    }
    expect(await w.done).toBe(0);
    expect((await readerView(target)).complete).toBe(true);
    // A slow patch of `input`: a second patch and a sparsify are refused.
    const p = await startSlow({ mode: 'cli', argv: ['patch', input, '--block', 'pc.ram', '--at', '0', '--fill', '5', '--length', String(64 * PS)], layout: input, delayMs: 30 }, 'journal');
    for (const a of [['patch', input, '--block', 'pc.ram', '--at', '0', '--fill', '6', '--length', '1'], ['sparsify', input], ['patch', input, '--recover']]) {
      const r = await cli(a);
      expect(r.code, r.stderr).toBe(1);
      expect(errorCode(r.stderr), r.stderr).toBe('TARGET_LOCKED');
      expect(r.stderr).toContain('(patch since');
    }
    expect(await p.done).toBe(0);
    expect((await memory(input)).get('pc.ram')!.every((b) => b === 5)).toBe(true);
    expect(fs.readdirSync(dir).sort()).toEqual(['img', 'in.snap', 'out.snap']);
  });

  it('a stale lock (dead pid, or a reused pid with another start time, or unreadable and old) is taken over with one notice', async () => {
    const dir = fresh();
    const target = path.join(dir, 'out.snap');
    const lock = path.join(dir, '.out.snap.ramsnap-lock');
    const host = os.hostname();
    const stale = [
      JSON.stringify({ pid: deadPid(), host, op: 'write', since: 'then', token: 'aa' }),
      JSON.stringify({ pid: process.pid, start: 'not-my-start-time', host, op: 'patch', since: 'then', token: 'bb' }),
      'garbage',
    ];
    for (const text of stale) {
      fs.writeFileSync(lock, text);
      if (text === 'garbage') fs.utimesSync(lock, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
      const notices: string[] = [];
      const prev = setNoticeHandler((l) => notices.push(l));
      try {
        const w = await SnapshotWriter.create(target, { machine: 'm', pageSize: PS, blocks: [{ name: 'a', usedLength: PS }], fsync: false, force: true });
        await w.abort();
      } finally {
        setNoticeHandler(prev);
      }
      expect(notices, text).toHaveLength(1);
      expect(notices[0]).toMatch(/^took over the lock of .*out\.snap left by /);
      expect(fs.existsSync(lock)).toBe(false);
    }
    // Through the CLI: the notice is one stderr line and the command succeeds.
    fs.writeFileSync(lock, stale[0]);
    const image = path.join(dir, 'img');
    fs.writeFileSync(image, pageBytes(4 * PS, 1));
    const r = await cli(['create', '-o', target, '--machine', 'pc-q35-10.0', '--ram', `a=${image}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^ramsnap: took over the lock of .* left by pid \d+ \(write\), which is no longer running\n$/);
  });

  it('a live lock, one from another host, and a fresh unreadable one are refused with TARGET_LOCKED', async () => {
    const dir = fresh();
    const target = path.join(dir, 'out.snap');
    const lock = path.join(dir, '.out.snap.ramsnap-lock');
    const opts = { machine: 'm', pageSize: PS, blocks: [{ name: 'a', usedLength: PS }], fsync: false };
    fs.writeFileSync(lock, JSON.stringify({ pid: process.ppid, host: os.hostname(), op: 'write', since: 'now', token: 'cc' }));
    await expect(SnapshotWriter.create(target, opts)).rejects.toMatchObject({ code: 'TARGET_LOCKED', message: expect.stringContaining(`pid ${process.ppid}`) });
    fs.writeFileSync(lock, JSON.stringify({ pid: deadPid(), host: 'elsewhere.example', op: 'patch', since: 'now', token: 'dd' }));
    await expect(SnapshotWriter.create(target, opts)).rejects.toMatchObject({ code: 'TARGET_LOCKED', message: expect.stringMatching(/on host elsewhere\.example .*remove .*\.out\.snap\.ramsnap-lock/) });
    fs.writeFileSync(lock, '');
    await expect(SnapshotWriter.create(target, opts)).rejects.toMatchObject({ code: 'TARGET_LOCKED', message: expect.stringContaining('another process') });
    expect(fs.readdirSync(dir)).toEqual(['.out.snap.ramsnap-lock']);
  });
});

describe('temporary files of killed writers', () => {
  it('a writer killed but not yet reaped (a zombie) holds nothing: its lock is stale at once (CI flake of crash.test.ts)', async () => {
    const child = spawn('sleep', ['30']);
    await new Promise((r) => setTimeout(r, 100));
    const pid = child.pid as number;
    expect(processAlive(pid)).toBe(true);
    process.kill(pid, 'SIGKILL');
    // Stay off the event loop so Node cannot reap it: it is a zombie until then.
    const until = Date.now() + 200;
    while (Date.now() < until);
    expect(fs.readFileSync(`/proc/${pid}/stat`, 'latin1')).toMatch(/\) Z /);
    expect(processAlive(pid)).toBe(false);
  });

  it('the next writer of the target removes those whose pid is gone (one stderr line each) and reports those whose pid runs', async () => {
    const dir = fresh();
    const target = path.join(dir, 'out.snap');
    const dead = path.join(dir, `.out.snap.ramsnap-tmp-${deadPid()}-0123abcd`);
    const live = path.join(dir, `.out.snap.ramsnap-tmp-${process.ppid}-4567cdef`);
    const other = path.join(dir, `.other.snap.ramsnap-tmp-${deadPid()}-89abcdef`);
    for (const f of [dead, live, other]) fs.writeFileSync(f, 'partial');
    const image = path.join(dir, 'img');
    fs.writeFileSync(image, pageBytes(4 * PS, 1));
    const r = await cli(['create', '-o', target, '--machine', 'pc-q35-10.0', '--ram', `a=${image}`]);
    expect(r.code, r.stderr).toBe(0);
    const lines = r.stderr.trimEnd().split('\n').sort();
    expect(lines).toEqual([
      `ramsnap: removed stale temporary file ${dead} (left by pid ${dead.split('-').at(-2)})`,
      `ramsnap: temporary file ${live} belongs to running pid ${process.ppid}; left in place`,
    ].sort());
    expect(fs.readdirSync(dir).sort()).toEqual([path.basename(other), path.basename(live), 'img', 'out.snap'].sort());
  });
});

/** A file with an interrupted patch: the patch child killed while writing pages (journal finished, marker on). */
async function interrupted(dir: string): Promise<{ file: string; original: Map<string, Buffer> }> {
  const file = path.join(dir, 'vm.snap');
  base(file);
  const original = await memory(file);
  const k = await runChild({ mode: 'cli', argv: ['patch', file, '--block', 'pc.ram', '--at', '0', '--fill', '9', '--length', String(8 * PS)], layout: file, delayMs: 5 }, 'pages', 1);
  expect(k.signal).toBe('SIGKILL');
  expect(beside(file)).toMatchObject({ journal: true, lock: true });
  return { file, original };
}

describe('an interrupted patch as readers and writers see it', () => {
  it('verify, info, extract, read and dump say PATCH_IN_PROGRESS and name the recovery command; a writer refuses to replace the file; the next patch completes it first', { timeout: 30_000 }, async () => {
    const { file, original } = await interrupted(fresh());
    const out = path.join(path.dirname(file), 'mem');
    for (const cmd of [['verify'], ['info'], ['extract', '-o', out], ['read', '--block', 'pc.ram', '--at', '0', '--length', '16'], ['dump', '--state']]) {
      const r = await cli([cmd[0], file, ...cmd.slice(1)]);
      expect(r.code).toBe(1);
      expect(errorCode(r.stderr), r.stderr).toBe('PATCH_IN_PROGRESS');
      expect(r.stderr).toContain(`ramsnap patch --recover ${file}`);
    }
    expect(fs.existsSync(out)).toBe(false);
    const image = path.join(path.dirname(file), 'img');
    fs.writeFileSync(image, pageBytes(64 * PS, 1));
    const c = await cli(['create', '-o', file, '--force', '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${image}`]);
    expect(c.code).toBe(1);
    expect(errorCode(c.stderr), c.stderr).toBe('PATCH_IN_PROGRESS');
    expect(c.stderr).toMatch(/^ramsnap: took over the lock of .* left by pid \d+ \(patch\), which is no longer running\n/);
    // The next patch: the interrupted one is completed (notice), then this one applies.
    const p = await cli(['patch', file, '--block', 'pc.ram', '--at', String(8 * PS), '--fill', '4', '--length', String(PS)]);
    expect(p.code, p.stderr).toBe(0);
    expect(p.stderr).toBe(`ramsnap: completed the interrupted patch of ${file} from its journal (16384 bytes of pages)\n`);
    const want = Buffer.from(original.get('pc.ram')!);
    want.fill(9, 0, 8 * PS);
    want.fill(4, 8 * PS, 9 * PS);
    expect((await memory(file)).get('pc.ram')!.equals(want)).toBe(true);
    expect(beside(file)).toEqual({ temps: [], lock: false, journal: false, others: ['img'] });
  });

  it('a writer of a target whose file is gone but whose journal is left removes the journal, with a notice', async () => {
    const { file } = await interrupted(fresh());
    fs.rmSync(file);
    const image = path.join(path.dirname(file), 'img');
    fs.writeFileSync(image, pageBytes(4 * PS, 1));
    const r = await cli(['create', '-o', file, '--machine', 'pc-q35-10.0', '--ram', `a=${image}`]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/ramsnap: removed the journal of a patch of .*vm\.snap, which no longer exists/);
    expect(beside(file)).toEqual({ temps: [], lock: false, journal: false, others: ['img'] });
    expect((await readerView(file)).complete).toBe(true);
  });

  it('a journal whose file was replaced is refused (JOURNAL_MISMATCH); a marker whose journal is gone is PATCH_IN_PROGRESS and cannot be recovered', { timeout: 30_000 }, async () => {
    const { file } = await interrupted(fresh());
    const other = path.join(work, 'other.snap');
    writeSynth(other, { blocks: [{ name: 'pc.ram', usedLength: 80 * PS, pages: new Map([[3, pageBytes(PS, 3)]]) }] });
    fs.copyFileSync(other, file);
    const r = await cli(['patch', file, '--recover']);
    expect(r.code).toBe(1);
    expect(errorCode(r.stderr), r.stderr).toBe('JOURNAL_MISMATCH');
    const second = await interrupted(fresh());
    fs.rmSync(path.join(path.dirname(second.file), '.vm.snap.ramsnap-journal'));
    for (const args of [['verify', second.file], ['patch', second.file, '--recover'], ['patch', second.file, '--block', 'pc.ram', '--at', '0', '--fill', '1', '--length', '1']]) {
      const v = await cli(args);
      expect(v.code, args.join(' ')).toBe(1);
      expect(errorCode(v.stderr), v.stderr).toBe('PATCH_IN_PROGRESS');
      expect(v.stderr).toContain('is gone');
    }
  });

  it('--recover: an unfinished journal is dropped (the original), a finished one completed; with nothing to do it says so; it takes no patch flags', { timeout: 30_000 }, async () => {
    const dir = fresh();
    const file = path.join(dir, 'vm.snap');
    base(file);
    const original = await memory(file);
    const k = await runChild({ mode: 'cli', argv: ['patch', file, '--block', 'pc.ram', '--at', '0', '--fill', '9', '--length', String(8 * PS)], layout: file, delayMs: 20 }, 'journal', 1);
    expect(k.signal).toBe('SIGKILL');
    expect(beside(file).journal).toBe(true);
    const r = await cli(['patch', file, '--recover', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ action: 'discarded' });
    expect(sameMemory(await memory(file), original)).toBe(true);
    const n = await cli(['patch', file, '--recover']);
    expect(n).toMatchObject({ code: 0, stdout: `${file}: no interrupted patch to recover\n`, stderr: '' });
    const u = await cli(['patch', file, '--recover', '--block', 'pc.ram']);
    expect(u.code).toBe(2);
    expect(errorCode(u.stderr)).toBe('USAGE');
    const m = await cli(['patch', file, '--fill', '1', '--length', '1']);
    expect(m.code).toBe(2);
  });

  it('a patch leaves no lock, no journal, and moves the mtime forward', async () => {
    const dir = fresh();
    const file = path.join(dir, 'vm.snap');
    base(file);
    const t0 = fs.statSync(file, { bigint: true }).mtimeNs;
    await patchSnapshot(file, { block: 'pc.ram', at: 0, data: { fill: 3, length: PS } });
    expect(fs.readdirSync(dir)).toEqual(['vm.snap']);
    expect(fs.statSync(file, { bigint: true }).mtimeNs > t0).toBe(true);
  });
});

describe('readers racing a patch', () => {
  it('a reader loop never takes a torn file for a complete one: each complete read is exactly one of the patched states', { timeout: 120_000 }, async () => {
    const dir = fresh();
    const file = path.join(dir, 'vm.snap');
    base(file);
    const states = [await memory(file)];
    // Alternating patches over present and absent pages: each run leaves memory A or B.
    const fills = [0x41, 0x42];
    for (const f of fills) {
      const m = Buffer.from(states[0].get('pc.ram')!);
      m.fill(f, 2 * PS + 100, 40 * PS + 7);
      states.push(new Map([['pc.ram', m]]));
    }
    const patches = 10;
    let running = true;
    const writer = (async () => {
      for (let i = 0; i < patches; i++) {
        const r = await runChild({ mode: 'cli', argv: ['patch', file, '--block', 'pc.ram', '--at', String(2 * PS + 100), '--fill', String(fills[i % 2]), '--length', String(38 * PS - 93)], layout: file, delayMs: 1 });
        if (r.code !== 0) throw new Error(r.stderr);
      }
      running = false;
    })();
    const seen: Record<string, number> = {};
    const count = (k: string): void => void (seen[k] = (seen[k] ?? 0) + 1);
    const classify = (mem: Map<string, Buffer>): string => {
      const i = states.findIndex((s) => sameMemory(s, mem));
      return i < 0 ? 'TORN' : ['original', 'A', 'B'][i];
    };
    // Fast readers (ramsnap's open + read), slow ones (page by page, so whole patches fit inside one read), and the verify command.
    const fast = (async () => {
      while (running) {
        const v = await readerView(file);
        count(v.complete ? `fast complete ${classify(v.mem)}` : `fast refused ${v.code}`);
      }
    })();
    const slow = (async () => {
      while (running) {
        try {
          const { snap, guard } = await openGuarded(file, {});
          const b = snap.block('pc.ram');
          const mem = Buffer.alloc(b.usedLength);
          for (let p = 0; p < b.pages; p++) {
            mem.set(await snap.read(b, p * PS, PS), p * PS);
            await new Promise((r) => setTimeout(r, 2));
          }
          await snap.close();
          guard.check(snap.model.streamOffset);
          count(`slow complete ${classify(new Map([['pc.ram', mem]]))}`);
        } catch (err) {
          count(`slow refused ${(err as { code?: string }).code}`);
        }
      }
    })();
    const verify = (async () => {
      while (running) {
        const r = await cli(['verify', file]);
        count(r.code === 0 ? 'verify ok' : `verify refused ${errorCode(r.stderr)}`);
      }
    })();
    await Promise.all([writer, fast, slow, verify]);
    console.log('readers during patches:', JSON.stringify(seen));
    for (const k of Object.keys(seen)) {
      expect(k).not.toContain('TORN');
      if (k.includes('refused')) expect(k).toMatch(/refused (PATCH_IN_PROGRESS|FILE_CHANGED)$/);
    }
    expect(Object.keys(seen).some((k) => k.includes('refused PATCH_IN_PROGRESS')), 'no reader met a patch in progress').toBe(true);
    expect(classify((await memory(file)) as Map<string, Buffer>)).toBe(patches % 2 ? 'A' : 'B');
  });
});
