/**
 * MoE-Lens-style performance model of a decode step, from a measured hardware profile and the model config:
 * every term is a roofline max(bytes / bandwidth, flops / rate) of one part of the step, the parts run one after
 * the other (the CPU backend runs them on the same cores), plus a fixed per-op cost.
 *
 *   per layer:  q/k/v/o projections   gemm(B rows, weights W_attn)
 *               attention             B sequences x context L: K and V bytes / attention bandwidth
 *               router                gemm(B rows, E x H f32)
 *               routed experts        U(B) distinct experts' bytes / expert bandwidth vs 2 B k 3 H I / expert rate,
 *                                     U(B) = E (1 - (1 - k/E)^B) (independent uniform routing)
 *               shared / dense MLP    gemm-like, all B rows
 *   per step:   LM head gemm(B rows), sampling (B x vocab), and ops x op round trip
 * Decode throughput = B / step time. The binding resource is the largest term class (weights: memory bandwidth;
 * attention: KV bandwidth; compute; fixed overheads).
 *
 * @example
 * const p = await profileHardware(be);
 * const pred = predictDecode(cfg, p, { batch: 32, context: 512 });   // { tokensPerSecond, stepMs, terms, bound }
 */
import type { ModelConfig } from '../model/config.js';
import { attentionHeadDim } from '../model/weights.js';

/** A measured curve: time per weight byte (ns) at a number of rows; interpolated linearly in between. */
export type RowsCurve = Array<{ rows: number; nsPerByte: number }>;

/** What `moe-offload profile` measures (CPU backend). */
export interface HardwareProfile {
  backend: string;
  cpu: string;
  threads: number;
  /** Dense GEMM time per weight byte vs the number of rows (bf16 weights beyond the caches). */
  gemm: RowsCurve;
  /** Fused MoE time per routed-expert weight byte vs the rows routed to each expert. */
  experts: RowsCurve;
  /** Decode attention K/V bytes read per second vs the GQA ratio (query heads per kv head). */
  attention: Array<{ gqa: number; GBs: number }>;
  /** Fixed cost of one op inside the runtime (submission, checks, launch on tiny data, the step's host work), ms. */
  opMs: number;
  /** Round trip of one awaited group of ops back to JS, ms. */
  groupMs: number;
  /** Per decode step costs that do not grow with the op count (embedding, sampling, detokenising, bookkeeping), ms. */
  stepFixedMs: number;
  /** Streaming read bandwidth when the profile was measured (GB/s); predictions can be rescaled to the bandwidth now. */
  readGBs: number;
  /** Sampling cost per logit (argmax / softmax over the vocabulary), ns. */
  sampleNsPerLogit: number;
  /** Host memory the KV cache may take (bytes). */
  hostMemoryBytes: number;
  measuredAt: string;
}

/** Piecewise-linear interpolation of y at x over points sorted by x (clamped at the ends, linear beyond the last). */
function interp(points: ReadonlyArray<{ x: number; y: number }>, x: number): number {
  if (x <= points[0]!.x) return points[0]!.y;
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1]!;
    const b = points[i]!;
    if (x <= b.x) return a.y + ((b.y - a.y) * (x - a.x)) / (b.x - a.x);
  }
  // beyond the last point: time per byte grows in proportion to rows (compute-bound)
  const last = points[points.length - 1]!;
  return (last.y * x) / last.x;
}

/** ms to stream `bytes` of weights against `rows` rows, from a measured curve. */
export function curveMs(curve: RowsCurve, bytes: number, rows: number): number {
  return (bytes * interp(curve.map((c) => ({ x: c.rows, y: c.nsPerByte })), rows)) / 1e6;
}

export interface DecodeShape {
  /** Sequences decoding together. */
  batch: number;
  /** Tokens in each sequence's KV cache. */
  context: number;
}

export interface StepTerms {
  attentionProjMs: number;
  attentionMs: number;
  routerMs: number;
  expertsMs: number;
  sharedMs: number;
  lmHeadMs: number;
  overheadMs: number;
}

export interface DecodePrediction {
  stepMs: number;
  tokensPerSecond: number;
  terms: StepTerms;
  /** The resource whose terms dominate. */
  bound: 'weights (memory bandwidth)' | 'attention (KV bandwidth)' | 'compute' | 'per-op overhead';
  /** Distinct routed experts per MoE layer per step (expected). */
  expertsPerLayer: number;
}

/** Awaited op groups per layer in lib/engine/forward.ts (norm+qkv+rope, attention, o+norm+router, experts). */
export const GROUPS_PER_LAYER = 4;

/** Ops lib/engine/forward.ts issues per layer for this config (and per step outside the layers). */
export function opsPerStep(cfg: ModelConfig): { perLayer: number[]; perStep: number } {
  const perLayer = Array.from({ length: cfg.numLayers }, (_, l) => {
    let n = 1; // input norm
    if (cfg.mla) n += 8 + (cfg.mla.qLoraRank ? 2 : 0); // q nope/pe, latent, its norm, k pe, k nope, v, rope
    else n += 3 + (cfg.attentionBias ? 3 : 0) + (cfg.qkNorm ? 2 : 0) + 1;
    n += 1 + 1; // attention, o projection
    if (cfg.family === 'gpt_oss') n += 1; // o bias
    if (cfg.moeLayers.includes(l)) {
      n += 2 + 1 + 1 + 1; // norm + convert, router, top-k, experts
      if (cfg.family === 'gpt_oss') n += 1; // router bias
      if (cfg.sharedExperts) n += (cfg.sharedExperts.gated ? 2 : 0) + 2; // gate + top-k, shared experts, add
    } else {
      n += 2; // norm, dense MLP
    }
    return n;
  });
  return { perLayer, perStep: 5 };
}

/** Predicted decode step of `shape` on `p` for model `cfg` (CPU backend, experts resident). */
export function predictDecode(cfg: ModelConfig, p: HardwareProfile, shape: DecodeShape, options: { readGBs?: number } = {}): DecodePrediction {
  // memory-bound costs scale with the bandwidth available now (this matters on VMs whose bandwidth drifts)
  const bw = options.readGBs !== undefined && p.readGBs > 0 ? p.readGBs / options.readGBs : 1;
  const B = shape.batch;
  const L = shape.context;
  const H = cfg.hiddenSize;
  const layers = cfg.numLayers;
  const moe = cfg.moeLayers.length;
  const dense = layers - moe;
  const nH = cfg.numHeads;
  const hd = cfg.headDim;
  const gemm = (n: number, k: number, bytesPer = 2) => bw * curveMs(p.gemm, n * k * bytesPer, B);

  // attention projections (MLA: q, compressed kv, its decompression, o)
  let projMs: number;
  let kvHeads = cfg.numKvHeads;
  if (cfg.mla) {
    const m = cfg.mla;
    const qIn = m.qLoraRank ?? H;
    projMs = (m.qLoraRank ? gemm(m.qLoraRank, H) : 0) + gemm(nH * (m.qkNopeHeadDim + m.qkRopeHeadDim), qIn) + gemm(m.kvLoraRank + m.qkRopeHeadDim, H);
    projMs += gemm(nH * (m.qkNopeHeadDim + m.vHeadDim), m.kvLoraRank) + gemm(H, nH * m.vHeadDim);
    kvHeads = nH;
  } else {
    projMs = gemm((nH + 2 * cfg.numKvHeads) * hd, H) + gemm(H, nH * hd);
  }
  // attention: every sequence reads its K and V (padded head dim), per layer
  const kvBytes = B * L * 2 * kvHeads * attentionHeadDim(cfg) * 2;
  const gqa = cfg.mla ? 1 : nH / cfg.numKvHeads;
  const attnGBs = interp(p.attention.map((a) => ({ x: a.gqa, y: a.GBs })), gqa);
  const attnMs = (bw * kvBytes) / (attnGBs * 1e6);
  const routerMs = gemm(cfg.numExperts, H, 4);
  // routed experts
  const E = cfg.numExperts;
  const k = cfg.topK;
  const U = E * (1 - (1 - k / E) ** B);
  const expertBytes = 3 * H * cfg.moeIntermediateSize * 2;
  const expertsMs = bw * curveMs(p.experts, U * expertBytes, (B * k) / U);
  const sharedI = cfg.sharedExperts?.intermediateSize ?? 0;
  const sharedMs = sharedI ? bw * curveMs(p.experts, 3 * H * sharedI * 2, B) : 0;
  const denseMlpMs = bw * curveMs(p.experts, 3 * H * cfg.denseIntermediateSize * 2, B);
  const lmHeadMs = gemm(cfg.vocabSize, H);
  const ops = opsPerStep(cfg);
  const nOps = ops.perLayer.reduce((a, b) => a + b, 0) + ops.perStep;
  const overheadMs = p.stepFixedMs + nOps * p.opMs + (layers * GROUPS_PER_LAYER + 3) * p.groupMs + (B * cfg.vocabSize * p.sampleNsPerLogit) / 1e6;

  const terms: StepTerms = {
    attentionProjMs: layers * projMs,
    attentionMs: layers * attnMs,
    routerMs: moe * routerMs,
    expertsMs: moe * expertsMs + dense * denseMlpMs,
    sharedMs: moe * sharedMs,
    lmHeadMs,
    overheadMs,
  };
  const stepMs = Object.values(terms).reduce((a, b) => a + b, 0);
  // classify: weights stream at the curve's one-row cost; what exceeds it is compute
  const weightsMs = terms.attentionProjMs + terms.routerMs + terms.expertsMs + terms.sharedMs + terms.lmHeadMs;
  const streamMs = moe * curveMs(p.experts, U * expertBytes, 1);
  let bound: DecodePrediction['bound'] = moe * expertsMs > 1.5 * streamMs ? 'compute' : 'weights (memory bandwidth)';
  if (terms.attentionMs > weightsMs && terms.attentionMs > terms.overheadMs) bound = 'attention (KV bandwidth)';
  else if (terms.overheadMs > weightsMs && terms.overheadMs > terms.attentionMs) bound = 'per-op overhead';
  return { stepMs, tokensPerSecond: (B * 1000) / stepMs, terms, bound, expertsPerLayer: U };
}

/**
 * The batch that maximises predicted decode throughput at `context` within the KV cache's `kvTokens` (batches
 * 1, 2, 4, ... up to what fits).
 */
export function chooseBatch(cfg: ModelConfig, p: HardwareProfile, context: number, kvTokens: number): { batch: number; prediction: DecodePrediction } {
  let best: { batch: number; prediction: DecodePrediction } | undefined;
  for (let b = 1; b * context <= kvTokens && b <= 4096; b *= 2) {
    const prediction = predictDecode(cfg, p, { batch: b, context });
    if (!best || prediction.tokensPerSecond > best.prediction.tokensPerSecond) best = { batch: b, prediction };
  }
  return best ?? { batch: 1, prediction: predictDecode(cfg, p, { batch: 1, context }) };
}
