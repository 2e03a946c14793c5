#!/usr/bin/env node
/**
 * The `moe-offload` command.
 *   moe-offload info [--json]    what this install can do: CPU, CUDA devices or why not, backend in use
 */
import { formatInfo, info } from './info.js';

const USAGE = `usage: moe-offload <command>

commands:
  info [--json]   package version, CPU features, CUDA devices (or why CUDA is unavailable), backend in use
`;

function main(argv: string[]): number {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'info': {
      const i = info();
      process.stdout.write(rest.includes('--json') ? `${JSON.stringify(i, null, 2)}\n` : `${formatInfo(i)}\n`);
      return 0;
    }
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return cmd === undefined ? 1 : 0;
    default:
      process.stderr.write(`moe-offload: unknown command ${JSON.stringify(cmd)}\n\n${USAGE}`);
      return 1;
  }
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (e) {
  const err = e as Error & { code?: string };
  process.stderr.write(`moe-offload: ${err.code ? `[${err.code}] ` : ''}${err.message}\n`);
  process.exitCode = 1;
}
