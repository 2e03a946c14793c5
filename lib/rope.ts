/**
 * Rotary-embedding parameters from a model config (issue 5 item 3): the inverse frequencies inv_freq
 * [rotaryDim / 2] and the attention scaling that {@link Backend.rope} takes. The formulas are those of HF
 * transformers' `modeling_rope_utils.py`:
 * - default (`_compute_default_rope_parameters`): inv_freq[i] = 1 / theta^(2i / dim), attention scaling 1.
 * - llama3 (`_compute_llama3_parameters`): with wavelen = 2 pi / inv_freq, low_wl = old_ctx / low_freq_factor,
 *   high_wl = old_ctx / high_freq_factor: wavelen > low_wl -> inv_freq / factor; wavelen < high_wl -> inv_freq;
 *   in between (HF's "is_medium_freq": neither) smooth = (old_ctx / wavelen - low) / (high - low),
 *   (1 - smooth) * inv_freq / factor + smooth * inv_freq. Scaling 1.
 * - yarn (`_compute_yarn_parameters`): pos_freqs = theta^(2i / dim); extrapolation 1 / pos_freqs, interpolation
 *   1 / (factor pos_freqs); correction range [low, high] from `find_correction_dim(beta_fast)` /
 *   `find_correction_dim(beta_slow)` with find_correction_dim(r) = dim ln(orig_max / (2 pi r)) / (2 ln theta),
 *   floored / ceiled when `truncate` (default true; gpt-oss sets false), clamped to [0, dim - 1]; ramp(i) =
 *   clamp((i - low) / (high - low), 0, 1) (high += 0.001 when equal); extrapolation_factor = 1 - ramp;
 *   inv_freq = interpolation (1 - extrapolation_factor) + extrapolation extrapolation_factor. Attention scaling:
 *   `attention_factor` when given, else get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when
 *   both mscale and mscale_all_dim are set and non-zero (DeepSeek-V2/V3), else get_mscale(factor) (gpt-oss),
 *   with get_mscale(s, m = 1) = s <= 1 ? 1 : 0.1 m ln(s) + 1. `factor` is `rope_scaling.factor`.
 *   DeepSeek additionally multiplies the SOFTMAX scale by get_mscale(factor, mscale_all_dim)^2 (its attention
 *   module, not the rotary one): {@link yarnSoftmaxScale} gives that factor for Backend.attention's `scale`.
 * Not covered: 'longrope' (Phi-3.5-MoE: per-dimension factors switched by sequence length), 'dynamic' and
 * 'linear' (no family in DESIGN.md section 8 uses them) -> UnsupportedModelError. The kernels use the
 * rotate_half pairing (i, i + rotaryDim / 2) of the HF Llama / Mixtral / Qwen / OLMoE / gpt-oss modules;
 * checkpoints whose reference code pairs interleaved elements (2i, 2i + 1: DeepSeek's q_pe / k_pe, Llama 4's
 * complex rotary) need their rope projection rows permuted at load (the usual conversion) before this applies.
 *
 * @example
 * const rp = ropeParameters({ theta: 150000, rotaryDim: 64, scaling: { type: 'yarn', factor: 32, betaFast: 32,
 *   betaSlow: 1, originalMaxPositionEmbeddings: 4096, truncate: false } });  // gpt-oss
 * await be.rope({ q, k, positions, invFreq: HostTensor.from('f32', [32], rp.invFreq), attentionScaling: rp.attentionScaling });
 */
import { InvalidArgumentError, UnsupportedModelError } from './errors.js';
import type { ModelConfig } from './model/config.js';

export type RopeScaling =
  | { type: 'default' }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number }
  | {
      type: 'yarn';
      factor: number;
      betaFast?: number;
      betaSlow?: number;
      originalMaxPositionEmbeddings: number;
      mscale?: number;
      mscaleAllDim?: number;
      attentionFactor?: number;
      truncate?: boolean;
    };

export interface RopeParameters {
  /** [rotaryDim / 2] f32 */
  invFreq: Float32Array;
  /** multiplies cos and sin (yarn's attention factor; 1 otherwise) */
  attentionScaling: number;
  rotaryDim: number;
}

function posNum(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new InvalidArgumentError(`${what} must be a positive finite number, received ${String(v)}`);
  return v;
}

/** HF get_mscale (yarn). */
function getMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/**
 * inv_freq and attention scaling for `theta`, `rotaryDim` (even, the rotated part of head_dim) and a scaling.
 * @example ropeParameters({ theta: 1e6, rotaryDim: 128 })  // Qwen3: default RoPE
 */
export function ropeParameters(o: { theta: number; rotaryDim: number; scaling?: RopeScaling }): RopeParameters {
  const theta = posNum(o.theta, 'theta');
  const dim = o.rotaryDim;
  if (!Number.isSafeInteger(dim) || dim < 2 || dim % 2 !== 0 || dim > 1024) {
    throw new InvalidArgumentError(`rotaryDim must be an even integer in [2, 1024], received ${String(dim)}`);
  }
  const half = dim / 2;
  const base = Array.from({ length: half }, (_, i) => 1 / Math.pow(theta, (2 * i) / dim));
  const s = o.scaling ?? { type: 'default' };
  let inv = base;
  let attentionScaling = 1;
  if (s.type === 'llama3') {
    const factor = posNum(s.factor, 'llama3 factor');
    const lowF = posNum(s.lowFreqFactor, 'low_freq_factor');
    const highF = posNum(s.highFreqFactor, 'high_freq_factor');
    const old = posNum(s.originalMaxPositionEmbeddings, 'original_max_position_embeddings');
    const lowWl = old / lowF;
    const highWl = old / highF;
    inv = base.map((f) => {
      const wl = (2 * Math.PI) / f;
      if (wl > lowWl) return f / factor;
      if (wl < highWl) return f;
      const smooth = (old / wl - lowF) / (highF - lowF); // medium frequency: highF > lowF here
      return (1 - smooth) * (f / factor) + smooth * f;
    });
  } else if (s.type === 'yarn') {
    const factor = posNum(s.factor, 'yarn factor');
    const betaFast = s.betaFast === undefined ? 32 : posNum(s.betaFast, 'beta_fast');
    const betaSlow = s.betaSlow === undefined ? 1 : posNum(s.betaSlow, 'beta_slow');
    const orig = posNum(s.originalMaxPositionEmbeddings, 'original_max_position_embeddings');
    const corrDim = (rot: number): number => (dim * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
    let low = corrDim(betaFast);
    let high = corrDim(betaSlow);
    if (s.truncate ?? true) {
      low = Math.floor(low);
      high = Math.ceil(high);
    }
    low = Math.max(low, 0);
    high = Math.min(high, dim - 1);
    if (low === high) high += 0.001;
    inv = base.map((f, i) => {
      const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
      const extra = 1 - ramp;
      return (f / factor) * (1 - extra) + f * extra;
    });
    if (s.attentionFactor !== undefined) attentionScaling = posNum(s.attentionFactor, 'attention_factor');
    else if (s.mscale && s.mscaleAllDim) attentionScaling = getMscale(factor, s.mscale) / getMscale(factor, s.mscaleAllDim);
    else attentionScaling = getMscale(factor);
  } else if (s.type !== 'default') {
    throw new UnsupportedModelError(`rope scaling type ${String((s as { type: unknown }).type)} is not supported (default, llama3, yarn)`);
  }
  return { invFreq: Float32Array.from(inv), attentionScaling, rotaryDim: dim };
}

/** The {@link RopeScaling} of an HF `rope_scaling` object (null / undefined: default). */
export function ropeScalingFromHf(rs: Record<string, unknown> | null | undefined): RopeScaling {
  if (rs === null || rs === undefined) return { type: 'default' };
  const type = (rs.rope_type ?? rs.type ?? 'default') as string;
  const n = (k: string): number | undefined => (typeof rs[k] === 'number' ? (rs[k] as number) : undefined);
  if (type === 'default') return { type: 'default' };
  if (type === 'llama3') {
    return {
      type,
      factor: n('factor') ?? NaN,
      lowFreqFactor: n('low_freq_factor') ?? NaN,
      highFreqFactor: n('high_freq_factor') ?? NaN,
      originalMaxPositionEmbeddings: n('original_max_position_embeddings') ?? NaN,
    };
  }
  if (type === 'yarn') {
    const out: RopeScaling = { type, factor: n('factor') ?? NaN, originalMaxPositionEmbeddings: n('original_max_position_embeddings') ?? NaN };
    const opt = { betaFast: n('beta_fast'), betaSlow: n('beta_slow'), mscale: n('mscale'), mscaleAllDim: n('mscale_all_dim'), attentionFactor: n('attention_factor') };
    for (const [k, v] of Object.entries(opt)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
    if (typeof rs.truncate === 'boolean') out.truncate = rs.truncate;
    return out;
  }
  throw new UnsupportedModelError(`rope scaling type ${type} is not supported (default, llama3, yarn)`);
}

/** Rope parameters of a parsed model config: rotaryDim = qk_rope_head_dim (MLA) or head_dim. */
export function ropeFromConfig(c: ModelConfig): RopeParameters {
  const rs = c.ropeScaling;
  const scaling = ropeScalingFromHf(rs);
  if (scaling.type === 'yarn' && rs && typeof rs.original_max_position_embeddings !== 'number') {
    scaling.originalMaxPositionEmbeddings = c.maxPositionEmbeddings;
  }
  return ropeParameters({ theta: c.ropeTheta, rotaryDim: c.mla ? c.mla.qkRopeHeadDim : c.headDim, scaling });
}

/**
 * DeepSeek's softmax-scale multiplier under yarn: get_mscale(factor, mscale_all_dim)^2 (1 without yarn or
 * without mscale_all_dim). Backend.attention's `scale` is then `yarnSoftmaxScale(...) / sqrt(qk_head_dim)`.
 */
export function yarnSoftmaxScale(s: RopeScaling): number {
  if (s.type !== 'yarn' || !s.mscaleAllDim) return 1;
  const m = getMscale(s.factor, s.mscaleAllDim);
  return m * m;
}
