/**
 * Block coverage of ramsnap's own code, from V8's precise coverage
 * (node:inspector, no native module): binary counts (callCount false) of
 * every block (detailed true), taken once per batch of inputs, not per
 * input, so that it costs little.
 *
 * A block is a range V8 reports: a function, or a block inside one. V8
 * lists a block only when its count differs from the range around it, so
 * a block it listed once as not run and does not list now has the count of
 * the innermost listed range that holds it.
 */
import { Session } from 'node:inspector/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** Folders of ramsnap (in dist/) whose coverage is tracked (what a fuzz input can reach). */
export const TRACKED = ['format', 'reader', 'analyze', 'writer', 'vm'];
/** Folders the report gives figures for. */
export const REPORTED = ['format', 'reader'];

interface Range {
  startOffset: number;
  endOffset: number;
  count: number;
}
interface FunctionCoverage {
  functionName: string;
  ranges: Range[];
}
interface ScriptCoverage {
  url: string;
  functions: FunctionCoverage[];
}

/** `file.js:start-end` of a block, the file relative to dist/. */
export type BlockKey = string;

/** Where the tracked folders are: dist/ when this runs compiled, the repository when vitest runs the sources. */
const ROOT = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')).href + '/';

/** A tracked script's path from ROOT (`format/vmstate.js`). */
function trackedFile(url: string): string | undefined {
  if (!url.startsWith(ROOT)) return undefined;
  const file = url.slice(ROOT.length).replace(/[?#].*$/, '');
  return TRACKED.includes(file.split('/')[0]) ? file : undefined;
}

/** A thread's view of its own coverage: starts V8's, and turns each take into blocks known and blocks run. */
export class CoverageProbe {
  private session = new Session();
  async start(): Promise<void> {
    this.session.connect();
    await this.session.post('Profiler.enable');
    await this.session.post('Profiler.startPreciseCoverage', { callCount: false, detailed: true });
  }

  /** Blocks listed since the last take, and those that ran since then (V8 resets its counts at each take). */
  async take(): Promise<{ known: BlockKey[]; ran: Set<BlockKey> }> {
    const { result } = (await this.session.post('Profiler.takePreciseCoverage')) as { result: ScriptCoverage[] };
    const known: BlockKey[] = [];
    const ran = new Set<BlockKey>();
    for (const script of result) {
      const file = trackedFile(script.url);
      if (!file) continue;
      for (const fn of script.functions) {
        const outer = fn.ranges[0];
        if (!outer) continue;
        const fnKey = `${file}:${outer.startOffset}-${outer.endOffset}`;
        let inner = this.blocksOf.get(fnKey);
        if (!inner) this.blocksOf.set(fnKey, (inner = new Map()));
        for (const r of fn.ranges) {
          const key = `${file}:${r.startOffset}-${r.endOffset}`;
          known.push(key);
          if (r.count > 0) ran.add(key);
          if (r !== outer && !inner.has(key)) inner.set(key, [r.startOffset, r.endOffset]);
        }
        if (outer.count === 0) continue;
        // Blocks listed before that this take does not list: the innermost listed range around them decides.
        for (const [key, [s, e]] of inner) {
          if (ran.has(key)) continue;
          let around: Range | undefined;
          for (const r of fn.ranges) if (r.startOffset <= s && e <= r.endOffset && (!around || r.endOffset - r.startOffset <= around.endOffset - around.startOffset)) around = r;
          if (around && around.count > 0) ran.add(key);
        }
      }
    }
    return { known, ran };
  }

  /** Blocks seen so far inside each function (`file:start-end` of the function), for the lookup above. */
  private blocksOf = new Map<string, Map<BlockKey, [number, number]>>();
}

/** The union over a run: every block known, and every block run. */
export class CoverageMap {
  readonly known = new Set<BlockKey>();
  readonly ran = new Set<BlockKey>();

  /** Adds a take; returns the blocks run that were not run before. */
  add(known: Iterable<BlockKey>, ran: Iterable<BlockKey>): BlockKey[] {
    for (const k of known) this.known.add(k);
    const fresh: BlockKey[] = [];
    for (const k of ran) {
      this.known.add(k);
      if (!this.ran.has(k)) {
        this.ran.add(k);
        fresh.push(k);
      }
    }
    return fresh;
  }

  /** Would these blocks add to what ran? */
  adds(ran: Iterable<BlockKey>): boolean {
    for (const k of ran) if (!this.ran.has(k)) return true;
    return false;
  }

  /** Percent of known blocks run, per folder of dist/. */
  byFolder(folders = REPORTED): { folder: string; ran: number; known: number }[] {
    return folders.map((folder) => {
      let known = 0;
      let ran = 0;
      for (const k of this.known) {
        if (!k.startsWith(`${folder}/`)) continue;
        known++;
        if (this.ran.has(k)) ran++;
      }
      return { folder, ran, known };
    });
  }
}
