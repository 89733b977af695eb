/**
 * Device state taken from a QEMU snapshot (the template), copied verbatim
 * into a new one so QEMU restores a working VM and not only its RAM.
 */
import { concat } from '../format/configuration.js';
import { MigCommand } from '../format/constants.js';
import type { DeviceState } from '../format/tail.js';
import type { Snapshot } from '../reader/snapshot.js';

export async function deviceStateOf(snap: Snapshot): Promise<DeviceState> {
  const m = snap.model;
  const parts: Uint8Array[] = [];
  // Every section but RAM's, header to footer, as it is: the iterable ones (spapr/htab's START, PARTs
  // and END, in their order; QEMU's loader takes them after the RAM END too), then the FULL device sections.
  const others = m.sections.filter((s) => s.sectionId !== m.ramSectionId);
  for (const s of [...others.filter((s) => s.kind !== 'full'), ...others.filter((s) => s.kind === 'full')]) {
    parts.push(await snap.source.read(s.offset, s.end - s.offset, `section[${s.name}]`));
  }
  const vmdesc = m.vmdesc ? await snap.source.read(m.vmdesc.offset + 5, m.vmdesc.length, 'vmdescription') : undefined;
  return {
    sections: concat(parts),
    vmdesc,
    // A stream without footers stays so: the copied sections have none.
    sectionFooters: m.sectionFooters !== false,
    switchoverStart: m.commands.some((c) => c.command === MigCommand.SWITCHOVER_START),
  };
}

