/**
 * A real trace's lengths end to end (issue 8: the performance model plans for the workload's prompt / output length
 * distribution): N requests taken at an even stride from a request trace in ../shared/data (default the Azure LLM
 * inference 2023 conversation trace), their lengths divided by --scale (default 4) so that a CPU run takes minutes.
 * Per model: its profile (profileModel), then planRun with that workload (the batch at the workload's decode context,
 * the KV cache for it), then every request through generateBatch with plan.batch (random token prompts of the
 * request's length, exactly its output length: stopAtEos off). Reports generated tokens per second of wall time
 * against plan.workload.tokensPerSecond (prefill and decode predicted apart; the runtime shares steps between them),
 * and the prefill-only and all-decode steps measured against their own predictions.
 * Run: node dist/bench/workload.js [--models=a,b] [--requests=N] [--scale=S] [--trace=conv|code|mooncake] [--staged]
 *   -> bench/results/workload-<cpu|cpu-staged>-<date>[-$MOE_BENCH_LABEL].json
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { planRun } from '../lib/batching/plan.js';
import { profileModel } from '../lib/batching/profile.js';
import { readWorkload, workloadShape } from '../lib/batching/workload.js';
import { loadModel, openBackend, type PresetName } from '../lib/index.js';
import { medianOf, StepIntervals } from '../lib/engine/batch.js';
import { benchModel, randomRequests } from './bench-models.js';
import { machine, resultsFile } from './machine.js';

const r3 = (v: number): number => +v.toFixed(3);
const TRACES: Record<string, string> = {
  conv: 'azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv',
  code: 'azure-llm-inference-2023/AzureLLMInferenceTrace_code.csv',
  mooncake: 'mooncake-fast25/conversation_trace.jsonl',
};

async function main(): Promise<void> {
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const n = Number(arg('requests') ?? 48);
  const scale = Number(arg('scale') ?? 4);
  const traceName = arg('trace') ?? 'conv';
  const staged = process.argv.includes('--staged');
  if (!Number.isSafeInteger(n) || n < 1 || !(scale >= 1) || !TRACES[traceName]) throw new Error('--requests=N (>= 1), --scale=S (>= 1), --trace=conv|code|mooncake');
  const tracePath = path.join(__dirname, '..', '..', '..', 'shared', 'data', TRACES[traceName]!);
  const full = readWorkload(tracePath);
  const stride = Math.max(1, Math.floor(full.prompts.length / n));
  const idx = Array.from({ length: Math.min(n, full.prompts.length) }, (_, i) => i * stride);
  const workload = {
    prompts: idx.map((i) => Math.max(1, Math.min(1024, Math.round(full.prompts[i]! / scale)))),
    outputs: idx.map((i) => Math.max(1, Math.round(full.outputs[i]! / scale))),
  };
  const shape = workloadShape(workload);
  console.log(`${traceName}: ${shape.requests} requests (every ${stride}th of ${full.prompts.length}, lengths / ${scale}): prompts ${shape.meanPrompt.toFixed(0)}, outputs ${shape.meanOutput.toFixed(0)}, decode context ${shape.decodeContext.toFixed(0)}`);
  const only = arg('models')?.split(',');
  const models: Array<{ preset: PresetName; layers: number }> = [
    { preset: 'olmoe-1b-7b-shape', layers: 2 },
    { preset: 'qwen3-30b-a3b-shape', layers: 2 },
  ];
  const rows: Array<Record<string, unknown>> = [];
  const t0 = performance.now();
  for (const m of models.filter((x) => !only || only.includes(x.preset))) {
    const dir = await benchModel(m.preset, m.layers);
    const backend = openBackend({ backend: 'cpu' });
    let profile;
    let cfg;
    {
      using probe = await loadModel(dir, { backend, deviceActivations: staged, experts: 'resident' });
      cfg = probe.config;
      profile = await profileModel(backend, cfg, { maxBatch: shape.requests, prefillTokens: [128, 256, 512], staged });
    }
    const plan = planRun(cfg, { backend, profile, workload, experts: 'resident' });
    using model = await loadModel(dir, { ...plan.load, deviceActivations: staged });
    const seqLoad = os.loadavg()[0]!;
    const requests = randomRequests(workload.prompts.length, workload.prompts, 7, workload.outputs);
    const prefill = { tokens: 0, ms: 0 };
    const intervals = new StepIntervals();
    let steps = 0;
    const start = performance.now();
    let generated = 0;
    for await (const r of model.generateBatch(requests, {
      ...plan.batch,
      onStep: (st) => {
        steps++;
        if (st.decodeTokens === 0) {
          prefill.tokens += st.tokens;
          prefill.ms += st.ms;
        }
        intervals.mark(st.decodeTokens === st.tokens && st.tokens === plan.batch.maxSequences);
      },
    })) {
      if (r.error) throw r.error;
      generated += r.tokens.length;
    }
    const wallS = (performance.now() - start) / 1000;
    const measured = generated / wallS;
    const predicted = plan.workload!.tokensPerSecond!;
    const decodeMeasured = intervals.ms.length > 0 ? (plan.batch.maxSequences! * 1000) / medianOf(intervals.ms) : null;
    const row = {
      model: m.preset,
      layers: m.layers,
      batch: plan.batch.maxSequences,
      context: plan.context,
      kv_cache_bytes: plan.load.kvCacheBytes,
      steps,
      generated_tokens: generated,
      wall_s: r3(wallS),
      measured_tokens_per_s: r3(measured),
      predicted_tokens_per_s: r3(predicted),
      rel_error: r3((predicted - measured) / measured),
      prefill_steps_measured_tokens_per_s: prefill.ms > 0 ? r3((prefill.tokens * 1000) / prefill.ms) : null,
      prefill_predicted_tokens_per_s: r3(plan.workload!.prefillTokensPerSecond!),
      full_batch_decode_measured_tokens_per_s: decodeMeasured === null ? null : r3(decodeMeasured),
      full_batch_decode_intervals: intervals.ms.length,
      decode_predicted_tokens_per_s: r3(plan.prediction!.tokensPerSecond),
      load_avg_1m: r3(seqLoad),
    };
    rows.push(row);
    console.log(JSON.stringify(row));
  }
  const out = {
    bench: 'workload',
    machine: machine(),
    backend: 'cpu',
    staged,
    trace: { name: traceName, file: TRACES[traceName], requests: shape.requests, stride, scale, prompt_cap: 1024 },
    workload: { mean_prompt: r3(shape.meanPrompt), mean_output: r3(shape.meanOutput), decode_context: r3(shape.decodeContext) },
    method: 'planRun(workload) -> generateBatch(plan.batch); generated tokens / wall time vs plan.workload.tokensPerSecond',
    seconds: r3((performance.now() - t0) / 1000),
    rows,
  };
  const file = resultsFile(`workload-cpu${staged ? '-staged' : ''}`);
  fs.writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`saved ${file}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
