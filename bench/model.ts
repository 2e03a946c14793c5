/**
 * Model runtime benchmark (issue 7): time per output token at batch 1, greedy, on the tiny presets and on
 * real-shape layers with random weights (Mixtral-8x7B, Qwen3-30B-A3B, OLMoE-1B-7B dimensions, fewer layers), with
 * where the time went:
 *   attention / experts / dense ops (wall time of the awaited native op groups, round trips included),
 *   stall (waiting for expert transfers; offloaded runs), and time outside native code (decode wall time minus the
 *   native groups: JS bookkeeping, KV writes, sampling, detokenisation; target < 5% of the step).
 * Roofline in the same run: a decode step must read every dense weight once plus the k routed experts of each MoE
 * layer; at the read bandwidth measured by the native read probe that takes bytes / bandwidth: `frac_of_roofline` =
 * that time / measured ms per token (1.0 = memory-bound at the probe's bandwidth). This VM's memory bandwidth
 * drifts (15-44 GB/s within minutes), so the probe is re-measured right before and after each case and the row
 * records both; the fraction uses their mean.
 * Checkpoints are generated once into $TMPDIR/moe-offload-bench (makeModel; the Mixtral-shape one is ~3.3 GB).
 * Run: node dist/bench/model.js [--quick] -> bench/results/model-cpu-<date>.json
 */
import fs from 'node:fs';
import os from 'node:os';

import { readProbeGBs } from '../lib/batching/profile.js';
import { type ExpertMode, loadModel, type PresetName } from '../lib/index.js';
import { benchModel } from './bench-models.js';
import { machine, resultsFile } from './machine.js';

interface Case {
  preset: PresetName;
  layers?: number;
  experts: Exclude<ExpertMode, 'auto'>;
  tokens: number;
}

const r3 = (v: number): number => +v.toFixed(3);

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const cases: Case[] = [
    { preset: 'tiny-mixtral', experts: 'resident', tokens: 64 },
    { preset: 'tiny-qwen2-moe', experts: 'resident', tokens: 64 },
    { preset: 'tiny-qwen3-moe', experts: 'resident', tokens: 64 },
    { preset: 'tiny-olmoe', experts: 'resident', tokens: 64 },
    { preset: 'tiny-qwen3-moe', experts: { fraction: 0.25, policy: 'lru' }, tokens: 64 },
    { preset: 'olmoe-1b-7b-shape', layers: 2, experts: 'resident', tokens: 24 },
    { preset: 'qwen3-30b-a3b-shape', layers: 2, experts: 'resident', tokens: 24 },
    { preset: 'qwen3-30b-a3b-shape', layers: 2, experts: { fraction: 0.25, policy: 'lru' }, tokens: 24 },
    ...(quick ? [] : [{ preset: 'mixtral-8x7b-shape' as const, layers: 1, experts: 'resident' as const, tokens: 12 }]),
  ];
  const bw = readProbeGBs(512 * 2 ** 20);
  console.log(`read bandwidth (probe): ${bw.toFixed(1)} GB/s`);
  const rows: Record<string, unknown>[] = [];
  for (const c of cases) {
    const dir = await benchModel(c.preset, c.layers);
    const model = await loadModel(dir, { experts: c.experts });
    try {
      const cfg = model.config;
      // bytes a decode step reads: dense weights (attention, router, norms ~0, LM head) + k experts per MoE layer
      const H = cfg.hiddenSize;
      const attn = (cfg.numHeads * 2 + cfg.numKvHeads * 2) * cfg.headDim * H * 2;
      const router = cfg.numExperts * H * 4;
      const shared = cfg.sharedExperts ? 3 * H * cfg.sharedExperts.intermediateSize * 2 + H * 2 : 0;
      const experts = cfg.topK * 3 * H * cfg.moeIntermediateSize * 2;
      const stepBytes = cfg.numLayers * (attn + router + shared + experts) + cfg.vocabSize * H * 2;
      const prompt = 'Explain how a mixture-of-experts model decides which experts to use for each token.';
      await model.generate(prompt, { maxNewTokens: 4, stopAtEos: false }); // warm-up
      const runs = quick ? 1 : 3;
      const results = [];
      const bwBefore = readProbeGBs(512 * 2 ** 20);
      for (let i = 0; i < runs; i++) results.push(await model.generate(prompt, { maxNewTokens: c.tokens, stopAtEos: false }));
      const bwAfter = readProbeGBs(512 * 2 ** 20);
      const bwCase = (bwBefore + bwAfter) / 2;
      results.sort((a, b) => a.stats.msPerToken - b.stats.msPerToken);
      const r = results[Math.floor(results.length / 2)]!;
      const d = r.stats.decode;
      const steps = r.stats.generatedTokens - 1;
      const nativeMs = d.attentionMs + d.expertMs + d.denseMs + d.stallMs;
      const outside = r.stats.decodeMs - nativeMs;
      const rooflineMs = (stepBytes / (bwCase * 1e9)) * 1e3;
      const row = {
        model: c.preset,
        layers: cfg.numLayers,
        experts: c.experts === 'resident' ? 'resident' : `cache ${c.experts.fraction} ${c.experts.policy}`,
        prompt_tokens: r.stats.promptTokens,
        decode_steps: steps,
        ms_per_token: r3(r.stats.msPerToken),
        tokens_per_s: r3(r.stats.decodeTokensPerSecond),
        prefill_ms: r3(r.stats.prefillMs),
        per_token_ms: {
          attention: r3(d.attentionMs / steps),
          experts: r3(d.expertMs / steps),
          stall: r3(d.stallMs / steps),
          dense: r3(d.denseMs / steps),
          outside_native: r3(outside / steps),
        },
        outside_native_frac: r3(outside / r.stats.decodeMs),
        step_bytes: stepBytes,
        read_GBs_before_after: [r3(bwBefore), r3(bwAfter)],
        roofline_ms: r3(rooflineMs),
        frac_of_roofline: r3(rooflineMs / r.stats.msPerToken),
        ...(r.stats.cache ? { cache: r.stats.cache } : {}),
      };
      rows.push(row);
      console.log(JSON.stringify(row));
    } finally {
      model.dispose();
    }
  }
  const out = {
    bench: 'model runtime, batch 1 greedy decode (bench/model.ts)',
    machine: machine(),
    read_bandwidth_GBs: r3(bw),
    load_avg_1m: os.loadavg()[0],
    rows,
  };
  const file = resultsFile('model-cpu');
  fs.writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`saved ${file}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
