/**
 * The save options (writer/save-options.ts, analyze/save-flags.ts,
 * `ramsnap options`): every rule with its exact message, every violation
 * at once, config file + flags, the CLI's lines and exit codes, and, when
 * QEMU 10 is installed, the same settings sent to a real QEMU, which must
 * refuse what we refuse with the message we quote (or, where we knowingly
 * differ, accept it: those cases are pinned too).
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { report } from '../../analyze/cli.js';
import { flagsToInput, resolveSaveOptions, saveOptionsFromArgv } from '../../analyze/save-flags.js';
import { RamsnapUsageError } from '../../format/errors.js';
import { Qemu, kvmAvailable, qemuAvailable } from '../../fixtures/qemu.js';
import {
  QEMU_MESSAGES,
  checkSaveOptions,
  defaultSaveOptions,
  mergeOptionInputs,
  parallelWriters,
  qemuCapabilities,
  qemuParameters,
  qemuTailSettings,
  type Violation,
} from '../../vm/save-options.js';

function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return dir;
}
const BIN = path.join(repoRoot(), 'dist/analyze/bin.js');

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-save-options-'));
});
afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

const KNOWN_CAPS = 'known: mapped-ram, multifd, x-ignore-shared, xbzrle, postcopy-ram, compress';
const KNOWN_PARAMS = 'known: multifd-channels, direct-io, downtime-limit, max-bandwidth, x-checkpoint-delay';
const COMPRESS_MESSAGE =
  `the compress capability was removed in QEMU 9.1 (QEMU 10 says "Parameter 'capability' does not accept value 'compress'"), ` +
  'and a mapped-ram file is never compressed';
const X_IGNORE_SHARED_MESSAGE = "ramsnap save copies the guest's shared RAM itself; QEMU's part of the save must leave it out, so x-ignore-shared must stay on";
const MULTIFD_FILE_MESSAGE = 'multifd needs mapped-ram when saving to a file (QEMU says at migrate: "Migration requires multi-channel URIs (e.g. tcp)")';
const MAPPED_RAM_MESSAGE = 'ramsnap save writes mapped-ram files only (ramsnap convert --to legacy makes a sequential stream of one)';
const DIRECT_IO_MESSAGE = 'ramsnap save cannot write with O_DIRECT: Node cannot align its buffers as O_DIRECT requires';

const v = (code: string, field: string, message: string): Violation => ({ code: code as Violation['code'], field, message });
/** ramsnap's own refusal of mapped-ram off, which comes with every input that turns it off to isolate a QEMU rule. */
const MAPPED_RAM_OFF = v('OPTION_UNSUPPORTED', 'capabilities.mapped-ram', MAPPED_RAM_MESSAGE);

describe('defaults', () => {
  it('are QEMU 10.0.2\'s (query-migrate-parameters on a fresh QEMU) where QEMU has one', () => {
    const d = defaultSaveOptions();
    expect(d.parameters).toEqual({
      'multifd-channels': 2,
      'direct-io': false,
      'downtime-limit': 300,
      'max-bandwidth': 134217728,
      'x-checkpoint-delay': 20000,
    });
    // ramsnap's own: it writes mapped-ram and leaves shared RAM out of QEMU's tail.
    expect(d.capabilities).toEqual({ 'mapped-ram': true, multifd: false, 'x-ignore-shared': true, xbzrle: false, 'postcopy-ram': false, compress: false });
    expect(d.precopy).toEqual({ policy: 'downtime', threshold: 100 * 1024 * 1024, 'max-iterations': 30, 'time-budget': 0, 'on-budget': 'abort' });
  });

  it('pass their own check; an empty object means the defaults', () => {
    expect(checkSaveOptions({})).toEqual({ options: defaultSaveOptions(), violations: [] });
    expect(checkSaveOptions(defaultSaveOptions())).toEqual({ options: defaultSaveOptions(), violations: [] });
  });
});

describe('each rule, with its exact message', () => {
  const cases: { rule: string; input: unknown; violations: Violation[] }[] = [
    // Capabilities: QEMU's migrate_caps_check.
    { rule: 'mapped-ram + xbzrle', input: { capabilities: { xbzrle: true } }, violations: [v('OPTION_CONFLICT', 'capabilities.xbzrle', 'Mapped-ram migration is incompatible with xbzrle')] },
    {
      rule: 'mapped-ram + postcopy-ram (and postcopy-ram + x-ignore-shared)',
      input: { capabilities: { 'postcopy-ram': true } },
      violations: [
        v('OPTION_CONFLICT', 'capabilities.postcopy-ram', 'Postcopy is not compatible with ignore-shared'),
        v('OPTION_CONFLICT', 'capabilities.postcopy-ram', 'Mapped-ram migration is incompatible with postcopy'),
      ],
    },
    {
      rule: 'multifd + xbzrle (and mapped-ram + xbzrle)',
      input: { capabilities: { multifd: true, xbzrle: true } },
      violations: [
        v('OPTION_CONFLICT', 'capabilities.xbzrle', 'Multifd is not compatible with xbzrle'),
        v('OPTION_CONFLICT', 'capabilities.xbzrle', 'Mapped-ram migration is incompatible with xbzrle'),
      ],
    },
    {
      rule: 'postcopy-ram + multifd (and the other two postcopy-ram rules)',
      input: { capabilities: { 'postcopy-ram': true, multifd: true } },
      violations: [
        v('OPTION_CONFLICT', 'capabilities.postcopy-ram', 'Postcopy is not compatible with ignore-shared'),
        v('OPTION_CONFLICT', 'capabilities.postcopy-ram', 'Postcopy is not yet compatible with multifd'),
        v('OPTION_CONFLICT', 'capabilities.postcopy-ram', 'Mapped-ram migration is incompatible with postcopy'),
      ],
    },
    {
      rule: 'postcopy-ram + x-ignore-shared',
      input: { capabilities: { 'postcopy-ram': true, 'mapped-ram': false } },
      violations: [v('OPTION_CONFLICT', 'capabilities.postcopy-ram', 'Postcopy is not compatible with ignore-shared'), MAPPED_RAM_OFF],
    },
    { rule: 'compress', input: { capabilities: { compress: true } }, violations: [v('OPTION_REMOVED', 'capabilities.compress', COMPRESS_MESSAGE)] },
    {
      rule: 'compress without mapped-ram (still removed)',
      input: { capabilities: { compress: 'on', 'mapped-ram': 'off' } },
      violations: [v('OPTION_REMOVED', 'capabilities.compress', COMPRESS_MESSAGE), MAPPED_RAM_OFF],
    },
    // Where QEMU would allow them, ramsnap's save still does not implement them.
    {
      rule: 'xbzrle alone',
      input: { capabilities: { xbzrle: true, 'mapped-ram': false } },
      violations: [v('OPTION_UNSUPPORTED', 'capabilities.xbzrle', 'ramsnap save writes whole pages, never XBZRLE deltas (and ramsnap cannot read them back)'), MAPPED_RAM_OFF],
    },
    {
      rule: 'postcopy-ram alone (only possible with x-ignore-shared off, itself refused)',
      input: { capabilities: { 'postcopy-ram': true, 'mapped-ram': false, 'x-ignore-shared': false } },
      violations: [
        v('OPTION_UNSUPPORTED', 'capabilities.postcopy-ram', 'ramsnap save is precopy only: postcopy needs a destination QEMU pulling pages'),
        v('OPTION_UNSUPPORTED', 'capabilities.x-ignore-shared', X_IGNORE_SHARED_MESSAGE),
        MAPPED_RAM_OFF,
      ],
    },
    { rule: 'x-ignore-shared off', input: { capabilities: { 'x-ignore-shared': 'off' } }, violations: [v('OPTION_UNSUPPORTED', 'capabilities.x-ignore-shared', X_IGNORE_SHARED_MESSAGE)] },
    { rule: 'mapped-ram off', input: { capabilities: { 'mapped-ram': 'off' } }, violations: [MAPPED_RAM_OFF] },
    {
      rule: 'direct-io with mapped-ram and multifd (where QEMU would use O_DIRECT)',
      input: { capabilities: { multifd: true }, parameters: { 'direct-io': true } },
      violations: [v('OPTION_UNSUPPORTED', 'parameters.direct-io', DIRECT_IO_MESSAGE)],
    },
    // Requirements (mapped-ram off is refused on its own too).
    {
      rule: 'multifd needs mapped-ram',
      input: { capabilities: { multifd: true, 'mapped-ram': false } },
      violations: [MAPPED_RAM_OFF, v('OPTION_REQUIRES', 'capabilities.multifd', MULTIFD_FILE_MESSAGE)],
    },
    {
      rule: 'direct-io needs multifd',
      input: { parameters: { 'direct-io': true } },
      violations: [v('OPTION_REQUIRES', 'parameters.direct-io', 'direct-io needs mapped-ram and multifd (multifd off); QEMU would accept it and silently write without O_DIRECT')],
    },
    {
      rule: 'direct-io needs mapped-ram and multifd',
      input: { capabilities: { 'mapped-ram': false }, parameters: { 'direct-io': true } },
      violations: [
        MAPPED_RAM_OFF,
        v('OPTION_REQUIRES', 'parameters.direct-io', 'direct-io needs mapped-ram and multifd (mapped-ram and multifd off); QEMU would accept it and silently write without O_DIRECT'),
      ],
    },
    {
      rule: 'direct-io needs mapped-ram (with multifd on, multifd needs it too)',
      input: { capabilities: { 'mapped-ram': false, multifd: true }, parameters: { 'direct-io': true } },
      violations: [
        MAPPED_RAM_OFF,
        v('OPTION_REQUIRES', 'capabilities.multifd', MULTIFD_FILE_MESSAGE),
        v('OPTION_REQUIRES', 'parameters.direct-io', 'direct-io needs mapped-ram and multifd (mapped-ram off); QEMU would accept it and silently write without O_DIRECT'),
      ],
    },
    // Parameters: QEMU's ranges and words.
    { rule: 'multifd-channels 0', input: { parameters: { 'multifd-channels': 0 } }, violations: [v('OPTION_RANGE', 'parameters.multifd-channels', "Parameter 'multifd_channels' expects a value between 1 and 255")] },
    { rule: 'multifd-channels 256', input: { parameters: { 'multifd-channels': 256 } }, violations: [v('OPTION_RANGE', 'parameters.multifd-channels', "Parameter 'multifd-channels' expects uint8_t")] },
    { rule: 'multifd-channels -1', input: { parameters: { 'multifd-channels': '-1' } }, violations: [v('OPTION_RANGE', 'parameters.multifd-channels', "Parameter 'multifd-channels' expects uint8_t")] },
    { rule: 'multifd-channels 1.5', input: { parameters: { 'multifd-channels': 1.5 } }, violations: [v('OPTION_TYPE', 'parameters.multifd-channels', 'multifd-channels must be an integer, got 1.5')] },
    { rule: 'multifd-channels "4k"', input: { parameters: { 'multifd-channels': '4k' } }, violations: [v('OPTION_TYPE', 'parameters.multifd-channels', 'multifd-channels must be an integer, got "4k"')] },
    {
      rule: 'downtime-limit 2000001',
      input: { parameters: { 'downtime-limit': 2000001 } },
      violations: [v('OPTION_RANGE', 'parameters.downtime-limit', "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms")],
    },
    {
      rule: 'downtime-limit -1',
      input: { parameters: { 'downtime-limit': -1 } },
      violations: [v('OPTION_RANGE', 'parameters.downtime-limit', "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms")],
    },
    { rule: 'downtime-limit null', input: { parameters: { 'downtime-limit': null } }, violations: [v('OPTION_TYPE', 'parameters.downtime-limit', 'downtime-limit must be an integer number of milliseconds, got null')] },
    { rule: 'x-checkpoint-delay 2^32', input: { parameters: { 'x-checkpoint-delay': 2 ** 32 } }, violations: [v('OPTION_RANGE', 'parameters.x-checkpoint-delay', "Parameter 'x-checkpoint-delay' expects uint32_t")] },
    { rule: 'x-checkpoint-delay -1', input: { parameters: { 'x-checkpoint-delay': -1 } }, violations: [v('OPTION_RANGE', 'parameters.x-checkpoint-delay', "Parameter 'x-checkpoint-delay' expects uint32_t")] },
    { rule: 'max-bandwidth -1', input: { parameters: { 'max-bandwidth': -1 } }, violations: [v('OPTION_RANGE', 'parameters.max-bandwidth', 'max-bandwidth must be 0 (no limit) to 9007199254740991 bytes/s, got -1')] },
    {
      rule: 'max-bandwidth 2^64',
      input: { parameters: { 'max-bandwidth': 2 ** 64 } },
      violations: [v('OPTION_RANGE', 'parameters.max-bandwidth', 'max-bandwidth must be 0 (no limit) to 9007199254740991 bytes/s, got a number too large to be exact')],
    },
    {
      rule: 'max-bandwidth "fast"',
      input: { parameters: { 'max-bandwidth': 'fast' } },
      violations: [v('OPTION_TYPE', 'parameters.max-bandwidth', 'max-bandwidth must be a whole number of bytes per second (e.g. 134217728, 128M, 1G/s), got "fast"')],
    },
    { rule: 'direct-io "yes"', input: { parameters: { 'direct-io': 'yes' } }, violations: [v('OPTION_TYPE', 'parameters.direct-io', 'direct-io must be on or off (true or false), got "yes"')] },
    { rule: 'multifd 1', input: { capabilities: { multifd: 1 } }, violations: [v('OPTION_TYPE', 'capabilities.multifd', 'multifd must be on or off (true or false), got 1')] },
    // Precopy: ramsnap's own.
    { rule: 'threshold -1', input: { precopy: { threshold: -1 } }, violations: [v('OPTION_RANGE', 'precopy.threshold', 'threshold must be 0 to 9007199254740991 bytes, got -1')] },
    { rule: 'threshold "1x"', input: { precopy: { threshold: '1x' } }, violations: [v('OPTION_TYPE', 'precopy.threshold', 'threshold must be a whole number of bytes (e.g. 104857600, 100M), got "1x"')] },
    { rule: 'max-iterations 0', input: { precopy: { 'max-iterations': 0 } }, violations: [v('OPTION_RANGE', 'precopy.max-iterations', 'max-iterations must be 1 to 1000, got 0')] },
    { rule: 'max-iterations 1001', input: { precopy: { 'max-iterations': 1001 } }, violations: [v('OPTION_RANGE', 'precopy.max-iterations', 'max-iterations must be 1 to 1000, got 1001')] },
    {
      rule: 'time-budget 2^31',
      input: { precopy: { 'time-budget': 2 ** 31 } },
      violations: [v('OPTION_RANGE', 'precopy.time-budget', 'time-budget must be 0 (no budget) to 2147483647 ms, got 2147483648')],
    },
    { rule: 'time-budget "1.5"', input: { precopy: { 'time-budget': '1.5' } }, violations: [v('OPTION_TYPE', 'precopy.time-budget', 'time-budget must be an integer number of milliseconds, got "1.5"')] },
    { rule: 'on-budget "later"', input: { precopy: { 'on-budget': 'later' } }, violations: [v('OPTION_RANGE', 'precopy.on-budget', 'on-budget must be abort or force, got "later"')] },
    { rule: 'on-budget true', input: { precopy: { 'on-budget': true } }, violations: [v('OPTION_TYPE', 'precopy.on-budget', 'on-budget must be the string abort or force, got true')] },
    {
      rule: 'policy "fast"',
      input: { precopy: { policy: 'fast' } },
      violations: [v('OPTION_UNKNOWN', 'precopy.policy', "unknown policy 'fast' (built-ins: classic, threshold, downtime; a module is a path such as ./my-policy.js)")],
    },
    { rule: 'policy 3', input: { precopy: { policy: 3 } }, violations: [v('OPTION_TYPE', 'precopy.policy', 'policy must be a built-in name (classic, threshold, downtime) or a module path, got 3')] },
    {
      rule: 'policy /nonexistent/p.js',
      input: { precopy: { policy: '/nonexistent/p.js' } },
      violations: [v('OPTION_NOT_FOUND', 'precopy.policy', 'policy module /nonexistent/p.js is not a file')],
    },
    // Shape.
    { rule: 'not an object', input: [1], violations: [v('OPTION_TYPE', '(options)', 'options must be a JSON object with capabilities, parameters and precopy, got an array')] },
    { rule: 'section not an object', input: { capabilities: 'mapped-ram' }, violations: [v('OPTION_TYPE', 'capabilities', 'capabilities must be an object, got "mapped-ram"')] },
    { rule: 'unknown section', input: { parameter: {} }, violations: [v('OPTION_UNKNOWN', 'parameter', "unknown section 'parameter' (known: capabilities, parameters, precopy)")] },
    { rule: 'unknown capability', input: { capabilities: { bogus: true } }, violations: [v('OPTION_UNKNOWN', 'capabilities.bogus', `unknown capability 'bogus' (${KNOWN_CAPS})`)] },
    {
      rule: 'a QEMU capability ramsnap does not use',
      input: { capabilities: { 'auto-converge': true } },
      violations: [v('OPTION_UNKNOWN', 'capabilities.auto-converge', `QEMU capability 'auto-converge' is not one ramsnap save uses (${KNOWN_CAPS})`)],
    },
    {
      rule: 'a QEMU parameter ramsnap does not use',
      input: { parameters: { 'multifd-compression': 'zlib' } },
      violations: [v('OPTION_UNKNOWN', 'parameters.multifd-compression', `QEMU parameter 'multifd-compression' is not one ramsnap save uses (${KNOWN_PARAMS})`)],
    },
    {
      rule: "QEMU's C spelling",
      input: { parameters: { multifd_channels: 4 } },
      violations: [v('OPTION_UNKNOWN', 'parameters.multifd_channels', `unknown parameter 'multifd_channels'; did you mean 'multifd-channels'? (${KNOWN_PARAMS})`)],
    },
  ];

  for (const c of cases) {
    it(c.rule, () => {
      const r = checkSaveOptions(c.input);
      expect(r.violations).toEqual(c.violations);
      expect(r.options).toBeUndefined();
    });
  }

  it('the QEMU rules quote QEMU_MESSAGES (the strings the interop test sends QEMU for)', () => {
    const quoted = cases.flatMap((c) => c.violations.map((x) => x.message));
    for (const m of Object.values(QEMU_MESSAGES)) expect(quoted.some((q) => q.includes(m)), m).toBe(true);
  });
});

describe('accepted values', () => {
  it('the ends of every range', () => {
    for (const input of [
      { parameters: { 'multifd-channels': 1, 'downtime-limit': 0, 'max-bandwidth': 0, 'x-checkpoint-delay': 0 } },
      { parameters: { 'multifd-channels': 255, 'downtime-limit': 2000000, 'max-bandwidth': Number.MAX_SAFE_INTEGER, 'x-checkpoint-delay': 4294967295 } },
      { precopy: { threshold: 0, 'max-iterations': 1, 'time-budget': 0 } },
      { precopy: { threshold: Number.MAX_SAFE_INTEGER, 'max-iterations': 1000, 'time-budget': 2 ** 31 - 1 } },
    ]) {
      expect(checkSaveOptions(input).violations, JSON.stringify(input)).toEqual([]);
    }
  });

  it('numbers and booleans spelt as flags spell them', () => {
    const r = checkSaveOptions({
      capabilities: { multifd: 'on', 'x-ignore-shared': 'On', 'mapped-ram': 'TRUE' },
      parameters: { 'multifd-channels': '0x8', 'direct-io': 'False', 'downtime-limit': '500', 'max-bandwidth': '1G/s', 'x-checkpoint-delay': '100' },
      precopy: { threshold: '64MiB', 'max-iterations': '10', 'time-budget': '60000', 'on-budget': 'force', policy: 'downtime' },
    });
    expect(r.violations).toEqual([]);
    expect(r.options).toEqual({
      capabilities: { 'mapped-ram': true, multifd: true, 'x-ignore-shared': true, xbzrle: false, 'postcopy-ram': false, compress: false },
      parameters: { 'multifd-channels': 8, 'direct-io': false, 'downtime-limit': 500, 'max-bandwidth': 1 << 30, 'x-checkpoint-delay': 100 },
      precopy: { policy: 'downtime', threshold: 64 << 20, 'max-iterations': 10, 'time-budget': 60000, 'on-budget': 'force' },
    });
    expect(parallelWriters(r.options!)).toBe(8);
    // 'true' spelt as a string is read too: direct-io then reaches its rule, not the type check.
    expect(checkSaveOptions({ capabilities: { multifd: 'on' }, parameters: { 'direct-io': 'true' } }).violations).toEqual([
      v('OPTION_UNSUPPORTED', 'parameters.direct-io', DIRECT_IO_MESSAGE),
    ]);
  });

  it('the conflicting capabilities may be named, off', () => {
    expect(checkSaveOptions({ capabilities: { xbzrle: false, 'postcopy-ram': 'off', compress: false } }).violations).toEqual([]);
  });

  it('a policy module is resolved to an absolute path (relative to baseDir)', () => {
    fs.writeFileSync(path.join(tmp, 'pol.js'), 'export default () => ({ stop: true });\n');
    const r = checkSaveOptions({ precopy: { policy: './pol.js' } }, { baseDir: tmp });
    expect(r.violations).toEqual([]);
    expect(r.options!.precopy.policy).toBe(path.join(tmp, 'pol.js'));
    const missing = checkSaveOptions({ precopy: { policy: './nope.js' } }, { baseDir: tmp });
    expect(missing.violations).toEqual([v('OPTION_NOT_FOUND', 'precopy.policy', `policy module ./nope.js is not a file (looked at ${path.join(tmp, 'nope.js')})`)]);
    // A directory is not a module file.
    expect(checkSaveOptions({ precopy: { policy: tmp } }).violations[0].code).toBe('OPTION_NOT_FOUND');
  });

  it('multifd-channels is unused without multifd: one writer', () => {
    const o = checkSaveOptions({ parameters: { 'multifd-channels': 8 } }).options!;
    expect(parallelWriters(o)).toBe(1);
  });
});

describe('every violation at once', () => {
  it('one per broken rule, types, ranges, unknown keys and conflicts together', () => {
    const r = checkSaveOptions({
      capabilities: { multifd: true, xbzrle: true, compress: true, bogus: 1 },
      parameters: { 'multifd-channels': 0, 'downtime-limit': 2000001, 'max-bandwidth': 'x', 'x-checkpoint-delay': -1, 'direct-io': 'maybe' },
      precopy: { policy: 'fast', threshold: -1, 'max-iterations': 0, 'time-budget': 1.5, 'on-budget': 'later' },
      extra: true,
    });
    expect(r.options).toBeUndefined();
    expect(r.violations.map((x) => `${x.code} ${x.field}`)).toEqual([
      'OPTION_UNKNOWN extra',
      'OPTION_UNKNOWN capabilities.bogus',
      'OPTION_RANGE parameters.multifd-channels',
      'OPTION_RANGE parameters.downtime-limit',
      'OPTION_TYPE parameters.max-bandwidth',
      'OPTION_RANGE parameters.x-checkpoint-delay',
      'OPTION_TYPE parameters.direct-io',
      'OPTION_UNKNOWN precopy.policy',
      'OPTION_RANGE precopy.threshold',
      'OPTION_RANGE precopy.max-iterations',
      'OPTION_TYPE precopy.time-budget',
      'OPTION_RANGE precopy.on-budget',
      'OPTION_REMOVED capabilities.compress',
      'OPTION_CONFLICT capabilities.xbzrle',
      'OPTION_CONFLICT capabilities.xbzrle',
    ]);
  });
});

describe('what QEMU is told', () => {
  it('the whole-save view uses QEMU names and never names compress (QEMU 10 refuses the name)', () => {
    const o = checkSaveOptions({ capabilities: { multifd: true }, parameters: { 'multifd-channels': 4 } }).options!;
    expect(qemuCapabilities(o)).toEqual([
      { capability: 'mapped-ram', state: true },
      { capability: 'multifd', state: true },
      { capability: 'x-ignore-shared', state: true },
      { capability: 'xbzrle', state: false },
      { capability: 'postcopy-ram', state: false },
    ]);
    expect(qemuParameters(o)).toEqual({ 'multifd-channels': 4, 'direct-io': false, 'downtime-limit': 300, 'max-bandwidth': 134217728, 'x-checkpoint-delay': 20000 });
  });

  it('the tail drops mapped-ram, multifd and direct-io, keeps x-ignore-shared and the rate and downtime', () => {
    const o = checkSaveOptions({ capabilities: { multifd: true }, parameters: { 'multifd-channels': 4, 'max-bandwidth': '1G', 'downtime-limit': 50 } }).options!;
    expect(qemuTailSettings(o)).toEqual({
      capabilities: [
        { capability: 'mapped-ram', state: false },
        { capability: 'multifd', state: false },
        { capability: 'x-ignore-shared', state: true },
        { capability: 'xbzrle', state: false },
        { capability: 'postcopy-ram', state: false },
      ],
      parameters: { 'downtime-limit': 50, 'max-bandwidth': 1 << 30, 'x-checkpoint-delay': 20000 },
    });
  });
});

describe('config file and flags', () => {
  const write = (name: string, body: unknown) => {
    const p = path.join(tmp, name);
    fs.writeFileSync(p, typeof body === 'string' ? body : JSON.stringify(body));
    return p;
  };

  it('flags win key by key; what a flag does not say, the file does', () => {
    fs.mkdirSync(path.join(tmp, 'cfg'), { recursive: true });
    fs.writeFileSync(path.join(tmp, 'cfg', 'pol.js'), 'export default () => ({});\n');
    const config = write('cfg/save.json', {
      capabilities: { multifd: true },
      parameters: { 'multifd-channels': 4, 'downtime-limit': 100, 'x-checkpoint-delay': 5000 },
      precopy: { policy: './pol.js', 'on-budget': 'force' },
    });
    const r = resolveSaveOptions({ config, 'multifd-channels': '8', 'max-bandwidth': '2G/s', 'on-budget': 'abort', capability: ['mapped-ram=on'] });
    expect(r.violations).toEqual([]);
    expect(r.options).toEqual({
      capabilities: { 'mapped-ram': true, multifd: true, 'x-ignore-shared': true, xbzrle: false, 'postcopy-ram': false, compress: false },
      parameters: { 'multifd-channels': 8, 'direct-io': false, 'downtime-limit': 100, 'max-bandwidth': 2 * 1024 ** 3, 'x-checkpoint-delay': 5000 },
      // A policy path in a config file is relative to the file, not to the current directory.
      precopy: { policy: path.join(tmp, 'cfg', 'pol.js'), threshold: 100 << 20, 'max-iterations': 30, 'time-budget': 0, 'on-budget': 'abort' },
    });
  });

  it('--no-direct-io and --cap multifd=off override the file', () => {
    const config = write('dio.json', { capabilities: { multifd: true }, parameters: { 'direct-io': true } });
    expect(resolveSaveOptions({ config }).violations).toEqual([v('OPTION_UNSUPPORTED', 'parameters.direct-io', DIRECT_IO_MESSAGE)]);
    const r = resolveSaveOptions({ config, 'direct-io': false, capability: ['multifd=off'] });
    expect(r.options?.parameters['direct-io']).toBe(false);
    expect(r.options?.capabilities.multifd).toBe(false);
  });

  it('the merged result is checked once: a conflict between the file and a flag is found', () => {
    const config = write('xb.json', { capabilities: { 'mapped-ram': false, xbzrle: true } });
    expect(resolveSaveOptions({ config }).violations.map((x) => `${x.code} ${x.field}`)).toEqual([
      'OPTION_UNSUPPORTED capabilities.xbzrle',
      'OPTION_UNSUPPORTED capabilities.mapped-ram',
    ]);
    expect(resolveSaveOptions({ config, capability: ['mapped-ram=on'] }).violations).toEqual([
      v('OPTION_CONFLICT', 'capabilities.xbzrle', 'Mapped-ram migration is incompatible with xbzrle'),
    ]);
  });

  it('--cap does not swallow the positional after it', async () => {
    const { default: yargs } = await import('yargs');
    const { withSaveOptions } = await import('../../analyze/save-flags.js');
    const argv = withSaveOptions(yargs(['--cap', 'multifd=on', 'OUT'])).parseSync();
    expect(argv._).toEqual(['OUT']);
    expect(flagsToInput(argv).input).toEqual({ capabilities: { multifd: 'on' } });
  });

  it('a bare --cap NAME or a malformed one is a violation (issue 13.17: a bare NAME is not taken as on)', () => {
    const bare = flagsToInput({ capability: ['multifd', 'x-ignore-shared=off'] });
    expect(bare.input).toEqual({ capabilities: { 'x-ignore-shared': 'off' } });
    expect(bare.violations).toEqual([v('OPTION_TYPE', 'capabilities', '--capability takes NAME=on|off, got "multifd" (say multifd=on or multifd=off)')]);
    expect(flagsToInput({ capability: ['=on'] }).violations).toEqual([v('OPTION_TYPE', 'capabilities', '--capability takes NAME=on|off, got "=on"')]);
    expect(resolveSaveOptions({ capability: ['multifd=maybe'] }).violations).toEqual([
      v('OPTION_TYPE', 'capabilities.multifd', 'multifd must be on or off (true or false), got "maybe"'),
    ]);
  });

  it('a config file that is missing, not JSON, or not an object', () => {
    const missing = path.join(tmp, 'missing.json');
    expect(resolveSaveOptions({ config: missing }).violations).toEqual([
      v('OPTION_CONFIG', '(config)', `cannot read config file ${missing}: no such file or directory`),
    ]);
    const bad = write('bad.json', '{ "capabilities": ');
    const notJson = resolveSaveOptions({ config: bad }).violations;
    expect(notJson).toHaveLength(1);
    expect(notJson[0].code).toBe('OPTION_CONFIG');
    expect(notJson[0].message).toMatch(new RegExp(`^config file ${bad} is not JSON: `));
    const arr = write('arr.json', '[]');
    expect(resolveSaveOptions({ config: arr }).violations).toEqual([v('OPTION_CONFIG', '(config)', `config file ${arr} must hold a JSON object, got an array`)]);
  });

  it('mergeOptionInputs keeps a non-object section so the validator reports it', () => {
    expect(mergeOptionInputs({ capabilities: 5 }, { parameters: { 'direct-io': true } })).toEqual({ capabilities: 5, parameters: { 'direct-io': true } });
    expect(mergeOptionInputs({ capabilities: { multifd: true } }, { capabilities: { xbzrle: false } })).toEqual({ capabilities: { multifd: true, xbzrle: false } });
  });
});

describe('saveOptionsFromArgv: one line, exit 2', () => {
  afterEach(() => vi.restoreAllMocks());

  it('throws a usage error with the first code and field, naming every violation', () => {
    let err: unknown;
    try {
      saveOptionsFromArgv({ 'multifd-channels': '0', capability: ['xbzrle=on'] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(RamsnapUsageError);
    const u = err as RamsnapUsageError;
    expect(u.code).toBe('OPTION_RANGE');
    expect(u.field).toBe('parameters.multifd-channels');
    expect(u.message).toBe(
      "parameters.multifd-channels: Parameter 'multifd_channels' expects a value between 1 and 255 " +
        '(and 1 more: OPTION_CONFLICT capabilities.xbzrle: Mapped-ram migration is incompatible with xbzrle)',
    );
    const lines: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
      lines.push(String(s));
      return true;
    });
    expect(report(err)).toBe(2);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^ramsnap: OPTION_RANGE: parameters\.multifd-channels: Parameter 'multifd_channels' expects a value between 1 and 255 \(and 1 more: [^\n]*\(see ramsnap --help\)\n$/);
  });

  it('returns the options when all is well', () => {
    expect(saveOptionsFromArgv({ capability: ['multifd=on'], 'multifd-channels': '4' }).parameters['multifd-channels']).toBe(4);
  });
});

// ---------------------------------------------------------------------------
// The binary

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function ramsnap(...args: string[]): Promise<Run> {
  const env = { ...process.env };
  delete env.RAMSNAP_DEBUG;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [BIN, ...args], { encoding: 'utf8', env, timeout: 30_000, cwd: tmp }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

describe('ramsnap options', () => {
  beforeAll(() => {
    expect(fs.existsSync(BIN), `${BIN} missing: run tsc -p . first`).toBe(true);
  });

  it('with nothing, prints the defaults and what the tail save sends QEMU; exit 0', async () => {
    const r = await ramsnap('options');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^capabilities\n  mapped-ram +on\n  multifd +off\n/);
    expect(r.stdout).toMatch(/\n  max-bandwidth +134217728 bytes\/s \(128 MiB\/s\)\n/);
    expect(r.stdout).toMatch(/\n  downtime-limit +300 ms\n/);
    expect(r.stdout).toContain(
      'migrate-set-capabilities [{"capability":"mapped-ram","state":false},{"capability":"multifd","state":false},{"capability":"x-ignore-shared","state":true},',
    );
  });

  it('--json: the options and the tail settings', async () => {
    const r = await ramsnap('options', '--json', '--cap', 'multifd=on', '--multifd-channels', '4');
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.ok).toBe(true);
    expect(j.options.parameters['multifd-channels']).toBe(4);
    expect(j.qemuTail.parameters).toEqual({ 'downtime-limit': 300, 'max-bandwidth': 134217728, 'x-checkpoint-delay': 20000 });
  });

  it('--check CONFIG: every violation, one line each on stderr (ramsnap: CODE: field: message); exit 1', async () => {
    const p = path.join(tmp, 'check.json');
    fs.writeFileSync(p, JSON.stringify({ capabilities: { xbzrle: true, compress: true }, parameters: { 'multifd-channels': 300, 'direct-io': true } }));
    const r = await ramsnap('options', '--check', p);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.split('\n')).toEqual([
      "ramsnap: OPTION_RANGE: parameters.multifd-channels: Parameter 'multifd-channels' expects uint8_t",
      `ramsnap: OPTION_REMOVED: capabilities.compress: ${COMPRESS_MESSAGE}`,
      'ramsnap: OPTION_CONFLICT: capabilities.xbzrle: Mapped-ram migration is incompatible with xbzrle',
      'ramsnap: OPTION_REQUIRES: parameters.direct-io: direct-io needs mapped-ram and multifd (multifd off); QEMU would accept it and silently write without O_DIRECT',
      '',
    ]);
    const j = await ramsnap('options', '--check', p, '--json');
    expect(j.code).toBe(1);
    expect(JSON.parse(j.stdout).violations).toHaveLength(4);
  });

  it('--check with flags: the flags are checked over the file', async () => {
    const p = path.join(tmp, 'ok.json');
    fs.writeFileSync(p, JSON.stringify({ capabilities: { multifd: true } }));
    const ok = await ramsnap('options', '--check', p, '--multifd-channels', '8', '--json');
    expect(ok.code, ok.stdout).toBe(0);
    expect(JSON.parse(ok.stdout).options.capabilities.multifd).toBe(true);
    expect(JSON.parse(ok.stdout).options.parameters['multifd-channels']).toBe(8);
    // A flag at fault is bad usage (exit 2), as save says of it.
    const bad = await ramsnap('options', '--check', p, '--cap', 'mapped-ram=off');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe(`ramsnap: OPTION_UNSUPPORTED: capabilities.mapped-ram: ${MAPPED_RAM_MESSAGE}\nramsnap: OPTION_REQUIRES: capabilities.multifd: ${MULTIFD_FILE_MESSAGE}\n`);
    // With the file's multifd, --direct-io is where QEMU would use O_DIRECT: refused as save refuses it.
    const dio = await ramsnap('options', '--check', p, '--direct-io');
    expect(dio.code).toBe(2);
    expect(dio.stderr).toBe(`ramsnap: OPTION_UNSUPPORTED: parameters.direct-io: ${DIRECT_IO_MESSAGE}\n`);
  });

  it('a flag not given leaves the file alone (--direct-io is not false by default); --no-direct-io turns it off', async () => {
    const p = path.join(tmp, 'dio-cli.json');
    fs.writeFileSync(p, JSON.stringify({ capabilities: { multifd: true }, parameters: { 'direct-io': true } }));
    // Kept: the file's direct-io is checked (and refused, as save refuses it).
    const kept = await ramsnap('options', '--check', p, '--json');
    expect(kept.code).toBe(1);
    expect(JSON.parse(kept.stdout).violations).toEqual([v('OPTION_UNSUPPORTED', 'parameters.direct-io', DIRECT_IO_MESSAGE)]);
    const off = await ramsnap('options', '--check', p, '--no-direct-io', '--json');
    expect(off.code, off.stdout).toBe(0);
    expect(JSON.parse(off.stdout).options.parameters['direct-io']).toBe(false);
  });

  it('--cap repeated or comma-separated', async () => {
    const r = await ramsnap('options', '--json', '--cap', 'multifd=on,mapped-ram=on', '--capability', 'xbzrle=off');
    expect(r.code, r.stdout).toBe(0);
    expect(JSON.parse(r.stdout).options.capabilities.multifd).toBe(true);
  });

  it('--check on a file that is not JSON, or not there: OPTION_CONFIG, exit 1', async () => {
    const p = path.join(tmp, 'notjson.json');
    fs.writeFileSync(p, 'capabilities: mapped-ram\n');
    const r = await ramsnap('options', '--check', p);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^ramsnap: OPTION_CONFIG: \(config\): config file .*notjson\.json is not JSON: [^\n]*\n$/);
    const m = await ramsnap('options', '--check', 'nowhere.json');
    expect(m.code).toBe(1);
    expect(m.stderr).toBe('ramsnap: OPTION_CONFIG: (config): cannot read config file nowhere.json: no such file or directory\n');
  });

  it('an unknown flag is a usage error: one line, exit 2', async () => {
    const r = await ramsnap('options', '--multifd-chanels', '4');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ramsnap: USAGE: Unknown argument[^\n]*\n$/);
  });
});

// ---------------------------------------------------------------------------
// The same settings, sent to a real QEMU 10

describe.skipIf(!qemuAvailable())('QEMU 10 agrees', () => {
  let q: Qemu;
  let work: string;
  const ARGS = ['-machine', 'q35', '-accel', kvmAvailable() ? 'kvm' : 'tcg', '-m', '64M', '-smp', '1'];
  const DEFAULT_PARAMS = { 'multifd-channels': 2, 'direct-io': false, 'downtime-limit': 300, 'max-bandwidth': 134217728, 'x-checkpoint-delay': 20000 };
  const ALL_OFF = ['mapped-ram', 'multifd', 'x-ignore-shared', 'xbzrle', 'postcopy-ram'].map((capability) => ({ capability, state: false }));

  /** QEMU's `desc` for a refused command, or undefined when it accepted it. */
  async function refusal(execute: string, args: Record<string, unknown>, qemu = q): Promise<string | undefined> {
    try {
      await qemu.cmd(execute, args);
      return undefined;
    } catch (e) {
      return (e as Error).message.replace(`QMP ${execute}: `, '');
    }
  }
  const capsOf = (caps: Record<string, boolean>) => ({ capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })) });

  beforeAll(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-save-options-qemu-'));
    q = await Qemu.start({ binary: 'qemu-system-x86_64', args: ARGS, dir: work });
  }, 30_000);
  afterAll(async () => {
    await q?.quit();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });
  afterEach(async () => {
    // Refused commands change nothing; accepted ones are undone for the next case.
    await q.cmd('migrate-set-capabilities', { capabilities: ALL_OFF });
    await q.cmd('migrate-set-parameters', DEFAULT_PARAMS);
  });

  it('the defaults are QEMU\'s', async () => {
    const p = (await q.cmd('query-migrate-parameters')) as Record<string, unknown>;
    const d = defaultSaveOptions().parameters;
    for (const [k, val] of Object.entries(d)) expect(p[k], k).toBe(val);
  });

  // Refused at migrate-set-capabilities (options.c migrate_caps_check), with our message.
  const capCases: { caps: Record<string, boolean>; message: string }[] = [
    { caps: { 'mapped-ram': true, xbzrle: true }, message: QEMU_MESSAGES.mappedRamXbzrle },
    { caps: { 'mapped-ram': true, 'postcopy-ram': true }, message: QEMU_MESSAGES.mappedRamPostcopy },
    { caps: { multifd: true, xbzrle: true }, message: QEMU_MESSAGES.multifdXbzrle },
    { caps: { 'postcopy-ram': true, multifd: true }, message: QEMU_MESSAGES.postcopyMultifd },
    { caps: { 'postcopy-ram': true, 'x-ignore-shared': true }, message: QEMU_MESSAGES.postcopyIgnoreShared },
    { caps: { compress: true }, message: QEMU_MESSAGES.compressRemoved },
    { caps: { compress: false }, message: QEMU_MESSAGES.compressRemoved },
  ];
  for (const c of capCases) {
    it(`capabilities ${JSON.stringify(c.caps)}: "${c.message}"`, async () => {
      // QEMU starts with mapped-ram off, so ours does too (where it stays off, ramsnap's own refusal of that comes along).
      const ours = checkSaveOptions({ capabilities: { 'mapped-ram': false, ...c.caps } }).violations;
      // compress off is accepted by us (the name is never sent), refused by QEMU by name.
      if (c.caps.compress === false) expect(ours).toEqual([MAPPED_RAM_OFF]);
      else expect(ours.some((x) => x.message.includes(c.message)), JSON.stringify(ours)).toBe(true);
      expect(await refusal('migrate-set-capabilities', capsOf(c.caps))).toBe(c.message);
    });
  }

  // Refused at migrate-set-parameters (options.c migrate_params_check, or the QAPI visitor), with our message.
  const paramCases: { params: Record<string, unknown>; message: string }[] = [
    { params: { 'multifd-channels': 0 }, message: QEMU_MESSAGES.multifdChannelsZero },
    { params: { 'multifd-channels': 256 }, message: QEMU_MESSAGES.multifdChannelsUint8 },
    { params: { 'multifd-channels': -1 }, message: QEMU_MESSAGES.multifdChannelsUint8 },
    { params: { 'downtime-limit': 2000001 }, message: QEMU_MESSAGES.downtimeLimitRange },
    { params: { 'downtime-limit': -1 }, message: QEMU_MESSAGES.downtimeLimitRange },
    { params: { 'x-checkpoint-delay': 2 ** 32 }, message: QEMU_MESSAGES.xCheckpointDelayUint32 },
    { params: { 'x-checkpoint-delay': -1 }, message: QEMU_MESSAGES.xCheckpointDelayUint32 },
  ];
  for (const c of paramCases) {
    it(`parameters ${JSON.stringify(c.params)}: "${c.message}"`, async () => {
      expect(checkSaveOptions({ parameters: c.params }).violations.map((x) => x.message)).toEqual([c.message]);
      expect(await refusal('migrate-set-parameters', c.params)).toBe(c.message);
    });
  }

  it('the ends of QEMU\'s ranges are accepted by both', async () => {
    const params = { 'multifd-channels': 255, 'downtime-limit': 2000000, 'x-checkpoint-delay': 4294967295, 'max-bandwidth': Number.MAX_SAFE_INTEGER };
    expect(checkSaveOptions({ parameters: params }).violations).toEqual([]);
    expect(await refusal('migrate-set-parameters', params)).toBeUndefined();
    const low = { 'multifd-channels': 1, 'downtime-limit': 0, 'x-checkpoint-delay': 0, 'max-bandwidth': 0 };
    expect(checkSaveOptions({ parameters: low }).violations).toEqual([]);
    expect(await refusal('migrate-set-parameters', low)).toBeUndefined();
  });

  it('a valid set is accepted as the whole-save view and as the tail view', async () => {
    const o = checkSaveOptions({ capabilities: { multifd: true }, parameters: { 'multifd-channels': 4, 'max-bandwidth': 0 } }).options!;
    expect(await refusal('migrate-set-capabilities', { capabilities: qemuCapabilities(o) })).toBeUndefined();
    expect(await refusal('migrate-set-parameters', { ...qemuParameters(o) })).toBeUndefined();
    const tail = qemuTailSettings(o);
    expect(await refusal('migrate-set-capabilities', { capabilities: tail.capabilities })).toBeUndefined();
    expect(await refusal('migrate-set-parameters', { ...tail.parameters })).toBeUndefined();
    const caps = (await q.cmd('query-migrate-capabilities')) as { capability: string; state: boolean }[];
    expect(caps.filter((c) => c.state).map((c) => c.capability)).toEqual(['x-ignore-shared']);
  });

  /** A fresh QEMU for a `migrate`: a save leaves the source paused (postmigrate). */
  async function migrateWith(caps: Record<string, boolean>, params: Record<string, unknown>, extraArgs: string[] = []): Promise<{ error?: string; file: string }> {
    const file = path.join(work, `m-${Math.random().toString(36).slice(2)}.snap`);
    const m = await Qemu.start({ binary: 'qemu-system-x86_64', args: [...ARGS, ...extraArgs], dir: work });
    try {
      await m.cmd('migrate-set-capabilities', capsOf(caps));
      await m.cmd('migrate-set-parameters', { 'max-bandwidth': 0, ...params });
      const refused = await refusal('migrate', { uri: `file:${file}` }, m);
      if (refused !== undefined) return { error: refused, file };
      try {
        await m.waitMigration(30_000);
        return { file };
      } catch (e) {
        return { error: (e as Error).message, file };
      }
    } finally {
      await m.quit();
    }
  }

  it(`multifd without mapped-ram: both refuse (QEMU at migrate: "${QEMU_MESSAGES.multifdNeedsMappedRam}")`, { timeout: 30_000 }, async () => {
    expect(checkSaveOptions({ capabilities: { multifd: true, 'mapped-ram': false } }).violations).toEqual([
      MAPPED_RAM_OFF,
      v('OPTION_REQUIRES', 'capabilities.multifd', MULTIFD_FILE_MESSAGE),
    ]);
    // Accepted when set...
    expect(await refusal('migrate-set-capabilities', capsOf({ multifd: true }))).toBeUndefined();
    // ...refused at migrate.
    expect((await migrateWith({ multifd: true }, {})).error).toBe(QEMU_MESSAGES.multifdNeedsMappedRam);
  });

  it('known difference: direct-io without multifd is refused by us, accepted and ignored by QEMU 10.0.2', { timeout: 30_000 }, async () => {
    expect(checkSaveOptions({ parameters: { 'direct-io': true } }).violations.map((x) => x.code)).toEqual(['OPTION_REQUIRES']);
    const r = await migrateWith({ 'mapped-ram': true }, { 'direct-io': true });
    expect(r.error).toBeUndefined();
    expect(fs.statSync(r.file).size).toBeGreaterThan(64 << 20);
  });

  it('known difference: direct-io with mapped-ram and multifd is accepted by QEMU (its channels open O_DIRECT), refused by us', async () => {
    expect(checkSaveOptions({ capabilities: { multifd: true }, parameters: { 'direct-io': true } }).violations).toEqual([
      v('OPTION_UNSUPPORTED', 'parameters.direct-io', DIRECT_IO_MESSAGE),
    ]);
    expect(await refusal('migrate-set-capabilities', capsOf({ 'mapped-ram': true, multifd: true }))).toBeUndefined();
    expect(await refusal('migrate-set-parameters', { 'direct-io': true })).toBeUndefined();
  });

  it('known difference: max-bandwidth -1 is refused by us; QEMU reads it as 2^64 - 1', async () => {
    expect(checkSaveOptions({ parameters: { 'max-bandwidth': -1 } }).violations.map((x) => x.code)).toEqual(['OPTION_RANGE']);
    expect(await refusal('migrate-set-parameters', { 'max-bandwidth': -1 })).toBeUndefined();
  });

  it('why the tail drops mapped-ram: with a shared RAM block, x-ignore-shared + mapped-ram fails at migrate; the tail settings save', { timeout: 60_000 }, async () => {
    const mem = path.join(work, 'guest-ram');
    const shared = ['-object', `memory-backend-file,id=ram0,size=64M,mem-path=${mem},share=on`, '-machine', 'memory-backend=ram0'];
    const both = await migrateWith({ 'mapped-ram': true, 'x-ignore-shared': true }, {}, shared);
    expect(both.error).toMatch(/Bad address/);

    const tail = qemuTailSettings(defaultSaveOptions());
    const caps = Object.fromEntries(tail.capabilities.map((c) => [c.capability, c.state]));
    const ok = await migrateWith(caps, { ...tail.parameters, 'max-bandwidth': 0 }, shared);
    expect(ok.error).toBeUndefined();
    // The 64 MiB shared block is left out: the tail is device state and the small ROM blocks.
    expect(fs.statSync(ok.file).size).toBeLessThan(8 << 20);
  });
});
