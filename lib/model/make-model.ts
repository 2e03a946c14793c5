/**
 * makeModel: writes a random-weight MoE checkpoint in exact HF format — config.json, generation_config.json,
 * safetensors shards with model.safetensors.index.json, tokenizer.json and tokenizer_config.json (a small
 * byte-level BPE trained on an embedded corpus, with the family's chat template). The embedded default model for
 * the demo and the tests, and a fixture anyone can open with `transformers`.
 *
 * Initialisation (seeded, deterministic): embeddings N(0, 1); linear layers N(0, 1/fan_in) so activations keep
 * their scale through the random network; router weights 3x that, so routing decisions have clear margins (a near
 * tie flipped by bf16 rounding would make engine-vs-reference comparisons noisy); norm weights 1 + N(0, 0.1^2);
 * biases N(0, 0.1^2). All tensors bf16.
 *
 * @example
 * await makeModel('/tmp/tiny', { preset: 'tiny-qwen3-moe', seed: 1 });
 * const model = await loadModel('/tmp/tiny');
 */
import fs from 'node:fs';
import path from 'node:path';

import { describe, f32ToBf16Bits } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';
import { HostTensor } from '../tensor.js';
import { expertTensorNames, parseModelConfig } from './config.js';
import { gptOssExpertNames, quantizeMxfp4 } from './gpt-oss.js';
import { FLOAT_CONFIG_KEYS, PRESETS, PRESET_NAMES, type ModelPreset, type PresetName } from './presets.js';
import { type WritableTensor, writeCheckpoint } from './safetensors.js';
import { CHATML_TEMPLATE, DEFAULT_CORPUS, INST_TEMPLATE } from './tokenizer-corpus.js';
import { buildByteLevelBpe } from './tokenizer-gen.js';
import { type InitKind, denseTensorSpecs } from './weights.js';

export interface MakeModelOptions {
  preset: PresetName;
  /** RNG seed (default 0). */
  seed?: number;
  /** Overrides of config.json keys (e.g. { num_hidden_layers: 1 }). */
  config?: Record<string, unknown>;
  /** gpt-oss only: write the experts as MXFP4 blocks and scales, like the released checkpoints (default: bf16). */
  quantization?: 'mxfp4';
  /** Largest shard in bytes (default 4 MiB for tiny presets, so they are sharded with an index like real ones; 1 GiB otherwise). */
  maxShardBytes?: number;
  signal?: AbortSignal;
}

export interface MadeModel {
  dir: string;
  files: string[];
  /** Parameter count (all tensors). */
  parameters: number;
  bytes: number;
}

/** xoshiro-style fast generator of N(0, 1) draws as bf16 bits (big real-shape presets write billions). */
class NormalBits {
  #s0: number;
  #s1: number;
  #spare: number | undefined;
  constructor(seed: number) {
    this.#s0 = (seed ^ 0x9e3779b9) >>> 0 || 1;
    this.#s1 = (Math.imul(seed, 0x85ebca6b) ^ 0xc2b2ae35) >>> 0 || 2;
  }
  #u(): number {
    // xorshift64-ish on two 32-bit words; plenty for weight init
    return this.u32() / 4294967296;
  }
  /** The next raw 32-bit word. */
  u32(): number {
    let s1 = this.#s0;
    const s0 = this.#s1;
    this.#s0 = s0;
    s1 ^= s1 << 23;
    s1 ^= s1 >>> 17;
    s1 ^= s0 ^ (s0 >>> 26);
    this.#s1 = s1 >>> 0;
    return (this.#s0 + this.#s1) >>> 0;
  }
  normal(): number {
    if (this.#spare !== undefined) {
      const v = this.#spare;
      this.#spare = undefined;
      return v;
    }
    const u = 1 - this.#u();
    const r = Math.sqrt(-2 * Math.log(u));
    const a = 2 * Math.PI * this.#u();
    this.#spare = r * Math.sin(a);
    return r * Math.cos(a);
  }
}

function initTensor(shape: number[], kind: InitKind, rng: NormalBits, fanIn = shape[shape.length - 1]!): HostTensor<'bf16'> {
  const t = new HostTensor('bf16', shape);
  const d = t.data;
  if (kind === 'norm') {
    for (let i = 0; i < d.length; i++) d[i] = f32ToBf16Bits(1 + 0.1 * rng.normal());
    return t;
  }
  const std = kind === 'embed' || kind === 'sink' ? 1 : kind === 'bias' ? 0.1 : kind === 'router' ? 3 / Math.sqrt(fanIn) : 1 / Math.sqrt(fanIn);
  if (d.length >= FAST_NORMAL_MIN) {
    // Real-shape presets (billions of weights): a table of 65536 normal quantiles, two draws per 32-bit word,
    // about 50x faster than Box-Muller (tiny presets never get here, so their weights are unchanged).
    const table = normalQuantiles(std);
    let i = 0;
    for (; i + 2 <= d.length; i += 2) {
      const w = rng.u32();
      d[i] = table[w & 0xffff]!;
      d[i + 1] = table[w >>> 16]!;
    }
    if (i < d.length) d[i] = table[rng.u32() & 0xffff]!;
    return t;
  }
  for (let i = 0; i < d.length; i++) d[i] = f32ToBf16Bits(std * rng.normal());
  return t;
}

/** Tensors from this many elements on draw through normalQuantiles. */
const FAST_NORMAL_MIN = 1 << 22;

/** bf16 bits of std * Phi^-1((i + 0.5) / 65536), i < 65536 (Acklam's rational approximation, |rel err| < 1.2e-9). */
function normalQuantiles(std: number): Uint16Array {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const dd = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const inv = (p: number): number => {
    if (p < 0.02425) {
      const q = Math.sqrt(-2 * Math.log(p));
      return (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((dd[0]! * q + dd[1]!) * q + dd[2]!) * q + dd[3]!) * q + 1);
    }
    if (p > 1 - 0.02425) return -inv(1 - p);
    const q = p - 0.5;
    const r = q * q;
    return ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) / (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
  };
  const t = new Uint16Array(65536);
  for (let i = 0; i < 65536; i++) t[i] = f32ToBf16Bits(std * inv((i + 0.5) / 65536));
  return t;
}

/** JSON with integral values of `floatKeys` written as floats (7 -> 7.0), so strict float fields validate. */
function jsonWithFloats(v: unknown, floatKeys: readonly string[]): string {
  let s = JSON.stringify(v, null, 2);
  for (const k of floatKeys) s = s.replace(new RegExp(`("${k}": )(-?\\d+)(?=[,\\n}])`, 'g'), '$1$2.0');
  return `${s}\n`;
}

/** The preset table entry, or InvalidArgumentError listing the presets. */
export function presetOf(name: unknown): ModelPreset {
  if (typeof name !== 'string' || !(PRESET_NAMES as string[]).includes(name)) {
    throw new InvalidArgumentError(`preset must be one of ${PRESET_NAMES.join(', ')}, received ${describe(name)}`);
  }
  return PRESETS[name as PresetName];
}

/** Writes a random-weight checkpoint of `options.preset` into `dir` (created if needed). */
export async function makeModel(dir: string, options: MakeModelOptions): Promise<MadeModel> {
  if (typeof dir !== 'string' || dir.length === 0) throw new InvalidArgumentError(`dir must be a non-empty path string, received ${describe(dir)}`);
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
  const preset = presetOf(options.preset);
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed)) throw new InvalidArgumentError(`options.seed must be an integer, received ${describe(seed)}`);
  const signal = options.signal;

  // Tokenizer first: the vocabulary size goes into the config.
  const tk = preset.tokenizer;
  const { tokenizerJson, tokenizerConfig } = buildByteLevelBpe({
    corpus: DEFAULT_CORPUS,
    vocabSize: preset.tokenizerVocab,
    specialTokens: tk.specialTokens,
    eosToken: tk.eosToken,
    ...(tk.bosToken ? { bosToken: tk.bosToken } : {}),
    chatTemplate: tk.template === 'chatml' ? CHATML_TEMPLATE : INST_TEMPLATE,
  });
  const idOf = (tok: string): number => {
    const added = (tokenizerJson as { added_tokens: Array<{ id: number; content: string }> }).added_tokens.find((a) => a.content === tok);
    if (!added) throw new InvalidArgumentError(`the generated tokenizer lacks special token ${tok}`);
    return added.id;
  };
  const vocab = Math.max(preset.vocabSize ?? 0, preset.tokenizerVocab);
  const eosIds = [tk.eosToken, ...tk.extraEos].map(idOf);
  const config: Record<string, unknown> = {
    ...preset.config,
    vocab_size: vocab,
    bos_token_id: tk.bosToken ? idOf(tk.bosToken) : null,
    eos_token_id: eosIds[0],
    ...(options.config ?? {}),
  };
  const cfg = parseModelConfig(config, `preset ${options.preset}`);

  const rng = new NormalBits(seed);
  const tensors = new Map<string, WritableTensor>();
  let parameters = 0;
  const add = (name: string, shape: number[], kind: InitKind, fanIn?: number) => {
    signal?.throwIfAborted();
    const t = initTensor(shape, kind, rng, fanIn);
    tensors.set(name, t);
    parameters += t.numel;
    return t;
  };
  for (const s of denseTensorSpecs(cfg)) add(s.name, s.shape, s.init);
  const H = cfg.hiddenSize;
  const I = cfg.moeIntermediateSize;
  const E = cfg.numExperts;
  if (options.quantization !== undefined && (options.quantization !== 'mxfp4' || cfg.family !== 'gpt_oss')) {
    throw new InvalidArgumentError(`options.quantization 'mxfp4' is for gpt-oss presets only, received ${describe(options.quantization)} for ${options.preset}`);
  }
  for (const l of cfg.moeLayers) {
    if (cfg.family === 'gpt_oss') {
      // stacked: gate_up_proj [E, H, 2I] (x @ W, gate/up interleaved columns), down_proj [E, I, H], biases
      const n = gptOssExpertNames(l);
      const gateUp = add(n.gateUp, [E, H, 2 * I], 'linear', H);
      add(n.gateUpBias, [E, 2 * I], 'bias');
      const down = add(n.down, [E, I, H], 'linear', I);
      add(n.downBias, [E, H], 'bias');
      if (options.quantization === 'mxfp4') {
        tensors.delete(n.gateUp);
        tensors.delete(n.down);
        const q = (t: HostTensor<'bf16'>, rows: number, cols: number, name: string) => {
          // [E, cols, rows] (in, out) -> output rows [E * rows, cols], quantized by blocks of 32 along cols
          const f = t.toFloat32();
          const tr = new Float32Array(E * rows * cols);
          for (let e = 0; e < E; e++) for (let c = 0; c < cols; c++) for (let r = 0; r < rows; r++) tr[(e * rows + r) * cols + c] = f[(e * cols + c) * rows + r]!;
          const { blocks, scales } = quantizeMxfp4(tr, E * rows, cols);
          tensors.set(`${name}_blocks`, { dtype: 'U8', shape: [E, rows, cols / 32, 16], bytes: blocks });
          tensors.set(`${name}_scales`, { dtype: 'U8', shape: [E, rows, cols / 32], bytes: scales });
        };
        q(gateUp, 2 * I, H, n.gateUp);
        q(down, H, I, n.down);
      }
      continue;
    }
    for (let e = 0; e < E; e++) {
      const n = expertTensorNames(cfg, l, e);
      add(n.gate, [I, H], 'linear');
      add(n.up, [I, H], 'linear');
      add(n.down, [H, I], 'linear');
    }
  }
  await fs.promises.mkdir(dir, { recursive: true });
  const files = await writeCheckpoint(dir, tensors, { maxShardBytes: options.maxShardBytes ?? (preset.vocabSize === undefined ? 4 * 2 ** 20 : 2 ** 30) });
  const json = (v: unknown) => `${JSON.stringify(v, null, 2)}\n`;
  await fs.promises.writeFile(path.join(dir, 'config.json'), jsonWithFloats(config, FLOAT_CONFIG_KEYS));
  await fs.promises.writeFile(
    path.join(dir, 'generation_config.json'),
    json({ _from_model_config: true, bos_token_id: config.bos_token_id, eos_token_id: eosIds.length === 1 ? eosIds[0] : eosIds, do_sample: false }),
  );
  await fs.promises.writeFile(path.join(dir, 'tokenizer.json'), json(tokenizerJson));
  await fs.promises.writeFile(path.join(dir, 'tokenizer_config.json'), json(tokenizerConfig));
  const all = [...files, 'config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json'];
  if (files.length > 1) all.push('model.safetensors.index.json');
  let bytes = 0;
  for (const f of all) bytes += (await fs.promises.stat(path.join(dir, f))).size;
  return { dir, files: all, parameters, bytes };
}
