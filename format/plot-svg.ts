/**
 * A picture of RAMBlock grids (format/plot-grid.ts) as an SVG document:
 * a title, a legend, and per block a header, a row of column offsets and
 * rows of cells labelled with the address of their first cell.
 *
 * Neighbouring cells of one colour in a row are one rectangle, and a cell
 * of no page of the block is no rectangle at all, so a sparse 64 GiB guest
 * is a few hundred elements. Colours come from a style: how much of a cell
 * is data (ramsnap plot), or added, removed and changed (diff --plot).
 *
 * Pure: writer/plot.ts counts the pages and writes the file.
 */
import type { BlockGrid, GridSection } from './plot-grid.js';
import { hex } from './phys-map.js';
import { gridTotals } from './plot-grid.js';

/** Cells per row: a row of a 64 GiB guest is 2 GiB, of a 128 MiB guest 4 MiB. */
export const COLUMNS = 128;
/** A cell is CELL wide and CELL_HEIGHT high; rows are a pixel apart. */
export const CELL = 6;
export const CELL_HEIGHT = 8;
const ROW = CELL_HEIGHT + 1;
/** Rows between two address labels: a label is 9px high. */
const LABEL_EVERY = 2;
const MARGIN = 16;
const LABELS = 104;
/** x of a grid's first column. */
export const GRID_LEFT = MARGIN + LABELS;
/** The picture's own width in SVG units; --width scales it. */
export const NATURAL_WIDTH = GRID_LEFT + COLUMNS * CELL + MARGIN;
const SANS = 'DejaVu Sans, Verdana, Arial, sans-serif';
const MONO = 'DejaVu Sans Mono, Menlo, Consolas, monospace';
/** Rough advance of a character at 11px of the sans font, for laying out the legend. */
const CHAR_WIDTH = 6.4;

export interface LegendEntry {
  colour: string;
  label: string;
}

export interface PlotStyle {
  /** Colour of a cell from its counts (counts[at..at + kinds)) and the block's pages it holds (never 0). */
  colour(counts: Uint32Array, at: number, capacity: number): string;
  legend: LegendEntry[];
  /** A block's totals in words. */
  summary(totals: number[], grid: BlockGrid): string;
}

export interface Picture {
  title: string;
  lines: string[];
  style: PlotStyle;
  grids: BlockGrid[];
  notes: string[];
  /** Width of the picture in pixels; default NATURAL_WIDTH. */
  width?: number;
}

// Colours: the data/diff colours are strong and distinct (Dark2, readable with the common colour-vision deficiencies); what is not data is pale.
const DATA = '#1f4e9c';
const ZERO = '#f2b134';
const ABSENT = '#e2e2e2';
const ADDED = '#1b9e77';
const REMOVED = '#d95f02';
const CHANGED = '#7570b3';
const UNCHANGED = '#b9c6d8';
const NEITHER = '#ececec';
export const COLOURS = { DATA, ZERO, ABSENT, ADDED, REMOVED, CHANGED, UNCHANGED, NEITHER } as const;

/** Kinds of page counted for `ramsnap plot` (absent pages are the rest of a cell). */
export const Occupancy = { DATA: 0, ZERO: 1 } as const;
/** Kinds counted for `diff --plot`: the three changes, and pages present in either file (unchanged ones are those less the changes). */
export const Change = { ADDED: 0, REMOVED: 1, CHANGED: 2, IN_EITHER: 3 } as const;

/**
 * How strongly a cell shows its strong colour: any page of it at all
 * shows (a few MiB in a 16 MiB cell must not vanish), then darker in
 * eight steps as the share grows.
 */
function strength(share: number): number {
  return share <= 0 ? 0 : 0.5 + 0.5 * (Math.ceil(share * 8) / 8);
}

export const occupancyStyle: PlotStyle = {
  colour(c, at, capacity) {
    const data = c[at + Occupancy.DATA];
    const zero = c[at + Occupancy.ZERO];
    const pale = zero > 0 && zero >= capacity - data - zero ? ZERO : ABSENT;
    return mix(pale, DATA, strength(data / capacity));
  },
  legend: [
    { colour: DATA, label: 'all data' },
    { colour: mix(ABSENT, DATA, strength(1 / 64)), label: 'a little data (the more, the darker)' },
    { colour: ZERO, label: 'present, all zeros' },
    { colour: ABSENT, label: 'absent from the file (zeros)' },
  ],
  summary(t, g) {
    const absent = g.pages - t[Occupancy.DATA] - t[Occupancy.ZERO];
    const share = t[Occupancy.DATA] ? ` (${percent(t[Occupancy.DATA] / g.pages)})` : '';
    return `data ${size(t[Occupancy.DATA] * g.pageSize)}${share} · present zeros ${size(t[Occupancy.ZERO] * g.pageSize)} · absent ${size(absent * g.pageSize)}`;
  },
};

export const diffStyle: PlotStyle = {
  colour(c, at, capacity) {
    const changes = [c[at + Change.ADDED], c[at + Change.REMOVED], c[at + Change.CHANGED]];
    const changed = changes[0] + changes[1] + changes[2];
    const unchanged = c[at + Change.IN_EITHER] - changed;
    const pale = unchanged > 0 && unchanged >= capacity - c[at + Change.IN_EITHER] ? UNCHANGED : NEITHER;
    if (!changed) return pale;
    // The kind with most pages names the cell: one of three colours, as the legend says.
    const top = changes.indexOf(Math.max(...changes));
    return mix(pale, [ADDED, REMOVED, CHANGED][top], strength(changed / capacity));
  },
  legend: [
    { colour: ADDED, label: 'added (zero in A, data in B)' },
    { colour: REMOVED, label: 'removed (data in A, zero in B)' },
    { colour: CHANGED, label: 'changed' },
    { colour: mix(NEITHER, CHANGED, strength(1 / 64)), label: 'paler: a few pages of the cell' },
    { colour: UNCHANGED, label: 'unchanged (in a file)' },
    { colour: NEITHER, label: 'in neither file' },
  ],
  summary(t, g) {
    return `added ${size(t[Change.ADDED] * g.pageSize)} · removed ${size(t[Change.REMOVED] * g.pageSize)} · changed ${size(t[Change.CHANGED] * g.pageSize)}`;
  },
};

export function renderSvg(p: Picture): string {
  const out: string[] = [];
  let y = MARGIN;
  const text = (x: number, yy: number, s: string, attrs = ''): void => void out.push(`<text x="${x}" y="${yy}"${attrs ? ' ' + attrs : ''}>${esc(s)}</text>`);

  y += 16;
  text(MARGIN, y, p.title, 'font-size="16" font-weight="bold"');
  for (const line of p.lines) {
    y += 15;
    text(MARGIN, y, line, 'font-size="11" fill="#444"');
  }
  y += 12;
  // The legend, wrapped to the picture's width, plus a swatch for addresses without memory.
  let x = MARGIN;
  y += 10;
  for (const e of [...p.style.legend, { colour: 'none', label: 'no memory of the block there' }]) {
    const w = 14 + e.label.length * CHAR_WIDTH + 14;
    if (x + w > NATURAL_WIDTH - MARGIN && x > MARGIN) {
      x = MARGIN;
      y += 16;
    }
    out.push(`<rect x="${x}" y="${y - 9}" width="10" height="10" fill="${e.colour === 'none' ? '#fff' : e.colour}" stroke="#999" stroke-width="0.5"/>`);
    text(x + 14, y, e.label, 'font-size="11"');
    x += w;
  }
  y += 8;

  for (const g of p.grids) {
    y += 24;
    const physical = g.sections[0]?.physical ?? false;
    const where = physical ? 'guest-physical addresses' : `block offsets${g.mappedAt !== undefined ? ` (the guest sees it at ${hex(g.mappedAt)})` : ''}`;
    out.push(`<text x="${MARGIN}" y="${y}" font-size="12"><tspan font-weight="bold">${esc(g.block)}</tspan>${esc(`  ${size(g.usedLength)} · ${where} · one cell = ${size(g.pagesPerCell * g.pageSize)}`)}</text>`);
    y += 14;
    text(MARGIN, y, p.style.summary(gridTotals(g), g), 'font-size="11" fill="#444"');
    // Column offsets within a row.
    y += 13;
    const cols = Math.min(COLUMNS, Math.max(...g.sections.map((s) => s.cells)));
    for (let c = 0; c <= cols; c += COLUMNS / 4) {
      const anchor = c === 0 ? 'start' : c >= cols ? 'end' : 'middle';
      text(GRID_LEFT + c * CELL, y, c === 0 ? '+0' : `+${size(c * g.pagesPerCell * g.pageSize)}`, `font-size="9" fill="#777" font-family="${MONO}" text-anchor="${anchor}"`);
    }
    y += 4;
    let previous: GridSection | undefined;
    for (const s of g.sections) {
      const gap = sectionHeading(g, previous, s);
      if (gap) {
        y += 12;
        text(GRID_LEFT, y, gap, 'font-size="10" font-style="italic" fill="#555"');
        y += 4;
      }
      y = drawSection(out, p.style, g, s, y);
      previous = s;
    }
    for (const n of g.notes) {
      y += 13;
      text(GRID_LEFT, y, n, 'font-size="10" fill="#555"');
    }
  }
  y += 6;
  for (const line of p.notes.flatMap((n) => wrap(n, Math.floor((NATURAL_WIDTH - 2 * MARGIN) / CHAR_WIDTH)))) {
    y += 15;
    text(MARGIN, y, line, 'font-size="11" fill="#444"');
  }
  y += MARGIN;
  const width = p.width ?? NATURAL_WIDTH;
  const height = Math.ceil((y * width) / NATURAL_WIDTH);
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${NATURAL_WIDTH} ${y}" font-family="${SANS}">\n` +
    `<rect width="100%" height="100%" fill="#fff"/>\n${out.join('\n')}\n</svg>\n`
  );
}

/** Rows of a section from `y`; returns the y after them. Runs of one colour in a row are one rectangle. */
function drawSection(out: string[], style: PlotStyle, g: BlockGrid, s: GridSection, y: number): number {
  const rows = Math.ceil(s.cells / COLUMNS);
  const rowBytes = COLUMNS * g.pagesPerCell * g.pageSize;
  const top = y + 2;
  for (let r = 0; r < rows; r++) {
    const ry = top + r * ROW;
    if (r % LABEL_EVERY === 0) out.push(`<text x="${GRID_LEFT - 6}" y="${ry + CELL_HEIGHT}" font-size="9" font-family="${MONO}" text-anchor="end" fill="#333">${hex(s.address + r * rowBytes)}</text>`);
    let runStart = 0;
    let runColour: string | undefined;
    const end = Math.min(COLUMNS, s.cells - r * COLUMNS);
    for (let c = 0; c <= end; c++) {
      const cell = r * COLUMNS + c;
      const colour = c < end && s.capacity[cell] ? style.colour(s.counts, cell * g.kinds, s.capacity[cell]) : undefined;
      if (colour === runColour) continue;
      if (runColour) out.push(`<rect x="${GRID_LEFT + runStart * CELL}" y="${ry}" width="${(c - runStart) * CELL}" height="${CELL_HEIGHT}" fill="${runColour}"/>`);
      runStart = c;
      runColour = colour;
    }
  }
  const width = Math.min(COLUMNS, s.cells) * CELL;
  out.push(`<rect x="${GRID_LEFT - 0.5}" y="${top - 0.5}" width="${width + 1}" height="${rows * ROW}" fill="none" stroke="#aaa" stroke-width="0.5"/>`);
  return top + rows * ROW;
}

/** The line above a section: the hole before it, or that it holds pages the map shows nowhere. */
function sectionHeading(g: BlockGrid, previous: GridSection | undefined, s: GridSection): string | undefined {
  const ps = g.pageSize;
  if (!s.physical) {
    if (!previous) return undefined;
    const first = Math.min(...s.pieces.map((p) => p.first));
    const end = Math.max(...s.pieces.map((p) => p.first + p.count));
    return `block offsets ${hex(first * ps)}-${hex(end * ps - 1)}: not in the guest-physical map (hidden by a device window)`;
  }
  if (!previous?.physical) return undefined;
  const from = previous.address + Math.max(...previous.pieces.map((p) => p.at + p.count)) * ps;
  const to = s.address + Math.min(...s.pieces.map((p) => p.at)) * ps;
  return `no ${g.block} from ${hex(from)} to ${hex(to - 1)} (${size(to - from)}: device and firmware windows)`;
}

/** Lines of at most `width` characters, broken at spaces (a word longer than that is a line of its own). */
function wrap(s: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of s.split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  return lines;
}

/** A share as a percentage, never 0% or 100% for a share that is neither. */
function percent(share: number): string {
  const p = share * 100;
  if (p < 0.1) return '<0.1%';
  if (p > 99.9 && share < 1) return '>99.9%';
  return `${p.toFixed(p < 10 ? 1 : 0)}%`;
}

/** Bytes in binary units, exact where it can be (64 GiB, 16 MiB), else to about three figures. */
export function size(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  let digits = Number.isInteger(v) ? 0 : v >= 100 ? 0 : v >= 10 ? 1 : 2;
  // 63.98 GiB absent is not "64.0 GiB": one more digit rather than round up to the whole.
  while (digits < 3 && !Number.isInteger(v) && Number(v.toFixed(digits)) === Math.round(v)) digits++;
  // 1.5 GiB, not 1.50 GiB.
  return `${v.toFixed(digits).replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, '')} ${units[u]}`;
}

/** Text for XML: markup characters escaped, and characters XML cannot hold (a block name is any bytes) shown as \xNN. */
export function esc(s: string): string {
  return s.replace(/[&<>"']|[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]/g, (c) =>
    c === '&' ? '&amp;' : c === '<' ? '&lt;' : c === '>' ? '&gt;' : c === '"' ? '&quot;' : c === "'" ? '&apos;' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );
}

/** `a` moved towards `b` by `t` (0..1), as #rrggbb. */
export function mix(a: string, b: string, t: number): string {
  const ca = parseInt(a.slice(1), 16);
  const cb = parseInt(b.slice(1), 16);
  let out = 0;
  for (const shift of [16, 8, 0]) {
    const x = (ca >> shift) & 0xff;
    const y = (cb >> shift) & 0xff;
    out |= Math.round(x + (y - x) * t) << shift;
  }
  return `#${out.toString(16).padStart(6, '0')}`;
}
