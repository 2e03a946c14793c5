/**
 * The one place that loads the addon (node-gyp-build: build/Release, then prebuilds/<platform>-<arch>/) and
 * types its surface. Loading is lazy: importing the package never fails; the first call that needs native code
 * throws NativeBindingError with what to do when no binary loads.
 */
import path from 'node:path';

import { NativeBindingError } from './errors.js';

/**
 * Tensor descriptor passed to native ops (cpp/napi/tensor_arg.h): its native memory or JS array, then the byte offset
 * and length of the tensor in it. An array, not an object: the addon reads elements, cheaper than named properties.
 */
export type NativeTensorArg = readonly [source: NativeMemory | ArrayBufferView, offset: number, bytes: number];

export interface NativeMemory {
  readonly byteLength: number;
  readonly disposed: boolean;
  dispose(): void;
  arrayBuffer(): ArrayBuffer;
}
export interface NativeStream {
  readonly disposed: boolean;
  synchronize(): Promise<void>;
  waitEvent(event: NativeEvent): Promise<void>;
  dispose(): void;
}
export interface NativeEvent {
  record(stream: NativeStream, generation?: number): Promise<void>;
  reserve(): number;
  query(): boolean;
  elapsedMs(start: NativeEvent): number;
  dispose(): void;
}
export interface NativeHostRegistration {
  readonly disposed: boolean;
  dispose(): void;
}
export interface NativeCancelToken {
  cancel(): void;
}

/**
 * The persistent per-expert pointer table behind lib/moe.ts ExpertTable (cpp/napi/expert_table.h): set validates
 * once (range, placement for the table's backend and device, alignment, bytes) and keeps the entry's memory
 * referenced; moeExperts takes a copy-on-write snapshot of it. stacked: gate/up (and gateBias/upBias) are the
 * halves of one gateUp (gateUpBias), for the names in messages.
 */
export interface NativeExpertTable {
  set(
    e: number,
    w: { gate: NativeTensorArg; up: NativeTensorArg; down: NativeTensorArg; gateBias?: NativeTensorArg; upBias?: NativeTensorArg; downBias?: NativeTensorArg },
    stacked: boolean,
  ): void;
  clear(e: number): void;
}

export interface NativeCudaDevice {
  index: number;
  name: string;
  computeCapability: string;
  sms: number;
  totalMemory: number;
  /** Only from info() (reading it creates the device's CUDA context). */
  freeMemory?: number;
  l2Bytes: number;
  memoryBusWidthBits: number;
  copyEngines: number;
  canMapHostMemory: boolean;
}

export interface NativeInfo {
  build: { cuda: boolean; cudaArchitectures?: string; system?: string; compiler?: string };
  cpu: {
    model: string;
    cores: number;
    threads: number;
    features: { avx2: boolean; avx512f: boolean; avx512bf16: boolean; amx: boolean };
    bestIsa: string;
    isaCap: string;
    isa: string;
  };
  cuda: {
    available: boolean;
    reason?: string;
    runtimeVersion: string | null;
    driverVersion: string | null;
    devices: NativeCudaDevice[];
  };
}

export interface MemoryCount {
  count: number;
  bytes: number;
}
export interface NativeMemoryStats {
  cpu: { pinned: MemoryCount; device: MemoryCount };
  cuda: { pinned: MemoryCount; device: MemoryCount };
  cpuDeviceBudget: number;
  /** Bytes in use in the C heap (glibc only): a native-leak signal that RSS fragmentation does not blur. */
  mallocInUse?: number;
}

/** Which kernel tier ran an op. */
export type KernelTier = 'scalar' | 'avx2' | 'avx512' | 'avx512bf16' | 'cuda';

/** What an op writes to its timing argument when it settles: when its work ran on the stream thread (steady-clock ms). */
export interface NativeOpTiming {
  start?: number;
  end?: number;
}

type OpFn<P> = (stream: NativeStream, params: P, cancel?: NativeCancelToken, timing?: NativeOpTiming) => Promise<KernelTier>;

export interface NativeAddon {
  Memory: new (backend: 0 | 1, device: number, kind: 0 | 1, bytes: number) => NativeMemory;
  Stream: new (backend: 0 | 1, device: number, priority: 0 | 1) => NativeStream;
  Event: new (backend: 0 | 1, device: number, timing: boolean) => NativeEvent;
  CancelToken: new () => NativeCancelToken;
  HostRegistration: new (array: ArrayBufferView, cuda: boolean) => NativeHostRegistration;
  ExpertTable: new (backend: 0 | 1, device: number, e: number, h: number, inter: number, packed?: boolean) => NativeExpertTable;
  info(detail?: boolean): NativeInfo;
  /** Host buffers from this many bytes are 2 MiB aligned and advised onto transparent huge pages (allocations). */
  readonly hugePageMin: number;
  /** Free and total bytes of CUDA device `device` (cudaMemGetInfo); undefined without CUDA or when the query fails. */
  cudaMemInfo(device: number): { free: number; total: number } | undefined;
  memoryStats(): NativeMemoryStats;
  allocAsync(stream: NativeStream, params: { backend: 0 | 1; device: number; kind: 0 | 1; bytes: number }, cancel?: NativeCancelToken): Promise<NativeMemory>;
  /** Maps in every page of CPU-backend memory (MADV_POPULATE_WRITE, bytes untouched): true when it did. */
  prefaultAsync(stream: NativeStream, memory: NativeMemory, cancel?: NativeCancelToken): Promise<boolean>;
  /** Bench only: one timed multithreaded read pass (a sum) over `data`; see cpp/cpu/read_probe.h. */
  readProbe(data: Float32Array): { seconds: number; sum: number };
  /** Multiply-add peak probe of the active CPU tier: iters x 12 vdpbf16ps (or f32 FMAs) per pool thread on registers; flops 0 on the scalar tier. */
  dotProbe(iters: number): { seconds: number; flops: number };
  copy: OpFn<{ src: NativeTensorArg; dst: NativeTensorArg }>;
  routerTopK: OpFn<{
    logits: NativeTensorArg;
    bias?: NativeTensorArg;
    topkIds: NativeTensorArg;
    topkWeights: NativeTensorArg;
    t: number;
    e: number;
    k: number;
    scoring: 0 | 1;
    renormalize: boolean;
  }>;
  moeAlign: OpFn<{
    topkIds: NativeTensorArg;
    counts: NativeTensorArg;
    offsets: NativeTensorArg;
    sortedTokenIds: NativeTensorArg;
    t: number;
    k: number;
    e: number;
    blockSize: number;
  }>;
  groupedGemm: OpFn<{
    a: NativeTensorArg;
    b: Array<NativeTensorArg | null>;
    out: NativeTensorArg;
    offsets: number[];
    outDtype: number;
    g: number;
    n: number;
    k: number;
    lda: number;
    ldb: number;
    ldc: number;
    isa?: number;
  }>;
  moeExperts: OpFn<{
    x: NativeTensorArg;
    topkIds: NativeTensorArg;
    topkWeights: NativeTensorArg;
    /** exactly one of out ([t, h] bf16) and parts ([t, k, h] f32, parts mode: unweighted rows, weights not read) */
    out?: NativeTensorArg;
    parts?: NativeTensorArg;
    /** a table of this backend (and device) with e experts of [inter, h] */
    experts: NativeExpertTable;
    t: number;
    h: number;
    inter: number;
    e: number;
    k: number;
    /** 0 silu (default), 1 swiglu-oai (alpha, limit) */
    activation?: 0 | 1;
    alpha?: number;
    limit?: number;
    isa?: number;
  }>;
  /** out [t, h] bf16 = bf16(Σ_j w[t, j] · parts[t, j]) over ids >= 0 (cpp/ops/moe_combine.cc) */
  moeCombine: OpFn<{
    parts: NativeTensorArg;
    topkIds: NativeTensorArg;
    topkWeights: NativeTensorArg;
    out: NativeTensorArg;
    t: number;
    h: number;
    k: number;
    isa?: number;
  }>;
  convert: OpFn<{ src: NativeTensorArg; srcDtype: number; dst: NativeTensorArg; dstDtype: number; n: number; isa?: number }>;
  add: OpFn<{ a: NativeTensorArg; b: NativeTensorArg; out: NativeTensorArg; dtype: number; n: number; bLen?: number; isa?: number }>;
  rmsNorm: OpFn<{
    x: NativeTensorArg;
    xDtype: number;
    weight: NativeTensorArg;
    wDtype: number;
    out: NativeTensorArg;
    outDtype: number;
    add?: NativeTensorArg;
    addDtype?: number;
    rows: number;
    d: number;
    eps: number;
    isa?: number;
  }>;
  gemm: OpFn<{
    a: NativeTensorArg;
    b: NativeTensorArg;
    out: NativeTensorArg;
    abDtype: number;
    outDtype: number;
    m: number;
    n: number;
    k: number;
    lda: number;
    ldb: number;
    ldc: number;
    bPacked?: boolean;
    isa?: number;
  }>;
  packWeights: OpFn<{ w: NativeTensorArg; n: number; k: number; out: NativeTensorArg; isa?: number }>;
  rope: OpFn<{
    q?: NativeTensorArg;
    k?: NativeTensorArg;
    positions: NativeTensorArg;
    invFreq: NativeTensorArg;
    dtype: number;
    tokens: number;
    qHeads: number;
    kvHeads: number;
    headDim: number;
    rotaryDim: number;
    attentionScaling: number;
    isa?: number;
  }>;
  sampleRows: OpFn<{ logits: NativeTensorArg; params: Float64Array; out: NativeTensorArg; rows: number; vocab: number; isa?: number }>;
  argmaxRows: OpFn<{ logits: NativeTensorArg; out: NativeTensorArg; rows: number; vocab: number; isa?: number }>;
  gatherRows: OpFn<{ src: NativeTensorArg; srcRows: number; rowBytes: number; ids: NativeTensorArg; n: number; dst: NativeTensorArg }>;
  scatterRows: OpFn<{ src: NativeTensorArg; srcDtype: number; n: number; row: number; ids: NativeTensorArg; dst: NativeTensorArg; dstDtype: number; dstRows: number; isa?: number }>;
  attention: OpFn<{
    q: NativeTensorArg;
    qDtype: number;
    k: NativeTensorArg;
    v: NativeTensorArg;
    kvDtype: number;
    out: NativeTensorArg;
    outDtype: number;
    blockTables: NativeTensorArg;
    kvLens: NativeTensorArg;
    qLens: NativeTensorArg;
    sinks?: NativeTensorArg;
    numSeqs: number;
    maxBlocks: number;
    numPages: number;
    totalQ: number;
    qHeads: number;
    kvHeads: number;
    headDim: number;
    blockSize: number;
    scale: number;
    slidingWindow: number;
    numSplits: number;
    splitTokens: number;
    threads?: number;
    isa?: number;
  }>;
}

let facts: NativeInfo | undefined;

/**
 * Build, CPU and CUDA device facts without per-device memory queries (no CUDA context is created), read once per
 * process: what backend selection needs.
 */
export function hostFacts(): NativeInfo {
  facts ??= native().info(false);
  return facts;
}

/** Package root (dist/lib/native.js -> ../..). */
export const packageRoot = path.join(__dirname, '..', '..');

let addon: NativeAddon | undefined;
let loadError: NativeBindingError | undefined;

/** The loaded addon; throws NativeBindingError (the same one on every call) when no binary loads. */
export function native(): NativeAddon {
  if (addon) return addon;
  if (loadError) throw loadError;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const load = require('node-gyp-build') as (dir: string) => NativeAddon;
    addon = load(packageRoot);
    return addon;
  } catch (cause) {
    loadError = new NativeBindingError(
      `moe-offload: no native binary loads on ${process.platform}-${process.arch} (Node ${process.version}).\n` +
        `  ${String((cause as Error)?.message ?? cause).split('\n')[0]}\n` +
        '  What to do:\n' +
        '  - in a checkout of the repository: npm install (builds with cmake-js), or npm run build:native\n' +
        '  - as a dependency: reinstall with install scripts enabled so node-gyp can build the CPU-only addon\n' +
        '    (needs python3, make and a C++17 compiler), or use a platform with a prebuilt binary (linux-x64)',
      { cause },
    );
    throw loadError;
  }
}
