/**
 * The cells of a picture of a RAMBlock (`ramsnap plot`, `diff --plot`):
 * which pages each cell stands for, and how many of them are of each kind.
 *
 * A cell stands for a run of pages, a power of two chosen from the block's
 * size so that a block never has more than its budget of cells: a 64 GiB
 * guest is drawn with as many cells as a 128 MiB one, only coarser. A
 * cell counts the pages of each kind it holds; the picture colours it by
 * that mix (format/plot-svg.ts), never one element per page.
 *
 * Cells are laid out in sections of contiguous addresses: one section of
 * block offsets, or, where the machine's memory map is known, the block's
 * pieces in guest-physical order (RAM below and above the x86 PCI hole are
 * two sections), and the block's pages that the map shows nowhere (RAM
 * under the VGA window) as a section of block offsets of their own.
 *
 * Pure: the caller counts pages (writer/plot.ts).
 */
import type { PhysRange } from './phys-map.js';

/** Cells of the machine's main RAM at most (before the cells of a small gap between two physical pieces). */
export const MAIN_CELL_BUDGET = 4096;
/** Cells of any other block at most: ROMs and framebuffers are small and drawn small. */
export const OTHER_CELL_BUDGET = 512;
/** Two physical pieces of a block further apart than this many cells are drawn as two sections. */
const SECTION_GAP_CELLS = 8;
/** A physical layout needing more sections than this (a map file of many small pieces) falls back to block offsets. */
const MAX_SECTIONS = 8;

export interface GridPiece {
  /** Page of the section (from its first cell's first page) where the piece starts. */
  at: number;
  /** The block's first page in the piece. */
  first: number;
  count: number;
}

export interface GridSection {
  /** Address of the section's first cell: guest-physical, or a block offset. */
  address: number;
  physical: boolean;
  cells: number;
  pieces: GridPiece[];
  /** Pages of the block in each cell (0 where the address holds no page of the block). */
  capacity: Uint32Array;
  /** Pages of each kind in each cell: counts[cell * kinds + kind]. */
  counts: Uint32Array;
}

export interface BlockGrid {
  block: string;
  usedLength: number;
  pageSize: number;
  pages: number;
  pagesPerCell: number;
  kinds: number;
  sections: GridSection[];
  /** Where the memory map shows this block (a ROM at the top of 4 GiB), when it is not laid out physically. */
  mappedAt?: number;
  /** Why the layout is what it is, when a reader may wonder. */
  notes: string[];
  /** Pieces of every section, by block page (for counting). */
  index: { section: GridSection; piece: GridPiece }[];
}

export interface GridOptions {
  /** Cells the block may have at most. */
  budget: number;
  /** The memory map's ranges of this block: lay it out in guest-physical order. */
  physical?: PhysRange[];
  /** The map shows the block at this address (label only). */
  mappedAt?: number;
}

/** The smallest power-of-two run of pages that keeps `pages` within `budget` cells. */
export function pagesPerCellFor(pages: number, budget: number): number {
  let ppc = 1;
  while (Math.ceil(pages / ppc) > budget) ppc *= 2;
  return ppc;
}

export function blockGrid(block: { name: string; usedLength: number; pageSize: number }, kinds: number, o: GridOptions): BlockGrid {
  const ps = block.pageSize;
  const pages = Math.floor(block.usedLength / ps);
  const ppc = pagesPerCellFor(pages, o.budget);
  const notes: string[] = [];
  let sections = o.physical?.length ? physicalSections(o.physical, ps, pages, ppc, kinds) : undefined;
  const cells = sections?.reduce((n, s) => n + s.cells, 0) ?? 0;
  if (sections && (sections.length > MAX_SECTIONS || cells > 2 * o.budget)) {
    notes.push(`the memory map shows ${block.name} in too many pieces to draw in guest-physical order: block offsets are shown`);
    sections = undefined;
  }
  sections ??= [section(0, false, 0, [{ at: 0, first: 0, count: pages }], ppc, kinds)];
  const index = sections.flatMap((s) => s.pieces.map((piece) => ({ section: s, piece }))).sort((x, y) => x.piece.first - y.piece.first);
  return { block: block.name, usedLength: block.usedLength, pageSize: ps, pages, pagesPerCell: ppc, kinds, sections, ...(o.mappedAt !== undefined ? { mappedAt: o.mappedAt } : {}), notes, index };
}

/** A section whose first cell starts at page `startPage` of its address space. */
function section(startPage: number, physical: boolean, pageSize: number, pieces: GridPiece[], ppc: number, kinds: number): GridSection {
  const end = Math.max(...pieces.map((p) => p.at + p.count));
  const cells = Math.ceil(end / ppc);
  const capacity = new Uint32Array(cells);
  for (const p of pieces) addSpan(capacity, 1, 0, p.at, p.count, ppc);
  return { address: startPage * pageSize, physical, cells, pieces, capacity, counts: new Uint32Array(cells * kinds) };
}

/** Adds 1 per page of [at, at + count) to the cells that hold them. */
function addSpan(counts: Uint32Array, kinds: number, kind: number, at: number, count: number, ppc: number): void {
  let p = at;
  const end = at + count;
  while (p < end) {
    const cell = Math.floor(p / ppc);
    const next = Math.min(end, (cell + 1) * ppc);
    counts[cell * kinds + kind] += next - p;
    p = next;
  }
}

function physicalSections(ranges: PhysRange[], ps: number, pages: number, ppc: number, kinds: number): GridSection[] {
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  const out: GridSection[] = [];
  let group: PhysRange[] = [];
  const flush = (): void => {
    if (!group.length) return;
    const startPage = Math.floor(group[0].start / ps / ppc) * ppc;
    const pieces = group.map((r) => ({ at: r.start / ps - startPage, first: r.offset / ps, count: r.length / ps }));
    out.push(section(startPage, true, ps, pieces, ppc, kinds));
    group = [];
  };
  for (const r of sorted) {
    const last = group[group.length - 1];
    if (last && r.start - (last.start + last.length) >= SECTION_GAP_CELLS * ppc * ps) flush();
    group.push(r);
  }
  flush();
  // The block's pages the map shows nowhere: by block offset, so that every page is drawn once.
  const byOffset = [...ranges].sort((a, b) => a.offset - b.offset);
  let next = 0;
  const hidden: [number, number][] = [];
  for (const r of byOffset) {
    if (r.offset / ps > next) hidden.push([next, r.offset / ps]);
    next = Math.max(next, (r.offset + r.length) / ps);
  }
  if (next < pages) hidden.push([next, pages]);
  for (const [first, end] of hidden) {
    const startPage = Math.floor(first / ppc) * ppc;
    out.push(section(startPage, false, ps, [{ at: first - startPage, first, count: end - first }], ppc, kinds));
  }
  return out;
}

/** Counts pages [first, first + count) of the block as `kind`. */
export function countPages(grid: BlockGrid, first: number, count: number, kind: number): void {
  const end = first + count;
  // A few pieces per block: a scan is enough.
  for (const { section, piece } of grid.index) {
    if (piece.first >= end) break;
    const from = Math.max(first, piece.first);
    const to = Math.min(end, piece.first + piece.count);
    if (to > from) addSpan(section.counts, grid.kinds, kind, piece.at + (from - piece.first), to - from, grid.pagesPerCell);
  }
}

/** Pages of each kind in the whole block. */
export function gridTotals(grid: BlockGrid): number[] {
  const totals = new Array<number>(grid.kinds).fill(0);
  for (const s of grid.sections) for (let i = 0; i < s.counts.length; i++) totals[i % grid.kinds] += s.counts[i];
  return totals;
}
