/**
 * Delta snapshots (writer/delta.ts): a mapped-ram file laid out like the
 * snapshot it was made from, whose bitmaps mark only the pages that differ
 * from a base. Which base it needs, and which memory it makes, are content
 * fingerprints (reader/fingerprint.ts) kept in one extra top-level member
 * of the device description JSON:
 *
 *   "ramsnap-delta": {"version": 1, "base": "sha256:…", "result": "sha256:…"}
 *
 * The description is the one place a file can carry such a record and
 * still load in QEMU: its loader reads the description only to skip it
 * (migration/savevm.c qemu_loadvm_state), while a configuration
 * subsection, a RAM block or a device section it does not know fails the
 * load. SPEC.md §15.
 */
import { FormatCode, RamsnapFormatError } from './errors.js';

export const DELTA_MEMBER = 'ramsnap-delta';
export const DELTA_VERSION = 1;

export interface DeltaInfo {
  version: number;
  /** Fingerprint of the memory the delta applies to. */
  base: string;
  /** Fingerprint of the memory base + delta makes. */
  result: string;
}

const FINGERPRINT = /^sha256:[0-9a-f]{64}$/;

/** The delta record of a parsed description, or undefined for an ordinary snapshot. Malformed: BAD_DELTA. */
export function deltaInfoOf(raw: Record<string, unknown> | undefined, offset: number): DeltaInfo | undefined {
  const v = raw?.[DELTA_MEMBER];
  if (v === undefined) return undefined;
  const bad = (why: string): RamsnapFormatError => new RamsnapFormatError(FormatCode.BAD_DELTA, `the delta record ${why}`, { field: `vmdescription.${DELTA_MEMBER}`, offset });
  if (typeof v !== 'object' || v === null) throw bad('is not an object');
  const o = v as Record<string, unknown>;
  if (o.version !== DELTA_VERSION) throw bad(`has version ${JSON.stringify(o.version)}; ramsnap reads version ${DELTA_VERSION}`);
  if (typeof o.base !== 'string' || !FINGERPRINT.test(o.base)) throw bad('has no base fingerprint');
  if (typeof o.result !== 'string' || !FINGERPRINT.test(o.result)) throw bad('has no result fingerprint');
  return { version: o.version, base: o.base, result: o.result };
}

/**
 * A description with the delta record as its last member (QEMU's JSON
 * style). A snapshot without a description (RAM only) gets the smallest
 * one: its page size, no devices, the record.
 */
export function withDeltaMember(vmdesc: Uint8Array | undefined, info: DeltaInfo, pageSize: number): Uint8Array {
  const member = `"${DELTA_MEMBER}": {"version": ${info.version}, "base": "${info.base}", "result": "${info.result}"}`;
  if (!vmdesc) return Buffer.from(`{"page_size": ${pageSize}, "devices": [], ${member}}`, 'utf8');
  const text = Buffer.from(vmdesc.buffer, vmdesc.byteOffset, vmdesc.length).toString('utf8');
  const close = text.lastIndexOf('}');
  if (close < 0) throw new RamsnapFormatError(FormatCode.BAD_DEVICE_DESCRIPTION, 'the device description is not a JSON object', { field: 'vmdescription', offset: 0 });
  const empty = /^\s*\{\s*$/.test(text.slice(0, close));
  return Buffer.from(`${text.slice(0, close)}${empty ? '' : ', '}${member}${text.slice(close)}`, 'utf8');
}

/** The description without the delta record: what a full snapshot made by apply carries. */
export function withoutDeltaMember(vmdesc: Uint8Array): Uint8Array {
  const text = Buffer.from(vmdesc.buffer, vmdesc.byteOffset, vmdesc.length).toString('utf8');
  const at = text.lastIndexOf(`, "${DELTA_MEMBER}": {`);
  if (at < 0) return vmdesc;
  const end = text.indexOf('}', at) + 1;
  return Buffer.from(text.slice(0, at) + text.slice(end), 'utf8');
}
