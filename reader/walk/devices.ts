/**
 * Device sections (FULL): a device's fields with no length, so each is
 * decoded with the device description to find where it ends
 * (format/vmstate.ts), and its values kept when dump --state asks.
 */
import type { ByteCursor } from '../../format/cursor.js';
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import { findDevice } from '../../format/vmdesc.js';
import { decodeDeviceState, skipDeviceState } from '../../format/vmstate.js';
import type { SectionRecord } from '../model.js';
import type { WalkState } from './state.js';

/** Device sections are loaded whole to be decoded; none real comes near this. */
export const MAX_DEVICE_SECTION = 64 << 20;
/** First window a device section is decoded from (grown 4x at a time up to MAX_DEVICE_SECTION): real ones are KiB. */
const DEVICE_WINDOW = 64 * 1024;

/** A device section: decoded with the device description, which gives its length. */
export async function deviceSection(w: WalkState, rec: SectionRecord): Promise<void> {
  const m = w.model;
  const dev = m.vmdesc ? findDevice(m.vmdesc.desc, rec.name, rec.instanceId) : undefined;
  if (!dev || rec.kind !== 'full') {
    throw new RamsnapFormatError(
      FormatCode.UNDESCRIBED_SECTION,
      m.vmdesc
        ? `section ${rec.name} (instance ${rec.instanceId}) is not in the device description, so its length is unknown`
        : `section ${rec.name} cannot be parsed: the file has no device description (is the end of the file missing?)`,
      { field: `section[${rec.name}]`, offset: rec.offset },
    );
  }
  const r = w.r;
  const available = (m.vmdesc?.offset ?? w.source.size) - r.pos;
  const limit = Math.max(0, Math.min(MAX_DEVICE_SECTION, available));
  // A section carries no length: decode it from a small window, and from a larger one only if it runs
  // out. A window of everything up to the description (up to 64 MiB) was read again for every
  // section, so a file with its description far behind thousands of small sections took hours.
  let want = Math.min(limit, DEVICE_WINDOW);
  let c: ByteCursor;
  let value;
  for (;;) {
    c = await r.cursor(want);
    const valuesBefore = w.deviceValues.values;
    try {
      if (w.opts.decodeDevices) value = decodeDeviceState(c, dev, rec.versionId, w.deviceValues);
      else skipDeviceState(c, dev, w.deviceValues);
      break;
    } catch (err) {
      if (!(err instanceof RamsnapFormatError) || err.code !== FormatCode.TRUNCATED) throw err;
      if (want < limit) {
        w.deviceValues.values = valuesBefore;
        want = Math.min(limit, want * 4);
        continue;
      }
      // The description is after EOF: running into it means the fields do not match the section.
      throw available > MAX_DEVICE_SECTION
        ? new RamsnapFormatError(FormatCode.LIMIT_EXCEEDED, `device section ${rec.name} is larger than ${MAX_DEVICE_SECTION} bytes`, { field: err.field, offset: err.offset })
        : new RamsnapFormatError(FormatCode.DEVICE_STATE_MISMATCH, `device section ${rec.name} does not match its description (it runs into the description)`, {
            field: err.field,
            offset: err.offset,
          });
    }
  }
  r.commit(c);
  m.devices.push({ section: rec, value });
}
