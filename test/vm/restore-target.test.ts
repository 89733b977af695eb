/**
 * restore's target checks against a scripted QMP server: the refusals that
 * a real QEMU cannot easily be made to show here (a vhost-user device needs
 * its backend process running).
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fixtureFiles } from '../helpers/fixtures.js';
import { Snapshot } from '../../reader/snapshot.js';
import { pendingUndos } from '../../writer/cleanup.js';
import type { FileMapping } from '../../writer/mapped.js';
import { restoreSnapshot, type RestoreOptions } from '../../vm/restore.js';
import { planRestore } from '../../vm/restore-plan.js';

type Reply = (args: Record<string, unknown> | undefined) => unknown;

/** A QMP server that answers from `replies` by command name (and qom-get property), and records what it was asked. */
function fakeQmp(sock: string, replies: Record<string, Reply>): { server: net.Server; asked: string[] } {
  const asked: string[] = [];
  const server = net.createServer((c) => {
    c.write(JSON.stringify({ QMP: { version: { qemu: { major: 10, minor: 0, micro: 2 } }, capabilities: [] } }) + '\n');
    let buf = '';
    c.on('data', (d) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: Record<string, unknown>; id?: string };
        buf = buf.slice(nl + 1);
        const a = msg.arguments;
        const key =
          msg.execute === 'qom-get'
            ? `qom-get ${String(a?.path)} ${String(a?.property)}`
            : msg.execute === 'qom-list'
              ? `qom-list ${String(a?.path)}`
              : msg.execute === 'human-monitor-command'
                ? `hmp ${String(a?.['command-line'])}`
                : msg.execute;
        asked.push(key);
        const r = replies[key];
        c.write(JSON.stringify(r ? { return: r(msg.arguments), id: msg.id } : { error: { class: 'GenericError', desc: `no reply for ${key}` }, id: msg.id }) + '\n');
      }
    });
  });
  server.listen(sock);
  return { server, asked };
}

describe('restore checks the target before loading anything', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-restore-target-'));
  let file: string;
  let snap: Snapshot;
  beforeAll(async () => {
    file = (await fixtureFiles('q35-mapped-ram')).snap;
    snap = await Snapshot.open(file);
  });
  afterAll(async () => {
    await snap.close();
    fs.rmSync(work, { recursive: true, force: true });
  });

  /** QEMU's mapping of the snapshot at pc.ram's page region, as /proc would show it. */
  const qemuMaps = (): FileMapping[] => [{ pid: 1234, command: 'qemu-system-x86', offsets: [planRestore(snap, file).pagesOffset] }];

  /** Replies of a target that matches the snapshot in every checked way. */
  const matching = (): Record<string, Reply> => {
    const plan = planRestore(snap, file);
    const ramblocks = snap.blocks
      .map((b) => `${b.name.padStart(24)}    4 KiB  0x0000000000000000 0x${b.usedLength.toString(16).padStart(16, '0')} 0x${b.usedLength.toString(16).padStart(16, '0')} 0x00007f0000000000 rw`)
      .join('\r\n');
    return {
      qmp_capabilities: () => ({}),
      'query-status': () => ({ status: 'inmigrate', running: false }),
      'query-migrate': () => ({}),
      'qom-get /machine type': () => `${snap.model.configuration!.machine}-machine`,
      'hmp info network': () => 'virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n \\ net0: index=0,type=user,net=10.0.2.0,restrict=off\r\n',
      'hmp info ramblock': () => `              Block Name    PSize              Offset               Used              Total                HVA  RO\r\n${ramblocks}\r\n`,
      'qom-list /objects': () => [{ name: 'pc.ram', type: 'child<memory-backend-file>' }],
      'qom-get /objects/pc.ram mem-path': () => file,
      'qom-get /objects/pc.ram offset': () => plan.pagesOffset,
      'qom-get /objects/pc.ram share': () => false,
      'qom-get /objects/pc.ram readonly': () => true,
      'qom-get /objects/pc.ram rom': () => 'off',
      'qom-get /machine memory-backend': () => '/objects/pc.ram',
      'qom-list /machine/peripheral': () => [],
      'qom-list /machine/peripheral-anon': () => [],
    };
  };

  it('a vhost-user device is refused (it needs share=on RAM) and nothing is loaded', async () => {
    const sock = path.join(work, 'vhost.sock');
    const replies = matching();
    replies['qom-list /machine/peripheral-anon'] = () => [{ name: 'device[0]', type: 'child<vhost-user-fs-pci>' }];
    const { server, asked } = fakeQmp(sock, replies);
    try {
      await expect(restoreSnapshot(snap, file, { qmp: sock, mappedBy: qemuMaps })).rejects.toMatchObject({
        code: 'RESTORE_TARGET_MISMATCH',
        field: 'devices',
        message: expect.stringMatching(/device device\[0\] \(vhost-user-fs-pci\) needs guest RAM shared/),
      });
      expect(asked).not.toContain('migrate-incoming');
      expect(asked).not.toContain('migrate-set-capabilities');
    } finally {
      server.close();
    }
  });

  it('a matching target gets the capabilities and the small stream', async () => {
    const sock = path.join(work, 'ok.sock');
    const replies = matching();
    let uri = '';
    replies['migrate-set-capabilities'] = () => ({});
    replies['migrate-incoming'] = (a) => {
      uri = String(a?.uri);
      // The stream exists while QEMU loads it.
      expect(fs.existsSync(uri.replace(/^file:/, ''))).toBe(true);
      return {};
    };
    replies['query-migrate'] = () => (uri ? { status: 'completed' } : {});
    const { server, asked } = fakeQmp(sock, replies);
    try {
      const r = await restoreSnapshot(snap, file, { qmp: sock, mappedBy: qemuMaps });
      expect(r.mode).toBe('mapped');
      expect(asked.indexOf('migrate-set-capabilities')).toBeLessThan(asked.indexOf('migrate-incoming'));
      // Removed afterwards.
      expect(fs.existsSync(uri.replace(/^file:/, ''))).toBe(false);
    } finally {
      server.close();
    }
  });

  /** Runs a restore against `replies` and returns the error it must fail with, and what it asked. */
  const refused = async (name: string, replies: Record<string, Reply>, o: Partial<RestoreOptions> = {}): Promise<{ err: unknown; asked: string[] }> => {
    const sock = path.join(work, `${name}.sock`);
    const { server, asked } = fakeQmp(sock, replies);
    try {
      const err = await restoreSnapshot(snap, file, { qmp: sock, mappedBy: qemuMaps, ...o }).then(
        () => undefined,
        (e: unknown) => e,
      );
      return { err, asked };
    } finally {
      server.close();
    }
  };

  it('a vhost-user network backend (behind an ordinary virtio-net device) is refused', async () => {
    const replies = matching();
    replies['hmp info network'] = () => 'virtio-net-pci.0: index=0,type=nic,model=virtio-net-pci\r\n \\ net0: index=0,type=vhost-user,chardev=char0\r\n';
    const { err, asked } = await refused('vhost-net', replies);
    expect(err).toMatchObject({ code: 'RESTORE_TARGET_MISMATCH', field: 'devices', message: expect.stringMatching(/network backend net0 is vhost-user/) });
    expect(asked).not.toContain('migrate-incoming');
  });

  it('a backend whose file no process maps at the page region (the snapshot was replaced after QEMU started) is refused', async () => {
    const { err, asked } = await refused('unmapped', matching(), { mappedBy: () => [] });
    expect(err).toMatchObject({ code: 'RESTORE_TARGET_MISMATCH', field: 'backend', message: expect.stringMatching(/no process maps .* at offset \d+/) });
    expect(asked).not.toContain('migrate-incoming');
  });

  it('a relative mem-path is refused (QEMU resolved it against its own directory)', async () => {
    const replies = matching();
    replies['qom-get /objects/pc.ram mem-path'] = () => path.basename(file);
    const { err } = await refused('relative', replies);
    expect(err).toMatchObject({ code: 'RESTORE_TARGET_MISMATCH', message: expect.stringMatching(/relative path/) });
  });

  it('a resizable block may differ in length up to its maximum; a fixed one may not', async () => {
    const grow = (maxFactor: number): Record<string, Reply> => {
      const replies = matching();
      const rows = snap.blocks.map((b) => {
        const used = b.name === '/rom@etc/acpi/tables' ? b.usedLength * 2 : b.usedLength;
        const total = b.name === '/rom@etc/acpi/tables' ? b.usedLength * maxFactor : used;
        return `${b.name.padStart(24)}    4 KiB  0x0000000000000000 0x${used.toString(16).padStart(16, '0')} 0x${total.toString(16).padStart(16, '0')} 0x00007f0000000000 rw`;
      });
      replies['hmp info ramblock'] = () => `              Block Name    PSize              Offset               Used              Total                HVA  RO\r\n${rows.join('\r\n')}\r\n`;
      let loaded = false;
      replies['migrate-set-capabilities'] = () => ({});
      replies['migrate-incoming'] = () => ((loaded = true), {});
      replies['query-migrate'] = () => (loaded ? { status: 'completed' } : {});
      return replies;
    };
    expect((await refused('resizable', grow(16))).err).toBeUndefined();
    expect((await refused('fixed', grow(2))).err).toMatchObject({ code: 'RESTORE_TARGET_MISMATCH', field: 'blocks' });
  });

  it('interrupted while QEMU loads: RESTORE_ABORTED, and the small stream is gone (also from the signal registry)', async () => {
    const replies = matching();
    const ac = new AbortController();
    let uri = '';
    let undosWhileLoading = -1;
    replies['migrate-set-capabilities'] = () => ({});
    replies['migrate-incoming'] = (a) => {
      uri = String(a?.uri);
      undosWhileLoading = pendingUndos();
      setTimeout(() => ac.abort(), 20);
      return {};
    };
    replies['query-migrate'] = () => (uri ? { status: 'active' } : {});
    const before = pendingUndos();
    const { err } = await refused('abort', replies, { signal: ac.signal });
    expect(err).toMatchObject({ code: 'RESTORE_ABORTED' });
    expect(undosWhileLoading).toBe(before + 1);
    expect(pendingUndos()).toBe(before);
    expect(fs.existsSync(path.dirname(uri.replace(/^file:/, '')))).toBe(false);
  });
});
