/**
 * Rotary embedding (Backend.rope, cpp/cpu/rope.cc; lib/rope.ts parameters) against an independent float64
 * reference: inv_freq re-derived here from the HF formulas (_compute_default_rope_parameters,
 * _compute_llama3_parameters, _compute_yarn_parameters) written per element, and the rotate_half rotation
 * computed in float64 from the f32 inv_freq the kernel receives. Every backend (all CPU tiers; CUDA when present),
 * f32 and bf16, odd token counts, scattered non-contiguous positions up to ~1.3e5, partial rotary dims, q and k
 * with different head counts, all three scaling types. Tolerances: f32 |err| <= 2e-6 (1 + |ref|) per element;
 * bf16 |err| <= 2^-8 |ref| + 1e-6 (one rounding of the result; inputs are bf16 values); elements past rotaryDim
 * bit-identical to the input.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import {
  type Backend,
  HostTensor,
  InvalidArgumentError,
  UnsupportedModelError,
  parseModelConfig,
  ropeFromConfig,
  ropeParameters,
  ropeScalingFromHf,
  yarnSoftmaxScale,
  type RopeScaling,
} from '../lib/index.js';
import { harnessBackends } from './harness/backends.js';
import { rng } from './harness/ref.js';

// ---- independent float64 inv_freq (HF modeling_rope_utils, element by element) -----------------------------------
function refInvFreq(theta: number, dim: number, s: RopeScaling): { inv: number[]; att: number } {
  const inv: number[] = [];
  for (let j = 0; j < dim; j += 2) inv.push(Math.pow(theta, -j / dim));
  if (s.type === 'default') return { inv, att: 1 };
  if (s.type === 'llama3') {
    const out = inv.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      const lowWl = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
      const highWl = s.originalMaxPositionEmbeddings / s.highFreqFactor;
      const llama = wavelen > lowWl ? f / s.factor : f;
      const medium = !(wavelen < highWl) && !(wavelen > lowWl);
      if (!medium) return llama;
      const smooth = (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      return ((1 - smooth) * llama) / s.factor + smooth * llama;
    });
    return { inv: out, att: 1 };
  }
  // yarn
  const bf = s.betaFast ?? 32;
  const bsl = s.betaSlow ?? 1;
  const cd = (n: number): number => (dim * Math.log(s.originalMaxPositionEmbeddings / (n * 2 * Math.PI))) / (2 * Math.log(theta));
  let lo = cd(bf);
  let hi = cd(bsl);
  if (s.truncate !== false) [lo, hi] = [Math.floor(lo), Math.ceil(hi)];
  lo = Math.max(lo, 0);
  hi = Math.min(hi, dim - 1);
  if (lo === hi) hi += 0.001;
  const out = inv.map((f, i) => {
    const lin = Math.min(Math.max((i - lo) / (hi - lo), 0), 1);
    const extrapolationFactor = 1 - lin;
    return (f / s.factor) * (1 - extrapolationFactor) + f * extrapolationFactor;
  });
  const ms = (sc: number, m: number): number => (sc <= 1 ? 1 : 0.1 * m * Math.log(sc) + 1);
  const att = s.attentionFactor ?? (s.mscale && s.mscaleAllDim ? ms(s.factor, s.mscale) / ms(s.factor, s.mscaleAllDim) : ms(s.factor, 1));
  return { inv: out, att };
}

interface Case {
  name: string;
  dtype: 'f32' | 'bf16';
  T: number;
  qHeads: number;
  kvHeads: number;
  hd: number;
  rd: number;
  theta: number;
  scaling: RopeScaling;
}

const LLAMA3: RopeScaling = { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
const YARN_GPTOSS: RopeScaling = { type: 'yarn', factor: 32, betaFast: 32, betaSlow: 1, originalMaxPositionEmbeddings: 4096, truncate: false };
const YARN_DSV2: RopeScaling = { type: 'yarn', factor: 40, betaFast: 32, betaSlow: 1, originalMaxPositionEmbeddings: 4096, mscale: 0.707, mscaleAllDim: 0.707 };
const YARN_MS: RopeScaling = { type: 'yarn', factor: 40, betaFast: 32, betaSlow: 1, originalMaxPositionEmbeddings: 4096, mscale: 1, mscaleAllDim: 0.5 };

const CASES: Case[] = [];
for (const dtype of ['f32', 'bf16'] as const) {
  CASES.push({ name: `default qwen3 ${dtype}`, dtype, T: 37, qHeads: 8, kvHeads: 2, hd: 128, rd: 128, theta: 1e6, scaling: { type: 'default' } });
  CASES.push({ name: `default partial rd=40 ${dtype}`, dtype, T: 13, qHeads: 3, kvHeads: 1, hd: 96, rd: 40, theta: 1e4, scaling: { type: 'default' } });
  CASES.push({ name: `llama3 ${dtype}`, dtype, T: 21, qHeads: 5, kvHeads: 1, hd: 128, rd: 128, theta: 5e5, scaling: LLAMA3 });
  CASES.push({ name: `yarn gpt-oss ${dtype}`, dtype, T: 19, qHeads: 8, kvHeads: 1, hd: 64, rd: 64, theta: 150000, scaling: YARN_GPTOSS });
  CASES.push({ name: `yarn deepseek mla rope part ${dtype}`, dtype, T: 11, qHeads: 4, kvHeads: 1, hd: 64, rd: 64, theta: 1e4, scaling: YARN_DSV2 });
  CASES.push({ name: `yarn mscale ratio partial ${dtype}`, dtype, T: 9, qHeads: 2, kvHeads: 2, hd: 256, rd: 192, theta: 1e4, scaling: YARN_MS });
}

function makeCase(c: Case, seed: number): { q: HostTensor; k: HostTensor; pos: Int32Array } {
  const r = rng(seed);
  const pos = new Int32Array(c.T);
  // not contiguous: scattered, repeated, descending pieces, large values
  for (let t = 0; t < c.T; t++) pos[t] = t % 5 === 0 ? Math.floor(r() * 131072) : t % 5 === 1 ? t : t % 5 === 2 ? 7 : Math.floor(r() * 4000);
  const q = HostTensor.from(c.dtype, [c.T, c.qHeads, c.hd], Array.from({ length: c.T * c.qHeads * c.hd }, () => r() * 4 - 2));
  const k = HostTensor.from(c.dtype, [c.T, c.kvHeads, c.hd], Array.from({ length: c.T * c.kvHeads * c.hd }, () => r() * 4 - 2));
  return { q, k, pos };
}

/** float64 rotate_half rope of x [T, H, hd] with inv (as the kernel receives it) and att. */
function refRope(x: Float32Array, T: number, H: number, hd: number, rd: number, pos: Int32Array, inv: Float32Array, att: number): Float64Array {
  const out = Float64Array.from(x);
  const half = rd / 2;
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const b = (t * H + h) * hd;
      for (let i = 0; i < half; i++) {
        const a = pos[t]! * inv[i]!;
        const x1 = x[b + i]!;
        const x2 = x[b + i + half]!;
        out[b + i] = (x1 * Math.cos(a) - x2 * Math.sin(a)) * att;
        out[b + i + half] = (x2 * Math.cos(a) + x1 * Math.sin(a)) * att;
      }
    }
  return out;
}

function check(got: Float32Array, ref: Float64Array, input: Float32Array, c: Case, H: number, what: string): void {
  let worst = 0;
  for (let j = 0; j < got.length; j++) {
    const e = j % c.hd;
    if (e >= c.rd) {
      assert.equal(got[j], input[j], `${what}: element ${j} past rotaryDim changed`);
      continue;
    }
    const tol = c.dtype === 'f32' ? 2e-6 * (1 + Math.abs(ref[j]!)) : Math.abs(ref[j]!) / 256 + 1e-6;
    const err = Math.abs(got[j]! - ref[j]!);
    worst = Math.max(worst, err / tol);
    if (!(err <= tol)) assert.fail(`${what}: element ${j} (head ${Math.floor(j / c.hd) % H}) got ${got[j]} expected ${ref[j]} (tol ${tol})`);
  }
  assert.ok(worst <= 1);
}

async function runRope(be: Backend, q: HostTensor, k: HostTensor, pos: HostTensor, inv: HostTensor, att: number): Promise<string> {
  if (be.kind === 'cpu') return be.rope({ q, k, positions: pos, invFreq: inv, attentionScaling: att });
  const [dq, dk, dp, di] = await Promise.all([q, k, pos, inv].map((t) => be.upload(t)));
  try {
    const tier = await be.rope({ q: dq!, k: dk!, positions: dp!, invFreq: di!, attentionScaling: att });
    await be.copy(dq!, q);
    await be.copy(dk!, k);
    return tier;
  } finally {
    for (const t of [dq, dk, dp, di]) t!.dispose();
  }
}

void test('rope parameters: lib/rope.ts matches the independent HF-formula reference', () => {
  for (const [theta, dim, s] of [
    [1e6, 128, { type: 'default' }],
    [5e5, 128, LLAMA3],
    [5e5, 128, { type: 'llama3', factor: 16, lowFreqFactor: 1, highFreqFactor: 1, originalMaxPositionEmbeddings: 8192 }],
    [150000, 64, YARN_GPTOSS],
    [150000, 64, { ...YARN_GPTOSS, truncate: true }],
    [1e4, 64, YARN_DSV2],
    [1e4, 192, YARN_MS],
  ] as [number, number, RopeScaling][]) {
    const got = ropeParameters({ theta, rotaryDim: dim, scaling: s });
    const ref = refInvFreq(theta, dim, s);
    assert.equal(got.invFreq.length, dim / 2);
    for (let i = 0; i < dim / 2; i++) assert.ok(Math.abs(got.invFreq[i]! - ref.inv[i]!) <= 1e-7 * ref.inv[i]!, `${s.type} inv_freq[${i}]`);
    assert.ok(Math.abs(got.attentionScaling - ref.att) <= 1e-12, `${s.type} attention scaling ${got.attentionScaling} vs ${ref.att}`);
  }
  // the scaling actually moves low frequencies (guards against a reference that collapsed to default)
  const d = ropeParameters({ theta: 150000, rotaryDim: 64 });
  const y = ropeParameters({ theta: 150000, rotaryDim: 64, scaling: YARN_GPTOSS });
  assert.ok(Math.abs(y.invFreq[31]! * 32 - d.invFreq[31]!) <= 1e-6 * d.invFreq[31]!);
  assert.equal(y.invFreq[0], d.invFreq[0]);
  assert.ok(Math.abs(y.attentionScaling - (0.1 * Math.log(32) + 1)) < 1e-12);
  assert.ok(Math.abs(yarnSoftmaxScale(YARN_DSV2) - (0.1 * 0.707 * Math.log(40) + 1) ** 2) < 1e-12);
  assert.equal(yarnSoftmaxScale({ type: 'default' }), 1);
  // HF rope_scaling objects
  assert.deepEqual(ropeScalingFromHf(null), { type: 'default' });
  assert.equal(ropeScalingFromHf({ rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 }).type, 'llama3');
  assert.throws(() => ropeScalingFromHf({ type: 'longrope' }), UnsupportedModelError);
  assert.throws(() => ropeParameters({ theta: 1e4, rotaryDim: 63 }), InvalidArgumentError);
  assert.throws(() => ropeParameters({ theta: -1, rotaryDim: 64 }), InvalidArgumentError);
  assert.throws(() => ropeParameters({ theta: 1e4, rotaryDim: 64, scaling: { ...LLAMA3, factor: NaN } }), InvalidArgumentError);
});

void test('rope parameters from the model configs of DESIGN.md section 8', (t) => {
  const p = path.join(__dirname, '..', '..', '..', 'shared', 'data', 'model-configs.json');
  if (!fs.existsSync(p)) {
    t.skip(`${p} not present`);
    return;
  }
  const all = JSON.parse(fs.readFileSync(p, 'utf8')) as Record<string, { config: Record<string, unknown> }>;
  const seen = new Set<string>();
  for (const [name, { config }] of Object.entries(all)) {
    let c;
    try {
      c = parseModelConfig(config, name);
    } catch (e) {
      if (e instanceof UnsupportedModelError) continue;
      throw e;
    }
    if (c.ropeScaling && (c.ropeScaling.type ?? c.ropeScaling.rope_type) === 'longrope') {
      assert.throws(() => ropeFromConfig(c), UnsupportedModelError, name);
      continue;
    }
    const rp = ropeFromConfig(c);
    const s = ropeScalingFromHf(c.ropeScaling);
    seen.add(s.type);
    const ref = refInvFreq(c.ropeTheta, rp.rotaryDim, s);
    assert.equal(rp.rotaryDim, c.mla ? c.mla.qkRopeHeadDim : c.headDim, name);
    for (let i = 0; i < ref.inv.length; i++) assert.ok(Math.abs(rp.invFreq[i]! - ref.inv[i]!) <= 1e-7 * ref.inv[i]!, `${name} inv_freq[${i}]`);
    assert.ok(Math.abs(rp.attentionScaling - ref.att) < 1e-12, name);
  }
  assert.ok(seen.has('default') && seen.has('yarn'), [...seen].join(','));
  // llama3 (Llama 4 Scout; parseModelConfig does not take Llama 4 yet): from the raw rope_scaling
  const scout = all['Llama-4-Scout']?.config;
  if (scout) {
    const s = ropeScalingFromHf(scout.rope_scaling as Record<string, unknown>);
    assert.equal(s.type, 'llama3');
    const rp = ropeParameters({ theta: scout.rope_theta as number, rotaryDim: scout.head_dim as number, scaling: s });
    const ref = refInvFreq(scout.rope_theta as number, scout.head_dim as number, s);
    for (let i = 0; i < ref.inv.length; i++) assert.ok(Math.abs(rp.invFreq[i]! - ref.inv[i]!) <= 1e-7 * ref.inv[i]!, `Llama-4-Scout inv_freq[${i}]`);
  }
});

for (const hb of harnessBackends()) {
  void test(`rope on ${hb.name}`, { skip: hb.available ? false : hb.reason ?? 'unavailable' }, async () => {
    const be = hb.open();
    let seed = 11;
    for (const c of CASES) {
      const { q, k, pos } = makeCase(c, seed++);
      const rp = ropeParameters({ theta: c.theta, rotaryDim: c.rd, scaling: c.scaling });
      const qIn = q.toFloat32();
      const kIn = k.toFloat32();
      const posT = HostTensor.from('i32', [c.T], pos);
      const invT = HostTensor.from('f32', [c.rd / 2], rp.invFreq);
      await runRope(be, q, k, posT, invT, rp.attentionScaling);
      check(q.toFloat32(), refRope(qIn, c.T, c.qHeads, c.hd, c.rd, pos, rp.invFreq, rp.attentionScaling), qIn, c, c.qHeads, `${hb.name} ${c.name} q`);
      check(k.toFloat32(), refRope(kIn, c.T, c.kvHeads, c.hd, c.rd, pos, rp.invFreq, rp.attentionScaling), kIn, c, c.kvHeads, `${hb.name} ${c.name} k`);
    }
    if (be.kind !== 'cpu') return;
    // q only / k only
    const c = CASES[0]!;
    const { q, k, pos } = makeCase(c, 99);
    const rp = ropeParameters({ theta: c.theta, rotaryDim: c.rd });
    const posT = HostTensor.from('i32', [c.T], pos);
    const invT = HostTensor.from('f32', [c.rd / 2], rp.invFreq);
    const kIn = k.toFloat32();
    await be.rope({ k, positions: posT, invFreq: invT });
    check(k.toFloat32(), refRope(kIn, c.T, c.kvHeads, c.hd, c.rd, pos, rp.invFreq, 1), kIn, c, c.kvHeads, 'k only');
    // errors: synchronous shape checks, run-time position check
    assert.throws(() => be.rope({ positions: posT, invFreq: invT }), InvalidArgumentError);
    assert.throws(() => be.rope({ q, k: HostTensor.from('bf16', k.shape, k.toFloat32()), positions: posT, invFreq: invT }), /dtype/);
    assert.throws(() => be.rope({ q, positions: new HostTensor('i32', [c.T + 1]), invFreq: invT }), /positions must be/);
    assert.throws(() => be.rope({ q, positions: posT, invFreq: new HostTensor('f32', [c.hd]) }), /invFreq/);
    assert.throws(() => be.rope({ q, positions: posT, invFreq: invT, attentionScaling: NaN }), /attentionScaling/);
    assert.throws(() => be.rope({ q: new HostTensor('f32', [c.T, c.hd]), positions: posT, invFreq: invT }), /tokens, heads, headDim/);
    const badPos = HostTensor.from('i32', [c.T], Int32Array.from(pos, (x, i) => (i === 3 ? -5 : x)));
    await assert.rejects(be.rope({ q, positions: badPos, invFreq: invT }), (e: unknown) => e instanceof InvalidArgumentError && /positions\[3\] = -5/.test(e.message));
    const badInv = HostTensor.from('f32', [c.rd / 2], Float32Array.from(rp.invFreq, (x, i) => (i === 2 ? Infinity : x)));
    await assert.rejects(be.rope({ q, positions: posT, invFreq: badInv }), /inv_freq\[2\]/);
    const ac = new AbortController();
    ac.abort(new Error('stop rope'));
    await assert.rejects(be.rope({ q, positions: posT, invFreq: invT }, { signal: ac.signal }), /stop rope/);
  });
}
