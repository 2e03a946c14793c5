/**
 * Next-token choice from one row of logits: greedy (temperature 0: the highest logit, ties to the lower id, so
 * greedy decoding is exact and deterministic) or sampling with temperature, top-k and top-p (nucleus) filtering,
 * applied in that order like HF's logits warpers, from a seeded PRNG (same seed, same tokens).
 * Sampling never sorts the vocabulary: top-k keeps the k highest logits with a size-k heap (O(V log k)); top-p pops
 * candidates in descending order from a heap built in O(V) until their mass reaches topP; with neither, the draw walks
 * the vocabulary in id order. A full sort per token (the first version) took 12 ms per row of 32,000 logits on the
 * development VM: 3 s per decode step at batch 256. */
import { Rng } from '../cache/types.js';
import { describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';

export interface SamplingOptions {
  /** 0 (default): greedy. */
  temperature?: number;
  /** Keep the k most likely tokens (0 or undefined: all). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches topP (1 or undefined: all). */
  topP?: number;
  /** PRNG seed (default: random). */
  seed?: number;
}

export interface ResolvedSampling {
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
}

export function resolveSampling(o: SamplingOptions): ResolvedSampling {
  const temperature = o.temperature ?? 0;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) {
    throw new InvalidArgumentError(`temperature must be a finite number >= 0, received ${describe(o.temperature)}`);
  }
  const topK = o.topK ?? 0;
  if (!Number.isSafeInteger(topK) || topK < 0) throw new InvalidArgumentError(`topK must be a non-negative integer (0: no limit), received ${describe(o.topK)}`);
  const topP = o.topP ?? 1;
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw new InvalidArgumentError(`topP must be a number in (0, 1], received ${describe(o.topP)}`);
  const seed = o.seed ?? Math.floor(Math.random() * 2 ** 32);
  if (!Number.isSafeInteger(seed)) throw new InvalidArgumentError(`seed must be an integer, received ${describe(o.seed)}`);
  return { temperature, topK, topP, seed };
}

/** Index of the largest value (ties: the lowest index). */
export function argmax(x: ArrayLike<number>, off = 0, n = x.length - off): number {
  let best = 0;
  let bv = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = x[off + i]!;
    if (v > bv) {
      bv = v;
      best = i;
    }
  }
  return best;
}

/** Whether candidate a ranks above b: higher logit, ties to the lower id (NaN logits rank below everything). */
function above(l: ArrayLike<number>, off: number, a: number, b: number): boolean {
  const x = l[off + a]!;
  const y = l[off + b]!;
  if (x !== y) return x > y || (y !== y && x === x);
  return a < b;
}

/** Restores the heap property below position i of h[0 .. n): parent ranks above children when `max`, else below. */
function siftDown(h: Int32Array, n: number, i: number, l: ArrayLike<number>, off: number, max: boolean): void {
  const v = h[i]!;
  for (;;) {
    let c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && above(l, off, h[c + 1]!, h[c]!) === max) c++;
    if (above(l, off, h[c]!, v) !== max) break;
    h[i] = h[c]!;
    i = c;
  }
  h[i] = v;
}

/** The k highest-ranked ids of logits[off .. off + n), best first (a min-heap of size k over one pass). */
export function topKIds(l: ArrayLike<number>, off: number, n: number, k: number): Int32Array {
  const h = new Int32Array(k);
  for (let i = 0; i < k; i++) h[i] = i;
  for (let i = (k >> 1) - 1; i >= 0; i--) siftDown(h, k, i, l, off, false);
  for (let i = k; i < n; i++) {
    if (!above(l, off, i, h[0]!)) continue;
    h[0] = i;
    siftDown(h, k, 0, l, off, false);
  }
  // pop the worst to the end: best first
  for (let end = k - 1; end > 0; end--) {
    const t = h[0]!;
    h[0] = h[end]!;
    h[end] = t;
    siftDown(h, end, 0, l, off, false);
  }
  return h;
}

export class Sampler {
  readonly options: ResolvedSampling;
  readonly #rng: Rng;
  constructor(o: SamplingOptions) {
    this.options = resolveSampling(o);
    this.#rng = new Rng(this.options.seed);
  }

  /**
   * The next token from logits[off .. off + n). Weights exp((logit - max) / temperature) in float64; the candidates
   * are the top-k (best first) or, without top-k, the whole row in id order; top-p keeps the smallest best-first
   * prefix whose weight reaches topP of the candidates' total; the draw walks the kept candidates in that order.
   */
  sample(logits: ArrayLike<number>, off: number, n: number): number {
    const { temperature, topK, topP } = this.options;
    if (temperature === 0) return argmax(logits, off, n);
    const best = argmax(logits, off, n);
    const m = logits[off + best]!;
    if (!(m > -Infinity) || m !== m) return best; // no finite logit: nothing to weigh
    const w = (id: number): number => {
      const v = logits[off + id]!;
      return v === v ? Math.exp((v - m) / temperature) : 0;
    };
    const r = this.#rng.next();
    if (topK > 0 && topK < n) {
      const ids = topKIds(logits, off, n, topK);
      const p = new Float64Array(topK);
      let sum = 0;
      for (let i = 0; i < topK; i++) sum += p[i] = w(ids[i]!);
      return this.#draw(r, ids, p, nucleus(p, topK, sum, topP));
    }
    // the whole row: weights once, in float64
    const wt = new Float64Array(n);
    let total = 0;
    for (let i = 0; i < n; i++) total += wt[i] = w(i);
    if (topP < 1) return this.#nucleusDraw(r, logits, off, n, wt, total, m, temperature, topP);
    let x = r * total;
    let last = best;
    for (let i = 0; i < n; i++) {
      const pi = wt[i]!;
      if (pi === 0) continue;
      last = i;
      x -= pi;
      if (x < 0) return i;
    }
    return last;
  }

  /**
   * Top-p over the whole row: candidates popped best first from a max-heap until their weight reaches topP of
   * `total`, then the draw. The heap starts with the ids whose weight is within the 2^-(B+2) band of the maximum,
   * B the first power-of-two band at which the bands' mass reaches topP (every id outside ranks below every id in
   * it); should rounding leave the pops short of topP there, the remaining ids join the heap and popping goes on.
   */
  #nucleusDraw(r: number, logits: ArrayLike<number>, off: number, n: number, wt: Float64Array, total: number, m: number, temperature: number, topP: number): number {
    const bandOf = (i: number): number => {
      const v = logits[off + i]!;
      return v === v ? Math.min(63, Math.floor(((m - v) / temperature) * Math.LOG2E)) : 63;
    };
    const bandMass = new Float64Array(64);
    for (let i = 0; i < n; i++) bandMass[bandOf(i)]! += wt[i]!;
    let band = 0;
    for (let c = bandMass[0]!; band < 63 && c < topP * total; ) c += bandMass[++band]!;
    const cut = Math.min(63, band + 1);
    const h = new Int32Array(n);
    let size = 0;
    for (let i = 0; i < n; i++) if (bandOf(i) <= cut) h[size++] = i;
    let widened = cut >= 63; // band 63 holds every other id: all are in
    for (let i = (size >> 1) - 1; i >= 0; i--) siftDown(h, size, i, logits, off, true);
    const ids: number[] = [];
    const p: number[] = [];
    let c = 0;
    for (;;) {
      if (size === 0) {
        if (widened) break;
        // rounding left the pops short of topP: every other id joins
        widened = true;
        for (let i = 0; i < n; i++) if (bandOf(i) > cut) h[size++] = i;
        for (let i = (size >> 1) - 1; i >= 0; i--) siftDown(h, size, i, logits, off, true);
        if (size === 0) break;
      }
      const id = h[0]!;
      ids.push(id);
      p.push(wt[id]!);
      c += wt[id]!;
      if (c / total >= topP) break;
      h[0] = h[--size]!;
      siftDown(h, size, 0, logits, off, true);
    }
    return this.#draw(r, ids, p, ids.length);
  }

  /** The kept candidate at which `r` times their total mass falls (the last one if rounding runs past the end). */
  #draw(r: number, ids: ArrayLike<number>, p: ArrayLike<number>, keep: number): number {
    let mass = 0;
    for (let i = 0; i < keep; i++) mass += p[i]!;
    let x = r * mass;
    for (let i = 0; i < keep; i++) {
      x -= p[i]!;
      if (x < 0) return ids[i]!;
    }
    return ids[keep - 1]!;
  }
}

/** Top-p over best-first weights p[0 .. n) summing to `sum`: the smallest prefix whose mass reaches topP (all if 1). */
function nucleus(p: ArrayLike<number>, n: number, sum: number, topP: number): number {
  if (topP >= 1) return n;
  let c = 0;
  for (let i = 0; i < n; i++) {
    c += p[i]! / sum;
    if (c >= topP) return i + 1;
  }
  return n;
}
