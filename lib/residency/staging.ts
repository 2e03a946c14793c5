/**
 * Activation staging: a small ring of page-locked host buffers for moving activations between device memory
 * and the CPU every layer (DESIGN.md hybrid path: GPU computes q/k/v -> D2H -> CPU attention reads them from
 * pinned memory -> writes its output into pinned memory -> H2D -> GPU).
 *
 * A {@link StagingRing} owns N (default 2) pinned buffers of one fixed size and a copy stream (its own, or one it
 * is given, e.g. a TransferEngine's). `download()` copies a device tensor into the next free buffer and resolves
 * with a {@link StagedTensor}: a HostTensor view of the pinned bytes that the caller owns until it releases it
 * (`release()`, `dispose()` or `using`). `upload()` copies a staged tensor (or any HostTensor, staged through a
 * free buffer) into device memory and returns at once a {@link StagedUpload} whose `event` is reserved at submit,
 * so a compute stream can wait on it immediately, before the copy is even queued, without any host sync.
 *
 * A buffer is handed out only when nobody holds it and no copy still reads or writes it. Requests beyond N wait
 * in FIFO order (Promises: the event loop never blocks); waits honour AbortSignals; dispose() frees the buffers
 * and rejects every waiter. Deadlock note, as with any bounded pool: do not await device work that waits on an
 * upload needing a buffer while you hold every buffer.
 *
 * @example
 * const ring = await StagingRing.create(be, { bufferBytes: tokens * qkvDim * 2 });
 * for (let layer = 0; layer < layers; layer++) {
 *   // ... be.gemm(x, wqkv[layer], qkv) on be.stream
 *   using host = await ring.download(qkv);           // waits for be.stream's work so far, then D2H
 *   cpuAttention(host, out);                         // reads pinned memory, writes `out` (a ring.acquire() lease)
 *   const up = ring.upload(out, attnOut);            // H2D on the copy stream
 *   be.stream.waitEvent(up.event);                   // the next GPU op sees attnOut; JS did not wait
 * }
 * ring.dispose();
 */
import type { Backend } from '../backend.js';
import { type DType, DTYPE_SIZE, checkDType, describe } from '../dtype.js';
import { DisposedError, InvalidArgumentError } from '../errors.js';
import { Event, Stream } from '../stream.js';
import { DeviceTensor, HostTensor, type PinnedBuffer, type Shape, checkShape, numelOf } from '../tensor.js';
import { settleOnce } from './settle.js';

/** What a copy waits for before it starts: an Event (its latest record), a Stream (its work so far) or nothing. */
export type StagingAfter = Event | Stream | null;

export interface StagingRingOptions {
  /** Size of each pinned buffer in bytes (the largest activation one request moves). */
  bufferBytes: number;
  /** Number of buffers (default 2: double buffering). */
  buffers?: number;
  /**
   * Copy stream to queue the copies on (e.g. `engine.stream` to share a TransferEngine's). Default: a new
   * high-priority stream owned (and disposed) by the ring.
   */
  stream?: Stream;
  /** Aborts the pinned allocations. */
  signal?: AbortSignal;
}

export interface StagingDownloadOptions {
  /**
   * What the D2H waits for: default the backend's default stream (everything queued on it at the call, i.e.
   * whatever produced `src`; pinned with a fence at the call even if the copy waits for a buffer); an Event (its
   * latest record when the copy is issued: do not re-record it before the download resolves); or null for no
   * wait (the caller guarantees `src` is ready). The wait is a stream wait, the host does not block.
   */
  after?: StagingAfter;
  /** Aborts the wait for a free buffer (or the copy, if not started); the Promise rejects with the reason. */
  signal?: AbortSignal;
}

export interface StagingUploadOptions {
  /**
   * What the H2D waits for before it writes `dst`, e.g. `be.stream` when kernels queued there may still read the
   * previous contents of `dst` (write-after-read). Default null: no wait (like TransferEngine and copy()).
   */
  after?: StagingAfter;
  /** Aborts the wait for a free buffer (or the copy, if not started): `done` rejects, `event` still completes. */
  signal?: AbortSignal;
  /**
   * Event to reserve and record (a caller-owned one reused every layer saves creating one per upload). Default:
   * a new event per upload.
   */
  event?: Event;
}

export interface StagingStats {
  downloads: number;
  uploads: number;
  /** Uploads of host memory outside the ring, copied into a buffer first. */
  stagedUploads: number;
  bytesDown: number;
  bytesUp: number;
  /** Requests that found no free buffer and queued. */
  waits: number;
}

/**
 * A HostTensor view of one ring buffer, owned by the caller until `release()` (also `dispose()` and `using`).
 * After release the view throws DisposedError on access, so a stale read never sees the next layer's data.
 * Views made with `bytesView()` are not tracked: do not use them after release.
 */
export class StagedTensor<D extends DType = DType> extends HostTensor<D> {
  /** Index of the ring buffer it views. */
  readonly index: number;
  /** @internal */ readonly ring: StagingRing;
  #onRelease: (() => void) | undefined;

  /** @internal use StagingRing.download / acquire */
  constructor(ring: StagingRing, index: number, buffer: PinnedBuffer, dtype: D, shape: Shape, onRelease: () => void) {
    super(dtype, shape, buffer.tensor(dtype, shape).data, buffer);
    this.ring = ring;
    this.index = index;
    this.#onRelease = onRelease;
  }

  /** True until released. */
  get held(): boolean {
    return this.#onRelease !== undefined;
  }

  /**
   * Gives the buffer back to the ring (idempotent). If an upload from it is still in flight, the buffer becomes
   * free when that copy finishes, so releasing right after `upload()` is fine.
   */
  release(): void {
    const cb = this.#onRelease;
    if (!cb) return;
    this.#onRelease = undefined;
    super.dispose();
    cb();
  }

  /** Same as release(). */
  override dispose(): void {
    this.release();
  }
}

/** One upload: `event` completes after the copy (wait on it from a compute stream right away); `done` settles too. */
export class StagedUpload {
  readonly bytes: number;
  /** Reserved at submit, recorded on the copy stream right after the copy (also when it was aborted or failed). */
  readonly event: Event;
  /** Resolves when the copy has finished; rejects when aborted, failed or the ring was disposed first. */
  readonly done: Promise<void>;
  /** @internal */ readonly generation: number;
  /** @internal */ readonly seq: number;
  /** @internal */ recorded = false;
  /** @internal */ settle!: (err?: unknown) => void;

  /** @internal */
  constructor(bytes: number, event: Event, seq: number) {
    this.bytes = bytes;
    this.seq = seq;
    this.event = event;
    this.generation = event.reserve();
    const completion = settleOnce();
    this.done = completion.promise;
    this.settle = completion.settle;
  }
}

interface Slot {
  readonly index: number;
  readonly buffer: PinnedBuffer;
  /** Held by a caller (a StagedTensor) or by the ring while it fills the buffer. */
  leased: boolean;
  /** Copies queued that read or write the buffer. */
  pending: number;
}

interface AfterPoint {
  event: Event;
  /** A ring-owned fence, back to the pool after use. */
  fence: boolean;
}

interface Waiter {
  resolve: (slot: Slot) => void;
  reject: (err: unknown) => void;
  cleanup: () => void;
}

export class StagingRing {
  readonly backend: Backend;
  /** The copy stream. */
  readonly stream: Stream;
  readonly bufferBytes: number;
  readonly buffers: number;
  readonly #ownsStream: boolean;
  readonly #slots: Slot[];
  readonly #free: Slot[];
  readonly #waiters: Waiter[] = [];
  readonly #fences: Event[] = [];
  /** Uploads waiting for a buffer (their copy not queued yet). */
  readonly #unissued = new Set<StagedUpload>();
  /** Uploads whose reserved point is not recorded yet. */
  readonly #unrecorded = new Set<StagedUpload>();
  readonly #stats: StagingStats = { downloads: 0, uploads: 0, stagedUploads: 0, bytesDown: 0, bytesUp: 0, waits: 0 };
  #disposed = false;
  #seq = 0;

  private constructor(backend: Backend, buffers: PinnedBuffer[], bufferBytes: number, stream: Stream, ownsStream: boolean) {
    this.backend = backend;
    this.bufferBytes = bufferBytes;
    this.buffers = buffers.length;
    this.stream = stream;
    this.#ownsStream = ownsStream;
    this.#slots = buffers.map((buffer, index) => ({ index, buffer, leased: false, pending: 0 }));
    this.#free = [...this.#slots];
  }

  /**
   * Allocates the pinned buffers (off the JS thread, allocPinnedAsync). Nothing stays allocated on failure.
   * @throws InvalidArgumentError for bad options; OutOfMemoryError when pinned memory runs out.
   */
  static async create(backend: Backend, options: StagingRingOptions): Promise<StagingRing> {
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
    const { bufferBytes, signal } = options;
    const n = options.buffers ?? 2;
    if (typeof bufferBytes !== 'number' || !Number.isSafeInteger(bufferBytes) || bufferBytes <= 0) {
      throw new InvalidArgumentError(`bufferBytes must be a positive integer, received ${describe(bufferBytes)}`);
    }
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1 || n > 64) {
      throw new InvalidArgumentError(`buffers must be an integer in [1, 64], received ${describe(n)}`);
    }
    if (options.stream !== undefined) checkStream(backend, options.stream, 'options.stream');
    const buffers: PinnedBuffer[] = [];
    try {
      for (let i = 0; i < n; i++) buffers.push(await backend.allocPinnedAsync(bufferBytes, signal === undefined ? {} : { signal }));
    } catch (e) {
      for (const b of buffers) b.dispose();
      throw e;
    }
    const own = options.stream === undefined;
    return new StagingRing(backend, buffers, bufferBytes, options.stream ?? backend.createStream({ priority: 'high' }), own);
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Buffers neither held nor used by a copy. */
  get available(): number {
    return this.#free.length;
  }

  /** Requests queued for a buffer. */
  get waiting(): number {
    return this.#waiters.length;
  }

  get stats(): Readonly<StagingStats> {
    return { ...this.#stats };
  }

  /**
   * Copies `src` (device memory of this backend) into the next free buffer and resolves with a view of it
   * (src's dtype and shape). Hold it as long as the CPU needs it; release it to let the next request in.
   * @throws InvalidArgumentError (synchronously) when src is not a device tensor of this backend or is larger
   *   than a buffer; DisposedError when the ring was disposed (also while waiting).
   * @example
   * using q = await ring.download(dq, { after: qkvDone });   // qkvDone: an Event recorded on the compute stream
   * q.data;                                                  // Uint16Array over pinned memory (bf16 bits)
   */
  download<D extends DType>(src: DeviceTensor<D>, options: StagingDownloadOptions = {}): Promise<StagedTensor<D>> {
    this.#checkLive('download');
    checkOptions(options, 'download');
    this.#checkDevice(src, 'src');
    this.#checkFits(src.byteLength, 'src');
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    const point = this.#capture(options.after === undefined ? this.backend.stream : options.after);
    return this.#download(src, signal, point, ++this.#seq);
  }

  async #download<D extends DType>(src: DeviceTensor<D>, signal: AbortSignal | undefined, point: AfterPoint | undefined, seq: number): Promise<StagedTensor<D>> {
    let slot: Slot;
    try {
      slot = await this.#acquireSlot(signal);
    } catch (e) {
      this.#drop(point);
      throw e;
    }
    slot.pending++;
    try {
      await this.#waitPoint(point, seq);
      await this.backend.copy(src, slot.buffer.tensor('u8', [src.byteLength]), signal === undefined ? { stream: this.stream } : { stream: this.stream, signal });
    } catch (e) {
      slot.leased = false;
      throw e;
    } finally {
      slot.pending--;
      this.#maybeFree(slot);
    }
    if (this.#disposed) throw new DisposedError('StagingRing.download: the ring was disposed');
    this.#stats.downloads++;
    this.#stats.bytesDown += src.byteLength;
    return this.#lease(slot, src.dtype, src.shape);
  }

  /**
   * Leases a free buffer as an uninitialised `dtype` x `shape` view, for the CPU to write an output into before
   * `upload()`. Waits (FIFO) while every buffer is busy.
   * @example
   * using out = await ring.acquire('bf16', [tokens, qHeads * headDim]);
   * cpuAttention(q, out);
   * be.stream.waitEvent(ring.upload(out, dOut).event);
   */
  acquire<D extends DType>(dtype: D, shape: Shape, options: { signal?: AbortSignal } = {}): Promise<StagedTensor<D>> {
    this.#checkLive('acquire');
    checkOptions(options, 'acquire');
    checkDType(dtype, 'dtype');
    const s = checkShape(shape);
    this.#checkFits(numelOf(s) * DTYPE_SIZE[dtype], `a ${dtype} [${s.join(', ')}] view`);
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(signal.reason);
    return this.#acquireSlot(signal).then((slot) => this.#lease(slot, dtype, s));
  }

  /**
   * Copies `host` into `dst` (device memory of this backend, same byte size) on the copy stream. `host` is either
   * a StagedTensor of this ring that the caller holds (copied from directly; releasing it at once is fine) or any
   * other HostTensor, which is first copied into a free buffer (waiting for one if needed): leave it unchanged until
   * `done` settles. Returns at once; `event` is already waitable.
   * @throws InvalidArgumentError (synchronously) for a non-HostTensor host, a dst that is not a device tensor of
   *   this backend, mismatched byte sizes, or a staged host larger than a buffer.
   * @example
   * const up = ring.upload(out, dOut);
   * be.stream.waitEvent(up.event);    // kernels queued after this see dOut
   */
  upload(host: HostTensor, dst: DeviceTensor, options: StagingUploadOptions = {}): StagedUpload {
    this.#checkLive('upload');
    checkOptions(options, 'upload');
    if (!(host instanceof HostTensor)) throw new InvalidArgumentError(`upload: host must be a HostTensor, received ${describe(host)}`);
    this.#checkDevice(dst, 'dst');
    if (host.byteLength !== dst.byteLength) {
      throw new InvalidArgumentError(`upload: dst must hold as many bytes as host (${host.byteLength}), received ${dst.byteLength}`);
    }
    const own = host instanceof StagedTensor && host.ring === this;
    if (own && !host.held) throw new DisposedError('upload: the StagedTensor was released');
    if (!own) this.#checkFits(host.byteLength, 'host');
    if (host.disposed) throw new DisposedError('upload: host was disposed');
    if (options.event !== undefined && (!(options.event instanceof Event) || options.event.backend !== this.backend.kind || options.event.device !== this.backend.device)) {
      throw new InvalidArgumentError(`upload: options.event must be an Event of ${this.backend.name}, received ${describe(options.event)}`);
    }
    const { signal } = options;
    const point = this.#capture(options.after ?? null);
    const up = new StagedUpload(host.byteLength, options.event ?? this.backend.createEvent(), ++this.#seq);
    this.#stats.uploads++;
    this.#unrecorded.add(up);
    if (own) {
      // A view of its own: the caller may release the lease (disposing its view) before the copy is issued.
      const slot = this.#slots[host.index]!;
      this.#issueUpload(slot, slot.buffer.tensor('u8', [host.byteLength]), dst, up, signal, point);
      return up;
    }
    this.#stats.stagedUploads++;
    if (signal?.aborted) {
      this.#drop(point);
      this.#fail(up, signal.reason);
      return up;
    }
    this.#unissued.add(up);
    this.#acquireSlot(signal).then(
      (slot) => {
        this.#unissued.delete(up);
        try {
          const n = host.byteLength;
          const d = host.data;
          slot.buffer.bytes.set(new Uint8Array(d.buffer, d.byteOffset, n));
          this.#issueUpload(slot, slot.buffer.tensor('u8', [n]), dst, up, signal, point);
        } catch (e) {
          this.#fail(up, e);
        } finally {
          slot.leased = false;
          this.#maybeFree(slot);
        }
      },
      (e: unknown) => {
        this.#unissued.delete(up);
        this.#drop(point);
        this.#fail(up, e);
      },
    );
    return up;
  }

  /**
   * Frees the buffers (a copy still using one keeps it until it settles), rejects every waiter and pending upload
   * with DisposedError and makes held StagedTensors unusable. Idempotent.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    const err = new DisposedError('StagingRing was disposed');
    // Uploads not recorded yet (waiting for a buffer, or for their `after` point): record their reserved points
    // now, before the stream goes, so compute streams waiting on them go on; their copies never start.
    for (const up of [...this.#unrecorded]) this.#fail(up, err);
    this.#unissued.clear();
    for (const w of this.#waiters.splice(0)) {
      w.cleanup();
      w.reject(err);
    }
    for (const s of this.#slots) s.buffer.dispose();
    this.#free.length = 0;
    for (const f of this.#fences) f.dispose();
    this.#fences.length = 0;
    if (this.#ownsStream) void this.stream.synchronize().finally(() => this.stream.dispose());
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  #lease<D extends DType>(slot: Slot, dtype: D, shape: Shape): StagedTensor<D> {
    slot.leased = true;
    return new StagedTensor(this, slot.index, slot.buffer, dtype, shape, () => {
      slot.leased = false;
      this.#maybeFree(slot);
    });
  }

  /** Queues the H2D, records the upload's reserved point right after it, frees the slot when the copy settles. */
  #issueUpload(slot: Slot, src: HostTensor, dst: DeviceTensor, up: StagedUpload, signal: AbortSignal | undefined, point: AfterPoint | undefined): void {
    slot.pending++;
    const issue = (): Promise<unknown> => {
      if (this.#disposed) throw new DisposedError('StagingRing.upload: the ring was disposed');
      const p = this.backend.copy(src, dst, signal === undefined ? { stream: this.stream } : { stream: this.stream, signal });
      this.#record(up);
      return p;
    };
    let p: Promise<unknown>;
    try {
      const hostWait = this.#waitPoint(point, up.seq);
      p = hostWait === undefined ? issue() : hostWait.then(issue);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      () => {
        this.#stats.bytesUp += up.bytes;
        up.settle();
      },
      (e: unknown) => this.#fail(up, e),
    ).finally(() => {
      slot.pending--;
      this.#maybeFree(slot);
    });
  }

  /** Settles an upload that never copied; its event is still recorded so streams waiting on it go on. */
  #fail(up: StagedUpload, err: unknown): void {
    if (!this.stream.disposed) this.#record(up);
    up.settle(err);
  }

  #record(up: StagedUpload): void {
    if (up.recorded) return;
    up.recorded = true;
    this.#unrecorded.delete(up);
    up.event.record(this.stream, up.generation);
  }

  /**
   * Pins down, at the call, the point a copy must wait for: a Stream's work so far becomes a pooled fence recorded
   * on it now; an Event is taken as is (its latest record when the copy is issued).
   */
  #capture(after: StagingAfter): AfterPoint | undefined {
    if (after === null) return undefined;
    if (after instanceof Event) {
      if (after.backend !== this.backend.kind || after.device !== this.backend.device) {
        throw new InvalidArgumentError(`options.after must be an Event or Stream of ${this.backend.name}, received one of ${after.backend}:${after.device}`);
      }
      return { event: after, fence: false };
    }
    checkStream(this.backend, after, 'options.after');
    if (after === this.stream) return undefined; // the copy stream itself: already in order
    const fence = this.#fences.pop() ?? this.backend.createEvent();
    fence.record(after);
    return { event: fence, fence: true };
  }

  /**
   * Orders the next copy after `point`. Normally an in-stream wait queued right before the copy (the host never
   * waits). But while an upload submitted earlier (seq below `seq`) is still waiting for a buffer, the point may
   * lie behind a compute-stream wait on that upload's event, whose record is not on the copy stream yet: waiting
   * for it on the copy stream would deadlock, so the copy is issued from JS once the point is reached instead.
   * Returns that host wait, or undefined when the copy may be queued now.
   */
  #waitPoint(point: AfterPoint | undefined, seq: number): Promise<void> | undefined {
    if (point === undefined) return undefined;
    let earlier = false;
    for (const u of this.#unissued) if (u.seq < seq) earlier = true;
    if (earlier) return point.event.synchronize().finally(() => this.#drop(point));
    const done = () => this.#drop(point);
    this.stream.waitEvent(point.event).then(done, done); // on CUDA the wait then refers to this record for good
    return undefined;
  }

  /** Returns a pooled fence once nothing waits on it any more. */
  #drop(point: AfterPoint | undefined): void {
    if (!point?.fence) return;
    if (this.#disposed) point.event.dispose();
    else this.#fences.push(point.event);
  }

  /** A free slot, marked leased; FIFO wait when none is free. */
  #acquireSlot(signal: AbortSignal | undefined): Promise<Slot> {
    if (this.#disposed) return Promise.reject(new DisposedError('StagingRing was disposed'));
    if (this.#waiters.length === 0) {
      const slot = this.#free.shift();
      if (slot) {
        slot.leased = true;
        return Promise.resolve(slot);
      }
    }
    this.#stats.waits++;
    return new Promise<Slot>((resolve, reject) => {
      const onAbort = () => {
        const i = this.#waiters.indexOf(w);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(signal!.reason);
      };
      const w: Waiter = {
        resolve,
        reject,
        cleanup: () => signal?.removeEventListener('abort', onAbort),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(w);
    });
  }

  /** Returns an idle slot to the first waiter, or to the free list. */
  #maybeFree(slot: Slot): void {
    if (slot.leased || slot.pending > 0 || this.#disposed) return;
    const w = this.#waiters.shift();
    if (w) {
      w.cleanup();
      slot.leased = true;
      w.resolve(slot);
      return;
    }
    this.#free.push(slot);
  }

  #checkLive(what: string): void {
    if (this.#disposed) throw new DisposedError(`StagingRing.${what}: the ring was disposed`);
  }

  #checkDevice(t: unknown, what: string): asserts t is DeviceTensor {
    if (!(t instanceof DeviceTensor)) throw new InvalidArgumentError(`${what} must be a DeviceTensor, received ${describe(t)}`);
    const p = t.placement;
    if (p.kind !== 'device' || p.backend !== this.backend.kind || p.device !== this.backend.device) {
      throw new InvalidArgumentError(`${what} must be device memory of ${this.backend.name}, received a tensor on ${p.kind === 'device' ? `${p.backend}:${p.device}` : p.kind}`);
    }
    if (t.disposed) throw new DisposedError(`${what}: DeviceTensor was disposed`);
  }

  #checkFits(bytes: number, what: string): void {
    if (bytes > this.bufferBytes) throw new InvalidArgumentError(`${what} holds ${bytes} bytes, more than a staging buffer's ${this.bufferBytes}`);
  }
}

function checkOptions(options: unknown, what: string): void {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`${what}: options must be an object, received ${describe(options)}`);
  const { signal, after } = options as { signal?: unknown; after?: unknown };
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new InvalidArgumentError(`${what}: options.signal must be an AbortSignal, received ${describe(signal)}`);
  if (after !== undefined && after !== null && !(after instanceof Event) && !(after instanceof Stream)) {
    throw new InvalidArgumentError(`${what}: options.after must be an Event, a Stream or null, received ${describe(after)}`);
  }
}

function checkStream(backend: Backend, s: unknown, what: string): asserts s is Stream {
  if (!(s instanceof Stream)) throw new InvalidArgumentError(`${what} must be a Stream, received ${describe(s)}`);
  if (s.backend !== backend.kind || s.device !== backend.device) {
    throw new InvalidArgumentError(`${what} belongs to ${s.backend}:${s.device}, not to ${backend.name}`);
  }
}
