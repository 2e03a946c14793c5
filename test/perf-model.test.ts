// Performance model v2 (lib/batching/perf-model.ts, lib/batching/profile.ts): the op composition of a decode step
// equals the ops the forward pass really issues (counted, with their shapes, on the backend), interpolation and
// bandwidth rescaling, monotonicity of predictions, and the shape of a measured model profile. No timed assertions.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { after, before, test } from 'node:test';

import { type ModelProfile, type OpPoint, type OpSpec, type StepPlan, chooseBatch, expectedExperts, expertCopies, interp, moduleOverlapMs, opCost, opKey, opsPerStep, predictDecode, predictPrefill, prefillAttention, prefillPairs, stepOps, stepWorkingSet } from '../lib/batching/perf-model.js';
import { denseWeightBytes, expertBytes, kvTokensFor, stepDeviceBytes } from '../lib/batching/memory.js';
import { mergeProfiles, profileModel } from '../lib/batching/profile.js';
import { planRun } from '../lib/batching/plan.js';
import { ExpertStore } from '../lib/residency/expert-store.js';
import { workloadShape } from '../lib/batching/workload.js';
import { LOGIT_ROWS } from '../lib/engine/forward.js';
import { Backend, cudaUnavailableReason, DeviceTensor, InvalidArgumentError, loadModel, openBackend, makeModel, type ModelConfig, type MoeModel, type PresetName } from '../lib/index.js';

let root = '';
before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-perf-'));
});
after(() => fs.rmSync(root, { recursive: true, force: true }));

const PRESETS: PresetName[] = ['tiny-mixtral', 'tiny-qwen2-moe', 'tiny-qwen3-moe', 'tiny-olmoe', 'tiny-deepseek-v2', 'tiny-gpt-oss'];
const configs = new Map<PresetName, ModelConfig>();

async function config(preset: PresetName): Promise<ModelConfig> {
  if (!configs.has(preset)) {
    const dir = path.join(root, preset);
    if (!fs.existsSync(path.join(dir, 'config.json'))) await makeModel(dir, { preset, seed: 2 });
    using m = await loadModel(dir);
    configs.set(preset, m.config);
  }
  return configs.get(preset)!;
}

/**
 * A synthetic profile for cfg: every op of its step at batches 1, 8, 64 (and contexts 100, 1000 for attention);
 * weight ops memory-bound at 20 GB/s (bytes / 20 GB/s, with a 1 ms per-row compute part), attention KV-bound.
 */
function synthetic(cfg: ModelConfig): ModelProfile {
  const ops: Record<string, OpPoint[]> = {};
  const probe = 20;
  for (const o of stepOps(cfg).ops) {
    const s = o.spec;
    const pts: OpPoint[] = [];
    for (const B of [1, 8, 64]) {
      if (s.op === 'attention') {
        for (const L of [100, 1000]) {
          const bytes = B * L * 2 * s.kvHeads * s.headDim * 2;
          pts.push({ batch: B, context: L, ms: 0.01 + bytes / (probe * 1e6), bytes, probeGBs: probe });
        }
        continue;
      }
      const bytes =
        s.op === 'gemm' ? s.n * s.k * (s.dtype === 'bf16' ? 2 : 4) : s.op === 'moeExperts' ? 3 * s.hidden * s.inter * 2 * (s.experts === 1 ? 1 : expectedExperts(s.experts, s.k, B)) : 0;
      pts.push({ batch: B, ms: 0.02 + bytes / (probe * 1e6) + (bytes > 0 ? 0.001 * B : 0.0001 * B), bytes, probeGBs: probe });
    }
    ops[o.key] = pts;
  }
  return {
    version: 2,
    backend: 'synthetic',
    cpu: 'none',
    threads: 1,
    model: { architecture: cfg.architecture, family: cfg.family, hiddenSize: cfg.hiddenSize, numLayers: cfg.numLayers, numExperts: cfg.numExperts, topK: cfg.topK, vocabSize: cfg.vocabSize },
    batches: [1, 8, 64],
    contexts: [100, 1000],
    ops,
    groupMs: 0.01,
    opMs: 0.02,
    streamEfficiency: 1,
    peakGBs: 1000,
    sampleNsPerLogit: 1,
    runtime: { preset: null, stepMs: 0.1, layerMs: 0.05, points: [] },
    readGBs: probe,
    cacheBytes: 32 * 2 ** 20,
    hostMemoryBytes: 2 ** 34,
    measuredAt: 'now',
    seconds: 0,
  };
}

/** The synthetic profile with prefill attention: compute-bound, 1 ns per query-key pair per head, and 0.01 ms. */
function withPrefill(cfg: ModelConfig, p: ModelProfile): ModelProfile {
  for (const o of stepOps(cfg).ops) {
    if (o.spec.op !== 'attention') continue;
    const h = o.spec.qHeads;
    p.ops[opKey(prefillAttention(o.spec))] = [1e3, 1e5, 1e7].map((pairs) => ({ batch: pairs, ms: 0.01 + (pairs * h) / 1e6, bytes: 0, probeGBs: 0 }));
  }
  return { ...p, prefillTokens: [512] };
}

test('mergeProfiles: the median per point and per rate of profiles measured apart in time; the streaming limits from the merged points; typed errors', async () => {
  const cfg = await config('tiny-qwen3-moe');
  // three profiles of one machine: the same points at 1x, 1.5x and 0.8x the time (a slow and a fast phase), rates
  // likewise
  const scaled = (f: number, id: number): ModelProfile => {
    const p = synthetic(cfg);
    const ops = Object.fromEntries(Object.entries(p.ops).map(([k, pts]) => [k, pts.map((q) => ({ ...q, ms: q.ms * f, probeGBs: q.probeGBs / f }))]));
    return { ...p, ops, groupMs: 0.01 * f, opMs: 0.02 * f, readGBs: 20 / f, copyGBs: 10 / f, sampleNsPerLogit: f, runtime: { preset: 'x', stepMs: 0.1 * f, layerMs: 0.05 * f, seqMs: 0.002 * f, points: [{ layers: id, batch: 1, measuredMs: f, predictedMs: f }] }, seconds: id };
  };
  const ps = [scaled(1, 1), scaled(1.5, 2), scaled(0.8, 3)];
  const m = mergeProfiles(ps);
  for (const [key, pts] of Object.entries(m.ops)) {
    pts.forEach((q, j) => {
      const ref = ps[0]!.ops[key]![j]!;
      assert.equal(q.ms, ref.ms, `${key}[${j}]: the median of 0.8x, 1x, 1.5x is 1x`);
      assert.equal(q.probeGBs, ref.probeGBs);
      assert.equal(q.bytes, ref.bytes);
    });
  }
  assert.deepEqual([m.groupMs, m.opMs, m.readGBs, m.copyGBs, m.sampleNsPerLogit, m.runtime.stepMs, m.runtime.layerMs, m.runtime.seqMs], [0.01, 0.02, 20, 10, 1, 0.1, 0.05, 0.002]);
  assert.equal(m.runtime.points.length, 3);
  assert.equal(m.seconds, 6);
  // predictions from the merge equal the middle profile's
  assert.equal(predictDecode(cfg, m, { batch: 8, context: 300 }).stepMs, predictDecode(cfg, ps[0]!, { batch: 8, context: 300 }).stepMs);
  // two profiles: the mean of the two
  const two = mergeProfiles([scaled(1, 1), scaled(2, 2)]);
  const key = Object.keys(two.ops)[0]!;
  assert.ok(Math.abs(two.ops[key]![0]!.ms - 1.5 * ps[0]!.ops[key]![0]!.ms) < 1e-12);
  // one profile: itself, the streaming limits recomputed from its points (synthetic ones stream at the probe's rate)
  const one = mergeProfiles([ps[0]!]);
  assert.deepEqual(one.ops, ps[0]!.ops);
  assert.ok(one.streamEfficiency > 0 && one.streamEfficiency <= 1 && one.peakGBs > 0 && one.peakGBs <= 20);
  // a rate one profile lacks is left out
  const { copyGBs: _, ...noCopy } = scaled(1, 4);
  assert.equal(mergeProfiles([ps[0]!, noCopy]).copyGBs, undefined);
  // typed errors
  assert.throws(() => mergeProfiles([]), { code: 'MOE_INVALID_ARGUMENT', message: /profiles must be a non-empty array/ });
  const other = synthetic(await config('tiny-olmoe'));
  assert.throws(() => mergeProfiles([ps[0]!, other]), { code: 'MOE_INVALID_ARGUMENT', message: /profiles\[1\] must be measured for the same model/ });
  const fewer = { ...ps[1]!, batches: [1, 8] };
  assert.throws(() => mergeProfiles([ps[0]!, fewer]), /profiles\[1\]/);
});

test('interpolation is linear between points, clamped below, extended along the last segment above', () => {
  const pts = [
    { x: 1, y: 1 },
    { x: 3, y: 2 },
    { x: 5, y: 4 },
  ];
  assert.equal(interp(pts, 0), 1);
  assert.equal(interp(pts, 2), 1.5);
  assert.equal(interp(pts, 4), 3);
  assert.equal(interp(pts, 7), 6);
  // a last segment that falls is not extended downwards
  assert.equal(interp([{ x: 1, y: 2 }, { x: 2, y: 1 }], 5), 1);
});

test('expected distinct experts: k for one token, all for a large batch', () => {
  assert.ok(Math.abs(expectedExperts(64, 8, 1) - 8) < 1e-9);
  assert.ok(64 - expectedExperts(64, 8, 4096) < 1e-6);
  assert.ok(expectedExperts(64, 8, 8) < expectedExperts(64, 8, 16));
});

test('memory parts rescale with the read bandwidth, the rest does not', async () => {
  const cfg = await config('tiny-qwen3-moe');
  const p = synthetic(cfg);
  const lm = stepOps(cfg).ops.find((o) => o.term === 'lmHead' && o.spec.op === 'gemm')!;
  const at = opCost(p, lm.key, 1);
  const half = opCost(p, lm.key, 1, 0, { readGBs: 10 });
  assert.ok(Math.abs(half.memMs - 2 * at.memMs) < 1e-12, 'the memory part doubles at half the bandwidth');
  assert.ok(Math.abs(half.ms - at.ms - at.memMs) < 1e-12, 'and only the memory part changes');
  const small = stepOps(cfg).ops.find((o) => o.spec.op === 'routerTopK')!;
  assert.equal(opCost(p, small.key, 8, 0, { readGBs: 10 }).ms, opCost(p, small.key, 8).ms, 'ops on cached activations do not rescale with the bandwidth');
  const d = predictDecode(cfg, p, { batch: 8, context: 100 });
  const d2 = predictDecode(cfg, p, { batch: 8, context: 100 }, { readGBs: 10 });
  assert.equal(d2.terms.overheadMs, d.terms.overheadMs, 'group round trips and runtime costs do not rescale');
  // the runtime's per-sequence cost: once per sequence of the step
  const withSeq = predictDecode(cfg, { ...p, runtime: { ...p.runtime, seqMs: 0.01 } }, { batch: 8, context: 100 });
  assert.ok(Math.abs(withSeq.terms.overheadMs - d.terms.overheadMs - 8 * 0.01) < 1e-12);
  assert.ok(d2.stepMs > d.stepMs);
  // the same memory-bound op measured at two bandwidths predicts the same at a third
  const q: OpPoint = { batch: 1, ms: 1, bytes: 20e6, probeGBs: 20 };
  const r: OpPoint = { batch: 1, ms: 2, bytes: 20e6, probeGBs: 10 };
  const one = { ...p, ops: { x: [q] } };
  const two = { ...p, ops: { x: [r] } };
  assert.ok(Math.abs(opCost(one, 'x', 1, 0, { readGBs: 15 }).ms - 20e6 / 15e6) < 1e-12);
  assert.ok(Math.abs(opCost(two, 'x', 1, 0, { readGBs: 15 }).ms - 20e6 / 15e6) < 1e-12);
  // beyond the fastest streaming the ops reached, a faster probe does not make them faster
  const capped = { ...one, peakGBs: 25 };
  assert.ok(Math.abs(opCost(capped, 'x', 1, 0, { readGBs: 50 }).ms - 20e6 / 25e6) < 1e-12);
  assert.ok(Math.abs(opCost(capped, 'x', 1, 0, { readGBs: 15 }).ms - 20e6 / 15e6) < 1e-12);
});

test('predictions: more context is slower, more batch gives more tokens/s up to a point', async () => {
  for (const preset of ['tiny-qwen3-moe', 'tiny-deepseek-v2', 'tiny-gpt-oss'] as const) {
    const cfg = await config(preset);
    const p = synthetic(cfg);
    for (const B of [1, 8, 32]) {
      let prev = 0;
      for (const L of [16, 100, 400, 1000, 3000]) {
        const d = predictDecode(cfg, p, { batch: B, context: L });
        assert.ok(Number.isFinite(d.stepMs) && d.stepMs > prev, `${preset} batch ${B}: context ${L} slower than the shorter one`);
        prev = d.stepMs;
      }
    }
    let tps = 0;
    for (const B of [1, 2, 4, 8, 16, 32]) {
      const d = predictDecode(cfg, p, { batch: B, context: 100 });
      assert.ok(d.tokensPerSecond > tps, `${preset}: batch ${B} gives more tokens/s than half of it`);
      assert.ok(d.stepMs > 0);
      tps = d.tokensPerSecond;
    }
    // long contexts: attention grows with the batch as fast as the tokens, so throughput stops growing
    const a = predictDecode(cfg, p, { batch: 64, context: 100000 });
    const b = predictDecode(cfg, p, { batch: 128, context: 100000 });
    assert.ok(b.tokensPerSecond / a.tokensPerSecond < 1.05, `${preset}: throughput saturates`);
    assert.equal(a.bound, 'attention (KV bandwidth)');
  }
});

test('warm and cold measurements blend by the step working set against the cache', async () => {
  const cfg = await config('tiny-qwen3-moe');
  const p = synthetic(cfg);
  const key = stepOps(cfg).ops.find((o) => o.spec.op === 'moeExperts')!.key;
  // cold points twice as slow as the warm ones
  p.ops[key] = [...p.ops[key]!.map((q) => ({ ...q, cold: false })), ...p.ops[key]!.map((q) => ({ ...q, ms: 2 * q.ms, cold: true }))];
  const w = opCost(p, key, 8, 0, {}, 0).ms;
  assert.ok(Math.abs(opCost(p, key, 8, 0, {}, 1).ms - 2 * w) < 1e-12);
  assert.ok(Math.abs(opCost(p, key, 8, 0, {}, 0.5).ms - 1.5 * w) < 1e-12);
  // the working set grows with the batch (experts) and the context (K and V)
  assert.ok(stepWorkingSet(cfg, 8, 100) > stepWorkingSet(cfg, 1, 100));
  assert.ok(stepWorkingSet(cfg, 8, 1000) > stepWorkingSet(cfg, 8, 100));
  const small = predictDecode(cfg, { ...p, cacheBytes: 2 ** 40 }, { batch: 8, context: 100 });
  const big = predictDecode(cfg, { ...p, cacheBytes: 1 }, { batch: 8, context: 100 });
  assert.ok(Math.abs(big.terms.expertsMs - small.terms.expertsMs - cfg.moeLayers.length * w) < 1e-9, 'a step beyond the cache reads cold');
});

test('chooseBatch: the fastest batch that fits the KV cache, and what limits it', async () => {
  const cfg = await config('tiny-qwen3-moe');
  const p = synthetic(cfg); // batches 1, 8, 64: throughput grows with the batch (weights amortised)
  const roomy = chooseBatch(cfg, p, 100, 1e9);
  assert.equal(roomy.batch, 64);
  assert.equal(roomy.limit, 'profiled batches');
  // 2000 KV tokens hold 20 sequences of 100: the largest that fits, 20, and KV capacity binds
  const tight = chooseBatch(cfg, p, 100, 2000);
  assert.equal(tight.batch, 20);
  assert.equal(tight.limit, 'kv-capacity');
  assert.ok(Math.abs(tight.prediction.tokensPerSecond - predictDecode(cfg, p, { batch: 20, context: 100 }).tokensPerSecond) < 1e-9);
  // a profile whose per-token cost explodes past batch 8: a smaller batch wins before the cache fills
  const slow = { ...p, ops: Object.fromEntries(Object.entries(p.ops).map(([k, pts]) => [k, pts.map((q) => (q.batch === 64 ? { ...q, ms: q.ms * 1000 } : q))])) };
  const t = chooseBatch(cfg, slow, 100, 1e9);
  assert.ok(t.batch < 64 && t.limit === 'throughput', `batch ${t.batch}, ${t.limit}`);
});

test('offloaded experts: copies per step by regime (demand fetches, LRU cycling, module mode), priced at the copy rate', async () => {
  const cfg = await config('tiny-qwen3-moe'); // 32 experts top-4 per MoE layer
  const L = cfg.moeLayers.length;
  const E = cfg.numExperts;
  const U = (B: number) => expectedExperts(E, cfg.topK, B);
  // every expert fits: nothing copied
  assert.deepEqual(expertCopies(cfg, 8, L * E), { experts: 0, moduleMode: false, streamed: false });
  // one token, many slots: LRU keeps a requested expert with probability slots / (L E)
  const slots = Math.floor((L * E) / 2);
  assert.ok(L * U(1) < slots);
  assert.ok(Math.abs(expertCopies(cfg, 1, slots).experts - L * U(1) * 0.5) < 1e-9);
  // the step's experts over all layers exceed the slots, each layer's fit: every one copied
  const few = Math.ceil(U(2)) + 1;
  assert.ok(L * U(2) >= few && U(2) <= few);
  assert.ok(Math.abs(expertCopies(cfg, 2, few).experts - L * U(2)) < 1e-9);
  assert.equal(expertCopies(cfg, 2, few).streamed, false, 'a quarter of a layer\'s experts: fetched on demand');
  // ... with most of each layer's experts (a big batch): the next layer's stream ahead (CachedExperts' cycling), a
  // share 1 - U/E of the prefetched ones not routed to again; on CUDA they overlap the step like module mode's
  const many = 40;
  assert.ok(U(64) <= many && L * U(64) >= many && 4 * U(64) >= 3 * E);
  const c = expertCopies(cfg, 64, many);
  assert.deepEqual({ moduleMode: c.moduleMode, streamed: c.streamed }, { moduleMode: false, streamed: true });
  assert.ok(Math.abs(c.experts - L * (U(64) + U(64) * (1 - U(64) / E))) < 1e-9);
  // a layer's experts exceed the slots: module mode, plus the prefetched experts of the previous step not used again
  const m = expertCopies(cfg, 64, 8);
  assert.equal(m.moduleMode, true);
  assert.ok(Math.abs(m.experts - L * (U(64) + 8 * (1 - U(64) / E))) < 1e-9);
  // the step pays the copies at the profile's rate; without a rate an offloaded prediction is refused
  const p = { ...synthetic(cfg), copyGBs: 10 };
  const resident = predictDecode(cfg, p, { batch: 64, context: 100 });
  const off = predictDecode(cfg, p, { batch: 64, context: 100, expertSlots: 8 });
  // a slot for every expert: nothing copied once the pool is full, and steps queued whole as with resident experts
  assert.equal(predictDecode(cfg, p, { batch: 64, context: 100, expertSlots: L * E }).stepMs, resident.stepMs);
  const bytes = m.experts * 3 * cfg.hiddenSize * cfg.moeIntermediateSize * 2;
  assert.ok(Math.abs(off.terms.expertCopyMs - bytes / 10e6) < 1e-9);
  // ... and its round trips: with resident experts the whole step is queued (one), offloaded each layer awaits its
  // router (its experts are submitted behind it; StepPlan.queuedTrips)
  const extraTrips = stepOps(cfg, { resident: false }).queuedTrips - stepOps(cfg).queuedTrips;
  assert.equal(stepOps(cfg).queuedTrips, 1);
  assert.equal(extraTrips, 1 + cfg.numLayers);
  assert.ok(Math.abs(off.stepMs - resident.stepMs - off.terms.expertCopyMs - extraTrips * p.groupMs) < 1e-9);
  assert.deepEqual(off.copies, m);
  assert.equal(predictDecode(cfg, { ...p, copyGBs: 1e-6 }, { batch: 64, context: 100, expertSlots: 8 }).bound, 'expert copies (H2D)');
  assert.throws(() => predictDecode(cfg, synthetic(cfg), { batch: 4, context: 10, expertSlots: 8 }), /no expert copy rate/);
  assert.throws(() => predictDecode(cfg, p, { batch: 4, context: 10, expertSlots: -1 }), /expertSlots must be an integer >= 0, received -1/);
});

test('a prediction needs every op of the step in the profile', async () => {
  const cfg = await config('tiny-mixtral');
  const p = synthetic(cfg);
  const key = stepOps(cfg).ops.find((o) => o.spec.op === 'moeExperts')!.key;
  delete p.ops[key];
  assert.throws(() => predictDecode(cfg, p, { batch: 4, context: 10 }), /no measurements of "moeExperts/);
});

/** A signature of one backend call, comparable with the composition's ops (a copy: its direction and bytes). */
function signature(name: string, a: unknown[]): string {
  const shape = (t: unknown) => (t as { shape: number[] }).shape;
  switch (name) {
    case 'gemm':
      return `gemm ${shape(a[1]).join('x')}`;
    case 'rmsNorm': {
      const x = shape((a[0] as { x: unknown }).x);
      return `rmsNorm ${x[x.length - 1]}`;
    }
    case 'moeExperts': {
      const t = (a[0] as { experts: { numExperts: number; intermediate: number } }).experts;
      return `moeExperts ${t.numExperts}x${t.intermediate}`;
    }
    case 'copy': {
      const [src, dst] = a as [{ byteLength: number }, unknown];
      return `transfer ${src instanceof DeviceTensor ? 'down' : dst instanceof DeviceTensor ? 'up' : 'host'} ${src.byteLength}`;
    }
    default:
      return name;
  }
}

/** The plan's backend calls as signature() writes them: the compute backend's (host false) or the host backend's (op names). */
function plannedSignatures(plan: StepPlan, host = false): string[] {
  const out: string[] = [];
  for (const o of plan.ops) {
    if (!o.backend || (o.host === true) !== host) continue;
    const s = o.spec;
    const sig = host
      ? s.op
      : s.op === 'gemm'
        ? `gemm ${s.n}x${s.k}`
        : s.op === 'rmsNorm'
          ? `rmsNorm ${s.d}`
          : s.op === 'moeExperts'
            ? `moeExperts ${s.experts}x${s.inter}`
            : s.op === 'transfer'
              ? `transfer ${s.dir} ${s.rowBytes}`
              : s.op;
    for (let i = 0; i < o.calls; i++) out.push(sig);
  }
  return out.sort();
}

/**
 * The calls of `names` on every Backend during one decode step of `m` (after its prompt's prefill): the model's
 * backend's as signature() writes them, the other backends' (the host backend of a staged model) by name; sorted.
 */
async function decodeStepCalls(m: MoeModel, names: string[]): Promise<{ compute: string[]; host: string[] }> {
  const compute: string[] = [];
  const host: string[] = [];
  const proto = Backend.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
  const saved = new Map<string, (...a: unknown[]) => unknown>();
  const it = m.stream('Count my ops', { maxNewTokens: 2, stopAtEos: false })[Symbol.asyncIterator]();
  await it.next(); // prefill done, first token out
  for (const n of names) {
    const orig = proto[n]!;
    saved.set(n, orig);
    proto[n] = function (this: Backend, ...a: unknown[]) {
      if (this === m.backend) compute.push(signature(n, a));
      else host.push(n);
      return orig.apply(this, a);
    };
  }
  try {
    await it.next(); // one decode step
  } finally {
    for (const [n, f] of saved) proto[n] = f;
  }
  await it.return?.();
  return { compute: compute.sort(), host: host.sort() };
}

const OP_NAMES = ['gemm', 'rmsNorm', 'add', 'rope', 'convert', 'attention', 'routerTopK', 'moeExperts', 'gatherRows'];

for (const preset of PRESETS) {
  test(`${preset}: the composition issues the ops, with their shapes, of one decode step`, async () => {
    await config(preset);
    using m = await loadModel(path.join(root, preset));
    const { compute } = await decodeStepCalls(m, OP_NAMES);
    assert.deepEqual(compute, plannedSignatures(stepOps(m.config)));
    const o = opsPerStep(m.config);
    assert.equal(compute.length, o.perLayer.reduce((a, b) => a + b, 0) + o.perStep);
  });
}

for (const preset of PRESETS) {
  test(`${preset}, staged: the composition issues the compute backend's ops, its copies and the host backend's ops of one decode step`, async () => {
    await config(preset);
    using m = await loadModel(path.join(root, preset), { deviceActivations: true });
    // every backend's calls, copies with their direction and bytes (one sequence: one row)
    const { compute, host } = await decodeStepCalls(m, [...OP_NAMES, 'argmaxRows', 'sampleRows', 'copy']);
    const plan = stepOps(m.config, { staged: true });
    assert.deepEqual(compute, plannedSignatures(plan));
    assert.deepEqual(host, plannedSignatures(plan, true));
    const o = opsPerStep(m.config);
    assert.equal(compute.filter((x) => !x.startsWith('transfer')).length, plan.perLayer.reduce((a, b) => a + b, 0) + plan.perStep);
    // the same compute ops as the direct step less its host ones; one host group per RoPE and attention per layer
    assert.equal(plan.perLayer.reduce((a, b) => a + b, 0) + plan.perStep, o.perLayer.reduce((a, b) => a + b, 0) + o.perStep - 2 * m.config.numLayers + 1);
    assert.equal(plan.hostGroups, 2 * m.config.numLayers);
  });
}

test('profileModel measures every op of a tiny model at its shapes, batches and contexts', async () => {
  const cfg = await config('tiny-qwen3-moe');
  using m = await loadModel(path.join(root, 'tiny-qwen3-moe'));
  const p = await profileModel(m.backend, cfg, { maxBatch: 6, contexts: [32, 96], prefillTokens: [16], quick: true });
  assert.equal(p.version, 2);
  assert.deepEqual(p.batches, [1, 2, 4, 6]);
  assert.deepEqual(p.prefillTokens, [16]);
  assert.equal(p.model.hiddenSize, cfg.hiddenSize);
  const plan = stepOps(cfg);
  for (const o of plan.ops) {
    const all = p.ops[o.key];
    assert.ok(all, `profile has ${o.key}`);
    // a tiny model's step fits the cache at small batches: ops streaming weights or K/V are measured warm and cold
    const streams = o.spec.op === 'gemm' || o.spec.op === 'attention' || o.spec.op === 'moeExperts';
    const kinds = streams ? [true, false] : [undefined];
    assert.deepEqual([...new Set(all.map((q) => q.cold))].sort(), [...kinds].sort());
    for (const cold of kinds) {
      const pts: OpPoint[] = all.filter((q) => q.cold === cold);
      if (o.spec.op === 'attention') {
        assert.deepEqual(pts.map((q) => `${q.batch}/${q.context}`).sort(), ['1/33', '1/97', '2/33', '2/97', '4/33', '4/97', '6/33', '6/97'].sort());
        for (const q of pts) assert.equal(q.bytes, q.batch * q.context! * 2 * o.spec.kvHeads * o.spec.headDim * 2);
      } else {
        // rows per token also at the prefill step; rows per sequence (LM head...) at the decode batches only, unless
        // a per-token op shares the key (a tiny model's q projection can have the LM head's shape)
        const seqOnly = plan.ops.filter((x) => x.key === o.key).every((x) => x.perSequence);
        assert.deepEqual(
          pts.map((q) => q.batch),
          seqOnly ? [1, 2, 4, 6] : [1, 2, 4, 6, 16],
        );
      }
    }
    for (const q of all) assert.ok(Number.isFinite(q.ms) && q.ms >= 0, `${o.key} at ${q.batch}: ${q.ms}`);
    if (o.spec.op === 'gemm') for (const q of all) assert.equal(q.bytes, o.spec.n * o.spec.k * (o.spec.dtype === 'bf16' ? 2 : 4));
    if (o.spec.op === 'moeExperts' && o.spec.experts > 1) {
      for (const q of all) {
        assert.ok(q.experts! >= cfg.topK && q.experts! <= Math.min(cfg.numExperts, q.batch * cfg.topK), `distinct experts at batch ${q.batch}: ${q.experts}`);
        assert.ok(Math.abs(q.bytes - q.experts! * 3 * cfg.hiddenSize * cfg.moeIntermediateSize * 2) < 1e-6);
      }
    }
    if (streams) for (const q of all) assert.ok(q.probeGBs > 0);
  }
  assert.ok(p.peakGBs >= 0 && p.groupMs >= 0 && p.opMs >= 0 && p.streamEfficiency > 0 && p.sampleNsPerLogit > 0 && p.readGBs > 0 && p.cacheBytes > 0);
  assert.ok(p.copyGBs! > 0, 'the expert copy rate (offloaded experts)');
  // the runtime calibration ran copies of the family's tiny preset, n and n + 8 layers, in turn (which goes first
  // alternating), then the n-layer copy at batch 16; the per-layer cost is the median of each repetition's paired
  // difference of residuals over the 8 layers, the per-step cost the n-layer copy's median residual less n per-layer
  // costs, the per-sequence cost the median of its batch-16 residual less its batch-1 one, over 15 (none below 0)
  assert.equal(p.runtime.preset, 'tiny-qwen3-moe');
  const pts = p.runtime.points;
  assert.deepEqual(
    pts.map((q) => `${q.layers}/${q.batch}`),
    ['1/1', '9/1', '1/16', '9/1', '1/1', '1/16', '1/1', '9/1', '1/16'],
  );
  for (const q of pts) assert.ok(q.measuredMs > 0 && q.predictedMs > 0);
  const rest = (q: (typeof pts)[0]) => q.measuredMs - q.predictedMs;
  const median3 = (v: number[]) => [...v].sort((x, y) => x - y)[1]!;
  const reps = [0, 1, 2].map((r) => pts.slice(3 * r, 3 * r + 2).sort((x, y) => x.layers - y.layers) as [(typeof pts)[0], (typeof pts)[0]]);
  const layerMs = Math.max(0, median3(reps.map(([a, b]) => (rest(b) - rest(a)) / 8)));
  assert.ok(Math.abs(p.runtime.layerMs - layerMs) < 1e-9, `layerMs ${p.runtime.layerMs} vs ${layerMs} from the points`);
  assert.ok(Math.abs(p.runtime.stepMs - Math.max(0, median3(reps.map(([a]) => rest(a))) - layerMs)) < 1e-9);
  const seqMs = Math.max(0, median3([0, 1, 2].map((r) => rest(pts[3 * r + 2]!) - rest(reps[r]![0]))) / 15);
  assert.ok(Math.abs(p.runtime.seqMs! - seqMs) < 1e-9, `seqMs ${p.runtime.seqMs} vs ${seqMs} from the points`);
  const d = predictDecode(cfg, p, { batch: 4, context: 64 }, { readGBs: p.readGBs });
  assert.ok(Number.isFinite(d.stepMs) && d.stepMs > 0 && d.tokensPerSecond > 0);
  assert.ok(d.expertsPerLayer > cfg.topK && d.expertsPerLayer <= 4 * cfg.topK);
  // prefill attention: one prompt of 16 tokens, four of 4, and 16 after a prefix of 32, at their query-key pairs
  const att = stepOps(cfg).ops.find((o) => o.spec.op === 'attention')!.spec as Extract<OpSpec, { op: 'attention' }>;
  const pre = p.ops[opKey(prefillAttention(att))]!;
  assert.deepEqual(
    pre.map((q) => q.batch),
    [4 * prefillPairs(4, 0), prefillPairs(16, 0), prefillPairs(16, 32)].sort((a, b) => a - b),
  );
  for (const q of pre) assert.ok(Number.isFinite(q.ms) && q.ms > 0);
  const f = predictPrefill(cfg, p, { prompt: 40, chunk: 16 }, { readGBs: p.readGBs });
  assert.deepEqual(
    f.steps.map((x) => [x.tokens, x.prefix]),
    [
      [16, 0],
      [16, 16],
      [8, 32],
    ],
  );
  assert.ok(Number.isFinite(f.tokensPerSecond) && f.tokensPerSecond > 0);
});

test('profileModel\'s attention tier: a trial of both tiers on an avx512bf16 host (chosen by its rule), a given tier within the host\'s, the points on it, planRun passing it on', async () => {
  const cfg = await config('tiny-qwen3-moe');
  const dir = path.join(root, 'tiny-qwen3-moe');
  using m = await loadModel(dir);
  const opts = { maxBatch: 2, contexts: [32, 96], prefillTokens: [16], quick: true, skipRuntime: true };
  // the tiers the profile's attention calls ask for (undefined: the backend's)
  const asked: Array<string | undefined> = [];
  const attention = Backend.prototype.attention;
  Backend.prototype.attention = function (this: Backend, p, o) {
    asked.push(p.isa);
    return attention.call(this, p, o);
  };
  try {
    const auto = await profileModel(m.backend, cfg, opts);
    if (m.backend.isa === 'avx512bf16') {
      const t = auto.attentionTiers!;
      assert.deepEqual(Object.keys(t).sort(), ['avx512', 'avx512bf16']);
      for (const x of Object.values(t)) assert.ok(x.decodeMs > 0 && x.prefillMs > 0, JSON.stringify(t));
      const low = t.avx512!.decodeMs <= 0.95 * t.avx512bf16!.decodeMs && t.avx512!.prefillMs <= 1.05 * t.avx512bf16!.prefillMs;
      assert.equal(auto.attentionIsa, low ? 'avx512' : undefined);
      assert.ok(asked.includes('avx512') && asked.includes('avx512bf16'), 'the trial ran both tiers');
    } else {
      assert.equal(auto.attentionTiers, undefined, 'no trial below avx512bf16');
      assert.equal(auto.attentionIsa, undefined);
    }
    asked.length = 0;
    const given = await profileModel(m.backend, cfg, { ...opts, attentionIsa: 'scalar' });
    assert.equal(given.attentionIsa, 'scalar');
    assert.equal(given.attentionTiers, undefined);
    assert.ok(asked.length > 0 && asked.every((x) => x === 'scalar'), `every attention point on the scalar tier: ${[...new Set(asked)].join()}`);
    const above = await profileModel(m.backend, cfg, { ...opts, attentionIsa: 'avx512bf16' });
    assert.equal(above.attentionIsa, undefined, 'a tier at or above the host\'s: the host\'s (not recorded)');
    await assert.rejects(profileModel(m.backend, cfg, { ...opts, attentionIsa: 'avx3' as never }), (e: unknown) => e instanceof InvalidArgumentError && /^attentionIsa must be 'auto' or one of scalar, avx2, avx512, avx512bf16/.test(e.message));
    assert.throws(() => mergeProfiles([given, above]), (e: unknown) => e instanceof InvalidArgumentError, 'profiles of different attention tiers do not merge');
    // the plan loads the model with the profile's tier
    const plan = planRun(cfg, { backend: m.backend, profile: given, maxSequences: 2 });
    assert.equal(plan.load.attentionIsa, 'scalar');
    using run = await loadModel(dir, plan.load);
    assert.equal(run.attentionIsa, 'scalar');
  } finally {
    Backend.prototype.attention = attention;
  }
});

test('profileModel with a loaded model: the routed experts measured on its own store where that spans the rotation (else generated copies); a model of another shape or backend is a typed error', async () => {
  const cfg = await config('tiny-qwen3-moe');
  using m = await loadModel(path.join(root, 'tiny-qwen3-moe'));
  const opts = { maxBatch: 2, contexts: [32, 96], prefillTokens: [], quick: true, skipRuntime: true, attentionIsa: m.attentionIsa };
  // the stores the profile allocates for its expert points
  let made = 0;
  const createAsync = ExpertStore.createAsync;
  ExpertStore.createAsync = async function (...a: Parameters<typeof createAsync>) {
    made++;
    return createAsync.apply(this, a);
  };
  try {
    const generated = await profileModel(m.backend, cfg, opts);
    const withGenerated = made;
    made = 0;
    const own = await profileModel(m.backend, cfg, { ...opts, model: m });
    // tiny-qwen3-moe's store (4 layers x 32 experts of 192 KiB: 24 MiB) spans the warm rotation (3 x 8 MiB), not the
    // cold one (3 x 64 MiB): its warm points read the model's store, the cold ones a generated store
    assert.equal(m.ownMemory.store.totalBytes >= 24 * 2 ** 20, true);
    assert.equal(made, withGenerated - 1, `stores allocated: ${made} with the model, ${withGenerated} without`);
    const key = stepOps(cfg).ops.find((o) => o.spec.op === 'moeExperts' && o.spec.experts > 1)!.key;
    assert.deepEqual(own.ops[key]!.map((q) => [q.batch, q.cold]), generated.ops[key]!.map((q) => [q.batch, q.cold]));
  } finally {
    ExpertStore.createAsync = createAsync;
  }
  const other = await config('tiny-olmoe');
  await assert.rejects(profileModel(m.backend, other, { ...opts, model: m }), (e: unknown) => e instanceof InvalidArgumentError && /^model must be a loaded model of cfg/.test(e.message));
  await assert.rejects(profileModel(openBackend({ backend: 'cpu', ownStream: true }), cfg, { ...opts, model: m }), (e: unknown) => e instanceof InvalidArgumentError && /^model must be a loaded model of cfg/.test(e.message));
});

test('profileModel, staged on the CPU backend and on CUDA: every op of the staged step, copies and both round trips', async (t) => {
  const cfg = await config('tiny-olmoe');
  for (const kind of ['cpu', 'cuda'] as const) {
    await t.test(kind, { skip: kind === 'cuda' ? (cudaUnavailableReason() ?? false) : false }, async () => {
      using m = await loadModel(path.join(root, 'tiny-olmoe'), { backend: kind, deviceActivations: true });
      const p = await profileModel(m.backend, cfg, { maxBatch: 4, contexts: [32, 96], prefillTokens: [16], quick: true, ...(kind === 'cpu' ? { staged: true, attentionThreads: 1 } : {}) });
      assert.equal(p.staged, true);
      // the attention on fewer threads too (on the CPU as asked; on CUDA by default, below the pool)
      if (p.attentionThreads) {
        const a = stepOps(cfg, { staged: true }).ops.find((o) => o.spec.op === 'attention')!.spec as Extract<OpSpec, { op: 'attention' }>;
        for (const spec of [{ ...a, threads: p.attentionThreads }, prefillAttention({ ...a, threads: p.attentionThreads })]) {
          assert.ok(p.ops[opKey(spec)]?.every((q) => q.ms > 0), `profile has ${opKey(spec)}`);
        }
      } else assert.equal(kind, 'cuda', 'the CPU run asked for the attention on 1 thread');
      assert.equal(p.kind, kind);
      if (kind === 'cuda') assert.ok(p.device && p.device.length > 0, 'the GPU name');
      assert.ok(p.groupMs >= 0 && p.hostGroupMs! >= 0);
      assert.ok(p.hostExpertGBs! > 0, 'missed experts computed on the host: GB/s');
      // the ops of a step queued whole (resident experts) and of one that is not (offloaded: the routing comes down)
      for (const resident of [true, false]) {
        const plan = stepOps(cfg, { staged: true, resident });
        assert.ok(plan.ops.some((o) => o.spec.op === 'transfer') && plan.ops.some((o) => o.spec.op === 'argmaxRows'));
        for (const o of plan.ops) {
          const all = p.ops[o.key];
          assert.ok(all && all.length > 0, `profile has ${o.key} (resident ${resident})`);
          for (const q of all) assert.ok(Number.isFinite(q.ms) && q.ms >= 0, `${o.key} at ${q.batch}: ${q.ms}`);
        }
      }
      const plan = stepOps(cfg, { staged: true });
      // a GPU's weight-streaming ops record its memory's bandwidth, measured once
      if (kind === 'cuda') for (const q of p.ops[plan.ops.find((o) => o.spec.op === 'gemm')!.key]!) assert.ok(q.probeGBs > 100 && q.cold === true);
      const d = predictDecode(cfg, p, { batch: 4, context: 64 });
      assert.ok(Number.isFinite(d.stepMs) && d.stepMs > 0);
      // offloaded experts (the demo's throughput mode on CUDA): the routing's downloads are priced from the profile
      const off = predictDecode(cfg, p, { batch: 4, context: 64, expertSlots: 2 });
      assert.ok(Number.isFinite(off.stepMs) && off.stepMs > 0);
      // staged: greedy sampling is the argmax op, not host sampling of the logits
      assert.equal(predictDecode(cfg, { ...p, sampleNsPerLogit: p.sampleNsPerLogit + 1000 }, { batch: 4, context: 64 }).stepMs, d.stepMs);
    });
  }
});

test('offloaded experts on CUDA: copies streamed ahead (module mode, a cycled pool) overlap the compute (they add only beyond it); demand misses are copied or computed on the host (beside the GPU\'s experts), whichever is faster', async () => {
  const cfg = await config('tiny-mixtral');
  const cpu = synthetic(cfg);
  const gpu: ModelProfile = { ...cpu, kind: 'cuda', copyGBs: 1 };
  const slots = 1; // fewer slots than a step's distinct experts: module mode
  const B = 64;
  const a = predictDecode(cfg, { ...cpu, copyGBs: 1 }, { batch: B, context: 100, expertSlots: slots });
  const b = predictDecode(cfg, gpu, { batch: B, context: 100, expertSlots: slots });
  assert.equal(a.copies!.moduleMode, true);
  const rest = a.stepMs - a.terms.expertCopyMs;
  const copyMs = a.terms.expertCopyMs;
  assert.ok(Math.abs(b.stepMs - Math.max(rest, copyMs)) < 1e-9 * b.stepMs);
  assert.ok(Math.abs(b.terms.expertCopyMs - Math.max(0, copyMs - rest)) < 1e-9 * b.stepMs);
  assert.equal(b.bound === 'expert copies (H2D)', copyMs > rest);
  // a layer's experts fit the slots, the layers' do not (Mixtral-shaped: 8 slots, a big batch routing to all 8): the
  // pool cycles and the copies stream ahead, overlapping the step like module mode's
  const cyc = { batch: B, context: 100, expertSlots: cfg.numExperts };
  const ac = predictDecode(cfg, { ...cpu, copyGBs: 1 }, cyc);
  const bc = predictDecode(cfg, gpu, cyc);
  assert.deepEqual([bc.copies!.moduleMode, bc.copies!.streamed], [false, true]);
  assert.ok(Math.abs(bc.stepMs - Math.max(ac.stepMs - ac.terms.expertCopyMs, ac.terms.expertCopyMs)) < 1e-9 * bc.stepMs);
  // demand fetches stall their layer on CUDA too: with every distinct expert fitting the slots, copies add
  const few = predictDecode(cfg, gpu, { batch: 1, context: 100, expertSlots: cfg.numExperts * cfg.moeLayers.length - 1 });
  assert.equal(few.copies!.moduleMode, false);
  // (and the layers' round trips: a step with resident experts is queued whole: StepPlan.queuedTrips)
  const trips = (stepOps(cfg, { resident: false }).queuedTrips - stepOps(cfg).queuedTrips) * cpu.groupMs;
  assert.ok(Math.abs(few.stepMs - few.terms.expertCopyMs - trips - predictDecode(cfg, cpu, { batch: 1, context: 100 }).stepMs) < 1e-9);
  // ... unless computing the missed experts on the host is faster (the runtime's measured choice): then that
  const most = cfg.numExperts * cfg.moeLayers.length - 1;
  const fast = predictDecode(cfg, { ...gpu, hostExpertGBs: 4 }, { batch: 1, context: 100, expertSlots: most });
  assert.equal(fast.copies!.onHost, true);
  // ... beside the GPU's experts of the same layers: only what they do not hide adds
  const hostMs = few.terms.expertCopyMs / 4;
  assert.ok(Math.abs(fast.terms.expertCopyMs - Math.max(0, hostMs - fast.terms.expertsMs)) < 1e-9 * few.terms.expertCopyMs);
  assert.ok(Math.abs(fast.stepMs - (few.stepMs - few.terms.expertCopyMs + Math.max(0, hostMs - few.terms.expertsMs))) < 1e-9 * fast.stepMs);
  const slow = predictDecode(cfg, { ...gpu, hostExpertGBs: 0.5 }, { batch: 1, context: 100, expertSlots: most });
  assert.equal(slow.copies!.onHost, undefined);
  assert.equal(slow.terms.expertCopyMs, few.terms.expertCopyMs);
  // the CPU backend computes no misses on a host of its own
  assert.equal(predictDecode(cfg, { ...cpu, copyGBs: 1, hostExpertGBs: 4 }, { batch: 1, context: 100, expertSlots: most }).copies!.onHost, undefined);
});

test('attention beside streaming copies: a CUDA profile with attentionThreads prices the attention of offloaded steps by its capped points, of resident ones by the pool\'s', async () => {
  const cfg = await config('tiny-mixtral');
  const base = withPrefill(cfg, synthetic(cfg));
  const ops = { ...base.ops };
  // the capped points: the same ops at 3x the time
  for (const o of stepOps(cfg).ops) {
    if (o.spec.op !== 'attention') continue;
    const capped = { ...o.spec, threads: 12 };
    ops[opKey(capped)] = base.ops[o.key]!.map((q) => ({ ...q, ms: 3 * q.ms }));
    ops[opKey(prefillAttention(capped))] = base.ops[opKey(prefillAttention(o.spec))]!.map((q) => ({ ...q, ms: 3 * q.ms }));
    assert.match(opKey(capped), / t12$/);
  }
  const gpu: ModelProfile = { ...base, ops, kind: 'cuda', copyGBs: 1, attentionThreads: 12 };
  const plain: ModelProfile = { ...base, kind: 'cuda', copyGBs: 1 };
  const shape = { batch: 8, context: 1000 };
  const slots = cfg.numExperts; // fewer than the layers' experts: copies stream, the runtime caps the attention
  const capped = predictDecode(cfg, gpu, { ...shape, expertSlots: slots });
  const uncapped = predictDecode(cfg, plain, { ...shape, expertSlots: slots });
  assert.ok(Math.abs(capped.terms.attentionMs - 3 * uncapped.terms.attentionMs) < 1e-9 * capped.terms.attentionMs);
  // resident, or a slot for every expert: the pool's points
  assert.equal(predictDecode(cfg, gpu, shape).terms.attentionMs, predictDecode(cfg, plain, shape).terms.attentionMs);
  const all = cfg.numExperts * cfg.moeLayers.length;
  assert.equal(predictDecode(cfg, gpu, { ...shape, expertSlots: all }).terms.attentionMs, predictDecode(cfg, plain, { ...shape, expertSlots: all }).terms.attentionMs);
  // prefill too
  const pc = predictPrefill(cfg, gpu, { prompt: 300, expertSlots: slots });
  const pu = predictPrefill(cfg, plain, { prompt: 300, expertSlots: slots });
  assert.ok(Math.abs(pc.terms.attentionMs - 3 * pu.terms.attentionMs) < 1e-9 * pc.terms.attentionMs);
  // the CPU backend never caps (its copies are the pool's own work)
  const cpu: ModelProfile = { ...gpu, kind: 'cpu' };
  assert.equal(predictDecode(cfg, cpu, { ...shape, expertSlots: slots }).terms.attentionMs, predictDecode(cfg, { ...plain, kind: 'cpu' }, { ...shape, expertSlots: slots }).terms.attentionMs);
});

test('micro-batches: one layer\'s module pipeline (projections queued at once, host work in turn, output projections after)', () => {
  assert.equal(moduleOverlapMs(1, 3, 5, 2), 3 + 5 + 2);
  // host-bound: the first projections, every group's host work, the last output projection
  assert.equal(moduleOverlapMs(4, 1, 10, 1), 1 + 4 * 10 + 1);
  // GPU-bound: every projection, then the last host work and output projection wait for nothing else
  assert.equal(moduleOverlapMs(2, 10, 1, 1), 2 * 10 + 1 + 1);
  for (const [M, a, h, b] of [
    [2, 3, 4, 1],
    [3, 1, 1, 1],
    [4, 2, 7, 3],
  ] as const) {
    const t = moduleOverlapMs(M, a, h, b);
    assert.ok(t <= M * (a + h + b) + 1e-9 && t >= Math.max(M * (a + b), M * h) - 1e-9, `${M} ${a} ${h} ${b}: ${t}`);
  }
});

test('micro-batches: the CPU backend runs the groups in turn (more round trips, no overlap); CUDA overlaps them', async () => {
  const cfg = await config('tiny-qwen3-moe');
  const cpu = synthetic(cfg);
  const one = predictDecode(cfg, cpu, { batch: 64, context: 100 });
  const two = predictDecode(cfg, cpu, { batch: 64, context: 100, microBatches: 2 });
  assert.equal(two.terms.overlapMs, 0);
  assert.ok(two.stepMs > one.stepMs, 'two groups cost their round trips and per-op costs twice');
  // one micro-batch: the step is queued whole (resident experts), one round trip (forward.ts); two: every group of
  // both modules, the routers' and the experts'
  const plan = stepOps(cfg);
  const mg = plan.moduleGroups;
  assert.equal(plan.queued, true);
  assert.equal(plan.queuedTrips, 1);
  assert.ok(mg.pre > 0 && mg.host > 0);
  const twoTrips = plan.groups + mg.pre + mg.host + mg.post; // hostGroups 0: not staged
  assert.ok(Math.abs(two.terms.overheadMs - one.terms.overheadMs - (twoTrips - 1) * cpu.groupMs) < 1e-9, `${two.terms.overheadMs} vs ${one.terms.overheadMs}`);
  // offloaded experts (slots, one fewer than the experts: a full pool queues whole steps): the cache decides on the
  // JS side, each layer awaits its router
  const slots = { batch: 64, context: 100, expertSlots: cfg.numExperts * cfg.moeLayers.length - 1 };
  const oneOff = predictDecode(cfg, { ...cpu, copyGBs: 10 }, slots);
  const twoOff = predictDecode(cfg, { ...cpu, copyGBs: 10 }, { ...slots, microBatches: 2 });
  const offTrips = stepOps(cfg, { resident: false }).queuedTrips;
  assert.equal(offTrips, 2 + cfg.numLayers);
  assert.ok(Math.abs(twoOff.terms.overheadMs - oneOff.terms.overheadMs - (twoTrips - offTrips) * cpu.groupMs) < 1e-9);
  assert.equal(stepOps(cfg, { staged: true }).queued, true, 'staged: the module crosses the streams through events');
  assert.equal(stepOps(await config('tiny-deepseek-v2')).queued, false, 'MLA assembles q/k/v on the JS side');
  // the non-module ops are the same
  assert.equal(two.terms.expertsMs, one.terms.expertsMs);
  assert.equal(two.terms.routerMs, one.terms.routerMs);
  const gpu: ModelProfile = { ...cpu, kind: 'cuda', staged: true, hostGroupMs: cpu.groupMs };
  for (const o of stepOps(cfg, { staged: true }).ops) {
    if (gpu.ops[o.key]) continue;
    gpu.ops[o.key] = [1, 8, 64].map((B) => ({ batch: B, ms: 0.01 + 0.0001 * B, bytes: 0, probeGBs: 0 }));
  }
  const g1 = predictDecode(cfg, gpu, { batch: 64, context: 1000 });
  const g4 = predictDecode(cfg, gpu, { batch: 64, context: 1000, microBatches: 4 });
  assert.equal(g1.terms.overlapMs, 0);
  assert.ok(g4.terms.overlapMs < 0, 'the groups overlap on CUDA');
  assert.ok(Math.abs(g4.stepMs - Object.values(g4.terms).reduce((a, b) => a + b, 0)) < 1e-9);
  assert.throws(() => predictDecode(cfg, gpu, { batch: 2, context: 10, microBatches: 3 }), /microBatches must be an integer in \[1, batch 2\]/);
  // chooseBatch tries 1, 2 and 4 on a CUDA profile, 1 on the CPU backend
  assert.equal(chooseBatch(cfg, cpu, 100, 1e9).microBatches, 1);
  const c = chooseBatch(cfg, gpu, 1000, 1e9);
  const best = Math.max(...[1, 2, 4].map((m) => predictDecode(cfg, gpu, { batch: c.batch, context: 1000, microBatches: m }).tokensPerSecond));
  assert.equal(c.prediction.tokensPerSecond, best);
});

test('staged LM head in chunks of LOGIT_ROWS rows: whole chunks and the rest, queued (no more round trips)', async () => {
  const cfg = await config('tiny-qwen3-moe');
  const p: ModelProfile = { ...synthetic(cfg), staged: true };
  const plan = stepOps(cfg, { staged: true });
  for (const o of plan.ops) {
    if (!p.ops[o.key]) p.ops[o.key] = [1, 8, 64].map((B) => ({ batch: B, ms: 0.01 + 0.0001 * B, bytes: 0, probeGBs: 0 }));
  }
  const chunked = plan.ops.filter((o) => o.chunkRows !== undefined);
  assert.deepEqual(chunked.map((o) => [o.spec.op, o.chunkRows]), [['gemm', LOGIT_ROWS], ['argmaxRows', LOGIT_ROWS]]);
  assert.equal(stepOps(cfg).ops.some((o) => o.chunkRows !== undefined), false, 'the direct path computes every row at once');
  const C = LOGIT_ROWS;
  const at = (B: number) => predictDecode(cfg, p, { batch: B, context: 100 });
  const rows = C * 2 + 88;
  const a = at(C);
  const b = at(rows);
  // the LM head term at 600 rows (a decode step: tokens = sequences): its gemm as two whole chunks and one of 88
  // rows, its other ops at every row (the tiny model reads warm: cold 0)
  let expected = 0;
  for (const o of plan.ops.filter((x) => x.term === 'lmHead')) {
    const cost = (r: number) => opCost(p, o.key, r, 0, {}, 0).ms;
    expected += o.calls * (o.chunkRows ? 2 * cost(C) + cost(88) : cost(rows));
  }
  assert.ok(Math.abs(b.terms.lmHeadMs - expected) < 1e-9, `lmHead ${b.terms.lmHeadMs} vs ${expected}`);
  // three chunks, queued one after another in the LM head's group: the same round trips as one
  assert.ok(Math.abs(b.terms.overheadMs - a.terms.overheadMs) < 1e-9, `overhead ${b.terms.overheadMs - a.terms.overheadMs}`);
});

test('cli profile and plan: the profile of the backend in use saved under its name; plan prints the batches, the choice and prefill; rejects a bad --backend', async () => {
  await config('tiny-olmoe');
  const cli = path.join(__dirname, '..', 'lib', 'cli.js');
  const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-plan-'));
  try {
    const env = { ...process.env, XDG_CACHE_HOME: cache, MOE_OFFLOAD_BACKEND: 'cpu' };
    const dir = path.join(root, 'tiny-olmoe');
    const prof = spawnSync(process.execPath, [cli, 'profile', '--model', dir, '--max-batch', '4'], { encoding: 'utf8', env });
    assert.equal(prof.status, 0, prof.stderr);
    assert.match(prof.stdout, /saved .*profile-tiny-olmoe\.json/);
    assert.match(prof.stdout, /offloaded experts: copies at [\d.]+ GB\/s\n/);
    assert.ok(fs.existsSync(path.join(cache, 'moe-offload', 'profile-tiny-olmoe.json')), 'the CPU profile is saved under its own name');
    const r = spawnSync(process.execPath, [cli, 'plan', '--model', dir, '--context', '64', '--kv-gib', '0.01', '--experts', '0.5'], { encoding: 'utf8', env });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /cpu-\w+ ?.*; context 64; KV 0\.0 GiB = \d+ tokens/);
    assert.match(r.stdout, /batch +1: +[\d.]+ tokens\/s, step [\d.]+ ms, [\d.]+ experts copied/);
    assert.match(r.stdout, /^choice: batch \d+ \([\d.]+ tokens\/s predicted; /m);
    assert.match(r.stdout, /^prefill: prompts of 64 tokens/m);
    assert.doesNotMatch(r.stdout, /micro-batches/, 'the CPU backend plans one attention group');
    // --device-gib: the slots that fit beside the dense weights and a 512-token step, chosen with the batch
    const cfg = await config('tiny-olmoe');
    const total = cfg.moeLayers.length * cfg.numExperts;
    const gib = (denseWeightBytes(cfg) + stepDeviceBytes(cfg, { tokens: 512 }) + 2 ** 28 + 12.5 * expertBytes(cfg)) / 2 ** 30;
    const dg = spawnSync(process.execPath, [cli, 'plan', '--model', dir, '--context', '64', '--kv-gib', '0.01', '--device-gib', String(gib)], { encoding: 'utf8', env });
    assert.equal(dg.status, 0, dg.stderr);
    assert.match(dg.stdout, /; device memory [\d.]+ GiB: dense weights [\d.]+ GiB, routed experts [\d.]+ GiB/);
    assert.match(dg.stdout, /batch +1: .*, 12 experts in device memory, /);
    assert.match(dg.stdout, new RegExp(`^experts: 12 of ${total} routed experts in device memory .*; the rest stream from host memory$`, 'm'));
    // generate plans the same before loading, and loads that many slots
    const input = path.join(cache, 'in.jsonl');
    const output = path.join(cache, 'out.jsonl');
    fs.writeFileSync(input, ['a b c', 'd e f'].map((t, i) => JSON.stringify({ id: `r${i}`, prompt: t, max_new_tokens: 4 })).join('\n'));
    const g = spawnSync(process.execPath, [cli, 'generate', '--model', dir, '--input', input, '--output', output, '--device-gib', String(gib), '--policy', 'finemoe'], { encoding: 'utf8', env });
    assert.equal(g.status, 0, g.stderr);
    // the KV cache for the batch at the plan's context: at least loadModel's 256 MiB (a tiny model's batch needs less)
    assert.match(g.stderr, new RegExp(`^plan: \\d+ sequences at once .*; 12 of ${total} routed experts in device memory(; attention on the avx512 tier \\(the profile's trial\\))?; KV cache 0\\.25 GiB = ${kvTokensFor(cfg, 2 ** 28)} tokens$`, 'm'));
    // planned at the input's decode context: its two prompts tokenized, 4 new tokens each
    {
      using m = await loadModel(dir, { experts: 'resident' });
      const shape = workloadShape({ prompts: ['a b c', 'd e f'].map((t) => m.encode(t).length), outputs: [4, 4] });
      assert.match(g.stderr, new RegExp(`at context ${Math.round(shape.decodeContext)}, the mean KV length of the input's 2 requests; `));
    }
    assert.equal(fs.readFileSync(output, 'utf8').trim().split('\n').length, 2);
    // --kv-gib: that much; the resumed run skips both requests
    const k = spawnSync(process.execPath, [cli, 'generate', '--model', dir, '--input', input, '--output', output, '--kv-gib', '0.01'], { encoding: 'utf8', env });
    assert.equal(k.status, 0, k.stderr);
    assert.match(k.stderr, new RegExp(`; KV cache 0\\.01 GiB = ${kvTokensFor(cfg, Math.floor(0.01 * 2 ** 30))} tokens$`, 'm'));
    assert.match(k.stderr, /0 requests written .* 2 already there/);
    const bad = spawnSync(process.execPath, [cli, 'plan', '--model', path.join(root, 'tiny-olmoe'), '--backend', 'tpu'], { encoding: 'utf8', env });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /\[MOE_INVALID_ARGUMENT\] --backend must be auto, cpu or cuda, received "tpu"/);
  } finally {
    fs.rmSync(cache, { recursive: true, force: true });
  }
});

test('prefill pairs: each new token sees its prefix and the tokens before it, at most a window', () => {
  const brute = (q: number, P: number, w: number | null) => {
    let n = 0;
    for (let i = 0; i < q; i++) n += w === null ? P + i + 1 : Math.min(P + i + 1, w);
    return n;
  };
  for (const [q, P, w] of [
    [1, 0, null],
    [7, 0, null],
    [64, 100, null],
    [64, 100, 128],
    [300, 0, 128],
    [5, 3, 1000],
  ] as const) {
    assert.equal(prefillPairs(q, P, w), brute(q, P, w), `q ${q} P ${P} window ${w}`);
  }
});

test('prefill predictions: prompts share a step up to the chunk, longer ones run in chunks; faster per token than decode', async () => {
  for (const preset of ['tiny-qwen3-moe', 'tiny-gpt-oss'] as const) {
    const cfg = await config(preset);
    const p = withPrefill(cfg, synthetic(cfg));
    const short = predictPrefill(cfg, p, { prompt: 100, chunk: 512 });
    assert.deepEqual(
      short.steps.map((x) => [x.tokens, x.sequences, x.prefix]),
      [[500, 5, 0]],
    );
    const long = predictPrefill(cfg, p, { prompt: 1200, chunk: 512 });
    assert.deepEqual(
      long.steps.map((x) => [x.tokens, x.sequences, x.prefix]),
      [
        [512, 1, 0],
        [512, 1, 512],
        [176, 1, 1024],
      ],
    );
    assert.ok(long.steps[1]!.ms > long.steps[0]!.ms, `${preset}: a chunk after a prefix attends to more keys`);
    assert.ok(Math.abs(long.tokensPerSecond - (1200 * 1000) / long.steps.reduce((a, x) => a + x.ms, 0)) < 1e-9);
    const decode = predictDecode(cfg, p, { batch: 1, context: 100 });
    assert.ok(short.tokensPerSecond > 4 * decode.tokensPerSecond, `${preset}: prefill amortises the weights over its tokens`);
    assert.throws(() => predictPrefill(cfg, p, { prompt: 0 }), /prompt and chunk must be integers >= 1, received prompt 0/);
    assert.throws(() => predictPrefill(cfg, synthetic(cfg), { prompt: 10 }), /no measurements of "attentionPrefill/);
    // offloaded experts: each step copies what a decode step of as many tokens would (module mode at these sizes)
    const off = { ...p, copyGBs: 1 };
    const slots = 1;
    const lo = predictPrefill(cfg, off, { prompt: 1200, chunk: 512, expertSlots: slots });
    const bytes = 3 * cfg.hiddenSize * cfg.moeIntermediateSize * 2;
    const copyMs = (T: number) => (expertCopies(cfg, T, slots).experts * bytes) / 1e6;
    assert.ok(Math.abs(lo.terms.expertCopyMs - (2 * copyMs(512) + copyMs(176))) < 1e-9);
    // (plus the layers' round trips: a step with resident experts is queued whole)
    const trips = (stepOps(cfg, { resident: false }).queuedTrips - stepOps(cfg).queuedTrips) * off.groupMs;
    lo.steps.forEach((x, i) => assert.ok(Math.abs(x.ms - long.steps[i]!.ms - copyMs(x.tokens) - trips) < 1e-9));
    // on CUDA the module-mode copies overlap the compute
    const gpu = predictPrefill(cfg, { ...off, kind: 'cuda' }, { prompt: 1200, chunk: 512, expertSlots: slots });
    gpu.steps.forEach((x, i) => assert.ok(Math.abs(x.ms - Math.max(long.steps[i]!.ms + trips, copyMs(x.tokens))) < 1e-9 * x.ms));
  }
});
