/**
 * JS-side cost of submitting moeExperts, by the size of the expert table (print only; no results file). Tiny
 * experts (H = I = 64), T = 1, k = 2: the kernel is negligible, so the figures are the submission path (lib/
 * validation, the expert table, the native glue) plus, for `await`, the stream round trip.
 *  - full/js:     all E experts set, each gate / up / down its own JS array (3E buffers)
 *  - full/pinned: all E experts set, views of one pinned allocation (as the expert store: [gate | up | down])
 *  - routed:      the engine's pattern (lib/engine/experts.ts runWithExperts): the table empty between calls,
 *                 the k routed experts set before each call and cleared after (views of the pinned allocation)
 * Columns: submit = µs of JS-thread time per call with 200 calls issued back to back (then awaited together);
 * await = µs per call issued and awaited one at a time. Medians of 7 runs after a warm-up; the 1-minute load
 * average is printed (the VM is shared). Uses only the public API, so the same file measures an older build.
 * Run: node dist/bench/expert-table.js
 */
import os from 'node:os';

import { type ExpertTable, HostTensor, openBackend } from '../lib/index.js';

const H = 64;
const I = 64;
const K = 2;
const CALLS = 200;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const be = openBackend({ backend: 'cpu' });
  const x = new HostTensor('bf16', [1, H]);
  x.data.fill(0x3c00);
  const ids = new HostTensor('i32', [1, K], Int32Array.from([0, 1]));
  const w = new HostTensor('f32', [1, K], Float32Array.from([0.5, 0.5]));
  const out = new HostTensor('bf16', [1, H]);
  console.log(`moeExperts submission cost, T = 1, k = ${K}, H = I = ${H}, ${CALLS} calls; load ${os.loadavg()[0]!.toFixed(2)} (${os.cpus().length} cpus)`);
  console.log('E     variant       submit µs/call   await µs/call');
  for (const E of [8, 32, 128]) {
    const exBytes = 3 * I * H * 2;
    const pinned = be.allocPinned(E * exBytes);
    const view = (e: number) => ({
      gate: pinned.tensor('bf16', [I, H], e * exBytes),
      up: pinned.tensor('bf16', [I, H], e * exBytes + I * H * 2),
      down: pinned.tensor('bf16', [H, I], e * exBytes + 2 * I * H * 2),
    });
    const js = (): { gate: HostTensor; up: HostTensor; down: HostTensor } => ({
      gate: new HostTensor('bf16', [I, H]),
      up: new HostTensor('bf16', [I, H]),
      down: new HostTensor('bf16', [H, I]),
    });
    const fullJs = be.expertTable(E, { hidden: H, intermediate: I });
    const fullPinned = be.expertTable(E, { hidden: H, intermediate: I });
    const routed = be.expertTable(E, { hidden: H, intermediate: I });
    for (let e = 0; e < E; e++) {
      fullJs.set(e, js());
      fullPinned.set(e, view(e));
    }
    const routedViews = [view(0), view(1)];
    const call = (t: ExpertTable): Promise<unknown> => be.moeExperts({ x, topkIds: ids, topkWeights: w, experts: t, out });
    const callRouted = (): Promise<unknown> => {
      routed.set(0, routedViews[0]!).set(1, routedViews[1]!);
      try {
        return call(routed);
      } finally {
        routed.clear(0).clear(1);
      }
    };
    const variants: Array<[string, () => Promise<unknown>]> = [
      ['full/js', () => call(fullJs)],
      ['full/pinned', () => call(fullPinned)],
      ['routed', callRouted],
    ];
    for (const [name, fn] of variants) {
      const submit: number[] = [];
      const awaited: number[] = [];
      for (let rep = 0; rep < 8; rep++) {
        const ps: Promise<unknown>[] = [];
        const t0 = performance.now();
        for (let i = 0; i < CALLS; i++) ps.push(fn());
        const t1 = performance.now();
        await Promise.all(ps);
        const t2 = performance.now();
        for (let i = 0; i < CALLS; i++) await fn();
        const t3 = performance.now();
        if (rep === 0) continue; // warm-up
        submit.push(((t1 - t0) * 1000) / CALLS);
        awaited.push(((t3 - t2) * 1000) / CALLS);
      }
      console.log(`${String(E).padEnd(5)} ${name.padEnd(13)} ${median(submit).toFixed(1).padStart(14)}   ${median(awaited).toFixed(1).padStart(13)}`);
    }
    pinned.dispose();
  }
  console.log(`load after ${os.loadavg()[0]!.toFixed(2)}`);
}

void main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
