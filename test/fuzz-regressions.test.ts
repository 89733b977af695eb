/**
 * Bugs the fast fuzzer (npm run fuzz) found in the product, each pinned by
 * a test named after it (docs/hardening.md lists them).
 */
import { describe, expect, it } from 'vitest';
import { FormatCode } from '../format/errors.js';
import { Snapshot } from '../reader/snapshot.js';
import { VirtualSource } from '../reader/source.js';
import { DEVICE_DESC, synthesize } from './helpers/synth.js';

/** The synthetic snapshot with `gap` zero bytes between EOF and the description, and `regs` declared `arrayLen` long. */
function withLongArray(arrayLen: number, gap: number): VirtualSource {
  const f = synthesize({ blocks: [{ name: 'pc.ram', usedLength: 1 << 20 }] });
  const bytes = f.bytes();
  const eof = f.layout.eofOffset;
  const desc = { ...DEVICE_DESC, fields: DEVICE_DESC.fields.map((x) => (x.name === 'regs' ? { ...x, array_len: arrayLen } : x)) };
  const json = new TextEncoder().encode(JSON.stringify({ page_size: 4096, devices: [desc] }));
  const head = new Uint8Array(6);
  head[0] = bytes[eof]; // EOF
  head[1] = bytes[f.layout.vmdescOffset as number]; // VMDESCRIPTION
  new DataView(head.buffer).setUint32(2, json.length, false);
  // The stream up to EOF, then `gap` zeros (a hole), then EOF and the description.
  const tail = new Uint8Array([...head, ...json]);
  return new VirtualSource(eof + gap + tail.length, [
    { offset: 0, data: bytes.subarray(0, eof) },
    { offset: eof + gap, data: tail },
  ]);
}

describe('fast fuzzer findings', () => {
  it('fuzz hang (seed 20261206): a device array of 1 000 000 000 uint16 before a 65 MiB hole is refused at once, not decoded value by value up to the 4 000 000-value bound', async () => {
    const src = withLongArray(1_000_000_000, 65 << 20);
    for (const decodeDevices of [false, true]) {
      const t0 = performance.now();
      // Before: 4 000 000 values decoded out of the hole (3.5 s and 200 MiB per open), then "too many values".
      // Now: the array cannot fit in the 64 MiB a section may take.
      await expect(Snapshot.open(src, { decodeDevices })).rejects.toMatchObject({ code: FormatCode.LIMIT_EXCEEDED, message: expect.stringContaining('larger than') });
      expect(performance.now() - t0).toBeLessThan(1500);
    }
    // With the description closer, the same array runs into it.
    await expect(Snapshot.open(withLongArray(1_000_000_000, 1 << 20), { decodeDevices: true })).rejects.toMatchObject({ code: FormatCode.DEVICE_STATE_MISMATCH });
  });

  it('an array that fits is decoded as before', async () => {
    const snap = await Snapshot.open(withLongArray(2, 0), { decodeDevices: true });
    const timer = snap.model.devices.find((d) => d.section.name === 'timer');
    expect((timer?.value as Map<string, unknown>).get('regs')).toEqual(['0x1234', '0x5678']);
    await snap.close();
  });
});
