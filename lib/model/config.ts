/**
 * HF `config.json` -> one normalised MoE model description for the families of DESIGN.md section 8 (Mixtral,
 * Qwen2-MoE / Qwen1.5-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3, gpt-oss). Everything the loader and the runtime
 * need is read here once, with the family's quirks made explicit (router scoring and renormalisation, shared
 * experts, dense first layers, q/k norm, MLA dimensions, clamped SwiGLU), so no later code reads raw config keys.
 *
 * @example
 * const cfg = parseModelConfig(JSON.parse(fs.readFileSync('config.json', 'utf8')), 'config.json');
 * cfg.numExperts; cfg.router;                 // 8, { scoring: 'softmax', renormalize: true, ... }
 * expertTensorNames(cfg, 0, 3).gate           // 'model.layers.0.block_sparse_moe.experts.3.w1.weight'
 */
import { describe } from '../dtype.js';
import { InvalidArgumentError, UnsupportedModelError } from '../errors.js';

export type ModelFamily = 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'olmoe' | 'deepseek_v2' | 'deepseek_v3' | 'gpt_oss';
export const SUPPORTED_MODEL_TYPES: readonly ModelFamily[] = ['mixtral', 'qwen2_moe', 'qwen3_moe', 'olmoe', 'deepseek_v2', 'deepseek_v3', 'gpt_oss'];

export interface RouterConfig {
  /** softmax over all experts (then top-k), sigmoid per expert (DeepSeek-V3), or softmax over the top-k logits (gpt-oss). */
  scoring: 'softmax' | 'sigmoid' | 'softmax-topk';
  /** Divide the k selected weights by their sum. */
  renormalize: boolean;
  /** Multiplies the routed output (DeepSeek routed_scaling_factor; 1 elsewhere). */
  scale: number;
  /** The router linear has a bias (gpt-oss) / a selection-only score correction (DeepSeek-V3 noaux_tc). */
  bias: boolean;
  selectionBias: boolean;
  /** Group-limited selection (DeepSeek-V3): experts in nGroup groups, the best topkGroup groups considered. */
  nGroup: number;
  topkGroup: number;
}

export interface MlaConfig {
  kvLoraRank: number;
  qLoraRank: number | null;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
}

export interface ModelConfig {
  family: ModelFamily;
  architecture: string;
  hiddenSize: number;
  vocabSize: number;
  numLayers: number;
  /** Layer indices whose MLP is a MoE block (the others are dense with `denseIntermediateSize`). */
  moeLayers: number[];
  numExperts: number;
  topK: number;
  /** FFN width of one routed expert. */
  moeIntermediateSize: number;
  /** FFN width of dense (non-MoE) layers, where the family has them. */
  denseIntermediateSize: number;
  /** Shared experts: count and total FFN width; `gated` = output scaled by sigmoid(shared_expert_gate(x)). */
  sharedExperts: { count: number; intermediateSize: number; gated: boolean } | null;
  router: RouterConfig;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Multi-head latent attention (DeepSeek). */
  mla: MlaConfig | null;
  qkNorm: boolean;
  attentionBias: boolean;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: Record<string, unknown> | null;
  maxPositionEmbeddings: number;
  slidingWindow: number | null;
  /** OLMoE: q, k (after their norms) and v clamped to [-clipQkv, clipQkv]. */
  clipQkv: number | null;
  /** Per layer: 'full' | 'sliding' (gpt-oss alternates; Qwen with use_sliding_window from max_window_layers on). Null: every layer uses slidingWindow. */
  layerTypes: Array<'full' | 'sliding'> | null;
  attentionSinks: boolean;
  /** gpt-oss: clamped SwiGLU limit, and expert projections with biases. */
  swigluLimit: number | null;
  expertBias: boolean;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

type Json = Record<string, unknown>;

function num(c: Json, key: string, source: string, fallback?: number): number {
  const v = c[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new InvalidArgumentError(`${source}: config.${key} is missing (a number is required)`);
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new InvalidArgumentError(`${source}: config.${key} must be a number, received ${describe(v)}`);
  return v;
}

function int(c: Json, key: string, source: string, fallback?: number): number {
  const v = num(c, key, source, fallback);
  if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`${source}: config.${key} must be a non-negative integer, received ${describe(v)}`);
  return v;
}

function firstInt(c: Json, keys: string[], source: string): number {
  for (const k of keys) if (c[k] !== undefined && c[k] !== null) return int(c, k, source);
  throw new InvalidArgumentError(`${source}: none of config.${keys.join(' / config.')} is present (the number of ${keys[0]})`);
}

/** Token ids of a config field that holds one id or a list (eos_token_id). */
export function idList(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

/**
 * Parses a HF config.json object. `source` names the file in error messages.
 * @throws UnsupportedModelError for an architecture outside SUPPORTED_MODEL_TYPES; InvalidArgumentError for a
 *   missing or malformed field (the message names it).
 */
export function parseModelConfig(config: unknown, source = 'config.json'): ModelConfig {
  if (typeof config !== 'object' || config === null || Array.isArray(config)) {
    throw new InvalidArgumentError(`${source}: must be a JSON object, received ${describe(config)}`);
  }
  const c = config as Json;
  const type = c.model_type;
  if (typeof type !== 'string' || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(type)) {
    throw new UnsupportedModelError(
      `${source}: model_type ${describe(type)} (architectures ${describe(c.architectures)}) is not supported; supported: ${SUPPORTED_MODEL_TYPES.join(', ')}`,
    );
  }
  const family = type as ModelFamily;
  const hiddenSize = int(c, 'hidden_size', source);
  const numLayers = int(c, 'num_hidden_layers', source);
  const numHeads = int(c, 'num_attention_heads', source);
  const numKvHeads = int(c, 'num_key_value_heads', source, numHeads);
  const numExperts = firstInt(c, ['num_local_experts', 'num_experts', 'n_routed_experts'], source);
  const topK = firstInt(c, ['num_experts_per_tok', 'experts_per_token'], source);
  if (topK < 1 || topK > numExperts) throw new InvalidArgumentError(`${source}: num_experts_per_tok must be in [1, ${numExperts}], received ${topK}`);
  const denseIntermediateSize = int(c, 'intermediate_size', source);
  // Mixtral, OLMoE and gpt-oss have no dense layers: intermediate_size is the expert width.
  const moeIntermediateSize =
    family === 'mixtral' || family === 'olmoe' || family === 'gpt_oss' ? denseIntermediateSize : int(c, 'moe_intermediate_size', source);
  const architecture = Array.isArray(c.architectures) && typeof c.architectures[0] === 'string' ? c.architectures[0] : family;

  // Which layers are MoE.
  let moeLayers = Array.from({ length: numLayers }, (_, l) => l);
  if (family === 'qwen2_moe' || family === 'qwen3_moe') {
    const step = int(c, 'decoder_sparse_step', source, 1);
    const mlpOnly = new Set(Array.isArray(c.mlp_only_layers) ? (c.mlp_only_layers as number[]) : []);
    moeLayers = moeLayers.filter((l) => !mlpOnly.has(l) && step > 0 && (l + 1) % step === 0);
  } else if (family === 'deepseek_v2' || family === 'deepseek_v3') {
    const firstDense = int(c, 'first_k_dense_replace', source, 0);
    const freq = int(c, 'moe_layer_freq', source, 1);
    moeLayers = moeLayers.filter((l) => l >= firstDense && l % Math.max(1, freq) === 0);
  }

  let sharedExperts: ModelConfig['sharedExperts'] = null;
  if (family === 'qwen2_moe') {
    const w = int(c, 'shared_expert_intermediate_size', source, 0);
    if (w > 0) sharedExperts = { count: 1, intermediateSize: w, gated: true };
  } else if (family === 'deepseek_v2' || family === 'deepseek_v3') {
    const n = int(c, 'n_shared_experts', source, 0);
    if (n > 0) sharedExperts = { count: n, intermediateSize: n * moeIntermediateSize, gated: false };
  }

  const router: RouterConfig = { scoring: 'softmax', renormalize: false, scale: 1, bias: false, selectionBias: false, nGroup: 1, topkGroup: 1 };
  switch (family) {
    case 'mixtral':
      router.renormalize = true; // softmax over all, top-k, renormalised (MixtralSparseMoeBlock)
      break;
    case 'qwen2_moe':
    case 'qwen3_moe':
    case 'olmoe':
      router.renormalize = c.norm_topk_prob === true;
      break;
    case 'deepseek_v2':
    case 'deepseek_v3': {
      const scoring = c.scoring_func ?? 'softmax';
      if (scoring !== 'softmax' && scoring !== 'sigmoid') throw new InvalidArgumentError(`${source}: config.scoring_func must be softmax or sigmoid, received ${describe(scoring)}`);
      router.scoring = scoring;
      router.renormalize = c.norm_topk_prob === true;
      router.scale = num(c, 'routed_scaling_factor', source, 1);
      router.selectionBias = c.topk_method === 'noaux_tc';
      router.nGroup = int(c, 'n_group', source, 1);
      router.topkGroup = int(c, 'topk_group', source, 1);
      break;
    }
    case 'gpt_oss':
      router.scoring = 'softmax-topk';
      router.renormalize = true;
      router.bias = true;
      break;
  }

  let headDim = c.head_dim !== undefined && c.head_dim !== null ? int(c, 'head_dim', source) : hiddenSize / numHeads;
  let mla: MlaConfig | null = null;
  if (family === 'deepseek_v2' || family === 'deepseek_v3') {
    mla = {
      kvLoraRank: int(c, 'kv_lora_rank', source),
      qLoraRank: c.q_lora_rank === null || c.q_lora_rank === undefined ? null : int(c, 'q_lora_rank', source),
      qkNopeHeadDim: int(c, 'qk_nope_head_dim', source),
      qkRopeHeadDim: int(c, 'qk_rope_head_dim', source),
      vHeadDim: int(c, 'v_head_dim', source),
    };
    headDim = mla.qkNopeHeadDim + mla.qkRopeHeadDim;
  }
  if (!Number.isInteger(headDim)) throw new InvalidArgumentError(`${source}: hidden_size / num_attention_heads is not an integer and head_dim is missing`);
  if (numHeads % Math.max(1, numKvHeads) !== 0) {
    throw new InvalidArgumentError(`${source}: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`);
  }

  let layerTypes: ModelConfig['layerTypes'] = null;
  if (Array.isArray(c.layer_types)) {
    layerTypes = (c.layer_types as unknown[]).map((t) => (t === 'sliding_attention' ? 'sliding' : 'full'));
  } else if (family === 'gpt_oss') {
    layerTypes = Array.from({ length: numLayers }, (_, l) => (l % 2 === 0 ? 'sliding' : 'full'));
  }

  // Mixtral applies sliding_window whenever it is set; Qwen only with use_sliding_window (from max_window_layers on)
  const windowed = family === 'gpt_oss' || family === 'mixtral' || c.use_sliding_window === true;
  const slidingWindow = windowed && c.sliding_window !== null && c.sliding_window !== undefined ? int(c, 'sliding_window', source) : null;
  if (slidingWindow !== null && layerTypes === null && (family === 'qwen2_moe' || family === 'qwen3_moe')) {
    const from = int(c, 'max_window_layers', source, 0);
    layerTypes = Array.from({ length: numLayers }, (_, l) => (l >= from ? 'sliding' : 'full'));
  }
  // transformers 5 writes rope_parameters { rope_type, rope_theta, factor, ... } instead of rope_theta / rope_scaling
  const rp = typeof c.rope_parameters === 'object' && c.rope_parameters !== null ? (c.rope_parameters as Json) : null;
  const ropeTheta = c.rope_theta !== undefined && c.rope_theta !== null ? num(c, 'rope_theta', source) : rp && rp.rope_theta !== undefined ? num(rp, 'rope_theta', `${source} rope_parameters`) : 10000;
  const rpType = rp ? (rp.rope_type ?? rp.type ?? 'default') : 'default';
  const ropeScaling =
    typeof c.rope_scaling === 'object' && c.rope_scaling !== null ? (c.rope_scaling as Record<string, unknown>) : rp && rpType !== 'default' ? (rp as Record<string, unknown>) : null;

  return {
    family,
    architecture,
    hiddenSize,
    vocabSize: int(c, 'vocab_size', source),
    numLayers,
    moeLayers,
    numExperts,
    topK,
    moeIntermediateSize,
    denseIntermediateSize,
    sharedExperts,
    router,
    numHeads,
    numKvHeads,
    headDim,
    mla,
    qkNorm: family === 'qwen3_moe' || family === 'olmoe',
    attentionBias: c.attention_bias === true || (family === 'qwen2_moe' && c.qkv_bias !== false),
    rmsNormEps: num(c, 'rms_norm_eps', source, family === 'olmoe' ? 1e-5 : 1e-6),
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings: int(c, 'max_position_embeddings', source, 4096),
    slidingWindow,
    clipQkv: family === 'olmoe' && typeof c.clip_qkv === 'number' ? num(c, 'clip_qkv', source) : null,
    layerTypes,
    attentionSinks: family === 'gpt_oss',
    swigluLimit: family === 'gpt_oss' ? num(c, 'swiglu_limit', source, 7) : null,
    expertBias: family === 'gpt_oss',
    tieWordEmbeddings: c.tie_word_embeddings === true,
    bosTokenId: typeof c.bos_token_id === 'number' ? c.bos_token_id : null,
    eosTokenIds: idList(c.eos_token_id),
  };
}

/** HF tensor names of one routed expert's projections (gate [I, H], up [I, H], down [H, I]). */
export function expertTensorNames(cfg: ModelConfig, layer: number, expert: number): { gate: string; up: string; down: string } {
  const p = `model.layers.${layer}`;
  switch (cfg.family) {
    case 'mixtral':
      return { gate: `${p}.block_sparse_moe.experts.${expert}.w1.weight`, up: `${p}.block_sparse_moe.experts.${expert}.w3.weight`, down: `${p}.block_sparse_moe.experts.${expert}.w2.weight` };
    case 'gpt_oss':
      throw new UnsupportedModelError('gpt-oss stores all experts of a layer in one stacked tensor (mlp.experts.gate_up_proj); per-expert names do not exist');
    default:
      return { gate: `${p}.mlp.experts.${expert}.gate_proj.weight`, up: `${p}.mlp.experts.${expert}.up_proj.weight`, down: `${p}.mlp.experts.${expert}.down_proj.weight` };
  }
}

/** Bytes of one routed expert's weights (gate + up + down) at `bytesPerElement`. */
export function expertBytes(cfg: ModelConfig, bytesPerElement = 2): number {
  return 3 * cfg.hiddenSize * cfg.moeIntermediateSize * bytesPerElement;
}
