// Workloads (lib/batching/workload.ts): a trace's lengths and the decode context the performance model plans at,
// against a step-by-step count; the real Azure and Mooncake traces in ../shared/data; planRun and `plan` with one.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { chooseBatch, predictDecode, predictPrefill } from '../lib/batching/perf-model.js';
import { planRun, workloadThroughput } from '../lib/batching/plan.js';
import { profileModel } from '../lib/batching/profile.js';
import { readWorkload, workloadShape } from '../lib/batching/workload.js';
import { inputWorkload } from '../lib/engine/jsonl.js';
import { loadModel, makeModel, ModelTokenizer, openBackend } from '../lib/index.js';

const dataDir = path.join(__dirname, '..', '..', '..', 'shared', 'data');
let tmp = '';
before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-workload-'));
});
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('workloadShape: the decode context is the mean KV length over every decode step (counted step by step)', () => {
  const w = { prompts: [10, 0, 300, 7], outputs: [5, 1, 40, 200] };
  let kv = 0;
  let steps = 0;
  w.prompts.forEach((p, i) => {
    for (let j = 1; j <= w.outputs[i]!; j++) {
      kv += p + j; // step j of request i sees its prompt and j generated tokens
      steps++;
    }
  });
  const s = workloadShape(w);
  assert.equal(s.requests, 4);
  assert.equal(s.meanPrompt, (10 + 0 + 300 + 7) / 4);
  assert.equal(s.meanOutput, (5 + 1 + 40 + 200) / 4);
  assert.ok(Math.abs(s.decodeContext - kv / steps) < 1e-9);
  assert.throws(() => workloadShape({ prompts: [], outputs: [] }), /at least one/);
  assert.throws(() => workloadShape({ prompts: [1, 2], outputs: [1] }), /as many prompts as outputs/);
  assert.throws(() => workloadShape({ prompts: [1], outputs: [0] }), /workload request 0: prompt must be an integer >= 0 and output >= 1, received 1 and 0/);
});

test('readWorkload: CSV (ContextTokens, GeneratedTokens) and JSONL (input_length / prompt_tokens); zero outputs skipped; bad lines named', () => {
  const csv = path.join(tmp, 'a.csv');
  fs.writeFileSync(csv, 'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,374,44\n2023-11-16 18:15:50,396,0\n2023-11-16 18:15:51,12,7\n');
  assert.deepEqual(readWorkload(csv), { prompts: [374, 12], outputs: [44, 7] });
  const jsonl = path.join(tmp, 'b.jsonl');
  fs.writeFileSync(jsonl, '{"input_length": 10, "output_length": 3}\n\n{"prompt_tokens": 4, "output_tokens": 9}\n');
  assert.deepEqual(readWorkload(jsonl), { prompts: [10, 4], outputs: [3, 9] });
  const bad = path.join(tmp, 'c.csv');
  fs.writeFileSync(bad, 'TIMESTAMP,ContextTokens,GeneratedTokens\nx,1,2\ny,abc,3\n');
  assert.throws(() => readWorkload(bad), new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} line 3: expected non-negative integer prompt and output lengths, received "abc" and "3"`));
  const noHeader = path.join(tmp, 'd.csv');
  fs.writeFileSync(noHeader, 'a,b,c\n1,2,3\n');
  assert.throws(() => readWorkload(noHeader), /expected a CSV header with ContextTokens and GeneratedTokens, or JSONL/);
  const badJson = path.join(tmp, 'e.jsonl');
  fs.writeFileSync(badJson, '{"input_length": 1, "output_length": 1}\n{oops\n');
  assert.throws(() => readWorkload(badJson), /line 2: not JSON/);
});

test('the real traces: Azure LLM inference 2023 (conversation, code) and Mooncake', () => {
  const conv = readWorkload(path.join(dataDir, 'azure-llm-inference-2023', 'AzureLLMInferenceTrace_conv.csv'));
  const lines = fs.readFileSync(path.join(dataDir, 'azure-llm-inference-2023', 'AzureLLMInferenceTrace_conv.csv'), 'utf8').trim().split('\n').length - 1;
  assert.ok(conv.prompts.length > 0.95 * lines && conv.prompts.length <= lines, `${conv.prompts.length} of ${lines}`);
  const s = workloadShape(conv);
  assert.ok(s.meanPrompt > s.meanOutput, 'conversation prompts are longer than their answers');
  assert.ok(s.decodeContext > s.meanPrompt, 'decode steps see the prompt and part of the answer');
  const moon = workloadShape(readWorkload(path.join(dataDir, 'mooncake-fast25', 'conversation_trace.jsonl')));
  assert.ok(moon.requests > 10000 && moon.meanPrompt > 1000, JSON.stringify(moon));
});

test('inputWorkload: the requests of a JSONL input still to run, prompts tokenized as the model does, outputs at their limits', async () => {
  const dir = path.join(tmp, 'tiny-qwen3');
  await makeModel(dir, { preset: 'tiny-qwen3-moe', seed: 4 });
  using m = await loadModel(dir, { experts: 'resident' });
  const input = path.join(tmp, 'in.jsonl');
  const lines = [
    { id: 'a', prompt: 'hello there', max_new_tokens: 7 },
    { id: 'b', messages: [{ role: 'user', content: 'a chat turn' }] },
    { id: 'c', tokens: [3, 4, 5] },
    { id: 'done', prompt: 'already written' },
  ];
  fs.writeFileSync(input, [...lines.map((l) => JSON.stringify(l)), '{not json', JSON.stringify({ id: 'e', tokens: [1, 2], max_new_tokens: 2 })].join('\n'));
  const tokenizer = await ModelTokenizer.load(dir);
  const w = inputWorkload(input, tokenizer, m.config.vocabSize, { maxNewTokens: 50 }, new Set(['done']));
  assert.deepEqual(w.prompts, [m.encode('hello there').length, m.encode([{ role: 'user', content: 'a chat turn' }]).length, 3, 2]);
  assert.deepEqual(w.outputs, [7, 50, 50, 2]);
});

test('planRun with a workload plans at its decode context and predicts its end-to-end tokens/s; plan --workload prints them', async () => {
  const dir = path.join(tmp, 'tiny-olmoe');
  await makeModel(dir, { preset: 'tiny-olmoe', seed: 4 });
  using m = await loadModel(dir, { experts: 'resident' });
  const cfg = m.config;
  const profile = await profileModel(m.backend, cfg, { maxBatch: 8, contexts: [32, 96], prefillTokens: [16, 64], quick: true });
  const w = { prompts: [20, 40, 60, 100], outputs: [8, 16, 4, 30] };
  const shape = workloadShape(w);
  const plan = planRun(cfg, { backend: openBackend({ backend: 'cpu' }), profile, workload: w, kvCacheBytes: 2 ** 26 });
  assert.equal(plan.context, Math.round(shape.decodeContext));
  const best = chooseBatch(cfg, profile, plan.context, Math.floor(2 ** 26 / (64 * cfg.numLayers * 2 * cfg.numKvHeads * cfg.headDim * 2)) * 64);
  assert.equal(plan.batch.maxSequences, best.batch);
  assert.equal(plan.workload!.tokensPerSecond, workloadThroughput(cfg, profile, w, best.batch, { chunk: 512 }).tokensPerSecond);
  // workloadThroughput, step by step: four equal requests at once decode 8 steps of 4 sequences at KV 41..48
  const eq = { prompts: [40, 40, 40, 40], outputs: [8, 8, 8, 8] };
  const e = workloadThroughput(cfg, profile, eq, 4);
  let decodeMs = 0;
  for (let j = 1; j <= 8; j++) decodeMs += predictDecode(cfg, profile, { batch: 4, context: Math.max(16, Math.round((40 + j) / 16) * 16) }).stepMs;
  assert.ok(Math.abs(e.decodeSeconds! - decodeMs / 1000) < 1e-9);
  const prefill = predictPrefill(cfg, profile, { prompt: 40, chunk: 512 });
  assert.ok(Math.abs(e.prefillSeconds! - 160 / prefill.tokensPerSecond) < 1e-9);
  assert.ok(Math.abs(e.tokensPerSecond! - 32 / (e.prefillSeconds! + e.decodeSeconds!)) < 1e-9);
  // a batch of 2: two waves of 8 steps at 2 sequences
  assert.ok(workloadThroughput(cfg, profile, eq, 2).decodeSeconds! > e.decodeSeconds!);
  // one long request among short ones: its tail runs alone, slower per token than the full batch
  const tail = workloadThroughput(cfg, profile, { prompts: [40, 40, 40, 40], outputs: [2, 2, 2, 30] }, 4);
  const full = predictDecode(cfg, profile, { batch: 4, context: 48 });
  assert.ok(tail.decodeSeconds! > (36 / full.tokensPerSecond) * 1.2, 'the drained batch costs more than the full batch rate');
  // the CLI
  const cli = path.join(__dirname, '..', 'lib', 'cli.js');
  const trace = path.join(tmp, 'w.jsonl');
  fs.writeFileSync(trace, w.prompts.map((p, i) => JSON.stringify({ input_length: p, output_length: w.outputs[i] })).join('\n'));
  const prof = path.join(tmp, 'profile.json');
  fs.writeFileSync(prof, JSON.stringify(profile));
  const r = spawnSync(process.execPath, [cli, 'plan', '--model', dir, '--profile', prof, '--workload', trace, '--kv-gib', '0.0625', '--backend', 'cpu'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`; context ${plan.context}; `));
  assert.match(r.stdout, /^workload: 4 requests, prompts 55 tokens and outputs 15 on average, decode context \d+; [\d.]+ generated tokens\/s end to end predicted \(prefill [\d.]+ prompt tokens\/s\)$/m);
});
