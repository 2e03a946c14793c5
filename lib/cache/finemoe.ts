/**
 * FineMoE's predictor (DESIGN.md section 1). An ExpertMapStore keeps, per finished iteration, the per-layer gate
 * probability vectors ("expert map", [L, E]) with the request's semantic embedding, all in contiguous
 * Float32Arrays. The predictor uses semantic search (prompt embedding vs stored embeddings) for the first
 * `prefetchDistance` layers of an iteration, and trajectory search (the gate vectors observed so far in this
 * iteration vs the same layers of every stored map, kept incrementally so each layer costs O(maps * E)) after
 * each routed layer to predict layer + distance. Experts are taken in probability order until the cumulative
 * probability reaches 1 - similarity, and never fewer than top-k. The store is bounded: when full, a new map
 * replaces the stored map most redundant with it, scored w * S_emb + (1 - w) * S_traj with w = distance / layers.
 * The predictor already holds both similarities against every stored map at the end of an iteration (the semantic
 * search's cosines and the trajectory search's running dot products, which cover the whole map once every layer
 * was observed), so its insert costs O(maps) instead of O(maps * L * E).
 *
 * Forecasts for eviction and prefetch (this module's addition to the paper's rule, which the predictor keeps as
 * its single-match mode): a map's gate probability is not the probability that the expert is used the next time
 * its layer runs, so the predictor averages the routed sets (top-k) of the most similar maps (semantic neighbours
 * for the request level, trajectory neighbours for the layers ahead) and calibrates both online against what the
 * router then picks (ReuseCalibrator: per forecast bucket, the observed reuse frequency, kept monotone).
 */
import { InvalidArgumentError } from '../errors.js';
import type { UsageForecast } from './policy.js';
import { checkF32, checkInt, checkNumber } from './types.js';

/** Options of {@link ExpertMapStore}. */
export interface ExpertMapStoreOptions {
  numLayers: number;
  numExperts: number;
  embedDim: number;
  /** Maximum number of maps kept. */
  capacity: number;
  /** Prefetch distance used to weight the replacement score (w = distance / layers). Default 1. */
  prefetchDistance?: number;
  /**
   * Experts each token routes to: when set, the store also keeps each map's routed set (the top-k gates of every
   * layer, gates > 0) in `members`, which the predictor's neighbour forecasts average. A FineMoePredictor sets it
   * from its own topK when the store was created without it. Default 0 (not kept).
   */
  topK?: number;
}

/** Result of a search: stored map index (-1 if the store is empty) and cosine similarity. */
export interface MapMatch {
  index: number;
  similarity: number;
}

/**
 * Bounded store of expert maps with semantic embeddings.
 *
 * @example
 * const store = new ExpertMapStore({ numLayers: 16, numExperts: 64, embedDim: 32, capacity: 1024 });
 * store.add(embedding, gates);                // gates: Float32Array(16 * 64), one iteration
 * const { index, similarity } = store.semanticSearch(promptEmbedding);
 */
export class ExpertMapStore {
  readonly numLayers: number;
  readonly numExperts: number;
  readonly embedDim: number;
  readonly capacity: number;
  readonly prefetchDistance: number;
  /** [capacity, L * E] gate probabilities. */
  readonly maps: Float32Array;
  /** [capacity, D] unit-norm embeddings. */
  readonly embeddings: Float32Array;
  /** [capacity, L] cumulative squared norm of each map's layers 0..l (for prefix cosine). */
  readonly prefixSq: Float64Array;
  /** [capacity, L * E] 1 where the map's token routed to the expert (top-`topK` gates); all 0 while topK is 0. */
  readonly members: Uint8Array;
  /** [capacity, L, topK] the same routed sets as expert ids (0xffff pads a layer with fewer positive gates). */
  memberIds: Uint16Array = new Uint16Array(0);
  /** [L * E] sum of `members` over the stored maps (how many stored tokens routed to each expert). */
  readonly memberSum: Float64Array;
  #topK = 0;
  #size = 0;
  /** Times a map was replaced (monotonic). */
  replacements = 0;
  /** Bumped by every add(): similarities computed against an older version are stale. */
  version = 0;

  constructor(o: ExpertMapStoreOptions) {
    if (typeof o !== 'object' || o === null) throw new InvalidArgumentError(`options must be an object, received ${String(o)}`);
    this.numLayers = checkInt('options.numLayers', o.numLayers, 1);
    this.numExperts = checkInt('options.numExperts', o.numExperts, 1);
    this.embedDim = checkInt('options.embedDim', o.embedDim, 1);
    this.capacity = checkInt('options.capacity', o.capacity, 1);
    this.prefetchDistance = checkInt('options.prefetchDistance', o.prefetchDistance ?? 1, 1, this.numLayers);
    this.maps = new Float32Array(this.capacity * this.numLayers * this.numExperts);
    this.embeddings = new Float32Array(this.capacity * this.embedDim);
    this.prefixSq = new Float64Array(this.capacity * this.numLayers);
    this.members = new Uint8Array(this.capacity * this.numLayers * this.numExperts);
    this.memberSum = new Float64Array(this.numLayers * this.numExperts);
    if (o.topK !== undefined) this.setTopK(o.topK);
  }

  get size(): number {
    return this.#size;
  }

  /** Experts per token recorded in `members` (0: not kept). */
  get topK(): number {
    return this.#topK;
  }

  /** Sets the experts per token and recomputes `members` for the stored maps. */
  setTopK(topK: number): void {
    this.#topK = checkInt('topK', topK, 1, this.numExperts);
    this.memberIds = new Uint16Array(this.capacity * this.numLayers * topK).fill(0xffff);
    this.members.fill(0);
    this.memberSum.fill(0);
    for (let j = 0; j < this.#size; j++) this.#setMembers(j, this.maps.subarray(j * this.numLayers * this.numExperts, (j + 1) * this.numLayers * this.numExperts));
  }

  #setMembers(idx: number, gates: ArrayLike<number>): void {
    const E = this.numExperts;
    const M = this.numLayers * E;
    const out = this.members.subarray(idx * M, (idx + 1) * M);
    const sum = this.memberSum;
    for (let x = 0; x < M; x++) sum[x]! -= out[x]!;
    out.fill(0);
    const k = this.#topK;
    if (k === 0) return;
    for (let l = 0; l < this.numLayers; l++) {
      markTopK(gates, l * E, E, k, out);
      let n = (idx * this.numLayers + l) * k;
      const end = n + k;
      for (let e = 0; e < E; e++) {
        if (out[l * E + e]) {
          this.memberIds[n++] = e;
          sum[l * E + e]! += 1;
        }
      }
      while (n < end) this.memberIds[n++] = 0xffff;
    }
  }

  /** Map `index`'s gate vector for `layer` (a view, E floats). */
  layerView(index: number, layer: number): Float32Array {
    const E = this.numExperts;
    const off = (index * this.numLayers + layer) * E;
    return this.maps.subarray(off, off + E);
  }

  /**
   * Adds one iteration's map. When full, replaces the most redundant stored map (highest
   * w * S_emb + (1 - w) * S_traj with the new one). Returns the index written.
   */
  add(embedding: Float32Array, gates: Float32Array, known?: KnownSimilarities): number {
    checkF32('embedding', embedding, this.embedDim);
    checkF32('gates', gates, this.numLayers * this.numExperts);
    const D = this.embedDim;
    const M = this.numLayers * this.numExperts;
    const unit = normalised(embedding);
    let idx: number;
    if (this.#size < this.capacity) {
      idx = this.#size++;
    } else {
      idx = known && known.version === this.version ? this.#mostRedundantKnown(gates, known) : this.mostRedundant(unit, gates);
      this.replacements++;
    }
    this.version++;
    this.embeddings.set(unit, idx * D);
    this.maps.set(gates, idx * M);
    const E = this.numExperts;
    let acc = 0;
    for (let l = 0; l < this.numLayers; l++) {
      for (let e = 0; e < E; e++) acc += gates[l * E + e]! * gates[l * E + e]!;
      this.prefixSq[idx * this.numLayers + l] = acc;
    }
    this.#setMembers(idx, gates);
    return idx;
  }

  /** Index of the stored map with the highest redundancy score against (unit embedding, gates). */
  mostRedundant(unitEmbedding: Float32Array, gates: Float32Array): number {
    const D = this.embedDim;
    const M = this.numLayers * this.numExperts;
    const w = this.prefetchDistance / this.numLayers;
    let gn = 0;
    for (let i = 0; i < M; i++) gn += gates[i]! * gates[i]!;
    gn = Math.sqrt(gn) || 1;
    let best = 0;
    let bestScore = -Infinity;
    const maps = this.maps;
    const embs = this.embeddings;
    for (let j = 0; j < this.#size; j++) {
      let se = 0;
      for (let d = 0, o = j * D; d < D; d++) se += unitEmbedding[d]! * embs[o + d]!;
      let dot = 0;
      for (let i = 0, o = j * M; i < M; i++) dot += gates[i]! * maps[o + i]!;
      const mn = Math.sqrt(this.prefixSq[j * this.numLayers + this.numLayers - 1]!) || 1;
      const score = w * se + (1 - w) * (dot / (gn * mn));
      if (score > bestScore) {
        bestScore = score;
        best = j;
      }
    }
    return best;
  }

  /** mostRedundant from similarities the caller already holds: O(maps). */
  #mostRedundantKnown(gates: Float32Array, k: KnownSimilarities): number {
    const w = this.prefetchDistance / this.numLayers;
    let gn = 0;
    for (let i = 0; i < gates.length; i++) gn += gates[i]! * gates[i]!;
    gn = Math.sqrt(gn) || 1;
    const L = this.numLayers;
    let best = 0;
    let bestScore = -Infinity;
    for (let j = 0; j < this.#size; j++) {
      const mn = Math.sqrt(this.prefixSq[j * L + L - 1]!) || 1;
      const score = w * k.embedding[j]! + (1 - w) * (k.mapDot[j]! / (gn * mn));
      if (score > bestScore) {
        bestScore = score;
        best = j;
      }
    }
    return best;
  }

  /** Most similar stored embedding (cosine); writes every map's cosine to `out` when given. */
  semanticSearch(embedding: Float32Array, out?: Float64Array): MapMatch {
    checkF32('embedding', embedding, this.embedDim);
    const q = normalised(embedding);
    const D = this.embedDim;
    let best = -1;
    let bestS = -Infinity;
    for (let j = 0; j < this.#size; j++) {
      let s = 0;
      for (let d = 0, o = j * D; d < D; d++) s += q[d]! * this.embeddings[o + d]!;
      if (out) out[j] = s;
      if (s > bestS) {
        bestS = s;
        best = j;
      }
    }
    return { index: best, similarity: best < 0 ? 0 : bestS };
  }
}

/** Similarities of a new map against every stored map, valid for store version `version`. */
export interface KnownSimilarities {
  version: number;
  /** [maps] cosine of the new (unit) embedding with each stored embedding. */
  embedding: ArrayLike<number>;
  /** [maps] dot product of the new gate map with each stored map (all layers). */
  mapDot: ArrayLike<number>;
}

/** Sets out[off + e] = 1 for the `k` largest positive values of `v[off .. off+n)` (ties: lower index). */
export function markTopK(v: ArrayLike<number>, off: number, n: number, k: number, out: Uint8Array): void {
  for (let r = 0; r < k; r++) {
    let best = -1;
    let bv = 0;
    for (let e = 0; e < n; e++) {
      const x = v[off + e]!;
      if (x > bv && out[off + e] === 0) {
        bv = x;
        best = e;
      }
    }
    if (best < 0) return;
    out[off + best] = 1;
  }
}

function normalised(v: Float32Array): Float32Array {
  let n = 0;
  for (let i = 0; i < v.length; i++) n += v[i]! * v[i]!;
  n = Math.sqrt(n) || 1;
  const out = new Float32Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = v[i]! / n;
  return out;
}

/**
 * Experts of `probs[off .. off+n)` in descending probability until the cumulative probability reaches
 * `threshold`, never fewer than `minCount` (top-k) and never more than n.
 */
export function selectByCumulative(probs: ArrayLike<number>, off: number, n: number, threshold: number, minCount: number): number[] {
  const idx = Array.from({ length: n }, (_, i) => i);
  idx.sort((a, b) => probs[off + b]! - probs[off + a]! || a - b);
  const out: number[] = [];
  let cum = 0;
  for (const i of idx) {
    if (out.length >= minCount && cum >= threshold) break;
    out.push(i);
    cum += probs[off + i]!;
  }
  return out;
}

/** A prediction for one layer: the experts to prefetch and the similarity that chose them. */
export interface LayerPrediction {
  layer: number;
  /** In descending probability. */
  experts: number[];
  /**
   * Probability of each expert (same order): with neighbour forecasts (the default) the calibrated probability
   * that the expert is used the next time `layer` runs; in the paper's single-match mode (neighbors 1, calibrate
   * false) the matched map's gate probability.
   */
  probs: number[];
  similarity: number;
  source: 'semantic' | 'trajectory';
}

/** Options of {@link FineMoePredictor}. */
export interface FineMoePredictorOptions {
  topK: number;
  prefetchDistance: number;
  /** Record each finished iteration into the store (default true). */
  record?: boolean;
  /**
   * Stored maps averaged into a forecast: the `neighbors` most similar by trajectory (after a routed layer) or by
   * embedding (the request prior), weighted by similarity (default 32). `neighbors: 1` with `calibrate: false`
   * is the paper's rule (the single best match's gate probabilities, experts by cumulative probability).
   */
  neighbors?: number;
  /** Weight, in neighbours, of the request-level estimate blended into a trajectory forecast (default 1). */
  priorWeight?: number;
  /**
   * How trajectory neighbours refine the request-level forecast q of a layer this iteration has not routed:
   * 'lift' (default) q * (neighbours' routing frequency / all stored maps' frequency), so a layer far ahead, where
   * the neighbours say nothing, keeps q; 'average' the neighbours' routing frequency blended with q.
   */
  trajectoryMode?: 'lift' | 'average';
  /**
   * Layers ahead for which probability() (eviction) uses the trajectory forecast; further layers get the
   * request-level one (default 1: in the evaluation, trajectory forecasts further ahead did not improve eviction).
   * Predictions for prefetch always use the trajectory forecast.
   */
  trajectoryHorizon?: number;
  /**
   * Trajectory neighbours are ranked by (1 - w) * trajectory cosine + w * embedding cosine, so that forecasts for
   * layers far ahead keep the request's semantic context (default 0.5; 0 = trajectory only).
   */
  semanticWeight?: number;
  /**
   * Weight a, in iterations, of the semantic prior in the request-level estimate. Default 'auto': the candidate
   * of REQUEST_PRIOR_WEIGHTS with the lowest running log-loss on the layers routed so far (how much a request's
   * own history says beyond its semantic neighbours depends on the workload).
   */
  requestPriorWeight?: number | 'auto';
  /** Map raw forecasts to the reuse frequencies observed so far (online, per probability bucket; default true). */
  calibrate?: boolean;
  /** Neighbour mode: an expert is predicted for prefetch when its calibrated probability is at least this (default 0.1). */
  minProbability?: number;
}

/**
 * Online calibration of usage forecasts. Forecasts are bucketed by value; each bucket keeps how many forecasts it
 * saw, how many of those experts were then used, and the forecasts' sum. Each bucket gives a point (mean forecast,
 * (used + pseudoCount * mean forecast) / (n + pseudoCount)): an unseen bucket maps to itself, a well-observed one to
 * its observed frequency. The points are made non-decreasing (pool-adjacent-violators, weighted by n +
 * pseudoCount) and map(p) interpolates them linearly, so the calibrated forecast keeps the forecasts' order.
 * Counts are halved once a bucket holds `maxCount` forecasts, so the table follows drift.
 *
 * @example
 * const cal = new ReuseCalibrator();
 * cal.record(0.3, true);           // forecast 0.3, the expert was used
 * const p = cal.map(0.3);          // calibrated probability
 */
export class ReuseCalibrator {
  readonly buckets: number;
  readonly pseudoCount: number;
  readonly maxCount: number;
  readonly #n: Float64Array;
  readonly #used: Float64Array;
  readonly #sum: Float64Array;
  readonly #x: Float64Array;
  readonly #y: Float64Array;
  readonly #bv: Float64Array;
  readonly #bw: Float64Array;
  readonly #bn: Int32Array;
  #dirty = true;
  constructor(buckets = 20, pseudoCount = 20, maxCount = 20000) {
    this.buckets = checkInt('buckets', buckets, 1, 10000);
    this.pseudoCount = checkNumber('pseudoCount', pseudoCount, 1e-9);
    this.maxCount = checkNumber('maxCount', maxCount, 1);
    this.#n = new Float64Array(buckets);
    this.#used = new Float64Array(buckets);
    this.#sum = new Float64Array(buckets);
    this.#x = new Float64Array(buckets);
    this.#y = new Float64Array(buckets);
    this.#bv = new Float64Array(buckets);
    this.#bw = new Float64Array(buckets);
    this.#bn = new Int32Array(buckets);
  }
  #bucket(p: number): number {
    return Math.min(this.buckets - 1, Math.max(0, Math.floor(p * this.buckets)));
  }
  /** One forecast `p` of an expert's use and whether it was used. */
  record(p: number, used: boolean): void {
    const b = this.#bucket(p);
    if (this.#n[b]! >= this.maxCount) {
      this.#n[b]! *= 0.5;
      this.#used[b]! *= 0.5;
      this.#sum[b]! *= 0.5;
    }
    this.#n[b]! += 1;
    this.#sum[b]! += p;
    if (used) this.#used[b]! += 1;
    this.#dirty = true;
  }
  #fit(): void {
    const B = this.buckets;
    const m = this.pseudoCount;
    const x = this.#x;
    const y = this.#y;
    // pool adjacent violators: blocks of buckets share their weighted mean until y is non-decreasing
    const bv = this.#bv;
    const bw = this.#bw;
    const bn = this.#bn;
    let top = 0;
    for (let b = 0; b < B; b++) {
      const n = this.#n[b]!;
      x[b] = n > 0 ? this.#sum[b]! / n : (b + 0.5) / B;
      bv[top] = (this.#used[b]! + m * x[b]!) / (n + m);
      bw[top] = n + m;
      bn[top] = 1;
      top++;
      while (top > 1 && bv[top - 2]! > bv[top - 1]!) {
        const i = top - 2;
        bv[i] = (bv[i]! * bw[i]! + bv[top - 1]! * bw[top - 1]!) / (bw[i]! + bw[top - 1]!);
        bw[i]! += bw[top - 1]!;
        bn[i]! += bn[top - 1]!;
        top--;
      }
    }
    for (let i = 0, b = 0; i < top; i++) for (let c = 0; c < bn[i]!; c++) y[b++] = bv[i]!;
    this.#dirty = false;
  }
  /** Calibrated probability for forecast `p`, in [1e-4, 1] (non-decreasing in p). */
  map(p: number): number {
    if (this.#dirty) this.#fit();
    const x = this.#x;
    const y = this.#y;
    const B = this.buckets;
    let q: number;
    if (p <= x[0]!) q = y[0]! + (p - x[0]!);
    else if (p >= x[B - 1]!) q = y[B - 1]! + (p - x[B - 1]!);
    else {
      let b = Math.min(B - 2, Math.max(0, this.#bucket(p) - 1));
      while (b < B - 2 && x[b + 1]! < p) b++;
      while (b > 0 && x[b]! > p) b--;
      const t = x[b + 1]! > x[b]! ? (p - x[b]!) / (x[b + 1]! - x[b]!) : 0;
      q = y[b]! + t * (y[b + 1]! - y[b]!);
    }
    return Math.min(1, Math.max(1e-4, q));
  }
  /** Per bucket: forecasts seen, observed use frequency and mean forecast (for reports). */
  table(): Array<{ from: number; to: number; n: number; observed: number; forecast: number }> {
    return Array.from({ length: this.buckets }, (_, b) => ({
      from: b / this.buckets,
      to: (b + 1) / this.buckets,
      n: this.#n[b]!,
      observed: this.#n[b]! > 0 ? this.#used[b]! / this.#n[b]! : NaN,
      forecast: this.#n[b]! > 0 ? this.#sum[b]! / this.#n[b]! : NaN,
    }));
  }
  reset(): void {
    this.#n.fill(0);
    this.#used.fill(0);
    this.#sum.fill(0);
    this.#dirty = true;
  }
}

/**
 * FineMoE's expert predictor over an ExpertMapStore; also a UsageForecast for probability-guided eviction.
 *
 * Forecasts (default, neighbour mode). A map's gate probability is not the probability that the expert is used
 * the next time its layer runs (a routed expert's gate is ~0.1-0.4, an unrouted one's is not 0, and one map is one
 * token), so forecasts average the routed sets (`store.members`) of the `neighbors` most similar maps:
 *  - request level (the next iteration): (this request's uses of the expert + a * prior) / (its iterations + a),
 *    prior = similarity-weighted routed-set average of the maps nearest to the request's embedding (semantic
 *    search), a = requestPriorWeight;
 *  - trajectory (a layer this iteration has not routed yet): the similarity-weighted routed-set average of the
 *    maps nearest to this iteration's gates so far (trajectory search), blended with the request-level estimate
 *    (weight priorWeight neighbours);
 *  - both are calibrated online (ReuseCalibrator): when a layer is routed, each of its experts' forecasts is
 *    recorded with whether the router picked it.
 * probability() gives the forecast for the layer's next run and laterProbability() the one for each run after
 * it, so ProbabilityPolicy's expected distance to the next use is d + (1 - p) * L / q.
 *
 * @example
 * const p = new FineMoePredictor(store, { topK: 8, prefetchDistance: 3 });
 * for (const pred of p.beginIteration(embedding)) prefetchAll(pred);      // layers 0..2 (semantic)
 * for (let l = 0; l < L; l++) {
 *   const gates = runGate(l);                                            // Float32Array(E)
 *   const pred = p.observeLayer(l, gates);                               // layer l + 3 (trajectory)
 *   if (pred) prefetchAll(pred);
 * }
 * p.endIteration();                                                      // records the map
 */
export class FineMoePredictor implements UsageForecast {
  readonly store: ExpertMapStore;
  readonly topK: number;
  readonly prefetchDistance: number;
  readonly record: boolean;
  readonly neighbors: number;
  readonly priorWeight: number;
  readonly trajectoryMode: 'lift' | 'average';
  readonly trajectoryHorizon: number;
  readonly semanticWeight: number;
  /** The request prior weight in use (fixed, or the current 'auto' choice). */
  get requestPriorWeight(): number {
    return this.#alpha;
  }
  readonly #autoAlpha: boolean;
  #alpha: number;
  readonly #alphaLoss: Float64Array;
  readonly calibrate: boolean;
  readonly minProbability: number;
  /**
   * Calibrate trajectory forecasts (layers this iteration has not routed yet), one per distance from the last
   * routed layer: [i] for distance i + 1, the last one for every distance from TRAJECTORY_CLASSES on.
   */
  readonly trajectoryCalibrators: ReuseCalibrator[] = Array.from({ length: TRAJECTORY_CLASSES }, () => new ReuseCalibrator());
  /** Calibrates request-level forecasts (a layer's run in the next iteration). */
  readonly requestCalibrator = new ReuseCalibrator();
  readonly #legacy: boolean;
  readonly #cur: Float32Array;
  readonly #curMem: Uint8Array;
  readonly #dots: Float64Array;
  readonly #semSims: Float64Array;
  #searchVersion = -1;
  #observed = 0;
  #curSq = 0;
  #embedding: Float32Array | undefined;
  #lastEmbedding: Float32Array | undefined;
  #matchIndex = -1;
  #matchSim = 0;
  #nextLayer = 0;
  /** Layers of this iteration routed so far (in order). */
  #routed = 0;
  #source: 'semantic' | 'trajectory' = 'semantic';
  /** Per-request mean gate vector over finished iterations (single-match mode's eviction forecast). */
  readonly #reqMean: Float32Array;
  /** [L * E] this request's uses per expert over its finished iterations. */
  readonly #reqCount: Float32Array;
  #reqIters = 0;
  /** [L * E] semantic neighbours' routed-set average (request prior). */
  readonly #prior: Float32Array;
  /** Trajectory neighbours: store indices and weights (similarities), #nbrCount valid. */
  readonly #nbr: Int32Array;
  readonly #nbrW: Float64Array;
  #nbrCount = 0;
  #nbrWSum = 0;
  /** [L * E] raw trajectory forecast per layer, valid while #qtStamp[layer] === #stamp. */
  readonly #qt: Float32Array;
  readonly #qtStamp: Int32Array;
  /** [classes, L, E] raw trajectory forecast of each layer made at distance class + 1, this iteration. */
  readonly #snap: Float32Array;
  readonly #snapIter: Int32Array;
  #iterId = 0;
  #stamp = 1;
  readonly #used: Uint8Array;
  readonly #probBuf: Float64Array;
  readonly #acc: Float64Array;

  constructor(store: ExpertMapStore, options: FineMoePredictorOptions) {
    if (!(store instanceof ExpertMapStore)) throw new InvalidArgumentError('store must be an ExpertMapStore');
    this.store = store;
    this.topK = checkInt('options.topK', options?.topK, 1, store.numExperts);
    this.prefetchDistance = checkInt('options.prefetchDistance', options.prefetchDistance, 1, store.numLayers);
    this.record = options.record ?? true;
    this.neighbors = checkInt('options.neighbors', options.neighbors ?? 64, 1, 4096);
    this.priorWeight = checkNumber('options.priorWeight', options.priorWeight ?? 1, 0);
    this.trajectoryMode = options.trajectoryMode ?? 'average';
    this.trajectoryHorizon = checkInt('options.trajectoryHorizon', options.trajectoryHorizon ?? 1, 0, store.numLayers);
    if (this.trajectoryMode !== 'lift' && this.trajectoryMode !== 'average') throw new InvalidArgumentError(`options.trajectoryMode must be 'lift' or 'average', received ${JSON.stringify(this.trajectoryMode)}`);
    this.semanticWeight = checkNumber('options.semanticWeight', options.semanticWeight ?? 0, 0, 1);
    const rpw = options.requestPriorWeight ?? 'auto';
    this.#autoAlpha = rpw === 'auto';
    this.#alpha = rpw === 'auto' ? REQUEST_PRIOR_WEIGHTS[REQUEST_PRIOR_WEIGHTS.length - 1]! : checkNumber('options.requestPriorWeight', rpw, 1e-6);
    this.#alphaLoss = new Float64Array(REQUEST_PRIOR_WEIGHTS.length);
    this.calibrate = options.calibrate ?? true;
    this.minProbability = checkNumber('options.minProbability', options.minProbability ?? 0.1, 0, 1);
    this.#legacy = this.neighbors === 1 && !this.calibrate;
    if (!this.#legacy && store.topK !== this.topK) store.setTopK(this.topK);
    const L = store.numLayers;
    const E = store.numExperts;
    this.#cur = new Float32Array(L * E);
    this.#curMem = new Uint8Array(L * E);
    this.#reqMean = new Float32Array(L * E);
    this.#reqCount = new Float32Array(L * E);
    this.#prior = new Float32Array(L * E).fill(this.topK / E);
    this.#dots = new Float64Array(store.capacity);
    this.#semSims = new Float64Array(store.capacity);
    this.#nbr = new Int32Array(this.neighbors);
    this.#nbrW = new Float64Array(this.neighbors);
    this.#qt = new Float32Array(L * E);
    this.#qtStamp = new Int32Array(L);
    this.#snap = new Float32Array(TRAJECTORY_CLASSES * L * E);
    this.#snapIter = new Int32Array(TRAJECTORY_CLASSES * L).fill(-1);
    this.#used = new Uint8Array(E);
    this.#probBuf = new Float64Array(E);
    this.#acc = new Float64Array(E);
  }

  /** Starts a new request (resets the per-request statistics). beginIteration does it when the embedding changes. */
  beginRequest(): void {
    this.#reqMean.fill(0);
    this.#reqCount.fill(0);
    this.#reqIters = 0;
    this.#lastEmbedding = undefined;
    this.#stamp++;
  }

  /** Starts an iteration; returns semantic predictions for layers [0, prefetchDistance). */
  beginIteration(embedding: Float32Array): LayerPrediction[] {
    checkF32('embedding', embedding, this.store.embedDim);
    const last = this.#lastEmbedding;
    if (last && last !== embedding && !sameValues(last, embedding)) this.beginRequest();
    this.#lastEmbedding = embedding;
    this.#embedding = embedding;
    this.#cur.fill(0);
    this.#curMem.fill(0);
    this.#dots.fill(0);
    this.#curSq = 0;
    this.#nextLayer = 0;
    this.#observed = 0;
    this.#routed = 0;
    this.#nbrCount = 0;
    this.#stamp++;
    this.#iterId++;
    const m = this.store.semanticSearch(embedding, this.#semSims);
    this.#searchVersion = this.store.version;
    this.#matchIndex = m.index;
    this.#matchSim = m.similarity;
    this.#source = 'semantic';
    if (!this.#legacy) this.#computePrior();
    return this.predictRange(0, this.prefetchDistance - 1);
  }

  /** Request prior: similarity-weighted routed-set average of the `neighbors` maps nearest by embedding. */
  #computePrior(): void {
    const s = this.store;
    const M = s.numLayers * s.numExperts;
    const n = s.size;
    if (n === 0) {
      this.#prior.fill(this.topK / s.numExperts);
      return;
    }
    const cnt = selectTop(this.#semSims, n, this.neighbors, this.#nbr, this.#nbrW);
    let wsum = 0;
    for (let i = 0; i < cnt; i++) wsum += Math.max(0, this.#nbrW[i]!);
    const pr = this.#prior;
    if (!(wsum > 0)) {
      // no stored map points the same way: every map counts the same
      pr.fill(0);
      for (let j = 0; j < n; j++) for (let x = 0, o = j * M; x < M; x++) pr[x]! += s.members[o + x]!;
      for (let x = 0; x < M; x++) pr[x]! /= n;
      return;
    }
    pr.fill(0);
    const k = this.topK;
    const L = s.numLayers;
    const E = s.numExperts;
    const ids = s.memberIds;
    for (let i = 0; i < cnt; i++) {
      const w = Math.max(0, this.#nbrW[i]!) / wsum;
      if (w === 0) continue;
      for (let l = 0, o = this.#nbr[i]! * L * k; l < L; l++) {
        for (let r = 0; r < k; r++, o++) {
          const e = ids[o]!;
          if (e < E) pr[l * E + e]! += w;
        }
      }
    }
  }

  /** 'auto' request prior weight: running (decayed) log-loss of each candidate on this layer's routing. */
  #scoreAlphas(base: number, E: number, used: Uint8Array): void {
    const loss = this.#alphaLoss;
    const n = this.#reqIters;
    let best = 0;
    for (let c = 0; c < REQUEST_PRIOR_WEIGHTS.length; c++) {
      const a = REQUEST_PRIOR_WEIGHTS[c]!;
      let l = 0;
      for (let e = 0; e < E; e++) {
        const q = Math.min(1 - 1e-4, Math.max(1e-4, (this.#reqCount[base + e]! + a * this.#prior[base + e]!) / (n + a)));
        l -= Math.log(used[e] ? q : 1 - q);
      }
      loss[c] = loss[c]! * 0.999 + l;
      if (loss[c]! < loss[best]!) best = c;
    }
    this.#alpha = REQUEST_PRIOR_WEIGHTS[best]!;
  }

  /** Raw request-level forecast for key i; `withCurrent` counts this iteration's routing of its layer. */
  #qn(i: number, withCurrent: boolean): number {
    const a = this.#alpha;
    const c = withCurrent ? 1 : 0;
    return (this.#reqCount[i]! + c * this.#curMem[i]! + a * this.#prior[i]!) / (this.#reqIters + c + a);
  }

  /** Raw trajectory forecasts of `layer` (E values at #qt[layer * E]), from the current neighbours. */
  #trajectory(layer: number): Float32Array {
    const s = this.store;
    const E = s.numExperts;
    const base = layer * E;
    if (this.#qtStamp[layer] !== this.#stamp) {
      const q = this.#qt;
      const b = this.priorWeight;
      const acc = this.#acc;
      acc.fill(0);
      const k = this.topK;
      const ids = s.memberIds;
      for (let i = 0; i < this.#nbrCount; i++) {
        const w = this.#nbrW[i]!;
        const o = (this.#nbr[i]! * s.numLayers + layer) * k;
        for (let r = 0; r < k; r++) {
          const e = ids[o + r]!;
          if (e < E) acc[e]! += w;
        }
      }
      const z = this.#nbrWSum + b;
      const sum = s.memberSum;
      const size = s.size;
      for (let e = 0; e < E; e++) {
        const qn = this.#qn(base + e, false);
        if (this.trajectoryMode === 'lift') {
          // naive Bayes: the request-level forecast times how much more (or less) often the trajectory's
          // neighbours routed to the expert than all stored maps did (smoothed towards no lift)
          const all = size > 0 ? (sum[base + e]! + 1) / (size + E / this.topK) : this.topK / E;
          const near = z > 0 ? (acc[e]! + b * all) / z : all;
          q[base + e] = Math.min(1, qn * (near / all));
        } else q[base + e] = z > 0 ? (acc[e]! + b * qn) / z : qn;
      }
      this.#qtStamp[layer] = this.#stamp;
    }
    return this.#qt.subarray(base, base + E);
  }

  /**
   * Predictions for layers first..last (clamped to the model). Neighbour mode: experts whose calibrated
   * probability of use is at least minProbability, most likely first. Single-match mode: the best match's experts
   * in probability order until the cumulative probability reaches 1 - similarity, at least top-k. Empty with an
   * empty store.
   */
  predictRange(first: number, last: number): LayerPrediction[] {
    const s = this.store;
    const out: LayerPrediction[] = [];
    if (this.#matchIndex < 0) return out;
    const E = s.numExperts;
    for (let l = Math.max(0, first); l <= Math.min(last, s.numLayers - 1); l++) {
      if (this.#legacy) {
        const thr = 1 - Math.max(0, Math.min(1, this.#matchSim));
        const off = (this.#matchIndex * s.numLayers + l) * E;
        const experts = selectByCumulative(s.maps, off, E, thr, this.topK);
        out.push({ layer: l, experts, probs: experts.map((e) => s.maps[off + e]!), similarity: this.#matchSim, source: this.#source });
      } else {
        const q = this.#probBuf;
        for (let e = 0; e < E; e++) q[e] = this.#forecast(l, e, s.numLayers);
        out.push({ ...this.#pick(q, E), layer: l, similarity: this.#matchSim, source: this.#source });
      }
    }
    return out;
  }

  /**
   * Neighbour mode: predictions for layers first..last of the NEXT iteration of this request (request-level
   * forecasts, counting this iteration's routing so far), for prefetching across the iteration boundary while the
   * last layers compute. Empty in single-match mode or without any information (empty store, first iteration).
   */
  predictNextIteration(first: number, last: number): LayerPrediction[] {
    const s = this.store;
    const out: LayerPrediction[] = [];
    if (this.#legacy || (s.size === 0 && this.#reqIters === 0 && this.#routed === 0)) return out;
    const E = s.numExperts;
    const q = this.#probBuf;
    for (let l = Math.max(0, first); l <= Math.min(last, s.numLayers - 1); l++) {
      for (let e = 0; e < E; e++) q[e] = this.laterProbability(l, e);
      out.push({ ...this.#pick(q, E), layer: l, similarity: this.#matchSim, source: 'semantic' });
    }
    return out;
  }

  #pick(q: Float64Array, E: number): { experts: number[]; probs: number[] } {
    const experts: number[] = [];
    for (let e = 0; e < E; e++) if (q[e]! >= this.minProbability) experts.push(e);
    experts.sort((a, b) => q[b]! - q[a]! || a - b);
    return { experts, probs: experts.map((e) => q[e]!) };
  }

  /**
   * Records the gate probabilities of a routed layer and returns the trajectory prediction for
   * layer + prefetchDistance (undefined past the last layer or with an empty store).
   */
  observeLayer(layer: number, gates: ArrayLike<number>): LayerPrediction | undefined {
    const s = this.store;
    const L = s.numLayers;
    const E = s.numExperts;
    checkInt('layer', layer, 0, L - 1);
    if (gates == null || gates.length !== E) throw new InvalidArgumentError(`gates must have ${E} elements, received ${gates == null ? String(gates) : `length ${gates.length}`}`);
    const base = layer * E;
    const used = this.#used;
    used.fill(0);
    markTopK(gates, 0, E, this.topK, used);
    if (!this.#legacy && this.calibrate) {
      // score the forecasts made for this layer (request level; trajectory at each distance) against what the
      // router picked
      for (let e = 0; e < E; e++) this.requestCalibrator.record(this.#qn(base + e, false), used[e] === 1);
      if (this.#autoAlpha && this.#reqIters > 0) this.#scoreAlphas(base, E, used);
      for (let c = 0; c < TRAJECTORY_CLASSES; c++) {
        if (this.#snapIter[c * L + layer] !== this.#iterId) continue;
        const cal = this.trajectoryCalibrators[c]!;
        const o = (c * L + layer) * E;
        for (let e = 0; e < E; e++) cal.record(this.#snap[o + e]!, used[e] === 1);
      }
    }
    const cur = this.#cur;
    for (let e = 0; e < E; e++) {
      const g = gates[e]!;
      cur[base + e] = g;
      this.#curSq += g * g;
      this.#curMem[base + e] = used[e]!;
    }

    this.#nextLayer = (layer + 1) % L;
    this.#routed = Math.max(this.#routed, layer + 1);
    const n = s.size;
    const maps = s.maps;
    const prefixSq = s.prefixSq;
    const dots = this.#dots;
    const M = L * E;
    let best = -1;
    let bestSim = -Infinity;
    const qn = Math.sqrt(this.#curSq) || 1;
    const curL = cur.subarray(base, base + E);
    const knn = !this.#legacy;
    const N = this.neighbors;
    const nbr = this.#nbr;
    const nbrW = this.#nbrW;
    const sw = this.semanticWeight;
    const sem = this.#semSims;
    const semOk = this.#searchVersion === s.version;
    let cnt = 0;
    for (let j = 0; j < n; j++) {
      // dot of this layer's gates with map j's, four accumulators (~1.5x faster than one in V8)
      const o = j * M + base;
      let d0 = 0;
      let d1 = 0;
      let d2 = 0;
      let d3 = 0;
      let e = 0;
      for (; e + 3 < E; e += 4) {
        d0 += maps[o + e]! * curL[e]!;
        d1 += maps[o + e + 1]! * curL[e + 1]!;
        d2 += maps[o + e + 2]! * curL[e + 2]!;
        d3 += maps[o + e + 3]! * curL[e + 3]!;
      }
      for (; e < E; e++) d0 += maps[o + e]! * curL[e]!;
      const dot = (dots[j]! += d0 + d1 + d2 + d3);
      const sim = dot / (qn * (Math.sqrt(prefixSq[j * L + layer]!) || 1));
      if (sim > bestSim) {
        bestSim = sim;
        best = j;
      }
      if (knn) cnt = insertTop(nbr, nbrW, cnt, N, j, semOk ? (1 - sw) * sim + sw * sem[j]! : sim);
    }
    this.#observed = layer === this.#observed ? layer + 1 : -1; // in-order, once each: dots are full-map dots
    if (knn) {
      let w = 0;
      for (let i = 0; i < cnt; i++) {
        nbrW[i] = Math.max(0, nbrW[i]!);
        w += nbrW[i]!;
      }
      this.#nbrCount = cnt;
      this.#nbrWSum = w;
    }
    this.#stamp++;
    if (knn && this.calibrate && cnt > 0) {
      // keep the forecasts made now for the next layers, to score them when those layers are routed
      const classes = Math.min(TRAJECTORY_CLASSES, Math.max(this.prefetchDistance, this.trajectoryHorizon));
      for (let c = 0; c < classes && layer + c + 1 < L; c++) {
        this.#snap.set(this.#trajectory(layer + c + 1), (c * L + layer + c + 1) * E);
        this.#snapIter[c * L + layer + c + 1] = this.#iterId;
      }
    }
    if (best >= 0) {
      this.#matchIndex = best;
      this.#matchSim = bestSim;
      this.#source = 'trajectory';
    }
    const target = layer + this.prefetchDistance;
    if (best < 0 || target >= L) return undefined;
    return this.predictRange(target, target)[0];
  }

  /** Ends the iteration: records its map (if `record`) and folds it into the per-request statistics. */
  endIteration(): void {
    if (this.#embedding && this.record) {
      // every layer observed in order since beginIteration and the store unchanged: the running trajectory dots
      // are the full-map dots and the semantic cosines are current, so the insert needs no pass over the maps
      const known = this.#observed === this.store.numLayers && this.#searchVersion === this.store.version ? { version: this.#searchVersion, embedding: this.#semSims, mapDot: this.#dots } : undefined;
      this.store.add(this.#embedding, this.#cur, known);
    }
    this.#reqIters++;
    const a = 1 / this.#reqIters;
    for (let i = 0; i < this.#reqMean.length; i++) {
      this.#reqMean[i]! += (this.#cur[i]! - this.#reqMean[i]!) * a;
      this.#reqCount[i]! += this.#curMem[i]!;
    }
    this.#curMem.fill(0);
    this.#nextLayer = 0;
    this.#routed = 0;
    this.#nbrCount = 0;
    this.#nbrWSum = 0;
    this.#stamp++;
  }

  nextLayer(): number {
    return this.#nextLayer;
  }

  /** Changes whenever forecasts may have changed (ProbabilityPolicy caches its scores per revision). */
  get revision(): number {
    return this.#stamp;
  }

  /**
   * Forecast for eviction: the probability that `expert` is used the next time `layer` runs. Neighbour mode: the
   * calibrated trajectory forecast for a layer this iteration has not routed yet (once a layer was routed), else
   * the calibrated request-level forecast. Single-match mode: the best match's gate probability, averaged with
   * this request's mean gate probability once it has finished an iteration.
   */
  probability(layer: number, expert: number): number {
    const s = this.store;
    const i = layer * s.numExperts + expert;
    if (this.#legacy) {
      const m = this.#matchIndex >= 0 ? s.maps[this.#matchIndex * s.numLayers * s.numExperts + i]! : 0;
      return this.#reqIters > 0 ? 0.5 * m + 0.5 * this.#reqMean[i]! : m;
    }
    return this.#forecast(layer, expert, this.trajectoryHorizon);
  }

  /** Calibrated forecast for the next run of `layer`; trajectory forecasts up to `horizon` layers ahead. */
  #forecast(layer: number, expert: number, horizon: number): number {
    const i = layer * this.store.numExperts + expert;
    if (layer < this.#routed) return this.#calRequest(this.#qn(i, true));
    if (this.#nbrCount > 0 && layer - this.#routed < horizon) {
      const q = this.#trajectory(layer)[expert]!;
      return this.calibrate ? this.trajectoryCalibrators[Math.min(TRAJECTORY_CLASSES, layer - this.#routed + 1) - 1]!.map(q) : q;
    }
    return this.#calRequest(this.#qn(i, false));
  }

  /** Forecast for each run of `layer` after its next one (request level; single-match mode: probability()). */
  laterProbability(layer: number, expert: number): number {
    if (this.#legacy) return this.probability(layer, expert);
    const i = layer * this.store.numExperts + expert;
    return this.#calRequest(this.#qn(i, layer < this.#routed));
  }

  #calRequest(q: number): number {
    return this.calibrate ? this.requestCalibrator.map(q) : Math.min(1, Math.max(1e-4, q));
  }

  /** Similarity of the current best match (semantic or trajectory). */
  get matchSimilarity(): number {
    return this.#matchSim;
  }
}

/** Candidates of the 'auto' request prior weight. */
const REQUEST_PRIOR_WEIGHTS = [1, 4, 16, 64, 256, 1024];

/** Trajectory forecasts are calibrated separately for distances 1 .. TRAJECTORY_CLASSES - 1 and the rest. */
const TRAJECTORY_CLASSES = 8;

function sameValues(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Keeps the `cap` largest values seen in idx/w[0..count) (descending); returns the new count. O(cap) per insert,
 * and most values are rejected by one comparison.
 */
function insertTop(idx: Int32Array, w: Float64Array, count: number, cap: number, j: number, v: number): number {
  if (count === cap && !(v > w[cap - 1]!)) return count;
  let i = count < cap ? count++ : cap - 1;
  while (i > 0 && w[i - 1]! < v) {
    w[i] = w[i - 1]!;
    idx[i] = idx[i - 1]!;
    i--;
  }
  w[i] = v;
  idx[i] = j;
  return count;
}

/** Top `cap` of values[0..n) into idx/w (descending); returns how many. */
function selectTop(values: Float64Array, n: number, cap: number, idx: Int32Array, w: Float64Array): number {
  let count = 0;
  for (let j = 0; j < n; j++) count = insertTop(idx, w, count, cap, j, values[j]!);
  return count;
}
