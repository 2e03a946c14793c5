/**
 * The JS between the decode steps of a big batch (`generateBatch`, the CPU backend): what runBatch does on the JS
 * thread after a step's tokens arrive and before the next step starts (reading the tokens, detokenizing them, stop
 * and length checks, building the next step). Measured as the median interval between consecutive steps in which
 * every sequence decodes minus the median such step's own time (`onStep`'s `ms`), next to that step time, so the
 * ratio shows what the gap costs the batch's decode throughput. On a GPU host the gap is not hidden either: the
 * next step cannot start before it ends.
 * Model: the tiny-qwen3-moe preset (a small step, so the gap shows); B random prompts of 16 ids in [0, 500) (byte
 * tokens included, so multi-byte characters are split over tokens), 24 new tokens each, greedy, no stop strings;
 * --batches (default 512,2048), --reps rounds (default 3).
 * Run: node dist/bench/step-gap.js [--batches=B1,..] [--reps=N] -> bench/results/step-gap-<date>[-<MOE_BENCH_LABEL>].json
 */
import fs from 'node:fs';

import { loadModel } from '../lib/index.js';
import { medianOf, StepIntervals } from '../lib/engine/batch.js';
import { benchModel, randomRequests } from './bench-models.js';
import { machine, resultsFile } from './machine.js';

const r3 = (v: number): number => +v.toFixed(3);

async function main(): Promise<void> {
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const batches = (arg('batches') ?? '512,2048').split(',').map(Number);
  if (batches.some((b) => !Number.isSafeInteger(b) || b < 1)) throw new Error(`--batches must be positive integers, received ${arg('batches')}`);
  const reps = Number(arg('reps') ?? 3);
  if (!Number.isSafeInteger(reps) || reps < 1) throw new Error(`--reps must be a positive integer, received ${arg('reps')}`);
  const dir = await benchModel('tiny-qwen3-moe');
  using model = await loadModel(dir, { kvCacheBytes: 1 << 30, backend: 'cpu' });
  const rows: Array<Record<string, unknown>> = [];
  for (let rep = 0; rep < reps; rep++) {
    for (const B of batches) {
      const intervals = new StepIntervals();
      const steps: number[] = [];
      const reqs = randomRequests(B, 16, 7 + rep, 24, 500);
      for await (const _ of model.generateBatch(reqs, {
        maxSequences: B,
        maxBatchTokens: B * 16 + B,
        onStep: (st) => {
          const full = st.decodeTokens === B && st.tokens === B;
          if (intervals.mark(full)) steps.push(st.ms);
        },
      })) {
        // the step timings are what is measured
      }
      const stepMs = medianOf(steps);
      const intervalMs = medianOf(intervals.ms);
      const row = { round: rep, batch: B, steps_timed: steps.length, step_ms: r3(stepMs), interval_ms: r3(intervalMs), gap_ms: r3(intervalMs - stepMs), gap_us_per_sequence: r3(((intervalMs - stepMs) * 1000) / B), gap_frac_of_interval: r3((intervalMs - stepMs) / intervalMs) };
      console.log(JSON.stringify(row));
      rows.push(row);
    }
  }
  const file = resultsFile('step-gap');
  fs.writeFileSync(file, `${JSON.stringify({ bench: 'JS between decode steps (bench/step-gap.ts)', machine: machine(), model: 'tiny-qwen3-moe, CPU backend', tokenizer: model.tokenizer.streaming, rows }, null, 2)}\n`);
  console.log(`saved ${file}`);
}

void main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
