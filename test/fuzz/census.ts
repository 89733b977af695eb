/**
 * The blocks V8 knows in ramsnap's code when every function is compiled:
 * run as `node --no-lazy census.js`, it starts precise coverage, imports
 * every module of the tracked folders of dist/ and prints the blocks of
 * one take as JSON. A fuzz run's own takes list only the functions that
 * were compiled (called at least once); this adds the rest to the count,
 * so that a function no input reached counts as a block not run.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { CoverageProbe, TRACKED } from './coverage.js';

const dist = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

const probe = new CoverageProbe();
await probe.start();
for (const folder of TRACKED) {
  const dir = path.join(dist, folder);
  const files = fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.js') && !f.endsWith('bin.js'));
  for (const f of files) await import(pathToFileURL(path.join(dir, f)).href);
}
const { known } = await probe.take();
process.stdout.write(JSON.stringify(known));
