/**
 * A progress bar on stderr for long work, only when stderr is a terminal
 * (never in pipes, logs or CI). cli-progress handles redraw throttling,
 * terminal width and ETA, which is more than is worth writing here.
 */

export interface Progress {
  update(done: number): void;
  stop(): void;
}

const NONE: Progress = { update() {}, stop() {} };

/**
 * Shows a bar when the total is large enough to take a moment (default
 * 64 MiB). cli-progress is loaded only then, to keep start-up short.
 */
export async function progressBar(total: number, label: string, minTotal = 64 << 20): Promise<Progress> {
  if (!process.stderr.isTTY || total < minTotal) return NONE;
  const cliProgress = (await import('cli-progress')).default;
  const bar = new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: `${label} [{bar}] {percentage}% | {done}/{all} MiB | ETA {eta_formatted}`,
      hideCursor: true,
      clearOnComplete: true,
    },
    cliProgress.Presets.shades_classic,
  );
  const mib = (n: number): string => (n / 2 ** 20).toFixed(0);
  bar.start(total, 0, { done: '0', all: mib(total) });
  return {
    update(done) {
      bar.update(done, { done: mib(done), all: mib(total) });
    },
    stop() {
      bar.stop();
    },
  };
}
