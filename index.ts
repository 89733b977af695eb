/**
 * ramsnap's library API. See README.md for examples and SPEC.md for the
 * format.
 */
export { Snapshot, type OpenOptions, type PresentRun } from './reader/snapshot.js';
export type { SnapshotModel, RamBlock, SectionRecord, CommandRecord, DeviceState, Finding } from './reader/model.js';
export { FileSource, BufferSource, VirtualSource, type RandomAccessSource } from './reader/source.js';
export { extractBlock, blockFileName, blockFileNames, type ExtractOptions, type ExtractResult } from './reader/extract.js';
export { RamsnapError, RamsnapFormatError, RamsnapUsageError, RamsnapIoError, FormatCode } from './format/errors.js';
export * as constants from './format/constants.js';
export { bitmapBytes, bitRuns, countBits, testBit } from './format/bitmap.js';
export { mappedRamPlacement, decodeMappedRamHeader, encodeMappedRamHeader, type MappedRamHeader } from './format/mapped-ram.js';
export { decodeLibvirtHeader, encodeLibvirtHeader, type LibvirtHeader } from './format/libvirt.js';
export { decodeDeviceState, pythonJson, type StateMap, type StateValue } from './format/vmstate.js';
export type { VmDescription, VmDevice, VmField, VmStruct } from './format/vmdesc.js';
