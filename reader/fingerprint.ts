/**
 * A content fingerprint of a snapshot's memory: the same for any two files
 * that hold the same memory, whatever their layout (mapped-ram or legacy,
 * sparse or not, stale bytes under clear bits). Per block, SHA-256 over
 * each non-zero page as (be64 page index, page bytes); over the blocks in
 * name order, SHA-256 of (name, NUL, be64 used length, the block's digest).
 * Absent pages and pages of zeros are the same memory and add nothing.
 */
import { createHash, type Hash } from 'node:crypto';
import { nonZeroRuns, zeroPageOf } from '../format/zero-pages.js';
import type { RamBlock } from './model.js';
import type { Snapshot } from './snapshot.js';

const CHUNK_PAGES = 64;

/** Hashes one block's pages as they are handed over, in page order. */
export class BlockHasher {
  private readonly hash: Hash = createHash('sha256');
  private readonly index = Buffer.alloc(8);
  private readonly zero: Buffer;

  constructor(readonly block: { name: string; usedLength: number; pageSize: number }) {
    this.zero = zeroPageOf(block.pageSize);
  }

  /** `count` pages from page `first`, in `bytes`; zero pages are skipped. */
  pages(first: number, count: number, bytes: Buffer): void {
    const ps = this.block.pageSize;
    for (const [s, e] of nonZeroRuns(bytes, count, this.zero)) {
      for (let p = s; p < e; p++) {
        this.index.writeBigUInt64BE(BigInt(first + p));
        this.hash.update(this.index);
        this.hash.update(bytes.subarray(p * ps, (p + 1) * ps));
      }
    }
  }

  digest(): Buffer {
    return this.hash.digest();
  }
}

/** Combines per-block digests into the snapshot's fingerprint. */
export function combineFingerprint(blocks: { name: string; usedLength: number; digest: Buffer }[]): string {
  const h = createHash('sha256');
  const len = Buffer.alloc(8);
  for (const b of [...blocks].sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0))) {
    h.update(Buffer.from(b.name, 'latin1'));
    h.update(Buffer.from([0]));
    len.writeBigUInt64BE(BigInt(b.usedLength));
    h.update(len);
    h.update(b.digest);
  }
  return `sha256:${h.digest('hex')}`;
}

/** The fingerprint of a snapshot's memory: one read per chunk of present pages. */
export async function memoryFingerprint(snap: Snapshot): Promise<string> {
  const digests: { name: string; usedLength: number; digest: Buffer }[] = [];
  for (const block of snap.blocks) digests.push({ name: block.name, usedLength: block.usedLength, digest: await blockDigest(snap, block) });
  return combineFingerprint(digests);
}

async function blockDigest(snap: Snapshot, block: RamBlock): Promise<Buffer> {
  const h = new BlockHasher(block);
  const buf = Buffer.allocUnsafe(CHUNK_PAGES * block.pageSize);
  for (const r of snap.presentRuns(block, 0, block.pages, CHUNK_PAGES)) {
    await snap.read(block, r.first * block.pageSize, r.count * block.pageSize, buf);
    h.pages(r.first, r.count, buf);
  }
  return h.digest();
}
