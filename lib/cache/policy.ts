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
}

/**
 * FineMoE-style probability-guided eviction. For each candidate it estimates the expected distance, in layer
 * steps, to its next use: the layers until its layer runs again, plus a full pass of `numLayers` for every
 * expected miss (a geometric number of passes with success probability p): `d + numLayers * (1 - p) / p`. It
 * evicts the largest (Belady's rule applied to predicted instead of known futures); ties go to the LRU one.
 *
 * @example
 * const policy = new ProbabilityPolicy(16, 64, predictor); // predictor implements UsageForecast
 */
export class ProbabilityPolicy extends TickPolicy {
  readonly name: string;
  readonly numLayers: number;
  readonly numExperts: number;
  readonly forecast: UsageForecast;
  constructor(numLayers: number, numExperts: number, forecast: UsageForecast, name = 'probability') {
    super(checkInt('numLayers', numLayers, 1) * checkInt('numExperts', numExperts, 1));
    if (!forecast || typeof forecast.probability !== 'function' || typeof forecast.nextLayer !== 'function') {
      throw new InvalidArgumentError('forecast must implement UsageForecast { nextLayer(), probability(layer, expert) }');
    }
    this.numLayers = numLayers;
    this.numExperts = numExperts;
    this.forecast = forecast;
    this.name = name;
  }
  /** Expected layer steps until `key` is next used (larger = better victim). */
  expectedNextUse(key: number): number {
    const L = this.numLayers;
    const layer = Math.floor(key / this.numExperts);
    const d = (layer - this.forecast.nextLayer() + L) % L;
    const p = Math.min(1, Math.max(1e-4, this.forecast.probability(layer, key - layer * this.numExperts)));
    return d + (L * (1 - p)) / p;
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
