/**
 * Device state decoded with the device description (format/vmdesc.ts).
 *
 * A device section carries no length: its fields are only known from the
 * description QEMU appends after EOF. Decoding follows the description
 * field by field, which both yields the values (for `dump --state`) and
 * tells where the section ends (for the stream walk).
 *
 * The values are shaped as QEMU's scripts/analyze-migration.py shows them,
 * so the two tools' JSON can be compared directly:
 *   - integers: "0x" + big-endian hex, two digits per byte; a negative
 *     signed value is followed by its decimal value in parentheses;
 *   - bool: true/false from the first byte;
 *   - nullptr: the marker byte '0' (0x30), shown as "nullptr";
 *   - buffers and every other type: bytes as space-separated hex pairs;
 *   - struct: an ordered map, then its subsections under their names;
 *   - a field repeated (array_len, or several fields of one name, as QEMU
 *     writes arrays split by null pointers) becomes a list, except that a
 *     single element stays a plain value, as in the script.
 */
import type { ByteCursor } from './cursor.js';
import { latin1 } from './cursor.js';
import { FormatCode, RamsnapFormatError } from './errors.js';
import type { VmField, VmStruct } from './vmdesc.js';
import { Section } from './constants.js';

/** An ordered JSON-like value; Map keeps key order whatever the keys look like. */
export type StateValue = string | boolean | StateValue[] | StateMap;
export type StateMap = Map<string, StateValue>;

/** Integer types the script reads as signed ("uint8 equal" and "uint16 equal" included). */
const SIGNED = new Set(['int8', 'int16', 'int32', 'int64', 'int32 equal', 'int32 le', 'int64 equal', 'uint8 equal', 'uint16 equal']);
const UNSIGNED = new Set(['uint8', 'uint16', 'uint32', 'uint32 equal', 'uint64']);
/** The byte QEMU writes for a NULL pointer in an array of pointers. */
const NULL_PTR_MARKER = 0x30;
/** Nesting of structs in a description; real ones are a few levels deep. */
const MAX_DEPTH = 64;
/**
 * Values decoded in all the device sections of a stream. Bounds a
 * description with a huge array_len of size-0 fields: such a field costs
 * no bytes, so a file of many small sections naming that device took time
 * (and, building values, memory) multiplied by the number of sections:
 * ten of them took 6 s to open, and dump --state of ten ran out of memory.
 * Real streams have tens of thousands.
 */
export const MAX_VALUES = 4_000_000;

/** Values decoded so far; one per stream, shared by its sections. */
export interface ValueBudget {
  values: number;
}

interface DecodeState {
  budget: ValueBudget;
  section: string;
  /** Build the values; false only measures and checks the section (a walk that just needs its length). */
  build: boolean;
}

/** `budget` counts values across calls (a stream's sections); without one, the limit is per call. */
export function decodeDeviceState(c: ByteCursor, dev: VmStruct & { name?: string }, versionId: number, budget: ValueBudget = { values: 0 }): StateMap {
  void versionId; // The description already matches the version QEMU wrote.
  const state: DecodeState = { budget, section: dev.name ?? dev.vmsd_name, build: true };
  return decodeStruct(c, dev, state.section, 0, state);
}

/**
 * Moves the cursor past a device section, checking the same markers as
 * decodeDeviceState but building no values: opening a file needs only
 * where each section ends, and formatting every register costs more than
 * the rest of the walk.
 */
export function skipDeviceState(c: ByteCursor, dev: VmStruct & { name?: string }, budget: ValueBudget = { values: 0 }): void {
  decodeStruct(c, dev, dev.name ?? dev.vmsd_name, 0, { budget, section: dev.name ?? dev.vmsd_name, build: false });
}

const EMPTY: StateMap = new Map();

function decodeStruct(c: ByteCursor, s: VmStruct, path: string, depth: number, st: DecodeState): StateMap {
  if (depth > MAX_DEPTH) {
    throw new RamsnapFormatError(FormatCode.BAD_DEVICE_DESCRIPTION, 'device description nests too deeply', { field: path, offset: c.pos });
  }
  if (!Array.isArray(s.fields)) {
    throw new RamsnapFormatError(FormatCode.BAD_DEVICE_DESCRIPTION, `description of ${s.vmsd_name} has no fields`, { field: path, offset: c.pos });
  }
  const out: StateMap = st.build ? new Map() : EMPTY;
  for (const f of s.fields) {
    const n = f.array_len ?? 1;
    // An array of fixed-size fields longer than the bytes left cannot fit: said before decoding it element by
    // element (array_len 1 000 000 000 over a 64 MiB hole decoded 4 000 000 values, 3.5 s, before LIMIT_EXCEEDED).
    if (n > 1 && f.type !== 'struct' && f.type !== 'capability' && typeof f.size === 'number' && f.size > 0) c.need(n * f.size, `${path}.${f.name}`);
    for (let i = 0; i < n; i++) {
      if (++st.budget.values > MAX_VALUES) {
        throw new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, 'device state has too many values', {
          field: `${path}.${f.name}`,
          offset: c.pos,
          expected: `<= ${MAX_VALUES}`,
        });
      }
      const v = decodeField(c, f, `${path}.${f.name}`, depth, st);
      if (!st.build) continue;
      const prev = out.get(f.name);
      if (prev === undefined) out.set(f.name, v);
      else if (Array.isArray(prev)) prev.push(v);
      else out.set(f.name, [prev, v]);
    }
  }
  for (const sub of s.subsections ?? []) {
    const at = c.pos;
    const marker = c.u8(`${path}.subsection`);
    if (marker !== Section.SUBSECTION) {
      throw new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `subsection ${sub.vmsd_name} not found where the description puts it`, {
        field: `${path}.subsection`,
        offset: at,
        expected: '05',
        actual: marker.toString(16).padStart(2, '0'),
      });
    }
    const nameAt = c.pos;
    const name = c.string8(`${path}.subsection.name`);
    // QEMU writes the subsection's vmsd name and version in the stream and the same two in the description.
    // Its loader ends the device at a subsection of another name (vmstate.c vmstate_subsection_load), so the
    // footer is then not where it looks, and refuses or reads by another layout one of another version.
    if (name !== sub.vmsd_name) {
      throw new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `subsection ${name} where the description has ${sub.vmsd_name}`, {
        field: `${path}.subsection.name`,
        offset: nameAt,
        expected: sub.vmsd_name,
        actual: name,
      });
    }
    const versionAt = c.pos;
    const version = c.be32(`${path}[${name}].version_id`);
    if (typeof sub.version === 'number' && version !== sub.version) {
      throw new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `subsection ${name} has version ${version}, but its description is of version ${sub.version}`, {
        field: `${path}[${name}].version_id`,
        offset: versionAt,
        expected: sub.version,
        actual: version,
      });
    }
    const v = decodeStruct(c, sub, `${path}[${name}]`, depth + 1, st);
    if (st.build) out.set(name, v);
  }
  return out;
}

function decodeField(c: ByteCursor, f: VmField, path: string, depth: number, st: DecodeState): StateValue {
  if (f.type === 'struct') {
    if (!f.struct) throw new RamsnapFormatError(FormatCode.BAD_DEVICE_DESCRIPTION, 'struct field without a struct', { field: path, offset: c.pos });
    return decodeStruct(c, f.struct, path, depth + 1, st);
  }
  if (f.type === 'capability') {
    const bytes = c.bytesView(c.u8(`${path}.length`), path);
    return st.build ? latin1(bytes) : '';
  }
  const size = f.size ?? 0;
  const at = c.pos;
  const bytes = c.bytesView(size, path);
  if (!st.build && f.type !== 'nullptr') return '';
  if (SIGNED.has(f.type) || UNSIGNED.has(f.type)) return formatInt(bytes, SIGNED.has(f.type));
  if (f.type === 'bool') return size > 0 && bytes[0] !== 0;
  if (f.type === 'nullptr') {
    if (size !== 1 || bytes[0] !== NULL_PTR_MARKER) {
      throw new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, 'null pointer marker expected', {
        field: path,
        offset: at,
        expected: '30',
        actual: hexBytes(bytes),
      });
    }
    return 'nullptr';
  }
  return hexBytes(bytes);
}

/**
 * Widest integer also shown as a decimal. QEMU's are at most 8 bytes; a
 * hostile description can declare one as wide as its section (64 MiB),
 * and building a BigInt of it a byte at a time took quadratic time.
 */
const MAX_BIGINT_BYTES = 64;

function formatInt(bytes: Uint8Array, signed: boolean): string {
  if (bytes.length > MAX_BIGINT_BYTES) {
    // The same digits as below (big-endian, two per byte), without the BigInt; no decimal.
    return `0x${Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('hex')}`;
  }
  let u = 0n;
  for (const b of bytes) u = (u << 8n) | BigInt(b);
  const hex = `0x${u.toString(16).padStart(bytes.length * 2, '0')}`;
  if (signed && bytes.length > 0 && bytes[0] & 0x80) {
    const s = u - (1n << BigInt(bytes.length * 8));
    return `${hex} (${s.toString()})`;
  }
  return hex;
}

/**
 * Bytes as space-separated hex pairs, written into one buffer: appending
 * two strings per byte made a rope of 128 million pieces for a 64 MiB
 * field, which ran out of memory.
 */
export function hexBytes(bytes: Uint8Array): string {
  if (bytes.length === 0) return '';
  const out = Buffer.allocUnsafe(bytes.length * 3 - 1);
  let o = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (i) out[o++] = 0x20;
    const h = HEX_CODES[bytes[i]];
    out[o++] = h >>> 8;
    out[o++] = h & 0xff;
  }
  return out.toString('latin1');
}

/** The two ASCII hex digits of each byte value, as (high << 8) | low. */
const HEX_CODES = Uint16Array.from({ length: 256 }, (_, i) => {
  const d = i.toString(16).padStart(2, '0');
  return (d.charCodeAt(0) << 8) | d.charCodeAt(1);
});

/**
 * Output is built as chunks of this many pieces, each joined into a flat
 * string: a document of millions of values is not held as one rope of
 * millions of strings (or as one string: dump writes chunk by chunk).
 */
const CHUNK_PIECES = 4096;

class JsonOut {
  readonly chunks: string[] = [];
  private parts: string[] = [];
  push(s: string): void {
    this.parts.push(s);
    if (this.parts.length >= CHUNK_PIECES) this.flush();
  }
  flush(): void {
    if (this.parts.length) this.chunks.push(this.parts.join(''));
    this.parts = [];
  }
  /** A long piece becomes a chunk of its own rather than being copied into one. */
  pushLong(s: string): void {
    this.flush();
    this.chunks.push(s);
  }
}

export function pythonJson(v: unknown, indent = 0): string {
  return pythonJsonChunks(v, indent).join('');
}

/** pythonJson's text as consecutive chunks, to write a large document without making it one string. */
export function pythonJsonChunks(v: unknown, indent = 0): string[] {
  const out = new JsonOut();
  writeJson(v, indent, out);
  out.flush();
  return out.chunks;
}

function writeJson(v: unknown, indent: number, out: JsonOut): void {
  if (v instanceof Map) return writeMap(v.entries() as Iterable<[string, unknown]>, v.size, indent, out);
  if (Array.isArray(v)) {
    if (v.length === 0) return out.push('[]');
    const pad = ' '.repeat(indent + 4);
    out.push('[\n');
    for (let i = 0; i < v.length; i++) {
      if (i) out.push(',\n');
      out.push(pad);
      writeJson(v[i], indent + 4, out);
    }
    return out.push(`\n${' '.repeat(indent)}]`);
  }
  if (v === null || v === undefined) return out.push('null');
  if (typeof v === 'string') return writeString(v, out);
  if (typeof v === 'boolean') return out.push(v ? 'true' : 'false');
  if (typeof v === 'number') return out.push(Number.isInteger(v) ? String(v) : pyFloat(v));
  if (typeof v === 'bigint') return out.push(v.toString());
  if (typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>);
    return writeMap(entries, entries.length, indent, out);
  }
  writeString(String(v), out);
}

function writeMap(entries: Iterable<[string, unknown]>, size: number, indent: number, out: JsonOut): void {
  if (size === 0) return out.push('{}');
  const pad = ' '.repeat(indent + 4);
  out.push('{\n');
  let first = true;
  for (const [k, x] of entries) {
    if (!first) out.push(',\n');
    first = false;
    out.push(pad);
    writeString(k, out);
    out.push(': ');
    writeJson(x, indent + 4, out);
  }
  out.push(`\n${' '.repeat(indent)}}`);
}

function pyFloat(n: number): string {
  const s = String(n);
  return /[.eE]/.test(s) ? s : `${s}.0`;
}

/** Characters Python's json escapes (with ensure_ascii). */
const NEEDS_ESCAPE = /["\\\x00-\x1f\x7f-\uffff]/;

function writeString(s: string, out: JsonOut): void {
  // Most strings need no escape (hex dumps of device buffers can be 190 million characters): one test, then as is.
  if (!NEEDS_ESCAPE.test(s)) {
    out.push('"');
    if (s.length > 1 << 16) out.pushLong(s);
    else out.push(s);
    return out.push('"');
  }
  out.push('"');
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    const esc = escapeChar(s.charCodeAt(i));
    if (esc === undefined) continue;
    if (i > from) out.push(s.slice(from, i));
    out.push(esc);
    from = i + 1;
  }
  if (from < s.length) out.push(s.slice(from));
  out.push('"');
}

function escapeChar(ch: number): string | undefined {
  if (ch === 0x22) return '\\"';
  if (ch === 0x5c) return '\\\\';
  if (ch === 0x0a) return '\\n';
  if (ch === 0x0d) return '\\r';
  if (ch === 0x09) return '\\t';
  if (ch === 0x08) return '\\b';
  if (ch === 0x0c) return '\\f';
  if (ch < 0x20 || ch > 0x7e) return `\\u${ch.toString(16).padStart(4, '0')}`;
  return undefined;
}
