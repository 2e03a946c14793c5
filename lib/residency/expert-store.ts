/**
 * The pinned host expert store: every routed expert of every MoE layer in page-locked host memory (cudaHostAlloc
 * on CUDA, page-aligned host memory on the CPU backend), so any expert can be copied to a GPU slot at full PCIe
 * speed. Memory is allocated in large chunks (1 GiB by default), each expert contiguous as [gate | up | down] so
 * one copy moves it whole. Sized for stores far larger than GPU memory; the budget is checked before anything is
 * allocated.
 *
 * Layout of one expert (bf16, HF row-major):  gate [I, H] | up [I, H] | down [H, I]   = 3·I·H elements
 * With `packed` (CPU backend, bf16): the same three in the CPU kernels' panel64 layout (PackedTensor views, filled by
 * packWeightsInto at load), packedNumel(I, H) | packedNumel(I, H) | packedNumel(H, I) elements.
 *
 * @example
 * const store = ExpertStore.create(be, { layers: cfg.moeLayers, experts: cfg.numExperts, hidden: cfg.hiddenSize,
 *                                        intermediate: cfg.moeIntermediateSize });
 * await store.load(ckpt, cfg, { onProgress: (done, total) => console.log(done, total) });
 * const { gate, up, down, whole } = store.expert(cfg.moeLayers[0], 3);   // HostTensor views
 */
import os from 'node:os';

import type { Backend } from '../backend.js';
import { type DType, DTYPE_SIZE, describe } from '../dtype.js';
import { InvalidArgumentError, OutOfMemoryError } from '../errors.js';
import { type ModelConfig, expertTensorNames } from '../model/config.js';
import type { Checkpoint } from '../model/safetensors.js';
import { type DeviceTensor, HostTensor, MAX_VIEW_BYTES, PackedTensor, type PinnedBuffer, packedNumel } from '../tensor.js';

export interface ExpertStoreOptions {
  /** MoE layer indices (model layer numbers) held by the store. */
  layers: readonly number[];
  experts: number;
  hidden: number;
  intermediate: number;
  dtype?: Extract<DType, 'bf16' | 'f16' | 'f32'>;
  /** Host bytes the store may take (default: 90% of the memory the OS reports free). */
  hostBudgetBytes?: number;
  /** Size of each pinned allocation (default 1 GiB, rounded down to whole experts). */
  chunkBytes?: number;
  /** Hold the experts packed (panel64 layout, for the CPU backend's packed expert tables; bf16 only). Default false. */
  packed?: boolean;
}

/** One expert's bytes in the store and in slots ([gate | up | down]), row-major or packed (panel64). */
export function expertLayout(hidden: number, intermediate: number, dtype: 'bf16' | 'f16' | 'f32', packed: boolean): { gateBytes: number; expertBytes: number } {
  const gateBytes = packed ? packedNumel(intermediate, hidden) * 2 : hidden * intermediate * DTYPE_SIZE[dtype];
  const downBytes = packed ? packedNumel(hidden, intermediate) * 2 : gateBytes;
  return { gateBytes, expertBytes: 2 * gateBytes + downBytes };
}

/**
 * gate, up and down of the expert at byte `base` of some memory, made with `at` (a PinnedBuffer's `tensor` or a
 * DeviceTensor's `view`): [I, H], [I, H], [H, I] tensors, or PackedTensors over packed memory.
 */
export function expertViews<T extends HostTensor | DeviceTensor>(
  at: (dtype: DType, shape: number[], byteOffset: number) => T,
  base: number,
  hidden: number,
  intermediate: number,
  dtype: 'bf16' | 'f16' | 'f32',
  packed: boolean,
): { gate: T | PackedTensor; up: T | PackedTensor; down: T | PackedTensor } {
  const { gateBytes } = expertLayout(hidden, intermediate, dtype, packed);
  const view = (shape: [number, number], offset: number): T | PackedTensor =>
    packed ? PackedTensor.wrap(at('bf16', [packedNumel(shape[0], shape[1])], base + offset), shape[0], shape[1]) : at(dtype, shape, base + offset);
  return { gate: view([intermediate, hidden], 0), up: view([intermediate, hidden], gateBytes), down: view([hidden, intermediate], 2 * gateBytes) };
}

/** The `packed` option of a store or slot pool: a boolean, true only for bf16 experts on the CPU backend. */
export function checkPacked(packed: unknown, dtype: string, be: Backend, what: 'experts' | 'slots'): boolean {
  const p = packed ?? false;
  if (typeof p !== 'boolean') throw new InvalidArgumentError(`packed must be a boolean, received ${describe(packed)}`);
  if (p && (dtype !== 'bf16' || be.kind !== 'cpu')) throw new InvalidArgumentError(`packed: true needs bf16 ${what} on the CPU backend, received ${dtype} on ${be.name}`);
  return p;
}

export interface ExpertViews {
  gate: HostTensor | PackedTensor; // [I, H] (PackedTensor in a packed store)
  up: HostTensor | PackedTensor; // [I, H]
  down: HostTensor | PackedTensor; // [H, I]
  /** The whole expert as bytes (gate | up | down): what a transfer moves. */
  whole: HostTensor<'u8'>;
}

function positiveInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new InvalidArgumentError(`${what} must be a positive integer, received ${describe(v)}`);
  return v;
}

export class ExpertStore {
  readonly layers: readonly number[];
  readonly experts: number;
  readonly hidden: number;
  readonly intermediate: number;
  readonly dtype: 'bf16' | 'f16' | 'f32';
  /** Experts held in the panel64 layout (PackedTensor views). */
  readonly packed: boolean;
  /** Bytes of one expert (gate + up + down). */
  readonly expertBytes: number;
  readonly totalBytes: number;
  readonly #chunks: PinnedBuffer[];
  readonly #perChunk: number;
  readonly #layerIndex: Map<number, number>;
  readonly #be: Backend;

  private constructor(be: Backend, o: Required<Omit<ExpertStoreOptions, 'hostBudgetBytes' | 'chunkBytes'>>, chunks: PinnedBuffer[], perChunk: number) {
    this.#be = be;
    this.layers = [...o.layers];
    this.experts = o.experts;
    this.hidden = o.hidden;
    this.intermediate = o.intermediate;
    this.dtype = o.dtype;
    this.packed = o.packed;
    this.expertBytes = expertLayout(o.hidden, o.intermediate, o.dtype, o.packed).expertBytes;
    this.totalBytes = this.expertBytes * this.layers.length * this.experts;
    this.#chunks = chunks;
    this.#perChunk = perChunk;
    this.#layerIndex = new Map(this.layers.map((l, i) => [l, i]));
  }

  /**
   * Allocates the store (synchronously: fine for small stores; see createAsync). Checks the budget first: a store
   * that does not fit gives OutOfMemoryError naming both sizes before a byte is allocated; an allocation that
   * fails midway frees what was taken.
   */
  static create(be: Backend, options: ExpertStoreOptions): ExpertStore {
    const plan = ExpertStore.#plan(options, be);
    const chunks: PinnedBuffer[] = [];
    try {
      for (const bytes of plan.chunkSizes) chunks.push(be.allocPinned(bytes));
    } catch (e) {
      for (const c of chunks) c.dispose();
      throw e;
    }
    return new ExpertStore(be, plan.options, chunks, plan.perChunk);
  }

  /**
   * create() with the pinned chunks allocated and their pages mapped in off the JS thread (page-locking gigabytes
   * takes seconds on CUDA hosts; faulting them in as a load fills them, longer): the way to build a real model's
   * store. Same budget check, same cleanup on failure or abort.
   */
  static async createAsync(be: Backend, options: ExpertStoreOptions, signal?: AbortSignal): Promise<ExpertStore> {
    const plan = ExpertStore.#plan(options, be);
    const chunks: PinnedBuffer[] = [];
    try {
      // mapped in at once (prefault): filled page by page, this VM faulted each 4 KiB in at ~11 us (a 3 MB expert
      // projection packed into fresh memory took 15x as long as into mapped memory)
      for (const bytes of plan.chunkSizes) chunks.push(await be.allocPinnedAsync(bytes, { prefault: true, ...(signal ? { signal } : {}) }));
    } catch (e) {
      for (const c of chunks) c.dispose();
      throw e;
    }
    return new ExpertStore(be, plan.options, chunks, plan.perChunk);
  }

  static #plan(options: ExpertStoreOptions, be: Backend): {
    options: Required<Omit<ExpertStoreOptions, 'hostBudgetBytes' | 'chunkBytes'>>;
    chunkSizes: number[];
    perChunk: number;
  } {
    if (!Array.isArray(options.layers) || options.layers.some((l) => !Number.isSafeInteger(l) || l < 0) || new Set(options.layers).size !== options.layers.length) {
      throw new InvalidArgumentError(`layers must be distinct non-negative integers, received ${describe(options.layers)}`);
    }
    const experts = positiveInt(options.experts, 'experts');
    const hidden = positiveInt(options.hidden, 'hidden');
    const intermediate = positiveInt(options.intermediate, 'intermediate');
    const dtype = options.dtype ?? 'bf16';
    if (dtype !== 'bf16' && dtype !== 'f16' && dtype !== 'f32') throw new InvalidArgumentError(`dtype must be bf16, f16 or f32, received ${describe(dtype)}`);
    const packed = checkPacked(options.packed, dtype, be, 'experts');
    const { expertBytes } = expertLayout(hidden, intermediate, dtype, packed);
    const count = options.layers.length * experts;
    const total = expertBytes * count;
    const budget = options.hostBudgetBytes ?? Math.floor(os.freemem() * 0.9);
    if (total > budget) {
      const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;
      throw new OutOfMemoryError(
        `the expert store needs ${gib(total)} (${count} experts x ${expertBytes} bytes) but the host budget is ${gib(budget)}` +
          `${options.hostBudgetBytes === undefined ? ' (90% of free memory)' : ''}; nothing was allocated`,
      );
    }
    // at most what a JS view can address (the store's tensors are views of its chunks)
    const chunkBytes = Math.min(options.chunkBytes ?? 2 ** 30, MAX_VIEW_BYTES);
    const perChunk = Math.max(1, Math.floor(chunkBytes / expertBytes));
    const chunkSizes: number[] = [];
    for (let left = count; left > 0; left -= perChunk) chunkSizes.push(Math.min(perChunk, left) * expertBytes);
    return { options: { layers: options.layers, experts, hidden, intermediate, dtype, packed }, chunkSizes, perChunk };
  }

  /** Views of expert `expert` of model layer `layer`. */
  expert(layer: number, expert: number): ExpertViews {
    const li = this.#layerIndex.get(layer);
    if (li === undefined) throw new InvalidArgumentError(`layer ${describe(layer)} is not in the store (layers ${this.layers.join(', ')})`);
    if (!Number.isSafeInteger(expert) || expert < 0 || expert >= this.experts) {
      throw new InvalidArgumentError(`expert must be an integer in [0, ${this.experts}), received ${describe(expert)}`);
    }
    const index = li * this.experts + expert;
    const chunk = this.#chunks[Math.floor(index / this.#perChunk)]!;
    const base = (index % this.#perChunk) * this.expertBytes;
    return {
      ...expertViews((dtype, shape, offset) => chunk.tensor(dtype, shape, offset), base, this.hidden, this.intermediate, this.dtype, this.packed),
      whole: chunk.tensor('u8', [this.expertBytes], base),
    };
  }

  /**
   * Writes one projection of an expert from its row-major form (`rows`: bf16 [I, H] for gate and up, [H, I] for
   * down): copied into a plain store, packed into a packed one. For loaders that build experts themselves (gpt-oss).
   */
  async write(layer: number, expert: number, part: 'gate' | 'up' | 'down', rows: HostTensor, options: { signal?: AbortSignal } = {}): Promise<void> {
    const dst = this.expert(layer, expert)[part];
    const want = part === 'down' ? [this.hidden, this.intermediate] : [this.intermediate, this.hidden];
    if (rows.dtype !== this.dtype || rows.shape.length !== 2 || rows.shape[0] !== want[0] || rows.shape[1] !== want[1]) {
      throw new InvalidArgumentError(`rows must be ${this.dtype} [${want.join(', ')}], received ${rows.dtype} [${rows.shape.join(', ')}]`);
    }
    if (dst instanceof PackedTensor) await this.#be.packWeightsInto(rows, dst, options.signal ? { signal: options.signal } : {});
    else (dst.data as Uint16Array).set(rows.data as Uint16Array);
  }

  /**
   * Fills the store from a checkpoint: each expert projection is read straight into its pinned view (no extra
   * copy, no whole-file buffering). Checks every tensor's dtype and shape first.
   */
  async load(ckpt: Checkpoint, cfg: ModelConfig, options: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {}): Promise<void> {
    const jobs: Array<{ name: string; dst: () => HostTensor | PackedTensor }> = [];
    for (const layer of this.layers) {
      for (let e = 0; e < this.experts; e++) {
        const names = expertTensorNames(cfg, layer, e);
        for (const part of ['gate', 'up', 'down'] as const) {
          const info = ckpt.tensor(names[part]);
          const want = part === 'down' ? [this.hidden, this.intermediate] : [this.intermediate, this.hidden];
          if (info.shape.length !== 2 || info.shape[0] !== want[0] || info.shape[1] !== want[1]) {
            throw new InvalidArgumentError(`${names[part]} has shape [${info.shape.join(', ')}], the store expects [${want.join(', ')}]`);
          }
          jobs.push({ name: names[part], dst: () => this.expert(layer, e)[part] });
        }
      }
    }
    let done = 0;
    const op = options.signal ? { signal: options.signal } : {};
    // packed: each tensor is read into a row-major buffer (two per shape, reused: fresh memory for every tensor
    // cost a page fault per 4 KiB, 3x the load time), then packed into its view while the next one is read into the
    // other buffer
    const rowsOf = new Map<string, { bufs: HostTensor[]; turn: number }>();
    let packing: Promise<void> | undefined; // the previous tensor's pack
    const packed = async () => {
      const p = packing;
      packing = undefined;
      if (p) {
        await p;
        options.onProgress?.(++done, jobs.length);
      }
    };
    try {
      for (const j of jobs) {
        const dst = j.dst();
        if (dst instanceof PackedTensor) {
          const key = dst.shape.join('x');
          let r = rowsOf.get(key);
          if (!r) rowsOf.set(key, (r = { bufs: [new HostTensor(this.dtype, dst.shape), new HostTensor(this.dtype, dst.shape)], turn: 0 }));
          const rows = r.bufs[r.turn++ % 2]!; // not the one the pack in flight reads
          await ckpt.read(j.name, rows, op);
          await packed();
          packing = this.#be.packWeightsInto(rows, dst, op);
        } else {
          await packed();
          await ckpt.read(j.name, dst, op);
          options.onProgress?.(++done, jobs.length);
        }
      }
      await packed();
    } finally {
      await packing?.catch(() => undefined); // a read failed: its buffers stay untouched until the pack ends
    }
  }

  dispose(): void {
    for (const c of this.#chunks) c.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
