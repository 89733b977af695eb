/**
 * `ramsnap save` against a real QEMU 10 guest that keeps dirtying memory
 * (fixtures/guest/dirty.elf, its RAM a shared file on /dev/shm): with each
 * built-in policy the guest is saved live and left paused; a fresh QEMU
 * without the shared file restores the snapshot, and its pmemsave equals
 * the source's memory at the pause byte for byte. The file's RAM part is
 * laid out exactly as QEMU's own one-pass mapped-ram save of the same guest
 * (same blocks at the same offsets), and the file is exactly as large as a
 * one-pass save of the same memory: passes never make it grow. Also: the
 * CLI, SIGKILL, SIGINT, an aborting policy, and bad sockets and flags.
 */
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { checkDirtyGuestMemory, readDirtyGuestRecord, startDirtyGuest, type DirtyGuest } from '../../fixtures/dirty-guest.js';
import { Qemu, qemuAvailable, sleep } from '../../fixtures/qemu.js';
import { Snapshot } from '../../reader/snapshot.js';
import { liveSave } from '../../vm/live-save.js';
import { builtinPolicy } from '../../vm/policies.js';

const HAVE_QEMU = qemuAvailable();
const BIN = path.resolve('dist/analyze/bin.js');
const MiB = 1 << 20;
const MEMORY = 128 * MiB;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-save-'));
let guest: DirtyGuest | undefined;
afterEach(async () => {
  await guest?.stop();
  guest = undefined;
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

/** A dirtying guest with a second QMP socket for ramsnap (QEMU serves one client per socket). */
async function start(name: string): Promise<{ g: DirtyGuest; sock: string }> {
  const dir = fs.mkdtempSync(path.join(work, `${name}-`));
  const sock = path.join(dir, 'save.qmp');
  const g = await startDirtyGuest({
    dir,
    memory: MEMORY,
    // 16 MiB written over and over, with a hot MiB: the passes have something to chase.
    params: { ws: 16 * MiB, hot: 1 * MiB, hotRate: 2, delay: 2000 },
    extraArgs: ['-qmp', `unix:${sock},server=on,wait=off`],
  });
  guest = g;
  return { g, sock };
}

/** A fresh QEMU restores `file` (no shared file, no kernel), and pmemsave gives its RAM. */
async function restore(g: DirtyGuest, file: string, name: string): Promise<Buffer> {
  const dir = fs.mkdtempSync(path.join(work, `${name}-dst-`));
  const q = await Qemu.start({ binary: 'qemu-system-x86_64', args: g.destinationArgs, dir, incoming: true });
  try {
    await q.setCapabilities({ 'mapped-ram': true });
    await q.cmd('migrate-incoming', { uri: `file:${file}`, 'exit-on-error': false });
    await q.waitMigration();
    const out = path.join(dir, 'restored.pmem');
    await q.pmemsave(out, g.size);
    return fs.readFileSync(out);
  } finally {
    await q.quit();
  }
}

async function layout(file: string): Promise<string[]> {
  const snap = await Snapshot.open(file);
  try {
    return snap.blocks.map((b) => `${b.name} ${b.usedLength} @${b.mappedRam?.pagesOffset}`);
  } finally {
    await snap.close();
  }
}

describe.skipIf(!HAVE_QEMU)('ramsnap save against a dirtying QEMU 10 guest', () => {
  for (const policy of ['classic', 'threshold', 'downtime'] as const) {
    it(`${policy}: restores into a fresh QEMU exactly as the guest was at the pause`, async () => {
      const { g, sock } = await start(policy);
      const before = readDirtyGuestRecord(g.ramPath).writes;
      await sleep(200);
      expect(readDirtyGuestRecord(g.ramPath).writes).toBeGreaterThan(before);
      const out = path.join(work, `${policy}.snap`);
      const passes: number[] = [];
      const r = await liveSave({
        qmp: sock,
        output: out,
        policy: builtinPolicy(policy, { thresholdBytes: 4 * MiB, downtimeLimitMs: 300 }),
        then: 'stop',
        channels: 2,
        onPass: (s) => passes.push(s.lastPassBytes),
      });
      // Paused: the shared file is the guest's memory at the pause, and it holds still.
      const atPause = fs.readFileSync(g.ramPath);
      await sleep(100);
      expect(fs.readFileSync(g.ramPath).equals(atPause)).toBe(true);
      const check = checkDirtyGuestMemory(atPause);
      expect(check.problems).toEqual([]);
      expect(check.consistent).toBe(true);
      expect(r.precopy.iterations).toBe(passes.length);
      expect(r.precopy.iterations).toBeGreaterThanOrEqual(1);
      expect(r.blocks.find((b) => b.shared)?.name).toBe('pc.ram');

      expect(spawnSync('node', [BIN, 'verify', out], { encoding: 'utf8' }).status).toBe(0);
      const restored = await restore(g, out, policy);
      expect(restored.length).toBe(atPause.length);
      expect(restored.equals(atPause)).toBe(true);

      // QEMU's own one-pass mapped-ram save of the same machine (a fresh one: a VM paused by a
      // migration cannot migrate again): the same blocks at the same offsets.
      const qemuFile = path.join(work, `${policy}.qemu.snap`);
      const q = await Qemu.start({ binary: 'qemu-system-x86_64', args: g.destinationArgs, dir: fs.mkdtempSync(path.join(work, `${policy}-one-`)) });
      try {
        await q.setCapabilities({ 'mapped-ram': true });
        await q.cmd('migrate-set-parameters', { 'max-bandwidth': 0 });
        await q.cmd('migrate', { uri: `file:${qemuFile}` });
        await q.waitMigration();
      } finally {
        await q.quit();
      }
      expect(await layout(out)).toEqual(await layout(qemuFile));
      // Left paused by its save (postmigrate): QEMU would refuse to save it again, and ramsnap says so first.
      const again = spawnSync('node', [BIN, 'save', '--qmp', sock, '-o', path.join(work, `${policy}.again.snap`)], { encoding: 'utf8' });
      expect(again.status).toBe(1);
      expect(again.stderr.trim()).toMatch(/^ramsnap: GUEST_STATE: the guest is paused by an earlier migration or save \(postmigrate\)/);
      const ours = fs.statSync(out).size;
      const theirs = fs.statSync(qemuFile).size;
      // Only the stream tail differs: QEMU writes a variable number of empty RAM part sections.
      expect(Math.abs(ours - theirs)).toBeLessThan(4096);
      // And exactly the size of a one-pass save of the same memory: ramsnap create over the same template.
      const memFile = path.join(work, `${policy}.mem`);
      fs.writeFileSync(memFile, atPause);
      const onePass = path.join(work, `${policy}.one.snap`);
      const c = spawnSync('node', [BIN, 'create', '-o', onePass, '--template', out, '--ram', `pc.ram=${memFile}`], { encoding: 'utf8' });
      expect(c.stderr).toBe('');
      expect(ours).toBe(fs.statSync(onePass).size);
      for (const f of [qemuFile, out, memFile, onePass]) fs.rmSync(f);
    }, 120_000);
  }

  it('the CLI: --then resume lets the guest run on; a second save to the same target is refused while one file is there', async () => {
    const { g, sock } = await start('cli');
    const out = path.join(work, 'cli.snap');
    const r = spawnSync('node', [BIN, 'save', '--qmp', sock, '-o', out, '--policy', 'classic', '--max-bandwidth', '0'], { encoding: 'utf8' });
    expect(r.stderr).toMatch(/^pass 1: /m);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/saved pc-i440fx-10\.0 in \d+ passes .* guest resumed/);
    const status = (await g.qemu.cmd('query-status')) as { status: string };
    expect(status.status).toBe('running');
    const w = readDirtyGuestRecord(g.ramPath).writes;
    await sleep(200);
    expect(readDirtyGuestRecord(g.ramPath).writes).toBeGreaterThan(w);
    // The capabilities ramsnap set for QEMU's part are back as they were.
    const caps = (await g.qemu.cmd('query-migrate-capabilities')) as { capability: string; state: boolean }[];
    expect(caps.find((c) => c.capability === 'x-ignore-shared')?.state).toBe(false);

    const again = spawnSync('node', [BIN, 'save', '--qmp', sock, '-o', out], { encoding: 'utf8' });
    expect(again.status).toBe(1);
    expect(again.stderr.trim().split('\n').pop()).toMatch(/^ramsnap: OUTPUT_EXISTS: /);
    expect(((await g.qemu.cmd('query-status')) as { status: string }).status).toBe('running');
  }, 120_000);

  it('SIGKILL during the passes: nothing at the target, the guest runs on; the next save removes the leftovers and succeeds', async () => {
    const { g, sock } = await start('kill');
    const out = path.join(work, 'kill.snap');
    const killed = await new Promise<string>((resolve) => {
      // A slow save (2 MiB/s, many passes) so the kill lands inside a pass.
      const child = spawn('node', [BIN, 'save', '--qmp', sock, '-o', out, '--policy', 'classic', '--max-bandwidth', '2M']);
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (/^guest /m.test(stderr) && !child.killed) setTimeout(() => child.kill('SIGKILL'), 300);
      });
      child.on('close', () => resolve(stderr));
    });
    expect(killed).not.toMatch(/guest paused/);
    expect(fs.existsSync(out)).toBe(false);
    const left = fs.readdirSync(work).filter((f) => f.startsWith('.kill.snap'));
    expect(left.length).toBeGreaterThan(0); // the temporary file and the lock of the killed process
    expect(((await g.qemu.cmd('query-status')) as { status: string }).status).toBe('running');

    const again = spawnSync('node', [BIN, 'save', '--qmp', sock, '-o', out, '--max-bandwidth', '0', '-q'], { encoding: 'utf8' });
    expect(again.status).toBe(0);
    expect(again.stderr).toMatch(/removed stale temporary file/);
    expect(fs.readdirSync(work).filter((f) => f.startsWith('.kill.snap'))).toEqual([]);
    expect(spawnSync('node', [BIN, 'verify', out], { encoding: 'utf8' }).status).toBe(0);
  }, 120_000);

  it('SIGINT: one line SAVE_ABORTED, exit 130, nothing at the target, no temporary file, the guest runs on', async () => {
    const { g, sock } = await start('sigint');
    const out = path.join(work, 'sigint.snap');
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn('node', [BIN, 'save', '--qmp', sock, '-o', out, '--max-bandwidth', '2M']);
      let stderr = '';
      let sent = false;
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (!sent && /^guest /m.test(stderr)) {
          sent = true;
          setTimeout(() => child.kill('SIGINT'), 300);
        }
      });
      child.on('close', (code) => resolve({ code, stderr }));
    });
    // 128 + SIGINT, as for every command a signal stops (issue 13.4).
    expect(r.code).toBe(130);
    expect(r.stderr.trim().split('\n').pop()).toBe('ramsnap: SAVE_ABORTED: the save was interrupted; nothing was left at the target');
    expect(fs.readdirSync(work).filter((f) => f.startsWith('.sigint.snap') || f === 'sigint.snap')).toEqual([]);
    expect(((await g.qemu.cmd('query-status')) as { status: string }).status).toBe('running');
  }, 120_000);

  it('a policy that aborts: nothing at the target, no temporary file, the guest runs on, capabilities restored', async () => {
    const { g, sock } = await start('abort');
    const out = path.join(work, 'abort.snap');
    await expect(
      liveSave({ qmp: sock, output: out, policy: (s) => (s.iteration >= 2 ? 'abort' : 'continue'), then: 'stop' }),
    ).rejects.toMatchObject({ code: 'SAVE_ABORTED' });
    expect(fs.readdirSync(work).filter((f) => f.startsWith('.abort.snap') || f === 'abort.snap')).toEqual([]);
    expect(((await g.qemu.cmd('query-status')) as { status: string }).status).toBe('running');
  }, 120_000);

  it('bad input gets one line and a code: no socket, a --ram without a file', () => {
    const none = spawnSync('node', [BIN, 'save', '--qmp', path.join(work, 'nope.sock'), '-o', path.join(work, 'x.snap')], { encoding: 'utf8' });
    expect(none.status).toBe(1);
    expect(none.stderr.trim()).toMatch(/^ramsnap: QMP_CONNECT: cannot connect to QMP socket .*nope\.sock: ENOENT$/);
    const ram = spawnSync('node', [BIN, 'save', '--qmp', 'x', '-o', 'y', '--ram', 'nofile'], { encoding: 'utf8' });
    expect(ram.status).toBe(2);
    expect(ram.stderr.trim()).toMatch(/^ramsnap: USAGE: --ram "nofile": expected BLOCK=FILE/);
  });

  it('a socket that does not speak QMP: QMP_CONNECT, not a hang', async () => {
    const sock = path.join(work, 'http.sock');
    const server = net.createServer((c) => c.end('HTTP/1.0 400 Bad Request\r\n\r\n'));
    await new Promise<void>((r) => server.listen(sock, r));
    try {
      const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn('node', [BIN, 'save', '--qmp', sock, '-o', path.join(work, 'y.snap')]);
        let stderr = '';
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('close', (code) => resolve({ code, stderr }));
      });
      expect(r.code).toBe(1);
      expect(r.stderr.trim()).toMatch(/^ramsnap: QMP_CONNECT: .*http\.sock is not a QMP socket: /);
    } finally {
      server.close();
    }
  });
});
