/**
 * The end of a stream after the RAM blocks, as QEMU 10 writes it
 * (observed on QEMU 10.0.2 files): the block list's EOS and the RAM
 * section's footer, one PART of the RAM section holding only EOS, the
 * switchover-start command, the RAM END section (EOS), the device
 * sections, EOF, and the device description.
 */
import { MigCommand, RamFlag, Section } from './constants.js';
import { concat } from './configuration.js';
import { encodeCommand, encodeFooter, encodeSectionPart } from './section.js';

export interface DeviceState {
  /**
   * The sections after the RAM section, verbatim from a QEMU file: the
   * iterable ones other than RAM (spapr/htab, ...) and the device sections
   * (FULL), each with its footer if the stream has footers.
   */
  sections: Uint8Array;
  /** Sections end with a footer (QEMU's send-section-footer; default true). */
  sectionFooters?: boolean;
  /** The description JSON (without the 0x06 + length header), or none for a RAM-only stream. */
  vmdesc?: Uint8Array;
  /** Send the switchover-start command, as QEMU >= 10.0 does. */
  switchoverStart: boolean;
}

/** The RAM section's footer, or nothing in a stream without footers. */
function ramFooter(ramSectionId: number, dev: DeviceState | undefined): Uint8Array {
  return dev?.sectionFooters === false ? new Uint8Array(0) : encodeFooter(ramSectionId);
}

/** Closes the RAM section's START (EOS, footer) and opens its PART, where legacy page records go. */
export function encodeRamSetupEnd(ramSectionId: number, dev?: DeviceState): Uint8Array {
  return concat([be64(RamFlag.EOS), ramFooter(ramSectionId, dev), encodeSectionPart(Section.PART, ramSectionId)]);
}

/** Closes the PART, ends the RAM section, then device sections, EOF and the description. */
export function encodeStreamEnd(ramSectionId: number, dev: DeviceState | undefined): Uint8Array {
  const eos = be64(RamFlag.EOS);
  const parts: Uint8Array[] = [eos, ramFooter(ramSectionId, dev)];
  if (dev?.switchoverStart ?? true) parts.push(encodeCommand({ command: MigCommand.SWITCHOVER_START, data: new Uint8Array(0) }));
  parts.push(encodeSectionPart(Section.END, ramSectionId), eos, ramFooter(ramSectionId, dev));
  if (dev) parts.push(dev.sections);
  parts.push(Uint8Array.of(Section.EOF));
  if (dev?.vmdesc) {
    const h = new Uint8Array(5);
    h[0] = Section.VMDESCRIPTION;
    new DataView(h.buffer).setUint32(1, dev.vmdesc.length, false);
    parts.push(h, dev.vmdesc);
  }
  return concat(parts);
}

/** A mapped-ram stream's tail: everything after the last block's pages. */
export function encodeTail(ramSectionId: number, dev: DeviceState | undefined): Uint8Array {
  return concat([encodeRamSetupEnd(ramSectionId, dev), encodeStreamEnd(ramSectionId, dev)]);
}

function be64(v: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), false);
  return b;
}
