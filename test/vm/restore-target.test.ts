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
import { restoreSnapshot } from '../../vm/restore.js';
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
        const key = msg.execute === 'qom-get' ? `qom-get ${String(msg.arguments?.path)} ${String(msg.arguments?.property)}` : msg.execute === 'qom-list' ? `qom-list ${String(msg.arguments?.path)}` : msg.execute;
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
      'human-monitor-command': () => `              Block Name    PSize              Offset               Used              Total                HVA  RO\r\n${ramblocks}\r\n`,
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
      await expect(restoreSnapshot(snap, file, { qmp: sock })).rejects.toMatchObject({
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
      const r = await restoreSnapshot(snap, file, { qmp: sock });
      expect(r.mode).toBe('mapped');
      expect(asked.indexOf('migrate-set-capabilities')).toBeLessThan(asked.indexOf('migrate-incoming'));
      // Removed afterwards.
      expect(fs.existsSync(uri.replace(/^file:/, ''))).toBe(false);
    } finally {
      server.close();
    }
  });
});
