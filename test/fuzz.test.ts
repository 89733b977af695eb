/**
 * The fuzz harness (npm run fuzz, test/fuzz/) in small: a fixed, seeded
 * set of mutated real QEMU files through the same checks, so CI runs the
 * mutator and the checks on every change. The full run is `npm run fuzz`
 * (docs/hardening.md has its figures).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Snapshot } from '../reader/snapshot.js';
import { runInput, type CheckContext, type Failure } from './fuzz/check.js';
import { loadCorpus, type Seed } from './fuzz/corpus.js';
import { SparseImage } from './fuzz/image.js';
import { ImageSource } from './fuzz/map.js';
import { applyRecipe, boundaryCuts, randomRecipe, type Recipe } from './fuzz/mutate.js';

const SEED = 20_251_123;
const INPUTS = 100;
/** A legacy, a mapped-ram, a libvirt-wrapped and an 8 KiB-page fixture: the kinds, in little time. */
const FIXTURES = ['pc-legacy', 'q35-mapped-ram', 'q35-libvirt-sparse', 'sparc64-sun4u-mapped-ram'];

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(here, '..', 'dist', 'analyze', 'bin.js');

let seeds: Seed[];
let ctx: CheckContext;
let workDir: string;

beforeAll(async () => {
  seeds = await loadCorpus(FIXTURES);
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-fuzz-test-'));
  ctx = { fixtures: new Map(seeds.map((s) => [s.name, { image: s.image, offset: s.offset }])), workDir, bin: fs.existsSync(BIN) ? BIN : undefined };
});

afterAll(() => {
  if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
});

describe('fuzz harness', () => {
  it(`${INPUTS} seeded inputs (boundary cuts and random recipes): typed errors only, no hang, output safe`, async () => {
    const maps = seeds.map((s) => s.map);
    const sweep = boundaryCuts(maps, SEED);
    const recipes: Recipe[] = Array.from({ length: INPUTS }, (_, i) => (i % 3 === 0 && sweep[i / 3] ? sweep[i / 3] : randomRecipe(maps, SEED, i)));
    const failures: { recipe: Recipe; failure: Failure }[] = [];
    const codes = new Set<string>();
    let slowest = 0;
    for (const [i, recipe] of recipes.entries()) {
      // One input also goes through the real binary (when it is built).
      const r = await runInput(ctx, recipe, { binary: i === 50, variant: i });
      for (const failure of r.failures) failures.push({ recipe, failure });
      for (const c of r.codes) codes.add(c);
      slowest = Math.max(slowest, r.ms - (r.steps.binary ?? 0));
    }
    expect(failures.map((f) => `${f.recipe.fixture} [${f.recipe.ops.map((o) => o.why).join('; ')}]: ${f.failure.kind} in ${f.failure.step}: ${f.failure.message}`)).toEqual([]);
    // The inputs reach many rules, not one.
    expect(codes.size).toBeGreaterThanOrEqual(10);
    expect(slowest).toBeLessThan(15_000);
  }, 180_000);

  it('input i of seed S is the same recipe every time, and different inputs differ', () => {
    const maps = seeds.map((s) => s.map);
    const a = Array.from({ length: 20 }, (_, i) => randomRecipe(maps, SEED, i));
    const b = Array.from({ length: 20 }, (_, i) => randomRecipe(maps, SEED, i));
    expect(JSON.stringify(a)).toBe(JSON.stringify(b));
    expect(new Set(a.map((r) => JSON.stringify(r.ops))).size).toBeGreaterThan(15);
    expect(JSON.stringify(randomRecipe(maps, SEED + 1, 0))).not.toBe(JSON.stringify(a[0]));
  });

  it('the structure map of a fixture agrees with the reader: every block, bitmap, page region and section', async () => {
    for (const s of seeds) {
      const snap = await Snapshot.open(new ImageSource(s.image), { offset: s.offset });
      expect(s.map.blocks.map((b) => b.name)).toEqual(snap.blocks.map((b) => b.name));
      for (const b of snap.blocks) {
        if (b.mappedRam) for (const at of [b.mappedRam.headerOffset, b.mappedRam.bitmapOffset, b.mappedRam.pagesOffset]) expect(s.map.boundaries).toContain(at);
      }
      for (const sec of snap.model.sections) expect(s.map.boundaries).toContain(sec.offset);
      expect(s.map.sections).toHaveLength(snap.model.sections.length);
      // Every copy of a block name holds that name.
      for (const nm of s.map.names) for (const at of nm.copies) expect(Buffer.from(s.image.read(at + 1, nm.name.length)).toString('latin1')).toBe(nm.name);
      await snap.close();
    }
  });

  it('mutations do what they say: cut, hole, splice, rename, description edit', () => {
    const s = seeds.find((x) => x.name === 'pc-legacy') as Seed;
    const img = s.image;
    const apply = (ops: Recipe['ops']): SparseImage => applyRecipe(img, { fixture: s.name, origin: 'test', ops });
    expect(apply([{ op: 'cut', at: 1000, why: '' }]).size).toBe(1000);
    const holed = apply([{ op: 'hole', at: 100, length: 1 << 20, why: '' }]);
    expect(holed.size).toBe(img.size + (1 << 20));
    expect(Buffer.from(holed.read(100 + (1 << 20), 64)).equals(Buffer.from(img.read(100, 64)))).toBe(true);
    expect(Buffer.from(holed.read(100, 1 << 20)).every((b) => b === 0)).toBe(true);
    const spliced = apply([{ op: 'splice', at: 10, remove: 3, hex: 'aabbccdd', why: '' }]);
    expect(spliced.size).toBe(img.size + 1);
    expect(Buffer.from(spliced.read(10, 4)).toString('hex')).toBe('aabbccdd');
    expect(Buffer.from(spliced.read(14, 50)).equals(Buffer.from(img.read(13, 50)))).toBe(true);
    const nm = s.map.names.find((n) => n.name === 'pc.ram');
    if (!nm) throw new Error('no pc.ram');
    const renamed = apply([{ op: 'rename', copies: nm.copies, hex: Buffer.from('../../x', 'latin1').toString('hex'), why: '' }]);
    expect(renamed.size).toBe(img.size + nm.copies.length * ('../../x'.length - 'pc.ram'.length));
    const v = s.map.vmdesc;
    if (!v) throw new Error('pc-legacy has no description');
    const edited = apply([{ op: 'vmdesc', offset: v.offset, edit: { path: ['page_size'], action: 'set', value: 3000 }, why: '' }]);
    const len = Buffer.from(edited.read(v.offset + 1, 4)).readUInt32BE(0);
    expect(edited.size).toBe(v.offset + 5 + len);
    expect(JSON.parse(Buffer.from(edited.read(v.offset + 5, len)).toString('utf8')).page_size).toBe(3000);
    // The base image is untouched by all of this.
    expect(img.size).toBe(s.map.size);
  });
});
