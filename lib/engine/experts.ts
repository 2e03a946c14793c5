/**
 * Where the forward pass gets a MoE layer's routed experts from.
 *  - ResidentExperts: every expert stays where the ExpertStore put it (pinned host memory); one expert table per
 *    layer, built once. The CPU backend's fastest path: moeExperts reads the store directly.
 *  - CachedExperts: experts live in a fixed pool of slots (GPU memory on CUDA, the backend's device pool on the
 *    CPU backend) managed by the ExpertCache: the step's routed experts are acquired (demand fetches on a miss,
 *    pinned while the kernel runs), their slots written into the layer's table, the kernel run, the leases
 *    released. With a FineMoE predictor, each decode iteration prefetches the experts the matched expert map
 *    predicts, `prefetchDistance` layers ahead, and eviction follows the predicted probabilities.
 * Offloading is lossless: the kernel reads the same bytes whichever copy it reads.
 */
import type { Backend } from '../backend.js';
import { ExpertCache, type ExpertLease } from '../cache/expert-cache.js';
import { ExpertMapStore, FineMoePredictor } from '../cache/finemoe.js';
import { LruPolicy, ProbabilityPolicy } from '../cache/policy.js';
import { residencyExpertCache } from '../cache/residency.js';
import type { ExpertBiases } from '../model/gpt-oss.js';
import type { ExpertTable, MoeActivation } from '../moe.js';
import type { ExpertStore } from '../residency/expert-store.js';
import { SlotPool } from '../residency/slot-pool.js';
import { TransferEngine } from '../residency/transfer.js';
import type { Tensor } from '../tensor.js';

/** Time spent in one layer's routed experts, ms. */
export interface ExpertRunTimes {
  stallMs: number;
  computeMs: number;
}

/** What some families add to every expert: f32 biases (gpt-oss) and a non-default activation. */
export interface ExpertExtras {
  /** Biases of expert e of MoE layer index li. */
  biases?: (li: number, e: number) => ExpertBiases;
  activation?: MoeActivation;
}

export interface ExpertProvider {
  /**
   * out = Σ_j w[t, j] expert_{ids[t, j]}(x[t]) for MoE layer index `li` (into cfg.moeLayers). `hostIds` is the
   * [T * k] routing on the host (the same values as `ids`).
   */
  run(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, hostIds: Int32Array, signal: AbortSignal | undefined): Promise<ExpertRunTimes>;
  /** Decode iterations: start (with the request's semantic embedding) / observe a layer's gate probabilities / end. */
  beginIteration?(embedding: Float32Array): void;
  observeGates?(li: number, gates: Float32Array): void;
  endIteration?(): void;
  /** Cache counters (CachedExperts only). */
  readonly cache?: ExpertCache;
  dispose(): void;
}

/**
 * moeExperts of MoE layer index `li` with `experts` (id -> weights) set in `table` for this call only (plus their
 * biases and the family's activation from `extras`); the entries are cleared again whatever happens.
 */
async function runWithExperts(
  be: Backend,
  table: ExpertTable,
  extras: ExpertExtras,
  li: number,
  experts: ReadonlyArray<{ id: number; w: { gate: Tensor; up: Tensor; down: Tensor } }>,
  a: { x: Tensor; ids: Tensor; weights: Tensor; out: Tensor },
  signal: AbortSignal | undefined,
): Promise<void> {
  try {
    for (const { id, w } of experts) table.set(id, { gate: w.gate, up: w.up, down: w.down, ...(extras.biases?.(li, id) ?? {}) });
    const act = extras.activation;
    await be.moeExperts({ x: a.x, topkIds: a.ids, topkWeights: a.weights, experts: table, out: a.out, ...(act ? { activation: act } : {}) }, signal ? { signal } : {});
  } finally {
    for (const { id } of experts) table.clear(id);
  }
}

export class ResidentExperts implements ExpertProvider {
  readonly #be: Backend;
  readonly #store: ExpertStore;
  readonly #extras: ExpertExtras;
  /** One table per MoE layer holding only the experts of the current call (set before, cleared after): the native
   * glue reads every present entry of a table on each call, so a table of all E experts would cost E x 3 tensor
   * reads per op (about 85 us at E = 32) where the routed ones suffice. */
  readonly #tables: ExpertTable[];
  constructor(be: Backend, store: ExpertStore, extras: ExpertExtras = {}) {
    this.#be = be;
    this.#store = store;
    this.#extras = extras;
    this.#tables = store.layers.map(() => be.expertTable(store.experts, { hidden: store.hidden, intermediate: store.intermediate }));
  }
  async run(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, hostIds: Int32Array, signal: AbortSignal | undefined): Promise<ExpertRunTimes> {
    const t0 = performance.now();
    const table = this.#tables[li]!;
    const layer = this.#store.layers[li]!;
    const used = [...new Set(hostIds)].filter((e) => e >= 0 && e < this.#store.experts);
    const experts = used.map((id) => ({ id, w: this.#store.expert(layer, id) }));
    await runWithExperts(this.#be, table, this.#extras, li, experts, { x, ids, weights, out }, signal);
    return { stallMs: 0, computeMs: performance.now() - t0 };
  }
  dispose(): void {}
}

export interface CachedExpertsOptions {
  /** Slots (experts held at once). */
  slots: number;
  /** 'lru' or 'finemoe' (FineMoE expert maps: prefetch + probability-guided eviction). */
  policy: 'lru' | 'finemoe';
  /** Layers ahead to prefetch (finemoe; default 2). */
  prefetchDistance?: number;
  /** Expert maps kept (finemoe; default 1024). */
  maps?: number;
  /** Semantic embedding dimension (finemoe: the model's hidden size). */
  embedDim: number;
  /** Experts per token (the predictor records routed sets of this size; calibrated mode predicts experts with probability >= 0.1). */
  topK: number;
}

export class CachedExperts implements ExpertProvider {
  readonly cache: ExpertCache;
  readonly slots: SlotPool;
  readonly engine: TransferEngine;
  readonly predictor: FineMoePredictor | undefined;
  readonly #be: Backend;
  readonly #tables: ExpertTable[];
  readonly #numLayers: number;
  readonly #numExperts: number;
  readonly #extras: ExpertExtras;

  constructor(be: Backend, store: ExpertStore, extras: ExpertExtras, o: CachedExpertsOptions) {
    this.#be = be;
    this.#extras = extras;
    this.#numLayers = store.layers.length;
    this.#numExperts = store.experts;
    this.slots = SlotPool.create(be, { slots: o.slots, hidden: store.hidden, intermediate: store.intermediate, dtype: store.dtype });
    try {
      this.engine = new TransferEngine(be);
      const L = store.layers.length;
      const E = store.experts;
      if (o.policy === 'finemoe') {
        const maps = new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: o.embedDim, capacity: o.maps ?? 1024, prefetchDistance: Math.min(L, o.prefetchDistance ?? 2) });
        this.predictor = new FineMoePredictor(maps, { topK: o.topK, prefetchDistance: Math.min(L, o.prefetchDistance ?? 2) });
      }
      const policy = this.predictor ? new ProbabilityPolicy(L, E, this.predictor, 'finemoe') : new LruPolicy(L * E);
      this.cache = residencyExpertCache({ store, slots: this.slots, engine: this.engine, policy });
      this.#tables = store.layers.map(() => be.expertTable(E, { hidden: store.hidden, intermediate: store.intermediate }));
    } catch (e) {
      this.slots.dispose();
      throw e;
    }
  }

  async run(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, hostIds: Int32Array, signal: AbortSignal | undefined): Promise<ExpertRunTimes> {
    // Token ranges whose experts fit the slots at once (one range unless a prefill step routes to more experts
    // than the cache holds); each token's experts are always present together, so its output is exact.
    const T = x.shape[0]!;
    const k = ids.shape[1]!;
    const times: ExpertRunTimes = { stallMs: 0, computeMs: 0 };
    let start = 0;
    while (start < T) {
      const set = new Set<number>();
      let end = start;
      while (end < T) {
        const add = Array.from(hostIds.subarray(end * k, end * k + k)).filter((e) => e >= 0 && e < this.#numExperts && !set.has(e));
        if (end > start && set.size + new Set(add).size > this.slots.slots) break;
        for (const e of add) set.add(e);
        end++;
      }
      const whole = start === 0 && end === T;
      const r = await this.#runRange(li, [...set].sort((a, b) => a - b), whole ? x : x.rows(start, end - start), whole ? ids : ids.rows(start, end - start), whole ? weights : weights.rows(start, end - start), whole ? out : out.rows(start, end - start), signal);
      times.stallMs += r.stallMs;
      times.computeMs += r.computeMs;
      start = end;
    }
    return times;
  }

  async #runRange(li: number, wanted: number[], x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, signal: AbortSignal | undefined): Promise<ExpertRunTimes> {
    const t0 = performance.now();
    const settled = await Promise.allSettled(wanted.map((e) => this.cache.acquire(li, e, signal ? { signal } : undefined)));
    const leases: ExpertLease[] = [];
    let failure: unknown;
    for (const s of settled) {
      if (s.status === 'fulfilled') leases.push(s.value);
      else failure ??= s.reason;
    }
    try {
      if (failure !== undefined) throw failure;
      const t1 = performance.now();
      const experts = leases.map((lease) => ({ id: lease.expert, w: this.slots.slot(lease.slot) }));
      await runWithExperts(this.#be, this.#tables[li]!, this.#extras, li, experts, { x, ids, weights, out }, signal);
      return { stallMs: t1 - t0, computeMs: performance.now() - t1 };
    } finally {
      for (const lease of leases) lease.release();
    }
  }

  beginIteration(embedding: Float32Array): void {
    if (!this.predictor) return;
    for (const p of this.predictor.beginIteration(embedding)) this.#prefetch(p.layer, p.experts, p.probs);
  }

  observeGates(li: number, gates: Float32Array): void {
    if (!this.predictor) return;
    const p = this.predictor.observeLayer(li, gates);
    if (p) this.#prefetch(p.layer, p.experts, p.probs);
  }

  endIteration(): void {
    this.predictor?.endIteration();
  }

  #prefetch(layer: number, experts: number[], probs: number[]): void {
    if (layer < 0 || layer >= this.#numLayers) return;
    experts.forEach((e, i) => this.cache.prefetch(layer, e, probs[i] ?? 0));
  }

  dispose(): void {
    this.cache.cancelPrefetches();
    this.engine.dispose();
    this.slots.dispose();
  }
}
