/**
 * Throughput mode on a GPU host (issue 8): prefill and decode tokens/s of batched generation on a Mixtral-8x7B-shaped
 * model with random weights and L decoder layers (default 4: all 32 need ~93 GB of host memory and of disk), experts
 * OFFLOADED (25% of them in GPU slots: a big batch runs each MoE layer in module mode, its experts streamed through
 * the slots once per step) and RESIDENT (every expert in a GPU slot: `experts: { fraction: 1 }`, filled by the first
 * steps; the CPU backend's rows use `experts: 'resident'`, the store itself), next to limits measured in the same run
 * (8 ops queued back to back per timing, so the per-op round trip to JS is not counted as device time):
 *   compute:  be.gemm bf16 [4096, 4096] x [4096, 4096]^T with device operands, median of 5 (GFLOP/s);
 *   H2D:      be.copy of a 256 MiB pinned buffer into device memory, median of 5 (GB/s);
 *   device:   be.copy of 256 MiB from device to device memory, median of 5: 2 x bytes / time (read + write traffic);
 *   host read: the read probe (the CPU attention streams the KV cache from host memory).
 * A decode step's bound is max(flops / compute, bytes copied into slots / H2D, weight bytes read (the touched
 * experts, dense layers, LM head) / device, KV bytes read / host read): perfect overlap of the four;
 * frac_of_bound = bound / measured step.
 * Per batch B: B random prompts of P tokens; prefill tokens/s over the steps that only prefill; decode tokens/s at the
 * median step in which all B sequences decode. MoE-Gen's published figures for the full Mixtral-8x7B on one A5000 24 GB
 * (2790 prefill / 469 decode tokens/s) are recorded as the reference the issue names: a different GPU and 32 layers,
 * so compare per layer (step_ms_per_layer here) rather than raw tokens/s.
 * Model-based batching baseline (issue 8; opt-in, --model-based): FlexGen / DeepSpeed-Inference style, one batch flows through every module
 * with its KV cache in GPU memory, so GPU memory caps the batch. B_model is derived for the full 32-layer model (the
 * bench model's config, whose dimensions are Mixtral-8x7B's: hidden 4096, 8 x 14336 experts top-2, 32:8 heads of 128,
 * vocab 32000, untied head, as in ../shared/data/model-configs.json, with num_hidden_layers 32) on a --gpu-gib=G GPU
 * (default 24, MoE-Gen's A5000):
 *   B_model = max(1, floor((G - dense - slots - reserve) / kv_per_sequence)), in GiB:
 *   dense: 32 x (q/k/v/o + 2 RMSNorms + router) + embeddings + LM head + final norm, bf16 (all resident);
 *   slots: topK experts (2 for Mixtral, the experts of one token: one can load while the other computes), the least a
 *     model-based system streaming experts needs; more slots would lower B_model and raise the speedup;
 *   reserve: --reserve-gib (default 1), an assumed allowance for the CUDA context, workspaces and activations, not measured;
 *   kv_per_sequence: 32 x 2 (K, V) x kvHeads x headDim x 2 bytes x (prompt + new tokens of this run's requests).
 *   The cap scales as 1 / sequence length: at short sequences (the default 128 + 7 tokens) it exceeds every batch run here.
 * The offloaded model (same options) then runs one batch of B_model sequences (a measured row is reused when B_model is
 * one of the batches); speedup_vs_model_based = decode tokens/s of the best offloaded row / that of the B_model run.
 * Both runs are this engine: its attention runs on the CPU over a host KV cache in both (a real model-based system would
 * run it on the GPU), and an offloaded decode step is bound by the H2D expert streaming at these batches, the same in
 * both, so the ratio measures the batching policy (the batch each can hold), not a reimplementation of FlexGen or
 * DeepSpeed. FlexGen can also place the KV cache in host memory; the cap here is the KV-on-GPU policy the issue names.
 * Runs on the CPU backend too (--backend cpu: the same orchestration over the CPU device pool), which is how it is
 * checked without a GPU. --quick: 1 layer, prompt 16, batches 1 and 8, 3 decode steps; B_model is derived the same way
 * (for the quick run's sequence length) but the model-based run is capped at 4 sequences, so the path runs cheaply.
 * --micro-batches=M1,M2,..: each batch at each count of attention micro-batches (default 1; BatchOptions.microBatches:
 * one group's CPU attention overlaps the GPU projections of the others), an A/B in one run.
 * Tokens per step: min(B x P, --step-tokens, default 32768). A batch whose prompts take several steps gets that many
 * more new tokens per request (so that some steps have every sequence decoding: the first sequences still decode when
 * the last finish their prefill); the KV cache and B_model count them.
 * Run: node dist/bench/throughput-cuda.js [--backend=cpu] [--layers=N] [--prompt=P] [--batches=B1,B2,..]
 *   [--micro-batches=M1,..] [--modes=offloaded,resident] [--model-based [--gpu-gib=G] [--reserve-gib=R]]
 *   [--step-tokens=N] [--slots=N] [--attention-threads=N|auto] [--attention-isa=avx512|...] [--quick]
 * The 5x comparison of issue 8 needs module-based batches of about 5 x B_model at the same sequence length, e.g.
 *   --layers=2 --prompt=512 --batches=1536 --modes=offloaded --model-based   (B_model about 300 at 24 GiB and 526 tokens)
 *   -> bench/results/throughput-staged-<backend>-<date>[-quick][-<MOE_BENCH_LABEL>].json
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { median, readProbeGBs } from '../lib/batching/profile.js';
import { expectedExperts } from '../lib/batching/perf-model.js';
import { type Backend, CPU_ISAS, type CpuIsa, HostTensor, loadModel, type ModelConfig, openBackend, parseModelConfig, type StepTimes } from '../lib/index.js';
import { medianOf, StepIntervals } from '../lib/engine/batch.js';
import { emptyTimes } from '../lib/engine/forward.js';
import { benchModel, decodeStepCost, randomRequests } from './bench-models.js';
import { machine, resultsFile } from './machine.js';

const r3 = (v: number): number => +v.toFixed(3);
/** Layers of the full Mixtral-8x7B, for which the model-based batch cap is derived; the run's batch with --quick. */
const FULL_LAYERS = 32;
const QUICK_CAP = 4;
const MOE_GEN_A5000 = { gpu: 'NVIDIA RTX A5000 24 GB', model: 'Mixtral-8x7B (32 layers)', prefill_tokens_per_s: 2790, decode_tokens_per_s: 469, source: 'MoE-Gen paper (../shared/seeds), as quoted in issue 8' };

/** Device GEMM rate, GFLOP/s: bf16 [4096, 4096] x [4096, 4096]^T -> f32, operands in device memory. */
async function computeGflops(be: Backend): Promise<number> {
  const n = 4096;
  const a = be.alloc('bf16', [n, n]), b = be.alloc('bf16', [n, n]), c = be.alloc('f32', [n, n]);
  try {
    const h = new HostTensor('bf16', [n, n]);
    for (let i = 0; i < h.data.length; i++) h.data[i] = 0x3c00 | (Math.imul(i, 2654435761) >>> 25); // varied mantissas, not constant data
    await be.copy(h, a);
    await be.copy(h, b);
    const ms = await median(async () => {
      await Promise.all(Array.from({ length: 8 }, () => be.gemm(a, b, c)));
      await be.synchronize();
    }, 5);
    return (8 * 2 * n * n * n) / (ms * 1e6);
  } finally {
    a.dispose();
    b.dispose();
    c.dispose();
  }
}

/** Device -> device copy traffic, GB/s: 2 x 256 MiB (read + write) / time, median of 5. */
async function deviceGBs(be: Backend): Promise<number> {
  const bytes = 256 * 2 ** 20;
  const a = be.alloc('u8', [bytes]), b = be.alloc('u8', [bytes]);
  try {
    const ms = await median(async () => {
      await Promise.all(Array.from({ length: 8 }, () => be.copy(a, b)));
      await be.synchronize();
    }, 5);
    return (8 * 2 * bytes) / (ms * 1e6);
  } finally {
    a.dispose();
    b.dispose();
  }
}

/** Pinned host -> device copy bandwidth, GB/s (256 MiB, median of 5). */
async function h2dGBs(be: Backend): Promise<number> {
  const bytes = 256 * 2 ** 20;
  const src = be.allocPinned(bytes);
  const dst = be.alloc('u8', [bytes]);
  try {
    const s = src.tensor('u8', [bytes]);
    s.data.fill(1);
    const ms = await median(async () => {
      await Promise.all(Array.from({ length: 8 }, () => be.copy(s, dst)));
      await be.synchronize();
    }, 5);
    return (8 * bytes) / (ms * 1e6);
  } finally {
    dst.dispose();
    src.dispose();
  }
}

/**
 * Model-based batching's batch on a `gpuGiB` GPU (KV cache in GPU memory, next to the dense weights of every layer
 * and the expert slots): floor((budget - dense weights - expert slots - reserve) / KV bytes per sequence), at least 1.
 * Dense weights, bf16: per layer q/k/v/o, 2 RMSNorms and the router; embeddings, LM head (unless tied), final norm.
 * Expert slots: topK experts (3 x hidden x moeIntermediate bf16 each), the experts of one token.
 */
function modelBasedCap(cfg: ModelConfig, layers: number, gpuGiB: number, reserveGiB: number, seqTokens: number) {
  const H = cfg.hiddenSize;
  const GiB = 2 ** 30;
  const attn = (2 * cfg.numHeads + 2 * cfg.numKvHeads) * cfg.headDim * H;
  const dense = layers * (attn + 2 * H + cfg.numExperts * H) * 2 + (cfg.tieWordEmbeddings ? 1 : 2) * cfg.vocabSize * H * 2 + H * 2;
  const slots = cfg.topK * decodeStepCost(cfg, 1).expertBytes;
  const kvPerSeq = layers * 2 * cfg.numKvHeads * cfg.headDim * 2 * seqTokens;
  const batch = Math.max(1, Math.floor((gpuGiB * GiB - dense - slots - reserveGiB * GiB) / kvPerSeq));
  const t = { budget: gpuGiB, dense_weights: r3(dense / GiB), expert_slots: r3(slots / GiB), reserve: reserveGiB, kv_per_sequence: +(kvPerSeq / GiB).toFixed(6) };
  const formula = `floor((${t.budget} - ${t.dense_weights} dense - ${t.expert_slots} slots (${cfg.topK} experts) - ${t.reserve} reserve) / ${t.kv_per_sequence} KV per sequence (${layers} x 2 x ${cfg.numKvHeads} x ${cfg.headDim} x 2 bytes x ${seqTokens} tokens))`;
  return { batch, terms_gib: t, kv_per_sequence_MiB: r3(kvPerSeq / 2 ** 20), formula };
}

/** Where `ms` of step time went (StepTimes; 'other': the rest). */
function breakdown(ms: number, t: StepTimes) {
  return {
    attention: r3(t.attentionMs),
    experts: r3(t.expertMs),
    stall: r3(t.stallMs),
    dense: r3(t.denseMs),
    // of dense: embedding + norm + q/k/v + RoPE; o-proj + norm + router; final norm + LM head + logits
    dense_qkv: r3(t.denseQkvMs),
    dense_out: r3(t.denseOutMs),
    dense_head: r3(t.denseHeadMs),
    host: r3(t.hostMs),
    other: r3(ms - t.attentionMs - t.expertMs - t.stallMs - t.denseMs - t.hostMs),
  };
}

type Row = { experts: string; batch: number; decode_tokens_per_s: number; prefill_tokens_per_s: number | null } & Record<string, unknown>;

async function main(): Promise<void> {
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const quick = process.argv.includes('--quick');
  const backend = (arg('backend') ?? 'cuda') as 'cuda' | 'cpu';
  const layers = Number(arg('layers') ?? (quick ? 1 : 4));
  const promptTokens = Number(arg('prompt') ?? (quick ? 16 : 128));
  const batches = arg('batches')?.split(',').map(Number) ?? (quick ? [1, 8] : [1, 16, 64, 256]);
  if (batches.some((b) => !Number.isInteger(b) || b < 1)) throw new Error(`--batches must be positive integers, received ${arg('batches')}`);
  const maxStepTokens = Number(arg('step-tokens') ?? 32768);
  if (!Number.isInteger(maxStepTokens) || maxStepTokens < 1) throw new Error(`--step-tokens must be a positive integer, received ${arg('step-tokens')}`);
  const stepTokens = (B: number) => Math.min(B * promptTokens, maxStepTokens);
  // every sequence decodes in one step only if the step holds the batch
  if (batches.some((b) => b > maxStepTokens)) throw new Error(`--batches must not exceed --step-tokens (${maxStepTokens}): a step could not decode every sequence, received ${batches.join(',')}`);
  const decodeSteps = quick ? 3 : 6;
  // micro-batches of the attention module (BatchOptions.microBatches): every batch runs at each count, for an A/B
  const micros = arg('micro-batches')?.split(',').map(Number) ?? [1];
  if (micros.some((m) => !Number.isInteger(m) || m < 1)) throw new Error(`--micro-batches must be positive integers, received ${arg('micro-batches')}`);
  const modes = (arg('modes') ?? 'offloaded,resident').split(',') as Array<'offloaded' | 'resident'>;
  const gpuGiB = Number(arg('gpu-gib') ?? 24);
  // offloaded rows: this many expert slots instead of 25% of the experts (e.g. a layer's worth or two, so that the next
  // layer's experts can stream in while this one computes)
  const slots = arg('slots') === undefined ? undefined : Number(arg('slots'));
  if (slots !== undefined && !(Number.isInteger(slots) && slots >= 1)) throw new Error(`--slots must be a positive integer, received ${arg('slots')}`);
  const reserveGiB = Number(arg('reserve-gib') ?? 1);
  // the CPU pool threads the attention runs on (LoadModelOptions.attentionThreads; default 'auto')
  const attentionThreads = arg('attention-threads') === undefined || arg('attention-threads') === 'auto' ? 'auto' : Number(arg('attention-threads'));
  if (attentionThreads !== 'auto' && !(Number.isInteger(attentionThreads) && attentionThreads >= 0)) throw new Error(`--attention-threads must be 'auto' or an integer >= 0, received ${arg('attention-threads')}`);
  // the attention's CPU kernel tier (LoadModelOptions.attentionIsa; default the CPU's best)
  const attentionIsa = arg('attention-isa') as CpuIsa | undefined;
  if (attentionIsa !== undefined && !CPU_ISAS.includes(attentionIsa)) throw new Error(`--attention-isa must be one of ${CPU_ISAS.join(', ')}, received ${attentionIsa}`);
  const be = openBackend({ backend });
  const compute = await computeGflops(be);
  const h2d = await h2dGBs(be);
  const dev = await deviceGBs(be);
  console.log(`${be.name}: gemm ${compute.toFixed(0)} GFLOP/s, H2D ${h2d.toFixed(1)} GB/s, device copy ${dev.toFixed(1)} GB/s, host read ${readProbeGBs(128 * 2 ** 20).toFixed(1)} GB/s`);
  const dir = await benchModel('mixtral-8x7b-shape', layers);
  // New tokens per request at batch B (stepTokens: tokens per step, prefill and decode together): the decode steps timed plus
  // as many as the prefill of the whole batch takes steps (each step also carries the decoding sequences' tokens), so
  // that the first sequences are still decoding when the last finish their prefill: there are steps in which all B
  // decode (a big batch prefills over many steps).
  const newTokens = (B: number) => decodeSteps + 1 + (B * promptTokens > stepTokens(B) ? Math.ceil((B * promptTokens) / Math.max(1, stepTokens(B) - B)) + 2 : 0);
  const seqTokens = (B: number) => promptTokens + newTokens(B);
  // the model-based batch (derived from the bench model's config for the full model at the length of its own
  // sequences), known before the KV is sized
  const modelBasedPlan = (() => {
    if (!process.argv.includes('--model-based')) return undefined;
    const cfg = parseModelConfig(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')));
    const first = modelBasedCap(cfg, FULL_LAYERS, gpuGiB, reserveGiB, promptTokens + decodeSteps + 1).batch;
    const cap = modelBasedCap(cfg, FULL_LAYERS, gpuGiB, reserveGiB, seqTokens(quick ? Math.min(first, QUICK_CAP) : first));
    return { cap, batch: quick ? Math.min(cap.batch, QUICK_CAP) : cap.batch };
  })();
  const modelBasedBatch = modelBasedPlan?.batch ?? 0;
  const rows: Row[] = [];
  let modelBased: Record<string, unknown> | undefined;
  let summary = '';
  for (const mode of modes) {
    // on the CPU backend, deviceActivations runs the CUDA path's orchestration (activations in the device pool)
    // the host KV cache: room for the largest batch this run makes (the model-based one included), at least 8 GiB
    const kvBytes = (B: number) => Math.ceil(1.25 * B * seqTokens(B) * layers * 2 * 8 * 128 * 2); // Mixtral: 8 KV heads of 128
    const kvCacheBytes = Math.max(8 * 2 ** 30, ...[...batches, modelBasedBatch].map(kvBytes));
    const model = await loadModel(dir, { backend, deviceActivations: true, experts: mode === 'offloaded' ? (slots !== undefined ? { slots, policy: 'lru' } : { fraction: 0.25, policy: 'lru' }) : backend === 'cuda' ? { fraction: 1, policy: 'lru' } : 'resident', kvCacheBytes, attentionThreads, ...(attentionIsa ? { attentionIsa } : {}) });
    try {
      const cfg = model.config;
      const kvBytesPerToken = cfg.numLayers * 2 * cfg.numKvHeads * cfg.headDim * 2;
      const { expertBytes, denseBytes } = decodeStepCost(cfg, 1);
      const cache = model.expertCache;
      const measure = async (B: number, micro: number): Promise<Row> => {
        const reqs = randomRequests(B, promptTokens, 1234 + B, newTokens(B));
        const read0 = readProbeGBs(128 * 2 ** 20);
        const prefill = { tokens: 0, ms: 0 };
        // every step that carried prompt tokens (a big batch's prefill runs next to the first sequences' decode)
        const withPrompt = { steps: 0, promptTokens: 0, tokens: 0, ms: 0, firstMs: 0, times: emptyTimes() };
        const decode: Array<{ ms: number; copied: number; times: StepTimes }> = [];
        let moved = cache?.stats.bytesMoved ?? 0;
        const intervals = new StepIntervals();
        for await (const _ of model.generateBatch(reqs, {
          maxSequences: B,
          maxBatchTokens: stepTokens(B),
          microBatches: micro,
          onStep: (st) => {
            const full = st.decodeTokens === B && st.tokens === B;
            intervals.mark(full);
            const now = cache?.stats.bytesMoved ?? 0;
            if (st.tokens > st.decodeTokens) {
              if (withPrompt.steps === 0) withPrompt.firstMs = st.ms;
              withPrompt.steps++;
              withPrompt.promptTokens += st.tokens - st.decodeTokens;
              withPrompt.tokens += st.tokens;
              withPrompt.ms += st.ms;
              for (const k of Object.keys(withPrompt.times) as Array<keyof StepTimes>) withPrompt.times[k] += st.times[k];
            }
            if (st.decodeTokens === 0) {
              prefill.tokens += st.tokens;
              prefill.ms += st.ms;
            } else if (st.decodeTokens === B && st.tokens === B) {
              decode.push({ ms: st.ms, copied: now - moved, times: st.times });
            }
            moved = now;
          },
        })) {
          // the step timings are what is measured
        }
        const read = (read0 + readProbeGBs(128 * 2 ** 20)) / 2;
        if (decode.length === 0) throw new Error(`batch ${B}: no step decoded every sequence`);
        decode.sort((a, b) => a.ms - b.ms);
        const mid = decode[Math.floor(decode.length / 2)]!;
        const { flops } = decodeStepCost(cfg, B);
        const kvRead = B * (promptTokens + newTokens(B) / 2) * kvBytesPerToken;
        const weightBytes = cfg.numLayers * expectedExperts(cfg.numExperts, cfg.topK, B) * expertBytes + denseBytes;
        const parts = { compute: flops / (compute * 1e6), h2d: mid.copied / (h2d * 1e6), device_reads: weightBytes / (dev * 1e6), host_kv_reads: kvRead / (read * 1e6) };
        const binding = (Object.entries(parts) as Array<[string, number]>).reduce((a, b) => (b[1] > a[1] ? b : a));
        const boundMs = binding[1];
        const row = {
          experts: mode,
          batch: B,
          micro_batches: micro,
          attention_threads: model.attentionThreads || null,
          attention_isa: model.attentionIsa,
          prompt_tokens: promptTokens,
          new_tokens: newTokens(B),
          prefill_tokens_per_s: prefill.ms > 0 ? r3((prefill.tokens * 1000) / prefill.ms) : null,
          decode_steps_timed: decode.length,
          decode_step_ms: r3(mid.ms),
          step_ms_per_layer: r3(mid.ms / cfg.numLayers),
          decode_tokens_per_s: r3((B * 1000) / mid.ms),
          // the same with the scheduling between steps (median interval between full decode steps; the step time
          // includes the sampling since stepTokens)
          decode_interval_ms: intervals.ms.length ? r3(medianOf(intervals.ms)) : null,
          decode_tokens_per_s_interval: intervals.ms.length ? r3((B * 1000) / medianOf(intervals.ms)) : null,
          copied_MiB_per_step: r3(mid.copied / 2 ** 20),
          bound_ms: Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, r3(v)])),
          binding: binding[0],
          frac_of_bound: r3(boundMs / mid.ms),
          // where the median decode step's time went (the runtime's own accounting; 'other': the rest of the step)
          step_breakdown_ms: breakdown(mid.ms, mid.times),
          // the steps that carried prompt tokens (the first one included, whose time also holds the first use of
          // this batch size's buffers): prompt tokens per second over them, and where their time went, summed
          prompt_steps: {
            steps: withPrompt.steps,
            prompt_tokens: withPrompt.promptTokens,
            tokens: withPrompt.tokens,
            ms: r3(withPrompt.ms),
            first_step_ms: r3(withPrompt.firstMs),
            prompt_tokens_per_s: withPrompt.ms > 0 ? r3((withPrompt.promptTokens * 1000) / withPrompt.ms) : null,
            breakdown_ms: breakdown(withPrompt.ms, withPrompt.times),
          },
          expected_experts_per_layer: r3(expectedExperts(cfg.numExperts, cfg.topK, B)),
          host_read_GBs: r3(read),
          loadavg_1m: r3(os.loadavg()[0]!),
        };
        console.log(JSON.stringify(row));
        return row;
      };
      for (const B of batches) for (const micro of micros) rows.push(await measure(B, micro));
      if (mode === 'offloaded' && modelBasedPlan) {
        // the model-based run: the same engine, model and options, one batch of B_model sequences through every module
        const { cap, batch: B } = modelBasedPlan;
        console.log(`model-based batch cap, ${gpuGiB} GiB GPU, ${FULL_LAYERS}-layer model (GiB): ${cap.formula} = ${cap.batch}${B < cap.batch ? ` (--quick: run at ${B})` : ''}`);
        const reused = rows.find((r) => r.experts === 'offloaded' && r.batch === B && r.micro_batches === micros[0]);
        const row = reused ?? (await measure(B, micros[0]!));
        const best = rows.filter((r) => r.experts === 'offloaded').reduce((a, b) => (b.decode_tokens_per_s > a.decode_tokens_per_s ? b : a));
        modelBased = {
          gpu_gib: gpuGiB,
          config: `the bench model's config (Mixtral-8x7B dimensions, vocab ${cfg.vocabSize}) with ${FULL_LAYERS} layers`,
          sequence_tokens: seqTokens(B),
          module_based_sequence_tokens: seqTokens(Math.max(...batches)),
          derivation_gib: cap.terms_gib,
          kv_per_sequence_MiB: cap.kv_per_sequence_MiB,
          formula: cap.formula,
          batch_cap: cap.batch,
          batch: B,
          reused_row: reused !== undefined,
          decode_tokens_per_s: row.decode_tokens_per_s,
          prefill_tokens_per_s: row.prefill_tokens_per_s,
          module_based: { batch: best.batch, decode_tokens_per_s: best.decode_tokens_per_s, prefill_tokens_per_s: best.prefill_tokens_per_s },
          speedup_vs_model_based: r3(best.decode_tokens_per_s / row.decode_tokens_per_s),
          row,
        };
        summary = `module-based batching (batch ${best.batch}: ${best.decode_tokens_per_s} decode tokens/s) vs model-based (batch ${B}${B < cap.batch ? ', --quick cap' : ''}: ${row.decode_tokens_per_s}): ${modelBased.speedup_vs_model_based}x`;
      }
    } finally {
      model.dispose();
    }
  }
  const out = {
    bench: 'throughput mode on the compute backend (bench/throughput-cuda.ts)',
    machine: machine(),
    backend: be.name,
    date: new Date().toISOString(),
    model: `mixtral-8x7b-shape, ${layers} layer(s), random weights; experts ${slots !== undefined ? `in ${slots} slots` : '25% in slots'} (LRU) or all in slots (CUDA; the store itself on the CPU backend)`,
    limits: { gemm_gflops: r3(compute), h2d_GBs: r3(h2d), device_copy_GBs: r3(dev) },
    reference_moe_gen: MOE_GEN_A5000,
    rows,
    model_based: modelBased,
  };
  const file = resultsFile(`throughput-staged-${backend}`, quick ? '-quick' : '');
  fs.writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(summary);
  console.log(`saved ${file}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
