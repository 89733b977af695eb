/**
 * Device sections (FULL): a device's fields with no length. With the
 * device description each is decoded field by field, which finds where it
 * ends (format/vmstate.ts), and its values are kept when dump --state asks.
 *
 * Without a description (suppress-vmdesc=on, or one not found yet because
 * bytes follow it), a stream with footers still says where a section ends:
 * at its footer, 0x7e + be32 section id, followed by the next section's
 * header or EOF. Such a section is stepped over, its contents unchecked;
 * if the description turns up after EOF, every section is decoded with it
 * afterwards and must end exactly at its footer.
 */
import { ByteCursor } from '../../format/cursor.js';
import { Section } from '../../format/constants.js';
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import { findDevice, type VmDescription } from '../../format/vmdesc.js';
import { decodeDeviceState, skipDeviceState } from '../../format/vmstate.js';
import type { SectionRecord } from '../model.js';
import type { WalkState } from './state.js';
import { findDescriptionBeforeTrailing } from './tail.js';

/** Device sections are loaded whole to be decoded; none real comes near this. */
export const MAX_DEVICE_SECTION = 64 << 20;
/** First window a device section is decoded from (grown 4x at a time up to MAX_DEVICE_SECTION): real ones are KiB. */
const DEVICE_WINDOW = 64 * 1024;
/** Bytes searched for a footer at most at a time (what the reader's window holds)... */
const STEP_WINDOW = 256 * 1024;
/** ...and at least, besides the lookahead. */
const STEP_MIN = 4096;
/** Bytes a candidate footer needs after it to be judged: the footer and the longest FULL header. */
const STEP_LOOKAHEAD = 5 + 1 + 4 + 1 + 255 + 4 + 4;
/** Errors that say a description does not fit the device sections. */
const MISMATCH: ReadonlySet<string> = new Set([FormatCode.UNDESCRIBED_SECTION, FormatCode.DEVICE_STATE_MISMATCH]);

export async function deviceSection(w: WalkState, rec: SectionRecord): Promise<void> {
  const m = w.model;
  if (rec.kind !== 'full') {
    // An iterable section (block, dirty-bitmap, vfio) with a format of its own that ramsnap does not know.
    throw new RamsnapFormatError(FormatCode.UNDESCRIBED_SECTION, `section ${rec.name} is an iterable section ramsnap cannot read`, {
      field: `section[${rec.name}]`,
      offset: rec.offset,
    });
  }
  if (!m.vmdesc && w.footers !== true && !w.searchedBeforeTrailing) {
    // No footers to step by: the description may still be there, with bytes after it.
    w.searchedBeforeTrailing = true;
    await findDescriptionBeforeTrailing(w);
  }
  const start = w.r.pos;
  if (m.vmdesc) {
    try {
      const value = await decodeSection(w, rec, m.vmdesc.desc);
      m.devices.push({ section: rec, checked: true, value });
      w.deviceBodies.push({ start, end: w.r.pos });
      return;
    } catch (err) {
      // The description at the end of the file may be bytes after the stream that only look like one
      // (an older save's, on a reused device). With footers the walk can go on without it and use the
      // one right after EOF; without, or if there is none there, this error stands.
      if (!(err instanceof RamsnapFormatError) || !w.footers || !MISMATCH.has(err.code)) throw err;
      w.rejectedVmdesc = { offset: m.vmdesc.offset, error: err };
      m.vmdesc = undefined;
      w.r.pos = start;
    }
  }
  if (w.footers) {
    try {
      await stepToFooter(w, rec);
    } catch (err) {
      throw w.rejectedVmdesc?.error ?? err;
    }
    m.devices.push({ section: rec, checked: false });
  } else {
    throw new RamsnapFormatError(FormatCode.UNDESCRIBED_SECTION, `section ${rec.name} cannot be parsed: the file has no device description and its sections no footers`, {
      field: `section[${rec.name}]`,
      offset: rec.offset,
    });
  }
  w.deviceBodies.push({ start, end: w.r.pos });
}

/** Decodes the section at the reader's position with its description entry; the reader ends after it. */
async function decodeSection(w: WalkState, rec: SectionRecord, desc: VmDescription): Promise<unknown> {
  const dev = findDevice(desc, rec.name, rec.instanceId);
  if (!dev) {
    throw new RamsnapFormatError(FormatCode.UNDESCRIBED_SECTION, `section ${rec.name} (instance ${rec.instanceId}) is not in the device description, so its length is unknown`, {
      field: `section[${rec.name}]`,
      offset: rec.offset,
    });
  }
  checkSectionVersion(rec, dev.version);
  const m = w.model;
  const r = w.r;
  const available = (m.vmdesc?.offset ?? w.source.size) - r.pos;
  const limit = Math.max(0, Math.min(MAX_DEVICE_SECTION, available));
  // A section carries no length: decode it from a small window, and from a larger one only if it runs
  // out. A window of everything up to the description (up to 64 MiB) was read again for every
  // section, so a file with its description far behind thousands of small sections took hours.
  let want = Math.min(limit, DEVICE_WINDOW);
  for (;;) {
    const c = await r.cursor(want);
    const valuesBefore = w.deviceValues.values;
    try {
      let value;
      if (w.opts.decodeDevices) value = decodeDeviceState(c, dev, rec.versionId, w.deviceValues);
      else skipDeviceState(c, dev, w.deviceValues);
      r.commit(c);
      return value;
    } catch (err) {
      if (!(err instanceof RamsnapFormatError) || err.code !== FormatCode.TRUNCATED) throw err;
      if (want < limit) {
        w.deviceValues.values = valuesBefore;
        want = Math.min(limit, want * 4);
        continue;
      }
      // The description is after EOF: running into it means the fields do not match the section.
      throw available > MAX_DEVICE_SECTION
        ? new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, `device section ${rec.name} is larger than ${MAX_DEVICE_SECTION} bytes`, { field: err.field, offset: err.offset })
        : new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `device section ${rec.name} does not match its description (it runs into the description)`, {
            field: err.field,
            offset: err.offset,
          });
    }
  }
}

/**
 * A section whose version is not the one its description records. QEMU
 * writes the device's version in both places (savevm.c the section header's
 * se->version_id, vmstate.c the description's vmsd->version_id, the same
 * number), and the description lists the fields of that version only. QEMU's
 * loader refuses a newer section ("savevm: unsupported version",
 * savevm.c `qemu_loadvm_section_start_full`) and reads an older one by the
 * older layout, which the description does not describe: the footer is then
 * found elsewhere ("Missing section footer") or the device refuses it.
 */
function checkSectionVersion(rec: SectionRecord, described: unknown): void {
  if (typeof described !== 'number' || rec.versionId === described) return;
  const nameBytes = Buffer.byteLength(rec.name, 'latin1');
  throw new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `section ${rec.name} has version ${rec.versionId}, but its description is of version ${described}`, {
    field: `section[${rec.name}].version_id`,
    // FULL header: type, be32 id, u8 length, idstr, be32 instance, then the version.
    offset: rec.offset + 1 + 4 + 1 + nameBytes + 4,
    expected: described,
    actual: rec.versionId,
  });
}

/**
 * Moves the reader to the footer that ends `rec`: the first `7e <id>`
 * within MAX_DEVICE_SECTION bytes that is followed by what QEMU writes after
 * a device section: another FULL header with a new id and a printable name,
 * or EOF that ends the file or is followed by a description header. A false match
 * inside the device's bytes would have to look like all of that; if one
 * did, the sections after it would not parse and the walk fails, so a
 * file is never accepted on a wrong split.
 */
async function stepToFooter(w: WalkState, rec: SectionRecord): Promise<void> {
  const r = w.r;
  const start = r.pos;
  const limit = Math.min(w.source.size, start + MAX_DEVICE_SECTION + STEP_LOOKAHEAD);
  const footer = Buffer.alloc(5);
  footer[0] = Section.FOOTER;
  footer.writeUInt32BE(rec.sectionId, 1);
  let eofThenBytes = -1;
  // Searched in the reader's window, refilled only when less than a step is left in it: consecutive
  // small sections are found without reading the stream again (a 64 KiB read per section of a
  // million tiny ones would read 64 GB).
  for (let from = start; from < limit; ) {
    r.pos = from;
    const c = await r.cursor(STEP_MIN + STEP_LOOKAHEAD, STEP_WINDOW);
    const bytes = Buffer.from(c.bytes.buffer, c.bytes.byteOffset, c.bytes.byteLength);
    // A candidate needs STEP_LOOKAHEAD bytes after it to be judged, unless the file (or the bound) ends first.
    const reachesEnd = from + bytes.length >= limit;
    const last = reachesEnd ? bytes.length : bytes.length - STEP_LOOKAHEAD;
    for (let i = bytes.indexOf(footer); i >= 0 && i < last; i = bytes.indexOf(footer, i + 1)) {
      if (from + i - start > MAX_DEVICE_SECTION) break;
      // A description farther on that did not fit this stream's sections (an older save's, on a reused
      // device) explains an older save's sections after EOF: a footer followed by EOF and such a section
      // ends this stream, even though the older save's own footers further on also look like a split.
      const foreignAfter = bytes[i + 5] === Section.EOF && bytes[i + 6] === Section.FULL && w.rejectedVmdesc !== undefined && w.rejectedVmdesc.offset > from + i + 5;
      if (foreignAfter || followsSection(w, rec, bytes, i + 5, from + i + 5)) {
        r.pos = from + i;
        return;
      }
      if (eofThenBytes < 0 && bytes[i + 5] === Section.EOF) eofThenBytes = from + i + 5;
    }
    if (reachesEnd) break;
    from += last;
  }
  r.pos = start;
  // Bytes after EOF (and no description) cannot be told from a device's own bytes that look like a footer and EOF.
  const hint = eofThenBytes >= 0 ? ` (its footer and EOF may be at ${eofThenBytes - 5}, followed by bytes that are not a device description)` : '';
  throw new RamsnapFormatError(
    FormatCode.UNDESCRIBED_SECTION,
    `section ${rec.name} cannot be parsed: the file has no device description, and no footer of the section followed by a section header or the end of the stream was found within ${MAX_DEVICE_SECTION} bytes${hint}`,
    { field: `section[${rec.name}]`, offset: rec.offset },
  );
}

/** Whether bytes[i..] (file offset `at`) can be what follows a device section's footer. */
function followsSection(w: WalkState, rec: SectionRecord, bytes: Buffer, i: number, at: number): boolean {
  const size = w.source.size;
  if (at >= size) return false;
  if (bytes[i] === Section.EOF) {
    if (at + 1 === size) return true;
    // EOF then the description's type byte and, unless the file ends first, its JSON's '{'
    // (a description cut short is reported after EOF as such).
    if (bytes[i + 1] !== Section.VMDESCRIPTION) return false;
    return at + 6 >= size || bytes[i + 6] === 0x7b;
  }
  if (bytes[i] !== Section.FULL) return false;
  // FULL: be32 id, u8 length, idstr, be32 instance, be32 version.
  if (i + 6 > bytes.length) return false;
  const id = bytes.readUInt32BE(i + 1);
  const len = bytes[i + 5];
  if (id === rec.sectionId || w.startedIds.has(id) || len === 0) return false;
  if (i + 6 + len + 8 > bytes.length || at + 6 + len + 8 > size) return false;
  for (let k = i + 6; k < i + 6 + len; k++) if (bytes[k] < 0x21 || bytes[k] > 0x7e) return false;
  return true;
}

/**
 * Decodes every device section again with `desc`, the description found
 * after EOF, from where the walk found it to its footer: each must use up
 * exactly those bytes.
 */
export async function decodeDevicesAgain(w: WalkState, desc: VmDescription): Promise<void> {
  const m = w.model;
  w.deviceValues.values = 0;
  for (let i = 0; i < m.devices.length; i++) {
    const d = m.devices[i];
    const rec = d.section;
    const body = w.deviceBodies[i];
    const dev = findDevice(desc, rec.name, rec.instanceId);
    if (!dev) {
      throw new RamsnapFormatError(FormatCode.UNDESCRIBED_SECTION, `section ${rec.name} (instance ${rec.instanceId}) is not in the device description after EOF`, {
        field: `section[${rec.name}]`,
        offset: rec.offset,
      });
    }
    checkSectionVersion(rec, dev.version);
    const c = new ByteCursor(await w.source.read(body.start, body.end - body.start, `section[${rec.name}]`), body.start);
    try {
      if (w.opts.decodeDevices) d.value = decodeDeviceState(c, dev, rec.versionId, w.deviceValues);
      else skipDeviceState(c, dev, w.deviceValues);
    } catch (err) {
      if (!(err instanceof RamsnapFormatError) || err.code !== FormatCode.TRUNCATED) throw err;
      throw new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `device section ${rec.name} does not match the description after EOF (it runs past its footer)`, {
        field: err.field,
        offset: err.offset,
      });
    }
    if (c.remaining !== 0) {
      throw new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `device section ${rec.name} does not match the description after EOF (it ends before its footer)`, {
        field: `section[${rec.name}]`,
        offset: c.pos,
        expected: body.end,
        actual: c.pos,
      });
    }
    d.checked = true;
  }
}
