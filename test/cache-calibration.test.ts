/**
 * Calibrated FineMoE forecasts: the online ReuseCalibrator, the store's routed sets, the predictor's neighbour
 * forecasts (request level, trajectory, next-iteration predictions, the online request prior weight), the
 * probability policy's two-stage expected next use and prefetch admission (in ExpertCache and the simulator),
 * and the simulator's cross-iteration / partial prefetches and the labelled domain oracle. Deterministic, fast.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { ExpertCache } from '../lib/cache/expert-cache.js';
import { ExpertMapStore, FineMoePredictor, ReuseCalibrator, markTopK } from '../lib/cache/finemoe.js';
import { LruPolicy, ProbabilityPolicy, type UsageForecast } from '../lib/cache/policy.js';
import { simulate } from '../lib/cache/simulator.js';
import { generateTrace, routingStatsFromJson, type RoutingTrace } from '../lib/cache/trace.js';
import { ArraySlotPool, Rng } from '../lib/cache/types.js';
import { InvalidArgumentError } from '../lib/errors.js';
import { FakeClock, FakeTransferEngine, flush } from './harness/cache-fakes.js';

const dataDir = path.join(__dirname, '..', '..', '..', 'shared', 'data', 'routing-olmoe');
const counts: unknown = JSON.parse(fs.readFileSync(path.join(dataDir, 'expert_counts.json'), 'utf8'));
const cross: unknown = JSON.parse(fs.readFileSync(path.join(dataDir, 'expert_counts_crosslayer.json'), 'utf8'));
const olmoe = routingStatsFromJson(counts, cross, 'olmoe', 16);
const mixtral = routingStatsFromJson(counts, cross, 'mistral', 32);

void test('ReuseCalibrator: identity when unseen, observed frequency when well observed, monotone, follows drift', () => {
  const cal = new ReuseCalibrator(10, 20, 1000);
  for (const p of [0.05, 0.3, 0.77]) assert.ok(Math.abs(cal.map(p) - p) < 1e-12, `unseen ${p} -> ${cal.map(p)}`);
  // forecasts of 0.5 whose experts were used 20% of the time
  const rng = new Rng(3);
  let used = 0;
  for (let i = 0; i < 900; i++) {
    const u = rng.next() < 0.2;
    if (u) used++;
    cal.record(0.5, u);
  }
  // well observed: close to the observed frequency (the unseen buckets below it, still at identity, are pooled
  // with it to keep the map monotone, which moves it a little)
  assert.ok(Math.abs(cal.map(0.5) - used / 900) < 0.02, `map(0.5) ${cal.map(0.5)} vs observed ${used / 900}`);
  // one bucket: exactly (used + pseudoCount * forecast) / (n + pseudoCount)
  const one = new ReuseCalibrator(1, 20);
  for (let i = 0; i < 900; i++) one.record(0.5, i < used);
  assert.ok(Math.abs(one.map(0.5) - (used + 20 * 0.5) / (900 + 20)) < 1e-12);
  // an order violation between buckets (0.3 used 90%, 0.5 used 20%) is pooled: map stays non-decreasing
  for (let i = 0; i < 900; i++) cal.record(0.3, i % 10 !== 0);
  let last = -Infinity;
  for (let p = 0; p <= 1.0001; p += 0.01) {
    const q = cal.map(p);
    assert.ok(q >= last - 1e-12 && q >= 1e-4 && q <= 1, `map(${p.toFixed(2)}) = ${q} after ${last}`);
    last = q;
  }
  const t = cal.table();
  assert.equal(t.length, 10);
  assert.equal(t[3]!.n, 900);
  assert.ok(Math.abs(t[3]!.observed - 0.9) < 1e-12);
  // drift: once a bucket holds maxCount forecasts its counts halve, so new evidence moves it
  for (let i = 0; i < 3000; i++) cal.record(0.95, true);
  assert.ok(cal.table()[9]!.n <= 1000);
  assert.ok(cal.map(0.95) > 0.99);
  cal.reset();
  assert.ok(Math.abs(cal.map(0.5) - 0.5) < 1e-12);
  assert.throws(() => new ReuseCalibrator(0), InvalidArgumentError);
});

void test('store keeps routed sets (top-k positive gates) and their per-expert sums through replacement and setTopK', () => {
  const out = new Uint8Array(6);
  markTopK([0.1, 0.5, 0, 0.2, 0, 0], 0, 6, 3, out);
  assert.deepEqual([...out], [1, 1, 0, 1, 0, 0]);
  out.fill(0);
  markTopK([0, 0.4, 0, 0, 0, 0], 0, 6, 3, out); // fewer positive gates than k: only those
  assert.deepEqual([...out], [0, 1, 0, 0, 0, 0]);

  const L = 2;
  const E = 4;
  const store = new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: 2, capacity: 2, topK: 1 });
  const map = (a: number, b: number) => {
    const g = new Float32Array(L * E).fill(0.01);
    g[a] = 0.9;
    g[E + b] = 0.9;
    return g;
  };
  const sums = () => {
    const s = new Float64Array(L * E);
    for (let j = 0; j < store.size; j++) for (let x = 0; x < L * E; x++) s[x]! += store.members[j * L * E + x]!;
    return [...s];
  };
  store.add(Float32Array.of(1, 0), map(0, 1));
  store.add(Float32Array.of(0, 1), map(2, 3));
  assert.deepEqual([...store.memberSum], sums());
  assert.deepEqual([...store.memberIds.subarray(0, L)], [0, 1]);
  store.add(Float32Array.of(0.1, 1), map(3, 3)); // replaces a map: its routed set leaves the sums
  assert.deepEqual([...store.memberSum], sums());
  store.setTopK(2);
  assert.deepEqual([...store.memberSum], sums());
  assert.equal(store.memberSum.reduce((a, b) => a + b, 0), 2 * L * 2);
  assert.throws(() => store.setTopK(5), /topK must be an integer in \[1, 4\], received 5/);
});

/** A store of hand-made maps: routed set per layer given by `sets[map][layer]`, embeddings `embs[map]`. */
function handStore(L: number, E: number, embs: number[][], sets: number[][][]): ExpertMapStore {
  const store = new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: embs[0]!.length, capacity: 64 });
  embs.forEach((emb, j) => {
    const g = new Float32Array(L * E);
    for (let l = 0; l < L; l++) for (const e of sets[j]![l]!) g[l * E + e] = 1 / sets[j]![l]!.length;
    store.add(Float32Array.from(emb), g);
  });
  return store;
}

void test('neighbour forecasts: similarity-weighted routed frequency of the nearest maps, then the trajectory', () => {
  const L = 3;
  const E = 4;
  // maps 0-2 point along x and route to expert 0 (layer 0) and mostly 1 (layer 2); map 3 points along y
  const store = handStore(L, E, [[1, 0], [1, 0], [1, 0], [0, 1]], [
    [[0], [2], [1]],
    [[0], [2], [1]],
    [[0], [3], [2]],
    [[3], [3], [3]],
  ]);
  const p = new FineMoePredictor(store, { topK: 1, prefetchDistance: 1, calibrate: false, requestPriorWeight: 4, record: false });
  assert.equal(store.topK, 1, 'the predictor sets the store topK it needs');
  p.beginIteration(Float32Array.of(1, 0));
  // semantic neighbours: the three x maps (weight 1 each), the y map has weight 0
  assert.ok(Math.abs(p.probability(0, 0) - 1) < 1e-6);
  assert.ok(Math.abs(p.probability(2, 1) - 2 / 3) < 1e-6);
  assert.ok(Math.abs(p.probability(2, 2) - 1 / 3) < 1e-6);
  assert.ok(p.probability(0, 3) < 1e-3);
  assert.equal(p.laterProbability(2, 1), p.probability(2, 1));
  // routing layer 1 to expert 3 matches map 2's trajectory (and map 3's, with a zero semantic weight in the prior)
  const g0 = Float32Array.of(1, 0, 0, 0);
  p.observeLayer(0, g0);
  const g1 = Float32Array.of(0, 0, 0, 1);
  const pred = p.observeLayer(1, g1)!;
  assert.equal(pred.layer, 2);
  assert.equal(pred.source, 'trajectory');
  // the next layer's forecast now follows the trajectory neighbours, the request-level one does not change
  assert.ok(p.probability(2, 3) > p.laterProbability(2, 3), `trajectory ${p.probability(2, 3)} vs request ${p.laterProbability(2, 3)}`);
  assert.ok(Math.abs(p.laterProbability(2, 1) - 2 / 3) < 1e-6);
  assert.deepEqual(pred.experts, [...pred.experts].sort((a, b) => pred.probs[pred.experts.indexOf(b)]! - pred.probs[pred.experts.indexOf(a)]!));
  for (const q of pred.probs) assert.ok(q >= p.minProbability);
  // routed layers are forecast for the next iteration: this iteration's routing counts as one more sample
  const n0 = p.probability(0, 0);
  assert.ok(Math.abs(n0 - (1 + 4 * 1) / (1 + 4)) < 1e-6);
  p.endIteration();
  const next = p.predictNextIteration(0, 1);
  assert.deepEqual(next.map((x) => x.layer), [0, 1]);
  assert.equal(next[0]!.experts[0], 0);
  assert.equal(p.nextLayer(), 0);
});

void test('a new embedding starts a new request; the single-match mode keeps the paper rule', () => {
  const L = 2;
  const E = 4;
  const store = handStore(L, E, [[1, 0], [0, 1]], [
    [[0], [1]],
    [[2], [3]],
  ]);
  const p = new FineMoePredictor(store, { topK: 1, prefetchDistance: 1, calibrate: false, requestPriorWeight: 1, record: false });
  const a = Float32Array.of(1, 0);
  p.beginIteration(a);
  p.observeLayer(0, Float32Array.of(0, 0, 0, 1)); // this request routes layer 0 to expert 3, unlike its prior
  p.observeLayer(1, Float32Array.of(0, 1, 0, 0));
  p.endIteration();
  p.beginIteration(a); // same request: its own history counts
  assert.ok(Math.abs(p.probability(0, 3) - 0.5) < 1e-6);
  const rev = p.revision;
  p.beginIteration(Float32Array.of(1, 0.001)); // another request
  assert.notEqual(p.revision, rev);
  assert.ok(p.probability(0, 3) < 1e-3, `history of the previous request leaked: ${p.probability(0, 3)}`);
  // single match: the best map's gate probabilities, experts by cumulative probability, at least top-k
  const single = new FineMoePredictor(store, { topK: 1, prefetchDistance: 1, neighbors: 1, calibrate: false, record: false });
  const sem = single.beginIteration(Float32Array.of(0, 1));
  assert.deepEqual([sem[0]!.experts[0], sem[0]!.probs[0]], [2, 1]);
  assert.deepEqual(single.predictNextIteration(0, 1), []);
  assert.throws(() => new FineMoePredictor(store, { topK: 1, prefetchDistance: 1, trajectoryMode: 'x' as 'lift' }), /trajectoryMode must be 'lift' or 'average', received "x"/);
});

void test('online calibration and the auto request prior weight learn from routed layers', () => {
  const L = 4;
  const E = 8;
  const rng = new Rng(5);
  // every request routes to a fixed expert set of its own; stored maps (other requests) route at random, so
  // the request's own history predicts far better than its semantic neighbours
  const store = new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: 4, capacity: 64 });
  const p = new FineMoePredictor(store, { topK: 2, prefetchDistance: 1 });
  assert.equal(p.requestPriorWeight, 1024, "'auto' starts from the largest candidate");
  const gates = new Float32Array(E);
  for (let r = 0; r < 12; r++) {
    const emb = Float32Array.from({ length: 4 }, () => rng.normal());
    const own = [rng.int(E), rng.int(E)];
    for (let it = 0; it < 6; it++) {
      p.beginIteration(emb);
      for (let l = 0; l < L; l++) {
        gates.fill(0.01);
        gates[own[0]!] = 0.6;
        gates[(own[0]! + 1 + (own[1]! % (E - 1))) % E] = 0.3;
        p.observeLayer(l, gates);
      }
      p.endIteration();
    }
  }
  assert.ok(p.requestPriorWeight <= 4, `auto weight ${p.requestPriorWeight}: the request history should dominate`);
  const table = p.requestCalibrator.table();
  const seen = table.reduce((a, b) => a + b.n, 0);
  assert.equal(seen, 12 * 6 * L * E, 'one calibration sample per expert of every routed layer');
  assert.ok(p.trajectoryCalibrators[0]!.table().reduce((a, b) => a + b.n, 0) > 0, 'distance-1 trajectory forecasts are scored');
});

void test('probability policy: two-stage expected next use, revision cache, prefetch admission', () => {
  let p = 0.5;
  let rev = 1;
  const f: UsageForecast & { revision: number } = {
    nextLayer: () => 0,
    probability: (l) => (l === 1 ? p : 0.5),
    laterProbability: () => 0.25,
    get revision() {
      return rev;
    },
  };
  const pol = new ProbabilityPolicy(4, 2, f);
  // key 2 = layer 1, expert 0: d = 1, then (1 - p) * L / q
  assert.equal(pol.expectedNextUse(2), 1 + (0.5 * 4) / 0.25);
  p = 0.9;
  assert.equal(pol.expectedNextUse(2), 9, 'unchanged revision: cached score');
  rev = 2;
  assert.ok(Math.abs(pol.expectedNextUse(2) - (1 + (0.1 * 4) / 0.25)) < 1e-12);
  assert.equal(pol.expectedUseAt(2, 3, 1), 3);
  // key 6 (layer 3, p 0.5): 3 + 0.5 * 16 = 11. A prefetch for key 4 (layer 2) with p 0.9 is worth it, p 0.05 is not
  assert.equal(pol.admitPrefetch(4, 0.9, 6), true);
  assert.equal(pol.admitPrefetch(4, 0.05, 6), false);
  // without laterProbability the single-stage rule d + L (1 - p) / p
  const single = new ProbabilityPolicy(4, 2, { nextLayer: () => 0, probability: () => 0.2 });
  assert.ok(Math.abs(single.expectedNextUse(2) - (1 + (4 * 0.8) / 0.2)) < 1e-12);
});

void test('ExpertCache drops a prefetch the policy will not evict for, and never evicts for it', async () => {
  const clock = new FakeClock();
  const engine = new FakeTransferEngine(clock, 1);
  const L = 2;
  const E = 4;
  const likely = new Set([0]); // (0, 0) is sure to be used; everything else almost never
  const policy = new ProbabilityPolicy(L, E, { nextLayer: () => 0, probability: (l, e) => (likely.has(l * E + e) ? 0.99 : 0.01) });
  const cache = new ExpertCache({ numLayers: L, numExperts: E, expertBytes: 10, pool: new ArraySlotPool(1), engine, policy, clock });
  const a = cache.acquire(0, 0);
  await engine.completeNext();
  (await a).release();
  cache.prefetch(1, 3, 0.01); // would evict (0, 0): declined
  await flush();
  assert.equal(engine.pending.length, 0);
  assert.ok(cache.isResident(0, 0));
  assert.equal(cache.stats.prefetchDeclined, 1);
  assert.equal(cache.queued, 0);
  likely.clear();
  likely.add(1 * E + 2);
  cache.prefetch(1, 2, 0.99); // now (0, 0) is the unlikely one: admitted
  await flush();
  assert.equal(engine.pending.length, 1);
  await engine.completeNext();
  assert.ok(cache.isResident(1, 2) && !cache.isResident(0, 0));
  // LRU has no admission rule: every prefetch may evict
  const lru = new ExpertCache({ numLayers: L, numExperts: E, expertBytes: 10, pool: new ArraySlotPool(1), engine, policy: new LruPolicy(L * E), clock });
  const b = lru.acquire(0, 0);
  await engine.completeNext();
  (await b).release();
  lru.prefetch(1, 3, 0.01);
  await flush();
  assert.equal(engine.pending.length, 1);
  await engine.completeNext();
});

function small(stats = olmoe, L = 16, E = 64, k = 8): RoutingTrace {
  return generateTrace({ stats, numLayers: L, numExperts: E, topK: k, requests: 10, iterations: [5, 7], seed: 29 });
}

void test('simulator: cross-iteration prefetch uses the iteration boundary; partial prefetches only when no whole copy fits', () => {
  const trace = small();
  const base = { policy: 'finemoe' as const, capacity: 256, prefetchDistance: 3, expertBytes: 12.6e6, bandwidthBytesPerMs: 55e6, layerComputeMs: 0.3, warmupRequests: 4, storeCapacity: 64 };
  const cross = simulate(trace, base);
  const within = simulate(trace, { ...base, crossIteration: false });
  assert.ok(cross.prefetches > within.prefetches, `cross ${cross.prefetches} vs within ${within.prefetches}`);
  // a whole expert moves within the distance here: 'value' admits exactly what 'link' admits
  const link = simulate(trace, { ...base, prefetchCap: 'link' });
  assert.deepEqual({ ...link, simWallMs: 0 }, { ...cross, simWallMs: 0 });
  // Mixtral-like transfers (6.4 ms) against 1 ms layers: nothing arrives in time, so 'link' never prefetches;
  // 'value' starts the likely ones (late prefetches: misses, but shorter stalls)
  const mix = generateTrace({ stats: mixtral, numLayers: 32, numExperts: 8, topK: 2, requests: 8, iterations: [4, 6], seed: 31 });
  const mb = { policy: 'finemoe' as const, capacity: 64, prefetchDistance: 2, expertBytes: 352e6, bandwidthBytesPerMs: 55e6, layerComputeMs: 1, warmupRequests: 3, storeCapacity: 64 };
  const mLink = simulate(mix, { ...mb, prefetchCap: 'link' });
  const mValue = simulate(mix, mb);
  assert.equal(mLink.prefetches, 0);
  assert.ok(mValue.prefetches > 0 && mValue.latePrefetches > 0);
  assert.ok(mValue.latePrefetches <= mValue.prefetchUsed);
  // the oracle keeps its upper-bound role with cross-iteration prefetch
  const oracle = simulate(trace, { ...base, policy: 'oracle' });
  const belady = simulate(trace, { ...base, policy: 'belady' });
  assert.ok(oracle.stallMs <= belady.stallMs);
});

void test('simulator: the domain oracle is labelled, needs domains, and is deterministic', () => {
  const trace = small();
  const base = { capacity: 256, prefetchDistance: 1, expertBytes: 12.6e6, bandwidthBytesPerMs: 55e6, layerComputeMs: 0.3, warmupRequests: 4 };
  const dom = simulate(trace, { ...base, policy: 'domain-oracle' });
  assert.equal(dom.prefetches, 0, 'demand fetching only');
  assert.deepEqual({ ...simulate(trace, { ...base, policy: 'domain-oracle' }), simWallMs: 0 }, { ...dom, simWallMs: 0 });
  assert.ok(dom.hitRate <= simulate(trace, { ...base, policy: 'belady' }).hitRate);
  const unknown: RoutingTrace = { ...trace, requests: trace.requests.map((r) => ({ ...r, domain: -1 })) };
  assert.throws(() => simulate(unknown, { ...base, policy: 'domain-oracle' }), /'domain-oracle' needs a trace whose requests carry their domain/);
});
