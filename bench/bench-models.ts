/**
 * What the model benchmarks share: random-weight checkpoints generated once (seed 1) into $TMPDIR/moe-offload-bench,
 * random prompts, the bf16 dot-product peak, and a decode step's flops and weight bytes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { type ModelConfig, makeModel, type PresetName } from '../lib/index.js';
import { native } from '../lib/native.js';

/** The folder of `preset` (with `layers` decoder layers when given), made on first use. */
export async function benchModel(preset: PresetName, layers?: number): Promise<string> {
  const dir = path.join(os.tmpdir(), 'moe-offload-bench', `${preset}${layers ? `-L${layers}` : ''}`);
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    const t0 = performance.now();
    await makeModel(dir, { preset, seed: 1, ...(layers ? { config: { num_hidden_layers: layers } } : {}) });
    console.log(`  made ${preset} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  return dir;
}

/**
 * `n` requests of `promptTokens` random token ids in [0, vocab) (one LCG from `seed`, drawn request after request),
 * greedy to maxNewTokens. A length or a per-request array of lengths (a workload's).
 */
export function randomRequests(n: number, promptTokens: number | readonly number[], seed: number, maxNewTokens: number | readonly number[], vocab = 500) {
  let s = seed;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % vocab;
  const at = (x: number | readonly number[], i: number) => (typeof x === 'number' ? x : x[i]!);
  return Array.from({ length: n }, (_, i) => ({ prompt: { tokens: Array.from({ length: at(promptTokens, i) }, rnd) }, options: { maxNewTokens: at(maxNewTokens, i), stopAtEos: false } }));
}

/**
 * Compute peak of the CPU backend's bf16 kernels (GFLOP/s): the native register-only probe of the active tier's
 * multiply-add (vdpbf16ps on avx512bf16; f32 FMAs on avx512 and avx2, which widen bf16), best of 3 (0 on scalar).
 */
export function bf16PeakGflops(): number {
  let best = 0;
  for (let i = 0; i < 3; i++) {
    const r = native().dotProbe(20_000_000);
    best = Math.max(best, r.flops / r.seconds / 1e9);
  }
  return best;
}

/**
 * One decode step of B tokens of `cfg`: flops (2 x the parameters each token touches: its routed experts, the
 * attention projections, the router, the LM head) and the bytes of one expert and of the dense weights (attention
 * projections bf16 and router f32 of every layer, LM head bf16).
 */
export function decodeStepCost(cfg: ModelConfig, B: number): { flops: number; expertBytes: number; denseBytes: number } {
  const H = cfg.hiddenSize;
  const attnParams = (2 * cfg.numHeads + 2 * cfg.numKvHeads) * cfg.headDim * H;
  return {
    flops: B * 2 * (cfg.numLayers * (cfg.topK * 3 * H * cfg.moeIntermediateSize + attnParams + cfg.numExperts * H) + cfg.vocabSize * H),
    expertBytes: 3 * H * cfg.moeIntermediateSize * 2,
    denseBytes: cfg.numLayers * (attnParams * 2 + cfg.numExperts * H * 4) + cfg.vocabSize * H * 2,
  };
}

