/**
 * The real QEMU snapshots the differential test mutates, each with what a
 * fresh QEMU needs to load it: binary, machine, -m, accelerator, options and
 * capabilities.
 *
 * Only files this machine's QEMU can load unchanged are seeds. The committed
 * x86 fixtures saved under KVM carry a kvmclock section that a TCG QEMU
 * refuses ("Unknown savevm section or instance 'kvmclock' 0"), so without
 * /dev/kvm they are left out, and the same q35 guests (mapped-ram, and a
 * legacy stream whose pages were sent more than once) are saved again here
 * under TCG by fixtures/make.ts, once, into a cache directory.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fixtureSpecs, makeFixture, type FixtureSpec } from '../../fixtures/make.js';
import { kvmAvailable } from '../../fixtures/qemu.js';
import { fixtureFiles, loadCatalog, type CatalogEntry } from '../helpers/fixtures.js';
import { SparseImage, CHUNK } from '../fuzz/image.js';
import { buildFixtureMap, type FixtureMap } from '../fuzz/map.js';

/** How a fresh QEMU is started to load a seed's mutations. */
export interface LoadConfig {
  binary: string;
  machine: string;
  /** The machine type the configuration section names (pc-q35-10.0). */
  machineType: string;
  memory: number;
  accel: 'kvm' | 'tcg';
  extraArgs: string[];
  mappedRam: boolean;
  /** Stream offset: ",offset=" on the URI and --offset for ramsnap. */
  offset?: number;
  /** Main RAM block, compared with QEMU's pmemsave from guest physical 0. */
  ramBlock: string;
}

export interface DiffSeed {
  name: string;
  image: SparseImage;
  map: FixtureMap;
  load: LoadConfig;
}

/** Committed q35/pc fixtures small enough for the test (16 MiB guests, one stream, no libvirt header). */
const COMMITTED = ['q35-mapped-ram', 'q35-legacy-live', 'pc-mapped-ram', 'pc-legacy', 'q35-suppress-vmdesc', 'q35-no-section-footer', 'q35-background-snapshot', 'q35-offset'];
/** Fixtures remade under TCG when their committed file needs KVM. */
const REMADE = ['q35-mapped-ram', 'q35-legacy-live'];

function loadConfig(e: Pick<CatalogEntry, 'binary' | 'machine' | 'machineType' | 'memory' | 'accel' | 'extraArgs' | 'mappedRam' | 'open' | 'ramBlock'>): LoadConfig {
  return {
    binary: e.binary,
    machine: e.machine,
    machineType: e.machineType,
    memory: e.memory,
    accel: e.accel === 'kvm' ? 'kvm' : 'tcg',
    extraArgs: e.extraArgs ?? [],
    mappedRam: e.mappedRam,
    ...(e.open.offset !== undefined ? { offset: e.open.offset } : {}),
    ramBlock: e.ramBlock,
  };
}

function qemuVersion(binary: string): string {
  const r = spawnSync(binary, ['--version'], { encoding: 'utf8' });
  return /version ([\d.]+)/.exec(r.stdout ?? '')?.[1] ?? 'unknown';
}

/** Reads a plain (sparse) file into an image, keeping only chunks that are not all zero. */
function loadPlainImage(file: string): SparseImage {
  const fd = fs.openSync(file, 'r');
  const size = fs.fstatSync(fd).size;
  const chunks = new Map<number, Uint8Array>();
  const buf = Buffer.alloc(1 << 20);
  try {
    for (let at = 0; at < size; at += buf.length) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, size - at), at);
      for (let o = 0; o < n; o += CHUNK) {
        const c = buf.subarray(o, Math.min(n, o + CHUNK));
        if (c.some((x) => x !== 0)) {
          const keep = new Uint8Array(CHUNK);
          keep.set(c);
          chunks.set((at + o) / CHUNK, keep);
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return new SparseImage(size, chunks);
}

/**
 * A committed fixture saved again under TCG, cached in `cacheDir` by QEMU
 * version: a live legacy save takes a few seconds, the rest well under one.
 */
async function remade(name: string, cacheDir: string, log: (s: string) => void): Promise<{ image: SparseImage; load: LoadConfig }> {
  const base = fixtureSpecs().find((s) => s.name === name) as FixtureSpec;
  const spec: FixtureSpec = { ...base, name: `${name}-tcg`, accel: 'tcg' };
  const dir = path.join(cacheDir, `qemu-${qemuVersion(spec.binary)}`);
  const snap = path.join(dir, `${spec.name}.snap`);
  const meta = path.join(dir, `${spec.name}.json`);
  if (!fs.existsSync(meta)) {
    fs.mkdirSync(dir, { recursive: true });
    const t0 = Date.now();
    const made = await makeFixture(spec, dir, 3);
    fs.rmSync(made.pmemPath, { force: true });
    if (made.snapPath !== snap) fs.renameSync(made.snapPath, snap);
    fs.writeFileSync(meta, JSON.stringify(loadConfig(made.entry)));
    log(`seed ${spec.name}: saved by ${spec.binary} under TCG in ${Date.now() - t0} ms (${snap})`);
  }
  return { image: loadPlainImage(snap), load: JSON.parse(fs.readFileSync(meta, 'utf8')) as LoadConfig };
}

export function defaultCacheDir(): string {
  return process.env.DIFF_CACHE ?? path.join(os.tmpdir(), 'ramsnap-differential-seeds');
}

/** The seeds this machine's QEMU can load; `only` keeps those named (all when empty). */
export async function loadSeeds(opts: { cacheDir?: string; only?: string[]; log?: (s: string) => void } = {}): Promise<DiffSeed[]> {
  const log = opts.log ?? (() => undefined);
  const kvm = kvmAvailable();
  const catalog = loadCatalog().fixtures;
  const seeds: DiffSeed[] = [];
  const want = (n: string): boolean => !opts.only?.length || opts.only.includes(n);
  for (const name of COMMITTED) {
    const e = catalog.find((f) => f.name === name);
    if (!e || (e.accel === 'kvm' && !kvm)) continue;
    if (!want(name)) continue;
    const { snap } = await fixtureFiles(name);
    const image = loadPlainImage(snap);
    seeds.push({ name, image, map: await buildFixtureMap(name, image, e.open.offset), load: loadConfig(e) });
  }
  if (!kvm) {
    for (const name of REMADE) {
      if (!want(`${name}-tcg`)) continue;
      const { image, load } = await remade(name, opts.cacheDir ?? defaultCacheDir(), log);
      seeds.push({ name: `${name}-tcg`, image, map: await buildFixtureMap(`${name}-tcg`, image, load.offset), load });
    }
  }
  return seeds;
}
