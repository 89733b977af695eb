/**
 * The VM description: after the EOF byte QEMU appends
 *
 *   u8 0x06, be32 length, length bytes of JSON
 *
 * describing every device section's fields ({"page_size", "configuration",
 * "devices": [{name, instance_id, vmsd_name, version, fields, subsections}]}).
 * It is what makes device sections parseable without QEMU's source: a
 * section carries no length of its own.
 */
import { Section } from './constants.js';
import { FormatCode, RamsnapFormatError } from './errors.js';

export interface VmField {
  name: string;
  type: string;
  size: number;
  array_len?: number;
  index?: number;
  struct?: VmStruct;
  [k: string]: unknown;
}

export interface VmStruct {
  vmsd_name: string;
  version: number;
  fields?: VmField[];
  subsections?: VmStruct[];
  [k: string]: unknown;
}

export interface VmDevice extends VmStruct {
  name: string;
  instance_id: number;
}

export interface VmDescription {
  page_size?: number;
  devices: VmDevice[];
  /** The JSON as parsed, for `dump --desc`. */
  raw: Record<string, unknown>;
}

/** The JSON is at most this long; QEMU's are tens of KiB (analyze-migration.py looks at the last 10 MiB). */
export const MAX_VMDESC = 16 << 20;
/**
 * Nesting of objects and lists in the JSON. A struct field is four levels
 * (struct, fields, field, struct) and device state is decoded 64 structs
 * deep (format/vmstate.ts), so 512 leaves room; real descriptions are under
 * 20 levels.
 */
export const MAX_VMDESC_DEPTH = 512;

/**
 * Finds the description's header in `chunk` (file bytes from `base`): the
 * last position p where `chunk[p] == 0x06`, the be32 after it equals the
 * bytes from p + 5 to the end of the file (`fileSize`), and JSON starts.
 */
export function locateVmDescription(chunk: Uint8Array, base: number, fileSize: number): { offset: number; length: number } | undefined {
  const view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  const buf = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  // lastIndexOf is a native backwards scan: a RAM-only stream has no description, and its whole tail is searched.
  for (let p = buf.lastIndexOf(Section.VMDESCRIPTION, chunk.length - 6); p >= 0; p = p > 0 ? buf.lastIndexOf(Section.VMDESCRIPTION, p - 1) : -1) {
    if (chunk[p + 5] !== 0x7b /* { */) continue;
    const len = view.getUint32(p + 1, false);
    if (len === fileSize - (base + p) - 5) return { offset: base + p, length: len };
  }
  return undefined;
}

export function parseVmDescription(json: Uint8Array, offset: number): VmDescription {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(json.buffer, json.byteOffset, json.byteLength).toString('utf8'));
  } catch (e) {
    throw new RamsnapFormatError(FormatCode.BAD_DEVICE_DESCRIPTION, `device description is not JSON: ${(e as Error).message}`, {
      field: 'vmdescription',
      offset,
    });
  }
  // Checked before anything walks it recursively (checkStruct here, dump --desc's printer): a deeply nested
  // description overflowed the stack, a RangeError instead of a format error.
  if (jsonDepth(raw) > MAX_VMDESC_DEPTH) {
    throw new RamsnapFormatError(FormatCode.BAD_DEVICE_DESCRIPTION, `device description nests deeper than ${MAX_VMDESC_DEPTH} levels`, {
      field: 'vmdescription',
      offset,
      expected: `<= ${MAX_VMDESC_DEPTH} levels`,
    });
  }
  if (typeof raw !== 'object' || raw === null || !Array.isArray((raw as { devices?: unknown }).devices)) {
    throw new RamsnapFormatError(FormatCode.BAD_DEVICE_DESCRIPTION, 'device description has no "devices" list', {
      field: 'vmdescription.devices',
      offset,
    });
  }
  const r = raw as Record<string, unknown>;
  const devices = r.devices as unknown[];
  devices.forEach((d, i) => checkStruct(d, `vmdescription.devices[${i}]`, offset, true));
  const pageSize = typeof r.page_size === 'number' ? r.page_size : undefined;
  return { page_size: pageSize, devices: devices as VmDevice[], raw: r };
}

/** Nesting of objects and lists, counted without recursion (the value can be nested far deeper than the stack). */
function jsonDepth(root: unknown): number {
  let max = 0;
  const stack: [unknown, number][] = [[root, 1]];
  while (stack.length) {
    const [v, d] = stack.pop() as [unknown, number];
    if (typeof v !== 'object' || v === null) continue;
    if (d > max) max = d;
    if (max > MAX_VMDESC_DEPTH) return max;
    for (const x of Array.isArray(v) ? v : Object.values(v)) if (typeof x === 'object' && x !== null) stack.push([x, d + 1]);
  }
  return max;
}

function checkStruct(s: unknown, field: string, offset: number, device: boolean): void {
  const bad = (what: string): never => {
    throw new RamsnapFormatError(FormatCode.BAD_DEVICE_DESCRIPTION, `device description: ${what}`, { field, offset });
  };
  if (typeof s !== 'object' || s === null) bad('entry is not an object');
  const o = s as Record<string, unknown>;
  if (device) {
    if (typeof o.name !== 'string') bad('device has no name');
    if (typeof o.instance_id !== 'number') bad('device has no instance_id');
  }
  if (o.fields !== undefined) {
    if (!Array.isArray(o.fields)) bad('"fields" is not a list');
    (o.fields as unknown[]).forEach((f, i) => {
      if (typeof f !== 'object' || f === null) bad(`fields[${i}] is not an object`);
      const ff = f as Record<string, unknown>;
      if (typeof ff.name !== 'string' || typeof ff.type !== 'string') bad(`fields[${i}] has no name or type`);
      if (ff.size !== undefined && (typeof ff.size !== 'number' || !Number.isSafeInteger(ff.size) || ff.size < 0)) bad(`fields[${i}].size is not a size`);
      if (ff.array_len !== undefined && (typeof ff.array_len !== 'number' || !Number.isSafeInteger(ff.array_len) || ff.array_len < 0)) {
        bad(`fields[${i}].array_len is not a count`);
      }
      if (ff.struct !== undefined) checkStruct(ff.struct, `${field}.fields[${i}].struct`, offset, false);
    });
  }
  if (o.subsections !== undefined) {
    if (!Array.isArray(o.subsections)) bad('"subsections" is not a list');
    (o.subsections as unknown[]).forEach((x, i) => checkStruct(x, `${field}.subsections[${i}]`, offset, false));
  }
}

export function findDevice(desc: VmDescription, name: string, instanceId: number): VmDevice | undefined {
  return desc.devices.find((d) => d.name === name && d.instance_id === instanceId);
}
