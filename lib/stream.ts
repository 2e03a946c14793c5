/**
 * Streams and events: CUDA-style ordering for both backends. Ops queued on one stream run in order; different
 * streams run concurrently (e.g. copies on one, compute on another). An Event marks a point in a stream; another
 * stream can wait for it without blocking JS, and JS can await it.
 *
 * @example
 * const copyStream = be.createStream();
 * const ready = be.createEvent();
 * void be.copy(hostWeights, deviceWeights, { stream: copyStream });
 * ready.record(copyStream);
 * be.stream.waitEvent(ready);                 // compute waits for the copy, JS does not
 * await be.gemm(x, deviceWeights, y);         // runs on be.stream after the copy
 */
import { DisposedError, InvalidArgumentError, fromNative } from './errors.js';
import type { NativeEvent, NativeStream } from './native.js';

/** An ordered queue of ops with its own host thread (and a cudaStream on CUDA). */
export class Stream {
  readonly backend: 'cpu' | 'cuda';
  readonly device: number;
  #native: NativeStream | undefined;

  /** @internal use Backend.createStream */
  constructor(nativeStream: NativeStream, backend: 'cpu' | 'cuda', device: number) {
    this.#native = nativeStream;
    this.backend = backend;
    this.device = device;
  }

  get disposed(): boolean {
    return this.#native === undefined;
  }

  /** Resolves when every op queued on this stream before the call has finished. */
  async synchronize(): Promise<void> {
    try {
      await this.nativeStream('Stream.synchronize').synchronize();
    } catch (e) {
      throw fromNative(e); // its stack: V8's async trace of the callers awaiting this
    }
  }

  /**
   * Ops queued on this stream after this call start only once `event`'s latest record has been reached.
   * Returns a Promise that settles when the wait is over (awaiting it is optional).
   * The event may belong to another backend (a CPU stream waiting for a CUDA copy, a CUDA stream for CPU work): this
   * stream's host thread then holds until the event's point has completed, and queues nothing meanwhile.
   * @example
   * const down = be.createEvent();                // be: CUDA; host: the CPU backend
   * void be.copy(qDev, qHost);
   * down.record(be.stream);
   * void host.stream.waitEvent(down);             // the CPU stream waits for the copy, JS does not
   * void host.rope({ q: qHost, k: kHost, positions, invFreq });
   */
  waitEvent(event: Event): Promise<void> {
    if (!(event instanceof Event)) throw new InvalidArgumentError('event must be an Event');
    const p = this.nativeStream('Stream.waitEvent').waitEvent(event.nativeEvent('Stream.waitEvent'));
    p.catch(() => {});
    return p;
  }

  /** Releases the stream; ops already queued still run and settle. */
  dispose(): void {
    this.#native?.dispose();
    this.#native = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  nativeStream(what: string): NativeStream {
    if (!this.#native) throw new DisposedError(`${what}: the stream was disposed`);
    return this.#native;
  }
}

/** A point in a stream. */
export class Event {
  readonly backend: 'cpu' | 'cuda';
  readonly device: number;
  readonly timing: boolean;
  #native: NativeEvent | undefined;
  #last: Promise<void> = Promise.resolve();

  /** @internal use Backend.createEvent */
  constructor(nativeEvent: NativeEvent, backend: 'cpu' | 'cuda', device: number, timing: boolean) {
    this.#native = nativeEvent;
    this.backend = backend;
    this.device = device;
    this.timing = timing;
  }

  /**
   * Marks the current end of `stream`; the event completes when the stream gets there. With `reserved` (from
   * reserve()), records the point reserved earlier instead of a new one.
   */
  record(stream: Stream, reserved?: number): void {
    if (!(stream instanceof Stream)) throw new InvalidArgumentError('stream must be a Stream');
    const p = this.nativeEvent('Event.record').record(stream.nativeStream('Event.record'), reserved);
    p.catch(() => {});
    this.#last = p;
  }

  /**
   * Names the event's next point before it is recorded. Streams that wait on the event from now on wait for that
   * point (on their own thread, never on JS), so a producer can record it later with `record(stream, reserved)`.
   * Every reserved point must eventually be recorded, or its waiters wait forever.
   */
  reserve(): number {
    return this.nativeEvent('Event.reserve').reserve();
  }

  /** Resolves when the latest record has completed (immediately if never recorded). */
  async synchronize(): Promise<void> {
    try {
      await this.#last;
    } catch (e) {
      throw fromNative(e);
    }
  }

  /** True when the latest record has completed. */
  isComplete(): boolean {
    return this.nativeEvent('Event.isComplete').query();
  }

  /** Milliseconds between `start`'s record and this event's record (both created with timing, both complete). */
  elapsedMs(start: Event): number {
    if (!(start instanceof Event)) throw new InvalidArgumentError('start must be an Event');
    try {
      return this.nativeEvent('Event.elapsedMs').elapsedMs(start.nativeEvent('Event.elapsedMs'));
    } catch (e) {
      throw fromNative(e);
    }
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  nativeEvent(what: string): NativeEvent {
    if (!this.#native) throw new DisposedError(`${what}: the event was disposed`);
    return this.#native;
  }
}
