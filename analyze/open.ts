/** Opening a snapshot for a command, and the JSON shape of a model. */
import fs from 'node:fs';
import { QEMU_VM_FILE_MAGIC, QEMU_VM_FILE_VERSION } from '../format/constants.js';
import { FormatCode, RamsnapFormatError, StateCode, type RamsnapError } from '../format/errors.js';
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
export async function openGuarded(file: string, opts: OpenOptions): Promise<{ snap: Snapshot; guard: ReadGuard }> {
  let opened: { snap: Snapshot; guard: ReadGuard };
  try {
    opened = await openUnpatched(file, opts);
  } catch (err) {
    throw withOffsetHint(file, err);
  }
  const m = opened.snap.model;
  if (m.error) m.error = withOffsetHint(file, m.error);
  return opened;
}

/** How far into a file a stream that does not start at its beginning is looked for (QEMU's `file:PATH,offset=N` saves; libvirt's header is found without this). */
const OFFSET_HINT_SCAN = 1 << 20;

/**
 * BAD_MAGIC on a file that holds a stream further in (saved with
 * `migrate file:PATH,offset=N`): the same error, saying where "QEVM" and
 * a valid version were found in the first MiB and which flag reads it.
 * Any other error is returned as it is.
 */
export function withOffsetHint<E>(file: string, err: E, flag = '--offset'): E | RamsnapFormatError {
  if (!(err instanceof RamsnapFormatError) || err.code !== FormatCode.BAD_MAGIC) return err;
  const at = findStreamStart(file, err.offset);
  if (at === undefined) return err;
  return new RamsnapFormatError(
    FormatCode.BAD_MAGIC,
    `not a QEMU migration stream at byte ${err.offset}, but one starts at byte ${at} (as saved with migrate file:PATH,offset=${at}): try ${flag} ${at}`,
    { field: err.field, offset: err.offset, expected: err.expected, actual: err.actual },
  );
}

/** The first offset in the first MiB of `file`, other than `except`, holding "QEVM" and the stream version. */
function findStreamStart(file: string, except: number): number | undefined {
  let head: Buffer;
  try {
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      head = Buffer.alloc(OFFSET_HINT_SCAN + 8);
      head = head.subarray(0, fs.readSync(fd, head, 0, head.length, 0));
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
  const magic = Buffer.alloc(4);
  magic.writeUInt32BE(QEMU_VM_FILE_MAGIC);
  for (let i = head.indexOf(magic); i >= 0 && i + 8 <= head.length; i = head.indexOf(magic, i + 1)) {
    if (i !== except && head.readUInt32BE(i + 4) === QEMU_VM_FILE_VERSION) return i;
  }
  return undefined;
}

/** An error as JSON: code and message, and the field, offset, expected and actual values, or path, that it has. */
export function errorJson(e: RamsnapError | undefined): Record<string, unknown> | undefined {
  if (!e) return undefined;
  const f = e as Partial<RamsnapFormatError> & { path?: string };
  return {
    code: e.code,
    message: e.message,
    ...(f.field !== undefined ? { field: f.field } : {}),
    ...(f.offset !== undefined ? { offset: f.offset } : {}),
    ...(f.expected !== undefined ? { expected: String(f.expected) } : {}),
    ...(f.actual !== undefined ? { actual: String(f.actual) } : {}),
    ...(f.path !== undefined ? { path: f.path } : {}),
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
