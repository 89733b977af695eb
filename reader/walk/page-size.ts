/**
 * The target page size: legacy page records mask their flags with it and
 * mapped-ram headers must agree with it, so it is decided before the RAM
 * section is read, from what the stream states (configuration, then the
 * description), else from the machine type.
 */
import { MAX_PAGE_SIZE, MIN_PAGE_SIZE } from '../../format/constants.js';
import { FormatCode, RamsnapFormatError } from '../../format/errors.js';
import type { WalkState } from './state.js';

export function decidePageSize(w: WalkState): void {
  const m = w.model;
  if (m.configuration?.targetPageBits !== undefined) {
    const bits = m.configuration.targetPageBits;
    const at = w.configOffsets['configuration/target-page-bits.value'] ?? w.opts.streamOffset;
    if (bits < 10 || bits > 16) {
      throw new RamsnapFormatError(FormatCode.BAD_PAGE_SIZE, 'target page bits out of range', {
        field: 'configuration/target-page-bits',
        offset: at,
        expected: '10..16',
        actual: bits,
      });
    }
    m.pageSize = 2 ** bits;
  } else if (m.vmdesc?.desc.page_size !== undefined) {
    m.pageSize = m.vmdesc.desc.page_size;
    checkPageSize(m.pageSize, 'vmdescription.page_size', m.vmdesc.offset + 5);
  } else if (!m.pageSize) {
    // sun4u/sun4v (sparc64) use 8 KiB target pages; every other QEMU target that saves RAM uses 4 KiB.
    m.pageSize = /^sun4[uv]/.test(m.configuration?.machine ?? '') ? 8192 : 4096;
  }
  if (w.opts.pageSize && w.opts.pageSize !== m.pageSize) {
    if (m.configuration?.targetPageBits !== undefined || m.vmdesc?.desc.page_size !== undefined) {
      w.warn('PAGE_SIZE_OVERRIDDEN', `--page-size ${w.opts.pageSize} overrides the stream's page size ${m.pageSize}`, 'page_size', w.opts.streamOffset);
    }
    m.pageSize = w.opts.pageSize;
  }
  checkPageSize(m.pageSize, 'page_size', w.opts.streamOffset);
}

export function checkPageSize(pageSize: number, field: string, offset: number): void {
  if (!Number.isInteger(pageSize) || pageSize < MIN_PAGE_SIZE || pageSize > MAX_PAGE_SIZE || (pageSize & (pageSize - 1)) !== 0) {
    throw new RamsnapFormatError(FormatCode.BAD_PAGE_SIZE, `page size is not a power of two between ${MIN_PAGE_SIZE} and ${MAX_PAGE_SIZE}`, {
      field,
      offset,
      expected: `power of two in ${MIN_PAGE_SIZE}..${MAX_PAGE_SIZE}`,
      actual: pageSize,
    });
  }
}

export function badLength(field: string, offset: number, usedLength: number, pageSize: number): RamsnapFormatError {
  return new RamsnapFormatError(FormatCode.BAD_BLOCK_LENGTH, 'block length is not a whole number of pages', {
    field: `${field}.used_length`,
    offset,
    expected: `multiple of ${pageSize}`,
    actual: usedLength,
  });
}
