/**
 * Batch invariance on the CPU tiers (cpu-scalar, cpu-avx2, cpu-avx512, cpu-avx512bf16; absent ones skipped with
 * their reason): throughput mode, which batches many sequences per step, must produce exactly the tokens of
 * one-at-a-time greedy generation, so an op's output row for a token must be bitwise the same whatever the other
 * tokens of the call are.
 *  - moeExperts: for T = 5, 17, 64, 300 tokens with random routing (an expert's row count then crosses the decode
 *    streaming path's limit of 16 rows, and the prefill tiles' 64), every token's output row equals the row the
 *    same token gets alone (T = 1), bitwise. Shapes: (E 8, H 256, I 512, k 2), (E 64, H 512, I 256, k 8), rows
 *    longer than one k block of every tier with ragged tails (H 2100: the avx512bf16 decode kernel's side-by-side
 *    walk; I 1100), skewed routing with -1 ids and an absent expert; silu and gpt-oss's swiglu-oai with f32 biases
 *    (on every expert, stacked gateUp + gateUpBias, and on even experts only).
 *  - gemm (guard): row r of a [M, K] x [N, K]^T product equals the M = 1 product for M = 1..300, bitwise.
 * CUDA backends are not covered here (the CPU kernels' summation order is what this file pins down).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type Backend, HostTensor, type MoeActivation } from '../lib/index.js';
import { harnessBackends } from './harness/backends.js';
import { uniform } from './harness/inputs.js';
import { rng } from './harness/ref.js';

const OAI: MoeActivation = { kind: 'swiglu-oai', alpha: 1.702, limit: 7 };
const TS = [5, 17, 64, 300];
const T_MAX = 300;

interface Spec {
  name: string;
  e: number;
  h: number;
  inter: number;
  k: number;
  oai?: boolean;
  biases?: 'all' | 'even';
  stacked?: boolean;
  /** a packed table (panel64 weights): the CPU runtime's layout */
  packed?: boolean;
  /** skewed: slot 0 of half the tokens on expert 0, about 10% of the ids -1, expert e - 1 absent */
  skewed?: boolean;
}

const SPECS: Spec[] = [
  { name: 'E8 H256 I512 k2 silu', e: 8, h: 256, inter: 512, k: 2 },
  {
    name: 'E8 H256 I512 k2 swiglu-oai, biases, stacked gateUp',
    e: 8, h: 256, inter: 512, k: 2, oai: true, biases: 'all', stacked: true,
  },
  { name: 'E64 H512 I256 k8 silu', e: 64, h: 512, inter: 256, k: 8 },
  {
    name: 'E64 H512 I256 k8 swiglu-oai, biases on even experts',
    e: 64, h: 512, inter: 256, k: 8, oai: true, biases: 'even',
  },
  { name: 'E4 H2100 I160 k2 silu (rows over a k block, tails)', e: 4, h: 2100, inter: 160, k: 2 },
  { name: 'E8 H256 I512 k2 silu, packed weights', e: 8, h: 256, inter: 512, k: 2, packed: true },
  { name: 'E4 H2100 I161 k2 silu, packed weights (odd k of GEMM2, k blocks)', e: 4, h: 2100, inter: 161, k: 2, packed: true },
  {
    name: 'E6 H96 I1100 k1 swiglu-oai, biases, skewed routing, packed weights',
    e: 6, h: 96, inter: 1100, k: 1, oai: true, biases: 'all', skewed: true, packed: true,
  },
  {
    name: 'E6 H96 I1100 k1 swiglu-oai, biases, skewed routing, -1 ids, absent expert',
    e: 6, h: 96, inter: 1100, k: 1, oai: true, biases: 'all', skewed: true,
  },
];

function routing(s: Spec, seed: number): { ids: Int32Array; w: Float32Array } {
  const r = rng(seed);
  const ids = new Int32Array(T_MAX * s.k);
  const w = new Float32Array(T_MAX * s.k);
  const perm = Array.from({ length: s.e }, (_, i) => i);
  for (let t = 0; t < T_MAX; t++) {
    for (let j = 0; j < s.k; j++) {
      const p = j + Math.floor(r() * (s.e - j));
      [perm[j], perm[p]] = [perm[p]!, perm[j]!];
      ids[t * s.k + j] = perm[j]!;
      w[t * s.k + j] = 0.1 + r();
    }
    if (s.skewed) {
      if (r() < 0.5) {
        for (let j = 1; j < s.k; j++) if (ids[t * s.k + j] === 0) ids[t * s.k + j] = ids[t * s.k]!;
        ids[t * s.k] = 0;
      }
      for (let j = 0; j < s.k; j++) if (r() < 0.1) ids[t * s.k + j] = -1;
    }
  }
  return { ids, w };
}

/** Runs moeExperts on tokens [0, t) of the problem; returns the [t, H] bf16 output bits. */
type Runner = (t0: number, t: number) => Promise<Uint16Array>;

async function setup(be: Backend, s: Spec, seed: number): Promise<Runner> {
  const { e, h, inter, k } = s;
  const table = be.expertTable(e, { hidden: h, intermediate: inter, packed: s.packed ?? false });
  for (let x = 0; x < e; x++) {
    if (s.skewed && x === e - 1) continue; // absent
    const base = seed * 977 + x * 11;
    const gate = uniform('bf16', [inter, h], 0.1, base);
    const up = uniform('bf16', [inter, h], 0.1, base + 1);
    const down = uniform('bf16', [h, inter], 0.1, base + 2);
    const withBias = s.biases === 'all' || (s.biases === 'even' && x % 2 === 0);
    const amp = s.oai ? 3 : 0.1;
    const bg = withBias ? uniform('f32', [inter], amp, base + 3) : undefined;
    const bu = withBias ? uniform('f32', [inter], amp, base + 4) : undefined;
    const bd = withBias ? uniform('f32', [h], 0.5, base + 5) : undefined;
    if (s.stacked) {
      const gu = new HostTensor('bf16', [2 * inter, h]);
      gu.data.set(gate.data, 0);
      gu.data.set(up.data, inter * h);
      let gub: HostTensor<'f32'> | undefined;
      if (bg && bu) {
        gub = new HostTensor('f32', [2 * inter]) as HostTensor<'f32'>;
        gub.data.set(bg.data, 0);
        gub.data.set(bu.data, inter);
      }
      table.set(x, { gateUp: gu, down, ...(gub && bd ? { gateUpBias: gub, downBias: bd } : {}) });
    } else if (s.packed) {
      const [gp, upk, dp] = [await be.packWeights(gate), await be.packWeights(up), await be.packWeights(down)];
      table.set(x, { gate: gp, up: upk, down: dp, ...(bg && bu && bd ? { gateBias: bg, upBias: bu, downBias: bd } : {}) });
    } else {
      table.set(x, { gate, up, down, ...(bg && bu && bd ? { gateBias: bg, upBias: bu, downBias: bd } : {}) });
    }
  }
  // swiglu-oai: sums spread enough to pass the clamp limit on both sides (as test/moe-oai.test.ts)
  const x = uniform('bf16', [T_MAX, h], s.oai ? 120 / Math.sqrt(h) : 1, seed + 3);
  const { ids, w } = routing(s, seed + 5);
  return async (t0, t) => {
    const out = new HostTensor('bf16', [t, h]);
    out.data.fill(0x7fc0); // NaN: every element must be written
    await be.moeExperts({
      x: x.rows(t0, t),
      topkIds: new HostTensor('i32', [t, k], ids.slice(t0 * k, (t0 + t) * k)),
      topkWeights: new HostTensor('f32', [t, k], w.slice(t0 * k, (t0 + t) * k)),
      experts: table,
      out,
      ...(s.oai ? { activation: OAI } : {}),
    });
    return out.data as Uint16Array;
  };
}

/** The first difference between the rows of `got` and `want` ([t, h] bits), or undefined. */
function firstDiff(got: Uint16Array, want: Uint16Array, h: number): string | undefined {
  let count = 0;
  let first = -1;
  for (let i = 0; i < got.length; i++) {
    if (got[i] !== want[i]) {
      count++;
      if (first < 0) first = i;
    }
  }
  if (count === 0) return undefined;
  const hex = (v: number): string => `0x${v.toString(16).padStart(4, '0')}`;
  return `${count} of ${got.length} elements differ; first: token ${Math.floor(first / h)}, column ${first % h}: ` +
    `${hex(got[first]!)} batched vs ${hex(want[first]!)} alone`;
}

const cpuBackends = harnessBackends().filter((hb) => hb.name.startsWith('cpu-'));

for (const s of SPECS) {
  for (const hb of cpuBackends) {
    const skip = hb.available ? false : hb.reason ?? 'unavailable';
    void test(`moeExperts batch invariance: ${s.name} on ${hb.name}`, { skip }, async (t) => {
      const be = hb.open();
      const run = await setup(be, s, 1000 + SPECS.indexOf(s));
      const alone = new Uint16Array(T_MAX * s.h); // [T_MAX, H]: each token on its own (T = 1)
      for (let i = 0; i < T_MAX; i++) alone.set(await run(i, 1), i * s.h);
      for (let i = 0; i < alone.length; i++) {
        assert.ok((alone[i]! & 0x7fff) <= 0x7f80, `token ${Math.floor(i / s.h)} alone: NaN at column ${i % s.h}`);
      }
      for (const T of TS) {
        const got = await run(0, T);
        const d = firstDiff(got, alone.subarray(0, T * s.h), s.h);
        assert.equal(d, undefined, `T = ${T}: ${d}`);
      }
      // a window that does not start at token 0: the same rows again
      const got = await run(100, 64);
      const d = firstDiff(got, alone.subarray(100 * s.h, 164 * s.h), s.h);
      assert.equal(d, undefined, `tokens 100..163: ${d}`);
      t.diagnostic(`T = 1 alone vs ${TS.join(', ')} and a window of 64: bitwise equal (${be.isa})`);
    });
  }
}

// ---- gemm (guard) ------------------------------------------------------------------------------------------------

// gemm sums a row the same way for every m (its small-m streaming path and its tiles: same k blocks, same reduction
// tree; see gemm.cc). This guard keeps it so: it fails if a change to either path breaks it on any tier.
for (const hb of cpuBackends) {
  const skip = hb.available ? false : hb.reason ?? 'unavailable';
  void test(`gemm batch invariance (guard): M = 1..300 rows equal M = 1 on ${hb.name}`, { skip }, async (t) => {
    const be = hb.open();
    const N = 70; // over one 64-column tile
    const K = 1100; // over one k block of every tier, with a tail
    const a = uniform('bf16', [T_MAX, K], 1, 71);
    const b = uniform('bf16', [N, K], 0.1, 72);
    const alone = new Float32Array(T_MAX * N);
    for (let r = 0; r < T_MAX; r++) {
      const o = new HostTensor('f32', [1, N]);
      await be.gemm(a.rows(r, 1), b, o);
      alone.set(o.data as Float32Array, r * N);
    }
    const bad: string[] = [];
    for (let M = 2; M <= T_MAX; M++) {
      const o = new HostTensor('f32', [M, N]);
      await be.gemm(a.rows(0, M), b, o);
      let diff = 0;
      for (let i = 0; i < M * N; i++) if (!Object.is(o.data[i], alone[i])) diff++;
      if (diff > 0) bad.push(`M=${M}: ${diff}`);
    }
    t.diagnostic(bad.length ? `${bad.length} of 299 M values differ from M = 1 (${bad.slice(0, 4).join(', ')}, ...)`
      : 'every M bitwise equal to M = 1');
    assert.equal(bad.length, 0, `rows differing from M = 1: ${bad.slice(0, 8).join(', ')}`);
  });
}
