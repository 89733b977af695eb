/**
 * Defects an independent review found in the integrated issue-13 work,
 * each pinned by a test named after it ("review N ...").
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MACHINE_ALIASES } from '../format/target.js';
import { createSnapshot } from '../writer/create.js';
import { LegacyWriter } from '../writer/legacy-writer.js';
import { SnapshotWriter } from '../writer/snapshot-writer.js';
import { pageBytes } from './helpers/synth.js';

const PS = 4096;
const BIN = path.resolve('dist/analyze/bin.js');
let dir: string;
let n = 0;
const fresh = (name: string): string => path.join(dir, `${n++}-${name}`);
/** A small mapped-ram snapshot with a few non-zero pages. */
async function smallSnapshot(file: string, opts: { force?: boolean } = {}): Promise<void> {
  const w = await SnapshotWriter.create(file, { machine: 'pc-q35-10.0', pageSize: PS, blocks: [{ name: 'pc.ram', usedLength: 64 * PS }], fsync: false, ...opts });
  await w.writePages('pc.ram', 3, Buffer.concat([pageBytes(PS, 1), pageBytes(PS, 2)]));
  await w.writePages('pc.ram', 40, pageBytes(PS, 3));
  await w.finalize();
}

const cli = (args: string[]): { code: number | null; stdout: string; stderr: string } => {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
};

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramsnap-review-fixes-'));
});
afterAll(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('review 1: machine aliases', () => {
  it('review 1 create --machine q35 --arch x86_64 (an alias QEMU never records) exits 2 with BAD_MACHINE naming pc-q35-10.0, nothing written', () => {
    const img = fresh('img.raw');
    fs.writeFileSync(img, Buffer.alloc(64 << 10, 1));
    const out = fresh('out.snap');
    const r = cli(['create', '-o', out, '--machine', 'q35', '--arch', 'x86_64', '--ram', `pc.ram=${img}`]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^ramsnap: BAD_MACHINE: .*alias.*pc-q35-10\.0/);
    expect(fs.existsSync(out)).toBe(false);
  });

  it('review 1 every known alias is refused by create and by both writers, with the field machine', async () => {
    const img = fresh('img.raw');
    fs.writeFileSync(img, Buffer.alloc(64 << 10, 1));
    for (const alias of Object.keys(MACHINE_ALIASES)) {
      const out = fresh(`${alias}.snap`);
      await expect(createSnapshot(out, { images: [{ block: 'ram', file: img }], machine: alias, arch: 'x86_64' })).rejects.toMatchObject({ code: 'BAD_MACHINE', field: 'machine' });
      const blocks = [{ name: 'ram', usedLength: 4096 }];
      await expect(SnapshotWriter.create(out, { machine: alias, pageSize: 4096, blocks })).rejects.toMatchObject({ code: 'BAD_MACHINE', field: 'machine' });
      await expect(LegacyWriter.create(out, { configuration: { machine: alias, capabilities: [] }, pageSize: 4096, blocks })).rejects.toMatchObject({ code: 'BAD_MACHINE', field: 'machine' });
      expect(fs.existsSync(out)).toBe(false);
    }
  });
});

describe('review 2: a replaced file keeps its mode, not its owner', () => {
  const isRoot = process.getuid?.() === 0;

  it.skipIf(!isRoot)('review 2 as root, convert -o X --force over a 0666 file another user made gives root the new file (mode kept); sparsify keeps the user\'s owner', async () => {
    const src = fresh('src.snap');
    await smallSnapshot(src);
    const planted = fresh('planted.snap');
    fs.writeFileSync(planted, 'made by someone else');
    fs.chmodSync(planted, 0o666);
    fs.chownSync(planted, 4321, 4322);
    const r = cli(['convert', src, '-o', planted, '--to', 'mapped-ram', '--force']);
    expect(r.code, r.stderr).toBe(0);
    const st = fs.statSync(planted);
    expect([st.uid, st.gid]).toEqual([0, process.getgid!()]);
    expect((st.mode & 0o777).toString(8)).toBe('666');

    // sparsify rewrites the same file: a user's snapshot stays theirs, with its mode.
    const theirs = fresh('theirs.snap');
    await smallSnapshot(theirs);
    fs.chmodSync(theirs, 0o640);
    fs.chownSync(theirs, 4321, 4322);
    expect(cli(['sparsify', theirs]).code).toBe(0);
    const after = fs.statSync(theirs);
    expect([after.uid, after.gid, (after.mode & 0o777).toString(8)]).toEqual([4321, 4322, '640']);
  });
});
