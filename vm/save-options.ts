/**
 * The options of `ramsnap save`, modelled as QEMU 10 models its migration
 * capabilities and parameters: the same names, units, defaults and ranges,
 * and, where QEMU has a rule, QEMU's own message, word for word.
 *
 * One schema serves the JSON config file and the command-line flags
 * (analyze/save-flags.ts turns flags into the same raw object), and
 * checkSaveOptions() validates the merged result once, reporting every
 * violation rather than the first.
 *
 * Why the QEMU names matter: ramsnap writes guest RAM itself, but the small
 * remainder (device state, the non-shared RAM) is saved by QEMU, and the
 * settings for that are sent as they are to `migrate-set-capabilities` and
 * `migrate-set-parameters` (qemuTailSettings).
 *
 * Every message below was checked against a running QEMU 10.0.2 over QMP
 * (test/vm/save-options.test.ts repeats that when QEMU is installed);
 * docs/live-save.md §1 has the table with each rule's source in QEMU.
 *
 * Pure, except that a policy given as a module path is checked to name a
 * file (through an injectable `isFile`).
 */
import fs from 'node:fs';
import path from 'node:path';
import { OptionCode } from '../format/errors.js';

// --- QEMU 10.0.2's defaults and limits (migration/options.c) -------------

/** DEFAULT_MIGRATE_MULTIFD_CHANNELS. */
export const QEMU_DEFAULT_MULTIFD_CHANNELS = 2;
/** multifd-channels is a uint8 in qapi/migration.json; options.c refuses 0. */
export const QEMU_MAX_MULTIFD_CHANNELS = 255;
/** DEFAULT_MIGRATE_SET_DOWNTIME, in ms. */
export const QEMU_DEFAULT_DOWNTIME_LIMIT = 300;
/** MAX_MIGRATE_DOWNTIME = MAX_MIGRATE_DOWNTIME_SECONDS (2000) * 1000, in ms. */
export const QEMU_MAX_DOWNTIME_LIMIT = 2000 * 1000;
/** MAX_THROTTLE = 128 << 20 bytes/s: the default max-bandwidth (it throttles file saves too). */
export const QEMU_DEFAULT_MAX_BANDWIDTH = 128 << 20;
/** DEFAULT_MIGRATE_X_CHECKPOINT_DELAY = 200 * 100 ms (the COLO checkpoint period). */
export const QEMU_DEFAULT_X_CHECKPOINT_DELAY = 200 * 100;
/** x-checkpoint-delay is a uint32 in qapi/migration.json. */
export const QEMU_MAX_X_CHECKPOINT_DELAY = 0xffff_ffff;

// --- ramsnap's own precopy limits ----------------------------------------

/** The precopy policies ramsnap ships; anything else must be a module path. */
export const BUILTIN_POLICIES = ['classic', 'threshold', 'downtime'] as const;
/** Default precopy threshold: stop iterating when less than this is dirty. */
export const DEFAULT_PRECOPY_THRESHOLD = 100 * 1024 * 1024;
/** Default cap on precopy passes: a guest that dirties faster than we write never converges. */
export const DEFAULT_MAX_ITERATIONS = 30;
/** ramsnap's bound on the cap: more passes than this is a misconfiguration, not a plan. */
export const MAX_MAX_ITERATIONS = 1000;
/** The largest delay Node's timers take (2^31 - 1 ms, about 24.8 days); 0 means no budget. */
export const MAX_TIME_BUDGET = 2 ** 31 - 1;

export type OnBudget = 'abort' | 'force';

export interface SaveOptions {
  capabilities: {
    /** The output file's layout; ramsnap writes it (QEMU default off, ramsnap default on). Must be on: save writes mapped-ram only. */
    'mapped-ram': boolean;
    /** Parallel writers (multifd-channels of them); needs mapped-ram for a file. */
    multifd: boolean;
    /** Sent to QEMU for the tail save: shared RAM blocks are left out of it (ramsnap writes them). Must be on. */
    'x-ignore-shared': boolean;
    /** Conflicts with mapped-ram (QEMU), and ramsnap's save has no XBZRLE: always off. */
    xbzrle: false;
    /** Conflicts with mapped-ram (QEMU), and ramsnap's save is precopy only: always off. */
    'postcopy-ram': false;
    /** Removed from QEMU in 9.1: always off, and never sent to QEMU 10 (it refuses the name). */
    compress: false;
  };
  parameters: {
    /** Number of parallel positional writers when multifd is on (1..255). */
    'multifd-channels': number;
    /** QEMU's O_DIRECT writes (only with mapped-ram and multifd). Must be off: ramsnap save cannot write with O_DIRECT. */
    'direct-io': boolean;
    /** Tolerated downtime in ms (0..2 000 000): the default of the downtime policy. */
    'downtime-limit': number;
    /** Bytes per second; 0 means no limit (as in QEMU). */
    'max-bandwidth': number;
    /** COLO checkpoint period in ms; passed to QEMU as is. */
    'x-checkpoint-delay': number;
  };
  precopy: {
    /** 'classic' | 'threshold' | 'downtime', or the absolute path of a module exporting a default function. */
    policy: string;
    /** Bytes still dirty below which precopy stops iterating. */
    threshold: number;
    /** Cap on precopy passes (1..1000). */
    'max-iterations': number;
    /** Total precopy time in ms; 0 = no budget. */
    'time-budget': number;
    /** What happens when the budget runs out: give up, or stop the guest and finish. */
    'on-budget': OnBudget;
  };
}

export interface Violation {
  code: OptionCode;
  /** Dotted path in the schema, e.g. `parameters.multifd-channels`. */
  field: string;
  message: string;
}

export function defaultSaveOptions(): SaveOptions {
  return {
    capabilities: {
      'mapped-ram': true,
      multifd: false,
      'x-ignore-shared': true,
      xbzrle: false,
      'postcopy-ram': false,
      compress: false,
    },
    parameters: {
      'multifd-channels': QEMU_DEFAULT_MULTIFD_CHANNELS,
      'direct-io': false,
      'downtime-limit': QEMU_DEFAULT_DOWNTIME_LIMIT,
      'max-bandwidth': QEMU_DEFAULT_MAX_BANDWIDTH,
      'x-checkpoint-delay': QEMU_DEFAULT_X_CHECKPOINT_DELAY,
    },
    precopy: {
      policy: 'downtime',
      threshold: DEFAULT_PRECOPY_THRESHOLD,
      'max-iterations': DEFAULT_MAX_ITERATIONS,
      'time-budget': 0,
      'on-budget': 'abort',
    },
  };
}

// --- QEMU's own words ------------------------------------------------------

/**
 * QEMU 10.0.2's messages, exactly as QMP returns them (`desc`). Where a
 * rule below is QEMU's, its message is one of these (or contains it).
 */
export const QEMU_MESSAGES = {
  /** options.c migrate_caps_check, at migrate-set-capabilities. */
  mappedRamXbzrle: 'Mapped-ram migration is incompatible with xbzrle',
  mappedRamPostcopy: 'Mapped-ram migration is incompatible with postcopy',
  multifdXbzrle: 'Multifd is not compatible with xbzrle',
  postcopyMultifd: 'Postcopy is not yet compatible with multifd',
  postcopyIgnoreShared: 'Postcopy is not compatible with ignore-shared',
  /** The QAPI enum MigrationCapability lost `compress` in 9.1 (commit 0222111a22b2). */
  compressRemoved: "Parameter 'capability' does not accept value 'compress'",
  /** options.c migrate_params_check, at migrate-set-parameters (note the underscore). */
  multifdChannelsZero: "Parameter 'multifd_channels' expects a value between 1 and 255",
  /** The QAPI visitor for a uint8 member (qapi-visit-core.c), before options.c sees it. */
  multifdChannelsUint8: "Parameter 'multifd-channels' expects uint8_t",
  /** options.c migrate_params_check; stringify(MAX_MIGRATE_DOWNTIME) really prints "(2000 * 1000)". */
  downtimeLimitRange: "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
  /** The QAPI visitor for a uint32 member. */
  xCheckpointDelayUint32: "Parameter 'x-checkpoint-delay' expects uint32_t",
  /** migration.c, at `migrate`: a file: URI takes several channels only with mapped-ram. */
  multifdNeedsMappedRam: 'Migration requires multi-channel URIs (e.g. tcp)',
} as const;

// --- the schema ------------------------------------------------------------

const SECTIONS = ['capabilities', 'parameters', 'precopy'] as const;
type Section = (typeof SECTIONS)[number];

const CAPABILITIES = ['mapped-ram', 'multifd', 'x-ignore-shared', 'xbzrle', 'postcopy-ram', 'compress'] as const;
const PARAMETERS = ['multifd-channels', 'direct-io', 'downtime-limit', 'max-bandwidth', 'x-checkpoint-delay'] as const;
const PRECOPY = ['policy', 'threshold', 'max-iterations', 'time-budget', 'on-budget'] as const;
const KEYS: Record<Section, readonly string[]> = { capabilities: CAPABILITIES, parameters: PARAMETERS, precopy: PRECOPY };

/** QEMU 10.0.2's other capabilities and parameters: known to QEMU, not modelled by ramsnap. */
const QEMU_OTHER_CAPABILITIES = [
  'rdma-pin-all', 'auto-converge', 'zero-blocks', 'events', 'x-colo', 'release-ram', 'return-path',
  'pause-before-switchover', 'dirty-bitmaps', 'postcopy-blocktime', 'late-block-activate', 'validate-uuid',
  'background-snapshot', 'zero-copy-send', 'postcopy-preempt', 'switchover-ack', 'dirty-limit',
];
const QEMU_OTHER_PARAMETERS = [
  'announce-initial', 'announce-max', 'announce-rounds', 'announce-step', 'throttle-trigger-threshold',
  'cpu-throttle-initial', 'cpu-throttle-increment', 'cpu-throttle-tailslow', 'tls-creds', 'tls-hostname',
  'tls-authz', 'avail-switchover-bandwidth', 'multifd-compression', 'multifd-zlib-level', 'multifd-qatzip-level',
  'multifd-zstd-level', 'xbzrle-cache-size', 'max-postcopy-bandwidth', 'max-cpu-throttle', 'block-bitmap-mapping',
  'x-vcpu-dirty-limit-period', 'vcpu-dirty-limit', 'mode', 'zero-page-detection',
];

type IntKind = 'count' | 'ms' | 'bytes' | 'bytes/s';

interface IntSpec {
  kind: IntKind;
  min: number;
  max: number;
  /** The message for a value outside min..max (QEMU's where QEMU has the rule). */
  range(value: number): string;
}

const INT_FIELDS: Record<string, IntSpec> = {
  'parameters.multifd-channels': {
    kind: 'count',
    min: 1,
    max: QEMU_MAX_MULTIFD_CHANNELS,
    // Two QEMU checks, two messages: options.c refuses 0, the uint8 visitor refuses the rest.
    range: (v) => (v < 1 && v >= 0 ? QEMU_MESSAGES.multifdChannelsZero : QEMU_MESSAGES.multifdChannelsUint8),
  },
  'parameters.downtime-limit': {
    kind: 'ms',
    min: 0,
    max: QEMU_MAX_DOWNTIME_LIMIT,
    // QEMU reads -1 as a uint64 (2^64 - 1), so negatives get the same message.
    range: () => QEMU_MESSAGES.downtimeLimitRange,
  },
  'parameters.max-bandwidth': {
    kind: 'bytes/s',
    min: 0,
    max: Number.MAX_SAFE_INTEGER,
    range: (v) => `max-bandwidth must be 0 (no limit) to ${Number.MAX_SAFE_INTEGER} bytes/s, got ${fmt(v)}`,
  },
  'parameters.x-checkpoint-delay': {
    kind: 'ms',
    min: 0,
    max: QEMU_MAX_X_CHECKPOINT_DELAY,
    range: () => QEMU_MESSAGES.xCheckpointDelayUint32,
  },
  'precopy.threshold': {
    kind: 'bytes',
    min: 0,
    max: Number.MAX_SAFE_INTEGER,
    range: (v) => `threshold must be 0 to ${Number.MAX_SAFE_INTEGER} bytes, got ${fmt(v)}`,
  },
  'precopy.max-iterations': {
    kind: 'count',
    min: 1,
    max: MAX_MAX_ITERATIONS,
    range: (v) => `max-iterations must be 1 to ${MAX_MAX_ITERATIONS}, got ${fmt(v)}`,
  },
  'precopy.time-budget': {
    kind: 'ms',
    min: 0,
    max: MAX_TIME_BUDGET,
    range: (v) => `time-budget must be 0 (no budget) to ${MAX_TIME_BUDGET} ms, got ${fmt(v)}`,
  },
};

const BOOL_FIELDS = new Set([...CAPABILITIES.map((c) => `capabilities.${c}`), 'parameters.direct-io']);

export interface CheckContext {
  /** Relative policy module paths are resolved against this (default: the current directory). */
  baseDir?: string;
  /** Whether an absolute path names a regular file (default: fs.statSync). */
  isFile?: (absolutePath: string) => boolean;
}

/**
 * Validates a raw options object (a parsed config file, flags, or both
 * merged) against the schema. Missing keys take their defaults. Every
 * violation is reported; `options` is set only when there are none.
 *
 * Values: booleans as JSON true/false or the strings on/off/true/false;
 * numbers as JSON integers or strings (`4096`, `0x1000`, and for byte
 * sizes `128M`, `1g`; `max-bandwidth` also takes a trailing `/s`).
 */
export function checkSaveOptions(input: unknown, ctx: CheckContext = {}): { options?: SaveOptions; violations: Violation[] } {
  const violations: Violation[] = [];
  const add = (code: OptionCode, field: string, message: string) => violations.push({ code, field, message });
  const options = defaultSaveOptions();

  if (!isPlainObject(input)) {
    add(OptionCode.OPTION_TYPE, '(options)', `options must be a JSON object with capabilities, parameters and precopy, got ${describe(input)}`);
    return { violations };
  }
  for (const key of Object.keys(input)) {
    if (!(SECTIONS as readonly string[]).includes(key)) {
      add(OptionCode.OPTION_UNKNOWN, key, `unknown section '${key}'${suggest(key, SECTIONS)} (known: ${SECTIONS.join(', ')})`);
    }
  }

  for (const section of SECTIONS) {
    const raw = input[section];
    if (raw === undefined) continue;
    if (!isPlainObject(raw)) {
      add(OptionCode.OPTION_TYPE, section, `${section} must be an object, got ${describe(raw)}`);
      continue;
    }
    const target = options[section] as unknown as Record<string, unknown>;
    for (const [key, value] of Object.entries(raw)) {
      const field = `${section}.${key}`;
      if (!KEYS[section].includes(key)) {
        add(OptionCode.OPTION_UNKNOWN, field, unknownKeyMessage(section, key));
        continue;
      }
      if (BOOL_FIELDS.has(field)) {
        const b = parseBool(value);
        if (b === undefined) add(OptionCode.OPTION_TYPE, field, `${key} must be on or off (true or false), got ${describe(value)}`);
        else target[key] = b;
      } else if (field in INT_FIELDS) {
        const spec = INT_FIELDS[field];
        const n = parseInteger(value, spec.kind);
        if (n === undefined) add(OptionCode.OPTION_TYPE, field, `${key} must be ${integerShape(spec.kind)}, got ${describe(value)}`);
        else if (!(n >= spec.min && n <= spec.max)) add(OptionCode.OPTION_RANGE, field, spec.range(n));
        else target[key] = n;
      } else if (field === 'precopy.on-budget') {
        if (value === 'abort' || value === 'force') target[key] = value;
        else if (typeof value === 'string') add(OptionCode.OPTION_RANGE, field, `on-budget must be abort or force, got ${describe(value)}`);
        else add(OptionCode.OPTION_TYPE, field, `on-budget must be the string abort or force, got ${describe(value)}`);
      } else if (field === 'precopy.policy') {
        const policy = checkPolicy(value, ctx, (code, message) => add(code, field, message));
        if (policy !== undefined) target[key] = policy;
      }
    }
  }

  crossRules(options, add);
  return violations.length ? { violations } : { options, violations };
}

/**
 * Rules between options. They run on the values that parsed (a value that
 * failed its own check keeps its default here), so a bad type never hides
 * a conflict elsewhere.
 */
function crossRules(o: SaveOptions, add: (code: OptionCode, field: string, message: string) => void): void {
  // The always-off capabilities arrive as plain booleans: `o` was filled by parseBool.
  const caps = o.capabilities as unknown as Record<(typeof CAPABILITIES)[number], boolean>;
  const mappedRam = caps['mapped-ram'];
  const refusedByQemu = new Set<string>();
  const qemuRule = (when: boolean, field: string, message: string) => {
    if (!when) return;
    refusedByQemu.add(field);
    add(OptionCode.OPTION_CONFLICT, field, message);
  };

  // compress: QEMU 10 does not know the name at all (not even to turn it off).
  if (caps.compress) {
    add(
      OptionCode.OPTION_REMOVED,
      'capabilities.compress',
      `the compress capability was removed in QEMU 9.1 (QEMU 10 says "${QEMU_MESSAGES.compressRemoved}"), and a mapped-ram file is never compressed`,
    );
  }

  // QEMU's migrate_caps_check, in QEMU's order; all of them, not just the first.
  qemuRule(caps['postcopy-ram'] && caps['x-ignore-shared'], 'capabilities.postcopy-ram', QEMU_MESSAGES.postcopyIgnoreShared);
  qemuRule(caps['postcopy-ram'] && caps.multifd, 'capabilities.postcopy-ram', QEMU_MESSAGES.postcopyMultifd);
  qemuRule(caps.multifd && caps.xbzrle, 'capabilities.xbzrle', QEMU_MESSAGES.multifdXbzrle);
  qemuRule(mappedRam && caps.xbzrle, 'capabilities.xbzrle', QEMU_MESSAGES.mappedRamXbzrle);
  qemuRule(mappedRam && caps['postcopy-ram'], 'capabilities.postcopy-ram', QEMU_MESSAGES.mappedRamPostcopy);

  // Where QEMU would let them through, ramsnap's save still implements neither.
  if (caps.xbzrle && !refusedByQemu.has('capabilities.xbzrle')) {
    add(OptionCode.OPTION_UNSUPPORTED, 'capabilities.xbzrle', 'ramsnap save writes whole pages, never XBZRLE deltas (and ramsnap cannot read them back)');
  }
  if (caps['postcopy-ram'] && !refusedByQemu.has('capabilities.postcopy-ram')) {
    add(OptionCode.OPTION_UNSUPPORTED, 'capabilities.postcopy-ram', 'ramsnap save is precopy only: postcopy needs a destination QEMU pulling pages');
  }

  // ramsnap's own: it copies the shared RAM itself, and QEMU's part saving it too would be
  // a second, older copy (writer/live-save.ts refuses that file as SHARED_BLOCK_SAVED).
  if (!caps['x-ignore-shared']) {
    add(
      OptionCode.OPTION_UNSUPPORTED,
      'capabilities.x-ignore-shared',
      "ramsnap save copies the guest's shared RAM itself; QEMU's part of the save must leave it out, so x-ignore-shared must stay on",
    );
  }

  // ramsnap's own: save writes mapped-ram files only (convert makes a legacy stream of one).
  if (!mappedRam) {
    add(OptionCode.OPTION_UNSUPPORTED, 'capabilities.mapped-ram', 'ramsnap save writes mapped-ram files only (ramsnap convert --to legacy makes a sequential stream of one)');
  }

  // QEMU checks this only at `migrate`: a file takes several channels only with mapped-ram.
  if (caps.multifd && !mappedRam) {
    add(OptionCode.OPTION_REQUIRES, 'capabilities.multifd', `multifd needs mapped-ram when saving to a file (QEMU says at migrate: "${QEMU_MESSAGES.multifdNeedsMappedRam}")`);
  }

  // QEMU 10.0.2 accepts direct-io alone and then quietly writes without O_DIRECT
  // (options.c migrate_direct_io() is true only with mapped-ram and multifd): refuse it instead.
  if (o.parameters['direct-io'] && !(mappedRam && caps.multifd)) {
    const off = [mappedRam ? '' : 'mapped-ram', caps.multifd ? '' : 'multifd'].filter(Boolean).join(' and ');
    add(
      OptionCode.OPTION_REQUIRES,
      'parameters.direct-io',
      `direct-io needs mapped-ram and multifd (${off} off); QEMU would accept it and silently write without O_DIRECT`,
    );
  } else if (o.parameters['direct-io']) {
    // ramsnap's own: O_DIRECT needs buffers aligned in memory, and Node gives no say over where a buffer lies.
    add(OptionCode.OPTION_UNSUPPORTED, 'parameters.direct-io', 'ramsnap save cannot write with O_DIRECT: Node cannot align its buffers as O_DIRECT requires');
  }
}

function checkPolicy(value: unknown, ctx: CheckContext, add: (code: OptionCode, message: string) => void): string | undefined {
  if (typeof value !== 'string' || value.trim() === '') {
    add(OptionCode.OPTION_TYPE, `policy must be a built-in name (${BUILTIN_POLICIES.join(', ')}) or a module path, got ${describe(value)}`);
    return undefined;
  }
  if ((BUILTIN_POLICIES as readonly string[]).includes(value)) return value;
  if (!isModulePath(value)) {
    add(
      OptionCode.OPTION_UNKNOWN,
      `unknown policy '${value}' (built-ins: ${BUILTIN_POLICIES.join(', ')}; a module is a path such as ./my-policy.js)`,
    );
    return undefined;
  }
  const resolved = path.resolve(ctx.baseDir ?? process.cwd(), value);
  const isFile = ctx.isFile ?? defaultIsFile;
  if (!isFile(resolved)) {
    add(OptionCode.OPTION_NOT_FOUND, `policy module ${value} is not a file${resolved === value ? '' : ` (looked at ${resolved})`}`);
    return undefined;
  }
  return resolved;
}

/** A policy that is not a built-in name is a module path when it looks like one. */
export function isModulePath(policy: string): boolean {
  return policy.includes('/') || policy.includes('\\') || /\.(c|m)?js$/.test(policy);
}

function defaultIsFile(p: string): boolean {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

// --- what QEMU is told -------------------------------------------------------

export interface MigrationCapabilityStatus {
  capability: string;
  state: boolean;
}

export interface QemuParameters {
  'multifd-channels'?: number;
  'direct-io'?: boolean;
  'downtime-limit': number;
  'max-bandwidth': number;
  'x-checkpoint-delay': number;
}

/**
 * The capabilities as QEMU would be told them if QEMU saved everything
 * (`migrate-set-capabilities`). `compress` is never listed: QEMU 10
 * refuses the name even with state false.
 */
export function qemuCapabilities(o: SaveOptions): MigrationCapabilityStatus[] {
  return (['mapped-ram', 'multifd', 'x-ignore-shared', 'xbzrle', 'postcopy-ram'] as const).map((capability) => ({
    capability,
    state: o.capabilities[capability],
  }));
}

/** The parameters as QEMU would be told them (`migrate-set-parameters`), in QEMU's units. */
export function qemuParameters(o: SaveOptions): Required<QemuParameters> {
  return { ...o.parameters };
}

/**
 * What to send QEMU before the `migrate` that saves the tail (device state
 * and any RAM ramsnap did not write). Without mapped-ram, multifd and
 * direct-io: in 10.0.2 x-ignore-shared together with mapped-ram fails at
 * migrate ("Unable to write to file: Bad address") as soon as a RAM block
 * is shared, and without mapped-ram a file takes one channel only. They
 * are sent as false, not left out, so a QEMU set up earlier is reset.
 */
export function qemuTailSettings(o: SaveOptions): { capabilities: MigrationCapabilityStatus[]; parameters: QemuParameters } {
  return {
    capabilities: [
      { capability: 'mapped-ram', state: false },
      { capability: 'multifd', state: false },
      { capability: 'x-ignore-shared', state: o.capabilities['x-ignore-shared'] },
      { capability: 'xbzrle', state: false },
      { capability: 'postcopy-ram', state: false },
    ],
    parameters: {
      'downtime-limit': o.parameters['downtime-limit'],
      'max-bandwidth': o.parameters['max-bandwidth'],
      'x-checkpoint-delay': o.parameters['x-checkpoint-delay'],
    },
  };
}

/** How many positional writers ramsnap runs: multifd-channels with multifd, else one (QEMU ignores the count without multifd). */
export function parallelWriters(o: SaveOptions): number {
  return o.capabilities.multifd ? o.parameters['multifd-channels'] : 1;
}

/**
 * Deep merge of two raw option objects, `over` winning key by key inside
 * each section (flags over a config file). Anything that is not an object
 * is kept as it is, so the validator still sees and reports it.
 */
export function mergeOptionInputs(base: unknown, over: unknown): unknown {
  if (!isPlainObject(base) || !isPlainObject(over)) return over === undefined ? base : over;
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    out[key] = isPlainObject(out[key]) && isPlainObject(value) ? { ...(out[key] as object), ...value } : value;
  }
  return out;
}

// --- parsing helpers -----------------------------------------------------------

const SIZE_SUFFIX: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

function parseBool(v: unknown): boolean | undefined {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'string') {
    const t = v.trim().toLowerCase();
    if (t === 'on' || t === 'true') return true;
    if (t === 'off' || t === 'false') return false;
  }
  return undefined;
}

/**
 * An integer from JSON or from a flag. Returns NaN-free numbers only;
 * values too large to be exact come back as Infinity so the range check
 * (not the type check) reports them.
 */
function parseInteger(v: unknown, kind: IntKind): number | undefined {
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) return undefined;
    return Number.isSafeInteger(v) ? v : v > 0 ? Infinity : -Infinity;
  }
  if (typeof v !== 'string') return undefined;
  let t = v.trim();
  if (kind === 'bytes/s') t = t.replace(/\/s$/i, '');
  let n: number;
  const hex = /^0x([0-9a-f]+)$/i.exec(t);
  const dec = kind === 'bytes' || kind === 'bytes/s' ? /^(-?\d+)\s*([kmgt]?)(i?b)?$/i.exec(t) : /^(-?\d+)()()$/.exec(t);
  if (hex) n = parseInt(hex[1], 16);
  else if (dec) n = Number(dec[1]) * SIZE_SUFFIX[dec[2].toLowerCase()];
  else return undefined;
  return Number.isSafeInteger(n) ? n : n > 0 ? Infinity : -Infinity;
}

function integerShape(kind: IntKind): string {
  switch (kind) {
    case 'count':
      return 'an integer';
    case 'ms':
      return 'an integer number of milliseconds';
    case 'bytes':
      return 'a whole number of bytes (e.g. 104857600, 100M)';
    case 'bytes/s':
      return 'a whole number of bytes per second (e.g. 134217728, 128M, 1G/s)';
  }
}

function unknownKeyMessage(section: Section, key: string): string {
  const known = KEYS[section];
  const kind = section === 'capabilities' ? 'capability' : section === 'parameters' ? 'parameter' : 'precopy option';
  const qemuOthers = section === 'capabilities' ? QEMU_OTHER_CAPABILITIES : section === 'parameters' ? QEMU_OTHER_PARAMETERS : [];
  if (qemuOthers.includes(key)) return `QEMU ${kind} '${key}' is not one ramsnap save uses (known: ${known.join(', ')})`;
  return `unknown ${kind} '${key}'${suggest(key, known)} (known: ${known.join(', ')})`;
}

/** QEMU's C names use underscores where QMP uses dashes: point at the QMP name. */
function suggest(key: string, known: readonly string[]): string {
  const dashed = key.replace(/_/g, '-').toLowerCase();
  return dashed !== key && known.includes(dashed) ? `; did you mean '${dashed}'?` : '';
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return JSON.stringify(v);
  return String(v);
}

function fmt(n: number): string {
  return Number.isFinite(n) ? String(n) : n > 0 ? 'a number too large to be exact' : 'a number too small to be exact';
}
