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
  /** The device sections (FULL, each with its footer), verbatim from a QEMU file. */
  sections: Uint8Array;
  /** The description JSON (without the 0x06 + length header), or none for a RAM-only stream. */
  vmdesc?: Uint8Array;
  /** Send the switchover-start command, as QEMU >= 10.0 does. */
  switchoverStart: boolean;
}

/** Closes the RAM section's START (EOS, footer) and opens its PART, where legacy page records go. */
export function encodeRamSetupEnd(ramSectionId: number): Uint8Array {
  return concat([be64(RamFlag.EOS), encodeFooter(ramSectionId), encodeSectionPart(Section.PART, ramSectionId)]);
}

/** Closes the PART, ends the RAM section, then device sections, EOF and the description. */
export function encodeStreamEnd(ramSectionId: number, dev: DeviceState | undefined): Uint8Array {
  const eos = be64(RamFlag.EOS);
  const parts: Uint8Array[] = [eos, encodeFooter(ramSectionId)];
  if (dev?.switchoverStart ?? true) parts.push(encodeCommand({ command: MigCommand.SWITCHOVER_START, data: new Uint8Array(0) }));
  parts.push(encodeSectionPart(Section.END, ramSectionId), eos, encodeFooter(ramSectionId));
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
  return concat([encodeRamSetupEnd(ramSectionId), encodeStreamEnd(ramSectionId, dev)]);
}

function be64(v: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), false);
  return b;
}
