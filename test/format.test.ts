import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ByteCursor } from '../format/cursor.js';
import { Section } from '../format/constants.js';
import { decodeConfiguration, encodeConfiguration, KNOWN_CAPABILITIES } from '../format/configuration.js';
import { decodeMappedRamHeader, encodeMappedRamHeader, mappedRamPlacement } from '../format/mapped-ram.js';
import { decodeSectionStart, encodeSectionStart, decodeCommand, encodeCommand } from '../format/section.js';
import { decodeLibvirtHeader, encodeLibvirtHeader } from '../format/libvirt.js';
import { bitRuns, bitmapBytes, countBits, firstTailBit, setRange, testBit } from '../format/bitmap.js';
import { LegacyIndex } from '../format/legacy-index.js';
import { pythonJson } from '../format/vmstate.js';
import { toSafeNumber } from '../format/int64.js';

const name = fc.string({ minLength: 1, maxLength: 255, unit: fc.integer({ min: 1, max: 0xff }).map((c) => String.fromCharCode(c)) });
const u32 = fc.nat({ max: 0xffffffff });
const safe = fc.nat({ max: Number.MAX_SAFE_INTEGER });

describe('codecs are mirror images', () => {
  it('section START/FULL header', () => {
    fc.assert(
      fc.property(fc.constantFrom(Section.START, Section.FULL), u32, name, u32, u32, (type, sectionId, idstr, instanceId, versionId) => {
        const bytes = encodeSectionStart({ type, sectionId, idstr, instanceId, versionId });
        expect(bytes[0]).toBe(type);
        const c = new ByteCursor(bytes.subarray(1), 1);
        expect(decodeSectionStart(c, type)).toEqual({ type, sectionId, idstr, instanceId, versionId });
        expect(c.remaining).toBe(0);
      }),
    );
  });

  it('configuration section', () => {
    fc.assert(
      fc.property(name, fc.uniqueArray(fc.constantFrom(...KNOWN_CAPABILITIES), { maxLength: 4 }), fc.option(fc.integer({ min: 10, max: 16 }), { nil: undefined }), (machine, capabilities, targetPageBits) => {
        const cfg = { machine, capabilities, ...(targetPageBits !== undefined ? { targetPageBits } : {}) };
        const bytes = encodeConfiguration(cfg);
        expect(bytes[0]).toBe(Section.CONFIGURATION);
        expect(decodeConfiguration(new ByteCursor(bytes.subarray(1), 1))).toEqual(cfg);
      }),
    );
  });

  it('mapped-ram header', () => {
    fc.assert(
      fc.property(u32, safe, safe, safe, (version, pageSize, bitmapOffset, pagesOffset) => {
        const h = { version, pageSize, bitmapOffset, pagesOffset };
        const bytes = encodeMappedRamHeader(h);
        expect(bytes.length).toBe(28);
        expect(decodeMappedRamHeader(new ByteCursor(bytes), 'h')).toEqual(h);
      }),
    );
  });

  it('command section', () => {
    fc.assert(
      fc.property(fc.nat({ max: 0xffff }), fc.uint8Array({ maxLength: 300 }), (command, data) => {
        const bytes = encodeCommand({ command, data });
        const got = decodeCommand(new ByteCursor(bytes.subarray(1), 1));
        expect(got.command).toBe(command);
        expect([...got.data]).toEqual([...data]);
      }),
    );
  });

  it('libvirt header', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 1 << 20 }), fc.constantFrom(0, 6), fc.nat({ max: 1 }), (dataLength, format, wasRunning) => {
        const bytes = encodeLibvirtHeader({ dataLength, format, wasRunning });
        const h = decodeLibvirtHeader(bytes, 92 + dataLength + 100);
        expect(h).toMatchObject({ version: 2, dataLength, format, wasRunning, streamOffset: 92 + dataLength, partial: false, littleEndian: true });
      }),
    );
  });

  it('golden bytes: the mapped-ram header of pc.ram in a QEMU 10.0.2 q35 file', () => {
    // From a 32 MiB q35 guest saved by QEMU 10.0.2 with mapped-ram, bytes 0x6f..0x8a.
    const golden = Uint8Array.from(Buffer.from('00000001' + '0000000000001000' + '000000000000008b' + '0000000000100000', 'hex'));
    const h = decodeMappedRamHeader(new ByteCursor(golden, 0x6f), 'pc.ram');
    expect(h).toEqual({ version: 1, pageSize: 4096, bitmapOffset: 0x8b, pagesOffset: 0x100000 });
    expect(Buffer.from(encodeMappedRamHeader(h)).equals(Buffer.from(golden))).toBe(true);
    // And the placement rule gives QEMU's offsets for every block of that file.
    expect(mappedRamPlacement(0x8b, 32 << 20, 4096)).toMatchObject({ bitmapOffset: 0x8b, bitmapSize: 1024, pagesOffset: 0x100000, streamResumes: 0x2100000 });
    expect(mappedRamPlacement(0x2100039, 128 << 10, 4096)).toMatchObject({ pagesOffset: 0x2200000 });
  });
});

describe('bitmap', () => {
  it('runs, counts and ranges agree with a bit-by-bit model', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 700 }), fc.array(fc.tuple(fc.nat(), fc.nat({ max: 80 }), fc.boolean()), { maxLength: 12 }), (pages, ops) => {
        const bm = new Uint8Array(bitmapBytes(pages));
        const model = new Array<boolean>(pages).fill(false);
        for (const [a, n, v] of ops) {
          const first = a % pages;
          const count = Math.min(n, pages - first);
          setRange(bm, first, count, v);
          for (let i = first; i < first + count; i++) model[i] = v;
        }
        expect(countBits(bm, pages)).toBe(model.filter(Boolean).length);
        for (let i = 0; i < pages; i++) expect(testBit(bm, i)).toBe(model[i]);
        const fromRuns = new Array<boolean>(pages).fill(false);
        let prevEnd = -1;
        for (const r of bitRuns(bm, 0, pages)) {
          expect(r.first).toBeGreaterThan(prevEnd); // maximal and ordered
          prevEnd = r.first + r.count;
          for (let i = r.first; i < r.first + r.count; i++) fromRuns[i] = true;
        }
        expect(fromRuns).toEqual(model);
        expect(firstTailBit(bm, pages)).toBe(-1);
      }),
    );
  });

  it('size is whole 64-bit words, as QEMU allocates it', () => {
    expect(bitmapBytes(1)).toBe(8);
    expect(bitmapBytes(64)).toBe(8);
    expect(bitmapBytes(65)).toBe(16);
    expect(bitmapBytes(8192)).toBe(1024);
  });
});

describe('legacy index', () => {
  it('after any record sequence, every page maps to its last copy', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat({ max: 63 }), fc.boolean()), { maxLength: 200 }), (records) => {
        const idx = new LegacyIndex();
        const model = new Map<number, number>();
        let offset = 1000;
        for (const [page, zero] of records) {
          const data = zero ? -1 : offset;
          idx.add(page, data);
          model.set(page, data);
          offset += 4096 + 8;
        }
        for (let p = 0; p < 64; p++) {
          const r = idx.find(p);
          const want = model.get(p);
          if (want === undefined) expect(r).toBeUndefined();
          else {
            expect(r).toBeDefined();
            const got = r!.dataOffset === -1 ? -1 : r!.dataOffset + (p - r!.first) * r!.stride;
            expect(got).toBe(want);
          }
        }
        // Runs stay sorted and disjoint.
        for (let i = 1; i < idx.runs.length; i++) expect(idx.runs[i].first).toBeGreaterThanOrEqual(idx.runs[i - 1].first + idx.runs[i - 1].count);
      }),
    );
  });

  it('consecutive records coalesce into one run', () => {
    const idx = new LegacyIndex();
    for (let p = 0; p < 1000; p++) idx.add(p, 100 + p * 4104);
    expect(idx.runs).toHaveLength(1);
    expect(idx.runs[0]).toMatchObject({ first: 0, count: 1000, stride: 4104 });
  });
});

describe('helpers', () => {
  it('64-bit values above 2^53 - 1 are refused, not rounded', () => {
    expect(toSafeNumber(2n ** 53n - 1n, 'f', 0)).toBe(Number.MAX_SAFE_INTEGER);
    expect(() => toSafeNumber(2n ** 53n, 'f', 7)).toThrow(expect.objectContaining({ code: 'VALUE_TOO_LARGE', offset: 7 }));
  });

  it('pythonJson matches JSON.stringify(…, 4) for ASCII data, and escapes like Python', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 3 }), (v) => {
        fc.pre(!JSON.stringify(v).match(/[^\x20-\x7e]|\\u|-0|e[+-]?\d|\d\.\d/));
        expect(pythonJson(v)).toBe(JSON.stringify(v, null, 4));
      }),
    );
    expect(pythonJson('é\u0001')).toBe('"\\u00e9\\u0001"');
    expect(pythonJson(new Map([['2', 'a'], ['1', 'b']]))).toBe('{\n    "2": "a",\n    "1": "b"\n}');
  });
});
