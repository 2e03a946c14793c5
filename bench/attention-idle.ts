/**
 * The CPU attention's time per call, back to back (how `moe-offload profile` measures it) vs after the pool has been
 * idle (how a CUDA step runs it: between two layers' attention the host waits on the GPU, so the pool's workers are
 * asleep when the call starts), on all of the pool's threads and on the cap used beside streaming expert copies
 * (attentionThreadsBesideCopies). On an H200 host, decode steps measured the attention 2-4x slower than the profile
 * predicted (perf-model-cuda-2026-11-27-h200.json: batch 8 at context 512, 2.13 ms measured vs 0.47 predicted):
 * this separates the pool's wake-up and idle cost from the rest. Each call's time is its own interval on the CPU
 * (OpOptions.timing); medians over `--calls` calls, rounds alternating the two ways.
 * Shapes: Qwen3-30B-A3B's attention (32 q / 4 kv heads of 128) and Mixtral's (32 / 8), bf16 K/V, batches 8 and 32 at
 * context 512.
 * Run: node dist/bench/attention-idle.js [--calls=40] [--idle-ms=3] -> bench/results/attention-idle-<date>[-<MOE_BENCH_LABEL>].json
 */
import fs from 'node:fs';

import { HostTensor, info, openBackend } from '../lib/index.js';
import { ATTENTION_SPLIT_TOKENS, attentionThreadsBesideCopies } from '../lib/engine/forward.js';
import { KvCache } from '../lib/kv/cache.js';
import { machine, resultsFile } from './machine.js';

const arg = (name: string, dflt: number): number => {
  const a = process.argv.find((s) => s.startsWith(`--${name}=`));
  const v = a ? Number(a.split('=')[1]) : dflt;
  if (!(v > 0)) throw new Error(`--${name} must be a positive number, received ${a}`);
  return v;
};
const median = (v: number[]): number => [...v].sort((a, b) => a - b)[v.length >> 1]!;
const r3 = (v: number): number => +v.toFixed(3);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const calls = arg('calls', 40);
  const idleMs = arg('idle-ms', 3);
  const be = openBackend({ backend: 'cpu' });
  const pool = info().cpu.threads;
  const capped = attentionThreadsBesideCopies(pool);
  const rows: Array<Record<string, unknown>> = [];
  for (const [name, qHeads, kvHeads] of [['qwen3-30b-a3b', 32, 4], ['mixtral-8x7b', 32, 8]] as const) {
    for (const B of [8, 32]) {
      const L = 512;
      const hd = 128;
      const kv = KvCache.create(be, { layers: 1, kvHeads, headDim: hd, blockSize: 64, budgetBytes: B * (L / 64 + 1) * 64 * kvHeads * hd * 2 * 2 });
      const seqs: number[] = [];
      for (let i = 0; i < B; i++) {
        const s = kv.allocate();
        const k = new HostTensor('f32', [L, kvHeads, hd]);
        for (let j = 0; j < k.numel; j++) k.data[j] = Math.sin(j * 0.37 + i);
        await kv.write(0, s, kv.append(s, L), k, k);
        seqs.push(s);
      }
      const q = new HostTensor('f32', [B, qHeads, hd]);
      for (let j = 0; j < q.numel; j++) q.data[j] = Math.cos(j * 0.11);
      const out = new HostTensor('bf16', [B, qHeads, hd]);
      const batch = kv.batch(seqs, seqs.map(() => 1));
      const call = async (threads: number): Promise<number> => {
        const t: { startMs?: number; endMs?: number } = {};
        await be.attention({ q, k: kv.keys(0), v: kv.values(0), out, ...batch, splitTokens: ATTENTION_SPLIT_TOKENS, ...(threads < pool ? { threads } : {}) }, { timing: t });
        return t.endMs! - t.startMs!;
      };
      for (const threads of [...new Set([pool, capped])]) {
        const chained: number[] = [];
        const idle: number[] = [];
        for (let round = 0; round < 4; round++) {
          for (let i = 0; i < calls / 4; i++) chained.push(await call(threads));
          for (let i = 0; i < calls / 4; i++) {
            await sleep(idleMs);
            idle.push(await call(threads));
          }
        }
        const kvBytes = B * L * kvHeads * hd * 2 * 2;
        const row = { shape: name, q_heads: qHeads, kv_heads: kvHeads, batch: B, context: L, threads, chained_ms: r3(median(chained)), after_idle_ms: r3(median(idle)), idle_over_chained: r3(median(idle) / median(chained)), chained_GBs: r3(kvBytes / (median(chained) * 1e6)) };
        console.log(JSON.stringify(row));
        rows.push(row);
      }
      kv.dispose();
    }
  }
  const file = resultsFile('attention-idle');
  fs.writeFileSync(file, `${JSON.stringify({ bench: 'attention-idle (bench/attention-idle.ts)', machine: machine(), pool_threads: pool, idle_ms: idleMs, calls, rows }, null, 2)}\n`);
  console.log(`saved ${file}`);
}

void main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
