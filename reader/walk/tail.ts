/**
 * The end of the stream: the device description after EOF (looked for
 * first, since device sections need it), and at EOF the rules that need
 * the whole stream: regions disjoint, sections left open, the description
 * right after EOF, and bytes after it.
 */
import { Section } from '../../format/constants.js';
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import { MAX_VMDESC, locateVmDescription, parseVmDescription } from '../../format/vmdesc.js';
import type { SectionRecord, SnapshotModel } from '../model.js';
import { decodeDevicesAgain } from './devices.js';
import type { WalkState } from './state.js';

/** How far from the end the device description is looked for (analyze-migration.py looks at 10 MiB). */
export const VMDESC_SEARCH = MAX_VMDESC + 5;
const VMDESC_STEP = 1 << 20;
/** Description candidates parsed when looking in front of trailing bytes (each parse can be 16 MiB). */
const MAX_TRAILING_CANDIDATES = 8;
/** EOF then the description's type byte. */
const EOF_THEN_VMDESC = Buffer.from([Section.EOF, Section.VMDESCRIPTION]);

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

/**
 * Without footers a device section can only be parsed with the
 * description, and the exact search above misses one that has bytes after
 * it. Here the tail is searched again for a header that EOF precedes
 * (00 06), whose length ends inside the file on a '}' and whose JSON is a
 * description. Only a bounded number of candidates is parsed.
 */
export async function findDescriptionBeforeTrailing(w: WalkState): Promise<void> {
  const size = w.source.size;
  const floor = Math.max(w.opts.streamOffset + 1, size - VMDESC_SEARCH);
  let parsed = 0;
  for (let end = size; end > floor && parsed < MAX_TRAILING_CANDIDATES; end -= VMDESC_STEP) {
    const start = Math.max(floor - 1, end - VMDESC_STEP - 6);
    const chunk = await w.source.read(start, Math.min(end + 6, size) - start, 'vmdescription');
    const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    for (let i = buf.lastIndexOf(EOF_THEN_VMDESC, chunk.length - 7); i >= 0 && parsed < MAX_TRAILING_CANDIDATES; i = i > 0 ? buf.lastIndexOf(EOF_THEN_VMDESC, i - 1) : -1) {
      const at = start + i + 1;
      if (buf[i + 6] !== 0x7b /* { */) continue;
      const length = buf.readUInt32BE(i + 2);
      if (length > MAX_VMDESC || at + 5 + length > size) continue;
      const last = await w.source.read(at + 5 + length - 1, 1, 'vmdescription');
      if (last[0] !== 0x7d /* } */) continue;
      parsed++;
      try {
        const desc = parseVmDescription(await w.source.read(at + 5, length, 'vmdescription'), at + 5);
        w.model.vmdesc = { offset: at, length, desc };
        return;
      } catch (err) {
        if (!(err instanceof RamsnapFormatError)) throw err;
      }
    }
    if (start <= floor - 1) return;
  }
}

/**
 * After EOF: regions disjoint, what was left open, then what follows EOF.
 * QEMU's loader reads the description (if there is one) right after EOF
 * and nothing after it, so that is where the description must be, and any
 * bytes after it (or after EOF) are only reported.
 */
export async function finish(w: WalkState): Promise<void> {
  const m = w.model;
  w.passed('sections');
  checkOverlaps(w);
  w.passed('page-regions');
  if (m.ramSectionId === undefined) {
    w.warn('NO_RAM_SECTION', 'stream has no RAM section', 'section[ram]', m.streamOffset);
    w.passed('ram-blocks', 'page-size', 'mapped-ram-header', 'bitmaps');
  }
  for (const open of w.openSections.values()) sectionNotEnded(w, open);
  w.passed('page-records');
  for (const b of m.blocks) if (b.legacy) b.pagesPresent = b.legacy.pagesWithData;
  await afterEof(w);
  if (w.ignoreShared) {
    w.warn('IGNORE_SHARED', 'saved with x-ignore-shared: blocks on shared memory were left out of the file and read as zero here', 'configuration/capabilities', m.streamOffset);
  }
  w.passed('end-of-stream', 'limits');
}

/**
 * A section started and never ended. QEMU's loader does not require an
 * END, and a background snapshot (capability background-snapshot) has
 * none: migration.c bg_migration_completion writes the device state right
 * after the last RAM part. Legacy pages are all in the parts, so that file
 * is whole; a mapped-ram file is not, because its bitmaps are written
 * when the RAM section ends (ram.c ram_save_complete), so without the END
 * they are still all zero and no page can be found (QEMU 10.0.2 restores
 * such a file as zero memory).
 */
function sectionNotEnded(w: WalkState, open: SectionRecord): void {
  const m = w.model;
  if (open.sectionId === m.ramSectionId && m.mappedRam) {
    throw new RamsnapFormatError(
      FormatCode.INCOMPLETE,
      'the mapped-ram RAM section was never ended, so its bitmaps were never written and no page can be located (a background snapshot with mapped-ram)',
      { field: `section[${open.name}]`, offset: open.offset },
    );
  }
  const why = open.sectionId === m.ramSectionId ? ', as a background snapshot writes it: the device state follows the last RAM part' : '';
  w.warn('NO_SECTION_END', `section ${open.name} has no END record${why}; QEMU's loader accepts that`, `section[${open.name}]`, open.offset);
}

/** The description right after EOF (if any), the device sections checked against it, and trailing bytes. */
async function afterEof(w: WalkState): Promise<void> {
  const m = w.model;
  const at = w.r.pos;
  const size = w.source.size;
  let end = at;
  /** Offset of a description found farther on than right after EOF, which QEMU never reads. */
  let foreign: number | undefined;
  const here = at < size && (await w.source.read(at, 1, 'vmdescription'))[0] === Section.VMDESCRIPTION;
  if (here) {
    // The description that did not fit a device section is the one QEMU put here: its error stands.
    if (w.rejectedVmdesc?.offset === at) throw w.rejectedVmdesc.error;
    const desc = m.vmdesc?.offset === at ? m.vmdesc : await descriptionAt(w, at);
    if (desc !== m.vmdesc) {
      // Found only now (bytes follow it): check every device section with it.
      checkDescriptionPageSize(w, desc.desc.page_size, at + 5);
      m.vmdesc = desc;
      await decodeDevicesAgain(w, desc.desc);
    }
    end = at + 5 + desc.length;
  } else if (m.vmdesc || w.rejectedVmdesc) {
    // QEMU's loader reads a description only right after EOF; any other byte there is only "Expected
    // vmdescription section", and the load goes on. The one found farther on belongs to bytes after the
    // stream (a suppress-vmdesc=on save over an older one on a reused device), whether or not the device
    // sections happened to fit it: it is dropped, and the device sections decoded with it count as
    // unchecked, as they would without it.
    foreign = m.vmdesc?.offset ?? w.rejectedVmdesc?.offset;
    m.vmdesc = undefined;
    for (const d of m.devices) {
      d.checked = false;
      delete d.value;
    }
  }
  const unchecked = m.devices.filter((d) => !d.checked).length;
  if (unchecked) {
    w.warn(
      'DEVICE_STATE_UNCHECKED',
      `the file has no device description (saved with suppress-vmdesc=on?): ${unchecked} device sections were found by their footers, their contents not checked`,
      'vmdescription',
      at,
    );
  } else {
    w.passed('device-state');
    // QEMU loads such a stream ("Expected vmdescription section"); there were no device sections to describe.
    if (!m.vmdesc) w.warn('NO_DEVICE_DESCRIPTION', 'stream has no device description (RAM only)', 'vmdescription', at);
  }
  if (end < size) {
    m.trailingBytes = size - end;
    const among = foreign === undefined ? '' : ` (among them a device description at offset ${foreign}, not this stream's: it does not follow EOF)`;
    w.warn('TRAILING_DATA', `${size - end} bytes after the ${m.vmdesc ? 'device description' : 'EOF byte'} that QEMU's loader never reads${among}`, 'trailing', end);
  }
}

/** The description whose header is at `at`: it must be whole and parse (QEMU put it there). */
async function descriptionAt(w: WalkState, at: number): Promise<NonNullable<SnapshotModel['vmdesc']>> {
  const size = w.source.size;
  if (at + 5 > size) {
    throw new RamsnapFormatError(FormatCode.INCOMPLETE, 'snapshot is incomplete: the file ends inside the device description header', { field: 'vmdescription', offset: at });
  }
  const header = await w.source.read(at + 1, 4, 'vmdescription');
  const length = new DataView(header.buffer, header.byteOffset, 4).getUint32(0, false);
  if (length > MAX_VMDESC) {
    throw new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, 'device description is longer than ramsnap reads', {
      field: 'vmdescription.length',
      offset: at + 1,
      expected: `<= ${MAX_VMDESC}`,
      actual: length,
    });
  }
  if (at + 5 + length > size) {
    throw new RamsnapFormatError(FormatCode.INCOMPLETE, 'snapshot is incomplete: the file ends inside the device description', {
      field: 'vmdescription',
      offset: at,
      expected: `${length} bytes of JSON`,
      actual: size - at - 5,
    });
  }
  return { offset: at, length, desc: parseVmDescription(await w.source.read(at + 5, length, 'vmdescription'), at + 5) };
}

/** A description found after the walk must agree with the page size the RAM section was read with. */
function checkDescriptionPageSize(w: WalkState, pageSize: number | undefined, offset: number): void {
  const m = w.model;
  if (pageSize === undefined || pageSize === m.pageSize || w.opts.pageSize) return;
  throw new RamsnapFormatError(FormatCode.PAGE_SIZE_MISMATCH, 'the description after EOF states another page size than the stream was read with', {
    field: 'vmdescription.page_size',
    offset,
    expected: m.pageSize,
    actual: pageSize,
  });
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
