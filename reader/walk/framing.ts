/**
 * The framing of the stream (migration/savevm.c): the file header, the
 * configuration, then sections until EOF. Each START/FULL/PART/END is
 * checked for its id and closed by its footer; its body goes to the RAM
 * section's readers or to the device sections; COMMANDs are checked as
 * QEMU's loader checks them.
 */
import { CAP_MAPPED_RAM, CAP_X_IGNORE_SHARED, COMMANDS, MigCommand, Section } from '../../format/constants.js';
import { decodeConfiguration } from '../../format/configuration.js';
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import { MAX_SECTION_HEADER, decodeCommand, decodeFileHeader, decodeFooter, decodeSectionStart } from '../../format/section.js';
import type { SectionRecord } from '../model.js';
import { deviceSection } from './devices.js';
import { checkIterableVersion, iterableFormat } from './iterables.js';
import { ramRecords } from './legacy-records.js';
import { decidePageSize } from './page-size.js';
import { ramSetup } from './ram-blocks.js';
import type { WalkState } from './state.js';
import { finish, loadVmDescription } from './tail.js';

/** Bytes of the configuration section: a machine name and a few capability names. */
const MAX_CONFIGURATION = 64 * 1024;
/** Type bytes that may start a top-level record (SPEC §3.2). */
const TOP_LEVEL_TYPES: ReadonlySet<number> = new Set([Section.EOF, Section.START, Section.PART, Section.END, Section.FULL, Section.COMMAND]);

export async function walkSections(w: WalkState): Promise<void> {
  const m = w.model;
  const r = w.r;
  let c = await r.cursor(8);
  m.version = decodeFileHeader(c).version;
  r.commit(c);
  w.passed('header');
  await loadVmDescription(w);

  if ((await r.peekU8('section.type')) === Section.CONFIGURATION) {
    await r.u8('section.type');
    c = await r.cursor(MAX_CONFIGURATION);
    try {
      m.configuration = decodeConfiguration(c, w.configOffsets, c.pos + c.remaining >= w.source.size);
    } catch (err) {
      // Running off a window that stops short of the end of the file is a broken section, not a cut file.
      if (err instanceof RamsnapFormatError && err.code === FormatCode.TRUNCATED && c.pos + c.remaining < w.source.size) {
        throw new RamsnapFormatError(FormatCode.BAD_CONFIGURATION, `configuration section is longer than ${MAX_CONFIGURATION} bytes`, { field: err.field, offset: err.offset });
      }
      throw err;
    }
    r.commit(c);
    m.mappedRam = m.configuration.capabilities.includes(CAP_MAPPED_RAM);
    w.ignoreShared = m.configuration.capabilities.includes(CAP_X_IGNORE_SHARED);
  } else {
    w.warn('NO_CONFIGURATION', 'stream has no configuration section (machine type unknown)', 'configuration', r.pos);
  }
  w.passed('configuration');
  decidePageSize(w);

  for (;;) {
    const typeAt = r.pos;
    const type = await r.u8('section.type');
    switch (type) {
      case Section.EOF:
        m.eofOffset = typeAt;
        w.endSegment(r.pos);
        await finish(w);
        return;
      case Section.START:
      case Section.FULL:
        await startSection(w, type, typeAt);
        break;
      case Section.PART:
      case Section.END:
        await partSection(w, type, typeAt);
        break;
      case Section.COMMAND: {
        c = await r.cursor(4 + 0xffff);
        const cmd = decodeCommand(c);
        r.commit(c);
        command(w, cmd.command, cmd.data.length, typeAt);
        break;
      }
      default:
        if (type === Section.FOOTER && w.footers === false) {
          throw new RamsnapFormatError(FormatCode.BAD_SECTION_FOOTER, 'section footer in a stream whose first section ended without one', {
            field: 'section.footer',
            offset: typeAt,
            expected: 'no footers',
            actual: '7e',
          });
        }
        throw new RamsnapFormatError(FormatCode.UNKNOWN_SECTION_TYPE, `unknown section type 0x${type.toString(16).padStart(2, '0')}`, {
          field: 'section.type',
          offset: typeAt,
          expected: 'one of 00 01 02 03 04 08',
          actual: `0x${type.toString(16).padStart(2, '0')}`,
        });
    }
  }
}

/** Checks a COMMAND as QEMU's loader does (known id, fixed length where it has one). */
function command(w: WalkState, id: number, length: number, at: number): void {
  const spec = COMMANDS[id];
  if (!spec) {
    throw new RamsnapFormatError(FormatCode.BAD_COMMAND, `unknown migration command ${id}`, { field: 'command.id', offset: at + 1, expected: '1..11', actual: id });
  }
  if (spec.length >= 0 && length !== spec.length) {
    throw new RamsnapFormatError(FormatCode.BAD_COMMAND, `${spec.name} command has the wrong length`, {
      field: 'command.length',
      offset: at + 3,
      expected: spec.length,
      actual: length,
    });
  }
  if (id === MigCommand.PACKAGED) {
    // A nested stream (postcopy's package): never in a file save.
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, 'packaged (nested) streams are not supported', { field: 'command.id', offset: at + 1 });
  }
  if (id === MigCommand.POSTCOPY_ADVISE) {
    w.warn('POSTCOPY', 'stream was saved with postcopy-ram: blocks with huge pages carry a page size ramsnap cannot see', 'command', at);
  }
  w.model.commands.push({ offset: at, command: id, name: spec.name, length });
  w.checkCount(at);
}

async function startSection(w: WalkState, type: typeof Section.START | typeof Section.FULL, typeAt: number): Promise<void> {
  const r = w.r;
  const c = await r.cursor(MAX_SECTION_HEADER);
  const h = decodeSectionStart(c, type);
  r.commit(c);
  if (w.startedIds.has(h.sectionId)) {
    throw new RamsnapFormatError(FormatCode.DUPLICATE_SECTION_ID, `section id ${h.sectionId} is used twice`, {
      field: 'section.section_id',
      offset: typeAt + 1,
      actual: h.sectionId,
    });
  }
  const rec: SectionRecord = {
    kind: type === Section.START ? 'start' : 'full',
    sectionId: h.sectionId,
    name: h.idstr,
    instanceId: h.instanceId,
    versionId: h.versionId,
    offset: typeAt,
    end: 0,
  };
  w.startedIds.add(h.sectionId);
  if (type === Section.START) w.openSections.set(h.sectionId, rec);
  const iterable = type === Section.START ? iterableFormat(h.idstr) : undefined;
  if (type === Section.START && h.idstr === 'ram') {
    if (h.versionId !== 4) {
      throw new RamsnapFormatError(FormatCode.BAD_VERSION, 'unsupported RAM section version', {
        field: 'section[ram].version_id',
        offset: typeAt + 6 + h.idstr.length + 4,
        expected: 4,
        actual: h.versionId,
      });
    }
    w.model.ramSectionId = h.sectionId;
    await ramSetup(w);
    // The block list holds every block's header and bitmap: their rules have all been checked.
    w.passed('ram-blocks', 'page-size', 'mapped-ram-header', 'bitmaps');
    await ramRecords(w);
  } else if (iterable) {
    checkIterableVersion(rec, iterable);
    await iterable.body(w, rec);
  } else {
    await deviceSection(w, rec);
  }
  await footer(w, rec);
}

async function partSection(w: WalkState, type: typeof Section.PART | typeof Section.END, typeAt: number): Promise<void> {
  const r = w.r;
  const id = await r.be32('section.section_id');
  const open = w.openSections.get(id);
  if (!open) {
    throw new RamsnapFormatError(FormatCode.UNKNOWN_SECTION_ID, `section ${type === Section.PART ? 'part' : 'end'} for a section that was never started`, {
      field: 'section.section_id',
      offset: typeAt + 1,
      actual: id,
    });
  }
  const rec: SectionRecord = { ...open, kind: type === Section.PART ? 'part' : 'end', offset: typeAt, end: 0 };
  if (type === Section.END) w.openSections.delete(id);
  const iterable = iterableFormat(open.name);
  if (id === w.model.ramSectionId) {
    await ramRecords(w);
    if (type === Section.END) w.passed('page-records');
  } else if (iterable) {
    await iterable.body(w, rec);
  } else {
    await deviceSection(w, rec);
  }
  await footer(w, rec);
}

/**
 * The footer after a section body. Whether the stream has footers is
 * QEMU's migration property send-section-footer, which the stream does not
 * record: the end of the first section tells. A footer starts with 0x7e;
 * any other byte that can start a record means the stream has none, and
 * then no section may have one (the loader of such a stream reads the
 * next record there). Anything else is a broken footer.
 */
async function footer(w: WalkState, rec: SectionRecord): Promise<void> {
  const r = w.r;
  if (w.footers === undefined) {
    const next = await r.peekU8(`section[${rec.name}].footer`);
    w.model.sectionFooters = next === Section.FOOTER || !TOP_LEVEL_TYPES.has(next);
    if (!w.footers) {
      w.warn(
        'NO_SECTION_FOOTERS',
        'sections have no footers (saved with the migration property send-section-footer off); QEMU restores it only with that property off too',
        `section[${rec.name}].footer`,
        r.pos,
      );
    }
  }
  if (w.footers) {
    const c = await r.cursor(5);
    decodeFooter(c, rec.sectionId, rec.name);
    r.commit(c);
  }
  rec.end = r.pos;
  w.model.sections.push(rec);
  w.checkCount(rec.offset);
}
