/**
 * The fuzz harness (npm run fuzz, test/fuzz/) in small: a fixed, seeded
 * set of mutated real QEMU files through the same checks (the slow path on
 * a file, and the in-memory hot path on the cut-down seeds), so CI runs
 * the mutator and the checks on every change. The full run is `npm run fuzz`
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
import { CoverageMap, CoverageProbe } from './fuzz/coverage.js';
import { runHot } from './fuzz/hot.js';
import { smallSeeds } from './fuzz/seeds.js';
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

describe('fast fuzzer (hot path, seeds, coverage)', () => {
  let small: Seed[];
  beforeAll(async () => {
    small = await smallSeeds(seeds, 20_261_206, 2);
  }, 60_000);

  it('the cut-down seeds are sound snapshots: each opens strictly with its devices decoded, smaller than its fixture', async () => {
    expect(small.map((s) => s.name)).toEqual(expect.arrayContaining(['pc-legacy~small', 'q35-mapped-ram~small', 'q35-mapped-ram~many', 'q35-mapped-ram~devices', 'q35-mapped-ram~delta', 'writer-0', 'writer-1']));
    expect(small.find((s) => s.name === 'q35-mapped-ram~delta')?.reference).toBe('q35-mapped-ram~small');
    for (const s of small) {
      const snap = await Snapshot.open(new ImageSource(s.image), { offset: s.offset, decodeDevices: true });
      const whole = seeds.find((f) => `${f.name}~small` === s.name);
      if (whole) {
        expect(snap.blocks.map((b) => b.name)).toEqual(whole.map.blocks.map((b) => b.name));
        expect(s.image.chunks.size).toBeLessThan(whole.image.chunks.size);
      }
      if (s.name.endsWith('~many')) expect(snap.blocks.length).toBeGreaterThan(40);
      await snap.close();
    }
  });

  it('200 inputs through the in-memory hot path (opens, reads, dump document, map, core notes, restore plan, plot, diff, delta record; the writers, delta and apply on 1 in 20): typed errors only', async () => {
    const maps = small.map((s) => s.map);
    const bases = new Map(small.map((s) => [s.name, { image: s.image, offset: s.offset }]));
    const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-fuzz-hot-'));
    const failures: string[] = [];
    const codes = new Set<string>();
    try {
      for (let i = 0; i < 200; i++) {
        const recipe = randomRecipe(maps, SEED, i);
        const seed = small.find((x) => x.name === recipe.fixture) as Seed;
        const reference = bases.get(seed.reference ?? seed.name);
        const r = await runHot(bases.get(recipe.fixture) as { image: SparseImage }, recipe, { writers: i % 20 === 0, scratch, strict: i % 2 === 0, compare: i % 2 === 1, reference });
        for (const f of r.failures) failures.push(`${recipe.fixture} [${recipe.ops.map((o) => o.why).join('; ')}]: ${f.kind} in ${f.step}: ${f.message}`);
        for (const c of r.codes) codes.add(c);
      }
      expect(fs.readdirSync(scratch)).toEqual([]);
    } finally {
      fs.rmSync(scratch, { recursive: true, force: true });
    }
    expect(failures).toEqual([]);
    expect(codes.size).toBeGreaterThanOrEqual(10);
  }, 120_000);

  it('block coverage: a take after a hot-path input names blocks of format/ and reader/ it ran; the same input again adds none', async () => {
    const probe = new CoverageProbe();
    await probe.start();
    const s = small.find((x) => x.name === 'q35-mapped-ram~small') as Seed;
    const recipe: Recipe = { fixture: s.name, origin: 'test', ops: [] };
    const cov = new CoverageMap();
    await runHot(s, recipe);
    const first = await probe.take();
    expect(cov.add(first.known, first.ran).length).toBeGreaterThan(100);
    const [format, reader] = cov.byFolder();
    expect(format.ran).toBeGreaterThan(0);
    expect(reader.ran).toBeGreaterThan(0);
    expect(format.ran).toBeLessThanOrEqual(format.known);
    await runHot(s, recipe);
    const again = await probe.take();
    expect(cov.adds(again.ran)).toBe(false);
  });

  it('fuzz finding (FUZZ_SECONDS=600 run of 2026-12-06, 646 MiB heap): a description edit after a 200 MiB hole inserted inside the description reads its declared length, not the rest of the file', () => {
    const s = seeds.find((x) => x.name === 'pc-legacy') as Seed;
    const v = s.map.vmdesc as { offset: number; length: number };
    const t0 = performance.now();
    const img = applyRecipe(s.image, {
      fixture: s.name,
      origin: 'test',
      ops: [
        { op: 'hole', at: v.offset + 5 + Math.floor(v.length / 2), length: 200 << 20, why: '' },
        { op: 'vmdesc', offset: v.offset, edit: { path: ['page_size'], action: 'set', value: 3000 }, why: '' },
      ],
    });
    // Before: the 200 MiB after the description's start read into one buffer and one string (2 s, 400 MiB); the edit fails either way.
    expect(performance.now() - t0).toBeLessThan(500);
    expect(img.size).toBe(s.image.size + (200 << 20));
  });

  it('fuzz finding (seed 2, input 2622): a description edit after one that nested it 20 000 deep leaves it as it is (the mutator overflowed its stack)', () => {
    const s = seeds.find((x) => x.name === 'pc-legacy') as Seed;
    const v = s.map.vmdesc as { offset: number };
    const nest: Recipe['ops'][number] = { op: 'vmdesc', offset: v.offset, edit: { path: ['devices', 0, 'fields'], action: 'nest', value: 20_000 }, why: '' };
    const nested = applyRecipe(s.image, { fixture: s.name, origin: 'test', ops: [nest] });
    const again = applyRecipe(s.image, {
      fixture: s.name,
      origin: 'test',
      ops: [nest, { op: 'vmdesc', offset: v.offset, edit: { path: ['devices', 1, 'fields', 0, 'array_len'], action: 'set', value: -1 }, why: '' }],
    });
    expect(again.size).toBe(nested.size);
    expect(Buffer.from(again.read(v.offset, again.size - v.offset)).equals(Buffer.from(nested.read(v.offset, nested.size - v.offset)))).toBe(true);
  });
});
