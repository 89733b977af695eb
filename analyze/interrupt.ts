/**
 * Ctrl-C (SIGINT) and SIGTERM while a command runs.
 *
 * The first signal stops the command at once: everything the process has
 * made and not finished (temporary files, locks, an unfinished patch
 * journal, extract's outputs and the directory it created; see
 * writer/cleanup.ts) is removed synchronously, one line is printed, and the
 * process exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM),
 * as a shell reports a process killed by it.
 *
 * A command that must do asynchronous work to stop cleanly (`save` cancels
 * QEMU's migration and resumes the guest over QMP) takes the first signal
 * as an AbortSignal instead (interruptSignal()); it then fails with its own
 * one-line error, and the exit status is still the signal's. A second
 * signal stops it at once, as any other command.
 */
import os from 'node:os';
import { undoPending } from '../writer/cleanup.js';

const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];

let received: NodeJS.Signals | undefined;
let graceful: AbortController | undefined;

/** 128 + the signal's number: what a shell shows for a process a signal ended. */
export function signalExitCode(sig: NodeJS.Signals): number {
  return 128 + os.constants.signals[sig];
}

/** The signal that interrupted the running command, if one did. */
export function receivedSignal(): NodeJS.Signals | undefined {
  return received;
}

/** For a command that stops cleanly on its own: the first signal aborts this instead of ending the process. */
export function interruptSignal(): AbortSignal {
  graceful ??= new AbortController();
  return graceful.signal;
}

function onSignal(sig: NodeJS.Signals): void {
  if (graceful && !received) {
    received = sig;
    graceful.abort();
    return;
  }
  received = sig;
  const notes = undoPending();
  const undone = notes.length ? `; ${notes.join('; ')}` : '';
  process.stderr.write(`ramsnap: INTERRUPTED: stopped by ${sig}; what it had not finished was removed${undone}\n`);
  process.exit(signalExitCode(sig));
}

/** Installs the handlers for one command; returns their removal. */
export function handleSignals(): () => void {
  received = undefined;
  graceful = undefined;
  for (const s of SIGNALS) process.on(s, onSignal);
  return () => {
    for (const s of SIGNALS) process.off(s, onSignal);
  };
}
