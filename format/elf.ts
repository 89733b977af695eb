/**
 * ELF64 core files as QEMU's dump-guest-memory writes them (dump/dump.c,
 * paging off): an ELF header, program headers (one PT_NOTE, then one
 * PT_LOAD per guest-physical range, p_vaddr = p_paddr = the guest-physical
 * address), the notes, then the memory. Pure encoding: the layout of the
 * file (where each segment's bytes go) is decided by the exporter.
 *
 * Field offsets follow the System V gABI (Elf64_Ehdr, Elf64_Phdr, Elf64_Nhdr).
 */

export const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46] as const; // "\x7fELF"
export const ELFCLASS64 = 2;
export const ELFDATA2LSB = 1;
export const ELFDATA2MSB = 2;
export const EV_CURRENT = 1;
export const ET_CORE = 4;
export const PT_LOAD = 1;
export const PT_NOTE = 4;
/** p_flags of a PT_LOAD that QEMU writes: readable, writable, executable. */
export const PF_RWX = 7;

export const EM_386 = 3;
export const EM_SPARCV9 = 43;
export const EM_X86_64 = 62;
export const EM_AARCH64 = 183;

export const ELF64_EHDR_SIZE = 64;
export const ELF64_PHDR_SIZE = 56;
export const ELF64_SHDR_SIZE = 64;
/** Above this many program headers e_phnum holds PN_XNUM and section header 0 holds the count (gABI "Extended numbering"). */
export const PN_XNUM = 0xffff;

export interface ElfHeader {
  littleEndian: boolean;
  machine: number;
  /** Program headers, counted (PT_NOTE included). */
  phnum: number;
  /** Where the program headers start (QEMU: right after the ELF header). */
  phoff: number;
  /** Where the section header table starts: used only with PN_XNUM, 0 otherwise. */
  shoff?: number;
}

/** The 64-byte ELF header of a core file. */
export function encodeElfHeader(h: ElfHeader): Uint8Array {
  const out = new Uint8Array(ELF64_EHDR_SIZE);
  const v = new DataView(out.buffer);
  const le = h.littleEndian;
  out.set(ELF_MAGIC, 0);
  out[4] = ELFCLASS64; // EI_CLASS
  out[5] = le ? ELFDATA2LSB : ELFDATA2MSB; // EI_DATA
  out[6] = EV_CURRENT; // EI_VERSION; EI_OSABI (7) and the padding stay 0 (ELFOSABI_NONE)
  v.setUint16(16, ET_CORE, le); // e_type
  v.setUint16(18, h.machine, le); // e_machine
  v.setUint32(20, EV_CURRENT, le); // e_version
  // 24 e_entry: 0
  v.setBigUint64(32, BigInt(h.phoff), le); // e_phoff
  const xnum = h.phnum >= PN_XNUM;
  v.setBigUint64(40, BigInt(xnum ? (h.shoff ?? 0) : 0), le); // e_shoff
  // 48 e_flags: 0
  v.setUint16(52, ELF64_EHDR_SIZE, le); // e_ehsize
  v.setUint16(54, ELF64_PHDR_SIZE, le); // e_phentsize
  v.setUint16(56, xnum ? PN_XNUM : h.phnum, le); // e_phnum
  v.setUint16(58, ELF64_SHDR_SIZE, le); // e_shentsize
  v.setUint16(60, xnum ? 1 : 0, le); // e_shnum
  // 62 e_shstrndx: 0 (SHN_UNDEF)
  return out;
}

/** Section header 0 of a file with PN_XNUM program headers: sh_info holds the real count. */
export function encodeXnumSectionHeader(phnum: number, littleEndian: boolean): Uint8Array {
  const out = new Uint8Array(ELF64_SHDR_SIZE);
  new DataView(out.buffer).setUint32(44, phnum, littleEndian); // sh_info
  return out;
}

export interface ProgramHeader {
  type: number;
  flags: number;
  offset: number;
  /** Guest-physical address (p_vaddr = p_paddr with paging off). */
  paddr: number;
  filesz: number;
  memsz: number;
  align: number;
}

export function encodeProgramHeader(p: ProgramHeader, littleEndian: boolean, out = new Uint8Array(ELF64_PHDR_SIZE), at = 0): Uint8Array {
  const v = new DataView(out.buffer, out.byteOffset + at, ELF64_PHDR_SIZE);
  const le = littleEndian;
  v.setUint32(0, p.type, le); // p_type
  v.setUint32(4, p.flags, le); // p_flags
  v.setBigUint64(8, BigInt(p.offset), le); // p_offset
  v.setBigUint64(16, BigInt(p.paddr), le); // p_vaddr
  v.setBigUint64(24, BigInt(p.paddr), le); // p_paddr
  v.setBigUint64(32, BigInt(p.filesz), le); // p_filesz
  v.setBigUint64(40, BigInt(p.memsz), le); // p_memsz
  v.setBigUint64(48, BigInt(p.align), le); // p_align
  return out;
}

export interface ElfNote {
  /** Owner, e.g. "CORE" or "QEMU" (written with its terminating NUL). */
  name: string;
  type: number;
  desc: Uint8Array;
}

const pad4 = (n: number): number => (n + 3) & ~3;

/** Bytes a note takes: the 12-byte header, the name with its NUL and the description, each padded to 4 bytes. */
export function noteSize(n: ElfNote): number {
  return 12 + pad4(n.name.length + 1) + pad4(n.desc.length);
}

/** The notes, one after another, as they go in the PT_NOTE segment. */
export function encodeNotes(notes: readonly ElfNote[], littleEndian: boolean): Uint8Array {
  const out = new Uint8Array(notes.reduce((s, n) => s + noteSize(n), 0));
  const v = new DataView(out.buffer);
  let at = 0;
  for (const n of notes) {
    v.setUint32(at, n.name.length + 1, littleEndian); // n_namesz, with the NUL
    v.setUint32(at + 4, n.desc.length, littleEndian); // n_descsz
    v.setUint32(at + 8, n.type, littleEndian); // n_type
    at += 12;
    for (let i = 0; i < n.name.length; i++) out[at + i] = n.name.charCodeAt(i);
    at += pad4(n.name.length + 1);
    out.set(n.desc, at);
    at += pad4(n.desc.length);
  }
  return out;
}
