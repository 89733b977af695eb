/**
 * A progress bar on stderr for long work, only when stderr is a terminal
 * (never in pipes, logs or CI) and the command was not asked for JSON.
 * cli-progress handles redraw throttling, terminal width and ETA, which is
 * more than is worth writing here.
 */
import { onInterrupt } from '../writer/cleanup.js';

export interface Progress {
  /** `total` may be given with each update (writers learn it once they start). */
  update(done: number, total?: number): void;
  stop(): void;
}

const NONE: Progress = { update() {}, stop() {} };

/** Work under this many bytes is over too soon for a bar. */
const MIN_TOTAL = 64 << 20;

/**
 * A bar labelled `label`, drawn from the first update whose total is large
 * enough to take a moment (default 64 MiB). `total` here, when known up
 * front, stands for every update that gives none. cli-progress is loaded
 * only on a terminal, to keep start-up short.
 */
export async function progressBar(label: string, o: { total?: number; json?: boolean; minTotal?: number } = {}): Promise<Progress> {
  if (!process.stderr.isTTY || o.json) return NONE;
  const cliProgress = (await import('cli-progress')).default;
  const mib = (n: number): string => (n / 2 ** 20).toFixed(0);
  let bar: InstanceType<typeof cliProgress.SingleBar> | undefined;
  let shownTotal = 0;
  // The bar hides the cursor: a signal that ends the process must show it again.
  let forget = (): void => {};
  return {
    update(done, total = o.total ?? 0) {
      if (!bar) {
        if (total < (o.minTotal ?? MIN_TOTAL)) return;
        bar = new cliProgress.SingleBar(
          {
            stream: process.stderr,
            format: `${label} [{bar}] {percentage}% | {done}/{all} MiB | ETA {eta_formatted}`,
            hideCursor: true,
            clearOnComplete: true,
          },
          cliProgress.Presets.shades_classic,
        );
        bar.start(total, 0, { done: '0', all: mib(total) });
        shownTotal = total;
        const shown = bar;
        forget = onInterrupt(() => shown.stop());
      }
      if (total !== shownTotal) {
        bar.setTotal(total);
        shownTotal = total;
      }
      bar.update(done, { done: mib(done), all: mib(total) });
    },
    stop() {
      forget();
      bar?.stop();
    },
  };
}

/** Runs `work` with a bar's update as its progress callback, and stops the bar however the work ends. */
export async function withProgress<T>(label: string, json: boolean | undefined, work: (onProgress: (done: number, total: number) => void) => Promise<T>): Promise<T> {
  const bar = await progressBar(label, { json });
  try {
    return await work((done, total) => bar.update(done, total));
  } finally {
    bar.stop();
  }
}
