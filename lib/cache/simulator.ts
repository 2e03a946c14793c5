/**
 * Trace-driven cache simulator: replays a RoutingTrace (batch of one, decode iterations, requests in order)
 * against a cache capacity, an eviction policy, a predictor and a time model, and reports hit rate, stall time
 * and bytes moved. Time model: one copy lane (one PCIe direction), non-preemptive, each transfer takes
 * expertBytes / bandwidth; demand fetches start as soon as the lane is free and go before every queued prefetch;
 * a layer starts when all of its experts have arrived and then takes layerComputeMs, during which queued prefetches
 * use the lane. A prefetch never evicts an expert that its policy expects to need sooner than the prefetched one.
 * The eviction policies and the FineMoE predictor are the shipped classes (policy.ts, finemoe.ts).
 *
 * Policies: 'lru' / 'lfu' / 'belady' fetch on demand only (belady = optimal eviction with the future known: the
 * hit-rate upper bound for demand fetching); 'moe-infinity' = activation-matrix predictor (per-request expert
 * activation counts matched against past requests by cosine) with probability-guided eviction; 'finemoe' =
 * FineMoE predictor + probability-guided eviction; 'oracle' = prefetches exactly the experts the trace will use,
 * at the same distance, with Belady eviction (an upper bound for prefetching at that distance).
 */
import { InvalidArgumentError } from '../errors.js';
import { ExpertMapStore, FineMoePredictor } from './finemoe.js';
import { BeladyPolicy, LfuPolicy, LruPolicy, ProbabilityPolicy, type EvictionPolicy, type UsageForecast } from './policy.js';
import type { RoutingTrace } from './trace.js';
import { checkInt, checkNumber } from './types.js';

export const SIM_POLICIES = ['lru', 'lfu', 'belady', 'moe-infinity', 'finemoe', 'oracle'] as const;
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
  prefetches: number;
  prefetchUsed: number;
  prefetchWasted: number;
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
  const tx = checkNumber('options.expertBytes', options.expertBytes, 0) / checkNumber('options.bandwidthBytesPerMs', options.bandwidthBytesPerMs, 1e-9);
  const compute = checkNumber('options.layerComputeMs', options.layerComputeMs, 0);
  const warm = checkInt('options.warmupRequests', options.warmupRequests ?? 0, 0, trace.requests.length);
  const storeCap = checkInt('options.storeCapacity', options.storeCapacity ?? 512, 1);

  // Global step index of every (request, iteration, layer), and per-key use positions for Belady / oracle.
  let steps = 0;
  for (const r of trace.requests) steps += r.iterations * L;
  const useCount = new Int32Array(K);
  for (const r of trace.requests) for (let i = 0; i < r.ids.length; i++) useCount[Math.floor(i / k) % L * E + r.ids[i]!]!++;
  const useStart = new Int32Array(K + 1);
  for (let key = 0; key < K; key++) useStart[key + 1] = useStart[key]! + useCount[key]!;
  const usePos = new Int32Array(useStart[K]!);
  const fill = useStart.slice(0, K);
  {
    let g = 0;
    for (const r of trace.requests) {
      for (let s = 0; s < r.iterations * L; s++, g++) {
        const l = s % L;
        for (let i = 0; i < k; i++) usePos[fill[l * E + r.ids[s * k + i]!]!++] = g;
      }
    }
  }
  const cursor = useStart.slice(0, K);
  let step = 0;
  const nextUse = (key: number): number => {
    let c = cursor[key]!;
    const end = useStart[key + 1]!;
    while (c < end && usePos[c]! < step) c++;
    cursor[key] = c;
    return c < end ? usePos[c]! : Infinity;
  };

  let fine: FineMoePredictor | undefined;
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
      fine = new FineMoePredictor(new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: trace.embedDim, capacity: storeCap, prefetchDistance: dist }), { topK: k, prefetchDistance: dist });
      policy = new ProbabilityPolicy(L, E, fine, 'finemoe');
      break;
    case 'moe-infinity':
      eam = new ActivationMatrixPredictor(L, E, k, dist, storeCap);
      policy = new ProbabilityPolicy(L, E, eam, 'moe-infinity');
      break;
  }
  const prefetching = fine !== undefined || eam !== undefined || policyName === 'oracle';

  const present = new Uint8Array(K);
  const arrival = new Float64Array(K);
  const prefetched = new Uint8Array(K);
  const pinnedAt = new Int32Array(K).fill(-1);
  const residents = new Int32Array(C);
  const where = new Int32Array(K).fill(-1);
  let nRes = 0;
  const cand = new Int32Array(C);
  const queue: Array<{ key: number; target: number; issued: number }> = [];
  let qHead = 0;
  let now = 0;
  let laneFree = 0;
  let measuring = warm === 0;
  const st = { uses: 0, hits: 0, stall: 0, bytes: 0, prefetches: 0, used: 0, wasted: 0, iters: 0, start: 0 };

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
  const admitScore = (key: number): number => {
    if (policy instanceof ProbabilityPolicy) return policy.expectedNextUse(key);
    if (policy instanceof BeladyPolicy) return nextUse(key) - step;
    return Infinity;
  };
  /** A free slot (evicting if needed); `targetDist` > 0 for prefetches (admission check). */
  const obtain = (time: number, targetDist: number): boolean => {
    if (nRes < C) return true;
    let n = 0;
    for (let i = 0; i < nRes; i++) {
      const key = residents[i]!;
      if (pinnedAt[key] !== step && arrival[key]! <= time) cand[n++] = key;
    }
    if (n === 0) {
      if (targetDist > 0) return false;
      // demand with every slot loading: evict an in-flight prefetch not needed by this layer
      for (let i = 0; i < nRes; i++) if (pinnedAt[residents[i]!] !== step) cand[n++] = residents[i]!;
      if (n === 0) throw new InvalidArgumentError(`options.capacity must hold one layer's experts (${k}), received ${C}`);
    }
    const victim = cand[policy.chooseVictim(cand, n)]!;
    if (targetDist > 0 && admitScore(victim) <= targetDist) return false;
    remove(victim);
    return true;
  };
  const insert = (key: number, start: number, isPrefetch: boolean) => {
    residents[nRes] = key;
    where[key] = nRes++;
    present[key] = 1;
    arrival[key] = start + tx;
    laneFree = start + tx;
    prefetched[key] = isPrefetch ? 1 : 0;
    policy.onInsert(key);
    if (measuring) {
      st.bytes += options.expertBytes;
      if (isPrefetch) st.prefetches++;
    }
  };
  const advanceLane = (until: number) => {
    while (qHead < queue.length) {
      const q = queue[qHead]!;
      const start = Math.max(laneFree, q.issued);
      if (start >= until) break;
      qHead++;
      if (q.target < step || present[q.key]) continue;
      if (!obtain(start, q.target - step)) continue;
      insert(q.key, start, true);
    }
    if (qHead > 1024 && qHead * 2 > queue.length) {
      queue.splice(0, qHead);
      qHead = 0;
    }
  };
  const enqueue = (layer: number, experts: ArrayLike<number>, target: number, replace: boolean) => {
    if (replace) {
      // drop queued (not started) prefetches for the same target step that the new prediction no longer wants
      const want = new Set(Array.from(experts, (e) => layer * E + e));
      for (let i = qHead; i < queue.length; i++) if (queue[i]!.target === target && !want.has(queue[i]!.key)) queue[i]!.target = -1;
    }
    for (let i = 0; i < experts.length; i++) queue.push({ key: layer * E + experts[i]!, target, issued: now });
  };

  const gatesBuf = new Float32Array(E);
  let curReq: RoutingTrace['requests'][number] | undefined;
  const predictAfter = (t: number, l: number, base: number, iterStart: number) => {
    const r = curReq!;

        const target = l + dist;
        if (fine) {
          let gates: ArrayLike<number>;
          if (r.gates) gates = r.gates.subarray((t * L + l) * E, (t * L + l + 1) * E);
          else {
            gatesBuf.fill(0);
            for (let i = 0; i < k; i++) gatesBuf[r.ids[base + i]!] = r.probs[base + i]!;
            gates = gatesBuf;
          }
          const p = fine.observeLayer(l, gates);
          if (p) enqueue(p.layer, p.experts, iterStart + p.layer, true);
        } else if (eam) {
          eam.observe(l, r.ids.subarray(base, base + k));
          if (target < L) enqueue(target, eam.predict(target), iterStart + target, true);
        } else if (target < L) {
          enqueue(target, r.ids.subarray((t * L + target) * k, (t * L + target + 1) * k), iterStart + target, false);
        }
        };

  let g = 0;
  for (let ri = 0; ri < trace.requests.length; ri++) {
    if (ri === warm && !measuring) {
      measuring = true;
      st.start = now;
    }
    const r = trace.requests[ri]!;
    curReq = r;
    fine?.beginRequest();
    eam?.beginRequest();
    for (let t = 0; t < r.iterations; t++) {
      const iterStart = g;
      if (prefetching) {
        if (fine) for (const p of fine.beginIteration(r.embedding)) enqueue(p.layer, p.experts, iterStart + p.layer, false);
        else
          for (let l = 0; l < dist && l < L; l++) {
            const ex = eam ? eam.predict(l) : r.ids.subarray((t * L + l) * k, (t * L + l + 1) * k);
            enqueue(l, ex, iterStart + l, false);
          }
      }
      for (let l = 0; l < L; l++, g++) {
        step = g;
        advanceLane(now);
        const base = (t * L + l) * k;
        for (let i = 0; i < k; i++) pinnedAt[l * E + r.ids[base + i]!] = g;
        let ready = now;
        for (let i = 0; i < k; i++) {
          const key = l * E + r.ids[base + i]!;
          if (present[key]) {
            if (arrival[key]! <= now && measuring) st.hits++;
            if (prefetched[key]) {
              prefetched[key] = 0;
              if (measuring) st.used++;
            }
          } else {
            obtain(now, 0);
            insert(key, Math.max(now, laneFree), false);
          }
          if (measuring) st.uses++;
          ready = Math.max(ready, arrival[key]!);
          policy.onAccess(key);
        }
        if (measuring) st.stall += ready - now;
        now = ready; // the gate has run: predictions made now can use the lane during this layer's compute
        if (prefetching) predictAfter(t, l, base, iterStart);
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
    simWallMs: performance.now() - t0,
  };
}
