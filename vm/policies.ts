/**
 * Built-in precopy policies, and loading a user's.
 *
 * A policy is a plain function of the stats of the pass just done (see
 * PrecopyStats) answering continue, stop-and-copy or abort. The three here
 * come from the systems that made the choice before us; SPEC.md (live save)
 * and the benchmark table compare them.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { RamsnapError, RamsnapUsageError } from '../format/errors.js';
import type { PrecopyDecision, PrecopyPolicy, PrecopyStats } from './precopy.js';

export const MiB = 1 << 20;

export interface ClassicOptions {
  /** Stop once fewer pages than this are dirty (default 50). */
  dirtyPages?: number;
  /** Stop after this many passes whatever is dirty (default 5). */
  maxIterations?: number;
}

/**
 * Xen's simple_precopy_policy (libxc xc_sr_save.c, since the precopy policy
 * interface of Xen 4.11): stop when fewer than 50 pages are dirty, or after
 * 5 iterations. A source that cannot count dirty pages (-1) is judged by its
 * estimate of the pending bytes.
 */
export function classicPolicy(o: ClassicOptions = {}): PrecopyPolicy {
  const dirty = o.dirtyPages ?? 50;
  const max = o.maxIterations ?? 5;
  return (s) => {
    const pages = s.dirtyPages >= 0 ? s.dirtyPages : s.pendingBytes / s.pageSize;
    return pages < dirty || s.iteration >= max ? 'stop-and-copy' : 'continue';
  };
}

export interface ThresholdOptions {
  /** Stop once pending bytes are below this (default 100 MiB). */
  thresholdBytes?: number;
  /** Stop after this many passes (default 10). */
  maxIterations?: number;
}

/**
 * A fixed pending-bytes threshold, as COLO checkpoints once the dirty RAM
 * left is small: stop when pending bytes fall below 100 MiB, or after 10
 * iterations. It bounds what is copied while paused, not the time.
 */
export function thresholdPolicy(o: ThresholdOptions = {}): PrecopyPolicy {
  const threshold = o.thresholdBytes ?? 100 * MiB;
  const max = o.maxIterations ?? 10;
  return (s) => (s.pendingBytes < threshold || s.iteration >= max ? 'stop-and-copy' : 'continue');
}

export interface DowntimeOptions {
  /** The pause this policy aims for, in ms (default 300, QEMU's downtime-limit default). */
  downtimeLimitMs?: number;
  /** Give up converging after this long (ms; default: no budget)... */
  timeBudgetMs?: number;
  /** ...and then stop-and-copy anyway ('force', default) or abort. */
  onBudget?: 'abort' | 'force';
  /** Hard cap on passes (default: none). */
  maxIterations?: number;
  /** Passes in a row without pending bytes shrinking by a tenth, after which more passes are deemed useless (default 3). */
  stallPasses?: number;
}

/**
 * QEMU's own rule (migration_iteration_run: switch over once the pending
 * size is below bandwidth x downtime-limit), with the time a pass spends
 * finding dirty pages added: a hashing source scans all memory again while
 * the guest is paused. That scan is a floor no further pass can lower, so
 * the policy also stops once the copying alone fits the limit, and when
 * passes stop making progress (the guest dirties as fast as we copy), where
 * QEMU would iterate until management software gave up. A time budget
 * forces the stop-and-copy or aborts.
 */
export function downtimePolicy(o: DowntimeOptions = {}): PrecopyPolicy {
  const limit = o.downtimeLimitMs ?? 300;
  const budget = o.timeBudgetMs ?? Infinity;
  const onBudget = o.onBudget ?? 'force';
  const max = o.maxIterations ?? Infinity;
  const stallPasses = o.stallPasses ?? 3;
  let best = Infinity;
  let stalled = 0;
  return (s) => {
    if (expectedDowntimeMs(s) <= limit || copyMs(s) <= limit) return 'stop-and-copy';
    if (s.elapsedMs >= budget) return onBudget === 'force' ? 'stop-and-copy' : 'abort';
    if (s.pendingBytes < best * 0.9) {
      best = s.pendingBytes;
      stalled = 0;
    } else if (++stalled >= stallPasses) {
      return 'stop-and-copy';
    }
    return s.iteration >= max ? 'stop-and-copy' : 'continue';
  };
}

/** Milliseconds to write the pending bytes at the measured bandwidth. */
function copyMs(s: PrecopyStats): number {
  if (s.pendingBytes === 0 || s.bandwidth === Infinity) return 0;
  return s.bandwidth > 0 ? (s.pendingBytes / s.bandwidth) * 1000 : Infinity;
}

/** The pause a stop-and-copy would take now: the scan plus the pending bytes at the measured bandwidth. */
export function expectedDowntimeMs(s: PrecopyStats): number {
  return s.scanMs + copyMs(s);
}

export const BUILTIN_POLICIES = ['classic', 'threshold', 'downtime'] as const;
export type BuiltinPolicy = (typeof BUILTIN_POLICIES)[number];

export interface PolicySettings {
  maxIterations?: number;
  thresholdBytes?: number;
  downtimeLimitMs?: number;
  timeBudgetMs?: number;
  onBudget?: 'abort' | 'force';
}

/** A built-in policy by name, with the settings that apply to it. */
export function builtinPolicy(name: BuiltinPolicy, s: PolicySettings = {}): PrecopyPolicy {
  switch (name) {
    case 'classic':
      return classicPolicy({ maxIterations: s.maxIterations });
    case 'threshold':
      return thresholdPolicy({ thresholdBytes: s.thresholdBytes, maxIterations: s.maxIterations });
    case 'downtime':
      return downtimePolicy(s);
  }
}

/** A built-in name, or the path of an ES module whose default export is a policy function. */
export async function loadPolicy(spec: string, s: PolicySettings = {}): Promise<PrecopyPolicy> {
  if ((BUILTIN_POLICIES as readonly string[]).includes(spec)) return builtinPolicy(spec as BuiltinPolicy, s);
  const file = path.resolve(spec);
  if (!fs.existsSync(file)) {
    throw new RamsnapUsageError('BAD_POLICY', `policy ${JSON.stringify(spec)} is neither ${BUILTIN_POLICIES.join(', ')} nor an existing module file`, 'policy');
  }
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(file).href)) as { default?: unknown };
  } catch (err) {
    throw new RamsnapUsageError('BAD_POLICY', `cannot load policy module ${file}: ${(err as Error).message}`, 'policy');
  }
  if (typeof mod.default !== 'function') {
    throw new RamsnapUsageError('BAD_POLICY', `policy module ${file} has no default export function`, 'policy');
  }
  return guarded(mod.default as PrecopyPolicy, file);
}

/** A user's policy that throws or answers nonsense ends the save with a clear code. */
function guarded(policy: PrecopyPolicy, name: string): PrecopyPolicy {
  return async (stats) => {
    let d: PrecopyDecision;
    try {
      d = await policy(stats);
    } catch (err) {
      throw new RamsnapError('POLICY_FAILED', `policy ${name} threw: ${(err as Error)?.message ?? String(err)}`);
    }
    return d;
  };
}
