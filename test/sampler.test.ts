/**
 * The sampler (lib/engine/sampler.ts) against an independent float64 reference: the candidates sorted best first
 * (higher logit, ties to the lower id), top-k, then the smallest prefix whose mass reaches top-p, probabilities
 * proportional to exp((logit - max) / temperature). Greedy picks and tie rules exactly; sampled tokens stay inside
 * the reference's kept set and their frequencies over many draws match its probabilities within 5 standard errors;
 * the same seed gives the same tokens.
 */
import assert from 'node:assert/strict';
import test from 'node:test';

import { argmax, Sampler, topKIds } from '../lib/engine/sampler.js';

/** Reference probabilities over ids 0..n-1 (0 outside the kept set). */
function reference(l: number[], temperature: number, topK: number, topP: number): Float64Array {
  const n = l.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => (l[b]! - l[a]!) || a - b);
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

void test('greedy: the highest logit, ties to the lower id, NaN never chosen', () => {
  const s = new Sampler({ temperature: 0 });
  assert.equal(s.sample([1, 3, 3, 2], 0, 4), 1);
  assert.equal(s.sample([Number.NaN, 0.5, Number.NaN, 0.5], 0, 4), 1);
  assert.equal(s.sample([9, 9, 1, 7, 7, 2], 2, 4), 1); // row [1, 7, 7, 2] at offset 2
  assert.equal(argmax(Float32Array.from([-1, -0.5, -0.5])), 1);
});

void test('topKIds: the k best ids best first, ties to the lower id, for every k', () => {
  for (const seed of [1, 2, 3]) {
    const l = logits(1000, seed, -4, 4, 0.25); // many ties
    const order = Array.from({ length: l.length }, (_, i) => i).sort((a, b) => (l[b]! - l[a]!) || a - b);
    for (const k of [1, 2, 7, 50, 999, 1000]) {
      assert.deepEqual([...topKIds(Float32Array.from(l), 0, l.length, k)], order.slice(0, k), `seed ${seed}, k ${k}`);
    }
  }
});

void test('sampled frequencies match the reference probabilities (temperature, top-k, top-p, ties)', () => {
  const rows: Array<{ name: string; l: number[] }> = [
    { name: 'spread', l: [2.0, 1.5, 1.5, 0.3, -1, 0.9, 2.2, -3, 0.0, 1.1] },
    { name: 'ties', l: logits(12, 7, -1, 1, 0.5) },
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
  for (const { name, l } of rows) {
    for (const c of configs) {
      const ref = reference(l, c.temperature, c.topK ?? 0, c.topP ?? 1);
      const s = new Sampler({ ...c, seed: 12345 });
      const counts = new Float64Array(l.length);
      const row = Float32Array.from(l);
      for (let i = 0; i < N; i++) counts[s.sample(row, 0, row.length)]!++;
      for (let id = 0; id < l.length; id++) {
        const p = ref[id]!;
        const f = counts[id]! / N;
        if (p === 0) {
          assert.equal(counts[id], 0, `${name} ${JSON.stringify(c)}: id ${id} is outside the kept set but was drawn`);
          continue;
        }
        const tol = 5 * Math.sqrt((p * (1 - p)) / N) + 1e-4;
        assert.ok(Math.abs(f - p) <= tol, `${name} ${JSON.stringify(c)}: id ${id} frequency ${f.toFixed(4)}, reference ${p.toFixed(4)} (tolerance ${tol.toFixed(4)})`);
      }
    }
  }
});

void test('a large vocabulary: draws stay in the reference nucleus, the top tokens at their probabilities', () => {
  // peaked like a language model's: a few large logits over a long flat tail
  const n = 8000;
  const l = logits(n, 99, -6, 2);
  for (let i = 0; i < 20; i++) l[(i * 397) % n] = 6 + i * 0.1;
  const row = Float32Array.from(l);
  for (const c of [{ temperature: 0.7, topP: 0.9 }, { temperature: 1, topK: 40 }, { temperature: 0.6 }]) {
    const ref = reference(l, c.temperature, c.topK ?? 0, c.topP ?? 1);
    const s = new Sampler({ ...c, seed: 5 });
    const N = 4000;
    const counts = new Map<number, number>();
    for (let i = 0; i < N; i++) {
      const t = s.sample(row, 0, n);
      counts.set(t, (counts.get(t) ?? 0) + 1);
    }
    for (const t of counts.keys()) assert.ok(ref[t]! > 0, `${JSON.stringify(c)}: drew ${t}, outside the reference's kept set`);
    for (let i = 0; i < 20; i++) {
      const id = (i * 397) % n;
      const p = ref[id]!;
      const f = (counts.get(id) ?? 0) / N;
      assert.ok(Math.abs(f - p) <= 5 * Math.sqrt((p * (1 - p)) / N) + 1e-3, `${JSON.stringify(c)}: id ${id} frequency ${f}, reference ${p}`);
    }
  }
});

void test('the same seed draws the same tokens; a row without a finite logit returns its first id', () => {
  const row = Float32Array.from(logits(500, 3, -2, 2));
  for (const c of [{ temperature: 1 }, { temperature: 0.9, topK: 20 }, { temperature: 0.9, topP: 0.8 }]) {
    const a = new Sampler({ ...c, seed: 42 });
    const b = new Sampler({ ...c, seed: 42 });
    const d = new Sampler({ ...c, seed: 43 });
    const ta = Array.from({ length: 64 }, () => a.sample(row, 0, row.length));
    const tb = Array.from({ length: 64 }, () => b.sample(row, 0, row.length));
    const td = Array.from({ length: 64 }, () => d.sample(row, 0, row.length));
    assert.deepEqual(ta, tb, JSON.stringify(c));
    assert.notDeepEqual(ta, td, JSON.stringify(c));
  }
  assert.equal(new Sampler({ temperature: 1, seed: 1 }).sample([-Infinity, -Infinity], 0, 2), 0);
  assert.equal(new Sampler({ temperature: 1, topP: 0.5, seed: 1 }).sample([Number.NaN, Number.NaN, 1], 0, 3), 2);
});
