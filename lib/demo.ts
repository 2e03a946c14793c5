/**
 * `moe-offload demo`: the main job on the embedded default. Makes a tiny random-weight Qwen3-MoE checkpoint (once,
 * in the OS temp folder), loads it with a quarter of its experts in the expert cache (FineMoE prefetch), generates
 * a few chat replies in latency mode on the backend at hand, and prints tokens/s, cache hits and where the time
 * went. The weights are random, so the text is too; everything else is the real path a real checkpoint takes.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadModel } from './engine/model.js';
import { makeModel } from './model/make-model.js';

const PROMPTS = [
  'What is a mixture-of-experts language model?',
  'Give me three tips for writing clear documentation.',
  'Explain why offloading experts to host memory helps on a small GPU.',
];

export interface DemoOptions {
  /** Folder for the generated model (default: $TMPDIR/moe-offload-demo/tiny-qwen3-moe). */
  dir?: string;
  maxNewTokens?: number;
  write?: (s: string) => void;
}

export async function demo(o: DemoOptions = {}): Promise<void> {
  const write = o.write ?? ((s: string) => process.stdout.write(s));
  const dir = o.dir ?? path.join(os.tmpdir(), 'moe-offload-demo', 'tiny-qwen3-moe');
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    const m = await makeModel(dir, { preset: 'tiny-qwen3-moe', seed: 1 });
    write(`made a tiny random-weight Qwen3-MoE checkpoint (${(m.parameters / 1e6).toFixed(1)} M parameters) in ${dir}\n`);
  }
  using model = await loadModel(dir, { experts: { fraction: 0.25, policy: 'finemoe' } });
  const c = model.config;
  write(
    `model: ${c.architecture}, ${c.numLayers} layers, ${c.numExperts} experts top-${c.topK}; backend ${model.backend.name}; ` +
      `expert cache holds 25% of ${c.moeLayers.length * c.numExperts} experts (FineMoE prefetch)\n\n`,
  );
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
}
