/**
 * The sampler (lib/engine/sampler.ts over Backend.sampleRows, cpp/cpu/sample_rows.cc) against an independent float64
 * reference: candidates sorted best first (higher logit, ties to the lower id), top-k, then the smallest prefix whose
 * mass reaches top-p, probabilities proportional to exp((logit - max) / temperature). Greedy picks and tie rules
 * exactly; sampled tokens stay inside the reference's kept set and their frequencies over many draws match its
 * probabilities within 5 standard errors; the same seed gives the same tokens; bad arguments are typed errors.
 * argmaxRows (the greedy rule on the compute backend) against the same greedy reference on every backend.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type Backend, HostTensor, InvalidArgumentError, listBackends, openBackend } from '../lib/index.js';
import { Sampler, sampleRows } from '../lib/engine/sampler.js';
import { onBackend } from './harness/backends.js';
import { type OpCase, runCaseTable } from './harness/table.js';

const be = openBackend({ backend: 'cpu' });
/** Every CPU tier this machine runs (the whole-row weights and top-k's scan have scalar, AVX2 and AVX-512 paths). */
const tiers = listBackends()
  .filter((b) => b.kind === 'cpu' && b.available)
  .map((b) => openBackend({ backend: 'cpu', isa: b.isa! }));

/** Reference probabilities over ids 0..n-1 (0 outside the kept set). */
function reference(l: number[], temperature: number, topK: number, topP: number): Float64Array {
  const n = l.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => l[b]! - l[a]! || a - b);
  const keep = topK > 0 ? Math.min(topK, n) : n;
  const m = l[order[0]!]!;
  const w = order.slice(0, keep).map((i) => Math.exp((l[i]! - m) / temperature));
  const sum = w.reduce((a, b) => a + b, 0);
  let cut = keep;
  if (topP < 1) {
    let c = 0;
    for (let i = 0; i < keep; i++) {
      c += w[i]!;
      if (c / sum >= topP) {
        cut = i + 1;
        break;
      }
    }
  }
  const mass = w.slice(0, cut).reduce((a, b) => a + b, 0);
  const p = new Float64Array(n);
  for (let i = 0; i < cut; i++) p[order[i]!] = w[i]! / mass;
  return p;
}

/** Logits from a seeded LCG: uniform in [lo, hi), rounded to `step` when given (ties). */
function logits(n: number, seed: number, lo: number, hi: number, step = 0): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const v = lo + (s / 2 ** 32) * (hi - lo);
    return step > 0 ? Math.round(v / step) * step : v;
  });
}

/** `rows` copies of row `l` as logits [rows, n]. */
function repeated(l: number[], rows: number): HostTensor<'f32'> {
  const t = new HostTensor('f32', [rows, l.length]);
  const row = Float32Array.from(l);
  for (let r = 0; r < rows; r++) t.data.set(row, r * l.length);
  return t;
}

/** repeated(l, rows), made once per row and count (fresh pages of a large tensor cost more than its draws). */
const made = new WeakMap<number[], Map<number, HostTensor<'f32'>>>();
function repeatedOnce(l: number[], rows: number): HostTensor<'f32'> {
  const byRows = made.get(l) ?? new Map<number, HostTensor<'f32'>>();
  made.set(l, byRows);
  const t = byRows.get(rows) ?? repeated(l, rows);
  byRows.set(rows, t);
  return t;
}

/** `count` draws of one sampler (successive uniforms of its stream) from row `l`, in calls of up to `chunk` rows. */
async function draws(s: Sampler, l: number[], count: number, chunk = 4096, on: Backend = be): Promise<Int32Array> {
  const out = new Int32Array(count);
  for (let i = 0; i < count; i += chunk) {
    const rows = Math.min(chunk, count - i);
    out.set(await sampleRows(on, repeatedOnce(l, rows), Array.from({ length: rows }, () => s)), i);
  }
  return out;
}

void test('greedy: the highest logit, ties to the lower id, NaN never chosen; null samplers are greedy', async () => {
  const rows = [
    [1, 3, 3, 2],
    [Number.NaN, 0.5, Number.NaN, 0.5],
    [-1, -0.5, -0.5, -2],
    [Number.NaN, Number.NaN, Number.NaN, Number.NaN],
    [-Infinity, -Infinity, -Infinity, 5],
  ];
  const t = new HostTensor('f32', [rows.length, 4]);
  rows.forEach((r, i) => t.data.set(r, 4 * i));
  const g = new Sampler({ temperature: 0 });
  assert.deepEqual([...(await sampleRows(be, t, rows.map(() => g)))], [1, 1, 1, 0, 3]);
  assert.deepEqual([...(await sampleRows(be, t, rows.map(() => null)))], [1, 1, 1, 0, 3]);
  // sampling: a row whose maximum is +inf gives its first +inf (weights would be inf - inf)
  const inf = repeated([0, Infinity, 3, Infinity], 4);
  assert.deepEqual([...(await sampleRows(be, inf, [new Sampler({ temperature: 1, seed: 2 }), new Sampler({ temperature: 0.5, topK: 2, seed: 3 }), new Sampler({ temperature: 2, topP: 0.5, seed: 4 }), null]))], [1, 1, 1, 1]);
});

void test('sampled frequencies match the reference probabilities (temperature, top-k, top-p, ties), on every CPU tier', async () => {
  const rows: Array<{ name: string; l: number[] }> = [
    { name: 'spread', l: [2.0, 1.5, 1.5, 0.3, -1, 0.9, 2.2, -3, 0.0, 1.1] },
    { name: 'ties', l: logits(12, 7, -1, 1, 0.5) },
    { name: 'nan', l: [0.5, Number.NaN, 1.5, 1.5, -0.5, Number.NaN, 0.25] },
    // past one 64-id block, with a tail: NaN and -inf inside
    { name: 'long', l: logits(77, 11, -2, 2).map((v, i) => (i === 40 ? Number.NaN : i === 70 ? -Infinity : v)) },
  ];
  const configs = [
    { temperature: 1 },
    { temperature: 0.5 },
    { temperature: 1.3, topK: 3 },
    { temperature: 1, topK: 4 }, // cuts inside a tie group on 'ties'
    { temperature: 0.8, topP: 0.7 },
    { temperature: 1, topK: 6, topP: 0.5 },
    { temperature: 2, topP: 0.999 },
  ];
  const N = 60000;
  for (const on of tiers)
  for (const { name, l } of rows) {
    const finite = l.map((v) => (Number.isNaN(v) ? -Infinity : v)); // the reference ranks NaN last, weight 0
    for (const c of configs) {
      const ref = reference(finite, c.temperature, c.topK ?? 0, c.topP ?? 1);
      const got = await draws(new Sampler({ ...c, seed: 12345 }), l, N, 4096, on);
      const counts = new Float64Array(l.length);
      for (const t of got) counts[t]!++;
      for (let id = 0; id < l.length; id++) {
        const p = ref[id]!;
        const f = counts[id]! / N;
        if (p === 0) {
          assert.equal(counts[id], 0, `${on.name} ${name} ${JSON.stringify(c)}: id ${id} is outside the kept set but was drawn`);
          continue;
        }
        const tol = 5 * Math.sqrt((p * (1 - p)) / N) + 1e-4;
        assert.ok(Math.abs(f - p) <= tol, `${on.name} ${name} ${JSON.stringify(c)}: id ${id} frequency ${f.toFixed(4)}, reference ${p.toFixed(4)} (tolerance ${tol.toFixed(4)})`);
      }
    }
  }
});

void test('a large vocabulary: draws stay in the reference nucleus, the top tokens at their probabilities, on every CPU tier', async () => {
  // peaked like a language model's: a few large logits over a long flat tail (not a whole number of 64-id blocks)
  const n = 32003;
  const l = logits(n, 99, -6, 2);
  const top = Array.from({ length: 20 }, (_, i) => (i * 1543) % n);
  top.forEach((id, i) => (l[id] = 6 + i * 0.1));
  for (const on of tiers)
  for (const c of [{ temperature: 0.7, topP: 0.9 }, { temperature: 1, topK: 40 }, { temperature: 0.6 }, { temperature: 1.5, topK: 2000, topP: 0.95 }, { temperature: 3, topP: 0.5 }]) {
    const ref = reference(l, c.temperature, c.topK ?? 0, c.topP ?? 1);
    const N = 4000;
    const got = await draws(new Sampler({ ...c, seed: 5 }), l, N, 500, on);
    const counts = new Map<number, number>();
    for (const t of got) {
      assert.ok(ref[t]! > 0, `${on.name} ${JSON.stringify(c)}: drew ${t}, outside the reference's kept set`);
      counts.set(t, (counts.get(t) ?? 0) + 1);
    }
    for (const id of top) {
      const p = ref[id]!;
      const f = (counts.get(id) ?? 0) / N;
      assert.ok(Math.abs(f - p) <= 5 * Math.sqrt((p * (1 - p)) / N) + 1e-3, `${on.name} ${JSON.stringify(c)}: id ${id} frequency ${f}, reference ${p}`);
    }
  }
});

void test('extreme temperatures: a tiny one draws only the maxima (ties evenly), a huge one every finite logit evenly', async () => {
  const l = logits(203, 17, -1, 1);
  l[30] = l[150] = 1.5; // two maxima
  l[99] = Number.NaN;
  l[100] = -Infinity;
  const N = 20000;
  for (const on of tiers) {
    for (const c of [{ temperature: 1e-30 }, { temperature: 1e-30, topP: 0.3 }, { temperature: 1e-30, topK: 5 }]) {
      const got = await draws(new Sampler({ ...c, seed: 9 }), l, N, 4096, on);
      const hits = got.filter((t) => t === 30).length;
      assert.ok(got.every((t) => t === 30 || t === 150), `${on.name} ${JSON.stringify(c)}: drew outside the maxima`);
      // top-p 0.3 keeps the first maximum only (half the mass reaches 0.3); otherwise both at 1/2
      if (c.topP) assert.equal(hits, N, `${on.name} ${JSON.stringify(c)}`);
      else assert.ok(Math.abs(hits / N - 0.5) <= 5 * Math.sqrt(0.25 / N), `${on.name} ${JSON.stringify(c)}: ${hits} of ${N} on the first maximum`);
    }
    const got = await draws(new Sampler({ temperature: 1e30, seed: 9 }), l, N, 4096, on);
    const counts = new Float64Array(l.length);
    for (const t of got) counts[t]!++;
    assert.equal(counts[99], 0, `${on.name}: NaN drawn`);
    assert.equal(counts[100], 0, `${on.name}: -inf drawn`);
    const p = 1 / (l.length - 2);
    for (let i = 0; i < l.length; i++) if (i !== 99 && i !== 100) assert.ok(Math.abs(counts[i]! / N - p) <= 5 * Math.sqrt((p * (1 - p)) / N) + 1e-4, `${on.name}: id ${i} frequency ${counts[i]! / N} vs ${p}`);
  }
});

void test('the same seed draws the same tokens, one row at a time or many per call', async () => {
  const l = logits(500, 3, -2, 2);
  for (const on of tiers)
  for (const c of [{ temperature: 1 }, { temperature: 0.9, topK: 20 }, { temperature: 0.9, topP: 0.8 }]) {
    const many = await draws(new Sampler({ ...c, seed: 42 }), l, 64, 4096, on);
    const single: number[] = [];
    const s = new Sampler({ ...c, seed: 42 });
    for (let i = 0; i < 64; i++) single.push((await sampleRows(on, repeated(l, 1), [s]))[0]!);
    assert.deepEqual([...many], single, JSON.stringify(c));
    assert.notDeepEqual([...(await draws(new Sampler({ ...c, seed: 43 }), l, 64, 4096, on))], single, JSON.stringify(c));
  }
});

void test('bad arguments are typed errors naming the argument', async () => {
  const t = repeated([0, 1, 2], 2);
  const s = new Sampler({ temperature: 1, seed: 1 });
  await assert.rejects(sampleRows(be, t, [s]), (e: unknown) => e instanceof InvalidArgumentError && /samplers/.test(e.message));
  const out = new HostTensor('i32', [2]);
  assert.throws(() => be.sampleRows({ logits: t, out, params: new Float64Array(7) }), (e: unknown) => e instanceof InvalidArgumentError && /params/.test(e.message));
  assert.throws(() => be.sampleRows({ logits: t, out: new HostTensor('i32', [3]), params: new Float64Array(8) }), (e: unknown) => e instanceof InvalidArgumentError && /out/.test(e.message));
  assert.throws(() => be.sampleRows({ logits: new HostTensor('bf16', [2, 3]), out, params: new Float64Array(8) }), (e: unknown) => e instanceof InvalidArgumentError && /logits/.test(e.message));
  const bad = Float64Array.of(-1, 0, 1, 0.5, 1, 0, 1, 0.5);
  await assert.rejects(async () => be.sampleRows({ logits: t, out, params: bad }), (e: unknown) => e instanceof InvalidArgumentError && /temperature/.test(e.message) && /row 0/.test(e.message));
  await assert.rejects(async () => be.sampleRows({ logits: t, out, params: Float64Array.of(1, 0, 1, 1, 1, 0, 1, 0.5) }), (e: unknown) => e instanceof InvalidArgumentError && /u in \[0, 1\)/.test(e.message));
});

/** Independent greedy reference: the largest non-NaN value above -inf, then its first id (0 when none). */
function refArgmax(l: ArrayLike<number>): number {
  let m = -Infinity;
  for (let i = 0; i < l.length; i++) if (!Number.isNaN(l[i]!) && l[i]! > m) m = l[i]!;
  if (m === -Infinity) return 0;
  for (let i = 0; i < l.length; i++) if (l[i] === m) return i;
  return -1;
}

// argmaxRows: the greedy tokens of a staged step on the compute backend (a CUDA kernel on device tensors)
const ARGMAX: OpCase[] = [];
for (const [rows, vocab] of [
  [1, 1],
  [7, 13],
  [12, 32000],
  [3, 100003],
] as const) {
  ARGMAX.push({
    op: 'argmaxRows',
    name: `argmaxRows [${rows}, ${vocab}] (ties, NaN, -inf / NaN rows, +inf)`,
    async run(b: Backend) {
      const t = new HostTensor('f32', [rows, vocab]);
      for (let r = 0; r < rows; r++) {
        const kind = r % 5;
        const l = logits(vocab, 31 * r + vocab, -10, 10, kind === 1 ? 2 : 0); // kind 1: ties on a coarse grid
        if (kind === 2) for (let i = 0; i < vocab; i += 3) l[i] = NaN;
        if (kind === 3) l.fill(-Infinity).forEach((_, i) => i % 2 && (l[i] = NaN));
        if (kind === 4) for (let i = Math.floor(vocab / 3); i < vocab; i += Math.floor(vocab / 4) + 1) l[i] = Infinity;
        t.data.set(l, r * vocab);
      }
      const out = HostTensor.from('i32', [rows], new Array<number>(rows).fill(-7));
      const tier = await onBackend(b, [t], [out], (i, o) => b.argmaxRows(i[0]!, o[0]!));
      const greedy = new HostTensor('i32', [rows]);
      await be.sampleRows({ logits: t, out: greedy, params: new Float64Array(rows * 4).map((_, i) => (i % 4 === 2 ? 1 : 0)) });
      for (let r = 0; r < rows; r++) {
        const want = refArgmax(t.data.subarray(r * vocab, (r + 1) * vocab));
        assert.equal(out.data[r], want, `row ${r}`);
        assert.equal(greedy.data[r], want, `row ${r}: sampleRows greedy`);
      }
      return { tier };
    },
  });
}
runCaseTable('argmaxRows', ARGMAX);

void test('argmaxRows: bad shapes and dtypes are typed errors', () => {
  assert.throws(() => be.argmaxRows(new HostTensor('f32', [2, 3]), new HostTensor('i32', [3])), (e: unknown) => e instanceof InvalidArgumentError && /out must be \[2\] \(rows\), received \[3\]/.test(e.message));
  assert.throws(() => be.argmaxRows(new HostTensor('bf16', [2, 3]), new HostTensor('i32', [2])), /logits\.dtype must be one of f32/);
  assert.throws(() => be.argmaxRows(new HostTensor('f32', [6]), new HostTensor('i32', [6])), /logits must be \[rows, vocab >= 1\]/);
});
