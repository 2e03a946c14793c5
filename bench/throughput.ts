/**
 * Throughput mode (issue 8): decode throughput of batched generation on Mixtral-8x7B-shaped layers with random
 * weights versus the batch, on this machine's CPU backend, with the experts OFFLOADED (a 25% expert cache, LRU: a
 * big batch runs each MoE layer in module mode, lib/engine/experts.ts, so the layer's experts stream through the
 * slots once per step whatever the batch and the copy is amortised over every token of the global batch) and
 * RESIDENT (the kernel reads the pinned host store directly: on the CPU backend, where "device" memory is host
 * memory, copying into slots only adds traffic, so this is the configuration a CPU-only host should run).
 *
 * Per batch B: B random prompts of P tokens, generateBatch with maxSequences B and a token budget that prefills
 * every prompt in the first step; the steps in which all B sequences decode are timed (median), with the bytes
 * copied into slots per step (cache counters).
 * The machine's bound for the same step, measured in the same run:
 *   memory: (copied bytes x 2 (read store + write slot) + the step's expert bytes read by the kernel (expected
 *           distinct experts under uniform routing) + dense and LM-head bytes) / read probe bandwidth,
 *   compute: the step's flops (2 x params touched per token: routed experts, attention projections, router, LM
 *           head) / the compute peak (native dotProbe: the tier's multiply-add chained on registers, every pool
 *           thread: vdpbf16ps, or f32 FMAs on the avx512 and avx2 tiers),
 *   bound = max(memory, compute) (perfect overlap of copies and compute); frac_of_bound = bound / measured.
 * Next to it, the step's own compute rate (step_gflops = flops / step time) and the rate of a large dense matmul
 * measured in the same run (be.gemm bf16 [1024, 4096] x [4096, 4096]^T over the weight in the model's layout, packed
 * by default: issue 3's "large dense matmul" compute limit), and frac_of_bound_dense_gemm, the bound with that rate
 * as the compute limit. frac_of_bound (the register probe) stays the strict figure. (Before 2026-11-26 the matmul
 * ran on row-major weights, 0.63-0.75 of the register probe, slower than the packed step itself.)
 * On the CPU backend copies, kernels and attention share the same two cores and memory, so the bound is
 * optimistic: it assumes they overlap perfectly.
 * Weights are in loadModel's default layout: packed (panel64) on the avx512bf16 tier, row-major on the others;
 * --no-pack loads them row-major and --pack packed on any tier (avx2 / avx512: the FMA kernels over packed weights),
 * for an A/B in the same session.
 * Run: node dist/bench/throughput.js [--quick] [--no-pack | --pack] -> bench/results/throughput-cpu-<date>[-rowmajor][-<MOE_BENCH_LABEL>].json
 */
import fs from 'node:fs';
import os from 'node:os';

import { expectedExperts } from '../lib/batching/perf-model.js';
import { median, readProbeGBs } from '../lib/batching/profile.js';
import { HostTensor, loadModel, openBackend } from '../lib/index.js';
import { medianOf, StepIntervals } from '../lib/engine/batch.js';
import { packsWeightsByDefault } from '../lib/backend.js';
import { benchModel, bf16PeakGflops, decodeStepCost, randomRequests } from './bench-models.js';
import { machine, resultsFile } from './machine.js';

const r3 = (v: number): number => +v.toFixed(3);


/**
 * bf16 GFLOP/s of a large dense matmul on the CPU backend: gemm [1024, 4096] x [4096, 4096]^T -> f32 over the weight
 * in the layout the model runs (packed when `pack`), median of 3.
 */
async function denseGflops(pack: boolean): Promise<number> {
  const be = openBackend({ backend: 'cpu' });
  const a = new HostTensor('bf16', [1024, 4096]), w = new HostTensor('bf16', [4096, 4096]), c = new HostTensor('f32', [1024, 4096]);
  a.data.fill(0x3c00);
  w.data.fill(0x3c00);
  const b = pack ? await be.packWeights(w) : w;
  await be.gemm(a, b, c);
  const ms = await median(() => be.gemm(a, b, c), 3);
  return (2 * 1024 * 4096 * 4096) / (ms * 1e6);
}

/** Decode throughput rows of `mode` at each batch (one model load). */
async function measure(dir: string, mode: 'offloaded' | 'resident', batches: number[], promptTokens: number, peak: number, pack: boolean): Promise<Array<Record<string, unknown>>> {
  const rows: Array<Record<string, unknown>> = [];
  const model = await loadModel(dir, { experts: mode === 'offloaded' ? { fraction: 0.25, policy: 'lru' } : 'resident', kvCacheBytes: 2 * 2 ** 30, packWeights: pack });
  try {
    const cfg = model.config;
    const { expertBytes, denseBytes } = decodeStepCost(cfg, 1);
    const cache = model.expertCache;
    console.log(`Mixtral-8x7B shape, ${cfg.numLayers} layer(s), ${cache ? `${cache.capacity} of ${cfg.numLayers * cfg.numExperts} experts in slots` : 'experts resident'} (${(expertBytes / 2 ** 20).toFixed(0)} MiB each); bf16 peak ${peak.toFixed(0)} GFLOP/s`);
    for (const B of batches) {
      const reqs = randomRequests(B, promptTokens, 777 + B, 6);
      const probe0 = readProbeGBs(128 * 2 ** 20);
      const dense0 = await denseGflops(pack);
      const steps: Array<{ ms: number; copied: number }> = [];
      let bytesBefore = cache?.stats.bytesMoved ?? 0;
      const intervals = new StepIntervals();
      const t0 = performance.now();
      for await (const _ of model.generateBatch(reqs, {
        maxSequences: B,
        // every prompt in the first step, so that from the second step on all B sequences decode together
        maxBatchTokens: Math.max(1024, B * promptTokens),
        onStep: (st) => {
          const full = st.decodeTokens === B && st.tokens === B;
          intervals.mark(full);
          const moved = cache?.stats.bytesMoved ?? 0;
          if (full) steps.push({ ms: st.ms, copied: moved - bytesBefore });
          bytesBefore = moved;
        },
      })) {
        // the step timings are what is measured
      }
      const wallS = (performance.now() - t0) / 1000;
      const readGBs = (probe0 + readProbeGBs(128 * 2 ** 20)) / 2;
      const dense = (dense0 + (await denseGflops(pack))) / 2;
      if (steps.length === 0) throw new Error(`batch ${B}: no step decoded every sequence`);
      steps.sort((a, b) => a.ms - b.ms);
      const mid = steps[Math.floor(steps.length / 2)]!;
      const copied = steps.reduce((a, x) => a + x.copied, 0) / steps.length;
      // distinct experts the kernel reads per layer: expected under uniform routing (the random-weight model's
      // routing is close to uniform), U(B) = E (1 - (1 - k/E)^B)
      const touched = cfg.numLayers * expectedExperts(cfg.numExperts, cfg.topK, B);
      const memBytes = 2 * copied + touched * expertBytes + denseBytes;
      const { flops } = decodeStepCost(cfg, B);
      const memMs = memBytes / (readGBs * 1e6);
      const computeMs = flops / (peak * 1e6);
      const boundMs = Math.max(memMs, computeMs);
      const row = {
        experts: mode,
        batch: B,
        decode_steps_timed: steps.length,
        step_ms: r3(mid.ms),
        decode_tokens_per_s: r3((B * 1000) / mid.ms),
        // the same with the scheduling between steps (median interval between full decode steps; the step time
        // includes the sampling since stepTokens)
        decode_interval_ms: intervals.ms.length ? r3(medianOf(intervals.ms)) : null,
        decode_tokens_per_s_interval: intervals.ms.length ? r3((B * 1000) / medianOf(intervals.ms)) : null,
        copied_MiB_per_step: r3(copied / 2 ** 20),
        read_GBs: r3(readGBs),
        bound_memory_ms: r3(memMs),
        bound_compute_ms: r3(computeMs),
        bound_tokens_per_s: r3((B * 1000) / boundMs),
        frac_of_bound: r3(boundMs / mid.ms),
        binding: memMs > computeMs ? 'memory (copies + weight reads)' : 'compute (bf16 dot products)',
        step_gflops: r3(flops / (mid.ms * 1e6)),
        dense_gemm_gflops: r3(dense),
        // the bound with issue 3's compute limit instead (a large dense matmul in the model's weight layout, this run)
        frac_of_bound_dense_gemm: r3(Math.max(memMs, flops / (dense * 1e6)) / mid.ms),
        wall_s: r3(wallS),
        loadavg_1m: r3(os.loadavg()[0]!),
      };
      rows.push(row);
      console.log(JSON.stringify(row));
    }
  } finally {
    model.dispose();
  }
  return rows;
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const pack = !process.argv.includes('--no-pack') && (process.argv.includes('--pack') || packsWeightsByDefault(openBackend({ backend: 'cpu' })));
  const batches = quick ? [1, 8, 32] : [1, 4, 16, 64, 128, 256, 512];
  const promptTokens = 32;
  const dir = await benchModel('mixtral-8x7b-shape', 1);
  const peak = bf16PeakGflops();
  if (peak === 0) throw new Error('the compute peak probe needs a SIMD tier (avx2 or above)');
  const rows: Array<Record<string, unknown>> = [];
  for (const mode of ['offloaded', 'resident'] as const) rows.push(...(await measure(dir, mode, batches, promptTokens, peak, pack)));
  const summarise = (mode: string) => {
    const rs = rows.filter((r) => r.experts === mode);
    const best = rs.reduce((a, r) => ((r.decode_tokens_per_s as number) > (a.decode_tokens_per_s as number) ? r : a));
    return {
      best_batch: best.batch,
      best_decode_tokens_per_s: best.decode_tokens_per_s,
      speedup_vs_batch_1: r3((best.decode_tokens_per_s as number) / (rs[0]!.decode_tokens_per_s as number)),
      best_frac_of_bound: best.frac_of_bound,
      best_frac_of_bound_dense_gemm: best.frac_of_bound_dense_gemm,
      best_step_gflops: best.step_gflops,
    };
  };
  const summary = { offloaded: summarise('offloaded'), resident: summarise('resident') };
  console.log(JSON.stringify(summary));
  const out = { bench: 'throughput mode, offloaded experts (bench/throughput.ts)', machine: machine(), date: new Date().toISOString(), model: 'mixtral-8x7b-shape, 1 layer; experts 25% cached (LRU) or resident', bf16_peak_gflops: r3(peak), packed_weights: pack, prompt_tokens: promptTokens, summary, rows };
  const file = resultsFile('throughput-cpu', pack ? '' : '-rowmajor');
  fs.writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`saved ${file}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
