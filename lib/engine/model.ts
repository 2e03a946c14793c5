/**
 * The model runtime (latency mode): `loadModel(dir)` opens an HF MoE checkpoint (config.json, sharded safetensors,
 * tokenizer.json, chat template), puts the dense weights on the backend, every routed expert in the pinned host
 * ExpertStore, and serves them to the fused MoE kernel either straight from the store (`experts: 'resident'`) or
 * through the expert cache's slots (`experts: { slots | fraction, policy }`: offloading with demand fetches, FineMoE
 * prefetch and probability-guided eviction). `generate` / `stream` run prefill (in chunks) and decode steps of the
 * ForwardPass; several concurrent requests interleave step by step (one step at a time on the backend).
 *
 * @example
 * const model = await loadModel('/tmp/tiny-qwen3-moe');
 * const r = await model.generate('The capital of France is', { maxNewTokens: 16 });   // greedy
 * console.log(r.text, r.stats.decodeTokensPerSecond);
 * for await (const c of model.stream([{ role: 'user', content: 'Hi' }], { temperature: 0.7, seed: 1 })) process.stdout.write(c.text);
 * model.dispose();
 */
import fs from 'node:fs';
import path from 'node:path';

import { type Backend, CPU_ISAS, type CpuIsa, openBackend, packsWeightsByDefault } from '../backend.js';
import type { CacheStats, ExpertCache } from '../cache/expert-cache.js';
import type { RoutingTrace, TraceRequest } from '../cache/trace.js';
import { describe } from '../dtype.js';
import { CheckpointFormatError, DisposedError, InvalidArgumentError } from '../errors.js';
import { KvCache } from '../kv/cache.js';
import { type ModelConfig, idList, parseModelConfig } from '../model/config.js';
import { loadGptOssExperts } from '../model/gpt-oss.js';
import { Checkpoint } from '../model/safetensors.js';
import { type ChatMessage, ModelTokenizer } from '../model/tokenizer.js';
import { type DenseWeights, attentionHeadDim, checkRuntimeFamily, disposeDense, loadDenseWeights, validateCheckpoint } from '../model/weights.js';
import { ExpertStore } from '../residency/expert-store.js';
import { expertSlotsFor, stepArenaNeed } from '../batching/memory.js';
import { ropeFromConfig, ropeScalingFromHf, yarnSoftmaxScale } from '../rope.js';
import { hostFacts } from '../native.js';
import { HostTensor, type Tensor } from '../tensor.js';
import { type BatchModel, type BatchOptions, type BatchRequestOptions, type BatchResult, runBatch } from './batch.js';
import { CachedExperts, type ExpertExtras, type ExpertProvider, ResidentExperts } from './experts.js';
import { ForwardPass, type StepRouting, type StepTimes, emptyTimes, resolveAttentionThreads } from './forward.js';
import { Sampler, type SamplingOptions } from './sampler.js';

/**
 * How routed experts are served. 'auto' (the default): on CUDA as many as fit in GPU memory beside the dense weights
 * and the largest step (`deviceMemoryBytes`, `maxStepTokens`), in slots, the rest streamed from pinned host memory
 * (every one when they all fit: none copied after its first use); on the CPU backend 'resident', unless
 * `deviceMemoryBytes` is given (then planned the same way over the CPU device pool). `{ slots: 'auto', policy, ... }`:
 * the same slot count with the cache's other options. 'resident': the kernel reads every expert where the pinned
 * store holds it (host memory; on CUDA over PCIe, zero-copy).
 */
export type ExpertMode =
  | 'auto'
  | 'resident'
  | {
      /** Experts held in the cache's slots at once (give this or `fraction`); 'auto': as experts 'auto' chooses. */
      slots?: number | 'auto';
      /** Fraction of all routed experts held at once, e.g. 0.25. */
      fraction?: number;
      /** 'lru' (default) or 'finemoe' (expert-map prefetch + probability-guided eviction). */
      policy?: 'lru' | 'finemoe';
      /** Layers ahead the FineMoE predictor prefetches (default 2). */
      prefetchDistance?: number;
      /**
       * Fiddler: compute a decode step's missed experts on the CPU straight from the pinned store instead of
       * fetching them, when the measured costs say it is faster ('auto'; default on CUDA), or always fetch
       * ('never'; default on the CPU backend, where the slots only emulate device memory).
       */
      hostCompute?: 'auto' | 'never';
    };

export interface LoadProgress {
  phase: 'dense' | 'experts';
  done: number;
  total: number;
}

export interface LoadModelOptions {
  /**
   * A backend or its kind (default: the CPU backend). 'cuda': GEMMs, norms, router and experts on the GPU, RoPE, the
   * KV cache and attention on the CPU (compiled, not yet run on a GPU).
   */
  backend?: Backend | 'cpu' | 'cuda' | 'auto';
  /** Routed expert placement (default 'auto'). */
  experts?: ExpertMode;
  /**
   * Bytes of compute-backend memory the model may take with `experts: 'auto'` (dense weights, expert slots, step
   * activations; lib/batching/memory.ts). Default on CUDA: the GPU's free memory when loading starts.
   */
  deviceMemoryBytes?: number;
  /**
   * The largest step (tokens) `experts: 'auto'` leaves room for and loadModel allocates step memory for (default:
   * max(512, prefillChunk), generateBatch's default). A generateBatch with a larger maxBatchTokens allocates its own
   * before its first step (and fails nothing if that memory is not there: its steps then take separate tensors).
   */
  maxStepTokens?: number;
  /**
   * Host bytes for the paged KV cache (default 256 MiB; one buffer per layer for K and for V, each at most
   * MAX_VIEW_BYTES). Its pages are mapped in while the weights load (KvCache.prefault), so they are resident from then on.
   */
  kvCacheBytes?: number;
  /** Tokens per KV page (default 64). */
  kvBlockSize?: number;
  /** Host bytes the expert store may take (default: 90% of free memory). */
  hostBudgetBytes?: number;
  /** Tokens per prefill step (default 256). */
  prefillChunk?: number;
  /**
   * Keep activations in the backend's device memory and move them to the host attention path with explicit
   * copies (default: true on CUDA, where it is required; false on the CPU backend, where it runs the CUDA path's
   * orchestration over the CPU device pool: for tests and diagnostics).
   */
  deviceActivations?: boolean;
  /**
   * Pack the dense projection weights and the LM head into the CPU kernels' panel64 layout at load
   * (`Backend.packWeights`; default: true on the CPU backend with the avx512bf16 tier, where gemm then runs as
   * outer products). Not available on CUDA. On the avx2 and avx512 tiers packed weights run 8-lane FMA kernels:
   * measured on a 2-core AVX2 EPYC, 1.1-1.5x the row-major gemm at 16 or more rows (prefill, large batches) but
   * 0.8x at one row (bench/results/native-kernels-2026-11-27-avx2.json); a Mixtral-shaped layer decoded 1.3x faster
   * at batch 32 and 0.67x at batch 1 (throughput-cpu-2026-11-27-*avx2-ab*.json). So the default there stays
   * row-major; pass true for throughput work. The scalar tier runs a plain reference over the packed layout (slow).
   */
  packWeights?: boolean;
  /**
   * CPU pool threads the attention runs on (an integer >= 0, 0: all). Default 'auto': on CUDA with routed experts
   * offloaded (fewer slots than experts: copies stream while the CPU attends), all but a quarter of the pool, at
   * least 2 left free (attentionThreadsBesideCopies: 12 of 16) so the threads that submit and settle the copies
   * get cores; otherwise all. The same tokens whatever the count.
   */
  attentionThreads?: number | 'auto';
  /**
   * The attention's CPU kernel tier, when below the CPU's best (default: the best; AttentionParams.isa). On a 16-core
   * Xeon the AVX-512F tier (f32 FMAs) read K/V at 98 GB/s where the AVX-512 BF16 tier read 85 (decode, block 64,
   * 2026-11-27), and the attention binds the throughput mode's step on such a host; the same tokens are not
   * guaranteed across tiers (their roundings differ), so a run keeps one tier.
   * @example
   * await loadModel(dir, { attentionIsa: 'avx512' });   // model.attentionIsa: 'avx512' on an avx512bf16 CPU
   */
  attentionIsa?: CpuIsa;
  onProgress?: (p: LoadProgress) => void;
  signal?: AbortSignal;
}

/** Whether `mode` asks for the slot count experts 'auto' chooses ('auto', or `{ slots: 'auto', ... }`). */
export function autoExpertSlots(mode: ExpertMode): boolean {
  return mode === 'auto' || (typeof mode === 'object' && mode !== null && mode.slots === 'auto');
}

/**
 * The token ids of `prompt` (MoeModel.encode; also without a loaded model): text with special tokens, chat messages
 * through the chat template, or token ids checked against the vocabulary.
 */
export function encodePrompt(tokenizer: ModelTokenizer, vocabSize: number, prompt: Prompt): number[] {
  if (typeof prompt === 'string') return tokenizer.encode(prompt);
  if (Array.isArray(prompt)) return tokenizer.encode(tokenizer.applyChatTemplate(prompt as ChatMessage[]), { addSpecialTokens: false });
  if (typeof prompt === 'object' && prompt !== null && Array.isArray((prompt as { tokens?: unknown }).tokens)) {
    const t = (prompt as { tokens: unknown[] }).tokens;
    t.forEach((id, i) => {
      if (!Number.isSafeInteger(id) || (id as number) < 0 || (id as number) >= vocabSize) {
        throw new InvalidArgumentError(`prompt.tokens[${i}] must be an integer in [0, ${vocabSize}), received ${describe(id)}`);
      }
    });
    return t as number[];
  }
  throw new InvalidArgumentError(`prompt must be a string, an array of { role, content } messages or { tokens: number[] }, received ${describe(prompt)}`);
}

/** A prompt: text (tokenized with special tokens), chat messages (rendered with the chat template), or token ids. */
export type Prompt = string | readonly ChatMessage[] | { tokens: readonly number[] };

export interface GenerateOptions extends SamplingOptions {
  /** Tokens to generate at most (default 128). */
  maxNewTokens?: number;
  /** Strings that end generation; the text is cut before the first one found. */
  stop?: readonly string[];
  /** Stop at end-of-sequence tokens (default true). */
  stopAtEos?: boolean;
  /** Record the routing of every decode iteration (result.routing, the expert-cache trace format). */
  recordRouting?: boolean;
  signal?: AbortSignal;
}

export type FinishReason = 'eos' | 'stop' | 'length' | 'cancelled';

export interface GenerateStats {
  promptTokens: number;
  generatedTokens: number;
  prefillMs: number;
  decodeMs: number;
  /** Decode tokens per second (excluding the first token, which prefill produces). */
  decodeTokensPerSecond: number;
  /** Mean decode step time, ms. */
  msPerToken: number;
  /** Where decode time went (sums over decode steps). */
  decode: StepTimes;
  prefill: StepTimes;
  /** Expert cache counters during this request (offloaded mode; counts include concurrent requests). */
  cache?: CacheStats;
  /** Missed experts computed on the CPU instead of fetched during this request (hostCompute 'auto'). */
  hostExperts?: number;
}

export interface GenerateResult {
  text: string;
  tokens: number[];
  promptTokens: number[];
  finishReason: FinishReason;
  stats: GenerateStats;
  routing?: TraceRequest;
}

export interface TokenChunk {
  token: number;
  /** New text that is final (UTF-8 complete, not part of a possible stop string). */
  text: string;
}

/** stream(): an async iterable of tokens plus the final result. Breaking out of the loop cancels generation. */
export interface GenerationStream extends AsyncIterable<TokenChunk> {
  readonly result: Promise<GenerateResult>;
}

/** One step at a time on the backend; requests queue here between steps. */
class StepLock {
  #tail: Promise<void> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const r = this.#tail.then(fn);
    this.#tail = r.then(
      () => undefined,
      () => undefined,
    );
    return r;
  }
}

/** The JSON object in `file`; missing (when `required`) or not a JSON object: CheckpointFormatError naming it. */
export function readJson(file: string, required: boolean): Record<string, unknown> | undefined {
  if (!fs.existsSync(file)) {
    if (required) throw new CheckpointFormatError(file, undefined, 'missing');
    return undefined;
  }
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new CheckpointFormatError(file, undefined, `not valid JSON: ${(e as Error).message}`);
  }
}

function cacheDelta(a: CacheStats, b: CacheStats): CacheStats {
  const out = { ...b };
  for (const k of Object.keys(out) as Array<keyof CacheStats>) out[k] = b[k] - a[k];
  return out;
}

export class MoeModel {
  readonly dir: string;
  readonly config: ModelConfig;
  readonly tokenizer: ModelTokenizer;
  readonly backend: Backend;
  /** End-of-sequence ids (config, generation_config.json, tokenizer). */
  readonly eosTokenIds: readonly number[];
  /** Projection, LM-head and expert weights are in the CPU kernels' panel64 layout (LoadModelOptions.packWeights). */
  readonly packedWeights: boolean;
  readonly #weights: DenseWeights;
  readonly #store: ExpertStore;
  readonly #experts: ExpertProvider;
  readonly #kv: KvCache;
  readonly #fwd: ForwardPass;
  readonly #lock = new StepLock();
  readonly #prefillChunk: number;
  #active = 0;
  #disposed = false;

  /** CPU pool threads the attention runs on, 0: all (LoadModelOptions.attentionThreads, resolved). */
  readonly attentionThreads: number;
  /** The CPU kernel tier the attention runs on (LoadModelOptions.attentionIsa within the host backend's tier). */
  readonly attentionIsa: CpuIsa;

  /** @internal use loadModel */
  constructor(p: {
    dir: string;
    config: ModelConfig;
    tokenizer: ModelTokenizer;
    backend: Backend;
    host: Backend;
    staged: boolean;
    eos: number[];
    weights: DenseWeights;
    store: ExpertStore;
    experts: ExpertProvider;
    kv: KvCache;
    prefillChunk: number;
    attentionThreads: number;
    attentionIsa?: CpuIsa;
  }) {
    this.dir = p.dir;
    this.config = p.config;
    this.tokenizer = p.tokenizer;
    this.backend = p.backend;
    this.eosTokenIds = p.eos;
    this.packedWeights = p.store.packed;
    this.#weights = p.weights;
    this.#store = p.store;
    this.#experts = p.experts;
    this.#kv = p.kv;
    this.#prefillChunk = p.prefillChunk;
    this.attentionThreads = p.attentionThreads;
    const hostIsa = p.host.isa;
    this.attentionIsa = p.attentionIsa !== undefined && CPU_ISAS.indexOf(p.attentionIsa) < CPU_ISAS.indexOf(hostIsa) ? p.attentionIsa : hostIsa;
    const rp = ropeFromConfig(p.config);
    this.#fwd = new ForwardPass({
      be: p.backend,
      host: p.host,
      staged: p.staged,
      cfg: p.config,
      weights: p.weights,
      kv: p.kv,
      experts: p.experts,
      invFreq: HostTensor.from('f32', [rp.invFreq.length], rp.invFreq),
      attentionScaling: rp.attentionScaling,
      attentionScale: (p.config.mla ? yarnSoftmaxScale(ropeScalingFromHf(p.config.ropeScaling)) : 1) / Math.sqrt(p.config.headDim),
      headDim: p.kv.headDim,
      attentionThreads: p.attentionThreads,
      ...(this.attentionIsa !== hostIsa ? { attentionIsa: this.attentionIsa } : {}),
    });
  }

  /**
   * @internal profileModel's `model` option: the model's own memory that its measurements read (the routed experts'
   * store, the LM head's weight).
   */
  get ownMemory(): { store: ExpertStore; lmHead: Tensor } {
    return { store: this.#store, lmHead: this.#weights.lmHead };
  }

  /** The expert cache (offloaded mode: residency, pins, counters), undefined when experts are resident. */
  get expertCache(): ExpertCache | undefined {
    return this.#experts.cache;
  }

  /** The expert cache's counters (offloaded mode), undefined when experts are resident. */
  get cacheStats(): CacheStats | undefined {
    return this.#experts.cache?.stats;
  }

  /**
   * Where the model's memory is, bytes. `device`: on the compute backend (GPU memory on CUDA; the CPU backend's own
   * memory otherwise): the dense weights, the expert slots (offloaded experts) and the step arena (staged mode: its
   * buffer now; it grows to the largest step, lib/batching/memory.ts estimates it). `host`: the pinned expert store,
   * the KV cache and the pinned step arena. `lastStep`: what the last step needed of each arena.
   * @example
   * const m = model.memory();
   * console.log(`${(m.device.expertSlots / 2 ** 30).toFixed(1)} GiB of experts in GPU memory`);
   */
  memory(): {
    device: { denseWeights: number; expertSlots: number; activations: number };
    host: { expertStore: number; kvCache: number; activations: number };
    lastStep: { device: number; host: number };
  } {
    const arena = this.#fwd.stepMemory;
    return {
      device: { denseWeights: this.#weights.bytes, expertSlots: (this.#experts.cache?.capacity ?? 0) * this.#store.expertBytes, activations: arena.device },
      host: { expertStore: this.#store.totalBytes, kvCache: this.#kv.numPages * this.#kv.bytesPerPage, activations: arena.host },
      lastStep: { device: arena.deviceNeed, host: arena.hostNeed },
    };
  }

  /**
   * @internal loadModel: allocates the step memory for steps of up to `tokens` tokens now (each sequence's last row
   * to the LM head, sampled on the host), so that the first steps find it there instead of taking separate tensors.
   */
  async reserveStepMemory(tokens: number): Promise<void> {
    await this.#fwd.reserve(stepArenaNeed(this.config, { tokens, rows: 1, head: 'sampled' }));
  }

  /** Tokens the KV cache can still take (all sequences). */
  get kvTokensFree(): number {
    return this.#kv.tokensFree();
  }

  /** Requests in progress. */
  get activeRequests(): number {
    return this.#active;
  }

  /** Token ids of a prompt (text: with the tokenizer's special tokens; messages: through the chat template). */
  encode(prompt: Prompt): number[] {
    return encodePrompt(this.tokenizer, this.config.vocabSize, prompt);
  }

  /**
   * Logits of every position of `tokens` (a fresh sequence, freed afterwards): f32 [T, V]. With `routing`, each
   * prefill chunk appends per MoE layer the router's choice: ids [T, k], top-k probabilities [T, k], gates [T, E].
   * @example const l = await model.logits([1, 2, 3]);   // l.shape = [3, vocab]
   */
  async logits(tokens: readonly number[], options: { signal?: AbortSignal; routing?: StepRouting } = {}): Promise<HostTensor<'f32'>> {
    this.#checkAlive();
    const ids = this.encode({ tokens });
    if (ids.length === 0) throw new InvalidArgumentError('tokens must not be empty');
    const seq = this.#kv.allocate();
    this.#active++;
    try {
      const parts: Float32Array[] = [];
      for (let i = 0; i < ids.length; i += this.#prefillChunk) {
        const chunk = ids.slice(i, i + this.#prefillChunk);
        const l = await this.#lock.run(() => this.#fwd.step([{ seq, tokens: chunk }], emptyTimes(), { allLogits: true, ...(options.signal ? { signal: options.signal } : {}), ...(options.routing ? { routing: options.routing } : {}) }));
        parts.push(l.data);
      }
      const out = new HostTensor('f32', [ids.length, this.config.vocabSize]);
      let off = 0;
      for (const p of parts) {
        out.data.set(p, off);
        off += p.length;
      }
      return out;
    } finally {
      this.#kv.free(seq);
      this.#active--;
    }
  }

  /**
   * Generates a completion. Greedy (temperature 0, the default) is exact and deterministic.
   * @example
   * const r = await model.generate([{ role: 'user', content: 'Hello' }], { maxNewTokens: 32, stop: ['\n\n'] });
   */
  async generate(prompt: Prompt, options: GenerateOptions = {}): Promise<GenerateResult> {
    const it = this.#run(prompt, options);
    for (;;) {
      const r = await it.next();
      if (r.done) return r.value;
    }
  }

  /**
   * Streams a completion token by token; `result` resolves with the same object generate() returns. Breaking out
   * of the loop cancels the request (finishReason 'cancelled') and frees its KV pages.
   * @example
   * const s = model.stream('Once upon a time', { maxNewTokens: 64, temperature: 0.8, seed: 7 });
   * for await (const c of s) process.stdout.write(c.text);
   * console.log((await s.result).stats.msPerToken);
   */
  stream(prompt: Prompt, options: GenerateOptions = {}): GenerationStream {
    const gen = this.#run(prompt, options);
    let resolve!: (r: GenerateResult) => void;
    let reject!: (e: unknown) => void;
    const result = new Promise<GenerateResult>((a, b) => {
      resolve = a;
      reject = b;
    });
    result.catch(() => undefined); // surfaced through the iterator too
    let finished = false;
    const iterator: AsyncIterator<TokenChunk> = {
      next: async () => {
        try {
          const r = await gen.next();
          if (r.done) {
            finished = true;
            resolve(r.value);
            return { done: true, value: undefined };
          }
          return { done: false, value: r.value };
        } catch (e) {
          finished = true;
          reject(e);
          throw e;
        }
      },
      return: async () => {
        if (!finished) {
          finished = true;
          try {
            const r = await gen.return(undefined as never);
            if (r.done && r.value) resolve(r.value);
            else reject(new InvalidArgumentError('the stream was closed before it finished'));
          } catch (e) {
            reject(e);
          }
        }
        return { done: true, value: undefined };
      },
    };
    return { result, [Symbol.asyncIterator]: () => iterator };
  }

  /**
   * Batched generation: the requests share forward steps (continuous batching: decode tokens and prefill chunks
   * of different requests in one step; finished ones leave, waiting ones join when their KV pages fit). Yields
   * results as requests finish; `index` is the request's position. A malformed request fails alone
   * (finishReason 'error'). Greedy results equal generate()'s for the same prompt. Before its first step it allocates
   * the step memory that steps of `maxBatchTokens` tokens need, where loadModel's (maxStepTokens) is smaller.
   * @example
   * for await (const r of model.generateBatch(prompts.map((p) => ({ prompt: p, options: { maxNewTokens: 64 } })))) {
   *   console.log(r.index, r.text);
   * }
   */
  generateBatch(
    requests: Iterable<{ prompt: Prompt; options?: BatchRequestOptions }> | AsyncIterable<{ prompt: Prompt; options?: BatchRequestOptions }>,
    options: BatchOptions = {},
  ): AsyncGenerator<BatchResult, void, undefined> {
    this.#checkAlive();
    const eos = new Set(this.eosTokenIds);
    const self = this;
    const model: BatchModel = {
      kv: this.#kv,
      forward: this.#fwd,
      maxPositions: this.config.maxPositionEmbeddings,
      eos,
      encode: (p) => self.encode(p as Prompt),
      decoder: () => self.tokenizer.decoder({ skipSpecialTokens: true }),
      step: async (seqs, samplers, times, signal) => {
        self.#checkAlive();
        return self.#lock.run(() => self.#fwd.stepTokens(seqs, samplers, times, { ...(signal ? { signal } : {}), ...(options.microBatches ? { microBatches: options.microBatches } : {}) }));
      },
      // before the first step (loadModel allocated for maxStepTokens): otherwise the first larger step takes separate
      // tensors (allocations and page faults inside the step) and grows the arenas after it; no floor (keep false):
      // a later run of small steps shrinks it as it would a grown one
      prepareSteps: (shape) => self.#fwd.reserve(stepArenaNeed(self.config, { ...shape, head: 'sampled' }), false),
    };
    const inner = runBatch(model, requests, options);
    return (async function* () {
      self.#active++;
      try {
        yield* inner;
      } finally {
        self.#active--;
      }
    })();
  }

  /** A routing trace (lib/cache/trace.ts format) of requests recorded with `recordRouting`. */
  routingTrace(requests: readonly TraceRequest[]): RoutingTrace {
    return { numLayers: this.config.moeLayers.length, numExperts: this.config.numExperts, topK: this.config.topK, embedDim: this.config.hiddenSize, requests: [...requests] };
  }

  /** Frees every allocation (weights, expert store and slots, KV cache, activations). Requests in flight fail with DisposedError. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#fwd.dispose();
    this.#experts.dispose();
    this.#store.dispose();
    this.#kv.dispose();
    disposeDense(this.#weights);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #checkAlive(): void {
    if (this.#disposed) throw new DisposedError('the model was disposed');
  }

  /** Semantic embedding of a prompt for the expert predictor: the mean of its token embeddings. */
  #embedding(ids: readonly number[]): Float32Array {
    const H = this.config.hiddenSize;
    const out = new Float32Array(H);
    const e = this.#weights.embed.data;
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (const id of ids) {
      const base = id * H;
      for (let j = 0; j < H; j++) {
        u[0] = e[base + j]! << 16;
        out[j]! += f[0]!;
      }
    }
    for (let j = 0; j < H; j++) out[j]! /= Math.max(1, ids.length);
    return out;
  }

  async *#run(prompt: Prompt, options: GenerateOptions): AsyncGenerator<TokenChunk, GenerateResult, undefined> {
    this.#checkAlive();
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
    const maxNew = options.maxNewTokens ?? 128;
    if (!Number.isSafeInteger(maxNew) || maxNew < 1) throw new InvalidArgumentError(`maxNewTokens must be a positive integer, received ${describe(options.maxNewTokens)}`);
    const stops = options.stop ?? [];
    if (!Array.isArray(stops) || stops.some((s) => typeof s !== 'string' || s.length === 0)) {
      throw new InvalidArgumentError(`stop must be an array of non-empty strings, received ${describe(options.stop)}`);
    }
    const signal = options.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError(`signal must be an AbortSignal, received ${describe(signal)}`);
    const sampler = new Sampler(options);
    const promptIds = this.encode(prompt);
    if (promptIds.length === 0) throw new InvalidArgumentError('the prompt encodes to no tokens');
    if (promptIds.length + 1 > this.config.maxPositionEmbeddings) {
      throw new InvalidArgumentError(`the prompt has ${promptIds.length} tokens; the model takes at most ${this.config.maxPositionEmbeddings} positions`);
    }
    const stopAtEos = options.stopAtEos ?? true;
    const eos = new Set(this.eosTokenIds);
    const op = signal ? { signal } : {};

    const prefill = emptyTimes();
    const decode = emptyTimes();
    const cache0 = this.#experts.cache?.stats;
    const host0 = this.#experts.hostExperts;
    const routing: StepRouting | undefined = options.recordRouting ? { ids: [], probs: [], gates: [] } : undefined;
    const embedding = this.#embedding(promptIds);
    const out: number[] = [];
    const dec = this.tokenizer.decoder({ skipSpecialTokens: true });
    let text = '';
    let emitted = 0;
    const holdBack = stops.length ? Math.max(...stops.map((s) => s.length)) - 1 : 0;
    let finish: FinishReason = 'length';
    let prefillMs = 0;
    let decodeMs = 0;
    let decodeSteps = 0;

    const build = (finish: FinishReason): GenerateResult => {
      const stats: GenerateStats = {
        promptTokens: promptIds.length,
        generatedTokens: out.length,
        prefillMs,
        decodeMs,
        decodeTokensPerSecond: decodeSteps > 0 ? (decodeSteps * 1000) / decodeMs : 0,
        msPerToken: decodeSteps > 0 ? decodeMs / decodeSteps : 0,
        decode,
        prefill,
        ...(cache0 && this.#experts.cache ? { cache: cacheDelta(cache0, this.#experts.cache.stats) } : {}),
        ...(host0 !== undefined ? { hostExperts: this.#experts.hostExperts! - host0 } : {}),
      };
      const result: GenerateResult = { text, tokens: out, promptTokens: promptIds, finishReason: finish, stats };
      if (routing) result.routing = traceRequest(routing, embedding, this.config);
      return result;
    };

    const seq = this.#kv.allocate();
    this.#active++;
    let settled = false; // false in `finally` only when the consumer stopped iterating (generator return())
    try {
      // prefill in chunks; the last chunk's logits give the first token
      const t0 = performance.now();
      let next = 0;
      for (let i = 0; i < promptIds.length; i += this.#prefillChunk) {
        const chunk = promptIds.slice(i, i + this.#prefillChunk);
        const last = i + this.#prefillChunk >= promptIds.length; // only the last chunk's token is read (and drawn)
        this.#checkAlive();
        next = (await this.#lock.run(() => this.#fwd.stepTokens([{ seq, tokens: chunk }], [last ? sampler : null], prefill, op)))[0]!;
      }
      prefillMs = performance.now() - t0;
      for (;;) {
        const token = next;
        if (stopAtEos && eos.has(token)) {
          finish = 'eos';
          break;
        }
        out.push(token);
        text += dec.push(token);
        const cut = stops.length ? firstStop(text, stops, Math.max(0, emitted - holdBack)) : -1;
        if (cut >= 0) {
          text = text.slice(0, cut);
          finish = 'stop';
        }
        const safe = finish === 'stop' ? text.length : Math.max(emitted, text.length - holdBack);
        const chunkText = text.slice(emitted, safe);
        emitted = safe;
        yield { token, text: chunkText };
        if (finish === 'stop' || out.length >= maxNew) break;
        if (promptIds.length + out.length >= this.config.maxPositionEmbeddings) break;
        this.#checkAlive();
        const ts = performance.now();
        next = (
          await this.#lock.run(() =>
            this.#fwd.stepTokens([{ seq, tokens: [token] }], [sampler], decode, {
              ...op,
              iteration: { embedding },
              ...(routing ? { routing } : {}),
            }),
          )
        )[0]!;
        decodeMs += performance.now() - ts;
        decodeSteps++;
      }
      if (finish !== 'stop') {
        text += dec.flush();
        if (emitted < text.length) yield { token: -1, text: text.slice(emitted) };
        emitted = text.length;
      }
      settled = true;
    } catch (e) {
      settled = true;
      throw e;
    } finally {
      this.#kv.free(seq);
      this.#active--;
      // eslint-disable-next-line no-unsafe-finally
      if (!settled) return build('cancelled');
    }
    return build(finish);
  }
}

/** Index of the first stop string in text at or after `from` (-1: none). */
function firstStop(text: string, stops: readonly string[], from: number): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s, from);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Decode-step routing -> one TraceRequest ([iterations, layers, k] ids/probs, [iterations, layers, E] gates). */
function traceRequest(r: StepRouting, embedding: Float32Array, cfg: ModelConfig): TraceRequest {
  const L = cfg.moeLayers.length;
  const k = cfg.topK;
  const E = cfg.numExperts;
  const iterations = Math.floor(r.ids.length / L);
  const ids = new Uint16Array(iterations * L * k);
  const probs = new Float32Array(iterations * L * k);
  const gates = new Float32Array(iterations * L * E);
  for (let i = 0; i < iterations * L; i++) {
    ids.set(r.ids[i]!.subarray(0, k), i * k);
    probs.set(r.probs[i]!.subarray(0, k), i * k);
    gates.set(r.gates[i]!.subarray(0, E), i * E);
  }
  return { domain: -1, iterations, embedding: Float32Array.from(embedding), ids, probs, gates };
}

/**
 * Opens an HF MoE checkpoint folder and prepares it to generate.
 * Typed errors: CheckpointFormatError (missing/malformed files, shapes that disagree with config.json),
 * UnsupportedModelError (architecture), OutOfMemoryError (expert store, slots, KV cache), AbortError via `signal`.
 * @example
 * const model = await loadModel(dir, { experts: { fraction: 0.25, policy: 'finemoe' }, onProgress: (p) => console.log(p) });
 */
/** The model's paged KV cache on `host`; its option errors name loadModel's options. */
function createKvCache(host: Backend, config: ModelConfig, options: LoadModelOptions): KvCache {
  try {
    return KvCache.create(host, {
      layers: config.numLayers,
      kvHeads: config.mla ? config.numHeads : config.numKvHeads,
      headDim: attentionHeadDim(config),
      budgetBytes: options.kvCacheBytes ?? 256 * 2 ** 20,
      ...(options.kvBlockSize !== undefined ? { blockSize: options.kvBlockSize } : {}),
    });
  } catch (e) {
    if (!(e instanceof InvalidArgumentError)) throw e;
    throw new InvalidArgumentError(e.message.replaceAll('options.budgetBytes', 'kvCacheBytes').replaceAll('options.blockSize', 'kvBlockSize'));
  }
}

export async function loadModel(dir: string, options: LoadModelOptions = {}): Promise<MoeModel> {
  if (typeof dir !== 'string' || dir.length === 0) throw new InvalidArgumentError(`dir must be a non-empty path string, received ${describe(dir)}`);
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new CheckpointFormatError(dir, undefined, 'not a directory');
  const signal = options.signal;
  const be = resolveBackend(options.backend);
  const prefillChunk = options.prefillChunk ?? 256;
  if (!Number.isSafeInteger(prefillChunk) || prefillChunk < 1) throw new InvalidArgumentError(`prefillChunk must be a positive integer, received ${describe(options.prefillChunk)}`);
  const maxStepTokens = options.maxStepTokens ?? Math.max(512, prefillChunk);
  if (!Number.isSafeInteger(maxStepTokens) || maxStepTokens < 1) throw new InvalidArgumentError(`maxStepTokens must be a positive integer, received ${describe(options.maxStepTokens)}`);
  const given = options.deviceMemoryBytes;
  if (given !== undefined && !(typeof given === 'number' && given > 0 && Number.isFinite(given))) {
    throw new InvalidArgumentError(`deviceMemoryBytes must be a positive number of bytes, received ${describe(given)}`);
  }
  const asked = options.experts ?? 'auto';
  // auto: the GPU's free memory before anything is loaded (none on the CPU backend: resident)
  const deviceMemoryBytes = autoExpertSlots(asked) ? (given ?? be.memoryInfo()?.free) : undefined;
  const staged = options.deviceActivations ?? be.kind !== 'cpu';
  if (typeof staged !== 'boolean') throw new InvalidArgumentError(`deviceActivations must be a boolean, received ${describe(options.deviceActivations)}`);
  if (!staged && be.kind !== 'cpu') throw new InvalidArgumentError(`deviceActivations: false needs the CPU backend (CUDA activations live in device memory), received backend ${be.name}`);
  const askedThreads = options.attentionThreads ?? 'auto';
  if (askedThreads !== 'auto' && (!Number.isSafeInteger(askedThreads) || askedThreads < 0 || askedThreads > 65536)) {
    throw new InvalidArgumentError(`attentionThreads must be 'auto' or an integer in [0, 65536] (0: all), received ${describe(options.attentionThreads)}`);
  }
  if (options.attentionIsa !== undefined && !CPU_ISAS.includes(options.attentionIsa)) {
    throw new InvalidArgumentError(`attentionIsa must be one of ${CPU_ISAS.join(', ')}, received ${describe(options.attentionIsa)}`);
  }
  const pack = options.packWeights ?? packsWeightsByDefault(be);
  if (typeof pack !== 'boolean') throw new InvalidArgumentError(`packWeights must be a boolean, received ${describe(options.packWeights)}`);
  if (pack && be.kind !== 'cpu') throw new InvalidArgumentError(`packWeights: true needs the CPU backend (packed weights are a CPU-kernel layout), received backend ${be.name}`);
  // attention and the KV cache run on the CPU: a CPU backend of their own when staged (on the CPU backend too, with
  // a stream of its own beside the compute stream, so the staged path's two-backend orchestration, its events
  // included, is what the tests run)
  const host = be.kind === 'cpu' && !staged ? be : openBackend({ backend: 'cpu', ownStream: be.kind === 'cpu' });

  const configPath = path.join(dir, 'config.json');
  const config = parseModelConfig(readJson(configPath, true), configPath);
  checkRuntimeFamily(config, configPath);
  const genCfg = readJson(path.join(dir, 'generation_config.json'), false);
  const tokenizer = await ModelTokenizer.load(dir, signal ? { signal } : {});
  const eos = [...new Set([...config.eosTokenIds, ...idList(genCfg?.eos_token_id), ...tokenizer.eosTokenIds])];

  const ckpt = await Checkpoint.open(dir);
  const cleanup: Array<{ dispose(): void }> = [];
  try {
    validateCheckpoint(ckpt, config);
    // the KV cache first: a bad kvCacheBytes / kvBlockSize fails before minutes of weight loading
    const kv = createKvCache(host, config, options);
    cleanup.push(kv);
    // its pages mapped in while the weights load (not in the first steps that write them); awaited before returning
    const kvMapped = kv.prefault(signal ? { signal } : {});
    kvMapped.catch(() => {}); // observed here; a failure is thrown by the await below
    const denseTotal = ckpt.names().length - config.moeLayers.length * config.numExperts * 3;
    let denseDone = 0;
    const weights = await loadDenseWeights(ckpt, config, be, {
      ...(signal ? { signal } : {}),
      pack,
      onTensor: () => options.onProgress?.({ phase: 'dense', done: ++denseDone, total: denseTotal }),
    });
    cleanup.push({ dispose: () => disposeDense(weights) });
    const store = await ExpertStore.createAsync(
      be,
      {
        layers: config.moeLayers,
        experts: config.numExperts,
        hidden: config.hiddenSize,
        intermediate: config.moeIntermediateSize,
        packed: pack,
        ...(options.hostBudgetBytes !== undefined ? { hostBudgetBytes: options.hostBudgetBytes } : {}),
      },
      signal,
    );
    cleanup.push(store);
    const expertProgress = { ...(signal ? { signal } : {}), onProgress: (done: number, total: number) => options.onProgress?.({ phase: 'experts', done, total }) };
    let extras: ExpertExtras = {};
    if (config.family === 'gpt_oss') {
      const hostBiases = await loadGptOssExperts(ckpt, config, store, expertProgress);
      // the kernel reads the biases where it runs: device copies on CUDA
      const biases: Array<Array<{ gateBias: Tensor; upBias: Tensor; downBias: Tensor }>> = [];
      for (const layer of hostBiases) {
        const row: Array<{ gateBias: Tensor; upBias: Tensor; downBias: Tensor }> = [];
        for (const b of layer) {
          if (be.kind === 'cpu') row.push(b);
          else {
            const up = [await be.upload(b.gateBias), await be.upload(b.upBias), await be.upload(b.downBias)] as const;
            cleanup.push(...up);
            row.push({ gateBias: up[0], upBias: up[1], downBias: up[2] });
          }
        }
        biases.push(row);
      }
      extras = { biases: (li, e) => biases[li]![e]!, activation: { kind: 'swiglu-oai', alpha: 1.702, limit: config.swigluLimit ?? 7 } };
    } else {
      await store.load(ckpt, config, expertProgress);
    }
    // auto: the slots that fit beside the dense weights and the largest step
    const mode: Exclude<ExpertMode, 'auto'> = !autoExpertSlots(asked)
      ? (asked as Exclude<ExpertMode, 'auto'>)
      : deviceMemoryBytes === undefined
        ? 'resident'
        : { ...(typeof asked === 'object' ? asked : {}), slots: expertSlotsFor(config, deviceMemoryBytes, { tokens: maxStepTokens }) };
    const experts = makeProvider(be, host, store, config, mode, extras);
    cleanup.push(experts);
    const attentionThreads = resolveAttentionThreads(askedThreads, {
      backend: be.kind,
      streamsExperts: experts instanceof CachedExperts && !experts.holdsEveryExpert,
      poolThreads: hostFacts().cpu.threads,
    });
    await kvMapped;
    const model = new MoeModel({ dir, config, tokenizer, backend: be, host, staged, eos, weights, store, experts, kv, prefillChunk, attentionThreads, ...(options.attentionIsa !== undefined ? { attentionIsa: options.attentionIsa } : {}) });
    try {
      await model.reserveStepMemory(maxStepTokens);
    } catch (e) {
      model.dispose(); // it owns everything above now
      cleanup.length = 0;
      throw e;
    }
    return model;
  } catch (e) {
    for (const c of cleanup.reverse()) c.dispose();
    throw e;
  } finally {
    await ckpt.close();
  }
}

function resolveBackend(b: LoadModelOptions['backend']): Backend {
  const be = b === undefined || typeof b === 'string' ? openBackend({ backend: b ?? 'cpu' }) : b;
  if (typeof be !== 'object' || be === null || typeof (be as Backend).gemm !== 'function') {
    throw new InvalidArgumentError(`backend must be a Backend or 'cpu' | 'cuda' | 'auto', received ${describe(b)}`);
  }
  return be;
}

function makeProvider(be: Backend, host: Backend, store: ExpertStore, cfg: ModelConfig, mode: Exclude<ExpertMode, 'auto'>, extras: ExpertExtras): ExpertProvider {
  if (mode === 'resident') return new ResidentExperts(be, store, extras);
  if (typeof mode !== 'object' || mode === null) throw new InvalidArgumentError(`experts must be 'auto', 'resident' or { slots | fraction, policy }, received ${describe(mode)}`);
  const total = store.layers.length * store.experts;
  let slots: number;
  if (mode.slots !== undefined) {
    if (!Number.isSafeInteger(mode.slots) || (mode.slots as number) < 1) throw new InvalidArgumentError(`experts.slots must be a positive integer or 'auto', received ${describe(mode.slots)}`);
    slots = mode.slots as number;
  } else if (mode.fraction !== undefined) {
    if (typeof mode.fraction !== 'number' || !(mode.fraction > 0 && mode.fraction <= 1)) {
      throw new InvalidArgumentError(`experts.fraction must be a number in (0, 1], received ${describe(mode.fraction)}`);
    }
    slots = Math.ceil(mode.fraction * total);
  } else {
    throw new InvalidArgumentError('experts must give slots or fraction');
  }
  const policy = mode.policy ?? 'lru';
  if (policy !== 'lru' && policy !== 'finemoe') throw new InvalidArgumentError(`experts.policy must be 'lru' or 'finemoe', received ${describe(mode.policy)}`);
  const hostCompute = mode.hostCompute ?? (be.kind === 'cpu' ? 'never' : 'auto');
  if (hostCompute !== 'auto' && hostCompute !== 'never') throw new InvalidArgumentError(`experts.hostCompute must be 'auto' or 'never', received ${describe(mode.hostCompute)}`);
  return new CachedExperts(be, store, extras, {
    slots: Math.min(slots, total),
    policy,
    hostCompute,
    host,
    embedDim: cfg.hiddenSize,
    topK: cfg.topK,
    ...(mode.prefetchDistance !== undefined ? { prefetchDistance: mode.prefetchDistance } : {}),
  });
}
