/**
 * Next-token choice from one row of logits: greedy (temperature 0: the highest logit, ties to the lower id, so
 * greedy decoding is exact and deterministic) or sampling with temperature, top-k and top-p (nucleus) filtering,
 * applied in that order like HF's logits warpers, from a seeded PRNG (same seed, same tokens).
 */
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

export class Sampler {
  readonly options: ResolvedSampling;
  readonly #rng: Rng;
  constructor(o: SamplingOptions) {
    this.options = resolveSampling(o);
    this.#rng = new Rng(this.options.seed);
  }

  /** The next token from logits[off .. off + n). */
  sample(logits: ArrayLike<number>, off: number, n: number): number {
    const { temperature, topK, topP } = this.options;
    if (temperature === 0) return argmax(logits, off, n);
    // candidates in descending logit order (ties: lower id first), cut by top-k
    const idx = Array.from({ length: n }, (_, i) => i);
    idx.sort((a, b) => logits[off + b]! - logits[off + a]! || a - b);
    const keep = topK > 0 ? Math.min(topK, n) : n;
    const m = logits[off + idx[0]!]!;
    const p = new Float64Array(keep);
    let sum = 0;
    for (let i = 0; i < keep; i++) sum += p[i] = Math.exp((logits[off + idx[i]!]! - m) / temperature);
    // top-p: smallest prefix whose mass reaches topP
    let cut = keep;
    if (topP < 1) {
      let c = 0;
      for (let i = 0; i < keep; i++) {
        c += p[i]! / sum;
        if (c >= topP) {
          cut = i + 1;
          break;
        }
      }
    }
    let mass = 0;
    for (let i = 0; i < cut; i++) mass += p[i]!;
    let r = this.#rng.next() * mass;
    for (let i = 0; i < cut; i++) {
      r -= p[i]!;
      if (r < 0) return idx[i]!;
    }
    return idx[cut - 1]!;
  }
}
