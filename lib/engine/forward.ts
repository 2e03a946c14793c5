/**
 * The forward pass of a MoE decoder over one step: any number of sequences, each with one or more new tokens
 * (prefill chunks and decode tokens mix freely), keys and values appended to the paged host KV cache.
 *
 * Per layer (T = tokens in the step, H hidden, residual stream h [T, H] f32):
 *   xn = rmsNorm(h += pending)                       [T, H] bf16      (pending: the previous block's output)
 *   q, k, v = xn Wqᵀ, xn Wkᵀ, xn Wvᵀ (+ bias)        [T, heads*hd], [T, kv*hd] f32
 *   q/k norm (Qwen3 per head, OLMoE whole projection); rope(q, k) at the tokens' positions
 *   KV cache <- k, v;  a = attention(q, cache)        [T, heads, hd] bf16
 *   xn = rmsNorm(h += a Woᵀ)
 *   MoE:   logits = xn Wrᵀ [T, E] f32; ids, w = topK(logits); out = experts(xn) (+ shared expert)   [T, H] bf16
 *   dense: out = mlp(xn)
 *   pending = out
 * then xn = rmsNorm(h += pending) and logits = xn Wlmᵀ for each sequence's last token (or every token): `step` returns
 * them, `stepTokens` turns them into next tokens (on the compute backend when every row is greedy: only the ids
 * come down).
 *
 * Ops are submitted in groups on the backends' streams (each runs its ops in order). With one micro-batch and no
 * clip or MLA (queuesLayers), a layer's attention module is queued behind its router with no await between them
 * (staged: from the compute backend's stream to the host backend's and back through events), so a layer costs one
 * round trip to JS, after the router (its choice decides which experts to fetch), plus the experts'; with resident
 * experts and no tracing the whole step is queued and awaited once, at the LM head. Otherwise (micro-batches, OLMoE's
 * clip, MLA) a layer costs four or five: after the q/k/v group, after attention, after the router, after the experts.
 * Time is booked per group into {@link StepTimes}, or for queued layers from the ops' run intervals (OpOptions.timing).
 */
import type { Backend, CpuIsa, OpOptions, OpTiming } from '../backend.js';
import type { KvBatch, KvCache } from '../kv/cache.js';
import type { ModelConfig } from '../model/config.js';
import type { DenseWeights, LayerWeights, MlaWeights } from '../model/weights.js';
import { DTYPE_SIZE, type DType, describe } from '../dtype.js';
import { type DeviceTensor, HostTensor, type PinnedBuffer, type Tensor, numelOf } from '../tensor.js';
import { InvalidArgumentError, OutOfMemoryError } from '../errors.js';
import type { Event } from '../stream.js';
import type { ExpertProvider, ExpertRun } from './experts.js';
import { type Sampler, sampleRows } from './sampler.js';

/** One sequence's part of a step. */
export interface StepSequence {
  /** KV cache sequence id. */
  seq: number;
  /** New tokens (their keys and values are appended). */
  tokens: readonly number[];
}

/** Where a step's time went, ms (wall time of awaited op groups; `hostMs` is JS work between them). */
export interface StepTimes {
  attentionMs: number;
  expertMs: number;
  stallMs: number;
  /** Everything but attention and experts on the compute backend: the sum of the three parts below. */
  denseMs: number;
  /** Of denseMs: embedding, input norm, q/k/v projections, RoPE (and their downloads when staged). */
  denseQkvMs: number;
  /** Of denseMs: output projection, post-attention norm, router, top-k, shared experts (and routing downloads). */
  denseOutMs: number;
  /** Of denseMs: final norm, last-row gather, LM head, logits download. */
  denseHeadMs: number;
  /** KV writes, routing bookkeeping, sampling prep: JS on the main thread between native groups. */
  hostMs: number;
  totalMs: number;
}

/**
 * KV tokens per split of the runtime's attention calls (Backend.attention's splitTokens): a sequence's split count
 * then depends on its own length alone, so its rows are the same bits in any batch, and a long context is still
 * spread over the threads. (A fixed 4 splits before: at short contexts each split held 2-3 pages; on the AVX2 VM,
 * moe-native bench-attention's splits rows, 3 runs: prefill of 16 x 512 tokens 1.38-1.62x slower than with
 * splitTokens 1024, decode of 1536 x 530 tokens 0.98-1.13x; bench/results/attention-native-2026-11-27-avx2-splits.json.)
 */
export const ATTENTION_SPLIT_TOKENS = 1024;

/**
 * The CPU pool threads the attention runs on while expert copies stream to a GPU (LoadModelOptions.attentionThreads
 * 'auto'): all but a quarter of them, at least 2 left free for the threads that submit the copies and settle them.
 * On an H200 host (16 cores, module-based decode of a Mixtral-shaped model, batch 2048) the attention on all 16
 * left the GPU waiting 73-80 ms per step for its experts; on 14, 31 ms; on 12, 0.1 ms, the step 164 ms against
 * 210 (bench/results/throughput-staged-cuda-2026-11-27-h200-modelbased-threads1[246].json).
 * @example attentionThreadsBesideCopies(16) // 12
 */
export function attentionThreadsBesideCopies(poolThreads: number): number {
  return Math.max(1, poolThreads - Math.max(2, Math.round(poolThreads / 4)));
}

/**
 * LoadModelOptions.attentionThreads resolved (0: every thread of the pool): a number as given; 'auto' caps it
 * (attentionThreadsBesideCopies) on CUDA when routed experts stream into fewer slots than there are experts.
 * @example resolveAttentionThreads('auto', { backend: 'cuda', streamsExperts: true, poolThreads: 16 }) // 12
 */
export function resolveAttentionThreads(asked: number | 'auto', at: { backend: 'cpu' | 'cuda'; streamsExperts: boolean; poolThreads: number }): number {
  if (asked !== 'auto') return asked;
  return at.backend === 'cuda' && at.streamsExperts ? attentionThreadsBesideCopies(at.poolThreads) : 0;
}

export function emptyTimes(): StepTimes {
  return { attentionMs: 0, expertMs: 0, stallMs: 0, denseMs: 0, denseQkvMs: 0, denseOutMs: 0, denseHeadMs: 0, hostMs: 0, totalMs: 0 };
}

/** Per MoE layer routing of a step, for traces: ids [T, k] and the full gate probabilities [T, E]. */
export interface StepRouting {
  ids: Int32Array[];
  probs: Float32Array[];
  gates: Float32Array[];
}

export interface StepOptions {
  signal?: AbortSignal;
  /** Logits of every token instead of each sequence's last one. */
  allLogits?: boolean;
  /** Collect routing (ids, top-k probabilities, full gate vectors) per MoE layer. */
  routing?: StepRouting;
  /** A decode iteration of one sequence: drives the expert predictor (embedding = request's semantic embedding). */
  iteration?: { embedding: Float32Array };
  /**
   * Micro-batches of the attention module (default 1): the step's sequences in up to this many groups of about
   * equal token counts, pipelined so that one group's CPU attention overlaps the compute backend's projections of
   * the others. Same tokens whatever the count. With more than one, the module's time is booked as attentionMs.
   */
  microBatches?: number;
}

type BookKey = Exclude<keyof StepTimes, 'denseMs' | 'totalMs'>;
/** Books the time from the step's last mark up to `until` (a performance.now() time; default now) in `k`. */
type Book = (k: BookKey, until?: number) => void;

/**
 * A queued layer's op intervals (OpOptions.timing): its RoPE, attention, last op before the experts, last op; and
 * the previous layer's experts when they were submitted, not awaited (ExpertProvider.submit): this layer's ops ran
 * behind them.
 */
interface LayerRan {
  rope: OpTiming;
  attention: OpTiming;
  route: OpTiming;
  end: OpTiming;
  prev?: OpTiming;
}

/**
 * Books queued layers from their ops' intervals, in stream order: the previous layer's submitted experts up to their
 * end (expertMs), q/k/v up to the RoPE's end (denseQkvMs), the KV write up to attention's start (hostMs), attention,
 * then the output projection, norms and router (denseOutMs) up to now or, in a whole step, up to the route's end and
 * the experts (expertMs) up to the layer's end. A whole step
 * starts with its embedding (up to `embed`'s end).
 */
function bookQueued(book: Book, layers: readonly LayerRan[], whole: boolean, embed?: OpTiming): void {
  const at = (t: number | undefined) => t ?? -Infinity; // unset (never when every op succeeded): nothing booked
  if (embed) book('denseQkvMs', at(embed.endMs));
  for (const r of layers) {
    if (r.prev) book('expertMs', at(r.prev.endMs));
    book('denseQkvMs', at(r.rope.endMs));
    book('hostMs', at(r.attention.startMs));
    book('attentionMs', at(r.attention.endMs));
    if (!whole) {
      book('denseOutMs');
      continue;
    }
    book('denseOutMs', at(r.route.endMs));
    book('expertMs', at(r.end.endMs));
  }
}

/** One micro-batch of a step: sequences [.., ..) of the step, their token rows [t0, t0 + T) and KV writes. */
interface StepGroup {
  seqs: readonly StepSequence[];
  writes: ReadonlyArray<{ seq: number; pos: number; n: number }>;
  t0: number;
  T: number;
  batch: KvBatch;
}

/**
 * The step's sequences in at most `count` contiguous groups of about equal token counts (each non-empty; group g
 * ends at the sequence boundary nearest to (g + 1) / count of the tokens).
 */
export function stepGroups(seqs: readonly StepSequence[], writes: ReadonlyArray<{ seq: number; pos: number; n: number }>, count: number): Array<Omit<StepGroup, 'batch'>> {
  if (!Number.isSafeInteger(count) || count < 1) throw new InvalidArgumentError(`microBatches must be an integer >= 1, received ${describe(count)}`);
  const total = seqs.reduce((n, s) => n + s.tokens.length, 0);
  const out: Array<Omit<StepGroup, 'batch'>> = [];
  let i0 = 0, t0 = 0, t = 0;
  const most = Math.min(count, seqs.length);
  for (let i = 0; i < seqs.length; i++) {
    t += seqs[i]!.tokens.length;
    const share = (total * (out.length + 1)) / most; // where this group should end
    const next = i + 1 < seqs.length ? seqs[i + 1]!.tokens.length : 0;
    // close at the share, or before it when taking the next sequence would overshoot it by more
    if (i === seqs.length - 1 || (out.length + 1 < most && (t >= share || t + next - share > share - t))) {
      out.push({ seqs: seqs.slice(i0, i + 1), writes: writes.slice(i0, i + 1), t0, T: t - t0 });
      i0 = i + 1;
      t0 = t;
    }
  }
  return out;
}


export interface ForwardParts {
  /** Runs the GEMMs, norms, router and experts (the CPU backend, or CUDA). */
  be: Backend;
  /** Runs RoPE and attention over the host KV cache: a CPU backend (`be` itself when it is one). */
  host: Backend;
  /**
   * Activations in `be`'s device memory, crossing to `host` through explicit copies (q/k/v down for RoPE, the KV
   * cache and attention; the attention output up; routing ids and weights down): required on CUDA; on the CPU
   * backend it runs the same path over the CPU device pool (tests check it against the direct path).
   */
  staged: boolean;
  cfg: ModelConfig;
  weights: DenseWeights;
  kv: KvCache;
  experts: ExpertProvider;
  invFreq: HostTensor<'f32'>;
  /** RoPE cos/sin multiplier (yarn). */
  attentionScaling: number;
  /** Softmax scale of attention (1/sqrt(qk head dim), times yarn's mscale^2 for DeepSeek). */
  attentionScale: number;
  /** KV cache head dim (MLA: padded, see attentionHeadDim). */
  headDim: number;
  /** CPU pool threads the attention runs on (0: all; LoadModelOptions.attentionThreads). */
  attentionThreads?: number;
  /** The attention's CPU kernel tier when below the host backend's (LoadModelOptions.attentionIsa). */
  attentionIsa?: CpuIsa;
}

/**
 * A tensor with a host view: `dev` lives on the compute backend, `host` is its host copy (the same tensor when
 * the pass is not staged). down/up copy between them (no-ops when not staged).
 */
interface Staged<D extends DType = DType> {
  dev: Tensor;
  host: HostTensor<D>;
}

/**
 * Where an arena's memory comes from: its buffer (now, or a Promise when it is allocated off the JS thread), views of
 * it, and a tensor of its own for what does not fit.
 */
interface ArenaMemory<B extends { readonly byteLength: number; dispose(): void }, T extends Tensor & { dispose(): void }> {
  /** A buffer of `bytes`; `prefault`: its pages mapped in before it resolves (where the memory allows it). */
  buffer(bytes: number, prefault: boolean): B | Promise<B>;
  view<D extends DType>(buf: B, dtype: D, shape: number[], byteOffset: number): T;
  alone<D extends DType>(dtype: D, shape: number[]): T;
}

/**
 * Memory for a step's tensors, kept from step to step: one buffer that each step carves views from, so a step
 * allocates and frees nothing (cudaMalloc is slow and cudaFree waits for every queued operation on the device, the
 * next layer's expert prefetch included; cudaHostAlloc is slower still; on the CPU backend fresh JS arrays are zeroed
 * and their pages fault in as they are written, ~11 us per 4 KiB page on the development VM, and they make work for
 * the GC: the direct path's steps took 16-50 ms for 512 tokens of the demo model with them, 16-19 with the arena).
 * loadModel reserves it for its largest step (reserve), so the first steps find it there. A step that needs more than the
 * buffer holds takes separate tensors for the rest and the buffer grows to the step's total for the next one;
 * after SHRINK_AFTER steps in a row that each used under a quarter of it, it shrinks to their largest need, never
 * below what loadModel reserved (so one long prefill does not keep its memory for the model's lifetime).
 * Steps run one at a time (the model's StepLock); a step that ended with an error may leave ops in flight on the
 * buffer, so the buffer is then released (its memory is freed once those ops let go of it) and a new one allocated.
 * Two per pass: device activations (staged), and the host tensors (pinned on CUDA: the copies down and up then run
 * at full PCIe speed instead of through the driver's bounce buffer; the direct path's activations too). The host
 * buffer is allocated off the JS thread (page-locking tens of MiB takes milliseconds), its pages mapped in there too
 * when loadModel reserves it (not when a step grows it: that would take the pool's threads from the steps running
 * meanwhile): a grown one is taken into use at the first step after it arrives; steps before that take separate
 * tensors.
 */
class Arena<B extends { readonly byteLength: number; dispose(): void }, T extends Tensor & { dispose(): void }> {
  static readonly ALIGN = 256;
  static readonly SHRINK_AFTER = 32;
  readonly #mem: ArenaMemory<B, T>;
  #buf: B | undefined;
  #used = 0;
  #need = 0;
  #lastNeed = 0;
  #small = 0; // steps in a row that used under a quarter of the buffer
  #smallMax = 0; // the largest need among them
  #floor = 0; // bytes reserved (reserve): the buffer never shrinks below them
  readonly #extra: T[] = [];
  #ready: B | undefined; // an allocated buffer not yet in use (installed at the next step's first take)
  #pending = false; // an allocation is on its way
  #disposed = false;
  constructor(mem: ArenaMemory<B, T>) {
    this.#mem = mem;
  }
  /** Bytes the buffer holds (0 before the first staged step). */
  get capacity(): number {
    return this.#buf?.byteLength ?? 0;
  }
  /** A `shape` x `dtype` tensor valid until end(). */
  take<D extends DType>(dtype: D, shape: number[]): T {
    if (this.#used === 0 && this.#ready) {
      // a step starts: a buffer that arrived since takes over (the one it replaces has no views left)
      this.#buf?.dispose();
      this.#buf = this.#ready;
      this.#ready = undefined;
    }
    const bytes = numelOf(shape) * DTYPE_SIZE[dtype];
    const at = this.#used;
    const rounded = Math.ceil(bytes / Arena.ALIGN) * Arena.ALIGN;
    this.#used += rounded;
    this.#need = Math.max(this.#need, this.#used);
    if (this.#buf && this.#used <= this.#buf.byteLength) return this.#mem.view(this.#buf, dtype, shape, at);
    const d = this.#mem.alone(dtype, shape);
    this.#extra.push(d);
    return d;
  }
  /**
   * The buffer for steps that take up to `bytes` at once, allocated now (loadModel: its largest step), so that the
   * first steps take no separate tensors (each costs an allocation, and fresh pages fault in as they are written);
   * later it shrinks no lower (a long run of decode steps then does not cost the next prefill step its memory).
   * A buffer already as large is kept. An allocation that fails (out of memory) leaves the arena as it was: steps
   * then grow it as they need. `keep` false: the buffer now, but no floor (it shrinks after a run of small steps as
   * a grown one does): generateBatch's steps of up to its maxBatchTokens.
   */
  async reserve(bytes: number, keep = true): Promise<void> {
    const size = Math.ceil(bytes / Arena.ALIGN) * Arena.ALIGN;
    if (keep) this.#floor = Math.max(this.#floor, size);
    if (this.#disposed || size <= this.capacity) return;
    let b: B;
    try {
      b = await this.#mem.buffer(size, true);
    } catch (e) {
      if (e instanceof OutOfMemoryError) return;
      throw e;
    }
    if (this.#disposed) return b.dispose();
    if (this.#used > 0) {
      // a step is running on the buffer: the new one takes over at the next step's first take
      this.#ready?.dispose();
      this.#ready = b;
      return;
    }
    this.#buf?.dispose();
    this.#buf = b;
  }
  /** Where the next take() starts: release(mark()) gives back everything taken after it. */
  mark(): number {
    return this.#used;
  }
  /**
   * Everything taken since `at` (a mark()) is free again: the caller awaited every op that uses it (a finished
   * layer's tensors; the next layer reuses their memory, so a step needs one layer's, not every layer's). Separate
   * tensors taken for what did not fit stay until end().
   */
  release(at: number): void {
    if (at < 0 || at > this.#used) throw new InvalidArgumentError(`arena mark must be in [0, ${this.#used}], received ${at}`);
    this.#used = at;
  }
  /** Bytes the last finished step's takes needed at most at once (what the buffer must hold for it to fit). */
  get lastNeed(): number {
    return this.#lastNeed;
  }
  /** The step is over: `ok` when every op it queued has completed. */
  end(ok: boolean): void {
    this.#lastNeed = this.#need;
    for (const d of this.#extra) d.dispose();
    const grow = this.#extra.length > 0;
    this.#extra.length = 0;
    const cap = this.capacity;
    if (ok && !grow && cap > this.#floor && this.#need * 4 < cap) {
      this.#small++;
      this.#smallMax = Math.max(this.#smallMax, this.#need);
    } else {
      this.#small = 0;
      this.#smallMax = 0;
    }
    const shrink = this.#small >= Arena.SHRINK_AFTER;
    // the next buffer: the grown step's need or the small steps' largest, a quarter to spare; never below the reserve
    const size = Math.max(Math.ceil(((grow ? this.#need : this.#smallMax) * 1.25) / Arena.ALIGN) * Arena.ALIGN, this.#floor);
    if (!ok || grow || shrink) {
      this.#buf?.dispose();
      this.#buf = undefined;
      this.#small = 0;
      this.#smallMax = 0;
      if (size > 0) this.#request(size);
    }
    this.#used = 0;
    this.#need = 0;
  }
  #request(bytes: number): void {
    if (this.#disposed || this.#pending) return; // one allocation at a time; a step that still overflows asks again
    // not prefaulted: mapping in a grown buffer's pages on the pool's threads stalled the steps running meanwhile
    // (2-core VM, OLMoE shape, batch 32: the decode steps after a 16,384-token prefill step took 1,058 / 177 / 170 /
    // 88 ms before settling at 65); its pages fault in where the next large step writes them
    const got = this.#mem.buffer(bytes, false);
    if (!(got instanceof Promise)) {
      this.#buf = got;
      return;
    }
    this.#pending = true;
    got.then(
      (b) => {
        this.#pending = false;
        if (this.#disposed) return b.dispose();
        this.#ready?.dispose();
        this.#ready = b;
      },
      () => {
        this.#pending = false; // out of memory: the steps keep separate tensors, and a later growth asks again
      },
    );
  }
  dispose(): void {
    this.#disposed = true;
    this.end(false);
    this.#ready?.dispose();
    this.#ready = undefined;
  }
}

/** The device arena of `be`: one f32 allocation, views of it. */
function deviceArena(be: Backend): Arena<DeviceTensor<'f32'>, DeviceTensor> {
  return new Arena({
    buffer: (bytes) => be.alloc('f32', [bytes / 4]),  // device memory: nothing to map in
    view: (buf, dtype, shape, at) => buf.view(dtype, shape, at),
    alone: (dtype, shape) => be.alloc(dtype, shape),
  });
}

/**
 * The host arena of `be`: one PinnedBuffer (page-locked on CUDA; allocated and its pages mapped in off the JS thread),
 * HostTensor views of it (overflow: plain JS memory).
 */
function hostArena(be: Backend): Arena<PinnedBuffer, HostTensor> {
  return new Arena({
    buffer: (bytes, prefault) => be.allocPinnedAsync(bytes, { prefault }),
    view: (buf, dtype, shape, at) => buf.tensor(dtype, shape, at),
    alone: (dtype, shape) => new HostTensor(dtype, shape),
  });
}

/**
 * Per-step allocations: activations on the compute backend (device memory when staged: the device arena's; the host
 * arena's on the direct path) and their host copies (from the host arena, pinned on CUDA): views valid until the
 * step ends, so what a step returns is copied out.
 */
class StepMemory {
  readonly #be: Backend;
  readonly #staged: boolean;
  readonly #dev: Arena<DeviceTensor<'f32'>, DeviceTensor>;
  readonly #host: Arena<PinnedBuffer, HostTensor>;
  readonly #op: { signal?: AbortSignal };
  constructor(be: Backend, staged: boolean, arenas: { dev: Arena<DeviceTensor<'f32'>, DeviceTensor>; host: Arena<PinnedBuffer, HostTensor> }, op: { signal?: AbortSignal }) {
    this.#be = be;
    this.#staged = staged;
    this.#dev = arenas.dev;
    this.#host = arenas.host;
    this.#op = op;
  }
  /** A compute-backend tensor (device memory when staged; the host arena's otherwise): valid until the step ends. */
  act<D extends DType>(dtype: D, shape: number[]): Tensor {
    return this.#staged ? this.#dev.take(dtype, shape) : this.#host.take(dtype, shape);
  }
  /** A host tensor that goes to or comes from the compute backend (the host arena's: valid until the step ends). */
  host<D extends DType>(dtype: D, shape: number[]): HostTensor<D> {
    return this.#host.take(dtype, shape) as HostTensor<D>;
  }
  /** A compute tensor with a host copy. */
  pair<D extends DType>(dtype: D, shape: number[]): Staged<D> {
    const host = this.host(dtype, shape);
    return { dev: this.#staged ? this.act(dtype, shape) : host, host };
  }
  /** A host tensor's copy on the compute backend (itself when not staged), once the copy is done. */
  async upload(h: HostTensor): Promise<Tensor> {
    const ops: Array<Promise<unknown>> = [];
    const d = this.put(h, ops);
    await Promise.all(ops);
    return d;
  }
  /** upload() queued: the copy goes into `ops` (not awaited), its destination is returned at once. */
  put(h: HostTensor, ops: Array<Promise<unknown>>): Tensor {
    if (!this.#staged) return h;
    const d = this.act(h.dtype, [...h.shape]);
    ops.push(this.#be.copy(h, d, this.#op));
    return d;
  }
  down(p: Staged): Promise<unknown> {
    return this.#staged ? this.#be.copy(p.dev, p.host, this.#op) : Promise.resolve();
  }
  up(p: Staged): Promise<unknown> {
    return this.#staged ? this.#be.copy(p.host, p.dev, this.#op) : Promise.resolve();
  }
  /** Where the next tensors start in both arenas (a layer's start). */
  mark(): { dev: number; host: number } {
    return { dev: this.#dev.mark(), host: this.#host.mark() };
  }
  /** Frees every tensor taken since `at` for reuse (the caller awaited every op that uses them). */
  release(at: { dev: number; host: number }): void {
    if (this.#staged) this.#dev.release(at.dev);
    this.#host.release(at.host);
  }
  /** The step is over (`ok`: every op it queued completed). */
  end(ok: boolean): void {
    if (this.#staged) this.#dev.end(ok);
    this.#host.end(ok);
  }
}

/**
 * Whether a step of `cfg` with one micro-batch queues its layers, each awaited at most once, with its router (see
 * #forward; staged too, across the streams by events): nothing read on the JS side between the input norm and the
 * router (no clip_qkv clamp, no MLA assembly). The performance model counts its round trips by the same rule
 * (stepOps).
 */
export function queuesLayers(cfg: ModelConfig): boolean {
  return cfg.clipQkv === null && cfg.mla === null;
}

/** Whether the router's top-k weights are rescaled on the host after the router's group (then awaited, not queued). */
export function rescalesRouting(cfg: ModelConfig): boolean {
  return !cfg.router.renormalize && cfg.router.scale !== 1;
}

/** Rows of logits a staged step computes at once (the LM head in chunks: device memory bounded by the vocabulary). */
export const LOGIT_ROWS = 256;

/**
 * Queues the LM head over a step's output rows, handing each chunk of logits [n, V] f32 (rows r0..) to `each` (which
 * queues its consumer on the compute backend's stream, before the next chunk overwrites the chunk); returns the ops.
 */
type LmHead = (each: (logits: Tensor, r0: number) => Promise<unknown>) => Array<Promise<unknown>>;

export class ForwardPass {
  readonly #p: ForwardParts;
  readonly #moeIndex: Map<number, number>;
  readonly #arenas: { dev: Arena<DeviceTensor<'f32'>, DeviceTensor>; host: Arena<PinnedBuffer, HostTensor> };
  #cross: { down: Event; up: Event } | undefined;

  constructor(parts: ForwardParts) {
    this.#p = parts;
    this.#moeIndex = new Map(parts.cfg.moeLayers.map((l, i) => [l, i]));
    this.#arenas = { dev: deviceArena(parts.be), host: hostArena(parts.be) };
  }

  /**
   * Staged mode's step memory: the device arena's and the pinned host arena's buffers (bytes held now), and what the
   * last step needed of each (0 when not staged).
   */
  get stepMemory(): { device: number; host: number; deviceNeed: number; hostNeed: number } {
    const { dev, host } = this.#arenas;
    return { device: dev.capacity, host: host.capacity, deviceNeed: dev.lastNeed, hostNeed: host.lastNeed };
  }
  /**
   * Allocates the step memory now for steps that need `need` bytes (lib/batching/memory.ts stepArenaNeed: `device`
   * from the compute backend's arena, `host` from the host arena; the direct path takes both from the host arena),
   * so that the first steps find it there. `keep` false: no floor (see Arena.reserve).
   */
  async reserve(need: { device: number; host: number }, keep = true): Promise<void> {
    const { dev, host } = this.#arenas;
    if (this.#p.staged) await Promise.all([dev.reserve(need.device, keep), host.reserve(need.host, keep)]);
    else await host.reserve(need.device + need.host, keep);
  }

  /** Frees the activation memory kept between steps. */
  dispose(): void {
    this.#arenas.dev.dispose();
    this.#arenas.host.dispose();
    this.#cross?.down.dispose();
    this.#cross?.up.dispose();
    this.#cross = undefined;
  }

  /**
   * The events a queued staged layer crosses between the streams with (made once): `down` on the compute backend's
   * stream after the q/k/v downloads, `up` on the host backend's after attention.
   */
  #crossEvents(): { down: Event; up: Event } {
    this.#cross ??= { down: this.#p.be.createEvent(), up: this.#p.host.createEvent() };
    return this.#cross;
  }

  /** RoPE of q [T, nH, d] and k [T, nKV, d] (host f32) at `positions`, on the host backend. */
  #rope(q: HostTensor, k: HostTensor, positions: HostTensor, op: OpOptions): Promise<unknown> {
    return this.#p.host.rope({ q, k, positions, invFreq: this.#p.invFreq, attentionScaling: this.#p.attentionScaling }, op);
  }

  /**
   * Multi-head attention projections: q/k/v (+ bias), q/k norm on the compute backend, then (on the host) OLMoE's
   * clip and RoPE. `norm` is the pending input norm op. Returns host q [T, nH, hd], k and v [T, nKV, hd] f32.
   * With `queue` (a queued layer: no clip), RoPE joins the group (staged: behind the q/k/v downloads, through
   * `queue.toHost`'s event), the ops go into `queue.ops` unawaited and the RoPE's run interval into `queue.ropeRan`.
   */
  async #mhaQkv(w: LayerWeights, xn: Tensor, T: number, positions: HostTensor, norm: Promise<unknown>, m: StepMemory, op: { signal?: AbortSignal }, queue?: { ops: Array<Promise<unknown>>; ropeRan: OpTiming; toHost: () => void }): Promise<{ q: HostTensor; k: HostTensor; v: HostTensor }> {
    const { be, cfg, staged } = this.#p;
    const nH = cfg.numHeads;
    const nKV = cfg.numKvHeads;
    const hd = cfg.headDim;
    const q = m.pair('f32', [T, nH, hd]);
    const k = m.pair('f32', [T, nKV, hd]);
    const v = m.pair('f32', [T, nKV, hd]);
    const q2 = q.dev.reshape([T, nH * hd]);
    const k2 = k.dev.reshape([T, nKV * hd]);
    const v2 = v.dev.reshape([T, nKV * hd]);
    const g: Array<Promise<unknown>> = [norm, be.gemm(xn, w.q!, q2, op), be.gemm(xn, w.k!, k2, op), be.gemm(xn, w.v!, v2, op)];
    if (w.qBias) g.push(be.add(q2, w.qBias, q2, op), be.add(k2, w.kBias!, k2, op), be.add(v2, w.vBias!, v2, op));
    if (w.qNorm) {
      const perHead = w.qNorm.numel === hd && cfg.family !== 'olmoe';
      const qn = perHead ? q.dev.reshape([T * nH, hd]) : q2;
      const kn = perHead ? k.dev.reshape([T * nKV, hd]) : k2;
      g.push(be.rmsNorm({ x: qn, weight: w.qNorm, out: qn, eps: cfg.rmsNormEps }, op), be.rmsNorm({ x: kn, weight: w.kNorm!, out: kn, eps: cfg.rmsNormEps }, op));
    }
    if (staged) g.push(m.down(q), m.down(k), m.down(v));
    // queued, or not staged and no clip: RoPE joins the group (one round trip fewer); queued and staged, behind the
    // downloads through an event (toHost)
    const inGroup = queue !== undefined || (!staged && cfg.clipQkv === null);
    if (inGroup) {
      queue?.toHost();
      g.push(this.#rope(q.host, k.host, positions, queue ? { ...op, timing: queue.ropeRan } : op));
    }
    if (queue) {
      // what reads q, k and v is queued after these ops; the caller awaits them with its own
      queue.ops.push(...g);
      return { q: q.host, k: k.host, v: v.host };
    }
    await Promise.all(g);
    if (inGroup) return { q: q.host, k: k.host, v: v.host };
    if (cfg.clipQkv !== null) {
      // OLMoE clip_qkv: clamp the normed q, k and v before RoPE
      const c = cfg.clipQkv;
      for (const t of [q.host, k.host, v.host]) {
        const d = t.data;
        for (let i = 0; i < d.length; i++) d[i] = Math.min(c, Math.max(-c, d[i]!));
      }
    }
    await this.#rope(q.host, k.host, positions, op);
    return { q: q.host, k: k.host, v: v.host };
  }

  /**
   * Multi-head latent attention (DeepSeek-V2), run as multi-head attention over decompressed keys and values:
   * c = norm(x Wc) [T, rank]; k_nope = c Wkn, v = c Wv per head; k_pe = rope(x Wkpe) shared by all heads;
   * q = [q_nope | rope(q_pe)]. Keys [k_nope | k_pe] and queries are zero-padded to the cache's head dim, values too.
   * Projections on the compute backend; RoPE and the assembly on the host.
   */
  async #mlaQkv(w: MlaWeights, xn: Tensor, T: number, positions: HostTensor, norm: Promise<unknown>, m: StepMemory, op: { signal?: AbortSignal }): Promise<{ q: HostTensor; k: HostTensor; v: HostTensor }> {
    const { be, cfg, staged } = this.#p;
    const ml = cfg.mla!;
    const nH = cfg.numHeads;
    const D = this.#p.headDim;
    const { qkNopeHeadDim: nope, qkRopeHeadDim: rope, vHeadDim: vd, kvLoraRank: kvr } = ml;
    const g: Array<Promise<unknown>> = [norm];
    let qIn: Tensor = xn;
    if (w.qA) {
      const qa = m.act('f32', [T, ml.qLoraRank!]);
      qIn = m.act('bf16', [T, ml.qLoraRank!]);
      g.push(be.gemm(xn, w.qA, qa, op), be.rmsNorm({ x: qa, weight: w.qANorm!, out: qIn, eps: 1e-6 }, op));
    }
    const qn = m.pair('f32', [T, nH * nope]);
    const qp = m.pair('f32', [T, nH, rope]);
    const c = m.act('f32', [T, kvr]);
    const cb = m.act('bf16', [T, kvr]);
    const kp = m.pair('f32', [T, 1, rope]);
    const kn = m.pair('f32', [T, nH * nope]);
    const vv = m.pair('f32', [T, nH * vd]);
    g.push(
      be.gemm(qIn, w.qNope, qn.dev, op),
      be.gemm(qIn, w.qPe, qp.dev.reshape([T, nH * rope]), op),
      be.gemm(xn, w.kvC, c, op),
      be.rmsNorm({ x: c, weight: w.kvANorm, out: cb, eps: 1e-6 }, op),
      be.gemm(xn, w.kPe, kp.dev.reshape([T, rope]), op),
      be.gemm(cb, w.kNope, kn.dev, op),
      be.gemm(cb, w.v, vv.dev, op),
    );
    if (!staged) g.push(this.#rope(qp.host, kp.host, positions, op));
    else g.push(m.down(qn), m.down(qp), m.down(kp), m.down(kn), m.down(vv));
    await Promise.all(g);
    if (staged) await this.#rope(qp.host, kp.host, positions, op);
    const q = new HostTensor('f32', [T, nH, D]);
    const k = new HostTensor('f32', [T, nH, D]);
    const v = new HostTensor('f32', [T, nH, D]);
    assembleMla({ T, heads: nH, nope, rope, v: vd, headDim: D }, { qn: qn.host.data, qp: qp.host.data, kn: kn.host.data, kp: kp.host.data, vv: vv.host.data }, { q: q.data, k: k.data, v: v.data });
    return { q, k, v };
  }

  /**
   * Runs one step; returns logits f32 [numSeqs, V] (each sequence's last token) or [T, V] with allLogits.
   * The sequences' KV lengths grow by their token counts (the caller frees sequences it abandons).
   */
  step(seqs: readonly StepSequence[], times: StepTimes, o: StepOptions = {}): Promise<HostTensor<'f32'>> {
    return this.#forward(seqs, times, o, async (lmHead, rows, m) => {
      const logits = await this.#hostLogits(lmHead, rows, m);
      // a view of the step's host arena, reused by the next step: copied out
      return HostTensor.from('f32', logits.shape, logits.data);
    });
  }

  /** The LM head's logits [rows, V] on the host (staged: each chunk copied down into the step's pinned memory). */
  async #hostLogits(lmHead: LmHead, rows: number, m: StepMemory): Promise<HostTensor<'f32'>> {
    if (!this.#p.staged) {
      let out: HostTensor<'f32'> | undefined;
      await Promise.all(
        lmHead(async (l) => {
          out = l as HostTensor<'f32'>; // one chunk: the logits themselves
        }),
      );
      return out!;
    }
    const host = m.host('f32', [rows, this.#p.cfg.vocabSize]);
    await Promise.all(lmHead((l, r0) => m.down({ dev: l, host: host.rows(r0, l.shape[0]!) })));
    return host;
  }

  /**
   * Runs one step and chooses each sequence's next token: samplers[i] for sequence i (null: greedy, no draw; see
   * sampler.ts sampleRows). A staged step whose samplers are all greedy takes the argmax on the compute backend
   * (Backend.argmaxRows) and downloads numSeqs token ids instead of numSeqs x V logits; otherwise the logits come
   * down and Backend.sampleRows runs on the host. The choice counts in denseHeadMs.
   * @example
   * const [next] = await fwd.stepTokens([{ seq, tokens: [tok] }], [new Sampler({})], emptyTimes());
   */
  stepTokens(seqs: readonly StepSequence[], samplers: ReadonlyArray<Sampler | null>, times: StepTimes, o: Omit<StepOptions, 'allLogits'> = {}): Promise<Int32Array> {
    if (samplers.length !== seqs.length) throw new InvalidArgumentError(`samplers must hold one entry per sequence (${seqs.length}), received ${samplers.length}`);
    const { be, host, staged } = this.#p;
    const op = o.signal ? { signal: o.signal } : {};
    const onDevice = staged && samplers.every((x) => x === null || x.options.temperature === 0);
    return this.#forward(seqs, times, o, async (lmHead, rows, m) => {
      if (onDevice) {
        const ids = m.pair('i32', [rows]);
        await Promise.all([...lmHead((l, r0) => be.argmaxRows(l, ids.dev.rows(r0, l.shape[0]!), op)), m.down(ids)]);
        return Int32Array.from(ids.host.data); // out of the step's pinned memory
      }
      return sampleRows(host, await this.#hostLogits(lmHead, rows, m), samplers, op);
    });
  }

  /**
   * The step itself: every layer and the final norm, then `head` with the LM head over the step's `rows` output rows
   * (inside the step's memory scope and its denseHeadMs).
   */
  async #forward<R>(seqs: readonly StepSequence[], times: StepTimes, o: StepOptions, head: (lmHead: LmHead, rows: number, m: StepMemory) => Promise<R>): Promise<R> {
    const { be, host, cfg, weights: W, kv, experts, staged } = this.#p;
    const start = performance.now();
    const signal = o.signal;
    const op = signal ? { signal } : {};
    let mark = start;
    // Adds the time from the last mark to `until` (default now; clamped to [mark, now]: parts are booked in order on
    // one timeline) to k and moves the mark there; a dense part (denseQkvMs, denseOutMs, denseHeadMs) counts in
    // denseMs too.
    const book: Book = (k, until) => {
      const now = performance.now();
      const t = until === undefined ? now : Math.min(now, Math.max(mark, until));
      times[k] += t - mark;
      if (k === 'denseQkvMs' || k === 'denseOutMs' || k === 'denseHeadMs') times.denseMs += t - mark;
      mark = t;
    };

    const T = seqs.reduce((n, s) => n + s.tokens.length, 0);
    const H = cfg.hiddenSize;
    const nH = cfg.numHeads;
    const E = cfg.numExperts;
    const K = cfg.topK;

    // token ids and positions; KV room (throws OutOfMemoryError before anything changes when pages run out)
    const ids = new HostTensor('i32', [T]);
    const positions = new HostTensor('i32', [T]);
    const writes: Array<{ seq: number; pos: number; n: number }> = []; // each layer's K/V rows, in step order
    {
      let t = 0;
      for (const s of seqs) {
        const pos = kv.append(s.seq, s.tokens.length);
        writes.push({ seq: s.seq, pos, n: s.tokens.length });
        for (let i = 0; i < s.tokens.length; i++, t++) {
          ids.data[t] = s.tokens[i]!;
          positions.data[t] = pos + i;
        }
      }
    }
    const groups = stepGroups(seqs, writes, o.microBatches ?? 1).map((g) => ({
      ...g,
      batch: kv.batch(
        g.seqs.map((s) => s.seq),
        g.seqs.map((s) => s.tokens.length),
      ),
    }));

    const m = new StepMemory(be, staged, this.#arenas, op);
    // Queued: the ops of a layer go onto the streams behind each other with no await between them, one micro-batch
    // and nothing read on the JS side before the router (queuesLayers). Staged, the attention module crosses from
    // the compute backend's stream to the host backend's and back through events (their host threads wait, JS does
    // not). Every await lets a stream thread go idle, and waking it costs 0.1-1 ms on the 2-core development VM.
    // `whole`: the experts need no JS-side decision either (experts.queue: resident, or every one in a cache's pool;
    // untraced; the router's weights not rescaled on the host): the whole step is queued and awaited once, at the LM
    // head. Otherwise each layer is awaited with its router. The parts' times then come from the ops' run intervals
    // (OpOptions.timing), booked afterwards.
    const traced = o.routing !== undefined || (o.iteration !== undefined && experts.observeGates !== undefined);
    const queued = groups.length === 1 && queuesLayers(cfg);
    const whole = queued && !traced && !rescalesRouting(cfg) && experts.queue !== undefined;
    const cross = queued && staged && be.stream !== host.stream ? this.#crossEvents() : undefined;
    const toHost = () => {
      if (!cross) return;
      cross.down.record(be.stream);
      void host.stream.waitEvent(cross.down);
    };
    const toDev = () => {
      if (!cross) return;
      cross.up.record(host.stream);
      void be.stream.waitEvent(cross.up);
    };
    // a whole step's ops, awaited at its end (each observed at once: one may fail while JS is still queuing)
    const all: Array<Promise<unknown>> = [];
    const track = (ps: ReadonlyArray<Promise<unknown>>) => {
      for (const p of ps) {
        p.catch(() => {});
        all.push(p);
      }
    };
    const ran: LayerRan[] = []; // a queued layer's op intervals (a whole step: every layer's)
    const embedRan: OpTiming = {};
    let ok = false;
    try {
      const D = this.#p.headDim; // KV cache / attention head dim (MLA: padded)
      const h = m.act('f32', [T, H]); // the residual stream
      const xn = m.act('bf16', [T, H]); // also the embedding rows before the first norm overwrites it
      const attn = m.host('bf16', [T, nH, D]); // attention output (host; pinned when staged: it goes up)
      const delta = m.act('f32', [T, H]);
      const blockOut = m.act('bf16', [T, H]);
      const sharedOut = cfg.sharedExperts ? m.act('bf16', [T, H]) : undefined;
      const routerLogits = m.pair('f32', [T, E]);
      const xf = m.act('f32', [T, H]); // the normalised hidden state in f32: the router's input
      const topIds = m.pair('i32', [T, K]);
      const topW = m.pair('f32', [T, K]);
      // the sigmoid gate of a gated shared expert (Qwen2-MoE): logit, then weight and id 0 from routerTopK
      const gated = cfg.sharedExperts?.gated === true;
      const sharedLogit = gated ? m.act('f32', [T, 1]) : undefined;
      const sharedW = gated ? m.act('f32', [T, 1]) : undefined;
      const sharedIds = gated ? m.act('i32', [T, 1]) : undefined;

      // expert 0 of a one-expert table with weight 1 (dense MLP, ungated shared expert); the token ids up, their
      // embedding rows, the residual stream in f32: one group (a whole step: queued)
      const embed: Array<Promise<unknown>> = [];
      const oneW1 = new HostTensor('f32', [T, 1]);
      oneW1.data.fill(1);
      const oneIds = m.put(new HostTensor('i32', [T, 1]), embed);
      const oneW = m.put(oneW1, embed);
      embed.push(be.gatherRows(W.embedOnBackend, m.put(ids, embed), xn, op), be.convert(xn, h, whole ? { ...op, timing: embedRan } : op));
      track(embed);
      if (!whole) {
        await Promise.all(embed);
        book('denseQkvMs');
      }
      if (o.iteration) experts.beginIteration?.(o.iteration.embedding);
      if (!whole) book('hostMs');

      let pending: Tensor | undefined;
      // a layer's own tensors (q, k, v, the attention output's upload, MLA's parts) live until it ends; the next layer
      // reuses the same arena memory: awaited layers have finished, and a queued layer's ops that rewrite memory the
      // one before read come after those reads on the same stream (staged: the next layer's q/k/v downloads follow
      // this layer's attention through the event its upload waited for)
      const layerMark = m.mark();
      let submitted: OpTiming | undefined; // the last layer's experts, submitted and not awaited: their interval
      for (let l = 0; l < cfg.numLayers; l++) {
        m.release(layerMark);
        const w = W.layers[l]!;
        const r: LayerRan = { rope: {}, attention: {}, route: {}, end: {}, ...(submitted ? { prev: submitted } : {}) };
        submitted = undefined;
        if (queued) ran.push(r);
        // attention module: q [T, nH, D], k and v [T, kvH, D] f32 (rotated, host), the KV cache, attention and the
        // output projection into delta, per micro-batch of whole sequences (`groups`); with several, each group's
        // host work (RoPE, KV writes, attention) overlaps the compute backend's projections of the others (every
        // backend's stream runs its ops in order; rows are independent, so the result is the same bits)
        const norm = be.rmsNorm({ x: h, weight: w.inputNorm, out: xn, eps: cfg.rmsNormEps, ...(pending ? { add: pending } : {}) }, op);
        const window = cfg.layerTypes && cfg.layerTypes[l] !== 'sliding' ? null : cfg.slidingWindow;
        const single = groups.length === 1;
        // one group's attention module up to its queued output projection (returned, not awaited)
        const part = async (g: StepGroup): Promise<Array<Promise<unknown>>> => {
          const at = (k: BookKey) => single && book(k); // concurrent groups are booked together below
          const rows = <X extends Tensor>(x: X) => (single ? x : (x.rows(g.t0, g.T) as X));
          const pre: Array<Promise<unknown>> = []; // a queued module's ops, awaited with the router's
          // awaits `p` and books its time in `k`, or (queued) leaves it to that await
          const wait = async (p: Promise<unknown>, k: BookKey) => {
            if (queued) pre.push(p);
            else {
              await p;
              at(k);
            }
          };
          try {
            const { q, k, v } = w.mla ? await this.#mlaQkv(w.mla, rows(xn), g.T, rows(positions), norm, m, op) : await this.#mhaQkv(w, rows(xn), g.T, rows(positions), norm, m, op, queued ? { ops: pre, ropeRan: r.rope, toHost } : undefined);
            if (!queued) at('denseQkvMs');
            await wait(kv.writeMany(l, g.writes, k, v), 'hostMs');
            const out = rows(attn);
            await wait(
              host.attention(
                // splits by length (ATTENTION_SPLIT_TOKENS): a sequence's result never depends on the batch
                { q, k: kv.keys(l), v: kv.values(l), out, ...g.batch, scale: this.#p.attentionScale, splitTokens: ATTENTION_SPLIT_TOKENS, ...(window ? { slidingWindow: window } : {}), ...(w.sinks ? { sinks: w.sinks } : {}), ...(this.#p.attentionThreads ? { threads: this.#p.attentionThreads } : {}), ...(this.#p.attentionIsa ? { isa: this.#p.attentionIsa } : {}) },
                queued ? { ...op, timing: r.attention } : op,
              ),
              'attentionMs',
            );
            let attnHost: HostTensor = out.reshape([g.T, nH * D]);
            if (w.mla && cfg.mla!.vHeadDim < D) attnHost = headPrefix(out, cfg.mla!.vHeadDim); // [T, nH * v] bf16: drop the zero padding
            let attnOut: Tensor;
            if (queued) {
              toDev();
              attnOut = m.put(attnHost, pre);
            } else {
              attnOut = await m.upload(attnHost);
              at('hostMs');
            }
            const d = rows(delta);
            return w.oBias ? [...pre, be.gemm(attnOut, w.o, d, op), be.add(d, w.oBias, d, op)] : [...pre, be.gemm(attnOut, w.o, d, op)];
          } catch (e) {
            await Promise.allSettled(pre); // a queued module's ops already submitted: none left running
            throw e;
          }
        };
        const done = await Promise.allSettled(groups.map(part));
        const g2: Array<Promise<unknown>> = done.flatMap((x) => (x.status === 'fulfilled' ? x.value : []));
        const failed = done.find((x): x is PromiseRejectedResult => x.status === 'rejected');
        if (failed) {
          await Promise.allSettled(g2); // the other groups' projections: nothing of this step left running
          throw failed.reason;
        }
        if (!single) book('attentionMs');
        const li = this.#moeIndex.get(l);
        // MoE layers route from the f32 normalised state (a bf16 rounding there can flip near-tied experts); the
        // last op before the experts times the end of the layer's dense part (r.route)
        const routeOp = queued ? { ...op, timing: r.route } : op;
        if (li === undefined) g2.push(be.rmsNorm({ x: h, weight: w.postNorm, out: xn, eps: cfg.rmsNormEps, add: delta }, routeOp));
        else g2.push(be.rmsNorm({ x: h, weight: w.postNorm, out: xf, eps: cfg.rmsNormEps, add: delta }, op), be.convert(xf, xn, op));
        if (li === undefined) {
          // dense MLP as a one-expert table
          const mlp = (o2: OpOptions) => be.moeExperts({ x: xn, topkIds: oneIds, topkWeights: oneW, experts: w.mlp!, out: blockOut }, o2);
          pending = blockOut;
          if (whole) {
            track([...g2, mlp({ ...op, timing: r.end })]);
            continue;
          }
          await Promise.all(g2);
          if (queued) bookQueued(book, ran.splice(0), false);
          else book('denseOutMs');
          await mlp(op);
          book('expertMs');
          continue;
        }
        g2.push(be.gemm(xf, w.router!, routerLogits.dev, op));
        if (w.routerBias) g2.push(be.add(routerLogits.dev, w.routerBias, routerLogits.dev, op));
        g2.push(be.routerTopK(routerLogits.dev, K, { scoring: 'softmax', renormalize: cfg.router.renormalize, out: { topkIds: topIds.dev, topkWeights: topW.dev } }, w.shared ? op : routeOp));
        // the routing comes down for the experts' choice on the host, unless the step is queued whole
        if (!whole) g2.push(m.down(topIds), m.down(topW));
        if (traced) g2.push(m.down(routerLogits));
        if (w.shared) {
          if (w.sharedGate) {
            g2.push(be.gemm(xn, w.sharedGate, sharedLogit!, op));
            g2.push(be.routerTopK(sharedLogit!, 1, { scoring: 'sigmoid', renormalize: false, out: { topkIds: sharedIds!, topkWeights: sharedW! } }, op));
          }
          g2.push(be.moeExperts({ x: xn, topkIds: w.sharedGate ? sharedIds! : oneIds, topkWeights: w.sharedGate ? sharedW! : oneW, experts: w.shared, out: sharedOut! }, routeOp));
        }
        pending = blockOut;
        if (whole) {
          // resident experts need no decision on the JS side: queued behind the router, and the next layer behind them
          g2.push(experts.queue!(li, xn, topIds.dev, topW.dev, blockOut, sharedOut ? op : { ...op, timing: r.end }));
          if (sharedOut) g2.push(be.add(blockOut, sharedOut, blockOut, { ...op, timing: r.end }));
          track(g2);
          continue;
        }
        await Promise.all(g2);
        if (queued) bookQueued(book, ran.splice(0), false);
        else book('denseOutMs');
        if (rescalesRouting(cfg)) {
          for (let i = 0; i < topW.host.data.length; i++) topW.host.data[i]! *= cfg.router.scale;
          await m.up(topW);
        }
        const hostIds = topIds.host.data;
        if (traced) {
          const gates = softmaxRows(routerLogits.host.data, T, E);
          if (o.routing) {
            o.routing.ids.push(Int32Array.from(hostIds));
            o.routing.probs.push(Float32Array.from(topW.host.data));
            o.routing.gates.push(gates);
          }
          if (o.iteration) experts.observeGates?.(li, gates.subarray((T - 1) * E, T * E));
        }
        book('hostMs');
        // queued layers: the experts' kernel is submitted behind the router's ops and the next layer's ops behind it
        // (one await per layer: the router's); otherwise awaited
        const exRan: OpTiming = {};
        const before = mark;
        const res: ExpertRun = queued && experts.submit ? await experts.submit(li, xn, topIds.dev, topW.dev, blockOut, hostIds, { ...op, timing: exRan }) : await experts.run(li, xn, topIds.dev, topW.dev, blockOut, hostIds, signal);
        times.stallMs += res.stallMs;
        times.expertMs += res.computeMs;
        // a submitted kernel (pending) is booked up to its end later, from where its stall ended: it may have run, even
        // finished, before JS resumed here (a loaded machine), and that time is its, not lost
        mark = res.pending ? Math.min(performance.now(), before + res.stallMs + res.computeMs) : performance.now();
        if (res.pending) {
          track([res.pending]);
          submitted = exRan;
          if (sharedOut) {
            submitted = {}; // the shared add, behind the experts, ends the layer
            track([be.add(blockOut, sharedOut, blockOut, { ...op, timing: submitted })]);
          }
          continue;
        }
        if (sharedOut) {
          await be.add(blockOut, sharedOut, blockOut, op);
          book('expertMs');
        }
      }
      m.release(layerMark);

      // the final norm, the sequences' last rows and the LM head: queued, awaited by `head` (with the whole step's)
      const tail: Array<Promise<unknown>> = [be.rmsNorm({ x: h, weight: W.finalNorm, out: xn, eps: cfg.rmsNormEps, ...(pending ? { add: pending } : {}) }, op)];
      let rowsIn: Tensor = xn;
      if (!o.allLogits) {
        const last = new HostTensor('i32', [seqs.length]);
        let t = 0;
        seqs.forEach((s, i) => {
          t += s.tokens.length;
          last.data[i] = t - 1;
        });
        const sel = m.act('bf16', [seqs.length, H]);
        tail.push(be.gatherRows(xn, m.put(last, tail), sel, op));
        rowsIn = sel;
      }
      track(tail);
      const R = rowsIn.shape[0]!;
      // staged: LOGIT_ROWS rows at a time, so the device holds [LOGIT_ROWS, V] f32 logits, not [rows, V] (2.5 GB for
      // 4,096 sequences of a 152k vocabulary); each chunk's consumer is queued before the next chunk overwrites it
      const lmHead: LmHead = (each) => {
        const C = staged ? Math.min(R, LOGIT_ROWS) : R;
        const buf = m.act('f32', [C, cfg.vocabSize]);
        const ps: Array<Promise<unknown>> = [];
        for (let r0 = 0; r0 < R; r0 += C) {
          const n = Math.min(C, R - r0);
          const l = n === C ? buf : buf.rows(0, n);
          ps.push(be.gemm(n === R ? rowsIn : rowsIn.rows(r0, n), W.lmHead, l, op), each(l, r0));
        }
        track(ps);
        return ps;
      };
      const out = await head(lmHead, R, m);
      await Promise.all(all); // a queued op's failure, if any (the catch below waits for the rest)
      if (whole) bookQueued(book, ran, true, embedRan);
      else if (submitted) book('expertMs', submitted.endMs ?? -Infinity);
      book('denseHeadMs');
      if (o.iteration) experts.endIteration?.();
      book('hostMs');
      times.totalMs += performance.now() - start;
      ok = true;
      return out;
    } catch (e) {
      await Promise.allSettled(all); // nothing of this step left running on its memory
      throw e;
    } finally {
      m.end(ok);
    }
  }
}

/**
 * MLA's attention inputs on the host, [T, heads, headDim] f32 each: q = [q_nope | q_pe | 0], k = [k_nope | k_pe | 0]
 * (k_pe shared by all heads), v = [v | 0], from qn [T, heads*nope], qp [T, heads*rope], kn [T, heads*nope],
 * kp [T, rope], vv [T, heads*v]. The zero padding of `out` is left as it is (fresh tensors are zero).
 */
export function assembleMla(
  d: { T: number; heads: number; nope: number; rope: number; v: number; headDim: number },
  src: { qn: Float32Array; qp: Float32Array; kn: Float32Array; kp: Float32Array; vv: Float32Array },
  out: { q: Float32Array; k: Float32Array; v: Float32Array },
): void {
  const { T, heads: nH, nope, rope, v: vd, headDim: D } = d;
  for (let t = 0; t < T; t++) {
    for (let hh = 0; hh < nH; hh++) {
      const o = (t * nH + hh) * D;
      const r = t * nH + hh;
      out.q.set(src.qn.subarray(r * nope, (r + 1) * nope), o);
      out.q.set(src.qp.subarray(r * rope, (r + 1) * rope), o + nope);
      out.k.set(src.kn.subarray(r * nope, (r + 1) * nope), o);
      out.k.set(src.kp.subarray(t * rope, (t + 1) * rope), o + nope);
      out.v.set(src.vv.subarray(r * vd, (r + 1) * vd), o);
    }
  }
}

/** [T, nH, D] -> [T, nH * d]: the first d elements of every head (MLA's v is narrower than the padded head). */
export function headPrefix(x: HostTensor, d: number): HostTensor {
  const [T, nH, D] = x.shape as [number, number, number];
  const out = new HostTensor(x.dtype, [T, nH * d]);
  const src = x.data as Uint16Array;
  const dst = out.data as Uint16Array;
  for (let r = 0; r < T * nH; r++) dst.set(src.subarray(r * D, r * D + d), r * d);
  return out;
}

/** Row-wise softmax of [T, E] logits (the router's gate probabilities), f32. */
function softmaxRows(x: Float32Array, T: number, E: number): Float32Array {
  const out = new Float32Array(T * E);
  for (let t = 0; t < T; t++) {
    let m = -Infinity;
    for (let e = 0; e < E; e++) m = Math.max(m, x[t * E + e]!);
    let s = 0;
    for (let e = 0; e < E; e++) s += out[t * E + e] = Math.exp(x[t * E + e]! - m);
    for (let e = 0; e < E; e++) out[t * E + e]! /= s;
  }
  return out;
}
