/**
 * The end of the stream: the device description after EOF (found first,
 * since device sections need it), and at EOF the rules that need the whole
 * stream: regions disjoint, every section ended, nothing after EOF but the
 * description.
 */
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import { MAX_VMDESC, locateVmDescription, parseVmDescription } from '../../format/vmdesc.js';
import type { WalkState } from './state.js';

/** How far from the end the device description is looked for (analyze-migration.py looks at 10 MiB). */
export const VMDESC_SEARCH = MAX_VMDESC + 5;
const VMDESC_STEP = 1 << 20;

/**
 * The description sits after EOF at the very end, but device sections
 * come before it and cannot be parsed without it, so it is found first.
 */
export async function loadVmDescription(w: WalkState): Promise<void> {
  const size = w.source.size;
  const floor = Math.max(w.opts.streamOffset, size - VMDESC_SEARCH);
  // Walk the tail backwards a step at a time; steps overlap by 5 bytes so a header on a boundary is seen.
  for (let end = size; end - floor >= 6; end -= VMDESC_STEP) {
    const start = Math.max(floor, end - VMDESC_STEP - 5);
    const chunk = await w.source.read(start, Math.min(end + 5, size) - start, 'vmdescription');
    const loc = locateVmDescription(chunk, start, size);
    if (loc) {
      if (loc.length > MAX_VMDESC) return;
      const json = await w.source.read(loc.offset + 5, loc.length, 'vmdescription');
      const desc = parseVmDescription(json, loc.offset + 5);
      w.model.vmdesc = { offset: loc.offset, length: loc.length, desc };
      return;
    }
    if (start === floor) return;
  }
}

/** After EOF: regions disjoint, nothing left open, the description in place. */
export function finish(w: WalkState): void {
  const m = w.model;
  const r = w.r;
  checkOverlaps(w);
  if (m.ramSectionId === undefined) w.warn('NO_RAM_SECTION', 'stream has no RAM section', 'section[ram]', m.streamOffset);
  for (const open of w.openSections.values()) {
    throw new RamsnapFormatError(FormatCode.INCOMPLETE, `section ${open.name} was started but never ended`, {
      field: `section[${open.name}]`,
      offset: open.offset,
    });
  }
  for (const b of m.blocks) if (b.legacy) b.pagesPresent = b.legacy.pagesWithData;
  if (m.vmdesc) {
    if (r.pos !== m.vmdesc.offset) {
      throw new RamsnapFormatError(FormatCode.TRAILING_DATA, 'bytes between EOF and the device description', {
        field: 'vmdescription',
        offset: r.pos,
        expected: m.vmdesc.offset,
        actual: r.pos,
      });
    }
  } else if (r.pos < w.source.size) {
    throw new RamsnapFormatError(FormatCode.TRAILING_DATA, 'bytes after EOF that are not a device description', {
      field: 'vmdescription',
      offset: r.pos,
      expected: w.source.size,
      actual: r.pos,
    });
  } else {
    // QEMU loads such a stream ("Expected vmdescription section"); there were no device sections to describe.
    w.warn('NO_DEVICE_DESCRIPTION', 'stream has no device description (RAM only)', 'vmdescription', r.pos);
  }
  if (w.ignoreShared) {
    w.warn('IGNORE_SHARED', 'saved with x-ignore-shared: blocks on shared memory were left out of the file and read as zero here', 'configuration/capabilities', m.streamOffset);
  }
}

function checkOverlaps(w: WalkState): void {
  const regions = [...w.regions].sort((a, b) => a.start - b.start);
  for (let i = 1; i < regions.length; i++) {
    const a = regions[i - 1];
    const b = regions[i];
    if (b.start < a.end) {
      throw new RamsnapFormatError(FormatCode.PAGES_OVERLAP, `${b.what} overlaps ${a.what}`, {
        field: b.what,
        offset: b.start,
        expected: `>= ${a.end}`,
        actual: b.start,
      });
    }
  }
}
