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

/** Every operation edits or cuts the device description only (after the stream's EOF byte). */
function onlyDescription(c: { recipe: Recipe; seed: DiffSeed }): boolean {
  const v = c.seed.map.vmdesc;
  if (!v) return false;
  return c.recipe.ops.every((o) => o.op === 'vmdesc' || ((o.op === 'cut' || o.op === 'flip' || o.op === 'bytes' || o.op === 'int') && o.at >= v.offset));
}

const unchecked = (c: { ramsnap: RamsnapVerdict }): boolean => c.ramsnap.warnings.includes('DEVICE_STATE_UNCHECKED');

/** QEMU's messages that say the file's VM is not the destination's, or its device state is not acceptable to a device model. */
const CONFIGURATION = /^Unknown ramblock|^Length mismatch|^Unknown savevm section or instance|^Machine type received|incoming version_id \d+ is too old|^savevm: unsupported version/;
const DEVICE_MODEL = /^Failed to load |^error while loading state|Mismatched section id in footer|^Missing section footer|post_load|^Unknown savevm section type/;

export const EXPLAINED: Explained[] = [
  {
    spec: '§12.1 D1',
    row: 'stricter',
    ramsnap: /^(BAD_DEVICE_DESCRIPTION|BAD_PAGE_SIZE|PAGE_SIZE_MISMATCH|DEVICE_STATE_MISMATCH|UNDESCRIBED_SECTION|BAD_SECTION_FOOTER|INCOMPLETE|LIMIT_EXCEEDED)$/,
    qemu: /^loads$/,
    when: onlyDescription,
    why: 'the description is damaged; QEMU never parses it, ramsnap checks the device sections against it',
  },
  {
    spec: '§12.1 D2',
    row: 'stricter',
    ramsnap: /^DUPLICATE_SECTION_ID$/,
    qemu: /^loads$/,
    why: 'a device section sent twice: QEMU loads it twice, the last wins; QEMU never writes it',
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
];

export function explanationOf(row: Row, r: RamsnapVerdict, q: QemuVerdict, recipe: Recipe, seed: DiffSeed): Explained | undefined {
  if (row !== 'stricter' && row !== 'false-accept') return undefined;
  const qemuText = q.kind === 'loaded' ? 'loads' : q.error;
  return EXPLAINED.find((e) => e.row === row && e.ramsnap.test(r.verify) && e.qemu.test(qemuText) && (!e.when || e.when({ recipe, seed, ramsnap: r })));
}
