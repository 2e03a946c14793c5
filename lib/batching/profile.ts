/**
 * `profileModel`: measures, on a backend, what the performance model (perf-model.ts) needs for one model: every
 * distinct op of its decode step (perf-model.ts `stepOps`, the ops lib/engine/forward.ts issues) at the model's own
 * shapes and at each decode batch, the awaited group's round trip, sampling, and the runtime's fixed costs per step
 * and per layer. Staged (a CUDA backend; the CPU backend with `staged`): the compute ops on the backend's memory
 * (weights and experts too on a GPU), attention, RoPE and host work on a CPU backend of their own, the copies
 * between them (transfer ops) and both backends' round trips, as loadModel runs a staged model; a GPU's ops record
 * its memory's bandwidth (device-to-device copies) instead of the CPU read probe, and are measured cold only.
 *
 *   - ops run as forward.ts issues them: queued in a group and awaited once (the cost of one op is the group's
 *     time less one round trip, over the ops queued);
 *   - ops that stream weights or K/V are measured cache-cold (enough copies of the weights, layers of experts or
 *     sets of sequences that 64 MiB pass between two uses of one) and, unless the model's smallest step already
 *     streams twice the last-level cache, also warm (8 MiB between uses: out of the per-core caches, in the last
 *     level), since a tiny model's step at a small batch stays in the last-level cache and at a large batch not;
 *   - routed experts: the decode step's call, B tokens routed to k distinct random experts each (U(B) distinct
 *     experts on average), in an ExpertStore laid out and mapped in like the model's (ExpertStore.createAsync), every
 *     expert set once in its layer's expert table as ResidentExperts does, awaited alone;
 *   - attention over B sequences x several contexts in a paged KV cache with the model's kv heads and head dim, on
 *     the CPU tier a trial picks first on AVX-512 BF16 hosts (attentionTier: AVX-512 BF16 or AVX-512F, whichever
 *     runs the model's attention faster there; ModelProfile.attentionIsa, which planRun passes to loadModel);
 *   - host work: KV writes, OLMoE's clip, MLA's head assembly (the same loops), and the tensors the forward pass
 *     allocates fresh per step and per layer (what a native op writing a fresh tensor costs over a reused one);
 *   - every point of an op that streams weights or K/V records the read bandwidth around it (a 64 MiB probe
 *     before and after: their mean), so the model can rescale its memory part to the bandwidth of the moment
 *     (this VM's drifts 15-44 GB/s within minutes);
 *   - offloaded experts: misses as the runtime copies them (ExpertCache, TransferEngine, into slots), GB/s; staged,
 *     also as it computes them on the host from the pinned store instead (hostExpertGBs);
 *   - runtime costs: decode steps of generated copies of the model family's tiny preset with n and n + 8 layers;
 *     what their own measured ops, groups and host work do not explain, per layer and per step.
 * A real-shape 2-layer model takes 6-10 s with `quick` (one pass), 20-40 s with three passes; a tiny one 4-12 s.
 *
 * @example
 * const be = openBackend({ backend: 'cpu' });
 * const p = await profileModel(be, model.config, { maxBatch: 64 });
 * predictDecode(model.config, p, { batch: 32, context: 512 });
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { type Backend, CPU_ISAS, type CpuIsa, openBackend, packsWeightsByDefault } from '../backend.js';
import { type MoeModel, loadModel } from '../engine/model.js';
import { medianOf, StepIntervals } from '../engine/batch.js';
import { ATTENTION_SPLIT_TOKENS, assembleMla, attentionThreadsBesideCopies, headPrefix } from '../engine/forward.js';
import { describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';
import { info } from '../info.js';
import { KvCache } from '../kv/cache.js';
import type { ExpertTable, MoeActivation } from '../moe.js';
import type { ModelConfig } from '../model/config.js';
import { makeModel } from '../model/make-model.js';
import type { PresetName } from '../model/presets.js';
import { PRESETS } from '../model/presets.js';
import { hostFacts, native } from '../native.js';
import { LruPolicy } from '../cache/policy.js';
import { residencyExpertCache } from '../cache/residency.js';
import { ExpertStore, expertLayout } from '../residency/expert-store.js';
import { SlotPool } from '../residency/slot-pool.js';
import { TransferEngine } from '../residency/transfer.js';
import { ropeFromConfig } from '../rope.js';
import { DeviceTensor, HostTensor, type PackedTensor, type PinnedBuffer, type Tensor } from '../tensor.js';
import { type ModelProfile, type OpPoint, type OpSpec, opKey, predictDecode, prefillAttention, prefillPairs, stepOps, stepWorkingSet } from './perf-model.js';

/** Streaming read bandwidth now (the native read probe over `bytes`, default 256 MiB; median of 5), GB/s. */
export function readProbeGBs(bytes = 256 * 2 ** 20): number {
  return probeWith(new Float32Array(bytes / 4).fill(1));
}

/** Read bandwidth over `buf` (median of 5 reads after one), GB/s. */
function probeWith(buf: Float32Array, reads = 5): number {
  const secs: number[] = [];
  for (let i = 0; i <= reads; i++) secs.push(native().readProbe(buf).seconds);
  secs.shift();
  secs.sort((a, b) => a - b);
  return buf.byteLength / secs[Math.floor(secs.length / 2)]! / 1e9;
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
  return medianOf(ts);
}

export interface ProfileModelOptions {
  /** Largest decode batch to measure (default 256): batches 1, 2, 4, ... up to it (and it). */
  maxBatch?: number;
  /** Attention contexts (KV tokens per sequence) to measure (default 64, 256, 1024). */
  contexts?: number[];
  /**
   * Prefill step sizes (tokens; default [512], generateBatch's default step): the row ops are measured at these
   * too, and the prefill attention (one to four prompts per step, and a chunk after a prefix), for predictPrefill.
   * [] skips them.
   */
  prefillTokens?: number[];
  /** One pass over the ops with fewer timed repetitions (noisier; a third of the time). */
  quick?: boolean;
  /** Passes over the ops, the median per point (default 3, or 1 with quick). */
  passes?: number;
  /** Skip the runtime-cost calibration (its costs are then 0); for tests of the profile's shape. */
  skipRuntime?: boolean;
  /**
   * Measure the GEMMs and experts over packed weights (panel64), as loadModel runs them; default: loadModel's
   * default (true on the CPU backend with the avx512bf16 tier).
   */
  packWeights?: boolean;
  /**
   * Measure the step as a staged model runs it (stepOps `staged`: activations in the compute backend's memory,
   * attention and RoPE on a CPU backend of their own, copies between them); default: as loadModel runs `be` (true
   * on CUDA, false on the CPU backend, where `loadModel`'s deviceActivations: true stages).
   */
  staged?: boolean;
  /**
   * Measure the attention on this many of the CPU pool's threads as well (its points keyed ` t<n>`,
   * ModelProfile.attentionThreads): how the runtime runs it while expert copies stream (LoadModelOptions
   * attentionThreads). Default on CUDA: attentionThreadsBesideCopies(pool threads), when below the pool; else 0: not.
   */
  attentionThreads?: number;
  /**
   * The CPU kernel tier of the attention points (ModelProfile.attentionIsa). Default 'auto': on an avx512bf16 host a
   * trial times a decode batch and a prefill prompt at the model's shapes on it and on the AVX-512F tier (f32 FMAs),
   * alternating, and takes AVX-512F when it is at least 5% faster on decode and not 5% slower on prefill (a 16-core
   * Xeon read decode K/V at 98 GB/s on it, 85 on AVX-512 BF16, 2026-11-27; this project's 2-core Zen 4 VM: the same
   * decode speed, prefill 0.67x); else the host's best.
   */
  attentionIsa?: CpuIsa | 'auto';
  /**
   * A loaded model of `cfg` on `be` (the CPU backend) whose own memory the routed experts and the LM head are measured
   * on (its expert store, its LM head weight) instead of generated copies, where that memory already spans a cold
   * read: on this project's VM the same expert bytes read 1.15-1.18x apart in the model's store and in a store
   * allocated later, stable within the process (2026-11-28: which memory an allocation gets moves a read that much),
   * so a profile that predicts a loaded model measures its memory. A CUDA profile ignores it.
   * @example
   * const p = await profileModel(model.backend, model.config, { model });
   */
  model?: MoeModel;
  onProgress?: (message: string) => void;
}

/** The family's tiny preset: the runtime-cost calibration runs copies of it. */
const FAMILY_PRESET: Record<string, PresetName> = {
  mixtral: 'tiny-mixtral',
  qwen2_moe: 'tiny-qwen2-moe',
  qwen3_moe: 'tiny-qwen3-moe',
  olmoe: 'tiny-olmoe',
  deepseek_v2: 'tiny-deepseek-v2',
  gpt_oss: 'tiny-gpt-oss',
};

/**
 * Bytes between two uses of one copy of an op's weights (or K/V): cold, beyond the last-level cache (32 MiB on this
 * class of machine); warm, beyond the per-core caches (1 MiB each) but well within the last level: what a step
 * whose working set fits the cache reads.
 */
const COLD_BYTES = 64 * 2 ** 20;
const WARM_BYTES = 8 * 2 ** 20;
const PROBE_BYTES = 64 * 2 ** 20;
/** Tokens per KV page in the attention measurements (the runtime's default block size). */
const KV_BLOCK = 64;
/** Target length of a timed chain of queued ops (ms): long against the group round trip. */
const CHAIN_MS = 2;


/** bf16 bits of small finite values (2^-7 .. 2^-6), varied (a 1 Mi-element pattern, repeated). */
function fillBf16(d: Uint16Array, seed: number): void {
  let s = seed >>> 0 || 1;
  const n = Math.min(d.length, 1 << 20);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    d[i] = 0x3c00 + (s >>> 25);
  }
  for (let done = n; done < d.length; done *= 2) d.copyWithin(done, 0, Math.min(done, d.length - done));
}

function tensor(dtype: 'bf16' | 'f32', shape: number[], seed = 1): HostTensor {
  return filled(new HostTensor(dtype, shape), seed);
}

/** `t` (bf16 or f32) filled with the seeded values `tensor` gives. */
function filled(t: HostTensor, seed: number): HostTensor {
  if (t.dtype === 'bf16') fillBf16(t.data as Uint16Array, seed);
  else {
    const d = t.data as Float32Array;
    let s = seed >>> 0 || 1;
    for (let i = 0; i < d.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      d[i] = ((s >>> 8) / 2 ** 24 - 0.5) * 0.1;
    }
  }
  return t;
}

/** An input of a compute-backend op: `tensor(...)`, in the compute backend's memory when staged. */
async function input(c: Ctx, dtype: 'bf16' | 'f32' | 'i32', shape: number[], seed = 1): Promise<Tensor> {
  const t = dtype === 'i32' ? new HostTensor('i32', shape) : tensor(dtype, shape, seed);
  return c.staged ? c.be.upload(t) : t;
}

/** An output of a compute-backend op (compute backend memory when staged). */
function output(c: Ctx, dtype: 'bf16' | 'f32' | 'i32', shape: number[]): Tensor {
  return c.staged ? c.be.alloc(dtype, shape) : new HostTensor(dtype, shape);
}

/**
 * A weight as the model holds it (lib/model/weights.ts): packed (panel64) when c.packed, on a GPU in its memory,
 * else a HostTensor in Backend.allocHost memory (huge pages).
 */
async function weight(c: Ctx, dtype: 'bf16' | 'f32', shape: [number, number], seed: number): Promise<Tensor> {
  if (c.be.kind !== 'cpu') return c.be.upload(tensor(dtype, shape, seed));
  if (c.packed && dtype === 'bf16') return c.be.packWeights(tensor(dtype, shape, seed));
  return filled(c.be.allocHost(dtype, shape), seed);
}

/** Frees `ts` now (GPU weights and huge-page host weights: not left to the GC). */
function free(ts: readonly Tensor[]): void {
  for (const t of ts) (t as HostTensor | DeviceTensor | PackedTensor).dispose();
}

/** Weight bytes of a GEMM's weight or of one expert (gate, up, down); 0 for the other ops. */
function weightBytes(s: OpSpec): number {
  switch (s.op) {
    case 'gemm':
      return s.n * s.k * (s.dtype === 'bf16' ? 2 : 4);
    case 'moeExperts':
      return 3 * s.hidden * s.inter * 2;
    default:
      return 0;
  }
}

interface Ctx {
  /** The compute backend. */
  be: Backend;
  /** The host backend: attention, the KV cache, host work (staged: a CPU backend of its own; else `be`). */
  host: Backend;
  /** Activations in the compute backend's memory (the step's inputs go up, its results come down). */
  staged: boolean;
  /** Device memory read bandwidth (GB/s) for the points of ops on a GPU (0: the CPU read probe around each point). */
  deviceGBs: number;
  cfg: ModelConfig;
  /** Rows the row ops are measured at: the decode batches and the prefill step sizes. */
  batches: number[];
  /** Decode batches (sequences) the decode attention is measured at. */
  seqBatches: number[];
  /** Prefill step sizes (tokens) the prefill attention is measured at (empty: none). */
  prefill: number[];
  contexts: number[];
  runs: number;
  groupMs: number;
  /** Round trip of an awaited host-backend op (groupMs when not staged). */
  hostGroupMs: number;
  probeBuf: Float32Array;
  /** Measure cache-cold (span(): 64 MiB or more between two uses of one copy) rather than warm (8 MiB). */
  cold: boolean;
  /** Cold in host memory: bytes between two uses of one copy (twice the last-level cache, at least 64 MiB). */
  hostColdBytes: number;
  /** Weights packed (panel64) as loadModel packs them. */
  packed: boolean;
  /** The attention is measured on this many threads too (0: only on all of them). */
  attentionThreads: number;
  /** The attention's tier when below the host backend's (ProfileModelOptions.attentionIsa). */
  attentionIsa?: CpuIsa;
  /** A loaded model's own memory to measure the routed experts and the LM head on (ProfileModelOptions.model). */
  own?: { store: ExpertStore; lmHead: Tensor };
  log: (m: string) => void;
}

/**
 * Measures `pointFn` (the op's cost and bytes at a batch) at every batch, with a read probe before and after each
 * point when `probe` (their mean is the point's).
 */
async function curve(c: Ctx, probe: boolean, pointFn: (B: number) => Promise<Omit<OpPoint, 'probeGBs' | 'batch'>>, batches = c.batches, onHost = false): Promise<OpPoint[]> {
  if (probe && !onHost && c.deviceGBs > 0) {
    // on a GPU: its memory's bandwidth (measured once), not the CPU's
    const pts: OpPoint[] = [];
    for (const B of batches) pts.push({ batch: B, ...(await pointFn(B)), probeGBs: c.deviceGBs });
    return pts;
  }
  const pts: OpPoint[] = [];
  let before = probe ? probeWith(c.probeBuf, 3) : 0;
  for (const B of batches) {
    const r = await pointFn(B);
    const after = probe ? probeWith(c.probeBuf, 3) : 0;
    pts.push({ batch: B, ...r, probeGBs: (before + after) / 2 });
    before = after;
  }
  return pts;
}

/**
 * Cost (ms) of one op queued in a group: chains of n calls (n so a chain lasts ~2 ms), the median of the runs
 * (more runs for cheap ops: at least ~20 ms timed in all), less one group round trip, divided by n.
 */
async function chained(c: Ctx, call: (i: number) => Promise<unknown>, onHost = false): Promise<number> {
  let i = 0;
  let one = Infinity;
  for (let w = 0; w < 3; w++) {
    const t0 = performance.now();
    await call(i++);
    one = Math.min(one, performance.now() - t0);
  }
  const n = Math.max(2, Math.min(16, Math.ceil(CHAIN_MS / Math.max(one, 1e-3))));
  const runs = Math.max(c.runs, Math.min(25, Math.ceil(20 / (n * Math.max(one, 1e-3)))));
  const ts: number[] = [];
  for (let r = 0; r < runs; r++) {
    const t0 = performance.now();
    const ps: Array<Promise<unknown>> = [];
    for (let j = 0; j < n; j++) ps.push(call(i++));
    await Promise.all(ps);
    ts.push(performance.now() - t0);
  }
  return Math.max(0, (medianOf(ts) - (onHost ? c.hostGroupMs : c.groupMs)) / n);
}

/** Median (ms) of a synchronous host function after a warm-up long enough for the JIT (runs: at least). */
function hostMs(fn: () => void, runs: number): number {
  const w0 = performance.now();
  for (let w = 0; w < 50 && (w < 5 || performance.now() - w0 < 20); w++) fn();
  const ts: number[] = [];
  const t00 = performance.now();
  for (let i = 0; i < 100 && (i < runs || performance.now() - t00 < 10); i++) {
    const t0 = performance.now();
    fn();
    ts.push(performance.now() - t0);
  }
  return medianOf(ts);
}

/**
 * Bytes between two uses of one copy in the measurement: cold or warm. Cold in host memory (`onHost`: the CPU
 * backend's ops, the attention) is beyond twice the host's last-level cache, at least COLD_BYTES: an H200 host's
 * Xeon reports 300 MiB, where 64 MiB apart stayed in cache (its attention points read up to 1.8x the read probe,
 * 2026-11-28) while the steps read the KV cache from memory.
 */
function span(c: Ctx, onHost = c.be.kind === 'cpu'): number {
  return c.cold ? (onHost ? c.hostColdBytes : COLD_BYTES) : WARM_BYTES;
}

/** Copies of a weight of `bytes` used `instances` times per step: at least the model's, enough to span span(c). */
function copies(c: Ctx, bytes: number, instances: number): number {
  if (bytes <= 0) return instances;
  return Math.max(instances, Math.min(4096, Math.ceil(span(c) / bytes)));
}

async function measureGemm(c: Ctx, s: Extract<OpSpec, { op: 'gemm' }>, instances: number): Promise<OpPoint[]> {
  const bytes = weightBytes(s);
  const ws: Tensor[] = [];
  // the LM head's shape: the model's own weight when given and a cold read by itself
  const lm = c.own?.lmHead;
  if (lm && instances === 1 && s.dtype === 'bf16' && lm.shape[0] === s.n && lm.shape[1] === s.k && bytes >= span(c)) {
    return curve(c, true, async (B) => {
      const a = await input(c, s.dtype, [B, s.k], 3);
      const out = output(c, 'f32', [B, s.n]);
      return { ms: await chained(c, () => c.be.gemm(a, lm, out)), bytes };
    });
  }
  try {
    for (let i = 0; i < copies(c, bytes, instances); i++) ws.push(await weight(c, s.dtype, [s.n, s.k], 11 + i));
    return await curve(c, true, async (B) => {
      const a = await input(c, s.dtype, [B, s.k], 3);
      const out = output(c, 'f32', [B, s.n]);
      const ms = await chained(c, (i) => c.be.gemm(a, ws[i % ws.length]!, out));
      return { ms, bytes };
    });
  } finally {
    free(ws);
  }
}

async function measureOneExpert(c: Ctx, s: Extract<OpSpec, { op: 'moeExperts' }>, instances: number): Promise<OpPoint[]> {
  const bytes = weightBytes(s);
  const tables: ExpertTable[] = [];
  const ws: Tensor[] = [];
  const w3 = async (shape: [number, number], seed: number): Promise<Tensor> => {
    const w = await weight(c, 'bf16', shape, seed);
    ws.push(w);
    return w;
  };
  try {
    for (let i = 0; i < copies(c, bytes, instances); i++) {
      const t = c.be.expertTable(1, { hidden: s.hidden, intermediate: s.inter, packed: c.packed });
      t.set(0, { gate: await w3([s.inter, s.hidden], 20 + i), up: await w3([s.inter, s.hidden], 40 + i), down: await w3([s.hidden, s.inter], 60 + i) });
      tables.push(t);
    }
    const act = activation(c.cfg);
    return await curve(c, true, async (B) => {
      const x = await input(c, 'bf16', [B, s.hidden], 5);
      const ids = await input(c, 'i32', [B, 1]);
      const ones = new HostTensor('f32', [B, 1]);
      ones.data.fill(1);
      const w = c.staged ? await c.be.upload(ones) : ones;
      const out = output(c, 'bf16', [B, s.hidden]);
      const ms = await chained(c, (i) => c.be.moeExperts({ x, topkIds: ids, topkWeights: w, experts: tables[i % tables.length]!, out, ...(act ? { activation: act } : {}) }));
      return { ms, bytes };
    });
  } finally {
    free(ws);
  }
}

function activation(cfg: ModelConfig): MoeActivation | undefined {
  return cfg.family === 'gpt_oss' ? { kind: 'swiglu-oai', alpha: 1.702, limit: cfg.swigluLimit ?? 7 } : undefined;
}

/**
 * Layers of E experts of `expertBytes` to rotate through so that about `spanBytes` pass between two reads of one
 * expert (a call reads a few of a layer's E; at least 1, at most 768 MiB of experts).
 */
function rotationLayers(E: number, expertBytes: number, spanBytes: number): number {
  return Math.max(1, Math.min(Math.floor((768 * 2 ** 20) / (E * expertBytes)), Math.ceil((3 * spanBytes) / (E * expertBytes))));
}

/** Writes expert e of layer l of `store` with fillBf16(seed) (untouched pages would all read the one zero page). */
function fillExpert(store: ExpertStore, l: number, e: number, seed: number): void {
  const w = store.expert(l, e).whole.data;
  fillBf16(new Uint16Array(w.buffer, w.byteOffset, w.byteLength / 2), seed);
}

/**
 * Routed experts: each call routes B tokens to k distinct uniformly random experts of one layer's table (layers
 * rotate; every expert set in its layer's table once, as ResidentExperts does); the call is awaited alone (its
 * own group in the step).
 */
async function measureRouted(c: Ctx, s: Extract<OpSpec, { op: 'moeExperts' }>): Promise<OpPoint[]> {
  const E = s.experts;
  const k = s.k;
  const expertBytes = weightBytes(s);
  const onGpu = c.be.kind !== 'cpu';
  // a loaded model's own store (ProfileModelOptions.model) when it is of this shape and spans a cold rotation
  const mine = c.own?.store;
  const own = !onGpu && mine && mine.experts === E && mine.hidden === s.hidden && mine.intermediate === s.inter && mine.packed === c.packed && mine.totalBytes >= 3 * span(c) ? mine : undefined;
  // enough layers of experts that a call's experts were last read span(c) ago (a call reads U(B) of the E)
  const layers = own ? own.layers.length : rotationLayers(E, expertBytes, span(c));
  // CPU: the experts in host memory (an ExpertStore, as the model's); GPU: in its memory (slots, each filled from one
  // layer of experts in a pinned store)
  const store = own ?? (await ExpertStore.createAsync(c.be, { layers: Array.from({ length: onGpu ? 1 : layers }, (_, l) => l), experts: E, hidden: s.hidden, intermediate: s.inter, packed: c.packed }));
  let pool: SlotPool | undefined;
  try {
    // every expert written (untouched pages would all read the one zero page)
    for (let l = 0; l < (onGpu || own ? 0 : layers); l++) {
      for (let e = 0; e < E; e++) {
        fillExpert(store, l, e, 7 + e);
      }
    }
    if (onGpu) {
      pool = SlotPool.create(c.be, { slots: layers * E, hidden: s.hidden, intermediate: s.inter, dtype: 'bf16', packed: c.packed });
      for (let i = 0; i < layers * E; i++) await c.be.copy(store.expert(0, i % E).whole, pool.slot(i).whole);
    }
    // one table per layer with every expert set once, as ResidentExperts holds them
    const tables = Array.from({ length: layers }, (_, l) => {
      const t = c.be.expertTable(E, { hidden: s.hidden, intermediate: s.inter, packed: c.packed });
      for (let e = 0; e < E; e++) {
        const v = pool ? pool.slot(l * E + e) : store.expert(store.layers[l]!, e);
        t.set(e, { gate: v.gate, up: v.up, down: v.down });
      }
      return t;
    });
    const act = activation(c.cfg);
    let seed = 12345;
    // the LCG's high bits (its low bits cycle with short periods: % 64 would never repeat an expert within 64 draws)
    const rnd = (n: number) => Math.floor(((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32) * n);
    return await curve(c, true, async (B) => {
      const x = await input(c, 'bf16', [B, s.hidden], 5);
      const out = output(c, 'bf16', [B, s.hidden]);
      const wh = new HostTensor('f32', [B, k]);
      wh.data.fill(1 / k);
      const w = c.staged ? await c.be.upload(wh) : wh;
      const ids = new HostTensor('i32', [B, k]);
      const idsOn = c.staged ? c.be.alloc('i32', [B, k]) : ids; // staged: the routing goes up before each call
      let distinct = 0;
      let calls = 0;
      let l = 0;
      const call = async () => {
        // route: k distinct experts per token
        const d = ids.data;
        for (let t = 0; t < B; t++) {
          for (let j = 0; j < k; j++) {
            let e: number;
            do e = rnd(E);
            while (d.subarray(t * k, t * k + j).includes(e));
            d[t * k + j] = e;
          }
        }
        distinct += new Set(d).size;
        calls++;
        if (idsOn !== ids) await c.be.copy(ids, idsOn);
        const t0 = performance.now();
        await c.be.moeExperts({ x, topkIds: idsOn, topkWeights: w, experts: tables[l++ % layers]!, out, ...(act ? { activation: act } : {}) });
        return performance.now() - t0;
      };
      const one = Math.min(await call(), await call());
      distinct = 0;
      calls = 0;
      // at least ~20 ms of calls (cheap calls: many, so a burst of other work hits few of them)
      const n = Math.max(c.runs + 3, Math.min(40, Math.ceil(20 / Math.max(one, 1e-3))));
      const ts: number[] = [];
      for (let r = 0; r < n; r++) ts.push(await call());
      const experts = distinct / calls;
      return { ms: Math.max(0, medianOf(ts) - c.groupMs), bytes: experts * expertBytes, experts };
    });
  } finally {
    pool?.dispose();
    if (store !== own) store.dispose();
  }
}

/**
 * The attention measurements' KV cache: one layer of `s`'s kv heads in pages of KV_BLOCK tokens over `bytes` (+ 1 MiB), K
 * and V filled (seeds `seed`, `seed` + 20), the op's scale and sinks, and `sequences(n, tokens)` allocating n
 * sequences of `tokens` each.
 */
function attentionKv(c: Ctx, s: { qHeads: number; kvHeads: number; headDim: number }, bytes: number, seed: number) {
  const kv = KvCache.create(c.host, { layers: 1, kvHeads: s.kvHeads, headDim: s.headDim, blockSize: KV_BLOCK, budgetBytes: bytes + (1 << 20) });
  fillBf16(kv.keys(0).data as Uint16Array, seed);
  fillBf16(kv.values(0).data as Uint16Array, seed + 20);
  const sequences = (n: number, tokens: number) =>
    Array.from({ length: n }, () => {
      const id = kv.allocate();
      kv.append(id, tokens);
      return id;
    });
  return { kv, scale: 1 / Math.sqrt(s.headDim), sinks: c.cfg.attentionSinks ? new HostTensor('f32', [s.qHeads]) : undefined, sequences };
}

/**
 * Decode attention of B sequences at each context; K and V pages filled. Calls rotate over disjoint sets of B
 * sequences, enough that span(c) bytes pass between two uses of one set.
 */
async function measureAttention(c: Ctx, s: Extract<OpSpec, { op: 'attention' }>): Promise<OpPoint[]> {
  const maxB = Math.max(...c.seqBatches);
  const bs = KV_BLOCK;
  const tokenBytes = 2 * s.kvHeads * s.headDim * 2; // K and V, one layer
  const seqBytes = (L: number) => Math.ceil((L + 1) / bs) * bs * tokenBytes;
  // room for the largest context's maxB sequences beside a cold span of others, within 768 MiB .. 4 GiB
  const budget = Math.min(4 * 2 ** 30, Math.max(768 * 2 ** 20, span(c, true) + maxB * seqBytes(Math.max(...c.contexts))));
  // contexts whose maxB sequences fit the budget (at least the two smallest)
  const contexts = [...c.contexts].sort((a, b) => a - b).filter((L, i) => i < 2 || maxB * seqBytes(L) <= budget);
  const setsFor = (B: number, L: number) => Math.max(1, Math.ceil(span(c, true) / (B * (L + 1) * tokenBytes)));
  const poolFor = (L: number) => Math.max(maxB, Math.min(Math.floor(budget / seqBytes(L)), Math.max(...c.seqBatches.map((B) => B * setsFor(B, L)))));
  const { kv, scale, sinks, sequences } = attentionKv(c, s, Math.max(...contexts.map((L) => poolFor(L) * seqBytes(L))), 30);
  try {
    const pts: OpPoint[] = [];
    for (const L of contexts) {
      const seqs = sequences(poolFor(L), L + 1);
      const got = await curve(
        c,
        true,
        async (B) => {
        const sets = Math.max(1, Math.min(setsFor(B, L), Math.floor(seqs.length / B)));
        const batches = Array.from({ length: sets }, (_, j) =>
          kv.batch(
            seqs.slice(j * B, (j + 1) * B),
            Array.from({ length: B }, () => 1),
          ),
        );
        const q = tensor('f32', [B, s.qHeads, s.headDim], 9);
        const out = new HostTensor('bf16', [B, s.qHeads, s.headDim]);
        const k = kv.keys(0);
        const v = kv.values(0);
        const ms = await chained(c, (i) => c.host.attention({ q, k, v, out, ...batches[i % sets]!, scale, splitTokens: ATTENTION_SPLIT_TOKENS, ...(sinks ? { sinks } : {}), ...(s.threads ? { threads: s.threads } : {}), ...(c.attentionIsa ? { isa: c.attentionIsa } : {}) }), true);
        return { ms, bytes: B * (L + 1) * tokenBytes, context: L + 1 };
        },
        c.seqBatches,
        true,
      );
      pts.push(...got);
      for (const id of seqs) kv.free(id);
    }
    return pts;
  } finally {
    kv.dispose();
  }
}

/**
 * Prefill attention (the step's new tokens over their sequences' keys, causal): one prompt of q tokens for q from
 * 64 up to the largest prefill step, four prompts sharing the step, and one chunk after a prefix of twice its
 * length; pages filled. Points at the query-key pairs per head (`batch`), in increasing order; compute-bound, so
 * measured once (no read probe around them).
 */
async function measureAttentionPrefill(c: Ctx, s: Extract<OpSpec, { op: 'attentionPrefill' }>): Promise<OpPoint[]> {
  const maxT = Math.max(...c.prefill);
  const shapes: Array<{ S: number; q: number; P: number }> = [];
  for (let q = 64; q < maxT; q *= 2) shapes.push({ S: 1, q, P: 0 });
  shapes.push({ S: 1, q: maxT, P: 0 }, { S: 4, q: Math.max(1, Math.floor(maxT / 4)), P: 0 }, { S: 1, q: maxT, P: 2 * maxT });
  const bs = KV_BLOCK;
  const tokenBytes = 2 * s.kvHeads * s.headDim * 2;
  const pages = Math.max(...shapes.map((x) => x.S * Math.ceil((x.P + x.q) / bs)));
  const { kv, scale, sinks, sequences } = attentionKv(c, s, pages * bs * tokenBytes, 31);
  try {
    const pts: OpPoint[] = [];
    for (const { S, q, P } of shapes) {
      const seqs = sequences(S, P + q);
      const batch = kv.batch(seqs, seqs.map(() => q));
      const qt = tensor('f32', [S * q, s.qHeads, s.headDim], 9);
      const out = new HostTensor('bf16', [S * q, s.qHeads, s.headDim]);
      const ms = await chained(c, () => c.host.attention({ q: qt, k: kv.keys(0), v: kv.values(0), out, ...batch, scale, splitTokens: ATTENTION_SPLIT_TOKENS, ...(sinks ? { sinks } : {}), ...(s.threads ? { threads: s.threads } : {}), ...(c.attentionIsa ? { isa: c.attentionIsa } : {}) }), true);
      pts.push({ batch: S * prefillPairs(q, P), ms, bytes: S * (P + q) * tokenBytes, probeGBs: 0 });
      for (const id of seqs) kv.free(id);
    }
    return pts.sort((a, b) => a.batch - b.batch);
  } finally {
    kv.dispose();
  }
}

/**
 * The ops on activations (no weights streamed): on the compute backend with its tensors, or `onHost` (staged RoPE)
 * on the host backend; transfers between a compute-backend tensor and pinned host memory.
 */
async function measureSmall(c: Ctx, s: OpSpec, onHost: boolean): Promise<OpPoint[]> {
  const be = onHost ? c.host : c.be;
  const inp = (dtype: 'bf16' | 'f32' | 'i32', shape: number[], seed = 1) => (onHost ? Promise.resolve(dtype === 'i32' ? new HostTensor('i32', shape) : tensor(dtype, shape, seed)) : input(c, dtype, shape, seed));
  const out = (dtype: 'bf16' | 'f32' | 'i32', shape: number[]) => (onHost ? new HostTensor(dtype, shape) : output(c, dtype, shape));
  const rp = ropeFromConfig(c.cfg);
  return curve(
    c,
    false,
    async (B) => {
      let call: (i: number) => Promise<unknown>;
      let pinned: PinnedBuffer | undefined;
      switch (s.op) {
        case 'rmsNorm': {
          const x = await inp('f32', [B * s.rowsPerToken, s.d], 2);
          const weight = await inp('f32', [s.d], 3);
          const o = out(s.out, [B * s.rowsPerToken, s.d]);
          const add = s.add ? await inp(s.add, [B * s.rowsPerToken, s.d], 4) : undefined;
          // in place like the q/k norms when the output is f32 and nothing is added
          const dst = s.out === 'f32' && !add ? x : o;
          call = () => be.rmsNorm({ x, weight, out: dst, eps: 1e-6, ...(add ? { add } : {}) });
          break;
        }
        case 'add': {
          const a = await inp(s.dtype, [B, s.n], 2);
          const b = s.bias ? await inp(s.dtype, [s.n], 3) : await inp(s.dtype, [B, s.n], 3);
          call = () => be.add(a, b, a);
          break;
        }
        case 'convert': {
          const a = await inp(s.from, [B, s.n], 2);
          const b = out(s.to, [B, s.n]);
          call = () => be.convert(a, b);
          break;
        }
        case 'rope': {
          // RoPE runs on host tensors (the host backend when staged, the CPU backend otherwise)
          const q = tensor('f32', [B, s.qHeads, s.headDim], 2);
          const k = tensor('f32', [B, s.kHeads, s.headDim], 3);
          const positions = HostTensor.from(
            'i32',
            [B],
            Array.from({ length: B }, (_, i) => 100 + i),
          );
          const invFreq = HostTensor.from('f32', [Math.min(rp.invFreq.length, s.headDim / 2)], rp.invFreq.slice(0, s.headDim / 2));
          call = () => be.rope({ q, k, positions, invFreq, attentionScaling: rp.attentionScaling });
          break;
        }
        case 'routerTopK': {
          const logits = await inp('f32', [B, s.e], 2);
          const o = { topkIds: out('i32', [B, s.k]), topkWeights: out('f32', [B, s.k]) };
          call = () => be.routerTopK(logits, s.k, { scoring: s.scoring, renormalize: c.cfg.router.renormalize, out: o });
          break;
        }
        case 'gatherRows': {
          const rows = s.srcRows === 0 ? B : Math.min(s.srcRows, 8192);
          const src = await inp('bf16', [rows, s.n], 2);
          const idsHost = HostTensor.from(
            'i32',
            [B],
            Array.from({ length: B }, (_, i) => (i * 7919) % rows),
          );
          const ids = c.staged && !onHost ? await c.be.upload(idsHost) : idsHost;
          const dst = out('bf16', [B, s.n]);
          call = () => be.gatherRows(src, ids, dst);
          break;
        }
        case 'argmaxRows': {
          const logits = await inp('f32', [B, s.n], 2);
          const ids = out('i32', [B]);
          call = () => be.argmaxRows(logits, ids);
          break;
        }
        case 'transfer': {
          // between the compute backend's memory and a pinned host buffer, as the step's arenas hold them
          const dev = c.be.alloc('u8', [B * s.rowBytes]);
          pinned = c.be.allocPinned(B * s.rowBytes);
          const host = pinned.tensor('u8', [B * s.rowBytes]);
          call = () => (s.dir === 'down' ? c.be.copy(dev, host) : c.be.copy(host, dev));
          break;
        }
        default:
          throw new InvalidArgumentError(`no measurement for op ${s.op}`);
      }
      try {
        return { ms: await chained(c, call, onHost), bytes: 0 };
      } finally {
        pinned?.dispose();
      }
    },
    c.batches,
    onHost,
  );
}

/** Host work between groups, with forward.ts's loops. */
async function measureHost(c: Ctx, s: OpSpec): Promise<OpPoint[]> {
  const runs = Math.max(5, c.runs * 2);
  return curve(c, false, async (B) => {
    switch (s.op) {
      case 'kvWrite': {
        const kv = KvCache.create(c.host, { layers: 1, kvHeads: s.kvHeads, headDim: s.headDim, budgetBytes: (B + 1) * 64 * 2 * s.kvHeads * s.headDim * 2 });
        try {
          const seqs = Array.from({ length: B }, () => {
            const id = kv.allocate();
            kv.append(id, 8);
            return id;
          });
          const k = tensor('f32', [B, s.kvHeads, s.headDim], 2);
          const v = tensor('f32', [B, s.kvHeads, s.headDim], 3);
          const writes = seqs.map((seq) => ({ seq, pos: 7, n: 1 }));
          // a native scatter per K and V since the writes left JS: timed as the awaited op
          const ms = await median(() => kv.writeMany(0, writes, k, v), runs);
          return { ms, bytes: 0 };
        } finally {
          kv.dispose();
        }
      }
      case 'clamp': {
        const parts = [tensor('f32', [B, s.n / 3], 2), tensor('f32', [B, s.n / 3], 3), tensor('f32', [B, s.n / 3], 4)];
        const ms = hostMs(() => {
          for (const t of parts) {
            const d = t.data as Float32Array;
            for (let i = 0; i < d.length; i++) d[i] = Math.min(8, Math.max(-8, d[i]!));
          }
        }, runs);
        return { ms, bytes: 0 };
      }
      case 'mlaAssemble': {
        const { heads: nH, nope, rope, v: vd, headDim: D } = s;
        const T = B;
        const QN = tensor('f32', [T, nH * nope], 2).data as Float32Array;
        const QP = tensor('f32', [T, nH * rope], 3).data as Float32Array;
        const KN = tensor('f32', [T, nH * nope], 4).data as Float32Array;
        const KP = tensor('f32', [T, rope], 5).data as Float32Array;
        const VV = tensor('f32', [T, nH * vd], 6).data as Float32Array;
        const attn = tensor('bf16', [T, nH, D], 7);
        // the assembled tensors' allocation is the step's alloc op
        const q = new HostTensor('f32', [T, nH, D]).data;
        const k = new HostTensor('f32', [T, nH, D]).data;
        const v = new HostTensor('f32', [T, nH, D]).data;
        const ms = hostMs(() => {
          assembleMla({ T, heads: nH, nope, rope, v: vd, headDim: D }, { qn: QN, qp: QP, kn: KN, kp: KP, vv: VV }, { q, k, v });
          if (vd < D) headPrefix(attn, vd);
        }, runs);
        return { ms, bytes: 0 };
      }
      case 'alloc': {
        // what a fresh tensor costs over a reused one: allocating it and the first write of its pages (done by the
        // native op that fills it: here a copy into it, less the same copy into a tensor already written)
        const written = (b: number) => {
          const t = new HostTensor('u8', [B * b]);
          t.data.fill(1);
          return t;
        };
        const src = s.rowBytes.map(written);
        const kept = s.rowBytes.map(written);
        const fresh = async () => {
          for (let i = 0; i < src.length; i++) await c.host.copy(src[i]!, new HostTensor('u8', [B * s.rowBytes[i]!]));
        };
        for (let w = 0; w < 3; w++) await fresh(); // the allocator's steady state
        const ms = await median(fresh, Math.max(9, runs));
        const reused = await median(async () => {
          for (let i = 0; i < src.length; i++) await c.host.copy(src[i]!, kept[i]!);
        }, Math.max(9, runs));
        return { ms: Math.max(0, ms - reused), bytes: 0 };
      }
      default:
        throw new InvalidArgumentError(`no host measurement for op ${s.op}`);
    }
  });
}

/**
 * Round trip of an awaited group and the per-op cost of a trivial op in a chain (ms), on `be` with its tensors
 * (`onDevice`: in its memory, as a staged step's).
 */
async function dispatchCosts(be: Backend, onDevice: boolean): Promise<{ groupMs: number; opMs: number }> {
  const a = onDevice ? be.alloc('f32', [1, 64]) : new HostTensor('f32', [1, 64]);
  if (onDevice) await be.copy(new HostTensor('f32', [1, 64]), a);
  const single: number[] = [];
  const chain: number[] = [];
  const n = 16;
  for (let i = 0; i < 80; i++) {
    let t0 = performance.now();
    await be.add(a, a, a);
    single.push(performance.now() - t0);
    t0 = performance.now();
    const ps: Array<Promise<unknown>> = [];
    for (let j = 0; j < n; j++) ps.push(be.add(a, a, a));
    await Promise.all(ps);
    chain.push(performance.now() - t0);
  }
  single.sort((x, y) => x - y);
  chain.sort((x, y) => x - y);
  const one = single[40]!;
  const many = chain[40]!;
  const opMs = Math.max(0, (many - one) / (n - 1));
  return { groupMs: Math.max(0, one - opMs), opMs };
}

/** Ops whose cost depends on the cache state: they stream weights or K/V. */
function streams(s: OpSpec): boolean {
  return s.op === 'gemm' || s.op === 'moeExperts' || s.op === 'attention';
}

/**
 * Every distinct op of cfg's decode step measured at c.batches (per-sequence ops at c.seqBatches), and with
 * c.prefill the prefill attention: the ops that stream weights or K/V cold (copies beyond the cache) and warm (the
 * model's own copies), or only one of the two; the points say which. Ops in `have` are taken from there.
 */
async function measureOps(c: Ctx, modes: 'both' | 'cold' | 'warm', have: Record<string, OpPoint[]> = {}): Promise<Record<string, OpPoint[]>> {
  // resident: false: the ops of a step that is not queued whole too (staged: the routing's downloads), a superset
  const plan = stepOps(c.cfg, { staged: c.staged, resident: false });
  const ops: Record<string, OpPoint[]> = {};
  // entries differing only by term or window: measure each key once, with the calls of all its entries
  // (per-sequence ops, one row per sequence, only at the decode batches: a prefill step has few sequences)
  const byKey = new Map<string, { spec: OpSpec; calls: number; perSequence: boolean; onHost: boolean }>();
  for (const o of plan.ops) {
    const e = byKey.get(o.key);
    if (e) {
      e.calls += o.calls;
      e.perSequence &&= o.perSequence === true;
    } else byKey.set(o.key, { spec: o.spec, calls: o.calls, perSequence: o.perSequence === true, onHost: o.host === true });
    if (o.spec.op === 'attention') {
      const specs = c.attentionThreads > 0 ? [o.spec, { ...o.spec, threads: c.attentionThreads }] : [o.spec];
      for (const a of specs) {
        if (a !== o.spec) byKey.set(opKey(a), { spec: a, calls: o.calls, perSequence: true, onHost: true });
        if (c.prefill.length === 0) continue;
        const pre = prefillAttention(a);
        byKey.set(opKey(pre), { spec: pre, calls: 1, perSequence: false, onHost: true });
      }
    }
  }
  for (const [key, { spec, calls, perSequence, onHost }] of byKey) {
    if (have[key]) {
      ops[key] = have[key];
      continue;
    }
    const t0 = performance.now();
    const measure = async (at: Ctx): Promise<OpPoint[]> => {
      const cc = perSequence ? { ...at, batches: at.seqBatches } : at;
      switch (spec.op) {
        case 'gemm':
          return measureGemm(cc, spec, calls);
        case 'moeExperts':
          return spec.experts === 1 ? measureOneExpert(cc, spec, calls) : measureRouted(cc, spec);
        case 'attention':
          return measureAttention(cc, spec);
        case 'attentionPrefill':
          return measureAttentionPrefill(cc, spec);
        case 'kvWrite':
        case 'clamp':
        case 'mlaAssemble':
        case 'alloc':
          return measureHost(cc, spec);
        default:
          return measureSmall(cc, spec, onHost);
      }
    };
    if (!streams(spec)) ops[key] = await measure(c);
    else {
      ops[key] = [];
      for (const cold of modes === 'both' ? [true, false] : [modes === 'cold']) ops[key].push(...(await measure({ ...c, cold })).map((q) => ({ ...q, cold })));
    }
    c.log(`${key}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  return ops;
}

/**
 * The attention's CPU tier (ProfileModelOptions.attentionIsa): `asked` within the host's tier, or with 'auto' on an
 * avx512bf16 host the trial's choice. The trial: the model's decode attention over min(64, largest batch) sequences
 * at the middle context, rotated over sets of sequences a cold span apart (as the points are measured), and one
 * prefill prompt of min(512, largest prefill step) tokens; on the attention threads of the offloaded steps when
 * the profile measures them; three rounds alternating the tiers, the median per tier.
 */
async function attentionTier(c: Ctx, asked: CpuIsa | 'auto'): Promise<{ isa: CpuIsa; trial?: ModelProfile['attentionTiers'] }> {
  const best = c.host.isa;
  if (asked !== 'auto') return { isa: CPU_ISAS.indexOf(asked) < CPU_ISAS.indexOf(best) ? asked : best };
  if (best !== 'avx512bf16') return { isa: best };
  const spec = stepOps(c.cfg, { staged: c.staged, resident: false }).ops.find((o) => o.spec.op === 'attention')?.spec;
  if (spec?.op !== 'attention') return { isa: best };
  const B = Math.min(64, Math.max(...c.seqBatches));
  const L = [...c.contexts].sort((a, b) => a - b)[Math.floor(c.contexts.length / 2)]!;
  const T = Math.min(512, Math.max(64, ...c.prefill));
  const tokenBytes = 2 * spec.kvHeads * spec.headDim * 2;
  const seqPages = Math.ceil((L + 1) / KV_BLOCK);
  const sets = Math.max(1, Math.ceil(span(c, true) / (B * seqPages * KV_BLOCK * tokenBytes)));
  const { kv, scale, sinks, sequences } = attentionKv(c, spec, (sets * B * seqPages + Math.ceil(T / KV_BLOCK)) * KV_BLOCK * tokenBytes, 33);
  try {
    const seqs = sequences(sets * B, L + 1);
    const batches = Array.from({ length: sets }, (_, j) => kv.batch(seqs.slice(j * B, (j + 1) * B), Array.from({ length: B }, () => 1)));
    const [prompt] = sequences(1, T);
    const pre = kv.batch([prompt!], [T]);
    const q = tensor('f32', [B, spec.qHeads, spec.headDim], 9);
    const out = new HostTensor('bf16', [B, spec.qHeads, spec.headDim]);
    const qp = tensor('f32', [T, spec.qHeads, spec.headDim], 10);
    const outp = new HostTensor('bf16', [T, spec.qHeads, spec.headDim]);
    const common = { k: kv.keys(0), v: kv.values(0), scale, splitTokens: ATTENTION_SPLIT_TOKENS, ...(sinks ? { sinks } : {}), ...(c.attentionThreads ? { threads: c.attentionThreads } : {}) };
    const low: CpuIsa = 'avx512';
    const ms: Record<'avx512bf16' | 'avx512', { decode: number[]; prefill: number[] }> = { avx512bf16: { decode: [], prefill: [] }, avx512: { decode: [], prefill: [] } };
    for (let round = 0; round < 3; round++) {
      for (const isa of round % 2 === 0 ? ([best, low] as const) : ([low, best] as const)) {
        ms[isa].decode.push(await chained(c, (i) => c.host.attention({ ...common, q, out, ...batches[i % sets]!, isa }), true));
        ms[isa].prefill.push(await chained(c, () => c.host.attention({ ...common, q: qp, out: outp, ...pre, isa }), true));
      }
    }
    const trial = Object.fromEntries(Object.entries(ms).map(([isa, m]) => [isa, { decodeMs: medianOf(m.decode), prefillMs: medianOf(m.prefill) }])) as NonNullable<ModelProfile['attentionTiers']>;
    const [b, l] = [trial.avx512bf16!, trial.avx512!];
    const isa = l.decodeMs <= 0.95 * b.decodeMs && l.prefillMs <= 1.05 * b.prefillMs ? low : best;
    c.log(`attention tier: ${isa} (decode ${b.decodeMs.toFixed(3)} ms on avx512bf16, ${l.decodeMs.toFixed(3)} on avx512; prefill ${b.prefillMs.toFixed(3)}, ${l.prefillMs.toFixed(3)})`);
    return { isa, trial };
  } finally {
    kv.dispose();
  }
}

/** The last-level cache of CPU 0 (sysfs), bytes; 32 MiB where it cannot be read. */
function lastLevelCacheBytes(): number {
  try {
    const dir = '/sys/devices/system/cpu/cpu0/cache';
    let best = 0;
    for (const d of fs.readdirSync(dir).filter((x) => x.startsWith('index'))) {
      const m = /^(\d+)([KMG]?)/.exec(fs.readFileSync(path.join(dir, d, 'size'), 'utf8').trim());
      if (m) best = Math.max(best, Number(m[1]) * ({ '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 } as Record<string, number>)[m[2]!]!);
    }
    return best || 32 * 2 ** 20;
  } catch {
    return 32 * 2 ** 20;
  }
}

/** Greedy sampling (Backend.sampleRows over rows of a vocabulary, the engine's path), ns per logit. */
async function samplingNs(be: Backend, vocab: number): Promise<number> {
  const V = Math.max(1024, vocab);
  const rows = Math.max(1, Math.ceil(2 ** 20 / V));
  const logits = new HostTensor('f32', [rows, V]);
  for (let i = 0; i < logits.data.length; i++) logits.data[i] = Math.sin(i);
  const params = new Float64Array(rows * 4);
  for (let r = 0; r < rows; r++) params[4 * r + 2] = 1; // temperature 0, topK 0, topP 1
  const out = new HostTensor('i32', [rows]);
  const ms = await median(() => be.sampleRows({ logits, out, params }), 5);
  return (ms * 1e6) / (rows * V);
}

/**
 * Offloaded experts' misses as the runtime copies them: the experts a step misses are acquired together (one
 * Promise.all, as lib/engine/experts.ts does) from a pinned ExpertStore into a SlotPool through the ExpertCache and
 * TransferEngine (chunked copies, events, leases). Rounds alternate between two sets of n experts (n for 128 MiB,
 * 2 to 16) over n slots, so each round copies n; GB/s of expert bytes, the median of 7 rounds after a warm-up (one
 * measurement of 3 rounds once read half the rate the runs then saw).
 */
async function expertCopyGBs(be: Backend, cfg: ModelConfig, packed: boolean): Promise<number> {
  const H = cfg.hiddenSize;
  const I = cfg.moeIntermediateSize;
  const bytes = expertLayout(H, I, 'bf16', packed).expertBytes;
  const n = Math.max(2, Math.min(16, Math.ceil((128 * 2 ** 20) / bytes)));
  const store = await ExpertStore.createAsync(be, { layers: [0], experts: 2 * n, hidden: H, intermediate: I, packed });
  let slots: SlotPool | undefined;
  try {
    for (let e = 0; e < 2 * n; e++) {
      fillExpert(store, 0, e, 70 + e);
    }
    slots = SlotPool.create(be, { slots: n, hidden: H, intermediate: I, dtype: 'bf16', packed });
    const cache = residencyExpertCache({ store, slots, engine: new TransferEngine(be), policy: new LruPolicy(2 * n) });
    const ts: number[] = [];
    for (let round = 0; round < 8; round++) {
      const set = Array.from({ length: n }, (_, i) => (round % 2) * n + i);
      const t0 = performance.now();
      const leases = await Promise.all(set.map((e) => cache.acquire(0, e)));
      if (round > 0) ts.push(performance.now() - t0); // round 0 warms up
      for (const l of leases) l.release();
    }
    return (n * bytes) / (medianOf(ts) * 1e6);
  } finally {
    slots?.dispose();
    store.dispose();
  }
}

/**
 * Staged: routed experts computed by the host backend straight from the pinned store, as CachedExperts computes
 * missed experts on the CPU: one token routed to k distinct random experts of a layer (layers rotating, enough that
 * 64 MiB pass between two uses of one: cache-cold), awaited alone; GB/s of expert weights, the median of 15 calls
 * after 3 warm-up calls.
 */
async function hostExpertGBs(c: Ctx): Promise<number> {
  const { hiddenSize: H, moeIntermediateSize: I, numExperts: E, topK: k } = c.cfg;
  const bytes = expertLayout(H, I, 'bf16', c.packed).expertBytes;
  const layers = rotationLayers(E, bytes, COLD_BYTES);
  const store = await ExpertStore.createAsync(c.be, { layers: Array.from({ length: layers }, (_, l) => l), experts: E, hidden: H, intermediate: I, packed: c.packed });
  try {
    const tables = Array.from({ length: layers }, (_, l) => {
      const t = c.host.expertTable(E, { hidden: H, intermediate: I, packed: c.packed });
      for (let e = 0; e < E; e++) {
        const v = store.expert(l, e);
        fillExpert(store, l, e, 50 + e);
        t.set(e, { gate: v.gate, up: v.up, down: v.down });
      }
      return t;
    });
    const x = tensor('bf16', [1, H], 5);
    const out = new HostTensor('bf16', [1, H]);
    const w = new HostTensor('f32', [1, k]);
    w.data.fill(1 / k);
    const ids = new HostTensor('i32', [1, k]);
    const act = activation(c.cfg);
    let seed = 4242;
    const ts: number[] = [];
    for (let r = 0; r < 18; r++) {
      const picked = new Set<number>();
      while (picked.size < k) picked.add(Math.floor(((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32) * E));
      ids.data.set([...picked]);
      const t0 = performance.now();
      await c.host.moeExperts({ x, topkIds: ids, topkWeights: w, experts: tables[r % layers]!, out, ...(act ? { activation: act } : {}) });
      if (r >= 3) ts.push(performance.now() - t0);
    }
    return (k * bytes) / (medianOf(ts) * 1e6);
  } finally {
    store.dispose();
  }
}

/** Decode steps whose every sequence decodes: median wall time between consecutive ones (ms) and of the forward step. */
async function decodeInterval(model: MoeModel, B: number, prompt: number, steps: number): Promise<number> {
  let s = 99 + B;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) % Math.min(model.config.vocabSize, 500);
  const reqs = Array.from({ length: B }, () => ({ prompt: { tokens: Array.from({ length: prompt }, rnd) }, options: { maxNewTokens: steps + 2, stopAtEos: false } }));
  const intervals = new StepIntervals();
  for await (const _ of model.generateBatch(reqs, {
    maxSequences: B,
    maxBatchTokens: Math.max(1024, B),
    onStep: (st) => intervals.mark(st.decodeTokens === B && st.tokens === B),
  })) {
    // timings only
  }
  return medianOf(intervals.ms);
}

/**
 * The runtime's costs beyond the ops, groups and host work measured: decode steps (one sequence, context ~70) of
 * generated copies of the family's tiny preset with n and n + 8 layers (n: enough to hold a MoE layer), less what
 * their own op profile predicts with zero runtime costs; the difference over the 8 layers is the per-layer cost,
 * the rest at n layers the per-step cost; the n-layer copy at seqCalibrationBatch's batch too, whose residual over
 * batch 1's is the per-sequence cost (the runtime's per-sequence work: KV bookkeeping, block tables, scheduling,
 * the rows' host tensors, the tail of a queued step). The copies run in turn, and each repetition's difference is taken
 * between its two adjacent runs (this VM's speed drifts between phases; a pair shares one) before the median over
 * the repetitions: n and n + 3 layers with the medians of each copy's runs differenced gave layerMs 0-1.9 ms in five
 * profiles of tiny-qwen3-moe in a row (2026-11-27), enough to move a 2-layer Qwen3-shape step's prediction 10%.
 * Ops of the copies that the model has too (a tiny model's own) are costed from the model's measurements (`ops`),
 * so the residual is relative to the same basis as the model's predictions.
 */
async function runtimeCosts(c: Ctx, quick: boolean, sampleNs: number, ops: Record<string, OpPoint[]>): Promise<ModelProfile['runtime']> {
  const preset = FAMILY_PRESET[c.cfg.family];
  if (!preset) throw new InvalidArgumentError(`no tiny preset for family ${c.cfg.family} (runtime-cost calibration)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-profile-'));
  const base = PRESETS[preset].config as Record<string, unknown>;
  const prompt = 64;
  const steps = quick ? 10 : 16;
  const first = Math.max(1, Math.min(...c.cfg.moeLayers.map((l) => l + 1), c.cfg.numLayers));
  const extra = 8;
  const layerCounts = [first, first + extra];
  const made: Array<{ layers: number; model: MoeModel; p: ModelProfile; rest: number[] }> = [];
  const seqBatch = seqCalibrationBatch(c.seqBatches);
  try {
    for (const layers of layerCounts) {
      const d = path.join(dir, `L${layers}`);
      const config: Record<string, unknown> = { num_hidden_layers: layers };
      if (Array.isArray(base.layer_types)) config.layer_types = Array.from({ length: layers }, (_, l) => (base.layer_types as unknown[])[l % (base.layer_types as unknown[]).length]);
      await makeModel(d, { preset, seed: 1, config });
      const model = await loadModel(d, { backend: c.be, kvCacheBytes: 64 << 20, deviceActivations: c.staged, ...(c.attentionIsa ? { attentionIsa: c.attentionIsa } : {}) });
      made.push({ layers, model, p: undefined as unknown as ModelProfile, rest: [] });
      // one sequence at context ~70: a tiny model's step stays in cache (warm)
      const sub: Ctx = { ...c, cfg: model.config, batches: [1, seqBatch], seqBatches: [1, seqBatch], prefill: [], contexts: [prompt, prompt * 2], cold: false, log: () => {} };
      made[made.length - 1]!.p = { ...bare(c, model.config, await measureOps(sub, 'warm', ops), sub.batches, sub.contexts), sampleNsPerLogit: sampleNs };
      // warm-up: the first steps of a fresh process run 2-3x slower than later ones (the engine's JS compiling)
      for (let w = 0; w < 3; w++) await decodeInterval(model, 1, prompt, steps);
    }
    const points: ModelProfile['runtime']['points'] = [];
    const residual = async (m: (typeof made)[0], B: number) => {
      const measured = await decodeInterval(m.model, B, prompt, steps);
      const predicted = predictDecode(m.model.config, m.p, { batch: B, context: prompt + steps / 2 + 1 }).stepMs;
      points.push({ layers: m.layers, batch: B, measuredMs: measured, predictedMs: predicted });
      return measured - predicted;
    };
    const seqRest: number[] = []; // the n-layer copy's residual at seqBatch less its residual at batch 1 (same repetition)
    for (let rep = 0; rep < (quick ? 3 : 9); rep++) {
      // alternate which copy runs first, so that neither always follows the other; the batch run beside them
      for (const m of rep % 2 === 0 ? made : [...made].reverse()) m.rest.push(await residual(m, 1));
      seqRest.push(await residual(made[0]!, seqBatch) - made[0]!.rest[rep]!);
    }
    // per repetition the paired difference; medians over the repetitions; runtime costs are not negative (a
    // negative estimate is noise)
    const [a, b] = made as [(typeof made)[0], (typeof made)[0]];
    const layerMs = Math.max(0, medianOf(b.rest.map((r, i) => (r - a.rest[i]!) / extra)));
    const seqMs = Math.max(0, medianOf(seqRest) / (seqBatch - 1));
    return { preset, layerMs, stepMs: Math.max(0, medianOf(a.rest) - first * layerMs), seqMs, points };
  } finally {
    for (const m of made) m.model.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const NO_RUNTIME: ModelProfile['runtime'] = { preset: null, stepMs: 0, layerMs: 0, seqMs: 0, points: [] };

/**
 * The batch of the runtime calibration's per-sequence run (beside its batch-1 runs): the profile's largest decode
 * batch within [16, 64]. The per-sequence cost is the difference of two noisy residuals spread over the batch, so a
 * larger batch measures it closer to the batches it prices: on an H200 host (2026-11-28) batch 16 gave 0.014-0.037 ms
 * a sequence, 1.8-4.7 ms of a batch-128 step whose measured steps left room for ~1.0-1.5 ms.
 */
function seqCalibrationBatch(seqBatches: readonly number[]): number {
  return Math.min(64, Math.max(16, ...seqBatches));
}

/** A profile of measured ops with no runtime costs (what the calibration subtracts). */
function bare(c: Ctx, cfg: ModelConfig, ops: Record<string, OpPoint[]>, batches: number[], contexts: number[]): ModelProfile {
  return {
    version: 2,
    backend: c.be.name,
    kind: c.be.kind,
    ...(c.staged ? { staged: true, hostGroupMs: c.hostGroupMs } : {}),
    cpu: '',
    threads: 0,
    model: { architecture: cfg.architecture, family: cfg.family, hiddenSize: cfg.hiddenSize, numLayers: cfg.numLayers, numExperts: cfg.numExperts, topK: cfg.topK, vocabSize: cfg.vocabSize },
    batches,
    contexts,
    ops,
    groupMs: c.groupMs,
    opMs: 0,
    streamEfficiency: 1,
    peakGBs: 0,
    sampleNsPerLogit: 0,
    runtime: NO_RUNTIME,
    readGBs: 0,
    cacheBytes: lastLevelCacheBytes(),
    hostMemoryBytes: os.totalmem(),
    measuredAt: new Date().toISOString(),
    seconds: 0,
  };
}

/**
 * How memory-bound ops streamed, over the cold points of at least 16 MiB: the fraction of the probe's bandwidth
 * (efficiency) and the bandwidth itself (peak, GB/s), each the median of the three best (robust to one probe
 * caught in a dip); efficiency 1 and no peak (0) when no point is that big.
 */
function streaming(ops: Record<string, OpPoint[]>): { efficiency: number; peakGBs: number } {
  const eff: number[] = [];
  const gbs: number[] = [];
  for (const pts of Object.values(ops)) {
    for (const q of pts) {
      if (q.cold === false || q.bytes < 16 * 2 ** 20 || !(q.ms > 0) || !(q.probeGBs > 0)) continue;
      gbs.push(q.bytes / (q.ms * 1e6));
      eff.push(gbs[gbs.length - 1]! / q.probeGBs);
    }
  }
  const second = (xs: number[], none: number) => (xs.length === 0 ? none : xs.sort((a, b) => b - a)[Math.min(1, xs.length - 1)]!);
  return { efficiency: second(eff, 1), peakGBs: second(gbs, 0) };
}

/**
 * Read bandwidth of `be`'s device memory, GB/s: device-to-device copies of 256 MiB (each reads and writes it; the
 * median of 5 after one warm-up), counted as twice the bytes over the time.
 */
async function deviceReadGBs(be: Backend): Promise<number> {
  const bytes = 256 * 2 ** 20;
  const a = be.alloc('u8', [bytes]);
  const b = be.alloc('u8', [bytes]);
  try {
    await be.copy(a, b);
    return (2 * bytes) / (1e6 * (await median(() => be.copy(a, b), 5)));
  } finally {
    a.dispose();
    b.dispose();
  }
}

/**
 * Measures a ModelProfile of `cfg` on `be`, the step as loadModel would run it there (staged on CUDA: the GPU's ops
 * on its memory, attention and RoPE on a CPU backend, the copies between them). The weights are generated (only the
 * config is used).
 * @throws InvalidArgumentError on bad options (staged: false on a CUDA backend).
 */
export async function profileModel(be: Backend, cfg: ModelConfig, options: ProfileModelOptions = {}): Promise<ModelProfile> {
  const staged = options.staged ?? be.kind !== 'cpu';
  if (typeof staged !== 'boolean' || (!staged && be.kind !== 'cpu')) throw new InvalidArgumentError(`staged must be a boolean (true on a CUDA backend), received ${describe(options.staged)} on ${be.name}`);
  const maxBatch = options.maxBatch ?? 256;
  if (!Number.isSafeInteger(maxBatch) || maxBatch < 1 || maxBatch > 4096) throw new InvalidArgumentError(`maxBatch must be an integer in [1, 4096], received ${String(options.maxBatch)}`);
  const contexts = options.contexts ?? [64, 256, 1024];
  if (!Array.isArray(contexts) || contexts.length < 2 || contexts.some((L) => !Number.isSafeInteger(L) || L < 1)) {
    throw new InvalidArgumentError(`contexts must be at least two positive integers, received ${JSON.stringify(options.contexts)}`);
  }
  const prefill = options.prefillTokens ?? [512];
  if (!Array.isArray(prefill) || prefill.some((T) => !Number.isSafeInteger(T) || T < 2 || T > 16384)) {
    throw new InvalidArgumentError(`prefillTokens must be integers in [2, 16384], received ${JSON.stringify(options.prefillTokens)}`);
  }
  const pool = hostFacts().cpu.threads;
  const beside = attentionThreadsBesideCopies(pool);
  const attentionThreads = options.attentionThreads ?? (be.kind === 'cuda' && beside < pool ? beside : 0);
  if (!Number.isSafeInteger(attentionThreads) || attentionThreads < 0 || attentionThreads > 65536) {
    throw new InvalidArgumentError(`attentionThreads must be an integer in [0, 65536] (0: none), received ${describe(options.attentionThreads)}`);
  }
  const mdl = options.model;
  if (mdl !== undefined) {
    const mc = mdl?.config;
    const same = mc !== undefined && mc.architecture === cfg.architecture && mc.hiddenSize === cfg.hiddenSize && mc.vocabSize === cfg.vocabSize && mc.numExperts === cfg.numExperts && mc.moeIntermediateSize === cfg.moeIntermediateSize;
    if (!same || mdl.backend !== be) throw new InvalidArgumentError(`model must be a loaded model of cfg (${cfg.architecture}, hidden ${cfg.hiddenSize}) on ${be.name}, received ${mc ? `${mc.architecture}, hidden ${mc.hiddenSize} on ${mdl.backend?.name}` : describe(mdl)}`);
  }
  const askedIsa = options.attentionIsa ?? 'auto';
  if (askedIsa !== 'auto' && !CPU_ISAS.includes(askedIsa)) throw new InvalidArgumentError(`attentionIsa must be 'auto' or one of ${CPU_ISAS.join(', ')}, received ${describe(options.attentionIsa)}`);
  const nPasses = options.passes ?? (options.quick ? 1 : 3);
  if (!Number.isSafeInteger(nPasses) || nPasses < 1 || nPasses > 9) throw new InvalidArgumentError(`passes must be an integer in [1, 9], received ${String(options.passes)}`);
  const start = performance.now();
  const log = options.onProgress ?? (() => {});
  const seqBatches: number[] = [];
  for (let b = 1; b < maxBatch; b *= 2) seqBatches.push(b);
  seqBatches.push(maxBatch);
  const batches = [...new Set([...seqBatches, ...prefill])].sort((a, b) => a - b);
  const probeBuf = new Float32Array(PROBE_BYTES / 4).fill(1);
  const readGBs = probeWith(probeBuf);
  // staged: attention and RoPE on a CPU backend of their own, as loadModel runs them
  const host = staged ? openBackend({ backend: 'cpu' }) : be;
  const { groupMs, opMs } = await dispatchCosts(be, staged);
  const hostGroupMs = staged ? (await dispatchCosts(host, false)).groupMs : groupMs;
  const deviceGBs = be.kind === 'cpu' ? 0 : await deviceReadGBs(be);
  // a step at one token and the shortest context already streams more than twice the cache: always cold (on a GPU
  // always: warm would mean its L2, which a real-shape step overflows)
  const cacheBytes = lastLevelCacheBytes();
  const packed = be.kind === 'cpu' && (options.packWeights ?? packsWeightsByDefault(be));
  const c: Ctx = { be, host, staged, deviceGBs, cfg, batches, seqBatches, prefill, contexts, runs: options.quick ? 3 : 5, groupMs, hostGroupMs, probeBuf, cold: true, hostColdBytes: Math.max(COLD_BYTES, 2 * cacheBytes), packed, attentionThreads, log };
  if (mdl && be.kind === 'cpu') c.own = mdl.ownMemory;
  const modes = be.kind !== 'cpu' || stepWorkingSet(cfg, 1, Math.min(...contexts)) > 2 * cacheBytes ? 'cold' : 'both';
  const tiers = await attentionTier(c, askedIsa);
  if (tiers.isa !== host.isa) c.attentionIsa = tiers.isa;
  // passes over the ops, apart in time for each op: per point the pass with the median cost (a burst of other
  // jobs on this shared machine inflates one pass, not the median; the bench and the runtime calibration take
  // medians too)
  const passes: Array<Record<string, OpPoint[]>> = [];
  for (let i = 0; i < nPasses; i++) passes.push(await measureOps(c, modes));
  const ops = Object.fromEntries(Object.entries(passes[0]!).map(([key, pts]) => [key, pts.map((_, j) => [...passes.map((q) => q[key]![j]!)].sort((x, y) => x.ms - y.ms)[Math.floor(passes.length / 2)]!)]));
  const sampleNsPerLogit = await samplingNs(host, cfg.vocabSize);
  const copyGBs = cfg.numExperts > 1 ? await expertCopyGBs(be, cfg, packed) : undefined;
  const hostExperts = staged && cfg.numExperts > 1 ? await hostExpertGBs(c) : undefined;
  const runtime = options.skipRuntime ? NO_RUNTIME : await runtimeCosts(c, options.quick === true, sampleNsPerLogit, ops);
  const i = info();
  const stream = streaming(ops);
  const p: ModelProfile = {
    ...bare(c, cfg, ops, seqBatches, contexts),
    ...(prefill.length > 0 ? { prefillTokens: [...prefill].sort((a, b) => a - b) } : {}),
    cpu: i.cpu.model,
    threads: i.cpu.cores,
    ...(be.kind === 'cuda' ? { device: i.cuda.devices?.[be.device]?.name ?? 'unknown GPU' } : {}),
    ...(attentionThreads > 0 ? { attentionThreads } : {}),
    ...(c.attentionIsa ? { attentionIsa: c.attentionIsa } : {}),
    ...(tiers.trial ? { attentionTiers: tiers.trial } : {}),
    opMs,
    streamEfficiency: stream.efficiency,
    peakGBs: stream.peakGBs,
    sampleNsPerLogit,
    ...(copyGBs !== undefined ? { copyGBs } : {}),
    ...(hostExperts !== undefined ? { hostExpertGBs: hostExperts } : {}),
    ...(deviceGBs > 0 ? { deviceGBs } : {}),
    runtime,
    readGBs,
    cacheBytes,
    seconds: (performance.now() - start) / 1000,
  };
  return p;
}

/** The median of `xs` (the mean of the two middle values of an even count). */
function mid(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

/**
 * One profile from several of the same model on the same backend, measured at different times: per op point the
 * median time (and read probe), the median of each scalar rate and cost, the streaming limits recomputed from the
 * merged points. On a shared machine whose speed drifts over minutes, profiles measured apart in time (for example
 * one before each round of a benchmark, or one per hour) give a profile of its typical speed rather than of one
 * moment.
 * @throws InvalidArgumentError when `profiles` is empty or they differ in backend, model, batches, contexts,
 *   prefill steps or measured points.
 * @example
 * const passes = [];
 * for (let i = 0; i < 3; i++) { passes.push(await profileModel(be, cfg, { passes: 1 })); await otherWork(); }
 * const p = mergeProfiles(passes);
 */
export function mergeProfiles(profiles: readonly ModelProfile[]): ModelProfile {
  if (!Array.isArray(profiles) || profiles.length === 0) throw new InvalidArgumentError(`profiles must be a non-empty array of ModelProfile, received ${describe(profiles)}`);
  const [first] = profiles as [ModelProfile];
  const shape = (p: ModelProfile) =>
    JSON.stringify([p.version, p.backend, p.kind ?? 'cpu', p.staged ?? false, p.attentionIsa ?? null, p.model, p.batches, p.contexts, p.prefillTokens ?? [], Object.keys(p.ops).sort().map((k) => [k, p.ops[k]!.map((q) => [q.batch, q.context ?? null, q.cold ?? null])])]);
  const want = shape(first);
  profiles.forEach((p, i) => {
    if (shape(p) !== want) throw new InvalidArgumentError(`profiles[${i}] must be measured for the same model, backend, batches, contexts and prefill steps as profiles[0] (${first.backend}, ${first.model.architecture}), received ${p.backend}, ${p.model?.architecture} with other points`);
  });
  const ops = Object.fromEntries(
    Object.entries(first.ops).map(([key, pts]) => [key, pts.map((q, j) => ({ ...q, ms: mid(profiles.map((p) => p.ops[key]![j]!.ms)), probeGBs: mid(profiles.map((p) => p.ops[key]![j]!.probeGBs)) }))]),
  );
  const opt = (get: (p: ModelProfile) => number | undefined) => {
    const xs = profiles.map(get).filter((x): x is number => x !== undefined);
    return xs.length === profiles.length ? mid(xs) : undefined;
  };
  const stream = streaming(ops);
  const hostGroupMs = opt((p) => p.hostGroupMs);
  const copyGBs = opt((p) => p.copyGBs);
  const hostExpertGBs = opt((p) => p.hostExpertGBs);
  const deviceGBs = opt((p) => p.deviceGBs);
  const { hostGroupMs: _h, copyGBs: _c, hostExpertGBs: _e, deviceGBs: _d, ...rest } = first;
  return {
    ...rest,
    ops,
    groupMs: mid(profiles.map((p) => p.groupMs)),
    ...(hostGroupMs !== undefined ? { hostGroupMs } : {}),
    opMs: mid(profiles.map((p) => p.opMs)),
    streamEfficiency: stream.efficiency,
    peakGBs: stream.peakGBs,
    sampleNsPerLogit: mid(profiles.map((p) => p.sampleNsPerLogit)),
    ...(copyGBs !== undefined ? { copyGBs } : {}),
    ...(hostExpertGBs !== undefined ? { hostExpertGBs } : {}),
    ...(deviceGBs !== undefined ? { deviceGBs } : {}),
    runtime: {
      preset: first.runtime.preset,
      stepMs: mid(profiles.map((p) => p.runtime.stepMs)),
      layerMs: mid(profiles.map((p) => p.runtime.layerMs)),
      seqMs: mid(profiles.map((p) => p.runtime.seqMs ?? 0)),
      points: profiles.flatMap((p) => p.runtime.points),
    },
    readGBs: mid(profiles.map((p) => p.readGBs)),
    seconds: profiles.reduce((a, p) => a + p.seconds, 0),
  };
}
