/**
 * Trace-driven cache simulator: replays a RoutingTrace (batch of one, decode iterations, requests in order)
 * against a cache capacity, an eviction policy, a predictor and a time model, and reports hit rate, stall time
 * and bytes moved. The eviction policies and the FineMoE predictor are the shipped classes (policy.ts,
 * finemoe.ts).
 *
 * Time model = the residency engine we ship (lib/residency/transfer.ts + ExpertCache), not a worse one:
 *  - one copy lane (one PCIe direction) at `bandwidthBytesPerMs`; copies move in `chunkBytes` chunks with
 *    `chunkDepth` chunks queued on the copy stream;
 *  - demand fetches overtake prefetches at chunk granularity: a demand waits only for the prefetch chunks already
 *    queued on the stream (at most chunkDepth chunks), then the demands of the layer run back to back, then the
 *    paused prefetch resumes. A demanded expert whose prefetch is in flight stays a prefetch-priority transfer (as
 *    in the engine) and finishes after the layer's other demands;
 *  - the cache hands the engine one prefetch at a time (ExpertCache maxInFlight = 1); queued prefetches are
 *    ordered by deadline (target layer) and, within a layer, by predicted probability;
 *  - a layer starts when all of its experts have arrived (stall = that wait) and then takes layerComputeMs;
 *    predictions made after its gate use the lane during that compute;
 *  - with `laneModel: 'whole'` copies are not chunked and a demand waits for the whole in-flight prefetch (the
 *    first slice's model; kept for comparison).
 * Prefetch engineering (predictive policies; `prefetchCap`, `cancelRouted`, `crossIteration`, `cancelStale`):
 *  - each round (after a layer's gate) predicts every layer up to distance ahead; its new prefetches are admitted
 *    most probable first, across target layers, while the lane can still deliver every admitted prefetch before
 *    its layer runs in deadline order (link budget: bytes due by a layer <= (target - current layer) x
 *    layerComputeMs x bandwidth, the in-flight remainder first). 'value' (default) also starts one that can only
 *    arrive partly, when the lane cannot move a whole expert within the distance (transfer longer than distance x
 *    compute, e.g. Mixtral) and the part moved before its layer, weighted by p, outweighs the chunks a demand
 *    would wait for if it is not used, weighted by 1 - p;
 *  - while the last `distance` layers of an iteration run, the first layers of the next one are predicted too
 *    (crossIteration), so the lane does not idle at the iteration boundary;
 *  - once a layer is routed, its prefetches that the router did not pick are cancelled (queued: dropped; in
 *    flight: the queued chunks finish, the rest never moves, the slot is freed);
 *  - admission: a prefetch never evicts an expert whose expected next use (policy's estimate) comes sooner than
 *    the prefetched expert's (ProbabilityPolicy.expectedUseAt: target distance + (1 - p) x numLayers / q; the
 *    oracle's is its target distance).
 *
 * Policies: 'lru' / 'lfu' / 'belady' fetch on demand only (belady = optimal eviction with the future known: the
 * hit-rate upper bound for demand fetching, and its misses x transfer time - total compute time is a lower bound
 * on the stall of ANY policy, prefetching or not, since Belady minimises the number of copies); 'domain-oracle'
 * fetches on demand with probability-guided eviction from each request's TRUE latent domain and that domain's
 * expert frequencies over the whole trace (a labelled oracle, generated traces only: what perfect knowledge of
 * the request's context would give eviction); 'moe-infinity' = activation-matrix predictor (per-request expert
 * activation counts matched against past requests by cosine) with probability-guided eviction; 'finemoe' =
 * FineMoE predictor + probability-guided eviction; 'oracle' = prefetches exactly the experts the trace will use,
 * at the same distance, with Belady eviction and no link cap (an upper bound for prefetching at that distance).
 */
import { InvalidArgumentError } from '../errors.js';
import { ExpertMapStore, FineMoePredictor, type FineMoePredictorOptions } from './finemoe.js';
import { BeladyPolicy, LfuPolicy, LruPolicy, ProbabilityPolicy, type EvictionPolicy, type UsageForecast } from './policy.js';
import type { RoutingTrace } from './trace.js';
import { checkInt, checkNumber } from './types.js';

export const SIM_POLICIES = ['lru', 'lfu', 'belady', 'domain-oracle', 'moe-infinity', 'finemoe', 'oracle'] as const;
export type SimPolicy = (typeof SIM_POLICIES)[number];

/** Options of {@link simulate}. */
export interface SimOptions {
  policy: SimPolicy;
  /** Experts the GPU cache holds (>= topK). */
  capacity: number;
  /** Layers ahead that predictions target (1..layers); ignored by demand-only policies. */
  prefetchDistance: number;
  expertBytes: number;
  /** Host-to-device bytes per millisecond (55 GB/s = 55e6). */
  bandwidthBytesPerMs: number;
  /** Compute time of one layer of one decode iteration, ms. */
  layerComputeMs: number;
  /** Requests replayed before statistics start (they warm the cache and fill the predictor's store). */
  warmupRequests?: number;
  /** Maps kept by the FineMoE store / matrices by the MoE-Infinity collection (default 512). */
  storeCapacity?: number;
  /** Transfer chunk size (default 4 MiB, the engine's default). */
  chunkBytes?: number;
  /** Chunks queued on the copy stream at once (default 2, the engine's default). */
  chunkDepth?: number;
  /** 'chunked' (default: the shipped engine) or 'whole' (non-preemptive whole-expert copies). */
  laneModel?: 'chunked' | 'whole';
  /**
   * 'link' (default): per target layer, admit prefetches only while they can arrive before it runs; 'start': also
   * admit one that can start (arrive partly) before; 'none': prefetch every selected expert.
   */
  prefetchCap?: 'link' | 'start' | 'value' | 'none';
  /** Cancel a layer's unpicked prefetches once it is routed (default true). */
  cancelRouted?: boolean;
  /** FineMoE: after each layer, re-predict every layer up to layer + distance from the current match (default true; false = only layer + distance). */
  refine?: boolean;
  /**
   * Predictive policies: while the last `distance` layers of an iteration run, prefetch for the first layers of
   * the next iteration (FineMoE: its request-level forecast; oracle: the trace's next steps) instead of leaving
   * the lane idle (default true; false = the next iteration's first layers are predicted only when it starts).
   */
  crossIteration?: boolean;
  /** Cancel the in-flight prefetch when a refined prediction for its layer no longer includes it (default false: measured no gain, in-flight copies are short next to the re-prediction interval). */
  cancelStale?: boolean;
  /** Options for the FineMoE predictor (neighbours, calibration; see FineMoePredictorOptions). */
  finemoe?: Omit<FineMoePredictorOptions, 'topK' | 'prefetchDistance'>;
}

/** Simulation result (measured requests only). */
export interface SimResult {
  policy: SimPolicy;
  capacity: number;
  prefetchDistance: number;
  iterations: number;
  uses: number;
  hits: number;
  hitRate: number;
  stallMs: number;
  totalMs: number;
  msPerToken: number;
  bytesMoved: number;
  /** Prefetch transfers started. */
  prefetches: number;
  prefetchUsed: number;
  /** Prefetched experts evicted or cancelled before any use. */
  prefetchWasted: number;
  /** Of prefetchWasted, those cancelled in flight when their layer was routed. */
  prefetchCancelled: number;
  /** Uses that found their expert still arriving from a prefetch (counted as misses; the stall is shorter). */
  latePrefetches: number;
  /** Host wall time the simulation took, ms. */
  simWallMs: number;
}

/**
 * MoE-Infinity-style predictor: each request accumulates an expert activation matrix (EAM, counts [L, E]); the
 * collection keeps past requests' EAMs (FIFO when full); after each layer the current EAM is matched against the
 * collection by cosine (kept incrementally) and the best match's row for layer + distance gives its top-k.
 *
 * @example
 * const p = new ActivationMatrixPredictor(16, 64, 8, 3, 256);
 * p.beginRequest(); p.observe(0, [3, 9, ...]); const next = p.predict(3);
 */
export class ActivationMatrixPredictor implements UsageForecast {
  readonly numLayers: number;
  readonly numExperts: number;
  readonly topK: number;
  readonly distance: number;
  readonly capacity: number;
  readonly #mats: Float32Array;
  readonly #norm: Float64Array;
  readonly #iters: Float64Array;
  readonly #dots: Float64Array;
  readonly #cur: Float32Array;
  #curSq = 0;
  #curIters = 0;
  #size = 0;
  #next = 0;
  #best = -1;
  #nextLayer = 0;
  constructor(numLayers: number, numExperts: number, topK: number, distance: number, capacity: number) {
    this.numLayers = checkInt('numLayers', numLayers, 1);
    this.numExperts = checkInt('numExperts', numExperts, 1);
    this.topK = checkInt('topK', topK, 1, numExperts);
    this.distance = checkInt('distance', distance, 1, numLayers);
    this.capacity = checkInt('capacity', capacity, 1);
    const M = numLayers * numExperts;
    this.#mats = new Float32Array(capacity * M);
    this.#norm = new Float64Array(capacity);
    this.#iters = new Float64Array(capacity);
    this.#dots = new Float64Array(capacity);
    this.#cur = new Float32Array(M);
  }
  /** Saves the finished request's EAM into the collection and starts a new one. */
  beginRequest(): void {
    if (this.#curSq > 0) {
      const i = this.#size < this.capacity ? this.#size++ : this.#next;
      this.#next = (i + 1) % this.capacity;
      this.#mats.set(this.#cur, i * this.#cur.length);
      this.#norm[i] = Math.sqrt(this.#curSq);
      this.#iters[i] = Math.max(1, this.#curIters);
    }
    this.#cur.fill(0);
    this.#dots.fill(0);
    this.#curSq = 0;
    this.#curIters = 0;
    this.#best = -1;
  }
  endIteration(): void {
    this.#curIters++;
    this.#nextLayer = 0;
  }
  observe(layer: number, ids: ArrayLike<number>): void {
    const E = this.numExperts;
    const M = this.numLayers * E;
    for (let i = 0; i < ids.length; i++) {
      const key = layer * E + ids[i]!;
      const c = this.#cur[key]!;
      this.#curSq += 2 * c + 1;
      this.#cur[key] = c + 1;
      for (let j = 0; j < this.#size; j++) this.#dots[j]! += this.#mats[j * M + key]!;
    }
    let best = -1;
    let bestS = -Infinity;
    for (let j = 0; j < this.#size; j++) {
      const s = this.#dots[j]! / (this.#norm[j]! || 1);
      if (s > bestS) {
        bestS = s;
        best = j;
      }
    }
    this.#best = best;
    this.#nextLayer = (layer + 1) % this.numLayers;
  }
  /** Top-k experts of the best match's row for `layer` (empty without a match). */
  predict(layer: number): number[] {
    if (this.#best < 0) return [];
    const E = this.numExperts;
    const off = (this.#best * this.numLayers + layer) * E;
    const idx = Array.from({ length: E }, (_, i) => i).sort((a, b) => this.#mats[off + b]! - this.#mats[off + a]! || a - b);
    return idx.slice(0, this.topK).filter((e) => this.#mats[off + e]! > 0);
  }
  nextLayer(): number {
    return this.#nextLayer;
  }
  probability(layer: number, expert: number): number {
    if (this.#best < 0) return 0;
    return Math.min(1, this.#mats[(this.#best * this.numLayers + layer) * this.numExperts + expert]! / this.#iters[this.#best]!);
  }
}

interface Pending {
  key: number;
  /** Global step of the layer it is for. */
  target: number;
  /** Predicted probability (ordering within a deadline; admission). */
  p: number;
  dead: boolean;
}

/**
 * Replays `trace` under `options` and returns the statistics of the non-warm-up requests.
 *
 * @example
 * const r = simulate(trace, { policy: 'finemoe', capacity: 256, prefetchDistance: 3, expertBytes: 12.6e6,
 *   bandwidthBytesPerMs: 55e6, layerComputeMs: 0.5, warmupRequests: 20 });
 * console.log(r.hitRate, r.stallMs);
 */
export function simulate(trace: RoutingTrace, options: SimOptions): SimResult {
  const t0 = performance.now();
  const { numLayers: L, numExperts: E, topK: k } = trace;
  const policyName = options.policy;
  if (!SIM_POLICIES.includes(policyName)) throw new InvalidArgumentError(`options.policy must be one of ${SIM_POLICIES.join(', ')}, received ${JSON.stringify(policyName)}`);
  const K = L * E;
  const C = checkInt('options.capacity', options.capacity, k, K);
  const dist = checkInt('options.prefetchDistance', options.prefetchDistance, 1, L);
  const xb = checkNumber('options.expertBytes', options.expertBytes, 0);
  const bw = checkNumber('options.bandwidthBytesPerMs', options.bandwidthBytesPerMs, 1e-9);
  const tx = xb / bw;
  const compute = checkNumber('options.layerComputeMs', options.layerComputeMs, 0);
  const warm = checkInt('options.warmupRequests', options.warmupRequests ?? 0, 0, trace.requests.length);
  const storeCap = checkInt('options.storeCapacity', options.storeCapacity ?? 512, 1);
  const chunk = checkNumber('options.chunkBytes', options.chunkBytes ?? 4 * 2 ** 20, 1);
  const depth = checkInt('options.chunkDepth', options.chunkDepth ?? 2, 1);
  const lane = options.laneModel ?? 'chunked';
  if (lane !== 'chunked' && lane !== 'whole') throw new InvalidArgumentError(`options.laneModel must be 'chunked' or 'whole', received ${JSON.stringify(lane)}`);
  const cap = options.prefetchCap ?? 'value';
  if (cap !== 'link' && cap !== 'start' && cap !== 'value' && cap !== 'none') throw new InvalidArgumentError(`options.prefetchCap must be 'link', 'start', 'value' or 'none', received ${JSON.stringify(cap)}`);
  const cancelRouted = options.cancelRouted ?? true;
  const refine = options.refine ?? true;
  const crossIteration = options.crossIteration ?? true;
  const cancelStale = options.cancelStale ?? false;

  // Global step index of every (request, iteration, layer), and per-key use positions for Belady / oracle.
  const useCount = new Int32Array(K);
  for (const r of trace.requests) for (let i = 0; i < r.ids.length; i++) useCount[(Math.floor(i / k) % L) * E + r.ids[i]!]!++;
  const useStart = new Int32Array(K + 1);
  for (let key = 0; key < K; key++) useStart[key + 1] = useStart[key]! + useCount[key]!;
  const usePos = new Int32Array(useStart[K]!);
  {
    const fill = useStart.slice(0, K);
    let g = 0;
    for (const r of trace.requests) {
      for (let s = 0; s < r.iterations * L; s++, g++) {
        const l = s % L;
        for (let i = 0; i < k; i++) usePos[fill[l * E + r.ids[s * k + i]!]!++] = g;
      }
    }
  }
  // global step -> offset of its top-k ids in its request's ids (the oracle's cross-iteration prefetch)
  const stepReq: Int32Array = new Int32Array(usePos.length / k + 1);
  const stepOff: Int32Array = new Int32Array(stepReq.length);
  {
    let gs = 0;
    trace.requests.forEach((r, ri) => {
      for (let s = 0; s < r.iterations * L; s++, gs++) {
        stepReq[gs] = ri;
        stepOff[gs] = s * k;
      }
    });
    stepReq.fill(-1, gs);
  }
  const cursor = useStart.slice(0, K);
  let step = 0; // global step of the layer routed last (the one computing)
  const nextUse = (key: number): number => {
    let c = cursor[key]!;
    const end = useStart[key + 1]!;
    while (c < end && usePos[c]! < step) c++;
    cursor[key] = c;
    return c < end ? usePos[c]! : Infinity;
  };

  let fine: FineMoePredictor | undefined;
  let domainForecast: { setDomain(d: number): void; setLayer(l: number): void } | undefined;
  let eam: ActivationMatrixPredictor | undefined;
  let policy: EvictionPolicy;
  switch (policyName) {
    case 'lru':
      policy = new LruPolicy(K);
      break;
    case 'lfu':
      policy = new LfuPolicy(K);
      break;
    case 'belady':
    case 'oracle':
      policy = new BeladyPolicy(K, nextUse);
      break;
    case 'finemoe':
      fine = new FineMoePredictor(new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: trace.embedDim, capacity: storeCap, prefetchDistance: dist }), { ...options.finemoe, topK: k, prefetchDistance: dist });
      policy = new ProbabilityPolicy(L, E, fine, 'finemoe');
      break;
    case 'domain-oracle': {
      // labelled oracle: the request's true domain and its expert frequencies over the whole trace
      const domains = trace.requests.map((r) => r.domain);
      if (domains.some((d) => !Number.isInteger(d) || d < 0)) throw new InvalidArgumentError("options.policy 'domain-oracle' needs a trace whose requests carry their domain (generateTrace), received a request with domain -1");
      const nD = Math.max(0, ...domains) + 1;
      const freq = new Float64Array(nD * K);
      const iters = new Float64Array(nD);
      for (const r of trace.requests) {
        iters[r.domain]! += r.iterations;
        for (let i = 0; i < r.ids.length; i++) freq[r.domain * K + (Math.floor(i / k) % L) * E + r.ids[i]!]! += 1;
      }
      for (let d = 0; d < nD; d++) for (let key = 0; key < K; key++) freq[d * K + key]! /= iters[d] || 1;
      let nextLayer = 0;
      domainForecast = {
        setDomain: (d: number) => (domainOff = d * K),
        setLayer: (l: number) => (nextLayer = l),
      };
      let domainOff = 0;
      policy = new ProbabilityPolicy(L, E, { nextLayer: () => nextLayer, probability: (l, e) => freq[domainOff + l * E + e]! }, 'domain-oracle');
      break;
    }
    case 'moe-infinity':
      eam = new ActivationMatrixPredictor(L, E, k, dist, storeCap);
      policy = new ProbabilityPolicy(L, E, eam, 'moe-infinity');
      break;
  }
  const oracle = policyName === 'oracle';
  const prefetching = fine !== undefined || eam !== undefined || oracle;
  const capped = cap !== 'none' && !oracle;
  const startSlack = cap === 'start' ? xb : 0;
  // 'value': partial prefetches only when the lane cannot move a whole expert within the prefetch distance (else
  // they hold the lane that whole, in-time prefetches for later layers need)
  const partialOk = cap === 'value' && xb > dist * compute * bw;

  // Residency: `present` = holds a slot (arrived, or loading as the in-flight prefetch, arrival = Infinity).
  const present = new Uint8Array(K);
  const arrival = new Float64Array(K);
  const prefetched = new Uint8Array(K);
  const pinnedAt = new Int32Array(K).fill(-1);
  const residents = new Int32Array(C);
  const where = new Int32Array(K).fill(-1);
  let nRes = 0;
  const cand = new Int32Array(C);
  let measuring = warm === 0;
  const st = { uses: 0, hits: 0, stall: 0, bytes: 0, prefetches: 0, used: 0, wasted: 0, cancelled: 0, late: 0, iters: 0, start: 0 };

  // The lane: time simulated so far, the one prefetch in flight (bytes copied so far), the prefetch queue.
  let now = 0;
  let laneT = 0;
  let cur: { key: number; target: number; p: number; done: number } | undefined;
  let queue: Pending[] = [];
  const queuedFor = new Map<number, Pending>(); // key -> live queue entry

  const remove = (key: number) => {
    const i = where[key]!;
    const last = residents[--nRes]!;
    residents[i] = last;
    where[last] = i;
    where[key] = -1;
    present[key] = 0;
    if (prefetched[key]) {
      prefetched[key] = 0;
      if (measuring) st.wasted++;
    }
    policy.onRemove(key);
  };
  /** Expected layer steps until `key`'s next use, as the policy sees it (Infinity = no opinion). */
  const victimScore = (key: number): number => {
    if (policy instanceof ProbabilityPolicy) return policy.expectedNextUse(key);
    if (policy instanceof BeladyPolicy) return nextUse(key) - step;
    return Infinity;
  };
  const newScore = (key: number, target: number, p: number): number => {
    const d = target - step;
    if (oracle) return d;
    if (policy instanceof ProbabilityPolicy) return policy.expectedUseAt(key, d, p);
    const q = Math.min(1, Math.max(1e-4, p));
    return d + (L * (1 - q)) / q;
  };
  /** Frees a slot if the cache is full. Prefetches (score given) only evict a victim expected later than them. */
  const obtain = (time: number, score: number | undefined): boolean => {
    if (nRes < C) return true;
    let n = 0;
    for (let i = 0; i < nRes; i++) {
      const key = residents[i]!;
      if (pinnedAt[key] !== step && arrival[key]! <= time) cand[n++] = key;
    }
    if (n === 0) {
      if (score !== undefined) return false;
      // a demand with every unpinned slot loading: take the in-flight prefetch's slot
      if (cur && pinnedAt[cur.key] !== step) {
        cancelCur(time);
        return true;
      }
      throw new InvalidArgumentError(`options.capacity must hold one layer's experts (${k}), received ${C}`);
    }
    const victim = cand[policy.chooseVictim(cand, n)]!;
    if (score !== undefined && victimScore(victim) <= score) return false;
    remove(victim);
    return true;
  };
  const insert = (key: number, arrive: number, isPrefetch: boolean) => {
    residents[nRes] = key;
    where[key] = nRes++;
    present[key] = 1;
    arrival[key] = arrive;
    prefetched[key] = isPrefetch ? 1 : 0;
    policy.onInsert(key);
  };
  /** Bytes of the in-flight prefetch that are already queued on the copy stream at lane time laneT. */
  const committed = (): number => {
    if (!cur) return 0;
    if (lane === 'whole') return xb;
    return Math.min(xb, (Math.floor(cur.done / chunk) + depth) * chunk);
  };
  /** Cancels the in-flight prefetch at lane time (its queued chunks still finish); returns when the lane is free. */
  const cancelCur = (time: number): number => {
    const c = cur!;
    const end = Math.max(laneT, time) + (committed() - c.done) / bw;
    if (measuring) {
      st.bytes += committed();
      st.cancelled++;
    }
    cur = undefined;
    remove(c.key);
    laneT = end;
    return end;
  };
  const popNext = (): Pending | undefined => {
    let bi = -1;
    for (let i = 0; i < queue.length; i++) {
      const q = queue[i]!;
      if (q.dead) continue;
      if (bi < 0) bi = i;
      else {
        const b = queue[bi]!;
        if (q.target < b.target || (q.target === b.target && q.p > b.p)) bi = i;
      }
    }
    if (bi < 0) {
      queue = [];
      return undefined;
    }
    const q = queue[bi]!;
    q.dead = true;
    queuedFor.delete(q.key);
    if (queue.length > 256) queue = queue.filter((x) => !x.dead);
    return q;
  };
  /** Runs the lane (prefetches only: demands are handled at the layer) up to time `until`. */
  const advanceLane = (until: number) => {
    while (laneT < until) {
      if (!cur) {
        const q = popNext();
        if (!q) break;
        if (q.target <= step || present[q.key]) continue;
        if (!obtain(laneT, newScore(q.key, q.target, q.p))) continue;
        insert(q.key, Infinity, true);
        cur = { key: q.key, target: q.target, p: q.p, done: 0 };
        if (measuring) st.prefetches++;
      }
      const c = cur;
      const finish = laneT + (xb - c.done) / bw;
      if (finish <= until) {
        arrival[c.key] = finish;
        laneT = finish;
        cur = undefined;
        if (measuring) st.bytes += xb;
      } else {
        c.done += (until - laneT) * bw;
        laneT = until;
      }
    }
    if (laneT < until) laneT = until;
  };
  /**
   * Queues the predictions of one round (several target layers at once). Each prediction replaces the queued, not
   * started prefetches of its layer (and, with cancelStale, the in-flight one) that it no longer includes. New
   * prefetches are admitted most probable first, across layers, while the lane can still deliver every admitted
   * prefetch before its layer runs in deadline order (the link budget: bytes due by a layer <= its lead x
   * layerComputeMs x bandwidth; the in-flight remainder counts first).
   */
  const enqueueRound = (preds: Array<{ layer: number; experts: ArrayLike<number>; probs: ArrayLike<number> | undefined; target: number; lead: number }>) => {
    const cand: Array<{ key: number; target: number; p: number; lead: number }> = [];
    for (const pr of preds) {
      const want = new Set<number>();
      for (let i = 0; i < pr.experts.length; i++) want.add(pr.layer * E + pr.experts[i]!);
      for (const q of queue) if (!q.dead && q.target === pr.target && !want.has(q.key)) {
        q.dead = true;
        queuedFor.delete(q.key);
      }
      if (cancelStale && cur && cur.target === pr.target && !want.has(cur.key) && pinnedAt[cur.key] !== step) cancelCur(now);
      for (let i = 0; i < pr.experts.length; i++) {
        const key = pr.layer * E + pr.experts[i]!;
        const p = pr.probs ? pr.probs[i]! : 1;
        if (present[key]) continue;
        const old = queuedFor.get(key);
        if (old) {
          old.p = Math.max(old.p, p);
          continue;
        }
        cand.push({ key, target: pr.target, p, lead: pr.lead });
      }
    }
    if (cand.length === 0) return;
    cand.sort((a, b) => b.p - a.p || a.target - b.target);
    // deadlines (lead, bytes due by then) of what the lane already has to deliver, EDF
    const jobs: Array<{ lead: number; bytes: number }> = [];
    if (capped) {
      const inflight = cur ? xb - cur.done : 0;
      for (const q of queue) if (!q.dead) jobs.push({ lead: q.target - step, bytes: xb });
      if (cur) jobs.push({ lead: cur.target - step, bytes: inflight });
    }
    const fits = (lead: number, p: number, partial: boolean): boolean => {
      // adding xb due at `lead` must keep every deadline >= lead feasible
      let before = 0;
      for (const j of jobs) if (j.lead <= lead) before += j.bytes;
      const room = lead * compute * bw + startSlack - before;
      if (room < xb) {
        // it cannot arrive in time. 'value': start it anyway when the part that can move before its layer runs
        // (stall saved if it is used) outweighs the chunks a demand would wait for if it is not
        if (!partial || room <= 0 || !(p * room > (1 - p) * Math.min(xb, depth * chunk))) return false;
      }
      for (const j of jobs) {
        if (j.lead <= lead) continue;
        let due = xb;
        for (const o of jobs) if (o.lead <= j.lead) due += o.bytes;
        if (due > j.lead * compute * bw + startSlack) return false;
      }
      return true;
    };
    // prefetches that arrive in time first; then ('value') ones that can only start before their layer
    for (const partial of partialOk ? [false, true] : [false]) {
      for (const c of cand) {
        if (queuedFor.has(c.key)) continue;
        if (capped && !fits(c.lead, c.p, partial)) continue;
        const q: Pending = { key: c.key, target: c.target, p: c.p, dead: false };
        queue.push(q);
        queuedFor.set(c.key, q);
        if (capped) jobs.push({ lead: c.lead, bytes: xb });
      }
    }
  };
  const enqueue = (layer: number, experts: ArrayLike<number>, probs: ArrayLike<number> | undefined, target: number, lead: number) => enqueueRound([{ layer, experts, probs, target, lead }]);
  /** The oracle's prediction for global step `gs` (its true experts), or undefined past the trace. */
  const truth = (gs: number): Uint16Array | undefined => {
    const ri = stepReq[gs];
    if (ri === undefined || ri < 0) return undefined;
    return trace.requests[ri]!.ids.subarray(stepOff[gs]!, stepOff[gs]! + k);
  };

  const gatesBuf = new Float32Array(E);
  let g = 0;
  for (let ri = 0; ri < trace.requests.length; ri++) {
    if (ri === warm && !measuring) {
      measuring = true;
      st.start = now;
    }
    const r = trace.requests[ri]!;
    fine?.beginRequest();
    eam?.beginRequest();
    domainForecast?.setDomain(r.domain);
    for (let t = 0; t < r.iterations; t++) {
      const iterStart = g;
      step = g - 1;
      if (prefetching) {
        if (fine) enqueueRound(fine.beginIteration(r.embedding).map((p) => ({ layer: p.layer, experts: p.experts, probs: p.probs, target: iterStart + p.layer, lead: p.layer })));
        else
          for (let l = 0; l < dist && l < L; l++) {
            if (eam) {
              const ex = eam.predict(l);
              enqueue(l, ex, ex.map((e) => eam!.probability(l, e)), iterStart + l, l);
            } else enqueue(l, r.ids.subarray((t * L + l) * k, (t * L + l + 1) * k), undefined, iterStart + l, l);
          }
      }
      for (let l = 0; l < L; l++, g++) {
        advanceLane(now);
        step = g;
        const base = (t * L + l) * k;
        for (let i = 0; i < k; i++) pinnedAt[l * E + r.ids[base + i]!] = g;
        // the layer is routed: cancel its prefetches the router did not pick
        if (cancelRouted) {
          for (const q of queue) if (!q.dead && q.target === g && pinnedAt[q.key] !== g) {
            q.dead = true;
            queuedFor.delete(q.key);
          }
          if (cur && cur.target === g && pinnedAt[cur.key] !== g) cancelCur(now);
        }
        // demands: wait for the prefetch chunks already on the stream, then run back to back
        let laneAt = Math.max(now, laneT);
        if (cur) {
          const c = committed();
          laneAt += (c - cur.done) / bw;
          cur.done = c;
          if (c >= xb) {
            arrival[cur.key] = laneAt;
            cur = undefined;
            if (measuring) st.bytes += xb;
          }
        }
        const late = cur !== undefined && pinnedAt[cur.key] === g ? cur : undefined;
        let ready = now;
        for (let i = 0; i < k; i++) {
          const key = l * E + r.ids[base + i]!;
          if (present[key]) {
            if (arrival[key]! <= now) {
              if (measuring) st.hits++;
            } else if (prefetched[key] && measuring) st.late++;
            if (prefetched[key]) {
              prefetched[key] = 0;
              if (measuring) st.used++;
            }
          } else {
            const q = queuedFor.get(key); // a queued prefetch of it becomes this demand
            if (q) {
              q.dead = true;
              queuedFor.delete(key);
            }
            obtain(now, undefined);
            laneAt = Math.max(laneAt, laneT);
            insert(key, laneAt + tx, false);
            laneAt += tx;
            if (measuring) st.bytes += xb;
          }
          if (measuring) st.uses++;
          policy.onAccess(key);
        }
        if (late && cur === late) {
          // the demanded in-flight prefetch resumes after the other demands (it keeps prefetch priority)
          laneAt += (xb - late.done) / bw;
          arrival[late.key] = laneAt;
          cur = undefined;
          if (measuring) st.bytes += xb;
        }
        laneT = Math.max(laneT, laneAt);
        for (let i = 0; i < k; i++) ready = Math.max(ready, arrival[l * E + r.ids[base + i]!]!);
        if (measuring) st.stall += ready - now;
        // the lane ran demands from now to laneAt; prefetches continue from there
        advanceLane(ready);
        now = ready; // the gate has run: predictions made now use the lane during this layer's compute
        if (prefetching) {
          if (fine) {
            let gates: ArrayLike<number>;
            if (r.gates) gates = r.gates.subarray((t * L + l) * E, (t * L + l + 1) * E);
            else {
              gatesBuf.fill(0);
              for (let i = 0; i < k; i++) gatesBuf[r.ids[base + i]!] = r.probs[base + i]!;
              gates = gatesBuf;
            }
            const p = fine.observeLayer(l, gates);
            const preds = refine ? fine.predictRange(l + 1, l + dist) : p ? [p] : [];
            const round = preds.map((x) => ({ layer: x.layer, experts: x.experts, probs: x.probs, target: iterStart + x.layer, lead: x.layer - l }));
            if (crossIteration && l + dist >= L) {
              for (const x of fine.predictNextIteration(0, l + dist - L)) round.push({ layer: x.layer, experts: x.experts, probs: x.probs, target: iterStart + L + x.layer, lead: L + x.layer - l });
            }
            enqueueRound(round);
          } else if (eam) {
            eam.observe(l, r.ids.subarray(base, base + k));
            const target = l + dist;
            if (target < L) {
              const ex = eam.predict(target);
              enqueue(target, ex, ex.map((e) => eam!.probability(target, e)), iterStart + target, dist);
            }
          } else if (l + dist < L || crossIteration) {
            const ids = truth(g + dist);
            if (ids && (l + dist < L || crossIteration)) enqueue((l + dist) % L, ids, undefined, g + dist, dist);
          }
        }
        domainForecast?.setLayer((l + 1) % L);
        now += compute;
      }
      fine?.endIteration();
      eam?.endIteration();
      if (measuring) st.iters++;
    }
  }
  const totalMs = now - st.start;
  return {
    policy: policyName,
    capacity: C,
    prefetchDistance: prefetching ? dist : 0,
    iterations: st.iters,
    uses: st.uses,
    hits: st.hits,
    hitRate: st.uses > 0 ? st.hits / st.uses : 0,
    stallMs: st.stall,
    totalMs,
    msPerToken: st.iters > 0 ? totalMs / st.iters : 0,
    bytesMoved: st.bytes,
    prefetches: st.prefetches,
    prefetchUsed: st.used,
    prefetchWasted: st.wasted,
    prefetchCancelled: st.cancelled,
    latePrefetches: st.late,
    simWallMs: performance.now() - t0,
  };
}
