/**
 * ExpertCache on the real weight-residency layer (CPU backend): real expert bytes move from the pinned ExpertStore
 * through the chunked TransferEngine into SlotPool slots. A seeded workload of layer steps (prefetches for the
 * next layers, concurrent demands for the current one, cancellations of the routed layer's prefetches) checks
 * that every slot handed to a kernel holds exactly the demanded expert's bytes, both when the lease is granted
 * and when the kernel releases it (nothing overwrote a pinned slot), and that no slot or transfer leaks.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type ExpertLease } from '../lib/cache/expert-cache.js';
import { LruPolicy } from '../lib/cache/policy.js';
import { DeviceSlotIndexPool, StoreTransferEngine, residencyExpertCache } from '../lib/cache/residency.js';
import { Rng } from '../lib/cache/types.js';
import { ExpertStore, InvalidArgumentError, SlotPool, TransferEngine, openBackend } from '../lib/index.js';

const be = openBackend({ backend: 'cpu' });

/** Deterministic, expert-specific bytes (xorshift32 seeded by the expert's identity). */
function fill(bytes: Uint8Array, seed: number): void {
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
}

void test('ExpertCache over ExpertStore + TransferEngine + SlotPool: every released slot holds the demanded expert', async () => {
  const layers = [1, 3, 5]; // model layer numbers: cache layer i is store.layers[i]
  const E = 6;
  const k = 2;
  // bf16 [48, 64] x 3 = 18,432 bytes per expert: 5 chunks of 4 KiB, so demands overtake prefetches mid-expert
  using store = ExpertStore.create(be, { layers, experts: E, hidden: 64, intermediate: 48 });
  for (const l of layers) for (let e = 0; e < E; e++) fill(store.expert(l, e).whole.data, l * 100 + e + 1);
  using slots = SlotPool.create(be, { slots: 5, hidden: 64, intermediate: 48 });
  const engine = new TransferEngine(be, { chunkBytes: 4096, maxInFlight: 2 });
  const cache = residencyExpertCache({ store, slots, engine, policy: new LruPolicy(layers.length * E), maxInFlight: 2 });

  const expected = (lease: ExpertLease) => store.expert(layers[lease.layer]!, lease.expert).whole.data;
  const slotBytes = async (slot: number) => (await be.download(slots.slot(slot).whole)).data;
  let checked = 0;
  const check = async (lease: ExpertLease, when: string) => {
    const got = await slotBytes(lease.slot);
    assert.ok(Buffer.from(got).equals(Buffer.from(expected(lease))), `${when}: slot ${lease.slot} does not hold layer ${lease.layer} expert ${lease.expert}`);
    checked++;
  };

  const rng = new Rng(7);
  for (let step = 0; step < 90; step++) {
    const layer = step % layers.length;
    // speculative work for the next two layers, some of it wrong
    for (let d = 1; d <= 2; d++) for (let i = 0; i < 2; i++) cache.prefetch((layer + d) % layers.length, rng.int(E), rng.next());
    // the router picks k distinct experts; the layer's unneeded prefetches are cancelled once it is routed
    const picked = new Set<number>();
    while (picked.size < k) picked.add(rng.int(E));
    cache.cancelPrefetches((l, e) => l === layer && !picked.has(e));
    const leases = await Promise.all([...picked].map((e) => cache.acquire(layer, e)));
    for (const l of leases) await check(l, 'at acquire');
    // the "kernel" runs while more prefetches stream into the other slots
    if (step % 3 === 0) cache.prefetch((layer + 1) % layers.length, rng.int(E), 1);
    await new Promise((r) => setImmediate(r));
    for (const l of leases) {
      await check(l, 'at release');
      l.release();
    }
  }
  // drain: every prefetch settles, nothing stays queued or in flight, no slot leaks
  cache.cancelPrefetches();
  for (let i = 0; cache.inFlight > 0; i++) {
    assert.ok(i < 1000, 'transfers never settled');
    await new Promise((r) => setTimeout(r, 1));
  }
  assert.equal(cache.queued, 0);
  const s = cache.stats;
  assert.ok(s.misses > 0 && s.hits > 0, `hits ${s.hits}, misses ${s.misses}`);
  assert.ok(s.prefetchIssued > 0 && s.prefetchWasted > 0);
  assert.equal(checked, 2 * 90 * k);
  assert.ok(cache.occupied <= slots.slots);
  // every resident expert's slot holds its bytes (prefetched ones included)
  for (const r of cache.residents()) {
    assert.ok(Buffer.from(await slotBytes(r.slot)).equals(Buffer.from(store.expert(layers[r.layer]!, r.expert).whole.data)), `resident ${r.layer}/${r.expert}`);
  }
  engine.dispose();
});

void test('residency adapters reject mismatched stores, slots and layers with typed errors', () => {
  using store = ExpertStore.create(be, { layers: [0], experts: 2, hidden: 64, intermediate: 48 });
  using small = SlotPool.create(be, { slots: 2, hidden: 64, intermediate: 32 });
  const engine = new TransferEngine(be);
  assert.throws(() => new StoreTransferEngine(store, small, engine), (e: unknown) => e instanceof InvalidArgumentError && /slots must hold one store expert each \(18432 bytes\), received slots of 12288 bytes/.test(e.message));
  using slots = SlotPool.create(be, { slots: 2, hidden: 64, intermediate: 48 });
  const ste = new StoreTransferEngine(store, slots, engine);
  const signal = new AbortController().signal;
  assert.throws(() => ste.fetch({ layer: 1, expert: 0, slot: 0, bytes: store.expertBytes, priority: 'demand', signal }), /layer must be an index into the store's 1 MoE layers, received 1/);
  assert.equal(new DeviceSlotIndexPool(slots).size, 2);
  engine.dispose();
});
