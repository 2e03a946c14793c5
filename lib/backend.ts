/**
 * Backends: where memory lives and ops run. `openBackend()` picks CUDA when it is usable and the CPU otherwise
 * (option `backend`, or env MOE_OFFLOAD_BACKEND = auto | cpu | cuda). The CPU backend runs every op with the
 * best kernel tier of this CPU (scalar, avx2, avx512, avx512bf16; option `isa` or env MOE_OFFLOAD_ISA lower it).
 *
 * Every op returns a Promise, runs off the JS thread (CPU kernels on the package's own thread pool), is queued
 * on a Stream (the backend's default stream unless `stream` is given) and accepts an AbortSignal. The Promise
 * resolves with the kernel tier that ran.
 *
 * @example
 * import { openBackend, HostTensor } from 'moe-offload';
 * const be = openBackend();                               // cuda if usable, else cpu
 * const x = HostTensor.from('bf16', [2, 3], [1, 2, 3, 4, 5, 6]);
 * const w = HostTensor.from('bf16', [4, 3], new Array(12).fill(0.5));
 * const y = new HostTensor('f32', [2, 4]);
 * if (be.kind === 'cpu') await be.gemm(x, w, y);          // y = x w^T; on cuda: upload first (be.upload)
 */
import { type DType, DTYPE_CODE, DTYPE_SIZE, checkDType, describe } from './dtype.js';
import {
  BackendUnavailableError,
  CANCELLED_CODE,
  InvalidArgumentError,
  fromNative,
} from './errors.js';
import { type KernelTier, type NativeAddon, type NativeCancelToken, type NativeMemory, type NativeOpTiming, type NativeStream, hostFacts, native } from './native.js';
import { Event, Stream } from './stream.js';
import { DeviceTensor, HostRegistration, HostTensor, MAX_VIEW_BYTES, PackedTensor, PinnedBuffer, type Shape, type Tensor, checkShape, numelOf, packedNumel } from './tensor.js';
import { ExpertTable, type MoeActivation, activationParams } from './moe.js';

export type BackendKind = 'cpu' | 'cuda';
export type CpuIsa = 'scalar' | 'avx2' | 'avx512' | 'avx512bf16';
export const CPU_ISAS: readonly CpuIsa[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];

export interface BackendOptions {
  /** 'auto' (default; env MOE_OFFLOAD_BACKEND overrides the default): cuda when usable, else cpu. */
  backend?: 'auto' | BackendKind;
  /** CUDA device index (default 0). */
  device?: number;
  /** CPU kernel tier (default: the best this CPU has, capped by env MOE_OFFLOAD_ISA). */
  isa?: CpuIsa;
  /**
   * Ops of this Backend object default to a stream of its own (made on first use) instead of the one every Backend of
   * the device shares (default false): its work then runs beside theirs, ordered against it by events.
   * @example
   * const host = openBackend({ backend: 'cpu', ownStream: true });   // host.stream !== openBackend({ backend: 'cpu' }).stream
   */
  ownStream?: boolean;
}

export interface OpOptions {
  /** Stream to queue the op on (default: the backend's default stream). */
  stream?: Stream;
  /** Aborting rejects the op with the signal's reason; a queued op never starts, a running CPU kernel stops. */
  signal?: AbortSignal;
  /**
   * Filled when the op succeeds: when it started and finished running on its stream's thread, in `performance.now()`
   * time (no event ops, no waiting: a queued op's own run). On a CUDA stream: `startMs` when its kernels began to be
   * queued there, `endMs` when the host saw the GPU finish them.
   * @example
   * const t: OpTiming = {};
   * await be.attention(params, { timing: t });   // t.endMs - t.startMs: the kernel's time on the CPU
   */
  timing?: OpTiming;
}

/** See {@link OpOptions.timing}. */
export interface OpTiming {
  startMs?: number;
  endMs?: number;
}

/** performance.now() minus the monotonic clock the addon's stream threads read (ms; both CLOCK_MONOTONIC on Linux). */
const MONOTONIC_TO_NOW = performance.now() - Number(process.hrtime.bigint()) / 1e6;

/** What `listBackends()` reports for each backend this binary knows. */
export interface BackendStatus {
  /** 'cpu-scalar' | 'cpu-avx2' | 'cpu-avx512' | 'cpu-avx512bf16' | 'cuda:0' ... ('cuda' when none is usable) */
  name: string;
  kind: BackendKind;
  isa?: CpuIsa;
  device?: number;
  available: boolean;
  /** Why it is unavailable. */
  reason?: string;
}

const KIND_CODE = { cpu: 0, cuda: 1 } as const;
const ISA_CODE: Record<CpuIsa, number> = { scalar: 0, avx2: 1, avx512: 2, avx512bf16: 3 };

function cpuIsaStatus(isa: CpuIsa): { available: boolean; reason?: string } {
  const cpu = hostFacts().cpu;
  if (ISA_CODE[isa] > ISA_CODE[cpu.bestIsa as CpuIsa]) {
    const lacks = isa === 'avx2' ? 'avx2/fma/f16c' : isa === 'avx512' ? 'avx512f/bw/vl/dq' : 'avx512_bf16';
    return { available: false, reason: `this CPU (${cpu.model}) lacks ${lacks}` };
  }
  if (ISA_CODE[isa] > ISA_CODE[cpu.isaCap as CpuIsa]) {
    return { available: false, reason: `capped by MOE_OFFLOAD_ISA=${process.env.MOE_OFFLOAD_ISA ?? cpu.isaCap}` };
  }
  return { available: true };
}

/** Every backend this binary can name, available or not, with the reason when not. */
export function listBackends(): BackendStatus[] {
  const out: BackendStatus[] = CPU_ISAS.map((isa) => ({ name: `cpu-${isa}`, kind: 'cpu' as const, isa, ...cpuIsaStatus(isa) }));
  const cuda = hostFacts().cuda;
  if (cuda.available && cuda.devices.length > 0) {
    for (const d of cuda.devices) out.push({ name: `cuda:${d.index}`, kind: 'cuda', device: d.index, available: true });
  } else {
    out.push({ name: 'cuda', kind: 'cuda', available: false, reason: cuda.reason ?? 'CUDA unavailable' });
  }
  return out;
}

/** Why CUDA cannot be used here, or undefined when it can. */
export function cudaUnavailableReason(device = 0): string | undefined {
  const cuda = hostFacts().cuda;
  if (!cuda.available) return cuda.reason ?? 'CUDA unavailable';
  if (!cuda.devices.some((d) => d.index === device)) {
    return `no CUDA device ${device} (found ${cuda.devices.length}: ${cuda.devices.map((d) => d.name).join(', ')})`;
  }
  return undefined;
}

const defaultStreams = new Map<string, Stream>();
let allocStream: NativeStream | undefined;
let prefaultStream: NativeStream | undefined;

/** A host thread of its own for allocations (page-locking gigabytes must not wait behind, or stall, compute). */
function allocationStream(addon: NativeAddon): NativeStream {
  if (!allocStream || allocStream.disposed) allocStream = new addon.Stream(0, 0, 0);
  return allocStream;
}

/** Another for prefaults (a KV cache of gigabytes takes seconds: allocations must not wait behind it). */
function prefaultingStream(addon: NativeAddon): NativeStream {
  if (!prefaultStream || prefaultStream.disposed) prefaultStream = new addon.Stream(0, 0, 0);
  return prefaultStream;
}

/**
 * Opens a backend.
 * @throws BackendUnavailableError when `backend: 'cuda'` (or env MOE_OFFLOAD_BACKEND=cuda) cannot run here, or a
 *   requested CPU tier is missing; InvalidArgumentError for unknown options.
 * @example
 * openBackend()                                   // auto
 * openBackend({ backend: 'cpu', isa: 'avx2' })    // force a tier (tests cover every path this way)
 */
export function openBackend(options: BackendOptions = {}): Backend {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
  }
  const env = process.env.MOE_OFFLOAD_BACKEND;
  let requested = options.backend ?? (env === undefined || env === '' ? 'auto' : env);
  if (requested !== 'auto' && requested !== 'cpu' && requested !== 'cuda') {
    const src = options.backend === undefined ? 'env MOE_OFFLOAD_BACKEND' : 'options.backend';
    throw new InvalidArgumentError(`${src} must be 'auto', 'cpu' or 'cuda', received ${describe(requested)}`);
  }
  const device = options.device ?? 0;
  if (!Number.isSafeInteger(device) || device < 0) {
    throw new InvalidArgumentError(`options.device must be a non-negative integer, received ${describe(options.device)}`);
  }
  if (options.isa !== undefined && !CPU_ISAS.includes(options.isa)) {
    throw new InvalidArgumentError(`options.isa must be one of ${CPU_ISAS.join(', ')}, received ${describe(options.isa)}`);
  }
  if (options.ownStream !== undefined && typeof options.ownStream !== 'boolean') {
    throw new InvalidArgumentError(`options.ownStream must be a boolean, received ${describe(options.ownStream)}`);
  }
  const own = options.ownStream === true;
  const facts = hostFacts();
  if (requested === 'auto') requested = cudaUnavailableReason(device) === undefined ? 'cuda' : 'cpu';
  if (requested === 'cuda') {
    const why = cudaUnavailableReason(device);
    if (why !== undefined) throw new BackendUnavailableError(`cuda backend unavailable: ${why}`);
    return new Backend('cuda', device, facts.cpu.isa as CpuIsa, own);
  }
  const isa = options.isa ?? (facts.cpu.isa as CpuIsa);
  const st = cpuIsaStatus(isa);
  if (!st.available) throw new BackendUnavailableError(`cpu-${isa} unavailable: ${st.reason}`);
  return new Backend('cpu', 0, isa, own);
}

/**
 * Whether loadModel packs weights (`packWeights`) by default on `be`: on the CPU backend's avx512bf16 tier, where the
 * packed kernels are as fast at one row and faster from 8 rows up. On avx2 / avx512 they lose at one row, so
 * packing is opt-in there; CUDA has no packed layout. profileModel and the benches follow the same rule.
 */
export function packsWeightsByDefault(be: Backend): boolean {
  return be.kind === 'cpu' && be.isa === 'avx512bf16';
}

/**
 * A backend: allocate memory, create streams and events, run ops. Obtain one with {@link openBackend}.
 * On 'cpu', ops accept HostTensors (JS or pinned memory) and CPU DeviceTensors. On 'cuda', compute ops take
 * DeviceTensors of this device; `copy` moves bytes between any memory and the device.
 */
export class Backend {
  readonly kind: BackendKind;
  readonly device: number;
  /** CPU kernel tier used by this backend's CPU ops. */
  readonly isa: CpuIsa;
  /** 'cpu-avx512bf16', 'cuda:0', ... */
  readonly name: string;

  readonly #ownStream: boolean;
  #stream: Stream | undefined; // with ownStream

  /** @internal use openBackend */
  constructor(kind: BackendKind, device: number, isa: CpuIsa, ownStream = false) {
    this.kind = kind;
    this.device = device;
    this.isa = isa;
    this.name = kind === 'cuda' ? `cuda:${device}` : `cpu-${isa}`;
    this.#ownStream = ownStream;
  }

  /**
   * The compute device's memory now, bytes: the GPU's free and total on CUDA (cudaMemGetInfo); undefined on the CPU
   * backend (its memory is the host's).
   * @example
   * const gpu = be.memoryInfo();   // { free: 80.1e9, total: 85.0e9 } on an H100
   */
  memoryInfo(): { free: number; total: number } | undefined {
    return this.kind === 'cuda' ? native().cudaMemInfo(this.device) : undefined;
  }

  /** The default stream (shared by every Backend object of the same device, unless opened with `ownStream`). */
  get stream(): Stream {
    if (this.#ownStream) {
      if (!this.#stream || this.#stream.disposed) this.#stream = this.createStream();
      return this.#stream;
    }
    const key = `${this.kind}:${this.device}`;
    let s = defaultStreams.get(key);
    if (!s || s.disposed) {
      s = this.createStream();
      defaultStreams.set(key, s);
    }
    return s;
  }

  /** A new stream. priority 'high' maps to the highest CUDA stream priority (demand fetches, say). */
  createStream(options: { priority?: 'normal' | 'high' } = {}): Stream {
    const p = options.priority ?? 'normal';
    if (p !== 'normal' && p !== 'high') throw new InvalidArgumentError(`priority must be 'normal' or 'high', received ${describe(p)}`);
    const addon = native();
    return wrapSync(() => new Stream(new addon.Stream(KIND_CODE[this.kind], this.device, p === 'high' ? 1 : 0), this.kind, this.device));
  }

  /** A new event; `timing: true` allows elapsedMs(). */
  createEvent(options: { timing?: boolean } = {}): Event {
    const addon = native();
    const timing = options.timing ?? false;
    return wrapSync(() => new Event(new addon.Event(KIND_CODE[this.kind], this.device, timing), this.kind, this.device, timing));
  }

  /**
   * Device memory for a tensor (cudaMalloc on CUDA, the CPU pool on CPU; contents undefined).
   * @throws OutOfMemoryError when the device (or the CPU pool budget, env MOE_OFFLOAD_CPU_DEVICE_MEMORY) is full.
   */
  alloc<D extends DType>(dtype: D, shape: Shape): DeviceTensor<D> {
    checkDType(dtype, 'dtype');
    const s = checkShape(shape);
    const bytes = numelOf(s) * DTYPE_SIZE[dtype];
    const addon = native();
    return wrapSync(() => DeviceTensor.allocate(new addon.Memory(KIND_CODE[this.kind], this.device, 1, bytes), this.kind, this.device, dtype, s));
  }

  /**
   * alloc() off the JS thread: the allocation runs on a host thread of its own (cudaMalloc can take milliseconds).
   * Aborting before it starts rejects with the signal's reason; nothing is left allocated on any failure.
   */
  async allocAsync<D extends DType>(dtype: D, shape: Shape, options: { signal?: AbortSignal } = {}): Promise<DeviceTensor<D>> {
    checkDType(dtype, 'dtype');
    const s = checkShape(shape);
    const mem = await this.#allocNative(1, numelOf(s) * DTYPE_SIZE[dtype], options.signal);
    return DeviceTensor.allocate(mem, this.kind, this.device, dtype, s);
  }

  /**
   * allocPinned() off the JS thread: page-locking (cudaHostAlloc) costs a noticeable fraction of a second per GiB,
   * so large pinned stores should use this. Aborting before it starts rejects with the signal's reason.
   * @example
   * const buf = await be.allocPinnedAsync(4 << 30);
   */
  async allocPinnedAsync(bytes: number, options: { signal?: AbortSignal; prefault?: boolean } = {}): Promise<PinnedBuffer> {
    if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes < 0) {
      throw new InvalidArgumentError(`bytes must be a non-negative integer, received ${describe(bytes)}`);
    }
    if (options.prefault !== undefined && typeof options.prefault !== 'boolean') {
      throw new InvalidArgumentError(`options.prefault must be a boolean, received ${describe(options.prefault)}`);
    }
    const buf = new PinnedBuffer(await this.#allocNative(0, bytes, options.signal), this.kind);
    if (!options.prefault) return buf;
    try {
      await this.prefault(buf, options.signal ? { signal: options.signal } : {});
    } catch (e) {
      buf.dispose();
      throw e;
    }
    return buf;
  }

  /**
   * Maps in every page of `buf` now, off the JS thread, instead of in whichever op first writes each page. On the
   * CPU backend big buffers are fresh mappings that fault in page by page on first write (~11 us per 4 KiB page on
   * the development VM: 256 MiB cost 0.4-0.7 s, paid inside the first steps that wrote a KV cache's pages); the
   * pages are filled in as a write would (MADV_POPULATE_WRITE) without changing a byte, so ops may use the buffer
   * meanwhile. Resolves true when it populated; false on CUDA (page-locked memory is resident already) and on
   * kernels without the call (Linux < 5.14). The buffer's pages then count as resident memory.
   * @throws OutOfMemoryError when the pages cannot be backed; DisposedError for a disposed buffer; the signal's
   *   reason when aborted.
   * @example
   * const kv = be.allocPinned(1 << 30);
   * await be.prefault(kv);   // the first steps write resident pages
   */
  async prefault(buf: PinnedBuffer, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    if (!(buf instanceof PinnedBuffer)) throw new InvalidArgumentError(`buf must be a PinnedBuffer, received ${describe(buf)}`);
    return offThread(options.signal, this.prefault, async (cancel) => {
      const mem = buf.nativeMemory('prefault');
      if (this.kind !== 'cpu') return false;
      const addon = native();
      return addon.prefaultAsync(prefaultingStream(addon), mem, cancel);
    });
  }

  #allocNative(kind: 0 | 1, bytes: number, signal: AbortSignal | undefined): Promise<NativeMemory> {
    return offThread(signal, this.#allocNative, (cancel) => {
      const addon = native();
      return addon.allocAsync(allocationStream(addon), { backend: KIND_CODE[this.kind], device: this.device, kind, bytes }, cancel);
    });
  }

  /**
   * Page-locked host memory of `bytes` bytes. On the CPU backend: zeroed from 4 MiB (fresh pages on transparent huge
   * pages); smaller buffers hold whatever the heap had.
   */
  allocPinned(bytes: number): PinnedBuffer {
    if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes < 0) {
      throw new InvalidArgumentError(`bytes must be a non-negative integer, received ${describe(bytes)}`);
    }
    const addon = native();
    return wrapSync(() => new PinnedBuffer(new addon.Memory(KIND_CODE[this.kind], this.device, 0, bytes), this.kind));
  }

  /**
   * A zeroed HostTensor for large, long-lived data the CPU kernels stream (weights, packed weights). On the CPU
   * backend, from 4 MiB (up to MAX_VIEW_BYTES), it is a view of native memory on transparent huge pages (2 MiB
   * aligned, madvise'd; cpp/napi/memory.cc), not of JS memory on 4 KiB pages: a batch-1 GEMV streams such a
   * weight 4-17% faster (LM heads and projections, AVX2: bench/host-memory.ts), since every 4 KiB page it crosses
   * costs a TLB miss. Its dispose() frees that memory at once (views of it then read as disposed); else the GC
   * does. On CUDA, and smaller: a plain JS HostTensor (page-locking host memory is for staging copies, and is slow
   * to allocate).
   * @example
   * const w = be.allocHost('bf16', [151936, 2048]);
   * await checkpoint.read('lm_head.weight', w);
   */
  allocHost<D extends DType>(dtype: D, shape: Shape): HostTensor<D> {
    const { s, nativeBytes } = this.#hostPlacement(dtype, shape);
    if (nativeBytes === undefined) return new HostTensor(dtype, s);
    return HostTensor.owning(this.allocPinned(nativeBytes), dtype, s); // fresh pages: zero
  }

  /**
   * allocHost() with its pages mapped in off the JS thread (allocPinnedAsync with prefault): memory a loader fills
   * at once (weights, packed weights), where faulting the pages in one by one as the data arrives costs more than
   * the data (this VM: ~11 us per 4 KiB page, a 3 MB tensor packed into fresh memory 15x slower than into mapped).
   * Small and JS-memory tensors as allocHost gives them.
   * @example
   * const w = await be.allocHostAsync('bf16', [151936, 2048]);   // 622 MB, mapped in
   */
  async allocHostAsync<D extends DType>(dtype: D, shape: Shape, options: { signal?: AbortSignal } = {}): Promise<HostTensor<D>> {
    const { s, nativeBytes } = this.#hostPlacement(dtype, shape);
    if (nativeBytes === undefined) return new HostTensor(dtype, s);
    return HostTensor.owning(await this.allocPinnedAsync(nativeBytes, { ...(options.signal ? { signal: options.signal } : {}), prefault: true }), dtype, s);
  }

  /**
   * allocHost's rule: the checked shape, and the bytes of native memory on transparent huge pages it gets (the CPU
   * backend, from the addon's huge-page size native().hugePageMin up to MAX_VIEW_BYTES), or undefined: JS memory.
   */
  #hostPlacement(dtype: DType, shape: Shape): { s: Shape; nativeBytes: number | undefined } {
    checkDType(dtype, 'dtype');
    const s = checkShape(shape);
    const bytes = numelOf(s) * DTYPE_SIZE[dtype];
    return { s, nativeBytes: this.kind !== 'cpu' || bytes < native().hugePageMin || bytes > MAX_VIEW_BYTES ? undefined : bytes };
  }

  /**
   * Page-locks a HostTensor's existing JS memory for fast asynchronous copies (cudaHostRegister on CUDA; on the
   * CPU backend nothing to lock, the registration only holds the memory). See {@link HostRegistration}.
   * @throws InvalidArgumentError for a pinned view (already page-locked) or an empty tensor; CudaError if CUDA refuses.
   */
  registerHost(t: HostTensor): HostRegistration {
    if (!(t instanceof HostTensor)) throw new InvalidArgumentError(`t must be a HostTensor, received ${describe(t)}`);
    if (t.placement.kind !== 'js') throw new InvalidArgumentError('t is a view of a PinnedBuffer: already page-locked');
    if (t.byteLength === 0) throw new InvalidArgumentError('t must not be empty');
    const addon = native();
    const data = t.data;
    return wrapSync(() => new HostRegistration(t, new addon.HostRegistration(data, this.kind === 'cuda')));
  }

  /** Resolves when the default stream has finished everything queued so far. */
  synchronize(): Promise<void> {
    return this.stream.synchronize();
  }

  /** Allocates device memory and copies `host` into it. */
  async upload<D extends DType>(host: HostTensor<D>, options: OpOptions = {}): Promise<DeviceTensor<D>> {
    if (!(host instanceof HostTensor)) throw new InvalidArgumentError(`host must be a HostTensor, received ${describe(host)}`);
    const d = this.alloc(host.dtype, host.shape);
    try {
      await this.copy(host, d, options);
    } catch (e) {
      d.dispose();
      throw e;
    }
    return d;
  }

  /** Copies a device tensor into a new HostTensor. */
  async download<D extends DType>(dev: DeviceTensor<D>, options: OpOptions = {}): Promise<HostTensor<D>> {
    if (!(dev instanceof DeviceTensor)) throw new InvalidArgumentError(`dev must be a DeviceTensor, received ${describe(dev)}`);
    const h = new HostTensor(dev.dtype, dev.shape);
    await this.copy(dev, h, options);
    return h;
  }

  /**
   * Copies bytes: src and dst hold the same number of bytes (dtypes and shapes may differ); any direction
   * between JS, pinned and device memory; must not overlap.
   */
  copy(src: Tensor, dst: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(src, 'src');
    checkTensor(dst, 'dst');
    if (src.byteLength !== dst.byteLength) {
      throw new InvalidArgumentError(`dst must hold as many bytes as src (${src.byteLength}), received ${dst.byteLength}`);
    }
    return this.#run('copy', options, (addon, stream, cancel, timing) =>
      addon.copy(stream, { src: src.nativeArg('src'), dst: dst.nativeArg('dst') }, cancel, timing),
    );
  }

  /** dst = src converted between f32, f16 and bf16 (round to nearest even). Same shape. */
  convert(src: Tensor, dst: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(src, 'src', FLOAT_DTYPES);
    checkTensor(dst, 'dst', FLOAT_DTYPES);
    sameShape(src, dst, 'src', 'dst');
    return this.#run('convert', options, (addon, stream, cancel, timing) =>
      addon.convert(
        stream,
        { src: src.nativeArg('src'), srcDtype: DTYPE_CODE[src.dtype], dst: dst.nativeArg('dst'), dstDtype: DTYPE_CODE[dst.dtype], n: src.numel, isa: this.#isaCode() },
        cancel,
        timing,
      ),
    );
  }

  /**
   * out = a + b elementwise (f32, f16 or bf16; computed in f32, bf16 / f16 results rounded to nearest even). a, b
   * and out have one dtype. b has a's shape, or is 1-D [N] with N = a's last dimension: then b is added to every
   * row, out[r, j] = a[r, j] + b[j] (the bias add of q/k/v projections). out has a's shape; out may be a, and b
   * when b has a's shape.
   * @example
   * await be.add(q, qBias, q)   // q [T, heads * headDim] bf16 += qBias [heads * headDim] bf16
   */
  add(a: Tensor, b: Tensor, out: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(a, 'a', FLOAT_DTYPES);
    checkTensor(b, 'b', FLOAT_DTYPES);
    checkTensor(out, 'out', FLOAT_DTYPES);
    sameDtype(a, b, 'a', 'b');
    sameDtype(a, out, 'a', 'out');
    const same = a.shape.length === b.shape.length && a.shape.every((d, i) => d === b.shape[i]);
    const last = a.shape.length > 0 ? a.shape[a.shape.length - 1]! : undefined;
    const rowBroadcast = !same && b.shape.length === 1 && last !== undefined && b.shape[0] === last;
    if (!same && !rowBroadcast) {
      throw new InvalidArgumentError(
        `b must have a's shape [${a.shape.join(', ')}], received [${b.shape.join(', ')}]` +
          (last === undefined ? '' : ` (or be [${last}]: a's last dimension, added to every row)`),
      );
    }
    sameShape(a, out, 'a', 'out');
    return this.#run('add', options, (addon, stream, cancel, timing) =>
      addon.add(
        stream,
        {
          a: a.nativeArg('a'),
          b: b.nativeArg('b'),
          out: out.nativeArg('out'),
          dtype: DTYPE_CODE[a.dtype],
          n: a.numel,
          ...(rowBroadcast ? { bLen: last! } : {}),
          isa: this.#isaCode(),
        },
        cancel,
        timing,
      ),
    );
  }

  /**
   * RMSNorm (HF LlamaRMSNorm semantics, f32 math): over rows of length D = x's last dimension,
   *   out[r] = x[r] * (1 / sqrt(mean_j x[r,j]^2 + eps)) * weight
   * With `add`: first x[r] += add[r] in place (x must be f32: the model's residual stream), then normalise the
   * updated x. This fuses the residual add with the next layer norm.
   * x: any rank >= 1, f32 | bf16; weight [D] f32 | bf16; out: x's shape, f32 | bf16; add: x's shape, f32 | bf16.
   * out may be x itself (same dtype, no add).
   * The sum of squares is accumulated in f32 in a fixed order per row (the result does not depend on the thread
   * count); bf16 outputs are rounded to nearest even once, after (x * scale) * weight in f32 (HF rounds x * scale
   * to the input dtype before the weight multiply). CPU: every tier; CUDA: compiled, not verified on a GPU.
   * @example
   * await be.rmsNorm({ x: hidden, weight: ln1, out: xn, eps: 1e-6, add: attnOut })  // hidden [T, H] f32 += attnOut; xn bf16
   */
  rmsNorm(p: { x: Tensor; weight: Tensor; out: Tensor; eps: number; add?: Tensor }, options: OpOptions = {}): Promise<KernelTier> {
    if (typeof p !== 'object' || p === null) throw new InvalidArgumentError(`rmsNorm: params must be an object, received ${describe(p)}`);
    const { x, weight, out, eps, add } = p;
    checkTensor(x, 'x', GEMM_DTYPES);
    checkTensor(weight, 'weight', GEMM_DTYPES);
    checkTensor(out, 'out', GEMM_DTYPES);
    if (x.shape.length < 1) throw new InvalidArgumentError(`x must have rank >= 1 (rows of its last dimension), received shape [${x.shape.join(', ')}]`);
    const d = x.shape[x.shape.length - 1]!;
    checkDims(weight, [d], 'weight');
    sameShape(x, out, 'x', 'out');
    if (add !== undefined) {
      checkTensor(add, 'add', GEMM_DTYPES);
      sameShape(x, add, 'x', 'add');
      if (x.dtype !== 'f32') throw new InvalidArgumentError(`x.dtype must be f32 when add is given (x is updated in place: the residual stream), received ${x.dtype}`);
    }
    if (typeof eps !== 'number' || !Number.isFinite(eps) || eps < 0 || eps > 3.4028234663852886e38) {
      throw new InvalidArgumentError(`eps must be a finite number >= 0 (within the f32 range), received ${describe(eps)}`);
    }
    return this.#run('rmsNorm', options, (addon, stream, cancel, timing) =>
      addon.rmsNorm(
        stream,
        {
          x: x.nativeArg('x'),
          xDtype: DTYPE_CODE[x.dtype],
          weight: weight.nativeArg('weight'),
          wDtype: DTYPE_CODE[weight.dtype],
          out: out.nativeArg('out'),
          outDtype: DTYPE_CODE[out.dtype],
          ...(add === undefined ? {} : { add: add.nativeArg('add'), addDtype: DTYPE_CODE[add.dtype] }),
          rows: d === 0 ? 0 : x.numel / d,
          d,
          eps,
          isa: this.#isaCode(),
        },
        cancel,
        timing,
      ),
    );
  }

  /**
   * Packs a bf16 weight [N, K] (nn.Linear layout) into the CPU kernels' panel64 layout (`PackedTensor`): `gemm`
   * then runs as outer products instead of dot products (bench/results/native-kernels-*.json has both layouts on
   * the machine at hand). CPU backend only; the packed copy is new memory (allocHost: huge pages from 4 MiB, freed
   * by its dispose(); the source can be dropped). Worth it only where the avx512bf16 tier runs: the other tiers read
   * packed weights with the scalar reference loop.
   * @example
   * const wp = await be.packWeights(w);   // w: HostTensor bf16 [4096, 4096]
   * await be.gemm(x, wp, y);
   */
  async packWeights(w: HostTensor, options: OpOptions = {}): Promise<PackedTensor> {
    const [n, k] = this.#packSource(w);
    const out = PackedTensor.wrap(await this.allocHostAsync('bf16', [packedNumel(n, k)], options.signal ? { signal: options.signal } : {}), n, k);
    try {
      await this.packWeightsInto(w, out, options);
    } catch (e) {
      out.dispose();
      throw e;
    }
    return out;
  }

  /**
   * packWeights into existing packed memory (an expert store's views): `out` must have w's shape.
   * @example
   * await be.packWeightsInto(gateRows, store.expert(0, 3).gate as PackedTensor);
   */
  async packWeightsInto(w: HostTensor, out: PackedTensor, options: OpOptions = {}): Promise<void> {
    const [n, k] = this.#packSource(w);
    if (!(out instanceof PackedTensor)) throw new InvalidArgumentError(`out must be a PackedTensor, received ${describe(out)}`);
    if (out.shape[0] !== n || out.shape[1] !== k) throw new InvalidArgumentError(`out must be a packed [${n}, ${k}], received packed [${out.shape.join(', ')}]`);
    await this.#run('packWeights', options, (addon, stream, cancel, timing) =>
      addon.packWeights(stream, { w: w.nativeArg('w'), n, k, out: out.nativeArg('out'), isa: this.#isaCode() }, cancel, timing),
    );
  }

  /** The [N, K] of a weight packWeights accepts (bf16 HostTensor, 2-D, N, K >= 1; CPU backend). */
  #packSource(w: HostTensor): [number, number] {
    if (this.kind !== 'cpu') throw new InvalidArgumentError(`packWeights: packed weights are a CPU-backend layout, this backend is ${this.name}`);
    if (!(w instanceof HostTensor)) throw new InvalidArgumentError(`w must be a HostTensor, received ${describe(w)}`);
    checkTensor(w, 'w', ['bf16']);
    if (w.shape.length !== 2 || w.shape[0]! < 1 || w.shape[1]! < 1) {
      throw new InvalidArgumentError(`w must be 2-D [N, K] with N, K >= 1, received shape [${w.shape.join(', ')}]`);
    }
    return w.shape as [number, number];
  }


  /**
   * out[M, N] = a[M, K] · b[N, K]ᵀ (b in nn.Linear / safetensors [out_features, in_features] layout),
   * accumulated in f32. a and b: f32 or bf16 (same); out: f32 or bf16. On the CPU backend b may be a
   * `PackedTensor` (packWeights; a bf16).
   * @example
   * await be.gemm(x, w, y)   // x [T, H] bf16, w [I, H] bf16, y [T, I] f32
   */
  gemm(a: Tensor, b: Tensor, out: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(a, 'a', GEMM_DTYPES);
    const packed = b instanceof PackedTensor;
    if (packed) {
      if (this.kind !== 'cpu') throw new InvalidArgumentError(`b is a PackedTensor (CPU layout), this backend is ${this.name}`);
    } else {
      checkTensor(b, 'b', GEMM_DTYPES);
    }
    checkTensor(out, 'out', GEMM_DTYPES);
    sameDtype(a, b, 'a', 'b');
    for (const [t, w] of [[a, 'a'], [b, 'b'], [out, 'out']] as const) {
      if (t.shape.length !== 2) throw new InvalidArgumentError(`${w} must be 2-D, received shape [${t.shape.join(', ')}]`);
    }
    const [m, k] = a.shape as [number, number];
    const [n, kb] = b.shape as [number, number];
    if (kb !== k) throw new InvalidArgumentError(`b must be [N, ${k}] (K of a), received [${b.shape.join(', ')}]`);
    if (out.shape[0] !== m || out.shape[1] !== n) {
      throw new InvalidArgumentError(`out must be [${m}, ${n}], received [${out.shape.join(', ')}]`);
    }
    return this.#run('gemm', options, (addon, stream, cancel, timing) =>
      addon.gemm(
        stream,
        {
          a: a.nativeArg('a'),
          b: b.nativeArg('b'),
          out: out.nativeArg('out'),
          abDtype: DTYPE_CODE[a.dtype],
          outDtype: DTYPE_CODE[out.dtype],
          m,
          n,
          k,
          lda: k,
          ldb: k,
          ldc: n,
          ...(packed ? { bPacked: true } : {}),
          isa: this.#isaCode(),
        },
        cancel,
        timing,
      ),
    );
  }

  /**
   * Grouped GEMM (issue 3 building block): `offsets` ([G + 1] integers, offsets[0] = 0, non-decreasing) split the
   * rows of a into G groups; group g's rows are multiplied by its own weight b[g] (nn.Linear [N, K] layout):
   * out[r] = a[r] · b[g]ᵀ for offsets[g] ≤ r < offsets[g + 1]. a and every b[g]: bf16; out: f32 or bf16; f32
   * accumulation. A group without rows may have b[g] = null. Rows beyond offsets[G] are left untouched.
   * @example
   * // x sorted by expert (moeAlign), one [I, H] weight per expert:
   * await be.groupedGemm(xs, [w0, w1, null, w3], [0, 5, 9, 9, 12], ys)   // xs [12, H] bf16, ys [12, I] f32
   */
  groupedGemm(a: Tensor, b: ReadonlyArray<Tensor | null>, offsets: ArrayLike<number>, out: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(a, 'a', ['bf16']);
    checkTensor(out, 'out', ['f32', 'bf16']);
    if (a.shape.length !== 2) throw new InvalidArgumentError(`a must be 2-D, received shape [${a.shape.join(', ')}]`);
    if (out.shape.length !== 2) throw new InvalidArgumentError(`out must be 2-D, received shape [${out.shape.join(', ')}]`);
    const [rowsA, k] = a.shape as [number, number];
    if (!Array.isArray(b) || b.length < 1) throw new InvalidArgumentError(`b must be a non-empty array of tensors or null, received ${String(b)}`);
    const g = b.length;
    if (offsets === null || typeof offsets !== 'object' || offsets.length !== g + 1) {
      throw new InvalidArgumentError(`offsets must have ${g + 1} entries (b.length + 1), received ${offsets === null || typeof offsets !== 'object' ? String(offsets) : `${offsets.length} entries`}`);
    }
    const offs: number[] = [];
    for (let i = 0; i <= g; i++) {
      const v = offsets[i]!;
      if (!Number.isInteger(v) || v < 0 || (i === 0 && v !== 0) || (i > 0 && v < offs[i - 1]!)) {
        throw new InvalidArgumentError(`offsets must be integers starting at 0 and non-decreasing, received ${String(v)} at index ${i}`);
      }
      offs.push(v);
    }
    const rows = offs[g]!;
    if (rows > rowsA) throw new InvalidArgumentError(`a must have at least offsets[${g}] = ${rows} rows, received ${rowsA}`);
    let n = -1;
    for (let i = 0; i < g; i++) {
      const w = b[i];
      if (w === null || w === undefined) {
        if (offs[i + 1]! > offs[i]!) throw new InvalidArgumentError(`b[${i}] must be a tensor: group ${i} has ${offs[i + 1]! - offs[i]!} rows, received ${String(w)}`);
        continue;
      }
      checkTensor(w, `b[${i}]`, ['bf16']);
      if (w.shape.length !== 2 || w.shape[1] !== k) throw new InvalidArgumentError(`b[${i}] must be [N, ${k}] (K of a), received [${w.shape.join(', ')}]`);
      if (n >= 0 && w.shape[0] !== n) throw new InvalidArgumentError(`b[${i}] must have ${n} rows like the other groups, received [${w.shape.join(', ')}]`);
      n = w.shape[0]!;
    }
    if (n < 0) n = out.shape[1]!;
    if (out.shape[1] !== n || out.shape[0]! < rows) {
      throw new InvalidArgumentError(`out must be [>= ${rows}, ${n}], received [${out.shape.join(', ')}]`);
    }
    if (k < 1 || n < 1) throw new InvalidArgumentError(`K and N must be >= 1, received K=${k}, N=${n}`);
    return this.#run('groupedGemm', options, (addon, stream, cancel, timing) =>
      addon.groupedGemm(
        stream,
        {
          a: a.nativeArg('a'),
          b: b.map((w, i) => (w === null || w === undefined ? null : w.nativeArg(`b[${i}]`))),
          out: out.nativeArg('out'),
          offsets: offs,
          outDtype: DTYPE_CODE[out.dtype],
          g,
          n,
          k,
          lda: k,
          ldb: k,
          ldc: n,
          isa: this.#isaCode(),
        },
        cancel,
        timing,
      ),
    );
  }

  /**
   * Next token of every row of `logits` [rows, vocab] f32 into `out` [rows] i32, rows in parallel (the engine's
   * sampler: lib/engine/sampler.ts fills `params` and draws the uniforms). params: a Float64Array of rows x 4,
   * per row temperature (0: greedy, the highest logit, ties to the lower id), topK (0: none), topP (1: none) and a
   * uniform u in [0, 1); cpp/cpu/sample_rows.h has the exact rule. A CPU op (host tensors): on a CUDA backend it runs
   * on the CPU.
   * @example
   * const out = new HostTensor('i32', [2]);
   * await be.sampleRows({ logits, out, params: Float64Array.of(0, 0, 1, 0, 0.8, 40, 0.9, Math.random()) });
   */
  sampleRows(p: { logits: Tensor; out: Tensor; params: Float64Array }, options: OpOptions = {}): Promise<KernelTier> {
    if (typeof p !== 'object' || p === null) throw new InvalidArgumentError(`sampleRows: params must be an object, received ${describe(p)}`);
    const { logits, out, params } = p;
    checkTensor(logits, 'logits', ['f32']);
    checkTensor(out, 'out', ['i32']);
    if (logits.shape.length !== 2) throw new InvalidArgumentError(`logits must be [rows, vocab], received shape [${logits.shape.join(', ')}]`);
    const [rows, vocab] = logits.shape as [number, number];
    if (out.shape.length !== 1 || out.shape[0] !== rows) throw new InvalidArgumentError(`out must be [${rows}] (rows), received [${out.shape.join(', ')}]`);
    if (!(params instanceof Float64Array) || params.length !== rows * 4) {
      throw new InvalidArgumentError(`params must be a Float64Array of rows x 4 = ${rows * 4} numbers, received ${describe(params)}`);
    }
    const cpu = this.#cpuSide();
    return cpu.#run('sampleRows', options, (addon, stream, cancel, timing) =>
      addon.sampleRows(stream, { logits: logits.nativeArg('logits'), params, out: out.nativeArg('out'), rows, vocab, isa: cpu.#isaCode() }, cancel, timing),
    );
  }

  /**
   * Greedy token of every row: out[r] = the id of the highest logit of `logits` [rows, vocab] f32 (ties to the lower
   * id, NaN never chosen, 0 for a row without a logit above -inf), into `out` [rows] i32: sampleRows' rule at
   * temperature 0, on this backend's memory (a CUDA kernel on device tensors), so a step on the GPU can download
   * its tokens instead of its logits.
   * @example
   * await be.argmaxRows(logits, ids)   // [B, 32000] f32 -> [B] i32
   */
  argmaxRows(logits: Tensor, out: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(logits, 'logits', ['f32']);
    checkTensor(out, 'out', ['i32']);
    if (logits.shape.length !== 2 || logits.shape[1]! < 1) throw new InvalidArgumentError(`logits must be [rows, vocab >= 1], received shape [${logits.shape.join(', ')}]`);
    const [rows, vocab] = logits.shape as [number, number];
    if (out.shape.length !== 1 || out.shape[0] !== rows) throw new InvalidArgumentError(`out must be [${rows}] (rows), received [${out.shape.join(', ')}]`);
    return this.#run('argmaxRows', options, (addon, stream, cancel, timing) =>
      addon.argmaxRows(stream, { logits: logits.nativeArg('logits'), out: out.nativeArg('out'), rows, vocab, isa: this.#isaCode() }, cancel, timing),
    );
  }

  /**
   * Attention over a paged KV cache in host memory (f32 online softmax; GQA; a batch may mix decode, q_len = 1,
   * and prefill/extend, q_len > 1, causal over the existing prefix: query i of a sequence with kv_len L and q_len Q
   * attends to kv positions <= L - Q + i). K/V pages are [numPages, kvHeads, blockSize, headDim] (see
   * lib/kv/cache.ts, whose `keys(layer)` / `values(layer)` / `batch()` give every argument but q and out).
   * A CPU op by design: on a CUDA backend it runs on the CPU (every tensor host memory: JS or pinned; a given
   * `options.stream` must then be a CPU stream). Block-table contents are checked when the op runs: a bad table
   * rejects with InvalidArgumentError.
   * @example
   * const b = cache.batch([s0, s1], [1, 1]);                       // two decode sequences
   * await be.attention({ q, k: cache.keys(0), v: cache.values(0), out, ...b });  // q/out [2, qHeads, headDim]
   */
  attention(p: AttentionParams, options: OpOptions = {}): Promise<KernelTier> {
    if (typeof p !== 'object' || p === null) throw new InvalidArgumentError(`attention: params must be an object, received ${describe(p)}`);
    const { q, k, v, out, blockTables, kvLens, qLens, sinks } = p;
    checkTensor(q, 'q', GEMM_DTYPES);
    checkTensor(k, 'k', FLOAT_DTYPES);
    checkTensor(v, 'v', FLOAT_DTYPES);
    checkTensor(out, 'out', GEMM_DTYPES);
    checkTensor(blockTables, 'blockTables', ['i32']);
    checkTensor(kvLens, 'kvLens', ['i32']);
    checkTensor(qLens, 'qLens', ['i32']);
    if (sinks !== undefined) checkTensor(sinks, 'sinks', ['f32']);
    sameDtype(k, v, 'k', 'v');
    sameShape(k, v, 'k', 'v');
    if (q.shape.length !== 3) throw new InvalidArgumentError(`q must be [totalQ, qHeads, headDim], received shape [${q.shape.join(', ')}]`);
    if (k.shape.length !== 4) throw new InvalidArgumentError(`k must be [numPages, kvHeads, blockSize, headDim], received shape [${k.shape.join(', ')}]`);
    const [totalQ, qHeads, headDim] = q.shape as [number, number, number];
    const [numPages, kvHeads, blockSize, kHeadDim] = k.shape as [number, number, number, number];
    if (headDim !== 64 && headDim !== 128 && headDim !== 256) throw new InvalidArgumentError(`q headDim must be 64, 128 or 256, received ${headDim}`);
    if (kHeadDim !== headDim) throw new InvalidArgumentError(`k headDim must equal q's (${headDim}), received ${kHeadDim}`);
    if (kvHeads < 1 || qHeads % kvHeads !== 0) {
      throw new InvalidArgumentError(`q heads must be a positive multiple of the kv heads (${kvHeads}), received ${qHeads}`);
    }
    sameShape(q, out, 'q', 'out');
    if (blockTables.shape.length !== 2) throw new InvalidArgumentError(`blockTables must be [numSeqs, maxBlocks], received shape [${blockTables.shape.join(', ')}]`);
    const [numSeqs, maxBlocks] = blockTables.shape as [number, number];
    for (const [t, w] of [[kvLens, 'kvLens'], [qLens, 'qLens']] as const) {
      if (t.shape.length !== 1 || t.shape[0] !== numSeqs) throw new InvalidArgumentError(`${w} must be [${numSeqs}] (numSeqs), received [${t.shape.join(', ')}]`);
    }
    if (sinks !== undefined && (sinks.shape.length !== 1 || sinks.shape[0] !== qHeads)) {
      throw new InvalidArgumentError(`sinks must be [${qHeads}] (qHeads), received [${sinks.shape.join(', ')}]`);
    }
    const scale = p.scale ?? 1 / Math.sqrt(headDim);
    if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new InvalidArgumentError(`scale must be a finite number, received ${describe(p.scale)}`);
    const slidingWindow = p.slidingWindow ?? 0;
    if (!Number.isSafeInteger(slidingWindow) || slidingWindow < 0) {
      throw new InvalidArgumentError(`slidingWindow must be a non-negative integer (0: none), received ${describe(p.slidingWindow)}`);
    }
    const numSplits = p.numSplits ?? 0;
    if (!Number.isSafeInteger(numSplits) || numSplits < 0 || numSplits > 1024) {
      throw new InvalidArgumentError(`numSplits must be an integer in [0, 1024] (0: automatic), received ${describe(p.numSplits)}`);
    }
    const splitTokens = p.splitTokens ?? 0;
    if (!Number.isSafeInteger(splitTokens) || splitTokens < 0 || splitTokens > 2 ** 30) {
      throw new InvalidArgumentError(`splitTokens must be an integer in [0, 2^30] (0: use numSplits), received ${describe(p.splitTokens)}`);
    }
    const threads = p.threads ?? 0;
    if (!Number.isSafeInteger(threads) || threads < 0 || threads > 65536) {
      throw new InvalidArgumentError(`threads must be an integer in [0, 65536] (0: every thread of the pool), received ${describe(p.threads)}`);
    }
    if (p.isa !== undefined && !CPU_ISAS.includes(p.isa)) throw new InvalidArgumentError(`isa must be one of ${CPU_ISAS.join(', ')}, received ${describe(p.isa)}`);
    const cpu = this.#cpuSide();
    const isa = p.isa === undefined ? cpu.#isaCode() : Math.min(cpu.#isaCode(), ISA_CODE[p.isa]);
    return cpu.#run('attention', options, (addon, stream, cancel, timing) =>
      addon.attention(
        stream,
        {
          q: q.nativeArg('q'),
          qDtype: DTYPE_CODE[q.dtype],
          k: k.nativeArg('k'),
          v: v.nativeArg('v'),
          kvDtype: DTYPE_CODE[k.dtype],
          out: out.nativeArg('out'),
          outDtype: DTYPE_CODE[out.dtype],
          blockTables: blockTables.nativeArg('blockTables'),
          kvLens: kvLens.nativeArg('kvLens'),
          qLens: qLens.nativeArg('qLens'),
          ...(sinks === undefined ? {} : { sinks: sinks.nativeArg('sinks') }),
          numSeqs,
          maxBlocks,
          numPages,
          totalQ,
          qHeads,
          kvHeads,
          headDim,
          blockSize,
          scale,
          slidingWindow,
          numSplits,
          splitTokens,
          ...(threads > 0 ? { threads } : {}),
          isa,
        },
        cancel,
        timing,
      ),
    );
  }

  /**
   * Rotary position embedding in place, HF "rotate_half" convention (cpp/cpu/rope.h): for every token t and head
   * row x of q and k, with half = rotaryDim / 2 and a = positions[t] * invFreq[i], (x[i], x[i + half]) becomes
   * ((x[i] cos a - x[i + half] sin a) s, (x[i + half] cos a + x[i] sin a) s), s = attentionScaling; elements
   * [rotaryDim, headDim) are unchanged. invFreq and attentionScaling come from lib/rope.ts (ropeParameters /
   * ropeFromConfig: default, llama3 and yarn scaling). Intended call order per layer: project q, k, v; rope(q, k)
   * at the tokens' positions; KvCache.write/append k and v; then attention (the cache stores rotated keys).
   * CPU: every tier (positions checked when the op runs: a negative one rejects with InvalidArgumentError);
   * CUDA: compiled, not verified on a GPU (positions are not checked there).
   * @example
   * const rp = ropeParameters({ theta: 1e6, rotaryDim: 128 });
   * await be.rope({ q, k, positions, invFreq: HostTensor.from('f32', [64], rp.invFreq), attentionScaling: rp.attentionScaling });
   */
  rope(p: RopeParams, options: OpOptions = {}): Promise<KernelTier> {
    if (typeof p !== 'object' || p === null) throw new InvalidArgumentError(`rope: params must be an object, received ${describe(p)}`);
    const { q, k, positions, invFreq } = p;
    if (q === undefined && k === undefined) throw new InvalidArgumentError('rope: give q, k or both');
    if (q !== undefined) checkTensor(q, 'q', ['f32', 'bf16']);
    if (k !== undefined) checkTensor(k, 'k', ['f32', 'bf16']);
    if (q !== undefined && k !== undefined) sameDtype(q, k, 'q', 'k');
    checkTensor(positions, 'positions', ['i32']);
    checkTensor(invFreq, 'invFreq', ['f32']);
    const first = (q ?? k)!;
    for (const [t, w] of [[q, 'q'], [k, 'k']] as const) {
      if (t !== undefined && t.shape.length !== 3) throw new InvalidArgumentError(`${w} must be [tokens, heads, headDim], received shape [${t.shape.join(', ')}]`);
    }
    const [tokens, , headDim] = first.shape as [number, number, number];
    for (const [t, w] of [[q, 'q'], [k, 'k']] as const) {
      if (t !== undefined && (t.shape[0] !== tokens || t.shape[2] !== headDim)) {
        throw new InvalidArgumentError(`${w} must be [${tokens}, heads, ${headDim}] (q's tokens and headDim), received [${t.shape.join(', ')}]`);
      }
    }
    if (positions.shape.length !== 1 || positions.shape[0] !== tokens) throw new InvalidArgumentError(`positions must be [${tokens}] (tokens), received [${positions.shape.join(', ')}]`);
    if (invFreq.shape.length !== 1) throw new InvalidArgumentError(`invFreq must be [rotaryDim / 2], received shape [${invFreq.shape.join(', ')}]`);
    const rotaryDim = 2 * invFreq.shape[0]!;
    if (rotaryDim < 2 || rotaryDim > headDim || headDim > 1024) {
      throw new InvalidArgumentError(`invFreq must hold between 1 and headDim / 2 = ${headDim / 2} entries (headDim <= 1024), received ${invFreq.shape[0]}`);
    }
    const attentionScaling = p.attentionScaling ?? 1;
    if (typeof attentionScaling !== 'number' || !Number.isFinite(attentionScaling)) {
      throw new InvalidArgumentError(`attentionScaling must be a finite number, received ${describe(p.attentionScaling)}`);
    }
    return this.#run('rope', options, (addon, stream, cancel, timing) =>
      addon.rope(
        stream,
        {
          ...(q === undefined ? {} : { q: q.nativeArg('q') }),
          ...(k === undefined ? {} : { k: k.nativeArg('k') }),
          positions: positions.nativeArg('positions'),
          invFreq: invFreq.nativeArg('invFreq'),
          dtype: DTYPE_CODE[first.dtype],
          tokens,
          qHeads: q === undefined ? 0 : q.shape[1]!,
          kvHeads: k === undefined ? 0 : k.shape[1]!,
          headDim,
          rotaryDim,
          attentionScaling,
          isa: this.#isaCode(),
        },
        cancel,
        timing,
      ),
    );
  }

  // ---- fused MoE (issue 3) ---------------------------------------------------------------------------------------

  /**
   * A new, empty expert table (every expert absent) for {@link Backend.moeExperts} on this backend. `packed` (CPU
   * backend): the table takes PackedTensor weights (packWeights), and moeExperts runs its outer-product kernels.
   */
  expertTable(numExperts: number, dims: { hidden: number; intermediate: number; packed?: boolean }): ExpertTable {
    return new ExpertTable(this.kind, this.device, numExperts, dims);
  }

  /** A tensor for an op's output: host memory on 'cpu', device memory on 'cuda'. */
  #outTensor<D extends DType>(dtype: D, shape: number[]): Tensor {
    return this.kind === 'cpu' ? new HostTensor(dtype, shape) : this.alloc(dtype, shape);
  }

  /**
   * Router top-k: logits [T, E] f32 -> topkIds [T, k] i32 (descending score, ties to the lower expert id) and
   * topkWeights [T, k] f32. 'softmax' (Mixtral, Qwen): softmax in f32 over all E, then top-k. 'sigmoid'
   * (DeepSeek-V3): weight sigmoid(logit), selection by logit + bias when `bias` [E] f32 is given.
   * `renormalize` divides the k weights of each token by their sum. Outputs are allocated (host memory on cpu,
   * device memory on cuda) unless given in `out`.
   * @example
   * const { topkIds, topkWeights } = await be.routerTopK(logits, 2, { scoring: 'softmax', renormalize: true });
   */
  routerTopK(
    logits: Tensor,
    k: number,
    params: { scoring: 'softmax' | 'sigmoid'; renormalize: boolean; bias?: Tensor; out?: { topkIds: Tensor; topkWeights: Tensor } },
    options: OpOptions = {},
  ): Promise<{ topkIds: Tensor; topkWeights: Tensor; tier: KernelTier }> {
    checkTensor(logits, 'logits', ['f32']);
    if (logits.shape.length !== 2) throw new InvalidArgumentError(`logits must be [T, E], received shape [${logits.shape.join(', ')}]`);
    const [t, e] = logits.shape as [number, number];
    if (typeof k !== 'number' || !Number.isSafeInteger(k) || k < 1 || k > e) {
      throw new InvalidArgumentError(`k must be an integer in [1, ${e}] (E), received ${describe(k)}`);
    }
    if (typeof params !== 'object' || params === null) throw new InvalidArgumentError(`params must be an object, received ${describe(params)}`);
    if (params.scoring !== 'softmax' && params.scoring !== 'sigmoid') {
      throw new InvalidArgumentError(`params.scoring must be 'softmax' or 'sigmoid', received ${describe(params.scoring)}`);
    }
    if (typeof params.renormalize !== 'boolean') throw new InvalidArgumentError(`params.renormalize must be a boolean, received ${describe(params.renormalize)}`);
    if (params.bias !== undefined) {
      checkTensor(params.bias, 'params.bias', ['f32']);
      if (params.bias.shape.length !== 1 || params.bias.shape[0] !== e) {
        throw new InvalidArgumentError(`params.bias must be [${e}], received [${params.bias.shape.join(', ')}]`);
      }
      if (params.scoring !== 'sigmoid') throw new InvalidArgumentError(`params.bias is only used with scoring 'sigmoid', received scoring ${params.scoring}`);
    }
    const topkIds = params.out?.topkIds ?? this.#outTensor('i32', [t, k]);
    const topkWeights = params.out?.topkWeights ?? this.#outTensor('f32', [t, k]);
    checkTensor(topkIds, 'out.topkIds', ['i32']);
    checkTensor(topkWeights, 'out.topkWeights', ['f32']);
    checkDims(topkIds, [t, k], 'out.topkIds');
    checkDims(topkWeights, [t, k], 'out.topkWeights');
    const bias = params.bias;
    return this.#run('routerTopK', options, (addon, stream, cancel, timing) =>
      addon.routerTopK(
        stream,
        {
          logits: logits.nativeArg('logits'),
          ...(bias ? { bias: bias.nativeArg('bias') } : {}),
          topkIds: topkIds.nativeArg('topkIds'),
          topkWeights: topkWeights.nativeArg('topkWeights'),
          t,
          e,
          k,
          scoring: params.scoring === 'softmax' ? 0 : 1,
          renormalize: params.renormalize,
        },
        cancel,
        timing,
      ),
    ).then((tier) => ({ topkIds, topkWeights, tier }));
  }

  /**
   * vLLM's moe_align_block_size: from topkIds [T, k] i32 (-1 = not routed here), per-expert `counts` [E] i32,
   * `offsets` [E + 1] i32 (each expert's rows padded up to a multiple of blockSize) and `sortedTokenIds`
   * [T*k + E*(blockSize-1)] i32: for padded row r of expert x, the routed slot t*k + j (ascending), padding rows
   * T*k. Rows past offsets[E] are T*k too. Ids outside [-1, E) reject with InvalidArgumentError (on cuda the kernel
   * flags them and the op rejects when it completes, without a host sync).
   * @example
   * const { offsets, sortedTokenIds } = await be.moeAlign(topkIds, 64, 16);
   */
  moeAlign(
    topkIds: Tensor,
    numExperts: number,
    blockSize: number,
    options: OpOptions & { out?: { counts: Tensor; offsets: Tensor; sortedTokenIds: Tensor } } = {},
  ): Promise<{ counts: Tensor; offsets: Tensor; sortedTokenIds: Tensor; tier: KernelTier }> {
    checkTensor(topkIds, 'topkIds', ['i32']);
    if (topkIds.shape.length !== 2) throw new InvalidArgumentError(`topkIds must be [T, k], received shape [${topkIds.shape.join(', ')}]`);
    for (const [v, w] of [
      [numExperts, 'numExperts'],
      [blockSize, 'blockSize'],
    ] as const) {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new InvalidArgumentError(`${w} must be a positive integer, received ${describe(v)}`);
    }
    const [t, k] = topkIds.shape as [number, number];
    if (k < 1) throw new InvalidArgumentError(`topkIds must have k >= 1 columns, received [${topkIds.shape.join(', ')}]`);
    const capacity = t * k + numExperts * (blockSize - 1);
    if (capacity > 0x7fffffff) throw new InvalidArgumentError(`T*k + E*(blockSize-1) must fit in int32, received ${capacity}`);
    const counts = options.out?.counts ?? this.#outTensor('i32', [numExperts]);
    const offsets = options.out?.offsets ?? this.#outTensor('i32', [numExperts + 1]);
    const sortedTokenIds = options.out?.sortedTokenIds ?? this.#outTensor('i32', [capacity]);
    checkTensor(counts, 'out.counts', ['i32']);
    checkTensor(offsets, 'out.offsets', ['i32']);
    checkTensor(sortedTokenIds, 'out.sortedTokenIds', ['i32']);
    checkDims(counts, [numExperts], 'out.counts');
    checkDims(offsets, [numExperts + 1], 'out.offsets');
    if (sortedTokenIds.shape.length !== 1 || sortedTokenIds.shape[0]! < capacity) {
      throw new InvalidArgumentError(`out.sortedTokenIds must be 1-D with at least ${capacity} elements, received [${sortedTokenIds.shape.join(', ')}]`);
    }
    return this.#run('moeAlign', options, (addon, stream, cancel, timing) =>
      addon.moeAlign(
        stream,
        {
          topkIds: topkIds.nativeArg('topkIds'),
          counts: counts.nativeArg('counts'),
          offsets: offsets.nativeArg('offsets'),
          sortedTokenIds: sortedTokenIds.nativeArg('sortedTokenIds'),
          t,
          k,
          e: numExperts,
          blockSize,
        },
        cancel,
        timing,
      ),
    ).then((tier) => ({ counts, offsets, sortedTokenIds, tier }));
  }

  /**
   * Fused MoE expert FFN: out[t] = Σ_j w[t,j] · down_e(silu(gate_e(x[t])) ⊙ up_e(x[t])), e = topkIds[t,j].
   * x [T, H] bf16, topkIds [T, k] i32, topkWeights [T, k] f32, out [T, H] bf16 (fully written). Ids of -1 and
   * experts absent from the table contribute zero (a token with no present expert gets exactly 0). f32
   * accumulation, the intermediate activation rounded to bf16, the combine over j in fixed order in f32 and
   * rounded once: two runs give bitwise the same output. Ids outside [-1, E) reject with InvalidArgumentError (on
   * cuda the kernel flags them and the op rejects when it completes, without a host sync).
   * gpt-oss: `activation` { kind: 'swiglu-oai', alpha, limit } (see {@link MoeActivation}; default silu) and the
   * f32 biases of the experts that have them (ExpertTable.set): gate/up biases added in f32 before the
   * activation, the down bias to the expert's output before its weight: out[t] += w[t,j] · (act·Wdᵀ + bd).
   *
   * Parts mode (module-based batching: a layer's experts streamed through a few slots in chunks): give `parts`, an
   * f32 tensor [T, k, H] (or [T*k, H]), INSTEAD of `out` (exactly one of the two). For every (t, j) whose id is a
   * present expert, parts[t, j, :] is set to that expert's unweighted f32 output row down_e(act) (+ its down bias);
   * every other row is left untouched, so the caller fills parts chunk by chunk. `topkWeights` is still required
   * and validated but not read. {@link Backend.moeCombine} then gives bitwise the output of one call with `out`
   * and every expert present, whatever the chunking, on every backend (same combine code).
   * @example
   * const table = be.expertTable(8, { hidden: 4096, intermediate: 14336 });
   * for (const e of [0, 1]) table.set(e, { gate: w1[e], up: w3[e], down: w2[e] });
   * await be.moeExperts({ x, topkIds, topkWeights, experts: table, out });
   * // gpt-oss: table entries with gateUpBias / downBias, and
   * await be.moeExperts({ x, topkIds, topkWeights, experts: table, out, activation: { kind: 'swiglu-oai', alpha: 1.702, limit: 7 } });
   * // chunked (parts mode): the experts of each chunk in the table, then one combine
   * const parts = new HostTensor('f32', [T, k, 4096]);
   * for (const chunk of [[0, 1, 2, 3], [4, 5, 6, 7]]) {
   *   for (const e of chunk) table.set(e, weightsOf(e));
   *   await be.moeExperts({ x, topkIds, topkWeights, experts: table, parts });
   *   for (const e of chunk) table.clear(e);
   * }
   * await be.moeCombine({ parts, topkIds, topkWeights, out });
   */
  moeExperts(
    args: {
      x: Tensor;
      topkIds: Tensor;
      topkWeights: Tensor;
      experts: ExpertTable;
      /** [T, H] bf16, fully written; exactly one of out and parts */
      out?: Tensor;
      /** [T, k, H] or [T*k, H] f32 (parts mode); exactly one of out and parts */
      parts?: Tensor;
      activation?: MoeActivation;
    },
    options: OpOptions = {},
  ): Promise<KernelTier> {
    if (typeof args !== 'object' || args === null) throw new InvalidArgumentError(`args must be an object, received ${describe(args)}`);
    const { x, topkIds, topkWeights, experts, out, parts } = args;
    if ((out === undefined) === (parts === undefined)) {
      throw new InvalidArgumentError(
        `exactly one of out ([T, H] bf16) and parts ([T, k, H] f32) must be given, received ${out === undefined ? 'neither' : 'both'}`,
      );
    }
    const act = activationParams(args.activation);
    if (!(experts instanceof ExpertTable)) throw new InvalidArgumentError(`experts must be an ExpertTable (backend.expertTable), received ${describe(experts)}`);
    if (experts.backendKind !== this.kind || experts.device !== this.device) {
      throw new InvalidArgumentError(`experts belongs to ${experts.backendKind}:${experts.device}, not to ${this.name}`);
    }
    checkTensor(x, 'x', ['bf16']);
    checkTensor(topkIds, 'topkIds', ['i32']);
    checkTensor(topkWeights, 'topkWeights', ['f32']);
    if (out !== undefined) checkTensor(out, 'out', ['bf16']);
    if (parts !== undefined) checkTensor(parts, 'parts', ['f32']);
    if (x.shape.length !== 2) throw new InvalidArgumentError(`x must be [T, H], received shape [${x.shape.join(', ')}]`);
    const [t, h] = x.shape as [number, number];
    if (h !== experts.hidden) throw new InvalidArgumentError(`x must be [T, ${experts.hidden}] (the table's hidden size), received [${x.shape.join(', ')}]`);
    if (topkIds.shape.length !== 2 || topkIds.shape[0] !== t || topkIds.shape[1]! < 1) {
      throw new InvalidArgumentError(`topkIds must be [${t}, k] with k >= 1, received [${topkIds.shape.join(', ')}]`);
    }
    const k = topkIds.shape[1]!;
    checkDims(topkWeights, [t, k], 'topkWeights');
    if (out !== undefined) checkDims(out, [t, h], 'out');
    if (parts !== undefined) checkParts(parts, t, k, h);
    const table = experts.nativeArg();
    return this.#run('moeExperts', options, (addon, stream, cancel, timing) =>
      addon.moeExperts(
        stream,
        {
          x: x.nativeArg('x'),
          topkIds: topkIds.nativeArg('topkIds'),
          topkWeights: topkWeights.nativeArg('topkWeights'),
          ...(parts !== undefined ? { parts: parts.nativeArg('parts') } : { out: out!.nativeArg('out') }),
          experts: table,
          t,
          h,
          inter: experts.intermediate,
          e: experts.numExperts,
          k,
          ...act,
          isa: this.#isaCode(),
        },
        cancel,
        timing,
      ),
    );
  }

  /**
   * The combine of module-based batching: out[t] = Σ_j w[t,j] · parts[t,j] over j = 0..k-1 in order, for the
   * slots with topkIds[t,j] >= 0 (-1 skipped; there is no expert count here: any id >= 0 is read), in f32, rounded
   * to bf16 once. parts [T, k, H] (or [T*k, H]) f32 as {@link Backend.moeExperts} writes it in parts mode,
   * topkIds [T, k] i32, topkWeights [T, k] f32, out [T, H] bf16 (fully written). It is the very combine the fused
   * moeExperts runs (one function on the CPU, one kernel on CUDA), so moeExperts with `out` equals, bitwise, parts
   * filled chunk by chunk and then moeCombine. Ids < -1 reject with InvalidArgumentError (on cuda when the op
   * completes, without a host sync).
   * @example
   * const parts = new HostTensor('f32', [T, k, H]);
   * await be.moeExperts({ x, topkIds, topkWeights, experts: chunkTable, parts });   // once per chunk of experts
   * await be.moeCombine({ parts, topkIds, topkWeights, out });                     // out [T, H] bf16
   */
  moeCombine(args: { parts: Tensor; topkIds: Tensor; topkWeights: Tensor; out: Tensor }, options: OpOptions = {}): Promise<KernelTier> {
    if (typeof args !== 'object' || args === null) throw new InvalidArgumentError(`args must be an object, received ${describe(args)}`);
    const { parts, topkIds, topkWeights, out } = args;
    checkTensor(parts, 'parts', ['f32']);
    checkTensor(topkIds, 'topkIds', ['i32']);
    checkTensor(topkWeights, 'topkWeights', ['f32']);
    checkTensor(out, 'out', ['bf16']);
    if (topkIds.shape.length !== 2 || topkIds.shape[1]! < 1) {
      throw new InvalidArgumentError(`topkIds must be [T, k] with k >= 1, received [${topkIds.shape.join(', ')}]`);
    }
    const [t, k] = topkIds.shape as [number, number];
    if (out.shape.length !== 2 || out.shape[0] !== t || out.shape[1]! < 1) {
      throw new InvalidArgumentError(`out must be [${t}, H] (topkIds' T) with H >= 1, received [${out.shape.join(', ')}]`);
    }
    const h = out.shape[1]!;
    checkDims(topkWeights, [t, k], 'topkWeights');
    checkParts(parts, t, k, h);
    return this.#run('moeCombine', options, (addon, stream, cancel, timing) =>
      addon.moeCombine(
        stream,
        {
          parts: parts.nativeArg('parts'),
          topkIds: topkIds.nativeArg('topkIds'),
          topkWeights: topkWeights.nativeArg('topkWeights'),
          out: out.nativeArg('out'),
          t,
          h,
          k,
          isa: this.#isaCode(),
        },
        cancel,
        timing,
      ),
    );
  }

  /**
   * dst[i] = src[ids[i]]: rows of src (everything after its first dimension) picked by `ids` (i32 [n]; -1 gives a
   * zero row). On CUDA, src may be pinned host memory: the kernel reads just the selected rows over PCIe with no
   * copy into device memory first (zero-copy gather, for decode steps that touch few rows of an expert); it is
   * also the embedding lookup.
   * @example
   * await be.gatherRows(embedTable, tokenIds, hidden)   // [V, H] bf16, [T] i32 -> [T, H] bf16
   */
  gatherRows(src: Tensor, ids: Tensor, dst: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(src, 'src');
    checkTensor(ids, 'ids', ['i32']);
    checkTensor(dst, 'dst');
    sameDtype(src, dst, 'src', 'dst');
    if (src.shape.length < 1) throw new InvalidArgumentError(`src must have at least 1 dimension, received [${src.shape.join(', ')}]`);
    if (ids.shape.length !== 1) throw new InvalidArgumentError(`ids must be 1-D [n], received [${ids.shape.join(', ')}]`);
    const n = ids.shape[0]!;
    const row = src.shape.slice(1);
    if (dst.shape.length !== src.shape.length || dst.shape[0] !== n || row.some((d, i) => dst.shape[i + 1] !== d)) {
      throw new InvalidArgumentError(`dst must be [${[n, ...row].join(', ')}], received [${dst.shape.join(', ')}]`);
    }
    const rowBytes = row.reduce((a, b) => a * b, 1) * DTYPE_SIZE[src.dtype];
    return this.#run('gatherRows', options, (addon, stream, cancel, timing) =>
      addon.gatherRows(
        stream,
        { src: src.nativeArg('src'), srcRows: src.shape[0]!, rowBytes, ids: ids.nativeArg('ids'), n, dst: dst.nativeArg('dst') },
        cancel,
        timing,
      ),
    );
  }

  /**
   * Row scatter, the mirror of gatherRows: dst[ids[i]] = src[i] for rows of src.shape[1..] elements, with f32 rows
   * rounded to bf16 / f16 on the way (to nearest even, as `convert`) when dst has that dtype; otherwise the dtypes
   * match and rows are copied. ids [n] i32 must be distinct and inside dst's rows: checked when the op runs, and a
   * bad one rejects with InvalidArgumentError before any row is written. A CPU op (host tensors): on a CUDA backend
   * it runs on the CPU. The KV cache writes a step's K and V with it.
   * @example
   * await be.scatterRows(k, HostTensor.from('i32', [2], [7, 3]), pages)   // [2, 128] f32 -> rows 7, 3 of [N, 128] bf16
   */
  scatterRows(src: Tensor, ids: Tensor, dst: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(src, 'src');
    checkTensor(ids, 'ids', ['i32']);
    checkTensor(dst, 'dst');
    if (src.dtype !== dst.dtype && !(src.dtype === 'f32' && (dst.dtype === 'bf16' || dst.dtype === 'f16'))) {
      throw new InvalidArgumentError(`dst.dtype must equal src.dtype, or be bf16 / f16 for f32 src, received ${src.dtype} -> ${dst.dtype}`);
    }
    if (src.shape.length < 1) throw new InvalidArgumentError(`src must have at least 1 dimension, received [${src.shape.join(', ')}]`);
    if (ids.shape.length !== 1 || ids.shape[0] !== src.shape[0]) {
      throw new InvalidArgumentError(`ids must be [${src.shape[0]}] (src's rows), received [${ids.shape.join(', ')}]`);
    }
    const row = src.shape.slice(1);
    if (dst.shape.length !== src.shape.length || row.some((d, i) => dst.shape[i + 1] !== d)) {
      throw new InvalidArgumentError(`dst must be [rows, ${row.join(', ')}] (src's row shape), received [${dst.shape.join(', ')}]`);
    }
    const cpu = this.#cpuSide();
    return cpu.#run('scatterRows', options, (addon, stream, cancel, timing) =>
      addon.scatterRows(
        stream,
        {
          src: src.nativeArg('src'),
          srcDtype: DTYPE_CODE[src.dtype],
          n: src.shape[0]!,
          row: row.reduce((a, b) => a * b, 1),
          ids: ids.nativeArg('ids'),
          dst: dst.nativeArg('dst'),
          dstDtype: DTYPE_CODE[dst.dtype],
          dstRows: dst.shape[0]!,
          isa: cpu.#isaCode(),
        },
        cancel,
        timing,
      ),
    );
  }

  /** The backend a CPU op runs on: this one, or on a CUDA backend its CPU companion. */
  #cpuSide(): Backend {
    return this.kind === 'cpu' ? this : cpuCompanion(this.isa);
  }

  #isaCode(): number {
    return ISA_CODE[this.isa];
  }

  /**
   * Common op plumbing: stream choice, AbortSignal -> native cancel token, typed errors with the caller's stack
   * (captured at a synchronous failure; an asynchronous one's is V8's async trace: `settle`).
   * Validation errors throw synchronously from the op; everything after submission rejects the Promise.
   */
  #run(
    name: string,
    options: OpOptions,
    submit: (addon: NativeAddon, stream: NativeStream, cancel: NativeCancelToken | undefined, timing: NativeOpTiming | undefined) => Promise<KernelTier>,
  ): Promise<KernelTier> {
    if (typeof options !== 'object' || options === null) {
      throw new InvalidArgumentError(`${name}: options must be an object, received ${describe(options)}`);
    }
    const { signal } = options;
    const stream = options.stream ?? this.stream;
    if (!(stream instanceof Stream)) throw new InvalidArgumentError(`${name}: options.stream must be a Stream, received ${describe(stream)}`);
    if (stream.backend !== this.kind || stream.device !== this.device) {
      throw new InvalidArgumentError(`${name}: options.stream belongs to ${stream.backend}:${stream.device}, not to ${this.name}`);
    }
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new InvalidArgumentError(`${name}: options.signal must be an AbortSignal, received ${describe(signal)}`);
    }
    const { timing } = options;
    if (timing !== undefined && (typeof timing !== 'object' || timing === null)) {
      throw new InvalidArgumentError(`${name}: options.timing must be an object, received ${describe(timing)}`);
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    const addon = native();
    const raw: NativeOpTiming | undefined = timing ? {} : undefined;
    let p: Promise<KernelTier>;
    try {
      p = submit(addon, stream.nativeStream(name), signal && cancelTokenOf(signal), raw);
    } catch (e) {
      const holder: { stack?: string } = {};
      Error.captureStackTrace(holder, this.#run);
      throw fromNative(e, holder.stack);
    }
    return settle(p, signal, timing && { to: timing, raw: raw! });
  }
}

/**
 * A submitted op's Promise: native failures become typed errors (a cancelled op rejects with its signal's reason),
 * and the abort listener goes on every path. A failure's stack is V8's async stack trace (the callers awaiting the
 * op), not a stack captured at every submission: capturing one (async frames included) took about half of an op's
 * cost on the JS thread (1000 pipelined adds 19-22 -> 11-12 us per op without it; a tiny-qwen3-moe decode step of 70
 * ops 5.6-7.3 -> 3.8-4.7 ms, 6 runs each, AVX2 VM, 2026-11-27).
 */
/**
 * The native cancel token of `signal`, made at its first op (one per signal, not per op: a step of hundreds of ops
 * under one signal then adds no token and no abort listener per op): aborting the signal cancels it, and so every
 * op submitted with the signal that has not finished.
 */
const cancelTokens = new WeakMap<AbortSignal, NativeCancelToken>();
function cancelTokenOf(signal: AbortSignal): NativeCancelToken {
  let token = cancelTokens.get(signal);
  if (!token) {
    const t = new (native().CancelToken)();
    signal.addEventListener('abort', () => t.cancel(), { once: true });
    cancelTokens.set(signal, t);
    token = t;
  }
  return token;
}

/**
 * `call` on a native thread under `signal` (checked first; its cancel token passed on): a cancellation by the signal
 * rejects with the signal's reason, a native failure as its typed error with the stack of `caller`'s call site.
 */
async function offThread<T>(signal: AbortSignal | undefined, caller: (...args: never[]) => unknown, call: (cancel: NativeCancelToken | undefined) => Promise<T>): Promise<T> {
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new InvalidArgumentError(`options.signal must be an AbortSignal, received ${describe(signal)}`);
  }
  signal?.throwIfAborted();
  const holder: { stack?: string } = {};
  Error.captureStackTrace(holder, caller);
  try {
    return await call(signal && cancelTokenOf(signal));
  } catch (e) {
    if ((e as { code?: unknown })?.code === CANCELLED_CODE && signal?.aborted) throw signal.reason;
    throw fromNative(e, holder.stack);
  }
}

async function settle(p: Promise<KernelTier>, signal: AbortSignal | undefined, timing?: { to: OpTiming; raw: NativeOpTiming }): Promise<KernelTier> {
  try {
    const tier = await p;
    if (timing) {
      timing.to.startMs = timing.raw.start! + MONOTONIC_TO_NOW;
      timing.to.endMs = timing.raw.end! + MONOTONIC_TO_NOW;
    }
    return tier;
  } catch (e) {
    if ((e as { code?: unknown })?.code === CANCELLED_CODE && signal?.aborted) throw signal.reason;
    throw fromNative(e);
  }
}

/** Arguments of {@link Backend.rope}. */
export interface RopeParams {
  /** [tokens, qHeads, headDim] f32 | bf16, rotated in place */
  q?: Tensor;
  /** [tokens, kvHeads, headDim], q's dtype, rotated in place */
  k?: Tensor;
  /** [tokens] i32 absolute positions (any order) */
  positions: Tensor;
  /** [rotaryDim / 2] f32 (lib/rope.ts ropeParameters) */
  invFreq: Tensor;
  /** multiplies cos / sin (yarn attention factor); default 1 */
  attentionScaling?: number;
}

/** Arguments of {@link Backend.attention}. */
export interface AttentionParams {
  /** [totalQ, qHeads, headDim] f32 | bf16, the sequences' query tokens back to back */
  q: Tensor;
  /** [numPages, kvHeads, blockSize, headDim] f32 | f16 | bf16 (KvCache.keys(layer)) */
  k: Tensor;
  /** same shape and dtype as k (KvCache.values(layer)) */
  v: Tensor;
  /** [totalQ, qHeads, headDim] f32 | bf16 */
  out: Tensor;
  /** [numSeqs, maxBlocks] i32 page ids; entries past ceil(kvLen / blockSize) are not read */
  blockTables: Tensor;
  /** [numSeqs] i32 tokens in the cache per sequence, this step's included */
  kvLens: Tensor;
  /** [numSeqs] i32 query tokens per sequence (<= kvLen; they sum to totalQ) */
  qLens: Tensor;
  /** softmax scale (default 1 / sqrt(headDim)) */
  scale?: number;
  /** attend only to the last `slidingWindow` positions, the query's own included (default 0: no window) */
  slidingWindow?: number;
  /** [qHeads] f32 attention-sink logits (added to each head's softmax denominator) */
  sinks?: Tensor;
  /** KV splits per sequence, merged by log-sum-exp (default 0: automatic by length and thread count) */
  numSplits?: number;
  /**
   * Instead of numSplits: ceil(kvLen / splitTokens) splits per sequence (default 0: unused). The count then depends
   * on the sequence alone, so its rows are the same bits in any batch (the model runtime passes
   * ATTENTION_SPLIT_TOKENS); long contexts still get splits to spread over the threads.
   */
  splitTokens?: number;
  /**
   * Run on at most this many of the CPU pool's threads (default 0: all of them); the same bits either way with
   * splitTokens or numSplits set (the automatic split count follows the threads). The model
   * runtime caps it on a CUDA host while expert copies stream (LoadModelOptions.attentionThreads), leaving cores to
   * the threads that feed the GPU.
   */
  threads?: number;
  /**
   * Run on this CPU kernel tier when it is below the backend's (default: the backend's tier). The model runtime
   * passes LoadModelOptions.attentionIsa: on some hosts the AVX-512F tier (f32 FMAs on K/V converted as they load)
   * outran the AVX-512 BF16 one on decode (a 16-core Xeon, block 64: 98 vs 85 GB/s; 2026-11-27).
   * @example
   * await cpu.attention({ ...params, isa: 'avx512' }); // resolves 'avx512' on an avx512bf16 machine
   */
  isa?: CpuIsa;
}

let cpuCompanionBackend: Backend | undefined;
/** The CPU backend that runs CPU-only ops (attention) for a CUDA backend. */
function cpuCompanion(isa: CpuIsa): Backend {
  if (cpuCompanionBackend?.isa !== isa) cpuCompanionBackend = new Backend('cpu', 0, isa);
  return cpuCompanionBackend;
}

const FLOAT_DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];
const GEMM_DTYPES: readonly DType[] = ['f32', 'bf16'];

function checkTensor(t: unknown, what: string, dtypes?: readonly DType[]): asserts t is Tensor {
  if (!(t instanceof HostTensor) && !(t instanceof DeviceTensor)) {
    throw new InvalidArgumentError(`${what} must be a HostTensor or DeviceTensor, received ${describe(t)}`);
  }
  if (dtypes && !dtypes.includes(t.dtype)) {
    throw new InvalidArgumentError(`${what}.dtype must be one of ${dtypes.join(', ')}, received ${t.dtype}`);
  }
}

function checkDims(t: Tensor, shape: readonly number[], what: string): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new InvalidArgumentError(`${what} must be [${shape.join(', ')}], received [${t.shape.join(', ')}]`);
  }
}

/** moeExperts / moeCombine `parts`: [t, k, h] or [t*k, h] (f32, checked by the caller). */
function checkParts(parts: Tensor, t: number, k: number, h: number): void {
  const s = parts.shape;
  const ok3 = s.length === 3 && s[0] === t && s[1] === k && s[2] === h;
  const ok2 = s.length === 2 && s[0] === t * k && s[1] === h;
  if (!ok3 && !ok2) throw new InvalidArgumentError(`parts must be [${t}, ${k}, ${h}] (or [${t * k}, ${h}]), received [${s.join(', ')}]`);
}

function sameDtype(a: Tensor, b: Tensor, an: string, bn: string): void {
  if (a.dtype !== b.dtype) throw new InvalidArgumentError(`${bn}.dtype must equal ${an}.dtype (${a.dtype}), received ${b.dtype}`);
}

function sameShape(a: Tensor, b: Tensor, an: string, bn: string): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new InvalidArgumentError(`${bn} must have ${an}'s shape [${a.shape.join(', ')}], received [${b.shape.join(', ')}]`);
  }
}

/** Runs a synchronous native call, rethrowing native errors as typed errors. */
function wrapSync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e);
  }
}
