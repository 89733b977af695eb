/**
 * Disagreements with QEMU's loader that are on purpose or out of reach,
 * each documented in SPEC.md §12.1 with the reason. An input's
 * disagreement is explained when its row, ramsnap's code, QEMU's message
 * and, where given, what the recipe damaged all match an entry; anything
 * else fails the run.
 */
import type { Recipe } from '../fuzz/mutate.js';
import type { Row } from './classify.js';
import type { QemuVerdict } from './qemu-load.js';
import type { RamsnapVerdict } from './ramsnap-side.js';
import type { DiffSeed } from './seeds.js';

export interface Explained {
  /** The SPEC.md item that says why (§12.1 Dn). */
  spec: string;
  row: Extract<Row, 'stricter' | 'false-accept'>;
  /** ramsnap's verify code (OK for a false accept). */
  ramsnap: RegExp;
  /** QEMU's verdict: `loads`, or its error text. */
  qemu: RegExp;
  /** What else must hold: the damage the recipe did, ramsnap's warnings. */
  when?: (c: { recipe: Recipe; seed: DiffSeed; ramsnap: RamsnapVerdict }) => boolean;
  why: string;
}

/**
 * The recipe damages the description (edits it, or changes bytes after the
 * stream's EOF byte), or ramsnap's error names it. QEMU loaded the file, so
 * the stream itself is one QEMU accepts, and the description is what
 * ramsnap refuses.
 */
function descriptionDamaged(c: { recipe: Recipe; seed: DiffSeed; ramsnap: RamsnapVerdict }): boolean {
  if (c.ramsnap.errorField?.startsWith('vmdescription')) return true;
  const v = c.seed.map.vmdesc;
  if (!v) return false;
  return c.recipe.ops.some((o) => o.op === 'vmdesc' || ((o.op === 'cut' || o.op === 'flip' || o.op === 'bytes' || o.op === 'int') && o.at >= v.offset));
}

/** Some operation changes bytes of a mapped-ram header's page_size field (header offset 4, 8 bytes). */
function touchesHeaderPageSize(c: { recipe: Recipe; seed: DiffSeed }): boolean {
  const fields = c.seed.map.blocks.filter((b) => b.headerOffset !== undefined).map((b) => [(b.headerOffset as number) + 4, (b.headerOffset as number) + 12]);
  return c.recipe.ops.some((o) => {
    if (o.op !== 'int' && o.op !== 'flip' && o.op !== 'bytes') return false;
    const end = o.at + (o.op === 'int' ? o.width : o.op === 'flip' ? 1 : o.hex.length / 2);
    return fields.some(([from, to]) => o.at < to && end > from);
  });
}

/** The recipe removes the mapped-ram RAM section's END (and nothing else). */
function removesRamEnd(c: { recipe: Recipe; seed: DiffSeed }): boolean {
  const end = c.seed.map.sections.find((x) => x.name === 'ram' && x.kind === 'end');
  return c.seed.map.mappedRam && !!end && c.recipe.ops.length === 1 && c.recipe.ops.every((o) => o.op === 'splice' && o.at === end.offset && o.remove === end.end - end.offset);
}

/** Bytes appended to a file without a description, and nothing else. */
const appendedWithoutDescription = (c: { recipe: Recipe; seed: DiffSeed }): boolean => !c.seed.map.vmdesc && c.recipe.ops.every((o) => o.op === 'grow');

const noFooters = (c: { ramsnap: RamsnapVerdict }): boolean => c.ramsnap.warnings.includes('NO_SECTION_FOOTERS');

const unchecked = (c: { ramsnap: RamsnapVerdict }): boolean => c.ramsnap.warnings.includes('DEVICE_STATE_UNCHECKED');

/** QEMU's messages that say the file's VM is not the destination's, or its device state is not acceptable to a device model. */
const CONFIGURATION = /^Unknown ramblock|^Length mismatch|^Unknown savevm section or instance|^Machine type received|incoming version_id \d+ is too old|^savevm: unsupported version/;
/** A device model refusing a value (VMSTATE_*_EQUAL's "N != N", a validate or post_load hook): ramsnap checks the shape of device state, not its values. */
const DEVICE_VALUES = /^\d+ != \d+$|^Input validation failed|^Failed to load |post_load|^error while loading state/;
const DEVICE_MODEL = /^Failed to load |^Input validation failed|^error while loading state|Mismatched section id in footer|^Missing section footer|post_load|^Unknown savevm section type/;

export const EXPLAINED: Explained[] = [
  {
    spec: '§12.1 D1',
    row: 'stricter',
    // Whatever the code: with only the description damaged, the description is what ramsnap refuses.
    ramsnap: /^(?!OK$)/,
    qemu: /^loads$/,
    when: descriptionDamaged,
    why: 'the description is damaged; QEMU never parses it, ramsnap checks the device sections against it',
  },
  {
    spec: '§12.1 D2',
    row: 'stricter',
    ramsnap: /^(DUPLICATE_SECTION_ID|UNKNOWN_SECTION_ID)$/,
    qemu: /^loads$/,
    // A FULL section's id is never looked up, so a repeated one loads; a PART or END after its END loads only when resent.
    when: (c) => c.ramsnap.verify === 'DUPLICATE_SECTION_ID' || c.recipe.ops.some((o) => o.op === 'insertCopy'),
    why: 'a section sent twice: QEMU loads a device twice (the last wins) and a RAM part after its END again; its writer never sends either',
  },
  {
    spec: '§12.1 D3',
    row: 'stricter',
    ramsnap: /^BITMAP_TAIL_BITS_SET$/,
    qemu: /^loads$/,
    why: 'bitmap bits past the last page: QEMU never sets them; its loader ignores them',
  },
  {
    spec: '§12.1 D4',
    row: 'false-accept',
    ramsnap: /^OK$/,
    qemu: CONFIGURATION,
    why: 'the file describes a different VM (block names and sizes, devices, versions): ramsnap reads any VM, QEMU only its own',
  },
  {
    spec: '§12.1 D5',
    row: 'false-accept',
    ramsnap: /^OK$/,
    qemu: DEVICE_MODEL,
    when: unchecked,
    why: 'no description: device sections are found by their footers and their contents left unchecked (DEVICE_STATE_UNCHECKED)',
  },
  {
    spec: '§12.1 D6',
    row: 'stricter',
    ramsnap: /^UNDESCRIBED_SECTION$/,
    qemu: /^loads$/,
    when: appendedWithoutDescription,
    why: 'no description and bytes after EOF: the last device footer cannot be told from device bytes',
  },
  {
    spec: '§12.1 D7',
    row: 'stricter',
    ramsnap: /^BAD_MAPPED_RAM_VERSION$/,
    qemu: /^loads$/,
    why: 'mapped-ram header version 0: QEMU refuses only versions above 1 and never writes 0',
  },
  {
    spec: '§12.1 D8',
    row: 'stricter',
    ramsnap: /^(BAD_PAGE_SIZE|VALUE_TOO_LARGE|PAGE_SIZE_MISMATCH|BAD_BLOCK_LENGTH|PAGES_MISALIGNED|BITMAP_OUT_OF_FILE|PAGES_OUT_OF_FILE|PAGES_OVERLAP|BITMAP_TAIL_BITS_SET|LIMIT_EXCEEDED)$/,
    qemu: /^loads$/,
    when: touchesHeaderPageSize,
    why: "a mapped-ram header's page_size changed: QEMU's loader uses its own target page size and never reads it; ramsnap has no other source on x86",
  },
  {
    spec: '§12.1 D9',
    row: 'stricter',
    ramsnap: /^INCOMPLETE$/,
    qemu: /^loads$/,
    when: removesRamEnd,
    why: 'a mapped-ram RAM section without END reads as the background snapshot whose bitmaps QEMU never wrote',
  },
  {
    spec: '§12.1 D10',
    row: 'false-accept',
    ramsnap: /^OK$/,
    qemu: /^Missing section footer|^Mismatched section id in footer/,
    when: noFooters,
    why: 'the first section to end has no footer, so ramsnap reads the stream as one saved with send-section-footer=off (NO_SECTION_FOOTERS); QEMU loads it only with that property off',
  },
  {
    spec: '§12.1 D12',
    row: 'stricter',
    ramsnap: /^UNDESCRIBED_SECTION$/,
    qemu: /^loads$/,
    when: (c) => c.recipe.ops.some((o) => o.op === 'int' && o.width === 1 && /^section\[.*\]\.type = /.test(o.why)),
    why: 'a device section sent as START or PART: QEMU loads a START like a FULL; only iterable handlers send START, and ramsnap reads those whose format it knows',
  },
  {
    spec: '§12.1 D11',
    row: 'false-accept',
    ramsnap: /^OK$/,
    qemu: DEVICE_VALUES,
    why: 'a device model refuses a value (an _EQUAL field, a validate or post_load hook): the description gives the shape of device state, not the values a device accepts',
  },
];

export function explanationOf(row: Row, r: RamsnapVerdict, q: QemuVerdict, recipe: Recipe, seed: DiffSeed): Explained | undefined {
  if (row !== 'stricter' && row !== 'false-accept') return undefined;
  const qemuText = q.kind === 'loaded' ? 'loads' : q.error;
  return EXPLAINED.find((e) => e.row === row && e.ramsnap.test(r.verify) && e.qemu.test(qemuText) && (!e.when || e.when({ recipe, seed, ramsnap: r })));
}
