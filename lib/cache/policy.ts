/**
 * Eviction policies behind one interface, shared by the live ExpertCache and the trace simulator, so the policy
 * that is evaluated is the policy that ships. Keys are dense expert keys (see expertKey); per-key state lives in
 * typed arrays sized numLayers * numExperts. The cache calls chooseVictim with the evictable keys only (never a
 * pinned or loading expert), so a policy cannot break residency rules.
 */
import { InvalidArgumentError } from '../errors.js';
import { checkInt } from './types.js';

/** Chooses which resident, unpinned expert to evict. */
export interface EvictionPolicy {
  readonly name: string;
  /** The expert became resident (its weights arrived). */
  onInsert(key: number): void;
  /** A kernel used the expert (hit or after a miss). */
  onAccess(key: number): void;
  /** The expert left the cache. */
  onRemove(key: number): void;
  /** Index into `candidates[0..count)` of the victim; candidates are evictable keys; count >= 1. */
  chooseVictim(candidates: ArrayLike<number>, count: number): number;
  /**
   * Optional prefetch admission: may a prefetch of `key`, predicted to be used with probability `probability`,
   * evict `victim`? Without it every prefetch may evict.
   */
  admitPrefetch?(key: number, probability: number, victim: number): boolean;
}

abstract class TickPolicy implements EvictionPolicy {
  abstract readonly name: string;
  protected readonly lastUse: Float64Array;
  protected tick = 0;
  constructor(numKeys: number) {
    checkInt('numKeys', numKeys, 1);
    this.lastUse = new Float64Array(numKeys);
  }
  onInsert(key: number): void {
    this.lastUse[key] = ++this.tick;
  }
  onAccess(key: number): void {
    this.lastUse[key] = ++this.tick;
  }
  onRemove(_key: number): void {}
  abstract chooseVictim(candidates: ArrayLike<number>, count: number): number;
}

/**
 * Least recently used (insertion counts as a use).
 *
 * @example
 * const lru = new LruPolicy(32 * 8);
 */
export class LruPolicy extends TickPolicy {
  readonly name = 'lru';
  chooseVictim(c: ArrayLike<number>, n: number): number {
    let best = 0;
    let bestT = Infinity;
    for (let i = 0; i < n; i++) {
      const t = this.lastUse[c[i]!]!;
      if (t < bestT) {
        bestT = t;
        best = i;
      }
    }
    return best;
  }
}

/**
 * Least frequently used, counting every use since the policy was created (frequency survives eviction, which is
 * what an expert cache wants: popularity is a property of the expert, not of its stay); ties go to the LRU one.
 *
 * @example
 * const lfu = new LfuPolicy(16 * 64);
 */
export class LfuPolicy extends TickPolicy {
  readonly name = 'lfu';
  readonly #count: Float64Array;
  constructor(numKeys: number) {
    super(numKeys);
    this.#count = new Float64Array(numKeys);
  }
  override onAccess(key: number): void {
    super.onAccess(key);
    this.#count[key]! += 1;
  }
  chooseVictim(c: ArrayLike<number>, n: number): number {
    let best = 0;
    let bestF = Infinity;
    let bestT = Infinity;
    for (let i = 0; i < n; i++) {
      const k = c[i]!;
      const f = this.#count[k]!;
      const t = this.lastUse[k]!;
      if (f < bestF || (f === bestF && t < bestT)) {
        bestF = f;
        bestT = t;
        best = i;
      }
    }
    return best;
  }
}

/** What the probability-guided policy needs from a predictor. */
export interface UsageForecast {
  /** Layer that runs next (0..numLayers-1). */
  nextLayer(): number;
  /** Predicted probability that `expert` is used the next time `layer` runs. */
  probability(layer: number, expert: number): number;
  /**
   * Optional: predicted probability that `expert` is used at each run of `layer` after the next one (when the
   * forecast for the next run is sharper than the long-run one, e.g. informed by this iteration's routing).
   * Without it, probability() is used for every run.
   */
  laterProbability?(layer: number, expert: number): number;
  /**
   * Optional: a number that changes whenever any forecast may have changed; while it stays the same,
   * ProbabilityPolicy reuses the scores it computed (the forecasts are then assumed unchanged).
   */
  readonly revision?: number;
}

/**
 * FineMoE-style probability-guided eviction. For each candidate it estimates the expected distance, in layer
 * steps, to its next use: the d layers until its layer runs again, then, if the expert is not used there
 * (probability 1 - p), a geometric number of full passes of `numLayers` with success probability q per pass:
 * `d + (1 - p) * numLayers / q` (p = probability(), q = laterProbability() or p, which gives
 * `d + numLayers * (1 - p) / p`). It evicts the largest (Belady's rule applied to predicted instead of known
 * futures); ties go to the LRU one. The forecasts should be calibrated usage probabilities (FineMoePredictor's
 * are); a gate probability is not one.
 *
 * @example
 * const policy = new ProbabilityPolicy(16, 64, predictor); // predictor implements UsageForecast
 */
export class ProbabilityPolicy extends TickPolicy {
  readonly name: string;
  readonly numLayers: number;
  readonly numExperts: number;
  readonly forecast: UsageForecast;
  readonly #score: Float64Array;
  readonly #scoreRev: Float64Array;
  constructor(numLayers: number, numExperts: number, forecast: UsageForecast, name = 'probability') {
    super(checkInt('numLayers', numLayers, 1) * checkInt('numExperts', numExperts, 1));
    if (!forecast || typeof forecast.probability !== 'function' || typeof forecast.nextLayer !== 'function') {
      throw new InvalidArgumentError('forecast must implement UsageForecast { nextLayer(), probability(layer, expert) }');
    }
    this.numLayers = numLayers;
    this.numExperts = numExperts;
    this.forecast = forecast;
    this.name = name;
    this.#score = new Float64Array(numLayers * numExperts);
    this.#scoreRev = new Float64Array(numLayers * numExperts).fill(NaN);
  }
  /** Expected layer steps until `key` is next used (larger = better victim). */
  expectedNextUse(key: number): number {
    const rev = this.forecast.revision;
    if (rev !== undefined && this.#scoreRev[key] === rev) return this.#score[key]!;
    const v = this.#expectedNextUse(key);
    if (rev !== undefined) {
      this.#score[key] = v;
      this.#scoreRev[key] = rev;
    }
    return v;
  }

  #expectedNextUse(key: number): number {
    const L = this.numLayers;
    const layer = Math.floor(key / this.numExperts);
    const d = (layer - this.forecast.nextLayer() + L) % L;
    return this.expectedUseAt(key, d, this.forecast.probability(layer, key - layer * this.numExperts));
  }

  /**
   * Expected layer steps until `key` is next used if it is used `distance` steps from now with probability `p`
   * (and at each later run of its layer with the forecast's laterProbability): `distance + (1 - p) * L / q`.
   * Used to compare a prefetch candidate with an eviction victim on the same scale.
   */
  expectedUseAt(key: number, distance: number, p: number): number {
    const L = this.numLayers;
    const pp = Math.min(1, Math.max(1e-4, p));
    if (!this.forecast.laterProbability) return distance + (L * (1 - pp)) / pp;
    const layer = Math.floor(key / this.numExperts);
    const q = Math.min(1, Math.max(1e-4, this.forecast.laterProbability(layer, key - layer * this.numExperts)));
    return distance + ((1 - pp) * L) / q;
  }
  /**
   * A prefetch may only evict an expert expected to be needed later than the prefetched one:
   * expectedUseAt(key, layers until its layer runs, probability) < expectedNextUse(victim).
   */
  admitPrefetch(key: number, probability: number, victim: number): boolean {
    const L = this.numLayers;
    const layer = Math.floor(key / this.numExperts);
    const d = (layer - this.forecast.nextLayer() + L) % L;
    return this.expectedUseAt(key, d, probability) < this.expectedNextUse(victim);
  }

  chooseVictim(c: ArrayLike<number>, n: number): number {
    let best = 0;
    let bestD = -Infinity;
    let bestT = Infinity;
    for (let i = 0; i < n; i++) {
      const k = c[i]!;
      const d = this.expectedNextUse(k);
      const t = this.lastUse[k]!;
      if (d > bestD || (d === bestD && t < bestT)) {
        bestD = d;
        bestT = t;
        best = i;
      }
    }
    return best;
  }
}

/**
 * Belady's optimal eviction (simulation only): evicts the expert whose next use is furthest away, given a
 * function that knows the future. With demand fetching only, no policy achieves more hits.
 */
export class BeladyPolicy extends TickPolicy {
  readonly name = 'belady';
  readonly #nextUse: (key: number) => number;
  constructor(numKeys: number, nextUse: (key: number) => number) {
    super(numKeys);
    this.#nextUse = nextUse;
  }
  chooseVictim(c: ArrayLike<number>, n: number): number {
    let best = 0;
    let bestU = -Infinity;
    for (let i = 0; i < n; i++) {
      const u = this.#nextUse(c[i]!);
      if (u > bestU) {
        bestU = u;
        best = i;
      }
    }
    return best;
  }
}
