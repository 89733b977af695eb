/**
 * A snapshot file as the fuzzer holds it: a size and the 4 KiB chunks that
 * are not all zero. Real fixtures are 20-160 MiB of which well under 1 MiB
 * is data, so a whole mutated file costs a few hundred KiB to hold and to
 * write back to disk as a sparse file.
 *
 * Images are copy-on-write: a mutation clones only the chunks it touches.
 */
import fs from 'node:fs';
import zlib from 'node:zlib';

export const CHUNK = 4096;

export class SparseImage {
  constructor(
    public size: number,
    /** Chunk index -> CHUNK bytes (the last chunk may reach past `size`; those bytes are ignored). */
    public chunks: Map<number, Uint8Array>,
  ) {}

  clone(): SparseImage {
    return new SparseImage(this.size, new Map(this.chunks));
  }

  /** Bytes [offset, offset + length) (zeros past the end), into `into` when given. */
  read(offset: number, length: number, into?: Uint8Array): Uint8Array {
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    if (into) out.fill(0);
    let at = offset;
    while (at < offset + length) {
      const ci = Math.floor(at / CHUNK);
      const within = at - ci * CHUNK;
      const take = Math.min(CHUNK - within, offset + length - at);
      const c = this.chunks.get(ci);
      if (c && at < this.size) out.set(c.subarray(within, within + Math.min(take, this.size - at)), at - offset);
      at += take;
    }
    return out;
  }

  /** Overwrites bytes at `offset`, growing the file if they reach past its end. */
  write(offset: number, data: Uint8Array): void {
    let done = 0;
    while (done < data.length) {
      const at = offset + done;
      const ci = Math.floor(at / CHUNK);
      const within = at - ci * CHUNK;
      const take = Math.min(CHUNK - within, data.length - done);
      // Copy on write: the base image's chunks are shared by every mutation.
      const c = new Uint8Array(CHUNK);
      const old = this.chunks.get(ci);
      if (old) c.set(old);
      if (old && ci * CHUNK + CHUNK > this.size) c.fill(0, Math.max(0, this.size - ci * CHUNK));
      c.set(data.subarray(done, done + take), within);
      this.chunks.set(ci, c);
      done += take;
    }
    this.size = Math.max(this.size, offset + data.length);
  }

  /** The chunks of [offset, offset + length) that hold data, clipped to it (holes stay holes, and cost nothing). */
  extents(offset: number, length: number): { offset: number; data: Uint8Array }[] {
    const out: { offset: number; data: Uint8Array }[] = [];
    const end = Math.min(offset + length, this.size);
    for (const ci of [...this.chunks.keys()].sort((a, b) => a - b)) {
      const start = ci * CHUNK;
      const from = Math.max(start, offset);
      const to = Math.min(start + CHUNK, end);
      if (from < to) out.push({ offset: from, data: (this.chunks.get(ci) as Uint8Array).slice(from - start, to - start) });
    }
    return out;
  }

  /** Cuts the file at `size` (or grows it with zeros). */
  resize(size: number): void {
    if (size < this.size) {
      for (const ci of [...this.chunks.keys()]) if (ci * CHUNK >= size) this.chunks.delete(ci);
      const last = Math.floor(size / CHUNK);
      const c = this.chunks.get(last);
      if (c && size % CHUNK) {
        const z = c.slice();
        z.fill(0, size % CHUNK);
        this.chunks.set(last, z);
      }
    }
    this.size = size;
  }

  /**
   * Removes `remove` bytes at `at` and inserts `insert` there, then `hole`
   * zero bytes that take no memory: everything after moves.
   */
  splice(at: number, remove: number, insert: Uint8Array, hole = 0): void {
    const tailStart = Math.min(this.size, at + remove);
    const tailChunks: { offset: number; data: Uint8Array }[] = [];
    for (const [ci, c] of this.chunks) {
      const start = ci * CHUNK;
      const end = Math.min(start + CHUNK, this.size);
      if (end <= tailStart) continue;
      const from = Math.max(start, tailStart);
      tailChunks.push({ offset: from, data: c.slice(from - start, end - start) });
    }
    const oldSize = this.size;
    this.resize(Math.min(at, oldSize));
    this.size = at;
    if (insert.length) this.write(at, insert);
    const shift = at + insert.length + hole - tailStart;
    for (const t of tailChunks) this.write(t.offset + shift, t.data);
    this.size = Math.max(at + insert.length + hole, oldSize + shift);
  }

  /** Writes the image as a sparse file (holes where there are no chunks). */
  writeFile(path: string): void {
    const fd = fs.openSync(path, 'w');
    try {
      fs.ftruncateSync(fd, this.size);
      const sorted = [...this.chunks.keys()].sort((a, b) => a - b);
      // Adjacent chunks go out in one write.
      for (let i = 0; i < sorted.length; ) {
        let j = i + 1;
        while (j < sorted.length && sorted[j] === sorted[j - 1] + 1) j++;
        const start = sorted[i] * CHUNK;
        const end = Math.min((sorted[j - 1] + 1) * CHUNK, this.size);
        if (end > start) {
          const buf = Buffer.allocUnsafe(end - start);
          for (let k = i; k < j; k++) {
            const off = (sorted[k] - sorted[i]) * CHUNK;
            buf.set((this.chunks.get(sorted[k]) as Uint8Array).subarray(0, Math.min(CHUNK, end - start - off)), off);
          }
          fs.writeSync(fd, buf, 0, buf.length, start);
        }
        i = j;
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /** The chunks as one transferable structure (for a worker). */
  pack(): PackedImage {
    const keys = [...this.chunks.keys()].sort((a, b) => a - b);
    const data = new Uint8Array(keys.length * CHUNK);
    keys.forEach((k, i) => data.set(this.chunks.get(k) as Uint8Array, i * CHUNK));
    return { size: this.size, keys, data };
  }

  static unpack(p: PackedImage): SparseImage {
    const chunks = new Map<number, Uint8Array>();
    p.keys.forEach((k, i) => chunks.set(k, p.data.subarray(i * CHUNK, (i + 1) * CHUNK)));
    return new SparseImage(p.size, chunks);
  }
}

export interface PackedImage {
  size: number;
  keys: number[];
  data: Uint8Array;
}

function isZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** Decompresses a gzipped fixture into an image, keeping only chunks that are not all zero. */
export async function loadGzImage(path: string): Promise<SparseImage> {
  const chunks = new Map<number, Uint8Array>();
  let size = 0;
  const pending = new Uint8Array(CHUNK);
  let fill = 0;
  const flush = (): void => {
    const c = pending.subarray(0, fill);
    if (!isZero(c)) {
      const keep = new Uint8Array(CHUNK);
      keep.set(c);
      chunks.set(size / CHUNK, keep);
    }
    size += fill;
    fill = 0;
  };
  for await (const piece of fs.createReadStream(path).pipe(zlib.createGunzip()) as AsyncIterable<Buffer>) {
    let at = 0;
    while (at < piece.length) {
      const take = Math.min(CHUNK - fill, piece.length - at);
      pending.set(piece.subarray(at, at + take), fill);
      fill += take;
      at += take;
      if (fill === CHUNK) flush();
    }
  }
  if (fill) flush();
  return new SparseImage(size, chunks);
}
