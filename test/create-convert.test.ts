/**
 * ramsnap create / convert and the legacy writer, without QEMU: round trips
 * through the reader on the committed QEMU fixtures, QEMU's own bytes where
 * a conversion must reproduce them, the error codes, and the CLI.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { Snapshot } from '../reader/snapshot.js';
import { convertSnapshot, qemuJson, rewriteDescriptionConfiguration, topLevelMember } from '../writer/convert.js';
import { createSnapshot, parseRamImage } from '../writer/create.js';
import { LegacyWriter } from '../writer/legacy-writer.js';
import { TEMP_MARK } from '../writer/snapshot-writer.js';
import { compareWithPmem, fixtureFiles, loadCatalog } from './helpers/fixtures.js';
import { pageBytes, synthesize } from './helpers/synth.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-create-convert-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
let n = 0;
const out = (name: string): string => path.join(dir, `${n++}-${name}`);

/** Every block of `b` reads as the same bytes as in `a` (same names and sizes). */
async function expectSameMemory(a: Snapshot, b: Snapshot): Promise<void> {
  expect(b.blocks.map((x) => [x.name, x.usedLength])).toEqual(a.blocks.map((x) => [x.name, x.usedLength]));
  const chunk = 4 << 20;
  for (const blk of a.blocks) {
    for (let at = 0; at < blk.usedLength; at += chunk) {
      const len = Math.min(chunk, blk.usedLength - at);
      const x = Buffer.from(await a.read(blk.name, at, len));
      const y = Buffer.from(await b.read(blk.name, at, len));
      if (!x.equals(y)) expect.fail(`${blk.name} differs in [${at}, ${at + len})`);
    }
  }
}

function vmdescText(file: string): string {
  const b = fs.readFileSync(file);
  for (let i = b.length - 6; i >= 0; i--) if (b[i] === 6 && b.readUInt32BE(i + 1) === b.length - i - 5 && b[i + 5] === 0x7b) return b.subarray(i + 5).toString('utf8');
  throw new Error(`${file} has no description`);
}

function configurationEntry(file: string): string {
  const t = vmdescText(file);
  const s = topLevelMember(t, 'configuration')!;
  return t.slice(s.start, s.end);
}

/** Nothing but the listed files in the directory: no temporary file was left behind. */
function leftovers(d: string): string[] {
  return fs.readdirSync(d).filter((f) => f.includes(TEMP_MARK));
}

function rawImage(size: number, seed: number, ps = 4096): Uint8Array {
  const img = new Uint8Array(size);
  // Random pages at a few places, with zero pages between and inside them.
  for (const p of [0, 1, 3, 17, 18, 19, size / ps - 1]) if (p * ps < size) img.set(pageBytes(ps, seed + p), p * ps);
  return img;
}

describe('convert on the QEMU fixtures', () => {
  const fixtures = loadCatalog().fixtures;
  for (const f of fixtures) {
    const to = f.mappedRam ? 'legacy' : 'mapped-ram';
    it(`${f.name} -> ${to} -> back: the same memory, device state kept, pmemsave agrees`, async () => {
      const { snap, pmem, entry } = await fixtureFiles(f.name);
      const a = out(`${f.name}.${to}`);
      const b = out(`${f.name}.back`);
      const r = await convertSnapshot(snap, a, { to, offset: entry.open.offset, fsync: false });
      expect(r.to).toBe(to);
      await convertSnapshot(a, b, { to: f.mappedRam ? 'mapped-ram' : 'legacy', fsync: false });
      const orig = await Snapshot.open(snap, entry.open);
      const conv = await Snapshot.open(a);
      const back = await Snapshot.open(b);
      try {
        expect(conv.model.mappedRam).toBe(to === 'mapped-ram');
        // What the source's stream is and a conversion keeps: no footers, no description.
        const kept = (s: Snapshot): string[] => s.model.warnings.map((w) => w.code).filter((c) => c === 'NO_SECTION_FOOTERS' || c === 'DEVICE_STATE_UNCHECKED');
        expect(conv.model.warnings.map((w) => w.code)).toEqual(kept(orig));
        expect(conv.model.configuration?.machine).toBe(orig.model.configuration?.machine);
        expect(conv.model.configuration?.targetPageBits).toBe(orig.model.configuration?.targetPageBits);
        expect(conv.model.ramSectionId).toBe(orig.model.ramSectionId);
        await expectSameMemory(orig, conv);
        await expectSameMemory(orig, back);
        // Device sections verbatim (same bytes), in the same order.
        const sections = async (s: Snapshot): Promise<Buffer[]> =>
          Promise.all(s.model.devices.map(async (d) => Buffer.from(await s.source.read(d.section.offset, d.section.end - d.section.offset, 'x'))));
        expect(await sections(conv)).toEqual(await sections(orig));
        for (const cmp of entry.comparisons) expect((await compareWithPmem(conv, pmem, cmp)).mismatches).toEqual([]);
      } finally {
        await Promise.all([orig.close(), conv.close(), back.close()]);
      }
      if (entry.streamOffset === 0 && entry.vmdesc !== false) {
        // Converting back restores the original description byte for byte (the configuration entry is rewritten twice).
        expect(vmdescText(b)).toBe(vmdescText(snap));
      }
    });
  }

  // A save of a guest that never ran sends each page once, in block order, zero pages as ZERO records: ours are the same bytes.
  it('pc-legacy -> mapped-ram -> legacy gives QEMU\'s file byte for byte', async () => {
    const { snap } = await fixtureFiles('pc-legacy');
    const a = out('pc.mr');
    const b = out('pc.leg');
    await convertSnapshot(snap, a, { to: 'mapped-ram', fsync: false });
    await convertSnapshot(a, b, { to: 'legacy', fsync: false });
    expect(Buffer.compare(fs.readFileSync(b), fs.readFileSync(snap))).toBe(0);
  });

  it('pc-mapped-ram -> mapped-ram gives QEMU\'s file byte for byte', async () => {
    const { snap } = await fixtureFiles('pc-mapped-ram');
    const a = out('pc.mr2');
    await convertSnapshot(snap, a, { to: 'mapped-ram', fsync: false });
    expect(Buffer.compare(fs.readFileSync(a), fs.readFileSync(snap))).toBe(0);
  });

  it('the configuration entry of a converted description is what QEMU writes for that configuration', async () => {
    // Same machine type (pc-i440fx-10.0) and QEMU: the entries of the legacy and the mapped-ram fixture.
    const leg = (await fixtureFiles('pc-legacy')).snap;
    const mr = (await fixtureFiles('pc-mapped-ram')).snap;
    const a = out('pc-leg-from-mr');
    const b = out('pc-mr-from-leg');
    await convertSnapshot(mr, a, { to: 'legacy', fsync: false });
    await convertSnapshot(leg, b, { to: 'mapped-ram', fsync: false });
    expect(configurationEntry(a)).toBe(configurationEntry(leg));
    expect(configurationEntry(b)).toBe(configurationEntry(mr));
  });

  it('a mapped-ram save with stale bytes under clear bits loses them when re-laid out', async () => {
    const { snap } = await fixtureFiles('q35-mapped-ram-live');
    const a = out('live.mr');
    await convertSnapshot(snap, a, { to: 'mapped-ram', fsync: false });
    const s = await Snapshot.open(a);
    try {
      for (const b of s.blocks) {
        // Every page whose bit is clear is a hole of zeros in the new file, every set one matches the reader.
        const raw = Buffer.from(await s.source.read(b.mappedRam!.pagesOffset, b.usedLength, 'pages'));
        const seen = Buffer.from(await s.read(b.name, 0, b.usedLength));
        expect(raw.equals(seen), b.name).toBe(true);
      }
    } finally {
      await s.close();
    }
  });
});

describe('description configuration entry', () => {
  // Observed in QEMU 10.0.2 saves of q35 (`migrate file:`), capabilities in QEMU's order.
  const base = '{"vmsd_name": "configuration", "version": 1, "fields": [{"name": "len", "type": "uint32", "size": 4}, {"name": "name", "type": "buffer", "size": 11}]';
  const caps = (field: string): string =>
    `${base}, "subsections": [{"vmsd_name": "configuration/capabilities", "version": 1, "fields": [{"name": "caps_count", "type": "uint32", "size": 4}, ${field}]}]}`;
  const qemu: [string[], string][] = [
    [[], `${base}}`],
    [['mapped-ram'], caps('{"name": "capabilities", "type": "capability", "size": 11}')],
    [['x-ignore-shared'], caps('{"name": "capabilities", "type": "capability", "size": 16}')],
    [['x-ignore-shared', 'mapped-ram'], caps('{"name": "capabilities", "array_len": 2, "type": "capability", "size": 16}')],
  ];
  for (const [from] of qemu) {
    for (const [to, want] of qemu) {
      it(`[${from.join(', ')}] -> [${to.join(', ')}]`, () => {
        const src = `{"configuration": ${qemu.find((q) => q[0] === from)![1]}, "page_size": 4096, "devices": [{"name": "timer"}]}`;
        const got = Buffer.from(rewriteDescriptionConfiguration(Buffer.from(src), { machine: 'pc-q35-10.0', capabilities: to })).toString();
        expect(got).toBe(`{"configuration": ${want}, "page_size": 4096, "devices": [{"name": "timer"}]}`);
      });
    }
  }

  it('qemuJson prints QEMU\'s separators and JSON.parse reads it back', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        expect(JSON.parse(qemuJson(v))).toEqual(JSON.parse(JSON.stringify(v)));
      }),
    );
  });

  it('a description without the entry is left alone', () => {
    const src = Buffer.from('{"page_size": 4096, "devices": []}');
    expect(Buffer.from(rewriteDescriptionConfiguration(src, { machine: 'x', capabilities: ['mapped-ram'] })).toString()).toBe(src.toString());
  });
});

describe('LegacyWriter', () => {
  it('pages in any order, any number of times: the reader sees the last copy, unsent pages read as zero', async () => {
    const ps = 4096;
    const blocks = [
      { name: 'a', usedLength: 16 * ps },
      { name: 'b', usedLength: 4 * ps },
    ];
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ block: fc.constantFrom('a', 'b'), page: fc.nat(15), seed: fc.integer({ min: -1, max: 1000 }) }), { maxLength: 40 }),
        async (writes) => {
          const file = out('prop.leg');
          const w = await LegacyWriter.create(file, { configuration: { machine: 'pc-q35-10.0', capabilities: [] }, pageSize: ps, blocks, fsync: false });
          const model = new Map<string, Uint8Array>();
          for (const x of writes) {
            const page = x.block === 'b' ? x.page % 4 : x.page;
            const bytes = x.seed < 0 ? new Uint8Array(ps) : pageBytes(ps, x.seed);
            await w.writePages(x.block, page, bytes);
            model.set(`${x.block}:${page}`, bytes);
          }
          await w.finalize();
          const s = await Snapshot.open(file);
          try {
            expect(s.model.mappedRam).toBe(false);
            for (const b of blocks) {
              for (let p = 0; p < b.usedLength / ps; p++) {
                const want = model.get(`${b.name}:${p}`) ?? new Uint8Array(ps);
                expect(Buffer.from(await s.read(b.name, p * ps, ps)).equals(Buffer.from(want))).toBe(true);
              }
            }
          } finally {
            await s.close();
            fs.rmSync(file);
          }
        },
      ),
      { numRuns: 30 },
    );
  });

  it('refuses mapped-ram in a legacy configuration, bad blocks, and leaves nothing behind on abort', async () => {
    const file = out('bad.leg');
    const opts = { configuration: { machine: 'm', capabilities: [] as string[] }, pageSize: 4096, blocks: [{ name: 'a', usedLength: 4096 }], fsync: false };
    await expect(LegacyWriter.create(file, { ...opts, configuration: { machine: 'm', capabilities: ['mapped-ram'] } })).rejects.toMatchObject({ code: 'BAD_CAPABILITIES' });
    await expect(LegacyWriter.create(file, { ...opts, blocks: [{ name: 'a', usedLength: 100 }] })).rejects.toMatchObject({ code: 'BAD_BLOCK_LENGTH' });
    const w = await LegacyWriter.create(file, opts);
    await expect(w.writePages('zz', 0, new Uint8Array(4096))).rejects.toMatchObject({ code: 'UNKNOWN_BLOCK' });
    await expect(w.writePages('a', 1, new Uint8Array(4096))).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await w.abort();
    expect(fs.existsSync(file)).toBe(false);
    expect(leftovers(dir)).toEqual([]);
  });
});

describe('create', () => {
  it('RAM-only from raw images: sizes from the images, zero pages absent, no device state', async () => {
    const ps = 4096;
    const a = rawImage(64 * ps, 1);
    const b = rawImage(8 * ps, 2);
    const fa = out('a.raw');
    const fb = out('b.raw');
    fs.writeFileSync(fa, a);
    fs.writeFileSync(fb, b);
    const file = out('ramonly.snap');
    await createSnapshot(file, { images: [parseRamImage(`pc.ram=${fa}`), parseRamImage(`/rom@etc/x=${fb}`)], machine: 'pc-q35-10.0', fsync: false });
    const s = await Snapshot.open(file);
    try {
      expect(s.model.mappedRam).toBe(true);
      expect(s.model.configuration).toEqual({ machine: 'pc-q35-10.0', capabilities: ['mapped-ram'] });
      expect(s.blocks.map((x) => [x.name, x.usedLength])).toEqual([
        ['pc.ram', a.length],
        ['/rom@etc/x', b.length],
      ]);
      expect(s.model.devices).toEqual([]);
      expect(s.model.vmdesc).toBeUndefined();
      expect(s.model.warnings.map((w) => w.code)).toEqual(['NO_DEVICE_DESCRIPTION']);
      expect(Buffer.from(await s.read('pc.ram', 0, a.length)).equals(Buffer.from(a))).toBe(true);
      expect(Buffer.from(await s.read('/rom@etc/x', 0, b.length)).equals(Buffer.from(b))).toBe(true);
      expect(s.block('pc.ram').pagesPresent).toBe(7);
    } finally {
      await s.close();
    }
  });

  it('with a template: the image replaces one block, the others and the device state are the template\'s', async () => {
    for (const name of ['pc-legacy', 'aarch64-virt-mapped-ram']) {
      const { snap: tpl, entry } = await fixtureFiles(name);
      const t = await Snapshot.open(tpl);
      const ram = t.block(entry.ramBlock);
      const img = rawImage(ram.usedLength, 7, ram.pageSize);
      const fi = out('tpl.raw');
      fs.writeFileSync(fi, img);
      const file = out(`${name}.created`);
      await createSnapshot(file, { images: [{ block: entry.ramBlock, file: fi }], template: tpl, machine: entry.machineType, fsync: false });
      const s = await Snapshot.open(file);
      try {
        expect(s.model.mappedRam).toBe(true);
        expect(s.model.configuration?.machine).toBe(t.model.configuration?.machine);
        expect(s.model.configuration?.targetPageBits).toBe(t.model.configuration?.targetPageBits);
        expect(s.model.ramSectionId).toBe(t.model.ramSectionId);
        expect(s.model.devices.map((d) => d.section.name)).toEqual(t.model.devices.map((d) => d.section.name));
        expect(Buffer.from(await s.read(entry.ramBlock, 0, img.length)).equals(Buffer.from(img))).toBe(true);
        for (const b of t.blocks.filter((x) => x.name !== entry.ramBlock)) {
          expect(Buffer.from(await s.read(b.name, 0, b.usedLength)).equals(Buffer.from(await t.read(b.name, 0, b.usedLength))), b.name).toBe(true);
        }
        // The description now says mapped-ram, as QEMU's own mapped-ram save of that machine does.
        const subs = JSON.parse(configurationEntry(file)).subsections as { vmsd_name: string; fields: unknown[] }[];
        expect(subs.find((x) => x.vmsd_name === 'configuration/capabilities')?.fields[1]).toEqual({ name: 'capabilities', type: 'capability', size: 11 });
        expect(subs.some((x) => x.vmsd_name === 'configuration/target-page-bits')).toBe(t.model.configuration?.targetPageBits !== undefined);
      } finally {
        await Promise.all([s.close(), t.close()]);
      }
    }
  });

  describe('errors, and never a file at the output', () => {
    const ps = 4096;
    const good = out('good.raw');
    fs.writeFileSync(good, rawImage(16 * ps, 3));
    const odd = out('odd.raw');
    fs.writeFileSync(odd, new Uint8Array(ps + 1));
    const cases: [string, () => Promise<unknown>, string, RegExp?][] = [
      ['no --machine without a template', () => createSnapshot(out('x'), { images: [{ block: 'pc.ram', file: good }] }), 'MACHINE_REQUIRED'],
      ['image size not a multiple of the page size', () => createSnapshot(out('x'), { images: [{ block: 'pc.ram', file: odd }], machine: 'pc-q35-10.0' }), 'BAD_BLOCK_LENGTH'],
      ['block named twice', () => createSnapshot(out('x'), { images: [{ block: 'r', file: good }, { block: 'r', file: good }], machine: 'pc-q35-10.0' }), 'DUPLICATE_BLOCK'],
      ['missing image', () => createSnapshot(out('x'), { images: [{ block: 'r', file: path.join(dir, 'nope.raw') }], machine: 'pc-q35-10.0' }), 'IO_ENOENT'],
      ['a directory as image', () => createSnapshot(out('x'), { images: [{ block: 'r', file: dir }], machine: 'pc-q35-10.0' }), 'NOT_A_FILE'],
    ];
    for (const [what, run, code] of cases) {
      it(what, async () => {
        const before = fs.readdirSync(dir).length;
        await expect(run()).rejects.toMatchObject({ code });
        expect(fs.readdirSync(dir).length).toBe(before);
      });
    }

    it('template: unknown block, size mismatch (both sizes said), machine and page size mismatch', async () => {
      const { snap: tpl } = await fixtureFiles('pc-mapped-ram');
      const before = fs.readdirSync(dir).length;
      const o = out('x');
      await expect(createSnapshot(o, { images: [{ block: 'nope', file: good }], template: tpl })).rejects.toMatchObject({ code: 'UNKNOWN_BLOCK' });
      await expect(createSnapshot(o, { images: [{ block: 'pc.ram', file: good }], template: tpl })).rejects.toMatchObject({
        code: 'RAM_SIZE_MISMATCH',
        message: expect.stringMatching(/65536 bytes.*16777216 bytes/),
      });
      await expect(createSnapshot(o, { images: [], template: tpl, machine: 'pc-q35-10.0' })).rejects.toMatchObject({ code: 'MACHINE_MISMATCH' });
      await expect(createSnapshot(o, { images: [], template: tpl, pageSize: 8192 })).rejects.toMatchObject({ code: 'PAGE_SIZE_MISMATCH' });
      expect(fs.readdirSync(dir).length).toBe(before);
    });

    it('an existing output is kept unless --force', async () => {
      const o = out('exists');
      fs.writeFileSync(o, 'keep');
      await expect(createSnapshot(o, { images: [{ block: 'r', file: good }], machine: 'pc-q35-10.0' })).rejects.toMatchObject({ code: 'OUTPUT_EXISTS' });
      await expect(convertSnapshot(good, o, { to: 'legacy' })).rejects.toMatchObject({ code: 'OUTPUT_EXISTS' });
      expect(fs.readFileSync(o, 'utf8')).toBe('keep');
      await createSnapshot(o, { images: [{ block: 'r', file: good }], machine: 'pc-q35-10.0', force: true, fsync: false });
      expect((await Snapshot.open(o)).model.complete).toBe(true);
    });

    it('convert of a file that is not a snapshot, or an incomplete one', async () => {
      await expect(convertSnapshot(good, out('x'), { to: 'legacy' })).rejects.toMatchObject({ code: 'BAD_MAGIC' });
      const { snap } = await fixtureFiles('pc-legacy');
      const cut = out('cut');
      fs.writeFileSync(cut, fs.readFileSync(snap).subarray(0, 200_000));
      await expect(convertSnapshot(cut, out('x'), { to: 'mapped-ram' })).rejects.toMatchObject({ code: 'INCOMPLETE' });
      expect(leftovers(dir)).toEqual([]);
    });
  });
});

describe('CLI', () => {
  const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'analyze', 'bin.js');
  const BIN_PATH = fs.existsSync(BIN) ? BIN : path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'analyze', 'bin.js');
  interface Run {
    code: number;
    stdout: string;
    stderr: string;
  }
  const ramsnap = (...args: string[]): Promise<Run> =>
    new Promise((resolve, reject) => {
      const env = { ...process.env };
      delete env.RAMSNAP_DEBUG;
      execFile(process.execPath, [BIN_PATH, ...args], { env, timeout: 30_000 }, (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') return reject(err);
        resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
      });
    });
  const oneLine = (r: Run, exit: number, code: string): string => {
    expect(r.code, r.stderr).toBe(exit);
    const lines = r.stderr.split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^ramsnap: ${code}: `));
    return lines[0];
  };
  const ps = 4096;
  const img = out('cli.raw');
  fs.writeFileSync(img, rawImage(32 * ps, 9));

  it('create and convert succeed, and the results read back', { timeout: 30_000 }, async () => {
    const a = out('cli.snap');
    const b = out('cli.leg');
    const r1 = await ramsnap('create', '-o', a, '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${img}`);
    expect(r1.code, r1.stderr).toBe(0);
    expect(r1.stdout).toMatch(/wrote .* \(mapped-ram\)/);
    const r2 = await ramsnap('convert', a, '-o', b, '--to', 'legacy', '--json');
    expect(r2.code, r2.stderr).toBe(0);
    expect(JSON.parse(r2.stdout)).toMatchObject({ from: 'mapped-ram', to: 'legacy', blocks: 1 });
    const s = await Snapshot.open(b);
    expect(Buffer.from(await s.read('pc.ram', 0, 32 * ps)).equals(fs.readFileSync(img))).toBe(true);
    await s.close();
  });

  it('failures: one line, exit 2 for usage, exit 1 for files', { timeout: 60_000 }, async () => {
    const { snap: tpl } = await fixtureFiles('pc-mapped-ram');
    const o = out('cli-fail.snap');
    const runs = await Promise.all([
      ramsnap('create', '-o', o, '--ram', `pc.ram=${img}`),
      ramsnap('create', '-o', o, '--machine', 'pc-q35-10.0', '--ram', `pc.ram=${path.join(dir, 'missing.raw')}`),
      ramsnap('create', '-o', o, '--template', tpl, '--ram', `pc.ram=${img}`),
      ramsnap('create', '-o', o, '--template', tpl, '--ram', `nope=${img}`),
      ramsnap('create', '-o', o, '--template', tpl, '--machine', 'pc-q35-10.0'),
      ramsnap('create', '-o', o, '--machine', 'pc-q35-10.0', '--ram', 'no-equals-sign'),
      ramsnap('convert', tpl, '-o', o, '--to', 'qcow2'),
      ramsnap('convert', img, '-o', o, '--to', 'legacy'),
    ]);
    oneLine(runs[0], 2, 'MACHINE_REQUIRED');
    expect(oneLine(runs[1], 1, 'IO_ENOENT')).toContain('missing.raw');
    expect(oneLine(runs[2], 2, 'RAM_SIZE_MISMATCH')).toMatch(/131072 bytes.*16777216 bytes/);
    oneLine(runs[3], 2, 'UNKNOWN_BLOCK');
    oneLine(runs[4], 2, 'MACHINE_MISMATCH');
    oneLine(runs[5], 2, 'BAD_RAM');
    oneLine(runs[6], 2, 'USAGE');
    oneLine(runs[7], 1, 'BAD_MAGIC');
    expect(fs.existsSync(o)).toBe(false);
    expect(leftovers(dir)).toEqual([]);
  });
});

describe('convert keeps the configuration', () => {
  it('a uuid (validate-uuid) survives legacy -> mapped-ram -> legacy', async () => {
    const uuid = '12345678-9abc-def0-1234-56789abcdef0';
    const src = path.join(dir, 'uuid.legacy');
    const f = synthesize({ mappedRam: false, uuid, devices: false, blocks: [{ name: 'pc.ram', usedLength: 8 * 4096, pages: new Map([[2, pageBytes(4096, 2)]]) }] });
    fs.writeFileSync(src, f.bytes());
    const mr = path.join(dir, 'uuid.mr');
    const back = path.join(dir, 'uuid.back');
    await convertSnapshot(src, mr, { to: 'mapped-ram', fsync: false });
    await convertSnapshot(mr, back, { to: 'legacy', fsync: false });
    for (const file of [mr, back]) {
      const s = await Snapshot.open(file);
      expect(s.model.configuration?.uuid).toBe(uuid);
      expect(Buffer.from(await s.read('pc.ram', 2 * 4096, 4096)).equals(Buffer.from(pageBytes(4096, 2)))).toBe(true);
      await s.close();
    }
  });
});
