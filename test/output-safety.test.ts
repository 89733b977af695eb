/**
 * Issue 13, items 1 to 4: what ramsnap's outputs may replace, who may read
 * them, and what an interrupted or failed command leaves. The real binary
 * (dist/analyze/bin.js) runs on synthetic files in a temp directory; the
 * signal tests also run the CLI inside test/helpers/crash-child.ts, whose
 * slowed-down writes let a signal land in a known phase.
 *
 * What holds (docs/writers.md §6, §8):
 * - 13.1: a device node, FIFO, socket or directory at an output path is
 *   never replaced, with or without --force: OUTPUT_NOT_REGULAR, exit 2,
 *   and the node is still the same node afterwards.
 * - 13.2: new outputs are 0600 (as QEMU's migration files), or exactly
 *   --mode; a replaced file keeps its mode (not its owner); a temporary file is
 *   0600 while it is written.
 * - 13.3: extract checks every output before writing any, builds each
 *   under a temporary name and renames them all only at the end; an
 *   error, SIGINT or SIGTERM leaves no output, no temporary file, no lock,
 *   and no directory it created.
 * - 13.4: SIGINT or SIGTERM during convert, create, sparsify or patch
 *   leaves no temporary file and no lock (a patch whose journal is
 *   finished keeps it, and says how to finish it); exit 130 or 143, one line.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Qemu, qemuAvailable } from '../fixtures/qemu.js';
import { SnapshotWriter } from '../writer/snapshot-writer.js';
import type { Job } from './helpers/crash-child.js';
import { pageBytes } from './helpers/synth.js';
import { BIN, CHILD, memory, readerView, sameMemory, writeSynth } from './faults/harness.js';

const PS = 4096;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-outsafe-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The real binary, under `umask` (a shell sets it: a test worker cannot). */
function ramsnap(args: string[], umask = '022'): Promise<Run> {
  return new Promise((resolve) =>
    execFile('/bin/sh', ['-c', `umask ${umask}; exec "$0" "$@"`, process.execPath, BIN, ...args], { maxBuffer: 1 << 24, timeout: 60_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, signal: (err as { signal?: NodeJS.Signals } | null)?.signal ?? null, stdout, stderr }),
    ),
  );
}

/** One `ramsnap: CODE: ...` line on stderr, after any notices, and the exit status. */
function expectError(r: Run, exit: number, code: string): string {
  expect(r.code, r.stderr).toBe(exit);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  const lines = r.stderr.trimEnd().split('\n');
  const last = lines[lines.length - 1];
  expect(last).toMatch(new RegExp(`^ramsnap: ${code}: `));
  for (const l of lines.slice(0, -1)) expect(l).toMatch(/^ramsnap: (took over the lock|removed stale temporary file)/);
  return last;
}

/** Entries of a directory that a writer makes beside its target: temporary files, locks, journals. */
function sidecars(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.includes('.ramsnap-'));
}

const modeOf = (p: string): number => fs.statSync(p).mode & 0o777;

let snap: string;
let legacy: string;
let image: string;

beforeAll(() => {
  expect(fs.existsSync(BIN), `${BIN} missing: run npm run build first`).toBe(true);
  snap = path.join(work, 'vm.snap');
  legacy = path.join(work, 'vm.legacy');
  image = path.join(work, 'mem.raw');
  const ram = new Map([0, 3, 9, 40].map((p) => [p, pageBytes(PS, p + 1)]));
  writeSynth(snap, { blocks: [{ name: 'pc.ram', usedLength: 64 * PS, pages: ram }, { name: 'rom', usedLength: 4 * PS, pages: new Map([[1, pageBytes(PS, 99)]]) }] });
  writeSynth(legacy, { mappedRam: false, blocks: [{ name: 'pc.ram', usedLength: 64 * PS, pages: ram }, { name: 'rom', usedLength: 4 * PS }] });
  const raw = Buffer.alloc(64 * PS);
  for (const [p, data] of ram) raw.set(data, p * PS);
  fs.writeFileSync(image, raw);
});

/** A fresh directory under `work`. */
function scratch(name: string): string {
  const d = path.join(work, name);
  fs.mkdirSync(d);
  return d;
}

/** Every command that writes an output, aimed at `out` with --force. */
function writersAt(out: string): string[][] {
  return [
    ['extract', snap, '--block', 'pc.ram', '-o', out, '--force'],
    ['create', '-o', out, '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${image}`, '--force'],
    ['convert', snap, '-o', out, '--to', 'mapped-ram', '--force'],
    ['convert', snap, '-o', out, '--to', 'legacy', '--force'],
    ['save', '--qmp', path.join(work, 'no-such.qmp'), '-o', out, '--force'],
  ];
}

describe('13.1 outputs that are not regular files', () => {
  it('13.1 --force never replaces a character device', async () => {
    const d = scratch('chr');
    const node = path.join(d, 'null');
    // The same device numbers as /dev/null (1, 3): harmless if anything did write to it. Never a real /dev node.
    expect(spawnSync('mknod', [node, 'c', '1', '3']).status).toBe(0);
    const before = fs.lstatSync(node);
    for (const args of writersAt(node)) {
      const line = expectError(await ramsnap(args), 2, 'OUTPUT_NOT_REGULAR');
      expect(line, args.join(' ')).toContain(`output ${node} is a character device`);
      const after = fs.lstatSync(node);
      expect(after.isCharacterDevice(), args.join(' ')).toBe(true);
      expect([after.rdev, after.ino]).toEqual([before.rdev, before.ino]);
      expect(sidecars(d), args.join(' ')).toEqual([]);
    }
    // Without --force it is the same refusal (not OUTPUT_EXISTS: --force would not help).
    expectError(await ramsnap(['convert', snap, '-o', node, '--to', 'mapped-ram']), 2, 'OUTPUT_NOT_REGULAR');
    // Commands that rewrite their input refuse it as input: it is not a snapshot file at all.
    expectError(await ramsnap(['sparsify', node]), 1, 'NOT_A_FILE');
    expectError(await ramsnap(['patch', node, '--block', 'pc.ram', '--at', '0', '--fill', '1', '--length', '1']), 1, 'NOT_A_FILE');
    expect(fs.lstatSync(node).isCharacterDevice()).toBe(true);
    expect(sidecars(d)).toEqual([]);
  });

  it('13.1 --force never replaces a FIFO, a socket or a directory', async () => {
    const d = scratch('others');
    const fifo = path.join(d, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const sock = path.join(d, 'sock');
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    const sub = path.join(d, 'dir');
    fs.mkdirSync(sub);
    try {
      for (const [target, kind, is] of [
        [fifo, 'a FIFO', (s: fs.Stats) => s.isFIFO()],
        [sock, 'a socket', (s: fs.Stats) => s.isSocket()],
        [sub, 'a directory', (s: fs.Stats) => s.isDirectory()],
      ] as const) {
        for (const args of writersAt(target)) {
          const line = expectError(await ramsnap(args), 2, 'OUTPUT_NOT_REGULAR');
          expect(line).toContain(`output ${target} is ${kind}`);
          expect(is(fs.lstatSync(target)), args.join(' ')).toBe(true);
        }
      }
      expect(fs.readdirSync(sub)).toEqual([]);
      expect(sidecars(d)).toEqual([]);
    } finally {
      server.close();
    }
  });

  it('13.1 extract -o DIR: a FIFO where one block goes stops it before any block is written', async () => {
    const d = scratch('dir-fifo');
    expect(spawnSync('mkfifo', [path.join(d, 'rom.raw')]).status).toBe(0);
    expectError(await ramsnap(['extract', snap, '-o', d, '--force']), 2, 'OUTPUT_NOT_REGULAR');
    expect(fs.readdirSync(d)).toEqual(['rom.raw']);
    expect(fs.lstatSync(path.join(d, 'rom.raw')).isFIFO()).toBe(true);
  });

  it('13.1 a symlink is still replaced, never followed', async () => {
    const d = scratch('link');
    const victim = path.join(d, 'victim');
    fs.writeFileSync(victim, 'keep me');
    const link = path.join(d, 'out.snap');
    fs.symlinkSync(victim, link);
    expect((await ramsnap(['convert', snap, '-o', link, '--to', 'mapped-ram', '--force'])).code).toBe(0);
    expect(fs.lstatSync(link).isFile()).toBe(true);
    expect(fs.readFileSync(victim, 'utf8')).toBe('keep me');
  });
});

describe('13.2 who may read an output', () => {
  it('13.2 new outputs of extract, create and convert are 0600 under umask 022', async () => {
    const d = scratch('modes');
    const outs = {
      dir: path.join(d, 'blocks'),
      one: path.join(d, 'one.raw'),
      created: path.join(d, 'created.snap'),
      mapped: path.join(d, 'mapped.snap'),
      legacy: path.join(d, 'legacy.snap'),
    };
    for (const args of [
      ['extract', snap, '-o', outs.dir],
      ['extract', legacy, '--block', 'pc.ram', '-o', outs.one],
      ['create', '-o', outs.created, '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${image}`],
      ['convert', legacy, '-o', outs.mapped, '--to', 'mapped-ram'],
      ['convert', snap, '-o', outs.legacy, '--to', 'legacy'],
    ]) {
      const r = await ramsnap(args, '022');
      expect(r.code, r.stderr).toBe(0);
    }
    for (const f of [outs.one, outs.created, outs.mapped, outs.legacy, ...fs.readdirSync(outs.dir).map((n) => path.join(outs.dir, n))]) {
      expect(modeOf(f).toString(8), f).toBe('600');
    }
    expect(fs.readdirSync(outs.dir).sort()).toEqual(['pc.ram.raw', 'rom.raw']);
  });

  it('13.2 --mode sets the mode exactly, whatever the umask; a bad --mode is exit 2 and writes nothing', async () => {
    const d = scratch('mode-flag');
    const out = path.join(d, 'out.snap');
    expect((await ramsnap(['convert', snap, '-o', out, '--to', 'mapped-ram', '--mode', '0640'], '077')).code).toBe(0);
    expect(modeOf(out).toString(8)).toBe('640');
    expect((await ramsnap(['extract', snap, '-o', path.join(d, 'b'), '--mode', '644'], '077')).code).toBe(0);
    expect(modeOf(path.join(d, 'b', 'pc.ram.raw')).toString(8)).toBe('644');
    for (const bad of ['999', 'rw-r-----', '1777', '0o1000', '']) {
      expectError(await ramsnap(['create', '-o', path.join(d, 'bad.snap'), '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${image}`, '--mode', bad]), 2, 'BAD_MODE');
    }
    expect(fs.existsSync(path.join(d, 'bad.snap'))).toBe(false);
    expect(sidecars(d)).toEqual([]);
  });

  it('13.2 convert X -o X --force keeps 0640 (not the owner); extract --force and sparsify keep the mode', async () => {
    const d = scratch('keep');
    const f = path.join(d, 'x.snap');
    fs.copyFileSync(snap, f);
    fs.chmodSync(f, 0o640);
    fs.chownSync(f, 4321, 4322);
    const r = await ramsnap(['convert', f, '-o', f, '--to', 'mapped-ram', '--force']);
    expect(r.code, r.stderr).toBe(0);
    expect(modeOf(f).toString(8)).toBe('640');
    expect([fs.statSync(f).uid, fs.statSync(f).gid]).toEqual([process.getuid!(), process.getgid!()]);
    expect((await ramsnap(['sparsify', f])).code).toBe(0);
    expect(modeOf(f).toString(8)).toBe('640');
    const raw = path.join(d, 'x.raw');
    fs.writeFileSync(raw, 'old');
    fs.chmodSync(raw, 0o604);
    expect((await ramsnap(['extract', f, '--block', 'rom', '-o', raw, '--force'])).code).toBe(0);
    expect(modeOf(raw).toString(8)).toBe('604');
    expect(fs.statSync(raw).size).toBe(4 * PS);
    // --mode wins over the replaced file's.
    expect((await ramsnap(['extract', f, '--block', 'rom', '-o', raw, '--force', '--mode', '0600'])).code).toBe(0);
    expect(modeOf(raw).toString(8)).toBe('600');
    // patch changes the file in place: its mode stays.
    expect((await ramsnap(['patch', f, '--block', 'pc.ram', '--at', '0', '--fill', '7', '--length', '4096'])).code).toBe(0);
    expect(modeOf(f).toString(8)).toBe('640');
  });

  it.skipIf(!qemuAvailable())('13.2 save: the snapshot is 0600, or --mode, and a replaced one keeps its mode (QEMU 10)', async () => {
    const d = scratch('save-mode');
    const ram = path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : d, `ramsnap-outsafe-${process.pid}.ram`);
    const sock = path.join(d, 'save.qmp');
    const q = await Qemu.start({
      binary: 'qemu-system-x86_64',
      dir: d,
      args: ['-machine', 'pc', '-accel', 'tcg', '-m', '64M', '-object', `memory-backend-file,id=pc.ram,size=64M,mem-path=${ram},share=on`, '-machine', 'memory-backend=pc.ram', '-qmp', `unix:${sock},server=on,wait=off`],
    });
    try {
      // QEMU saves a guest once per pause ("postmigrate"): let it run again before each save.
      const save = async (out: string, ...more: string[]): Promise<Run> => {
        const r = await ramsnap(['save', '--qmp', sock, '-o', out, '--then', 'stop', '--max-bandwidth', '0', '-q', ...more]);
        await q.cmd('cont');
        return r;
      };
      const plain = path.join(d, 'plain.snap');
      const r = await save(plain);
      expect(r.code, r.stderr).toBe(0);
      expect(modeOf(plain).toString(8)).toBe('600');
      const wide = path.join(d, 'wide.snap');
      expect((await save(wide, '--mode', '0640')).code).toBe(0);
      expect(modeOf(wide).toString(8)).toBe('640');
      fs.chmodSync(plain, 0o604);
      expect((await save(plain, '--force')).code).toBe(0);
      expect(modeOf(plain).toString(8)).toBe('604');
      expect(fs.readdirSync(d).filter((n) => n.includes('.ramsnap-'))).toEqual([]);
    } finally {
      await q.kill();
      fs.rmSync(ram, { force: true });
    }
  }, 120_000);

  it('13.2 a writer\'s temporary file is 0600 while it is written (umask 022)', async () => {
    const d = scratch('temp-mode');
    const out = path.join(d, 'out.snap');
    const seen: number[] = [];
    const r = await child({ mode: 'cli', argv: ['convert', snap, '-o', out, '--to', 'mapped-ram', '--mode', '0644'], layout: snap, delayMs: 5, holdAt: 'pages' }, {
      at: 'pages',
      signal: 'SIGKILL',
      onPhase: () => {
        for (const n of fs.readdirSync(d).filter((x) => x.includes('.ramsnap-tmp-'))) seen.push(modeOf(path.join(d, n)));
      },
    });
    expect(r.signal).toBe('SIGKILL');
    // Only at the end does it get --mode 0644; while guest memory is being written no one else can read it.
    expect(seen.map((m) => m.toString(8))).toEqual(['600']);
  });
});

interface ChildRun extends Run {
  phases: string[];
}

/**
 * Runs the crash child (the CLI in-process with slowed-down writes) under
 * umask 022, and sends `signal` when it announces phase `at`.
 */
function child(job: Job, o: { at?: string; signal?: NodeJS.Signals; onPhase?: (name: string) => void } = {}): Promise<ChildRun> {
  return new Promise((resolve, reject) => {
    const c = spawn('/bin/sh', ['-c', 'umask 022; exec "$0" "$@"', process.execPath, CHILD, JSON.stringify(job)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const phases: string[] = [];
    let buf = '';
    let stdout = '';
    let stderr = '';
    let sent = false;
    c.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!line.startsWith('@phase ')) {
          if (!line.startsWith('@writes ')) stdout += `${line}\n`;
          continue;
        }
        const name = line.slice(7);
        phases.push(name);
        if (name === o.at && !sent) {
          sent = true;
          o.onPhase?.(name);
          c.kill(o.signal ?? 'SIGINT');
        }
      }
    });
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('error', reject);
    c.on('close', (code, signal) => resolve({ code, signal, stdout, stderr, phases }));
  });
}

/** The one line a command stopped by a signal prints, after any notices. */
function expectInterrupted(r: Run, sig: 'SIGINT' | 'SIGTERM'): string {
  expect(r.code, `${r.stderr} (signal ${r.signal})`).toBe(sig === 'SIGINT' ? 130 : 143);
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines.filter((l) => !/^ramsnap: (took over the lock|removed stale temporary file)/.test(l))).toHaveLength(1);
  const last = lines[lines.length - 1];
  expect(last).toMatch(new RegExp(`^ramsnap: INTERRUPTED: stopped by ${sig}; what it had not finished was removed`));
  return last;
}

/** A mapped-ram file of `mib` MiB of non-zero pages (an extract of it takes long enough to be interrupted). */
async function bigSnapshot(file: string, mib: number): Promise<void> {
  const w = await SnapshotWriter.create(file, { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: mib << 20 }, { name: 'pc.rom', usedLength: 1 << 20 }], fsync: false });
  const chunk = Buffer.alloc(4 << 20, 0x5a);
  for (let at = 0; at < mib << 20; at += chunk.length) await w.writePages('pc.ram', at / PS, chunk);
  await w.finalize();
}

describe('13.3 extract is all or nothing', () => {
  it('13.3 every output is checked before any is written (OUTPUT_EXISTS on the second block leaves no first)', async () => {
    const d = scratch('exists');
    fs.writeFileSync(path.join(d, 'rom.raw'), 'mine');
    expectError(await ramsnap(['extract', snap, '-o', d]), 1, 'OUTPUT_EXISTS');
    expect(fs.readdirSync(d)).toEqual(['rom.raw']);
    expect(fs.readFileSync(path.join(d, 'rom.raw'), 'utf8')).toBe('mine');
  });

  it('13.3 a write error halfway removes every output, temporary file, lock and the directory it made', async () => {
    const d = scratch('enospc');
    const out = path.join(d, 'made', 'here');
    // The legacy path writes through fs.write, where the crash child injects the fault.
    const r = await child({ mode: 'cli', argv: ['extract', legacy, '-o', out], delayMs: 1, fail: { phase: 'write', nth: 2, errno: 'ENOSPC' } });
    expectError(r, 1, 'IO_ENOSPC');
    expect(fs.readdirSync(d)).toEqual([]);
  });

  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    it(`13.3 ${sig} during extract (thread-pool copy) leaves no output, temporary file, lock or directory it made; exit ${sig === 'SIGINT' ? 130 : 143}`, async () => {
      const d = scratch(`extract-${sig}`);
      const out = path.join(d, 'new');
      const r = await child({ mode: 'cli', argv: ['extract', legacy, '-o', out], delayMs: 30 }, { at: 'write', signal: sig });
      expectInterrupted(r, sig);
      expect(fs.readdirSync(d)).toEqual([]);
      // A directory that was there before stays, as it was.
      const r2 = await child({ mode: 'cli', argv: ['extract', legacy, '-o', d], delayMs: 30 }, { at: 'write', signal: sig });
      expectInterrupted(r2, sig);
      expect(fs.readdirSync(d)).toEqual([]);
    });
  }

  it('13.3 SIGINT and SIGTERM during the real binary\'s extract of a large mapped-ram file (copy on the main thread)', async () => {
    const d = scratch('big');
    const big = path.join(work, 'big.snap');
    await bigSnapshot(big, 256);
    for (const [sig, args, outDir] of [
      ['SIGINT', ['extract', big, '-o', path.join(d, 'all')], d],
      ['SIGTERM', ['extract', big, '--block', 'pc.ram', '-o', path.join(d, 'ram.raw')], d],
    ] as const) {
      const r = await new Promise<Run>((resolve) => {
        const c = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stderr = '';
        c.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
        // As soon as a temporary file exists the copy has begun: interrupt it there.
        const watch = setInterval(() => {
          const dirs = [outDir, path.join(d, 'all')].filter((x) => fs.existsSync(x));
          if (dirs.some((x) => fs.readdirSync(x).some((n) => n.includes('.ramsnap-tmp-')))) {
            clearInterval(watch);
            c.kill(sig);
          }
        }, 1);
        c.on('close', (code, signal) => {
          clearInterval(watch);
          resolve({ code, signal, stdout: '', stderr });
        });
      });
      expectInterrupted(r, sig);
      expect(fs.readdirSync(d), sig).toEqual([]);
    }
    fs.rmSync(big);
  }, 120_000);
});

describe('13.4 writers interrupted by a signal clean up as save does', () => {
  const cases: { name: string; phase: string; job: (d: string) => Job; target: (d: string) => string }[] = [
    { name: 'convert to mapped-ram', phase: 'pages', job: (d) => ({ mode: 'cli', argv: ['convert', snap, '-o', path.join(d, 'out.snap'), '--to', 'mapped-ram'], layout: snap, delayMs: 20 }), target: (d) => path.join(d, 'out.snap') },
    { name: 'convert to legacy', phase: 'write', job: (d) => ({ mode: 'cli', argv: ['convert', snap, '-o', path.join(d, 'out.snap'), '--to', 'legacy'], delayMs: 20 }), target: (d) => path.join(d, 'out.snap') },
    { name: 'create', phase: 'write', job: (d) => ({ mode: 'cli', argv: ['create', '-o', path.join(d, 'out.snap'), '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${image}`], delayMs: 20 }), target: (d) => path.join(d, 'out.snap') },
  ];
  for (const c of cases) {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      it(`13.4 ${sig} during ${c.name}: exit ${sig === 'SIGINT' ? 130 : 143}, one line, no temporary file, no lock, nothing at the target`, async () => {
        const d = scratch(`${c.name.replace(/ /g, '-')}-${sig}`);
        const r = await child(c.job(d), { at: c.phase, signal: sig });
        expect(r.phases).toContain(c.phase);
        expectInterrupted(r, sig);
        expect(fs.readdirSync(d)).toEqual([]);
        expect(fs.existsSync(c.target(d))).toBe(false);
      });
    }
  }

  it('13.4 SIGINT during sparsify: the original stays, with its mode; no temporary file, no lock', async () => {
    const d = scratch('sparsify-int');
    const f = path.join(d, 'vm.snap');
    fs.copyFileSync(snap, f);
    fs.chmodSync(f, 0o640);
    const before = await memory(f);
    const r = await child({ mode: 'cli', argv: ['sparsify', f], layout: f, delayMs: 20 }, { at: 'pages', signal: 'SIGINT' });
    expectInterrupted(r, 'SIGINT');
    expect(fs.readdirSync(d)).toEqual(['vm.snap']);
    expect(sameMemory(await memory(f), before)).toBe(true);
    expect(modeOf(f).toString(8)).toBe('640');
  });

  it('13.4 SIGTERM during a patch before its journal is finished: the journal and the lock go, the file is the original', async () => {
    const d = scratch('patch-early');
    const f = path.join(d, 'vm.snap');
    fs.copyFileSync(snap, f);
    const before = await memory(f);
    // Pages 1..8 of pc.ram: absent ones (written hidden first) and present ones (through the journal).
    const r = await child({ mode: 'cli', argv: ['patch', f, '--block', 'pc.ram', '--at', String(PS), '--fill', '0x33', '--length', String(8 * PS)], layout: f, delayMs: 20 }, { at: 'hidden', signal: 'SIGTERM' });
    expectInterrupted(r, 'SIGTERM');
    expect(fs.readdirSync(d)).toEqual(['vm.snap']);
    const view = await readerView(f);
    expect(view.complete && sameMemory(view.mem, before)).toBe(true);
  });

  it('13.4 SIGINT during a patch after its journal is finished: the journal stays and the line says how to finish it; --recover does', async () => {
    const d = scratch('patch-late');
    const f = path.join(d, 'vm.snap');
    fs.copyFileSync(snap, f);
    const r = await child({ mode: 'cli', argv: ['patch', f, '--block', 'pc.ram', '--at', String(PS), '--fill', '0x33', '--length', String(8 * PS)], layout: f, delayMs: 20 }, { at: 'pages', signal: 'SIGINT' });
    const line = expectInterrupted(r, 'SIGINT');
    expect(line).toContain(`finish it with: ramsnap patch --recover ${f}`);
    expect(fs.readdirSync(d).sort()).toEqual(['.vm.snap.ramsnap-journal', 'vm.snap']);
    expect(await readerView(f)).toEqual({ complete: false, code: 'PATCH_IN_PROGRESS' });
    expect((await ramsnap(['patch', f, '--recover'])).code).toBe(0);
    const after = await memory(f);
    expect(after.get('pc.ram')?.subarray(PS, 9 * PS).every((b) => b === 0x33)).toBe(true);
    expect(fs.readdirSync(d)).toEqual(['vm.snap']);
  });
});
