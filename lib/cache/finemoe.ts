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
 */
import { InvalidArgumentError } from '../errors.js';
import type { UsageForecast } from './policy.js';
import { checkF32, checkInt } from './types.js';

/** Options of {@link ExpertMapStore}. */
export interface ExpertMapStoreOptions {
  numLayers: number;
  numExperts: number;
  embedDim: number;
  /** Maximum number of maps kept. */
  capacity: number;
  /** Prefetch distance used to weight the replacement score (w = distance / layers). Default 1. */
  prefetchDistance?: number;
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
  }

  get size(): number {
    return this.#size;
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
  /** The matched map's gate probability of each expert (same order). */
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
}

/**
 * FineMoE's expert predictor over an ExpertMapStore; also a UsageForecast for probability-guided eviction.
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
  readonly #cur: Float32Array;
  readonly #dots: Float64Array;
  readonly #semSims: Float64Array;
  #searchVersion = -1;
  #observed = 0;
  #curSq = 0;
  #embedding: Float32Array | undefined;
  #matchIndex = -1;
  #matchSim = 0;
  #nextLayer = 0;
  /** Per-request mean gate vector over finished iterations (for eviction forecasts). */
  readonly #reqMean: Float32Array;
  #reqIters = 0;

  constructor(store: ExpertMapStore, options: FineMoePredictorOptions) {
    if (!(store instanceof ExpertMapStore)) throw new InvalidArgumentError('store must be an ExpertMapStore');
    this.store = store;
    this.topK = checkInt('options.topK', options?.topK, 1, store.numExperts);
    this.prefetchDistance = checkInt('options.prefetchDistance', options.prefetchDistance, 1, store.numLayers);
    this.record = options.record ?? true;
    this.#cur = new Float32Array(store.numLayers * store.numExperts);
    this.#reqMean = new Float32Array(store.numLayers * store.numExperts);
    this.#dots = new Float64Array(store.capacity);
    this.#semSims = new Float64Array(store.capacity);
  }

  /** Starts a new request (resets the per-request mean). */
  beginRequest(): void {
    this.#reqMean.fill(0);
    this.#reqIters = 0;
  }

  /** Starts an iteration; returns semantic predictions for layers [0, prefetchDistance). */
  beginIteration(embedding: Float32Array): LayerPrediction[] {
    checkF32('embedding', embedding, this.store.embedDim);
    this.#embedding = embedding;
    this.#cur.fill(0);
    this.#dots.fill(0);
    this.#curSq = 0;
    this.#nextLayer = 0;
    this.#observed = 0;
    const m = this.store.semanticSearch(embedding, this.#semSims);
    this.#searchVersion = this.store.version;
    this.#matchIndex = m.index;
    this.#matchSim = m.similarity;
    this.#source = 'semantic';
    return this.predictRange(0, this.prefetchDistance - 1);
  }

  #source: 'semantic' | 'trajectory' = 'semantic';

  /**
   * Predictions for layers first..last (clamped to the model) from the current best match (semantic before the
   * first routed layer, trajectory after): experts in probability order until the cumulative probability reaches
   * 1 - similarity, at least top-k. Empty with an empty store.
   */
  predictRange(first: number, last: number): LayerPrediction[] {
    const s = this.store;
    const out: LayerPrediction[] = [];
    if (this.#matchIndex < 0) return out;
    const E = s.numExperts;
    const thr = 1 - Math.max(0, Math.min(1, this.#matchSim));
    for (let l = Math.max(0, first); l <= Math.min(last, s.numLayers - 1); l++) {
      const off = (this.#matchIndex * s.numLayers + l) * E;
      const experts = selectByCumulative(s.maps, off, E, thr, this.topK);
      out.push({ layer: l, experts, probs: experts.map((e) => s.maps[off + e]!), similarity: this.#matchSim, source: this.#source });
    }
    return out;
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
    for (let e = 0; e < E; e++) {
      const g = gates[e]!;
      this.#cur[base + e] = g;
      this.#curSq += g * g;
    }

    this.#nextLayer = (layer + 1) % L;
    const n = s.size;
    const maps = s.maps;
    const M = L * E;
    let best = -1;
    let bestSim = -Infinity;
    const qn = Math.sqrt(this.#curSq) || 1;
    for (let j = 0; j < n; j++) {
      let d = 0;
      const o = j * M + base;
      for (let e = 0; e < E; e++) d += maps[o + e]! * this.#cur[base + e]!;
      const dot = (this.#dots[j]! += d);
      const sim = dot / (qn * (Math.sqrt(s.prefixSq[j * L + layer]!) || 1));
      if (sim > bestSim) {
        bestSim = sim;
        best = j;
      }
    }
    this.#observed = layer === this.#observed ? layer + 1 : -1; // in-order, once each: dots are full-map dots
    if (best >= 0) {
      this.#matchIndex = best;
      this.#matchSim = bestSim;
      this.#source = 'trajectory';
    }
    const target = layer + this.prefetchDistance;
    if (best < 0 || target >= L) return undefined;
    return this.predictRange(target, target)[0];
  }

  /** Ends the iteration: records its map (if `record`) and folds it into the per-request mean. */
  endIteration(): void {
    if (this.#embedding && this.record) {
      // every layer observed in order since beginIteration and the store unchanged: the running trajectory dots
      // are the full-map dots and the semantic cosines are current, so the insert needs no pass over the maps
      const known = this.#observed === this.store.numLayers && this.#searchVersion === this.store.version ? { version: this.#searchVersion, embedding: this.#semSims, mapDot: this.#dots } : undefined;
      this.store.add(this.#embedding, this.#cur, known);
    }
    this.#reqIters++;
    const a = 1 / this.#reqIters;
    for (let i = 0; i < this.#reqMean.length; i++) this.#reqMean[i]! += (this.#cur[i]! - this.#reqMean[i]!) * a;
    this.#nextLayer = 0;
  }

  nextLayer(): number {
    return this.#nextLayer;
  }

  /**
   * Forecast for eviction: the current best match's probability, averaged with this request's mean gate
   * probability once it has finished an iteration.
   */
  probability(layer: number, expert: number): number {
    const s = this.store;
    const i = layer * s.numExperts + expert;
    const m = this.#matchIndex >= 0 ? s.maps[this.#matchIndex * s.numLayers * s.numExperts + i]! : 0;
    return this.#reqIters > 0 ? 0.5 * m + 0.5 * this.#reqMean[i]! : m;
  }

  /** Similarity of the current best match (semantic or trajectory). */
  get matchSimilarity(): number {
    return this.#matchSim;
  }
}
