/**
 * What a process must undo if a signal stops it before its work is done:
 * temporary files (TempFile), locks (TargetLock), an unfinished patch
 * journal, an output directory it created, a progress bar's hidden
 * cursor. Each writer registers its undo
 * when it creates the thing and unregisters it when the thing is committed
 * or removed the ordinary way, so at any moment the registry holds exactly
 * what this process has made and not yet finished.
 *
 * Why a registry and not an AbortSignal threaded through every writer: a
 * signal can arrive between any two awaits, in a write in flight on the
 * thread pool, or in code that takes no signal (a yargs handler, a copy
 * loop); the undo steps are all synchronous unlinks, so one handler can run
 * them all at once, and exit. The CLI installs that handler
 * (analyze/interrupt.ts); a library user with their own SIGINT handler
 * calls undoPending() from it.
 */

/**
 * Removes or releases what was made, synchronously. May return a note for
 * the one line the CLI prints (e.g. how to finish a patch that is in its
 * journal). Must not throw; errors are ignored.
 */
export type Undo = () => string | void;

const pending = new Set<Undo>();

/** Registers `undo`; call the returned function once the thing is finished or removed the ordinary way. */
export function onInterrupt(undo: Undo): () => void {
  pending.add(undo);
  return () => void pending.delete(undo);
}

/** Runs every registered undo, the newest first (a file before the lock that guards it, files before their directory); returns their notes. */
export function undoPending(): string[] {
  const notes: string[] = [];
  for (const undo of [...pending].reverse()) {
    pending.delete(undo);
    try {
      const note = undo();
      if (note) notes.push(note);
    } catch {
      // Best effort: the next writer of the target removes what is left (docs/writers.md §7).
    }
  }
  return notes;
}

/** How many undos are registered (tests: nothing may be left registered after a command). */
export function pendingUndos(): number {
  return pending.size;
}
