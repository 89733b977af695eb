/**
 * Bugs found by the fuzzer (npm run fuzz, test/fuzz/) and by the review of
 * the reader it prompted (docs/hardening.md, "Fuzzing", says which found
 * what), one `it` per bug, named after what it pins (node-tar's
 * test/ghsa-*.ts). Each builds its input from a real QEMU fixture with fuzz
 * recipe operations, so the input is deterministic and the test says which
 * structure was damaged. Time and memory bugs are pinned by bytes read or
 * by outcomes where they can be, by a generous time bound where not.
 *
 * Commands run in-process exactly as bin.js runs them (buildCli, report()
 * on a throw), with stdout and stderr captured.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { RamFlag, Section } from '../format/constants.js';
import { RamsnapError } from '../format/errors.js';
import { LegacyIndex } from '../format/legacy-index.js';
import { Snapshot } from '../reader/snapshot.js';
import type { RandomAccessSource } from '../reader/source.js';
import { cliInProcess, type CliOutcome } from './fuzz/check.js';
import { loadCorpus, type Seed } from './fuzz/corpus.js';
import { ImageSource } from './fuzz/map.js';
import { applyRecipe, type Op } from './fuzz/mutate.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-regressions-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const seeds = new Map<string, Promise<Seed>>();
function seed(name: string): Promise<Seed> {
  if (!seeds.has(name)) seeds.set(name, loadCorpus([name]).then((s) => s[0]));
  return seeds.get(name) as Promise<Seed>;
}

let n = 0;
/** The fixture with `ops` applied, written as a sparse file; returns its path. */
async function mutated(fixture: string, ops: (s: Seed) => Op[]): Promise<{ file: string; seed: Seed }> {
  const s = await seed(fixture);
  const file = path.join(tmp, `${fixture}-${++n}.snap`);
  applyRecipe(s.image, { fixture, origin: 'regression', ops: ops(s) }).writeFile(file);
  return { file, seed: s };
}

/** The fixture with `ops` applied, as a source that counts the bytes read from it. */
async function counted(fixture: string, ops: (s: Seed) => Op[]): Promise<{ src: RandomAccessSource & { bytesRead: number }; seed: Seed }> {
  const s = await seed(fixture);
  const inner = new ImageSource(applyRecipe(s.image, { fixture, origin: 'regression', ops: ops(s) }));
  const src = {
    name: inner.name,
    size: inner.size,
    bytesRead: 0,
    read(offset: number, length: number, field: string, into?: Uint8Array) {
      src.bytesRead += length;
      return inner.read(offset, length, field, into);
    },
  };
  return { src, seed: s };
}

/** A fresh directory under the test's temp dir. */
function freshDir(name: string): string {
  const d = path.join(tmp, `${name}-${++n}`);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** Terminal control characters other than newline. */
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;

function expectNoCrash(r: CliOutcome): void {
  if ('thrown' in r) expect(r.thrown, String((r.thrown as Error)?.stack)).toBeInstanceOf(RamsnapError);
  expect([0, 1, 2]).toContain(r.exit);
}

describe('crashes and output: damaged structures', () => {
  it('extract: a 255-byte block name still gives a file name the file system accepts (was IO_ENAMETOOLONG)', async () => {
    // pc-legacy: a legacy stream has no absolute offsets, so the name can grow in place (every copy: the block list and the page records).
    const { file, seed: s } = await mutated('pc-legacy', (s) => {
      const nm = s.map.names.find((x) => x.kind === 'block' && x.name === 'pc.ram');
      if (!nm) throw new Error('pc-legacy has no pc.ram');
      return [{ op: 'rename', copies: nm.copies, hex: Buffer.from('A'.repeat(255), 'latin1').toString('hex'), why: 'pc.ram renamed to 255 bytes' }];
    });
    const out = freshDir('long-name');
    const r = await cliInProcess(['extract', '--json', file, '-o', out]);
    expectNoCrash(r);
    expect(r.stderr).toBe('');
    expect(r.exit).toBe(0);
    const outputs = JSON.parse(r.stdout).outputs as { block: string; path: string }[];
    const long = outputs.find((o) => o.block === 'A'.repeat(255));
    expect(long).toBeDefined();
    expect(Buffer.byteLength(path.basename(long!.path))).toBeLessThanOrEqual(255);
    expect(fs.statSync(long!.path).size).toBe(s.map.blocks.find((b) => b.name === 'pc.ram')?.usedLength);
  });

  it('a device description nested 20 000 levels deep is BAD_DEVICE_DESCRIPTION from every command (was a stack overflow: exit 70)', async () => {
    const { file } = await mutated('q35-mapped-ram', (s) => [
      { op: 'vmdesc', offset: s.map.vmdesc!.offset, edit: { path: ['devices', 3, 'fields'], action: 'nest', value: 20_000 }, why: 'fields nested 20 000 deep' },
    ]);
    await expect(Snapshot.open(file)).rejects.toMatchObject({ code: 'BAD_DEVICE_DESCRIPTION', field: 'vmdescription' });
    for (const argv of [['info', file], ['verify', file], ['dump', '--desc', file], ['dump', '--state', file], ['extract', file, '-o', freshDir('deep')]]) {
      const r = await cliInProcess(argv);
      expectNoCrash(r);
      expect(r.exit, argv.join(' ')).toBe(1);
      expect(r.stderr).toMatch(/^ramsnap: BAD_DEVICE_DESCRIPTION: device description nests deeper than 512 levels/);
    }
    // Within the bound, dump --desc prints it (its printer recurses once per level): lists 500 deep under a key of its own.
    let deep: unknown[] = [];
    for (let i = 0; i < 498; i++) deep = [deep];
    const { file: ok } = await mutated('q35-mapped-ram', (s) => [{ op: 'vmdesc', offset: s.map.vmdesc!.offset, edit: { path: ['x'], action: 'set', value: deep }, why: 'lists 500 deep' }]);
    const r = await cliInProcess(['dump', '--desc', ok]);
    expectNoCrash(r);
    expect(r.exit).toBe(0);
    expect(JSON.parse(r.stdout).x).toEqual(deep);
  });

  it('verify: warnings name their field with the block name escaped (a block named with terminal escapes reached the terminal raw)', async () => {
    // q35-mapped-ram with pc.ram renamed "\x1b[2J\x07x" (same length) and its bitmap_offset moved into the zero
    // padding after its bitmap: still a sound file, with a BITMAP_NOT_AFTER_HEADER warning whose field holds the name.
    const name = '\x1b[2J\x07x';
    const { file } = await mutated('q35-mapped-ram', (s) => {
      const nm = s.map.names.find((n) => n.kind === 'block' && n.name === 'pc.ram');
      const blk = s.map.blocks.find((b) => b.name === 'pc.ram');
      const bo = s.map.fields.find((f) => f.label === 'ramblock[pc.ram].mapped_ram.bitmap_offset');
      if (!nm || !blk || !bo) throw new Error('q35-mapped-ram has no pc.ram');
      return [
        { op: 'rename', copies: nm.copies, hex: Buffer.from(name, 'latin1').toString('hex'), why: 'pc.ram renamed with escapes' },
        { op: 'int', at: bo.at, width: 8, value: String((blk.bitmapOffset as number) + (blk.bitmapSize as number)), why: 'bitmap moved into the padding' },
      ];
    });
    const snap = await Snapshot.open(file);
    expect(snap.model.warnings.map((w) => w.code)).toContain('BITMAP_NOT_AFTER_HEADER');
    await snap.close();
    for (const argv of [['verify', file], ['info', file]]) {
      const r = await cliInProcess(argv);
      expectNoCrash(r);
      expect(r.exit, r.stderr).toBe(0);
      expect(r.stdout).toContain('BITMAP_NOT_AFTER_HEADER');
      expect(r.stdout.replace(/\n/g, '')).not.toMatch(CONTROL);
      expect(r.stdout).toContain('\\x1b[2J\\x07x');
    }
  });
});

describe('time and memory: structures repeated or grown beyond what mutation reaches', () => {
  it('legacy: ZERO records in descending page order index in linear time, not quadratic (was a hang: 80 000 records took 27 s)', async () => {
    // pc-legacy with pc.ram grown to 1 GiB (used_length and the RAM total), and 200 000 ZERO records for
    // pages 199 999..0 inserted at the start of the first RAM PART: a valid stream of 1.8 MB. The fixture's
    // own page records come after them, so guest memory is unchanged.
    const RECORDS = 200_000;
    const { file, seed: s } = await mutated('pc-legacy', (s) => {
      const m = s.map;
      const ram = m.blocks.find((b) => b.name === 'pc.ram');
      const part = m.sections.find((x) => x.name === 'ram' && x.kind === 'part');
      const memSize = m.fields.find((f) => f.label === 'ram.mem_size');
      const usedLength = m.fields.find((f) => f.label === 'ramblock[pc.ram].used_length');
      if (!ram || !part || !memSize || !usedLength) throw new Error('pc-legacy is not shaped as expected');
      const grow = (1 << 30) - ram.usedLength;
      const records = Buffer.alloc(9 * RECORDS + 1 + ram.name.length);
      let at = 0;
      for (let p = RECORDS - 1; p >= 0; p--) {
        const first = p === RECORDS - 1;
        records.writeBigUInt64BE((BigInt(p) << 12n) | BigInt(first ? RamFlag.ZERO : RamFlag.ZERO | RamFlag.CONTINUE), at);
        at += 8;
        if (first) {
          records[at++] = ram.name.length;
          at += records.write(ram.name, at, 'latin1');
        }
        records[at++] = 0; // fill byte
      }
      return [
        { op: 'int', at: usedLength.at, width: 8, value: String(ram.usedLength + grow), why: 'pc.ram used_length = 1 GiB' },
        { op: 'int', at: memSize.at, width: 8, value: String(BigInt(memSize.value as string) + BigInt(grow)), why: 'RAM total grown to match' },
        { op: 'splice', at: part.offset + 5, remove: 0, hex: records.subarray(0, at).toString('hex'), why: `${RECORDS} descending ZERO records` },
      ];
    });
    const original = await Snapshot.open(new ImageSource(s.image), { offset: s.offset });
    const t0 = performance.now();
    const snap = await Snapshot.open(file);
    const ms = performance.now() - t0;
    try {
      expect(ms).toBeLessThan(10_000);
      const want = original.block('pc.ram');
      const got = snap.block('pc.ram');
      expect(got.usedLength).toBe(1 << 30);
      expect(got.pagesPresent).toBe(want.pagesPresent);
      expect(Buffer.from(await snap.read(got, 0, want.usedLength)).equals(Buffer.from(await original.read(want, 0, want.usedLength)))).toBe(true);
      expect(Buffer.from(await snap.read(got, want.usedLength, 1 << 20)).every((b) => b === 0)).toBe(true);
    } finally {
      await snap.close();
    }
  }, 120_000);

  it('legacy index: records merged in batches (the fix above) still map every page to its last copy', () => {
    // Enough out-of-order records that pending ones are merged several times while records keep coming.
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat({ max: 2999 }), fc.boolean()), { minLength: 5000, maxLength: 20_000 }), (records) => {
        const idx = new LegacyIndex(4096 + 264);
        const model = new Map<number, number>();
        let offset = 1000;
        for (const [page, zero] of records) {
          const data = zero ? -1 : offset;
          idx.add(page, data);
          model.set(page, data);
          offset += 4096 + 8;
        }
        for (let p = 0; p < 3000; p++) {
          const r = idx.find(p);
          const want = model.get(p);
          expect(r === undefined ? undefined : r.dataOffset === -1 ? -1 : r.dataOffset + (p - r.first) * r.stride).toBe(want);
        }
        const runs = idx.runs;
        for (let i = 1; i < runs.length; i++) expect(runs[i].first).toBeGreaterThanOrEqual(runs[i - 1].first + runs[i - 1].count);
        expect(idx.runCount).toBe(runs.length);
      }),
      { numRuns: 20 },
    );
  });

  it('device state: values count across all sections, so many sections of a device with 3.9 M size-0 values are LIMIT_EXCEEDED (was 0.6 s per section, and dump --state ran out of memory)', async () => {
    // q35-mapped-ram with a device "fuzzdev" added to the description (one uint8 field of size 0, array_len 3 900 000)
    // and `sections` empty FULL sections of it inserted before EOF, each with an id of its own.
    const build = (sections: number) =>
      mutated('q35-mapped-ram', (s) => {
        const eof = s.map.fields.find((f) => f.label === 'eof')?.at as number;
        const name = Buffer.from('fuzzdev', 'latin1');
        const one = (id: number): Buffer => {
          const b = Buffer.alloc(1 + 4 + 1 + name.length + 8 + 5);
          let at = b.writeUInt8(Section.FULL, 0);
          at = b.writeUInt32BE(1000 + id, at);
          at = b.writeUInt8(name.length, at);
          at += name.copy(b, at);
          at = b.writeUInt32BE(0, at); // instance
          at = b.writeUInt32BE(1, at); // version; no body: every field is size 0
          at = b.writeUInt8(Section.FOOTER, at);
          b.writeUInt32BE(1000 + id, at);
          return b;
        };
        const ins = Buffer.concat(Array.from({ length: sections }, (_, i) => one(i)));
        const device = { name: 'fuzzdev', instance_id: 0, vmsd_name: 'fuzzdev', version: 1, fields: [{ name: 'z', type: 'uint8', size: 0, array_len: 3_900_000 }] };
        return [
          { op: 'splice', at: eof, remove: 0, hex: ins.toString('hex'), why: `${sections} fuzzdev sections` },
          { op: 'vmdesc', offset: s.map.vmdesc!.offset + ins.length, edit: { path: ['devices', s.map.vmdescShape!.fields.length], action: 'set', value: device }, why: 'fuzzdev described' },
        ];
      });
    // One such section is within the bound.
    const single = await Snapshot.open((await build(1)).file);
    expect(single.model.devices.some((d) => d.section.name === 'fuzzdev')).toBe(true);
    await single.close();
    const { file } = await build(10);
    const t0 = performance.now();
    await expect(Snapshot.open(file)).rejects.toMatchObject({ code: 'LIMIT_EXCEEDED', field: 'fuzzdev.z' });
    expect(performance.now() - t0).toBeLessThan(10_000);
    const r = await cliInProcess(['dump', '--state', file]);
    expectNoCrash(r);
    expect(r.exit).toBe(1);
    expect(r.stderr).toMatch(/^ramsnap: LIMIT_EXCEEDED: device state has too many values/);
  }, 120_000);

  it('device sections far before the description are decoded from a small window each (2 000 sections 65 MiB before it re-read 64 MiB apiece: 128 GiB read, 40 s)', async () => {
    // q35-mapped-ram with 2 000 copies of its first device section (ids of their own) before EOF, and a
    // 65 MiB hole between EOF and the description: the description is not the stream's (review 8), found
    // only after every section is read: TRAILING_DATA and DEVICE_STATE_UNCHECKED warnings.
    const { src } = await counted('q35-mapped-ram', (s) => {
      const eof = s.map.fields.find((f) => f.label === 'eof')?.at as number;
      const dev = s.map.sections.find((x) => x.kind === 'full');
      if (!dev) throw new Error('q35-mapped-ram has no device section');
      const one = Buffer.from(s.image.read(dev.offset, dev.end - dev.offset));
      const copies = Array.from({ length: 2000 }, (_, i) => {
        const b = Buffer.from(one);
        b.writeUInt32BE(5000 + i, 1); // section id
        b.writeUInt32BE(5000 + i, b.length - 4); // footer id
        return b;
      });
      const ins = Buffer.concat(copies);
      return [
        { op: 'splice', at: eof, remove: 0, hex: ins.toString('hex'), why: `2000 copies of section[${dev.name}]` },
        { op: 'hole', at: eof + ins.length + 1, length: 65 << 20, why: '65 MiB between EOF and the description' },
      ];
    });
    const snap = await Snapshot.open(src);
    expect(snap.model.warnings.map((w) => w.code)).toEqual(['DEVICE_STATE_UNCHECKED', 'TRAILING_DATA']);
    // The walk reads the stream about once (plus the description search at the end), not once per section.
    expect(src.bytesRead).toBeLessThan(2 * src.size);
  }, 120_000);

  it('RAM parts are parsed from the window at hand (20 000 empty RAM parts re-read 1 MiB apiece: 20 GiB read, 2.7 s)', async () => {
    // q35-mapped-ram with 20 000 RAM PART sections holding only EOS inserted before the RAM END (a valid
    // stream so far), and a 2 MiB hole after EOF so that there is always a MiB to read ahead.
    const { src } = await counted('q35-mapped-ram', (s) => {
      const end = s.map.sections.find((x) => x.name === 'ram' && x.kind === 'end');
      const eof = s.map.fields.find((f) => f.label === 'eof')?.at as number;
      if (!end) throw new Error('q35-mapped-ram has no RAM END');
      const id = Buffer.from(s.image.read(end.offset + 1, 4)).readUInt32BE(0);
      const part = Buffer.alloc(18);
      part.writeUInt8(Section.PART, 0);
      part.writeUInt32BE(id, 1);
      part.writeBigUInt64BE(BigInt(RamFlag.EOS), 5);
      part.writeUInt8(Section.FOOTER, 13);
      part.writeUInt32BE(id, 14);
      const ins = Buffer.concat(Array.from({ length: 20_000 }, () => part));
      return [
        { op: 'splice', at: end.offset, remove: 0, hex: ins.toString('hex'), why: '20 000 empty RAM parts' },
        { op: 'hole', at: eof + ins.length + 1, length: 2 << 20, why: '2 MiB between EOF and the description' },
      ];
    });
    const snap = await Snapshot.open(src);
    expect(snap.model.warnings.map((w) => w.code)).toContain('TRAILING_DATA');
    expect(src.bytesRead).toBeLessThan(2 * src.size);
  });

  it('a block list of more than 65 536 RAM blocks is LIMIT_EXCEEDED (one-page blocks cost 16 bytes of file and 350 of memory each: a 14 MB file took 343 MiB)', async () => {
    // pc-legacy (6 blocks) with `extra` one-page blocks appended to its block list and the RAM total grown to match.
    const withBlocks = (extra: number) =>
      counted('pc-legacy', (s) => {
        const last = s.map.blocks[s.map.blocks.length - 1];
        const mem = s.map.fields.find((f) => f.label === 'ram.mem_size');
        if (!mem) throw new Error('pc-legacy has no MEM_SIZE');
        const entries = Array.from({ length: extra }, (_, i) => {
          const name = Buffer.from(`b${i.toString(36)}`, 'latin1');
          const b = Buffer.alloc(1 + name.length + 8);
          b.writeUInt8(name.length, 0);
          name.copy(b, 1);
          b.writeBigUInt64BE(BigInt(s.map.pageSize), 1 + name.length);
          return b;
        });
        return [
          { op: 'int', at: mem.at, width: 8, value: String(BigInt(mem.value as string) + BigInt(extra * s.map.pageSize)), why: 'RAM total grown' },
          { op: 'splice', at: last.entryOffset + last.entryLength, remove: 0, hex: Buffer.concat(entries).toString('hex'), why: `${extra} one-page blocks` },
        ];
      });
    const atLimit = await Snapshot.open((await withBlocks(65_530)).src);
    expect(atLimit.blocks).toHaveLength(65_536);
    const { src } = await withBlocks(100_000);
    await expect(Snapshot.open(src)).rejects.toMatchObject({ code: 'LIMIT_EXCEEDED', field: `ramblock[b${(65_530).toString(36)}].name` });
  }, 60_000);

  /**
   * q35-mapped-ram with a device "fuzzdev" described with one `field` and a FULL section of it before EOF
   * whose body is `size` bytes of `fill` (zeros as a hole: the test holds none of them in memory).
   */
  const bigField = (field: Record<string, unknown>, size: number, fill = 0) =>
    mutated('q35-mapped-ram', (s) => {
      const eof = s.map.fields.find((f) => f.label === 'eof')?.at as number;
      const name = Buffer.from('fuzzdev', 'latin1');
      const head = Buffer.alloc(1 + 4 + 1 + name.length + 8);
      let at = head.writeUInt8(Section.FULL, 0);
      at = head.writeUInt32BE(1000, at);
      at = head.writeUInt8(name.length, at);
      at += name.copy(head, at);
      at = head.writeUInt32BE(0, at);
      head.writeUInt32BE(1, at);
      const foot = Buffer.alloc(5);
      foot.writeUInt8(Section.FOOTER, 0);
      foot.writeUInt32BE(1000, 1);
      const added = head.length + size + foot.length;
      return [
        { op: 'splice', at: eof, remove: 0, hex: Buffer.concat([head, foot]).toString('hex'), why: 'fuzzdev section' },
        fill
          ? { op: 'splice', at: eof + head.length, remove: 0, hex: Buffer.alloc(size, fill).toString('hex'), why: `${size} bytes of state` }
          : { op: 'hole', at: eof + head.length, length: size, why: `${size} bytes of state` },
        {
          op: 'vmdesc',
          offset: s.map.vmdesc!.offset + added,
          edit: { path: ['devices', s.map.vmdescShape!.fields.length], action: 'set', value: { name: 'fuzzdev', instance_id: 0, vmsd_name: 'fuzzdev', version: 1, fields: [field] } },
          why: 'fuzzdev described',
        },
      ];
    });

  it('dump --state prints a 60 MiB buffer field (was out of memory after 80 s: its hex was a rope of 120 M pieces)', async () => {
    const size = 60 << 20;
    const { file } = await bigField({ name: 'blob', type: 'buffer', size }, size);
    const r = await cliInProcess(['dump', '--state', file]);
    expectNoCrash(r);
    expect(r.exit, r.stderr).toBe(0);
    const hex = `"${'00 '.repeat(size - 1)}00"`;
    expect(r.stdout.includes(`"blob": ${hex}`)).toBe(true);
  }, 120_000);

  it('dump --state prints a 1 MiB wide integer field as hex (building a BigInt a byte at a time was quadratic: 256 KiB of 0xff took 57 s)', async () => {
    const size = 1 << 20;
    const { file } = await bigField({ name: 'wide', type: 'int64', size }, size, 0xff);
    const t0 = performance.now();
    const r = await cliInProcess(['dump', '--state', file]);
    expectNoCrash(r);
    expect(r.exit, r.stderr).toBe(0);
    // Wider than 64 bytes: hex only, no decimal.
    expect(r.stdout).toContain(`"wide": "0x${'f'.repeat(2 * size)}"`);
    expect(performance.now() - t0).toBeLessThan(20_000);
  }, 120_000);
});

describe('messages', () => {
  it('BAD_PAGE_SIZE states the range ramsnap accepts (it said 1 KiB..1 GiB; the limit is 64 KiB)', async () => {
    const { file } = await mutated('q35-mapped-ram', (s) => {
      const f = s.map.fields.find((x) => x.label === 'ramblock[pc.ram].mapped_ram.page_size');
      if (!f) throw new Error('q35-mapped-ram has no pc.ram');
      return [{ op: 'int', at: f.at, width: 8, value: String(1 << 17), why: 'page size 128 KiB' }];
    });
    await expect(Snapshot.open(file)).rejects.toMatchObject({ code: 'BAD_PAGE_SIZE', expected: 'power of two in 1024..65536' });
    await expect(Snapshot.open(file)).rejects.toThrow(/between 1024 and 65536/);
  });
});
