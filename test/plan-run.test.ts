// planRun (lib/batching/plan.ts): the batch, expert slots and KV cache a throughput run decides before loading,
// against chooseBatch and memory.ts computed independently, and a run of the plan on a tiny model.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { denseWeightBytes, expertBytes, hostKvLimit, kvBytesFor, kvTokensFor, stepDeviceBytes } from '../lib/batching/memory.js';
import { chooseBatch, type ModelProfile } from '../lib/batching/perf-model.js';
import { planRun } from '../lib/batching/plan.js';
import { profileModel } from '../lib/batching/profile.js';
import { loadModel, makeModel, type ModelConfig, openBackend } from '../lib/index.js';

let dir = '';
let cfg: ModelConfig;
let profile: ModelProfile;
before(async () => {
  dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moe-planrun-')), 'tiny-qwen3');
  await makeModel(dir, { preset: 'tiny-qwen3-moe', seed: 5 });
  using m = await loadModel(dir, { experts: 'resident' });
  cfg = m.config;
  profile = await profileModel(m.backend, cfg, { maxBatch: 16, contexts: [32, 64], prefillTokens: [16], quick: true });
});
after(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));

const cpu = () => openBackend({ backend: 'cpu' });

test('without a profile: 64 sequences, experts as given, a KV cache for them (at least 256 MiB, within the host limit), room for their step', () => {
  const p = planRun(cfg, { backend: cpu() });
  assert.equal(p.why, 'no profile');
  assert.equal(p.batch.maxSequences, 64);
  assert.equal(p.load.experts, 'auto');
  assert.equal(p.load.maxStepTokens, 512);
  assert.equal(p.load.deviceMemoryBytes, undefined, 'the CPU backend has no device budget unless given');
  const limit = hostKvLimit(cfg, { totalBytes: os.totalmem(), freeBytes: os.freemem() });
  assert.equal(p.load.kvCacheBytes, Math.min(limit, Math.max(2 ** 28, kvBytesFor(cfg, 64 * 384))));
  const given = planRun(cfg, { backend: cpu(), maxSequences: 1000, context: 100, kvCacheBytes: 2 ** 27, microBatches: 2 });
  assert.equal(given.why, 'maxSequences given');
  assert.deepEqual(given.batch, { maxSequences: 1000, microBatches: 2 });
  assert.equal(given.load.kvCacheBytes, 2 ** 27);
  assert.equal(given.load.maxStepTokens, 1000);
});

test('with a profile and a device budget: chooseBatch\'s batch and slots, the cache options kept, the prediction', () => {
  const eb = expertBytes(cfg);
  const deviceMemoryBytes = denseWeightBytes(cfg) + stepDeviceBytes(cfg, { tokens: 512 }) + 2 ** 28 + 30.5 * eb;
  const p = planRun(cfg, { backend: cpu(), profile, deviceMemoryBytes, experts: { slots: 'auto', policy: 'finemoe' }, context: 96 });
  const kv = p.load.kvCacheBytes!;
  const limit = hostKvLimit(cfg, { totalBytes: os.totalmem(), freeBytes: os.freemem() });
  const best = chooseBatch(cfg, profile, 96, kvTokensFor(cfg, limit), {}, { deviceBytes: deviceMemoryBytes, stepTokens: 512 });
  assert.equal(p.batch.maxSequences, best.batch);
  assert.equal(p.expertSlots, best.expertSlots);
  assert.equal(p.expertSlots, Math.min(30, cfg.moeLayers.length * cfg.numExperts));
  assert.deepEqual(p.load.experts, { slots: p.expertSlots, policy: 'finemoe' });
  assert.equal(p.prediction!.tokensPerSecond, best.prediction.tokensPerSecond);
  assert.equal(kv, Math.min(limit, Math.max(2 ** 28, kvBytesFor(cfg, best.batch * 96))));
  // a fraction: its slots priced, nothing planned for the memory
  const f = planRun(cfg, { backend: cpu(), profile, experts: { fraction: 0.5 } });
  assert.equal(f.expertSlots, undefined);
  assert.deepEqual(f.load.experts, { fraction: 0.5 });
  assert.equal(f.prediction!.copies !== undefined, true);
});

test('the plan runs: loadModel(plan.load) holds the planned slots and KV tokens; generateBatch(plan.batch) gives the resident tokens', async () => {
  const eb = expertBytes(cfg);
  const deviceMemoryBytes = denseWeightBytes(cfg) + stepDeviceBytes(cfg, { tokens: 512 }) + 2 ** 28 + 12.5 * eb;
  const p = planRun(cfg, { backend: cpu(), profile, deviceMemoryBytes, context: 64 });
  assert.equal(p.expertSlots, 12);
  using m = await loadModel(dir, { ...p.load, deviceActivations: true });
  assert.equal(m.expertCache?.capacity, 12);
  assert.equal(m.kvTokensFree, kvTokensFor(cfg, p.load.kvCacheBytes!));
  using resident = await loadModel(dir, { experts: 'resident' });
  const reqs = ['a b', 'c d e', 'f'].map((t) => ({ prompt: t, options: { maxNewTokens: 4, temperature: 0, stopAtEos: false } }));
  const run = async (x: typeof m, o: object) => {
    const out: number[][] = [];
    for await (const r of x.generateBatch(reqs, o)) out[r.index] = r.tokens;
    return out;
  };
  assert.deepEqual(await run(m, p.batch), await run(resident, {}));
});

test('planRun rejects bad options with typed errors', () => {
  assert.throws(() => planRun(cfg, { backend: cpu(), maxSequences: 0 }), /maxSequences must be a positive integer, received 0/);
  assert.throws(() => planRun(cfg, { backend: cpu(), context: 1.5 }), /context must be a positive integer, received 1\.5/);
  assert.throws(() => planRun(cfg, { backend: cpu(), kvCacheBytes: -1 }), /kvCacheBytes must be a positive number of bytes, received -1/);
  assert.throws(() => planRun(cfg, null as never), /options must be an object, received null/);
});
