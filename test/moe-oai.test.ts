/**
 * moeExperts with the gpt-oss options (per-expert f32 biases, the clamped swiglu-oai activation) through the op
 * harness: every case on every backend present (cpu-scalar, cpu-avx2, cpu-avx512, cpu-avx512bf16, cuda:N; absent
 * ones skipped with their reason) against a float64 reference of HF GptOssExperts written here:
 *   g = x·Wgᵀ + bg, u = x·Wuᵀ + bu, g = min(g, limit), u = clamp(u, -limit, limit),
 *   act = (u + 1) · g · sigmoid(alpha · g), y[t] = Σ_j w[t,j] · (act·Wdᵀ + bd)
 * (silu: act = silu(g) · u). Shapes cover the CPU's decode streaming path (T = 1, experts with <= 16 rows, rows
 * longer than 2048 walked side by side, odd intermediate sizes) and its blocked path (T = 64 with all tokens on one
 * expert), stacked gateUp + gateUpBias, experts absent from the table, -1 ids, and tables mixing experts with and
 * without biases. swiglu-oai inputs are scaled so that the gate and up sums exceed the limit for some elements
 * (each case asserts that its reference hit every clamp: gate > limit, up > limit and up < -limit).
 * Tolerance: ||y - ref|| / ||ref|| <= 1e-2 (as test/moe-ops.test.ts) and max |y - ref| <= 2e-2 · max(1, max|ref|)
 * (these outputs reach tens, where bf16's own rounding is 2^-9 relative); two runs bitwise identical; tokens with
 * no present expert exactly 0 (no bias leaks into them); activation { kind: 'silu' } is bitwise the default.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type Backend, type ExpertTable, HostTensor, InvalidArgumentError, type KernelTier, type MoeActivation, type Tensor } from '../lib/index.js';
import { harnessBackends, onBackend, placer } from './harness/backends.js';
import { rng } from './harness/ref.js';
import { randomIds, uniform, values } from './harness/inputs.js';
import { type OpCase, runCaseTable } from './harness/table.js';

const OAI: MoeActivation = { kind: 'swiglu-oai', alpha: 1.702, limit: 7 };

// ---- inputs ----------------------------------------------------------------------------------------------------

interface ExpertW {
  gate: HostTensor<'bf16'>;
  up: HostTensor<'bf16'>;
  down: HostTensor<'bf16'>;
  bias?: { gate: HostTensor<'f32'>; up: HostTensor<'f32'>; down: HostTensor<'f32'> };
}

interface Problem {
  t: number;
  h: number;
  inter: number;
  e: number;
  k: number;
  x: HostTensor<'bf16'>;
  ids: Int32Array;
  w: Float32Array;
  weights: Array<ExpertW | undefined>;
  stacked: boolean;
  activation: MoeActivation | undefined;
}

interface Spec {
  name: string;
  t: number;
  h: number;
  inter: number;
  e: number;
  k: number;
  activation?: MoeActivation;
  /** which present experts get biases */
  biases: 'all' | 'none' | 'even';
  stacked?: boolean;
  absent?: number[];
  ids?: (t: number, k: number, e: number) => Int32Array;
  zeroTokens?: number[];
  heavy?: boolean;
}

function makeProblem(s: Spec, seed: number): Problem {
  const { t, h, inter, e, k } = s;
  const ids = s.ids?.(t, k, e) ?? randomIds(t, k, e, seed);
  const r = rng(seed + 7);
  const w = new Float32Array(t * k);
  for (let i = 0; i < w.length; i++) w[i] = 0.1 + r();
  const oai = s.activation?.kind === 'swiglu-oai';
  // swiglu-oai: |x| up to 120 / sqrt(H) makes the gate and up sums' spread about 4 (weights in [-0.1, 0.1]), and
  // biases in [-3, 3] shift them: enough elements pass the limit 7 on either side. silu: vLLM's 1/10 scale.
  const xAmp = oai ? 120 / Math.sqrt(h) : 0.1;
  const used = new Set<number>(ids);
  const weights: Problem['weights'] = [];
  for (let x = 0; x < e; x++) {
    if (!used.has(x) || s.absent?.includes(x)) {
      weights.push(undefined);
      continue;
    }
    const base = seed * 131 + x * 7;
    const ew: ExpertW = {
      gate: uniform('bf16', [inter, h], 0.1, base),
      up: uniform('bf16', [inter, h], 0.1, base + 1),
      down: uniform('bf16', [h, inter], 0.1, base + 2),
    };
    if (s.biases === 'all' || (s.biases === 'even' && x % 2 === 0)) {
      const amp = oai ? 3 : 0.1;
      ew.bias = { gate: uniform('f32', [inter], amp, base + 3), up: uniform('f32', [inter], amp, base + 4), down: uniform('f32', [h], 0.5, base + 5) };
    }
    weights.push(ew);
  }
  return { t, h, inter, e, k, x: uniform('bf16', [t, h], xAmp, seed + 3), ids, w, weights, stacked: s.stacked ?? false, activation: s.activation };
}

// ---- float64 reference -----------------------------------------------------------------------------------------

interface Ref {
  y: Float64Array;
  /** elements (over routed (token, expert) pairs and n) where gate > limit, up > limit, up < -limit */
  clamps: { gateHi: number; upHi: number; upLo: number; total: number };
}

function refMoe(p: Problem): Ref {
  const { t, h, inter, k } = p;
  const x = values(p.x);
  const vals = p.weights.map((wt) =>
    wt
      ? {
          g: values(wt.gate),
          u: values(wt.up),
          d: values(wt.down),
          bg: wt.bias ? values(wt.bias.gate) : undefined,
          bu: wt.bias ? values(wt.bias.up) : undefined,
          bd: wt.bias ? values(wt.bias.down) : undefined,
        }
      : undefined,
  );
  const a = p.activation;
  const y = new Float64Array(t * h);
  const act = new Float64Array(inter);
  const clamps = { gateHi: 0, upHi: 0, upLo: 0, total: 0 };
  for (let i = 0; i < t; i++) {
    for (let j = 0; j < k; j++) {
      const e = p.ids[i * k + j]!;
      const v = e >= 0 ? vals[e] : undefined;
      if (!v) continue;
      for (let n = 0; n < inter; n++) {
        let g = v.bg ? v.bg[n]! : 0;
        let u = v.bu ? v.bu[n]! : 0;
        for (let c = 0; c < h; c++) {
          g += x[i * h + c]! * v.g[n * h + c]!;
          u += x[i * h + c]! * v.u[n * h + c]!;
        }
        if (a?.kind === 'swiglu-oai') {
          clamps.total++;
          if (g > a.limit) clamps.gateHi++;
          if (u > a.limit) clamps.upHi++;
          if (u < -a.limit) clamps.upLo++;
          g = Math.min(g, a.limit);
          u = Math.min(Math.max(u, -a.limit), a.limit);
          act[n] = (u + 1) * (g / (1 + Math.exp(-a.alpha * g)));
        } else {
          act[n] = (g / (1 + Math.exp(-g))) * u;
        }
      }
      const wj = p.w[i * k + j]!;
      for (let c = 0; c < h; c++) {
        let s = v.bd ? v.bd[c]! : 0;
        for (let n = 0; n < inter; n++) s += act[n]! * v.d[c * inter + n]!;
        y[i * h + c] = y[i * h + c]! + wj * s;
      }
    }
  }
  return { y, clamps };
}

// ---- running the op ----------------------------------------------------------------------------------------------

function stackRows(a: HostTensor<'bf16'>, b: HostTensor<'bf16'>): HostTensor<'bf16'> {
  const d = new Uint16Array(a.data.length + b.data.length);
  d.set(a.data, 0);
  d.set(b.data, a.data.length);
  return new HostTensor('bf16', [a.shape[0]! * 2, a.shape[1]!], d);
}
function stackF32(a: HostTensor<'f32'>, b: HostTensor<'f32'>): HostTensor<'f32'> {
  const d = new Float32Array(a.data.length + b.data.length);
  d.set(a.data, 0);
  d.set(b.data, a.data.length);
  return new HostTensor('f32', [d.length], d);
}

async function buildTable(be: Backend, p: Problem): Promise<{ table: ExpertTable; dispose: () => void }> {
  const table = be.expertTable(p.e, { hidden: p.h, intermediate: p.inter });
  const placed = placer(be);
  const place = placed.put;
  for (let x = 0; x < p.e; x++) {
    const wt = p.weights[x];
    if (!wt) continue;
    const b = wt.bias;
    if (p.stacked) {
      table.set(x, {
        gateUp: await place(stackRows(wt.gate, wt.up)),
        down: await place(wt.down),
        ...(b ? { gateUpBias: await place(stackF32(b.gate, b.up)), downBias: await place(b.down) } : {}),
      });
    } else {
      table.set(x, {
        gate: await place(wt.gate),
        up: await place(wt.up),
        down: await place(wt.down),
        ...(b ? { gateBias: await place(b.gate), upBias: await place(b.up), downBias: await place(b.down) } : {}),
      });
    }
    assert.equal(table.hasBiases(x), b !== undefined);
  }
  return { table, dispose: () => placed.dispose() };
}

async function runMoe(be: Backend, p: Problem, table: ExpertTable, activation: MoeActivation | undefined): Promise<{ out: HostTensor<'bf16'>; tier: KernelTier }> {
  const out = new HostTensor('bf16', [p.t, p.h]);
  out.data.fill(0x7fc0); // NaN: every element must be written
  const ids = new HostTensor('i32', [p.t, p.k], p.ids);
  const w = new HostTensor('f32', [p.t, p.k], p.w);
  const tier = await onBackend(be, [p.x, ids, w], [out], (i, o) =>
    be.moeExperts({ x: i[0]!, topkIds: i[1]!, topkWeights: i[2]!, experts: table, out: o[0]!, ...(activation ? { activation } : {}) }),
  );
  return { out: out as HostTensor<'bf16'>, tier };
}

// ---- cases -------------------------------------------------------------------------------------------------------

/** expert 2 (with biases under 'even') in slot 0 of every token: 64 rows, the CPU's blocked path on every tier */
const allOnOne = (t: number, k: number, e: number): Int32Array => {
  const ids = randomIds(t, k, e, 99);
  for (let i = 0; i < t; i++) {
    for (let j = 0; j < k; j++) if (ids[i * k + j] === 2) ids[i * k + j] = ids[i * k]!;
    ids[i * k] = 2;
  }
  return ids;
};
/** token 0: an absent expert (1) then -1; some -1 elsewhere. */
const absentAndMinusOne = (t: number, k: number, e: number): Int32Array => {
  const ids = randomIds(t, k, e, 41);
  const r = rng(43);
  for (let i = 0; i < ids.length; i++) if (r() < 0.2) ids[i] = -1;
  ids.fill(1, 0, k);
  if (k > 1) ids[1] = -1;
  return ids;
};

const SPECS: Spec[] = [];
for (const t of [1, 64]) {
  const d = t === 1 ? 'decode' : 'batched';
  SPECS.push(
    { name: `silu + biases ${d}`, t, h: 128, inter: 96, e: 8, k: 2, biases: 'all' },
    { name: `silu + biases, explicit activation ${d}`, t, h: 128, inter: 96, e: 8, k: 2, biases: 'all', activation: { kind: 'silu' } },
    { name: `swiglu-oai, no biases ${d}`, t, h: 128, inter: 96, e: 8, k: 2, biases: 'none', activation: OAI },
    { name: `swiglu-oai + biases ${d}`, t, h: 128, inter: 96, e: 8, k: 2, biases: 'all', activation: OAI },
    { name: `swiglu-oai + gateUpBias (stacked) ${d}`, t, h: 128, inter: 96, e: 8, k: 2, biases: 'all', activation: OAI, stacked: true },
    t === 1
      ? // decode: slots on an absent expert, -1, an expert with biases (2) and one without (3)
        { name: `swiglu-oai, mixed biases, absent expert, -1 id ${d}`, t, h: 64, inter: 64, e: 8, k: 4, biases: 'even', activation: OAI, absent: [1, 5], ids: () => Int32Array.from([1, 2, -1, 3]) }
      : { name: `swiglu-oai, mixed biases, absent experts, -1 ids ${d}`, t, h: 64, inter: 64, e: 8, k: 2, biases: 'even', activation: OAI, absent: [1, 5], ids: absentAndMinusOne, zeroTokens: [0] },
    { name: `silu, mixed biases ${d}`, t, h: 64, inter: 64, e: 8, k: 2, biases: 'even' },
  );
}
SPECS.push(
  { name: 'swiglu-oai + biases, all tokens on one expert (blocked path)', t: 64, h: 64, inter: 64, e: 8, k: 2, biases: 'even', activation: OAI, ids: allOnOne },
  { name: 'swiglu-oai + biases, odd I (tails)', t: 7, h: 96, inter: 97, e: 8, k: 2, biases: 'all', activation: OAI },
  { name: 'swiglu-oai + biases, E=32 top-4 decode (gpt-oss routing)', t: 1, h: 256, inter: 96, e: 32, k: 4, biases: 'all', activation: OAI },
  { name: 'swiglu-oai + biases, other alpha and limit', t: 7, h: 128, inter: 64, e: 8, k: 2, biases: 'all', activation: { kind: 'swiglu-oai', alpha: 1, limit: 3.5 } },
  { name: 'swiglu-oai + biases, rows > 2048 (side-by-side walk)', t: 3, h: 2085, inter: 40, e: 8, k: 2, biases: 'all', activation: OAI, heavy: true },
  { name: 'swiglu-oai + biases, K=2100 in GEMM2', t: 3, h: 48, inter: 2100, e: 8, k: 2, biases: 'all', activation: OAI, heavy: true },
);

const cache = new Map<string, { p: Problem; ref: Ref }>();
function problemFor(s: Spec, i: number): { p: Problem; ref: Ref } {
  let c = cache.get(s.name);
  if (!c) {
    const p = makeProblem(s, 1000 + i * 17);
    c = { p, ref: refMoe(p) };
    cache.set(s.name, c);
  }
  return c;
}

const CASES: OpCase[] = SPECS.map((s, i) => ({
  op: 'moeExperts',
  name: `moeExperts ${s.name} T=${s.t} H=${s.h} I=${s.inter} E=${s.e} k=${s.k}`,
  heavy: s.heavy,
  async run(be: Backend) {
    const { p, ref } = problemFor(s, i);
    if (s.activation?.kind === 'swiglu-oai') {
      const c = ref.clamps;
      assert.ok(c.gateHi > 0 && c.upHi > 0 && c.upLo > 0, `inputs must hit every clamp: gate>limit ${c.gateHi}, up>limit ${c.upHi}, up<-limit ${c.upLo} of ${c.total}`);
    }
    const { table, dispose } = await buildTable(be, p);
    try {
      const a = await runMoe(be, p, table, s.activation);
      const b = await runMoe(be, p, table, s.activation);
      assert.ok(Buffer.compare(Buffer.from(a.out.data.buffer), Buffer.from(b.out.data.buffer)) === 0, 'two runs differ');
      if (s.activation?.kind === 'silu') {
        const c = await runMoe(be, p, table, undefined);
        assert.ok(Buffer.compare(Buffer.from(a.out.data.buffer), Buffer.from(c.out.data.buffer)) === 0, "activation { kind: 'silu' } differs from the default");
      }
      const got = a.out.toFloat32();
      let num = 0;
      let den = 0;
      let maxAbs = 0;
      let maxRef = 0;
      for (let i = 0; i < ref.y.length; i++) {
        if (Number.isNaN(got[i]!)) assert.fail(`out[${i}] is NaN (not written?)`);
        const d = got[i]! - ref.y[i]!;
        num += d * d;
        den += ref.y[i]! * ref.y[i]!;
        maxAbs = Math.max(maxAbs, Math.abs(d));
        maxRef = Math.max(maxRef, Math.abs(ref.y[i]!));
      }
      assert.ok(den > 0, 'reference is all zeros');
      const rel = Math.sqrt(num / den);
      const absTol = 2e-2 * Math.max(1, maxRef);
      assert.ok(rel <= 1e-2, `relative L2 error ${rel.toExponential(2)} > 1e-2`);
      assert.ok(maxAbs <= absTol, `max abs error ${maxAbs.toExponential(2)} > ${absTol.toExponential(2)} (max |ref| ${maxRef.toFixed(2)})`);
      for (const tz of s.zeroTokens ?? []) {
        for (let c = 0; c < s.h; c++) assert.equal(a.out.data[tz * s.h + c], 0, `token ${tz} must be exactly +0`);
      }
      const cl = s.activation?.kind === 'swiglu-oai' ? `, clamped gate ${ref.clamps.gateHi}/up ${ref.clamps.upHi + ref.clamps.upLo} of ${ref.clamps.total}` : '';
      return { tier: a.tier, metric: `rel ${rel.toExponential(2)}, max abs ${maxAbs.toExponential(2)} (max |ref| ${maxRef.toFixed(2)})${cl}` };
    } finally {
      dispose();
    }
  },
}));

runCaseTable('moe gpt-oss options', CASES);

// ---- bad inputs: typed errors ------------------------------------------------------------------------------------

void test('moeExperts gpt-oss options reject bad biases and activations with typed errors', async () => {
  const be = harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
  const I = 8;
  const H = 16;
  const table = be.expertTable(4, { hidden: H, intermediate: I });
  const gate = uniform('bf16', [I, H], 0.1, 1);
  const up = uniform('bf16', [I, H], 0.1, 2);
  const down = uniform('bf16', [H, I], 0.1, 3);
  const gateUp = stackRows(gate, up);
  const bg = uniform('f32', [I], 1, 4);
  const bu = uniform('f32', [I], 1, 5);
  const bd = uniform('f32', [H], 1, 6);
  const bgu = stackF32(bg, bu);
  const invalid = (fn: () => unknown, re: RegExp): void => assert.throws(fn, (e: unknown) => e instanceof InvalidArgumentError && re.test(e.message));

  // all of an expert's biases or none
  invalid(() => table.set(0, { gate, up, down, gateBias: bg }), /expert 0 biases must be gateBias, upBias and downBias together or none, received gateBias$/);
  invalid(() => table.set(0, { gate, up, down, gateBias: bg, upBias: bu }), /received gateBias, upBias$/);
  invalid(() => table.set(0, { gateUp, down, gateUpBias: bgu }), /expert 0 biases must be gateUpBias and downBias together or none, received gateUpBias$/);
  invalid(() => table.set(0, { gateUp, down, downBias: bd }), /received downBias$/);
  // the bias names of the other form
  invalid(() => table.set(0, { gateUp, down, gateBias: bg, upBias: bu, downBias: bd } as never), /stacked form takes gateUpBias \[16\], not gateBias or upBias/);
  invalid(() => table.set(0, { gate, up, down, gateUpBias: bgu, downBias: bd } as never), /gateUpBias goes with gateUp/);
  // dtype, shape, kind
  invalid(() => table.set(0, { gate, up, down, gateBias: uniform('bf16', [I], 1, 7), upBias: bu, downBias: bd }), /expert 0 gateBias\.dtype must be f32, received bf16/);
  invalid(() => table.set(0, { gate, up, down, gateBias: bg, upBias: uniform('f32', [I + 1], 1, 8), downBias: bd }), /expert 0 upBias must be \[8\], received \[9\]/);
  invalid(() => table.set(0, { gate, up, down, gateBias: bg, upBias: bu, downBias: bg }), /expert 0 downBias must be \[16\], received \[8\]/);
  invalid(() => table.set(0, { gateUp, down, gateUpBias: bg, downBias: bd }), /expert 0 gateUpBias must be \[16\], received \[8\]/);
  invalid(() => table.set(0, { gate, up, down, gateBias: bg, upBias: bu, downBias: [1, 2] as unknown as Tensor }), /expert 0 downBias must be a HostTensor or DeviceTensor/);
  // a rejected set leaves the entry as it was
  table.set(0, { gate, up, down });
  invalid(() => table.set(0, { gate, up, down, gateBias: bg }), /together or none/);
  assert.ok(table.has(0) && !table.hasBiases(0));
  table.set(1, { gateUp, down, gateUpBias: bgu, downBias: bd });
  assert.ok(table.hasBiases(1));

  // activation
  const x = uniform('bf16', [2, H], 1, 9);
  const ok = { x, topkIds: new HostTensor('i32', [2, 2], Int32Array.from([0, 1, 1, -1])), topkWeights: new HostTensor('f32', [2, 2], Float32Array.from([0.5, 0.5, 1, 1])), experts: table, out: new HostTensor('bf16', [2, H]) };
  await be.moeExperts({ ...ok, activation: OAI }); // the valid call works
  invalid(() => be.moeExperts({ ...ok, activation: { kind: 'gelu' } as never }), /activation\.kind must be 'silu' or 'swiglu-oai', received/);
  invalid(() => be.moeExperts({ ...ok, activation: null as never }), /activation must be \{ kind: 'silu' \} or/);
  invalid(() => be.moeExperts({ ...ok, activation: { kind: 'swiglu-oai', alpha: Number.NaN, limit: 7 } }), /activation\.alpha must be a finite number, received NaN/);
  invalid(() => be.moeExperts({ ...ok, activation: { kind: 'swiglu-oai', alpha: 1.702 } as never }), /activation\.limit must be a finite number > 0, received undefined/);
  invalid(() => be.moeExperts({ ...ok, activation: { kind: 'swiglu-oai', alpha: 1.702, limit: 0 } }), /activation\.limit must be a finite number > 0, received 0/);
  invalid(() => be.moeExperts({ ...ok, activation: { kind: 'swiglu-oai', alpha: 1.702, limit: Infinity } }), /activation\.limit/);
});

void test('a disposed bias is reported when the op is called', async () => {
  const be = harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
  const table = be.expertTable(2, { hidden: 8, intermediate: 4 });
  const bias = { gateBias: uniform('f32', [4], 1, 1), upBias: uniform('f32', [4], 1, 2), downBias: uniform('f32', [8], 1, 3) };
  table.set(0, { gate: uniform('bf16', [4, 8], 0.1, 4), up: uniform('bf16', [4, 8], 0.1, 5), down: uniform('bf16', [8, 4], 0.1, 6), ...bias });
  const args = { x: uniform('bf16', [1, 8], 1, 7), topkIds: new HostTensor('i32', [1, 1], Int32Array.from([0])), topkWeights: new HostTensor('f32', [1, 1], Float32Array.from([1])), experts: table, out: new HostTensor('bf16', [1, 8]) };
  await be.moeExperts(args);
  bias.downBias.dispose();
  assert.throws(() => be.moeExperts(args), /experts\[0\]\.downBias/);
});
