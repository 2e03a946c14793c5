/**
 * ExpertCache: which experts live in which GPU slots. Kernels `acquire` an expert (a demand fetch on a miss) and
 * get a lease that pins the slot until `release()`: a pinned or still-loading expert is never evicted (the bug
 * class vLLM PR #37190 fixed). Demand fetches go to the transfer engine at once (the residency engine serves them
 * ahead of queued prefetch chunks, so a demand never waits for a whole prefetch); prefetches go to it at most
 * `maxInFlight` at a time, highest priority first, so the engine never holds a backlog of speculative copies. A
 * demand upgrades a queued prefetch of the same expert, and prefetches can be cancelled while queued or in flight. Evictions are delegated to an EvictionPolicy. A policy with admitPrefetch (ProbabilityPolicy) may
 * decline to evict its victim for a prefetch (the prefetch's priority is then read as its predicted probability
 * of use, as FineMoePredictor's predictions give it): the prefetch is dropped. All time is read from an
 * injectable Clock so the same code runs on a simulated clock in tests.
 */
import { InvalidArgumentError, InternalError } from '../errors.js';
import type { EvictionPolicy } from './policy.js';
import { checkInt, checkNumber, expertKey, systemClock, type Clock, type SlotPool, type TransferEngine } from './types.js';

/** A pinned, resident expert. Call release() once the kernel that reads `slot` has finished. */
export interface ExpertLease {
  readonly layer: number;
  readonly expert: number;
  readonly slot: number;
  /** Unpins the slot (idempotent). */
  release(): void;
}

/** Counters since construction (or the last resetStats()). */
export interface CacheStats {
  /** acquire() calls that found the expert resident. */
  hits: number;
  /** acquire() calls that had to wait (for a demand fetch or for an in-flight prefetch). */
  misses: number;
  /** Misses that found a prefetch of the same expert queued or in flight (a late prefetch). */
  latePrefetches: number;
  /** Bytes copied into slots (completed transfers only). */
  bytesMoved: number;
  /** Sum over acquire() calls of the time spent waiting for the weights, in ms. */
  stallMs: number;
  /** Prefetches enqueued. */
  prefetchIssued: number;
  /** Prefetched experts (arrived or in flight) later acquired. */
  prefetchUsed: number;
  /** Prefetched experts evicted or cancelled before any use. */
  prefetchWasted: number;
  /** Experts evicted to make room. */
  evictions: number;
  /** Queued prefetches dropped because the policy's admitPrefetch would not evict its victim for them. */
  prefetchDeclined: number;
}

/** Options of {@link ExpertCache}. */
export interface ExpertCacheOptions {
  numLayers: number;
  numExperts: number;
  /** Bytes of one expert's weights (for statistics and the transfer request). */
  expertBytes: number;
  pool: SlotPool;
  engine: TransferEngine;
  policy: EvictionPolicy;
  clock?: Clock;
  /**
   * Prefetch transfers handed to the engine at once (default 1: the rest wait here, ordered by priority, and can
   * still be cancelled or reordered). Demand fetches are not limited: the engine orders them ahead of prefetches.
   */
  maxInFlight?: number;
}

type State = 'queued' | 'loading' | 'resident';

interface Waiter {
  resolve: (lease: ExpertLease) => void;
  reject: (err: unknown) => void;
  start: number;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

interface Entry {
  readonly key: number;
  readonly layer: number;
  readonly expert: number;
  state: State;
  slot: number;
  pins: number;
  /** true once any acquire() wants it. */
  demand: boolean;
  /** enqueued by prefetch() and not yet used. */
  prefetched: boolean;
  priority: number;
  seq: number;
  waiters: Waiter[];
  controller: AbortController | undefined;
  /** The in-flight transfer was started as a prefetch (counts against maxInFlight). */
  prefetchLane: boolean;
}

function emptyStats(): CacheStats {
  return { hits: 0, misses: 0, latePrefetches: 0, bytesMoved: 0, stallMs: 0, prefetchIssued: 0, prefetchUsed: 0, prefetchWasted: 0, evictions: 0, prefetchDeclined: 0 };
}

/**
 * GPU expert cache over a slot pool and a transfer engine.
 *
 * @example
 * const cache = new ExpertCache({ numLayers: 32, numExperts: 8, expertBytes: 352e6,
 *   pool: new ArraySlotPool(64), engine, policy: new LruPolicy(32 * 8) });
 * cache.prefetch(3, 5, 0.9);                       // speculative, cancellable
 * const lease = await cache.acquire(3, 5);         // resident and pinned
 * launchExpertKernel(lease.slot).finally(() => lease.release());
 */
export class ExpertCache {
  readonly numLayers: number;
  readonly numExperts: number;
  readonly expertBytes: number;
  readonly capacity: number;
  readonly policy: EvictionPolicy;
  readonly #pool: SlotPool;
  readonly #engine: TransferEngine;
  readonly #clock: Clock;
  readonly #maxInFlight: number;
  readonly #entries = new Map<number, Entry>();
  #demandQueue: Entry[] = [];
  #prefetchQueue: Entry[] = [];
  #inFlight = 0;
  #prefetchInFlight = 0;
  #seq = 0;
  #stats = emptyStats();
  #candidates: Int32Array;

  constructor(options: ExpertCacheOptions) {
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${String(options)}`);
    this.numLayers = checkInt('options.numLayers', options.numLayers, 1);
    this.numExperts = checkInt('options.numExperts', options.numExperts, 1);
    this.expertBytes = checkNumber('options.expertBytes', options.expertBytes, 0);
    this.#maxInFlight = checkInt('options.maxInFlight', options.maxInFlight ?? 1, 1);
    const pool = options.pool;
    if (!pool || typeof pool.alloc !== 'function' || typeof pool.free !== 'function') {
      throw new InvalidArgumentError('options.pool must implement SlotPool { size, alloc(), free(slot) }');
    }
    checkInt('options.pool.size', pool.size, 1);
    if (!options.engine || typeof options.engine.fetch !== 'function') {
      throw new InvalidArgumentError('options.engine must implement TransferEngine { fetch(request) }');
    }
    if (!options.policy || typeof options.policy.chooseVictim !== 'function') {
      throw new InvalidArgumentError('options.policy must implement EvictionPolicy');
    }
    this.#pool = pool;
    this.capacity = pool.size;
    this.#engine = options.engine;
    this.policy = options.policy;
    this.#clock = options.clock ?? systemClock;
    this.#candidates = new Int32Array(pool.size);
  }

  /** A copy of the counters. */
  get stats(): CacheStats {
    return { ...this.#stats };
  }
  resetStats(): void {
    this.#stats = emptyStats();
  }
  /** Experts holding a slot (resident or loading). */
  get occupied(): number {
    let n = 0;
    for (const e of this.#entries.values()) if (e.state !== 'queued') n++;
    return n;
  }
  /** Transfers in flight. */
  get inFlight(): number {
    return this.#inFlight;
  }
  /** Fetches waiting for a lane or a slot (demand + prefetch). */
  get queued(): number {
    return this.#demandQueue.length + this.#prefetchQueue.length;
  }
  isResident(layer: number, expert: number): boolean {
    return this.#entries.get(this.#key(layer, expert))?.state === 'resident';
  }
  /** Pins currently held on the expert (0 when absent). */
  pins(layer: number, expert: number): number {
    return this.#entries.get(this.#key(layer, expert))?.pins ?? 0;
  }
  /** Snapshot of resident experts: [layer, expert, slot, pins]. */
  residents(): Array<{ layer: number; expert: number; slot: number; pins: number }> {
    const out = [];
    for (const e of this.#entries.values()) if (e.state === 'resident') out.push({ layer: e.layer, expert: e.expert, slot: e.slot, pins: e.pins });
    return out;
  }

  #key(layer: number, expert: number): number {
    checkInt('layer', layer, 0, this.numLayers - 1);
    checkInt('expert', expert, 0, this.numExperts - 1);
    return expertKey(layer, expert, this.numExperts);
  }

  /**
   * Makes the expert resident and pins it. Resolves immediately on a hit; on a miss it queues a demand fetch
   * ahead of every queued prefetch. Rejects with `signal.reason` if aborted while waiting, or with the engine's
   * error if the transfer fails.
   */
  acquire(layer: number, expert: number, options?: { signal?: AbortSignal }): Promise<ExpertLease> {
    const key = this.#key(layer, expert);
    const signal = options?.signal;
    if (signal?.aborted) return Promise.reject(signal.reason);
    let e = this.#entries.get(key);
    if (e && e.state === 'resident') {
      this.#stats.hits++;
      if (e.prefetched) {
        e.prefetched = false;
        this.#stats.prefetchUsed++;
      }
      this.policy.onAccess(key);
      return Promise.resolve(this.#pin(e));
    }
    this.#stats.misses++;
    if (!e) {
      e = this.#newEntry(key, layer, expert, Infinity);
      e.demand = true;
      this.#demandQueue.push(e);
    } else {
      if (e.prefetched) {
        this.#stats.latePrefetches++;
        this.#stats.prefetchUsed++;
        e.prefetched = false;
      }
      if (e.state === 'queued' && !e.demand) {
        this.#prefetchQueue.splice(this.#prefetchQueue.indexOf(e), 1);
        this.#demandQueue.push(e);
      }
      // A prefetch already copying: let the engine move what is left of it ahead of other prefetches.
      if (e.state === 'loading' && !e.demand) this.#engine.promote?.(e.slot);
      e.demand = true;
    }
    const entry = e;
    const p = new Promise<ExpertLease>((resolve, reject) => {
      const w: Waiter = { resolve, reject, start: this.#clock.now(), signal, onAbort: undefined };
      if (signal) {
        w.onAbort = () => this.#abortWaiter(entry, w);
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      entry.waiters.push(w);
    });
    this.#pump();
    return p;
  }

  /**
   * Queues a speculative fetch (no-op if the expert is present or already queued, except that a higher `priority`
   * raises a queued prefetch). Higher priority starts first; demand fetches always go before prefetches.
   * Returns true if a new prefetch was queued.
   */
  prefetch(layer: number, expert: number, priority = 0): boolean {
    const key = this.#key(layer, expert);
    checkNumber('priority', priority, -Infinity);
    const e = this.#entries.get(key);
    if (e) {
      if (e.state === 'queued' && !e.demand && priority > e.priority) e.priority = priority;
      return false;
    }
    const n = this.#newEntry(key, layer, expert, priority);
    n.prefetched = true;
    this.#prefetchQueue.push(n);
    this.#stats.prefetchIssued++;
    this.#pump();
    return true;
  }

  /** Cancels a prefetch that no kernel has asked for yet (queued: dropped; in flight: aborted). */
  cancelPrefetch(layer: number, expert: number): boolean {
    const e = this.#entries.get(this.#key(layer, expert));
    return e ? this.#cancel(e) : false;
  }

  /** Cancels every not-yet-demanded prefetch matching `filter` (all when omitted); returns how many. */
  cancelPrefetches(filter?: (layer: number, expert: number) => boolean): number {
    let n = 0;
    for (const e of [...this.#entries.values()]) if ((!filter || filter(e.layer, e.expert)) && this.#cancel(e)) n++;
    return n;
  }

  #cancel(e: Entry): boolean {
    if (e.demand || !e.prefetched || e.state === 'resident') return false;
    if (e.state === 'queued') {
      this.#prefetchQueue.splice(this.#prefetchQueue.indexOf(e), 1);
      this.#entries.delete(e.key);
      this.#stats.prefetchWasted++;
      return true;
    }
    e.controller?.abort(new InvalidArgumentError('prefetch cancelled'));
    return true;
  }

  #newEntry(key: number, layer: number, expert: number, priority: number): Entry {
    const e: Entry = { key, layer, expert, state: 'queued', slot: -1, pins: 0, demand: false, prefetched: false, priority, seq: this.#seq++, waiters: [], controller: undefined, prefetchLane: false };
    this.#entries.set(key, e);
    return e;
  }

  #pin(e: Entry): ExpertLease {
    e.pins++;
    let released = false;
    return {
      layer: e.layer,
      expert: e.expert,
      slot: e.slot,
      release: () => {
        if (released) return;
        released = true;
        e.pins--;
        if (e.pins < 0) throw new InternalError('ExpertCache pin count went negative');
        this.#pump();
      },
    };
  }

  #abortWaiter(e: Entry, w: Waiter): void {
    const i = e.waiters.indexOf(w);
    if (i < 0) return;
    e.waiters.splice(i, 1);
    this.#stats.stallMs += this.#clock.now() - w.start;
    w.reject(w.signal?.reason);
    if (e.waiters.length === 0 && e.state === 'queued' && e.demand) {
      // nobody wants it any more: drop the demand fetch
      this.#demandQueue.splice(this.#demandQueue.indexOf(e), 1);
      this.#entries.delete(e.key);
    }
  }

  /** The queued prefetch to start next (highest priority, then oldest); undefined when none. */
  #peekPrefetch(): Entry | undefined {
    const q = this.#prefetchQueue;
    if (q.length === 0) return undefined;
    let bi = 0;
    for (let i = 1; i < q.length; i++) {
      const a = q[i]!;
      const b = q[bi]!;
      if (a.priority > b.priority || (a.priority === b.priority && a.seq < b.seq)) bi = i;
    }
    return q[bi];
  }

  /**
   * A free slot, evicting the policy's victim among resident unpinned experts if needed; -1 if none. For a
   * prefetch (`forPrefetch`), -2 when the policy's admitPrefetch declines to evict its victim for it.
   */
  #obtainSlot(forPrefetch?: Entry): number {
    const s = this.#pool.alloc();
    if (s !== undefined) return s;
    let n = 0;
    for (const e of this.#entries.values()) if (e.state === 'resident' && e.pins === 0) this.#candidates[n++] = e.key;
    if (n === 0) return -1;
    const vi = this.policy.chooseVictim(this.#candidates, n);
    if (!(vi >= 0 && vi < n)) throw new InternalError(`policy ${this.policy.name} chose victim index ${vi} of ${n}`);
    if (forPrefetch && this.policy.admitPrefetch && !this.policy.admitPrefetch(forPrefetch.key, forPrefetch.priority, this.#candidates[vi]!)) return -2;
    const victim = this.#entries.get(this.#candidates[vi]!)!;
    this.#entries.delete(victim.key);
    this.policy.onRemove(victim.key);
    this.#stats.evictions++;
    if (victim.prefetched) this.#stats.prefetchWasted++;
    return victim.slot;
  }

  #pump(): void {
    while (this.#demandQueue.length > 0) {
      const slot = this.#obtainSlot();
      // every slot is pinned or loading: wait for a release or an arrival (both call #pump again)
      if (slot < 0) return;
      this.#start(this.#demandQueue.shift()!, slot);
    }
    while (this.#prefetchInFlight < this.#maxInFlight && this.#prefetchQueue.length > 0) {
      const next = this.#peekPrefetch()!;
      const slot = this.#obtainSlot(next);
      if (slot === -2) {
        // not worth its victim (policy's admission): drop it
        this.#prefetchQueue.splice(this.#prefetchQueue.indexOf(next), 1);
        this.#entries.delete(next.key);
        this.#stats.prefetchDeclined++;
        continue;
      }
      if (slot < 0) return;
      this.#prefetchQueue.splice(this.#prefetchQueue.indexOf(next), 1);
      this.#start(next, slot);
    }
  }

  #start(e: Entry, slot: number): void {
    e.state = 'loading';
    e.slot = slot;
    this.#inFlight++;
    e.prefetchLane = !e.demand;
    if (e.prefetchLane) this.#prefetchInFlight++;
    const controller = new AbortController();
    e.controller = controller;
    let p: Promise<void>;
    try {
      p = this.#engine.fetch({ layer: e.layer, expert: e.expert, slot, bytes: this.expertBytes, priority: e.demand ? 'demand' : 'prefetch', signal: controller.signal });
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(
      () => this.#arrived(e),
      (err: unknown) => this.#failed(e, err, controller.signal.aborted),
    );
  }

  #arrived(e: Entry): void {
    this.#inFlight--;
    if (e.prefetchLane) this.#prefetchInFlight--;
    e.controller = undefined;
    this.#stats.bytesMoved += this.expertBytes;
    if (this.#entries.get(e.key) !== e) throw new InternalError('ExpertCache lost a loading entry');
    e.state = 'resident';
    this.policy.onInsert(e.key);
    const waiters = e.waiters;
    e.waiters = [];
    if (waiters.length > 0) this.policy.onAccess(e.key);
    const now = this.#clock.now();
    for (const w of waiters) {
      if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
      this.#stats.stallMs += now - w.start;
      w.resolve(this.#pin(e));
    }
    this.#pump();
  }

  #failed(e: Entry, err: unknown, aborted: boolean): void {
    this.#inFlight--;
    if (e.prefetchLane) this.#prefetchInFlight--;
    e.controller = undefined;
    this.#pool.free(e.slot);
    e.slot = -1;
    if (aborted && e.waiters.length > 0) {
      // a demand arrived after the prefetch was cancelled: fetch it again, as a demand
      e.state = 'queued';
      this.#demandQueue.push(e);
    } else {
      this.#entries.delete(e.key);
      if (aborted) this.#stats.prefetchWasted++;
      const waiters = e.waiters;
      e.waiters = [];
      for (const w of waiters) {
        if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
        w.reject(err);
      }
    }
    this.#pump();
  }
}
