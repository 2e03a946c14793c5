/**
 * The fused MoE layer's expert table: where each expert's weights live, indexed by expert id. Experts need not be
 * contiguous (they sit in cache slots), so the table holds one tensor view per expert. It is a persistent native
 * pointer table (cpp/napi/expert_table.h): `set` validates an expert's tensors once (dtype, shape, bytes, alignment,
 * placement for the table's backend and device) and stores their pointers; an op takes a copy-on-write snapshot
 * of the pointers (host pointers on the CPU backend; on CUDA a device array of pointers uploaded on the stream
 * right before the kernels), so its submission cost does not grow with the number of experts set, and `set` /
 * `clear` while an op is in flight do not affect that op. An expert that is not set is absent: ids that point to
 * it contribute zero.
 *
 * @example
 * const table = be.expertTable(8, { hidden: 4096, intermediate: 14336 });
 * table.set(3, { gate: w1, up: w3, down: w2 });          // HF layouts: gate/up [I, H], down [H, I], bf16
 * table.set(5, { gateUp: stacked, down: w2b });          // gate and up stacked as [2I, H]
 * table.clear(3);                                        // expert 3 evicted: contributes zero from now on
 * await be.moeExperts({ x, topkIds, topkWeights, experts: table, out });
 *
 * // gpt-oss: f32 biases per expert and the clamped swiglu-oai activation
 * table.set(0, { gateUp: gu, down: wd, gateUpBias: bgu, downBias: bd });   // bgu [2I] (gate | up), bd [H] f32
 * await be.moeExperts({ x, topkIds, topkWeights, experts: table, out, activation: { kind: 'swiglu-oai', alpha: 1.702, limit: 7 } });
 */
import { describe } from './dtype.js';
import { InvalidArgumentError, fromNative } from './errors.js';
import { type NativeExpertTable, type NativeTensorArg, native } from './native.js';
import { DeviceTensor, HostTensor, PackedTensor, type Tensor } from './tensor.js';

/**
 * One expert's weights, HF layouts, bf16: gate [I, H], up [I, H], down [H, I]. Optional f32 biases (gpt-oss),
 * all three or none: gateBias [I] and upBias [I] are added to the gate and up projections before the activation,
 * downBias [H] to the expert's output before its routing weight.
 */
export interface ExpertWeights {
  gate: Tensor;
  up: Tensor;
  down: Tensor;
  gateBias?: Tensor;
  upBias?: Tensor;
  downBias?: Tensor;
}
/**
 * Gate and up stacked as one [2I, H] tensor (rows 0..I-1 gate, I..2I-1 up), down [H, I]; bf16. Optional f32
 * biases, both or none: gateUpBias [2I] (0..I-1 gate, I..2I-1 up, like gateUp) and downBias [H]. gpt-oss
 * checkpoints interleave gate and up (columns 0, 2, 4, ... gate); de-interleave them into this layout.
 */
export interface ExpertWeightsStacked {
  gateUp: Tensor;
  down: Tensor;
  gateUpBias?: Tensor;
  downBias?: Tensor;
}

/**
 * The expert FFN's activation for {@link Backend.moeExperts}. 'silu' (default; Mixtral, Qwen, OLMoE):
 * silu(g) * u. 'swiglu-oai' (gpt-oss, HF GptOssExperts): g = min(g, limit), u = clamp(u, -limit, limit),
 * (u + 1) * g * sigmoid(alpha * g); gpt-oss uses alpha 1.702 and limit = config swiglu_limit (7.0).
 * @example
 * const activation: MoeActivation = { kind: 'swiglu-oai', alpha: 1.702, limit: 7 };
 */
export type MoeActivation = { kind: 'silu' } | { kind: 'swiglu-oai'; alpha: number; limit: number };

/** @internal validates a moeExperts `activation` arg; its native params ({} for silu, the default). */
export function activationParams(a: unknown): { activation?: 0 | 1; alpha?: number; limit?: number } {
  if (a === undefined) return {};
  if (typeof a !== 'object' || a === null) {
    throw new InvalidArgumentError(`activation must be { kind: 'silu' } or { kind: 'swiglu-oai', alpha, limit }, received ${describe(a)}`);
  }
  const v = a as { kind?: unknown; alpha?: unknown; limit?: unknown };
  if (v.kind === 'silu') return {};
  if (v.kind !== 'swiglu-oai') {
    throw new InvalidArgumentError(`activation.kind must be 'silu' or 'swiglu-oai', received ${describe(v.kind)}`);
  }
  if (typeof v.alpha !== 'number' || !Number.isFinite(v.alpha)) {
    throw new InvalidArgumentError(`activation.alpha must be a finite number, received ${describe(v.alpha)}`);
  }
  if (typeof v.limit !== 'number' || !Number.isFinite(v.limit) || !(v.limit > 0)) {
    throw new InvalidArgumentError(`activation.limit must be a finite number > 0, received ${describe(v.limit)}`);
  }
  return { activation: 1, alpha: v.alpha, limit: v.limit };
}

interface Entry {
  gate: Tensor;
  up: Tensor | undefined; // undefined: gate is the stacked [2I, H] tensor
  down: Tensor;
  /** f32 biases; up undefined: gate is the stacked [2I] bias */
  bias: { gate: Tensor; up: Tensor | undefined; down: Tensor } | undefined;
}

function checkBias(t: unknown, what: string, n: number): asserts t is Tensor {
  if (!(t instanceof HostTensor) && !(t instanceof DeviceTensor)) {
    throw new InvalidArgumentError(`${what} must be a HostTensor or DeviceTensor, received ${describe(t)}`);
  }
  if (t.dtype !== 'f32') throw new InvalidArgumentError(`${what}.dtype must be f32, received ${t.dtype}`);
  if (t.shape.length !== 1 || t.shape[0] !== n) {
    throw new InvalidArgumentError(`${what} must be [${n}], received [${t.shape.join(', ')}]`);
  }
  if (t.disposed) throw new InvalidArgumentError(`${what} was disposed`);
}

const disposedEntry = (en: Entry): boolean =>
  en.gate.disposed || !!en.up?.disposed || en.down.disposed || (!!en.bias && (en.bias.gate.disposed || !!en.bias.up?.disposed || en.bias.down.disposed));

function checkWeight(t: unknown, what: string, shape: readonly number[], packed = false): asserts t is Tensor {
  if (packed) {
    if (!(t instanceof PackedTensor)) throw new InvalidArgumentError(`${what} must be a PackedTensor (the table is packed), received ${describe(t)}`);
  } else if (!(t instanceof HostTensor) && !(t instanceof DeviceTensor)) {
    throw new InvalidArgumentError(`${what} must be a HostTensor or DeviceTensor, received ${describe(t)}`);
  }
  if (t.dtype !== 'bf16') throw new InvalidArgumentError(`${what}.dtype must be bf16, received ${t.dtype}`);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new InvalidArgumentError(`${what} must be [${shape.join(', ')}], received [${t.shape.join(', ')}]`);
  }
  if (t.disposed) throw new InvalidArgumentError(`${what} was disposed`);
}

/**
 * An entry's native tensor args (NativeExpertTable.set): a stacked gateUp (gateUpBias) becomes gate and up args
 * over its two halves of `half` (`halfBias`) bytes. Throws the tensor's DisposedError, named experts[id].<arg>, for
 * a disposed one.
 */
function nativeEntry(id: number, en: Entry, half: number, halfBias: number): Parameters<NativeExpertTable['set']>[1] {
  const arg = (t: Tensor, name: string): NativeTensorArg => t.nativeArg(`experts[${id}].${name}`);
  const split = ([source, offset]: NativeTensorArg, n: number): [NativeTensorArg, NativeTensorArg] => [
    [source, offset, n],
    [source, offset + n, n],
  ];
  const b = en.bias;
  let bias = {};
  if (b) {
    const [gateBias, upBias] = b.up ? [arg(b.gate, 'gateBias'), arg(b.up, 'upBias')] : split(arg(b.gate, 'gateUpBias'), halfBias);
    bias = { gateBias, upBias, downBias: arg(b.down, 'downBias') };
  }
  const [gate, up] = en.up ? [arg(en.gate, 'gate'), arg(en.up, 'up')] : split(arg(en.gate, 'gateUp'), half);
  return { gate, up, down: arg(en.down, 'down'), ...bias };
}

/** Per-expert weight locations for {@link Backend.moeExperts}. Create with `backend.expertTable(...)`. */
export class ExpertTable {
  readonly numExperts: number;
  readonly hidden: number;
  readonly intermediate: number;
  /** The backend kind and device whose ops accept this table. */
  readonly backendKind: 'cpu' | 'cuda';
  readonly device: number;
  /** Weights are PackedTensors (panel64 layout, CPU backend). */
  readonly packed: boolean;
  // The tensors (for has / hasBiases and the disposed check of nativeArg) and the native table holding their
  // validated pointers, changed together by set / clear.
  readonly #entries: Array<Entry | undefined>;
  readonly #native: NativeExpertTable;

  /** @internal use backend.expertTable */
  constructor(backendKind: 'cpu' | 'cuda', device: number, numExperts: number, dims: { hidden: number; intermediate: number; packed?: boolean }) {
    for (const [v, w] of [
      [numExperts, 'numExperts'],
      [dims?.hidden, 'hidden'],
      [dims?.intermediate, 'intermediate'],
    ] as const) {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
        throw new InvalidArgumentError(`${w} must be a positive integer, received ${describe(v)}`);
      }
    }
    const packed = dims.packed ?? false;
    if (typeof packed !== 'boolean') throw new InvalidArgumentError(`packed must be a boolean, received ${describe(dims.packed)}`);
    if (packed && backendKind !== 'cpu') throw new InvalidArgumentError(`packed tables are a CPU-backend layout, this table is for ${backendKind}:${device}`);
    this.packed = packed;
    this.backendKind = backendKind;
    this.device = device;
    this.numExperts = numExperts;
    this.hidden = dims.hidden;
    this.intermediate = dims.intermediate;
    this.#entries = new Array<Entry | undefined>(numExperts).fill(undefined);
    try {
      this.#native = new (native().ExpertTable)(backendKind === 'cuda' ? 1 : 0, device, numExperts, dims.hidden, dims.intermediate, packed);
    } catch (e) {
      throw fromNative(e);
    }
  }

  #checkId(e: unknown): number {
    if (typeof e !== 'number' || !Number.isSafeInteger(e) || e < 0 || e >= this.numExperts) {
      throw new InvalidArgumentError(`expert id must be an integer in [0, ${this.numExperts}), received ${describe(e)}`);
    }
    return e;
  }

  /**
   * Sets expert `e`'s weights, with its f32 biases when given (all of them or none; experts with and without biases
   * may share a table). Views are kept, not copied: the table keeps their memory referenced until the entry is
   * cleared or replaced (an op in flight keeps its own lease until it settles), but disposing a tensor still frees
   * its memory, and an op that finds a disposed tensor in the table throws DisposedError. All validation happens
   * here (InvalidArgumentError naming the expert and argument); a failed set leaves the entry as it was.
   */
  set(e: number, w: ExpertWeights | ExpertWeightsStacked): this {
    const id = this.#checkId(e);
    if (typeof w !== 'object' || w === null) throw new InvalidArgumentError(`weights must be an object, received ${describe(w)}`);
    const H = this.hidden;
    const I = this.intermediate;
    const P = this.packed;
    checkWeight((w as ExpertWeights).down, `expert ${id} down`, [H, I], P);
    const given = (names: readonly string[]): string[] => names.filter((n) => (w as unknown as Record<string, unknown>)[n] !== undefined);
    const withNames = (names: string[]): string => (names.length ? names.join(', ') : 'none');
    let entry: Entry;
    if ('gateUp' in w) {
      if (P) throw new InvalidArgumentError(`expert ${id}: a packed table takes gate, up and down, not a stacked gateUp`);
      checkWeight(w.gateUp, `expert ${id} gateUp`, [2 * I, H]);
      const wrong = given(['gateBias', 'upBias']);
      if (wrong.length) {
        throw new InvalidArgumentError(`expert ${id}: the stacked form takes gateUpBias [${2 * I}], not ${wrong.join(' or ')}, received ${wrong.join(', ')}`);
      }
      const b = given(['gateUpBias', 'downBias']);
      if (b.length === 1) {
        throw new InvalidArgumentError(`expert ${id} biases must be gateUpBias and downBias together or none, received ${withNames(b)}`);
      }
      let bias: Entry['bias'];
      if (b.length === 2) {
        checkBias(w.gateUpBias, `expert ${id} gateUpBias`, 2 * I);
        checkBias(w.downBias, `expert ${id} downBias`, H);
        bias = { gate: w.gateUpBias, up: undefined, down: w.downBias };
      }
      entry = { gate: w.gateUp, up: undefined, down: w.down, bias };
    } else {
      checkWeight(w.gate, `expert ${id} gate`, [I, H], P);
      checkWeight(w.up, `expert ${id} up`, [I, H], P);
      const wrong = given(['gateUpBias']);
      if (wrong.length) throw new InvalidArgumentError(`expert ${id}: gateUpBias goes with gateUp, received it with separate gate and up`);
      const b = given(['gateBias', 'upBias', 'downBias']);
      if (b.length !== 0 && b.length !== 3) {
        throw new InvalidArgumentError(`expert ${id} biases must be gateBias, upBias and downBias together or none, received ${withNames(b)}`);
      }
      let bias: Entry['bias'];
      if (b.length === 3) {
        checkBias(w.gateBias, `expert ${id} gateBias`, I);
        checkBias(w.upBias, `expert ${id} upBias`, I);
        checkBias(w.downBias, `expert ${id} downBias`, H);
        bias = { gate: w.gateBias, up: w.upBias, down: w.downBias };
      }
      entry = { gate: w.gate, up: w.up, down: w.down, bias };
    }
    try {
      this.#native.set(id, nativeEntry(id, entry, this.intermediate * this.hidden * 2, this.intermediate * 4), !entry.up);
    } catch (err) {
      throw fromNative(err);
    }
    this.#entries[id] = entry;
    return this;
  }

  /** Whether expert `e` is present with biases. */
  hasBiases(e: number): boolean {
    return this.#entries[this.#checkId(e)]?.bias !== undefined;
  }

  /** Marks expert `e` absent (ids pointing to it contribute zero). */
  clear(e: number): this {
    const id = this.#checkId(e);
    if (this.#entries[id] === undefined) return this;
    this.#native.clear(id);
    this.#entries[id] = undefined;
    return this;
  }

  /** Whether expert `e` is present. */
  has(e: number): boolean {
    return this.#entries[this.#checkId(e)] !== undefined;
  }

  /** Number of present experts. */
  get presentCount(): number {
    return this.#entries.reduce((n, x) => n + (x ? 1 : 0), 0);
  }

  /** @internal the native table; throws DisposedError (naming the entry) when a tensor set in it was disposed. */
  nativeArg(): NativeExpertTable {
    const entries = this.#entries;
    for (let i = 0; i < entries.length; i++) {
      const en = entries[i];
      if (en !== undefined && disposedEntry(en)) nativeEntry(i, en, 0, 0); // throws the tensor's DisposedError
    }
    return this.#native;
  }
}
