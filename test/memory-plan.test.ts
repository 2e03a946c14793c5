// Memory planning (lib/batching/memory.ts) against what a loaded model really takes (MoeModel.memory(): the dense
// weights placed on the compute backend, the step arenas' measured need), the expert slots chosen from a device
// budget (loadModel experts 'auto', chooseBatch with deviceBytes, the CLI), and their typed errors.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { denseWeightBytes, expertBytes, expertSlotsFor, hostKvLimit, kvBytesFor, kvTokensFor, memoryMargin, moeScratchBytes, stepArenaNeed, stepDeviceBytes } from '../lib/batching/memory.js';
import { chooseBatch, type ModelProfile } from '../lib/batching/perf-model.js';
import { profileModel } from '../lib/batching/profile.js';
import { LOGIT_ROWS } from '../lib/engine/forward.js';
import { cudaUnavailableReason, loadModel, makeModel, openBackend, type PresetName } from '../lib/index.js';

let root = '';
before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-mem-'));
});
after(() => fs.rmSync(root, { recursive: true, force: true }));

const PRESETS: PresetName[] = ['tiny-mixtral', 'tiny-qwen2-moe', 'tiny-qwen3-moe', 'tiny-olmoe', 'tiny-deepseek-v2', 'tiny-gpt-oss'];

async function modelDir(preset: PresetName): Promise<string> {
  const dir = path.join(root, preset);
  if (!fs.existsSync(path.join(dir, 'config.json'))) await makeModel(dir, { preset, seed: 3 });
  return dir;
}

const greedy = { temperature: 0, stopAtEos: false } as const;

for (const preset of PRESETS) {
  test(`${preset}: the dense weights and every step's arena need are what memory.ts plans (decode, prefill, micro-batches)`, async () => {
    // staged on the CPU backend: the CUDA path's arenas; unpacked weights: the layout CUDA holds
    using m = await loadModel(await modelDir(preset), { deviceActivations: true, packWeights: false, experts: 'resident' });
    const cfg = m.config;
    const mem = m.memory();
    // biases and sinks are left out of the estimate: within 1%
    const dense = denseWeightBytes(cfg);
    assert.ok(Math.abs(dense - mem.device.denseWeights) <= 0.01 * mem.device.denseWeights, `dense ${dense} vs measured ${mem.device.denseWeights}`);
    assert.equal(mem.device.expertSlots, 0);
    assert.equal(mem.host.expertStore, cfg.moeLayers.length * cfg.numExperts * expertBytes(cfg));
    assert.equal(m.kvTokensFree, kvTokensFor(cfg), 'the KV tokens of the default 256 MiB cache');
    // a prefill step of 37 tokens (one sequence's last row to the LM head), then decode steps of one token
    await m.generate({ tokens: Array.from({ length: 37 }, (_, i) => 3 + (i % 40)) }, { maxNewTokens: 1, ...greedy });
    assert.deepEqual(m.memory().lastStep, stepArenaNeed(cfg, { tokens: 37, rows: 1 }), 'prefill');
    await m.generate({ tokens: [5, 6, 7] }, { maxNewTokens: 3, ...greedy });
    assert.deepEqual(m.memory().lastStep, stepArenaNeed(cfg, { tokens: 1 }), 'decode, one sequence');
    // six sequences decoding together, in 1 / 2 / 3 attention micro-batches (each group's own q, k, v)
    for (const microBatches of [1, 2, 3]) {
      const reqs = Array.from({ length: 6 }, (_, i) => ({ prompt: { tokens: [5 + i, 7, 9, 11] }, options: { maxNewTokens: 3, ...greedy } }));
      for await (const r of m.generateBatch(reqs, { microBatches })) assert.equal(r.error, undefined);
      assert.deepEqual(m.memory().lastStep, stepArenaNeed(cfg, { tokens: 6, microBatches }), `decode, 6 sequences, ${microBatches} micro-batches`);
    }
    // the arenas hold one layer's tensors at a time: the need does not grow with the layer count
    assert.ok(m.memory().device.activations >= m.memory().lastStep.device);
  });
}

test('the staged LM head in chunks of LOGIT_ROWS rows: bitwise the direct path\'s logits and tokens past one chunk; the arenas as planned', async () => {
  const dir = await modelDir('tiny-qwen3-moe');
  // one step for the whole prompt (prefill steps of up to 1024 tokens)
  using direct = await loadModel(dir, { packWeights: false, experts: 'resident', prefillChunk: 1024 });
  using staged = await loadModel(dir, { deviceActivations: true, packWeights: false, experts: 'resident', prefillChunk: 1024 });
  const cfg = staged.config;
  // every token's logits of a 300-token prompt (two chunks)
  const tokens = Array.from({ length: LOGIT_ROWS + 44 }, (_, i) => 3 + ((i * 7) % 90));
  assert.deepEqual((await staged.logits(tokens)).data, (await direct.logits(tokens)).data);
  assert.deepEqual(staged.memory().lastStep, stepArenaNeed(cfg, { tokens: tokens.length, head: 'all' }));
  // 300 sequences decoding together, greedy on the compute backend (two chunks of argmax)
  const reqs = Array.from({ length: LOGIT_ROWS + 44 }, (_, i) => ({ prompt: { tokens: [3 + (i % 80), 5 + (i % 7)] }, options: { maxNewTokens: 3, ...greedy } }));
  const run = async (m: typeof staged) => {
    const out: number[][] = [];
    for await (const r of m.generateBatch(reqs, { maxSequences: reqs.length, maxBatchTokens: 4 * reqs.length })) out[r.index] = r.tokens;
    return out;
  };
  assert.deepEqual(await run(staged), await run(direct));
  assert.deepEqual(staged.memory().lastStep, stepArenaNeed(cfg, { tokens: reqs.length }));
  // sampling: the last rows' logits come down, sampled on the host
  await staged.generate({ tokens: [4, 5, 6] }, { maxNewTokens: 2, temperature: 0.8, seed: 1, stopAtEos: false });
  assert.deepEqual(staged.memory().lastStep, stepArenaNeed(cfg, { tokens: 1, head: 'sampled' }));
  assert.throws(() => stepArenaNeed(cfg, { tokens: 4, rows: 1, head: 'all' }), /head 'all' has one row per token: rows must be tokens 4, received 1/);
});

test('generateBatch allocates the step memory for its maxBatchTokens before its first step: a prompt step above loadModel\'s reserve fits', async () => {
  using m = await loadModel(await modelDir('tiny-qwen3-moe'), { deviceActivations: true, packWeights: false, experts: 'resident', maxStepTokens: 64 });
  const loaded = m.memory();
  const first = stepArenaNeed(m.config, { tokens: 570, rows: 3 });
  assert.ok(loaded.device.activations < first.device && loaded.host.activations < first.host, 'loadModel reserved less than the prompt step needs');
  const reqs = Array.from({ length: 3 }, (_, i) => ({ prompt: { tokens: Array.from({ length: 190 }, (_, j) => 3 + ((i + j) % 40)) }, options: { maxNewTokens: 2, ...greedy } }));
  // after each step (a step that overflowed its arena has released it by then): the arenas held what it needed
  const fits: boolean[] = [];
  const onStep = () => {
    const mem = m.memory();
    fits.push(mem.device.activations >= mem.lastStep.device && mem.host.activations >= mem.lastStep.host);
  };
  for await (const r of m.generateBatch(reqs, { maxBatchTokens: 600, onStep })) assert.equal(r.error, undefined);
  assert.ok(fits.length >= 2 && fits.every(Boolean), `every step fitted its arenas: ${fits.join(', ')}`);
});

test('the step arenas reuse one layer\'s memory: twice the layers, the same need', async () => {
  const dirs = [2, 4].map((layers) => path.join(root, `olmoe-${layers}`));
  const needs: Array<{ device: number; host: number }> = [];
  for (const [i, dir] of dirs.entries()) {
    await makeModel(dir, { preset: 'tiny-olmoe', seed: 3, config: { num_hidden_layers: 2 * (i + 1) } });
    using m = await loadModel(dir, { deviceActivations: true, packWeights: false, experts: 'resident' });
    await m.generate({ tokens: Array.from({ length: 50 }, (_, j) => 3 + j) }, { maxNewTokens: 1, ...greedy });
    needs.push(m.memory().lastStep);
  }
  assert.deepEqual(needs[0], needs[1]);
});

test('expertSlotsFor: the slots that fit beside the dense weights, the step and the margin; all when they fit; OutOfMemoryError below two', async () => {
  using m = await loadModel(await modelDir('tiny-qwen3-moe'), { experts: 'resident' });
  const cfg = m.config;
  const total = cfg.moeLayers.length * cfg.numExperts;
  const eb = expertBytes(cfg);
  const shape = { tokens: 512 };
  const fixed = denseWeightBytes(cfg) + stepDeviceBytes(cfg, shape);
  assert.equal(stepDeviceBytes(cfg, shape), Math.ceil(1.25 * stepArenaNeed(cfg, shape).device) + moeScratchBytes(cfg, 512) + 512 * cfg.topK * cfg.hiddenSize * 4);
  for (const n of [2, 7, 40]) {
    // budget for n experts and a half: n fit, the margin (at least 256 MiB) included
    const budget = fixed + memoryMargin(fixed + (n + 0.5) * eb + 2 ** 28) + (n + 0.5) * eb;
    const slots = expertSlotsFor(cfg, budget, shape);
    assert.equal(slots, Math.min(total, n));
    assert.ok(fixed + memoryMargin(budget) + slots * eb <= budget);
  }
  assert.equal(expertSlotsFor(cfg, 2 ** 40, shape), total, 'every expert fits');
  // a bigger step leaves fewer slots
  assert.ok(total > 12);
  const b = denseWeightBytes(cfg) + stepDeviceBytes(cfg, { tokens: 4096 }) + 2 ** 28 + 10.5 * eb;
  assert.equal(expertSlotsFor(cfg, b, { tokens: 4096 }), 10);
  assert.ok(expertSlotsFor(cfg, b, shape) > 10);
  assert.throws(
    () => expertSlotsFor(cfg, fixed + 2 ** 28 + eb, shape),
    (e: Error & { code?: string }) => e.code === 'MOE_OUT_OF_MEMORY' && /holds no two routed experts/.test(e.message),
  );
  assert.throws(() => expertSlotsFor(cfg, -1, shape), /deviceBytes must be a positive number, received -1/);
  assert.throws(() => stepArenaNeed(cfg, { tokens: 0 }), /tokens must be a positive integer, received 0/);
  assert.throws(() => stepArenaNeed(cfg, { tokens: 4, rows: 5 }), /rows must be an integer in \[1, tokens 4\], received 5/);
});

test("loadModel experts 'auto': resident on the CPU backend; with deviceMemoryBytes the slots that fit, and the same tokens", async () => {
  const dir = await modelDir('tiny-olmoe');
  using resident = await loadModel(dir, { deviceActivations: true, packWeights: false });
  assert.equal(resident.expertCache, undefined, "'auto' without a device budget keeps the experts resident on the CPU backend");
  const cfg = resident.config;
  const eb = expertBytes(cfg);
  const fixed = denseWeightBytes(cfg) + stepDeviceBytes(cfg, { tokens: 512 });
  const budget = fixed + 2 ** 28 + 9.5 * eb; // the 256 MiB margin, nine experts and a half
  using planned = await loadModel(dir, { deviceActivations: true, packWeights: false, deviceMemoryBytes: budget });
  assert.equal(planned.expertCache?.capacity, 9);
  assert.equal(planned.memory().device.expertSlots, 9 * eb);
  // the same count with the cache's other options ({ slots: 'auto' }); resident without a budget on the CPU backend
  using finemoe = await loadModel(dir, { deviceActivations: true, packWeights: false, deviceMemoryBytes: budget, experts: { slots: 'auto', policy: 'finemoe' } });
  assert.equal(finemoe.expertCache?.capacity, 9);
  using noBudget = await loadModel(dir, { experts: { slots: 'auto', policy: 'finemoe' } });
  assert.equal(noBudget.expertCache, undefined);
  // the room left for the largest step is real: one of 16384 tokens leaves none at that budget
  assert.ok(stepDeviceBytes(cfg, { tokens: 16384 }) - stepDeviceBytes(cfg, { tokens: 512 }) > 9 * eb);
  await assert.rejects(loadModel(dir, { deviceActivations: true, packWeights: false, deviceMemoryBytes: budget, maxStepTokens: 16384 }), (e: Error & { code?: string }) => e.code === 'MOE_OUT_OF_MEMORY');
  // offloading is lossless
  const prompt = 'the quick brown fox';
  const a = await resident.generate(prompt, { maxNewTokens: 8, ...greedy });
  const b = await planned.generate(prompt, { maxNewTokens: 8, ...greedy });
  assert.deepEqual(b.tokens, a.tokens);
  assert.ok(planned.cacheStats!.misses > 0, 'the experts went through the slots');
  await assert.rejects(loadModel(dir, { deviceMemoryBytes: -5 }), /deviceMemoryBytes must be a positive number of bytes, received -5/);
  await assert.rejects(loadModel(dir, { maxStepTokens: 0 }), /maxStepTokens must be a positive integer, received 0/);
  await assert.rejects(loadModel(dir, { deviceMemoryBytes: fixed }), (e: Error & { code?: string }) => e.code === 'MOE_OUT_OF_MEMORY');
});

test('KV cache sizing: kvBytesFor holds the tokens in whole pages; hostKvLimit within a quarter of the host (at most 16 GiB), half of what the store leaves, the layout, at least 256 MiB', async () => {
  using m = await loadModel(await modelDir('tiny-qwen3-moe'), { experts: 'resident' });
  const cfg = m.config;
  const perToken = kvBytesFor(cfg, 64) / 64;
  assert.equal(kvBytesFor(cfg, 1), 64 * perToken, 'one page');
  assert.equal(kvBytesFor(cfg, 65), 128 * perToken);
  for (const t of [1, 64, 1000, 12345]) assert.ok(kvTokensFor(cfg, kvBytesFor(cfg, t)) >= t);
  assert.equal(kvTokensFor(cfg, kvBytesFor(cfg, 640)), 640);
  const GiB = 2 ** 30;
  const store = cfg.moeLayers.length * cfg.numExperts * expertBytes(cfg);
  assert.equal(hostKvLimit(cfg, { totalBytes: 1024 * GiB, freeBytes: 1000 * GiB }), 16 * GiB);
  assert.equal(hostKvLimit(cfg, { totalBytes: 24 * GiB, freeBytes: 20 * GiB }), 6 * GiB);
  assert.equal(hostKvLimit(cfg, { totalBytes: 24 * GiB, freeBytes: 4 * GiB + store }), 2 * GiB);
  assert.equal(hostKvLimit(cfg, { totalBytes: 2 * GiB, freeBytes: store }), 256 * 2 ** 20);
  assert.equal(hostKvLimit(cfg, { totalBytes: 1024 * GiB, freeBytes: 1000 * GiB }, GiB), 2 * cfg.numLayers * GiB);
  assert.throws(() => kvBytesFor(cfg, 0), /tokens must be a positive integer, received 0/);
});

test('on CUDA: experts auto holds every expert of a tiny model in GPU slots; dense weights and the step arenas as planned; the GPU\'s free memory drops by about that', { skip: cudaUnavailableReason() ?? false }, async () => {
  const dir = await modelDir('tiny-olmoe');
  const be = openBackend({ backend: 'cuda' });
  const before = be.memoryInfo()!;
  using m = await loadModel(dir, { backend: be });
  const cfg = m.config;
  const total = cfg.moeLayers.length * cfg.numExperts;
  assert.equal(m.expertCache?.capacity, total, 'every expert fits');
  const mem = m.memory();
  assert.ok(Math.abs(denseWeightBytes(cfg) - mem.device.denseWeights) <= 0.01 * mem.device.denseWeights);
  assert.equal(mem.device.expertSlots, total * expertBytes(cfg));
  await m.generate({ tokens: Array.from({ length: 37 }, (_, i) => 3 + i) }, { maxNewTokens: 1, ...greedy });
  assert.deepEqual(m.memory().lastStep, stepArenaNeed(cfg, { tokens: 37, rows: 1 }));
  // what the model holds on the GPU now, against what the driver reports taken (allocator rounding, the kernels'
  // scratch pool and the context's own growth: within the plan's margin)
  const held = mem.device.denseWeights + mem.device.expertSlots + m.memory().device.activations;
  const taken = before.free - be.memoryInfo()!.free;
  assert.ok(taken >= held * 0.9 && taken <= held + memoryMargin(before.free), `taken ${taken}, held ${held}`);
});

test('chooseBatch with a device budget: each batch with the slots that fit beside its step, bigger batches fewer', async () => {
  using m = await loadModel(await modelDir('tiny-qwen3-moe'), { experts: 'resident' });
  const cfg = m.config;
  const p: ModelProfile = await profileModel(m.backend, cfg, { maxBatch: 64, contexts: [32, 64], prefillTokens: [16], quick: true });
  const eb = expertBytes(cfg);
  // room for 40 experts beside a 512-token step: batches up to 512 tokens keep them all
  const deviceBytes = denseWeightBytes(cfg) + stepDeviceBytes(cfg, { tokens: 512 }) + 2 ** 28 + 40.5 * eb;
  const c = chooseBatch(cfg, p, 32, 1e6, {}, { deviceBytes });
  assert.equal(c.expertSlots, 40);
  for (const x of c.candidates) assert.equal(x.expertSlots, expertSlotsFor(cfg, deviceBytes, { tokens: Math.max(512, x.batch) }));
  // steps past 512 tokens take room from the slots
  const wide = denseWeightBytes(cfg) + stepDeviceBytes(cfg, { tokens: 4096 }) + 2 ** 28 + 20.5 * eb;
  assert.equal(chooseBatch(cfg, p, 32, 1e6, {}, { deviceBytes: wide, stepTokens: 4096 }).expertSlots, 20);
  assert.ok(chooseBatch(cfg, p, 32, 1e6, {}, { deviceBytes: wide }).expertSlots! > 20);
  // the prediction is the one of its slot count
  assert.equal(c.prediction.tokensPerSecond, chooseBatch(cfg, p, 32, 1e6, {}, 40).candidates.find((x) => x.batch === c.batch)!.prediction.tokensPerSecond);
  assert.throws(() => chooseBatch(cfg, p, 32, 1e6, {}, { deviceBytes: 2 ** 20 }), (e: Error & { code?: string }) => e.code === 'MOE_OUT_OF_MEMORY');
  assert.throws(() => chooseBatch(cfg, p, 32, 1e6, {}, { deviceBytes, stepTokens: 0 }), /stepTokens must be a positive integer, received 0/);
});
