/**
 * Fused MoE ops (issue 3) through the op harness: routerTopK, moeAlign and moeExperts, every case on every backend
 * present (cpu-scalar, cpu-avx2, cpu-avx512, cpu-avx512bf16, cuda:N; absent ones skipped with their reason)
 * against float64 references written here. Shapes: DESIGN.md section 6 (vLLM fused-MoE and llama.cpp MUL_MAT_ID)
 * scaled down for a 2-core CI machine: tokens {1, 2, 7, 33, 64, 222}, experts {8, 64, 128}, top-k {1, 2, 6, 8},
 * K = 511 in either GEMM, all tokens on one expert, empty experts, -1 ids, absent experts, stacked gate+up.
 * moeExperts tolerance (vLLM, inputs scaled by 1/10): ||y - ref|| / ||ref|| <= 1e-2 and max |y - ref| <= 2e-2;
 * two runs are bitwise identical; tokens whose experts are all absent are exactly 0.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type Backend, type ExpertTable, HostTensor, InvalidArgumentError, type KernelTier } from '../lib/index.js';
import { harnessBackends, onBackend, placer } from './harness/backends.js';
import { rng } from './harness/ref.js';
import { randomBf16, randomIds } from './harness/inputs.js';
import { refMoe } from './harness/ref-moe.js';
import { type OpCase, runCaseTable } from './harness/table.js';

const CASES: OpCase[] = [];

// ---- inputs and references -------------------------------------------------------------------------------------

interface MoeProblem {
  t: number;
  h: number;
  inter: number;
  e: number;
  k: number;
  x: HostTensor<'bf16'>;
  ids: Int32Array;
  w: Float32Array;
  /** per expert: gate [I, H], up [I, H], down [H, I] (undefined = absent) */
  weights: Array<{ gate: HostTensor<'bf16'>; up: HostTensor<'bf16'>; down: HostTensor<'bf16'> } | undefined>;
  stacked: boolean;
  /** on CPU backends: a packed table (Backend.packWeights, panel64); CUDA has no packed layout and runs row-major */
  packed: boolean;
}

function makeProblem(o: { t: number; h: number; inter: number; e: number; k: number; seed: number; ids?: Int32Array; absent?: number[]; stacked?: boolean; packed?: boolean }): MoeProblem {
  const { t, h, inter, e, k, seed } = o;
  const ids = o.ids ?? randomIds(t, k, e, seed);
  const r = rng(seed + 7);
  const w = new Float32Array(t * k);
  for (let i = 0; i < w.length; i++) w[i] = 0.1 + r();
  const used = new Set<number>(ids);
  const weights: MoeProblem['weights'] = [];
  for (let x = 0; x < e; x++) {
    // Only experts some token uses get weights (keeps big-E cases cheap); the rest are absent either way.
    if (!used.has(x) || o.absent?.includes(x)) {
      weights.push(undefined);
      continue;
    }
    weights.push({
      gate: randomBf16([inter, h], seed * 131 + x * 3),
      up: randomBf16([inter, h], seed * 131 + x * 3 + 1),
      down: randomBf16([h, inter], seed * 131 + x * 3 + 2),
    });
  }
  return { t, h, inter, e, k, x: randomBf16([t, h], seed + 3), ids, w, weights, stacked: o.stacked ?? false, packed: o.packed ?? false };
}

/** Stacks gate and up into one [2I, H] tensor. */
function stack(gate: HostTensor<'bf16'>, up: HostTensor<'bf16'>): HostTensor<'bf16'> {
  const [i, h] = gate.shape as [number, number];
  const d = new Uint16Array(2 * i * h);
  d.set(gate.data, 0);
  d.set(up.data, i * h);
  return new HostTensor('bf16', [2 * i, h], d);
}

/** Builds the backend's expert table (uploading the weights on cuda); returns it and a disposer. */
async function buildTable(be: Backend, p: MoeProblem): Promise<{ table: ExpertTable; dispose: () => void }> {
  const packed = p.packed && be.kind === 'cpu';
  const table = be.expertTable(p.e, { hidden: p.h, intermediate: p.inter, packed });
  const placed = placer(be);
  const place = placed.put;
  for (let x = 0; x < p.e; x++) {
    const wt = p.weights[x];
    if (!wt) continue;
    if (packed) table.set(x, { gate: await be.packWeights(wt.gate), up: await be.packWeights(wt.up), down: await be.packWeights(wt.down) });
    else if (p.stacked) table.set(x, { gateUp: await place(stack(wt.gate, wt.up)), down: await place(wt.down) });
    else table.set(x, { gate: await place(wt.gate), up: await place(wt.up), down: await place(wt.down) });
  }
  return { table, dispose: () => placed.dispose() };
}

async function runMoe(be: Backend, p: MoeProblem): Promise<{ out: HostTensor<'bf16'>; tier: KernelTier }> {
  const { table, dispose } = await buildTable(be, p);
  try {
    const out = new HostTensor('bf16', [p.t, p.h]);
    out.data.fill(0x7fc0); // NaN: every element must be written
    const ids = new HostTensor('i32', [p.t, p.k], p.ids);
    const w = new HostTensor('f32', [p.t, p.k], p.w);
    const tier = await onBackend(be, [p.x, ids, w], [out], (i, o) =>
      be.moeExperts({ x: i[0]!, topkIds: i[1]!, topkWeights: i[2]!, experts: table, out: o[0]! }),
    );
    return { out: out as HostTensor<'bf16'>, tier };
  } finally {
    dispose();
  }
}

// ---- moeExperts cases ------------------------------------------------------------------------------------------

interface MoeSpec {
  name: string;
  t: number;
  h: number;
  inter: number;
  e: number;
  k: number;
  heavy?: boolean;
  ids?: (t: number, k: number, e: number) => Int32Array;
  absent?: number[];
  stacked?: boolean;
  packed?: boolean;
  /** tokens that must come out exactly 0 */
  zeroTokens?: number[];
}

const allOnOne = (t: number, k: number, e: number): Int32Array => {
  const ids = randomIds(t, k, e, 99);
  for (let i = 0; i < t; i++) {
    // expert 3 in slot 0 of every token; keep the others distinct from it
    for (let j = 0; j < k; j++) if (ids[i * k + j] === 3) ids[i * k + j] = ids[i * k]!;
    ids[i * k] = 3;
  }
  return ids;
};
const fewExperts = (t: number, k: number, _e: number): Int32Array => randomIds(t, k, 4, 5); // experts 4.. are empty
const withMinusOne = (t: number, k: number, e: number): Int32Array => {
  const ids = randomIds(t, k, e, 17);
  const r = rng(23);
  for (let i = 0; i < ids.length; i++) if (r() < 0.3) ids[i] = -1;
  for (let j = 0; j < k; j++) ids[j] = -1; // token 0: nothing routed here
  return ids;
};
const toAbsent = (t: number, k: number, e: number): Int32Array => {
  const ids = randomIds(t, k, e, 31);
  ids.fill(1, 0, k); // token 0: expert 1 in every slot (absent) ...
  if (k > 1) ids[1] = -1; // ... or -1
  return ids;
};

const MOE_SPECS: MoeSpec[] = [];
for (const t of [1, 2, 7, 33, 64, 222]) MOE_SPECS.push({ name: `tokens=${t}`, t, h: 128, inter: 96, e: 8, k: 2 });
MOE_SPECS.push({ name: 'tokens=1024', t: 1024, h: 64, inter: 64, e: 8, k: 2, heavy: true });
MOE_SPECS.push(
  { name: 'K=511 in GEMM1', t: 33, h: 511, inter: 64, e: 8, k: 2 },
  { name: 'K=511 in GEMM2', t: 33, h: 64, inter: 511, e: 8, k: 2 },
  { name: 'top-1', t: 7, h: 64, inter: 128, e: 8, k: 1 },
  { name: 'E=64 top-6', t: 33, h: 128, inter: 64, e: 64, k: 6 },
  { name: 'E=128 top-8 (Qwen3-like routing)', t: 64, h: 64, inter: 48, e: 128, k: 8 },
  { name: 'E=128 top-8 decode', t: 1, h: 256, inter: 96, e: 128, k: 8 },
  { name: 'all tokens on one expert', t: 64, h: 64, inter: 64, e: 8, k: 2, ids: allOnOne },
  { name: 'empty experts', t: 33, h: 64, inter: 64, e: 64, k: 2, ids: fewExperts },
  { name: '-1 ids', t: 33, h: 64, inter: 64, e: 8, k: 2, ids: withMinusOne, zeroTokens: [0] },
  { name: 'absent experts', t: 33, h: 64, inter: 64, e: 8, k: 2, ids: toAbsent, absent: [1, 4], zeroTokens: [0] },
  { name: 'stacked gateUp', t: 7, h: 64, inter: 80, e: 8, k: 2, stacked: true },
  { name: 'top-k = E', t: 5, h: 32, inter: 32, e: 8, k: 8 },
);
// The same problems over packed weights (panel64, the CPU runtime's layout), every non-stacked spec.
for (const s of [...MOE_SPECS]) if (!s.stacked) MOE_SPECS.push({ ...s, name: `${s.name}, packed on CPU`, packed: true });

const refCache = new Map<string, { p: MoeProblem; ref: Float64Array }>();
function problemFor(s: MoeSpec): { p: MoeProblem; ref: Float64Array } {
  let c = refCache.get(s.name);
  if (!c) {
    const seed = s.t * 7 + s.h + s.inter * 3 + s.e * 5 + s.k;
    const p = makeProblem({ t: s.t, h: s.h, inter: s.inter, e: s.e, k: s.k, seed, ids: s.ids?.(s.t, s.k, s.e), absent: s.absent, stacked: s.stacked, packed: s.packed });
    c = { p, ref: refMoe(p.x, p.ids, p.w, p.k, p.weights) };
    refCache.set(s.name, c);
  }
  return c;
}

for (const s of MOE_SPECS) {
  CASES.push({
    op: 'moeExperts',
    name: `moeExperts ${s.name} T=${s.t} H=${s.h} I=${s.inter} E=${s.e} k=${s.k}`,
    heavy: s.heavy,
    async run(be) {
      const { p, ref } = problemFor(s);
      const a = await runMoe(be, p);
      const b = await runMoe(be, p);
      assert.ok(Buffer.compare(Buffer.from(a.out.data.buffer), Buffer.from(b.out.data.buffer)) === 0, 'two runs differ');
      const got = a.out.toFloat32();
      let num = 0;
      let den = 0;
      let maxAbs = 0;
      for (let i = 0; i < ref.length; i++) {
        const d = got[i]! - ref[i]!;
        num += d * d;
        den += ref[i]! * ref[i]!;
        maxAbs = Math.max(maxAbs, Math.abs(d));
        if (Number.isNaN(got[i]!)) assert.fail(`out[${i}] is NaN (not written?)`);
      }
      const rel = Math.sqrt(num / den);
      assert.ok(den > 0, 'reference is all zeros');
      assert.ok(rel <= 1e-2, `relative L2 error ${rel.toExponential(2)} > 1e-2`);
      assert.ok(maxAbs <= 2e-2, `max abs error ${maxAbs.toExponential(2)} > 2e-2`);
      for (const tz of s.zeroTokens ?? []) {
        for (let c = 0; c < s.h; c++) assert.equal(a.out.data[tz * s.h + c], 0, `token ${tz} must be exactly +0`);
      }
      return { tier: a.tier, metric: `rel ${rel.toExponential(2)}, max abs ${maxAbs.toExponential(2)}` };
    },
  });
}

// ---- routerTopK cases ------------------------------------------------------------------------------------------

function refTopK(logits: Float32Array, bias: Float32Array | undefined, t: number, e: number, k: number, sigmoid: boolean, renorm: boolean) {
  const ids = new Int32Array(t * k);
  const w = new Float64Array(t * k);
  for (let i = 0; i < t; i++) {
    const l = Array.from(logits.subarray(i * e, (i + 1) * e));
    const score = l.map((v, x) => (sigmoid && bias ? v + bias[x]! : v));
    const order = score.map((_, x) => x).sort((a, b) => score[b]! - score[a]! || a - b);
    const mx = Math.max(...l);
    const sum = l.reduce((s, v) => s + Math.exp(v - mx), 0);
    let ws = 0;
    for (let j = 0; j < k; j++) {
      const x = order[j]!;
      ids[i * k + j] = x;
      w[i * k + j] = sigmoid ? 1 / (1 + Math.exp(-l[x]!)) : Math.exp(l[x]! - mx) / sum;
      ws += w[i * k + j]!;
    }
    if (renorm) for (let j = 0; j < k; j++) w[i * k + j]! /= ws;
  }
  return { ids, w };
}

for (const [t, e, k] of [
  [1, 8, 2],
  [33, 8, 2],
  [222, 64, 6],
  [64, 128, 8],
  [7, 8, 8],
  [5, 256, 8],
] as Array<[number, number, number]>) {
  for (const scoring of ['softmax', 'sigmoid'] as const) {
    for (const renorm of [false, true]) {
      for (const withBias of scoring === 'sigmoid' ? [false, true] : [false]) {
        CASES.push({
          op: 'routerTopK',
          name: `routerTopK T=${t} E=${e} k=${k} ${scoring}${renorm ? ' renorm' : ''}${withBias ? ' bias' : ''}`,
          async run(be) {
            const r = rng(t * 1000 + e * 10 + k);
            const logits = new Float32Array(t * e);
            for (let i = 0; i < logits.length; i++) logits[i] = (r() * 2 - 1) * 4;
            // ties: token 0 has every logit equal -> ids 0..k-1 in order
            logits.fill(0.5, 0, e);
            const bias = withBias ? new Float32Array(e).map(() => r() - 0.5) : undefined;
            const lt = new HostTensor('f32', [t, e], logits);
            const idsOut = new HostTensor('i32', [t, k]);
            const wOut = new HostTensor('f32', [t, k]);
            const inputs = [lt, ...(bias ? [new HostTensor('f32', [e], bias)] : [])];
            const tier = await onBackend(be, inputs, [idsOut, wOut], async (i, o) => {
              const res = await be.routerTopK(i[0]!, k, { scoring, renormalize: renorm, ...(bias ? { bias: i[1]! } : {}), out: { topkIds: o[0]!, topkWeights: o[1]! } });
              return res.tier;
            });
            const ref = refTopK(logits, withBias ? bias : undefined, t, e, k, scoring === 'sigmoid', renorm);
            // token 0 (all equal, no bias): ids 0..k-1
            if (!withBias) for (let j = 0; j < k; j++) assert.equal(idsOut.data[j], j, `tie order at token 0 slot ${j}`);
            let maxRel = 0;
            for (let i = 0; i < t * k; i++) {
              assert.equal(idsOut.data[i], ref.ids[i], `ids[${i}]`);
              maxRel = Math.max(maxRel, Math.abs(wOut.data[i]! - ref.w[i]!) / Math.abs(ref.w[i]!));
            }
            assert.ok(maxRel <= 1e-5, `weights: max relative error ${maxRel.toExponential(2)} > 1e-5`);
            return { tier, metric: `weights max rel ${maxRel.toExponential(2)}` };
          },
        });
      }
    }
  }
}

// ---- moeAlign cases --------------------------------------------------------------------------------------------

function refAlign(ids: Int32Array, t: number, k: number, e: number, block: number) {
  const counts = new Int32Array(e);
  for (const x of ids) if (x >= 0) counts[x]!++;
  const offsets = new Int32Array(e + 1);
  for (let x = 0; x < e; x++) offsets[x + 1] = offsets[x]! + Math.ceil(counts[x]! / block) * block;
  const sorted = new Int32Array(t * k + e * (block - 1)).fill(t * k);
  const cur = offsets.slice(0, e);
  for (let i = 0; i < t * k; i++) if (ids[i]! >= 0) sorted[cur[ids[i]!]!++] = i;
  return { counts, offsets, sorted };
}

for (const [t, k, e, block, kind] of [
  [1, 2, 8, 16, 'random'],
  [33, 2, 8, 16, 'random'],
  [222, 6, 64, 64, 'random'],
  [64, 8, 128, 1, 'random'],
  [64, 2, 8, 64, 'all on one'],
  [33, 2, 64, 16, 'empty experts'],
  [33, 2, 8, 16, '-1 ids'],
  [0, 2, 8, 16, 'no tokens'],
] as Array<[number, number, number, number, string]>) {
  CASES.push({
    op: 'moeAlign',
    name: `moeAlign T=${t} k=${k} E=${e} block=${block} ${kind}`,
    async run(be) {
      const ids =
        kind === 'all on one' ? allOnOne(t, k, e) : kind === 'empty experts' ? fewExperts(t, k, e) : kind === '-1 ids' ? withMinusOne(t, k, e) : randomIds(t, k, e, t + e);
      const cap = t * k + e * (block - 1);
      const counts = new HostTensor('i32', [e]);
      const offsets = new HostTensor('i32', [e + 1]);
      const sorted = new HostTensor('i32', [cap]);
      const tier = await onBackend(be, [new HostTensor('i32', [t, k], ids)], [counts, offsets, sorted], async (i, o) => {
        const r = await be.moeAlign(i[0]!, e, block, { out: { counts: o[0]!, offsets: o[1]!, sortedTokenIds: o[2]! } });
        return r.tier;
      });
      const ref = refAlign(ids, t, k, e, block);
      assert.deepEqual(Array.from(counts.data), Array.from(ref.counts), 'counts');
      assert.deepEqual(Array.from(offsets.data), Array.from(ref.offsets), 'offsets');
      assert.deepEqual(Array.from(sorted.data), Array.from(ref.sorted), 'sortedTokenIds');
      return { tier };
    },
  });
}

// ---- run every case on every backend ---------------------------------------------------------------------------

runCaseTable('moe ops', CASES);

// ---- bad inputs: typed errors ----------------------------------------------------------------------------------

// cuda (when present): the align kernel flags an id outside [-1, E) in mapped pinned memory and the op rejects
// when it completes (no host sync), with the CPU's message; a valid call afterwards still succeeds.
void test('moe ops on cuda reject ids outside [-1, E) when they complete', async (t) => {
  const b = harnessBackends().find((x) => x.name.startsWith('cuda'));
  if (!b || !b.available) {
    t.skip(b?.reason ?? 'no cuda backend');
    return;
  }
  const be = b.open();
  const p = makeProblem({ t: 3, h: 16, inter: 8, e: 4, k: 2, seed: 1 });
  const { table, dispose } = await buildTable(be, p);
  try {
    const w = new HostTensor('f32', [3, 2], p.w);
    const out = new HostTensor('bf16', [3, 16]);
    const run = (ids: HostTensor): Promise<KernelTier> =>
      onBackend(be, [p.x, ids, w], [out], (i, o) => be.moeExperts({ x: i[0]!, topkIds: i[1]!, topkWeights: i[2]!, experts: table, out: o[0]! }));
    for (const bad of [4, -2]) {
      const ids = new HostTensor('i32', [3, 2], Int32Array.from([0, bad, 1, 2, bad, 0]));
      const re = new RegExp(`topkIds must be -1 or in \\[0, 4\\), received ${bad} at index 1`);
      await assert.rejects(run(ids), (e: unknown) => e instanceof InvalidArgumentError && re.test(e.message));
      const dIds = await be.upload(ids);
      await assert.rejects(be.moeAlign(dIds, 4, 8), (e: unknown) => e instanceof InvalidArgumentError && re.test(e.message));
    }
    await run(new HostTensor('i32', [3, 2], p.ids));
  } finally {
    dispose();
  }
});

void test('moe ops reject bad inputs with typed errors', async () => {
  const be = harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
  const p = makeProblem({ t: 3, h: 16, inter: 8, e: 4, k: 2, seed: 1 });
  const { table } = await buildTable(be, p);
  const ids = new HostTensor('i32', [3, 2], p.ids);
  const w = new HostTensor('f32', [3, 2], p.w);
  const out = new HostTensor('bf16', [3, 16]);
  const ok = { x: p.x, topkIds: ids, topkWeights: w, experts: table, out };
  await be.moeExperts(ok); // the valid call works

  // id >= E: rejected by the op (data-dependent), as InvalidArgumentError
  const badIds = new HostTensor('i32', [3, 2], Int32Array.from([0, 4, 1, 2, 3, 0]));
  await assert.rejects(be.moeExperts({ ...ok, topkIds: badIds }), (e: unknown) => e instanceof InvalidArgumentError && /topkIds/.test(e.message));
  await assert.rejects(be.moeAlign(badIds, 4, 8), InvalidArgumentError);
  // shapes that disagree, wrong dtypes: synchronous InvalidArgumentError naming the argument
  assert.throws(() => be.moeExperts({ ...ok, out: new HostTensor('bf16', [3, 15]) }), /out must be \[3, 16\]/);
  assert.throws(() => be.moeExperts({ ...ok, topkWeights: new HostTensor('f32', [3, 1]) }), /topkWeights must be \[3, 2\]/);
  assert.throws(() => be.moeExperts({ ...ok, x: new HostTensor('f32', [3, 16]) }), (e: unknown) => e instanceof InvalidArgumentError && /x\.dtype/.test(e.message));
  assert.throws(() => be.moeExperts({ ...ok, topkIds: new HostTensor('f32', [3, 2]) }), /topkIds\.dtype/);
  assert.throws(() => be.moeExperts({ ...ok, x: new HostTensor('bf16', [3, 8]) }), /hidden size/);
  assert.throws(() => be.moeExperts({ ...ok, experts: {} as ExpertTable }), /ExpertTable/);
  // table entries: wrong shape / dtype / id
  assert.throws(() => table.set(0, { gate: p.x, up: p.x, down: new HostTensor('bf16', [16, 8]) }), /gate must be \[8, 16\]/);
  assert.throws(() => table.set(0, { gate: p.x, up: p.x, down: p.x }), /down must be \[16, 8\]/);
  assert.throws(() => table.set(4, p.weights.find((x) => x)!), /expert id/);
  assert.throws(() => table.set(0, { gateUp: new HostTensor('f32', [16, 16]), down: new HostTensor('bf16', [16, 8]) }), /gateUp\.dtype/);
  assert.throws(() => be.expertTable(0, { hidden: 4, intermediate: 4 }), InvalidArgumentError);
  // routerTopK / moeAlign argument checks
  const logits = new HostTensor('f32', [2, 4]);
  assert.throws(() => be.routerTopK(logits, 5, { scoring: 'softmax', renormalize: false }), /k must be/);
  assert.throws(() => be.routerTopK(logits, 2, { scoring: 'sigmoid', renormalize: false, bias: new HostTensor('f32', [3]) }), /bias must be \[4\]/);
  assert.throws(() => be.routerTopK(logits, 2, { scoring: 'max' as 'softmax', renormalize: false }), /scoring/);
  assert.throws(() => be.moeAlign(ids, 4, 0), /blockSize/);
  await assert.rejects(be.routerTopK(new HostTensor('f32', [1, 4], Float32Array.from([1, 2, 3, 4])), 2, { scoring: 'softmax', renormalize: true }).then(() => { throw new Error('resolved'); }), /resolved/); // valid call resolves
});

void test('a cleared expert contributes zero; clearing every expert gives exactly 0', async () => {
  const be = harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
  const p = makeProblem({ t: 4, h: 16, inter: 8, e: 4, k: 2, seed: 2 });
  const { table } = await buildTable(be, p);
  for (let x = 0; x < 4; x++) table.clear(x);
  assert.equal(table.presentCount, 0);
  const out = new HostTensor('bf16', [4, 16]);
  out.data.fill(0x3f80);
  await be.moeExperts({ x: p.x, topkIds: new HostTensor('i32', [4, 2], p.ids), topkWeights: new HostTensor('f32', [4, 2], p.w), experts: table, out });
  assert.ok(out.data.every((v) => v === 0));
});
