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
import { type DType, DTYPE_SIZE, describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';
import { type DeviceTensor, PackedTensor, packedNumel } from '../tensor.js';

export interface SlotViews {
  gate: DeviceTensor | PackedTensor; // [I, H] (PackedTensor in a packed pool)
  up: DeviceTensor | PackedTensor; // [I, H]
  down: DeviceTensor | PackedTensor; // [H, I]
  whole: DeviceTensor<'u8'>;
}

/** Bytes of one expert: gate + up + down, row-major or packed (the layout of ExpertStore's experts). */
function slotBytesOf(hidden: number, intermediate: number, dtype: 'bf16' | 'f16' | 'f32', packed: boolean): number {
  return packed ? 2 * (2 * packedNumel(intermediate, hidden) + packedNumel(hidden, intermediate)) : 3 * hidden * intermediate * DTYPE_SIZE[dtype];
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
    this.slotBytes = slotBytesOf(hidden, intermediate, dtype, packed);
    const g = packedNumel(intermediate, hidden);
    const part = hidden * intermediate * DTYPE_SIZE[dtype];
    this.#views = Array.from({ length: slots }, (_, s) => {
      const base = s * this.slotBytes;
      const whole = mem.view('u8', [this.slotBytes], base);
      if (packed) {
        return {
          gate: PackedTensor.wrap(mem.view('bf16', [g], base), intermediate, hidden),
          up: PackedTensor.wrap(mem.view('bf16', [g], base + 2 * g), intermediate, hidden),
          down: PackedTensor.wrap(mem.view('bf16', [packedNumel(hidden, intermediate)], base + 4 * g), hidden, intermediate),
          whole,
        };
      }
      return {
        gate: mem.view(dtype as DType, [intermediate, hidden], base),
        up: mem.view(dtype as DType, [intermediate, hidden], base + part),
        down: mem.view(dtype as DType, [hidden, intermediate], base + 2 * part),
        whole,
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
    const packed = options.packed ?? false;
    if (typeof packed !== 'boolean') throw new InvalidArgumentError(`packed must be a boolean, received ${describe(options.packed)}`);
    if (packed && (dtype !== 'bf16' || be.kind !== 'cpu')) throw new InvalidArgumentError(`packed: true needs bf16 slots on the CPU backend, received ${dtype} on ${be.name}`);
    const bytes = options.slots * slotBytesOf(options.hidden, options.intermediate, dtype, packed);
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
