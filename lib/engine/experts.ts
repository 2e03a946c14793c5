/**
 * Where the forward pass gets a MoE layer's routed experts from.
 *  - ResidentExperts: every expert stays where the ExpertStore put it (pinned host memory); one expert table per
 *    layer, built once. The CPU backend's fastest path: moeExperts reads the store directly.
 *  - CachedExperts: experts live in a fixed pool of slots (GPU memory on CUDA, the backend's device pool on the
 *    CPU backend) managed by the ExpertCache: the step's routed experts are acquired (demand fetches on a miss,
 *    pinned while the kernel runs), their slots written into the layer's table, the kernel run, the leases
 *    released. With a FineMoE predictor, each decode iteration prefetches the experts the matched expert map
 *    predicts, `prefetchDistance` layers ahead, and eviction follows the predicted probabilities. When a step
 *    routes to more experts than the slots hold (a big batch), the layer runs in module mode (MoE-Gen): its
 *    experts stream through the slots once, in chunks, and the next layer's start streaming as it ends.
 * Offloading is lossless: the kernel reads the same bytes whichever copy it reads, and module mode combines the
 * same per-expert rows in the same order as one fused call.
 */
import { setMaxListeners } from 'node:events';

import type { Backend } from '../backend.js';
import { ExpertCache, type ExpertLease } from '../cache/expert-cache.js';
import { ExpertMapStore, FineMoePredictor } from '../cache/finemoe.js';
import { LruPolicy, ProbabilityPolicy } from '../cache/policy.js';
import { residencyExpertCache } from '../cache/residency.js';
import type { ExpertTable, MoeActivation } from '../moe.js';
import type { ExpertStore } from '../residency/expert-store.js';
import { SlotPool } from '../residency/slot-pool.js';
import { TransferEngine } from '../residency/transfer.js';
import { HostTensor, type Tensor } from '../tensor.js';

/** Time spent in one layer's routed experts, ms. */
export interface ExpertRunTimes {
  stallMs: number;
  computeMs: number;
}

/** What some families add to every expert: f32 biases (gpt-oss) and a non-default activation. */
export interface ExpertExtras {
  /** f32 biases of expert e of MoE layer index li (on the compute backend). */
  biases?: (li: number, e: number) => { gateBias: Tensor; upBias: Tensor; downBias: Tensor };
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
 * biases and the family's activation from `extras`); the entries are cleared again whatever happens. Into `out`
 * (combined), or into `parts` (the unweighted rows of the (token, j) pairs routed to these experts).
 */
async function runWithExperts(
  be: Backend,
  table: ExpertTable,
  extras: ExpertExtras,
  li: number,
  experts: ReadonlyArray<{ id: number; w: { gate: Tensor; up: Tensor; down: Tensor } }>,
  a: { x: Tensor; ids: Tensor; weights: Tensor } & ({ out: Tensor; parts?: undefined } | { parts: Tensor; out?: undefined }),
  signal: AbortSignal | undefined,
): Promise<void> {
  try {
    for (const { id, w } of experts) table.set(id, { gate: w.gate, up: w.up, down: w.down, ...(extras.biases?.(li, id) ?? {}) });
    const act = extras.activation;
    const dst = a.parts ? { parts: a.parts } : { out: a.out };
    await be.moeExperts({ x: a.x, topkIds: a.ids, topkWeights: a.weights, experts: table, ...dst, ...(act ? { activation: act } : {}) }, signal ? { signal } : {});
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
  /** Per MoE layer: the experts the last call routed to, most used first (module mode streams them ahead). */
  readonly #lastUsed: number[][] = [];
  #partsBuf: HostTensor<'f32'> | undefined;

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
    const k = ids.shape[1]!;
    const counts = new Map<number, number>();
    for (const e of hostIds) if (e >= 0 && e < this.#numExperts) counts.set(e, (counts.get(e) ?? 0) + 1);
    this.#lastUsed[li] = [...counts.keys()].sort((a, b) => counts.get(b)! - counts.get(a)! || a - b);
    const wanted = [...counts.keys()].sort((a, b) => a - b);
    if (wanted.length <= this.slots.slots) {
      // every routed expert fits at once: one fused call
      const t0 = performance.now();
      const leases = await this.#acquireAll(li, wanted, signal);
      try {
        const t1 = performance.now();
        await runWithExperts(this.#be, this.#tables[li]!, this.#extras, li, this.#views(leases), { x, ids, weights, out }, signal);
        return { stallMs: t1 - t0, computeMs: performance.now() - t1 };
      } finally {
        for (const lease of leases) lease.release();
      }
    }
    return this.#runModule(li, wanted, x, ids, weights, out, k, signal);
  }

  /**
   * Module mode (MoE-Gen): the layer's routed experts stream through the slots in chunks of half the pool, each
   * chunk's experts acquired while the previous chunk computes; each chunk writes the unweighted outputs of the
   * (token, j) pairs routed to it into parts [T, k, H] f32, and one combine sums them per token in j order. Every
   * expert is copied at most once per layer and step whatever the batch, and the result is bitwise the fused
   * call's (the same part rows, the same combine). Then the next MoE layer's experts of the previous step start
   * streaming (prefetch) while attention runs.
   */
  async #runModule(li: number, wanted: number[], x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, k: number, signal: AbortSignal | undefined): Promise<ExpertRunTimes> {
    const T = x.shape[0]!;
    const H = x.shape[1]!;
    const times: ExpertRunTimes = { stallMs: 0, computeMs: 0 };
    // resident experts first: they are used (and released) before the copies of the others need their slots
    const order = [...wanted.filter((e) => this.cache.isResident(li, e)), ...wanted.filter((e) => !this.cache.isResident(li, e))];
    const size = Math.max(1, Math.floor(this.slots.slots / 2));
    const chunks: number[][] = [];
    for (let i = 0; i < order.length; i += size) chunks.push(order.slice(i, i + size));
    const parts = this.#parts(T, k, H);
    let next: Promise<ExpertLease[]> | undefined = this.#acquireAll(li, chunks[0]!, signal);
    try {
      for (let c = 0; c < chunks.length; c++) {
        const t0 = performance.now();
        const leases: ExpertLease[] = await next!;
        next = undefined;
        const t1 = performance.now();
        times.stallMs += t1 - t0;
        try {
          if (c + 1 < chunks.length) {
            next = this.#acquireAll(li, chunks[c + 1]!, signal);
            next.catch(() => {}); // awaited (or released) below; never an unhandled rejection
          }
          await runWithExperts(this.#be, this.#tables[li]!, this.#extras, li, this.#views(leases), { x, ids, weights, parts }, signal);
        } finally {
          for (const lease of leases) lease.release();
        }
        times.computeMs += performance.now() - t1;
      }
    } finally {
      // on failure: the chunk being acquired is released as soon as it arrives (or its acquire rejected)
      if (next) void next.then((ls) => ls.forEach((l) => l.release()), () => {});
    }
    const t2 = performance.now();
    await this.#be.moeCombine({ parts, topkIds: ids, topkWeights: weights, out }, signal ? { signal } : {});
    this.#streamAhead(li + 1);
    times.computeMs += performance.now() - t2;
    return times;
  }

  /** Prefetches MoE layer `li`'s experts of the previous step, most used first, into the slots not pinned now. */
  #streamAhead(li: number): void {
    const used = li < this.#numLayers ? this.#lastUsed[li] : undefined;
    if (!used) return;
    const room = this.slots.slots - this.cache.residents().filter((r) => r.pins > 0).length;
    used.slice(0, Math.max(0, Math.floor(room / 2))).forEach((e, i) => this.cache.prefetch(li, e, used.length - i));
  }

  /** Acquires (pins) `experts` of layer li; on any failure releases what it got and rejects. */
  async #acquireAll(li: number, experts: number[], signal: AbortSignal | undefined): Promise<ExpertLease[]> {
    // one listener on the caller's signal, however many experts wait (each waiter listens on the inner signal)
    let inner: AbortController | undefined;
    const onAbort = () => inner!.abort(signal!.reason);
    if (signal) {
      inner = new AbortController();
      setMaxListeners(experts.length + 1, inner.signal);
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    }
    let settled: Array<PromiseSettledResult<ExpertLease>>;
    try {
      settled = await Promise.allSettled(experts.map((e) => this.cache.acquire(li, e, inner ? { signal: inner.signal } : undefined)));
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    const leases: ExpertLease[] = [];
    let failure: unknown;
    for (const s of settled) {
      if (s.status === 'fulfilled') leases.push(s.value);
      else failure ??= s.reason;
    }
    if (failure !== undefined) {
      for (const lease of leases) lease.release();
      throw failure;
    }
    return leases;
  }

  #views(leases: ExpertLease[]): Array<{ id: number; w: { gate: Tensor; up: Tensor; down: Tensor } }> {
    return leases.map((lease) => ({ id: lease.expert, w: this.slots.slot(lease.slot) }));
  }

  /** A [T, k, H] f32 view of a scratch buffer kept across calls (grown when a step needs more rows). */
  #parts(T: number, k: number, H: number): HostTensor<'f32'> {
    if (!this.#partsBuf || this.#partsBuf.shape[0]! < T || this.#partsBuf.shape[1] !== k || this.#partsBuf.shape[2] !== H) this.#partsBuf = new HostTensor('f32', [T, k, H]);
    return this.#partsBuf.rows(0, T);
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
