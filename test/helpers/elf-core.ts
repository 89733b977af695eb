/**
 * A small reader of the ELF64 little-endian cores QEMU's dump-guest-memory
 * and `ramsnap export` write: e_machine, the program headers, the PT_NOTE
 * bytes and guest-physical reads through the PT_LOADs (p_paddr). Written
 * from the System V gABI for the tests, apart from format/elf.ts, so that
 * a mistake there cannot hide in the check.
 */
import fs from 'node:fs';

/** A range of guest-physical addresses, [start, end). */
export type Range = [number, number];

const ELF64_EHDR_SIZE = 64;
const ELF64_PHDR_SIZE = 56;
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const ET_CORE = 4;
const PT_LOAD = 1;
const PT_NOTE = 4;
const PN_XNUM = 0xffff;

const hex = (n: number): string => `0x${n.toString(16)}`;

interface Segment {
  type: number;
  offset: number;
  paddr: number;
  filesz: number;
}

export class ElfCore {
  private constructor(
    readonly file: string,
    private readonly fd: number,
    readonly machine: number,
    readonly segments: Segment[],
  ) {}

  static open(file: string): ElfCore {
    const fd = fs.openSync(file, 'r');
    const h = Buffer.alloc(ELF64_EHDR_SIZE);
    fs.readSync(fd, h, 0, h.length, 0);
    const fail = (what: string): never => {
      fs.closeSync(fd);
      throw new Error(`${file}: not ${what}`);
    };
    if (h.subarray(0, 4).toString('latin1') !== '\x7fELF') fail('an ELF file');
    if (h[4] !== ELFCLASS64 || h[5] !== ELFDATA2LSB) fail('ELFCLASS64, little-endian');
    if (h.readUInt16LE(16) !== ET_CORE) fail('a core (ET_CORE)');
    const phoff = Number(h.readBigUInt64LE(32));
    const phentsize = h.readUInt16LE(54);
    const phnum = h.readUInt16LE(56);
    if (phentsize !== ELF64_PHDR_SIZE) fail(`${ELF64_PHDR_SIZE}-byte program headers`);
    if (phnum === PN_XNUM) fail('counting its program headers in e_phnum (PN_XNUM is not read here)');
    const ph = Buffer.alloc(phnum * phentsize);
    fs.readSync(fd, ph, 0, ph.length, phoff);
    const segments: Segment[] = [];
    for (let i = 0; i < phnum; i++) {
      const at = i * phentsize;
      segments.push({
        type: ph.readUInt32LE(at), // p_type
        offset: Number(ph.readBigUInt64LE(at + 8)), // p_offset
        paddr: Number(ph.readBigUInt64LE(at + 24)), // p_paddr
        filesz: Number(ph.readBigUInt64LE(at + 32)), // p_filesz
      });
    }
    return new ElfCore(file, fd, h.readUInt16LE(18), segments);
  }

  get loads(): Segment[] {
    return this.segments.filter((s) => s.type === PT_LOAD);
  }

  /** The guest-physical addresses the PT_LOADs cover, adjacent segments merged; overlapping ones are an error (which bytes would be meant?). */
  union(): Range[] {
    const out: Range[] = [];
    for (const s of [...this.loads].sort((a, b) => a.paddr - b.paddr)) {
      const last = out[out.length - 1];
      if (last && s.paddr < last[1]) throw new Error(`${this.file}: PT_LOAD at ${hex(s.paddr)} overlaps the one before (to ${hex(last[1])})`);
      if (last && s.paddr === last[1]) last[1] += s.filesz;
      else out.push([s.paddr, s.paddr + s.filesz]);
    }
    return out;
  }

  /** The PT_NOTE segment's bytes. */
  noteBytes(): Buffer {
    const notes = this.segments.filter((s) => s.type === PT_NOTE);
    if (notes.length !== 1) throw new Error(`${this.file}: ${notes.length} PT_NOTE segments, not one`);
    const out = Buffer.alloc(notes[0].filesz);
    fs.readSync(this.fd, out, 0, out.length, notes[0].offset);
    return out;
  }

  /** The notes as name/type, in file order (Elf64_Nhdr: namesz, descsz, type; name and desc padded to 4). */
  noteList(): string[] {
    const b = this.noteBytes();
    const out: string[] = [];
    const pad4 = (n: number): number => (n + 3) & ~3;
    for (let at = 0; at + 12 <= b.length; ) {
      const namesz = b.readUInt32LE(at);
      const descsz = b.readUInt32LE(at + 4);
      const name = b.subarray(at + 12, at + 12 + namesz).toString('latin1').replace(/\0+$/, '');
      out.push(`${name}/${b.readUInt32LE(at + 8)}`);
      at += 12 + pad4(namesz) + pad4(descsz);
    }
    return out;
  }

  /** Guest-physical bytes [addr, addr + into.length), across adjacent segments. */
  read(addr: number, into: Buffer): Buffer {
    for (let done = 0; done < into.length; ) {
      const a = addr + done;
      const s = this.loads.find((l) => a >= l.paddr && a < l.paddr + l.filesz);
      if (!s) throw new Error(`${this.file}: no PT_LOAD holds ${hex(a)}`);
      const n = Math.min(into.length - done, s.paddr + s.filesz - a);
      fs.readSync(this.fd, into, done, n, s.offset + (a - s.paddr));
      done += n;
    }
    return into;
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
