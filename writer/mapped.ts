/**
 * Which running processes map a file, from /proc/PID/maps (Linux).
 *
 * A VM that `ramsnap restore` started maps its snapshot privately: pages
 * the guest has not written yet still show the file, so a change to the
 * file in place changes the running guest's memory. The writers refuse a
 * file that any process maps (FILE_MAPPED), and restore confirms that the
 * target QEMU maps the snapshot at the block's page region.
 *
 * A maps line is `START-END PERMS OFFSET MAJOR:MINOR INODE PATH`, the
 * device in hex, the inode in decimal; the file is matched by device and
 * inode, not by path (a path can be spelled many ways, or be replaced).
 */
import fs from 'node:fs';

export interface FileMapping {
  pid: number;
  /** The process's name (/proc/PID/comm). */
  command: string;
  /** File offsets of the process's mappings of the file. */
  offsets: number[];
}

/** glibc's gnu_dev_major/gnu_dev_minor for a Linux dev_t. */
function majorMinor(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}`;
}

/**
 * The processes (other than this one) that map `file`, one entry per
 * process; empty when the file does not exist or /proc cannot be read
 * (not Linux). Processes whose maps cannot be read (another user's, when
 * not root) are not seen.
 */
export function processesMapping(file: string): FileMapping[] {
  let st: fs.BigIntStats;
  try {
    st = fs.statSync(file, { bigint: true });
  } catch {
    return [];
  }
  if (!st.isFile()) return [];
  let pids: string[];
  try {
    pids = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d) && Number(d) !== process.pid);
  } catch {
    return [];
  }
  const dev = majorMinor(st.dev);
  const ino = st.ino.toString();
  const found: FileMapping[] = [];
  for (const pid of pids) {
    let maps: string;
    try {
      maps = fs.readFileSync(`/proc/${pid}/maps`, 'latin1');
    } catch {
      continue; // gone, or not ours to read
    }
    // Cheap test first: most processes do not map the file at all.
    if (!maps.includes(` ${ino} `)) continue;
    const offsets: number[] = [];
    for (const line of maps.split('\n')) {
      const f = line.split(/\s+/, 6);
      if (f.length >= 6 && f[4] === ino && normalizeDev(f[3]) === dev) offsets.push(Number.parseInt(f[2], 16));
    }
    if (offsets.length === 0) continue;
    let command = '';
    try {
      command = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      /* gone meanwhile */
    }
    found.push({ pid: Number(pid), command, offsets });
  }
  return found;
}

/** Device fields in maps are zero-padded to two digits each; compare them the same way. */
function normalizeDev(field: string): string {
  const [a, b] = field.split(':');
  return `${Number.parseInt(a, 16).toString(16).padStart(2, '0')}:${Number.parseInt(b ?? '0', 16).toString(16).padStart(2, '0')}`;
}
