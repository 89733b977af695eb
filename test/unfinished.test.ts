/**
 * A real unfinished save: QEMU 10 killed with SIGKILL in the middle of a
 * mapped-ram save (fixtures/make-unfinished.ts). Block headers are there,
 * bitmaps are not (QEMU writes them at the end), pages partly.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOB_ADDR, BLOB_PAGES, blobPage, type UnfinishedInfo } from '../fixtures/make-unfinished.js';
import { gunzipSparse } from '../fixtures/unpack.js';
import { Snapshot } from '../reader/snapshot.js';
import { extractBlock } from '../reader/extract.js';
import { RamsnapFormatError } from '../format/errors.js';

const dataDir = path.join(import.meta.dirname, '..', 'fixtures', 'data', 'unfinished');
const info = JSON.parse(fs.readFileSync(path.join(dataDir, 'unfinished.json'), 'utf8')) as UnfinishedInfo;
let dir: string;
let file: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-unfinished-'));
  file = path.join(dir, 'q35-killed.snap');
  expect(await gunzipSparse(path.join(dataDir, info.file), file)).toBe(info.size);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('a save killed mid-way', () => {
  it('is reported as INCOMPLETE, not as damage or a crash', async () => {
    const err = await Snapshot.open(file).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(RamsnapFormatError);
    expect(err).toMatchObject({ code: 'INCOMPLETE' });
    // The stream stops where QEMU's buffered writes stopped: at or before the end of the file.
    expect((err as RamsnapFormatError).offset).toBeLessThanOrEqual(info.size);
  });

  it('still shows the block list QEMU wrote at setup, with bitmaps not yet written', async () => {
    const snap = await Snapshot.open(file, { lenient: true });
    const m = snap.model;
    expect(m.configuration?.machine).toBe(info.machineType);
    expect(m.mappedRam).toBe(true);
    expect(m.blocks.map((b) => b.name)).toEqual(['pc.ram', '/rom@etc/acpi/tables', 'pc.bios', 'pc.rom', '/rom@etc/table-loader', '/rom@etc/acpi/rsdp']);
    expect(m.blocks.every((b) => b.pagesPresent === 0)).toBe(true);
    expect(m.eofOffset).toBeUndefined();
    await snap.close();
  });

  it('salvage copies the page region as found: every recovered blob page is the right page', async () => {
    const snap = await Snapshot.open(file, { lenient: true });
    const out = path.join(dir, 'pc.ram.raw');
    const block = snap.block('pc.ram');
    await extractBlock(snap, block, out, { raw: true, force: true });
    const ram = fs.readFileSync(out);
    expect(ram.length).toBe(block.usedLength);
    let recovered = 0;
    for (let i = 0; i < BLOB_PAGES; i++) {
      const got = ram.subarray(BLOB_ADDR + i * 4096, BLOB_ADDR + (i + 1) * 4096);
      if (got.every((x) => x === 0)) continue;
      expect(Buffer.compare(got, Buffer.from(blobPage(i)))).toBe(0);
      recovered++;
    }
    // QEMU had sent ~370 KB when it was killed: some of the blob, not all of it.
    expect(recovered).toBeGreaterThan(0);
    expect(recovered).toBeLessThan(BLOB_PAGES);
    // Nothing but the blob was loaded into pc.ram of a guest that never ran.
    expect(ram.subarray(0, BLOB_ADDR).every((x) => x === 0)).toBe(true);
    expect(ram.subarray(BLOB_ADDR + BLOB_PAGES * 4096).every((x) => x === 0)).toBe(true);
    await snap.close();
  });
});
