/**
 * groupedGemm (issue 3 building block) through the op harness: every case on every backend present (cpu-scalar,
 * cpu-avx2, cpu-avx512, cpu-avx512bf16, cuda:N; absent ones skipped with their reason) against a float64
 * reference of the bf16 inputs. Groups: empty ones (b = null), a single group (the dense gemm), one row per group
 * (decode), K = 511, N not a multiple of the 64-column tile, G = 64; f32 and bf16 out. Tolerances: f32 out
 * max |y - ref| <= 1e-4 (f32 accumulation of K <= 1024 products of values <= 0.1); bf16 out relative 1e-2 per
 * norm and max abs 2e-2 * max|ref| (one bf16 rounding). Two runs are bitwise identical; rows past offsets[G] keep
 * their previous contents.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { HostTensor, InvalidArgumentError, type Tensor } from '../lib/index.js';
import { harnessBackends, onBackend } from './harness/backends.js';
import { randomBf16, values } from './harness/inputs.js';
import { type OpCase, runCaseTable } from './harness/table.js';


interface Spec {
  name: string;
  rows: number[];  // rows per group (0: empty group, b = null)
  n: number;
  k: number;
  out: 'f32' | 'bf16';
  extraRows?: number;  // out/a rows past offsets[G] that must stay untouched
  heavy?: boolean;
}

const SPECS: Spec[] = [
  { name: 'one group (dense)', rows: [37], n: 100, k: 256, out: 'f32' },
  { name: 'mixed groups with empty ones', rows: [5, 0, 17, 1, 0, 64], n: 96, k: 128, out: 'f32', extraRows: 3 },
  { name: 'decode: one row per group', rows: [1, 1, 1, 1, 1, 1, 1, 1], n: 130, k: 512, out: 'f32' },
  { name: 'K=511', rows: [7, 3, 33], n: 64, k: 511, out: 'f32' },
  { name: 'bf16 out', rows: [9, 0, 22], n: 72, k: 200, out: 'bf16' },
  { name: 'G=64 small groups', rows: Array.from({ length: 64 }, (_, i) => (i * 7) % 5), n: 48, k: 64, out: 'f32' },
  { name: 'large group', rows: [200, 130], n: 192, k: 1024, out: 'bf16', heavy: true },
];

function makeCase(s: Spec): OpCase {
  const g = s.rows.length;
  const offsets = [0];
  for (const r of s.rows) offsets.push(offsets[offsets.length - 1]! + r);
  const rows = offsets[g]!;
  const total = rows + (s.extraRows ?? 0);
  const seed = s.n * 13 + s.k * 7 + g;
  const a = randomBf16([Math.max(total, 1), s.k], seed);
  const bs = s.rows.map((r, i) => (r > 0 ? randomBf16([s.n, s.k], seed + 101 * (i + 1)) : null));
  const av = values(a);
  const bv = bs.map((b) => (b ? values(b) : null));
  const ref = new Float64Array(rows * s.n);
  for (let x = 0; x < g; x++) {
    for (let r = offsets[x]!; r < offsets[x + 1]!; r++) {
      for (let c = 0; c < s.n; c++) {
        let acc = 0;
        for (let p = 0; p < s.k; p++) acc += av[r * s.k + p]! * bv[x]![c * s.k + p]!;
        ref[r * s.n + c] = acc;
      }
    }
  }
  return {
    op: 'groupedGemm',
    name: `groupedGemm ${s.name} G=${g} rows=${rows} N=${s.n} K=${s.k} -> ${s.out}`,
    heavy: s.heavy,
    async run(be) {
      const present = bs.filter((b): b is HostTensor<'bf16'> => b !== null);
      const runOnce = async (): Promise<{ out: HostTensor; tier: Awaited<ReturnType<typeof be.groupedGemm>> }> => {
        const out = new HostTensor(s.out, [Math.max(total, 1), s.n]);
        if (s.out === 'f32') (out.data as Float32Array).fill(Number.NaN);
        else (out.data as Uint16Array).fill(0x7fc0);
        const tier = await onBackend(be, [a, ...present], [out], (ins, outs) => {
          let j = 1;
          const b: Array<Tensor | null> = bs.map((w) => (w ? ins[j++]! : null));
          return be.groupedGemm(ins[0]!, b, offsets, outs[0]!);
        });
        return { out, tier };
      };
      const r1 = await runOnce();
      const r2 = await runOnce();
      assert.ok(Buffer.compare(Buffer.from(r1.out.data.buffer), Buffer.from(r2.out.data.buffer)) === 0, 'two runs differ');
      const got = r1.out.toFloat32();
      let num = 0, den = 0, maxAbs = 0, maxRef = 0;
      for (let i = 0; i < ref.length; i++) {
        if (Number.isNaN(got[i]!)) assert.fail(`out[${i}] is NaN (not written)`);
        const d = got[i]! - ref[i]!;
        num += d * d;
        den += ref[i]! * ref[i]!;
        maxAbs = Math.max(maxAbs, Math.abs(d));
        maxRef = Math.max(maxRef, Math.abs(ref[i]!));
      }
      for (let i = ref.length; i < total * s.n; i++) assert.ok(Number.isNaN(got[i]!), `out[${i}] past offsets[G] was written`);
      const rel = den > 0 ? Math.sqrt(num / den) : 0;
      if (s.out === 'f32') {
        assert.ok(maxAbs <= 1e-4, `max abs error ${maxAbs} > 1e-4`);
      } else {
        assert.ok(rel <= 1e-2, `relative error ${rel} > 1e-2`);
        assert.ok(maxAbs <= 2e-2 * maxRef, `max abs error ${maxAbs} > 2e-2 * ${maxRef}`);
      }
      return { tier: r1.tier, metric: `rel ${rel.toExponential(2)}, max abs ${maxAbs.toExponential(2)}` };
    },
  };
}

runCaseTable('groupedGemm', SPECS.map(makeCase));

void test('groupedGemm rejects bad inputs with typed errors', async () => {
  const be = harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
  const a = randomBf16([6, 32], 1);
  const w = randomBf16([16, 32], 2);
  const out = new HostTensor('f32', [6, 16]);
  await be.groupedGemm(a, [w, null, w], [0, 3, 3, 6], out); // the valid call works
  const bad: Array<[string, () => unknown, RegExp]> = [
    ['null b for a group with rows', () => be.groupedGemm(a, [w, null], [0, 3, 6], out), /b\[1\] must be a tensor/],
    ['offsets length', () => be.groupedGemm(a, [w, w], [0, 6], out), /offsets must have 3 entries/],
    ['decreasing offsets', () => be.groupedGemm(a, [w, w], [0, 4, 2], out), /non-decreasing/],
    ['offsets not starting at 0', () => be.groupedGemm(a, [w, w], [1, 3, 6], out), /starting at 0/],
    ['too many rows', () => be.groupedGemm(a, [w, w], [0, 3, 7], out), /at least offsets\[2\] = 7 rows/],
    ['K mismatch', () => be.groupedGemm(a, [randomBf16([16, 31], 3)], [0, 6], out), /must be \[N, 32\]/],
    ['N mismatch', () => be.groupedGemm(a, [w, randomBf16([8, 32], 4)], [0, 3, 6], out), /must have 16 rows/],
    ['f32 a', () => be.groupedGemm(new HostTensor('f32', [6, 32]), [w], [0, 6], out), /a\.dtype/],
    ['out shape', () => be.groupedGemm(a, [w], [0, 6], new HostTensor('f32', [6, 15])), /out must be/],
  ];
  for (const [what, fn, re] of bad) {
    assert.throws(fn, (e: unknown) => e instanceof InvalidArgumentError && re.test((e as Error).message), what);
  }
});
