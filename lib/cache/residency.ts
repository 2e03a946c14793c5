/**
 * Adapters that run the ExpertCache on the real weight-residency layer (lib/residency): the GPU SlotPool's fixed
 * slots become the cache's slot indices, and a fetch becomes one TransferEngine.submit of the expert's whole
 * [gate | up | down] bytes from the pinned ExpertStore into the slot, at the fetch's priority (demand transfers
 * overtake queued prefetch chunks inside the engine) and cancelled through the fetch's AbortSignal (the engine
 * rejects only after the chunks in flight have finished, so the cache frees a slot only once nothing writes it).
 *
 * Cache layer i is the store's i-th MoE layer (`store.layers[i]`, a model layer number).
 *
 * @example
 * const store = ExpertStore.create(be, { layers: cfg.moeLayers, experts: 64, hidden: 2048, intermediate: 1024 });
 * const slots = SlotPool.create(be, { slots: 256, hidden: 2048, intermediate: 1024 });
 * const engine = new TransferEngine(be);
 * const cache = residencyExpertCache({ store, slots, engine, policy: new LruPolicy(store.layers.length * 64) });
 * const lease = await cache.acquire(0, 5);
 * const { gate, up, down } = slots.slot(lease.slot);     // [I, H], [I, H], [H, I] device views
 * await runExpert(gate, up, down); lease.release();
 */
import { InvalidArgumentError } from '../errors.js';
import type { ExpertStore } from '../residency/expert-store.js';
import type { SlotPool as DeviceSlotPool } from '../residency/slot-pool.js';
import type { Transfer, TransferEngine as ResidencyTransferEngine } from '../residency/transfer.js';
import { ExpertCache, type ExpertCacheOptions } from './expert-cache.js';
import { ArraySlotPool, type FetchRequest, type SlotPool, type TransferEngine } from './types.js';

/** The cache's SlotPool over a device SlotPool: slot indices 0..slots-1 of `pool`, lowest free index first. */
export class DeviceSlotIndexPool extends ArraySlotPool implements SlotPool {
  readonly device: DeviceSlotPool;
  constructor(device: DeviceSlotPool) {
    super(device.slots);
    this.device = device;
  }
}

/**
 * The cache's TransferEngine over the residency TransferEngine: copies `store.expert(store.layers[layer], expert)
 * .whole` into `slots.slot(slot).whole`. Each fetch's Transfer is kept until it settles (`transferOf`) so a caller
 * can make a compute stream wait on `transfer.event` instead of awaiting from JS.
 */
export class StoreTransferEngine implements TransferEngine {
  readonly store: ExpertStore;
  readonly slots: DeviceSlotPool;
  readonly engine: ResidencyTransferEngine;
  readonly #active = new Map<number, Transfer>();

  constructor(store: ExpertStore, slots: DeviceSlotPool, engine: ResidencyTransferEngine) {
    if (store.expertBytes !== slots.slotBytes) {
      throw new InvalidArgumentError(`slots must hold one store expert each (${store.expertBytes} bytes), received slots of ${slots.slotBytes} bytes`);
    }
    this.store = store;
    this.slots = slots;
    this.engine = engine;
  }

  /** The transfer currently filling `slot` (undefined once it settled). */
  transferOf(slot: number): Transfer | undefined {
    return this.#active.get(slot);
  }

  promote(slot: number): void {
    this.#active.get(slot)?.promote();
  }

  fetch(req: FetchRequest): Promise<void> {
    const layer = this.store.layers[req.layer];
    if (layer === undefined) throw new InvalidArgumentError(`layer must be an index into the store's ${this.store.layers.length} MoE layers, received ${req.layer}`);
    if (req.bytes !== this.store.expertBytes) throw new InvalidArgumentError(`bytes must be the store's expert size ${this.store.expertBytes}, received ${req.bytes}`);
    const src = this.store.expert(layer, req.expert).whole;
    const t = this.engine.submit(src, this.slots.slot(req.slot).whole, { priority: req.priority, signal: req.signal });
    this.#active.set(req.slot, t);
    const clear = () => {
      if (this.#active.get(req.slot) === t) this.#active.delete(req.slot);
    };
    return t.done.then(clear, (e: unknown) => {
      clear();
      throw e;
    });
  }
}

/** Options of {@link residencyExpertCache}: ExpertCacheOptions minus what the residency objects determine. */
export interface ResidencyCacheOptions extends Omit<ExpertCacheOptions, 'numLayers' | 'numExperts' | 'expertBytes' | 'pool' | 'engine'> {
  store: ExpertStore;
  slots: DeviceSlotPool;
  engine: ResidencyTransferEngine;
}

/** An ExpertCache whose slots are `slots`' device slots and whose fetches copy from `store` through `engine`. */
export function residencyExpertCache(o: ResidencyCacheOptions): ExpertCache {
  const { store, slots, engine, ...rest } = o;
  return new ExpertCache({
    ...rest,
    numLayers: store.layers.length,
    numExperts: store.experts,
    expertBytes: store.expertBytes,
    pool: new DeviceSlotIndexPool(slots),
    engine: new StoreTransferEngine(store, slots, engine),
  });
}
