/**
 * The CPU notes of an ELF core, built from the CPU state saved in the
 * snapshot's device sections, byte for byte as QEMU 10's dump-guest-memory
 * writes them (target/i386/arch_dump.c, target/arm/arch_dump.c; checked
 * against QEMU 10.0.2's own cores, test/export-interop.test.ts).
 *
 * - x86: every CPU's `CORE` NT_PRSTATUS, then every CPU's `QEMU` note
 *   (QEMU's own CPU state, type 0). CPU 0 decides the ELF machine: long
 *   mode (hflags LMA) gives EM_X86_64 and the 64-bit prstatus, anything
 *   else EM_386 and the 32-bit one, for every CPU.
 * - aarch64: per CPU, `CORE` NT_PRSTATUS (x0..x30, sp, pc, pstate) and
 *   `CORE` NT_PRFPREG (the 32 Q registers, fpsr, fpcr). QEMU adds an SVE
 *   note for CPUs with SVE; its vector length is not in the stream, so it
 *   is left out.
 *
 * The CPU state comes from decoded device sections (format/vmstate.ts):
 * integers as "0x..." strings, unknown types as hex byte strings.
 */
import { type ElfNote, EM_386, EM_AARCH64, EM_X86_64 } from './elf.js';
import { FormatCode, RamsnapFormatError } from './errors.js';
import type { StateMap, StateValue } from './vmstate.js';

/** One vCPU's `cpu` section: its instance id is QEMU's cpu_index. */
export interface CpuSection {
  index: number;
  state: StateMap;
  /** File offset of the section, for errors. */
  offset: number;
}

export const NT_PRSTATUS = 1;
export const NT_PRFPREG = 2;
/** QEMU's own note (QEMUCPUState) has type 0. */
export const NT_QEMU = 0;
const QEMU_CPU_STATE_VERSION = 1;
const QEMU_CPU_STATE_SIZE = 440;
const X86_64_PRSTATUS_SIZE = 336;
const X86_PRSTATUS_SIZE = 144;
const AARCH64_PRSTATUS_SIZE = 392;
const AARCH64_PRFPREG_SIZE = 528;
/** hflags bit 14: long mode active (HF_LMA_MASK, target/i386/cpu.h). */
const HF_LMA = 1 << 14;
/** PSTATE.nRW: the CPU runs AArch32 code. */
const PSTATE_NRW = 1 << 4;
/** SCTLR_EL1.EE: EL1 data accesses are big-endian, and so is QEMU's core (target/arm/arch_dump.c). */
const SCTLR_EE = 1n << 25n;
/** KVM-style register index of SCTLR_EL1 in the saved cpreg list. */
const SCTLR_EL1_INDEX = 0x603000000013c080n;
/** The vfp subsection's fpscr keeps FPSR's and FPCR's bits under these masks (target/arm/vfp_helper.c). */
const FPSR_MASK = 0xf800009fn;
const FPCR_MASK = 0x07ff9f00n;

/** Typed reads of one CPU's decoded fields; a missing or malformed field is BAD_CPU_STATE. */
class Fields {
  constructor(
    private readonly cpu: CpuSection,
    private readonly state: StateMap = cpu.state,
    private readonly prefix = '',
  ) {}

  fail(name: string, why: string): RamsnapFormatError {
    return new RamsnapFormatError(FormatCode.BAD_CPU_STATE, `CPU ${this.cpu.index}: ${why}`, {
      field: `cpu[${this.cpu.index}].${this.prefix}${name}`,
      offset: this.cpu.offset,
    });
  }

  has(name: string): boolean {
    return this.state.has(name);
  }

  value(name: string): StateValue {
    const v = this.state.get(name);
    if (v === undefined) throw this.fail(name, `the saved state has no ${name}`);
    return v;
  }

  /** An integer field ("0x..."), or a field of QEMU's own type kept as big-endian bytes ("00 00 03 c5", as fpscr and cpsr are put). */
  int(name: string, v: StateValue = this.value(name)): bigint {
    const m = typeof v === 'string' ? /^0x([0-9a-f]{1,16})(?: |$)/.exec(v) ?? /^((?:[0-9a-f]{2} ){0,7}[0-9a-f]{2})$/.exec(v) : null;
    if (!m) throw this.fail(name, `${name} is not an integer of at most 64 bits`);
    return BigInt(`0x${m[1].replaceAll(' ', '')}`);
  }

  ints(name: string, count: number): bigint[] {
    const v = this.value(name);
    if (!Array.isArray(v) || v.length !== count) throw this.fail(name, `${name} should hold ${count} values`);
    return v.map((x) => this.int(name, x));
  }

  /** A field of QEMU's own type that must be exactly `width` bytes (big-endian). */
  bytesInt(name: string, width: number): bigint {
    const v = this.value(name);
    if (typeof v !== 'string' || v.length !== width * 3 - 1) throw this.fail(name, `${name} should be ${width} bytes`);
    return this.int(name, v);
  }

  struct(name: string, v: StateValue = this.value(name)): Fields {
    if (!(v instanceof Map)) throw this.fail(name, `${name} should be a structure`);
    return new Fields(this.cpu, v, `${this.prefix}${name}.`);
  }

  structs(name: string, count: number): Fields[] {
    const v = this.value(name);
    if (!Array.isArray(v) || v.length !== count) throw this.fail(name, `${name} should hold ${count} structures`);
    return v.map((x, i) => this.struct(`${name}[${i}]`, x));
  }
}

interface Segment {
  selector: bigint;
  base: bigint;
  limit: bigint;
  flags: bigint;
}

export interface X86Cpu {
  index: number;
  /** RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 (QEMU's order). */
  regs: bigint[];
  eip: bigint;
  eflags: bigint;
  hflags: bigint;
  /** ES, CS, SS, DS, FS, GS. */
  segs: Segment[];
  ldt: Segment;
  tr: Segment;
  gdt: Segment;
  idt: Segment;
  cr0: bigint;
  cr2: bigint;
  cr3: bigint;
  cr4: bigint;
  kernelGsBase: bigint;
}

const R = { AX: 0, CX: 1, DX: 2, BX: 3, SP: 4, BP: 5, SI: 6, DI: 7 } as const;
const S = { ES: 0, CS: 1, SS: 2, DS: 3, FS: 4, GS: 5 } as const;

function segment(f: Fields): Segment {
  return { selector: f.int('selector'), base: f.int('base'), limit: f.int('limit'), flags: f.int('flags') };
}

/** The registers of an x86 `cpu` section (target/i386/machine.c vmstate_x86_cpu). */
export function x86Cpu(cpu: CpuSection): X86Cpu {
  const f = new Fields(cpu);
  return {
    index: cpu.index,
    regs: f.ints('env.regs', 16),
    eip: f.int('env.eip'),
    // Already the whole value: a stopped vCPU leaves the lazy flags computed (x86_cpu_exec_exit).
    eflags: f.int('env.eflags'),
    hflags: f.int('env.hflags'),
    segs: f.structs('env.segs', 6).map(segment),
    ldt: segment(f.struct('env.ldt')),
    tr: segment(f.struct('env.tr')),
    gdt: segment(f.struct('env.gdt')),
    idt: segment(f.struct('env.idt')),
    cr0: f.int('env.cr[0]'),
    cr2: f.int('env.cr[2]'),
    cr3: f.int('env.cr[3]'),
    cr4: f.int('env.cr[4]'),
    kernelGsBase: f.has('env.kernelgsbase') ? f.int('env.kernelgsbase') : 0n,
  };
}

/** x86 notes and the ELF machine they go with (CPU 0's mode decides both, as in QEMU). */
export function x86Notes(cpus: readonly X86Cpu[]): { machine: number; notes: ElfNote[] } {
  const longMode = cpus.length > 0 && (cpus[0].hflags & BigInt(HF_LMA)) !== 0n;
  const prstatus = cpus.map((c) => ({ name: 'CORE', type: NT_PRSTATUS, desc: longMode ? x86_64Prstatus(c) : x86Prstatus(c) }));
  const qemu = cpus.map((c) => ({ name: 'QEMU', type: NT_QEMU, desc: qemuCpuState(c) }));
  return { machine: longMode ? EM_X86_64 : EM_386, notes: [...prstatus, ...qemu] };
}

/** struct x86_64_elf_prstatus: pid at 32, then the user_regs_struct at 112 (Linux's order). */
function x86_64Prstatus(c: X86Cpu): Uint8Array {
  const out = new Uint8Array(X86_64_PRSTATUS_SIZE);
  const v = new DataView(out.buffer);
  v.setUint32(32, c.index + 1, true); // pr_pid: cpu_index + 1
  const r = c.regs;
  const regs = [
    r[15], r[14], r[13], r[12], r[R.BP], r[R.BX], r[11], r[10], r[9], r[8],
    r[R.AX], r[R.CX], r[R.DX], r[R.SI], r[R.DI],
    0n, // orig_rax: QEMU writes 0
    c.eip, c.segs[S.CS].selector, c.eflags, r[R.SP], c.segs[S.SS].selector,
    c.segs[S.FS].base, c.segs[S.GS].base,
    c.segs[S.DS].selector, c.segs[S.ES].selector, c.segs[S.FS].selector, c.segs[S.GS].selector,
  ];
  regs.forEach((x, i) => v.setBigUint64(112 + 8 * i, x, true));
  return out;
}

/** struct x86_elf_prstatus (i386 layout): pid at 24, registers at 72, each cut to 32 bits, selectors to 16. */
function x86Prstatus(c: X86Cpu): Uint8Array {
  const out = new Uint8Array(X86_PRSTATUS_SIZE);
  const v = new DataView(out.buffer);
  const lo = (x: bigint): number => Number(x & 0xffffffffn);
  const sel = (x: bigint): number => Number(x & 0xffffn);
  v.setUint32(24, c.index + 1, true); // pr_pid
  const r = c.regs;
  [r[R.BX], r[R.CX], r[R.DX], r[R.SI], r[R.DI], r[R.BP], r[R.AX]].forEach((x, i) => v.setUint32(72 + 4 * i, lo(x), true));
  v.setUint16(100, sel(c.segs[S.DS].selector), true);
  v.setUint16(104, sel(c.segs[S.ES].selector), true);
  v.setUint16(108, sel(c.segs[S.FS].selector), true);
  v.setUint16(112, sel(c.segs[S.GS].selector), true);
  // 116 orig_eax: 0
  v.setUint32(120, lo(c.eip), true);
  v.setUint16(124, sel(c.segs[S.CS].selector), true);
  v.setUint32(128, lo(c.eflags), true);
  v.setUint32(132, lo(r[R.SP]), true);
  v.setUint16(136, sel(c.segs[S.SS].selector), true);
  return out;
}

/** QEMUCPUState version 1 (target/i386/arch_dump.c): QEMU's own view of the CPU, in every x86 mode. */
function qemuCpuState(c: X86Cpu): Uint8Array {
  const out = new Uint8Array(QEMU_CPU_STATE_SIZE);
  const v = new DataView(out.buffer);
  v.setUint32(0, QEMU_CPU_STATE_VERSION, true);
  v.setUint32(4, QEMU_CPU_STATE_SIZE, true);
  const r = c.regs;
  const gprs = [r[R.AX], r[R.BX], r[R.CX], r[R.DX], r[R.SI], r[R.DI], r[R.SP], r[R.BP], ...r.slice(8, 16), c.eip, c.eflags];
  gprs.forEach((x, i) => v.setBigUint64(8 + 8 * i, x, true));
  // Segments in the note's order (not the stream's): selector, limit, flags, pad, base.
  const segs = [c.segs[S.CS], c.segs[S.DS], c.segs[S.ES], c.segs[S.FS], c.segs[S.GS], c.segs[S.SS], c.ldt, c.tr, c.gdt, c.idt];
  segs.forEach((s, i) => {
    const at = 152 + 24 * i;
    v.setUint32(at, Number(s.selector & 0xffffffffn), true);
    v.setUint32(at + 4, Number(s.limit & 0xffffffffn), true);
    v.setUint32(at + 8, Number(s.flags & 0xffffffffn), true);
    v.setBigUint64(at + 16, s.base, true);
  });
  [c.cr0, 0n, c.cr2, c.cr3, c.cr4].forEach((x, i) => v.setBigUint64(392 + 8 * i, x, true)); // cr1 is always 0
  v.setBigUint64(432, c.kernelGsBase, true);
  return out;
}

export interface Arm64Cpu {
  index: number;
  /** x0..x30, then the current stack pointer (QEMU keeps the live SP in xregs[31]). */
  xregs: bigint[];
  pc: bigint;
  pstate: bigint;
  /** Q0..Q31 as (low, high) pairs, and FPSR/FPCR; absent when the stream has no vfp subsection. */
  vfp?: { q: bigint[]; fpsr: bigint; fpcr: bigint };
  /** SCTLR_EL1.EE: QEMU then writes the core big-endian. */
  bigEndian: boolean;
}

/** The registers of an Arm `cpu` section (target/arm/machine.c vmstate_arm_cpu). */
export function arm64Cpu(cpu: CpuSection): Arm64Cpu {
  const f = new Fields(cpu);
  // The custom "cpsr" field carries pstate_read() for an AArch64 CPU, big-endian.
  const pstate = f.bytesInt('cpsr', 4);
  if (pstate & BigInt(PSTATE_NRW)) {
    throw new RamsnapFormatError(FormatCode.UNSUPPORTED, `CPU ${cpu.index} was running AArch32 code: its registers would have to be remapped as QEMU's aarch64_sync_32_to_64 does, which ramsnap does not do`, {
      field: `cpu[${cpu.index}].cpsr`,
      offset: cpu.offset,
    });
  }
  let vfp: Arm64Cpu['vfp'];
  if (f.has('cpu/vfp')) {
    const s = f.struct('cpu/vfp');
    const q: bigint[] = [];
    for (let i = 0; i < 32; i++) q.push(...s.ints(`env.vfp.zregs[${i}].d`, 2));
    let fpsr: bigint;
    let fpcr: bigint;
    if (s.has('cpu/vfp/fpcr_fpsr')) {
      // Since QEMU 9.1 bits outside the fpscr masks travel in their own subsection (fpscr is then 0).
      const x = s.struct('cpu/vfp/fpcr_fpsr');
      fpcr = x.int('fpcr') & 0xffffffffn;
      fpsr = x.int('fpsr') & 0xffffffffn;
    } else {
      const fpscr = s.int('fpscr');
      fpsr = fpscr & FPSR_MASK;
      fpcr = fpscr & FPCR_MASK;
    }
    vfp = { q, fpsr, fpcr };
  }
  return { index: cpu.index, xregs: f.ints('env.xregs', 32), pc: f.int('env.pc'), pstate, vfp, bigEndian: sctlrEE(f) };
}

function sctlrEE(f: Fields): boolean {
  if (!f.has('cpreg_vmstate_indexes') || !f.has('cpreg_vmstate_values')) return false;
  const idx = f.value('cpreg_vmstate_indexes');
  const val = f.value('cpreg_vmstate_values');
  if (!Array.isArray(idx) || !Array.isArray(val)) return false;
  const at = idx.findIndex((x) => typeof x === 'string' && f.int('cpreg_vmstate_indexes', x) === SCTLR_EL1_INDEX);
  return at >= 0 && at < val.length && (f.int('cpreg_vmstate_values', val[at]) & SCTLR_EE) !== 0n;
}

/** aarch64 notes: per CPU, NT_PRSTATUS then NT_PRFPREG, in the core's byte order. */
export function arm64Notes(cpus: readonly Arm64Cpu[]): { machine: number; littleEndian: boolean; notes: ElfNote[] } {
  const le = !(cpus[0]?.bigEndian ?? false);
  const notes: ElfNote[] = [];
  for (const c of cpus) {
    const pr = new Uint8Array(AARCH64_PRSTATUS_SIZE);
    const v = new DataView(pr.buffer);
    v.setUint32(32, c.index + 1, le); // pr_pid
    for (let i = 0; i < 31; i++) v.setBigUint64(112 + 8 * i, c.xregs[i], le);
    v.setBigUint64(360, c.xregs[31], le); // sp
    v.setBigUint64(368, c.pc, le);
    v.setBigUint64(376, c.pstate, le);
    v.setUint32(384, 1, le); // pr_fpvalid
    notes.push({ name: 'CORE', type: NT_PRSTATUS, desc: pr });
    if (c.vfp) {
      const fp = new Uint8Array(AARCH64_PRFPREG_SIZE);
      const w = new DataView(fp.buffer);
      for (let i = 0; i < 32; i++) {
        // A big-endian core swaps the halves of each Q register.
        const [lo, hi] = [c.vfp.q[2 * i], c.vfp.q[2 * i + 1]];
        w.setBigUint64(16 * i, le ? lo : hi, le);
        w.setBigUint64(16 * i + 8, le ? hi : lo, le);
      }
      w.setUint32(512, Number(c.vfp.fpsr), le);
      w.setUint32(516, Number(c.vfp.fpcr), le);
      notes.push({ name: 'CORE', type: NT_PRFPREG, desc: fp });
    }
  }
  return { machine: EM_AARCH64, littleEndian: le, notes };
}
