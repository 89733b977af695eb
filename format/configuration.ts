/**
 * The CONFIGURATION section (0x07) that follows the file header
 * (migration/savevm.c, vmstate_configuration):
 *
 *   u8 0x07, be32 len, len bytes machine type name
 *   then subsections, each: u8 0x05, u8 len + name, be32 version_id, fields
 *     configuration/target-page-bits  v1: be32 page bits (only when the target's
 *                                     page size is variable, e.g. Arm)
 *     configuration/capabilities      v1: be32 count, count x (u8 len + name)
 *     configuration/uuid              v1: 16 bytes (only with validate-uuid)
 *
 * The section has no footer.
 */
import { Section } from './constants.js';
import { ByteCursor, latin1, latin1Bytes } from './cursor.js';
import { FormatCode, RamsnapFormatError } from './errors.js';

export interface Configuration {
  machine: string;
  capabilities: string[];
  targetPageBits?: number;
  uuid?: string;
}

/** Machine type names are short; QEMU's longest are under 64 bytes. Writers refuse longer ones too. */
export const MAX_MACHINE_NAME = 256;

/**
 * QEMU 10's MigrationCapability names (qapi/migration.json). Its loader
 * refuses any other name in the configuration ("Received unknown
 * capability", savevm.c `get_capability`), and an unknown capability may
 * change the stream in ways ramsnap cannot know.
 */
export const KNOWN_CAPABILITIES: ReadonlySet<string> = new Set([
  'xbzrle', 'rdma-pin-all', 'auto-converge', 'zero-blocks', 'events', 'postcopy-ram', 'x-colo', 'release-ram', 'return-path',
  'pause-before-switchover', 'multifd', 'dirty-bitmaps', 'postcopy-blocktime', 'late-block-activate', 'x-ignore-shared',
  'validate-uuid', 'background-snapshot', 'zero-copy-send', 'postcopy-preempt', 'switchover-ack', 'dirty-limit', 'mapped-ram',
]);

/** Decodes the body after the 0x07 type byte. */
/**
 * `reachesEof`: the cursor holds everything up to the end of the file, so
 * running out of bytes means the file was cut (TRUNCATED) rather than that
 * a count is wrong (BAD_CONFIGURATION). `offsets` receives where fields were.
 */
export function decodeConfiguration(c: ByteCursor, offsets?: Record<string, number>, reachesEof = true): Configuration {
  const lenAt = c.pos;
  const len = c.be32('configuration.name.length');
  if (len === 0 || len > MAX_MACHINE_NAME) {
    throw new RamsnapFormatError(FormatCode.BAD_CONFIGURATION, 'machine type name has an impossible length', {
      field: 'configuration.name.length',
      offset: lenAt,
      expected: `1..${MAX_MACHINE_NAME}`,
      actual: len,
    });
  }
  const machine = latin1(c.bytesView(len, 'configuration.name'));
  const cfg: Configuration = { machine, capabilities: [] };
  while (c.remaining > 0 && c.peekU8('configuration.subsection') === Section.SUBSECTION) {
    c.u8('configuration.subsection');
    const nameAt = c.pos;
    const name = c.string8('configuration.subsection.name');
    const vAt = c.pos;
    const version = c.be32(`${name}.version_id`);
    if (version !== 1) {
      throw new RamsnapFormatError(FormatCode.BAD_CONFIGURATION, `unsupported ${name} version`, {
        field: `${name}.version_id`,
        offset: vAt,
        expected: 1,
        actual: version,
      });
    }
    switch (name) {
      case 'configuration/target-page-bits':
        if (offsets) offsets['configuration/target-page-bits.value'] = c.pos;
        cfg.targetPageBits = c.be32('configuration/target-page-bits.value');
        break;
      case 'configuration/capabilities': {
        const countAt = c.pos;
        const count = c.be32('configuration/capabilities.count');
        // Each entry takes at least one byte, so the count is bounded by the bytes left.
        if (count > c.remaining && !reachesEof) {
          throw new RamsnapFormatError(FormatCode.BAD_CONFIGURATION, 'capability count exceeds the section', {
            field: 'configuration/capabilities.count',
            offset: countAt,
            expected: `<= ${c.remaining}`,
            actual: count,
          });
        }
        c.need(count, 'configuration/capabilities');
        for (let i = 0; i < count; i++) {
          const at = c.pos;
          const cap = c.string8(`configuration/capabilities[${i}]`);
          if (!KNOWN_CAPABILITIES.has(cap)) {
            throw new RamsnapFormatError(FormatCode.BAD_CONFIGURATION, `unknown capability ${JSON.stringify(cap)}: QEMU's loader refuses it`, {
              field: `configuration/capabilities[${i}]`,
              offset: at,
            });
          }
          cfg.capabilities.push(cap);
        }
        break;
      }
      case 'configuration/uuid': {
        const u = c.bytesView(16, 'configuration/uuid.value');
        cfg.uuid = formatUuid(u);
        break;
      }
      default:
        throw new RamsnapFormatError(FormatCode.BAD_CONFIGURATION, `unknown configuration subsection ${JSON.stringify(name)}`, {
          field: 'configuration.subsection.name',
          offset: nameAt,
        });
    }
  }
  return cfg;
}

export function encodeConfiguration(cfg: Configuration): Uint8Array {
  const parts: Uint8Array[] = [];
  const name = latin1Bytes(cfg.machine);
  const head = new Uint8Array(5);
  head[0] = Section.CONFIGURATION;
  new DataView(head.buffer).setUint32(1, name.length, false);
  parts.push(head, name);
  const sub = (n: string): void => {
    const nb = latin1Bytes(n);
    const h = new Uint8Array(2 + nb.length + 4);
    h[0] = Section.SUBSECTION;
    h[1] = nb.length;
    h.set(nb, 2);
    new DataView(h.buffer).setUint32(2 + nb.length, 1, false);
    parts.push(h);
  };
  if (cfg.targetPageBits !== undefined) {
    sub('configuration/target-page-bits');
    parts.push(be32(cfg.targetPageBits));
  }
  if (cfg.capabilities.length > 0) {
    sub('configuration/capabilities');
    parts.push(be32(cfg.capabilities.length));
    for (const cap of cfg.capabilities) {
      const cb = latin1Bytes(cap);
      parts.push(Uint8Array.of(cb.length), cb);
    }
  }
  if (cfg.uuid !== undefined) {
    sub('configuration/uuid');
    parts.push(parseUuid(cfg.uuid));
  }
  return concat(parts);
}

function be32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, false);
  return b;
}

function formatUuid(u: Uint8Array): string {
  const h = Array.from(u, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** 32 hex digits, with or without the dashes of 8-4-4-4-12. */
export function isUuid(s: string): boolean {
  return typeof s === 'string' && /^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$/.test(s);
}

function parseUuid(s: string): Uint8Array {
  if (!isUuid(s)) throw new RangeError(`bad uuid ${s}`);
  const h = s.replace(/-/g, '');
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) out[i] = parseInt(h.slice(i * 2, i * 2 + 2), 16);
  return out;
}

export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
