/**
 * The committed real-QEMU fixtures (fixtures/data, see fixtures/make.ts):
 * the model the reader builds must say what QEMU said when it wrote the
 * file, and guest memory read through the reader must equal QEMU's own
 * pmemsave byte for byte. No QEMU needed.
 */
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Snapshot } from '../reader/snapshot.js';
import { testBit } from '../format/bitmap.js';
import {
  absentPageRanges,
  compareWithPmem,
  fixtureFiles,
  loadCatalog,
  nonZeroPages,
  releaseFixtures,
  type CatalogEntry,
  type FixtureFiles,
} from './helpers/fixtures.js';
import { blobBytes } from '../fixtures/make.js';

const catalog = loadCatalog();

afterAll(() => releaseFixtures());

describe('fixture catalog', () => {
  it('covers the matrix', () => {
    const names = catalog.fixtures.map((f) => f.name);
    for (const n of ['q35-mapped-ram', 'q35-multifd4', 'q35-legacy-live', 'pc-mapped-ram', 'pc-legacy', 'q35-offset', 'q35-libvirt-sparse', 'aarch64-virt-mapped-ram', 'sparc64-sun4u-mapped-ram']) {
      expect(names).toContain(n);
    }
  });

  it('has a legacy fixture in which QEMU sent some page more than once', () => {
    // By QEMU's own count: more page records (normal + duplicate) than pages.
    const legacy = catalog.fixtures.filter((f) => !f.mappedRam);
    const pages = (f: CatalogEntry): number => f.blocks.reduce((a, b) => a + b.usedLength / f.pageSize, 0);
    expect(legacy.some((f) => f.qemuRam.normal + f.qemuRam.duplicate > pages(f))).toBe(true);
    expect(legacy.some((f) => Object.values(f.repeatedPages ?? {}).some((n) => n > 0))).toBe(true);
  });

  it('keeps every comparison inside its block and the pmem file, and explains every exclusion', () => {
    for (const f of catalog.fixtures) {
      for (const c of f.comparisons) {
        const block = f.blocks.find((b) => b.name === c.block);
        expect(block, `${f.name}: ${c.block}`).toBeDefined();
        expect(c.blockOffset + c.length).toBeLessThanOrEqual(block!.usedLength);
        expect(c.guestAddr + c.length).toBeLessThanOrEqual(f.pmemSize);
        expect(c.excludeWhy).toHaveLength(c.exclude.length);
        for (const [from, to] of c.exclude) {
          expect(from).toBeGreaterThanOrEqual(c.guestAddr);
          expect(to).toBeLessThanOrEqual(c.guestAddr + c.length);
        }
      }
      expect(f.unexplained, f.name).toEqual([]);
    }
  });
});

describe.each(catalog.fixtures.map((f) => [f.name, f] as [string, CatalogEntry]))('%s', (name, entry) => {
  let files: FixtureFiles;
  let snap: Snapshot;

  beforeAll(async () => {
    files = await fixtureFiles(name);
    snap = await Snapshot.open(files.snap, entry.open);
  });
  afterAll(async () => {
    await snap?.close();
  });

  it('opens complete, with the machine, capabilities and page size QEMU used', () => {
    const m = snap.model;
    expect(m.error).toBeUndefined();
    expect(m.complete).toBe(true);
    expect(m.streamOffset).toBe(entry.streamOffset);
    expect(m.version).toBe(3);
    expect(m.configuration?.machine).toBe(entry.machineType);
    expect([...(m.configuration?.capabilities ?? [])].sort()).toEqual([...entry.streamCapabilities].sort());
    expect(m.mappedRam).toBe(entry.mappedRam);
    expect(m.pageSize).toBe(entry.pageSize);
    expect(m.devices.length).toBeGreaterThan(0);
    if (entry.vmdesc === false) {
      // suppress-vmdesc=on: the device sections were found by their footers, and said to be unchecked.
      expect(m.vmdesc).toBeUndefined();
      expect(m.warnings.map((w) => w.code)).toContain('DEVICE_STATE_UNCHECKED');
    } else {
      expect(m.vmdesc).toBeDefined();
      expect(m.vmdesc!.desc.page_size).toBe(entry.pageSize);
    }
    expect(m.eofOffset).toBeDefined();
  });

  it('lists the RAMBlocks QEMU had, in order, with their sizes', () => {
    expect(snap.blocks.map((b) => [b.name, b.usedLength])).toEqual(entry.blocks.map((b) => [b.name, b.usedLength]));
    for (const b of snap.blocks) {
      expect(b.pageSize).toBe(entry.pageSize);
      expect(b.pages * b.pageSize).toBe(b.usedLength);
      if (entry.mappedRam) {
        expect(b.mappedRam).toBeDefined();
        expect(b.bitmap).toBeDefined();
      } else {
        expect(b.legacy).toBeDefined();
      }
    }
    expect(snap.model.ramTotal).toBe(entry.blocks.reduce((a, b) => a + b.usedLength, 0));
  });

  if (entry.libvirt) {
    it('finds the stream behind the libvirt header on its own', () => {
      const h = snap.model.libvirt!;
      expect(h).toBeDefined();
      expect(h.partial).toBe(false);
      expect(h.format).toBe(6);
      expect(h.formatName).toBe('sparse');
      expect(h.dataLength).toBe(entry.libvirt!.dataLength);
      expect(h.cookieOffset).toBe(entry.libvirt!.cookieOffset);
      expect(h.wasRunning).toBe(entry.libvirt!.wasRunning);
      expect(h.streamOffset).toBe(entry.streamOffset);
    });
  }

  if (entry.open.offset !== undefined) {
    it('needs the offset: the bytes before it are not a QEMU stream', async () => {
      await expect(Snapshot.open(files.snap)).rejects.toThrow();
    });
  }

  for (const [i, cmp] of entry.comparisons.entries()) {
    const excl = cmp.exclude.map(([a, b]) => `0x${a.toString(16)}-0x${b.toString(16)}`).join(',');
    it(`reads ${cmp.block} [0x${cmp.blockOffset.toString(16)}, +0x${cmp.length.toString(16)}) equal to pmemsave at 0x${cmp.guestAddr.toString(16)}${excl ? ` except ${excl}` : ''} (#${i})`, async () => {
      const { compared, mismatches } = await compareWithPmem(snap, files.pmem, cmp);
      expect(mismatches).toEqual([]);
      const excluded = cmp.exclude.reduce((a, [x, y]) => a + (y - x), 0);
      expect(compared).toBe(cmp.length - excluded);
    });
  }

  if (!entry.guestRan) {
    it('pmemsave shows the loaded blobs (the guest never ran)', () => {
      const fd = fs.openSync(files.pmem, 'r');
      try {
        for (const b of entry.blobs) {
          const got = Buffer.alloc(b.length);
          fs.readSync(fd, got, 0, b.length, b.addr - entry.pmemBase);
          expect(got.equals(blobBytes(b, entry.pageSize)), `blob at 0x${b.addr.toString(16)}`).toBe(true);
        }
      } finally {
        fs.closeSync(fd);
      }
    });
  }

  if (entry.mappedRam) {
    it('reads pages whose bitmap bit is clear as zero, stale bytes in the file or not', async () => {
      const fd = fs.openSync(files.snap, 'r');
      try {
        for (const b of snap.blocks) {
          const clear: [number, number][] = [];
          let stale = 0;
          const page = Buffer.alloc(b.pageSize);
          const zero = Buffer.alloc(b.pageSize);
          for (let p = 0; p < b.pages; p++) {
            if (testBit(b.bitmap!, p)) continue;
            const last = clear[clear.length - 1];
            if (last && last[1] === p) last[1] = p + 1;
            else clear.push([p, p + 1]);
            fs.readSync(fd, page, 0, b.pageSize, b.mappedRam!.pagesOffset + p * b.pageSize);
            if (!page.equals(zero)) stale++;
          }
          expect(await nonZeroPages(snap, b.name, clear), b.name).toEqual([]);
          expect(stale, `stale pages of ${b.name}`).toBe(entry.stalePages?.[b.name] ?? 0);
        }
      } finally {
        fs.closeSync(fd);
      }
    });
  } else {
    it('reads pages never sent, or sent as ZERO records, as zero', async () => {
      for (const b of snap.blocks) {
        expect(await nonZeroPages(snap, b.name, absentPageRanges(snap, b.name)), b.name).toEqual([]);
      }
    });

    it('indexes as many page records as QEMU says it sent', () => {
      const records = snap.blocks.reduce((a, b) => a + b.legacy!.recordCount, 0);
      expect(records).toBe(entry.qemuRam.normal + entry.qemuRam.duplicate);
      const withData = snap.blocks.reduce((a, b) => a + b.pagesPresent, 0);
      expect(withData).toBeLessThanOrEqual(entry.qemuRam.normal);
    });

    it('counts the same repeated page records as when the fixture was made', () => {
      for (const b of snap.blocks) {
        const distinct = b.legacy!.runs.reduce((a, r) => a + r.count, 0);
        expect(b.legacy!.recordCount - distinct, b.name).toBe(entry.repeatedPages?.[b.name] ?? 0);
      }
    });
  }
});
