/**
 * Framing of the top-level migration stream (migration/savevm.c):
 *
 *   file header   be32 magic "QEVM", be32 version 3
 *   START / FULL  u8 type, be32 section_id, u8 len + idstr, be32 instance_id, be32 version_id
 *   PART / END    u8 type, be32 section_id
 *   footer        u8 0x7e, be32 section_id (after every START/PART/END/FULL body)
 *   COMMAND       u8 0x08, be16 command, be16 length, length bytes
 *   EOF           u8 0x00
 *   VMDESCRIPTION u8 0x06, be32 length, JSON (after EOF, to the end)
 */
import { QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION, Section, MAX_IDSTR } from './constants.js';
import { ByteCursor, latin1Bytes } from './cursor.js';
import { FormatCode, RamsnapFormatError } from './errors.js';

export const FILE_HEADER_SIZE = 8;

export function decodeFileHeader(c: ByteCursor): { version: number } {
  const at = c.pos;
  const magic = c.be32('file.magic');
  if (magic !== QEMU_VM_FILE_MAGIC) {
    throw new RamsnapFormatError(FormatCode.BAD_MAGIC, 'not a QEMU migration stream', {
      field: 'file.magic',
      offset: at,
      expected: '0x5145564d ("QEVM")',
      actual: `0x${magic.toString(16).padStart(8, '0')}`,
    });
  }
  const vAt = c.pos;
  const version = c.be32('file.version');
  if (version !== QEMU_VM_FILE_VERSION) {
    throw new RamsnapFormatError(FormatCode.BAD_VERSION, 'unsupported stream version', {
      field: 'file.version',
      offset: vAt,
      expected: QEMU_VM_FILE_VERSION,
      actual: version,
    });
  }
  return { version };
}

export function encodeFileHeader(): Uint8Array {
  const b = new Uint8Array(FILE_HEADER_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, QEMU_VM_FILE_MAGIC, false);
  v.setUint32(4, QEMU_VM_FILE_VERSION, false);
  return b;
}

/** Header of a START or FULL section. */
export interface SectionStartHeader {
  type: typeof Section.START | typeof Section.FULL;
  sectionId: number;
  idstr: string;
  instanceId: number;
  versionId: number;
}

/** Largest START/FULL header: type + id + (1 + 255) idstr + instance + version. */
export const MAX_SECTION_HEADER = 1 + 4 + 1 + MAX_IDSTR + 4 + 4;

/** Decodes what follows the type byte of a START or FULL section. */
export function decodeSectionStart(c: ByteCursor, type: typeof Section.START | typeof Section.FULL): SectionStartHeader {
  const sectionId = c.be32('section.section_id');
  const idstr = c.string8('section.idstr');
  const instanceId = c.be32('section.instance_id');
  const versionId = c.be32('section.version_id');
  return { type, sectionId, idstr, instanceId, versionId };
}

export function encodeSectionStart(h: SectionStartHeader): Uint8Array {
  const name = latin1Bytes(h.idstr);
  if (name.length > MAX_IDSTR) throw new RangeError(`section name longer than ${MAX_IDSTR} bytes`);
  const b = new Uint8Array(1 + 4 + 1 + name.length + 8);
  const v = new DataView(b.buffer);
  b[0] = h.type;
  v.setUint32(1, h.sectionId, false);
  b[5] = name.length;
  b.set(name, 6);
  v.setUint32(6 + name.length, h.instanceId, false);
  v.setUint32(10 + name.length, h.versionId, false);
  return b;
}

/** PART or END: type byte then the section id. */
export function encodeSectionPart(type: typeof Section.PART | typeof Section.END, sectionId: number): Uint8Array {
  const b = new Uint8Array(5);
  b[0] = type;
  new DataView(b.buffer).setUint32(1, sectionId, false);
  return b;
}

export function encodeFooter(sectionId: number): Uint8Array {
  const b = new Uint8Array(5);
  b[0] = Section.FOOTER;
  new DataView(b.buffer).setUint32(1, sectionId, false);
  return b;
}

/**
 * Checks the footer that closes a section body. QEMU writes one after every
 * START, PART, END and FULL section (machine types since 2.5; all that QEMU 10
 * still has); a missing or foreign footer means the body was misparsed or
 * the file is damaged.
 */
export function decodeFooter(c: ByteCursor, sectionId: number, name: string): void {
  const at = c.pos;
  const marker = c.u8(`section[${name}].footer`);
  const id = c.be32(`section[${name}].footer.section_id`);
  if (marker !== Section.FOOTER || id !== sectionId) {
    throw new RamsnapFormatError(FormatCode.BAD_SECTION_FOOTER, `section ${name} is not closed by its footer`, {
      field: `section[${name}].footer`,
      offset: at,
      expected: `7e ${hex32(sectionId)}`,
      actual: `${marker.toString(16).padStart(2, '0')} ${hex32(id)}`,
    });
  }
}

export interface Command {
  command: number;
  data: Uint8Array;
}

/** A COMMAND section after its type byte. The data is at most 65535 bytes, so reading it is bounded. */
export function decodeCommand(c: ByteCursor): Command {
  const command = c.be16('command.id');
  const len = c.be16('command.length');
  const data = c.bytesView(len, 'command.data');
  return { command, data };
}

export function encodeCommand(cmd: Command): Uint8Array {
  const b = new Uint8Array(5 + cmd.data.length);
  const v = new DataView(b.buffer);
  b[0] = Section.COMMAND;
  v.setUint16(1, cmd.command, false);
  v.setUint16(3, cmd.data.length, false);
  b.set(cmd.data, 5);
  return b;
}

export function hex32(n: number): string {
  return n.toString(16).padStart(8, '0');
}
