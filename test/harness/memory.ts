/** Memory helpers for tests: native allocation counts without the C-heap figure, and forced garbage collection. */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

import { memoryStats } from '../../lib/index.js';

setFlagsFromString('--expose-gc');

/** Live native allocations (counts and bytes by backend and kind), for equality checks. */

export function nativeCounts(): { cpu: unknown; cuda: unknown } {
  const { cpu, cuda } = memoryStats();
  return { cpu, cuda };
}

/** Full GCs with turns of the event loop between them, so finalizers (native frees) run. */
export async function collect(): Promise<void> {
  const gc = runInNewContext('gc') as () => void;
  for (let i = 0; i < 6; i++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
}
