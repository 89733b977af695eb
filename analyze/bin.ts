#!/usr/bin/env node
import { run, stdoutFailed } from './cli.js';

// A failed write to stdout arrives here, after the write returned: a closed pipe
// (`ramsnap read ... | head`) ends quietly, a full disk is one IO_ENOSPC line (cli.ts).
process.stdout.on('error', (err: NodeJS.ErrnoException) => process.exit(stdoutFailed(err)));

await run(process.argv.slice(2));
