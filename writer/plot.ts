/**
 * Pictures of a snapshot's memory (`ramsnap plot`) and of what changed
 * between two (`ramsnap diff --plot`), as SVG or PNG.
 *
 * The pages are counted into cells (format/plot-grid.ts) and drawn by
 * format/plot-svg.ts. A snapshot's present pages are read, a chunk at a
 * time into one reused buffer, to tell data from zeros; absent pages are
 * never read. A diff's picture is drawn from diffSnapshots' ranges and the
 * two bitmaps, without reading a page again.
 *
 * PNG is rendered by resvg (@resvg/resvg-js), loaded only when a PNG is
 * asked for: a real SVG renderer gets fonts, anti-aliasing and the SVG
 * rules right, which a hand-made rasteriser would not.
 */
import path from 'node:path';
import { RamsnapError, RamsnapUsageError } from '../format/errors.js';
import { mainRamBlock } from '../format/main-ram.js';
import type { PhysMap } from '../format/phys-map.js';
import { MAIN_CELL_BUDGET, OTHER_CELL_BUDGET, blockGrid, countPages, type BlockGrid } from '../format/plot-grid.js';
import { Change, NATURAL_WIDTH, Occupancy, diffStyle, occupancyStyle, renderSvg, size } from '../format/plot-svg.js';
import { isZeroPage, zeroPageOf } from '../format/zero-pages.js';
import { diffSnapshots, unionRuns, type SnapshotDiff } from '../reader/diff.js';
import type { RamBlock } from '../reader/model.js';
import { memoryMap } from '../reader/phys.js';
import type { Snapshot } from '../reader/snapshot.js';
import { TempFile, type OutputOptions } from './sink.js';

export type PlotFormat = 'svg' | 'png';

export interface PlotOptions {
  /** svg (default) or png. */
  format?: PlotFormat;
  /** Width of the picture in pixels (PNG) or of the SVG's viewport; the height follows. */
  width?: number;
  /** The title's name for the snapshot (default: none). */
  name?: string;
  /** A map file instead of the machine's own memory map (reader/phys.ts). */
  mapFile?: string;
}

export interface DiffPlotOptions extends Omit<PlotOptions, 'name'> {
  /** The names of A and B in the title. */
  names?: [string, string];
  /** diffSnapshots(a, b), if the caller has it already: the pages are not compared again. */
  diff?: SnapshotDiff;
}

/** Widths a picture may be drawn at, in pixels. */
export const MIN_WIDTH = 200;
export const MAX_WIDTH = 8192;
/** Pixels a PNG may have at most (200 MiB of RGBA while rendered): a file of a thousand blocks is a tall picture. */
const MAX_PNG_PIXELS = 50_000_000;
/** Pages read at a time to tell data from zeros. */
const CHUNK_PAGES = 256;

/** The format an output path asks for by its extension; PLOT_FORMAT for any other. */
export function plotFormatOf(file: string): PlotFormat {
  const ext = path.extname(file).toLowerCase();
  if (ext === '.svg') return 'svg';
  if (ext === '.png') return 'png';
  throw new RamsnapUsageError('PLOT_FORMAT', `cannot tell the picture format of ${file}: name it FILE.svg or FILE.png`, 'output');
}

export function checkWidth(width: number | undefined): void {
  if (width !== undefined && (!Number.isInteger(width) || width < MIN_WIDTH || width > MAX_WIDTH)) {
    throw new RamsnapUsageError('BAD_NUMBER', `--width must be a whole number of pixels from ${MIN_WIDTH} to ${MAX_WIDTH}, got ${width}`, 'width');
  }
}

/** An occupancy map of every block: data, present zeros and absent pages. SVG text, or PNG bytes. */
export function plotSnapshot(snap: Snapshot, o?: PlotOptions & { format?: 'svg' }): Promise<string>;
export function plotSnapshot(snap: Snapshot, o: PlotOptions & { format: 'png' }): Promise<Uint8Array>;
export function plotSnapshot(snap: Snapshot, o?: PlotOptions): Promise<string | Uint8Array>;
export async function plotSnapshot(snap: Snapshot, o: PlotOptions = {}): Promise<string | Uint8Array> {
  checkWidth(o.width);
  const layout = await physicalLayout(snap, o.mapFile);
  const grids: BlockGrid[] = [];
  for (const block of layout.mainFirst(snap.blocks, (b) => b.name)) {
    const grid = layout.grid(block, 2);
    await countOccupancy(snap, block, grid);
    grids.push(grid);
  }
  const total = snap.blocks.reduce((n, b) => n + b.usedLength, 0);
  const svg = renderSvg({
    title: `Memory of ${o.name ?? 'a snapshot'}`,
    lines: [`${snap.model.configuration?.machine ?? 'machine unknown'} · ${snap.blocks.length} RAMBlocks, ${size(total)} · ${snap.model.mappedRam ? 'mapped-ram' : 'legacy stream'}`, layout.line],
    style: occupancyStyle,
    grids,
    notes: [],
    width: o.width,
  });
  return o.format === 'png' ? renderPng(svg, o.width) : svg;
}

/** The blocks both snapshots hold, coloured by the pages added, removed and changed from A to B. */
export function plotDiff(a: Snapshot, b: Snapshot, o?: DiffPlotOptions & { format?: 'svg' }): Promise<string>;
export function plotDiff(a: Snapshot, b: Snapshot, o: DiffPlotOptions & { format: 'png' }): Promise<Uint8Array>;
export function plotDiff(a: Snapshot, b: Snapshot, o?: DiffPlotOptions): Promise<string | Uint8Array>;
export async function plotDiff(a: Snapshot, b: Snapshot, o: DiffPlotOptions = {}): Promise<string | Uint8Array> {
  checkWidth(o.width);
  const d = o.diff ?? (await diffSnapshots(a, b));
  const layout = await physicalLayout(b, o.mapFile);
  const grids: BlockGrid[] = [];
  for (const bd of layout.mainFirst(d.blocks, (x) => x.block)) {
    const blockA = a.block(bd.block);
    const blockB = b.block(bd.block);
    const grid = layout.grid(blockB, 4);
    for (const r of unionRuns([a.presentRuns(blockA), b.presentRuns(blockB)], Infinity)) countPages(grid, r.first, r.count, Change.IN_EITHER);
    for (const [kind, list] of [[Change.ADDED, bd.added], [Change.REMOVED, bd.removed], [Change.CHANGED, bd.changed]] as const) {
      for (const r of list) countPages(grid, r.first, r.count, kind);
    }
    grids.push(grid);
  }
  const [nameA, nameB] = o.names ?? ['A', 'B'];
  const pages = (k: 'added' | 'removed' | 'changed'): number => d.blocks.reduce((n, x) => n + x.totals[k] * x.pageSize, 0);
  const notes = [
    ...(d.machine ? [`The machine differs: ${d.machine.a ?? '(none)'} in A, ${d.machine.b ?? '(none)'} in B.`] : []),
    ...d.layout.map((l) => `Layout: ${l}.`),
    ...d.onlyInA.map((n) => `Block ${n} is only in A (not drawn).`),
    ...d.onlyInB.map((n) => `Block ${n} is only in B (not drawn).`),
    ...d.resized.map((r) => `Block ${r.block} is ${size(r.a)} in A and ${size(r.b)} in B: not compared, not drawn.`),
    d.devices.same ? 'Device state: the same.' : `Device state differs: ${[...d.devices.changed, ...d.devices.onlyInA.map((k) => `${k} only in A`), ...d.devices.onlyInB.map((k) => `${k} only in B`)].join(', ')}.`,
  ];
  const svg = renderSvg({
    title: `What changed from A to B`,
    lines: [`A: ${nameA}`, `B: ${nameB}`, `${d.same ? 'the same' : 'different'}: added ${size(pages('added'))}, removed ${size(pages('removed'))}, changed ${size(pages('changed'))} · ${layout.line}`],
    style: diffStyle,
    grids,
    notes,
    width: o.width,
  });
  return o.format === 'png' ? renderPng(svg, o.width) : svg;
}

interface Layout {
  /** The block's grid: main RAM in guest-physical order where the map is known. */
  grid(block: RamBlock, kinds: number): BlockGrid;
  /** What the addresses are, for the subtitle. */
  line: string;
  /** The list with the machine's main RAM first (the block a reader looks for), the rest in the file's order. */
  mainFirst<T>(list: T[], name: (x: T) => string): T[];
}

/** The memory map if there is one (else block offsets, saying why), and the grids it gives. */
async function physicalLayout(snap: Snapshot, mapFile: string | undefined): Promise<Layout> {
  let map: PhysMap | undefined;
  let why = '';
  try {
    map = await memoryMap(snap, { mapFile });
  } catch (err) {
    // A picture is still worth drawing without the map; a bad --map file is the user's to fix.
    if (mapFile !== undefined || !(err instanceof RamsnapError)) throw err;
    why = err.code === 'NO_MEMORY_MAP' ? `ramsnap knows none for ${snap.model.configuration?.machine ?? 'a file without a machine type'}` : err.code;
  }
  const main = mainRamBlock(snap.blocks)?.block;
  const line = map
    ? `main RAM (${main?.name}) in guest-physical order, from the ${map.machine === 'file' ? 'map file' : `${map.machine} memory map`}`
    : `addresses are block offsets (no guest-physical map: ${why})`;
  return {
    line,
    mainFirst: (list, name) => [...list.filter((x) => name(x) === main?.name), ...list.filter((x) => name(x) !== main?.name)],
    grid(block, kinds) {
      const ranges = map?.ranges.filter((r) => r.block === block.name) ?? [];
      if (block === main) return blockGrid(block, kinds, { budget: MAIN_CELL_BUDGET, physical: ranges });
      const first = ranges.find((r) => r.offset === 0);
      return blockGrid(block, kinds, { budget: OTHER_CELL_BUDGET, ...(first ? { mappedAt: first.start } : {}) });
    },
  };
}

/** Counts each present page of the block as data or zeros (absent pages are what is left of each cell). */
async function countOccupancy(snap: Snapshot, block: RamBlock, grid: BlockGrid): Promise<void> {
  const ps = block.pageSize;
  const buf = Buffer.allocUnsafe(CHUNK_PAGES * ps);
  const zero = zeroPageOf(ps);
  for (const run of snap.presentRuns(block, 0, block.pages, CHUNK_PAGES)) {
    await snap.read(block, run.first * ps, run.count * ps, buf);
    // Runs of one kind within the chunk, counted at once.
    let start = 0;
    let isZero = isZeroPage(buf, 0, zero);
    for (let p = 1; p <= run.count; p++) {
      const z = p < run.count ? isZeroPage(buf, p, zero) : !isZero;
      if (z === isZero) continue;
      countPages(grid, run.first + start, p - start, isZero ? Occupancy.ZERO : Occupancy.DATA);
      start = p;
      isZero = z;
    }
  }
}

/** PNG bytes of an SVG, `width` pixels wide (default the SVG's own width), through resvg, loaded on first use. */
export async function renderPng(svg: string, width?: number): Promise<Uint8Array> {
  let resvg: typeof import('@resvg/resvg-js');
  try {
    resvg = await import('@resvg/resvg-js');
  } catch (err) {
    throw new RamsnapUsageError('PNG_UNAVAILABLE', `PNG output needs @resvg/resvg-js, which could not be loaded (${(err as Error).message.split('\n')[0]}): write an SVG instead (-o FILE.svg)`, 'output');
  }
  const px = width ?? NATURAL_WIDTH;
  const box = /viewBox="0 0 ([\d.]+) ([\d.]+)"/.exec(svg);
  const height = box ? Math.ceil((Number(box[2]) * px) / Number(box[1])) : 0;
  if (px * height > MAX_PNG_PIXELS) {
    throw new RamsnapUsageError('PICTURE_TOO_LARGE', `the picture would be ${px}x${height} pixels, more than ${MAX_PNG_PIXELS}: write an SVG (-o FILE.svg) or give a smaller --width`, 'width');
  }
  const image = await resvg.renderAsync(svg, {
    fitTo: { mode: 'width', value: px },
    background: '#ffffff',
    font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' },
    logLevel: 'off',
  });
  return new Uint8Array(image.asPng());
}

export interface WritePlotOptions extends Pick<OutputOptions, 'mode'> {
  /** Replace an existing regular file (never a device, FIFO, socket or directory). */
  force?: boolean;
}

/** Writes a picture as every ramsnap output: a temporary file (0600), renamed onto `output` only when complete. */
export async function writePlot(output: string, image: string | Uint8Array, o: WritePlotOptions = {}): Promise<number> {
  const bytes = typeof image === 'string' ? Buffer.from(image, 'utf8') : image;
  const temp = TempFile.create(output, { force: o.force, mode: o.mode });
  try {
    await temp.write(0, bytes);
    await temp.commit(bytes.length);
    return bytes.length;
  } catch (err) {
    await temp.discard();
    throw err;
  }
}
