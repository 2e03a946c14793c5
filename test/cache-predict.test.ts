/**
 * FineMoE store and predictor, trace format and generator calibration against the REAL routing counts, and the
 * simulator (determinism, Belady upper bound, capacity, every demanded expert resident before its layer runs).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { ExpertMapStore, FineMoePredictor, selectByCumulative } from '../lib/cache/finemoe.js';
import { simulate } from '../lib/cache/simulator.js';
import { calibrationReport, generateTrace, parseTrace, routingStatsFromJson, serializeTrace } from '../lib/cache/trace.js';
import { InvalidArgumentError } from '../lib/errors.js';

// dist/test -> repository root -> ../shared (DESIGN: use real data as ../shared/data, never copied)
const dataDir = path.join(__dirname, '..', '..', '..', 'shared', 'data', 'routing-olmoe');
const counts: unknown = JSON.parse(fs.readFileSync(path.join(dataDir, 'expert_counts.json'), 'utf8'));
const cross: unknown = JSON.parse(fs.readFileSync(path.join(dataDir, 'expert_counts_crosslayer.json'), 'utf8'));
const olmoe = routingStatsFromJson(counts, cross, 'olmoe', 16);
const mixtral = routingStatsFromJson(counts, cross, 'mistral', 32);

void test('selectByCumulative takes experts until 1 - similarity, at least top-k', () => {
  const p = [0.05, 0.5, 0.3, 0.15];
  assert.deepEqual(selectByCumulative(p, 0, 4, 0.9, 1), [1, 2, 3]);
  assert.deepEqual(selectByCumulative(p, 0, 4, 0.1, 2), [1, 2]);
  assert.deepEqual(selectByCumulative(p, 0, 4, 1.0, 1), [1, 2, 3, 0]);
});

void test('store replacement keeps the most informative maps (replaces the most redundant one)', () => {
  const L = 2;
  const E = 4;
  const store = new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: 2, capacity: 3, prefetchDistance: 1 });
  const map = (a: number, b: number) => {
    const g = new Float32Array(L * E);
    g[a] = 1;
    g[E + b] = 1;
    return g;
  };
  store.add(Float32Array.of(1, 0), map(0, 0)); // A
  store.add(Float32Array.of(1, 0.01), map(0, 0)); // near-duplicate of A
  store.add(Float32Array.of(0, 1), map(3, 3)); // B
  // another copy of A's routing: it must replace one of the A twins, never the distinct map B
  const idx = store.add(Float32Array.of(1, 0.02), map(0, 0));
  assert.ok(idx === 0 || idx === 1, `replaced ${idx}`);
  assert.equal(store.size, 3);
  assert.equal(store.replacements, 1);
  assert.equal(store.layerView(2, 0)[3], 1, 'the distinct map B survives');
  assert.equal(store.semanticSearch(Float32Array.of(0, 1)).index, 2);
  assert.throws(() => store.add(new Float32Array(3), map(0, 0)), (e: unknown) => e instanceof InvalidArgumentError && /embedding must be a Float32Array of length 2, received a Float32Array of length 3/.test(e.message));
});

void test('predictor: semantic search for the first layers, trajectory search afterwards', () => {
  const L = 4;
  const E = 4;
  const store = new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: 2, capacity: 8, prefetchDistance: 2 });
  const p = new FineMoePredictor(store, { topK: 1, prefetchDistance: 2 });
  const route = (emb: Float32Array, experts: number[]) => {
    p.beginIteration(emb);
    experts.forEach((e, l) => {
      const g = new Float32Array(E);
      g[e] = 1;
      p.observeLayer(l, g);
    });
    p.endIteration();
  };
  route(Float32Array.of(1, 0), [0, 1, 2, 3]);
  route(Float32Array.of(0, 1), [3, 2, 1, 0]);
  const sem = p.beginIteration(Float32Array.of(0.1, 1));
  assert.deepEqual(sem.map((x) => [x.layer, x.experts[0], x.source]), [[0, 3, 'semantic'], [1, 2, 'semantic']]);
  const g = new Float32Array(E);
  g[0] = 1; // routing says "first request's path" even though the prompt looked like the second
  const traj = p.observeLayer(0, g)!;
  assert.equal(traj.layer, 2);
  assert.equal(traj.experts[0], 2);
  assert.equal(traj.source, 'trajectory');
});

void test('trace format round-trips and rejects malformed input', () => {
  const t = generateTrace({ stats: olmoe, numLayers: 16, numExperts: 64, topK: 8, requests: 3, iterations: [2, 3], seed: 5, embedDim: 8 });
  const bytes = serializeTrace(t);
  const back = parseTrace(bytes);
  assert.deepEqual(back, t);
  const odd = generateTrace({ stats: mixtral, numLayers: 5, numExperts: 8, topK: 1, requests: 2, iterations: [1, 1], seed: 1, fullGates: false });
  assert.deepEqual(parseTrace(serializeTrace(odd)), odd);
  assert.throws(() => parseTrace(bytes.subarray(0, bytes.length - 4)), /truncated/);
  assert.throws(() => parseTrace(new Uint8Array(24)), /magic/);
});

void test('generator is deterministic and its statistics match the REAL counts within stated tolerances', () => {
  const a = generateTrace({ stats: olmoe, numLayers: 16, numExperts: 64, topK: 8, requests: 150, iterations: [30, 30], seed: 11 });
  const b = generateTrace({ stats: olmoe, numLayers: 16, numExperts: 64, topK: 8, requests: 150, iterations: [30, 30], seed: 11 });
  assert.deepEqual(a.requests[7]!.ids, b.requests[7]!.ids);
  const rows = calibrationReport(olmoe, a);
  for (const r of rows.filter((x) => x.what.startsWith('layer'))) {
    assert.ok(r.correlation > 0.95, `OLMoE ${r.domain} ${r.what}: popularity correlation ${r.correlation}`);
    assert.ok(Math.abs(r.skewGenerated / r.skewReal - 1) < 0.15, `OLMoE ${r.domain} ${r.what}: skew ${r.skewGenerated} vs real ${r.skewReal}`);
    assert.ok(r.tvd < 0.06, `OLMoE ${r.domain} ${r.what}: TVD ${r.tvd}`);
  }
  for (const r of rows.filter((x) => x.what.includes('->'))) assert.ok(r.correlation > 0.7, `OLMoE ${r.domain} ${r.what}: rank-aligned joint correlation ${r.correlation}`);
  const m = calibrationReport(mixtral, generateTrace({ stats: mixtral, numLayers: 32, numExperts: 8, topK: 2, requests: 100, iterations: [30, 30], seed: 3 }));
  for (const r of m.filter((x) => x.what.startsWith('layer'))) assert.ok(r.tvd < 0.05, `Mixtral ${r.domain} ${r.what}: TVD ${r.tvd}`);
});

void test('simulator: deterministic, capacity-safe, Belady bounds demand policies, oracle prefetch beats no prefetch', () => {
  const trace = generateTrace({ stats: olmoe, numLayers: 16, numExperts: 64, topK: 8, requests: 16, iterations: [6, 10], seed: 21 });
  const base = { capacity: 256, prefetchDistance: 2, expertBytes: 12.6e6, bandwidthBytesPerMs: 55e6, layerComputeMs: 0.4, warmupRequests: 8, storeCapacity: 128 };
  const r = Object.fromEntries((['lru', 'lfu', 'belady', 'moe-infinity', 'finemoe', 'oracle'] as const).map((p) => [p, simulate(trace, { ...base, policy: p })]));
  for (const x of Object.values(r)) {
    assert.ok(x.hitRate >= 0 && x.hitRate <= 1);
    assert.equal(x.uses, x.iterations * 16 * 8);
    assert.ok(x.stallMs >= 0 && x.totalMs >= x.stallMs);
  }
  assert.ok(r.belady!.hitRate >= r.lru!.hitRate && r.belady!.hitRate >= r.lfu!.hitRate);
  assert.ok(r.oracle!.stallMs <= r.belady!.stallMs);
  assert.deepEqual({ ...simulate(trace, { ...base, policy: 'finemoe' }), simWallMs: 0 }, { ...r.finemoe!, simWallMs: 0 });
  assert.throws(() => simulate(trace, { ...base, policy: 'lru', capacity: 4 }), /options.capacity must be an integer in \[8, 1024\], received 4/);
  assert.throws(() => simulate(trace, { ...base, policy: 'fifo' as 'lru' }), /options.policy must be one of/);
});

void test('the predictor inserts its map with the similarities it already holds: same replacement as a full pass', () => {
  const t = generateTrace({ stats: olmoe, numLayers: 16, numExperts: 64, topK: 8, requests: 12, iterations: [4, 6], seed: 17 });
  const L = 16;
  const E = 64;
  const mk = () => new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: t.embedDim, capacity: 8, prefetchDistance: 3 });
  const fast = mk();
  const full = mk();
  const p = new FineMoePredictor(fast, { topK: 8, prefetchDistance: 3 });
  let replaced = 0;
  for (const r of t.requests) {
    p.beginRequest();
    for (let it = 0; it < r.iterations; it++) {
      p.beginIteration(r.embedding);
      const g = r.gates!.subarray(it * L * E, (it + 1) * L * E);
      for (let l = 0; l < L; l++) p.observeLayer(l, g.subarray(l * E, (l + 1) * E));
      const expect = full.size === full.capacity ? full.mostRedundant(normalise(r.embedding), g) : full.size;
      p.endIteration(); // incremental path
      full.add(r.embedding, g); // full pass
      if (fast.replacements > replaced) {
        replaced = fast.replacements;
        assert.equal(Array.from(fast.maps).join(), Array.from(full.maps).join(), 'stores diverged');
      }
      assert.ok(expect >= 0);
    }
  }
  assert.ok(replaced > 20, `only ${replaced} replacements exercised`);
});

function normalise(v: Float32Array): Float32Array {
  const n = Math.hypot(...v) || 1;
  return v.map((x) => x / n);
}

void test('simulator prefetch engineering: link cap, cancellation and lane model options behave as documented', () => {
  const trace = generateTrace({ stats: olmoe, numLayers: 16, numExperts: 64, topK: 8, requests: 12, iterations: [6, 8], seed: 23 });
  const base = { policy: 'finemoe' as const, capacity: 256, prefetchDistance: 2, expertBytes: 12.6e6, bandwidthBytesPerMs: 55e6, layerComputeMs: 0.4, warmupRequests: 6, storeCapacity: 64 };
  // no compute time: nothing can arrive before its layer, so the link cap admits no prefetch
  assert.equal(simulate(trace, { ...base, layerComputeMs: 0 }).prefetches, 0);
  const capped = simulate(trace, base);
  const uncapped = simulate(trace, { ...base, prefetchCap: 'none' });
  assert.ok(capped.prefetches > 0 && capped.prefetches < uncapped.prefetches, `capped ${capped.prefetches} vs uncapped ${uncapped.prefetches}`);
  assert.equal(simulate(trace, { ...base, prefetchCap: 'none', cancelRouted: false }).prefetchCancelled, 0);
  assert.ok(uncapped.prefetchCancelled > 0);
  // whole-expert non-preemptive copies make demands wait behind prefetches: never less stall than chunked
  const whole = simulate(trace, { ...base, prefetchCap: 'none', laneModel: 'whole' });
  assert.ok(whole.stallMs >= uncapped.stallMs * 0.98, `whole ${whole.stallMs} vs chunked ${uncapped.stallMs}`);
  for (const r of [capped, uncapped, whole]) assert.equal(r.prefetchUsed + r.prefetchWasted <= r.prefetches + 64 * 16, true);
  assert.throws(() => simulate(trace, { ...base, laneModel: 'pcie' as 'whole' }), /options.laneModel must be 'chunked' or 'whole', received "pcie"/);
  assert.throws(() => simulate(trace, { ...base, prefetchCap: 'x' as 'none' }), /options.prefetchCap must be 'link', 'start', 'value' or 'none', received "x"/);
});
