/**
 * The steps of a batch around its prompt phase (`generateBatch`, the CPU backend): a batch of B prompts of L tokens
 * prefilled in one step (maxBatchTokens B x L + B, above loadModel's step reserve), then decoded in lockstep. Records
 * the prefill step, the first decode steps after it and the median of the later ones, so the cost of what the first
 * large step allocates (its step memory: fresh pages fault in inside the step where the arena was not allocated for
 * it before) and what runs beside the next steps shows against the steady decode step measured in the same run.
 * Model: the OLMoE-1B-7B shape with 2 layers (random weights), configurations B x L in --configs (default
 * 32x128,32x512,32x512: the second 32x512 runs with the arenas its predecessor left), --reps rounds.
 * Run: node dist/bench/batch-steps.js [--configs=BxL,...] [--reps=N] -> bench/results/batch-steps-<date>.json
 */
import fs from 'node:fs';

import { loadModel } from '../lib/index.js';
import { medianOf } from '../lib/engine/batch.js';
import { benchModel, randomRequests } from './bench-models.js';
import { machine, resultsFile } from './machine.js';

const r1 = (v: number): number => +v.toFixed(1);
/** Decode steps after the prefill reported one by one; the steady step is the median of the rest. */
const FIRST = 3;
const DECODE = 24;

async function main(): Promise<void> {
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const configs = (arg('configs') ?? '32x128,32x512,32x512').split(',').map((c) => c.split('x').map(Number) as [number, number]);
  if (configs.some(([b, l]) => !Number.isSafeInteger(b) || !Number.isSafeInteger(l) || b < 1 || l < 1)) throw new Error(`--configs must be BxL pairs of positive integers, received ${arg('configs')}`);
  const reps = Number(arg('reps') ?? 2);
  if (!Number.isSafeInteger(reps) || reps < 1) throw new Error(`--reps must be a positive integer, received ${arg('reps')}`);
  const dir = await benchModel('olmoe-1b-7b-shape', 2);
  const rows: Array<Record<string, unknown>> = [];
  for (let rep = 0; rep < reps; rep++) {
    // a fresh model per round: its arenas as loadModel leaves them
    using model = await loadModel(dir, { kvCacheBytes: 1 << 30 });
    for (const [B, L] of configs) {
      const prefill: number[] = [];
      const decode: number[] = [];
      const t0 = performance.now();
      const reqs = randomRequests(B, L, 5 + L + rep, DECODE + 1, 500);
      for await (const _ of model.generateBatch(reqs, { maxSequences: B, maxBatchTokens: B * L + B, onStep: (st) => (st.decodeTokens === B ? decode : prefill).push(st.ms) })) {
        // the step times are what is measured
      }
      const row = { round: rep, batch: B, prompt: L, run_ms: r1(performance.now() - t0), prefill_steps_ms: prefill.map(r1), first_decode_ms: decode.slice(0, FIRST).map(r1), steady_decode_ms: r1(medianOf(decode.slice(FIRST))) };
      console.log(JSON.stringify(row));
      rows.push(row);
    }
  }
  const file = resultsFile('batch-steps');
  fs.writeFileSync(file, `${JSON.stringify({ bench: 'batch steps around the prompt phase (bench/batch-steps.ts)', machine: machine(), model: 'olmoe-1b-7b-shape, 2 layers, CPU backend', rows }, null, 2)}\n`);
  console.log(`saved ${file}`);
}

void main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
