/**
 * Model presets for `makeModel` / `moe-offload make-model`: small random-weight checkpoints in exact HF format, one
 * per supported family, plus real-shape variants (Mixtral-8x7B, Qwen3-30B-A3B, OLMoE dimensions with few layers)
 * for benchmarks. Each preset is the HF `config.json` it writes (vocab_size is filled in from the generated
 * tokenizer) and the tokenizer's special tokens and chat template.
 *
 * Tiny dimensions respect the kernels' constraints (head_dim 64 / 128 / 256 for CPU attention) and keep every
 * family's quirk: Qwen2-MoE's q/k/v biases and gated shared expert, Qwen3-MoE's per-head q/k norm and explicit
 * head_dim, OLMoE's whole-projection q/k norm, Mixtral's renormalised top-2.
 */

export interface PresetTokenizer {
  specialTokens: string[];
  bosToken?: string;
  eosToken: string;
  /** Extra end-of-sequence tokens written to generation_config.json. */
  extraEos: string[];
  template: 'chatml' | 'inst';
}

export interface ModelPreset {
  /** HF config.json without vocab_size (set from the tokenizer, or `vocabSize` when given). */
  config: Record<string, unknown>;
  tokenizer: PresetTokenizer;
  /** Vocabulary size of the generated tokenizer. */
  tokenizerVocab: number;
  /** Real-shape presets: the model's real vocab_size (the tokenizer is still the small one; ids above it are unused). */
  vocabSize?: number;
  description: string;
}

const CHATML: PresetTokenizer = {
  specialTokens: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
  eosToken: '<|im_end|>',
  extraEos: ['<|endoftext|>'],
  template: 'chatml',
};
const LLAMA: PresetTokenizer = { specialTokens: ['<unk>', '<s>', '</s>'], bosToken: '<s>', eosToken: '</s>', extraEos: [], template: 'inst' };

const common = { torch_dtype: 'bfloat16', tie_word_embeddings: false, initializer_range: 0.02, use_cache: true, attention_dropout: 0 };

/**
 * config.json keys that are floats in transformers (its strict config validation rejects an integer there, and
 * JSON.stringify writes 0.0 as 0): makeModel writes integral values of these with a ".0".
 */
export const FLOAT_CONFIG_KEYS = [
  'attention_dropout',
  'routed_scaling_factor',
  'swiglu_limit',
  'rope_theta',
  'factor',
  'beta_fast',
  'beta_slow',
  'mscale',
  'mscale_all_dim',
  'router_aux_loss_coef',
  'initializer_range',
  'rms_norm_eps',
  'aux_loss_alpha',
] as const;

function mixtral(o: { hidden: number; layers: number; heads: number; kv: number; inter: number; experts: number; topK: number }): Record<string, unknown> {
  return {
    architectures: ['MixtralForCausalLM'],
    model_type: 'mixtral',
    hidden_size: o.hidden,
    intermediate_size: o.inter,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.kv,
    head_dim: o.hidden / o.heads,
    num_local_experts: o.experts,
    num_experts_per_tok: o.topK,
    hidden_act: 'silu',
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-5,
    rope_theta: 1e6,
    sliding_window: null,
    router_aux_loss_coef: 0.02,
    output_router_logits: false,
    bos_token_id: 1,
    eos_token_id: 2,
    ...common,
  };
}

function qwen3(o: { hidden: number; layers: number; heads: number; kv: number; headDim: number; moeInter: number; experts: number; topK: number }): Record<string, unknown> {
  return {
    architectures: ['Qwen3MoeForCausalLM'],
    model_type: 'qwen3_moe',
    hidden_size: o.hidden,
    intermediate_size: o.moeInter * 6,
    moe_intermediate_size: o.moeInter,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.kv,
    head_dim: o.headDim,
    num_experts: o.experts,
    num_experts_per_tok: o.topK,
    norm_topk_prob: true,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    attention_bias: false,
    hidden_act: 'silu',
    max_position_embeddings: 40960,
    rms_norm_eps: 1e-6,
    rope_theta: 1e6,
    rope_scaling: null,
    use_sliding_window: false,
    sliding_window: null,
    router_aux_loss_coef: 0.001,
    output_router_logits: false,
    ...common,
  };
}

function olmoe(o: { hidden: number; layers: number; heads: number; inter: number; experts: number; topK: number }): Record<string, unknown> {
  return {
    architectures: ['OlmoeForCausalLM'],
    model_type: 'olmoe',
    hidden_size: o.hidden,
    intermediate_size: o.inter,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.heads,
    num_experts: o.experts,
    num_experts_per_tok: o.topK,
    norm_topk_prob: false,
    clip_qkv: null,
    attention_bias: false,
    hidden_act: 'silu',
    max_position_embeddings: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    rope_scaling: null,
    router_aux_loss_coef: 0.01,
    output_router_logits: false,
    ...common,
  };
}

function deepseekV2(o: { hidden: number; layers: number; heads: number; kvRank: number; nope: number; rope: number; v: number; moeInter: number; denseInter: number; experts: number; shared: number; topK: number; yarnFactor: number }): Record<string, unknown> {
  return {
    architectures: ['DeepseekV2ForCausalLM'],
    model_type: 'deepseek_v2',
    hidden_size: o.hidden,
    intermediate_size: o.denseInter,
    moe_intermediate_size: o.moeInter,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.heads,
    q_lora_rank: null,
    kv_lora_rank: o.kvRank,
    qk_nope_head_dim: o.nope,
    qk_rope_head_dim: o.rope,
    v_head_dim: o.v,
    n_routed_experts: o.experts,
    n_shared_experts: o.shared,
    num_experts_per_tok: o.topK,
    first_k_dense_replace: 1,
    moe_layer_freq: 1,
    n_group: 1,
    topk_group: 1,
    topk_method: 'greedy',
    scoring_func: 'softmax',
    norm_topk_prob: false,
    routed_scaling_factor: 1,
    attention_bias: false,
    hidden_act: 'silu',
    max_position_embeddings: o.yarnFactor * 4096,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    rope_scaling: { type: 'yarn', factor: o.yarnFactor, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 0.707, mscale_all_dim: 0.707 },
    aux_loss_alpha: 0.001,
    seq_aux: true,
    ...common,
  };
}

function gptOss(o: { hidden: number; layers: number; heads: number; kv: number; inter: number; experts: number; topK: number; window: number }): Record<string, unknown> {
  return {
    architectures: ['GptOssForCausalLM'],
    model_type: 'gpt_oss',
    hidden_size: o.hidden,
    intermediate_size: o.inter,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.kv,
    head_dim: 64,
    num_local_experts: o.experts,
    num_experts_per_tok: o.topK,
    experts_per_token: o.topK,
    attention_bias: true,
    hidden_act: 'silu',
    swiglu_limit: 7,
    sliding_window: o.window,
    layer_types: Array.from({ length: o.layers }, (_, l) => (l % 2 === 0 ? 'sliding_attention' : 'full_attention')),
    max_position_embeddings: 131072,
    initial_context_length: 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 150000,
    rope_scaling: { rope_type: 'yarn', factor: 32, beta_fast: 32, beta_slow: 1, original_max_position_embeddings: 4096, truncate: false },
    router_aux_loss_coef: 0.9,
    output_router_logits: false,
    ...common,
  };
}

export const PRESETS = {
  'tiny-mixtral': {
    description: 'Mixtral family, 4 layers, hidden 256, 8 experts top-2 (renormalised), GQA 4:2, head_dim 64',
    config: mixtral({ hidden: 256, layers: 4, heads: 4, kv: 2, inter: 256, experts: 8, topK: 2 }),
    tokenizer: LLAMA,
    tokenizerVocab: 512,
  },
  'tiny-qwen2-moe': {
    description: 'Qwen2-MoE / Qwen1.5-MoE family, 4 layers, hidden 256, 16 experts top-4 + gated shared expert, q/k/v bias',
    config: {
      architectures: ['Qwen2MoeForCausalLM'],
      model_type: 'qwen2_moe',
      hidden_size: 256,
      intermediate_size: 512,
      moe_intermediate_size: 128,
      shared_expert_intermediate_size: 256,
      num_hidden_layers: 4,
      num_attention_heads: 4,
      num_key_value_heads: 4,
      num_experts: 16,
      num_experts_per_tok: 4,
      norm_topk_prob: false,
      decoder_sparse_step: 1,
      mlp_only_layers: [],
      qkv_bias: true,
      hidden_act: 'silu',
      max_position_embeddings: 8192,
      rms_norm_eps: 1e-6,
      rope_theta: 1e6,
      use_sliding_window: false,
      sliding_window: null,
      router_aux_loss_coef: 0.001,
      output_router_logits: false,
      ...common,
    },
    tokenizer: CHATML,
    tokenizerVocab: 512,
  },
  'tiny-qwen3-moe': {
    description: 'Qwen3-MoE family, 4 layers, hidden 256, 32 experts top-4 (renormalised), per-head q/k norm, head_dim 128',
    config: qwen3({ hidden: 256, layers: 4, heads: 4, kv: 2, headDim: 128, moeInter: 128, experts: 32, topK: 4 }),
    tokenizer: CHATML,
    tokenizerVocab: 512,
  },
  'tiny-olmoe': {
    description: 'OLMoE family, 4 layers, hidden 256, 16 experts top-4, whole-projection q/k norm',
    config: olmoe({ hidden: 256, layers: 4, heads: 4, inter: 128, experts: 16, topK: 4 }),
    tokenizer: CHATML,
    tokenizerVocab: 512,
  },
  'tiny-deepseek-v2': {
    description: 'DeepSeek-V2-Lite family, 6 layers (first dense), hidden 256, MLA (kv rank 64, qk 64+32, v 64, yarn), 16 experts top-4 + 2 shared',
    config: deepseekV2({ hidden: 256, layers: 6, heads: 4, kvRank: 64, nope: 64, rope: 32, v: 64, moeInter: 64, denseInter: 512, experts: 16, shared: 2, topK: 4, yarnFactor: 4 }),
    tokenizer: LLAMA,
    tokenizerVocab: 512,
  },
  'tiny-gpt-oss': {
    description: 'gpt-oss family, 4 layers (sliding window 16 / full), hidden 256, 8 experts top-2 with biases and clamped SwiGLU, attention sinks, yarn',
    config: gptOss({ hidden: 256, layers: 4, heads: 4, kv: 2, inter: 256, experts: 8, topK: 2, window: 16 }),
    tokenizer: CHATML,
    tokenizerVocab: 512,
  },
  'mixtral-8x7b-shape': {
    description: 'Mixtral-8x7B dimensions (hidden 4096, 8 x 14336 experts, GQA 32:8), 2 layers, random weights (~5.9 GB)',
    config: mixtral({ hidden: 4096, layers: 2, heads: 32, kv: 8, inter: 14336, experts: 8, topK: 2 }),
    tokenizer: LLAMA,
    tokenizerVocab: 512,
    vocabSize: 32000,
  },
  'qwen3-30b-a3b-shape': {
    description: 'Qwen3-30B-A3B dimensions (hidden 2048, 128 x 768 experts top-8, 32:4 heads of 128), 2 layers, random weights (~1.3 GB)',
    config: qwen3({ hidden: 2048, layers: 2, heads: 32, kv: 4, headDim: 128, moeInter: 768, experts: 128, topK: 8 }),
    tokenizer: CHATML,
    tokenizerVocab: 512,
    vocabSize: 151936,
  },
  'olmoe-1b-7b-shape': {
    description: 'OLMoE-1B-7B dimensions (hidden 2048, 64 x 1024 experts top-8, 16 heads), 2 layers, random weights (~1.2 GB)',
    config: olmoe({ hidden: 2048, layers: 2, heads: 16, inter: 1024, experts: 64, topK: 8 }),
    tokenizer: CHATML,
    tokenizerVocab: 512,
    vocabSize: 50304,
  },
  'deepseek-v2-lite-shape': {
    description: 'DeepSeek-V2-Lite dimensions (hidden 2048, MLA rank 512, 64 x 1408 experts top-6 + 2 shared), 2 layers (1 dense, 1 MoE) (~0.9 GB)',
    config: deepseekV2({ hidden: 2048, layers: 2, heads: 16, kvRank: 512, nope: 128, rope: 64, v: 128, moeInter: 1408, denseInter: 10944, experts: 64, shared: 2, topK: 6, yarnFactor: 40 }),
    tokenizer: LLAMA,
    tokenizerVocab: 512,
    vocabSize: 102400,
  },
} satisfies Record<string, ModelPreset>;

export type PresetName = keyof typeof PRESETS;
export const PRESET_NAMES = Object.keys(PRESETS) as PresetName[];
