// Performance model (lib/batching/perf-model.ts): its curve interpolation, the expected distinct experts, term
// scaling, and that its op count per step equals the ops the forward pass really issues (counted on the backend).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { type HardwareProfile, curveMs, opsPerStep, predictDecode } from '../lib/batching/perf-model.js';
import { type Backend, loadModel, makeModel, type PresetName } from '../lib/index.js';

const PROFILE: HardwareProfile = {
  backend: 'synthetic',
  cpu: 'none',
  threads: 1,
  gemm: [
    { rows: 1, nsPerByte: 0.05 },
    { rows: 16, nsPerByte: 0.1 },
  ],
  experts: [
    { rows: 1, nsPerByte: 0.05 },
    { rows: 16, nsPerByte: 0.2 },
  ],
  attention: [
    { gqa: 1, GBs: 40 },
    { gqa: 8, GBs: 10 },
  ],
  opMs: 0.02,
  groupMs: 0.03,
  stepFixedMs: 0.1,
  readGBs: 20,
  sampleNsPerLogit: 1,
  hostMemoryBytes: 2 ** 34,
  measuredAt: 'now',
};

let root = '';
before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-perf-'));
});
after(() => fs.rmSync(root, { recursive: true, force: true }));

test('curves interpolate linearly, clamp below the first point and scale with rows beyond the last', () => {
  const c = PROFILE.gemm;
  assert.equal(curveMs(c, 1e6, 1), 0.05);
  assert.ok(Math.abs(curveMs(c, 1e6, 8.5) - 0.075) < 1e-12);
  assert.equal(curveMs(c, 1e6, 0.5), 0.05);
  assert.ok(Math.abs(curveMs(c, 1e6, 32) - 0.2) < 1e-12);
});

test('distinct experts per layer, attention and batch scaling', async () => {
  const dir = path.join(root, 'olmoe');
  await makeModel(dir, { preset: 'tiny-olmoe', seed: 1 });
  using m = await loadModel(dir);
  const cfg = m.config;
  const one = predictDecode(cfg, PROFILE, { batch: 1, context: 100 });
  assert.ok(Math.abs(one.expertsPerLayer - cfg.topK) < 1e-9, 'one token routes to k experts');
  const many = predictDecode(cfg, PROFILE, { batch: 4096, context: 100 });
  assert.ok(cfg.numExperts - many.expertsPerLayer < 1e-6, 'a large batch touches every expert');
  const long = predictDecode(cfg, PROFILE, { batch: 8, context: 1000 });
  const short = predictDecode(cfg, PROFILE, { batch: 8, context: 100 });
  assert.ok(Math.abs(long.terms.attentionMs / short.terms.attentionMs - 10) < 1e-9, 'attention grows with context');
  assert.ok(many.tokensPerSecond > one.tokensPerSecond);
});

const PRESETS: PresetName[] = ['tiny-mixtral', 'tiny-qwen2-moe', 'tiny-qwen3-moe', 'tiny-olmoe', 'tiny-deepseek-v2', 'tiny-gpt-oss'];
for (const preset of PRESETS) {
  test(`${preset}: opsPerStep equals the ops one decode step issues`, async () => {
    const dir = path.join(root, preset);
    await makeModel(dir, { preset, seed: 2 });
    using m = await loadModel(dir);
    // count every op call on the backend during one decode step
    const be = m.backend as Backend & Record<string, unknown>;
    const names = ['gemm', 'rmsNorm', 'add', 'rope', 'convert', 'attention', 'routerTopK', 'moeExperts', 'gatherRows'];
    let count = 0;
    const saved = new Map<string, unknown>();
    const s = m.stream('Count my ops', { maxNewTokens: 2, stopAtEos: false });
    const it = s[Symbol.asyncIterator]();
    await it.next(); // prefill done, first token out
    for (const n of names) {
      const orig = be[n] as (...a: unknown[]) => unknown;
      saved.set(n, orig);
      be[n] = (...a: unknown[]) => {
        count++;
        return orig.apply(be, a);
      };
    }
    try {
      await it.next(); // one decode step
    } finally {
      for (const [n, f] of saved) be[n] = f;
    }
    await it.return?.();
    const o = opsPerStep(m.config);
    assert.equal(count, o.perLayer.reduce((a, b) => a + b, 0) + o.perStep);
  });
}
