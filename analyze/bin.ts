#!/usr/bin/env node
import { run } from './cli.js';

// EPIPE on stdout (e.g. `ramsnap read ... | head`) ends quietly.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

await run(process.argv.slice(2));
