/**
 * `npm run bench`: TypeScript-level benchmarks (tinybench) of the op path itself, the part every later layer
 * pays per op: argument checks, native submission, the stream thread, completion back on the JS thread. Kernel
 * throughput is the native executable's job (`npm run bench:native`, bench/native/bench.cc).
 *
 * Prints a table and writes bench/results/ops-overhead-<date>.json with the machine.
 *   - round trip: one tiny op awaited at a time (latency floor of an op the caller waits for)
 *   - pipelined: 1000 tiny ops in flight, time per op (what a queue of small ops costs)
 *   - gemm 1024^3 bf16 through Node per CPU tier, with GFLOP/s, and the same gemm's time as a multiple of the
 *     round-trip overhead (how big an op must be for the overhead to vanish)
 */
import fs from 'node:fs';
import path from 'node:path';

import { HostTensor, listBackends, openBackend } from '../lib/index.js';
import { machine } from './machine.js';

async function main(): Promise<void> {
  const { Bench } = await import('tinybench');
  const be = openBackend({ backend: 'cpu' });
  const x = HostTensor.from('f32', [1], [1]);
  const bench = new Bench({ time: 1000, warmupTime: 200 });
  bench.add('add f32[1] round trip', async () => {
    await be.add(x, x, x);
  });
  bench.add('add f32[1] x1000 pipelined (per batch)', async () => {
    const ps: Promise<unknown>[] = [];
    for (let i = 0; i < 1000; i++) ps.push(be.add(x, x, x));
    await Promise.all(ps);
  });
  await bench.run();
  const rows: Array<Record<string, unknown>> = [];
  const [rt, pipe] = bench.results as Array<{ latency: { mean: number; p50?: number; p99?: number } }>;
  const roundTripUs = rt!.latency.mean * 1000;
  const pipelinedUs = pipe!.latency.mean; // ms per 1000 ops = us per op
  rows.push({ name: 'op round trip (add f32[1], awaited)', mean_us: +roundTripUs.toFixed(2), p99_us: rt!.latency.p99 ? +(rt!.latency.p99 * 1000).toFixed(2) : null });
  rows.push({ name: 'op pipelined (1000 in flight), per op', mean_us: +pipelinedUs.toFixed(2) });

  const m = 1024;
  const a = new HostTensor('bf16', [m, m]);
  const b = new HostTensor('bf16', [m, m]);
  a.data.fill(0x3c00);
  b.data.fill(0x3c00);
  const out = new HostTensor('f32', [m, m]);
  for (const st of listBackends().filter((s) => s.kind === 'cpu' && s.available && s.isa !== 'scalar')) {
    const tb = openBackend({ backend: 'cpu', isa: st.isa! });
    await tb.gemm(a, b, out);
    const times: number[] = [];
    let tier = '';
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      tier = await tb.gemm(a, b, out);
      times.push(performance.now() - t0);
    }
    times.sort((p, q) => p - q);
    const ms = times[2]!;
    rows.push({
      name: `gemm bf16 ${m}^3 -> f32 via Node [${st.name}, kernel ${tier}]`,
      median_ms: +ms.toFixed(2),
      gflops: +((2 * m * m * m) / (ms * 1e6)).toFixed(1),
      overhead_fraction: +(roundTripUs / 1000 / ms).toFixed(5),
    });
  }
  console.table(rows);
  const result = { benchmark: 'ops-overhead', machine: machine(), results: rows };
  const dir = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `ops-overhead-${result.machine.date.slice(0, 10)}.json`);
  fs.writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${path.relative(process.cwd(), file)}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
