/**
 * The pinned host expert store: every routed expert of every MoE layer in page-locked host memory (cudaHostAlloc
 * on CUDA, page-aligned host memory on the CPU backend), so any expert can be copied to a GPU slot at full PCIe
 * speed. Memory is allocated in large chunks (1 GiB by default), each expert contiguous as [gate | up | down] so
 * one copy moves it whole. Sized for stores far larger than GPU memory; the budget is checked before anything is
 * allocated.
 *
 * Layout of one expert (bf16, HF row-major):  gate [I, H] | up [I, H] | down [H, I]   = 3·I·H elements
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
import { type HostTensor, MAX_VIEW_BYTES, type PinnedBuffer } from '../tensor.js';

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
}

export interface ExpertViews {
  gate: HostTensor; // [I, H]
  up: HostTensor; // [I, H]
  down: HostTensor; // [H, I]
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
  /** Bytes of one expert (gate + up + down). */
  readonly expertBytes: number;
  readonly totalBytes: number;
  readonly #chunks: PinnedBuffer[];
  readonly #perChunk: number;
  readonly #layerIndex: Map<number, number>;

  private constructor(o: Required<Omit<ExpertStoreOptions, 'hostBudgetBytes' | 'chunkBytes'>>, chunks: PinnedBuffer[], perChunk: number) {
    this.layers = [...o.layers];
    this.experts = o.experts;
    this.hidden = o.hidden;
    this.intermediate = o.intermediate;
    this.dtype = o.dtype;
    this.expertBytes = 3 * o.hidden * o.intermediate * DTYPE_SIZE[o.dtype];
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
    const plan = ExpertStore.#plan(options);
    const chunks: PinnedBuffer[] = [];
    try {
      for (const bytes of plan.chunkSizes) chunks.push(be.allocPinned(bytes));
    } catch (e) {
      for (const c of chunks) c.dispose();
      throw e;
    }
    return new ExpertStore(plan.options, chunks, plan.perChunk);
  }

  /**
   * create() with the pinned chunks allocated off the JS thread (page-locking gigabytes takes seconds on CUDA
   * hosts): the way to build a real model's store. Same budget check, same cleanup on failure or abort.
   */
  static async createAsync(be: Backend, options: ExpertStoreOptions, signal?: AbortSignal): Promise<ExpertStore> {
    const plan = ExpertStore.#plan(options);
    const chunks: PinnedBuffer[] = [];
    try {
      for (const bytes of plan.chunkSizes) chunks.push(await be.allocPinnedAsync(bytes, signal ? { signal } : {}));
    } catch (e) {
      for (const c of chunks) c.dispose();
      throw e;
    }
    return new ExpertStore(plan.options, chunks, plan.perChunk);
  }

  static #plan(options: ExpertStoreOptions): {
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
    const expertBytes = 3 * hidden * intermediate * DTYPE_SIZE[dtype];
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
    return { options: { layers: options.layers, experts, hidden, intermediate, dtype }, chunkSizes, perChunk };
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
    const { hidden: h, intermediate: i, dtype } = this;
    const part = i * h * DTYPE_SIZE[dtype];
    return {
      gate: chunk.tensor(dtype, [i, h], base),
      up: chunk.tensor(dtype, [i, h], base + part),
      down: chunk.tensor(dtype, [h, i], base + 2 * part),
      whole: chunk.tensor('u8', [this.expertBytes], base),
    };
  }

  /**
   * Fills the store from a checkpoint: each expert projection is read straight into its pinned view (no extra
   * copy, no whole-file buffering). Checks every tensor's dtype and shape first.
   */
  async load(ckpt: Checkpoint, cfg: ModelConfig, options: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {}): Promise<void> {
    const jobs: Array<{ name: string; dst: () => HostTensor }> = [];
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
    for (const j of jobs) {
      await ckpt.read(j.name, j.dst(), options.signal ? { signal: options.signal } : {});
      options.onProgress?.(++done, jobs.length);
    }
  }

  dispose(): void {
    for (const c of this.#chunks) c.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
