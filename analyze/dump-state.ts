/**
 * Builds the `dump --state` document: sections in stream order, keyed
 * "name (section_id)" as analyze-migration.py keys them; the RAM section
 * lists its blocks' sizes, devices their decoded fields, and the iterable
 * sections with formats of their own (spapr/htab, s390 storage
 * attributes) an empty string, as the script shows them.
 */
import type { SnapshotModel } from '../reader/model.js';
import type { StateMap, StateValue } from '../format/vmstate.js';
import { iterableFormat } from '../reader/walk/iterables.js';

export function stateDocument(model: SnapshotModel): StateMap {
  const doc: StateMap = new Map();
  const seen = new Set<number>();
  const devices = new Map(model.devices.map((d) => [d.section.sectionId, d]));
  for (const s of model.sections) {
    if (seen.has(s.sectionId)) continue;
    seen.add(s.sectionId);
    const key = `${s.name} (${s.sectionId})`;
    if (s.sectionId === model.ramSectionId) {
      const sizes: StateMap = new Map(model.blocks.map((b) => [b.name, `0x${b.usedLength.toString(16).padStart(16, '0')}`] as [string, StateValue]));
      doc.set(key, new Map([['section sizes', sizes]]));
    } else {
      const d = devices.get(s.sectionId);
      doc.set(key, (d?.value as StateValue | undefined) ?? (iterableFormat(s.name) ? '' : new Map()));
    }
  }
  return doc;
}
