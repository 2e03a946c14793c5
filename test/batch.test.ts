// Batched generation (continuous batching) and the JSONL batch runner: greedy results equal one-at-a-time
// generation; sequences join and leave; KV exhaustion makes requests wait, none is lost; malformed requests fail
// alone; an interrupted JSONL run resumes without losing or duplicating a request.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { type BatchResult, InvalidArgumentError, type MoeModel, OutOfMemoryError, loadModel, makeModel, memoryStats } from '../lib/index.js';
import { stepGroups } from '../lib/engine/forward.js';
import { generateJsonl, type JsonlProgress, progressLine } from '../lib/engine/jsonl.js';

let root = '';
const dirs: Record<string, string> = {};
before(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-batch-'));
  for (const p of ['tiny-mixtral', 'tiny-qwen3-moe'] as const) {
    dirs[p] = path.join(root, p);
    await makeModel(dirs[p], { preset: p, seed: 21 });
  }
});
after(() => fs.rmSync(root, { recursive: true, force: true }));

const PROMPTS = Array.from({ length: 14 }, (_, i) => `Request ${i}: ${'please tell me something interesting '.repeat(1 + ((i * 7) % 5))}`);

async function collect(it: AsyncIterable<BatchResult>): Promise<BatchResult[]> {
  const out: BatchResult[] = [];
  for await (const r of it) out[r.index] = r;
  return out;
}

async function oneAtATime(model: MoeModel, prompts: string[], maxNew: (i: number) => number): Promise<number[][]> {
  const out: number[][] = [];
  for (const [i, p] of prompts.entries()) out.push((await model.generate(p, { maxNewTokens: maxNew(i), stopAtEos: false })).tokens);
  return out;
}

// (batched steps route more rows to an expert than single ones, which switches moeExperts from its streaming to
// its blocked path: both sum in one fixed order per tier, so the tokens stay the same)
for (const preset of ['tiny-mixtral', 'tiny-qwen3-moe'] as const) {
  describe(preset, () => {
    test('batched greedy equals one-at-a-time greedy; sequences join and leave', async () => {
      using model = await loadModel(dirs[preset]!);
      const maxNew = (i: number) => 4 + ((i * 5) % 13);
      const single = await oneAtATime(model, PROMPTS, maxNew);
      let mixed = 0;
      const batched = await collect(
        model.generateBatch(
          PROMPTS.map((p, i) => ({ prompt: p, options: { maxNewTokens: maxNew(i), stopAtEos: false } })),
          { maxSequences: 5, maxBatchTokens: 96, onStep: (s) => (mixed += s.decodeTokens > 0 && s.decodeTokens < s.tokens ? 1 : 0) },
        ),
      );
      assert.deepEqual(
        batched.map((r) => r.tokens),
        single,
      );
      assert.ok(mixed > 0, 'some steps mixed prefill chunks with decode tokens');
      assert.ok(batched.every((r) => r.finishReason === 'length'));
    });

    test('throughput mode with offloaded experts (module mode: a 3-slot cache) gives the tokens of resident one-at-a-time greedy', async () => {
      using resident = await loadModel(dirs[preset]!);
      using offloaded = await loadModel(dirs[preset]!, { experts: { slots: 3 } });
      const prompts = PROMPTS.slice(0, 8);
      const maxNew = (i: number) => 3 + ((i * 3) % 7);
      const single = await oneAtATime(resident, prompts, maxNew);
      let steps = 0;
      let expertMs = 0;
      const batched = await collect(
        offloaded.generateBatch(
          prompts.map((p, i) => ({ prompt: p, options: { maxNewTokens: maxNew(i), stopAtEos: false } })),
          {
            maxSequences: 8,
            maxBatchTokens: 256,
            onStep: (s) => {
              steps++;
              // the step's own time accounting: parts are non-negative and fit in the step's wall time
              const t = s.times;
              const parts = [t.attentionMs, t.expertMs, t.stallMs, t.denseMs, t.hostMs];
              assert.ok(parts.every((v) => Number.isFinite(v) && v >= 0), `step times ${JSON.stringify(t)}`);
              assert.ok(parts.reduce((a, b) => a + b, 0) <= s.ms + 1, `step times ${JSON.stringify(t)} exceed the step's ${s.ms} ms`);
              // the dense time is split into its three parts
              const denseParts = [t.denseQkvMs, t.denseOutMs, t.denseHeadMs];
              assert.ok(denseParts.every((v) => Number.isFinite(v) && v >= 0), `dense parts ${JSON.stringify(t)}`);
              assert.ok(Math.abs(denseParts.reduce((a, b) => a + b, 0) - t.denseMs) <= 1e-6 * Math.max(1, t.denseMs), `dense parts ${JSON.stringify(t)}`);
              expertMs += t.expertMs + t.stallMs;
            },
          },
        ),
      );
      assert.ok(expertMs > 0, 'the steps report time in the experts');
      assert.deepEqual(
        batched.map((r) => r.tokens),
        single,
      );
      // module mode copies each routed expert at most once per MoE layer and step
      const st = offloaded.cacheStats!;
      const cfg = offloaded.config;
      assert.ok(st.evictions > 0);
      assert.ok(st.bytesMoved / offloaded.expertCache!.expertBytes <= steps * cfg.moeLayers.length * cfg.numExperts);
    });

    test('micro-batched attention (1, 2, 3 and 64 groups; direct and staged, greedy and sampled) gives the same tokens', async () => {
      const prompts = PROMPTS.slice(0, 9);
      const maxNew = (i: number) => 2 + ((i * 5) % 6);
      // odd requests sample (seeded): their steps take the host sampler over the downloaded logits when staged
      const opts = (i: number) => ({ maxNewTokens: maxNew(i), stopAtEos: false, ...(i % 2 ? { temperature: 0.8, seed: 100 + i } : {}) });
      const run = async (model: MoeModel, microBatches: number) =>
        (await collect(model.generateBatch(prompts.map((p, i) => ({ prompt: p, options: opts(i) })), { maxSequences: 6, maxBatchTokens: 80, microBatches }))).map((r) => r.tokens);
      using direct = await loadModel(dirs[preset]!);
      using staged = await loadModel(dirs[preset]!, { deviceActivations: true });
      const want = await run(direct, 1);
      for (const n of [2, 3, 64]) assert.deepEqual(await run(direct, n), want, `direct, ${n} micro-batches`);
      for (const n of [1, 3]) assert.deepEqual(await run(staged, n), want, `staged, ${n} micro-batches`);
      await assert.rejects(run(direct, 0), (e: unknown) => e instanceof InvalidArgumentError && /microBatches must be a positive integer, received 0/.test(e.message));
    });
  });
}

test('seeded sampling in a batch gives the tokens of the same request alone', async () => {
  using model = await loadModel(dirs['tiny-qwen3-moe']!);
  const opts = (i: number) => ({ maxNewTokens: 10, stopAtEos: false, temperature: 0.9, topK: 40, topP: 0.9, seed: 100 + i });
  const single: number[][] = [];
  for (const [i, p] of PROMPTS.slice(0, 6).entries()) single.push((await model.generate(p, opts(i))).tokens);
  // a small token budget: prompts are prefilled in chunks that share steps with other requests
  const batched = await collect(model.generateBatch(PROMPTS.slice(0, 6).map((p, i) => ({ prompt: p, options: opts(i) })), { maxBatchTokens: 64 }));
  assert.deepEqual(
    batched.map((r) => r.tokens),
    single,
  );
});

describe('scheduling', () => {
  test('stop strings: each request ends at the first occurrence of its own, across token boundaries', async () => {
    using model = await loadModel(dirs['tiny-qwen3-moe']!);
    const prompts = PROMPTS.slice(0, 6);
    const opts = { maxNewTokens: 24, stopAtEos: false };
    const base = await collect(model.generateBatch(prompts.map((p) => ({ prompt: p, options: opts })), { maxSequences: 4 }));
    // a 3-character stop from each text's second half (spans tokens where they are shorter), one that never occurs
    const stops = base.map((r, i) => (i === 5 ? '\u0000never' : r.text.slice(Math.floor(r.text.length / 2), Math.floor(r.text.length / 2) + 3)));
    assert.ok(stops.every((s) => s.length >= 3), `texts long enough: ${JSON.stringify(base.map((r) => r.text))}`);
    const cut = await collect(model.generateBatch(prompts.map((p, i) => ({ prompt: p, options: { ...opts, stop: ['\u0001other', stops[i]!] } })), { maxSequences: 4 }));
    for (const [i, r] of cut.entries()) {
      const at = base[i]!.text.indexOf(stops[i]!);
      if (at < 0) {
        assert.equal(r.finishReason, 'length');
        assert.equal(r.text, base[i]!.text);
      } else {
        assert.equal(r.finishReason, 'stop', `request ${i}`);
        assert.equal(r.text, base[i]!.text.slice(0, at), `request ${i}`);
      }
    }
  });

  test('a small KV cache makes requests wait, none is lost; a request that can never fit fails alone', async () => {
    using big = await loadModel(dirs['tiny-mixtral']!);
    // 4 layers x 2 kv heads x 64 tokens x 64 dims x 2 (K, V) x 2 bytes = 128 KiB per page: 6 pages
    using model = await loadModel(dirs['tiny-mixtral']!, { kvCacheBytes: 6 * 128 * 1024 });
    const free0 = model.kvTokensFree;
    assert.equal(free0, 6 * 64);
    const prompts = PROMPTS.slice(0, 8);
    const single = await oneAtATime(big, prompts, () => 12);
    let maxRunning = 0;
    let waited = 0;
    const reqs = [...prompts.map((p) => ({ prompt: p, options: { maxNewTokens: 12, stopAtEos: false } })), { prompt: 'x', options: { maxNewTokens: 1000 } }, { prompt: 42 as never }];
    const r = await collect(
      model.generateBatch(reqs, {
        onStep: (s) => {
          maxRunning = Math.max(maxRunning, s.running);
          waited += s.waiting > 0 ? 1 : 0;
        },
      }),
    );
    assert.deepEqual(
      r.slice(0, 8).map((x) => x.tokens),
      single,
    );
    assert.ok(maxRunning < 8 && waited > 0, `requests waited for KV pages (max running ${maxRunning})`);
    assert.equal(r[8]!.finishReason, 'error');
    assert.ok(r[8]!.error instanceof OutOfMemoryError);
    assert.ok(r[9]!.error instanceof InvalidArgumentError);
    assert.equal(model.kvTokensFree, free0);
  });

  test('abort stops the batch and frees every KV page', async () => {
    using model = await loadModel(dirs['tiny-qwen3-moe']!);
    const free0 = model.kvTokensFree;
    const ac = new AbortController();
    let steps = 0;
    await assert.rejects(
      collect(
        model.generateBatch(
          PROMPTS.map((p) => ({ prompt: p, options: { maxNewTokens: 100, stopAtEos: false } })),
          { signal: ac.signal, onStep: () => ++steps === 5 && ac.abort(new Error('stop now')) },
        ),
      ),
      /stop now/,
    );
    assert.equal(model.kvTokensFree, free0);
    assert.equal(model.activeRequests, 0);
  });
});

describe('jsonl', () => {
  test('bad lines are reported with line numbers; an interrupted run resumes without loss or duplicates', async () => {
    using model = await loadModel(dirs['tiny-mixtral']!);
    const input = path.join(root, 'in.jsonl');
    const lines = PROMPTS.map((p, i) => JSON.stringify({ id: `q${i}`, prompt: p, max_new_tokens: 6 }));
    lines.splice(3, 0, '{ not json');
    lines.splice(7, 0, JSON.stringify({ id: 'nop' }));
    fs.writeFileSync(input, `${lines.join('\n')}\n`);
    const full = path.join(root, 'full.jsonl');
    const errors: number[] = [];
    const s = await generateJsonl(model, input, full, { defaults: { stopAtEos: false }, onError: (line) => errors.push(line) });
    assert.deepEqual(errors.sort((a, b) => a - b), [4, 8]);
    assert.equal(s.done, PROMPTS.length);
    const expect = new Map(fs.readFileSync(full, 'utf8').trim().split('\n').map((l) => [JSON.parse(l).id as string, JSON.parse(l).tokens as number[]]));

    // interrupt after a few results, then resume
    const part = path.join(root, 'part.jsonl');
    const ac = new AbortController();
    let n = 0;
    const s1 = await generateJsonl(model, input, part, { defaults: { stopAtEos: false }, signal: ac.signal, maxSequences: 3, onProgress: (p) => p.done >= 4 && (n++, ac.abort(new Error('ctrl-c'))) });
    assert.ok(n > 0 && s1.done >= 4 && s1.done < PROMPTS.length, `interrupted after ${s1.done}`);
    fs.appendFileSync(part, '{"id":"q13","text":"torn'); // a crash mid-write leaves a torn line
    let last: JsonlProgress | undefined;
    const s2 = await generateJsonl(model, input, part, { defaults: { stopAtEos: false }, onProgress: (p) => (last = p) });
    assert.equal(s1.done + s2.done, PROMPTS.length);
    // progress: every non-empty input line counts; already written ids are skipped, not re-run
    assert.equal(s2.total, lines.length);
    assert.equal(s2.skipped, s1.done);
    assert.match(progressLine(last!), /^\[[#.]{20}\] +\d+% \d+\/\d+ \|.* tokens\/s \| \d+ s/);
    assert.match(progressLine({ ...s2, running: 0, waiting: 0 }), /^\[#{20}\] 100% /);
    assert.match(progressLine({ total: 10, done: 2, failed: 0, skipped: 0, tokens: 8, elapsedMs: 4000, running: 1, waiting: 0 }), /ETA 16 s$/);
    const got = fs
      .readFileSync(part, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{"id":') && l.endsWith('}'))
      .map((l) => JSON.parse(l) as { id: string; tokens: number[] });
    assert.equal(got.length, PROMPTS.length);
    assert.equal(new Set(got.map((g) => g.id)).size, PROMPTS.length);
    for (const g of got) assert.deepEqual(g.tokens, expect.get(g.id));
  });

  test('cli generate --input / --output', () => {
    const cli = path.join(__dirname, '..', 'lib', 'cli.js');
    const input = path.join(root, 'cli-in.jsonl');
    fs.writeFileSync(input, `${JSON.stringify({ question_id: 81, turns: ['Write a haiku.', 'Again.'] })}\nnot json\n`);
    const output = path.join(root, 'cli-out.jsonl');
    let stderr = '';
    try {
      execFileSync(process.execPath, [cli, 'generate', '--model', dirs['tiny-mixtral']!, '--input', input, '--output', output, '--max-new-tokens', '4'], { encoding: 'utf8', stdio: 'pipe' });
    } catch (e) {
      stderr = (e as { stderr: string; status: number }).stderr;
      assert.equal((e as { status: number }).status, 2, 'exit 2: some lines failed');
    }
    assert.match(stderr, /line 2: /);
    const rec = JSON.parse(fs.readFileSync(output, 'utf8').trim()) as { id: string; generated_tokens: number };
    assert.equal(rec.id, '81');
    assert.ok(rec.generated_tokens <= 4);
  });

  test('cli: a missing model folder, config.json or input file is a typed error naming it, before any work', () => {
    const cli = path.join(__dirname, '..', 'lib', 'cli.js');
    const run = (...args: string[]) => {
      try {
        execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', stdio: 'pipe' });
      } catch (e) {
        const { status, stdout, stderr } = e as { status: number; stdout: string; stderr: string };
        return { status, out: stdout + stderr };
      }
      return { status: 0, out: '' };
    };
    const missing = path.join(root, 'no-such-model');
    const empty = fs.mkdtempSync(path.join(root, 'empty-model-'));
    const output = path.join(root, 'never-written.jsonl');
    let r = run('plan', '--model', missing);
    assert.equal(r.status, 1);
    assert.match(r.out, /\[MOE_INVALID_ARGUMENT\] --model: the folder .*no-such-model does not exist/);
    r = run('plan', '--model', empty);
    assert.equal(r.status, 1);
    assert.match(r.out, /\[MOE_CHECKPOINT_FORMAT\] .*config\.json: missing/);
    // the input is checked first: no plan printed, no model loaded, no output file made
    r = run('generate', '--model', dirs['tiny-mixtral']!, '--input', path.join(root, 'no-such-input.jsonl'), '--output', output);
    assert.equal(r.status, 1);
    assert.match(r.out, /\[MOE_INVALID_ARGUMENT\] --input: .*no-such-input\.jsonl does not exist/);
    assert.doesNotMatch(r.out, /plan:/);
    assert.equal(fs.existsSync(output), false);
    // options checked before the work: profile's --max-batch before profiling; info's unknown flags refused
    r = run('profile', '--model', dirs['tiny-mixtral']!, '--max-batch', '0', '--out', path.join(root, 'never-profiled.json'));
    assert.equal(r.status, 1);
    assert.match(r.out, /\[MOE_INVALID_ARGUMENT\] --max-batch must be an integer in \[1, 4096\], received "0"/);
    assert.doesNotMatch(r.out, /profiling/);
    // counts below 1 are refused by the option's name, before the model loads
    r = run('generate', '--model', dirs['tiny-mixtral']!, '--prompt', 'hi', '--max-new-tokens', '0');
    assert.equal(r.status, 1);
    assert.match(r.out, /\[MOE_INVALID_ARGUMENT\] --max-new-tokens must be an integer >= 1, received "0"/);
    r = run('info', '--bogus');
    assert.equal(r.status, 1);
    assert.match(r.out, /Unknown option '--bogus'/);
  });
});

test('steps keep one pinned host buffer (allocated off the JS thread, at load), staged or direct, freed with the model', async () => {
  const prompts = PROMPTS.slice(0, 6).map((p) => ({ prompt: p, options: { maxNewTokens: 6, stopAtEos: false } }));
  const pinned = () => memoryStats().cpu.pinned.count;
  for (const staged of [false, true]) {
    const before = pinned();
    const model = await loadModel(dirs['tiny-mixtral']!, { deviceActivations: staged });
    const loaded = pinned() - before; // the expert store, the KV cache (K and V of each layer), the host arena
    assert.ok(model.memory().host.activations > 0, 'the host arena is there from loading on');
    await collect(model.generateBatch(prompts, { maxSequences: 6 }));
    assert.equal(pinned() - before, loaded, `${staged ? 'staged' : 'direct'}: the steps took no other pinned buffer`);
    model.dispose();
    await new Promise((r) => setTimeout(r, 50)); // frees of memory an op held settle
    assert.equal(pinned(), before, `${staged ? 'staged' : 'direct'}: every pinned buffer freed with the model`);
  }
});

test('stepGroups: contiguous non-empty groups of about equal token counts, every sequence once', () => {
  const seqs = [5, 1, 1, 9, 2, 2, 2, 30, 1].map((n, i) => ({ seq: i, tokens: new Array<number>(n).fill(0) }));
  const writes = seqs.map((s) => ({ seq: s.seq, pos: 0, n: s.tokens.length }));
  const total = 53;
  for (const count of [1, 2, 3, 4, 9, 20]) {
    const g = stepGroups(seqs, writes, count);
    assert.ok(g.length >= 1 && g.length <= Math.min(count, seqs.length), `${count}: ${g.length} groups`);
    assert.deepEqual(
      g.flatMap((x) => x.seqs.map((s) => s.seq)),
      seqs.map((s) => s.seq),
    );
    assert.deepEqual(
      g.flatMap((x) => x.writes.map((w) => w.seq)),
      seqs.map((s) => s.seq),
    );
    let t = 0;
    for (const x of g) {
      assert.ok(x.seqs.length > 0 && x.T === x.seqs.reduce((n, s) => n + s.tokens.length, 0) && x.t0 === t);
      t += x.T;
    }
    assert.equal(t, total);
  }
  // a decode step (one token per sequence): equal groups
  const decode = Array.from({ length: 16 }, (_, i) => ({ seq: i, tokens: [0] }));
  assert.deepEqual(
    stepGroups(decode, decode.map((d) => ({ seq: d.seq, pos: 0, n: 1 })), 4).map((x) => x.T),
    [4, 4, 4, 4],
  );
  assert.deepEqual(
    stepGroups(seqs, writes, 2).map((x) => x.T),
    [22, 31],
  );
  assert.throws(() => stepGroups(seqs, writes, 1.5), /microBatches must be an integer >= 1, received 1\.5/);
});
