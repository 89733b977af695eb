/**
 * Pictures (issue 11 item 5): `ramsnap plot` and `diff --plot`, their SVG
 * (well-formed, bounded for a 64 GiB guest, labelled, coloured as
 * diffSnapshots says), PNG through resvg, and outputs written as every
 * ramsnap output.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CELL, COLOURS, GRID_LEFT } from '../format/plot-svg.js';
import { diffSnapshots } from '../reader/diff.js';
import { Snapshot } from '../reader/snapshot.js';
import { plotDiff, plotSnapshot } from '../writer/plot.js';
import { fixtureFiles } from './helpers/fixtures.js';
import { synthesize } from './helpers/synth.js';

const CLI = path.resolve('dist/analyze/bin.js');
const PS = 4096;
const GiB = 2 ** 30;
let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-plot-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
}

interface Element {
  name: string;
  attrs: Record<string, string>;
  text: string;
}

/**
 * A strict reading of the SVG we write: every tag closed in order, nothing
 * but entities after an ampersand, no markup character in text. Returns
 * its elements in document order (text: the element's own text).
 */
function parseSvg(svg: string): Element[] {
  const elements: Element[] = [];
  const open: Element[] = [];
  const tag = /<(\/?)([a-zA-Z]+)((?:\s+[a-zA-Z:-]+="[^"<>]*")*)\s*(\/?)>/y;
  let at = 0;
  while (at < svg.length) {
    const lt = svg.indexOf('<', at);
    const text = svg.slice(at, lt < 0 ? svg.length : lt);
    expect(text, `text at ${at}`).not.toMatch(/[>]|&(?!(amp|lt|gt|quot|apos);)/);
    if (open.length) open[open.length - 1].text += text;
    else expect(text.trim(), 'text outside the root').toBe('');
    if (lt < 0) break;
    tag.lastIndex = lt;
    const m = tag.exec(svg);
    expect(m, `a tag at ${lt}: ${svg.slice(lt, lt + 60)}`).not.toBeNull();
    const [whole, close, name, attrText, selfClose] = m as RegExpExecArray;
    if (close) {
      expect(open.pop()?.name, `</${name}> at ${lt}`).toBe(name);
    } else {
      const attrs = Object.fromEntries([...attrText.matchAll(/([a-zA-Z:-]+)="([^"]*)"/g)].map((a) => [a[1], a[2]]));
      const e = { name, attrs, text: '' };
      if (!open.length) expect(elements.length, 'one root').toBe(0);
      elements.push(e);
      if (!selfClose) open.push(e);
    }
    at = lt + whole.length;
  }
  expect(open, 'unclosed elements').toEqual([]);
  expect(elements[0].name).toBe('svg');
  return elements;
}

/** The grid cells' rectangles (legend swatches are 10 high, section frames have no fill). */
function cellRects(elements: Element[]): { x: number; y: number; width: number; fill: string }[] {
  return elements
    .filter((e) => e.name === 'rect' && e.attrs.height === '8' && e.attrs.fill !== 'none')
    .map((e) => ({ x: Number(e.attrs.x), y: Number(e.attrs.y), width: Number(e.attrs.width), fill: e.attrs.fill }));
}

function ls(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}

describe('ramsnap plot', () => {
  it('11.5 plot of a QEMU file is a well-formed SVG that names every block, with main RAM at guest-physical addresses', async () => {
    const fx = await fixtureFiles('q35-mapped-ram');
    const snap = await Snapshot.open(fx.snap, { decodeDevices: true });
    try {
      const svg = await plotSnapshot(snap, { name: 'q35-mapped-ram' });
      const elements = parseSvg(svg);
      const names = elements.filter((e) => e.name === 'tspan' && e.attrs['font-weight'] === 'bold').map((e) => e.text);
      expect(names).toEqual(snap.blocks.map((b) => b.name.replace(/&/g, '&amp;')));
      const text = elements.map((e) => e.text).join('\n');
      expect(text).toContain('guest-physical addresses');
      expect(text).toContain('the guest sees it at 0xfffc0000'); // pc.bios under 4 GiB
      // The data cells are what the file holds: 24 KiB of pc.ram data, said in the summary too.
      expect(text).toMatch(/data 24 KiB/);
      expect(cellRects(elements).length).toBeGreaterThan(0);
    } finally {
      await snap.close();
    }
  });

  it('11.5 a sparse 64 GiB guest is a bounded picture: its RAM below and above the PCI hole, a few hundred elements', async () => {
    const written = [0, 5 * GiB, 20 * GiB, 63 * GiB].map((at) => at / PS);
    const pages = new Map(written.map((p, i) => [p, new Uint8Array(PS).fill(i + 1)]));
    const file = synthesize({ machine: 'pc-q35-10.0', blocks: [{ name: 'pc.ram', usedLength: 64 * GiB, pages }] });
    const snap = await Snapshot.open(file.source(), { decodeDevices: true });
    const svg = await plotSnapshot(snap);
    const elements = parseSvg(svg);
    expect(elements.length).toBeLessThan(300);
    expect(svg.length).toBeLessThan(64 << 10);
    const text = elements.map((e) => e.text).join('\n');
    expect(text).toContain('one cell = 16 MiB');
    expect(text).toContain('no pc.ram from 0x80000000 to 0xffffffff');
    expect(elements.some((e) => e.name === 'text' && e.text === '0x100000000')).toBe(true);
    // Each written page shows as one cell, however small its share of it.
    expect(cellRects(elements).filter((r) => r.fill !== COLOURS.ABSENT)).toHaveLength(written.length);
  });

  it('11.5 diff --plot colours each page as diffSnapshots says: added, removed, changed, unchanged, in neither', async () => {
    const page = (seed: number): Uint8Array => new Uint8Array(PS).fill(seed);
    // One block of 64 pages: one page per cell, all in one row.
    const a = new Map([[1, page(1)], [2, page(2)], [3, page(3)], [4, page(0)], [9, page(9)]]);
    const b = new Map([[0, page(7)], [1, page(1)], [2, page(5)], [4, page(0)], [5, page(6)], [9, new Uint8Array(PS)]]);
    const open = (pages: Map<number, Uint8Array>) => Snapshot.open(synthesize({ blocks: [{ name: 'ram', usedLength: 64 * PS, pages }] }).source());
    const [snapA, snapB] = [await open(a), await open(b)];
    const d = await diffSnapshots(snapA, snapB);
    const want = new Array<string>(64).fill(COLOURS.NEITHER);
    for (const p of [1, 4]) want[p] = COLOURS.UNCHANGED;
    const colourOf = { added: COLOURS.ADDED, removed: COLOURS.REMOVED, changed: COLOURS.CHANGED };
    for (const kind of ['added', 'removed', 'changed'] as const) for (const r of d.blocks[0][kind]) for (let p = r.first; p < r.first + r.count; p++) want[p] = colourOf[kind];
    // The pair has each kind: 0 and 5 added, 3 and 9 removed, 2 changed.
    expect(d.blocks[0].totals).toEqual({ added: 2, removed: 2, changed: 1 });
    const got = new Array<string>(64).fill('');
    for (const r of cellRects(parseSvg(await plotDiff(snapA, snapB, { diff: d })))) {
      for (let x = r.x; x < r.x + r.width; x += CELL) got[(x - GRID_LEFT) / CELL] = r.fill;
    }
    expect(got).toEqual(want);
  });

  it('11.5 PNG output is a PNG of the requested width, rendered by resvg', async () => {
    const fx = await fixtureFiles('q35-mapped-ram');
    const snap = await Snapshot.open(fx.snap, { decodeDevices: true });
    try {
      const png = Buffer.from(await plotSnapshot(snap, { format: 'png', width: 640 }));
      expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
      // IHDR: the first chunk, width then height, big-endian.
      expect(png.toString('latin1', 12, 16)).toBe('IHDR');
      expect(png.readUInt32BE(16)).toBe(640);
      await expect(plotSnapshot(snap, { width: 10 })).rejects.toMatchObject({ code: 'BAD_NUMBER' });
    } finally {
      await snap.close();
    }
    // A file of many blocks is a tall picture: refused as a PNG before resvg is asked for a gigapixel.
    const blocks = Array.from({ length: 200 }, (_, i) => ({ name: `b${i}`, usedLength: 4 * PS }));
    const many = await Snapshot.open(synthesize({ blocks }).source());
    await expect(plotSnapshot(many, { format: 'png', width: 8192 })).rejects.toMatchObject({ code: 'PICTURE_TOO_LARGE' });
    expect(parseSvg(await plotSnapshot(many)).filter((e) => e.name === 'tspan')).toHaveLength(200);
  });
});

describe('ramsnap plot and diff --plot on the command line', () => {
  it('11.5 the CLI writes SVG and PNG (the bundled binary loads resvg), 0600, and diff --plot keeps the exit status of cmp', async () => {
    const before = await fixtureFiles('q35-mapped-ram');
    const during = await fixtureFiles('q35-mapped-ram-live');
    const dir = fs.mkdtempSync(path.join(tmp, 'ok-'));
    const svg = path.join(dir, 'm.svg');
    const png = path.join(dir, 'm.png');
    expect(cli('plot', before.snap, '-o', svg)).toMatchObject({ status: 0 });
    expect(cli('plot', before.snap, '-o', png, '--width', '1200')).toMatchObject({ status: 0 });
    expect(fs.readFileSync(png).readUInt32BE(16)).toBe(1200);
    expect(fs.statSync(svg).mode & 0o777).toBe(0o600);
    parseSvg(fs.readFileSync(svg, 'utf8'));
    const changes = path.join(dir, 'd.png');
    const r = cli('diff', before.snap, during.snap, '--plot', changes);
    expect([r.status, r.stdout.trim().split('\n').pop()]).toEqual([1, 'different']);
    expect(fs.readFileSync(changes).subarray(1, 4).toString()).toBe('PNG');
    expect(cli('diff', before.snap, before.snap, '--plot', path.join(dir, 'same.svg'))).toMatchObject({ status: 0 });
    expect(ls(dir)).toEqual(['d.png', 'm.png', 'm.svg', 'same.svg']);
    expect(cli('plot', '--help').stdout).toMatch(/occupancy map/);
    expect(cli('diff', '--help').stdout).toMatch(/--plot/);
  });

  it('11.5 a bad picture name, an existing output without --force and a bad --width are one coded line each, and leave nothing', async () => {
    const before = await fixtureFiles('q35-mapped-ram');
    const dir = fs.mkdtempSync(path.join(tmp, 'bad-'));
    const existing = path.join(dir, 'old.svg');
    fs.writeFileSync(existing, 'keep me');
    const cases: [string[], number, string][] = [
      [['plot', before.snap, '-o', path.join(dir, 'm.jpg')], 2, 'PLOT_FORMAT'],
      [['plot', before.snap, '-o', path.join(dir, 'm')], 2, 'PLOT_FORMAT'],
      [['plot', before.snap, '-o', existing], 1, 'OUTPUT_EXISTS'],
      [['plot', before.snap, '-o', path.join(dir, 'w.png'), '--width', '5'], 2, 'BAD_NUMBER'],
      [['plot', path.join(dir, 'missing.snap'), '-o', path.join(dir, 'n.svg')], 1, 'IO_ENOENT'],
      // diff's trouble is 2, whatever it is.
      [['diff', before.snap, before.snap, '--plot', path.join(dir, 'd.gif')], 2, 'PLOT_FORMAT'],
      [['diff', before.snap, before.snap, '--plot', existing], 2, 'OUTPUT_EXISTS'],
    ];
    for (const [args, status, code] of cases) {
      const r = cli(...args);
      expect(r.status, args.join(' ')).toBe(status);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toEqual([expect.stringMatching(new RegExp(`^ramsnap: ${code}: `))]);
    }
    expect(ls(dir)).toEqual(['old.svg']);
    expect(fs.readFileSync(existing, 'utf8')).toBe('keep me');
    expect(cli('plot', before.snap, '-o', existing, '--force')).toMatchObject({ status: 0 });
    expect(fs.readFileSync(existing, 'utf8')).toMatch(/^<svg /);
    expect(ls(dir)).toEqual(['old.svg']);
  });
});
