/**
 * moeExperts on the CPU at real models' shapes (DESIGN.md section 8) and small T, with the limits measured in the
 * same run: compute = a dense bf16 GEMM [1024, 4096] x [4096, 4096]^T through be.gemm (same micro-kernels);
 * memory = a 1 GiB device-pool memcpy through be.copy (bytes read + written / time; a copy, not a pure read).
 * Reports GFLOP/s (2 * T * k * 3 * H * I) and weight GB/s (distinct routed experts * 3 * H * I * 2 bytes / time)
 * as fractions of those. Median of 5 runs after 1 warm-up. Weights are a constant bf16 pattern (timing only).
 * Run: node dist/bench/moe.js  -> bench/results/moe-cpu-<date>.json
 */
import fs from 'node:fs';
import path from 'node:path';

import { HostTensor, openBackend } from '../lib/index.js';
import { machine } from './machine.js';

async function median(fn: () => Promise<unknown>, runs = 5): Promise<number> {
  await fn();
  const ts: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  return ts[Math.floor(ts.length / 2)]!;
}

function filled(shape: number[], bits: number): HostTensor<'bf16'> {
  const t = new HostTensor('bf16', shape);
  t.data.fill(bits);
  return t as HostTensor<'bf16'>;
}

async function main(): Promise<void> {
  const be = openBackend({ backend: 'cpu' });
  // compute probe
  const a = filled([1024, 4096], 0x3c00);
  const b = filled([4096, 4096], 0x3c00);
  const c = new HostTensor('f32', [1024, 4096]);
  const gemmMs = await median(() => be.gemm(a, b, c));
  const peakGflops = (2 * 1024 * 4096 * 4096) / (gemmMs * 1e6);
  // memory probe
  const bytes = 1 << 30;
  const src = be.alloc('u8', [bytes]);
  const dst = be.alloc('u8', [bytes]);
  const copyMs = await median(() => be.copy(src, dst), 3);
  const copyGBs = (2 * bytes) / (copyMs * 1e6);
  src.dispose();
  dst.dispose();
  console.log(`probes: dense bf16 gemm ${peakGflops.toFixed(1)} GFLOP/s (${be.isa}); memcpy ${copyGBs.toFixed(1)} GB/s (read + write)`);

  const models = [
    { name: 'Mixtral-8x7B', h: 4096, inter: 14336, e: 8, k: 2, ts: [1, 8] },
    { name: 'Qwen3-30B-A3B', h: 2048, inter: 768, e: 128, k: 8, ts: [1, 8, 64] },
    { name: 'OLMoE-1B-7B', h: 2048, inter: 1024, e: 64, k: 8, ts: [1, 8, 64] },
  ];
  const rows: Array<Record<string, unknown>> = [];
  for (const m of models) {
    const table = be.expertTable(m.e, { hidden: m.h, intermediate: m.inter });
    const maxT = Math.max(...m.ts);
    // Routing: token t takes experts (t * k + j) mod E: a spread that reaches as many experts as T * k allows.
    const used = new Set<number>();
    for (let i = 0; i < maxT * m.k; i++) used.add(i % m.e);
    for (const x of used) {
      table.set(x, { gate: filled([m.inter, m.h], 0x3c00), up: filled([m.inter, m.h], 0x3c00), down: filled([m.h, m.inter], 0x3c00) });
    }
    for (const t of m.ts) {
      const ids = new HostTensor('i32', [t, m.k]);
      for (let i = 0; i < t * m.k; i++) ids.data[i] = i % m.e;
      const w = new HostTensor('f32', [t, m.k]);
      w.data.fill(1 / m.k);
      const x = filled([t, m.h], 0x3c00);
      const out = new HostTensor('bf16', [t, m.h]);
      const ms = await median(() => be.moeExperts({ x, topkIds: ids, topkWeights: w, experts: table, out }));
      const distinct = Math.min(m.e, t * m.k);
      const flops = 2 * t * m.k * 3 * m.h * m.inter;
      const wbytes = distinct * 3 * m.h * m.inter * 2;
      const gflops = flops / (ms * 1e6);
      const gbs = wbytes / (ms * 1e6);
      const row = {
        model: m.name,
        T: t,
        H: m.h,
        I: m.inter,
        E: m.e,
        k: m.k,
        ms: +ms.toFixed(3),
        gflops: +gflops.toFixed(1),
        weight_gbs: +gbs.toFixed(1),
        frac_of_gemm_peak: +(gflops / peakGflops).toFixed(3),
        frac_of_memcpy_bw: +(gbs / copyGBs).toFixed(3),
      };
      rows.push(row);
      console.log(JSON.stringify(row));
    }
  }
  const result = {
    bench: 'moeExperts cpu',
    date: new Date().toISOString(),
    machine: machine(),
    isa: be.isa,
    probes: { dense_bf16_gemm_gflops: +peakGflops.toFixed(1), gemm_shape: '1024x4096x4096', memcpy_gbs_read_plus_write: +copyGBs.toFixed(1), memcpy_bytes: bytes },
    rows,
  };
  const dir = path.join(__dirname, '..', '..', 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `moe-cpu-${result.date.slice(0, 10)}.json`);
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  console.log(`wrote ${file}`);
}

void main();
