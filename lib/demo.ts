/**
 * `moe-offload demo`: the main job on the embedded default. Makes a tiny random-weight Qwen3-MoE checkpoint (once,
 * in the OS temp folder), loads it with a quarter of its experts in the expert cache (FineMoE prefetch), generates
 * a few chat replies in latency mode, then a batch of prompts in throughput mode (continuous batching), on the
 * backend at hand, and prints tokens/s, cache hits, where the time went, and the performance model's prediction
 * next to the measured throughput. The weights are random, so the text is too; everything else is the real path a
 * real checkpoint takes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { Backend } from './backend.js';
import { predictDecode, predictPrefill } from './batching/perf-model.js';
import { profileModel } from './batching/profile.js';
import { medianOf, StepIntervals } from './engine/batch.js';
import { loadModel } from './engine/model.js';
import { makeModel } from './model/make-model.js';

const BATCH_TOPICS = [
  'Summarise the plot of a heist movie in three sentences.',
  'What are good habits for a code review?',
  'Explain the difference between latency and throughput.',
  'Write a short poem about autumn rain.',
  'How does a hash map handle collisions?',
  'Suggest a weekend itinerary for a small coastal town.',
  'Why do transformers need positional information?',
  'List three ways to reduce memory use in a web service.',
];

const PROMPTS = [
  'What is a mixture-of-experts language model?',
  'Give me three tips for writing clear documentation.',
  'Explain why offloading experts to host memory helps on a small GPU.',
];

export interface DemoOptions {
  /** Folder for the generated model (default: $TMPDIR/moe-offload-demo/tiny-qwen3-moe). */
  dir?: string;
  maxNewTokens?: number;
  /** Requests in the throughput-mode batch (default 32). */
  batch?: number;
  /** The backend or its kind (default 'auto': env MOE_OFFLOAD_BACKEND, else CUDA when usable, else the CPU). */
  backend?: Backend | 'auto' | 'cpu' | 'cuda';
  write?: (s: string) => void;
}

export async function demo(o: DemoOptions = {}): Promise<void> {
  const write = o.write ?? ((s: string) => process.stdout.write(s));
  const dir = o.dir ?? path.join(os.tmpdir(), 'moe-offload-demo', 'tiny-qwen3-moe');
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    const m = await makeModel(dir, { preset: 'tiny-qwen3-moe', seed: 1 });
    write(`made a tiny random-weight Qwen3-MoE checkpoint (${(m.parameters / 1e6).toFixed(1)} M parameters) in ${dir}\n`);
  }
  const backend = o.backend ?? 'auto';
  using model = await loadModel(dir, { experts: { fraction: 0.25, policy: 'finemoe' }, backend });
  const c = model.config;
  write(
    `model: ${c.architecture}, ${c.numLayers} layers, ${c.numExperts} experts top-${c.topK}; backend ${model.backend.name}` +
      `${model.packedWeights ? ' (packed weights)' : ''}; ` +
      `expert cache holds 25% of ${c.moeLayers.length * c.numExperts} experts (FineMoE prefetch)\n\n`,
  );
  write('latency mode (one request at a time):\n');
  for (const prompt of PROMPTS) {
    const r = await model.generate([{ role: 'user', content: prompt }], { maxNewTokens: o.maxNewTokens ?? 32, stopAtEos: false });
    const s = r.stats;
    const d = s.decode;
    const steps = Math.max(1, s.generatedTokens - 1);
    write(`> ${prompt}\n${JSON.stringify(r.text.slice(0, 120))}\n`);
    write(
      `  ${s.promptTokens} prompt tokens, prefill ${s.prefillMs.toFixed(1)} ms; ${s.generatedTokens} tokens at ${s.decodeTokensPerSecond.toFixed(0)} tokens/s ` +
        `(per token: attention ${(d.attentionMs / steps).toFixed(2)} ms, experts ${(d.expertMs / steps).toFixed(2)} ms, transfer stall ${(d.stallMs / steps).toFixed(2)} ms, ` +
        `dense ${(d.denseMs / steps).toFixed(2)} ms, host ${(d.hostMs / steps).toFixed(2)} ms)` +
        `${s.cache ? `; expert cache ${s.cache.hits} hits / ${s.cache.misses} misses, ${s.cache.prefetchIssued} prefetched` : ''}\n\n`,
    );
  }

  const cs = model.cacheStats;
  if (cs) write(`expert cache over the latency requests: ${cs.hits} hits / ${cs.misses} misses (${((100 * cs.hits) / Math.max(1, cs.hits + cs.misses)).toFixed(0)}% hit rate), ${cs.prefetchIssued} prefetched\n\n`);

  // throughput mode: a batch of prompts through continuous batching, experts resident (on the CPU backend the
  // slots only emulate device memory, so resident is the fastest configuration; through a cache, a big batch runs
  // each layer in module mode, streaming its experts once per step: bench/throughput.ts measures both); the
  // performance model's prediction alongside
  using resident = await loadModel(dir, { backend: model.backend });
  const batch = Array.from({ length: o.batch ?? 32 }, (_, i) => BATCH_TOPICS[i % BATCH_TOPICS.length]!);
  // experts 'auto': resident on the CPU backend; on CUDA in GPU slots (every one, for this tiny model)
  const slots = resident.expertCache?.capacity;
  write(`throughput mode: ${batch.length} requests, ${o.maxNewTokens ?? 32} new tokens each, continuous batching, ${slots ? `experts in ${slots} device slots` : 'experts resident'}\n`);
  const mem = resident.memory();
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  write(
    `  memory: compute backend ${mib(mem.device.denseWeights)} dense weights + ${mib(mem.device.expertSlots)} expert slots; ` +
      `host ${mib(mem.host.expertStore)} expert store + ${mib(mem.host.kvCache)} KV cache\n`,
  );
  // the attention on the tier the model runs it on (no tier trial), the model's own memory where it spans a cold read
  const profile = await profileModel(resident.backend, resident.config, { quick: true, maxBatch: batch.length, attentionIsa: resident.attentionIsa, model: resident });
  const t0 = performance.now();
  let tokens = 0;
  const intervals = new StepIntervals();
  const prefill = { tokens: 0, ms: 0 }; // steps that only prefill
  for await (const r of resident.generateBatch(
    batch.map((b) => ({ prompt: [{ role: 'user', content: b }], options: { maxNewTokens: o.maxNewTokens ?? 32, stopAtEos: false } })),
    {
      maxSequences: batch.length,
      onStep: (st) => {
        if (st.decodeTokens === 0) {
          prefill.tokens += st.tokens;
          prefill.ms += st.ms;
        }
        // decode throughput: time from one all-decoding step to the next (the step, sampling, bookkeeping)
        intervals.mark(st.decodeTokens === st.tokens && st.tokens === batch.length);
      },
    },
  )) {
    tokens += r.tokens.length;
  }
  const wall = performance.now() - t0;
  write(`  ${tokens} tokens in ${(wall / 1000).toFixed(2)} s: ${((tokens * 1000) / wall).toFixed(0)} tokens/s overall (prefill included)\n`);
  const prompt = batch.reduce((a, b) => a + resident.encode([{ role: 'user', content: b }]).length, 0) / batch.length;
  if (prefill.ms > 0) {
    const pre = predictPrefill(resident.config, profile, { prompt: Math.round(prompt), chunk: 512 });
    write(`  prefill steps: ${((prefill.tokens * 1000) / prefill.ms).toFixed(0)} prompt tokens/s measured, ${pre.tokensPerSecond.toFixed(0)} predicted (bound: ${pre.bound})\n`);
  }
  if (intervals.ms.length > 0) {
    const measured = (batch.length * 1000) / medianOf(intervals.ms);
    // the KV length of the decode steps, on average: the prompt plus half the new tokens
    const context = Math.round(prompt + (o.maxNewTokens ?? 32) / 2);
    const pred = predictDecode(resident.config, profile, { batch: batch.length, context, ...(slots ? { expertSlots: slots } : {}) });
    const t = pred.terms;
    write(
      `  decode steps with all ${batch.length} sequences: ${measured.toFixed(0)} tokens/s measured, ${pred.tokensPerSecond.toFixed(0)} predicted by the performance model ` +
        `(bound: ${pred.bound}; predicted step ${pred.stepMs.toFixed(2)} ms = experts ${t.expertsMs.toFixed(2)} + attention ${t.attentionMs.toFixed(2)} + projections ${t.attentionProjMs.toFixed(2)} ` +
        `+ router ${t.routerMs.toFixed(2)} + LM head ${t.lmHeadMs.toFixed(2)} + host ${t.hostMs.toFixed(2)} + group round trips and runtime ${t.overheadMs.toFixed(2)} ms)\n`,
    );
  }
}
