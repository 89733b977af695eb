/**
 * Bugs the fuzzer found (npm run fuzz, test/fuzz/), one `it` per bug,
 * named after what it pins (node-tar's test/ghsa-*.ts). Each builds its
 * input from a real QEMU fixture with a fuzz recipe, the same operations
 * the fuzzer applied (reduced to the one that matters), so the input is
 * deterministic and the test says which structure was damaged.
 *
 * Commands run in-process exactly as bin.js runs them (buildCli, report()
 * on a throw), with stdout and stderr captured.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { RamsnapError } from '../format/errors.js';
import { cliInProcess, type CliOutcome } from './fuzz/check.js';
import { loadCorpus, type Seed } from './fuzz/corpus.js';
import { applyRecipe, type Op } from './fuzz/mutate.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-regressions-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const seeds = new Map<string, Promise<Seed>>();
function seed(name: string): Promise<Seed> {
  if (!seeds.has(name)) seeds.set(name, loadCorpus([name]).then((s) => s[0]));
  return seeds.get(name) as Promise<Seed>;
}

let n = 0;
/** The fixture with `ops` applied, written as a sparse file; returns its path. */
async function mutated(fixture: string, ops: (s: Seed) => Op[]): Promise<{ file: string; seed: Seed }> {
  const s = await seed(fixture);
  const file = path.join(tmp, `${fixture}-${++n}.snap`);
  applyRecipe(s.image, { fixture, origin: 'regression', ops: ops(s) }).writeFile(file);
  return { file, seed: s };
}

/** A fresh directory under the test's temp dir. */
function freshDir(name: string): string {
  const d = path.join(tmp, `${name}-${++n}`);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** Terminal control characters other than newline. */
const CONTROL = /[\x00-\x09\x0b-\x1f\x7f-\x9f]/;

function expectNoCrash(r: CliOutcome): void {
  if ('thrown' in r) expect(r.thrown, String((r.thrown as Error)?.stack)).toBeInstanceOf(RamsnapError);
  expect([0, 1, 2]).toContain(r.exit);
}

describe('regressions found by the fuzzer', () => {
  it('extract: a 255-byte block name still gives a file name the file system accepts (was IO_ENAMETOOLONG)', async () => {
    // pc-legacy: a legacy stream has no absolute offsets, so the name can grow in place (every copy: the block list and the page records).
    const { file, seed: s } = await mutated('pc-legacy', (s) => {
      const nm = s.map.names.find((x) => x.kind === 'block' && x.name === 'pc.ram');
      if (!nm) throw new Error('pc-legacy has no pc.ram');
      return [{ op: 'rename', copies: nm.copies, hex: Buffer.from('A'.repeat(255), 'latin1').toString('hex'), why: 'pc.ram renamed to 255 bytes' }];
    });
    const out = freshDir('long-name');
    const r = await cliInProcess(['extract', '--json', file, '-o', out]);
    expectNoCrash(r);
    expect(r.stderr).toBe('');
    expect(r.exit).toBe(0);
    const outputs = JSON.parse(r.stdout).outputs as { block: string; path: string }[];
    const long = outputs.find((o) => o.block === 'A'.repeat(255));
    expect(long).toBeDefined();
    expect(Buffer.byteLength(path.basename(long!.path))).toBeLessThanOrEqual(255);
    expect(fs.statSync(long!.path).size).toBe(s.map.blocks.find((b) => b.name === 'pc.ram')?.usedLength);
  });
});
