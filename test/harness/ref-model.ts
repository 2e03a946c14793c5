/**
 * Float64 reference forward pass of HF MoE causal LMs, written from the HF `modeling_*.py` semantics and
 * independent of lib/ (own safetensors reader, own config reading): the yardstick the engine's logits are
 * compared against (issue 7). Families: mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, gpt_oss.
 *
 * Every weight is decoded exactly (BF16 / F16 / F32 / F64) to float64 and every intermediate stays float64: no
 * rounding to the model dtype anywhere, so the engine's bf16 arithmetic differs from this by its own rounding only.
 * `forward(..., { bf16Activations: true })` rounds to bf16 where a bf16 deployment stores activations: the input of
 * every projection (bf16 GEMMs read bf16 activations; not the router, kept f32), the SwiGLU activations, and the
 * keys (after RoPE) and values a bf16 KV cache holds. The residual stream, the scores and the softmax stay float64.
 * Plain loops, no cleverness: slow, meant for tiny checkpoints (hidden <= a few hundred).
 *
 * Semantics per family (HF module names in brackets):
 * - all: embed_tokens; per layer x += attn(input_layernorm(x)); x += ffn(post_attention_layernorm(x)); norm;
 *   lm_head (embed_tokens when tie_word_embeddings). RMSNorm y = w * x / sqrt(mean(x^2) + eps). Positions 0..T-1,
 *   causal mask; sliding window keeps key j for query i when i - j < window (HF `sliding_window_overlay`).
 *   q/k/v/o biases are used when the checkpoint holds them (Qwen2-MoE q/k/v, gpt-oss all four).
 * - RoPE: inv_freq from rope_theta and rope_scaling / rope_parameters (default, linear, llama3, yarn as in HF
 *   `modeling_rope_utils.py`), cos/sin multiplied by yarn's attention factor; rotate_half pairing (i, i + d/2)
 *   except DeepSeek's interleaved pairs (2i, 2i + 1) (`apply_rotary_emb` on a complex view).
 * - mixtral: router `gate` softmax over all experts, top-k, renormalised; experts w2(silu(w1 x) * w3 x).
 * - qwen2_moe: router softmax top-k, renormalised only when norm_topk_prob; + sigmoid(shared_expert_gate x) *
 *   shared_expert(x); layers outside ((l + 1) % decoder_sparse_step == 0 and l not in mlp_only_layers) are a
 *   dense mlp of intermediate_size.
 * - qwen3_moe: as qwen2_moe without shared expert; q_norm / k_norm RMSNorm over head_dim per head before RoPE.
 * - olmoe: q_norm / k_norm RMSNorm over the whole q / k projection before the head split; clip_qkv clamps q, k, v.
 * - deepseek_v2: MLA (q_proj or q_a_proj -> q_a_layernorm -> q_b_proj; kv_a_proj_with_mqa -> [c, k_pe];
 *   kv_b_proj(kv_a_layernorm(c)) -> per head [k_nope, v]); softmax scale (qk_nope + qk_rope)^-0.5, times
 *   get_mscale(factor, mscale_all_dim)^2 under yarn (DeepSeek's modeling file; HF PR #47435 restored it in HF);
 *   dense mlp for layers < first_k_dense_replace (and l % moe_layer_freq != 0); routed experts softmax top-k
 *   (greedy or group_limited_greedy), weights normalised when norm_topk_prob and k > 1 (+1e-20), else times
 *   routed_scaling_factor (DeepSeek's own modeling file); + shared_experts (moe_intermediate_size * n_shared).
 * - gpt_oss: attention sinks (one extra logit per head in the softmax, dropped after), layer_types sliding /
 *   full (default: even layers sliding); router Linear with bias, top-k on the logits, softmax over those k;
 *   experts stacked: gate_up_proj [E, H, 2I] (x @ W, gate = even columns, up = odd), gate clamped above at
 *   swiglu_limit, up clamped to +-limit, (up + 1) * gate * sigmoid(alpha gate), down_proj [E, I, H]; + biases.
 *   Only the dequantised bf16 layout is read (not the MXFP4 `_blocks` / `_scales` tensors of the released files).
 * Top-k ties go to the lower expert id. lastRouting lists the chosen ids in selection order (highest first).
 *
 * @example
 * const ref = loadReferenceModel('/tmp/tiny-mixtral');
 * const logits = ref.forward([1, 5, 2]);        // Float64Array [3 * vocab]
 * ref.lastRouting[0][2];                         // expert ids of token 2 at layer 0, e.g. [3, 0]
 */
import fs from 'node:fs';
import path from 'node:path';

import { BF16, decode, roundTo } from './ref.js';

type Json = Record<string, unknown>;

export interface RefModel {
  config: Record<string, unknown>;
  /** logits [T, V] (row-major) for every position of `tokens`, causal, positions 0..T-1 */
  /**
   * With `routing` ([layer][token] expert ids, e.g. the engine's), MoE layers use those experts instead of their
   * own top-k (weights still from the reference's own router probabilities, by the family's rule): compares the
   * numerics of two implementations without the discontinuity of a near-tied expert choice flipping.
   */
  forward(tokens: readonly number[], options?: { routing?: ReadonlyArray<ReadonlyArray<readonly number[]> | undefined>; bf16Activations?: boolean }): Float64Array;
  /** per layer, per token: the top-k expert ids the router chose (for comparing routing); [] on dense layers */
  lastRouting: number[][][]; // [layer][token][k]
  /**
   * per layer, per query head: the scaled pre-softmax attention scores [T, T] (row = query, column = key) of the
   * last forward; NaN where masked (future keys, outside the sliding window). Sinks are not included.
   */
  lastScores: Float64Array[][]; // [layer][head]
}

export const REF_MODEL_TYPES = ['mixtral', 'qwen2_moe', 'qwen3_moe', 'olmoe', 'deepseek_v2', 'gpt_oss'] as const;

// ---------------------------------------------------------------------------------------------------------------
// safetensors reading (own implementation: 8-byte LE header length, JSON header, raw little-endian data)

interface Tensor64 {
  shape: number[];
  data: Float64Array;
}

const F32_SCRATCH = new Float32Array(1);
const U32_SCRATCH = new Uint32Array(F32_SCRATCH.buffer);

/** bf16 bits -> float64, exact (a bf16 is the upper half of an f32). */
function bf16Value(bits: number): number {
  U32_SCRATCH[0] = (bits << 16) >>> 0;
  return F32_SCRATCH[0]!;
}

/**
 * v rounded to f32, then to the nearest bf16 (ties to even; the op harness's rounding), as float64: a value computed
 * in f32 and stored in bf16, as the engine's are (rounding straight from float64 moves gpt-oss seed 3's worst
 * position from 1.82e-2 to 2.07e-2).
 */
function bf16Round(v: number): number {
  return decode(roundTo(Math.fround(v), BF16), BF16);
}

/** Rounds every element of each array to bf16 in place. */
function roundBf16(...arrays: Float64Array[]): void {
  for (const a of arrays) for (let i = 0; i < a.length; i++) a[i] = bf16Round(a[i]!);
}

/** forward() with bf16Activations (set for the duration of that call; forward is synchronous). */
let bf16Mode = false;

/** IEEE binary16 bits -> float64, exact. */
function f16Value(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const e = (bits >>> 10) & 0x1f;
  const m = bits & 0x3ff;
  if (e === 0x1f) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * 2 ** -24;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

const ELEM_SIZE: Record<string, number> = { BF16: 2, F16: 2, F32: 4, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1, U16: 2, U32: 4, U64: 8, F8_E4M3: 1, F8_E5M2: 1, F8_E8M0: 1 };

/** Reads every tensor of one .safetensors file; tensors of a dtype other than BF16/F16/F32/F64 are listed in `skipped`. */
function readSafetensors(file: string, out: Map<string, Tensor64>, skipped: Map<string, string>, only?: ReadonlySet<string>): void {
  const buf = fs.readFileSync(file);
  if (buf.length < 8) throw new Error(`${file}: truncated (${buf.length} bytes)`);
  const n = Number(buf.readBigUInt64LE(0));
  if (8 + n > buf.length) throw new Error(`${file}: header length ${n} exceeds the file`);
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const base = 8 + n;
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (only && !only.has(name)) continue;
    const size = ELEM_SIZE[e.dtype];
    if (size === undefined) throw new Error(`${file}: tensor ${name} has unknown dtype ${e.dtype}`);
    const numel = e.shape.reduce((a, b) => a * b, 1);
    const [b0, b1] = e.data_offsets;
    if (b1 - b0 !== numel * size || base + b1 > buf.length) throw new Error(`${file}: tensor ${name} [${e.shape.join(', ')}] ${e.dtype} has bad data_offsets [${b0}, ${b1}]`);
    const off = base + b0;
    const data = new Float64Array(numel);
    switch (e.dtype) {
      case 'BF16':
        for (let i = 0; i < numel; i++) data[i] = bf16Value(buf.readUInt16LE(off + 2 * i));
        break;
      case 'F16':
        for (let i = 0; i < numel; i++) data[i] = f16Value(buf.readUInt16LE(off + 2 * i));
        break;
      case 'F32':
        for (let i = 0; i < numel; i++) data[i] = buf.readFloatLE(off + 4 * i);
        break;
      case 'F64':
        for (let i = 0; i < numel; i++) data[i] = buf.readDoubleLE(off + 8 * i);
        break;
      default:
        skipped.set(name, e.dtype);
        continue;
    }
    out.set(name, { shape: [...e.shape], data });
  }
}

/** All tensors of a checkpoint folder (sharded through model.safetensors.index.json, or model.safetensors). */
class Weights {
  readonly #t = new Map<string, Tensor64>();
  readonly #skipped = new Map<string, string>();
  readonly #dir: string;

  constructor(dir: string) {
    this.#dir = dir;
    const index = path.join(dir, 'model.safetensors.index.json');
    if (fs.existsSync(index)) {
      const wm = (JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map;
      if (!wm || typeof wm !== 'object') throw new Error(`${index}: no weight_map`);
      const byFile = new Map<string, Set<string>>();
      for (const [name, f] of Object.entries(wm)) {
        if (!byFile.has(f)) byFile.set(f, new Set());
        byFile.get(f)!.add(name);
      }
      for (const [f, names] of byFile) {
        readSafetensors(path.join(dir, f), this.#t, this.#skipped, names);
        for (const name of names) {
          if (!this.#t.has(name) && !this.#skipped.has(name)) throw new Error(`${path.join(dir, f)}: tensor ${name} named by the index is missing`);
        }
      }
    } else {
      readSafetensors(path.join(dir, 'model.safetensors'), this.#t, this.#skipped);
    }
  }

  has(name: string): boolean {
    return this.#t.has(name);
  }

  /** Tensor `name` with the given shape (checked), as float64. */
  get(name: string, shape: readonly number[]): Float64Array {
    const t = this.#t.get(name);
    if (!t) {
      const dt = this.#skipped.get(name);
      throw new Error(dt ? `${this.#dir}: tensor ${name} has dtype ${dt}, the reference reads BF16/F16/F32/F64 only` : `${this.#dir}: tensor ${name} is missing`);
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new Error(`${this.#dir}: tensor ${name} has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]`);
    }
    return t.data;
  }

  /** Tensor `name` when present (shape checked), else null. */
  maybe(name: string, shape: readonly number[]): Float64Array | null {
    return this.has(name) ? this.get(name, shape) : null;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// config reading

function num(c: Json, key: string, dflt?: number): number {
  const v = c[key];
  if (v === undefined || v === null) {
    if (dflt === undefined) throw new Error(`config.json: ${key} is required`);
    return dflt;
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`config.json: ${key} must be a number, received ${JSON.stringify(v)}`);
  return v;
}

function int(c: Json, key: string, dflt?: number): number {
  const v = num(c, key, dflt);
  if (!Number.isInteger(v) || v < 0) throw new Error(`config.json: ${key} must be a non-negative integer, received ${v}`);
  return v;
}

function optNum(c: Json, key: string): number | null {
  const v = c[key];
  return v === undefined || v === null ? null : num(c, key);
}

function bool(c: Json, key: string, dflt: boolean): boolean {
  const v = c[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'boolean') throw new Error(`config.json: ${key} must be a boolean, received ${JSON.stringify(v)}`);
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// RoPE parameters (HF modeling_rope_utils.py)

interface Rope {
  /** rotary dimension (even) */
  dim: number;
  /** [dim / 2] */
  invFreq: Float64Array;
  /** multiplies cos and sin */
  attentionFactor: number;
  /** pairs (2i, 2i + 1) instead of (i, i + dim / 2) */
  interleaved: boolean;
  /** yarn's factor and mscale_all_dim (DeepSeek's softmax scale), null without yarn */
  yarn: { factor: number; mscaleAllDim: number } | null;
}

function getMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

function ropeFromConfig(cfg: Json, dim: number, defaultTheta: number, interleaved: boolean): Rope {
  const params = (cfg.rope_scaling ?? cfg.rope_parameters ?? null) as Json | null;
  const theta = optNum(cfg, 'rope_theta') ?? (params && typeof params.rope_theta === 'number' ? params.rope_theta : defaultTheta);
  if (cfg.partial_rotary_factor !== undefined && cfg.partial_rotary_factor !== null && cfg.partial_rotary_factor !== 1) {
    throw new Error(`config.json: partial_rotary_factor ${JSON.stringify(cfg.partial_rotary_factor)} is not supported by the reference`);
  }
  if (dim % 2 !== 0) throw new Error(`rotary dimension ${dim} must be even`);
  const half = dim / 2;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = 1 / theta ** ((2 * i) / dim);
  const type = params ? String(params.rope_type ?? params.type ?? 'default') : 'default';
  let attentionFactor = 1;
  let yarn: Rope['yarn'] = null;
  switch (type) {
    case 'default':
      break;
    case 'linear': {
      const factor = num(params!, 'factor');
      for (let i = 0; i < half; i++) invFreq[i] = invFreq[i]! / factor;
      break;
    }
    case 'llama3': {
      const factor = num(params!, 'factor');
      const low = num(params!, 'low_freq_factor');
      const high = num(params!, 'high_freq_factor');
      const oldCtx = num(params!, 'original_max_position_embeddings');
      const lowWavelen = oldCtx / low;
      const highWavelen = oldCtx / high;
      for (let i = 0; i < half; i++) {
        const f = invFreq[i]!;
        const wavelen = (2 * Math.PI) / f;
        if (wavelen > lowWavelen) invFreq[i] = f / factor;
        else if (wavelen < highWavelen) invFreq[i] = f;
        else {
          const smooth = (oldCtx / wavelen - low) / (high - low);
          invFreq[i] = ((1 - smooth) * f) / factor + smooth * f;
        }
      }
      break;
    }
    case 'yarn': {
      const p = params!;
      const origMax = optNum(p, 'original_max_position_embeddings') ?? num(cfg, 'max_position_embeddings');
      const factor = optNum(p, 'factor') ?? num(cfg, 'max_position_embeddings') / origMax;
      const mscale = optNum(p, 'mscale');
      const mscaleAllDim = optNum(p, 'mscale_all_dim');
      const af = optNum(p, 'attention_factor');
      attentionFactor = af ?? (mscale && mscaleAllDim ? getMscale(factor, mscale) / getMscale(factor, mscaleAllDim) : getMscale(factor));
      const betaFast = optNum(p, 'beta_fast') || 32;
      const betaSlow = optNum(p, 'beta_slow') || 1;
      const truncate = p.truncate === undefined || p.truncate === null ? true : Boolean(p.truncate);
      const corrDim = (rot: number) => (dim * Math.log(origMax / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
      let lo = corrDim(betaFast);
      let hi = corrDim(betaSlow);
      if (truncate) {
        lo = Math.floor(lo);
        hi = Math.ceil(hi);
      }
      lo = Math.max(lo, 0);
      hi = Math.min(hi, dim - 1);
      if (lo === hi) hi += 0.001;
      for (let i = 0; i < half; i++) {
        const extrapolation = 1 / theta ** ((2 * i) / dim);
        const interpolation = extrapolation / factor;
        const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
        const extrapolationFactor = 1 - ramp;
        invFreq[i] = interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor;
      }
      yarn = { factor, mscaleAllDim: mscaleAllDim ?? 0 };
      break;
    }
    default:
      throw new Error(`config.json: rope type ${JSON.stringify(type)} is not supported by the reference`);
  }
  return { dim, invFreq, attentionFactor, interleaved, yarn };
}

/** Rotates v[off .. off + dim) in place for position `pos`. */
function applyRope(v: Float64Array, off: number, pos: number, r: Rope): void {
  const half = r.dim / 2;
  for (let i = 0; i < half; i++) {
    const angle = pos * r.invFreq[i]!;
    const c = Math.cos(angle) * r.attentionFactor;
    const s = Math.sin(angle) * r.attentionFactor;
    const ia = r.interleaved ? off + 2 * i : off + i;
    const ib = r.interleaved ? off + 2 * i + 1 : off + i + half;
    const a = v[ia]!;
    const b = v[ib]!;
    v[ia] = a * c - b * s;
    v[ib] = b * c + a * s;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// float64 building blocks

interface Linear {
  /** [out, in] */
  w: Float64Array;
  /** [out] */
  b: Float64Array | null;
  out: number;
  in: number;
}

function linearOf(W: Weights, prefix: string, out: number, inDim: number, bias: 'maybe' | 'yes' | 'no' = 'no'): Linear {
  const w = W.get(`${prefix}.weight`, [out, inDim]);
  const b = bias === 'yes' ? W.get(`${prefix}.bias`, [out]) : bias === 'maybe' ? W.maybe(`${prefix}.bias`, [out]) : null;
  return { w, b, out, in: inDim };
}

/** y [T, out] = x [T, in] W^T + b */
function linear(x: Float64Array, T: number, l: Linear, f32Input = false): Float64Array {
  if (bf16Mode && !f32Input) x = x.map(bf16Round);
  const y = new Float64Array(T * l.out);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < l.out; o++) {
      let s = 0;
      const wo = o * l.in;
      const xt = t * l.in;
      for (let i = 0; i < l.in; i++) s += x[xt + i]! * l.w[wo + i]!;
      y[t * l.out + o] = s + (l.b ? l.b[o]! : 0);
    }
  }
  return y;
}

/** RMSNorm over consecutive groups of `dim` elements: y = w * x / sqrt(mean(x^2) + eps). */
function rmsNorm(x: Float64Array, dim: number, w: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let g = 0; g < x.length; g += dim) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[g + i]! * x[g + i]!;
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[g + i] = w[i]! * (x[g + i]! * inv);
  }
  return y;
}

function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}

function sigmoid(v: number): number {
  return 1 / (1 + Math.exp(-v));
}

interface SwiGlu {
  gate: Linear;
  up: Linear;
  down: Linear;
}

function swigluOf(W: Weights, prefix: string, hidden: number, inter: number, names: [string, string, string] = ['gate_proj', 'up_proj', 'down_proj']): SwiGlu {
  return {
    gate: linearOf(W, `${prefix}.${names[0]}`, inter, hidden),
    up: linearOf(W, `${prefix}.${names[1]}`, inter, hidden),
    down: linearOf(W, `${prefix}.${names[2]}`, hidden, inter),
  };
}

/** down(silu(gate x) * up x) for T rows. */
function swiglu(x: Float64Array, T: number, m: SwiGlu): Float64Array {
  const g = linear(x, T, m.gate);
  const u = linear(x, T, m.up);
  for (let i = 0; i < g.length; i++) g[i] = silu(g[i]!) * u[i]!;
  return linear(g, T, m.down);
}

/** Indices of the k largest values (ties: lower index first), in descending order. */
function topK(v: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: v.length }, (_, i) => i);
  idx.sort((a, b) => v[b]! - v[a]! || a - b);
  return idx.slice(0, k);
}

function softmax(v: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < v.length; i++) m = Math.max(m, v[i]!);
  const out = new Float64Array(v.length);
  let s = 0;
  for (let i = 0; i < v.length; i++) s += out[i] = Math.exp(v[i]! - m);
  for (let i = 0; i < v.length; i++) out[i] = out[i]! / s;
  return out;
}

/**
 * Causal attention. q [T, nH, dq], k [T, nKV, dq], v [T, nKV, dv] -> [T, nH * dv]; query head h reads kv head
 * floor(h / (nH / nKV)). Scores (scaled) are written to `scores[h]` [T, T] (NaN where masked).
 */
function attend(q: Float64Array, k: Float64Array, v: Float64Array, T: number, nH: number, nKV: number, dq: number, dv: number, scale: number, window: number | null, sinks: Float64Array | null, scores: Float64Array[]): Float64Array {
  const out = new Float64Array(T * nH * dv);
  const group = nH / nKV;
  for (let h = 0; h < nH; h++) {
    const g = Math.floor(h / group);
    const sc = new Float64Array(T * T).fill(NaN);
    for (let i = 0; i < T; i++) {
      const keys: number[] = [];
      for (let j = 0; j <= i; j++) if (window === null || i - j < window) keys.push(j);
      const logit = new Float64Array(keys.length);
      for (let n = 0; n < keys.length; n++) {
        const j = keys[n]!;
        let s = 0;
        for (let d = 0; d < dq; d++) s += q[(i * nH + h) * dq + d]! * k[(j * nKV + g) * dq + d]!;
        logit[n] = s * scale;
        sc[i * T + j] = logit[n]!;
      }
      // softmax over the kept keys (and the sink, whose probability is dropped)
      let m = sinks ? sinks[h]! : -Infinity;
      for (const l of logit) m = Math.max(m, l);
      let denom = sinks ? Math.exp(sinks[h]! - m) : 0;
      const p = new Float64Array(keys.length);
      for (let n = 0; n < keys.length; n++) denom += p[n] = Math.exp(logit[n]! - m);
      for (let n = 0; n < keys.length; n++) {
        const j = keys[n]!;
        const w = p[n]! / denom;
        for (let d = 0; d < dv; d++) {
          const o = (i * nH + h) * dv + d;
          out[o] = out[o]! + w * v[(j * nKV + g) * dv + d]!;
        }
      }
    }
    scores[h] = sc;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// layers

interface MhaAttention {
  kind: 'mha';
  q: Linear;
  k: Linear;
  v: Linear;
  o: Linear;
  /** Qwen3: per head [head_dim]; OLMoE: whole projection [nH * hd] / [nKV * hd] */
  qNorm: Float64Array | null;
  kNorm: Float64Array | null;
  qkNormPerHead: boolean;
  sinks: Float64Array | null;
  window: number | null;
}

interface MlaAttention {
  kind: 'mla';
  q: Linear | null;
  qA: Linear | null;
  qANorm: Float64Array | null;
  qB: Linear | null;
  kvA: Linear;
  kvANorm: Float64Array;
  kvB: Linear;
  o: Linear;
}

interface DenseFfn {
  kind: 'dense';
  mlp: SwiGlu;
}

interface MoeFfn {
  kind: 'moe';
  router: Linear;
  /** per-expert SwiGLU (all but gpt_oss) */
  experts: SwiGlu[];
  /** gpt_oss stacked experts: gate_up [E, H, 2I], gate_up_bias [E, 2I], down [E, I, H], down_bias [E, H] */
  stacked: { gateUp: Float64Array; gateUpBias: Float64Array; down: Float64Array; downBias: Float64Array; inter: number } | null;
  shared: SwiGlu | null;
  sharedGate: Linear | null;
}

interface Layer {
  inNorm: Float64Array;
  postNorm: Float64Array;
  attn: MhaAttention | MlaAttention;
  ffn: DenseFfn | MoeFfn;
}

type Routing = 'softmax_topk' | 'topk_softmax' | 'group_limited_greedy';

/** Family defaults of HF's configuration_*.py for keys some real config.json files omit. */
const DEFAULTS: Record<string, { eps: number; theta: number }> = {
  mixtral: { eps: 1e-5, theta: 1e6 },
  qwen2_moe: { eps: 1e-6, theta: 10000 },
  qwen3_moe: { eps: 1e-6, theta: 10000 },
  olmoe: { eps: 1e-5, theta: 10000 },
  deepseek_v2: { eps: 1e-6, theta: 10000 },
  gpt_oss: { eps: 1e-5, theta: 150000 },
};

class ReferenceModel implements RefModel {
  readonly config: Record<string, unknown>;
  lastRouting: number[][][] = [];
  lastScores: Float64Array[][] = [];
  readonly #type: string;
  readonly #H: number;
  readonly #V: number;
  readonly #eps: number;
  readonly #embed: Float64Array;
  readonly #norm: Float64Array;
  readonly #lmHead: Linear;
  readonly #layers: Layer[] = [];
  readonly #nH: number;
  readonly #nKV: number;
  readonly #hd: number;
  readonly #rope: Rope;
  readonly #scale: number;
  readonly #clip: number | null;
  readonly #routing: Routing;
  readonly #topK: number;
  readonly #E: number;
  readonly #normTopK: boolean;
  readonly #routedScale: number;
  readonly #nGroup: number;
  readonly #topkGroup: number;
  readonly #alpha: number;
  readonly #limit: number;
  // MLA dims
  readonly #qkNope: number = 0;
  readonly #qkRope: number = 0;
  readonly #vHead: number = 0;
  readonly #kvRank: number = 0;

  constructor(cfg: Json, W: Weights) {
    this.config = cfg;
    const type = cfg.model_type;
    if (typeof type !== 'string' || !(REF_MODEL_TYPES as readonly string[]).includes(type)) {
      throw new Error(`reference model: model_type ${JSON.stringify(type)} is not supported (supported: ${REF_MODEL_TYPES.join(', ')})`);
    }
    this.#type = type;
    const act = cfg.hidden_act ?? 'silu';
    if (type !== 'gpt_oss' && act !== 'silu' && act !== 'swish') throw new Error(`config.json: hidden_act ${JSON.stringify(act)} is not supported (silu only)`);
    const H = (this.#H = int(cfg, 'hidden_size'));
    const V = (this.#V = int(cfg, 'vocab_size'));
    const L = int(cfg, 'num_hidden_layers');
    const nH = (this.#nH = int(cfg, 'num_attention_heads'));
    const nKV = (this.#nKV = int(cfg, 'num_key_value_heads', nH));
    if (nH % nKV !== 0) throw new Error(`config.json: num_attention_heads ${nH} is not a multiple of num_key_value_heads ${nKV}`);
    const d = DEFAULTS[type]!;
    this.#eps = num(cfg, 'rms_norm_eps', d.eps);
    this.#embed = W.get('model.embed_tokens.weight', [V, H]);
    this.#norm = W.get('model.norm.weight', [H]);
    this.#lmHead = bool(cfg, 'tie_word_embeddings', false) ? { w: this.#embed, b: null, out: V, in: H } : linearOf(W, 'lm_head', V, H);
    this.#clip = type === 'olmoe' ? optNum(cfg, 'clip_qkv') : null;

    // attention geometry and RoPE
    if (type === 'deepseek_v2') {
      this.#qkNope = int(cfg, 'qk_nope_head_dim');
      this.#qkRope = int(cfg, 'qk_rope_head_dim');
      this.#vHead = int(cfg, 'v_head_dim');
      this.#kvRank = int(cfg, 'kv_lora_rank');
      this.#hd = this.#qkNope + this.#qkRope;
      this.#rope = ropeFromConfig(cfg, this.#qkRope, d.theta, true);
      let scale = this.#hd ** -0.5;
      const y = this.#rope.yarn;
      if (y && y.mscaleAllDim) {
        const m = getMscale(y.factor, y.mscaleAllDim);
        scale *= m * m;
      }
      this.#scale = scale;
    } else {
      this.#hd = type === 'olmoe' ? H / nH : optNum(cfg, 'head_dim') ?? H / nH;
      if (!Number.isInteger(this.#hd)) throw new Error(`config.json: head_dim ${this.#hd} is not an integer`);
      this.#rope = ropeFromConfig(cfg, this.#hd, d.theta, false);
      this.#scale = this.#hd ** -0.5;
    }

    // router settings
    this.#E = type === 'mixtral' || type === 'gpt_oss' ? int(cfg, 'num_local_experts') : type === 'deepseek_v2' ? int(cfg, 'n_routed_experts') : int(cfg, 'num_experts');
    this.#topK = int(cfg, 'num_experts_per_tok');
    if (this.#topK < 1 || this.#topK > this.#E) throw new Error(`config.json: num_experts_per_tok ${this.#topK} must be in [1, ${this.#E}]`);
    this.#normTopK = type === 'mixtral' ? true : type === 'gpt_oss' ? false : bool(cfg, 'norm_topk_prob', false);
    this.#routing = type === 'gpt_oss' ? 'topk_softmax' : 'softmax_topk';
    this.#routedScale = 1;
    this.#nGroup = 1;
    this.#topkGroup = 1;
    if (type === 'deepseek_v2') {
      this.#routedScale = num(cfg, 'routed_scaling_factor', 1);
      const method = cfg.topk_method ?? 'greedy';
      if (method === 'group_limited_greedy') {
        this.#routing = 'group_limited_greedy';
        this.#nGroup = int(cfg, 'n_group');
        this.#topkGroup = int(cfg, 'topk_group');
        if (this.#E % this.#nGroup !== 0) throw new Error(`config.json: n_routed_experts ${this.#E} is not a multiple of n_group ${this.#nGroup}`);
      } else if (method !== 'greedy') {
        throw new Error(`config.json: topk_method ${JSON.stringify(method)} is not supported by the reference`);
      }
      const scoring = cfg.scoring_func ?? 'softmax';
      if (scoring !== 'softmax') throw new Error(`config.json: scoring_func ${JSON.stringify(scoring)} is not supported by the reference`);
    }
    this.#alpha = type === 'gpt_oss' ? num(cfg, 'swiglu_alpha', 1.702) : 0;
    this.#limit = type === 'gpt_oss' ? num(cfg, 'swiglu_limit', 7) : 0;

    const windows = this.#windows(cfg, L);
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}`;
      this.#layers.push({
        inNorm: W.get(`${p}.input_layernorm.weight`, [H]),
        postNorm: W.get(`${p}.post_attention_layernorm.weight`, [H]),
        attn: this.#attentionOf(W, cfg, p, windows[l]!),
        ffn: this.#ffnOf(W, cfg, p, l),
      });
    }
  }

  /** Sliding window of each layer (null: full causal). */
  #windows(cfg: Json, L: number): Array<number | null> {
    const type = this.#type;
    const sw = optNum(cfg, 'sliding_window');
    const types = cfg.layer_types;
    if (types !== undefined && types !== null && (type === 'gpt_oss' || type === 'qwen2_moe' || type === 'qwen3_moe')) {
      if (!Array.isArray(types) || types.length !== L) throw new Error(`config.json: layer_types must list ${L} entries, received ${JSON.stringify(types)}`);
      return types.map((t, l) => {
        if (t === 'full_attention') return null;
        if (t === 'sliding_attention') {
          if (sw === null) throw new Error(`config.json: layer ${l} is sliding_attention but sliding_window is null`);
          return sw;
        }
        throw new Error(`config.json: layer_types[${l}] ${JSON.stringify(t)} is not supported`);
      });
    }
    switch (type) {
      case 'mixtral':
        return Array.from({ length: L }, () => sw);
      case 'gpt_oss':
        return Array.from({ length: L }, (_, l) => (l % 2 === 0 ? num(cfg, 'sliding_window', 128) : null));
      case 'qwen2_moe':
      case 'qwen3_moe': {
        if (!bool(cfg, 'use_sliding_window', false) || sw === null) return Array.from({ length: L }, () => null);
        const maxWindowLayers = int(cfg, 'max_window_layers', 28);
        return Array.from({ length: L }, (_, l) => (l >= maxWindowLayers ? sw : null));
      }
      default:
        return Array.from({ length: L }, () => null);
    }
  }

  #attentionOf(W: Weights, cfg: Json, p: string, window: number | null): MhaAttention | MlaAttention {
    const H = this.#H;
    const nH = this.#nH;
    const nKV = this.#nKV;
    const hd = this.#hd;
    const a = `${p}.self_attn`;
    if (this.#type === 'deepseek_v2') {
      const qLora = optNum(cfg, 'q_lora_rank');
      const bias = 'maybe';
      return {
        kind: 'mla',
        q: qLora === null ? linearOf(W, `${a}.q_proj`, nH * hd, H) : null,
        qA: qLora === null ? null : linearOf(W, `${a}.q_a_proj`, qLora, H, bias),
        qANorm: qLora === null ? null : W.get(`${a}.q_a_layernorm.weight`, [qLora]),
        qB: qLora === null ? null : linearOf(W, `${a}.q_b_proj`, nH * hd, qLora),
        kvA: linearOf(W, `${a}.kv_a_proj_with_mqa`, this.#kvRank + this.#qkRope, H, bias),
        kvANorm: W.get(`${a}.kv_a_layernorm.weight`, [this.#kvRank]),
        kvB: linearOf(W, `${a}.kv_b_proj`, nH * (this.#qkNope + this.#vHead), this.#kvRank),
        o: linearOf(W, `${a}.o_proj`, H, nH * this.#vHead, bias),
      };
    }
    const gptOss = this.#type === 'gpt_oss';
    const att: MhaAttention = {
      kind: 'mha',
      q: linearOf(W, `${a}.q_proj`, nH * hd, H, 'maybe'),
      k: linearOf(W, `${a}.k_proj`, nKV * hd, H, 'maybe'),
      v: linearOf(W, `${a}.v_proj`, nKV * hd, H, 'maybe'),
      o: linearOf(W, `${a}.o_proj`, H, nH * hd, 'maybe'),
      qNorm: null,
      kNorm: null,
      qkNormPerHead: false,
      sinks: gptOss ? W.get(`${a}.sinks`, [nH]) : null,
      window,
    };
    if (this.#type === 'qwen3_moe') {
      att.qNorm = W.get(`${a}.q_norm.weight`, [hd]);
      att.kNorm = W.get(`${a}.k_norm.weight`, [hd]);
      att.qkNormPerHead = true;
    } else if (this.#type === 'olmoe') {
      att.qNorm = W.get(`${a}.q_norm.weight`, [nH * hd]);
      att.kNorm = W.get(`${a}.k_norm.weight`, [nKV * hd]);
    }
    return att;
  }

  #ffnOf(W: Weights, cfg: Json, p: string, l: number): DenseFfn | MoeFfn {
    const H = this.#H;
    const E = this.#E;
    switch (this.#type) {
      case 'mixtral': {
        const I = int(cfg, 'intermediate_size');
        const m = `${p}.block_sparse_moe`;
        return {
          kind: 'moe',
          router: linearOf(W, `${m}.gate`, E, H),
          experts: Array.from({ length: E }, (_, e) => swigluOf(W, `${m}.experts.${e}`, H, I, ['w1', 'w3', 'w2'])),
          stacked: null,
          shared: null,
          sharedGate: null,
        };
      }
      case 'qwen2_moe':
      case 'qwen3_moe': {
        const mlpOnly = (cfg.mlp_only_layers ?? []) as unknown;
        if (!Array.isArray(mlpOnly)) throw new Error(`config.json: mlp_only_layers must be an array`);
        const step = int(cfg, 'decoder_sparse_step', 1);
        const sparse = !mlpOnly.includes(l) && E > 0 && step > 0 && (l + 1) % step === 0;
        if (!sparse) return { kind: 'dense', mlp: swigluOf(W, `${p}.mlp`, H, int(cfg, 'intermediate_size')) };
        const I = int(cfg, 'moe_intermediate_size');
        const qwen2 = this.#type === 'qwen2_moe';
        const sharedI = qwen2 ? int(cfg, 'shared_expert_intermediate_size') : 0;
        return {
          kind: 'moe',
          router: linearOf(W, `${p}.mlp.gate`, E, H),
          experts: Array.from({ length: E }, (_, e) => swigluOf(W, `${p}.mlp.experts.${e}`, H, I)),
          stacked: null,
          shared: qwen2 ? swigluOf(W, `${p}.mlp.shared_expert`, H, sharedI) : null,
          sharedGate: qwen2 ? linearOf(W, `${p}.mlp.shared_expert_gate`, 1, H) : null,
        };
      }
      case 'olmoe': {
        const I = int(cfg, 'intermediate_size');
        return {
          kind: 'moe',
          router: linearOf(W, `${p}.mlp.gate`, E, H),
          experts: Array.from({ length: E }, (_, e) => swigluOf(W, `${p}.mlp.experts.${e}`, H, I)),
          stacked: null,
          shared: null,
          sharedGate: null,
        };
      }
      case 'deepseek_v2': {
        const firstDense = int(cfg, 'first_k_dense_replace', 0);
        const freq = int(cfg, 'moe_layer_freq', 1);
        if (l < firstDense || l % freq !== 0) return { kind: 'dense', mlp: swigluOf(W, `${p}.mlp`, H, int(cfg, 'intermediate_size')) };
        const I = int(cfg, 'moe_intermediate_size');
        const nShared = optNum(cfg, 'n_shared_experts');
        return {
          kind: 'moe',
          router: linearOf(W, `${p}.mlp.gate`, E, H),
          experts: Array.from({ length: E }, (_, e) => swigluOf(W, `${p}.mlp.experts.${e}`, H, I)),
          stacked: null,
          shared: nShared ? swigluOf(W, `${p}.mlp.shared_experts`, H, I * nShared) : null,
          sharedGate: null,
        };
      }
      case 'gpt_oss': {
        const I = int(cfg, 'intermediate_size');
        const m = `${p}.mlp`;
        return {
          kind: 'moe',
          router: linearOf(W, `${m}.router`, E, H, 'yes'),
          experts: [],
          stacked: {
            gateUp: W.get(`${m}.experts.gate_up_proj`, [E, H, 2 * I]),
            gateUpBias: W.get(`${m}.experts.gate_up_proj_bias`, [E, 2 * I]),
            down: W.get(`${m}.experts.down_proj`, [E, I, H]),
            downBias: W.get(`${m}.experts.down_proj_bias`, [E, H]),
            inter: I,
          },
          shared: null,
          sharedGate: null,
        };
      }
      default:
        throw new Error(`unreachable: ${this.#type}`);
    }
  }

  forward(tokens: readonly number[], options: { routing?: ReadonlyArray<ReadonlyArray<readonly number[]> | undefined>; bf16Activations?: boolean } = {}): Float64Array {
    bf16Mode = options.bf16Activations === true;
    try {
      return this.#forward(tokens, options.routing);
    } finally {
      bf16Mode = false;
    }
  }

  #forward(tokens: readonly number[], forcedRouting: ReadonlyArray<ReadonlyArray<readonly number[]> | undefined> | undefined): Float64Array {
    const T = tokens.length;
    const H = this.#H;
    if (T === 0) throw new Error('forward: tokens must not be empty');
    const x = new Float64Array(T * H);
    tokens.forEach((tok, t) => {
      if (!Number.isInteger(tok) || tok < 0 || tok >= this.#V) throw new Error(`forward: token ${t} = ${tok} is outside [0, ${this.#V})`);
      x.set(this.#embed.subarray(tok * H, (tok + 1) * H), t * H);
    });
    this.lastRouting = [];
    this.lastScores = [];
    for (const [l, layer] of this.#layers.entries()) {
      const forced = forcedRouting?.[l];
      const scores: Float64Array[] = [];
      const a = this.#attention(layer.attn, rmsNorm(x, H, layer.inNorm, this.#eps), T, scores);
      for (let i = 0; i < x.length; i++) x[i] = x[i]! + a[i]!;
      const routing: number[][] = [];
      const hN = rmsNorm(x, H, layer.postNorm, this.#eps);
      const f = layer.ffn.kind === 'dense' ? swiglu(hN, T, layer.ffn.mlp) : this.#moe(layer.ffn, hN, T, routing, forced);
      if (layer.ffn.kind === 'dense') for (let t = 0; t < T; t++) routing.push([]);
      for (let i = 0; i < x.length; i++) x[i] = x[i]! + f[i]!;
      this.lastRouting.push(routing);
      this.lastScores.push(scores);
    }
    return linear(rmsNorm(x, H, this.#norm, this.#eps), T, this.#lmHead);
  }

  #attention(att: MhaAttention | MlaAttention, h: Float64Array, T: number, scores: Float64Array[]): Float64Array {
    const nH = this.#nH;
    if (att.kind === 'mla') {
      // [T, nH, nope + rope]
      const q = att.q ? linear(h, T, att.q) : linear(rmsNorm(linear(h, T, att.qA!), att.qA!.out, att.qANorm!, 1e-6), T, att.qB!);
      const hd = this.#hd;
      const kvA = linear(h, T, att.kvA); // [T, rank + rope]
      const rankPlusRope = this.#kvRank + this.#qkRope;
      const c = new Float64Array(T * this.#kvRank);
      for (let t = 0; t < T; t++) c.set(kvA.subarray(t * rankPlusRope, t * rankPlusRope + this.#kvRank), t * this.#kvRank);
      // DeepseekV2RMSNorm(kv_lora_rank) keeps its default eps 1e-6
      const kvB = linear(rmsNorm(c, this.#kvRank, att.kvANorm, 1e-6), T, att.kvB); // [T, nH, nope + v]
      const k = new Float64Array(T * nH * hd);
      const v = new Float64Array(T * nH * this.#vHead);
      const per = this.#qkNope + this.#vHead;
      for (let t = 0; t < T; t++) {
        // k_pe is shared by all heads: rotate once, then copy
        const kPe = kvA.slice(t * rankPlusRope + this.#kvRank, (t + 1) * rankPlusRope);
        applyRope(kPe, 0, t, this.#rope);
        for (let hh = 0; hh < nH; hh++) {
          applyRope(q, (t * nH + hh) * hd + this.#qkNope, t, this.#rope);
          const src = (t * nH + hh) * per;
          k.set(kvB.subarray(src, src + this.#qkNope), (t * nH + hh) * hd);
          k.set(kPe, (t * nH + hh) * hd + this.#qkNope);
          v.set(kvB.subarray(src + this.#qkNope, src + per), (t * nH + hh) * this.#vHead);
        }
      }
      if (bf16Mode) roundBf16(k, v);
      const o = attend(q, k, v, T, nH, nH, hd, this.#vHead, this.#scale, null, null, scores);
      return linear(o, T, att.o);
    }
    const nKV = this.#nKV;
    const hd = this.#hd;
    let q = linear(h, T, att.q);
    let k = linear(h, T, att.k);
    const v = linear(h, T, att.v);
    if (att.qNorm && att.kNorm) {
      q = rmsNorm(q, att.qkNormPerHead ? hd : nH * hd, att.qNorm, this.#eps);
      k = rmsNorm(k, att.qkNormPerHead ? hd : nKV * hd, att.kNorm, this.#eps);
    }
    if (this.#clip !== null) {
      const c = this.#clip;
      for (const arr of [q, k, v]) for (let i = 0; i < arr.length; i++) arr[i] = Math.min(c, Math.max(-c, arr[i]!));
    }
    for (let t = 0; t < T; t++) {
      for (let hh = 0; hh < nH; hh++) applyRope(q, (t * nH + hh) * hd, t, this.#rope);
      for (let g = 0; g < nKV; g++) applyRope(k, (t * nKV + g) * hd, t, this.#rope);
    }
    if (bf16Mode) roundBf16(k, v);
    const o = attend(q, k, v, T, nH, nKV, hd, hd, this.#scale, att.window, att.sinks, scores);
    return linear(o, T, att.o);
  }

  /** Expert ids and weights of one token from its router logits. */
  #route(logits: Float64Array, forced?: readonly number[]): { ids: number[]; weights: number[] } {
    const k = this.#topK;
    if (forced && forced.length !== k) throw new Error(`forward: forced routing must list ${k} experts per token, received ${forced.length}`);
    if (this.#routing === 'topk_softmax') {
      const ids = forced ? [...forced] : topK(logits, k);
      const w = softmax(ids.map((e) => logits[e]!));
      return { ids, weights: Array.from(w) };
    }
    const probs = softmax(logits);
    let ids: number[];
    if (forced) {
      ids = [...forced];
    } else if (this.#routing === 'group_limited_greedy') {
      const per = this.#E / this.#nGroup;
      const groupScore = Array.from({ length: this.#nGroup }, (_, g) => Math.max(...probs.subarray(g * per, (g + 1) * per)));
      const keep = new Set(topK(groupScore, this.#topkGroup));
      const masked = probs.map((p, e) => (keep.has(Math.floor(e / per)) ? p : 0));
      ids = topK(masked, k);
    } else {
      ids = topK(probs, k);
    }
    let weights = ids.map((e) => probs[e]!);
    if (this.#type === 'deepseek_v2') {
      if (k > 1 && this.#normTopK) {
        const s = weights.reduce((a, b) => a + b, 0) + 1e-20;
        weights = weights.map((w) => w / s);
      } else {
        weights = weights.map((w) => w * this.#routedScale);
      }
    } else if (this.#normTopK) {
      const s = weights.reduce((a, b) => a + b, 0);
      weights = weights.map((w) => w / s);
    }
    return { ids, weights };
  }

  #moe(f: MoeFfn, x: Float64Array, T: number, routing: number[][], forced?: ReadonlyArray<readonly number[]>): Float64Array {
    const H = this.#H;
    const out = new Float64Array(T * H);
    const logits = linear(x, T, f.router, true); // [T, E]
    for (let t = 0; t < T; t++) {
      const { ids, weights } = this.#route(logits.subarray(t * this.#E, (t + 1) * this.#E), forced?.[t]);
      routing.push(ids);
      const xt = x.subarray(t * H, (t + 1) * H);
      ids.forEach((e, n) => {
        const y = f.stacked ? this.#gptOssExpert(f.stacked, e, xt) : swiglu(xt, 1, f.experts[e]!);
        for (let i = 0; i < H; i++) out[t * H + i] = out[t * H + i]! + weights[n]! * y[i]!;
      });
    }
    if (f.shared) {
      const s = swiglu(x, T, f.shared);
      const g = f.sharedGate ? linear(x, T, f.sharedGate) : null; // [T, 1]
      for (let t = 0; t < T; t++) {
        const gate = g ? sigmoid(g[t]!) : 1;
        for (let i = 0; i < H; i++) out[t * H + i] = out[t * H + i]! + gate * s[t * H + i]!;
      }
    }
    return out;
  }

  /** gpt-oss expert e on one token: clamped SwiGLU over interleaved gate/up columns, with biases. */
  #gptOssExpert(s: NonNullable<MoeFfn['stacked']>, e: number, token: Float64Array): Float64Array {
    const H = this.#H;
    const I = s.inter;
    const x = bf16Mode ? token.map(bf16Round) : token;
    const act = new Float64Array(I);
    for (let m = 0; m < I; m++) {
      let gate = s.gateUpBias[e * 2 * I + 2 * m]!;
      let up = s.gateUpBias[e * 2 * I + 2 * m + 1]!;
      for (let i = 0; i < H; i++) {
        gate += x[i]! * s.gateUp[(e * H + i) * 2 * I + 2 * m]!;
        up += x[i]! * s.gateUp[(e * H + i) * 2 * I + 2 * m + 1]!;
      }
      gate = Math.min(gate, this.#limit);
      up = Math.min(this.#limit, Math.max(-this.#limit, up));
      act[m] = (up + 1) * (gate * sigmoid(gate * this.#alpha));
    }
    if (bf16Mode) roundBf16(act);
    const y = new Float64Array(H);
    for (let hh = 0; hh < H; hh++) {
      let acc = s.downBias[e * H + hh]!;
      for (let m = 0; m < I; m++) acc += act[m]! * s.down[(e * I + m) * H + hh]!;
      y[hh] = acc;
    }
    return y;
  }
}

/** Loads config + weights (decoded to Float64Array) once. */
export function loadReferenceModel(dir: string): RefModel {
  const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Json;
  const type = cfg.model_type;
  if (typeof type !== 'string' || !(REF_MODEL_TYPES as readonly string[]).includes(type)) {
    throw new Error(`reference model: model_type ${JSON.stringify(type)} is not supported (supported: ${REF_MODEL_TYPES.join(', ')})`);
  }
  return new ReferenceModel(cfg, new Weights(dir));
}
