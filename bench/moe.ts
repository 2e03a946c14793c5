/**
 * moeExperts on the CPU at real models' shapes (issue 3, DESIGN.md section 8), with the limits measured in the
 * same run:
 *  - read bandwidth: native readProbe, one multithreaded pass summing a 512 MiB Float32Array (filled with 1.0, so
 *    every page is real memory): bytes read / time. Pure reads, no writes (cpp/cpu/read_probe.h).
 *  - bf16 dot-product peak: be.gemm bf16 -> f32 at m = 256, n = 1024, k = 1024 (a and b, 2.5 MiB, stay in L2/L3;
 *    20 calls queued back to back per timing, so the per-op round trip is hidden): what the vdpbf16ps micro-kernels
 *    reach when memory is not the limit (the native bench measures the same shape at about 400 GFLOP/s here).
 *  - large dense matmul: be.gemm bf16 -> f32 [1024, 4096] x [4096, 4096]^T (reference only).
 *  - register peak: native dotProbe (the tier's multiply-add chained on registers: vdpbf16ps, or f32 FMAs on the
 *    avx512 and avx2 tiers; every pool thread, best of 3): the strict limit (no kernel that loads its operands
 *    reaches it); frac_of_dot_peak uses it.
 * The read probe runs again right before and after every row (median of 3 passes each): the development VM's
 * bandwidth drifts between ~30 and ~60 GB/s within minutes, so frac_of_read_bw uses the row's own probe.
 * Each row: GFLOP/s (2 * T * k * 3 * H * I, the routed work) and weight GB/s (distinct routed experts * 3 * H * I
 * * 2 bytes / time: each touched expert's weights counted once), with frac_of_bf16_peak and frac_of_read_bw.
 * Every figure is the median of several timed runs after a warm-up (the machine is a shared 2-core VM: noisy).
 * Weights are a constant bf16 pattern (timing only); routing sends token t's slot j to expert (t * k + j) mod E.
 * Each row runs with row-major weights and, on the avx512bf16 tier, packed ones (panel64, the CPU runtime's layout;
 * speedup_vs_row_major on the packed row).
 * Run: node dist/bench/moe.js [--quick] [--t=512,4096] [--models=Qwen3-30B-A3B,Mixtral-8x7B]
 *   -> bench/results/moe-cpu-<date>[-<MOE_BENCH_LABEL>].json
 */
import fs from 'node:fs';
import os from 'node:os';

import { type ExpertTable, HostTensor, openBackend } from '../lib/index.js';
import { native } from '../lib/native.js';
import { median } from '../lib/batching/profile.js';
import { packsWeightsByDefault } from '../lib/backend.js';
import { bf16PeakGflops } from './bench-models.js';
import { machine, resultsFile } from './machine.js';

function filled(shape: number[], bits: number): HostTensor<'bf16'> {
  const t = new HostTensor('bf16', shape);
  t.data.fill(bits);
  return t as HostTensor<'bf16'>;
}

const r3 = (v: number): number => +v.toFixed(3);
const r1 = (v: number): number => +v.toFixed(1);

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const loadStart = os.loadavg()[0]!;  // the VM is shared: other processes' load is recorded with the figures
  const be = openBackend({ backend: 'cpu' });
  const nat = native() as unknown as { readProbe?: (d: Float32Array) => { seconds: number; sum: number } };

  // (a) streaming read bandwidth: median of `passes` passes over one 512 MiB buffer
  const probeBytes = 512 * 1024 * 1024;
  const probeBuf = typeof nat.readProbe === 'function' ? new Float32Array(probeBytes / 4).fill(1) : null;
  const probe = (passes: number): number | null => {
    if (probeBuf === null) return null;
    const secs: number[] = [];
    for (let i = 0; i < passes; i++) secs.push(nat.readProbe!(probeBuf).seconds);
    secs.sort((a, b) => a - b);
    return probeBytes / (secs[Math.floor(secs.length / 2)]! * 1e9);
  };
  probe(1);  // warm-up
  const readGBs = probe(7);
  // (b) bf16 dot-product peak (cache-resident) and the large dense matmul
  const pa = filled([256, 1024], 0x3c00), pb = filled([1024, 1024], 0x3c00);
  const pc = new HostTensor('f32', [256, 1024]);
  const reps = 20;
  const peakMs = await median(async () => {
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < reps; i++) ops.push(be.gemm(pa, pb, pc));
    await Promise.all(ops);
  }, 7);
  const peakGflops = (reps * 2 * 256 * 1024 * 1024) / (peakMs * 1e6);
  const a = filled([1024, 4096], 0x3c00), b = filled([4096, 4096], 0x3c00);
  const c = new HostTensor('f32', [1024, 4096]);
  const denseMs = await median(() => be.gemm(a, b, c), 3);
  const denseGflops = (2 * 1024 * 4096 * 4096) / (denseMs * 1e6);
  const dotPeak = bf16PeakGflops();
  console.log(`probes: read ${readGBs?.toFixed(1)} GB/s; bf16 peak (256x1024x1024) ${peakGflops.toFixed(1)} GFLOP/s; ` +
    `dense 1024x4096x4096 ${denseGflops.toFixed(1)} GFLOP/s; register peak ${dotPeak.toFixed(1)} GFLOP/s (${be.isa})`);

  // --t=512,4096 / --models=Qwen3-30B-A3B,...: a subset of the rows
  const listArg = (name: string) => process.argv.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3).split(',');
  const tArg = listArg('t')?.map(Number);
  const modelArg = listArg('models');
  const ts = tArg ?? (quick ? [1, 8] : [1, 8, 64, 512, 4096]);
  const models = [
    { name: 'Mixtral-8x7B', h: 4096, inter: 14336, e: 8, k: 2, ts },
    { name: 'Qwen3-30B-A3B', h: 2048, inter: 768, e: 128, k: 8, ts },
    { name: 'OLMoE-1B-7B', h: 2048, inter: 1024, e: 64, k: 8, ts },
    { name: 'DeepSeek-V2-Lite', h: 2048, inter: 1408, e: 64, k: 6, ts },
  ].filter((m) => modelArg === undefined || modelArg.includes(m.name));
  const rows: Array<Record<string, unknown>> = [];
  // row-major weights (the HF layout, what CUDA and the Fiddler path on CUDA hosts read) and, on the avx512bf16 tier,
  // packed ones (panel64: what the CPU runtime loads), measured one after the other at every row
  const layouts: Array<'row-major' | 'packed'> = packsWeightsByDefault(be) ? ['row-major', 'packed'] : ['row-major'];
  for (const m of models) {
    const maxT = Math.max(...m.ts);
    const used = new Set<number>();
    for (let i = 0; i < maxT * m.k; i++) used.add(i % m.e);
    const tables = new Map<string, ExpertTable>();
    for (const layout of layouts) {
      const packed = layout === 'packed';
      const table = be.expertTable(m.e, { hidden: m.h, intermediate: m.inter, packed });
      const weight = async (shape: [number, number]) => (packed ? be.packWeights(filled(shape, 0x3c00)) : filled(shape, 0x3c00));
      for (const x of used) table.set(x, { gate: await weight([m.inter, m.h]), up: await weight([m.inter, m.h]), down: await weight([m.h, m.inter]) });
      tables.set(layout, table);
    }
    for (const t of m.ts) {
      const ids = new HostTensor('i32', [t, m.k]);
      for (let i = 0; i < t * m.k; i++) ids.data[i] = i % m.e;
      const w = new HostTensor('f32', [t, m.k]);
      w.data.fill(1 / m.k);
      const x = filled([t, m.h], 0x3c00);
      const out = new HostTensor('bf16', [t, m.h]);
      const flops = 2 * t * m.k * 3 * m.h * m.inter;
      const runs = flops > 1e11 ? 3 : 7;
      // the layouts' runs alternate (A, B, A, B, ...; one warm-up each), so a drift of the VM's speed hits both alike
      const call = (layout: string) => be.moeExperts({ x, topkIds: ids, topkWeights: w, experts: tables.get(layout)!, out });
      const times = new Map<string, number[]>(layouts.map((l) => [l, []]));
      const bw0 = probe(3);
      for (const layout of layouts) await call(layout);
      for (let r = 0; r < runs; r++) {
        for (const layout of layouts) {
          const t0 = performance.now();
          await call(layout);
          times.get(layout)!.push(performance.now() - t0);
        }
      }
      const bw1 = probe(3);
      const rowGBs = bw0 === null || bw1 === null ? null : (bw0 + bw1) / 2;
      const rowMs = new Map<string, number>(layouts.map((l) => [l, [...times.get(l)!].sort((a, b) => a - b)[Math.floor(runs / 2)]!]));
      for (const layout of layouts) {
        const ms = rowMs.get(layout)!;
        const distinct = Math.min(m.e, t * m.k);
        const wbytes = distinct * 3 * m.h * m.inter * 2;
        const gflops = flops / (ms * 1e6);
        const gbs = wbytes / (ms * 1e6);
        const row = {
          model: m.name, weights: layout, T: t, H: m.h, I: m.inter, E: m.e, k: m.k,
          tokens_per_expert: r1((t * m.k) / distinct),
          ms: r3(ms), gflops: r1(gflops), weight_gbs: r1(gbs),
          frac_of_bf16_peak: r3(gflops / peakGflops),
          frac_of_dot_peak: r3(gflops / dotPeak),
          read_gbs: rowGBs === null ? null : r1(rowGBs),
          frac_of_read_bw: rowGBs === null ? null : r3(gbs / rowGBs),
          frac_of_dense_gemm: r3(gflops / denseGflops),
          ...(layout === 'packed' ? { speedup_vs_row_major: r3(rowMs.get('row-major')! / ms) } : {}),
          loadavg_1m: r1(os.loadavg()[0]!),
        };
        rows.push(row);
        console.log(JSON.stringify(row));
      }
    }
  }
  const result = {
    bench: 'moeExperts cpu',
    date: new Date().toISOString(),
    machine: machine(),
    isa: be.isa,
    loadavg_1m_at_start: r1(loadStart),
    method: 'median of 3 (over 1e11 flops) or 7 timed runs after one warm-up, the layouts alternating run by run; weights constant bf16; routing (t*k+j) mod E',
    probes: {
      read_gbs: readGBs === null ? null : r1(readGBs),
      read_probe: `one multithreaded f32 sum over ${probeBytes} bytes (native readProbe), median of 7 passes at the start; each row: median of 3 before and 3 after`,
      dot_peak_gflops: r1(dotPeak),
      bf16_peak_gflops: r1(peakGflops),
      bf16_peak_shape: `gemm bf16->f32 m=256 n=1024 k=1024, ${reps} calls queued per timing`,
      dense_gemm_gflops: r1(denseGflops),
      dense_gemm_shape: '1024x4096x4096 bf16->f32',
    },
    rows,
  };
  const file = resultsFile('moe-cpu');
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  console.log(`wrote ${file}`);
}

void main();
