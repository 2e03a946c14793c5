/**
 * Performance model accuracy (issue 8): predicted vs measured decode throughput of batched generation on this
 * machine, over models x batch x context. The profile (lib/batching/profile.ts) is measured first in the same
 * run; each configuration then runs `generateBatch` with B random prompts of L tokens and times the steps in which
 * all B sequences decode (median), and the model predicts the same step at context L + (decode steps)/2, with its
 * memory-bound terms rescaled to the read bandwidth measured around that configuration (this VM's bandwidth drifts
 * by up to 2x within minutes; the profile records the bandwidth it saw).
 * Reports |predicted - measured| / measured per configuration and the mean (target <= 6%, MoE-Lens's 94%).
 * Run: node dist/bench/perf-model.js [--quick] -> bench/results/perf-model-cpu-<date>.json
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { predictDecode } from '../lib/batching/perf-model.js';
import { profileHardware, readProbeGBs } from '../lib/batching/profile.js';
import { loadModel, openBackend, type PresetName } from '../lib/index.js';
import { benchModel } from './bench-models.js';
import { machine } from './machine.js';

const r3 = (v: number): number => +v.toFixed(3);

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const be = openBackend({ backend: 'cpu' });
  const profile = await profileHardware(be, { quick });
  console.log('profile', JSON.stringify(profile));
  const models: Array<{ preset: PresetName; layers?: number; batches: number[]; contexts: number[] }> = [
    { preset: 'tiny-qwen3-moe', batches: [1, 8, 32], contexts: [128, 512] },
    { preset: 'tiny-mixtral', batches: [1, 8, 32], contexts: [128, 512] },
    { preset: 'olmoe-1b-7b-shape', layers: 2, batches: [1, 8, 32], contexts: [128, 512] },
    ...(quick ? [] : [{ preset: 'qwen3-30b-a3b-shape' as const, layers: 2, batches: [1, 8, 32], contexts: [128, 512] }]),
  ];
  const decodeSteps = 8;
  const rows: Array<Record<string, unknown>> = [];
  for (const m of models) {
    const dir = await benchModel(m.preset, m.layers);
    const model = await loadModel(dir, { kvCacheBytes: 1 << 30 });
    try {
      const V = model.config.vocabSize;
      for (const B of m.batches) {
        for (const L of m.contexts) {
          let s = 12345 + B * 7 + L;
          const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % Math.min(V, 500);
          // enough new tokens that every sequence is still decoding when the last one finishes its prefill
          const maxNewTokens = decodeSteps + Math.ceil((B * L) / 1024) + 2;
          const reqs = Array.from({ length: B }, () => ({ prompt: { tokens: Array.from({ length: L }, rnd) }, options: { maxNewTokens, stopAtEos: false } }));
          const readNow = readProbeGBs();
          const stepMs: number[] = [];
          for await (const _ of model.generateBatch(reqs, { maxSequences: B, maxBatchTokens: Math.max(1024, B), onStep: (st) => st.decodeTokens === B && st.tokens === B && stepMs.push(st.ms) })) {
            // results are not needed; the step timings are
          }
          stepMs.sort((a, b) => a - b);
          const measured = stepMs[Math.floor(stepMs.length / 2)]!;
          if (stepMs.length === 0) throw new Error(`no step decoded all ${B} sequences (${m.preset}, context ${L})`);
          const pred = predictDecode(model.config, profile, { batch: B, context: L + maxNewTokens - stepMs.length / 2 }, { readGBs: (readNow + readProbeGBs()) / 2 });
          const row = {
            model: m.preset,
            layers: model.config.numLayers,
            batch: B,
            context: L,
            measured_step_ms: r3(measured),
            predicted_step_ms: r3(pred.stepMs),
            measured_tokens_per_s: r3((B * 1000) / measured),
            predicted_tokens_per_s: r3(pred.tokensPerSecond),
            rel_error: r3(Math.abs(pred.stepMs - measured) / measured),
            read_GBs_now: r3(readNow),
            bound: pred.bound,
            terms_ms: Object.fromEntries(Object.entries(pred.terms).map(([k, v]) => [k, r3(v)])),
            decode_steps_timed: stepMs.length,
          };
          rows.push(row);
          console.log(JSON.stringify(row));
        }
      }
    } finally {
      model.dispose();
    }
  }
  const mean = rows.reduce((a, r) => a + (r.rel_error as number), 0) / rows.length;
  console.log(`mean |predicted - measured| / measured over ${rows.length} configurations: ${(mean * 100).toFixed(1)}%`);
  const out = { bench: 'performance model accuracy, batched decode (bench/perf-model.ts)', machine: machine(), load_avg_1m: os.loadavg()[0], profile, mean_rel_error: r3(mean), rows };
  const file = path.join(__dirname, '..', '..', 'bench', 'results', `perf-model-cpu-${new Date().toISOString().slice(0, 10)}${process.env.MOE_BENCH_LABEL ? `-${process.env.MOE_BENCH_LABEL}` : ''}.json`);
  fs.writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`saved ${file}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
