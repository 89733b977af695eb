/**
 * Which RAMBlock is the machine's main RAM. QEMU names it after the board
 * (`pc.ram`, `mach-virt.ram`...), unless the VM was started with
 * `-machine memory-backend=ID`, when the block takes the backend's id
 * (libvirt's `pc.ram` backends keep the name; others, such as `mem0`, do
 * not): the largest block is then the machine's RAM, as ROMs and firmware
 * tables are small beside it.
 */
export const MAIN_RAM_NAMES = ['pc.ram', 'mach-virt.ram', 'ppc_spapr.ram', 'riscv_virt_board.ram', 's390.ram', 'sun4u.ram', 'sun4v.ram'];

export interface NamedBlock {
  name: string;
  usedLength: number;
}

export interface MainRam<B extends NamedBlock> {
  block: B;
  /** How it was found, for messages: by its board name, or as the largest block. */
  found: 'machine RAM' | 'largest block';
}

/** The machine's RAM block, or undefined when there are no blocks. */
export function mainRamBlock<B extends NamedBlock>(blocks: readonly B[]): MainRam<B> | undefined {
  const known = blocks.find((b) => MAIN_RAM_NAMES.includes(b.name));
  if (known) return { block: known, found: 'machine RAM' };
  const largest = blocks.reduce<B | undefined>((a, b) => (!a || b.usedLength > a.usedLength ? b : a), undefined);
  return largest && { block: largest, found: 'largest block' };
}
