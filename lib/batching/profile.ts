/**
 * `moe-offload profile`: measures the hardware numbers the performance model (perf-model.ts) needs, on the CPU
 * backend, with the package's own kernels at shapes where each is memory- or compute-bound: one-row GEMM weight
 * streaming, many-row GEMM rate, fused-MoE weight streaming (one token; every call a different pair of experts,
 * so nothing is reused from cache) and compute (many rows per expert), decode attention KV bandwidth, an awaited
 * op's fixed cost, and sampling cost per logit. Each figure is the median of several timed runs after a warm-up.
 */
import os from 'node:os';

import type { Backend } from '../backend.js';
import { argmax } from '../engine/sampler.js';
import { info } from '../info.js';
import { KvCache } from '../kv/cache.js';
import { HostTensor } from '../tensor.js';
import type { HardwareProfile, RowsCurve } from './perf-model.js';

async function median(fn: () => Promise<unknown>, runs: number): Promise<number> {
  await fn();
  const ts: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  return ts[Math.floor(ts.length / 2)]!;
}

function bf16(shape: number[], seed: number): HostTensor<'bf16'> {
  const t = new HostTensor('bf16', shape);
  const d = t.data;
  let s = seed >>> 0 || 1;
  for (let i = 0; i < d.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    d[i] = 0x3c00 + (s >>> 24); // values in [2^-7, 2^-6): finite, varied
  }
  return t;
}

/** Measures a HardwareProfile on `be` (CPU backend). Takes 10-30 s. */
export async function profileHardware(be: Backend, options: { quick?: boolean } = {}): Promise<HardwareProfile> {
  const runs = options.quick ? 3 : 5;
  const rowsList = [1, 2, 4, 8, 16, 32, 64, 128];
  // dense GEMM: 32 MiB of weights, time per weight byte at each row count
  const w = bf16([4096, 4096], 1);
  const gemm: RowsCurve = [];
  for (const m of [...rowsList, 256]) {
    const x = bf16([m, 4096], 2);
    const y = new HostTensor('f32', [m, 4096]);
    const ms = await median(() => be.gemm(x, w, y), runs);
    gemm.push({ rows: m, nsPerByte: (ms * 1e6) / (4096 * 4096 * 2) });
  }
  // fused MoE: 16 experts of 17 MiB; each call routes `rows` tokens to one pair of experts (a different pair per
  // call, so nothing is reused from cache): time per routed-expert byte at each rows-per-expert
  const E = 16;
  const H = 2048;
  const I = 1408;
  const table = be.expertTable(E, { hidden: H, intermediate: I });
  for (let e = 0; e < E; e++) table.set(e, { gate: bf16([I, H], 10 + e), up: bf16([I, H], 40 + e), down: bf16([H, I], 70 + e) });
  const experts: RowsCurve = [];
  for (const r of rowsList) {
    const x = bf16([r, H], 5);
    const y = new HostTensor('bf16', [r, H]);
    const wts = new HostTensor('f32', [r, 2]);
    wts.data.fill(0.5);
    const ids = new HostTensor('i32', [r, 2]);
    let call = 0;
    const ms = await median(async () => {
      for (let t = 0; t < r; t++) {
        ids.data[2 * t] = (2 * call) % E;
        ids.data[2 * t + 1] = (2 * call + 1) % E;
      }
      call++;
      await be.moeExperts({ x, topkIds: ids, topkWeights: wts, experts: table, out: y });
    }, runs);
    experts.push({ rows: r, nsPerByte: (ms * 1e6) / (2 * 3 * H * I * 2) });
  }
  // decode attention: 16 sequences x 1024 tokens of kv head dim 128, at GQA 1, 4 and 8 (4 kv heads)
  const attention: Array<{ gqa: number; GBs: number }> = [];
  const kv = KvCache.create(be, { layers: 1, kvHeads: 4, headDim: 128, budgetBytes: 16 * 1024 * 4 * 128 * 2 * 2 + (1 << 20) });
  const seqs: number[] = [];
  for (let i = 0; i < 16; i++) {
    const id = kv.allocate();
    kv.append(id, 1024);
    seqs.push(id);
  }
  const batch = kv.batch(
    seqs,
    seqs.map(() => 1),
  );
  for (const gqa of [1, 4, 8]) {
    const q = bf16([16, 4 * gqa, 128], 7);
    const o = new HostTensor('bf16', [16, 4 * gqa, 128]);
    const ms = await median(() => be.attention({ q, k: kv.keys(0), v: kv.values(0), out: o, ...batch, numSplits: 4 }), runs);
    attention.push({ gqa, GBs: (16 * 1024 * 4 * 128 * 2 * 2) / (ms * 1e6) });
  }
  kv.dispose();
  // op costs: a queued chain of tiny ops (per op) and the awaited round trip (per group)
  const a = new HostTensor('f32', [1, 64]);
  const wn = new HostTensor('f32', [64]);
  wn.data.fill(1);
  const chain = 16;
  const chainTimes: number[] = [];
  const tripTimes: number[] = [];
  for (let i = 0; i < 60; i++) {
    let t0 = performance.now();
    const ops: Array<Promise<unknown>> = [];
    for (let j = 0; j < chain; j++) ops.push(be.rmsNorm({ x: a, weight: wn, out: a, eps: 1e-6 }));
    await Promise.all(ops);
    chainTimes.push(performance.now() - t0);
    t0 = performance.now();
    await be.add(a, a, a);
    tripTimes.push(performance.now() - t0);
  }
  chainTimes.sort((p, r) => p - r);
  tripTimes.sort((p, r) => p - r);
  const groupMs = tripTimes[30]!;
  const opMs = Math.max(0, (chainTimes[30]! - groupMs) / (chain - 1));
  // sampling: argmax over a vocabulary row
  const logits = new Float32Array(32000).map((_, i) => Math.sin(i));
  const t0 = performance.now();
  let sink = 0;
  for (let i = 0; i < 200; i++) sink += argmax(logits);
  const sampleNsPerLogit = ((performance.now() - t0) * 1e6) / (200 * 32000) + sink * 0;
  const i = info();
  return {
    backend: be.name,
    cpu: i.cpu.model,
    threads: i.cpu.cores,
    gemm,
    experts,
    attention,
    opMs,
    groupMs,
    sampleNsPerLogit,
    hostMemoryBytes: os.totalmem(),
    measuredAt: new Date().toISOString(),
  };
}
