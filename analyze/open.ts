/** Opening a snapshot for a command, and the JSON shape of a model. */
import fs from 'node:fs';
import { StateCode, type RamsnapError, type RamsnapFormatError } from '../format/errors.js';
import type { SnapshotModel } from '../reader/model.js';
import type { Snapshot, OpenOptions } from '../reader/snapshot.js';
import { openUnpatched, type ReadGuard } from '../writer/journal.js';

/** Walks that found the file changed under them are tried this many times before FILE_CHANGED. */
const OPEN_ATTEMPTS = 3;

/**
 * Opens a file for a command that only walks it (info, verify): a lenient
 * open, with the file's patch state checked around the walk (ReadGuard):
 * a file with a patch journal or the patch marker is PATCH_IN_PROGRESS;
 * a walk that found the file complete while it changed is done again, and
 * FILE_CHANGED after OPEN_ATTEMPTS.
 */
export async function openLenient(file: string, opts: OpenOptions): Promise<Snapshot> {
  for (let attempt = 1; ; attempt++) {
    const { snap, guard } = await openGuarded(file, { ...opts, lenient: true });
    try {
      if (snap.model.complete) guard.check(snap.model.streamOffset);
      return snap;
    } catch (err) {
      await snap.close();
      if ((err as RamsnapError).code === StateCode.FILE_CHANGED && attempt < OPEN_ATTEMPTS) continue;
      throw err;
    }
  }
}

/**
 * Opens a file for a command that reads guest memory after opening: call
 * `guard.check(snap.model.streamOffset)` after the last read, before
 * trusting what was read. Refuses a file being patched (PATCH_IN_PROGRESS).
 */
export const openGuarded: (file: string, opts: OpenOptions) => Promise<{ snap: Snapshot; guard: ReadGuard }> = openUnpatched;

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
