/**
 * `moe-offload profile`: measures the hardware numbers the performance model (perf-model.ts) needs, on the CPU
 * backend, with the package's own kernels at shapes where each is memory- or compute-bound: one-row GEMM weight
 * streaming, many-row GEMM rate, fused-MoE weight streaming (one token; every call a different pair of experts,
 * so nothing is reused from cache) and compute (many rows per expert), decode attention KV bandwidth, an awaited
 * op's fixed cost, and sampling cost per logit. Each figure is the median of several timed runs after a warm-up.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type { Backend } from '../backend.js';
import { loadModel } from '../engine/model.js';
import { argmax } from '../engine/sampler.js';
import { info } from '../info.js';
import { KvCache } from '../kv/cache.js';
import { native } from '../native.js';
import { makeModel } from '../model/make-model.js';
import { HostTensor } from '../tensor.js';
import { GROUPS_PER_LAYER, type HardwareProfile, type RowsCurve, opsPerStep, predictDecode } from './perf-model.js';

/** Streaming read bandwidth now (the native read probe over `bytes`, default 256 MiB; median of 5), GB/s. */
export function readProbeGBs(bytes = 256 * 2 ** 20): number {
  const buf = new Float32Array(bytes / 4).fill(1);
  const secs: number[] = [];
  for (let i = 0; i < 6; i++) secs.push(native().readProbe(buf).seconds);
  secs.shift();
  secs.sort((a, b) => a - b);
  return buf.byteLength / secs[2]! / 1e9;
}

/** Median wall time (ms) of `runs` awaited calls of fn after one warm-up call. */
export async function median(fn: () => Promise<unknown>, runs: number): Promise<number> {
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

/**
 * Per-op and per-step costs inside the runtime, from decode steps of generated tiny OLMoE models of 1 and 3 layers:
 * what the kernels (predicted with zero fixed costs) and the group round trips do not explain is split into a
 * part that grows with the op count (per op) and a part that does not (per step: embedding, LM head launch,
 * sampling, detokenising, bookkeeping).
 */
async function runtimeCosts(be: Backend, p: HardwareProfile, tokens: number): Promise<{ opMs: number; stepFixedMs: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-profile-'));
  const point = async (layers: number) => {
    const d = path.join(dir, `L${layers}`);
    await makeModel(d, { preset: 'tiny-olmoe', seed: 1, config: { num_hidden_layers: layers } });
    const model = await loadModel(d, { backend: be, kvCacheBytes: 16 << 20 });
    try {
      await model.generate({ tokens: [1, 2, 3, 4] }, { maxNewTokens: 4, stopAtEos: false });
      const ms: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await model.generate({ tokens: Array.from({ length: 64 }, (_, j) => 10 + j) }, { maxNewTokens: tokens + 1, stopAtEos: false });
        ms.push(r.stats.msPerToken);
      }
      ms.sort((a, b) => a - b);
      const kernels = predictDecode(model.config, { ...p, opMs: 0, groupMs: 0, stepFixedMs: 0 }, { batch: 1, context: 64 + tokens / 2 }).stepMs;
      const ops = opsPerStep(model.config);
      const n = ops.perLayer.reduce((a, b) => a + b, 0) + ops.perStep;
      const groups = model.config.numLayers * GROUPS_PER_LAYER + 3;
      return { rest: ms[1]! - kernels - groups * p.groupMs, n };
    } finally {
      model.dispose();
    }
  };
  try {
    const a = await point(1);
    const b = await point(3);
    const opMs = Math.max(p.opMs, (b.rest - a.rest) / (b.n - a.n));
    return { opMs, stepFixedMs: Math.max(0, a.rest - a.n * opMs) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
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
  const readGBs = readProbeGBs();
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
  // op costs: a queued chain of small ops like a tiny model's (a [1, 256] x [512, 256] GEMM, spread over the thread
  // pool), per op, and the awaited round trip of a group (per group)
  const a = new HostTensor('f32', [1, 64]);
  const xs = bf16([1, 256], 8);
  const ws = bf16([512, 256], 9);
  const ys = new HostTensor('f32', [1, 512]);
  const chain = 16;
  const chainTimes: number[] = [];
  const tripTimes: number[] = [];
  for (let i = 0; i < 60; i++) {
    let t0 = performance.now();
    const ops: Array<Promise<unknown>> = [];
    for (let j = 0; j < chain; j++) ops.push(be.gemm(xs, ws, ys));
    await Promise.all(ops);
    chainTimes.push(performance.now() - t0);
    t0 = performance.now();
    await be.add(a, a, a);
    tripTimes.push(performance.now() - t0);
  }
  chainTimes.sort((p, r) => p - r);
  tripTimes.sort((p, r) => p - r);
  const groupMs = tripTimes[30]!;
  const chainOpMs = Math.max(0, (chainTimes[30]! - groupMs) / (chain - 1));
  // sampling: argmax over a vocabulary row
  const logits = new Float32Array(32000).map((_, i) => Math.sin(i));
  const t0 = performance.now();
  let sink = 0;
  for (let i = 0; i < 200; i++) sink += argmax(logits);
  const sampleNsPerLogit = ((performance.now() - t0) * 1e6) / (200 * 32000) + sink * 0;
  const partial: HardwareProfile = {
    backend: be.name,
    cpu: '',
    threads: 0,
    gemm,
    experts,
    attention,
    opMs: chainOpMs,
    groupMs,
    stepFixedMs: 0,
    sampleNsPerLogit,
    readGBs,
    hostMemoryBytes: os.totalmem(),
    measuredAt: '',
  };
  // an op inside the runtime costs more than in a bare chain (argument checks, views, the step's host work between
  // groups): time decode steps of a generated one-layer tiny model and spread what the kernels and the chain do not
  // explain over its ops
  const { opMs, stepFixedMs } = await runtimeCosts(be, partial, options.quick ? 8 : 24);
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
    stepFixedMs,
    sampleNsPerLogit,
    readGBs,
    hostMemoryBytes: os.totalmem(),
    measuredAt: new Date().toISOString(),
  };
}
