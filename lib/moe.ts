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
 */
import { describe } from './dtype.js';
import { InvalidArgumentError } from './errors.js';
import type { NativeTensorArg } from './native.js';
import { DeviceTensor, HostTensor, type Tensor } from './tensor.js';

/** One expert's weights, HF layouts, bf16: gate [I, H], up [I, H], down [H, I]. */
export interface ExpertWeights {
  gate: Tensor;
  up: Tensor;
  down: Tensor;
}
/** Gate and up stacked as one [2I, H] tensor (rows 0..I-1 gate, I..2I-1 up), down [H, I]; bf16. */
export interface ExpertWeightsStacked {
  gateUp: Tensor;
  down: Tensor;
}

interface Entry {
  gate: Tensor;
  up: Tensor | undefined; // undefined: gate is the stacked [2I, H] tensor
  down: Tensor;
}

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

/** The native form of an ExpertTable: per expert gate/up/down tensor args, null where absent. */
type NativeTable = {
  readonly gate: ReadonlyArray<NativeTensorArg | null>;
  readonly up: ReadonlyArray<NativeTensorArg | null>;
  readonly down: ReadonlyArray<NativeTensorArg | null>;
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

  /** Sets expert `e`'s weights (views are kept, not copied: keep them alive while ops may run). */
  set(e: number, w: ExpertWeights | ExpertWeightsStacked): this {
    const id = this.#checkId(e);
    if (typeof w !== 'object' || w === null) throw new InvalidArgumentError(`weights must be an object, received ${describe(w)}`);
    const H = this.hidden;
    const I = this.intermediate;
    checkWeight((w as ExpertWeights).down, `expert ${id} down`, [H, I]);
    if ('gateUp' in w) {
      checkWeight(w.gateUp, `expert ${id} gateUp`, [2 * I, H]);
      this.#entries[id] = { gate: w.gateUp, up: undefined, down: w.down };
    } else {
      checkWeight(w.gate, `expert ${id} gate`, [I, H]);
      checkWeight(w.up, `expert ${id} up`, [I, H]);
      this.#entries[id] = { gate: w.gate, up: w.up, down: w.down };
    }
    this.#native = undefined;
    return this;
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
    if (cached && this.#entries.every((en) => !en || (!en.gate.disposed && !en.up?.disposed && !en.down.disposed))) {
      return cached;
    }
    const gate: Array<NativeTensorArg | null> = [];
    const up: Array<NativeTensorArg | null> = [];
    const down: Array<NativeTensorArg | null> = [];
    const half = this.intermediate * this.hidden * 2;
    this.#entries.forEach((en, i) => {
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
    this.#native = Object.freeze({ gate: Object.freeze(gate), up: Object.freeze(up), down: Object.freeze(down) });
    return this.#native;
  }
}
