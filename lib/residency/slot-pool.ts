/**
 * The GPU slot pool: `slots` fixed-size slots in device memory, allocated once, each holding one expert as
 * [gate | up | down] (the ExpertStore layout, so a whole expert moves with one transfer). Slot ids are stable
 * for the pool's life; which expert sits in which slot is the expert cache's business.
 *
 * @example
 * const pool = SlotPool.create(be, { slots: 16, hidden: 4096, intermediate: 14336 });
 * const t = engine.submit(store.expert(0, 3).whole, pool.slot(5).whole, { priority: 'demand' });
 */
import type { Backend } from '../backend.js';
import { type DType, DTYPE_SIZE, describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';
import type { DeviceTensor } from '../tensor.js';

export interface SlotViews {
  gate: DeviceTensor; // [I, H]
  up: DeviceTensor; // [I, H]
  down: DeviceTensor; // [H, I]
  whole: DeviceTensor<'u8'>;
}

export class SlotPool {
  readonly slots: number;
  readonly hidden: number;
  readonly intermediate: number;
  readonly dtype: 'bf16' | 'f16' | 'f32';
  readonly slotBytes: number;
  readonly #mem: DeviceTensor<'u8'>;
  readonly #views: SlotViews[];

  private constructor(mem: DeviceTensor<'u8'>, slots: number, hidden: number, intermediate: number, dtype: 'bf16' | 'f16' | 'f32') {
    this.#mem = mem;
    this.slots = slots;
    this.hidden = hidden;
    this.intermediate = intermediate;
    this.dtype = dtype;
    this.slotBytes = 3 * hidden * intermediate * DTYPE_SIZE[dtype];
    const part = hidden * intermediate * DTYPE_SIZE[dtype];
    this.#views = Array.from({ length: slots }, (_, s) => {
      const base = s * this.slotBytes;
      return {
        gate: mem.view(dtype as DType, [intermediate, hidden], base),
        up: mem.view(dtype as DType, [intermediate, hidden], base + part),
        down: mem.view(dtype as DType, [hidden, intermediate], base + 2 * part),
        whole: mem.view('u8', [this.slotBytes], base),
      };
    });
  }

  /** One device allocation of slots x expert bytes. OutOfMemoryError when the device (or CPU pool) lacks it. */
  static create(be: Backend, options: { slots: number; hidden: number; intermediate: number; dtype?: 'bf16' | 'f16' | 'f32' }): SlotPool {
    for (const k of ['slots', 'hidden', 'intermediate'] as const) {
      const v = options[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new InvalidArgumentError(`${k} must be a positive integer, received ${describe(v)}`);
    }
    const dtype = options.dtype ?? 'bf16';
    const bytes = options.slots * 3 * options.hidden * options.intermediate * DTYPE_SIZE[dtype];
    return new SlotPool(be.alloc('u8', [bytes]), options.slots, options.hidden, options.intermediate, dtype);
  }

  slot(i: number): SlotViews {
    if (!Number.isSafeInteger(i) || i < 0 || i >= this.slots) throw new InvalidArgumentError(`slot must be an integer in [0, ${this.slots}), received ${describe(i)}`);
    return this.#views[i]!;
  }

  dispose(): void {
    this.#mem.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
