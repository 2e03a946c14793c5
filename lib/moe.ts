/**
 * The fused MoE layer's expert table: where each expert's weights live, indexed by expert id. Experts need not be
 * contiguous (they sit in cache slots), so the table holds one tensor view per expert and the op turns it into a
 * native pointer table (host pointers on the CPU backend; on CUDA a device array of pointers uploaded on the
 * stream right before the kernels). An expert that is not set is absent: ids that point to it contribute zero.
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
import { InvalidArgumentError } from './errors.js';
import type { NativeTensorArg } from './native.js';
import { DeviceTensor, HostTensor, type Tensor } from './tensor.js';

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

function checkWeight(t: unknown, what: string, shape: readonly number[]): asserts t is Tensor {
  if (!(t instanceof HostTensor) && !(t instanceof DeviceTensor)) {
    throw new InvalidArgumentError(`${what} must be a HostTensor or DeviceTensor, received ${describe(t)}`);
  }
  if (t.dtype !== 'bf16') throw new InvalidArgumentError(`${what}.dtype must be bf16, received ${t.dtype}`);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new InvalidArgumentError(`${what} must be [${shape.join(', ')}], received [${t.shape.join(', ')}]`);
  }
  if (t.disposed) throw new InvalidArgumentError(`${what} was disposed`);
}

/**
 * The native form of an ExpertTable: per expert gate/up/down tensor args, null where absent; the bias arrays only
 * when some expert has biases (null for the experts that have none).
 */
type NativeTable = {
  readonly gate: ReadonlyArray<NativeTensorArg | null>;
  readonly up: ReadonlyArray<NativeTensorArg | null>;
  readonly down: ReadonlyArray<NativeTensorArg | null>;
  readonly gateBias?: ReadonlyArray<NativeTensorArg | null>;
  readonly upBias?: ReadonlyArray<NativeTensorArg | null>;
  readonly downBias?: ReadonlyArray<NativeTensorArg | null>;
};

/** Per-expert weight locations for {@link Backend.moeExperts}. Create with `backend.expertTable(...)`. */
export class ExpertTable {
  readonly numExperts: number;
  readonly hidden: number;
  readonly intermediate: number;
  /** The backend kind and device whose ops accept this table. */
  readonly backendKind: 'cpu' | 'cuda';
  readonly device: number;
  readonly #entries: Array<Entry | undefined>;
  // nativeArg()'s last result, reused until set/clear (E = 128 experts are 384 tensor args per op; building them
  // anew each call cost about 0.13 ms of a 3 ms decode step). Never mutated once built.
  #native: NativeTable | undefined;

  /** @internal use backend.expertTable */
  constructor(backendKind: 'cpu' | 'cuda', device: number, numExperts: number, dims: { hidden: number; intermediate: number }) {
    for (const [v, w] of [
      [numExperts, 'numExperts'],
      [dims?.hidden, 'hidden'],
      [dims?.intermediate, 'intermediate'],
    ] as const) {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
        throw new InvalidArgumentError(`${w} must be a positive integer, received ${describe(v)}`);
      }
    }
    this.backendKind = backendKind;
    this.device = device;
    this.numExperts = numExperts;
    this.hidden = dims.hidden;
    this.intermediate = dims.intermediate;
    this.#entries = new Array<Entry | undefined>(numExperts).fill(undefined);
  }

  #checkId(e: unknown): number {
    if (typeof e !== 'number' || !Number.isSafeInteger(e) || e < 0 || e >= this.numExperts) {
      throw new InvalidArgumentError(`expert id must be an integer in [0, ${this.numExperts}), received ${describe(e)}`);
    }
    return e;
  }

  /**
   * Sets expert `e`'s weights (views are kept, not copied: keep them alive while ops may run), with its f32
   * biases when given (all of them or none; experts with and without biases may share a table).
   */
  set(e: number, w: ExpertWeights | ExpertWeightsStacked): this {
    const id = this.#checkId(e);
    if (typeof w !== 'object' || w === null) throw new InvalidArgumentError(`weights must be an object, received ${describe(w)}`);
    const H = this.hidden;
    const I = this.intermediate;
    checkWeight((w as ExpertWeights).down, `expert ${id} down`, [H, I]);
    const given = (names: readonly string[]): string[] => names.filter((n) => (w as unknown as Record<string, unknown>)[n] !== undefined);
    const withNames = (names: string[]): string => (names.length ? names.join(', ') : 'none');
    let entry: Entry;
    if ('gateUp' in w) {
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
      checkWeight(w.gate, `expert ${id} gate`, [I, H]);
      checkWeight(w.up, `expert ${id} up`, [I, H]);
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
    this.#entries[id] = entry;
    this.#native = undefined;
    return this;
  }

  /** Whether expert `e` is present with biases. */
  hasBiases(e: number): boolean {
    return this.#entries[this.#checkId(e)]?.bias !== undefined;
  }

  /** Marks expert `e` absent (ids pointing to it contribute zero). */
  clear(e: number): this {
    this.#entries[this.#checkId(e)] = undefined;
    this.#native = undefined;
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

  /** @internal the native table: per expert gate/up/down tensor args, null where absent. */
  nativeArg(): NativeTable {
    // The cached table stands while no entry's tensor was disposed; otherwise rebuild, which throws DisposedError.
    const cached = this.#native;
    if (cached && this.#entries.every((en) => !en || !disposedEntry(en))) {
      return cached;
    }
    const gate: Array<NativeTensorArg | null> = [];
    const up: Array<NativeTensorArg | null> = [];
    const down: Array<NativeTensorArg | null> = [];
    const half = this.intermediate * this.hidden * 2;
    const anyBias = this.#entries.some((en) => en?.bias);
    const gateBias: Array<NativeTensorArg | null> = [];
    const upBias: Array<NativeTensorArg | null> = [];
    const downBias: Array<NativeTensorArg | null> = [];
    const halfBias = this.intermediate * 4;
    this.#entries.forEach((en, i) => {
      if (anyBias) {
        const b = en?.bias;
        if (!b) {
          gateBias.push(null);
          upBias.push(null);
          downBias.push(null);
        } else {
          const g = b.gate.nativeArg(`experts[${i}].${b.up ? 'gateBias' : 'gateUpBias'}`);
          if (b.up) {
            gateBias.push(g);
            upBias.push(b.up.nativeArg(`experts[${i}].upBias`));
          } else {
            gateBias.push({ ...g, bytes: halfBias });
            upBias.push({ ...g, offset: g.offset + halfBias, bytes: halfBias });
          }
          downBias.push(b.down.nativeArg(`experts[${i}].downBias`));
        }
      }
      if (!en) {
        gate.push(null);
        up.push(null);
        down.push(null);
        return;
      }
      const g = en.gate.nativeArg(`experts[${i}].${en.up ? 'gate' : 'gateUp'}`);
      if (en.up) {
        gate.push(g);
        up.push(en.up.nativeArg(`experts[${i}].up`));
      } else {
        gate.push({ ...g, bytes: half });
        up.push({ ...g, offset: g.offset + half, bytes: half });
      }
      down.push(en.down.nativeArg(`experts[${i}].down`));
    });
    const biases = anyBias ? { gateBias: Object.freeze(gateBias), upBias: Object.freeze(upBias), downBias: Object.freeze(downBias) } : {};
    this.#native = Object.freeze({ gate: Object.freeze(gate), up: Object.freeze(up), down: Object.freeze(down), ...biases });
    return this.#native;
  }
}
