/**
 * Memory objects with explicit lifetime.
 *
 * - {@link HostTensor}: dtype + shape over a JS TypedArray (ordinary JS memory, or a view of a PinnedBuffer).
 * - {@link PinnedBuffer}: page-locked host memory (cudaHostAlloc on CUDA; page-aligned host memory on the CPU
 *   backend), readable from JS as `bytes` and as HostTensor views.
 * - {@link DeviceTensor}: device memory (cudaMalloc on CUDA; a separate, budgeted host pool on the CPU backend),
 *   reachable only through ops and copies.
 *
 * All have `dispose()` and `[Symbol.dispose]` (so `using t = ...` works), a GC finalizer as a safety net, and
 * throw {@link DisposedError} when used after dispose. Create pinned and device memory through a Backend.
 *
 * @example
 * const be = openBackend();
 * using x = HostTensor.from('bf16', [2, 3], [1, 2, 3, 4, 5, 6]);
 * using dx = be.alloc('bf16', [2, 3]);
 * await be.copy(x, dx);
 */
import { constants as bufferConstants } from 'node:buffer';
import {
  type AnyTypedArray,
  type ArrayFor,
  type DType,
  DTYPE_SIZE,
  allocArray,
  arrayMatches,
  bf16ToF32,
  checkDType,
  describe,
  f16ToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  viewArray,
} from './dtype.js';
import { DisposedError, InvalidArgumentError } from './errors.js';
import type { NativeHostRegistration, NativeMemory, NativeTensorArg } from './native.js';

/** The largest native buffer Node can expose to JS (buffer.constants.MAX_LENGTH: 4 GiB on Node 20). */
export const MAX_VIEW_BYTES: number = bufferConstants.MAX_LENGTH;

export type Shape = readonly number[];

/** Validates a shape (non-negative safe integers, rank <= 8) and returns a frozen copy. */
export function checkShape(shape: unknown, what = 'shape'): readonly number[] {
  if (!Array.isArray(shape)) throw new InvalidArgumentError(`${what} must be an array of sizes, received ${describe(shape)}`);
  if (shape.length > 8) throw new InvalidArgumentError(`${what} must have at most 8 dimensions, received ${shape.length}`);
  // a plain loop and one copy: every tensor and view a step makes comes through here
  const out = new Array<number>(shape.length);
  let n = 1;
  for (let i = 0; i < shape.length; i++) {
    const d: unknown = shape[i];
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new InvalidArgumentError(`${what}[${i}] must be a non-negative integer, received ${describe(d)}`);
    }
    n *= d;
    out[i] = d;
  }
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`${what} ${describe(shape)} has too many elements`);
  return Object.freeze(out);
}

export function numelOf(shape: Shape): number {
  return shape.reduce((a, b) => a * b, 1);
}

function checkByteOffset(byteOffset: unknown, dtype: DType, what: string): number {
  if (typeof byteOffset !== 'number' || !Number.isSafeInteger(byteOffset) || byteOffset < 0) {
    throw new InvalidArgumentError(`${what} must be a non-negative integer, received ${describe(byteOffset)}`);
  }
  if (byteOffset % DTYPE_SIZE[dtype] !== 0) {
    throw new InvalidArgumentError(`${what} must be a multiple of ${DTYPE_SIZE[dtype]} (the size of ${dtype}), received ${byteOffset}`);
  }
  return byteOffset;
}

function checkRange(offset: unknown, length: unknown, total: number): void {
  for (const [v, w] of [[offset, 'offset'], [length, 'length']] as const) {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`${w} must be a non-negative integer, received ${describe(v)}`);
  }
  if ((offset as number) + (length as number) > total) {
    throw new InvalidArgumentError(`bytes [${offset as number}, ${(offset as number) + (length as number)}) exceed the tensor's ${total} bytes`);
  }
}

/** Where a tensor lives, for placement checks and messages. */
export type Placement = { kind: 'js' } | { kind: 'pinned'; backend: 'cpu' | 'cuda' } | { kind: 'device'; backend: 'cpu' | 'cuda'; device: number };

/** Anything an op accepts. */
export interface Tensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly numel: number;
  readonly byteLength: number;
  readonly disposed: boolean;
  /** Bytes [offset, offset + length) of this tensor as a u8 tensor sharing its memory (for chunked copies). */
  bytesView(offset: number, length: number): Tensor;
  /** The same elements as `shape` (same element count), sharing memory. */
  reshape(shape: Shape): Tensor;
  /** Rows [start, start + count) along the first dimension, sharing memory. */
  rows(start: number, count: number): Tensor;
  /** @internal */ nativeArg(what: string): NativeTensorArg;
  /** @internal */ readonly placement: Placement;
}

/**
 * A dtype + shape over a TypedArray: Float32Array (f32), Uint16Array (f16, bf16: raw bits), Int32Array (i32),
 * Uint8Array (u8). Contiguous, row-major.
 *
 * @example
 * const t = new HostTensor('f32', [2, 2]);             // zeros
 * const u = HostTensor.from('bf16', [2], [0.5, -1]);   // numbers converted to bf16 (round to nearest even)
 * u.toFloat32();                                       // Float32Array [0.5, -1]
 */
export class HostTensor<D extends DType = DType> implements Tensor {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly numel: number;
  #data: ArrayFor<D> | undefined;
  readonly #owner: PinnedBuffer | undefined;
  /** dispose() also frees #owner (a tensor Backend.allocHost made: the buffer's only user). */
  #ownsBuffer = false;

  /**
   * @param dtype element type
   * @param shape sizes, e.g. [tokens, hidden]
   * @param data  optional existing array of the dtype's array type and exactly numel elements (not copied)
   */
  constructor(dtype: D, shape: Shape, data?: ArrayFor<D>, owner?: PinnedBuffer) {
    this.dtype = checkDType(dtype, 'dtype') as D;
    this.shape = checkShape(shape);
    this.numel = numelOf(this.shape);
    if (data === undefined) {
      this.#data = allocArray(this.dtype, this.numel);
    } else {
      if (!arrayMatches(this.dtype, data)) {
        throw new InvalidArgumentError(`data for dtype ${dtype} must be a ${allocArray(this.dtype, 0).constructor.name}, received ${describe(data)}`);
      }
      if (data.length !== this.numel) {
        const detached = data.byteLength === 0 && this.numel > 0 ? ' (is its buffer detached?)' : '';
        throw new InvalidArgumentError(`data must have ${this.numel} elements for shape [${this.shape.join(', ')}], received ${data.length}${detached}`);
      }
      this.#data = data;
    }
    this.#owner = owner;
  }

  /** A tensor of `dtype` holding `values` (numbers are converted: f16/bf16 round to nearest even). */
  static from<D extends DType>(dtype: D, shape: Shape, values: ArrayLike<number>): HostTensor<D> {
    const t = new HostTensor(dtype, shape);
    if (values.length !== t.numel) {
      throw new InvalidArgumentError(`values must have ${t.numel} elements for shape [${t.shape.join(', ')}], received ${values.length}`);
    }
    t.set(values);
    return t;
  }

  /** Writes numbers into the tensor, converting to its dtype. */
  set(values: ArrayLike<number>): void {
    const d = this.data as AnyTypedArray;
    if (values.length !== d.length) throw new InvalidArgumentError(`values must have ${d.length} elements, received ${values.length}`);
    if (this.dtype === 'bf16') for (let i = 0; i < d.length; i++) d[i] = f32ToBf16Bits(values[i]!);
    else if (this.dtype === 'f16') for (let i = 0; i < d.length; i++) d[i] = f32ToF16Bits(values[i]!);
    else d.set(values);
  }

  /** The elements. Throws DisposedError after dispose() (or after the owning PinnedBuffer was disposed). */
  get data(): ArrayFor<D> {
    if (this.#data === undefined || (this.#owner !== undefined && this.#owner.disposed)) {
      throw new DisposedError('HostTensor was disposed');
    }
    return this.#data;
  }

  get byteLength(): number {
    return this.numel * DTYPE_SIZE[this.dtype];
  }

  get disposed(): boolean {
    return this.#data === undefined || (this.#owner !== undefined && this.#owner.disposed);
  }

  /** Values as f32 (a copy; bf16/f16 decoded). */
  toFloat32(): Float32Array {
    const d = this.data;
    if (this.dtype === 'bf16') return bf16ToF32(d as Uint16Array);
    if (this.dtype === 'f16') return f16ToF32(d as Uint16Array);
    return Float32Array.from(d as ArrayLike<number>);
  }

  /**
   * Drops the reference to the data (JS memory is reclaimed by the GC; a pinned view leaves its buffer alone; a
   * tensor from Backend.allocHost frees its native memory now, and its views read as disposed).
   */
  dispose(): void {
    this.#data = undefined;
    if (this.#ownsBuffer) this.#owner!.dispose();
  }

  /** @internal A view of all of `buf` that frees it on dispose() (Backend.allocHost). */
  static owning<D extends DType>(buf: PinnedBuffer, dtype: D, shape: Shape): HostTensor<D> {
    const t = buf.tensor(dtype, shape);
    t.#ownsBuffer = true;
    return t;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  get placement(): Placement {
    return this.#owner ? { kind: 'pinned', backend: this.#owner.backendKind } : { kind: 'js' };
  }

  /** The same elements as `shape` (same element count), sharing memory. @example x.reshape([t, heads, headDim]) */
  reshape(shape: Shape): HostTensor<D> {
    const s = checkReshape(this, shape);
    const d = this.data;
    return new HostTensor(this.dtype, s, d, this.#owner);
  }

  /** Rows [start, start + count) along the first dimension, sharing memory. @example logits.rows(t - 1, 1) */
  rows(start: number, count: number): HostTensor<D> {
    const { shape, begin, length } = rowRange(this, start, count);
    const d = this.data as AnyTypedArray;
    return new HostTensor(this.dtype, shape, d.subarray(begin, begin + length) as ArrayFor<D>, this.#owner);
  }

  bytesView(offset: number, length: number): HostTensor<'u8'> {
    const d = this.data;
    checkRange(offset, length, d.byteLength);
    return new HostTensor('u8', [length], new Uint8Array(d.buffer, d.byteOffset + offset, length), this.#owner);
  }

  /** @internal */
  nativeArg(what: string): NativeTensorArg {
    if (this.disposed) throw new DisposedError(`${what}: HostTensor was disposed`);
    const d = this.#data!;
    if (this.#owner) return [this.#owner.nativeMemory(what), d.byteOffset, d.byteLength];
    return [d, 0, d.byteLength];
  }
}

/**
 * Page-locked host memory: cudaHostAlloc (portable, mapped) on CUDA backends, page-aligned host memory on the
 * CPU backend. Fill it from JS through `bytes` or `tensor()` views; copies from it to the GPU run at full PCIe
 * speed and asynchronously. Allocate with `backend.allocPinned(bytes)`.
 *
 * @example
 * using buf = be.allocPinned(1 << 20);
 * const x = buf.tensor('bf16', [256, 2048]);   // a HostTensor view, valid until buf is disposed
 */
export class PinnedBuffer {
  readonly backendKind: 'cpu' | 'cuda';
  readonly byteLength: number;
  #mem: NativeMemory | undefined;
  #bytes: Uint8Array | undefined;

  /** @internal use Backend.allocPinned */
  constructor(mem: NativeMemory, backendKind: 'cpu' | 'cuda') {
    this.#mem = mem;
    this.backendKind = backendKind;
    this.byteLength = mem.byteLength;
  }

  get disposed(): boolean {
    return this.#mem === undefined;
  }

  /** The whole buffer as bytes (detached, length 0, after dispose). */
  get bytes(): Uint8Array {
    const mem = this.nativeMemory('PinnedBuffer.bytes');
    this.#bytes ??= new Uint8Array(this.#arrayBuffer(mem, 'PinnedBuffer.bytes'), 0, this.byteLength);
    return this.#bytes;
  }

  /**
   * The JS view of the whole buffer. Node exposes native memory to JS as an external buffer of at most
   * buffer.constants.MAX_LENGTH bytes (4 GiB on Node 20; a larger one aborted the process), so larger pinned
   * buffers have no JS views: allocate them in parts (ops still take their native memory).
   */
  #arrayBuffer(mem: NativeMemory, what: string): ArrayBuffer {
    if (this.byteLength > MAX_VIEW_BYTES) {
      throw new InvalidArgumentError(`${what}: a JS view needs a buffer of at most ${MAX_VIEW_BYTES} bytes (Node's limit for external buffers), this one has ${this.byteLength}: allocate it in parts`);
    }
    return mem.arrayBuffer();
  }

  /** A HostTensor view of `shape` x `dtype` starting at `byteOffset` (a multiple of the element size). */
  tensor<D extends DType>(dtype: D, shape: Shape, byteOffset = 0): HostTensor<D> {
    const mem = this.nativeMemory('PinnedBuffer.tensor');
    checkDType(dtype, 'dtype');
    const s = checkShape(shape);
    checkByteOffset(byteOffset, dtype, 'byteOffset');
    const bytes = numelOf(s) * DTYPE_SIZE[dtype];
    if (byteOffset + bytes > this.byteLength) {
      throw new InvalidArgumentError(`a view of ${bytes} bytes at byteOffset ${byteOffset} does not fit the buffer's ${this.byteLength} bytes`);
    }
    return new HostTensor(dtype, s, viewArray(dtype, this.#arrayBuffer(mem, 'PinnedBuffer.tensor'), byteOffset, numelOf(s)), this);
  }

  /** Frees the memory now (or, if an op still uses it, as soon as that op settles). Views become unusable. */
  dispose(): void {
    this.#mem?.dispose();
    this.#mem = undefined;
    this.#bytes = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  nativeMemory(what: string): NativeMemory {
    if (!this.#mem) throw new DisposedError(`${what}: PinnedBuffer was disposed`);
    return this.#mem;
  }
}

/** Shared state of a device allocation and all its views. */
class DeviceAllocation {
  constructor(
    public mem: NativeMemory | undefined,
    readonly backend: 'cpu' | 'cuda',
    readonly device: number,
    readonly byteLength: number,
  ) {}
}

/**
 * Device memory: cudaMalloc on a CUDA backend, a separate budgeted host pool on the CPU backend (so the expert
 * cache and the runtime exercise real capacity limits without a GPU). Read and write it with copies and ops.
 * Allocate with `backend.alloc(dtype, shape)`.
 *
 * @example
 * using w = be.alloc('bf16', [4096, 14336]);
 * const half = w.view('bf16', [2048, 14336], 2048 * 14336 * 2);  // shares w's memory
 */
export class DeviceTensor<D extends DType = DType> implements Tensor {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly numel: number;
  readonly byteOffset: number;
  readonly #alloc: DeviceAllocation;
  readonly #root: boolean;
  #disposed = false;

  /** @internal use Backend.alloc */
  constructor(alloc: DeviceAllocation, dtype: D, shape: readonly number[], byteOffset: number, root: boolean) {
    this.#alloc = alloc;
    this.dtype = dtype;
    this.shape = shape;
    this.numel = numelOf(shape);
    this.byteOffset = byteOffset;
    this.#root = root;
  }

  /** @internal */
  static allocate<D extends DType>(mem: NativeMemory, backend: 'cpu' | 'cuda', device: number, dtype: D, shape: readonly number[]): DeviceTensor<D> {
    return new DeviceTensor(new DeviceAllocation(mem, backend, device, mem.byteLength), dtype, shape, 0, true);
  }

  get byteLength(): number {
    return this.numel * DTYPE_SIZE[this.dtype];
  }

  get disposed(): boolean {
    return this.#disposed || this.#alloc.mem === undefined;
  }

  get placement(): Placement {
    return { kind: 'device', backend: this.#alloc.backend, device: this.#alloc.device };
  }

  /** A tensor sharing this memory: `shape` x `dtype` at `byteOffset` bytes from the start of the allocation. */
  view<E extends DType>(dtype: E, shape: Shape, byteOffset = 0): DeviceTensor<E> {
    if (this.disposed) throw new DisposedError('DeviceTensor.view: the tensor was disposed');
    checkDType(dtype, 'dtype');
    const s = checkShape(shape);
    checkByteOffset(byteOffset, dtype, 'byteOffset');
    const bytes = numelOf(s) * DTYPE_SIZE[dtype];
    if (byteOffset + bytes > this.#alloc.byteLength) {
      throw new InvalidArgumentError(`a view of ${bytes} bytes at byteOffset ${byteOffset} does not fit the allocation's ${this.#alloc.byteLength} bytes`);
    }
    return new DeviceTensor(this.#alloc, dtype, s, byteOffset, false);
  }

  /** The same elements as `shape` (same element count), sharing memory. */
  reshape(shape: Shape): DeviceTensor<D> {
    if (this.disposed) throw new DisposedError('DeviceTensor.reshape: the tensor was disposed');
    return new DeviceTensor(this.#alloc, this.dtype, checkReshape(this, shape), this.byteOffset, false);
  }

  /** Rows [start, start + count) along the first dimension, sharing memory. */
  rows(start: number, count: number): DeviceTensor<D> {
    if (this.disposed) throw new DisposedError('DeviceTensor.rows: the tensor was disposed');
    const { shape, begin } = rowRange(this, start, count);
    return new DeviceTensor(this.#alloc, this.dtype, shape, this.byteOffset + begin * DTYPE_SIZE[this.dtype], false);
  }

  bytesView(offset: number, length: number): DeviceTensor<'u8'> {
    if (this.disposed) throw new DisposedError('DeviceTensor.bytesView: the tensor was disposed');
    checkRange(offset, length, this.byteLength);
    return new DeviceTensor(this.#alloc, 'u8', Object.freeze([length]), this.byteOffset + offset, false);
  }

  /** Frees the allocation (when called on the tensor returned by alloc) or retires this view. */
  dispose(): void {
    if (this.#root) {
      this.#alloc.mem?.dispose();
      this.#alloc.mem = undefined;
    }
    this.#disposed = true;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  nativeArg(what: string): NativeTensorArg {
    if (this.disposed || !this.#alloc.mem) throw new DisposedError(`${what}: DeviceTensor was disposed`);
    return [this.#alloc.mem, this.byteOffset, this.byteLength];
  }
}

/**
 * Existing JS memory page-locked for fast, asynchronous CUDA copies (cudaHostRegister) — for buffers you already
 * have (a tensor read from disk, an output array) where allocating a PinnedBuffer and copying would cost more.
 * Keeps the tensor's memory alive until dispose(), which unregisters it; await the copies that use it first.
 * On the CPU backend registration has nothing to lock and only holds the memory. Create with
 * `backend.registerHost(tensor)`.
 *
 * @example
 * using reg = be.registerHost(logits);      // logits: a HostTensor in JS memory
 * await be.copy(deviceLogits, logits);      // D2H straight into it, at pinned speed on CUDA
 */
export class HostRegistration {
  readonly tensor: HostTensor;
  #native: NativeHostRegistration | undefined;

  /** @internal use Backend.registerHost */
  constructor(tensor: HostTensor, reg: NativeHostRegistration) {
    this.tensor = tensor;
    this.#native = reg;
  }

  get disposed(): boolean {
    return this.#native === undefined;
  }

  dispose(): void {
    this.#native?.dispose();
    this.#native = undefined;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function checkReshape(t: Tensor, shape: Shape): readonly number[] {
  const s = checkShape(shape);
  if (numelOf(s) !== t.numel) {
    throw new InvalidArgumentError(`shape must have ${t.numel} elements (the tensor's [${t.shape.join(', ')}]), received [${s.join(', ')}]`);
  }
  return Object.freeze([...s]);
}

/** Shape and element range of rows [start, start + count) of t's first dimension. */
function rowRange(t: Tensor, start: number, count: number): { shape: readonly number[]; begin: number; length: number } {
  if (t.shape.length < 1) throw new InvalidArgumentError('rows: the tensor has no first dimension (it is a scalar)');
  const n = t.shape[0]!;
  if (!Number.isSafeInteger(start) || start < 0 || start > n) throw new InvalidArgumentError(`start must be an integer in [0, ${n}], received ${describe(start)}`);
  if (!Number.isSafeInteger(count) || count < 0 || start + count > n) {
    throw new InvalidArgumentError(`count must be an integer in [0, ${n - start}] (rows after start ${start}), received ${describe(count)}`);
  }
  const row = n === 0 ? 0 : t.numel / n;
  return { shape: Object.freeze([count, ...t.shape.slice(1)]), begin: start * row, length: count * row };
}

/** Elements of the panel64 form of an [n, k] weight: ceil(n / 64) · 64 · ceil(k / 2) · 2 (cpp/cpu/pack_weights.h). */
export function packedNumel(n: number, k: number): number {
  return Math.ceil(n / 64) * 64 * Math.ceil(k / 2) * 2;
}

/**
 * A bf16 weight [n, k] (nn.Linear layout, y = x wᵀ) stored in the CPU kernels' panel64 layout: panels of 64 output
 * columns, each [ceil(k/2)][64][2], so `gemm` runs it as outer products (no horizontal sums, one contiguous stream
 * per panel). Made by `Backend.packWeights`; accepted as gemm's `b` on the CPU backend. `shape` is the logical
 * [n, k]; the storage holds `packedNumel(n, k)` values (zero padding), so rows cannot be viewed.
 * @example
 * const wp = await be.packWeights(w);   // w: HostTensor bf16 [N, K]
 * await be.gemm(x, wp, y);               // same as be.gemm(x, w, y) within rounding, faster at every m
 */
export class PackedTensor implements Tensor {
  readonly dtype = 'bf16' as const;
  readonly layout = 'panel64' as const;
  readonly shape: readonly number[];
  readonly numel: number;
  /** The packed values: [packedNumel(n, k)] bf16, in host memory or (CPU backend) its device pool. */
  readonly storage: HostTensor<'bf16'> | DeviceTensor<'bf16'>;

  /** @internal use Backend.packWeights or PackedTensor.wrap */
  constructor(n: number, k: number, storage: HostTensor<'bf16'> | DeviceTensor<'bf16'>) {
    this.shape = Object.freeze([n, k]);
    this.numel = n * k;
    this.storage = storage;
  }

  /**
   * A packed [n, k] weight over existing memory (an expert store's or slot pool's bytes): `storage` must be bf16 with
   * exactly packedNumel(n, k) elements. Its contents are whatever the memory holds (fill it with packWeightsInto).
   */
  static wrap(storage: HostTensor | DeviceTensor, n: number, k: number): PackedTensor {
    for (const [v, w] of [[n, 'n'], [k, 'k']] as const) {
      if (!Number.isSafeInteger(v) || v < 1) throw new InvalidArgumentError(`${w} must be a positive integer, received ${describe(v)}`);
    }
    if (!(storage instanceof HostTensor) && !(storage instanceof DeviceTensor)) {
      throw new InvalidArgumentError(`storage must be a HostTensor or DeviceTensor, received ${describe(storage)}`);
    }
    if (storage.dtype !== 'bf16' || storage.numel !== packedNumel(n, k)) {
      throw new InvalidArgumentError(`storage must be bf16 with ${packedNumel(n, k)} elements (packed [${n}, ${k}]), received ${storage.dtype} with ${storage.numel}`);
    }
    return new PackedTensor(n, k, storage as HostTensor<'bf16'> | DeviceTensor<'bf16'>);
  }

  get byteLength(): number {
    return this.storage.byteLength;
  }

  get disposed(): boolean {
    return this.storage.disposed;
  }

  get placement(): Placement {
    return this.storage.placement;
  }

  dispose(): void {
    this.storage.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** Bytes of the packed storage. */
  bytesView(offset: number, length: number): Tensor {
    return this.storage.bytesView(offset, length);
  }

  reshape(_shape?: Shape): never {
    throw new InvalidArgumentError(`a packed weight [${this.shape.join(', ')}] cannot be reshaped (panel64 layout)`);
  }

  rows(_start?: number, _count?: number): never {
    throw new InvalidArgumentError(`rows of a packed weight [${this.shape.join(', ')}] cannot be viewed (panel64 layout)`);
  }

  nativeArg(what: string): NativeTensorArg {
    if (this.disposed) throw new DisposedError(`${what}: PackedTensor was disposed`);
    return this.storage.nativeArg(what);
  }
}
