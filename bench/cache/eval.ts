/**
 * Expert-cache evaluation: generated traces calibrated on the REAL routing counts (../shared/data/routing-olmoe),
 * replayed by the simulator for four model shapes, cache sizes 10-50% of all experts, prefetch distances 1-6,
 * and every policy (LRU, LFU, Belady, MoE-Infinity-style, FineMoE, oracle prefetch). Prints the calibration
 * accuracy, the 25%-cache comparison against FineMoE's headline targets, and tinybench timings of the predictor's
 * searches next to the layer time they must hide behind. Then a sensitivity run at the 25% cache (layer compute
 * x0.5 / x2, link 25 GB/s instead of 55) and an ablation of the prefetch engineering (the first slice's engine:
 * whole-expert non-preemptive copies, no link cap, no cancellation, no refinement). Writes
 * bench/results/cache-eval-<date>.json and .svg.
 *
 * Run: node dist/bench/cache/eval.js [--quick]
 */
import fs from 'node:fs';
import path from 'node:path';

import { ExpertMapStore, FineMoePredictor } from '../../lib/cache/finemoe.js';
import { SIM_POLICIES, simulate, type SimPolicy, type SimResult } from '../../lib/cache/simulator.js';
import { calibrationReport, generateTrace, routingStatsFromJson, type RoutingStats } from '../../lib/cache/trace.js';
import { machine } from '../machine.js';

const root = path.join(__dirname, '..', '..', '..');
const data = path.join(root, '..', 'shared', 'data');
const quick = process.argv.includes('--quick');

interface Shape {
  name: string;
  config: string;
  statsKey: 'mistral' | 'olmoe';
  layers: number;
  experts: number;
  topK: number;
  /** Assumed per-layer decode compute (CPU attention + GPU expert GEMV), ms: a time-model input, not a result. */
  layerComputeMs: number;
}
const SHAPES: Shape[] = [
  { name: 'Mixtral-8x7B (8, top-2)', config: 'Mixtral-8x7B', statsKey: 'mistral', layers: 32, experts: 8, topK: 2, layerComputeMs: 1.0 },
  { name: 'Qwen1.5-MoE-like (60, top-4)', config: 'Qwen1.5-MoE-A2.7B', statsKey: 'olmoe', layers: 24, experts: 60, topK: 4, layerComputeMs: 0.3 },
  { name: 'OLMoE (64, top-8)', config: 'OLMoE-1B-7B-0924', statsKey: 'olmoe', layers: 16, experts: 64, topK: 8, layerComputeMs: 0.3 },
  { name: 'DeepSeek-V2-Lite-like (64, top-6)', config: 'DeepSeek-V2-Lite', statsKey: 'olmoe', layers: 26, experts: 64, topK: 6, layerComputeMs: 0.3 },
];
const BANDWIDTH = 55e6; // bytes/ms: best measured pinned H2D on PCIe Gen5 (DESIGN.md section 7)
const SIZES = [0.1, 0.2, 0.25, 0.3, 0.4, 0.5];
const DISTANCES = [1, 2, 3, 4, 5, 6];
const DEMAND: SimPolicy[] = ['lru', 'lfu', 'belady'];
const PREFETCH: SimPolicy[] = ['moe-infinity', 'finemoe', 'oracle'];

async function main(): Promise<void> {
  const counts: unknown = JSON.parse(fs.readFileSync(path.join(data, 'routing-olmoe', 'expert_counts.json'), 'utf8'));
  const cross: unknown = JSON.parse(fs.readFileSync(path.join(data, 'routing-olmoe', 'expert_counts_crosslayer.json'), 'utf8'));
  const configs = JSON.parse(fs.readFileSync(path.join(data, 'model-configs.json'), 'utf8')) as Record<string, { summary: { hidden_size: number; moe_intermediate_size: number } }>;
  const stats: Record<string, RoutingStats> = { mistral: routingStatsFromJson(counts, cross, 'mistral', 32), olmoe: routingStatsFromJson(counts, cross, 'olmoe', 16) };

  // 1. calibration accuracy (source shapes)
  const calibration = (['mistral', 'olmoe'] as const).map((key) => {
    const s = stats[key]!;
    const t = generateTrace({ stats: s, numLayers: s.sourceLayers, numExperts: s.numExperts, topK: s.topK, requests: 200, iterations: [40, 40], seed: 1 });
    const rows = calibrationReport(s, t);
    const lay = rows.filter((r) => r.what.startsWith('layer'));
    const tr = rows.filter((r) => r.what.includes('->'));
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const summary = {
      model: s.model,
      tokensPerDomain: t.requests.reduce((a, r) => a + r.iterations, 0) / s.domains.length,
      popularityCorrelationMin: Math.min(...lay.map((r) => r.correlation)),
      popularityCorrelationMean: mean(lay.map((r) => r.correlation)),
      popularityTvdMax: Math.max(...lay.map((r) => r.tvd)),
      skewRelErrorMax: Math.max(...lay.map((r) => Math.abs(r.skewGenerated / r.skewReal - 1))),
      transitionCorrelationMin: Math.min(...tr.map((r) => r.correlation)),
      transitionCorrelationMean: mean(tr.map((r) => r.correlation)),
      transitionTvdMean: mean(tr.map((r) => r.tvd)),
    };
    console.log(`calibration ${key}:`, JSON.stringify(summary, (_k, v: unknown) => (typeof v === 'number' ? +v.toFixed(3) : v)));
    return { key, summary, rows };
  });

  // 2. simulation sweep
  const results: Array<SimResult & { model: string; cacheFraction: number }> = [];
  const headline: unknown[] = [];
  const sensitivity: unknown[] = [];
  const ablation: unknown[] = [];
  for (const shape of SHAPES) {
    const c = configs[shape.config]!.summary;
    const expertBytes = 3 * c.hidden_size * c.moe_intermediate_size * 2; // gate, up, down in bf16
    const trace = generateTrace({ stats: stats[shape.statsKey]!, numLayers: shape.layers, numExperts: shape.experts, topK: shape.topK, requests: quick ? 24 : 48, iterations: [8, 16], seed: 42 });
    const total = shape.layers * shape.experts;
    const base = { expertBytes, bandwidthBytesPerMs: BANDWIDTH, layerComputeMs: shape.layerComputeMs, warmupRequests: quick ? 12 : 24, storeCapacity: 256 };
    const run = (policy: SimPolicy, frac: number, d: number) => {
      const capacity = Math.max(shape.topK, Math.round(total * frac));
      const r = simulate(trace, { ...base, policy, capacity, prefetchDistance: d });
      results.push({ ...r, model: shape.name, cacheFraction: frac });
      return r;
    };
    for (const frac of SIZES) {
      for (const p of DEMAND) run(p, frac, 1);
      for (const p of PREFETCH) for (const d of frac === 0.25 ? DISTANCES : [1, 3, 6]) if (!(quick && d % 2 === 0 && frac !== 0.25)) run(p, frac, d);
    }
    const at = (p: SimPolicy) => results.filter((r) => r.model === shape.name && r.cacheFraction === 0.25 && r.policy === p);
    const best = (p: SimPolicy) => at(p).reduce((a, b) => (b.hitRate > a.hitRate ? b : a));
    const lru = best('lru');
    const fine = best('finemoe');
    const fineStall = at('finemoe').reduce((a, b) => (b.stallMs < a.stallMs ? b : a));
    const h = {
      model: shape.name,
      expertMB: +(expertBytes / 1e6).toFixed(1),
      transferMs: +(expertBytes / BANDWIDTH).toFixed(3),
      layerComputeMs: shape.layerComputeMs,
      capacity: lru.capacity,
      hitRate: Object.fromEntries(SIM_POLICIES.map((p) => [p, +best(p).hitRate.toFixed(4)])),
      stallMsPerToken: Object.fromEntries(SIM_POLICIES.map((p) => [p, +(at(p).reduce((a, b) => (b.stallMs < a.stallMs ? b : a)).stallMs / lru.iterations).toFixed(3)])),
      finemoeBestDistanceHit: fine.prefetchDistance,
      finemoeBestDistanceStall: fineStall.prefetchDistance,
      finemoeHitGainVsLru: +(fine.hitRate / lru.hitRate - 1).toFixed(4),
      finemoeStallReductionVsLru: +(1 - fineStall.stallMs / lru.stallMs).toFixed(4),
      targetHitGain: 0.39,
      targetStallReduction: 0.47,
      beladyHitRate: +best('belady').hitRate.toFixed(4),
      gapToBelady: +(best('belady').hitRate - fine.hitRate).toFixed(4),
      beladyHitGainVsLru: +(best('belady').hitRate / lru.hitRate - 1).toFixed(4),
      beladyStallReductionVsLru: +(1 - best('belady').stallMs / lru.stallMs).toFixed(4),
      oracleStallReductionVsLru: +(1 - at('oracle').reduce((a, b) => (b.stallMs < a.stallMs ? b : a)).stallMs / lru.stallMs).toFixed(4),
      gapToOracleStallMsPerToken: +((fineStall.stallMs - at('oracle').reduce((a, b) => (b.stallMs < a.stallMs ? b : a)).stallMs) / lru.iterations).toFixed(3),
      finemoePrefetchAccuracy: +(fine.prefetchUsed / Math.max(1, fine.prefetches)).toFixed(3),
    };
    headline.push(h);
    console.log(JSON.stringify(h));
    // sensitivity and ablation at the 25% cache
    const capacity = Math.max(shape.topK, Math.round(total * 0.25));
    const variants: Array<[string, Partial<typeof base> & Record<string, unknown>]> = [
      ['compute x0.5', { layerComputeMs: shape.layerComputeMs * 0.5 }],
      ['compute x2', { layerComputeMs: shape.layerComputeMs * 2 }],
      ['link 25 GB/s', { bandwidthBytesPerMs: 25e6 }],
    ];
    for (const [name, over] of variants) {
      const rs = Object.fromEntries(
        SIM_POLICIES.map((p) => {
          const ds = DEMAND.includes(p) ? [1] : [1, 3, 6];
          const all = ds.map((d) => simulate(trace, { ...base, ...over, policy: p, capacity, prefetchDistance: d }));
          return [p, { hit: all.reduce((a, b) => (b.hitRate > a.hitRate ? b : a)), stall: all.reduce((a, b) => (b.stallMs < a.stallMs ? b : a)) }];
        }),
      );
      const l = rs.lru!.hit;
      const row = {
        model: shape.name,
        variant: name,
        hitRate: Object.fromEntries(SIM_POLICIES.map((p) => [p, +rs[p]!.hit.hitRate.toFixed(4)])),
        stallMsPerToken: Object.fromEntries(SIM_POLICIES.map((p) => [p, +(rs[p]!.stall.stallMs / l.iterations).toFixed(3)])),
        finemoeHitGainVsLru: +(rs.finemoe!.hit.hitRate / l.hitRate - 1).toFixed(4),
        finemoeStallReductionVsLru: +(1 - rs.finemoe!.stall.stallMs / l.stallMs).toFixed(4),
        beladyStallReductionVsLru: +(1 - rs.belady!.stall.stallMs / l.stallMs).toFixed(4),
      };
      sensitivity.push(row);
      console.log('sensitivity', JSON.stringify(row));
    }
    const old = { laneModel: 'whole', prefetchCap: 'none', cancelRouted: false, refine: false } as const;
    const abl = [1, 3, 6].map((d) => {
      const before = simulate(trace, { ...base, ...old, policy: 'finemoe', capacity, prefetchDistance: d });
      const now = results.find((r) => r.model === shape.name && r.cacheFraction === 0.25 && r.policy === 'finemoe' && r.prefetchDistance === d)!;
      return { distance: d, firstSlice: { hitRate: +before.hitRate.toFixed(4), stallMsPerToken: +(before.stallMs / before.iterations).toFixed(3), prefetches: before.prefetches, used: before.prefetchUsed }, now: { hitRate: +now.hitRate.toFixed(4), stallMsPerToken: +(now.stallMs / now.iterations).toFixed(3), prefetches: now.prefetches, used: now.prefetchUsed } };
    });
    ablation.push({ model: shape.name, lruStallMsPerToken: +(lru.stallMs / lru.iterations).toFixed(3), rows: abl });
    console.log('ablation', JSON.stringify(abl));
  }

  // 3. predictor search cost vs the layer time it hides behind (tinybench)
  const { Bench } = await import('tinybench');
  const searchCost: unknown[] = [];
  for (const [L, E, cap] of [[16, 64, 256], [16, 64, 1024], [32, 8, 1024]] as const) {
    const s = stats[E === 8 ? 'mistral' : 'olmoe']!;
    const t = generateTrace({ stats: s, numLayers: L, numExperts: E, topK: s.topK, requests: 40, iterations: [30, 30], seed: 9 });
    const store = new ExpertMapStore({ numLayers: L, numExperts: E, embedDim: t.embedDim, capacity: cap, prefetchDistance: 3 });
    const pred = new FineMoePredictor(store, { topK: s.topK, prefetchDistance: 3 });
    for (const r of t.requests) for (let it = 0; it < r.iterations && store.size < cap; it++) store.add(r.embedding, r.gates!.subarray(it * L * E, (it + 1) * L * E));
    const r0 = t.requests[0]!;
    const bench = new Bench({ time: quick ? 200 : 500, warmupTime: 100 });
    bench.add('semantic search (iteration start)', () => {
      pred.beginIteration(r0.embedding);
    });
    bench.add('trajectory search, all layers of one iteration (per layer = /L)', () => {
      pred.beginIteration(r0.embedding);
      for (let l = 0; l < L; l++) pred.observeLayer(l, r0.gates!.subarray(l * E, (l + 1) * E));
    });
    bench.add('store insert, full redundancy pass (no similarities known)', () => {
      store.add(r0.embedding, r0.gates!.subarray(0, L * E));
    });
    // What the runtime pays per iteration for recording: endIteration() inserting with the similarities the
    // iteration's searches already computed (incremental insert); the searches run untimed before each sample.
    bench.add('incremental insert (endIteration after a full iteration)', () => {
      pred.endIteration();
    }, {
      beforeEach: () => {
        pred.beginIteration(r0.embedding);
        for (let l = 0; l < L; l++) pred.observeLayer(l, r0.gates!.subarray(l * E, (l + 1) * E));
      },
    });
    await bench.run();
    const [sem, traj, ins, iter] = bench.results as Array<{ latency: { mean: number } }>;
    const row = {
      layers: L,
      experts: E,
      maps: cap,
      semanticUs: +(sem!.latency.mean * 1000).toFixed(2),
      trajectoryPerLayerUs: +((traj!.latency.mean * 1000) / L).toFixed(2),
      insertFullPassUs: +(ins!.latency.mean * 1000).toFixed(2),
      insertIncrementalUs: +(iter!.latency.mean * 1000).toFixed(2),
      layerComputeUs: (E === 8 ? 1.0 : 0.3) * 1000,
    };
    searchCost.push(row);
    console.log('search cost', JSON.stringify(row));
  }

  const m = (() => {
    try {
      return machine();
    } catch (e) {
      return { error: String(e) };
    }
  })();
  const date = new Date().toISOString().slice(0, 10);
  const out = {
    benchmark: 'cache-eval',
    machine: m,
    note: 'Simulated (trace-driven) decode with batch 1; traces generated from REAL per-domain routing counts, see lib/cache/trace.ts (tokens of a request are independent draws from its domain: the data has no token-to-token statistics). Time model = the shipped engine (chunked copies, demand overtakes prefetch chunks, one prefetch at a time), see lib/cache/simulator.ts. Inputs bandwidth and layerComputeMs are assumptions (sensitivity25 varies them).',
    bandwidthBytesPerMs: BANDWIDTH,
    calibration: calibration.map((c) => ({ key: c.key, ...c.summary })),
    headline25: headline,
    sensitivity25: sensitivity,
    ablation25: ablation,
    searchCost,
    results: results.map((r) => ({ ...r, hitRate: +r.hitRate.toFixed(4), stallMs: +r.stallMs.toFixed(2), totalMs: +r.totalMs.toFixed(2), msPerToken: +r.msPerToken.toFixed(3), simWallMs: +r.simWallMs.toFixed(1) })),
  };
  const dir = path.join(root, 'bench', 'results');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, `cache-eval-${date}.json`), JSON.stringify(out, null, 1));
  fs.writeFileSync(path.join(dir, `cache-eval-${date}.svg`), svg(results));
  console.log(`wrote bench/results/cache-eval-${date}.json and .svg`);
}

const COLORS: Record<SimPolicy, string> = { lru: '#888', lfu: '#b58900', belady: '#000', 'domain-oracle': '#6c71c4', 'moe-infinity': '#268bd2', finemoe: '#dc322f', oracle: '#2aa198' };

/** Per model: hit rate (left) and stall ms/token (right) vs cache size, best distance per policy and size. */
function svg(results: Array<SimResult & { model: string; cacheFraction: number }>): string {
  const models = [...new Set(results.map((r) => r.model))];
  const W = 330;
  const H = 210;
  const pad = 40;
  const parts: string[] = [];
  models.forEach((model, mi) => {
    for (const [ci, metric] of (['hitRate', 'stall'] as const).entries()) {
      const x0 = ci * (W + 20) + 10;
      const y0 = mi * (H + 40) + 40;
      const rows = results.filter((r) => r.model === model);
      const val = (r: SimResult) => (metric === 'hitRate' ? r.hitRate : r.stallMs / r.iterations);
      const ymax = metric === 'hitRate' ? 1 : Math.max(...rows.map(val)) * 1.05 || 1;
      const sx = (f: number) => x0 + pad + ((f - 0.1) / 0.4) * (W - pad - 10);
      const sy = (v: number) => y0 + H - 25 - (v / ymax) * (H - 45);
      parts.push(`<text x="${x0 + pad}" y="${y0 + 10}" font-size="12" font-weight="bold">${model}: ${metric === 'hitRate' ? 'hit rate' : 'stall ms/token'} (lower right: better ${metric === 'hitRate' ? '↑' : '↓'})</text>`);
      parts.push(`<line x1="${sx(0.1)}" y1="${sy(0)}" x2="${sx(0.5)}" y2="${sy(0)}" stroke="#333"/><line x1="${sx(0.1)}" y1="${sy(0)}" x2="${sx(0.1)}" y2="${sy(ymax)}" stroke="#333"/>`);
      for (const f of [0.1, 0.25, 0.5]) parts.push(`<text x="${sx(f)}" y="${sy(0) + 14}" font-size="10" text-anchor="middle">${f * 100}%</text>`);
      parts.push(`<line x1="${sx(0.25)}" y1="${sy(0)}" x2="${sx(0.25)}" y2="${sy(ymax)}" stroke="#ddd" stroke-dasharray="3"/>`);
      for (const v of [0, ymax / 2, ymax]) parts.push(`<text x="${sx(0.1) - 4}" y="${sy(v) + 3}" font-size="10" text-anchor="end">${metric === 'hitRate' ? v.toFixed(1) : v.toFixed(1)}</text>`);
      for (const p of SIM_POLICIES) {
        const pts = [...new Set(rows.map((r) => r.cacheFraction))].sort((a, b) => a - b).map((f) => {
          const c = rows.filter((r) => r.policy === p && r.cacheFraction === f).map(val);
          return [f, metric === 'hitRate' ? Math.max(...c) : Math.min(...c)] as const;
        });
        parts.push(`<polyline fill="none" stroke="${COLORS[p]}" stroke-width="${p === 'finemoe' ? 2.5 : 1.5}" points="${pts.map(([f, v]) => `${sx(f).toFixed(1)},${sy(v).toFixed(1)}`).join(' ')}"/>`);
      }
    }
  });
  const legend = SIM_POLICIES.map((p, i) => `<rect x="${10 + i * 110}" y="8" width="12" height="4" fill="${COLORS[p]}"/><text x="${26 + i * 110}" y="14" font-size="11">${p}</text>`).join('');
  const height = models.length * (H + 40) + 40;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W + 40}" height="${height}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>${legend}${parts.join('')}</svg>\n`;
}

void main();
