import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Snapshot } from '../reader/snapshot.js';
import { SnapshotWriter } from '../writer/snapshot-writer.js';
import { deviceStateOf } from '../writer/template.js';
import { planLayout } from '../format/layout.js';
import { fixtureFiles, loadCatalog } from './helpers/fixtures.js';
import { pageBytes } from './helpers/synth.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-writer-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Copies every present page of `from` into a writer laid out like it. */
async function rewrite(from: Snapshot, out: string): Promise<void> {
  const m = from.model;
  const w = await SnapshotWriter.create(out, {
    machine: m.configuration!.machine,
    pageSize: m.pageSize,
    blocks: from.blocks.map((b) => ({ name: b.name, usedLength: b.usedLength })),
    capabilities: m.configuration!.capabilities,
    targetPageBits: m.configuration!.targetPageBits,
    ramSectionId: m.ramSectionId,
    device: await deviceStateOf(from),
    fsync: false,
  });
  for (const b of from.blocks) {
    for (const r of from.presentRuns(b)) await w.writePages(b.name, r.first, await from.read(b, r.first * b.pageSize, r.count * b.pageSize));
  }
  await w.finalize();
}

describe('SnapshotWriter', () => {
  // QEMU's layout, reproduced: the same pages and device state give QEMU's own file, byte for byte.
  // Not pseries and s390x: QEMU interleaves their iterable sections' parts (spapr/htab, storage attributes)
  // with the RAM section's, ramsnap's writer puts them after the RAM END.
  const plain = loadCatalog().fixtures.filter(
    (f) => f.mappedRam && f.streamOffset === 0 && !f.name.includes('live') && !f.name.includes('multifd4') && f.arch !== 'ppc64' && f.arch !== 's390x',
  );
  for (const f of plain) {
    it(`rebuilds ${f.name} byte for byte as QEMU wrote it`, async () => {
      const { snap } = await fixtureFiles(f.name);
      const from = await Snapshot.open(snap);
      const out = path.join(dir, `${f.name}.rebuilt`);
      await rewrite(from, out);
      await from.close();
      const a = fs.readFileSync(out);
      const b = fs.readFileSync(snap);
      expect(a.length).toBe(b.length);
      expect(Buffer.compare(a, b)).toBe(0);
    });
  }

  it('rewriting pages never grows the file, and the last write wins', async () => {
    const ps = 4096;
    const sizes: number[] = [];
    for (const rounds of [1, 5]) {
      const out = path.join(dir, `rewrites-${rounds}`);
      const w = await SnapshotWriter.create(out, { machine: 'pc-q35-10.0', pageSize: ps, blocks: [{ name: 'pc.ram', usedLength: 64 * ps }], fsync: false });
      for (let r = 0; r < rounds; r++) {
        for (let p = 0; p < 64; p += 3) await w.writePages('pc.ram', p, pageBytes(ps, r * 1000 + p));
        await w.writePages('pc.ram', 9, new Uint8Array(ps)); // a page that became zero
      }
      await w.finalize();
      sizes.push(fs.statSync(out).size);
      const s = await Snapshot.open(out);
      expect(Buffer.from(await s.read('pc.ram', 3 * ps, ps)).equals(Buffer.from(pageBytes(ps, (rounds - 1) * 1000 + 3)))).toBe(true);
      expect((await s.read('pc.ram', 9 * ps, ps)).every((x) => x === 0)).toBe(true);
      await s.close();
    }
    expect(sizes[1]).toBe(sizes[0]);
  });

  it('nothing is at the target until finalize, and abort leaves nothing', async () => {
    const out = path.join(dir, 'aborted');
    const w = await SnapshotWriter.create(out, { machine: 'pc-q35-10.0', pageSize: 4096, blocks: [{ name: 'pc.ram', usedLength: 4096 * 8 }] });
    await w.writePages('pc.ram', 0, pageBytes(4096, 1));
    expect(fs.existsSync(out)).toBe(false);
    expect(fs.existsSync(w.tempPath)).toBe(true);
    await w.abort();
    expect(fs.existsSync(w.tempPath)).toBe(false);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('refuses an existing target unless forced', async () => {
    const out = path.join(dir, 'exists');
    fs.writeFileSync(out, 'keep');
    await expect(SnapshotWriter.create(out, { machine: 'm', pageSize: 4096, blocks: [{ name: 'a', usedLength: 4096 }] })).rejects.toMatchObject({ code: 'OUTPUT_EXISTS' });
    expect(fs.readFileSync(out, 'utf8')).toBe('keep');
  });

  it('plans QEMU offsets: 1 MiB-aligned page regions, bitmap after the header, stream after the pages', () => {
    const plan = planLayout({ machine: 'pc-q35-10.0', pageSize: 4096, blocks: [{ name: 'pc.ram', usedLength: 32 << 20 }, { name: '/rom@etc/acpi/tables', usedLength: 128 << 10 }] });
    expect(plan.blocks[0]).toMatchObject({ headerOffset: 0x6f, bitmapOffset: 0x8b, bitmapSize: 1024, pagesOffset: 0x100000, end: 0x2100000 });
    expect(plan.blocks[1]).toMatchObject({ entryOffset: 0x2100000, bitmapOffset: 0x2100039, pagesOffset: 0x2200000 });
  });
});
