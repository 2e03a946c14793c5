/**
 * Test doubles for the expert cache: a single-lane transfer engine on a simulated clock. Transfers complete only
 * when the test advances the clock, so every interleaving is deterministic.
 */
import type { Clock, FetchRequest, TransferEngine } from '../../lib/cache/types.js';

export class FakeClock implements Clock {
  t = 0;
  now(): number {
    return this.t;
  }
}

interface Pending {
  req: FetchRequest;
  resolve: () => void;
  reject: (e: unknown) => void;
  doneAt: number;
}

/** In-order engine: each fetch takes bytes / bytesPerMs after the previous one; aborts reject at once. */
export class FakeTransferEngine implements TransferEngine {
  readonly clock: FakeClock;
  readonly bytesPerMs: number;
  readonly log: FetchRequest[] = [];
  /** Slots whose in-flight prefetch the cache asked to promote to demand priority. */
  readonly promoted: number[] = [];
  pending: Pending[] = [];
  failNext = false;
  #laneFree = 0;
  constructor(clock: FakeClock, bytesPerMs = 1) {
    this.clock = clock;
    this.bytesPerMs = bytesPerMs;
  }
  promote(slot: number): void {
    this.promoted.push(slot);
  }
  fetch(req: FetchRequest): Promise<void> {
    this.log.push(req);
    if (this.failNext) {
      this.failNext = false;
      return Promise.reject(new Error('injected transfer failure'));
    }
    return new Promise<void>((resolve, reject) => {
      const doneAt = Math.max(this.#laneFree, this.clock.t) + req.bytes / this.bytesPerMs;
      this.#laneFree = doneAt;
      const p: Pending = { req, resolve, reject, doneAt };
      this.pending.push(p);
      req.signal.addEventListener('abort', () => {
        const i = this.pending.indexOf(p);
        if (i >= 0) this.pending.splice(i, 1);
        reject(req.signal.reason);
      }, { once: true });
    });
  }
  /** Completes the earliest pending transfer (advancing the clock to its end); false if none. */
  async completeNext(): Promise<boolean> {
    this.pending.sort((a, b) => a.doneAt - b.doneAt);
    const p = this.pending.shift();
    if (!p) return false;
    this.clock.t = Math.max(this.clock.t, p.doneAt);
    p.resolve();
    await flush();
    return true;
  }
}

/** Lets settled promises run their continuations. */
export function flush(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}
