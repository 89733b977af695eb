/**
 * What ramsnap's reader accepts bounds what its writers produce: a file
 * the reader refuses (LIMIT_EXCEEDED) would be a file `ramsnap verify`
 * rejects, so the writers refuse to start one.
 */
import { RamsnapUsageError } from '../format/errors.js';
import { bitmapBytes, type PlanBlock } from '../format/layout.js';
import type { DeviceState } from '../format/tail.js';
import { parseVmDescription } from '../format/vmdesc.js';
import { MAX_BITMAP_MEMORY, MAX_BLOCKS } from '../reader/walk.js';

export function checkReadable(blocks: PlanBlock[], pageSize: number, layout: 'mapped-ram' | 'legacy'): void {
  if (blocks.length > MAX_BLOCKS) {
    throw new RamsnapUsageError('LIMIT_EXCEEDED', `${blocks.length} RAM blocks: ramsnap reads at most ${MAX_BLOCKS}`, 'blocks');
  }
  // The reader holds every mapped-ram bitmap in memory (a legacy stream's pages are indexed instead).
  if (layout === 'legacy') return;
  const bitmaps = blocks.reduce((n, b) => n + bitmapBytes(Math.ceil(b.usedLength / pageSize)), 0);
  if (bitmaps > MAX_BITMAP_MEMORY) {
    throw new RamsnapUsageError('LIMIT_EXCEEDED', `the blocks need ${bitmaps} bytes of bitmaps at ${pageSize}-byte pages: ramsnap reads at most ${MAX_BITMAP_MEMORY}`, 'blocks.usedLength');
  }
}

/**
 * A device description that gives a page size makes the reader take it
 * (and check the blocks against it): it must be the page size written.
 */
export function checkDescribedPageSize(device: DeviceState | undefined, pageSize: number): number | undefined {
  if (!device?.vmdesc) return undefined;
  const described = parseVmDescription(device.vmdesc, 0).page_size;
  if (described !== undefined && described !== pageSize) {
    throw new RamsnapUsageError('PAGE_SIZE_MISMATCH', `the device description says page size ${described}, the blocks are written with ${pageSize}`, 'pageSize');
  }
  return described;
}

/**
 * The page size a reader takes for a legacy stream that records none
 * (no target-page-bits, no description): reader/walk.ts decidePageSize,
 * which knows sun4u and sun4v as the 8 KiB machines.
 */
export function unrecordedPageSize(machine: string): number {
  return /^sun4[uv]/.test(machine) ? 8192 : 4096;
}
