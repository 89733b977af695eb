/**
 * Iterable sections other than RAM (spapr/htab, s390 storage attributes)
 * spliced into a synthesized stream, for tests of what QEMU writes only on
 * ppc64 and s390x machines.
 */
import { concat } from '../../format/configuration.js';
import { Section } from '../../format/constants.js';
import { HTAB_NO_HPT, StattrFlag } from '../../format/iterables.js';
import { encodeFooter, encodeSectionPart, encodeSectionStart } from '../../format/section.js';
import type { SynthFile } from './synth.js';

export function be16(v: number): Uint8Array {
  return Uint8Array.of(v >>> 8, v & 0xff);
}

export function be32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, false);
  return b;
}

export function be64(v: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), false);
  return b;
}

/** START (first body), PARTs, END (last body), each with its footer. */
export function iterableSection(sectionId: number, idstr: string, versionId: number, bodies: Uint8Array[]): Uint8Array {
  const parts: Uint8Array[] = [];
  bodies.forEach((body, i) => {
    if (i === 0) parts.push(encodeSectionStart({ type: Section.START, sectionId, idstr, instanceId: 0, versionId }));
    else parts.push(encodeSectionPart(i === bodies.length - 1 ? Section.END : Section.PART, sectionId));
    parts.push(body, encodeFooter(sectionId));
  });
  return concat(parts);
}

/** Bytes of a START header for `idstr` (where its body begins). */
export function startHeaderLength(idstr: string): number {
  return 1 + 4 + 1 + idstr.length + 4 + 4;
}

export const htab = {
  /** The setup part: the table's size. */
  size: (shift: number): Uint8Array => be32(shift),
  none: (): Uint8Array => be32(HTAB_NO_HPT),
  /** An iterate or complete part: chunks of [index, entries (16 bytes each), invalid], then the end marker. */
  chunks: (chunks: [number, Uint8Array[], number][]): Uint8Array =>
    concat([be32(0), ...chunks.flatMap(([index, entries, invalid]) => [be32(index), be16(entries.length), be16(invalid), ...entries]), be32(0), be16(0), be16(0)]),
};

export const stattr = {
  eos: (): Uint8Array => be64(StattrFlag.EOS),
  /** Values for pages from `gfn`, then EOS. */
  values: (gfn: number, values: Uint8Array, done = false): Uint8Array =>
    concat([be64((BigInt(gfn) << 12n) | BigInt(StattrFlag.MORE)), be64(values.length), values, ...(done ? [be64(StattrFlag.DONE)] : []), be64(StattrFlag.EOS)]),
};

/**
 * The stream of `f` (which must have a device section, and no absolute
 * offsets past it: a legacy stream) with `sections` inserted before its
 * device section. Returns the bytes and where the insertion starts.
 */
export function withSectionsBeforeDevices(f: SynthFile, sections: Uint8Array): { bytes: Uint8Array; at: number } {
  const at = f.layout.deviceSectionOffset;
  if (at === undefined) throw new Error('the stream has no device section to insert before');
  const bytes = f.bytes();
  return { bytes: concat([bytes.subarray(0, at), sections, bytes.subarray(at)]), at };
}
