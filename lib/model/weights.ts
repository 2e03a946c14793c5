/**
 * The dense (non-expert) tensors of a MoE checkpoint: their HF names and shapes per family (one table, used by the
 * loader to validate a checkpoint before reading it and by makeModel to write one), and loading them onto a
 * backend in the layouts the forward pass uses:
 *   - projections and the LM head as bf16 [out, in] (nn.Linear layout; gemm's b operand);
 *   - norm weights and biases as f32 (they meet f32 activations);
 *   - shared experts and dense MLPs as one-expert ExpertTables (moeExperts with E = 1 computes a SwiGLU MLP).
 * Experts themselves go to the ExpertStore (lib/residency/expert-store.ts).
 */
import type { Backend } from '../backend.js';
import { CheckpointFormatError, UnsupportedModelError } from '../errors.js';
import type { ExpertTable } from '../moe.js';
import { HostTensor, type Tensor } from '../tensor.js';
import { type ModelConfig, expertTensorNames } from './config.js';
import { gptOssLayout } from './gpt-oss.js';
import type { Checkpoint } from './safetensors.js';

/** How makeModel initialises a tensor (the loader ignores it). */
export type InitKind = 'embed' | 'linear' | 'norm' | 'bias' | 'router' | 'sink';

export interface TensorSpec {
  name: string;
  shape: number[];
  init: InitKind;
}

/** One SwiGLU MLP's tensor names (gate [I, H], up [I, H], down [H, I]). */
export interface MlpNames {
  gate: string;
  up: string;
  down: string;
  inter: number;
}

/** HF tensor names of one decoder layer (absent parts undefined). */
export interface LayerNames {
  inputNorm: string;
  postNorm: string;
  /** Multi-head attention projections (absent with MLA). */
  q?: string;
  k?: string;
  v?: string;
  o: string;
  /** DeepSeek multi-head latent attention: q_proj (or q_a_proj, q_a_layernorm, q_b_proj with q_lora_rank), kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj. */
  mla?: { q?: string; qA?: string; qANorm?: string; qB?: string; kvA: string; kvANorm: string; kvB: string };
  qBias?: string;
  /** gpt-oss: o_proj bias [H] and per-head attention sink logits [heads]. */
  oBias?: string;
  sinks?: string;
  kBias?: string;
  vBias?: string;
  /** Qwen3: [headDim] per head; OLMoE: [heads * headDim] over the whole projection. */
  qNorm?: string;
  kNorm?: string;
  /** MoE layers: the router [E, H] (gpt-oss: with a bias [E]). */
  router?: string;
  routerBias?: string;
  shared?: MlpNames;
  /** Qwen2-MoE: sigmoid gate [1, H] of the shared expert. */
  sharedGate?: string;
  /** Dense (non-MoE) layers. */
  mlp?: MlpNames;
}

/** Families the runtime executes (the config parser knows more). */
export const RUNTIME_FAMILIES = ['mixtral', 'qwen2_moe', 'qwen3_moe', 'olmoe', 'deepseek_v2', 'gpt_oss'] as const;

export function checkRuntimeFamily(cfg: ModelConfig, source: string): void {
  if (!(RUNTIME_FAMILIES as readonly string[]).includes(cfg.family)) {
    const what = cfg.family === 'deepseek_v3' ? 'sigmoid group-limited routing (noaux_tc)' : cfg.family;
    throw new UnsupportedModelError(
      `${source}: ${cfg.architecture} (model_type ${cfg.family}) parses, but the runtime does not execute ${what} yet; runnable families: ${RUNTIME_FAMILIES.join(', ')}`,
    );
  }
  if (cfg.router.nGroup > 1 && cfg.router.topkGroup < cfg.router.nGroup) {
    throw new UnsupportedModelError(`${source}: group-limited expert selection (n_group ${cfg.router.nGroup}, topk_group ${cfg.router.topkGroup}) is not executed yet`);
  }
  if (cfg.mla && attentionHeadDim(cfg) === 0) {
    throw new UnsupportedModelError(`${source}: MLA head dims qk ${cfg.headDim} / v ${cfg.mla.vHeadDim} exceed the attention kernel's 256`);
  }
}

/**
 * Head dim of the KV cache and the attention kernel: the model's head_dim (64, 128 or 256), or for MLA the
 * smallest of those that holds both the qk dim (nope + rope) and the v dim: MLA runs as multi-head attention over
 * decompressed per-head keys and values, zero-padded (zeros change no dot product). 0: none fits.
 */
export function attentionHeadDim(cfg: ModelConfig): number {
  const need = cfg.mla ? Math.max(cfg.headDim, cfg.mla.vHeadDim) : cfg.headDim;
  if (!cfg.mla) return need === 64 || need === 128 || need === 256 ? need : 0;
  return [64, 128, 256].find((d) => d >= need) ?? 0;
}

/** The names of layer `l`'s dense tensors. */
export function layerNames(cfg: ModelConfig, l: number): LayerNames {
  const p = `model.layers.${l}`;
  const a = `${p}.self_attn`;
  const n: LayerNames = {
    inputNorm: `${p}.input_layernorm.weight`,
    postNorm: `${p}.post_attention_layernorm.weight`,
    o: `${a}.o_proj.weight`,
  };
  if (cfg.mla) {
    const kv = { kvA: `${a}.kv_a_proj_with_mqa.weight`, kvANorm: `${a}.kv_a_layernorm.weight`, kvB: `${a}.kv_b_proj.weight` };
    n.mla = cfg.mla.qLoraRank === null ? { q: `${a}.q_proj.weight`, ...kv } : { qA: `${a}.q_a_proj.weight`, qANorm: `${a}.q_a_layernorm.weight`, qB: `${a}.q_b_proj.weight`, ...kv };
  } else {
    n.q = `${a}.q_proj.weight`;
    n.k = `${a}.k_proj.weight`;
    n.v = `${a}.v_proj.weight`;
  }
  if (cfg.family === 'gpt_oss') {
    if (cfg.attentionBias) n.oBias = `${a}.o_proj.bias`;
    n.sinks = `${a}.sinks`;
  }
  if (cfg.attentionBias) {
    n.qBias = `${a}.q_proj.bias`;
    n.kBias = `${a}.k_proj.bias`;
    n.vBias = `${a}.v_proj.bias`;
  }
  if (cfg.qkNorm) {
    n.qNorm = `${a}.q_norm.weight`;
    n.kNorm = `${a}.k_norm.weight`;
  }
  const moe = cfg.moeLayers.includes(l);
  const mlp = cfg.family === 'mixtral' ? `${p}.block_sparse_moe` : `${p}.mlp`;
  if (moe) {
    if (cfg.family === 'gpt_oss') {
      n.router = `${mlp}.router.weight`;
      n.routerBias = `${mlp}.router.bias`;
    } else {
      n.router = `${mlp}.gate.weight`;
    }
    if (cfg.sharedExperts) {
      const s = `${mlp}.shared_expert${cfg.family === 'qwen2_moe' ? '' : 's'}`;
      n.shared = { gate: `${s}.gate_proj.weight`, up: `${s}.up_proj.weight`, down: `${s}.down_proj.weight`, inter: cfg.sharedExperts.intermediateSize };
      if (cfg.sharedExperts.gated) n.sharedGate = `${mlp}.shared_expert_gate.weight`;
    }
  } else {
    n.mlp = { gate: `${mlp}.gate_proj.weight`, up: `${mlp}.up_proj.weight`, down: `${mlp}.down_proj.weight`, inter: cfg.denseIntermediateSize };
  }
  return n;
}

/** Every dense tensor of the model with its shape (embeddings, layers, final norm, LM head unless tied). */
export function denseTensorSpecs(cfg: ModelConfig): TensorSpec[] {
  const H = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [cfg.vocabSize, H], init: 'embed' }];
  const mlpSpecs = (m: MlpNames) => [
    { name: m.gate, shape: [m.inter, H], init: 'linear' as const },
    { name: m.up, shape: [m.inter, H], init: 'linear' as const },
    { name: m.down, shape: [H, m.inter], init: 'linear' as const },
  ];
  for (let l = 0; l < cfg.numLayers; l++) {
    const n = layerNames(cfg, l);
    specs.push({ name: n.inputNorm, shape: [H], init: 'norm' });
    if (n.mla) {
      const m = cfg.mla!;
      const qk = m.qkNopeHeadDim + m.qkRopeHeadDim;
      if (n.mla.q) specs.push({ name: n.mla.q, shape: [cfg.numHeads * qk, H], init: 'linear' });
      else {
        specs.push({ name: n.mla.qA!, shape: [m.qLoraRank!, H], init: 'linear' }, { name: n.mla.qANorm!, shape: [m.qLoraRank!], init: 'norm' });
        specs.push({ name: n.mla.qB!, shape: [cfg.numHeads * qk, m.qLoraRank!], init: 'linear' });
      }
      specs.push({ name: n.mla.kvA, shape: [m.kvLoraRank + m.qkRopeHeadDim, H], init: 'linear' }, { name: n.mla.kvANorm, shape: [m.kvLoraRank], init: 'norm' });
      specs.push({ name: n.mla.kvB, shape: [cfg.numHeads * (m.qkNopeHeadDim + m.vHeadDim), m.kvLoraRank], init: 'linear' });
    } else {
      specs.push({ name: n.q!, shape: [qDim, H], init: 'linear' }, { name: n.k!, shape: [kvDim, H], init: 'linear' }, { name: n.v!, shape: [kvDim, H], init: 'linear' });
    }
    if (n.qBias) specs.push({ name: n.qBias, shape: [qDim], init: 'bias' }, { name: n.kBias!, shape: [kvDim], init: 'bias' }, { name: n.vBias!, shape: [kvDim], init: 'bias' });
    if (n.qNorm) {
      const perHead = cfg.family !== 'olmoe';
      specs.push({ name: n.qNorm, shape: [perHead ? cfg.headDim : qDim], init: 'norm' }, { name: n.kNorm!, shape: [perHead ? cfg.headDim : kvDim], init: 'norm' });
    }
    specs.push({ name: n.o, shape: [H, cfg.mla ? cfg.numHeads * cfg.mla.vHeadDim : qDim], init: 'linear' });
    if (n.oBias) specs.push({ name: n.oBias, shape: [H], init: 'bias' });
    if (n.sinks) specs.push({ name: n.sinks, shape: [cfg.numHeads], init: 'sink' });
    specs.push({ name: n.postNorm, shape: [H], init: 'norm' });
    if (n.router) specs.push({ name: n.router, shape: [cfg.numExperts, H], init: 'router' });
    if (n.routerBias) specs.push({ name: n.routerBias, shape: [cfg.numExperts], init: 'bias' });
    if (n.shared) specs.push(...mlpSpecs(n.shared));
    if (n.sharedGate) specs.push({ name: n.sharedGate, shape: [1, H], init: 'linear' });
    if (n.mlp) specs.push(...mlpSpecs(n.mlp));
  }
  specs.push({ name: 'model.norm.weight', shape: [H], init: 'norm' });
  if (!cfg.tieWordEmbeddings) specs.push({ name: 'lm_head.weight', shape: [cfg.vocabSize, H], init: 'linear' });
  return specs;
}

/**
 * Checks that every tensor the runtime reads (dense ones and every routed expert's) exists with the right shape
 * and a float dtype, before anything is allocated. Throws CheckpointFormatError naming the first culprit.
 */
export function validateCheckpoint(ckpt: Checkpoint, cfg: ModelConfig): void {
  const check = (name: string, shape: readonly number[]) => {
    if (!ckpt.has(name)) throw new CheckpointFormatError(ckpt.dir, name, `missing: the ${cfg.architecture} config needs it (shape [${shape.join(', ')}])`);
    const info = ckpt.tensor(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointFormatError(ckpt.dir, name, `shape [${info.shape.join(', ')}] does not match the config, which implies [${shape.join(', ')}]`);
    }
    if (info.dtype !== 'BF16' && info.dtype !== 'F16' && info.dtype !== 'F32') {
      throw new CheckpointFormatError(ckpt.dir, name, `dtype ${info.dtype} is not supported (BF16, F16 or F32)`);
    }
  };
  for (const s of denseTensorSpecs(cfg)) check(s.name, s.shape);
  const H = cfg.hiddenSize;
  const I = cfg.moeIntermediateSize;
  for (const l of cfg.moeLayers) {
    if (cfg.family === 'gpt_oss') {
      gptOssLayout(ckpt, cfg, l);
      continue;
    }
    for (let e = 0; e < cfg.numExperts; e++) {
      const n = expertTensorNames(cfg, l, e);
      check(n.gate, [I, H]);
      check(n.up, [I, H]);
      check(n.down, [H, I]);
    }
  }
}

/** One layer's dense weights on the backend. */
/**
 * MLA projections, split and reordered at load: the rope part of q and of the shared key gets its rows permuted
 * from DeepSeek's interleaved pairs (x0, x1), (x2, x3) .. to the half-split order (x0, x2, .., x1, x3, ..), so
 * Backend.rope's rotate_half convention applies; q and k are permuted alike, so every q.k is unchanged.
 */
export interface MlaWeights {
  qA?: Tensor; // [qLoraRank, H] bf16
  qANorm?: Tensor; // [qLoraRank] f32
  qNope: Tensor; // [heads*nope, H or qLoraRank] bf16
  qPe: Tensor; // [heads*rope, H or qLoraRank] bf16 (rows permuted)
  kvC: Tensor; // [kvLoraRank, H] bf16 (the compressed latent)
  kPe: Tensor; // [rope, H] bf16 (rows permuted; one rope key shared by all heads)
  kvANorm: Tensor; // [kvLoraRank] f32
  kNope: Tensor; // [heads*nope, kvLoraRank] bf16
  v: Tensor; // [heads*v, kvLoraRank] bf16
}

export interface LayerWeights {
  inputNorm: Tensor; // [H] f32
  postNorm: Tensor; // [H] f32
  q?: Tensor; // [heads*hd, H] bf16
  k?: Tensor; // [kvHeads*hd, H] bf16
  v?: Tensor; // [kvHeads*hd, H] bf16
  mla?: MlaWeights;
  o: Tensor; // [H, heads*hd] (MLA: [H, heads*v]) bf16
  qBias?: Tensor; // [heads*hd] f32
  oBias?: Tensor; // [H] f32
  sinks?: Tensor; // [heads] f32
  kBias?: Tensor;
  vBias?: Tensor;
  qNorm?: Tensor; // [hd] or [heads*hd] f32
  kNorm?: Tensor;
  router?: Tensor; // [E, H] f32 (routing in f32)
  routerBias?: Tensor; // [E] f32
  shared?: ExpertTable; // one expert: the shared expert(s)
  sharedGate?: Tensor; // [1, H] bf16
  mlp?: ExpertTable; // dense layer's MLP as a one-expert table
}

export interface DenseWeights {
  embed: HostTensor; // [V, H] bf16 (host: the embedding lookup reads rows; uploaded too on CUDA)
  embedOnBackend: Tensor; // [V, H] bf16
  layers: LayerWeights[];
  finalNorm: Tensor; // [H] f32
  lmHead: Tensor; // [V, H] bf16
  /** Every tensor and table allocated here (disposed by disposeDense). */
  owned: Array<{ dispose(): void }>;
  /** Bytes of the weights the compute backend reads (device memory on CUDA): every placed tensor once. */
  bytes: number;
}

/**
 * Reads the dense weights onto `be` (bf16 projections, f32 norms and biases). `onTensor` is called after each
 * tensor (progress). Frees what it allocated when it fails or is aborted.
 */
export async function loadDenseWeights(
  ckpt: Checkpoint,
  cfg: ModelConfig,
  be: Backend,
  options: { signal?: AbortSignal; onTensor?: () => void; pack?: boolean } = {},
): Promise<DenseWeights> {
  const owned: Array<{ dispose(): void }> = [];
  const op = options.signal ? { signal: options.signal } : {};
  let bytes = 0;
  const placed = <T extends Tensor>(t: T): T => {
    bytes += t.byteLength;
    return t;
  };
  /**
   * A tensor read from the checkpoint as `dtype`. `keep`: it stays the model's weight on the CPU backend, so it is
   * read into Backend.allocHost memory (huge pages: a batch-1 GEMV streams it 4-17% faster) and owned here.
   */
  const readHost = async (name: string, dtype: 'bf16' | 'f32', keep = false): Promise<HostTensor> => {
    options.signal?.throwIfAborted();
    const info = ckpt.tensor(name);
    let t: HostTensor;
    if (keep && be.kind === 'cpu' && info.dtype === (dtype === 'bf16' ? 'BF16' : 'F32')) {
      const dst = be.allocHost(dtype, info.shape);
      if (dst.placement.kind !== 'js') owned.push(dst); // as kept(): native memory is freed with the weights
      t = await ckpt.read(name, dst, op);
    } else {
      t = await ckpt.read(name, undefined, op);
      if (t.dtype !== dtype) t = HostTensor.from(dtype, t.shape, t.toFloat32());
      if (keep && be.kind === 'cpu') t = kept(t);
    }
    options.onTensor?.();
    return t;
  };
  /** t in Backend.allocHost memory, owned here (a copy when it is large; else t itself). */
  const kept = (t: HostTensor): HostTensor => {
    const k = be.allocHost(t.dtype, t.shape);
    if (k.placement.kind === 'js') return t;
    owned.push(k);
    (k.data as Uint16Array | Float32Array).set(t.data as Uint16Array | Float32Array);
    return k;
  };
  const place = async (t: HostTensor): Promise<Tensor> => {
    if (be.kind === 'cpu') return placed(t);
    const d = await be.upload(t);
    owned.push(d);
    return placed(d);
  };
  const read = async (name: string, dtype: 'bf16' | 'f32'): Promise<Tensor> => place(await readHost(name, dtype));
  // A weight only gemm reads as b (projections, LM head): packed into the panel64 layout when options.pack is set,
  // else on the CPU backend kept in huge-page memory.
  const placeLinear = async (t: HostTensor): Promise<Tensor> => {
    if (!options.pack) return place(be.kind === 'cpu' ? kept(t) : t);
    const p = await be.packWeights(t, op);
    owned.push(p);
    return placed(p);
  };
  // packed bf16 weights are read into a row-major scratch per shape (mapped in: Backend.allocHostAsync), reused by
  // every layer's projection of that shape and freed after the load: fresh memory per tensor cost a page fault per
  // 4 KiB, more than the read itself on the development VM
  const scratch = new Map<string, HostTensor>();
  const readLinear = async (name: string): Promise<Tensor> => {
    const info = ckpt.tensor(name);
    if (options.pack && be.kind === 'cpu' && info.dtype === 'BF16') {
      options.signal?.throwIfAborted();
      const key = info.shape.join('x');
      let rows = scratch.get(key);
      if (!rows) scratch.set(key, (rows = await be.allocHostAsync('bf16', info.shape, op)));
      await ckpt.read(name, rows, op);
      options.onTensor?.();
      return placeLinear(rows);
    }
    if (options.pack || be.kind !== 'cpu') return placeLinear(await readHost(name, 'bf16'));
    return place(await readHost(name, 'bf16', true));
  };
  const mla = async (n: NonNullable<LayerNames['mla']>): Promise<MlaWeights> => {
    const m = cfg.mla!;
    const nH = cfg.numHeads;
    const { qkNopeHeadDim: nope, qkRopeHeadDim: rope, vHeadDim: vd, kvLoraRank: kvr } = m;
    const perm = ropePairsToHalves(rope);
    const q = await readHost(n.q ?? n.qB!, 'bf16'); // [nH*(nope+rope), in]
    const qNope = pickRows(q, Array.from({ length: nH * nope }, (_, i) => Math.floor(i / nope) * (nope + rope) + (i % nope)));
    const qPe = pickRows(q, Array.from({ length: nH * rope }, (_, i) => Math.floor(i / rope) * (nope + rope) + nope + perm[i % rope]!));
    const kvA = await readHost(n.kvA, 'bf16'); // [kvr + rope, H]
    const kvb = await readHost(n.kvB, 'bf16'); // [nH*(nope+vd), kvr]
    const w: MlaWeights = {
      qNope: await placeLinear(qNope),
      qPe: await placeLinear(qPe),
      kvC: await placeLinear(kvA.rows(0, kvr)),
      kPe: await placeLinear(pickRows(kvA, perm.map((r) => kvr + r))),
      kvANorm: await read(n.kvANorm, 'f32'),
      kNope: await placeLinear(pickRows(kvb, Array.from({ length: nH * nope }, (_, i) => Math.floor(i / nope) * (nope + vd) + (i % nope)))),
      v: await placeLinear(pickRows(kvb, Array.from({ length: nH * vd }, (_, i) => Math.floor(i / vd) * (nope + vd) + nope + (i % vd)))),
    };
    if (n.qA) {
      w.qA = await readLinear(n.qA);
      w.qANorm = await read(n.qANorm!, 'f32');
    }
    return w;
  };
  const table = async (m: MlpNames): Promise<ExpertTable> => {
    const gate = await readLinear(m.gate);
    const up = await readLinear(m.up);
    const down = await readLinear(m.down);
    const t = be.expertTable(1, { hidden: cfg.hiddenSize, intermediate: m.inter, packed: options.pack ?? false });
    t.set(0, { gate, up, down });
    return t;
  };
  try {
    // kept on the host on every backend (rows are gathered there); in huge-page memory on the CPU backend, where a
    // tied LM head streams it
    const embed = await readHost('model.embed_tokens.weight', 'bf16', true);
    let embedOnBackend: Tensor = embed;
    if (be.kind !== 'cpu') {
      const d = await be.upload(embed);
      owned.push(d);
      embedOnBackend = d;
    }
    placed(embedOnBackend);
    const layers: LayerWeights[] = [];
    for (let l = 0; l < cfg.numLayers; l++) {
      const n = layerNames(cfg, l);
      const w: LayerWeights = {
        inputNorm: await read(n.inputNorm, 'f32'),
        postNorm: await read(n.postNorm, 'f32'),
        o: await readLinear(n.o),
      };
      if (n.mla) w.mla = await mla(n.mla);
      else {
        w.q = await readLinear(n.q!);
        w.k = await readLinear(n.k!);
        w.v = await readLinear(n.v!);
      }
      if (n.qBias) {
        w.qBias = await read(n.qBias, 'f32');
        w.kBias = await read(n.kBias!, 'f32');
        w.vBias = await read(n.vBias!, 'f32');
      }
      if (n.qNorm) {
        w.qNorm = await read(n.qNorm, 'f32');
        w.kNorm = await read(n.kNorm!, 'f32');
      }
      if (n.router) w.router = await read(n.router, 'f32');
      if (n.routerBias) w.routerBias = await read(n.routerBias, 'f32');
      if (n.oBias) w.oBias = await read(n.oBias, 'f32');
      if (n.sinks) w.sinks = await readHost(n.sinks, 'f32'); // read by the attention kernel, which runs on the CPU
      if (n.shared) w.shared = await table(n.shared);
      if (n.sharedGate) w.sharedGate = await read(n.sharedGate, 'bf16');
      if (n.mlp) w.mlp = await table(n.mlp);
      layers.push(w);
    }
    const finalNorm = await read('model.norm.weight', 'f32');
    // tied: the embedding table itself (its rows are gathered, so it stays row-major)
    const lmHead = cfg.tieWordEmbeddings ? embedOnBackend : await readLinear('lm_head.weight');
    return { embed, embedOnBackend, layers, finalNorm, lmHead, owned, bytes };
  } catch (e) {
    for (const o of owned) o.dispose();
    throw e;
  } finally {
    for (const t of scratch.values()) t.dispose();
  }
}

export function disposeDense(w: DenseWeights): void {
  for (const o of w.owned) o.dispose();
  w.owned.length = 0;
}

/** Row order that turns interleaved rope pairs (DeepSeek) into rotate_half's halves: [0, 2, 4, .., 1, 3, 5, ..]. */
export function ropePairsToHalves(rope: number): number[] {
  const half = rope / 2;
  return Array.from({ length: rope }, (_, j) => (j < half ? 2 * j : 2 * (j - half) + 1));
}

/** A new [rows.length, cols] tensor of t's rows `rows` (in that order). */
function pickRows(t: HostTensor, rows: readonly number[]): HostTensor {
  const cols = t.shape[1]!;
  const out = new HostTensor(t.dtype, [rows.length, cols]);
  const src = t.data as Uint16Array | Float32Array;
  const dst = out.data as Uint16Array | Float32Array;
  rows.forEach((r, i) => dst.set(src.subarray(r * cols, (r + 1) * cols), i * cols));
  return out;
}
