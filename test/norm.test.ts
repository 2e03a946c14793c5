/**
 * Backend.rmsNorm (cpp/cpu/rms_norm.cc, cuda/rms_norm.cu) and the row-broadcast form of Backend.add, through the
 * op harness: every case on every backend present (cpu-scalar ... cpu-avx512bf16, cuda:N; absent ones skipped with
 * their reason) against float64 references written here.
 * rmsNorm shapes: decode [1, 4096], prefill [512, 4096], Qwen3 per-head q/k norm [T * heads, 128], OLMoE q norm
 * [T, 2048], odd D (7, 33, 100), rank 1 and 3, R = 0 rows; with and without the fused residual add (x updated in
 * place: checked bit-exactly against fround(x + add)), every f32/bf16 combination of x, weight, out and add, out
 * aliasing x, eps dominating the mean square, eps = 0, zero rows. Tolerances (relative, per element):
 * f32 out 2^-24 (8 + 2 sqrt(D)) (a few roundings plus the f32 sum of squares), bf16 out 2^-8 + twice that (one
 * rounding to bf16 of the f32 result). One more test: the CPU result is bit-identical with 1 thread and with the
 * pool's threads (a child process with MOE_OFFLOAD_THREADS=1). Broadcast add: bit-exact (f32 add, rounded once).
 * Argument errors throw InvalidArgumentError synchronously.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';

import { type Backend, type DType, HostTensor, InvalidArgumentError, type KernelTier, type Tensor, openBackend } from '../lib/index.js';
import { values } from './harness/inputs.js';
import { refConvertTo, rng } from './harness/ref.js';
import { type OpCase, runCaseTable } from './harness/table.js';

type F = 'f32' | 'bf16';
const CASES: OpCase[] = [];

/**
 * Runs fn with every tensor placed where `be` computes: as given on the CPU; uploaded on CUDA, and every tensor
 * copied back into its host tensor afterwards (in-place updates of x come back too). A tensor listed twice (out
 * aliasing x) is uploaded once and passed twice.
 */
async function inPlace<R>(be: Backend, ts: HostTensor[], fn: (d: Tensor[]) => Promise<R>): Promise<R> {
  if (be.kind === 'cpu') return fn(ts);
  const uniq = [...new Set(ts)];
  const dev = await Promise.all(uniq.map((t) => be.upload(t)));
  try {
    const r = await fn(ts.map((t) => dev[uniq.indexOf(t)]!));
    for (let i = 0; i < uniq.length; i++) await be.copy(dev[i]!, uniq[i]!);
    return r;
  } finally {
    for (const d of dev) d.dispose();
  }
}

/** Values for x: uniform in [-2, 2] times a per-row magnitude 10^(r % 5 - 2) (the scale must cancel out). */
function xValues(rows: number, d: number, seed: number): Float32Array {
  const r = rng(seed);
  const v = new Float32Array(rows * d);
  for (let i = 0; i < rows; i++) {
    const mag = 10 ** ((i % 5) - 2);
    for (let j = 0; j < d; j++) v[i * d + j] = (r() * 4 - 2) * mag;
  }
  return v;
}

function uniform(n: number, seed: number, lo: number, hi: number): Float32Array {
  const r = rng(seed);
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = lo + r() * (hi - lo);
  return v;
}

/** float64 RMSNorm of rows of d (HF LlamaRMSNorm without intermediate rounding). */
function refRmsNorm(x: Float64Array, w: Float64Array, d: number, eps: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let b = 0; b < x.length; b += d) {
    let ss = 0;
    for (let j = 0; j < d; j++) ss += x[b + j]! * x[b + j]!;
    const s = 1 / Math.sqrt(ss / d + eps);
    for (let j = 0; j < d; j++) out[b + j] = x[b + j]! * s * w[j]!;
  }
  return out;
}

/** Relative tolerance of an f32 / bf16 output for rows of d. */
function relTol(dtype: F, d: number): number {
  const f32 = 2 ** -24 * (8 + 2 * Math.sqrt(d));
  return dtype === 'f32' ? f32 : 2 ** -8 + 2 * f32;
}

interface NormCase {
  shape: number[];
  x: F;
  w: F;
  out: F;
  add?: F;
  eps: number;
  /** out is x itself */
  alias?: boolean;
  /** rows whose x (and add) are all zero */
  zeroRows?: number[];
}

function normName(c: NormCase): string {
  return (
    `rmsNorm [${c.shape.join(', ')}] x=${c.x} w=${c.w} out=${c.alias ? 'x' : c.out}` +
    `${c.add ? ` add=${c.add}` : ''} eps=${c.eps}${c.zeroRows ? ' zero rows' : ''}`
  );
}

async function runNorm(be: Backend, c: NormCase, seed: number): Promise<{ tier: KernelTier; metric: string }> {
  const d = c.shape[c.shape.length - 1]!;
  const numel = c.shape.reduce((a, b) => a * b, 1);
  const rows = d === 0 ? 0 : numel / d;
  const xv = xValues(rows, d, seed);
  const av = c.add ? uniform(numel, seed + 1, -1, 1).map((v, i) => v * 10 ** ((Math.floor(i / d) % 5) - 2)) : undefined;
  for (const r of c.zeroRows ?? []) {
    xv.fill(0, r * d, (r + 1) * d);
    av?.fill(0, r * d, (r + 1) * d);
  }
  const x = HostTensor.from(c.x, c.shape, xv);
  const w = HostTensor.from(c.w, [d], uniform(d, seed + 2, -1.5, 1.5));
  const add = c.add && av ? HostTensor.from(c.add, c.shape, av) : undefined;
  const out = c.alias ? x : new HostTensor(c.out, c.shape);
  const x0 = values(x);
  const addVals = add ? values(add) : undefined;
  const wVals = values(w);
  // the kernel normalises the updated x as stored (f32)
  const xNew = addVals ? x0.map((v, i) => Math.fround(v + addVals[i]!)) : x0;
  const ref = refRmsNorm(xNew, wVals, d, c.eps);

  const list = [x, w, out, ...(add ? [add] : [])];
  const tier = await inPlace(be, list, (t) =>
    be.rmsNorm({ x: t[0]!, weight: t[1]!, out: t[2]!, eps: c.eps, ...(add ? { add: t[3]! } : {}) }),
  );

  // x: updated exactly when add is given (and out is not x); untouched otherwise
  if (!c.alias) {
    const xg = values(x);
    let bad = 0;
    for (let i = 0; i < numel; i++) if (!Object.is(xg[i], xNew[i])) bad++;
    assert.equal(bad, 0, `${bad} of ${numel} elements of x differ from ${add ? 'fround(x + add)' : 'the input (x must not change)'}`);
  }
  assert.deepEqual(values(w), wVals, 'weight changed');
  if (add) assert.deepEqual(values(add), addVals, 'add changed');

  const got = values(out);
  const tol = relTol(c.alias ? c.x : c.out, d);
  let worst = 0;
  for (let i = 0; i < numel; i++) {
    const r = ref[i]!;
    const err = Math.abs(got[i]! - r);
    const lim = tol * Math.abs(r) + 1e-37;
    if (!(err <= lim)) {
      assert.fail(`element ${i} (row ${Math.floor(i / d)}, col ${i % d}): got ${got[i]} expected ${r} (rel tol ${tol.toExponential(2)})`);
    }
    if (r !== 0) worst = Math.max(worst, err / (tol * Math.abs(r)));
  }
  return { tier, metric: `max err ${worst.toFixed(3)} of tol (rel ${tol.toExponential(2)})` };
}

// ---- rmsNorm cases ----------------------------------------------------------------------------------------------
const NORM: NormCase[] = [];
// model shapes
NORM.push({ shape: [1, 4096], x: 'f32', w: 'bf16', out: 'bf16', add: 'bf16', eps: 1e-6 }); // decode, fused residual
NORM.push({ shape: [1, 4096], x: 'f32', w: 'f32', out: 'f32', eps: 1e-5 });
NORM.push({ shape: [512, 4096], x: 'f32', w: 'bf16', out: 'bf16', add: 'f32', eps: 1e-6 }); // prefill
NORM.push({ shape: [512, 4096], x: 'bf16', w: 'bf16', out: 'bf16', eps: 1e-6 });
NORM.push({ shape: [7 * 32, 128], x: 'bf16', w: 'bf16', out: 'bf16', eps: 1e-6, alias: true }); // Qwen3 q norm in place
NORM.push({ shape: [13, 4, 128], x: 'bf16', w: 'bf16', out: 'f32', eps: 1e-6 }); // [T, kvHeads, headDim] rank 3
NORM.push({ shape: [5, 2048], x: 'bf16', w: 'bf16', out: 'bf16', eps: 1e-5 }); // OLMoE q norm over the projection
NORM.push({ shape: [3, 2048], x: 'f32', w: 'f32', out: 'f32', add: 'f32', eps: 1e-5, alias: true });
// odd D, every dtype combination
for (const d of [7, 33, 100]) {
  for (const x of ['f32', 'bf16'] as const)
    for (const w of ['f32', 'bf16'] as const)
      for (const out of ['f32', 'bf16'] as const) NORM.push({ shape: [d === 33 ? 9 : 3, d], x, w, out, eps: 1e-6 });
  for (const add of ['f32', 'bf16'] as const)
    for (const out of ['f32', 'bf16'] as const) NORM.push({ shape: [5, d], x: 'f32', w: 'bf16', out, add, eps: 1e-6 });
}
NORM.push({ shape: [33], x: 'f32', w: 'f32', out: 'bf16', eps: 1e-6 }); // rank 1: one row
NORM.push({ shape: [2, 3, 100], x: 'bf16', w: 'f32', out: 'bf16', eps: 1e-6, alias: true });
NORM.push({ shape: [1], x: 'f32', w: 'f32', out: 'f32', eps: 0 });
// R = 0 rows
NORM.push({ shape: [0, 64], x: 'f32', w: 'bf16', out: 'bf16', add: 'f32', eps: 1e-6 });
NORM.push({ shape: [0, 4096], x: 'bf16', w: 'bf16', out: 'bf16', eps: 1e-6 });
// eps effects: eps dominating the mean square (rows of magnitude 1e-2 .. 1e2 against eps 1 and 1e4), eps = 0,
// all-zero rows (0 * 1 / sqrt(eps) = 0)
NORM.push({ shape: [10, 96], x: 'f32', w: 'f32', out: 'f32', eps: 1, add: 'bf16' });
NORM.push({ shape: [10, 96], x: 'bf16', w: 'bf16', out: 'bf16', eps: 1e4 });
NORM.push({ shape: [10, 96], x: 'f32', w: 'f32', out: 'f32', eps: 0 });
NORM.push({ shape: [6, 200], x: 'f32', w: 'bf16', out: 'bf16', eps: 1e-6, add: 'f32', zeroRows: [0, 4] });

NORM.forEach((c, i) => {
  CASES.push({ op: 'rmsNorm', name: normName(c), run: (be) => runNorm(be, c, 1000 + 17 * i) });
});

// ---- add with a row-broadcast b ---------------------------------------------------------------------------------
interface BcastCase {
  dtype: 'f32' | 'f16' | 'bf16';
  shape: number[];
  /** out is a */
  inPlace?: boolean;
  /** a and out start this many rows into larger tensors (unaligned starts for odd N) */
  rowOffset?: number;
}
const BCAST: BcastCase[] = [];
for (const dtype of ['f32', 'f16', 'bf16'] as const) {
  BCAST.push({ dtype, shape: [5, 7] });
  BCAST.push({ dtype, shape: [3, 4, 33], inPlace: true });
  BCAST.push({ dtype, shape: [1000, 24] });
  BCAST.push({ dtype, shape: [9, 13], rowOffset: 1 });
}
BCAST.push({ dtype: 'bf16', shape: [37, 4096] }); // q bias of a prefill chunk
BCAST.push({ dtype: 'f32', shape: [2, 3000], inPlace: true });
BCAST.push({ dtype: 'bf16', shape: [1, 17] });
BCAST.push({ dtype: 'f32', shape: [0, 8] });

async function runBcast(be: Backend, c: BcastCase, seed: number): Promise<{ tier: KernelTier }> {
  const n = c.shape[c.shape.length - 1]!;
  const rows = c.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  const off = c.rowOffset ?? 0;
  const fullShape = [rows + 2 * off, n];
  const aFull = HostTensor.from(c.dtype, fullShape, uniform((rows + 2 * off) * n, seed, -4, 4));
  const b = HostTensor.from(c.dtype, [n], uniform(n, seed + 1, -4, 4));
  const outFull = c.inPlace ? aFull : HostTensor.from(c.dtype, fullShape, new Array<number>((rows + 2 * off) * n).fill(7));
  const va = values(aFull);
  const vb = values(b);
  const vo = values(outFull);
  const tier = await inPlace(be, [aFull, b, outFull], (t) => {
    const a = t[0]!.rows(off, rows).reshape(c.shape);
    const out = c.inPlace ? a : t[2]!.rows(off, rows).reshape(c.shape);
    return be.add(a, t[1]!, out);
  });
  const got = outFull.data;
  let bad = 0;
  let first = '';
  for (let i = 0; i < (rows + 2 * off) * n; i++) {
    const r = Math.floor(i / n);
    const inside = r >= off && r < off + rows;
    const want = inside ? refConvertTo(Math.fround(va[i]! + vb[i % n]!), c.dtype) : c.dtype === 'f32' ? vo[i]! : refConvertTo(vo[i]!, c.dtype);
    const g = got[i]!;
    if (!(c.dtype === 'f32' ? Object.is(g, want) : g === want)) {
      if (bad++ === 0) first = ` first: element ${i} got ${g} want ${want}${inside ? '' : ' (outside out: must be untouched)'}`;
    }
  }
  assert.equal(bad, 0, `${bad} elements differ${first}`);
  assert.deepEqual(values(b), vb, 'b changed');
  return { tier };
}

BCAST.forEach((c, i) => {
  CASES.push({
    op: 'add',
    name: `add row-broadcast ${c.dtype} a=[${c.shape.join(', ')}] b=[${c.shape[c.shape.length - 1]}]${c.inPlace ? ' out=a' : ''}${c.rowOffset ? ` rows from ${c.rowOffset}` : ''}`,
    run: (be) => runBcast(be, c, 5000 + 31 * i),
  });
});

runCaseTable('rmsNorm and row-broadcast add', CASES);

// ---- thread-count independence ----------------------------------------------------------------------------------
/** Output bits of a fixed problem on each CPU tier, as "tier:sha256" lines (run here and in a child process). */
const HASH_SCRIPT = `
const path = require('node:path');
const root = process.argv[1];
const { HostTensor, openBackend, listBackends } = require(path.join(root, 'dist/lib/index.js'));
const { createHash } = require('node:crypto');
const { rng } = require(path.join(root, 'dist/test/harness/ref.js'));
(async () => {
  const lines = [];
  for (const b of listBackends()) {
    if (b.kind !== 'cpu' || !b.available) continue;
    const be = openBackend({ backend: 'cpu', isa: b.isa });
    const h = createHash('sha256');
    for (const [rows, d] of [[300, 2048], [4096, 128], [64, 4099]]) {
      const r = rng(rows * 7 + d);
      const v = (n, s) => Array.from({ length: n }, () => (r() * 2 - 1) * s);
      const x = HostTensor.from('f32', [rows, d], v(rows * d, 3));
      const add = HostTensor.from('bf16', [rows, d], v(rows * d, 1));
      const w = HostTensor.from('bf16', [d], v(d, 1));
      const out = new HostTensor('f32', [rows, d]);
      await be.rmsNorm({ x, weight: w, out, eps: 1e-6, add });
      h.update(new Uint8Array(out.data.buffer, out.data.byteOffset, out.data.byteLength));
      h.update(new Uint8Array(x.data.buffer, x.data.byteOffset, x.data.byteLength));
    }
    lines.push(b.isa + ':' + h.digest('hex'));
  }
  process.stdout.write(lines.join('\\n'));
})().catch((e) => { console.error(e); process.exit(1); });
`;

void test('rmsNorm: CPU results are bit-identical with 1 thread and with the whole pool', (t) => {
  const root = path.join(__dirname, '..', '..');
  const run = (threads?: string): string => {
    const env = { ...process.env };
    if (threads === undefined) delete env.MOE_OFFLOAD_THREADS;
    else env.MOE_OFFLOAD_THREADS = threads;
    const r = spawnSync(process.execPath, ['-e', HASH_SCRIPT, root], { env, encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, `child failed: ${r.stderr}`);
    return r.stdout;
  };
  const one = run('1');
  const many = run('4');
  assert.ok(one.length > 0, 'no CPU tier ran');
  assert.equal(many, one, 'rmsNorm output depends on the thread count');
  t.diagnostic(one.split('\n').map((l) => l.split(':')[0]).join(', '));
});

// ---- argument errors ----------------------------------------------------------------------------------------------
void test('rmsNorm and add: bad arguments throw InvalidArgumentError synchronously', () => {
  const be = openBackend({ backend: 'cpu' });
  const t = (dtype: DType, shape: number[]): HostTensor => new HostTensor(dtype, shape);
  const x = t('f32', [4, 8]);
  const w = t('bf16', [8]);
  const out = t('bf16', [4, 8]);
  const inv = (re: RegExp) => (e: unknown): boolean => e instanceof InvalidArgumentError && re.test(e.message);
  const call = (p: Record<string, unknown>) => (): unknown => be.rmsNorm({ x, weight: w, out, eps: 1e-6, ...p } as Parameters<Backend['rmsNorm']>[0]);
  assert.throws(call({ x: t('f16', [4, 8]) }), inv(/x\.dtype must be one of f32, bf16, received f16/));
  assert.throws(call({ x: t('i32', [4, 8]) }), inv(/x\.dtype must be one of f32, bf16, received i32/));
  assert.throws(call({ weight: t('f16', [8]) }), inv(/weight\.dtype must be one of f32, bf16, received f16/));
  assert.throws(call({ out: t('i32', [4, 8]) }), inv(/out\.dtype must be one of f32, bf16, received i32/));
  assert.throws(call({ x: {} }), inv(/x must be a HostTensor or DeviceTensor/));
  assert.throws(call({ weight: t('bf16', [7]) }), inv(/weight must be \[8\], received \[7\]/));
  assert.throws(call({ weight: t('bf16', [1, 8]) }), inv(/weight must be \[8\], received \[1, 8\]/));
  assert.throws(call({ out: t('bf16', [4, 9]) }), inv(/out must have x's shape \[4, 8\], received \[4, 9\]/));
  assert.throws(call({ out: t('bf16', [32]) }), inv(/out must have x's shape \[4, 8\], received \[32\]/));
  assert.throws(call({ x: t('f32', []), out: t('f32', []) }), inv(/x must have rank >= 1/));
  assert.throws(call({ add: t('f32', [4, 7]) }), inv(/add must have x's shape \[4, 8\], received \[4, 7\]/));
  assert.throws(call({ add: t('f16', [4, 8]) }), inv(/add\.dtype must be one of f32, bf16, received f16/));
  assert.throws(call({ x: t('bf16', [4, 8]), add: t('bf16', [4, 8]) }), inv(/x\.dtype must be f32 when add is given.*received bf16/));
  for (const eps of [Number.NaN, -1e-6, Infinity, 1e39, '1e-6', undefined]) {
    assert.throws(call({ eps }), inv(/eps must be a finite number >= 0.*received/), `eps ${String(eps)}`);
  }
  assert.throws(() => be.rmsNorm(null as unknown as Parameters<Backend['rmsNorm']>[0]), inv(/params must be an object/));

  // add: b must be a's shape or [a's last dimension]
  const a = t('f32', [2, 3]);
  assert.throws(() => be.add(a, t('f32', [3, 2]), a), inv(/b must have a's shape \[2, 3\], received \[3, 2\] \(or be \[3\]/));
  assert.throws(() => be.add(a, t('f32', [2]), a), inv(/b must have a's shape \[2, 3\], received \[2\]/));
  assert.throws(() => be.add(a, t('f32', [1, 3]), a), inv(/b must have a's shape \[2, 3\], received \[1, 3\]/));
  assert.throws(() => be.add(a, t('bf16', [3]), a), inv(/b\.dtype must equal a\.dtype \(f32\), received bf16/));
  assert.throws(() => be.add(a, t('f32', [3]), t('f32', [3])), inv(/out must have a's shape \[2, 3\], received \[3\]/));
  const b = t('f32', [3]);
  assert.throws(() => be.add(a, b, b), inv(/out must have a's shape \[2, 3\], received \[3\]/));
  const a1 = t('f32', [1, 3]);
  const b3 = t('f32', [3]);
  assert.throws(() => be.add(b3, a1, b3), inv(/b must have a's shape \[3\], received \[1, 3\]/));
});

void test('row-broadcast add on a one-row a, written into a', async () => {
  // a [1, N] with b [N]: broadcast over one row; writing into a works, and the result equals the same-shape add
  const be = openBackend({ backend: 'cpu' });
  const a = HostTensor.from('bf16', [1, 5], [1, 2, 3, 4, 5]);
  const b = HostTensor.from('bf16', [5], [0.5, 0.25, -1, 8, 0]);
  await be.add(a, b, a);
  assert.deepEqual(Array.from(values(a)), [1.5, 2.25, 2, 12, 5]);
});
