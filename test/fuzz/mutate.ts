/**
 * Structure-aware mutations of real QEMU fixtures, generated with
 * fast-check from a FixtureMap and applied to a SparseImage.
 *
 * A mutation is a recipe: a fixture name and a short list of operations,
 * each plain JSON with the offsets it touches and why ("cut at
 * ramblock[pc.ram].bitmap", "ramblock[pc.ram].mapped_ram.pages_offset =
 * past EOF"). Input i of a run with seed S is always the same recipe, and a
 * recipe saved from a crash replays without the seed.
 */
import fc from 'fast-check';
import { Section } from '../../format/constants.js';
import type { SparseImage } from './image.js';
import type { FieldMark, FixtureMap, NameMark, RegionMark } from './map.js';

export type Op =
  /** Truncate the file at `at`. */
  | { op: 'cut'; at: number; why: string }
  /** Append `by` bytes of `fill` (trailing data). */
  | { op: 'grow'; by: number; fill: number; why: string }
  | { op: 'flip'; at: number; bit: number; why: string }
  /** Overwrite bytes at `at`. */
  | { op: 'bytes'; at: number; hex: string; why: string }
  /** Replace an integer field with `value` (decimal; negative values are stored as unsigned). */
  | { op: 'int'; at: number; width: 1 | 2 | 4 | 8; le?: boolean; value: string; why: string }
  /** Copy `length` bytes from `from` over `to` (duplicated block entries and sections). */
  | { op: 'copy'; from: number; to: number; length: number; why: string }
  /** Insert a copy of [from, from + length) at `at`: everything after moves (a section sent twice). */
  | { op: 'insertCopy'; from: number; length: number; at: number; why: string }
  /** Insert `length` zero bytes (a hole) at `at`: everything after moves, offsets before it stay. */
  | { op: 'hole'; at: number; length: number; why: string }
  /** Remove `remove` bytes at `at` and insert `hex`: everything after moves. */
  | { op: 'splice'; at: number; remove: number; hex: string; why: string }
  /** Replace a u8-length-prefixed name at each of `copies` (offsets of the length byte). */
  | { op: 'rename'; copies: number[]; hex: string; why: string }
  /** Edit the device description's JSON; its length field follows. */
  | { op: 'vmdesc'; offset: number; edit: JsonEdit; why: string };

export interface JsonEdit {
  path: (string | number)[];
  action: 'set' | 'delete' | 'dup' | 'nest' | 'cut';
  value?: unknown;
}

export interface Recipe {
  fixture: string;
  /** How the recipe was made: a boundary sweep, or seed + index of the random stream. */
  origin: string;
  ops: Op[];
}

// ---------------------------------------------------------------------------
// Applying

const hexBytes = (hex: string): Uint8Array => Uint8Array.from(Buffer.from(hex, 'hex'));
const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const latin1Hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex');

export function applyRecipe(base: SparseImage, recipe: Recipe): SparseImage {
  const img = base.clone();
  for (const op of recipe.ops) applyOp(img, op);
  return img;
}

function applyOp(img: SparseImage, op: Op): void {
  switch (op.op) {
    case 'cut':
      if (op.at < img.size) img.resize(op.at);
      return;
    case 'grow':
      img.write(img.size, new Uint8Array(op.by).fill(op.fill));
      return;
    case 'flip': {
      if (op.at >= img.size) return;
      const b = img.read(op.at, 1);
      b[0] ^= 1 << op.bit;
      img.write(op.at, b);
      return;
    }
    case 'bytes':
      if (op.at < img.size) img.write(op.at, hexBytes(op.hex).subarray(0, img.size - op.at));
      return;
    case 'int': {
      if (op.at + op.width > img.size) return;
      const b = new Uint8Array(op.width);
      const v = new DataView(b.buffer);
      const x = BigInt.asUintN(op.width * 8, BigInt(op.value));
      if (op.width === 1) v.setUint8(0, Number(x));
      else if (op.width === 2) v.setUint16(0, Number(x), op.le);
      else if (op.width === 4) v.setUint32(0, Number(x), op.le);
      else v.setBigUint64(0, x, op.le);
      img.write(op.at, b);
      return;
    }
    case 'copy': {
      if (op.from >= img.size || op.to >= img.size) return;
      const len = Math.min(op.length, img.size - op.from, img.size - op.to);
      // Sparse: a copied page region is mostly holes, which must not become chunks of zeros in memory.
      const parts = img.extents(op.from, len);
      const zeros = new Uint8Array(Math.min(len, 1 << 20));
      for (let at = 0; at < len; at += zeros.length) {
        const n = Math.min(zeros.length, len - at);
        if (img.extents(op.to + at, n).length) img.write(op.to + at, zeros.subarray(0, n));
      }
      for (const e of parts) img.write(op.to + (e.offset - op.from), e.data);
      return;
    }
    case 'insertCopy': {
      if (op.from + op.length > img.size || op.at > img.size) return;
      // A hole as long as the copy, then the copy's data chunks: a RAM section sent twice spans its page regions.
      const parts = img.extents(op.from, op.length);
      img.splice(op.at, 0, new Uint8Array(0), op.length);
      for (const e of parts) img.write(op.at + (e.offset - op.from), e.data);
      return;
    }
    case 'hole':
      if (op.at <= img.size) img.splice(op.at, 0, new Uint8Array(0), op.length);
      return;
    case 'splice':
      if (op.at <= img.size) img.splice(op.at, Math.min(op.remove, img.size - op.at), hexBytes(op.hex));
      return;
    case 'rename': {
      const name = hexBytes(op.hex);
      // Highest offset first, so a length change does not move the copies still to do.
      for (const at of [...op.copies].sort((a, b) => b - a)) {
        if (at >= img.size) continue;
        const oldLen = img.read(at, 1)[0];
        if (name.length === oldLen) img.write(at + 1, name.subarray(0, img.size - at - 1));
        else img.splice(at, Math.min(1 + oldLen, img.size - at), Uint8Array.of(name.length & 0xff, ...name));
      }
      return;
    }
    case 'vmdesc':
      editVmdesc(img, op.offset, op.edit);
      return;
  }
}

/** Largest description an edit rewrites (real ones are under 100 KiB; the fuzzer's nesting makes a few MiB). */
const MAX_EDITED_DESCRIPTION = 16 << 20;

/** Rewrites the description at `offset` (type byte) with `edit` applied, fixing its length field. */
function editVmdesc(img: SparseImage, offset: number, edit: JsonEdit): void {
  if (offset + 6 > img.size || img.read(offset, 1)[0] !== Section.VMDESCRIPTION) return;
  // The declared length, not the rest of the file: an earlier operation may have put a 200 MiB hole after it.
  const length = Math.min(new DataView(img.read(offset + 1, 4).buffer).getUint32(0, false), img.size - offset - 5);
  if (length > MAX_EDITED_DESCRIPTION) return;
  const text = Buffer.from(img.read(offset + 5, length));
  let out: Uint8Array;
  if (edit.action === 'cut') {
    out = text.subarray(0, Math.min(text.length, Number(edit.value)));
  } else {
    // A nested struct is spliced in as text: JSON.stringify recurses, and the nesting is deeper than its stack.
    const nested = edit.action === 'nest' ? nestedFields(Number(edit.value)) : undefined;
    try {
      const doc = editJson(JSON.parse(text.toString('utf8')), nested === undefined ? edit : { ...edit, action: 'set', value: NESTED_PLACEHOLDER });
      out = Buffer.from((JSON.stringify(doc) ?? 'null').replace(JSON.stringify(NESTED_PLACEHOLDER), () => nested ?? ''), 'utf8');
    } catch {
      // Not JSON, or (after an earlier edit nested it) too deep to parse or print again here: left as it is.
      return;
    }
  }
  img.resize(offset + 5);
  const head = new Uint8Array(5);
  head[0] = Section.VMDESCRIPTION;
  new DataView(head.buffer).setUint32(1, out.length, false);
  img.write(offset, head);
  img.write(offset + 5, out);
}

function editJson(doc: unknown, e: JsonEdit): unknown {
  if (e.path.length === 0) return e.action === 'set' ? e.value : doc;
  let parent: unknown = doc;
  for (const k of e.path.slice(0, -1)) {
    if (typeof parent !== 'object' || parent === null) return doc;
    parent = (parent as Record<string | number, unknown>)[k];
  }
  if (typeof parent !== 'object' || parent === null) return doc;
  const p = parent as Record<string | number, unknown>;
  const key = e.path[e.path.length - 1];
  switch (e.action) {
    case 'set':
      p[key] = e.value;
      break;
    case 'delete':
      if (Array.isArray(p) && typeof key === 'number') p.splice(key, 1);
      else delete p[key];
      break;
    case 'dup':
      if (Array.isArray(p) && typeof key === 'number' && key < p.length) p.splice(key, 0, structuredClone(p[key]));
      break;
    case 'nest':
      // Handled as text by editVmdesc.
      break;
  }
  return doc;
}

const NESTED_PLACEHOLDER = '\u0000nested\u0000';

/** The JSON text of a fields list whose one struct field nests `depth` levels deep. */
function nestedFields(depth: number): string {
  let s = '[{"name":"x","type":"uint8","size":1}]';
  for (let i = depth - 1; i >= 0; i--) s = `[{"name":"s${i}","type":"struct","size":0,"struct":{"vmsd_name":"n${i}","version":1,"fields":${s}}}]`;
  return s;
}

// ---------------------------------------------------------------------------
// Generating

/** Values that break lengths and offsets: zero, huge, negative as unsigned, past EOF, overlapping another structure. */
function intValues(m: FixtureMap, f: FieldMark): fc.Arbitrary<{ value: bigint; why: string }> {
  const bits = f.width * 8;
  const max = (1n << BigInt(bits)) - 1n;
  const v = BigInt(f.value ?? '0');
  const size = BigInt(m.size);
  const ps = BigInt(m.pageSize || 4096);
  const c = (value: bigint, w: string) => ({ value: BigInt.asUintN(bits, value), why: w });
  const fixed = [
    c(0n, '0'),
    c(1n, '1'),
    c(max, 'all ones (huge / -1)'),
    c(1n << BigInt(bits - 1), 'sign bit (huge / negative)'),
    c(-ps, '-page size as unsigned'),
    c(-2n, '-2 as unsigned'),
    c(v + 1n, 'value + 1'),
    c(v - 1n, 'value - 1'),
    c(v + ps, 'value + page size'),
    c(v - ps, 'value - page size'),
    c(v * 2n, 'value * 2'),
    c(v / 2n, 'value / 2'),
    c(v ^ 0x80n, 'value ^ 0x80'),
  ];
  if (f.width >= 4) {
    fixed.push(c(size, 'file size (past EOF)'), c(size + 1n, 'file size + 1'), c(size - 1n, 'file size - 1'), c(size + (1n << 30n), 'past EOF by 1 GiB'));
  }
  if (f.width === 8) {
    fixed.push(c((1n << 53n) - 1n, '2^53 - 1'), c(1n << 53n, '2^53'), c((1n << 53n) + ps, '2^53 + page size'), c(1n << 42n, '4 TiB'), c(1n << 62n, '2^62'));
    if (f.kind === 'flags') {
      // A legacy record: flag bits and the page offset separately.
      for (let bit = 0n; bit < 10n; bit++) fixed.push(c(v ^ (1n << bit), `record flag bit ${bit} flipped`));
      fixed.push(c((v & 0x3ffn) | (1n << 40n), 'record offset 1 TiB'), c((v & 0x3ffn) | ((v >> 10n) << 11n), 'record offset doubled'));
    }
    if (f.label === 'ram.mem_size') {
      fixed.push(c(((v >> 10n) * 2n << 10n) | 4n, 'RAM total doubled'), c((((v >> 10n) - 1n) << 10n) | 4n, 'RAM total - 1 KiB'), c((max >> 10n << 10n) | 4n, 'RAM total huge'));
    }
  }
  if (f.kind === 'offset' || f.kind === 'length') {
    // Another structure's offset: overlapping another block, the stream, the description.
    for (const b of m.blocks) {
      for (const [k, x] of Object.entries({ entry: b.entryOffset, header: b.headerOffset, bitmap: b.bitmapOffset, pages: b.pagesOffset, usedLength: b.usedLength })) {
        if (x !== undefined) fixed.push(c(BigInt(x), `ramblock[${b.name}].${k} (overlap)`));
      }
    }
    if (m.vmdesc) fixed.push(c(BigInt(m.vmdesc.offset), 'vmdescription offset (overlap)'));
    fixed.push(c(BigInt(m.streamOffset), 'stream start (overlap)'));
  }
  if (f.label.endsWith('page_size')) {
    for (const p of [512n, 1024n, 3000n, 8192n, 65536n, 1n << 17n, 1n << 30n]) fixed.push(c(p, `page size ${p}`));
  }
  return fc.oneof(
    { arbitrary: fc.constantFrom(...fixed), weight: 6 },
    { arbitrary: fc.bigInt({ min: 0n, max }).map((x) => c(x, 'random')), weight: 1 },
  );
}

function fieldOp(m: FixtureMap): fc.Arbitrary<Op> {
  return fc.constantFrom(...m.fields).chain((f) =>
    intValues(m, f).map((x): Op => ({ op: 'int', at: f.at, width: f.width, ...(f.le ? { le: true } : {}), value: x.value.toString(), why: `${f.label} = ${x.why}` })),
  );
}

function cutOp(m: FixtureMap): fc.Arbitrary<Op> {
  return fc.oneof(
    { arbitrary: fc.tuple(fc.constantFrom(...m.boundaries), fc.constantFrom(-1, 0, 0, 1)).map(([b, d]): Op => ({ op: 'cut', at: Math.max(0, b + d), why: `cut at boundary ${b}${d ? (d > 0 ? '+1' : '-1') : ''}` })), weight: 2 },
    ...(m.cutPoints.length ? [{ arbitrary: fc.constantFrom(...m.cutPoints).map((at): Op => ({ op: 'cut', at, why: `cut between fields at ${at}` })), weight: 2 }] : []),
    { arbitrary: fc.nat({ max: m.size }).map((at): Op => ({ op: 'cut', at, why: 'cut at a random point' })), weight: 1 },
    { arbitrary: region(m).chain((r) => fc.integer({ min: r.start, max: r.end - 1 }).map((at): Op => ({ op: 'cut', at, why: `cut inside ${r.label}` }))), weight: 1 },
  );
}

/** Regions where damage is interesting: everything but page contents. */
function region(m: FixtureMap, kinds?: RegionMark['kind'][]): fc.Arbitrary<RegionMark> {
  const rs = m.regions.filter((r) => (kinds ? kinds.includes(r.kind) : r.kind !== 'pages'));
  return fc.constantFrom(...(rs.length ? rs : m.regions));
}

function flipOp(m: FixtureMap): fc.Arbitrary<Op> {
  return region(m).chain((r) =>
    fc.tuple(fc.integer({ min: r.start, max: Math.min(r.end, r.start + 4096) - 1 }), fc.nat({ max: 7 })).map(([at, bit]): Op => ({ op: 'flip', at, bit, why: `bit flip in ${r.label}` })),
  );
}

function overwriteOp(m: FixtureMap): fc.Arbitrary<Op> {
  return region(m).chain((r) =>
    fc
      .tuple(fc.integer({ min: r.start, max: Math.min(r.end, r.start + 4096) - 1 }), fc.uint8Array({ minLength: 1, maxLength: 8 }))
      .map(([at, b]): Op => ({ op: 'bytes', at, hex: toHex(b), why: `bytes overwritten in ${r.label}` })),
  );
}

function bitmapOp(m: FixtureMap): fc.Arbitrary<Op> | undefined {
  const bms = m.blocks.filter((b) => b.bitmapOffset !== undefined && b.bitmapSize);
  if (!bms.length) return undefined;
  return fc.constantFrom(...bms).chain((b) => {
    const at = b.bitmapOffset as number;
    const n = b.bitmapSize as number;
    return fc.oneof(
      fc.constant<Op>({ op: 'bytes', at, hex: 'ff'.repeat(n), why: `ramblock[${b.name}].bitmap all ones` }),
      fc.constant<Op>({ op: 'bytes', at: at + n - 1, hex: 'ff', why: `ramblock[${b.name}].bitmap tail bits set` }),
      fc.constant<Op>({ op: 'bytes', at, hex: '00'.repeat(n), why: `ramblock[${b.name}].bitmap all zero` }),
      fc.tuple(fc.nat({ max: n - 1 }), fc.nat({ max: 7 })).map(([i, bit]): Op => ({ op: 'flip', at: at + i, bit, why: `ramblock[${b.name}].bitmap bit flip` })),
    );
  });
}

/** Hostile names: control characters, "..", "/", empty, 255 bytes, bytes that are not UTF-8. */
const HOSTILE_NAMES = [
  '',
  '.',
  '..',
  '/',
  '../../x',
  '/etc/passwd',
  'a/b',
  '..\\..\\x',
  '\x1b[2J\x1b[H',
  '\x1b]0;owned\x07',
  'ram\nFAKE: line',
  'ram\rover',
  '\x00\x00',
  '\x7f\x9b\xff',
  '-rf',
  'A'.repeat(255),
  '%s%n%x',
  '"quoted\\',
];
/** Patterns a name of fixed length is filled with. */
const FILL_PATTERNS = ['../', '/', '.', '\x1b[31m', '\x07', '\x00', '\n', '\x9b', '\xff', '\\'];

function fitLength(pattern: string, n: number): string {
  let s = '';
  while (s.length < n) s += pattern;
  return s.slice(0, n);
}

function renameOp(m: FixtureMap): fc.Arbitrary<Op> | undefined {
  if (!m.names.length) return undefined;
  return fc.constantFrom(...m.names).chain((nm: NameMark) => {
    const others = m.names.filter((o) => o.kind === nm.kind && o.name !== nm.name).map((o) => o.name);
    const newName = fc.oneof(
      { arbitrary: fc.constantFrom(...FILL_PATTERNS).map((p) => fitLength(p, nm.name.length)), weight: 4 },
      { arbitrary: fc.constantFrom(...HOSTILE_NAMES), weight: 2 },
      { arbitrary: fc.constantFrom(...(others.length ? others : [nm.name])), weight: 1 },
      { arbitrary: fc.uint8Array({ minLength: nm.name.length, maxLength: nm.name.length }).map((b) => Buffer.from(b).toString('latin1')), weight: 1 },
    );
    // Mostly every copy (a consistent rename); sometimes only the first.
    return fc.tuple(newName, fc.boolean(), fc.nat({ max: 9 })).map(([n, _, k]): Op => ({
      op: 'rename',
      copies: k < 8 ? nm.copies : nm.copies.slice(0, 1),
      hex: latin1Hex(n),
      why: `${nm.label} renamed to ${JSON.stringify(n)}${k < 8 ? '' : ' (first copy only)'}`,
    }));
  });
}

function duplicateOp(m: FixtureMap): fc.Arbitrary<Op> | undefined {
  const arbs: fc.Arbitrary<Op>[] = [];
  if (m.blocks.length >= 2) {
    // Block i's entry (name, length, header) written over block j's: the same block listed twice.
    arbs.push(
      fc.tuple(fc.nat({ max: m.blocks.length - 1 }), fc.nat({ max: m.blocks.length - 1 })).filter(([i, j]) => i !== j).map(([i, j]): Op => {
        const a = m.blocks[i];
        const b = m.blocks[j];
        return { op: 'copy', from: a.entryOffset, to: b.entryOffset, length: a.entryLength, why: `ramblock[${a.name}] entry copied over ramblock[${b.name}] (duplicate block)` };
      }),
    );
  }
  const full = m.sections.filter((s) => s.kind === 'full');
  if (full.length) {
    // A device section inserted again right after itself (the description, found from the end, still matches).
    arbs.push(fc.constantFrom(...full).map((s): Op => ({ op: 'insertCopy', from: s.offset, length: s.end - s.offset, at: s.end, why: `section[${s.name}] sent twice` })));
  }
  if (!arbs.length) return undefined;
  return fc.oneof(...arbs);
}

function sectionOp(m: FixtureMap): fc.Arbitrary<Op> | undefined {
  const secs = m.sections;
  if (!secs.length) return undefined;
  return fc.constantFrom(...secs).chain((s) =>
    fc.constantFrom<Op>(
      { op: 'splice', at: s.end - 5, remove: 5, hex: '', why: `section[${s.name}] footer missing` },
      { op: 'splice', at: s.offset, remove: s.end - s.offset, hex: '', why: `section[${s.name}] removed` },
      { op: 'insertCopy', from: s.offset, length: s.end - s.offset, at: s.end, why: `section[${s.name}] sent twice` },
      { op: 'bytes', at: s.end - 5, hex: '00', why: `section[${s.name}] footer marker zeroed` },
      { op: 'splice', at: s.end - 5, remove: 0, hex: '7e00000000', why: `section[${s.name}] extra footer` },
    ),
  );
}

function vmdescOp(m: FixtureMap): fc.Arbitrary<Op> | undefined {
  const v = m.vmdesc;
  const shape = m.vmdescShape;
  if (!v || !shape || !shape.fields.length) return undefined;
  const nDev = shape.fields.length;
  const dev = fc.nat({ max: nDev - 1 });
  const withFields = shape.fields.map((n, i) => (n > 0 ? i : -1)).filter((i) => i >= 0);
  const field = withFields.length
    ? fc.constantFrom(...withFields).chain((d) => fc.nat({ max: shape.fields[d] - 1 }).map((f) => ['devices', d, 'fields', f] as (string | number)[]))
    : fc.constant(['devices', 0, 'fields', 0] as (string | number)[]);
  const ed = (p: (string | number)[], action: JsonEdit['action'], value: unknown, w: string): { e: JsonEdit; w: string } => ({ e: { path: p, action, value }, w });
  const edit: fc.Arbitrary<{ e: JsonEdit; w: string }> = fc.oneof(
    fc.tuple(field, fc.constantFrom<unknown>(0, -1, 1.5, 2 ** 31, 2 ** 53, 1e300, '8', null, 65536)).map(([p, x]) => ed([...p, 'size'], 'set', x, `size = ${JSON.stringify(x)}`)),
    fc.tuple(field, fc.constantFrom<unknown>(0, -1, 1e9, 2 ** 32, 4_000_001, 1.5, '3')).map(([p, x]) => ed([...p, 'array_len'], 'set', x, `array_len = ${JSON.stringify(x)}`)),
    fc.tuple(field, fc.constantFrom<unknown>('struct', 'nullptr', 'capability', 'unknown type', 'bool', 'uint64', 'int8', 7)).map(([p, x]) => ed([...p, 'type'], 'set', x, `type = ${JSON.stringify(x)}`)),
    fc.tuple(field, fc.constantFrom<unknown>(null, 5, [], { vmsd_name: 'x' }, { fields: 'no' })).map(([p, x]) => ed([...p, 'struct'], 'set', x, `struct = ${JSON.stringify(x)}`)),
    field.map((p) => ed(p, 'delete', undefined, 'field deleted')),
    field.map((p) => ed(p, 'dup', undefined, 'field duplicated')),
    fc.tuple(dev, fc.constantFrom<unknown>(undefined, null, {}, 'x', [null])).map(([d, x]) => ed(['devices', d, 'fields'], 'set', x, `fields = ${JSON.stringify(x)}`)),
    fc.tuple(dev, fc.constantFrom(65, 200, 3000, 20_000)).map(([d, n]) => ed(['devices', d, 'fields'], 'nest', n, `fields nested ${n} deep`)),
    fc.tuple(dev, fc.constantFrom<unknown>([{ vmsd_name: 'sub', version: 1, fields: [] }], [null], 'x', [{ vmsd_name: 'sub', version: 1 }])).map(([d, x]) => ed(['devices', d, 'subsections'], 'set', x, `subsections = ${JSON.stringify(x)}`)),
    fc.tuple(dev, fc.constantFrom(...HOSTILE_NAMES)).map(([d, x]) => ed(['devices', d, 'name'], 'set', x, `device name = ${JSON.stringify(x)}`)),
    fc.tuple(dev, fc.constantFrom<unknown>(-1, 1.5, '0', 2 ** 53, null)).map(([d, x]) => ed(['devices', d, 'instance_id'], 'set', x, `instance_id = ${JSON.stringify(x)}`)),
    dev.map((d) => ed(['devices', d], 'dup', undefined, 'device duplicated')),
    dev.map((d) => ed(['devices', d], 'delete', undefined, 'device deleted')),
    fc.constantFrom<unknown>(0, 1, 3000, 4095.5, 2 ** 20, -4096, '4096', 1e308, null).map((x) => ed(['page_size'], 'set', x, `page_size = ${JSON.stringify(x)}`)),
    fc.constantFrom<unknown>(undefined, {}, 'x', null, [1]).map((x) => ed(['devices'], 'set', x, `devices = ${JSON.stringify(x)}`)),
    fc.constantFrom<unknown>([], 'x', 1, null).map((x) => ed([], 'set', x, `description = ${JSON.stringify(x)}`)),
    fc.nat({ max: Math.max(0, v.length - 1) }).map((n) => ed([], 'cut', n, `JSON cut to ${n} bytes`)),
  );
  return edit.map(({ e, w }): Op => ({ op: 'vmdesc', offset: v.offset, edit: e, why: `vmdescription: ${w}` }));
}

/** A hole inserted at a boundary: the stream after it moves, far from what points into it. */
function holeOp(m: FixtureMap): fc.Arbitrary<Op> {
  return fc
    .tuple(fc.constantFrom(...m.boundaries), fc.constantFrom(1, 4096, 1 << 20, 65 << 20, 200 << 20))
    .map(([at, length]): Op => ({ op: 'hole', at, length, why: `${length}-byte hole inserted at boundary ${at}` }));
}

function growOp(): fc.Arbitrary<Op> {
  return fc.tuple(fc.constantFrom(1, 5, 4096, 65536), fc.constantFrom(0, 0x06, 0x7b, 0xff)).map(([by, fill]): Op => ({ op: 'grow', by, fill, why: `${by} bytes of 0x${fill.toString(16)} appended` }));
}

/** One operation on fixture `m`, weighted towards structure. */
export function opArb(m: FixtureMap): fc.Arbitrary<Op> {
  const parts: { arbitrary: fc.Arbitrary<Op>; weight: number }[] = [
    { arbitrary: cutOp(m), weight: 6 },
    { arbitrary: fieldOp(m), weight: 10 },
    { arbitrary: flipOp(m), weight: 4 },
    { arbitrary: overwriteOp(m), weight: 3 },
    { arbitrary: growOp(), weight: 1 },
    { arbitrary: holeOp(m), weight: 1 },
  ];
  const opt: [fc.Arbitrary<Op> | undefined, number][] = [
    [bitmapOp(m), 3],
    [renameOp(m), 4],
    [duplicateOp(m), 2],
    [sectionOp(m), 3],
    [vmdescOp(m), 4],
  ];
  for (const [a, w] of opt) if (a) parts.push({ arbitrary: a, weight: w });
  return fc.oneof(...parts);
}

/** A recipe: one to four operations on one fixture, mostly one. */
export function recipeArb(maps: FixtureMap[]): fc.Arbitrary<{ fixture: string; ops: Op[] }> {
  return fc.constantFrom(...maps).chain((m) =>
    fc
      .tuple(
        fc.oneof({ arbitrary: fc.constant(1), weight: 6 }, { arbitrary: fc.integer({ min: 2, max: 4 }), weight: 2 }).chain((n) => fc.array(opArb(m), { minLength: n, maxLength: n })),
        // A third of the recipes first give a block a name full of terminal escapes (same length, so the file stays
        // sound): whatever the other operations break, every message and warning naming the block must be escaped.
        fc.option(hostileBlockName(m), { freq: 2, nil: undefined }),
      )
      .map(([ops, name]) => ({ fixture: m.name, ops: name ? [name, ...ops] : ops })),
  );
}

function hostileBlockName(m: FixtureMap): fc.Arbitrary<Op> {
  const blocks = m.names.filter((n) => n.kind === 'block' && n.name.length >= 2);
  if (!blocks.length) return fc.constant<Op>({ op: 'grow', by: 0, fill: 0, why: 'no block to rename' });
  return fc.tuple(fc.constantFrom(...blocks), fc.constantFrom('\x1b[2J', '\x1b]0;x\x07', '\r\n\x07', '\x9b\x7f')).map(([nm, p]): Op => {
    const name = fitLength(p, nm.name.length);
    return { op: 'rename', copies: nm.copies, hex: latin1Hex(name), why: `${nm.label} renamed to ${JSON.stringify(name)}` };
  });
}

/** 32-bit seed of input `index` in a run seeded `seed` (splitmix-like, so neighbours differ). */
export function inputSeed(seed: number, index: number): number {
  let z = (seed ^ Math.imul(index + 1, 0x9e3779b9)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) | 0;
}

/** Arbitraries built once per list of maps (building them walks every field of every map). */
const recipeArbs = new WeakMap<FixtureMap[], fc.Arbitrary<{ fixture: string; ops: Op[] }>>();
const opArbs = new WeakMap<FixtureMap, fc.Arbitrary<Op>>();

/** Random input `index` of a run seeded `seed`: the same recipe every time. */
export function randomRecipe(maps: FixtureMap[], seed: number, index: number): Recipe {
  let arb = recipeArbs.get(maps);
  if (!arb) recipeArbs.set(maps, (arb = recipeArb(maps)));
  const [r] = fc.sample(arb, { seed: inputSeed(seed, index), numRuns: 1 });
  return { fixture: r.fixture, origin: `seed ${seed} input ${index}`, ops: r.ops };
}

/** Most operations a recipe grown from the corpus keeps. */
const MAX_OPS = 8;

/**
 * Input `index` grown from `parent` (a corpus entry: an input that reached
 * new code): its operations and one or two more on the same fixture.
 */
export function extendRecipe(parent: Recipe, map: FixtureMap, seed: number, index: number): Recipe {
  let arb = opArbs.get(map);
  if (!arb) opArbs.set(map, (arb = opArb(map)));
  const s = inputSeed(seed, index);
  const more = fc.sample(arb, { seed: s, numRuns: 1 + (s & 1) });
  return { fixture: parent.fixture, origin: `seed ${seed} input ${index} from the corpus`, ops: [...parent.ops, ...more].slice(-MAX_OPS) };
}

/**
 * Every structure boundary of every fixture as a cut, fixtures interleaved
 * and the list rotated by `seed`, so that short runs with different seeds
 * start in different places.
 */
export function boundaryCuts(maps: FixtureMap[], seed = 0): Recipe[] {
  const out: Recipe[] = [];
  const longest = Math.max(...maps.map((m) => m.boundaries.length));
  for (let i = 0; i < longest; i++) {
    for (const m of maps) {
      const at = m.boundaries[i];
      if (at !== undefined && at < m.size) out.push({ fixture: m.name, origin: `boundary ${i}`, ops: [{ op: 'cut', at, why: `cut at boundary ${at}` }] });
    }
  }
  const k = out.length ? (seed >>> 0) % out.length : 0;
  return [...out.slice(k), ...out.slice(0, k)];
}
