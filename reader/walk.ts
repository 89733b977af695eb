/**
 * Walks a migration stream from its first byte to EOF and the device
 * description, building a SnapshotModel. Structural damage stops the walk:
 * the error is kept in `model.error` with what was read before it, so
 * `info` and `extract --salvage` can still use the good part.
 *
 * The walk is divided by what it reads (reader/walk/):
 *   state.ts          what the walk carries between sections
 *   framing.ts        file header, configuration, sections, commands, footers, ids
 *   page-size.ts      the target page size
 *   ram-blocks.ts     the RAM section's block list
 *   mapped-ram.ts     a mapped-ram block's header, bitmap and page region
 *   legacy-records.ts legacy page records
 *   devices.ts        device sections, decoded with the description
 *   tail.ts           the description, EOF, trailing bytes, the overlap rule
 */
import { FormatCode, RamsnapFormatError } from '../format/errors.js';
import type { SnapshotModel } from './model.js';
import type { RandomAccessSource } from './source.js';
import { walkSections } from './walk/framing.js';
import { WalkState, type WalkOptions } from './walk/state.js';

export type { WalkOptions } from './walk/state.js';
export { MAX_SECTIONS } from './walk/state.js';
export { MAX_BLOCKS } from './walk/ram-blocks.js';
export { MAX_BITMAP_MEMORY } from './walk/mapped-ram.js';
export { LEGACY_RECORD_OVERHEAD, MAX_LEGACY_RUNS } from './walk/legacy-records.js';
export { MAX_DEVICE_SECTION } from './walk/devices.js';
export { VMDESC_SEARCH } from './walk/tail.js';

export async function walkStream(source: RandomAccessSource, opts: WalkOptions): Promise<SnapshotModel> {
  const model: SnapshotModel = {
    fileSize: source.size,
    streamOffset: opts.streamOffset,
    mappedRam: false,
    pageSize: opts.pageSize ?? 0,
    blocks: [],
    sections: [],
    commands: [],
    devices: [],
    complete: false,
    warnings: [],
    checked: [],
  };
  const w = new WalkState(source, model, opts);
  try {
    await walkSections(w);
  } catch (err) {
    if (!(err instanceof RamsnapFormatError)) throw err;
    model.error = err.code === FormatCode.TRUNCATED && w.sequential ? asIncomplete(err) : err;
  }
  model.complete = model.error === undefined;
  return model;
}

/** The stream itself ran out: the snapshot was never finished (or was cut). */
function asIncomplete(err: RamsnapFormatError): RamsnapFormatError {
  return new RamsnapFormatError(FormatCode.INCOMPLETE, `snapshot is incomplete: the file ends inside ${err.field}`, {
    field: err.field,
    offset: err.offset,
  });
}
