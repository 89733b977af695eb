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
  // Device sections are FULL sections; their bytes (header to footer) are copied as they are.
  for (const d of m.devices) {
    parts.push(await snap.source.read(d.section.offset, d.section.end - d.section.offset, `section[${d.section.name}]`));
  }
  const vmdesc = m.vmdesc ? await snap.source.read(m.vmdesc.offset + 5, m.vmdesc.length, 'vmdescription') : undefined;
  return {
    sections: concat(parts),
    vmdesc,
    switchoverStart: m.commands.some((c) => c.command === MigCommand.SWITCHOVER_START),
  };
}

