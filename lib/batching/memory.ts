/**
 * Memory planning for the compute backend (GPU memory on CUDA): what a model's dense weights, its expert slots and
 * a step's activations take there, and how many routed experts fit in the slots beside them.
 *
 *   device bytes = dense weights + slots x expert bytes + step(T) + margin
 *   step(T)      = the step arenas' buffer (lib/engine/forward.ts; 1.25x the step's need, its growth rule: the
 *                    step's own tensors, then one layer's at a time, or the LM head's: LOGIT_ROWS rows of logits)
 *                  + the fused MoE kernel's scratch (cuda/moe_experts.cu: routed rows padded per expert, their
 *                    SwiGLU activations bf16 and unweighted output rows f32)
 *                  + the expert cache's parts buffer (lib/engine/experts.ts: module mode's and the host split's
 *                    unweighted rows, kept across steps beside the kernel's scratch in the CUDA pool)
 *
 * And the KV cache in host memory: the tokens a budget holds (kvTokensFor), the budget for some tokens (kvBytesFor)
 * and how much of the host a cache should take (hostKvLimit).
 *
 * The estimates follow the runtime's allocations; test/memory-plan.test.ts checks them against a loaded model's
 * MoeModel.memory() and the arenas' measured need on every preset.
 *
 * @example
 * const slots = expertSlotsFor(cfg, freeBytes, { tokens: 512 });   // experts pinned in GPU memory
 * await loadModel(dir, { backend: 'cuda', experts: { slots } });
 */
import { describe } from '../dtype.js';
import { InvalidArgumentError, OutOfMemoryError } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import { LOGIT_ROWS } from '../engine/forward.js';
import { attentionHeadDim } from '../model/weights.js';
import { MAX_VIEW_BYTES } from '../tensor.js';
import { stepOps } from './perf-model.js';

const ALIGN = 256; // the arenas' alignment (forward.ts Arena.ALIGN)
const al = (bytes: number) => Math.ceil(bytes / ALIGN) * ALIGN;
/** The fused MoE kernel's largest row tile (kMoeWgBM): each expert's rows are padded to it. */
const MOE_TILE = 128;

/** Bytes of one routed expert (gate, up, down; bf16, unpacked: the slots' layout on CUDA). */
export function expertBytes(cfg: ModelConfig): number {
  return 3 * cfg.hiddenSize * cfg.moeIntermediateSize * 2;
}

/**
 * Bytes of the dense weights on the compute backend (loadDenseWeights, unpacked): every projection the step's gemms
 * read (the router in f32), the dense and shared MLPs, the embedding table (once when the LM head is tied to it) and
 * the RMSNorm weights. Biases and gates of a few families are left out (under 1% of any real model).
 */
export function denseWeightBytes(cfg: ModelConfig): number {
  let bytes = 0;
  for (const o of stepOps(cfg).ops) {
    const s = o.spec;
    if (s.op === 'gemm') bytes += o.calls * s.n * s.k * (s.dtype === 'bf16' ? 2 : 4);
    else if (s.op === 'moeExperts' && s.experts === 1) bytes += o.calls * 3 * s.hidden * s.inter * 2;
    else if (s.op === 'rmsNorm') bytes += o.calls * s.d * 4;
  }
  // the embedding table the first step gathers from (the tied LM head's gemm already counted it)
  if (!cfg.tieWordEmbeddings) bytes += cfg.vocabSize * cfg.hiddenSize * 2;
  return bytes;
}

export interface StepMemoryShape {
  /** Tokens in the step (decode: the sequences; prefill: their prompt tokens). */
  tokens: number;
  /** Sequences whose last row reaches the LM head (default: tokens, a decode step). */
  rows?: number;
  /** Attention micro-batches (each allocates its own q, k, v; default 1). */
  microBatches?: number;
  /**
   * What the LM head produces: 'tokens' (default: greedy tokens chosen on the compute backend, ids down), 'sampled'
   * (the sequences' last rows' logits down to pinned memory, sampled on the host) or 'all' (every token's logits
   * down: MoeModel.logits; rows = tokens).
   */
  head?: 'tokens' | 'sampled' | 'all';
}

/**
 * What one staged step of `shape` takes from the two arenas at most at once, bytes (forward.ts: the step's own
 * tensors, then one layer's at a time, or the LM head's). `device`: the compute backend's arena; `host`: the pinned
 * one (q, k, v and the attention output on their way between the two).
 */
export function stepArenaNeed(cfg: ModelConfig, shape: StepMemoryShape): { device: number; host: number } {
  const T = shape.tokens;
  const rows = shape.rows ?? T;
  const M = shape.microBatches ?? 1;
  if (!Number.isSafeInteger(T) || T < 1) throw new InvalidArgumentError(`tokens must be a positive integer, received ${describe(shape.tokens)}`);
  if (!Number.isSafeInteger(rows) || rows < 1 || rows > T) throw new InvalidArgumentError(`rows must be an integer in [1, tokens ${T}], received ${describe(shape.rows)}`);
  if (!Number.isSafeInteger(M) || M < 1 || M > T) throw new InvalidArgumentError(`microBatches must be an integer in [1, tokens ${T}], received ${describe(shape.microBatches)}`);
  const H = cfg.hiddenSize;
  const E = cfg.numExperts;
  const K = cfg.topK;
  const nH = cfg.numHeads;
  const D = attentionHeadDim(cfg);
  // the step's own tensors: h, xn, delta, blockOut (+ sharedOut), router logits, xf, top-k ids and weights, the
  // one-expert ids and weights (+ the shared gate's three), the token ids
  const shared = cfg.sharedExperts ? [2 * H] : [];
  const gate = cfg.sharedExperts?.gated ? [4, 4, 4] : [];
  const devStep = [4 * H, 2 * H, 4 * H, 2 * H, ...shared, 4 * E, 4 * H, 4 * K, 4 * K, 4, 4, ...gate, 4].reduce((a, b) => a + al(T * b), 0);
  const hostStep = [2 * nH * D, 4 * E, 4 * K, 4 * K].reduce((a, b) => a + al(T * b), 0);
  // one layer: per micro-batch of g tokens its projections' outputs (device, and the host copies of those that come
  // down) and the attention output going up
  let devLayer = 0;
  let hostLayer = 0;
  for (let i = 0; i < M; i++) {
    const g = Math.floor((T * (i + 1)) / M) - Math.floor((T * i) / M);
    let down: number[];
    let deviceOnly: number[] = [];
    let upWidth = 2 * nH * D;
    if (cfg.mla) {
      const m = cfg.mla;
      down = [4 * nH * m.qkNopeHeadDim, 4 * nH * m.qkRopeHeadDim, 4 * m.qkRopeHeadDim, 4 * nH * m.qkNopeHeadDim, 4 * nH * m.vHeadDim];
      deviceOnly = [...(m.qLoraRank ? [4 * m.qLoraRank, 2 * m.qLoraRank] : []), 4 * m.kvLoraRank, 2 * m.kvLoraRank];
      if (m.vHeadDim < D) upWidth = 2 * nH * m.vHeadDim;
    } else {
      down = [4 * nH * cfg.headDim, 4 * cfg.numKvHeads * cfg.headDim, 4 * cfg.numKvHeads * cfg.headDim];
    }
    devLayer += [...down, ...deviceOnly, upWidth].reduce((a, b) => a + al(g * b), 0);
    hostLayer += down.reduce((a, b) => a + al(g * b), 0);
  }
  // the LM head: each sequence's last row and their index (not for 'all'), a chunk of logits (LOGIT_ROWS rows), then
  // the greedy tokens (device and host) or every row's logits (host)
  const head = shape.head ?? 'tokens';
  if (head !== 'tokens' && head !== 'sampled' && head !== 'all') throw new InvalidArgumentError(`head must be 'tokens', 'sampled' or 'all', received ${describe(shape.head)}`);
  if (head === 'all' && rows !== T) throw new InvalidArgumentError(`head 'all' has one row per token: rows must be tokens ${T}, received ${rows}`);
  const chunk = al(Math.min(rows, LOGIT_ROWS) * 4 * cfg.vocabSize);
  const devHead = (head === 'all' ? 0 : al(rows * 2 * H) + al(rows * 4)) + chunk + (head === 'tokens' ? al(rows * 4) : 0);
  const hostHead = head === 'tokens' ? al(rows * 4) : al(rows * 4 * cfg.vocabSize);
  return { device: devStep + Math.max(devLayer, devHead), host: hostStep + Math.max(hostLayer, hostHead) };
}

/**
 * Bytes the fused MoE kernel's scratch takes for T tokens (cuda/moe_experts.cu: counts, offsets, the routed rows
 * padded to the row tile per expert, their activations [capacity, I] bf16 and the unweighted rows [T k, H] f32).
 */
export function moeScratchBytes(cfg: ModelConfig, tokens: number): number {
  const slots = tokens * cfg.topK;
  const capacity = slots + cfg.numExperts * (MOE_TILE - 1);
  return al(cfg.numExperts * 4) + al((cfg.numExperts + 1) * 4) + al(capacity * 4) + al(capacity * cfg.moeIntermediateSize * 2) + al(slots * cfg.hiddenSize * 4);
}

/**
 * Bytes of the expert cache's parts buffer for T tokens (CachedExperts: [T, k, H] f32 in device memory, kept across
 * steps): module mode and the host split write each (token, j) pair's unweighted row there, while the fused
 * kernel's own scratch (moeScratchBytes) can still sit in the CUDA pool from an earlier layer.
 */
export function expertPartsBytes(cfg: ModelConfig, tokens: number): number {
  return al(tokens * cfg.topK * cfg.hiddenSize * 4);
}

/**
 * The device memory one step of `shape` takes on CUDA with experts in slots, bytes: the device arena's buffer
 * (1.25x its need), the MoE kernel's scratch and the expert cache's parts buffer.
 */
export function stepDeviceBytes(cfg: ModelConfig, shape: StepMemoryShape): number {
  return Math.ceil(1.25 * stepArenaNeed(cfg, shape).device) + moeScratchBytes(cfg, shape.tokens) + expertPartsBytes(cfg, shape.tokens);
}

/** Bytes left free beside the plan (allocator rounding, the CUDA libraries' own): 2% of the budget, at least 256 MiB. */
export function memoryMargin(deviceBytes: number): number {
  return Math.max(256 * 2 ** 20, Math.ceil(0.02 * deviceBytes));
}

/**
 * The routed experts the compute backend can hold in slots beside the dense weights and the largest step of
 * `shape`, within `deviceBytes` (on CUDA the GPU's free memory before the model is loaded): every routed expert of
 * the model when they all fit (none are copied then), else as many as fit. OutOfMemoryError when not even two fit
 * (one computing while the next one copies).
 * @example
 * const slots = expertSlotsFor(cfg, 24 * 2 ** 30, { tokens: 1024 });
 */
export function expertSlotsFor(cfg: ModelConfig, deviceBytes: number, shape: StepMemoryShape): number {
  if (!(deviceBytes > 0) || !Number.isFinite(deviceBytes)) throw new InvalidArgumentError(`deviceBytes must be a positive number, received ${describe(deviceBytes)}`);
  const total = cfg.moeLayers.length * cfg.numExperts;
  const used = denseWeightBytes(cfg) + stepDeviceBytes(cfg, shape) + memoryMargin(deviceBytes);
  const slots = Math.min(total, Math.floor((deviceBytes - used) / expertBytes(cfg)));
  if (slots < Math.min(2, total)) {
    const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
    throw new OutOfMemoryError(
      `device memory: ${gib(deviceBytes)} holds no two routed experts (${gib(expertBytes(cfg))} each) beside the dense weights (${gib(denseWeightBytes(cfg))}) and a step of ${shape.tokens} tokens (${gib(stepDeviceBytes(cfg, shape))})`,
    );
  }
  return slots;
}

/**
 * Tokens a KV cache of `budgetBytes` holds for `cfg` (loadModel's: bf16 pages of `blockSize` tokens over every layer,
 * K and V; MLA caches every head's decompressed keys), as MoeModel.kvTokensFree reports on a fresh model.
 */
export function kvTokensFor(cfg: ModelConfig, budgetBytes = 256 * 2 ** 20, blockSize = 64): number {
  return Math.floor(budgetBytes / (blockSize * kvTokenBytes(cfg))) * blockSize;
}

/** Bytes of one KV token of `cfg` in loadModel's cache (bf16 K and V over every layer). */
function kvTokenBytes(cfg: ModelConfig): number {
  return cfg.numLayers * 2 * (cfg.mla ? cfg.numHeads : cfg.numKvHeads) * attentionHeadDim(cfg) * 2;
}

/** The KV cache bytes (loadModel's kvCacheBytes) that hold `tokens` tokens of `cfg`: whole pages of `blockSize`. */
export function kvBytesFor(cfg: ModelConfig, tokens: number, blockSize = 64): number {
  if (!Number.isSafeInteger(tokens) || tokens < 1) throw new InvalidArgumentError(`tokens must be a positive integer, received ${describe(tokens)}`);
  return Math.ceil(tokens / blockSize) * blockSize * kvTokenBytes(cfg);
}

/**
 * The most host memory a KV cache for `cfg` should take on this host, bytes: a quarter of its memory and at most 16
 * GiB (plan's default), no more than half of what stays free once the expert store is loaded, and within the
 * cache's layout (one buffer per layer and K / V, each at most `maxViewBytes`); at least 256 MiB (loadModel's
 * default).
 * @example
 * const kv = hostKvLimit(cfg, { totalBytes: os.totalmem(), freeBytes: os.freemem() });
 */
export function hostKvLimit(cfg: ModelConfig, host: { totalBytes: number; freeBytes: number }, maxViewBytes = MAX_VIEW_BYTES): number {
  const store = cfg.moeLayers.length * cfg.numExperts * expertBytes(cfg);
  const want = Math.min(16 * 2 ** 30, 0.25 * host.totalBytes, 0.5 * (host.freeBytes - store), 2 * cfg.numLayers * maxViewBytes);
  return Math.floor(Math.max(256 * 2 ** 20, want));
}
