/**
 * Shared vocabulary of the expert cache: expert keys, the narrow slot-pool / transfer-engine / clock interfaces the
 * cache needs from the weight-residency layer (implemented for real by that layer later; tests use fakes), and
 * argument checks that throw typed errors naming the argument, the expectation and what was received.
 */
import { InvalidArgumentError } from '../errors.js';

/** Dense integer key of expert `expert` in MoE layer `layer`: `layer * numExperts + expert`. */
export function expertKey(layer: number, expert: number, numExperts: number): number {
  return layer * numExperts + expert;
}

/**
 * A fixed set of GPU expert slots (each large enough for one expert's weights). The cache owns which expert lives
 * in which slot; the pool only hands out free slot indices.
 */
export interface SlotPool {
  /** Number of slots; the cache never holds more experts than this. */
  readonly size: number;
  /** A free slot index in [0, size), or undefined when every slot is taken. */
  alloc(): number | undefined;
  /** Returns a slot obtained from alloc(). */
  free(slot: number): void;
}

/** One host-to-device copy of an expert's weights into a slot. */
export interface FetchRequest {
  readonly layer: number;
  readonly expert: number;
  readonly slot: number;
  readonly bytes: number;
  /** 'demand': a kernel waits for it; 'prefetch': speculative. Engines may use it to order their own queues. */
  readonly priority: 'demand' | 'prefetch';
  /** Aborted when the cache cancels the prefetch; the promise should then reject (any error). */
  readonly signal: AbortSignal;
}

/** Moves expert weights from pinned host memory into a slot. The real one is the weight-residency transfer engine. */
export interface TransferEngine {
  /** Resolves once the weights are in the slot and visible to kernels. */
  fetch(request: FetchRequest): Promise<void>;
  /** Optional: a kernel now waits for the prefetch filling `slot`; move its remaining copies to demand priority. */
  promote?(slot: number): void;
}

/** Milliseconds, monotonic. Injected so tests can run on a simulated clock. */
export interface Clock {
  now(): number;
}

/** performance.now() as a Clock. */
export const systemClock: Clock = { now: () => performance.now() };

/**
 * The simplest SlotPool: `size` slots handed out lowest-index first, with double-free detection.
 *
 * @example
 * const pool = new ArraySlotPool(4);
 * const s = pool.alloc(); // 0
 * pool.free(s!);
 */
export class ArraySlotPool implements SlotPool {
  readonly size: number;
  readonly #free: number[];
  readonly #used: Uint8Array;
  constructor(size: number) {
    checkInt('size', size, 1);
    this.size = size;
    this.#free = [];
    for (let i = size - 1; i >= 0; i--) this.#free.push(i);
    this.#used = new Uint8Array(size);
  }
  /** Slots currently handed out. */
  get used(): number {
    return this.size - this.#free.length;
  }
  alloc(): number | undefined {
    const s = this.#free.pop();
    if (s !== undefined) this.#used[s] = 1;
    return s;
  }
  free(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.size || this.#used[slot] !== 1) {
      throw new InvalidArgumentError(`slot must be a slot index currently allocated from this pool (0..${this.size - 1}), received ${String(slot)}`);
    }
    this.#used[slot] = 0;
    this.#free.push(slot);
  }
}

function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  return typeof v === 'object' ? (v.constructor?.name ?? 'object') : typeof v;
}

/** Throws InvalidArgumentError unless `value` is an integer in [min, max]. */
export function checkInt(name: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new InvalidArgumentError(`${name} must be an integer ${range}, received ${show(value)}`);
  }
  return value;
}

/** Throws InvalidArgumentError unless `value` is a finite number in [min, max]. */
export function checkNumber(name: string, value: unknown, min: number, max = Infinity): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${name} must be a finite number in [${min}, ${max}], received ${show(value)}`);
  }
  return value;
}

/** Throws InvalidArgumentError unless `value` is a Float32Array of exactly `length` elements. */
export function checkF32(name: string, value: unknown, length: number): Float32Array {
  if (!(value instanceof Float32Array) || value.length !== length) {
    const got = value instanceof Float32Array ? `a Float32Array of length ${value.length}` : show(value);
    throw new InvalidArgumentError(`${name} must be a Float32Array of length ${length}, received ${got}`);
  }
  return value;
}

/** Deterministic PRNG (mulberry32) so traces, tests and benches are reproducible from a seed. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 0x9e3779b9;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  /** Index drawn from unnormalised non-negative weights `w[off .. off+n)`; -1 if they sum to 0. */
  pick(w: ArrayLike<number>, off = 0, n = w.length - off): number {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += w[off + i]!;
    if (!(sum > 0)) return -1;
    let r = this.next() * sum;
    for (let i = 0; i < n; i++) {
      r -= w[off + i]!;
      if (r < 0) return i;
    }
    for (let i = n - 1; i >= 0; i--) if (w[off + i]! > 0) return i;
    return -1;
  }
}
