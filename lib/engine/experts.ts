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
 *    experts stream through the slots once, in chunks, and the next layer's start streaming as it ends; when each
 *    layer's fit but big steps cycle the pool, the next layer's stream ahead too. A pool with a slot for every
 *    expert is filled after the first step, and then serves whole queued steps (`queue`) like ResidentExperts.
 * Offloading is lossless: the kernel reads the same bytes whichever copy it reads, and module mode combines the
 * same per-expert rows in the same order as one fused call.
 */
import { setMaxListeners } from 'node:events';

import type { Backend, OpOptions, OpTiming } from '../backend.js';
import { ExpertCache, type ExpertLease } from '../cache/expert-cache.js';
import { ExpertMapStore, FineMoePredictor } from '../cache/finemoe.js';
import { LruPolicy, ProbabilityPolicy } from '../cache/policy.js';
import { residencyExpertCache } from '../cache/residency.js';
import type { ExpertTable, MoeActivation } from '../moe.js';
import type { ExpertStore } from '../residency/expert-store.js';
import { describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';
import { SlotPool } from '../residency/slot-pool.js';
import { TransferEngine } from '../residency/transfer.js';
import { DeviceTensor, HostTensor, type Tensor } from '../tensor.js';

/** Time spent in one layer's routed experts, ms. */
export interface ExpertRunTimes {
  stallMs: number;
  computeMs: number;
}

/**
 * A layer's routed experts as run() left them: with `pending`, the kernel was queued and not awaited (computeMs 0;
 * its run interval goes to the timing object run() was given): it settles when the kernel has run and the provider
 * has let go of what it held for it.
 */
export interface ExpertRun extends ExpertRunTimes {
  pending?: Promise<unknown>;
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
  /**
   * run() whose kernel, once everything it needs is in place, is queued behind what the stream holds and not awaited
   * (ExpertRun.pending; its run interval into `timing`): the forward pass queues the next layer behind it. Providers
   * return a settled run where they must wait (the Fiddler split, module mode).
   */
  submit?(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, hostIds: Int32Array, op: OpOptions & { timing: OpTiming }): Promise<ExpertRun>;
  /**
   * The same as one op submitted behind what is queued (`op`: its stream, signal and timing), for providers that need
   * no JS-side decision (ResidentExperts; CachedExperts once every expert is in its pool): the forward pass queues it
   * with the router's ops, before the routing is known on the host, and queues whole steps when it is present.
   */
  queue?(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, op: OpOptions): Promise<unknown>;
  /** Decode iterations: start (with the request's semantic embedding) / observe a layer's gate probabilities / end. */
  beginIteration?(embedding: Float32Array): void;
  observeGates?(li: number, gates: Float32Array): void;
  endIteration?(): void;
  /** Cache counters (CachedExperts only). */
  readonly cache?: ExpertCache;
  /** Missed experts computed on the host instead of fetched, so far (CachedExperts with hostCompute 'auto'). */
  readonly hostExperts?: number;
  dispose(): void;
}

/** An empty expert table of `be` for the layers of `store` (its experts, dimensions and layout). */
function storeTable(be: Backend, store: ExpertStore): ExpertTable {
  return be.expertTable(store.experts, { hidden: store.hidden, intermediate: store.intermediate, packed: store.packed });
}

/** Sets expert `id` of MoE layer index `li` in `table`: its weights, plus the family's biases from `extras`. */
function setExpert(table: ExpertTable, extras: ExpertExtras, li: number, id: number, w: { gate: Tensor; up: Tensor; down: Tensor }): void {
  table.set(id, { gate: w.gate, up: w.up, down: w.down, ...(extras.biases?.(li, id) ?? {}) });
}

type ExpertsArgs = { x: Tensor; ids: Tensor; weights: Tensor } & ({ out: Tensor; parts?: undefined } | { parts: Tensor; out?: undefined });

/** moeExperts over the experts set in `table` with the family's activation: into `out` (combined) or `parts`. */
function moeOnTable(be: Backend, table: ExpertTable, extras: ExpertExtras, a: ExpertsArgs, op: OpOptions): Promise<unknown> {
  const act = extras.activation;
  const dst = a.parts ? { parts: a.parts } : { out: a.out };
  return be.moeExperts({ x: a.x, topkIds: a.ids, topkWeights: a.weights, experts: table, ...dst, ...(act ? { activation: act } : {}) }, op);
}

/**
 * moeExperts of MoE layer index `li` with `experts` (id -> weights) set in `table` for this call only, returning once
 * the op is submitted (its Promise): the op takes a snapshot of the table when it is submitted, so the entries are
 * cleared again at once, whatever happens. Into `out` (combined), or into `parts` (the unweighted rows of the
 * (token, j) pairs routed to these experts).
 */
function submitWithExperts(
  be: Backend,
  table: ExpertTable,
  extras: ExpertExtras,
  li: number,
  experts: ReadonlyArray<{ id: number; w: { gate: Tensor; up: Tensor; down: Tensor } }>,
  a: ExpertsArgs,
  op: OpOptions,
): Promise<unknown> {
  try {
    for (const { id, w } of experts) setExpert(table, extras, li, id, w);
    return moeOnTable(be, table, extras, a, op);
  } finally {
    for (const { id } of experts) table.clear(id);
  }
}

export class ResidentExperts implements ExpertProvider {
  readonly #be: Backend;
  readonly #extras: ExpertExtras;
  /** One table per MoE layer with every expert set once (the native table validates at set; a call copies E pointers). */
  readonly #tables: ExpertTable[];
  constructor(be: Backend, store: ExpertStore, extras: ExpertExtras = {}) {
    this.#be = be;
    this.#extras = extras;
    this.#tables = store.layers.map((layer, li) => {
      const t = storeTable(be, store);
      for (let e = 0; e < store.experts; e++) setExpert(t, extras, li, e, store.expert(layer, e));
      return t;
    });
  }
  async run(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, _hostIds: Int32Array, signal: AbortSignal | undefined): Promise<ExpertRunTimes> {
    const t0 = performance.now();
    await this.queue(li, x, ids, weights, out, signal ? { signal } : {});
    return { stallMs: 0, computeMs: performance.now() - t0 };
  }
  async submit(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, _hostIds: Int32Array, op: OpOptions & { timing: OpTiming }): Promise<ExpertRun> {
    return { stallMs: 0, computeMs: 0, pending: this.queue(li, x, ids, weights, out, op) };
  }
  queue(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, op: OpOptions): Promise<unknown> {
    return moeOnTable(this.#be, this.#tables[li]!, this.#extras, { x, ids, weights, out }, op);
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
  /**
   * Fiddler: a missed expert of a small step (decode) is computed by `host` straight from the pinned store instead
   * of being fetched, when the measured costs say that is faster ('auto'); 'never' always fetches (default).
   */
  hostCompute?: 'auto' | 'never';
  /** The CPU backend that computes missed experts (hostCompute 'auto'; `be` itself on the CPU backend). */
  host?: Backend;
}

/** Rows per expert above which a missed expert is always fetched (prefill: the device computes it much faster). */
const HOST_MAX_ROWS = 8;
/** Decisions after which the option not taken is tried once more, so its cost estimate stays current. */
const REEXPLORE = 32;

/**
 * A [T, k, H] f32 scratch kept across calls (the unweighted expert rows before their combine): `make` allocates it,
 * and a step that needs more rows, or other k or H, disposes it (its memory goes once no op holds it) for a new one.
 */
class PartsScratch<X extends Tensor & { dispose(): void }> {
  readonly #make: (shape: [number, number, number]) => X;
  #buf: X | undefined;
  constructor(make: (shape: [number, number, number]) => X) {
    this.#make = make;
  }
  /** Its first T rows. */
  rows(T: number, k: number, H: number): X {
    const b = this.#buf;
    if (!b || b.shape[0]! < T || b.shape[1] !== k || b.shape[2] !== H) {
      b?.dispose();
      this.#buf = undefined; // not the disposed one, should the allocation below throw
      this.#buf = this.#make([T, k, H]);
    }
    return this.#buf!.rows(0, T) as X;
  }
  dispose(): void {
    this.#buf?.dispose();
    this.#buf = undefined;
  }
}

/**
 * Fiddler's per-step choice for missed experts: fetch them into slots, or compute them on the host from the pinned
 * store, whichever the measured costs (EWMA of ms per expert byte, from this run's own fetches and host runs) say
 * is faster. Before both are measured, each option is tried once.
 */
class HostComputeChoice {
  fetchMsPerByte: number | undefined;
  hostMsPerByte: number | undefined;
  #sinceOther = 0;
  #last: 'fetch' | 'host' | undefined;

  choose(): 'fetch' | 'host' {
    let c: 'fetch' | 'host';
    if (this.hostMsPerByte === undefined) c = 'host';
    else if (this.fetchMsPerByte === undefined) c = 'fetch';
    else {
      c = this.hostMsPerByte < this.fetchMsPerByte ? 'host' : 'fetch';
      if (++this.#sinceOther >= REEXPLORE) c = c === 'host' ? 'fetch' : 'host';
    }
    if (c !== this.#last) this.#sinceOther = 0;
    this.#last = c;
    return c;
  }

  record(kind: 'fetch' | 'host', ms: number, bytes: number): void {
    if (bytes <= 0) return;
    const v = ms / bytes;
    const key = kind === 'fetch' ? 'fetchMsPerByte' : 'hostMsPerByte';
    const old = this[key];
    this[key] = old === undefined ? v : 0.7 * old + 0.3 * v;
  }
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
  /** Host rows: the compute backend's pinned memory, so the rows the host computes go up to a GPU by DMA. */
  readonly #hostParts = new PartsScratch((s) => HostTensor.owning(this.#be.allocPinned(s[0] * s[1] * s[2] * 4), 'f32', s));
  readonly #devParts = new PartsScratch((s) => this.#be.alloc('f32', s));
  readonly #store: ExpertStore;
  readonly #host: Backend | undefined;
  readonly #hostTables: ExpertTable[] = [];
  readonly #choice = new HostComputeChoice();
  /** Missed experts computed on the host instead of fetched (hostCompute 'auto'). */
  hostExperts = 0;
  /**
   * Set once every expert of every layer is in the pool (slots for all of them, filled by #fillPool: nothing is
   * evicted again): then a layer's experts need no JS-side decision, and the forward pass queues whole steps as with
   * ResidentExperts (the cache's counters stop there: every use is a hit). One table per layer with every expert's
   * slot (#fullTables), built once.
   */
  queue?: (li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, op: OpOptions) => Promise<unknown>;
  #fullTables: ExpertTable[] = [];
  #filling = false;
  /** The FineMoE predictor's gate observations (decode iterations), while it can still prefetch anything. */
  observeGates?: (li: number, gates: Float32Array) => void;

  constructor(be: Backend, store: ExpertStore, extras: ExpertExtras, o: CachedExpertsOptions) {
    this.#be = be;
    this.#extras = extras;
    this.#store = store;
    const hostCompute = o.hostCompute ?? 'never';
    if (hostCompute !== 'auto' && hostCompute !== 'never') throw new InvalidArgumentError(`hostCompute must be 'auto' or 'never', received ${describe(o.hostCompute)}`);
    // the host kernel would need host copies of device-resident biases (gpt-oss on CUDA): fetch those instead
    if (hostCompute === 'auto' && !(be.kind !== 'cpu' && extras.biases)) {
      this.#host = o.host ?? be;
      if (this.#host.kind !== 'cpu') throw new InvalidArgumentError(`host must be a CPU backend, received ${this.#host.name}`);
    }
    this.#numLayers = store.layers.length;
    this.#numExperts = store.experts;
    this.slots = SlotPool.create(be, { slots: o.slots, hidden: store.hidden, intermediate: store.intermediate, dtype: store.dtype, packed: store.packed });
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
      this.#tables = store.layers.map(() => storeTable(be, store));
      if (this.predictor) {
        const predictor = this.predictor;
        this.observeGates = (li, gates) => {
          const p = predictor.observeLayer(li, gates);
          if (p) this.#prefetch(p.layer, p.experts, p.probs);
        };
      }
    } catch (e) {
      this.slots.dispose();
      throw e;
    }
  }

  async run(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, hostIds: Int32Array, signal: AbortSignal | undefined): Promise<ExpertRunTimes> {
    try {
      return await this.#run(li, x, ids, weights, out, hostIds, signal);
    } finally {
      if (li === this.#numLayers - 1) this.#fillPool();
    }
  }

  async submit(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, hostIds: Int32Array, op: OpOptions & { timing: OpTiming }): Promise<ExpertRun> {
    try {
      return await this.#run(li, x, ids, weights, out, hostIds, op.signal, op);
    } finally {
      if (li === this.#numLayers - 1) this.#fillPool();
    }
  }

  /** Whether the pool has a slot for every expert: it is then filled and serves whole queued steps, no copies streaming. */
  get holdsEveryExpert(): boolean {
    return this.slots.slots >= this.#numLayers * this.#numExperts;
  }

  /**
   * A pool with a slot for every expert (after each step's last MoE layer): the experts no step has used yet are
   * prefetched into it (once; demand fetches go first), and once every expert is resident, `queue` is set (whole
   * steps).
   */
  #fillPool(): void {
    if (this.queue || !this.holdsEveryExpert) return;
    if (this.cache.residents().length < this.#numLayers * this.#numExperts) {
      if (this.#filling) return;
      this.#filling = true;
      for (let l = 0; l < this.#numLayers; l++) for (let e = 0; e < this.#numExperts; e++) this.cache.prefetch(l, e);
      return;
    }
    const tables = this.#store.layers.map(() => storeTable(this.#be, this.#store));
    this.#fullTables = tables;
    for (const r of this.cache.residents()) {
      setExpert(tables[r.layer]!, this.#extras, r.layer, r.expert, this.slots.slot(r.slot));
    }
    this.queue = (li, x, ids, weights, out, op) => moeOnTable(this.#be, tables[li]!, this.#extras, { x, ids, weights, out }, op);
    this.observeGates = undefined; // nothing left to prefetch
  }

  async #run(li: number, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, hostIds: Int32Array, signal: AbortSignal | undefined, queue?: OpOptions): Promise<ExpertRun> {
    const k = ids.shape[1]!;
    const counts = new Map<number, number>();
    for (const e of hostIds) if (e >= 0 && e < this.#numExperts) counts.set(e, (counts.get(e) ?? 0) + 1);
    this.#lastUsed[li] = [...counts.keys()].sort((a, b) => counts.get(b)! - counts.get(a)! || a - b);
    const wanted = [...counts.keys()].sort((a, b) => a - b);
    if (this.#host && wanted.length <= this.slots.slots) {
      const missed = wanted.filter((e) => !this.cache.isResident(li, e) && counts.get(e)! <= HOST_MAX_ROWS);
      if (missed.length > 0 && this.#choice.choose() === 'host') {
        const r = await this.#runSplit(li, wanted, new Set(missed), x, ids, weights, out, hostIds, k, signal);
        this.#fetchIntoFree(li, missed);
        return r;
      }
    }
    if (wanted.length <= this.slots.slots) {
      // every routed expert fits at once: one fused call
      const t0 = performance.now();
      const missed = wanted.filter((e) => !this.cache.isResident(li, e)).length;
      const leases = await this.#acquireAll(li, wanted, signal);
      const release = () => {
        for (const lease of leases) lease.release();
      };
      const t1 = performance.now();
      if (this.#host && missed > 0) this.#choice.record('fetch', t1 - t0, missed * this.#store.expertBytes);
      const cycles = this.#cycles(wanted.length);
      let p: Promise<unknown>;
      try {
        p = submitWithExperts(this.#be, this.#tables[li]!, this.#extras, li, this.#views(leases), { x, ids, weights, out }, queue ?? (signal ? { signal } : {}));
      } catch (e) {
        release();
        throw e;
      }
      if (queue) {
        // queued: the leases (and the next layer's streaming ahead, which needs their slots) go when the kernel has run
        const pending = p.finally(() => {
          release();
          if (cycles) this.#streamAhead((li + 1) % this.#numLayers);
        });
        return { stallMs: t1 - t0, computeMs: 0, pending };
      }
      try {
        await p;
      } finally {
        release();
      }
      const times = { stallMs: t1 - t0, computeMs: performance.now() - t1 };
      if (cycles) this.#streamAhead((li + 1) % this.#numLayers);
      return times;
    }
    return this.#runModule(li, wanted, x, ids, weights, out, k, signal);
  }

  /**
   * Whether the steps cycle the pool with most of each layer's experts (a big batch: at least three quarters of a
   * layer's experts routed, and the layers' routed experts together more than the slots hold): LRU then evicts every
   * expert before its next use, and a layer's experts are fetched when it runs, so its copies stall it (2026-11-27 on
   * an H200, Mixtral-shaped layers, 8 slots, batch 2048: a 108 ms stall of a 226 ms step, beside 104 ms of CPU
   * attention). Streaming the next layer's experts ahead overlaps them with the attention before it; of the experts
   * streamed, a share 1 - U/E is not routed to again (at most a quarter here: copies the link pays for nothing).
   */
  #cycles(used: number): boolean {
    if (used * 4 < this.#numExperts * 3) return false;
    let total = 0; // layers not run yet (the first step) counted like this one
    for (let l = 0; l < this.#numLayers; l++) total += this.#lastUsed[l]?.length ?? used;
    return total > this.slots.slots;
  }

  /**
   * Fiddler split: the `onHost` experts (missed ones) are computed by the host backend straight from the pinned
   * store while the device computes the resident ones; both write unweighted rows into parts [T, k, H] f32 (one
   * buffer when one CPU backend does both; otherwise the host rows are uploaded into the device's scratch), then
   * one combine: on the CPU backend bitwise the fused result.
   */
  async #runSplit(li: number, wanted: number[], onHost: Set<number>, x: Tensor, ids: Tensor, weights: Tensor, out: Tensor, hostIds: Int32Array, k: number, signal: AbortSignal | undefined): Promise<ExpertRunTimes> {
    const host = this.#host!;
    const be = this.#be;
    const op = signal ? { signal } : {};
    const T = x.shape[0]!;
    const H = x.shape[1]!;
    const t0 = performance.now();
    const leases = await this.#acquireAll(li, wanted.filter((e) => !onHost.has(e)), signal);
    const t1 = performance.now();
    try {
      const hostParts = this.#hostParts.rows(T, k, H);
      const sameMemory = host === be; // the CPU backend computing both: one parts buffer, one stream
      let devParts: Tensor = hostParts;
      let xh: Tensor = x;
      let wh: Tensor = weights;
      let idsh: Tensor = ids;
      if (!sameMemory) {
        devParts = this.#devParts.rows(T, k, H);
        const xb = new HostTensor('bf16', [T, H]);
        const wb = new HostTensor('f32', [T, k]);
        await Promise.all([be.copy(x, xb, op), be.copy(weights, wb, op)]);
        xh = xb;
        wh = wb;
        idsh = HostTensor.from('i32', [T, k], hostIds);
      }
      const layer = this.#store.layers[li]!;
      const hostExperts = [...onHost].map((id) => ({ id, w: this.#store.expert(layer, id) }));
      this.#hostTables[li] ??= storeTable(host, this.#store);
      const onDevice = () => (leases.length > 0 ? submitWithExperts(be, this.#tables[li]!, this.#extras, li, this.#views(leases), { x, ids, weights, parts: devParts }, op) : Promise.resolve());
      const onHostRun = async () => {
        const th = performance.now();
        await submitWithExperts(host, this.#hostTables[li]!, this.#extras, li, hostExperts, { x: xh, ids: idsh, weights: wh, parts: hostParts }, op);
        return performance.now() - th;
      };
      let hostMs: number;
      if (sameMemory) {
        // one stream: one after the other, so the host run's time is its own
        await onDevice();
        hostMs = await onHostRun();
      } else {
        [, hostMs] = await Promise.all([onDevice(), onHostRun()]);
      }
      if (!sameMemory) {
        // the host's rows into the device's parts: rows (t, j) routed to a host-computed expert, one copy per run
        // of consecutive such rows (the others hold the device's results)
        const rows: Array<Promise<unknown>> = [];
        const flatH = hostParts.reshape([T * k, H]);
        const flatD = devParts.reshape([T * k, H]);
        for (let r = 0; r < T * k; ) {
          let n = 0;
          while (r + n < T * k && onHost.has(hostIds[r + n]!)) n++;
          if (n > 0) rows.push(be.copy(flatH.rows(r, n), flatD.rows(r, n), op));
          r += n + 1;
        }
        await Promise.all(rows);
      }
      await be.moeCombine({ parts: devParts, topkIds: ids, topkWeights: weights, out }, op);
      this.#choice.record('host', hostMs, onHost.size * this.#store.expertBytes);
      this.hostExperts += onHost.size;
      return { stallMs: t1 - t0, computeMs: performance.now() - t1 };
    } finally {
      for (const lease of leases) lease.release();
    }
  }

  /**
   * Module mode (MoE-Gen): the layer's routed experts stream through the slots in chunks of half the pool, each
   * chunk's experts acquired while the previous chunk computes; each chunk writes the unweighted outputs of the
   * (token, j) pairs routed to it into parts [T, k, H] f32, and one combine sums them per token in j order. Every
   * expert is copied at most once per layer and step whatever the batch, and the result is bitwise the fused
   * call's (the same part rows, the same combine). Then the next MoE layer's experts of the previous step start
   * streaming (prefetch) while attention runs (after the last MoE layer: the first layer's, for the next step).
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
    // where the kernel writes: device memory when the activations are there (CUDA; the staged CPU path)
    const parts = x instanceof DeviceTensor ? this.#devParts.rows(T, k, H) : this.#hostParts.rows(T, k, H);
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
          await submitWithExperts(this.#be, this.#tables[li]!, this.#extras, li, this.#views(leases), { x, ids, weights, parts }, signal ? { signal } : {});
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
    this.#streamAhead((li + 1) % this.#numLayers); // after the last MoE layer: the first one's, across the step boundary
    times.computeMs += performance.now() - t2;
    return times;
  }

  /**
   * Prefetches MoE layer `li`'s experts of the previous step, most used first, into every slot not pinned now: the
   * copies then run under the dense work and CPU attention before that layer (half the slots left the copy engine
   * idle for most of it: 0.65 of the H2D bound at batch 256 on an H100, 2026-11-26).
   */
  #streamAhead(li: number): void {
    const used = this.#lastUsed[li];
    if (!used) return;
    const room = this.slots.slots - this.cache.residents().filter((r) => r.pins > 0).length;
    // priority in (0, 1]: probability-guided policies read it as the chance of use (used last step: likely)
    used.slice(0, Math.max(0, room)).forEach((e, i) => this.cache.prefetch(li, e, 1 - i / (used.length + 1)));
  }

  /**
   * Fetches experts the host computed this step into free slots for the steps after, never evicting for them:
   * otherwise a pool with room for every expert (experts 'auto' on a large GPU) would stay empty of whatever the
   * host was the faster choice for, and each later use would miss again.
   */
  #fetchIntoFree(li: number, experts: readonly number[]): void {
    let free = this.slots.slots - this.cache.occupied - this.cache.queued;
    for (const e of experts) {
      if (free <= 0) return;
      if (this.cache.prefetch(li, e)) free--;
    }
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

  beginIteration(embedding: Float32Array): void {
    if (!this.predictor) return;
    for (const p of this.predictor.beginIteration(embedding)) this.#prefetch(p.layer, p.experts, p.probs);
  }

  endIteration(): void {
    this.predictor?.endIteration();
  }

  #prefetch(layer: number, experts: number[], probs: number[]): void {
    if (layer < 0 || layer >= this.#numLayers) return;
    experts.forEach((e, i) => this.cache.prefetch(layer, e, probs[i] ?? 0));
  }

  dispose(): void {
    this.queue = undefined;
    for (const t of this.#fullTables) for (let e = 0; e < t.numExperts; e++) t.clear(e); // their holds on the slots
    this.cache.cancelPrefetches();
    this.engine.dispose();
    this.slots.dispose();
    this.#devParts.dispose();
    this.#hostParts.dispose();
  }
}
