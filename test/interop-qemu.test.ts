/**
 * Fresh files from a live QEMU, not the committed ones: a few configurations
 * of fixtures/make.ts with new random blob content each run, read back and
 * compared byte for byte with QEMU's pmemsave. Skipped without QEMU.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuAvailable } from '../fixtures/qemu.js';
import { X86_CANDIDATE_EXCLUSIONS, blobsNotInPmem, fixtureSpecs, makeFixture, standardBlobs, type FixtureSpec } from '../fixtures/make.js';
import { Snapshot } from '../reader/snapshot.js';
import { absentPageRanges, compareWithPmem, nonZeroPages } from './helpers/fixtures.js';

/** One of each kind that matters on x86; aarch64 and sparc64 are covered by the committed fixtures. */
const CONFIGS = ['q35-mapped-ram', 'q35-multifd4', 'q35-legacy-live', 'q35-offset', 'pc-mapped-ram'];

describe.skipIf(!qemuAvailable())('interop with a live QEMU', () => {
  let work: string;
  beforeAll(() => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-interop-'));
  });
  afterAll(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  const specs = fixtureSpecs();
  for (const name of CONFIGS) {
    it(`${name}: the reader returns what pmemsave shows`, { timeout: 30_000 }, async () => {
      const base = specs.find((s) => s.name === name)!;
      const salt = (Math.random() * 2 ** 32) >>> 0;
      const spec: FixtureSpec = {
        ...base,
        blobs: standardBlobs(base.name, base.ramBase, base.memory, base.pageSize, undefined, salt),
        // One save per configuration: the repeated/stale-page hunt is the make script's job.
        want: undefined,
      };
      const { entry, snapPath, pmemPath } = await makeFixture(spec, path.join(work, name), 1);
      const context = `${name} (blob salt ${salt})`;

      expect(entry.notes, context).toEqual([]);
      expect(entry.unexplained, context).toEqual([]);
      if (!spec.run) expect(blobsNotInPmem(spec, pmemPath), context).toEqual([]);
      // Only the known x86 windows may be left out of the comparison.
      for (const c of entry.comparisons) {
        for (const [from, to] of c.exclude) {
          expect(X86_CANDIDATE_EXCLUSIONS.some((x) => x.from === from && x.to === to), `${context}: exclusion ${from}-${to}`).toBe(true);
        }
      }

      const snap = await Snapshot.open(snapPath, entry.open);
      try {
        const m = snap.model;
        expect(m.error).toBeUndefined();
        expect(m.complete).toBe(true);
        expect(m.streamOffset).toBe(entry.streamOffset);
        expect(m.configuration?.machine).toBe(entry.machineType);
        expect(m.configuration?.capabilities ?? []).toEqual(entry.streamCapabilities);
        expect(m.pageSize).toBe(entry.pageSize);
        expect(m.devices.length).toBeGreaterThan(0);
        expect(m.vmdesc).toBeDefined();
        expect(snap.blocks.map((b) => [b.name, b.usedLength])).toEqual(entry.blocks.map((b) => [b.name, b.usedLength]));

        for (const cmp of entry.comparisons) {
          const { mismatches } = await compareWithPmem(snap, pmemPath, cmp);
          expect(mismatches, `${context}: ${cmp.block}`).toEqual([]);
        }
        expect(await nonZeroPages(snap, entry.ramBlock, absentPageRanges(snap, entry.ramBlock)), context).toEqual([]);
      } finally {
        await snap.close();
      }
    });
  }
});
