// Model runtime behaviour on a tiny generated checkpoint: sampling determinism, streaming, stop strings,
// concurrent requests, cancellation (KV pages and cache pins freed), routing traces, malformed checkpoints, CLI.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { resolveAttentionThreads } from '../lib/engine/forward.js';

import {
  CheckpointFormatError,
  InvalidArgumentError,
  type MoeModel,
  UnsupportedModelError,
  demo,
  loadModel,
  makeModel,
  memoryStats,
  parseTrace,
  serializeTrace,
} from '../lib/index.js';

let root = '';
let dir = '';
let model: MoeModel;
before(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-runtime-'));
  dir = path.join(root, 'qwen3');
  await makeModel(dir, { preset: 'tiny-qwen3-moe', seed: 5 });
  model = await loadModel(dir, { experts: { fraction: 0.5, policy: 'finemoe' } });
});
after(() => {
  model?.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});

/** The checkpoint's shard files (from its index), in order. */
function shards(d: string): string[] {
  const j = JSON.parse(fs.readFileSync(path.join(d, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
  return [...new Set(Object.values(j.weight_map))].sort();
}

/** A copy of the tiny checkpoint to damage. */
function copyModel(name: string): string {
  const d = path.join(root, name);
  fs.cpSync(dir, d, { recursive: true });
  return d;
}

describe('generation', () => {
  test('greedy is deterministic; seeded sampling repeats; different seeds diverge', async () => {
    const a = await model.generate('Hello there', { maxNewTokens: 16, stopAtEos: false });
    const b = await model.generate('Hello there', { maxNewTokens: 16, stopAtEos: false });
    assert.deepEqual(a.tokens, b.tokens);
    assert.equal(a.tokens.length, 16);
    assert.equal(a.finishReason, 'length');
    const s1 = await model.generate('Hello there', { maxNewTokens: 16, temperature: 1, topK: 50, topP: 0.95, seed: 1, stopAtEos: false });
    const s2 = await model.generate('Hello there', { maxNewTokens: 16, temperature: 1, topK: 50, topP: 0.95, seed: 1, stopAtEos: false });
    const s3 = await model.generate('Hello there', { maxNewTokens: 16, temperature: 1, topK: 50, topP: 0.95, seed: 2, stopAtEos: false });
    assert.deepEqual(s1.tokens, s2.tokens);
    assert.notDeepEqual(s1.tokens, s3.tokens);
    // the text is the decode of the tokens
    assert.equal(a.text, model.tokenizer.decode(a.tokens, { skipSpecialTokens: true }));
    assert.ok(a.stats.msPerToken > 0 && a.stats.decodeTokensPerSecond > 0);
    assert.equal(a.stats.promptTokens, model.encode('Hello there').length);
  });

  test('greedy generation continues exactly as the logits of the full sequence say', async () => {
    const r = await model.generate('One two three', { maxNewTokens: 8, stopAtEos: false });
    const all = [...r.promptTokens, ...r.tokens];
    const logits = await model.logits(all);
    const V = model.config.vocabSize;
    for (let i = 0; i < r.tokens.length; i++) {
      const row = logits.data.subarray((r.promptTokens.length - 1 + i) * V, (r.promptTokens.length + i) * V);
      let best = 0;
      for (let v = 1; v < V; v++) if (row[v]! > row[best]!) best = v;
      assert.equal(r.tokens[i], best, `token ${i}`);
    }
  });

  test('stream yields the text of generate; breaking out cancels and frees the KV pages', async () => {
    const free0 = model.kvTokensFree;
    const full = await model.generate([{ role: 'user', content: 'Tell me a story' }], { maxNewTokens: 12, stopAtEos: false });
    const s = model.stream([{ role: 'user', content: 'Tell me a story' }], { maxNewTokens: 12, stopAtEos: false });
    let text = '';
    let n = 0;
    for await (const c of s) {
      text += c.text;
      if (c.token >= 0) n++;
    }
    const r = await s.result;
    assert.equal(text, r.text);
    assert.deepEqual(r.tokens, full.tokens);
    assert.equal(n, 12);
    const s2 = model.stream('Tell me a story', { maxNewTokens: 50, stopAtEos: false });
    let seen = 0;
    for await (const _ of s2) if (++seen === 3) break;
    const r2 = await s2.result;
    assert.equal(r2.finishReason, 'cancelled');
    assert.equal(r2.tokens.length, 3);
    assert.equal(model.kvTokensFree, free0);
    assert.equal(model.activeRequests, 0);
  });

  test('stop strings cut the text and end generation', async () => {
    const base = await model.generate('abc', { maxNewTokens: 24, stopAtEos: false });
    // pick a stop string from the middle of the greedy text
    const mid = base.text.slice(Math.floor(base.text.length / 2), Math.floor(base.text.length / 2) + 2);
    assert.ok(mid.length === 2, `greedy text long enough: ${JSON.stringify(base.text)}`);
    const r = await model.generate('abc', { maxNewTokens: 24, stopAtEos: false, stop: [mid] });
    assert.equal(r.finishReason, 'stop');
    assert.equal(r.text, base.text.slice(0, base.text.indexOf(mid)));
    let streamed = '';
    for await (const c of model.stream('abc', { maxNewTokens: 24, stopAtEos: false, stop: [mid] })) streamed += c.text;
    assert.equal(streamed, r.text);
  });

  test('concurrent requests give the tokens of sequential ones', async () => {
    const prompts = ['alpha beta', 'gamma delta epsilon', 'zeta', 'eta theta iota kappa'];
    const seq: number[][] = [];
    for (const p of prompts) seq.push((await model.generate(p, { maxNewTokens: 10, stopAtEos: false })).tokens);
    const par = await Promise.all(prompts.map((p) => model.generate(p, { maxNewTokens: 10, stopAtEos: false })));
    assert.deepEqual(
      par.map((r) => r.tokens),
      seq,
    );
  });

  test('abort rejects with the signal reason and frees KV pages and expert pins', async () => {
    const free0 = model.kvTokensFree;
    const ac = new AbortController();
    const s = model.stream('Abort me please', { maxNewTokens: 200, stopAtEos: false, signal: ac.signal });
    let n = 0;
    await assert.rejects(
      (async () => {
        for await (const _ of s) if (++n === 4) ac.abort(new Error('user abort'));
      })(),
      /user abort/,
    );
    await assert.rejects(s.result, /user abort/);
    assert.equal(model.kvTokensFree, free0);
    assert.equal(model.activeRequests, 0);
    // nothing stays pinned in the expert cache
    const c = model.cacheStats!;
    assert.ok(c.hits + c.misses > 0);
    assert.deepEqual(model.expertCache!.residents().filter((r) => r.pins > 0), []);
    const again = await model.generate('Abort me please', { maxNewTokens: 4, stopAtEos: false });
    assert.equal(again.tokens.length, 4);
  });

  test('staged activations: the device memory kept between steps grows for a longer prompt, shrinks after many small steps, survives an abort, and is freed with the model; greedy tokens equal the direct path', async () => {
    using direct = await loadModel(dir);
    const device0 = memoryStats().cpu.device;
    // reserved at load for steps of up to 4 tokens: the longer prompt's prefill then grows it
    const staged = await loadModel(dir, { deviceActivations: true, maxStepTokens: 4 });
    assert.ok(staged.memory().device.activations > 0, 'the step memory is there from loading on');
    try {
      const short = 'Hi';
      const long = 'A much longer prompt than the first one, so that its prefill step needs more activation memory.';
      assert.deepEqual((await staged.generate(short, { maxNewTokens: 5, stopAtEos: false })).tokens, (await direct.generate(short, { maxNewTokens: 5, stopAtEos: false })).tokens);
      const afterShort = memoryStats().cpu.device.bytes;
      assert.deepEqual((await staged.generate(long, { maxNewTokens: 5, stopAtEos: false })).tokens, (await direct.generate(long, { maxNewTokens: 5, stopAtEos: false })).tokens);
      assert.ok(memoryStats().cpu.device.bytes > afterShort, 'the kept buffer grew for the longer prefill');
      // a shorter prompt's steps fit in it: it stays as it is ...
      const before = memoryStats().cpu.device;
      await staged.generate(short, { maxNewTokens: 6, stopAtEos: false });
      assert.deepEqual(memoryStats().cpu.device, before);
      // ... until 32 steps in a row used under a quarter of it: then it shrinks to what they needed
      const many = await staged.generate(short, { maxNewTokens: 40, stopAtEos: false });
      assert.ok(memoryStats().cpu.device.bytes < before.bytes, 'the kept buffer shrank after many small steps');
      assert.deepEqual(many.tokens, (await direct.generate(short, { maxNewTokens: 40, stopAtEos: false })).tokens);
      const ac = new AbortController();
      const s = staged.stream(long, { maxNewTokens: 50, stopAtEos: false, signal: ac.signal });
      let n = 0;
      await assert.rejects(
        (async () => {
          for await (const _ of s) if (++n === 3) ac.abort(new Error('user abort'));
        })(),
        /user abort/,
      );
      await assert.rejects(s.result, /user abort/);
      assert.deepEqual((await staged.generate(long, { maxNewTokens: 5, stopAtEos: false })).tokens, (await direct.generate(long, { maxNewTokens: 5, stopAtEos: false })).tokens);
    } finally {
      staged.dispose();
    }
    assert.deepEqual(memoryStats().cpu.device, device0, 'device memory freed with the model');
  });

  test('attentionThreads: auto caps on CUDA with streaming experts only; every thread on the CPU backend; a cap gives the same tokens', async () => {
    // 'auto': 3/4 of the pool (at least 2 threads left) on CUDA with fewer slots than experts, else all (0)
    assert.deepEqual([16, 8, 4, 2, 1].map((poolThreads) => resolveAttentionThreads('auto', { backend: 'cuda', streamsExperts: true, poolThreads })), [12, 6, 2, 1, 1]);
    assert.equal(resolveAttentionThreads('auto', { backend: 'cuda', streamsExperts: false, poolThreads: 16 }), 0);
    assert.equal(resolveAttentionThreads('auto', { backend: 'cpu', streamsExperts: true, poolThreads: 16 }), 0);
    assert.equal(resolveAttentionThreads(5, { backend: 'cuda', streamsExperts: true, poolThreads: 16 }), 5);
    assert.equal(model.attentionThreads, 0);
    using one = await loadModel(dir, { attentionThreads: 1 });
    assert.equal(one.attentionThreads, 1);
    for (const prompt of ['Hello there', 'A longer prompt, so that the prefill attention has more than one query row per head.']) {
      assert.deepEqual((await one.generate(prompt, { maxNewTokens: 8, stopAtEos: false })).tokens, (await model.generate(prompt, { maxNewTokens: 8, stopAtEos: false })).tokens);
    }
  });

  test('attentionIsa: the tier asked for when below the CPU\'s, else the CPU\'s; a bad tier is a typed error (logits: model.test.ts)', async () => {
    const best = model.attentionIsa;
    assert.equal(best, model.backend.isa, 'default: the backend\'s tier');
    using low = await loadModel(dir, { attentionIsa: 'scalar' });
    assert.equal(low.attentionIsa, 'scalar');
    using capped = await loadModel(dir, { attentionIsa: 'avx512bf16' });
    assert.equal(capped.attentionIsa, best, 'a tier above the CPU\'s runs the CPU\'s');
    await assert.rejects(loadModel(dir, { attentionIsa: 'avx1024' as never }), (e: unknown) => e instanceof InvalidArgumentError && /^attentionIsa must be one of scalar, avx2, avx512, avx512bf16, received/.test(e.message));
  });

  test('routing traces: one iteration per decode step, serialisable, ids consistent with probabilities', async () => {
    const r = await model.generate('Trace this request', { maxNewTokens: 9, stopAtEos: false, recordRouting: true });
    const req = r.routing!;
    const L = model.config.moeLayers.length;
    const k = model.config.topK;
    const E = model.config.numExperts;
    assert.equal(req.iterations, 8); // the first token comes from prefill
    assert.equal(req.ids.length, 8 * L * k);
    for (let i = 0; i < req.iterations * L; i++) {
      const g = req.gates!.subarray(i * E, (i + 1) * E);
      const ids = Array.from(req.ids.subarray(i * k, (i + 1) * k));
      // the chosen experts are the k largest gates, in descending order
      const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => g[b]! - g[a]! || a - b);
      assert.deepEqual(ids, order.slice(0, k));
    }
    const trace = model.routingTrace([req]);
    const back = parseTrace(serializeTrace(trace));
    assert.deepEqual(Array.from(back.requests[0]!.ids), Array.from(req.ids));
  });

  test('an expert cache smaller than one layer\'s experts: module mode streams them in chunks, logits bitwise equal', async () => {
    using resident = await loadModel(dir);
    const tokens = resident.encode('A longer prompt, so that prefill routes to far more experts than six slots hold.');
    const a = await resident.logits(tokens);
    // 32 experts per layer, top-4: six slots (chunks of three), one slot (fewer than one token's experts), and six
    // with the activations in device memory (the parts buffer then too: the CUDA path's layout)
    for (const [slots, deviceActivations] of [[6, false], [1, false], [6, true]] as const) {
      using small = await loadModel(dir, { experts: { slots }, deviceActivations });
      const b = await small.logits(tokens);
      assert.deepEqual(b.data, a.data, `${slots} slots${deviceActivations ? ', device activations' : ''}`);
      const st = small.cacheStats!;
      assert.ok(st.evictions > 0);
      // each expert is copied at most once per layer: no more copies than (layer, expert) pairs routed to
      assert.ok(st.bytesMoved / small.expertCache!.expertBytes <= resident.config.moeLayers.length * resident.config.numExperts, `${slots} slots: copies`);
    }
  });

  test('a pool that big steps cycle (each layer\'s experts fit, all layers\' do not): the next layer\'s experts stream ahead, logits bitwise equal', async () => {
    using resident = await loadModel(dir);
    const tokens = resident.encode('A longer prompt, so that prefill routes to most of the experts of every layer in one step.');
    const a = await resident.logits(tokens);
    // 32 slots: one layer's 32 experts fit (one fused call), the four layers' 128 do not (LRU alone would fetch each
    // layer's on demand, stalling it)
    for (const deviceActivations of [false, true]) {
      using pool = await loadModel(dir, { experts: { slots: 32, policy: 'lru' }, deviceActivations });
      for (let s = 0; s < 2; s++) assert.deepEqual((await pool.logits(tokens)).data, a.data, `step ${s}${deviceActivations ? ', device activations' : ''}`);
      const st = pool.cacheStats!;
      assert.ok(st.prefetchIssued > 0 && st.prefetchUsed > 0, `streamed ahead and used (${JSON.stringify(st)})`);
    }
  });

  test('a pool with a slot for every expert fills after the first step, then steps are queued whole (the cache bypassed), the same tokens', async () => {
    using resident = await loadModel(dir);
    const want = await resident.generate('Fill the pool', { maxNewTokens: 8, stopAtEos: false });
    for (const deviceActivations of [false, true]) {
      using pool = await loadModel(dir, { experts: { fraction: 1, policy: 'lru' }, deviceActivations });
      const a = await pool.generate('Fill the pool', { maxNewTokens: 8, stopAtEos: false });
      assert.deepEqual(a.tokens, want.tokens);
      const L = pool.config.moeLayers.length * pool.config.numExperts;
      for (let i = 0; i < 50 && pool.expertCache!.residents().length < L; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(pool.expertCache!.residents().length, L, 'every expert prefetched into the pool');
      await pool.generate('x', { maxNewTokens: 1 }); // a step's last MoE layer sees the pool full: whole steps from here
      const before = pool.cacheStats!;
      const b = await pool.generate('Fill the pool', { maxNewTokens: 8, stopAtEos: false });
      assert.deepEqual(b.tokens, want.tokens, `tokens${deviceActivations ? ', device activations' : ''}`);
      const after = pool.cacheStats!;
      assert.deepEqual([after.hits, after.misses], [before.hits, before.misses], 'no lookups: the steps were queued whole');
      assert.equal(after.evictions, 0);
    }
  });

  test('an expert cache whose slots hold a step\'s experts: each layer\'s kernel submitted behind its router, not awaited; the same tokens, the step\'s parts within its time', async () => {
    using resident = await loadModel(dir);
    const prompts = ['Submitted experts', 'behind the router', 'one await per layer'];
    const want = await Promise.all(prompts.map((p) => resident.generate(p, { maxNewTokens: 6, stopAtEos: false })));
    for (const deviceActivations of [false, true]) {
      using half = await loadModel(dir, { experts: { fraction: 0.5, policy: 'lru' }, deviceActivations });
      let expertMs = 0;
      const got: number[][] = [];
      for await (const r of half.generateBatch(prompts.map((p) => ({ prompt: p, options: { maxNewTokens: 6, stopAtEos: false } })), {
        maxSequences: 1, // one sequence per step: a decode step routes to 4 experts a layer, well inside the 64 slots
        onStep: (st) => {
          const t = st.times;
          const parts = [t.attentionMs, t.expertMs, t.stallMs, t.denseMs, t.hostMs];
          assert.ok(parts.every((v) => Number.isFinite(v) && v >= 0), `step times ${JSON.stringify(t)}`);
          assert.ok(parts.reduce((a, b) => a + b, 0) <= st.ms + 1, `step times ${JSON.stringify(t)} exceed the step's ${st.ms} ms`);
          expertMs += t.expertMs;
        },
      })) got[r.index] = r.tokens;
      assert.deepEqual(got, want.map((w) => w.tokens), deviceActivations ? 'device activations' : 'host activations');
      assert.ok(expertMs > 0, 'the experts\' time booked from their kernels\' intervals');
    }
  });

  test('bad arguments are typed errors naming the argument', async () => {
    await assert.rejects(model.generate('x', { maxNewTokens: 0 }), (e: unknown) => e instanceof InvalidArgumentError && /maxNewTokens/.test(e.message));
    await assert.rejects(model.generate('x', { temperature: -1 }), (e: unknown) => e instanceof InvalidArgumentError && /temperature/.test(e.message));
    await assert.rejects(model.generate('x', { topP: 0 }), (e: unknown) => e instanceof InvalidArgumentError && /topP/.test(e.message));
    await assert.rejects(model.generate({ tokens: [1e9] }), (e: unknown) => e instanceof InvalidArgumentError && /tokens\[0\]/.test(e.message));
    await assert.rejects(model.generate(42 as never), (e: unknown) => e instanceof InvalidArgumentError && /prompt/.test(e.message));
    await assert.rejects(model.generate('x', { stop: [''] }), (e: unknown) => e instanceof InvalidArgumentError && /stop/.test(e.message));
    await assert.rejects(loadModel(dir, { experts: { fraction: 0 } }), (e: unknown) => e instanceof InvalidArgumentError && /fraction/.test(e.message));
    await assert.rejects(loadModel(dir, { experts: { slots: 0 } }), (e: unknown) => e instanceof InvalidArgumentError && /slots/.test(e.message));
    for (const attentionThreads of [-1, 2.5, 'all' as never]) {
      await assert.rejects(loadModel(dir, { attentionThreads }), (e: unknown) => e instanceof InvalidArgumentError && /^attentionThreads must be 'auto' or an integer/.test(e.message));
    }
  });
});

describe('malformed checkpoints', () => {
  const code = (c: string) => (e: unknown) => (e as { code?: string }).code === c;
  test('bad KV cache options fail before the weights load, naming loadModel\'s options, leaving nothing allocated', async () => {
    const { cpu, cuda } = memoryStats();
    await assert.rejects(loadModel(dir, { kvCacheBytes: 100 }), (e: unknown) => e instanceof InvalidArgumentError && /^kvCacheBytes must hold at least one page/.test(e.message));
    await assert.rejects(loadModel(dir, { kvBlockSize: 5000 }), (e: unknown) => e instanceof InvalidArgumentError && /^kvBlockSize must be <= 4096/.test(e.message));
    const after = memoryStats();
    assert.deepEqual({ cpu: after.cpu, cuda: after.cuda }, { cpu, cuda });
  });
  test('missing shard', async () => {
    const d = copyModel('missing-shard');
    assert.ok(shards(d).length >= 2, 'the tiny checkpoint is sharded');
    fs.rmSync(path.join(d, shards(d)[1]!));
    await assert.rejects(loadModel(d), (e: unknown) => e instanceof CheckpointFormatError && /missing/.test(e.message));
  });
  test('truncated shard', async () => {
    const d = copyModel('truncated');
    const f = path.join(d, shards(d).at(-1)!);
    fs.truncateSync(f, fs.statSync(f).size - 1000);
    await assert.rejects(loadModel(d), code('MOE_CHECKPOINT_FORMAT'));
  });
  test('shape that disagrees with config.json', async () => {
    const d = copyModel('wrong-shape');
    const cfgPath = path.join(d, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
    cfg.moe_intermediate_size = 64;
    fs.writeFileSync(cfgPath, JSON.stringify(cfg));
    await assert.rejects(loadModel(d), (e: unknown) => e instanceof CheckpointFormatError && /shape/.test(e.message) && /experts/.test(e.message));
  });
  test('unknown and not-yet-runnable architectures', async () => {
    const d = copyModel('llama');
    const cfgPath = path.join(d, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
    fs.writeFileSync(cfgPath, JSON.stringify({ ...cfg, model_type: 'llama', architectures: ['LlamaForCausalLM'] }));
    await assert.rejects(loadModel(d), (e: unknown) => e instanceof UnsupportedModelError && /llama/.test(e.message));
    fs.writeFileSync(cfgPath, JSON.stringify({ ...cfg, model_type: 'deepseek_v3', kv_lora_rank: 64, qk_nope_head_dim: 64, qk_rope_head_dim: 64, v_head_dim: 64, n_routed_experts: 32, scoring_func: 'sigmoid', topk_method: 'noaux_tc' }));
    await assert.rejects(loadModel(d), (e: unknown) => e instanceof UnsupportedModelError && /noaux_tc/.test(e.message));
    fs.writeFileSync(cfgPath, JSON.stringify({ ...cfg, model_type: 'deepseek_v2', kv_lora_rank: 64, qk_nope_head_dim: 64, qk_rope_head_dim: 64, v_head_dim: 64, n_routed_experts: 32, n_group: 8, topk_group: 3, topk_method: 'group_limited_greedy' }));
    await assert.rejects(loadModel(d), (e: unknown) => e instanceof UnsupportedModelError && /group-limited/.test(e.message));
  });
  test('missing config.json, tokenizer.json, a tensor', async () => {
    const d = copyModel('missing-files');
    fs.rmSync(path.join(d, 'tokenizer.json'));
    await assert.rejects(loadModel(d), (e: unknown) => e instanceof CheckpointFormatError && /tokenizer\.json/.test(e.message));
    fs.rmSync(path.join(d, 'config.json'));
    await assert.rejects(loadModel(d), (e: unknown) => e instanceof CheckpointFormatError && /config\.json/.test(e.message));
    const d2 = copyModel('missing-tensor');
    const idx = path.join(d2, 'model.safetensors.index.json');
    const j = JSON.parse(fs.readFileSync(idx, 'utf8'));
    delete j.weight_map['model.layers.1.self_attn.k_norm.weight'];
    fs.writeFileSync(idx, JSON.stringify(j));
    await assert.rejects(loadModel(d2), (e: unknown) => e instanceof CheckpointFormatError && /k_norm/.test(e.message));
    await assert.rejects(loadModel(path.join(root, 'nope')), (e: unknown) => e instanceof CheckpointFormatError);
  });
  test('an aborted load frees what it allocated', async () => {
    const ac = new AbortController();
    ac.abort(new Error('stop loading'));
    await assert.rejects(loadModel(dir, { signal: ac.signal }), /stop loading/);
  });
});

describe('demo', () => {
  test('latency mode with a 25% cache, then throughput mode with a prediction', async () => {
    let out = '';
    await demo({ dir: path.join(root, 'demo-model'), maxNewTokens: 4, batch: 6, write: (t) => (out += t) });
    assert.match(out, /made a tiny random-weight Qwen3-MoE checkpoint/);
    assert.match(out, /latency mode/);
    assert.match(out, /expert cache over the latency requests: \d+ hits/);
    assert.match(out, /throughput mode: 6 requests/);
    assert.match(out, /memory: compute backend [\d.]+ MiB dense weights \+ [\d.]+ MiB expert slots; host [\d.]+ MiB expert store \+ [\d.]+ MiB KV cache/);
    assert.match(out, /tokens\/s measured, \d+ predicted/);
  });
});

describe('cli', () => {
  test('make-model then generate', () => {
    const cli = path.join(__dirname, '..', 'lib', 'cli.js');
    const d = path.join(root, 'cli-olmoe');
    const made = execFileSync(process.execPath, [cli, 'make-model', '--preset', 'tiny-olmoe', '--layers', '2', d], { encoding: 'utf8' });
    assert.match(made, /wrote tiny-olmoe/);
    const cfg = JSON.parse(fs.readFileSync(path.join(d, 'config.json'), 'utf8'));
    assert.equal(cfg.num_hidden_layers, 2);
    const out = execFileSync(process.execPath, [cli, 'generate', '--model', d, '--prompt', 'Hi', '--max-new-tokens', '5', '--json'], { encoding: 'utf8' });
    const r = JSON.parse(out);
    assert.equal(r.stats.promptTokens > 0, true);
    assert.ok(r.tokens.length <= 5);
    assert.throws(() => execFileSync(process.execPath, [cli, 'make-model', '--preset', 'nope', d], { encoding: 'utf8', stdio: 'pipe' }), /preset must be one of/);
  });
});
