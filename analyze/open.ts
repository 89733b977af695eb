/** Opening a snapshot for a command, and the JSON shape of a model. */
import fs from 'node:fs';
import type { RamsnapFormatError } from '../format/errors.js';
import type { SnapshotModel } from '../reader/model.js';
import { Snapshot, type OpenOptions } from '../reader/snapshot.js';

export async function openLenient(file: string, opts: OpenOptions): Promise<Snapshot> {
  return Snapshot.open(file, { ...opts, lenient: true });
}

export function errorJson(e: RamsnapFormatError | undefined): Record<string, unknown> | undefined {
  if (!e) return undefined;
  return {
    code: e.code,
    message: e.message,
    field: e.field,
    offset: e.offset,
    ...(e.expected !== undefined ? { expected: String(e.expected) } : {}),
    ...(e.actual !== undefined ? { actual: String(e.actual) } : {}),
  };
}

export function allocatedBytes(file: string): number | undefined {
  try {
    return fs.statSync(file).blocks * 512;
  } catch {
    return undefined;
  }
}

export function modelJson(file: string, m: SnapshotModel): Record<string, unknown> {
  return {
    file,
    fileSize: m.fileSize,
    allocatedBytes: allocatedBytes(file),
    streamOffset: m.streamOffset,
    libvirt: m.libvirt,
    machine: m.configuration?.machine,
    capabilities: m.configuration?.capabilities ?? [],
    kind: m.mappedRam ? 'mapped-ram' : 'legacy',
    pageSize: m.pageSize,
    ramTotal: m.ramTotal,
    blocks: m.blocks.map((b) => ({
      name: b.name,
      usedLength: b.usedLength,
      pages: b.pages,
      pagesPresent: b.pagesPresent,
      bytesPresent: b.pagesPresent * b.pageSize,
      ...(b.addr !== undefined ? { addr: b.addr } : {}),
      ...(b.mappedRam
        ? { headerOffset: b.mappedRam.headerOffset, bitmapOffset: b.mappedRam.bitmapOffset, bitmapSize: b.mappedRam.bitmapSize, pagesOffset: b.mappedRam.pagesOffset }
        : {}),
    })),
    deviceSections: m.devices.length,
    sections: m.sections.length,
    commands: m.commands.map((c) => c.name),
    vmdescription: m.vmdesc ? { offset: m.vmdesc.offset, length: m.vmdesc.length } : undefined,
    eofOffset: m.eofOffset,
    complete: m.complete,
    error: errorJson(m.error),
    warnings: m.warnings,
  };
}
