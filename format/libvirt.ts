/**
 * libvirt's QEMU save image (src/qemu/qemu_saveimage.h, virQEMUSaveHeader):
 * a 92-byte header in the saving host's byte order, the domain XML, then the
 * QEMU migration stream at 92 + data_len.
 *
 *   +0   16 bytes magic     "LibvirtQemudSave", or "LibvirtQemudPart" while
 *                           the save runs (libvirt rewrites it when done)
 *   +16  u32 version        2 (1 on old images)
 *   +20  u32 data_len       XML + cookie + padding that follow the header
 *   +24  u32 was_running
 *   +28  u32 format         0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd, 6 sparse
 *   +32  u32 cookieOffset   cookie start relative to the XML; 0 = none
 *   +36  14 x u32 unused
 *
 * libvirt reads the integers little-endian first and swaps them when the
 * version is out of range, which is how a big-endian host's image is told.
 */
import { latin1 } from './cursor.js';
import { FormatCode, RamsnapFormatError } from './errors.js';

export const LIBVIRT_MAGIC = 'LibvirtQemudSave';
export const LIBVIRT_MAGIC_PARTIAL = 'LibvirtQemudPart';
export const LIBVIRT_HEADER_SIZE = 92;
export const LIBVIRT_FORMATS = ['raw', 'gzip', 'bzip2', 'xz', 'lzop', 'zstd', 'sparse'] as const;
/** ramsnap reads these; the others are the whole stream through a compressor. */
const READABLE_FORMATS = new Set([0, 6]);
const MAX_SUPPORTED_VERSION = 2;

export interface LibvirtHeader {
  partial: boolean;
  version: number;
  littleEndian: boolean;
  dataLength: number;
  wasRunning: number;
  format: number;
  formatName: string;
  cookieOffset: number;
  /** The QEMU stream starts here: 92 + data_len. */
  streamOffset: number;
}

export function hasLibvirtMagic(head: Uint8Array): boolean {
  if (head.length < 16) return false;
  const m = latin1(head.subarray(0, 16));
  return m === LIBVIRT_MAGIC || m === LIBVIRT_MAGIC_PARTIAL;
}

/** Decodes the header; `fileSize` bounds data_len. Throws on what libvirt itself refuses. */
export function decodeLibvirtHeader(head: Uint8Array, fileSize: number): LibvirtHeader {
  if (head.length < LIBVIRT_HEADER_SIZE) {
    throw new RamsnapFormatError(FormatCode.TRUNCATED, 'file ends inside the libvirt header', {
      field: 'libvirt.header',
      offset: head.length,
      expected: `${LIBVIRT_HEADER_SIZE} bytes`,
      actual: head.length,
    });
  }
  const magic = latin1(head.subarray(0, 16));
  const v = new DataView(head.buffer, head.byteOffset, LIBVIRT_HEADER_SIZE);
  let le = true;
  let version = v.getUint32(16, true);
  if (version > MAX_SUPPORTED_VERSION) {
    le = false;
    version = v.getUint32(16, false);
  }
  if (version === 0 || version > MAX_SUPPORTED_VERSION) {
    throw new RamsnapFormatError(FormatCode.BAD_LIBVIRT_HEADER, 'unsupported libvirt save image version', {
      field: 'libvirt.version',
      offset: 16,
      expected: `1..${MAX_SUPPORTED_VERSION}`,
      actual: v.getUint32(16, true),
    });
  }
  const dataLength = v.getUint32(20, le);
  const format = version === 1 ? 0 : v.getUint32(28, le);
  const h: LibvirtHeader = {
    partial: magic === LIBVIRT_MAGIC_PARTIAL,
    version,
    littleEndian: le,
    dataLength,
    wasRunning: v.getUint32(24, le),
    format,
    formatName: LIBVIRT_FORMATS[format] ?? `unknown-${format}`,
    cookieOffset: v.getUint32(32, le),
    streamOffset: LIBVIRT_HEADER_SIZE + dataLength,
  };
  if (dataLength === 0 || h.streamOffset > fileSize) {
    throw new RamsnapFormatError(FormatCode.BAD_LIBVIRT_HEADER, 'libvirt data length does not fit the file', {
      field: 'libvirt.data_len',
      offset: 20,
      expected: `1..${fileSize - LIBVIRT_HEADER_SIZE}`,
      actual: dataLength,
    });
  }
  if (!READABLE_FORMATS.has(format)) {
    throw new RamsnapFormatError(
      FormatCode.UNSUPPORTED,
      `libvirt image is ${h.formatName}-compressed; decompress the stream first (e.g. tail -c +${h.streamOffset + 1} FILE | ${h.formatName} -d)`,
      { field: 'libvirt.format', offset: 28, actual: format },
    );
  }
  return h;
}

export function encodeLibvirtHeader(h: { dataLength: number; wasRunning?: number; format: number; cookieOffset?: number; partial?: boolean }): Uint8Array {
  const b = new Uint8Array(LIBVIRT_HEADER_SIZE);
  const magic = h.partial ? LIBVIRT_MAGIC_PARTIAL : LIBVIRT_MAGIC;
  for (let i = 0; i < 16; i++) b[i] = magic.charCodeAt(i);
  const v = new DataView(b.buffer);
  v.setUint32(16, 2, true);
  v.setUint32(20, h.dataLength, true);
  v.setUint32(24, h.wasRunning ?? 0, true);
  v.setUint32(28, h.format, true);
  v.setUint32(32, h.cookieOffset ?? 0, true);
  return b;
}
