/**
 * The seeds the fuzzer mutates: every committed real QEMU fixture
 * (fixtures/data/catalog.json) and the save that was killed half-way
 * (fixtures/data/unfinished), decompressed into memory as sparse images,
 * each with its structure map.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fixturesDataDir, loadCatalog } from '../helpers/fixtures.js';
import { loadGzImage, type SparseImage } from './image.js';
import { buildFixtureMap, type FixtureMap } from './map.js';

export interface Seed {
  name: string;
  image: SparseImage;
  /** Stream offset to open with (a bare offset= fixture). */
  offset?: number;
  map: FixtureMap;
  /** The seed a delta seed was made against (diff and apply compare with it); default: the seed itself. */
  reference?: string;
}

/** Loads the fixtures whose names match `only` (all when empty). */
export async function loadCorpus(only: string[] = []): Promise<Seed[]> {
  const dir = fixturesDataDir();
  const list: { name: string; file: string; offset?: number }[] = loadCatalog().fixtures.map((f) => ({ name: f.name, file: path.join(dir, f.snap.file), offset: f.open.offset }));
  const unfinished = path.join(dir, 'unfinished', 'unfinished.json');
  if (fs.existsSync(unfinished)) {
    const u = JSON.parse(fs.readFileSync(unfinished, 'utf8')) as { file: string };
    list.push({ name: u.file.replace(/\.snap\.gz$/, ''), file: path.join(dir, 'unfinished', u.file) });
  }
  const chosen = only.length ? list.filter((f) => only.includes(f.name)) : list;
  if (only.length && chosen.length !== only.length) {
    throw new Error(`unknown fixture in ${only.join(',')}; there are ${list.map((f) => f.name).join(', ')}`);
  }
  const seeds: Seed[] = [];
  for (const f of chosen) {
    const image = await loadGzImage(f.file);
    seeds.push({ name: f.name, image, offset: f.offset, map: await buildFixtureMap(f.name, image, f.offset) });
  }
  return seeds;
}
