/**
 * The flags of `ramsnap save` (and `ramsnap options`): the schema of
 * writer/save-options.ts, spelt as flags. A flag only fills in the same raw
 * object a config file holds; flags win over the file key by key, and the
 * merged object is validated once by checkSaveOptions.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Argv } from 'yargs';
import { OptionCode, RamsnapUsageError, ioError } from '../format/errors.js';
import {
  BUILTIN_POLICIES,
  checkSaveOptions,
  isModulePath,
  mergeOptionInputs,
  type SaveOptions,
  type Violation,
} from '../vm/save-options.js';

export interface SaveFlagArgs {
  config?: string;
  /** One NAME=on|off, a comma-separated list of them, or several (the flag repeated). */
  capability?: string | string[];
  'multifd-channels'?: string;
  'direct-io'?: boolean;
  'downtime-limit'?: string;
  'max-bandwidth'?: string;
  'x-checkpoint-delay'?: string;
  policy?: string;
  threshold?: string;
  'max-iterations'?: string;
  'time-budget'?: string;
  'on-budget'?: string;
}

const GROUP = 'Save options (QEMU names and units; docs/live-save.md §1):';

/**
 * Adds the save-option flags. `config: false` leaves out `--config` (for a
 * command that names its config file another way, like `options --check`).
 * Numbers are taken as strings so that a bad one is reported by the
 * validator with its code, like a bad value in a config file.
 */
export function withSaveOptions<T>(y: Argv<T>, opts: { config?: boolean } = {}): Argv<T & SaveFlagArgs> {
  let a = y as unknown as Argv<T>;
  if (opts.config !== false) {
    a = a.option('config', { type: 'string', group: GROUP, describe: 'JSON file with capabilities, parameters and precopy; flags override it' });
  }
  return a
    // Not `array: true`: an array flag would swallow the positional after it (`--cap multifd=on OUT`).
    .option('capability', {
      alias: 'cap',
      type: 'string',
      group: GROUP,
      describe: 'NAME=on|off (repeat the flag, or separate with commas): multifd (default off); mapped-ram and x-ignore-shared (on, must stay on); xbzrle, postcopy-ram and compress are refused',
    })
    .option('multifd-channels', { type: 'string', group: GROUP, describe: 'parallel writers with multifd, 1..255 (QEMU default 2)' })
    .option('direct-io', { type: 'boolean', group: GROUP, describe: "QEMU's O_DIRECT writes: refused, as Node cannot align its buffers as O_DIRECT requires (--no-direct-io turns a config file's off)" })
    .option('downtime-limit', { type: 'string', group: GROUP, describe: 'tolerated downtime in ms, 0..2000000 (QEMU default 300)' })
    .option('max-bandwidth', { type: 'string', group: GROUP, describe: 'bytes per second, e.g. 1G/s; 0 = no limit (QEMU default 128M/s)' })
    .option('x-checkpoint-delay', { type: 'string', group: GROUP, describe: 'COLO checkpoint period in ms, passed to QEMU (QEMU default 20000)' })
    .option('policy', { type: 'string', group: GROUP, describe: `precopy policy: ${BUILTIN_POLICIES.join(', ')} or a module path (./my-policy.js); default downtime` })
    .option('threshold', { type: 'string', group: GROUP, describe: 'threshold policy: stop iterating below this many pending bytes (default 100M)' })
    .option('max-iterations', { type: 'string', group: GROUP, describe: 'cap on precopy passes, 1..1000 (default 30)' })
    .option('time-budget', { type: 'string', group: GROUP, describe: 'precopy time budget in ms; 0 = none (default)' })
    .option('on-budget', { type: 'string', group: GROUP, describe: 'when the budget runs out: abort (default) or force' }) as unknown as Argv<T & SaveFlagArgs>;
}

/**
 * The raw options object the flags stand for (only what was given), plus
 * the violations the flag syntax itself already shows (`--cap` without
 * NAME=VALUE).
 */
export function flagsToInput(args: SaveFlagArgs): { input: Record<string, Record<string, unknown>>; violations: Violation[] } {
  const violations: Violation[] = [];
  const capabilities: Record<string, unknown> = {};
  const items = ([] as string[]).concat(args.capability ?? []).flatMap((s) => String(s).split(','));
  for (const item of items) {
    const m = /^([^=]+?)=(.*)$/.exec(String(item).trim());
    if (!m) {
      // A bare NAME is refused rather than taken as on: `--cap multifd` reads as well as a request to look it up.
      const hint = /^[^=]+$/.test(String(item).trim()) ? ` (say ${String(item).trim()}=on or ${String(item).trim()}=off)` : '';
      violations.push({ code: OptionCode.OPTION_TYPE, field: 'capabilities', message: `--capability takes NAME=on|off, got ${JSON.stringify(item)}${hint}` });
      continue;
    }
    capabilities[m[1]] = m[2];
  }
  const parameters: Record<string, unknown> = {};
  for (const key of ['multifd-channels', 'direct-io', 'downtime-limit', 'max-bandwidth', 'x-checkpoint-delay'] as const) {
    if (args[key] !== undefined) parameters[key] = args[key];
  }
  const precopy: Record<string, unknown> = {};
  for (const key of ['policy', 'threshold', 'max-iterations', 'time-budget', 'on-budget'] as const) {
    if (args[key] !== undefined) precopy[key] = args[key];
  }
  const input: Record<string, Record<string, unknown>> = {};
  if (Object.keys(capabilities).length) input.capabilities = capabilities;
  if (Object.keys(parameters).length) input.parameters = parameters;
  if (Object.keys(precopy).length) input.precopy = precopy;
  return { input, violations };
}

/**
 * The fields (`capabilities.multifd`, `parameters.downtime-limit`, ...)
 * whose value came from a flag: a violation of one of them is a bad flag
 * (exit 2), of any other a bad config file (exit 1). `capabilities`
 * stands for a --capability that is not NAME=VALUE.
 */
export function flagFields(args: SaveFlagArgs): Set<string> {
  const { input, violations } = flagsToInput(args);
  const fields = new Set(violations.map((v) => v.field));
  for (const [section, values] of Object.entries(input)) for (const key of Object.keys(values)) fields.add(`${section}.${key}`);
  return fields;
}

/**
 * Reads a config file: a JSON object in the schema. A policy path in it
 * is relative to the file's directory (as paths in tsconfig.json are), so
 * it is made absolute here, before flags (relative to the current
 * directory) are merged over it.
 */
export function readConfigFile(file: string): { input?: unknown; violations: Violation[] } {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    // A config file that is not there is a bad argument like any other: reported with the rest.
    return { violations: [{ code: OptionCode.OPTION_CONFIG, field: '(config)', message: ioError(err, file, 'read config file').message }] };
  }
  let input: unknown;
  try {
    input = JSON.parse(text);
  } catch (err) {
    const reason = (err as Error).message;
    return { violations: [{ code: OptionCode.OPTION_CONFIG, field: '(config)', message: `config file ${file} is not JSON: ${reason}` }] };
  }
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    return {
      violations: [{ code: OptionCode.OPTION_CONFIG, field: '(config)', message: `config file ${file} must hold a JSON object, got ${Array.isArray(input) ? 'an array' : JSON.stringify(input)}` }],
    };
  }
  const precopy = (input as Record<string, unknown>).precopy;
  if (typeof precopy === 'object' && precopy !== null && !Array.isArray(precopy)) {
    const policy = (precopy as Record<string, unknown>).policy;
    if (typeof policy === 'string' && isModulePath(policy) && !path.isAbsolute(policy)) {
      input = { ...input, precopy: { ...precopy, policy: path.resolve(path.dirname(path.resolve(file)), policy) } };
    }
  }
  return { input, violations: [] };
}

/**
 * Config file (if any), then flags over it, validated once. Returns every
 * violation; saveOptionsFromArgv is the throwing form for commands.
 */
export function resolveSaveOptions(args: SaveFlagArgs, configFile = args.config): { options?: SaveOptions; violations: Violation[] } {
  let fileInput: unknown = {};
  const violations: Violation[] = [];
  if (configFile !== undefined) {
    const read = readConfigFile(configFile);
    violations.push(...read.violations);
    if (read.input !== undefined) fileInput = read.input;
  }
  const flags = flagsToInput(args);
  violations.push(...flags.violations);
  const checked = checkSaveOptions(mergeOptionInputs(fileInput, flags.input));
  violations.push(...checked.violations);
  return violations.length ? { violations } : { options: checked.options, violations };
}

/**
 * The options for `ramsnap save`: throws one RamsnapUsageError (exit 2,
 * one line) carrying the first violation's code and field and naming
 * every violation.
 */
export function saveOptionsFromArgv(args: SaveFlagArgs): SaveOptions {
  const { options, violations } = resolveSaveOptions(args);
  if (options) return options;
  throw violationsError(violations);
}

export function violationsError(violations: Violation[]): RamsnapUsageError {
  const [first, ...rest] = violations;
  const more = rest.length ? ` (and ${rest.length} more: ${rest.map((v) => `${v.code} ${v.field}: ${v.message}`).join('; ')})` : '';
  return new RamsnapUsageError(first.code, `${first.field}: ${first.message}${more}`, first.field);
}
