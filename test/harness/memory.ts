/** Live native allocations (counts and bytes by backend and kind), without the C-heap figure, for equality checks. */
import { memoryStats } from '../../lib/index.js';

export function nativeCounts(): { cpu: unknown; cuda: unknown } {
  const { cpu, cuda } = memoryStats();
  return { cpu, cuda };
}
