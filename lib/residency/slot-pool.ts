/**
 * The GPU slot pool: `slots` fixed-size slots in device memory, allocated once, each holding one expert as
 * [gate | up | down] (the ExpertStore layout, so a whole expert moves with one transfer). Slot ids are stable
 * for the pool's life; which expert sits in which slot is the expert cache's business. `packed` (CPU backend): slots
 * of a packed ExpertStore's size, viewed as PackedTensors for a packed expert table.
 *
 * @example
 * const pool = SlotPool.create(be, { slots: 16, hidden: 4096, intermediate: 14336 });
 * const t = engine.submit(store.expert(0, 3).whole, pool.slot(5).whole, { priority: 'demand' });
 */
import type { Backend } from '../backend.js';
import { describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';
import type { DeviceTensor, PackedTensor } from '../tensor.js';
import { checkPacked, expertLayout, expertViews } from './expert-store.js';

export interface SlotViews {
  gate: DeviceTensor | PackedTensor; // [I, H] (PackedTensor in a packed pool)
  up: DeviceTensor | PackedTensor; // [I, H]
  down: DeviceTensor | PackedTensor; // [H, I]
  whole: DeviceTensor<'u8'>;
}

export class SlotPool {
  readonly slots: number;
  readonly hidden: number;
  readonly intermediate: number;
  readonly dtype: 'bf16' | 'f16' | 'f32';
  /** Slots hold experts in the panel64 layout of a packed ExpertStore (PackedTensor views). */
  readonly packed: boolean;
  readonly slotBytes: number;
  readonly #mem: DeviceTensor<'u8'>;
  readonly #views: SlotViews[];

  private constructor(mem: DeviceTensor<'u8'>, slots: number, hidden: number, intermediate: number, dtype: 'bf16' | 'f16' | 'f32', packed: boolean) {
    this.#mem = mem;
    this.slots = slots;
    this.hidden = hidden;
    this.intermediate = intermediate;
    this.dtype = dtype;
    this.packed = packed;
    this.slotBytes = expertLayout(hidden, intermediate, dtype, packed).expertBytes;
    this.#views = Array.from({ length: slots }, (_, s) => {
      const base = s * this.slotBytes;
      return {
        ...expertViews((dt, shape, offset) => mem.view(dt, shape, offset), base, hidden, intermediate, dtype, packed),
        whole: mem.view('u8', [this.slotBytes], base),
      };
    });
  }

  /** One device allocation of slots x expert bytes. OutOfMemoryError when the device (or CPU pool) lacks it. */
  static create(be: Backend, options: { slots: number; hidden: number; intermediate: number; dtype?: 'bf16' | 'f16' | 'f32'; packed?: boolean }): SlotPool {
    for (const k of ['slots', 'hidden', 'intermediate'] as const) {
      const v = options[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new InvalidArgumentError(`${k} must be a positive integer, received ${describe(v)}`);
    }
    const dtype = options.dtype ?? 'bf16';
    const packed = checkPacked(options.packed, dtype, be, 'slots');
    const bytes = options.slots * expertLayout(options.hidden, options.intermediate, dtype, packed).expertBytes;
    return new SlotPool(be.alloc('u8', [bytes]), options.slots, options.hidden, options.intermediate, dtype, packed);
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
