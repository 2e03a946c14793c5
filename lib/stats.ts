/**
 * memoryStats(): live native allocations by backend and kind (count and bytes), and the CPU device-pool budget.
 * Useful for leak checks: after disposing everything, counts return to where they were.
 *
 * @example
 * const before = memoryStats().cpu.pinned.count;
 */
import { type NativeMemoryStats, native } from './native.js';

export function memoryStats(): NativeMemoryStats {
  return native().memoryStats();
}
