/**
 * Issue 13, items 5 and 17: how the command line behaves at its edges.
 * The real binary (dist/analyze/bin.js) on synthetic files: stdout that
 * fails or closes early, inputs that are not regular files, a stream
 * further into the file, errors with --json, flags given twice or without
 * a value they need, `-o -`, --version, and progress bars on a terminal
 * (a pseudo-terminal from util-linux `script`).
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { roundedNumbers } from '../analyze/commands/save.js';
import { pageBytes } from './helpers/synth.js';
import { BIN, writeSynth } from './faults/harness.js';

const PS = 4096;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-manners-'));
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
const at = (name: string): string => path.join(work, name);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function ramsnap(args: string[], o: { cwd?: string } = {}): Promise<Run> {
  return new Promise((resolve) =>
    execFile(process.execPath, [BIN, ...args], { maxBuffer: 1 << 26, timeout: 30_000, cwd: o.cwd }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr }),
    ),
  );
}

/** Exactly one line on stderr, `ramsnap: CODE: ...`, and the exit status. */
function oneLine(r: Run, exit: number, code: string): string {
  expect(r.code, r.stderr).toBe(exit);
  expect(r.stderr).toMatch(new RegExp(`^ramsnap: ${code}: [^\\n]*\\n$`));
  return r.stderr.trimEnd();
}

/** Runs the binary with stdout on `fd` (a file or /dev/full). */
function withStdout(args: string[], fd: number): Promise<Run> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', fd, 'pipe'] });
    let stderr = '';
    c.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout: '', stderr }));
  });
}

/** Runs the binary and closes the read end of its stdout after the first bytes (`| head -c 1`). */
function closedEarly(args: string[]): Promise<Run & { got: number }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let got = 0;
    c.stdout.once('data', (d: Buffer) => {
      got = d.length;
      c.stdout.destroy();
    });
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    c.on('close', (code) => resolve({ code, stdout: '', stderr, got }));
  });
}

/** The binary on a pseudo-terminal (stdout and stderr both go to it): what a person at a terminal sees. */
function onTerminal(args: string[]): Run {
  const cmd = [process.execPath, BIN, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const haveScript = spawnSync('script', ['-qec', 'true', '/dev/null']).status === 0;

let snap: string;
let big: string;
let bigImage: string;

beforeAll(() => {
  expect(fs.existsSync(BIN), `${BIN} missing: run npm run build first`).toBe(true);
  snap = at('vm.snap');
  writeSynth(snap, { blocks: [{ name: 'pc.ram', usedLength: 4096 * PS, pages: new Map([[0, pageBytes(PS, 1)], [7, pageBytes(PS, 2)]]) }, { name: 'rom', usedLength: 4 * PS }] });
  // 128 MiB of guest memory, two pages present: large enough for a progress bar (64 MiB), a few KiB on disk.
  big = at('big.snap');
  writeSynth(big, { blocks: [{ name: 'pc.ram', usedLength: 128 << 20, pages: new Map([[0, pageBytes(PS, 3)], [30000, pageBytes(PS, 4)]]) }] });
  bigImage = at('big.raw');
  const fd = fs.openSync(bigImage, 'w');
  fs.writeSync(fd, pageBytes(PS, 5), 0, PS, 1 << 20);
  fs.ftruncateSync(fd, 128 << 20);
  fs.closeSync(fd);
});

describe('13.5 standard output that fails or closes', () => {
  it('13.5 a full stdout (/dev/full) is one IO_ENOSPC line and exit 1 for info, read and dump --state', async () => {
    const full = fs.openSync('/dev/full', 'w');
    try {
      for (const args of [
        ['info', snap],
        ['info', snap, '--json'],
        ['read', snap, '--block', 'pc.ram', '--at', '0', '--length', '1M'],
        ['read', snap, '--block', 'pc.ram', '--at', '0', '--length', '1M', '--raw'],
        ['dump', '--state', snap],
      ]) {
        const r = await withStdout(args, full);
        expect(r.stderr, args.join(' ')).toBe('ramsnap: IO_ENOSPC: cannot write to standard output: no space left on device\n');
        expect(r.code, args.join(' ')).toBe(1);
      }
    } finally {
      fs.closeSync(full);
    }
  });

  it('13.5 a pipe closed early (| head) ends the command quietly with status 0', async () => {
    for (const args of [
      ['read', snap, '--block', 'pc.ram', '--at', '0', '--length', '16M'],
      ['read', snap, '--block', 'pc.ram', '--at', '0', '--length', '16M', '--raw'],
    ]) {
      const r = await closedEarly(args);
      expect(r.got, args.join(' ')).toBeGreaterThan(0);
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r.code, args.join(' ')).toBe(0);
    }
  });
});

describe('13.17 smaller points', () => {
  it('13.17 --version prints the version in package.json (the CLI is an esbuild bundle)', async () => {
    const pkg = JSON.parse(fs.readFileSync(path.resolve('package.json'), 'utf8')) as { version: string };
    // From another directory: yargs' own lookup starts at the working directory, so inside the repository it finds package.json anyway.
    const r = await ramsnap(['--version'], { cwd: work });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${pkg.version}\n`);
  });

  it('13.17 info on a character device, a FIFO or a directory is NOT_A_FILE (and a FIFO does not hang)', async () => {
    const fifo = at('fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const chr = at('null');
    expect(spawnSync('mknod', [chr, 'c', '1', '3']).status).toBe(0);
    for (const [p, kind] of [
      [chr, 'a character device'],
      [fifo, 'a FIFO'],
      [work, 'a directory'],
    ]) {
      const line = oneLine(await ramsnap(['info', p]), 1, 'NOT_A_FILE');
      expect(line).toContain(`${p} is ${kind}, not a regular file`);
    }
  });

  it('13.17 a block device is read like a file (libvirt can save to one): its size comes from /sys', async (ctx) => {
    // A legacy stream (no 1 MiB alignment) placed so the file is a whole number of 512-byte sectors, as a loop device needs.
    const probe = at('probe.snap');
    const blocks = [{ name: 'pc.ram', usedLength: 16 * PS, pages: new Map([[3, pageBytes(PS, 6)]]) }];
    writeSynth(probe, { mappedRam: false, blocks });
    const offset = 512 - (fs.statSync(probe).size % 512) || 512;
    const file = at('disk.img');
    writeSynth(file, { mappedRam: false, blocks, streamOffset: offset });
    expect(fs.statSync(file).size % 512).toBe(0);
    const attach = spawnSync('losetup', ['-f', '--show', file], { encoding: 'utf8' });
    if (attach.status !== 0) return ctx.skip(`no loop device here: ${attach.stderr.trim()}`);
    const dev = attach.stdout.trim();
    try {
      const info = await ramsnap(['info', dev, '--offset', String(offset), '--json']);
      expect(info.code, info.stderr).toBe(0);
      expect(JSON.parse(info.stdout)).toMatchObject({ fileSize: fs.statSync(file).size, complete: true });
      const r = await ramsnap(['read', dev, '--offset', String(offset), '--block', 'pc.ram', '--at', String(3 * PS), '--length', '16', '--json']);
      expect(JSON.parse(r.stdout).hex).toBe(Buffer.from(pageBytes(PS, 6).subarray(0, 16)).toString('hex'));
    } finally {
      spawnSync('losetup', ['-d', dev]);
    }
  });

  it('13.17 BAD_MAGIC on a file whose stream starts further in says --offset N', async () => {
    const f = at('offset.snap');
    writeSynth(f, { streamOffset: 0x12345, blocks: [{ name: 'pc.ram', usedLength: 8 * PS, pages: new Map([[1, pageBytes(PS, 7)]]) }] });
    for (const cmd of ['info', 'verify', 'extract']) {
      const args = cmd === 'extract' ? [cmd, f, '-o', at('never')] : [cmd, f];
      const r = await ramsnap(args);
      expect(r.code, cmd).toBe(1);
      expect(r.stderr.trimEnd().split('\n').pop(), cmd).toMatch(/^ramsnap: BAD_MAGIC: not a QEMU migration stream at byte 0, but one starts at byte 74565 \(as saved with migrate file:PATH,offset=74565\): try --offset 74565/);
    }
    expect(fs.existsSync(at('never'))).toBe(false);
    const conv = await ramsnap(['convert', f, '-o', at('c.snap'), '--to', 'legacy']);
    expect(conv.stderr).toContain('try --offset 74565');
    expect((await ramsnap(['info', f, '--offset', '74565'])).code).toBe(0);
    // No stream anywhere: no hint.
    const txt = at('notes.txt');
    fs.writeFileSync(txt, 'a note: QEVM without its version is not a stream\n');
    const plain = oneLine(await ramsnap(['info', txt]), 1, 'BAD_MAGIC');
    expect(plain).not.toContain('--offset');
  });

  it('13.17 --json prints a JSON error object on stdout for errors, besides the line on stderr', async () => {
    const missing = await ramsnap(['info', at('missing.snap'), '--json']);
    oneLine(missing, 1, 'IO_ENOENT');
    expect(JSON.parse(missing.stdout)).toEqual({ ok: false, exitCode: 1, error: { code: 'IO_ENOENT', message: `cannot open ${at('missing.snap')}: no such file or directory`, path: at('missing.snap') } });
    const usage = await ramsnap(['read', snap, '--block', 'nope', '--at', '0', '--length', '1', '--json']);
    expect(usage.code).toBe(2);
    expect(JSON.parse(usage.stdout)).toMatchObject({ ok: false, exitCode: 2, error: { code: 'UNKNOWN_BLOCK', field: 'block' } });
    const format = at('bad.snap');
    fs.writeFileSync(format, 'not a snapshot at all');
    const bad = await ramsnap(['info', format, '--json']);
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.stdout)).toMatchObject({ ok: false, error: { code: 'BAD_MAGIC', field: 'file.magic', offset: 0 } });
    const flag = await ramsnap(['info', snap, '--json', '--no-such-flag']);
    expect(flag.code).toBe(2);
    expect(JSON.parse(flag.stdout)).toMatchObject({ ok: false, exitCode: 2, error: { code: 'USAGE' } });
    // Without --json stdout stays empty.
    expect((await ramsnap(['info', at('missing.snap')])).stdout).toBe('');
  });

  it('13.17 read --json --raw is a usage error', async () => {
    oneLine(await ramsnap(['read', snap, '--block', 'pc.ram', '--at', '0', '--length', '16', '--raw', '--json']), 2, 'USAGE');
  });

  it('13.17 -o - is refused (exit 2) by every command that writes, and no file named - appears', async () => {
    const d = at('dash');
    fs.mkdirSync(d);
    for (const args of [
      ['extract', snap, '-o', '-'],
      ['extract', snap, '--block', 'rom', '-o', '-'],
      ['create', '-o', '-', '--machine', 'pc-q35-10.0', '--ram', `rom=${bigImage}`],
      ['convert', snap, '-o', '-', '--to', 'legacy'],
      ['save', '--qmp', at('none.qmp'), '-o', '-'],
    ]) {
      const line = oneLine(await ramsnap(args, { cwd: d }), 2, 'BAD_OUTPUT');
      expect(line).toContain('-o - (standard output) is not supported');
    }
    expect(fs.readdirSync(d)).toEqual([]);
    // ./- is a file named "-", for whoever wants one.
    expect((await ramsnap(['extract', snap, '--block', 'rom', '-o', './-'], { cwd: d })).code).toBe(0);
    expect(fs.readdirSync(d)).toEqual(['-']);
  });

  it('13.17 a flag given twice is one usage line, not a printed JS array', async () => {
    const line = oneLine(await ramsnap(['read', snap, '--block', 'pc.ram', '--block', 'rom', '--at', '0', '--length', '1']), 2, 'USAGE');
    expect(line).toBe('ramsnap: USAGE: --block was given 2 times ("pc.ram", "rom"); give it once (see ramsnap --help)');
    oneLine(await ramsnap(['extract', snap, '-o', at('x'), '-o', at('y')]), 2, 'USAGE');
    // Flags that may repeat still do.
    const caps = await ramsnap(['options', '--cap', 'multifd=on', '--cap', 'x-ignore-shared=on', '--json']);
    expect(caps.code, caps.stderr).toBe(0);
  });

  it('13.17 options: errors carry the ramsnap: prefix; a bad flag value exits 2, a bad config file 1', async () => {
    const r = await ramsnap(['options', '--multifd-channels', 'abc']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('ramsnap: OPTION_TYPE: parameters.multifd-channels: multifd-channels must be an integer, got "abc"\n');
    const cfg = at('bad.json');
    fs.writeFileSync(cfg, JSON.stringify({ parameters: { 'downtime-limit': -1 } }));
    const c = await ramsnap(['options', '--check', cfg]);
    expect(c.code).toBe(1);
    expect(c.stderr).toMatch(/^ramsnap: OPTION_RANGE: parameters\.downtime-limit: [^\n]*\n$/);
  });

  it('13.17 --cap NAME without =on or =off is a usage error (exit 2), for options and save', async () => {
    const o = oneLine(await ramsnap(['options', '--cap', 'multifd']), 2, 'OPTION_TYPE');
    expect(o).toContain('say multifd=on or multifd=off');
    oneLine(await ramsnap(['save', '--qmp', at('none.qmp'), '-o', at('s.snap'), '--cap', 'multifd']), 2, 'OPTION_TYPE');
  });

  it('13.17 save --json rounds its numbers: times to 0.1 ms, rates to whole bytes per second', () => {
    const result = { pauseMs: 12.345678, fileSize: 4096, precopy: { pausedMs: 0.06, history: [{ lastPassMs: 3.14159, bandwidth: 123456.789, iteration: 1, elapsedMs: 10 }] } };
    expect(JSON.parse(JSON.stringify(result, roundedNumbers))).toEqual({
      pauseMs: 12.3,
      fileSize: 4096,
      precopy: { pausedMs: 0.1, history: [{ lastPassMs: 3.1, bandwidth: 123457, iteration: 1, elapsedMs: 10 }] },
    });
  });

  it.skipIf(!haveScript)('13.17 convert, create, patch and sparsify show progress on a terminal; nothing in a pipe or with --json', async () => {
    const f = at('progress.snap');
    fs.copyFileSync(big, f);
    const runs: [string, string[]][] = [
      ['convert', ['convert', big, '-o', at('p-conv.snap'), '--to', 'mapped-ram']],
      ['create', ['create', '-o', at('p-create.snap'), '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${bigImage}`]],
      ['patch', ['patch', f, '--block', 'pc.ram', '--at', '0', '--fill', '0', '--length', '64M']],
      ['sparsify', ['sparsify', f]],
    ];
    for (const [label, args] of runs) {
      const tty = onTerminal(args);
      expect(tty.code, `${label}: ${tty.stdout}`).toBe(0);
      expect(tty.stdout, label).toContain(`${label} [`);
      const mib = label === 'patch' ? 64 : 128;
      expect(tty.stdout, label).toContain(`| ${mib}/${mib} MiB`);
      const json = onTerminal([...args.map((a) => (a.startsWith(at('p-')) ? `${a}.json` : a)), '--json']);
      expect(json.code, `${label} --json: ${json.stdout}`).toBe(0);
      expect(json.stdout, `${label} --json`).not.toContain(`${label} [`);
      const piped = await ramsnap(args.map((a) => (a.startsWith(at('p-')) ? `${a}.piped` : a)));
      expect(piped.code, label).toBe(0);
      expect(piped.stderr, label).toBe('');
    }
  }, 120_000);
});
