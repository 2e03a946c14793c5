/**
 * The float64 reference forward pass (test/harness/ref-model.ts) on tiny random checkpoints generated here, one
 * per family (mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, gpt_oss), checked for the properties it must
 * have: causality, the sliding window's exact reach, routing shape, MoE == dense mixture when top_k = E,
 * Mixtral with one expert == one SwiGLU MLP (a dense Qwen2-MoE layer), logits equal to a hand-written naive
 * computation (Mixtral and gpt-oss: nested arrays and explicit per-element formulas, not the reference's code),
 * attention scores that depend on relative position only (RoPE), sharded == single file, BF16 == F16 == F32
 * weights, and errors naming the unsupported model_type / missing tensor.
 *
 * Weights are multiples of 1/256 of magnitude <= 0.5 (norm weights 1 + k/128, |k| <= 16): exact in bf16, f16 and f32, so the
 * naive computations here know the stored values exactly and every comparison can be tight (1e-12 relative).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { HostTensor, writeCheckpoint } from '../lib/index.js';
import { rng } from './harness/ref.js';
import { type RefModel, loadReferenceModel } from './harness/ref-model.js';

type Json = Record<string, unknown>;
type Tensors = Map<string, { shape: number[]; values: Float64Array }>;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-refmodel-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let dirCount = 0;

// ---- tiny checkpoints ------------------------------------------------------------------------------------------

class Gen {
  readonly #r: () => number;
  constructor(seed: number) {
    this.#r = rng(seed);
  }
  /** k / 256 with |k| <= amp (amp <= 127 keeps 7 significant bits: exact in bf16). */
  values(n: number, amp = 64): Float64Array {
    const v = new Float64Array(n);
    for (let i = 0; i < n; i++) v[i] = Math.round((this.#r() * 2 - 1) * amp) / 256;
    return v;
  }
  /** 1 + k / 128 with |k| <= 16 (8 significant bits: exact in bf16). */
  norm(n: number): Float64Array {
    return this.values(n, 32).map((x) => 1 + Math.round(x * 128) / 128);
  }
}

const BASE: Json = {
  hidden_size: 32,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 40,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  max_position_embeddings: 4096,
  tie_word_embeddings: false,
  hidden_act: 'silu',
};

const FAMILIES: Record<string, Json> = {
  mixtral: { ...BASE, model_type: 'mixtral', num_local_experts: 6, num_experts_per_tok: 2, intermediate_size: 16, sliding_window: null },
  qwen2_moe: {
    ...BASE,
    model_type: 'qwen2_moe',
    num_experts: 6,
    num_experts_per_tok: 2,
    moe_intermediate_size: 16,
    shared_expert_intermediate_size: 24,
    intermediate_size: 40,
    norm_topk_prob: false,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    use_sliding_window: false,
  },
  qwen3_moe: {
    ...BASE,
    model_type: 'qwen3_moe',
    head_dim: 16,
    num_experts: 6,
    num_experts_per_tok: 2,
    moe_intermediate_size: 16,
    intermediate_size: 40,
    norm_topk_prob: true,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
  },
  olmoe: { ...BASE, model_type: 'olmoe', num_experts: 6, num_experts_per_tok: 2, intermediate_size: 16, norm_topk_prob: false, clip_qkv: null },
  deepseek_v2: {
    ...BASE,
    model_type: 'deepseek_v2',
    num_key_value_heads: 4,
    q_lora_rank: null,
    kv_lora_rank: 16,
    qk_nope_head_dim: 8,
    qk_rope_head_dim: 4,
    v_head_dim: 8,
    n_routed_experts: 6,
    num_experts_per_tok: 2,
    n_shared_experts: 2,
    moe_intermediate_size: 8,
    intermediate_size: 40,
    first_k_dense_replace: 1,
    moe_layer_freq: 1,
    topk_method: 'greedy',
    n_group: 1,
    topk_group: 1,
    routed_scaling_factor: 1.0,
    norm_topk_prob: false,
    scoring_func: 'softmax',
    max_position_embeddings: 163840,
    rope_scaling: { type: 'yarn', factor: 40, mscale: 0.707, mscale_all_dim: 0.707, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1 },
  },
  gpt_oss: {
    ...BASE,
    model_type: 'gpt_oss',
    head_dim: 8,
    num_local_experts: 6,
    num_experts_per_tok: 2,
    intermediate_size: 16,
    sliding_window: 3,
    swiglu_limit: 7.0,
    attention_bias: true,
    rope_theta: 150000,
    max_position_embeddings: 131072,
    layer_types: ['sliding_attention', 'full_attention'],
    rope_scaling: { rope_type: 'yarn', factor: 32, beta_fast: 32, beta_slow: 1, truncate: false, original_max_position_embeddings: 4096 },
  },
};

function n(c: Json, k: string): number {
  return c[k] as number;
}

/** Random tensors under the HF names of `cfg`'s family (names and shapes written from the HF modules). */
function buildTensors(cfg: Json, seed: number): Tensors {
  const g = new Gen(seed);
  const t: Tensors = new Map();
  const put = (name: string, shape: number[], values?: Float64Array) => {
    const size = shape.reduce((a, b) => a * b, 1);
    t.set(name, { shape, values: values ?? g.values(size) });
  };
  const type = cfg.model_type as string;
  const H = n(cfg, 'hidden_size');
  const V = n(cfg, 'vocab_size');
  const nH = n(cfg, 'num_attention_heads');
  const nKV = n(cfg, 'num_key_value_heads');
  const hd = (cfg.head_dim as number | undefined) ?? H / nH;
  put('model.embed_tokens.weight', [V, H]);
  for (let l = 0; l < n(cfg, 'num_hidden_layers'); l++) {
    const p = `model.layers.${l}`;
    put(`${p}.input_layernorm.weight`, [H], g.norm(H));
    put(`${p}.post_attention_layernorm.weight`, [H], g.norm(H));
    const a = `${p}.self_attn`;
    if (type === 'deepseek_v2') {
      const nope = n(cfg, 'qk_nope_head_dim');
      const rope = n(cfg, 'qk_rope_head_dim');
      const rank = n(cfg, 'kv_lora_rank');
      const vd = n(cfg, 'v_head_dim');
      const qLora = cfg.q_lora_rank as number | null;
      if (qLora === null) put(`${a}.q_proj.weight`, [nH * (nope + rope), H]);
      else {
        put(`${a}.q_a_proj.weight`, [qLora, H]);
        put(`${a}.q_a_layernorm.weight`, [qLora], g.norm(qLora));
        put(`${a}.q_b_proj.weight`, [nH * (nope + rope), qLora]);
      }
      put(`${a}.kv_a_proj_with_mqa.weight`, [rank + rope, H]);
      put(`${a}.kv_a_layernorm.weight`, [rank], g.norm(rank));
      put(`${a}.kv_b_proj.weight`, [nH * (nope + vd), rank]);
      put(`${a}.o_proj.weight`, [H, nH * vd]);
    } else {
      put(`${a}.q_proj.weight`, [nH * hd, H]);
      put(`${a}.k_proj.weight`, [nKV * hd, H]);
      put(`${a}.v_proj.weight`, [nKV * hd, H]);
      put(`${a}.o_proj.weight`, [H, nH * hd]);
      if (type === 'qwen2_moe' || type === 'gpt_oss') {
        put(`${a}.q_proj.bias`, [nH * hd]);
        put(`${a}.k_proj.bias`, [nKV * hd]);
        put(`${a}.v_proj.bias`, [nKV * hd]);
      }
      if (type === 'gpt_oss') {
        put(`${a}.o_proj.bias`, [H]);
        put(`${a}.sinks`, [nH], g.values(nH, 127));
      }
      if (type === 'qwen3_moe') {
        put(`${a}.q_norm.weight`, [hd], g.norm(hd));
        put(`${a}.k_norm.weight`, [hd], g.norm(hd));
      }
      if (type === 'olmoe') {
        put(`${a}.q_norm.weight`, [nH * hd], g.norm(nH * hd));
        put(`${a}.k_norm.weight`, [nKV * hd], g.norm(nKV * hd));
      }
    }
    const swiglu = (prefix: string, inter: number, names = ['gate_proj', 'up_proj', 'down_proj']) => {
      put(`${prefix}.${names[0]}.weight`, [inter, H]);
      put(`${prefix}.${names[1]}.weight`, [inter, H]);
      put(`${prefix}.${names[2]}.weight`, [H, inter]);
    };
    switch (type) {
      case 'mixtral': {
        const E = n(cfg, 'num_local_experts');
        put(`${p}.block_sparse_moe.gate.weight`, [E, H], g.values(E * H, 127));
        for (let e = 0; e < E; e++) swiglu(`${p}.block_sparse_moe.experts.${e}`, n(cfg, 'intermediate_size'), ['w1', 'w3', 'w2']);
        break;
      }
      case 'qwen2_moe':
      case 'qwen3_moe': {
        const step = (cfg.decoder_sparse_step as number | undefined) ?? 1;
        const sparse = !((cfg.mlp_only_layers as number[] | undefined) ?? []).includes(l) && (l + 1) % step === 0;
        if (!sparse) {
          swiglu(`${p}.mlp`, n(cfg, 'intermediate_size'));
          break;
        }
        const E = n(cfg, 'num_experts');
        put(`${p}.mlp.gate.weight`, [E, H], g.values(E * H, 127));
        for (let e = 0; e < E; e++) swiglu(`${p}.mlp.experts.${e}`, n(cfg, 'moe_intermediate_size'));
        if (type === 'qwen2_moe') {
          swiglu(`${p}.mlp.shared_expert`, n(cfg, 'shared_expert_intermediate_size'));
          put(`${p}.mlp.shared_expert_gate.weight`, [1, H]);
        }
        break;
      }
      case 'olmoe': {
        const E = n(cfg, 'num_experts');
        put(`${p}.mlp.gate.weight`, [E, H], g.values(E * H, 127));
        for (let e = 0; e < E; e++) swiglu(`${p}.mlp.experts.${e}`, n(cfg, 'intermediate_size'));
        break;
      }
      case 'deepseek_v2': {
        if (l < n(cfg, 'first_k_dense_replace')) {
          swiglu(`${p}.mlp`, n(cfg, 'intermediate_size'));
          break;
        }
        const E = n(cfg, 'n_routed_experts');
        put(`${p}.mlp.gate.weight`, [E, H], g.values(E * H, 127));
        for (let e = 0; e < E; e++) swiglu(`${p}.mlp.experts.${e}`, n(cfg, 'moe_intermediate_size'));
        swiglu(`${p}.mlp.shared_experts`, n(cfg, 'moe_intermediate_size') * n(cfg, 'n_shared_experts'));
        break;
      }
      case 'gpt_oss': {
        const E = n(cfg, 'num_local_experts');
        const I = n(cfg, 'intermediate_size');
        put(`${p}.mlp.router.weight`, [E, H], g.values(E * H, 127));
        put(`${p}.mlp.router.bias`, [E]);
        put(`${p}.mlp.experts.gate_up_proj`, [E, H, 2 * I]);
        put(`${p}.mlp.experts.gate_up_proj_bias`, [E, 2 * I]);
        put(`${p}.mlp.experts.down_proj`, [E, I, H]);
        put(`${p}.mlp.experts.down_proj_bias`, [E, H]);
        break;
      }
      default:
        throw new Error(`test: no tensor builder for ${type}`);
    }
  }
  put('model.norm.weight', [H], g.norm(H));
  if (!cfg.tie_word_embeddings) put('lm_head.weight', [V, H]);
  return t;
}

async function save(cfg: Json, tensors: Tensors, options: { dtype?: 'bf16' | 'f16' | 'f32'; maxShardBytes?: number } = {}): Promise<string> {
  const dir = path.join(tmp, `m${dirCount++}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
  const map = new Map<string, HostTensor>();
  for (const [name, { shape, values }] of tensors) map.set(name, HostTensor.from(options.dtype ?? 'bf16', shape, values));
  await writeCheckpoint(dir, map, options.maxShardBytes === undefined ? {} : { maxShardBytes: options.maxShardBytes });
  return dir;
}

async function tiny(cfg: Json, seed: number): Promise<{ ref: RefModel; tensors: Tensors; dir: string }> {
  const tensors = buildTensors(cfg, seed);
  const dir = await save(cfg, tensors);
  return { ref: loadReferenceModel(dir), tensors, dir };
}

function tokensOf(count: number, vocab: number, seed: number): number[] {
  const r = rng(seed);
  return Array.from({ length: count }, () => Math.floor(r() * vocab));
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/** max |a - b| / max(1, max |b|) */
function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m / Math.max(1, maxAbs(b));
}

// ---- every family: shape, causality, routing, sliding-window reach --------------------------------------------

const VARIANTS: Array<[string, Json]> = [
  ['mixtral', FAMILIES.mixtral!],
  ['mixtral, sliding_window 3', { ...FAMILIES.mixtral!, sliding_window: 3 }],
  ['mixtral, tied embeddings, GQA 4:1', { ...FAMILIES.mixtral!, tie_word_embeddings: true, num_key_value_heads: 1 }],
  ['qwen2_moe', FAMILIES.qwen2_moe!],
  ['qwen2_moe, decoder_sparse_step 2, norm_topk_prob', { ...FAMILIES.qwen2_moe!, decoder_sparse_step: 2, norm_topk_prob: true }],
  ['qwen3_moe', FAMILIES.qwen3_moe!],
  ['qwen3_moe, mlp_only_layers [0]', { ...FAMILIES.qwen3_moe!, mlp_only_layers: [0] }],
  ['olmoe', FAMILIES.olmoe!],
  ['olmoe, clip_qkv 0.25, norm_topk_prob', { ...FAMILIES.olmoe!, clip_qkv: 0.25, norm_topk_prob: true }],
  ['deepseek_v2 (V2-Lite shape: yarn, greedy, dense layer 0)', FAMILIES.deepseek_v2!],
  [
    'deepseek_v2, q_lora_rank 12, group_limited_greedy 3 groups',
    { ...FAMILIES.deepseek_v2!, q_lora_rank: 12, topk_method: 'group_limited_greedy', n_group: 3, topk_group: 2, routed_scaling_factor: 2.5, first_k_dense_replace: 0, rope_scaling: null },
  ],
  ['gpt_oss', FAMILIES.gpt_oss!],
  ['gpt_oss, both layers sliding 3, swiglu_limit 0.05', { ...FAMILIES.gpt_oss!, layer_types: ['sliding_attention', 'sliding_attention'], swiglu_limit: 0.05 }],
];

function isDenseLayer(cfg: Json, l: number): boolean {
  switch (cfg.model_type) {
    case 'qwen2_moe':
    case 'qwen3_moe':
      return ((cfg.mlp_only_layers as number[]) ?? []).includes(l) || (l + 1) % ((cfg.decoder_sparse_step as number) ?? 1) !== 0;
    case 'deepseek_v2':
      return l < n(cfg, 'first_k_dense_replace');
    default:
      return false;
  }
}

/** Positions whose logits cannot see token 0 when every layer slides with `window`: i >= L (window - 1) + 1. */
function slidingOnly(cfg: Json): number | null {
  if (cfg.model_type === 'mixtral' && typeof cfg.sliding_window === 'number') return cfg.sliding_window;
  const types = cfg.layer_types as string[] | undefined;
  if (cfg.model_type === 'gpt_oss' && types?.every((t) => t === 'sliding_attention')) return cfg.sliding_window as number;
  return null;
}

for (const [name, cfg] of VARIANTS) {
  void test(`${name}: [T, V] finite logits, causal, top-k routing per layer and token`, async () => {
    const { ref } = await tiny(cfg, 11);
    const V = n(cfg, 'vocab_size');
    const L = n(cfg, 'num_hidden_layers');
    const T = 8;
    const tokens = tokensOf(T, V, 5);
    const logits = ref.forward(tokens);
    assert.equal(logits.length, T * V);
    assert.ok(logits.every(Number.isFinite));
    assert.ok(maxAbs(logits) > 1e-3, 'logits are not all ~0');
    assert.ok(relDiff(logits.subarray(0, V), logits.subarray(V, 2 * V)) > 1e-6, 'positions differ');

    const routing = ref.lastRouting;
    const E = n(cfg, cfg.model_type === 'deepseek_v2' ? 'n_routed_experts' : cfg.model_type === 'mixtral' || cfg.model_type === 'gpt_oss' ? 'num_local_experts' : 'num_experts');
    const k = n(cfg, 'num_experts_per_tok');
    assert.equal(routing.length, L);
    for (let l = 0; l < L; l++) {
      assert.equal(routing[l]!.length, T);
      for (const ids of routing[l]!) {
        if (isDenseLayer(cfg, l)) assert.deepEqual(ids, []);
        else {
          assert.equal(ids.length, k);
          assert.equal(new Set(ids).size, k);
          assert.ok(ids.every((e) => Number.isInteger(e) && e >= 0 && e < E));
        }
      }
    }
    if (cfg.topk_method === 'group_limited_greedy') {
      // every token's experts fall in at most topk_group of the n_group groups
      const per = E / n(cfg, 'n_group');
      for (const ids of routing.flat()) assert.ok(new Set(ids.map((e) => Math.floor(e / per))).size <= n(cfg, 'topk_group'));
    }

    // causality: the first 5 positions are unchanged when 3 tokens are appended / when later tokens change
    const prefix = ref.forward(tokens.slice(0, 5));
    assert.equal(relDiff(prefix, logits.subarray(0, 5 * V)), 0);
    assert.deepEqual(ref.lastRouting.map((r) => r.slice(0, 5)), routing.map((r) => r.slice(0, 5)));
    const changed = [...tokens.slice(0, 5), ...tokens.slice(5).map((t) => (t + 7) % V)];
    assert.equal(relDiff(ref.forward(changed).subarray(0, 5 * V), logits.subarray(0, 5 * V)), 0);

    // sliding window: key j reaches query i when i - j < window, so after L layers token 0 reaches positions
    // < L (window - 1) + 1 only (one more position would be reached if the window kept i - j <= window)
    const w = slidingOnly(cfg);
    if (w !== null) {
      const reach = L * (w - 1) + 1;
      const other = [(tokens[0]! + 1) % V, ...tokens.slice(1)];
      const out = ref.forward(other);
      assert.equal(relDiff(out.subarray(reach * V), logits.subarray(reach * V)), 0, 'positions past the window reach are unchanged');
      assert.ok(relDiff(out.subarray((reach - 1) * V, reach * V), logits.subarray((reach - 1) * V, reach * V)) > 1e-9, 'the last position within reach changes');
    }
  });
}

// ---- naive hand-written forward ------------------------------------------------------------------------------

/**
 * The forward pass written out per element with nested arrays, independently of the reference's code: matrices
 * as number[][] rows, RoPE as explicit cos/sin formulas per pair, softmax without max subtraction, top-k by
 * repeated argmax (first index wins ties), every family's quirks spelled out where they apply. `dense`
 * (Mixtral): no top-k at all, every expert weighted by its softmax probability (what top_k = E with
 * renormalisation must equal).
 */
function naiveForward(cfg: Json, t: Tensors, tokens: number[], dense = false): { logits: number[][]; routing: number[][][] } {
  const type = cfg.model_type as string;
  const H = n(cfg, 'hidden_size');
  const nH = n(cfg, 'num_attention_heads');
  const nKV = n(cfg, 'num_key_value_heads');
  const hd = (cfg.head_dim as number | undefined) ?? H / nH;
  const eps = n(cfg, 'rms_norm_eps');
  const theta = n(cfg, 'rope_theta');
  const k = n(cfg, 'num_experts_per_tok');
  const vals = (name: string): number[] => Array.from(t.get(name)!.values);
  const mat = (name: string): number[][] => {
    const { shape, values } = t.get(name)!;
    return Array.from({ length: shape[0]! }, (_, r) => Array.from(values.subarray(r * shape[1]!, (r + 1) * shape[1]!)));
  };
  const biasOf = (name: string): number[] | undefined => (t.has(name) ? vals(name) : undefined);
  const dot = (a: number[], b: number[]) => a.reduce((s, ai, i) => s + ai * b[i]!, 0);
  const mv = (W: number[][], x: number[], b?: number[]) => W.map((row, o) => dot(row, x) + (b ? b[o]! : 0));
  const rmsEps = (x: number[], w: number[], e: number) => {
    const ms = x.reduce((s, v) => s + v * v, 0) / x.length;
    return x.map((v, i) => (w[i]! * v) / Math.sqrt(ms + e));
  };
  const rms = (x: number[], w: number[]) => rmsEps(x, w, eps);
  const silu = (v: number) => v / (1 + Math.exp(-v));
  const mlp = (prefix: string, h: number[], names = ['gate_proj', 'up_proj', 'down_proj']) => {
    const gate = mat(`${prefix}.${names[0]}.weight`);
    const up = mat(`${prefix}.${names[1]}.weight`);
    const act = gate.map((row, r) => silu(dot(row, h)) * dot(up[r]!, h));
    return mv(mat(`${prefix}.${names[2]}.weight`), act);
  };
  const argmaxOrder = (score: number[], count: number) => {
    const left = score.slice();
    const ids: number[] = [];
    for (let r = 0; r < count; r++) {
      let best = 0;
      for (let e = 1; e < left.length; e++) if (left[e]! > left[best]!) best = e;
      ids.push(best);
      left[best] = -Infinity;
    }
    return ids;
  };

  // rotary frequencies (yarn when rope_scaling is set) and the cos/sin factor
  const mla = type === 'deepseek_v2';
  const rotDim = mla ? n(cfg, 'qk_rope_head_dim') : hd;
  const inv: number[] = [];
  let cosSinFactor = 1;
  const rs = cfg.rope_scaling as Json | null | undefined;
  for (let d = 0; d < rotDim / 2; d++) {
    const plain = Math.pow(theta, (-2 * d) / rotDim);
    if (!rs) {
      inv.push(plain);
      continue;
    }
    const f = n(rs, 'factor');
    const orig = n(rs, 'original_max_position_embeddings');
    const dimOf = (rot: number) => (rotDim * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
    let lo = dimOf(n(rs, 'beta_fast'));
    let hi = dimOf(n(rs, 'beta_slow'));
    if (rs.truncate !== false) {
      lo = Math.floor(lo);
      hi = Math.ceil(hi);
    }
    lo = Math.max(0, lo);
    hi = Math.min(rotDim - 1, hi);
    const ramp = Math.min(1, Math.max(0, (d - lo) / (hi - lo)));
    inv.push((plain / f) * ramp + plain * (1 - ramp));
    const m = (s: number) => 0.1 * s * Math.log(f) + 1;
    cosSinFactor = rs.mscale && rs.mscale_all_dim ? m(rs.mscale as number) / m(rs.mscale_all_dim as number) : m(1);
  }
  /** rotate_half pairs (d, d + half), or DeepSeek's interleaved pairs (2d, 2d + 1) */
  const rotate = (x: number[], pos: number, interleaved: boolean) => {
    const y = x.slice();
    for (let d = 0; d < rotDim / 2; d++) {
      const c = Math.cos(pos * inv[d]!) * cosSinFactor;
      const s = Math.sin(pos * inv[d]!) * cosSinFactor;
      const [a, b] = interleaved ? [2 * d, 2 * d + 1] : [d, d + rotDim / 2];
      y[a] = x[a]! * c - x[b]! * s;
      y[b] = x[b]! * c + x[a]! * s;
    }
    return y;
  };

  const embed = mat('model.embed_tokens.weight');
  let xs = tokens.map((tok) => embed[tok]!.slice());
  const routing: number[][][] = [];
  for (let l = 0; l < n(cfg, 'num_hidden_layers'); l++) {
    const p = `model.layers.${l}`;
    const a = `${p}.self_attn`;
    const hs = xs.map((x) => rms(x, vals(`${p}.input_layernorm.weight`)));
    let attnOut: number[][];
    if (mla) {
      const nope = n(cfg, 'qk_nope_head_dim');
      const rope = n(cfg, 'qk_rope_head_dim');
      const vd = n(cfg, 'v_head_dim');
      const rank = n(cfg, 'kv_lora_rank');
      let scale = 1 / Math.sqrt(nope + rope);
      if (rs && rs.mscale_all_dim) {
        const m = 0.1 * (rs.mscale_all_dim as number) * Math.log(n(rs, 'factor')) + 1;
        scale = scale * m * m;
      }
      const qs = hs.map((h) =>
        cfg.q_lora_rank === null
          ? mv(mat(`${a}.q_proj.weight`), h)
          : mv(mat(`${a}.q_b_proj.weight`), rmsEps(mv(mat(`${a}.q_a_proj.weight`), h), vals(`${a}.q_a_layernorm.weight`), 1e-6)),
      );
      const kvAs = hs.map((h) => mv(mat(`${a}.kv_a_proj_with_mqa.weight`), h));
      const kvBs = kvAs.map((kv) => mv(mat(`${a}.kv_b_proj.weight`), rmsEps(kv.slice(0, rank), vals(`${a}.kv_a_layernorm.weight`), 1e-6)));
      attnOut = xs.map((_, i) => {
        const concat: number[] = [];
        for (let h = 0; h < nH; h++) {
          const qh = qs[i]!.slice(h * (nope + rope), (h + 1) * (nope + rope));
          const qNope = qh.slice(0, nope);
          const qPe = rotate(qh.slice(nope), i, true);
          const e: number[] = [];
          for (let j = 0; j <= i; j++) {
            const kNope = kvBs[j]!.slice(h * (nope + vd), h * (nope + vd) + nope);
            const kPe = rotate(kvAs[j]!.slice(rank, rank + rope), j, true);
            e.push(Math.exp((dot(qNope, kNope) + dot(qPe, kPe)) * scale));
          }
          const z = e.reduce((s, v) => s + v, 0);
          for (let d = 0; d < vd; d++) concat.push(e.reduce((s, ej, j) => s + (ej / z) * kvBs[j]![h * (nope + vd) + nope + d]!, 0));
        }
        return mv(mat(`${a}.o_proj.weight`), concat);
      });
    } else {
      let qs = hs.map((h) => mv(mat(`${a}.q_proj.weight`), h, biasOf(`${a}.q_proj.bias`)));
      let ks = hs.map((h) => mv(mat(`${a}.k_proj.weight`), h, biasOf(`${a}.k_proj.bias`)));
      let vs = hs.map((h) => mv(mat(`${a}.v_proj.weight`), h, biasOf(`${a}.v_proj.bias`)));
      if (type === 'qwen3_moe') {
        // RMSNorm over each head's head_dim slice
        const perHead = (x: number[], w: number[]) => x.map((_, i) => rms(x.slice(i - (i % hd), i - (i % hd) + hd), w)[i % hd]!);
        qs = qs.map((q) => perHead(q, vals(`${a}.q_norm.weight`)));
        ks = ks.map((kk) => perHead(kk, vals(`${a}.k_norm.weight`)));
      }
      if (type === 'olmoe') {
        qs = qs.map((q) => rms(q, vals(`${a}.q_norm.weight`)));
        ks = ks.map((kk) => rms(kk, vals(`${a}.k_norm.weight`)));
        const c = cfg.clip_qkv as number | null;
        if (c !== null) {
          const clamp = (x: number[]) => x.map((v) => (v > c ? c : v < -c ? -c : v));
          qs = qs.map(clamp);
          ks = ks.map(clamp);
          vs = vs.map(clamp);
        }
      }
      let window = (cfg.sliding_window as number | null | undefined) ?? null;
      if (type === 'gpt_oss') window = (cfg.layer_types as string[])[l] === 'sliding_attention' ? window : null;
      if (type !== 'mixtral' && type !== 'gpt_oss') window = null;
      const sinks = type === 'gpt_oss' ? vals(`${a}.sinks`) : null;
      attnOut = xs.map((_, i) => {
        const concat: number[] = [];
        for (let h = 0; h < nH; h++) {
          const g = Math.floor((h * nKV) / nH);
          const q = rotate(qs[i]!.slice(h * hd, (h + 1) * hd), i, false);
          const e: number[] = [];
          const js: number[] = [];
          for (let j = 0; j <= i; j++) {
            if (window !== null && j <= i - window) continue;
            const kk = rotate(ks[j]!.slice(g * hd, (g + 1) * hd), j, false);
            e.push(Math.exp(dot(q, kk) / Math.sqrt(hd)));
            js.push(j);
          }
          const z = e.reduce((s, v) => s + v, 0) + (sinks ? Math.exp(sinks[h]!) : 0);
          for (let d = 0; d < hd; d++) concat.push(js.reduce((s, j, m) => s + (e[m]! / z) * vs[j]![g * hd + d]!, 0));
        }
        return mv(mat(`${a}.o_proj.weight`), concat, biasOf(`${a}.o_proj.bias`));
      });
    }
    xs = xs.map((x, i) => x.map((v, d) => v + attnOut[i]![d]!));

    const denseLayer =
      ((type === 'qwen2_moe' || type === 'qwen3_moe') && (((cfg.mlp_only_layers as number[]) ?? []).includes(l) || (l + 1) % ((cfg.decoder_sparse_step as number) ?? 1) !== 0)) ||
      (type === 'deepseek_v2' && l < n(cfg, 'first_k_dense_replace'));
    const layerRouting: number[][] = [];
    xs = xs.map((x) => {
      const h = rms(x, vals(`${p}.post_attention_layernorm.weight`));
      let out = new Array<number>(H).fill(0);
      if (denseLayer) {
        out = mlp(`${p}.mlp`, h);
        layerRouting.push([]);
      } else if (type !== 'gpt_oss') {
        const m = type === 'mixtral' ? `${p}.block_sparse_moe` : `${p}.mlp`;
        const ex = mv(mat(`${m}.gate.weight`), h).map(Math.exp);
        const prob = ex.map((v) => v / ex.reduce((s, u) => s + u, 0));
        let chosen: Array<[number, number]>;
        if (dense) chosen = prob.map((pe, e) => [e, pe]);
        else chosen = argmaxOrder(prob, k).map((e) => [e, prob[e]!]);
        const sum = chosen.reduce((s, [, w]) => s + w, 0);
        if (type === 'deepseek_v2') {
          if (cfg.norm_topk_prob && k > 1) chosen = chosen.map(([e, w]) => [e, w / (sum + 1e-20)]);
          else chosen = chosen.map(([e, w]) => [e, w * n(cfg, 'routed_scaling_factor')]);
        } else if (type === 'mixtral' || cfg.norm_topk_prob) chosen = chosen.map(([e, w]) => [e, w / sum]);
        layerRouting.push(chosen.map(([e]) => e));
        for (const [e, w] of chosen) {
          const y = type === 'mixtral' ? mlp(`${m}.experts.${e}`, h, ['w1', 'w3', 'w2']) : mlp(`${m}.experts.${e}`, h);
          out = out.map((v, d) => v + w * y[d]!);
        }
        if (type === 'qwen2_moe') {
          const gate = 1 / (1 + Math.exp(-dot(vals(`${m}.shared_expert_gate.weight`), h)));
          const y = mlp(`${m}.shared_expert`, h);
          out = out.map((v, d) => v + gate * y[d]!);
        }
        if (type === 'deepseek_v2') {
          const y = mlp(`${m}.shared_experts`, h);
          out = out.map((v, d) => v + y[d]!);
        }
      } else {
        const m = `${p}.mlp`;
        const I = n(cfg, 'intermediate_size');
        const z = mv(mat(`${m}.router.weight`), h, vals(`${m}.router.bias`));
        const ids = argmaxOrder(z, k);
        const ez = ids.map((e) => Math.exp(z[e]!));
        layerRouting.push(ids);
        const gu = t.get(`${m}.experts.gate_up_proj`)!.values; // [E, H, 2I]
        const gub = t.get(`${m}.experts.gate_up_proj_bias`)!.values; // [E, 2I]
        const dn = t.get(`${m}.experts.down_proj`)!.values; // [E, I, H]
        const dnb = t.get(`${m}.experts.down_proj_bias`)!.values; // [E, H]
        const limit = n(cfg, 'swiglu_limit');
        ids.forEach((e, r) => {
          const w = ez[r]! / ez.reduce((s, v) => s + v, 0);
          const act: number[] = [];
          for (let c = 0; c < I; c++) {
            let gate = gub[e * 2 * I + 2 * c]!;
            let up = gub[e * 2 * I + 2 * c + 1]!;
            for (let d = 0; d < H; d++) {
              gate += h[d]! * gu[e * H * 2 * I + d * 2 * I + 2 * c]!;
              up += h[d]! * gu[e * H * 2 * I + d * 2 * I + 2 * c + 1]!;
            }
            if (gate > limit) gate = limit;
            if (up > limit) up = limit;
            if (up < -limit) up = -limit;
            act.push((up + 1) * gate * (1 / (1 + Math.exp(-1.702 * gate))));
          }
          for (let d = 0; d < H; d++) {
            let y = dnb[e * H + d]!;
            for (let c = 0; c < I; c++) y += act[c]! * dn[e * I * H + c * H + d]!;
            out[d] = out[d]! + w * y;
          }
        });
      }
      return x.map((v, d) => v + out[d]!);
    });
    routing.push(layerRouting);
  }
  const lm = cfg.tie_word_embeddings ? embed : mat('lm_head.weight');
  const logits = xs.map((x) => mv(lm, rms(x, vals('model.norm.weight'))));
  return { logits, routing };
}

const HAND: Json = {
  hidden_size: 4,
  num_hidden_layers: 1,
  num_attention_heads: 2,
  num_key_value_heads: 1,
  vocab_size: 5,
  rms_norm_eps: 1e-5,
  rope_theta: 100,
  max_position_embeddings: 64,
  num_experts_per_tok: 2,
  tie_word_embeddings: false,
};

const HAND_MIXTRAL: Json = { ...HAND, model_type: 'mixtral', head_dim: 4 /* != hidden / heads */, num_local_experts: 3, intermediate_size: 3, sliding_window: null };

const HAND_GPT_OSS: Json = {
  ...HAND,
  model_type: 'gpt_oss',
  num_hidden_layers: 2,
  head_dim: 4,
  rope_theta: 150000,
  max_position_embeddings: 131072,
  num_local_experts: 3,
  intermediate_size: 3,
  sliding_window: 2,
  layer_types: ['sliding_attention', 'full_attention'],
  swiglu_limit: 0.1, // small enough that the clamps engage on these weights
  attention_bias: true,
  rope_scaling: { rope_type: 'yarn', factor: 32, beta_fast: 32, beta_slow: 1, truncate: false, original_max_position_embeddings: 4096 },
};

const HAND_QWEN2: Json = {
  ...HAND,
  model_type: 'qwen2_moe',
  num_hidden_layers: 2,
  num_experts: 3,
  moe_intermediate_size: 3,
  shared_expert_intermediate_size: 5,
  intermediate_size: 6,
  norm_topk_prob: false,
  decoder_sparse_step: 1,
  mlp_only_layers: [1],
};

const HAND_DEEPSEEK: Json = {
  ...HAND,
  model_type: 'deepseek_v2',
  hidden_size: 8,
  num_hidden_layers: 2,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  max_position_embeddings: 163840,
  q_lora_rank: null,
  kv_lora_rank: 4,
  qk_nope_head_dim: 2,
  qk_rope_head_dim: 4,
  v_head_dim: 3,
  n_routed_experts: 3,
  n_shared_experts: 1,
  moe_intermediate_size: 2,
  intermediate_size: 5,
  first_k_dense_replace: 1,
  topk_method: 'greedy',
  routed_scaling_factor: 2.5,
  norm_topk_prob: false,
  scoring_func: 'softmax',
  rope_scaling: { type: 'yarn', factor: 40, mscale: 0.707, mscale_all_dim: 0.707, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1 },
};

const HAND_CASES: Array<[string, Json]> = [
  ['mixtral, hidden 4, 1 layer, GQA 2:1, head_dim 4', HAND_MIXTRAL],
  ['mixtral, sliding_window 2', { ...HAND_MIXTRAL, sliding_window: 2 }],
  ['mixtral, tied embeddings, top-1 of 3', { ...HAND_MIXTRAL, tie_word_embeddings: true, num_experts_per_tok: 1 }],
  ['qwen2_moe, q/k/v biases, sigmoid-gated shared expert, dense layer 1', HAND_QWEN2],
  ['qwen2_moe, norm_topk_prob', { ...HAND_QWEN2, norm_topk_prob: true, mlp_only_layers: [] }],
  ['qwen3_moe, per-head q_norm / k_norm, norm_topk_prob, dense layer 0', { ...HAND_QWEN2, model_type: 'qwen3_moe', head_dim: 4, norm_topk_prob: true, mlp_only_layers: [0] }],
  ['olmoe, whole-projection q_norm / k_norm, clip_qkv 0.3', { ...HAND, model_type: 'olmoe', num_key_value_heads: 2, num_experts: 3, intermediate_size: 3, norm_topk_prob: false, clip_qkv: 0.3 }],
  ['deepseek_v2, MLA, V2-Lite yarn (mscale^2 softmax scale), routed_scaling_factor, shared expert', HAND_DEEPSEEK],
  ['deepseek_v2, q_lora_rank 3, no rope scaling, norm_topk_prob', { ...HAND_DEEPSEEK, q_lora_rank: 3, rope_scaling: null, norm_topk_prob: true }],
  ['gpt_oss, sliding + full layers, sinks, yarn, clamped SwiGLU', HAND_GPT_OSS],
];

for (const [name, cfg] of HAND_CASES) {
  void test(`hand-computed logits: ${name}`, async () => {
    for (const seed of [1, 2, 3]) {
      const { ref, tensors } = await tiny(cfg, seed);
      const tokens = [3, 1, 4, 1, 0];
      const got = ref.forward(tokens);
      const want = naiveForward(cfg, tensors, tokens);
      assert.ok(relDiff(got, want.logits.flat()) <= 1e-12, `seed ${seed}: ${relDiff(got, want.logits.flat())}`);
      assert.deepEqual(ref.lastRouting, want.routing);
    }
  });
}

void test('the hand-computed cases exercise what they claim: clamps, clip_qkv, mscale, routed_scaling_factor change the result', async () => {
  const tokens = [3, 1, 4, 1, 0];
  const pairs: Array<[string, Json, Json]> = [
    ['gpt-oss swiglu_limit', HAND_GPT_OSS, { ...HAND_GPT_OSS, swiglu_limit: 7 }],
    ['olmoe clip_qkv', HAND_CASES[6]![1], { ...HAND_CASES[6]![1], clip_qkv: null }],
    ['deepseek mscale_all_dim', HAND_DEEPSEEK, { ...HAND_DEEPSEEK, rope_scaling: { ...(HAND_DEEPSEEK.rope_scaling as Json), mscale: 0, mscale_all_dim: 0 } }],
    ['deepseek routed_scaling_factor', HAND_DEEPSEEK, { ...HAND_DEEPSEEK, routed_scaling_factor: 1 }],
  ];
  for (const [what, cfg, other] of pairs) {
    const tensors = buildTensors(cfg, 1);
    const a = naiveForward(cfg, tensors, tokens).logits.flat();
    const b = naiveForward(other, tensors, tokens).logits.flat();
    assert.ok(relDiff(a, b) > 1e-6, what);
    assert.ok(relDiff(loadReferenceModel(await save(other, tensors)).forward(tokens), b) <= 1e-12, what);
  }
});

// ---- MoE == dense mixture -------------------------------------------------------------------------------------

void test('top_k = num_experts with renormalisation equals the dense softmax mixture of all experts (Mixtral)', async () => {
  const cfg = { ...FAMILIES.mixtral!, num_local_experts: 4, num_experts_per_tok: 4, num_hidden_layers: 2 };
  const { ref, tensors } = await tiny(cfg, 21);
  const tokens = tokensOf(6, n(cfg, 'vocab_size'), 3);
  const dense = naiveForward(cfg, tensors, tokens, true).logits.flat();
  assert.ok(relDiff(ref.forward(tokens), dense) <= 1e-12);
  // and top-2 of the same weights is a different function
  const top2 = loadReferenceModel(await save({ ...cfg, num_experts_per_tok: 2 }, tensors));
  assert.ok(relDiff(top2.forward(tokens), dense) > 1e-6);
});

/** Qwen2-MoE tensors carrying a Mixtral checkpoint's weights (no attention biases). */
function qwenFromMixtral(mix: Tensors, L: number, dense: boolean, H: number, sharedI: number): Tensors {
  const out: Tensors = new Map();
  for (const [name, v] of mix) {
    const m = /^model\.layers\.(\d+)\.block_sparse_moe\.(gate|experts\.(\d+)\.(w1|w2|w3))\.weight$/.exec(name);
    if (!m) {
      out.set(name, v);
      continue;
    }
    const p = `model.layers.${m[1]}.mlp`;
    const proj = { w1: 'gate_proj', w3: 'up_proj', w2: 'down_proj' }[m[4] as 'w1' | 'w2' | 'w3'];
    if (dense) {
      if (m[3] === '0') out.set(`${p}.${proj}.weight`, v);
    } else if (m[2] === 'gate') out.set(`${p}.gate.weight`, v);
    else out.set(`${p}.experts.${m[3]}.${proj}.weight`, v);
  }
  if (!dense) {
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}.mlp`;
      const g = new Gen(l);
      out.set(`${p}.shared_expert.gate_proj.weight`, { shape: [sharedI, H], values: g.values(sharedI * H) });
      out.set(`${p}.shared_expert.up_proj.weight`, { shape: [sharedI, H], values: g.values(sharedI * H) });
      out.set(`${p}.shared_expert.down_proj.weight`, { shape: [H, sharedI], values: new Float64Array(H * sharedI) }); // contributes 0
      out.set(`${p}.shared_expert_gate.weight`, { shape: [1, H], values: g.values(H) });
    }
  }
  return out;
}

void test('Mixtral with one expert is exactly one SwiGLU MLP: equals Qwen2-MoE with every layer dense (mlp_only_layers)', async () => {
  const mixCfg: Json = { ...FAMILIES.mixtral!, num_local_experts: 1, num_experts_per_tok: 1 };
  const { ref: mix, tensors } = await tiny(mixCfg, 31);
  const H = n(mixCfg, 'hidden_size');
  const qwenCfg = { ...FAMILIES.qwen2_moe!, intermediate_size: n(mixCfg, 'intermediate_size'), mlp_only_layers: [0, 1], rope_theta: mixCfg.rope_theta };
  const qwen = loadReferenceModel(await save(qwenCfg, qwenFromMixtral(tensors, 2, true, H, 0)));
  const tokens = tokensOf(7, n(mixCfg, 'vocab_size'), 9);
  assert.equal(relDiff(qwen.forward(tokens), mix.forward(tokens)), 0);
  assert.deepEqual(mix.lastRouting, [Array.from({ length: 7 }, () => [0]), Array.from({ length: 7 }, () => [0])]);
});

void test('top_k = E: Qwen2-MoE (zero shared expert, either norm_topk_prob) equals Mixtral on the same weights', async () => {
  const E = 4;
  const mixCfg = { ...FAMILIES.mixtral!, num_local_experts: E, num_experts_per_tok: E };
  const { ref: mix, tensors } = await tiny(mixCfg, 41);
  const H = n(mixCfg, 'hidden_size');
  const tokens = tokensOf(7, n(mixCfg, 'vocab_size'), 13);
  const want = mix.forward(tokens);
  for (const norm of [false, true]) {
    const qwenCfg = { ...FAMILIES.qwen2_moe!, num_experts: E, num_experts_per_tok: E, moe_intermediate_size: n(mixCfg, 'intermediate_size'), norm_topk_prob: norm };
    const qwen = loadReferenceModel(await save(qwenCfg, qwenFromMixtral(tensors, 2, false, H, 24)));
    assert.ok(relDiff(qwen.forward(tokens), want) <= 1e-12, `norm_topk_prob ${norm}`);
  }
});

// ---- RoPE: scores depend on relative position only ------------------------------------------------------------

/**
 * Embedding rows share dims 0..1 and hold a permutation of one fixed multiset elsewhere, so every token has the
 * same RMS; q / k (and DeepSeek's kv_a) weights read dims 0..1 only. Then layer 0's q and k differ by position
 * alone, and the rotary embedding must make score(i, j) a function of i - j.
 */
function ropePattern(cfg: Json, seed: number): Tensors {
  const t = buildTensors(cfg, seed);
  const H = n(cfg, 'hidden_size');
  const V = n(cfg, 'vocab_size');
  const r = rng(seed + 100);
  const base = new Gen(seed + 200).values(H - 2);
  const emb = new Float64Array(V * H);
  for (let v = 0; v < V; v++) {
    const perm = Array.from(base);
    for (let i = perm.length - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [perm[i], perm[j]] = [perm[j]!, perm[i]!];
    }
    emb.set([0.5, -0.25, ...perm], v * H);
  }
  t.set('model.embed_tokens.weight', { shape: [V, H], values: emb });
  for (const name of ['q_proj', 'k_proj', 'q_a_proj', 'kv_a_proj_with_mqa']) {
    const w = t.get(`model.layers.0.self_attn.${name}.weight`);
    if (!w) continue;
    const cols = w.shape[1]!;
    for (let o = 0; o < w.shape[0]!; o++) for (let i = 2; i < cols; i++) w.values[o * cols + i] = 0;
  }
  return t;
}

for (const type of ['mixtral', 'qwen3_moe', 'olmoe', 'deepseek_v2', 'gpt_oss']) {
  void test(`RoPE (${type}): with q/k reading only token-independent dims, layer-0 scores depend on i - j only`, async () => {
    const cfg = FAMILIES[type]!;
    const ref = loadReferenceModel(await save(cfg, ropePattern(cfg, 51)));
    const T = 7;
    ref.forward(tokensOf(T, n(cfg, 'vocab_size'), 17));
    const heads = ref.lastScores[0]!;
    assert.equal(heads.length, n(cfg, 'num_attention_heads'));
    for (const s of heads) {
      const scale = Math.max(1e-9, maxAbs(s.filter((v) => !Number.isNaN(v))));
      for (let i = 0; i < T; i++) {
        for (let j = 0; j < T; j++) {
          const v = s[i * T + j]!;
          assert.equal(Number.isNaN(v), j > i || (type === 'gpt_oss' && i - j >= 3), `mask at (${i}, ${j})`);
          if (Number.isNaN(v) || i === 0 || j === 0) continue;
          assert.ok(Math.abs(v - s[(i - 1) * T + (j - 1)]!) <= 1e-12 * scale, `score(${i}, ${j}) == score(${i - 1}, ${j - 1})`);
        }
      }
      // and RoPE does rotate: different offsets give different scores
      assert.ok(Math.abs(s[2 * T + 2]! - s[2 * T + 0]!) > 1e-6 * scale || Math.abs(s[2 * T + 1]! - s[2 * T + 0]!) > 1e-6 * scale);
    }
  });
}

void test('RoPE control: with q/k reading every dim, scores are not a function of i - j alone', async () => {
  const cfg = FAMILIES.mixtral!;
  const ref = loadReferenceModel(await save(cfg, buildTensors(cfg, 51)));
  const T = 7;
  ref.forward(tokensOf(T, n(cfg, 'vocab_size'), 17));
  const s = ref.lastScores[0]![0]!;
  let worst = 0;
  for (let i = 1; i < T; i++) for (let j = 1; j <= i; j++) worst = Math.max(worst, Math.abs(s[i * T + j]! - s[(i - 1) * T + j - 1]!));
  assert.ok(worst > 1e-6);
});

// ---- real configs, shrunk --------------------------------------------------------------------------------------

const REAL_CONFIGS = path.join(__dirname, '..', '..', '..', 'shared', 'data', 'model-configs.json');

/** A real config.json with its sizes cut down and every other key (rope scaling, norms, routing flags) kept. */
function shrink(real: Json): Json {
  const c: Json = { ...real, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 40 };
  c.num_key_value_heads = real.num_key_value_heads === real.num_attention_heads ? 4 : 2;
  if (typeof real.head_dim === 'number') c.head_dim = 8;
  for (const key of ['intermediate_size', 'moe_intermediate_size', 'shared_expert_intermediate_size']) if (typeof real[key] === 'number') c[key] = 16;
  const k = real.num_experts_per_tok as number;
  for (const key of ['num_local_experts', 'num_experts', 'n_routed_experts']) if (typeof real[key] === 'number') c[key] = k + 2;
  if (real.model_type === 'deepseek_v2') {
    Object.assign(c, { kv_lora_rank: 16, qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 8, q_lora_rank: real.q_lora_rank === null ? null : 12 });
    c.first_k_dense_replace = Math.min(1, real.first_k_dense_replace as number);
  }
  if (Array.isArray(real.mlp_only_layers)) c.mlp_only_layers = [];
  if (typeof real.layer_types === 'string') c.layer_types = ['sliding_attention', 'full_attention']; // the data file abbreviates it
  return c;
}

void test('every real config of a supported family (shared/data/model-configs.json), shrunk, loads and runs causally; others are refused by name', async () => {
  const all = JSON.parse(fs.readFileSync(REAL_CONFIGS, 'utf8')) as Record<string, { config: Json }>;
  let ran = 0;
  for (const [name, { config }] of Object.entries(all)) {
    const type = config.model_type as string;
    if (!(type in FAMILIES)) {
      const dir = await save(config, new Map());
      assert.throws(() => loadReferenceModel(dir), new RegExp(`model_type "${type}" is not supported`), name);
      continue;
    }
    const cfg = shrink(config);
    const { ref } = await tiny(cfg, 91);
    const V = n(cfg, 'vocab_size');
    const tokens = tokensOf(6, V, 29);
    const logits = ref.forward(tokens);
    assert.ok(logits.length === 6 * V && logits.every(Number.isFinite), name);
    assert.equal(relDiff(ref.forward(tokens.slice(0, 3)), logits.subarray(0, 3 * V)), 0, name);
    ran++;
  }
  assert.ok(ran >= 10, `${ran} real configs ran`);
});

// ---- storage: shards and dtypes --------------------------------------------------------------------------------

void test('a sharded checkpoint (index.json weight_map) gives the same logits as one file', async () => {
  for (const type of ['mixtral', 'deepseek_v2', 'gpt_oss']) {
    const cfg = FAMILIES[type]!;
    const tensors = buildTensors(cfg, 61);
    const single = await save(cfg, tensors);
    const sharded = await save(cfg, tensors, { maxShardBytes: 16 * 1024 });
    assert.ok(fs.existsSync(path.join(sharded, 'model.safetensors.index.json')));
    assert.ok(fs.readdirSync(sharded).filter((f) => f.endsWith('.safetensors')).length >= 3, 'several shards');
    assert.ok(!fs.existsSync(path.join(single, 'model.safetensors.index.json')));
    const tokens = tokensOf(6, n(cfg, 'vocab_size'), 19);
    assert.equal(relDiff(loadReferenceModel(sharded).forward(tokens), loadReferenceModel(single).forward(tokens)), 0, type);
  }
});

void test('bf16Activations: activations rounded where a bf16 deployment stores them move the logits by bf16 rounding only, for that call', async () => {
  for (const type of ['mixtral', 'deepseek_v2', 'gpt_oss']) {
    const cfg = FAMILIES[type]!;
    const ref = loadReferenceModel(await save(cfg, buildTensors(cfg, 81)));
    const tokens = tokensOf(7, n(cfg, 'vocab_size'), 29);
    const exact = ref.forward(tokens);
    const rounded = ref.forward(tokens, { bf16Activations: true });
    const d = relDiff(rounded, exact);
    // bf16 keeps 8 significant bits: a relative change of at most 2^-9 per element rounded
    assert.ok(d > 0 && d < 1e-2, `${type}: ${d}`);
    assert.equal(relDiff(ref.forward(tokens), exact), 0, `${type}: the next call without it is exact again`);
  }
});

void test('BF16, F16 and F32 weights of the same values give the same logits (exact decoding)', async () => {
  const cfg = FAMILIES.qwen2_moe!;
  const tensors = buildTensors(cfg, 71);
  const tokens = tokensOf(6, n(cfg, 'vocab_size'), 23);
  const outs = [];
  for (const dtype of ['bf16', 'f16', 'f32'] as const) outs.push(loadReferenceModel(await save(cfg, tensors, { dtype })).forward(tokens));
  assert.equal(relDiff(outs[1]!, outs[0]!), 0);
  assert.equal(relDiff(outs[2]!, outs[0]!), 0);
});

// ---- errors ----------------------------------------------------------------------------------------------------

void test('unsupported model_type, missing tensor, wrong shape and bad token are errors that name the culprit', async () => {
  const cfg = FAMILIES.mixtral!;
  const tensors = buildTensors(cfg, 81);
  await assert.rejects(async () => loadReferenceModel(await save({ ...cfg, model_type: 'llama4_text' }, tensors)), /model_type "llama4_text" is not supported/);
  const missing = new Map(tensors);
  missing.delete('model.layers.1.block_sparse_moe.experts.5.w2.weight');
  await assert.rejects(async () => loadReferenceModel(await save(cfg, missing)), /model\.layers\.1\.block_sparse_moe\.experts\.5\.w2\.weight is missing/);
  await assert.rejects(async () => loadReferenceModel(await save({ ...cfg, intermediate_size: 8 }, tensors)), /experts\.0\.w1\.weight has shape \[16, 32\], expected \[8, 32\]/);
  const ref = loadReferenceModel(await save(cfg, tensors));
  assert.throws(() => ref.forward([1, 40]), /token 1 = 40 is outside \[0, 40\)/);
});
