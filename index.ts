/**
 * ramsnap's library API. See README.md for examples and SPEC.md for the
 * format.
 */
export { Snapshot, type OpenOptions, type PresentRun } from './reader/snapshot.js';
export type { SnapshotModel, RamBlock, SectionRecord, CommandRecord, DeviceState, Finding } from './reader/model.js';
export { FileSource, BufferSource, VirtualSource, type RandomAccessSource } from './reader/source.js';
export { extractBlock, extractBlocks, blockFileName, blockFileNames, type ExtractOptions, type ExtractOutput, type ExtractResult } from './reader/extract.js';
export { writeDelta, applyDeltas, checkChain, deltaOf, type DeltaResult, type ApplyResult } from './writer/delta.js';
export { memoryFingerprint } from './reader/fingerprint.js';
export { deltaInfoOf, DELTA_MEMBER, type DeltaInfo } from './format/delta.js';
export { diffSnapshots, type SnapshotDiff, type BlockDiff, type PageRange, type PageChange } from './reader/diff.js';
export { PhysicalMemory, memoryMap, parseMap, readMapFile, type MapOptions } from './reader/phys.js';
export { machineMap, checkMap, coreSegments, type PhysMap, type PhysRange, type RangeKind, type MachineFacts } from './format/phys-map.js';
export { x86Cpu, x86Notes, arm64Cpu, arm64Notes, type CpuSection } from './format/cpu-notes.js';
export { encodeElfHeader, encodeProgramHeader, encodeNotes, type ElfNote } from './format/elf.js';
export { exportSnapshot, coreNotes, type ExportOptions, type ExportResult, type ExportFormat } from './writer/export.js';
export { plotSnapshot, plotDiff, writePlot, renderPng, plotFormatOf, type PlotOptions, type DiffPlotOptions, type PlotFormat, type WritePlotOptions } from './writer/plot.js';
export { RamsnapError, RamsnapFormatError, RamsnapUsageError, RamsnapIoError, FormatCode } from './format/errors.js';
export * as constants from './format/constants.js';
export { bitmapBytes, bitRuns, countBits, testBit } from './format/bitmap.js';
export { mappedRamPlacement, decodeMappedRamHeader, encodeMappedRamHeader, type MappedRamHeader } from './format/mapped-ram.js';
export { decodeLibvirtHeader, encodeLibvirtHeader, type LibvirtHeader } from './format/libvirt.js';
export { decodeDeviceState, pythonJson, type StateMap, type StateValue } from './format/vmstate.js';
export type { VmDescription, VmDevice, VmField, VmStruct } from './format/vmdesc.js';
export { planLayout, encodeBlockEntry, type LayoutPlan, type BlockPlan, type PlanOptions } from './format/layout.js';
export { encodeTail, type DeviceState as StreamDeviceState } from './format/tail.js';
export { SnapshotWriter, TEMP_MARK, type WriterOptions } from './writer/snapshot-writer.js';
export { LegacyWriter, type LegacyWriterOptions } from './writer/legacy-writer.js';
export { deviceStateOf } from './writer/template.js';
export { DEFAULT_OUTPUT_MODE, type OutputOptions } from './writer/sink.js';
export { undoPending } from './writer/cleanup.js';
export { createSnapshot, type CreateOptions, type CreateResult } from './writer/create.js';
export { convertSnapshot, type ConvertOptions, type ConvertResult } from './writer/convert.js';
export { patchSnapshot, type PatchOptions, type PatchResult } from './writer/patch.js';
export { sparsifySnapshot, type SparsifyOptions, type SparsifyResult } from './writer/sparsify.js';
// Running VMs (vm/): the QMP client, the live save and its policies, and restore.
export { QmpClient, QmpError, type Json } from './vm/qmp.js';
export { liveSave, type LiveSaveOptions, type LiveSaveResult, type ThenAction } from './vm/live-save.js';
export { precopy, type PrecopyOptions, type PrecopyResult, type PrecopyStats, type PrecopyPolicy, type PrecopyDecision } from './vm/precopy.js';
export { classicPolicy, thresholdPolicy, downtimePolicy, builtinPolicy, loadPolicy } from './vm/policies.js';
export { SharedFileSource, type RamSource } from './vm/ram-source.js';
export { SimulatedGuest, VirtualClock, type SimGuestOptions } from './vm/sim-guest.js';
export { checkSaveOptions, defaultSaveOptions, type SaveOptions } from './vm/save-options.js';
export { prefetch, restoreSnapshot, RestoreTargetError, type RestoreOptions, type RestoreResult } from './vm/restore.js';
export { planRestore, shellWords, type RestorePlan } from './vm/restore-plan.js';
export { writeRestoreStream, type DataRanges, type RestoreStreamResult } from './vm/restore-stream.js';
