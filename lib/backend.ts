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
import { type KernelTier, type NativeAddon, type NativeCancelToken, type NativeStream, hostFacts, native } from './native.js';
import { Event, Stream } from './stream.js';
import { DeviceTensor, HostTensor, PinnedBuffer, type Shape, type Tensor, checkShape, numelOf } from './tensor.js';

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
}

export interface OpOptions {
  /** Stream to queue the op on (default: the backend's default stream). */
  stream?: Stream;
  /** Aborting rejects the op with the signal's reason; a queued op never starts, a running CPU kernel stops. */
  signal?: AbortSignal;
}

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
  const facts = hostFacts();
  if (requested === 'auto') requested = cudaUnavailableReason(device) === undefined ? 'cuda' : 'cpu';
  if (requested === 'cuda') {
    const why = cudaUnavailableReason(device);
    if (why !== undefined) throw new BackendUnavailableError(`cuda backend unavailable: ${why}`);
    return new Backend('cuda', device, facts.cpu.isa as CpuIsa);
  }
  const isa = options.isa ?? (facts.cpu.isa as CpuIsa);
  const st = cpuIsaStatus(isa);
  if (!st.available) throw new BackendUnavailableError(`cpu-${isa} unavailable: ${st.reason}`);
  return new Backend('cpu', 0, isa);
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

  /** @internal use openBackend */
  constructor(kind: BackendKind, device: number, isa: CpuIsa) {
    this.kind = kind;
    this.device = device;
    this.isa = isa;
    this.name = kind === 'cuda' ? `cuda:${device}` : `cpu-${isa}`;
  }

  /** The default stream (shared by every Backend object of the same device). */
  get stream(): Stream {
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

  /** Page-locked host memory of `bytes` bytes (zeroed on the CPU backend only when the OS gives fresh pages). */
  allocPinned(bytes: number): PinnedBuffer {
    if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes < 0) {
      throw new InvalidArgumentError(`bytes must be a non-negative integer, received ${describe(bytes)}`);
    }
    const addon = native();
    return wrapSync(() => new PinnedBuffer(new addon.Memory(KIND_CODE[this.kind], this.device, 0, bytes), this.kind));
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
    return this.#run('copy', options, (addon, stream, cancel) =>
      addon.copy(stream, { src: src.nativeArg('src'), dst: dst.nativeArg('dst') }, cancel),
    );
  }

  /** dst = src converted between f32, f16 and bf16 (round to nearest even). Same shape. */
  convert(src: Tensor, dst: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(src, 'src', FLOAT_DTYPES);
    checkTensor(dst, 'dst', FLOAT_DTYPES);
    sameShape(src, dst, 'src', 'dst');
    return this.#run('convert', options, (addon, stream, cancel) =>
      addon.convert(
        stream,
        { src: src.nativeArg('src'), srcDtype: DTYPE_CODE[src.dtype], dst: dst.nativeArg('dst'), dstDtype: DTYPE_CODE[dst.dtype], n: src.numel, isa: this.#isaCode() },
        cancel,
      ),
    );
  }

  /** out = a + b elementwise (f32, f16 or bf16; computed in f32). Same dtype and shape; out may be a or b. */
  add(a: Tensor, b: Tensor, out: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(a, 'a', FLOAT_DTYPES);
    checkTensor(b, 'b', FLOAT_DTYPES);
    checkTensor(out, 'out', FLOAT_DTYPES);
    sameDtype(a, b, 'a', 'b');
    sameDtype(a, out, 'a', 'out');
    sameShape(a, b, 'a', 'b');
    sameShape(a, out, 'a', 'out');
    return this.#run('add', options, (addon, stream, cancel) =>
      addon.add(stream, { a: a.nativeArg('a'), b: b.nativeArg('b'), out: out.nativeArg('out'), dtype: DTYPE_CODE[a.dtype], n: a.numel, isa: this.#isaCode() }, cancel),
    );
  }

  /**
   * out[M, N] = a[M, K] · b[N, K]ᵀ (b in nn.Linear / safetensors [out_features, in_features] layout),
   * accumulated in f32. a and b: f32 or bf16 (same); out: f32 or bf16.
   * @example
   * await be.gemm(x, w, y)   // x [T, H] bf16, w [I, H] bf16, y [T, I] f32
   */
  gemm(a: Tensor, b: Tensor, out: Tensor, options: OpOptions = {}): Promise<KernelTier> {
    checkTensor(a, 'a', GEMM_DTYPES);
    checkTensor(b, 'b', GEMM_DTYPES);
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
    return this.#run('gemm', options, (addon, stream, cancel) =>
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
          isa: this.#isaCode(),
        },
        cancel,
      ),
    );
  }

  #isaCode(): number {
    return ISA_CODE[this.isa];
  }

  /**
   * Common op plumbing: stream choice, AbortSignal -> native cancel token, typed errors with the caller's stack.
   * Validation errors throw synchronously from the op; everything after submission rejects the Promise.
   */
  #run(
    name: string,
    options: OpOptions,
    submit: (addon: NativeAddon, stream: NativeStream, cancel: NativeCancelToken | undefined) => Promise<KernelTier>,
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
    const holder: { stack?: string } = {};
    Error.captureStackTrace(holder, this.#run);
    if (signal?.aborted) return Promise.reject(signal.reason);
    const addon = native();
    let cancel: NativeCancelToken | undefined;
    let onAbort: (() => void) | undefined;
    if (signal) {
      cancel = new addon.CancelToken();
      const token = cancel;
      onAbort = () => token.cancel();
      signal.addEventListener('abort', onAbort, { once: true });
    }
    let p: Promise<KernelTier>;
    try {
      p = submit(addon, stream.nativeStream(name), cancel);
    } catch (e) {
      if (onAbort) signal!.removeEventListener('abort', onAbort);
      throw fromNative(e, holder.stack);
    }
    return p.then(
      (tier) => {
        if (onAbort) signal!.removeEventListener('abort', onAbort);
        return tier;
      },
      (e: unknown) => {
        if (onAbort) signal!.removeEventListener('abort', onAbort);
        if ((e as { code?: unknown })?.code === CANCELLED_CODE && signal?.aborted) throw signal.reason;
        throw fromNative(e, holder.stack);
      },
    );
  }
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
