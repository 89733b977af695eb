/**
 * QEMU targets (qemu-system-TARGET) and their target page size, which is
 * the page size of a stream (mapped-ram's page_size, the unit of every
 * page record) and decides the configuration/target-page-bits subsection.
 *
 * QEMU writes that subsection only when the target's page size is
 * variable and the machine's CPUs chose more than the minimum
 * (migration/savevm.c vmstate_target_page_bits_needed: page bits >
 * qemu_target_page_bits_min()). Its loader takes a stream without it as
 * the minimum, so a 4 KiB Arm file without it is refused ("Received
 * TARGET_PAGE_BITS is 10 but local is 12").
 *
 * Observed on QEMU 10.0.2 (mapped-ram saves under TCG): x86_64 and i386
 * (pc, q35, microvm), ppc64 (pseries, powernv9), ppc (g3beige) and sparc
 * (SS-5) write 4 KiB pages and no subsection; sparc64 (sun4u) 8 KiB pages
 * and no subsection; aarch64 and arm virt 4 KiB pages with the subsection
 * (12); arm versatilepb (an ARMv5 CPU) 1 KiB pages without it. A fixed
 * page size is not checked by the mapped-ram loader: a sun4u file with
 * 4 KiB pages loads, and guest memory ends up at the wrong addresses.
 */
import { MIN_PAGE_SIZE } from './constants.js';

export interface TargetInfo {
  /** Target page sizes its CPUs can have (one, unless variable). */
  pageSizes: readonly number[];
  /** The page size QEMU's loader assumes without target-page-bits (TARGET_PAGE_BITS_MIN), when it varies. */
  variableMin?: number;
}

const fixed = (pageSize: number): TargetInfo => ({ pageSizes: [pageSize] });
/** Arm: ARMv7 and later CPUs use 4 KiB pages; ARMv5 and v6 CPUs 1 KiB (target/arm/cpu-param.h). */
const ARM: TargetInfo = { pageSizes: [1024, 4096], variableMin: MIN_PAGE_SIZE };

/** The targets ramsnap knows, checked against files QEMU 10.0.2 wrote. */
export const TARGETS: Readonly<Record<string, TargetInfo>> = {
  x86_64: fixed(4096),
  i386: fixed(4096),
  aarch64: ARM,
  arm: ARM,
  ppc64: fixed(4096),
  ppc: fixed(4096),
  sparc64: fixed(8192),
  sparc: fixed(4096),
};

export const TARGET_NAMES: readonly string[] = Object.keys(TARGETS);

/**
 * Machine types whose target (and so page size) the name alone decides,
 * as QEMU 10 records them (the versioned name, never an alias such as
 * "q35" or "virt"). Another machine needs the target said.
 */
const MACHINE_TARGETS: { pattern: RegExp; target: string; pageSize: number }[] = [
  { pattern: /^pc-(q35|i440fx)-\d+\.\d+$|^isapc$|^microvm$/, target: 'x86_64', pageSize: 4096 },
  // virt accepts only ARMv7 and later CPUs: 4 KiB pages. (qemu-system-arm's virt is the same machine.)
  { pattern: /^virt-\d+\.\d+$/, target: 'aarch64', pageSize: 4096 },
  { pattern: /^pseries-\d+\.\d+$|^powernv(8|9|10|11)$/, target: 'ppc64', pageSize: 4096 },
  { pattern: /^sun4[uv]$/, target: 'sparc64', pageSize: 8192 },
];

/** The target and page size a machine type implies, or undefined when the name does not decide them. */
export function machineTarget(machine: string): { target: string; pageSize: number } | undefined {
  const m = MACHINE_TARGETS.find((x) => x.pattern.test(machine));
  return m && { target: m.target, pageSize: m.pageSize };
}

/** Whether two targets have the same page rule (x86_64 and i386, aarch64 and arm, ppc64 and ppc). */
export function samePageRule(a: TargetInfo, b: TargetInfo): boolean {
  return a.variableMin === b.variableMin && a.pageSizes.join() === b.pageSizes.join();
}

/**
 * The value of configuration/target-page-bits that QEMU writes for a
 * target with this page size, or undefined where it writes none.
 */
export function targetPageBitsFor(info: TargetInfo, pageSize: number): number | undefined {
  return info.variableMin !== undefined && pageSize > info.variableMin ? Math.log2(pageSize) : undefined;
}

/**
 * Machine aliases of QEMU 10.0.2 (`qemu-system-ARCH -machine help`, "alias
 * of ..."; set as MachineClass.alias in hw/i386/pc_q35.c, pc_piix.c,
 * hw/arm/virt.c, hw/ppc/spapr.c, hw/ppc/pnv.c, hw/s390x/s390-virtio-ccw.c,
 * hw/arm/aspeed.c) and the machine type each resolves to. QEMU records the
 * resolved MachineClass name, never the alias, and its loader
 * (migration/savevm.c configuration_post_load) compares the recorded name
 * with its own with strncmp over the recorded length: a file recording
 * `q35` is refused by a q35 VM ("Machine type received is 'q35' and local
 * is 'pc-q35-10.0'"), and one recording `pc` would be taken by any machine
 * whose name starts with "pc". Writers refuse them.
 */
export const MACHINE_ALIASES: Readonly<Record<string, string>> = {
  pc: 'pc-i440fx-10.0',
  q35: 'pc-q35-10.0',
  virt: 'virt-10.0',
  pseries: 'pseries-10.0',
  powernv: 'powernv10',
  's390-ccw-virtio': 's390-ccw-virtio-10.0',
  'ast2700-evb': 'ast2700a0-evb',
};

/** Why a machine name is a QEMU alias that no stream records, with the name to use instead; undefined for another name. */
export function machineAliasProblem(machine: string): string | undefined {
  if (!Object.hasOwn(MACHINE_ALIASES, machine)) return undefined;
  return `${JSON.stringify(machine)} is a QEMU machine alias, which QEMU never records in a stream (it records the versioned name, and its loader refuses a file whose name differs): use the machine type the VM resolves it to, e.g. ${MACHINE_ALIASES[machine]} with QEMU 10.0 (query-machines, or \`qemu-system-ARCH -machine help\`)`;
}
