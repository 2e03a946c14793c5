/**
 * The transfer engine: moves weights (and anything else) between host and device on a dedicated copy stream,
 * separate from compute, with two priorities.
 *
 * Copies are cut into chunks (4 MiB by default on CUDA) and only a few chunks are queued on the copy stream at a time;
 * the rest wait here, demand fetches ahead of prefetches. So a demand fetch issued behind a gigabyte of queued
 * prefetch waits for at most `maxInFlight` chunks, not for the gigabyte. Queued transfers can be cancelled (their
 * remaining chunks never start). Each transfer yields an Event recorded on the copy stream after its last chunk:
 * compute streams wait on it with `stream.waitEvent(t.event)`, so the hot path never blocks the host; JS learns
 * of completion through `t.done` without blocking the event loop.
 *
 * On the CPU backend the same engine runs over the CPU stream's worker thread (a threaded memcpy), so everything
 * that uses it is exercised without a GPU.
 *
 * @example
 * const engine = new TransferEngine(be);
 * const t = engine.submit(hostExpert, slot, { priority: 'prefetch' });
 * be.stream.waitEvent(t.event);            // kernels queued after this see the whole expert
 * await t.done;                            // or just await it from JS
 * engine.dispose();
 */
import type { Backend } from '../backend.js';
import { describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';
import type { Event, Stream } from '../stream.js';
import type { Tensor } from '../tensor.js';
import { settleOnce } from './settle.js';

export type TransferPriority = 'demand' | 'prefetch';

export interface TransferOptions {
  /** 'demand' (default) overtakes every queued 'prefetch'. */
  priority?: TransferPriority;
  /** Aborting cancels the chunks not yet started; `done` rejects with the reason. */
  signal?: AbortSignal;
}

export interface TransferEngineOptions {
  /**
   * Chunk size in bytes. Default 4 MiB on CUDA (a PCIe chunk takes ~70 us: demand waits little) and 16 MiB on the
   * CPU backend, where each chunk is a threaded memcpy and 4 MiB chunks measured 0.77 of one plain copy's rate
   * against 0.99 for 16 MiB (bench/residency.ts, 256 MiB, 2-core VM).
   */
  chunkBytes?: number;
  /**
   * Chunks queued on the copy stream at once: the wait a demand fetch can face, in chunks. Default 6 on CUDA: each
   * chunk's completion reaches JS ~0.1 ms after the copy ends, about a 4 MiB chunk's copy time over PCIe, so 2 in
   * flight left the copy engine idle half the time (0.57-0.63 of a plain copy's rate on an H200, 2026-11-26); 6 keep
   * it busy and bound a demand fetch's wait to ~24 MiB (~0.5 ms). Default 2 on the CPU backend (16 MiB chunks).
   */
  maxInFlight?: number;
}

export interface TransferStats {
  transfers: number;
  bytes: number;
  chunks: number;
  cancelled: number;
  /** Bytes of cancelled transfers that were never copied. */
  bytesSaved: number;
}

/** One submitted copy. */
export class Transfer {
  readonly bytes: number;
  /** 'prefetch' until promote() (or 'demand' from the start). */
  priority: TransferPriority;
  /**
   * Completes after the last chunk (or, if cancelled or failed, after the chunks that did start): wait on it
   * from a compute stream with `stream.waitEvent(t.event)`, right after submit() if you like.
   */
  readonly event: Event;
  /** Settles when every chunk has been copied (rejects when cancelled, after in-flight chunks finished). */
  readonly done: Promise<void>;
  /** @internal */ nextOffset = 0;
  /** @internal */ inFlight = 0;
  /** @internal */ cancelReason: unknown = undefined;
  /** @internal */ error: unknown = undefined;
  /** @internal */ settle!: (err?: unknown) => void;
  /** @internal */ readonly generation: number;
  /** @internal */ recorded = false;
  /** @internal */ readonly src: Tensor;
  /** @internal */ readonly dst: Tensor;
  readonly #engine: TransferEngine;

  /** @internal */
  constructor(engine: TransferEngine, src: Tensor, dst: Tensor, priority: TransferPriority, event: Event) {
    this.#engine = engine;
    this.src = src;
    this.dst = dst;
    this.bytes = src.byteLength;
    this.priority = priority;
    this.event = event;
    // Reserved now, recorded on the copy stream right after the last chunk: a compute stream can wait on the
    // event immediately after submit(), before any chunk has even been queued.
    this.generation = event.reserve();
    const completion = settleOnce();
    this.done = completion.promise;
    this.settle = completion.settle;
  }

  /** True once no chunk of it will start any more (finished, failed or cancelled). */
  get finished(): boolean {
    return this.nextOffset >= this.bytes || this.cancelReason !== undefined || this.error !== undefined;
  }

  /**
   * Raises a prefetch to demand priority (a kernel now needs it): its chunks not yet started go ahead of every
   * queued prefetch. Returns false when there was nothing left to reorder.
   */
  promote(): boolean {
    return this.#engine.promote(this);
  }

  /**
   * Cancels the chunks not started yet. Returns false when every chunk had already started (nothing to cancel).
   * `done` rejects with `reason` once the chunks in flight have finished, so the destination is no longer written.
   */
  cancel(reason: unknown = new DOMException('transfer cancelled', 'AbortError')): boolean {
    return this.#engine.cancel(this, reason);
  }
}

export class TransferEngine {
  readonly backend: Backend;
  readonly stream: Stream;
  readonly chunkBytes: number;
  readonly maxInFlight: number;
  readonly #demand: Transfer[] = [];
  readonly #prefetch: Transfer[] = [];
  #inFlight = 0;
  #disposed = false;
  readonly #stats: TransferStats = { transfers: 0, bytes: 0, chunks: 0, cancelled: 0, bytesSaved: 0 };

  constructor(backend: Backend, options: TransferEngineOptions = {}) {
    const chunk = options.chunkBytes ?? (backend.kind === 'cuda' ? 4 << 20 : 16 << 20);
    const depth = options.maxInFlight ?? (backend.kind === 'cuda' ? 6 : 2);
    if (!Number.isSafeInteger(chunk) || chunk < 4096) throw new InvalidArgumentError(`chunkBytes must be an integer >= 4096, received ${describe(chunk)}`);
    if (!Number.isSafeInteger(depth) || depth < 1) throw new InvalidArgumentError(`maxInFlight must be a positive integer, received ${describe(depth)}`);
    this.backend = backend;
    this.chunkBytes = chunk;
    this.maxInFlight = depth;
    this.stream = backend.createStream({ priority: 'high' });
  }

  get stats(): Readonly<TransferStats> {
    return { ...this.#stats };
  }

  /** Transfers waiting for their first or next chunk, demand first. */
  get queued(): number {
    return this.#demand.length + this.#prefetch.length;
  }

  /** Queues a copy of src into dst (same byte size, any placement the backend can copy between). */
  submit(src: Tensor, dst: Tensor, options: TransferOptions = {}): Transfer {
    if (this.#disposed) throw new InvalidArgumentError('the transfer engine was disposed');
    const priority = options.priority ?? 'demand';
    if (priority !== 'demand' && priority !== 'prefetch') throw new InvalidArgumentError(`priority must be 'demand' or 'prefetch', received ${describe(priority)}`);
    if (!src || !dst || typeof src.bytesView !== 'function' || typeof dst.bytesView !== 'function') {
      throw new InvalidArgumentError(`src and dst must be tensors, received ${describe(src)} and ${describe(dst)}`);
    }
    if (src.byteLength !== dst.byteLength) throw new InvalidArgumentError(`dst must hold as many bytes as src (${src.byteLength}), received ${dst.byteLength}`);
    const t = new Transfer(this, src, dst, priority, this.backend.createEvent());
    this.#stats.transfers++;
    const { signal } = options;
    if (signal?.aborted) {
      this.cancel(t, signal.reason);
      return t;
    }
    if (signal) {
      const onAbort = () => this.cancel(t, signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      void t.done.then(
        () => signal.removeEventListener('abort', onAbort),
        () => signal.removeEventListener('abort', onAbort),
      );
    }
    (priority === 'demand' ? this.#demand : this.#prefetch).push(t);
    this.#pump();
    return t;
  }

  /** @internal see Transfer.promote */
  promote(t: Transfer): boolean {
    if (t.priority === 'demand' || t.finished) return false;
    t.priority = 'demand';
    const i = this.#prefetch.indexOf(t);
    if (i < 0) return false;
    this.#prefetch.splice(i, 1);
    this.#demand.push(t);
    return true;
  }

  /** @internal see Transfer.cancel */
  cancel(t: Transfer, reason: unknown): boolean {
    if (t.finished) return false;
    t.cancelReason = reason;
    this.#stats.cancelled++;
    this.#stats.bytesSaved += t.bytes - t.nextOffset;
    this.#remove(t);
    this.#record(t); // after the chunks in flight (stream order), so waiters are released, never stranded
    if (t.inFlight === 0) this.#finish(t);
    return true;
  }

  /** Cancels everything queued and stops accepting work; chunks in flight still finish. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const t of [...this.#demand, ...this.#prefetch]) this.cancel(t, new DOMException('transfer engine disposed', 'AbortError'));
    void this.stream.synchronize().finally(() => this.stream.dispose());
  }

  #remove(t: Transfer): void {
    for (const q of [this.#demand, this.#prefetch]) {
      const i = q.indexOf(t);
      if (i >= 0) q.splice(i, 1);
    }
  }

  #next(): Transfer | undefined {
    return this.#demand[0] ?? this.#prefetch[0];
  }

  #pump(): void {
    while (this.#inFlight < this.maxInFlight) {
      const t = this.#next();
      if (!t) return;
      const off = t.nextOffset;
      const len = Math.min(this.chunkBytes, t.bytes - off);
      t.nextOffset += len;
      if (len === 0) {
        this.#remove(t);
        this.#record(t);
        this.#finish(t);
        continue;
      }
      t.inFlight++;
      this.#inFlight++;
      this.#stats.chunks++;
      let p: Promise<unknown>;
      try {
        p = this.backend.copy(t.src.bytesView(off, len), t.dst.bytesView(off, len), { stream: this.stream });
      } catch (e) {
        p = Promise.reject(e);
      }
      if (t.nextOffset >= t.bytes) {
        this.#remove(t); // every chunk started
        this.#record(t);
      }
      p.then(
        () => {
          this.#stats.bytes += len;
        },
        (e: unknown) => {
          if (t.error === undefined) t.error = e;
          this.#remove(t);
          this.#record(t);
        },
      ).finally(() => {
        t.inFlight--;
        this.#inFlight--;
        if (t.inFlight === 0 && t.finished) this.#finish(t);
        this.#pump();
      });
    }
  }

  #finish(t: Transfer): void {
    if (t.error !== undefined) {
      t.settle(t.error);
      return;
    }
    if (t.cancelReason !== undefined) {
      t.settle(t.cancelReason);
      return;
    }
    t.settle();
  }

  /** Records the transfer's reserved point on the copy stream, once. */
  #record(t: Transfer): void {
    if (t.recorded) return;
    t.recorded = true;
    t.event.record(this.stream, t.generation);
  }
}
