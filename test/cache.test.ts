/**
 * ExpertCache invariants on a fake transfer engine and a simulated clock: hits and misses, pinning, demand
 * overtaking prefetches, cancellation, capacity, typed errors, and a seeded property test over random workloads
 * (no deadlock, no leaked slots, capacity never exceeded, a pinned expert never evicted).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ExpertCache, type ExpertLease } from '../lib/cache/expert-cache.js';
import { LfuPolicy, LruPolicy, ProbabilityPolicy, type EvictionPolicy } from '../lib/cache/policy.js';
import { ArraySlotPool, Rng } from '../lib/cache/types.js';
import { InvalidArgumentError } from '../lib/errors.js';
import { FakeClock, FakeTransferEngine, flush } from './harness/cache-fakes.js';

function make(slots: number, L = 4, E = 8, policy: EvictionPolicy = new LruPolicy(L * E)) {
  const clock = new FakeClock();
  const engine = new FakeTransferEngine(clock, 1);
  const pool = new ArraySlotPool(slots);
  const cache = new ExpertCache({ numLayers: L, numExperts: E, expertBytes: 10, pool, engine, policy, clock });
  return { clock, engine, pool, cache };
}

void test('miss then hit; stall time comes from the clock; bytes counted', async () => {
  const { cache, engine } = make(2);
  const p = cache.acquire(0, 1);
  await flush();
  assert.equal(engine.pending.length, 1);
  assert.equal(engine.log[0]!.priority, 'demand');
  await engine.completeNext();
  const lease = await p;
  assert.equal(lease.layer, 0);
  assert.equal(cache.pins(0, 1), 1);
  lease.release();
  lease.release(); // idempotent
  assert.equal(cache.pins(0, 1), 0);
  (await cache.acquire(0, 1)).release();
  const s = cache.stats;
  assert.deepEqual([s.hits, s.misses, s.bytesMoved, s.stallMs], [1, 1, 10, 10]);
});

void test('a pinned expert is never evicted; a demand waits for a release instead', async () => {
  const { cache, engine } = make(1);
  const a = cache.acquire(0, 0);
  await engine.completeNext();
  const la = await a;
  let got: ExpertLease | undefined;
  const b = cache.acquire(0, 1).then((l) => (got = l));
  await flush();
  assert.equal(engine.pending.length, 0, 'no slot may be taken from a pinned expert');
  assert.ok(cache.isResident(0, 0));
  la.release();
  await flush();
  assert.equal(engine.pending.length, 1);
  await engine.completeNext();
  await b;
  assert.equal(got!.expert, 1);
  assert.ok(!cache.isResident(0, 0));
});

void test('demand overtakes queued prefetches and upgrades a queued prefetch of the same expert', async () => {
  const { cache, engine } = make(4);
  cache.prefetch(1, 0, 0.5); // starts at once (lane free)
  cache.prefetch(1, 1, 0.9);
  cache.prefetch(1, 2, 0.1);
  const d = cache.acquire(2, 3);
  const up = cache.acquire(1, 2); // queued prefetch -> demand
  assert.equal(cache.stats.latePrefetches, 1);
  const order: string[] = [];
  while (await engine.completeNext()) order.push(`${engine.log.at(-1)!.layer}`);
  await Promise.all([d, up]);
  assert.deepEqual(engine.log.map((r) => `${r.layer}:${r.expert}:${r.priority}`), ['1:0:prefetch', '2:3:demand', '1:2:demand', '1:1:prefetch']);
  const s = cache.stats;
  assert.equal(s.prefetchIssued, 3);
  assert.equal(s.prefetchUsed, 1);
});

void test('prefetches cancel while queued and in flight; a demand after cancel still gets its expert', async () => {
  const { cache, engine, pool } = make(4);
  cache.prefetch(0, 0);
  cache.prefetch(0, 1);
  assert.equal(cache.cancelPrefetch(0, 1), true); // queued
  assert.equal(cache.cancelPrefetch(0, 0), true); // in flight
  await flush();
  assert.equal(engine.pending.length, 0);
  assert.equal(pool.used, 0);
  assert.equal(cache.stats.prefetchWasted, 2);
  cache.prefetch(0, 2);
  cache.cancelPrefetch(0, 2);
  const p = cache.acquire(0, 2); // arrives after abort() but before the rejection settles
  await flush();
  await engine.completeNext();
  (await p).release();
  assert.ok(cache.isResident(0, 2));
  assert.equal(cache.cancelPrefetches(), 0);
});

void test('aborting a waiting acquire rejects with the reason; engine failures reject waiters and free the slot', async () => {
  const { cache, engine, pool } = make(2);
  const ac = new AbortController();
  const p = cache.acquire(0, 0, { signal: ac.signal });
  ac.abort(new Error('stop'));
  await assert.rejects(p, /stop/);
  await engine.completeNext();
  engine.failNext = true;
  await assert.rejects(cache.acquire(1, 1), /injected transfer failure/);
  await flush();
  assert.equal(cache.isResident(1, 1), false);
  assert.ok(pool.used <= 1);
});

void test('bad arguments throw typed errors naming the argument', () => {
  const { cache } = make(2);
  const invalid = (re: RegExp) => (e: unknown) => e instanceof InvalidArgumentError && re.test(e.message);
  assert.throws(() => cache.acquire(4, 0), invalid(/layer must be an integer in \[0, 3\], received 4/));
  assert.throws(() => cache.prefetch(0, -1), invalid(/expert .*received -1/));
  assert.throws(() => new ArraySlotPool(0), invalid(/size must be an integer >= 1, received 0/));
  assert.throws(() => new ArraySlotPool(2).free(1), invalid(/slot must be/));
  assert.throws(() => new ExpertCache({} as never), invalid(/options.numLayers/));
});

void test('LFU and probability policies pick the expected victims', () => {
  const lfu = new LfuPolicy(8);
  for (const [k, n] of [[0, 3], [1, 1], [2, 2]] as const) for (let i = 0; i < n; i++) lfu.onAccess(k);
  assert.equal(lfu.chooseVictim([0, 1, 2], 3), 1);
  const forecast = { nextLayer: () => 1, probability: (l: number, e: number) => (l === 0 && e === 0 ? 0.9 : 0.1) };
  const prob = new ProbabilityPolicy(2, 2, forecast);
  // key 0 = (0,0): p 0.9 but one full layer away; key 2 = (1,0): next layer but p 0.1; key 1 = (0,1): p 0.1, far
  assert.equal(prob.chooseVictim([0, 1, 2], 3), 1);
});

void test('property: random workloads never deadlock, leak slots, exceed capacity or evict a pinned expert', async () => {
  for (let seed = 1; seed <= 12; seed++) {
    const rng = new Rng(seed);
    const L = 3;
    const E = 6;
    const slots = 2 + rng.int(6);
    const policy = seed % 3 === 0 ? new LfuPolicy(L * E) : new LruPolicy(L * E);
    const { cache, engine, pool } = make(slots, L, E, policy);
    const held: ExpertLease[] = [];
    const waiting = new Set<Promise<unknown>>();
    let acquired = 0;
    for (let op = 0; op < 300; op++) {
      const r = rng.next();
      if (r < 0.35) {
        // never hold more leases than slots - 1 so a waiting demand can always be served
        if (held.length + waiting.size < slots) {
          const p: Promise<unknown> = cache.acquire(rng.int(L), rng.int(E)).then((l) => {
            held.push(l);
            acquired++;
            waiting.delete(p);
          });
          waiting.add(p);
        }
      } else if (r < 0.6) cache.prefetch(rng.int(L), rng.int(E), rng.next());
      else if (r < 0.7) cache.cancelPrefetch(rng.int(L), rng.int(E));
      else if (r < 0.85 && held.length > 0) held.splice(rng.int(held.length), 1)[0]!.release();
      else await engine.completeNext();
      assert.ok(pool.used <= slots && cache.occupied <= slots, 'capacity exceeded');
      for (const l of held) assert.ok(cache.isResident(l.layer, l.expert), 'a pinned expert was evicted');
    }
    for (const l of held.splice(0)) l.release();
    for (let i = 0; waiting.size > 0 || engine.pending.length > 0; i++) {
      assert.ok(i < 10_000, `seed ${seed}: deadlock`);
      if (!(await engine.completeNext())) await flush();
      for (const l of held.splice(0)) l.release();
    }
    assert.equal(cache.inFlight, 0);
    assert.equal(cache.queued, 0);
    assert.equal(pool.used, cache.occupied, `seed ${seed}: leaked slots`);
    assert.ok(acquired > 0);
    assert.equal(cache.residents().every((r) => r.pins === 0), true);
  }
});

void test('a demand goes to the engine at once, even while prefetches fill the prefetch lanes (the engine orders it first)', async () => {
  const { cache, engine } = make(6);
  cache.prefetch(0, 0, 0.9); // takes the one prefetch lane
  cache.prefetch(0, 1, 0.8); // waits in the cache, cancellable
  const d = cache.acquire(1, 2);
  await flush();
  assert.deepEqual(engine.log.map((r) => `${r.layer}:${r.expert}:${r.priority}`), ['0:0:prefetch', '1:2:demand'], 'the demand must not wait for the in-flight prefetch to finish before it is submitted');
  assert.equal(cache.inFlight, 2);
  assert.equal(cache.queued, 1);
  while (await engine.completeNext());
  (await d).release();
  assert.equal(engine.log.length, 3);
});

void test('a demand for an expert whose prefetch is already copying promotes that copy in the engine', async () => {
  const { cache, engine } = make(6);
  cache.prefetch(0, 3, 0.9);
  await flush();
  const slot = engine.log[0]!.slot;
  const d = cache.acquire(0, 3);
  await flush();
  assert.deepEqual(engine.promoted, [slot]);
  assert.equal(engine.log.length, 1, 'no second fetch for the same expert');
  while (await engine.completeNext());
  (await d).release();
});
