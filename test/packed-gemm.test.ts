/**
 * Packed weights (Backend.packWeights, the panel64 layout of cpp/cpu/pack_weights.h) and gemm over them, on every
 * CPU tier (its kernel: vdpbf16ps on avx512bf16, 8-lane FMAs on avx2 and avx512, the scalar reference): against the
 * float64 reference (odd n and k, n below and above one 64-column panel, decode and prefill m), bitwise batch
 * invariance (a row of out does not depend on m or the other rows), the unpacked round trip of
 * the layout, and the typed errors. CUDA has no packed layout (packWeights rejects it).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { HostTensor, InvalidArgumentError, PackedTensor, bf16ToF32, packedNumel } from '../lib/index.js';
import { harnessBackends } from './harness/backends.js';
import { randomTensor, values } from './harness/inputs.js';
import { nmse, refGemm } from './harness/ref.js';

const SHAPES: Array<[number, number, number]> = [
  [1, 1, 1],
  [1, 128, 128],
  [7, 19, 111],
  [33, 64, 511],
  [64, 96, 989],
  [100, 200, 256],
  [1, 2048, 128],
  [13, 130, 3],
];

const cpuTiers = harnessBackends().filter((b) => b.name.startsWith('cpu-'));

for (const hb of cpuTiers) {
  void test(`gemm over packed weights matches float64 and the row-major gemm [${hb.name}]`, { skip: hb.available ? false : hb.reason! }, async () => {
    const be = hb.open();
    for (const [m, n, k] of SHAPES) {
      const a = randomTensor('bf16', [m, k], m * 31 + k);
      const b = randomTensor('bf16', [n, k], n * 17 + k);
      const wp = await be.packWeights(b);
      assert.deepEqual(wp.shape, [n, k]);
      assert.equal(wp.storage.numel, packedNumel(n, k));
      const ref = refGemm(values(a), values(b), m, n, k);
      for (const outT of ['f32', 'bf16'] as const) {
        const out = new HostTensor(outT, [m, n]);
        out.set(new Float32Array(m * n).fill(123)); // every element must be overwritten
        const tier = await be.gemm(a, wp, out);
        // the packed kernels: vdpbf16ps on avx512bf16, 8-lane FMAs on avx2 and avx512, the reference on scalar
        assert.equal(tier, be.isa === 'avx512' ? 'avx2' : be.isa, `ran ${tier} on ${be.name}`);
        const got = outT === 'bf16' ? bf16ToF32(out.data as Uint16Array) : (out.data as Float32Array);
        const tol = outT === 'f32' ? 1e-9 : 1e-5;
        const e = nmse(got, ref);
        assert.ok(e <= tol, `m=${m} n=${n} k=${k} ${outT}: NMSE ${e.toExponential(2)} > ${tol}`);
      }
      wp.dispose();
    }
  });

  void test(`gemm over packed weights is batch invariant, bitwise [${hb.name}]`, { skip: hb.available ? false : hb.reason! }, async () => {
    const be = hb.open();
    const [n, k] = hb.name === 'cpu-scalar' ? [70, 301] : [300, 1025];
    const b = await be.packWeights(randomTensor('bf16', [n, k], 5));
    const rows = 130; // more than one 96-row tile
    const a = randomTensor('bf16', [rows, k], 6);
    const full = new HostTensor('f32', [rows, n]);
    await be.gemm(a, b, full);
    for (const [start, count] of [[0, 1], [129, 1], [5, 7], [90, 12], [0, 97]] as const) {
      const part = new HostTensor('f32', [count, n]);
      await be.gemm(a.rows(start, count), b, part);
      const want = (full.data as Float32Array).subarray(start * n, (start + count) * n);
      assert.ok(Buffer.from(part.data.buffer).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength)), `rows [${start}, ${start + count}) differ from the full call`);
    }
  });
}

void test('the panel64 layout: element (r, x) of w sits at ((r / 64) * ceil(k / 2) + x / 2) * 128 + (r % 64) * 2 + x % 2, padding is zero', async () => {
  const be = harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
  for (const [n, k] of [[1, 1], [65, 7], [130, 64], [64, 129]] as const) {
    const w = randomTensor('bf16', [n, k], n + k);
    const p = await be.packWeights(w);
    const got = (p.storage as HostTensor<'bf16'>).data;
    const kp = Math.ceil(k / 2);
    const seen = new Uint8Array(got.length);
    for (let r = 0; r < n; r++) {
      for (let x = 0; x < k; x++) {
        const i = (Math.floor(r / 64) * kp + Math.floor(x / 2)) * 128 + (r % 64) * 2 + (x % 2);
        assert.equal(got[i], w.data[r * k + x], `n=${n} k=${k}: (${r}, ${x})`);
        seen[i] = 1;
      }
    }
    for (let i = 0; i < got.length; i++) if (!seen[i]) assert.equal(got[i], 0, `padding at ${i} is not zero`);
  }
});

void test('packed weights: typed errors for bad input, and no row views', async () => {
  const be = harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
  await assert.rejects(async () => be.packWeights(new HostTensor('f32', [4, 4])), (e: unknown) => e instanceof InvalidArgumentError && /w\.dtype must be one of bf16, received f32/.test(e.message));
  await assert.rejects(async () => be.packWeights(new HostTensor('bf16', [8])), (e: unknown) => e instanceof InvalidArgumentError && /w must be 2-D \[N, K\]/.test(e.message));
  await assert.rejects(async () => be.packWeights(new HostTensor('bf16', [0, 4])), (e: unknown) => e instanceof InvalidArgumentError && /N, K >= 1/.test(e.message));
  await assert.rejects(async () => be.packWeights({} as HostTensor), (e: unknown) => e instanceof InvalidArgumentError && /w must be a HostTensor/.test(e.message));
  const wp = await be.packWeights(randomTensor('bf16', [8, 4], 1));
  assert.ok(wp instanceof PackedTensor);
  assert.throws(() => wp.rows(0, 1), (e: unknown) => e instanceof InvalidArgumentError && /cannot be viewed/.test(e.message));
  assert.throws(() => wp.reshape(), (e: unknown) => e instanceof InvalidArgumentError && /cannot be reshaped/.test(e.message));
  // a must be bf16 (packed weights are bf16)
  await assert.rejects(async () => be.gemm(new HostTensor('f32', [2, 4]), wp, new HostTensor('f32', [2, 8])), (e: unknown) => e instanceof InvalidArgumentError && /b\.dtype must equal a\.dtype \(f32\), received bf16/.test(e.message));
  // K must agree with the logical shape
  await assert.rejects(async () => be.gemm(new HostTensor('bf16', [2, 5]), wp, new HostTensor('f32', [2, 8])), (e: unknown) => e instanceof InvalidArgumentError && /b must be \[N, 5\]/.test(e.message));
  wp.dispose();
  await assert.rejects(async () => be.gemm(new HostTensor('bf16', [2, 4]), wp, new HostTensor('f32', [2, 8])), (e: unknown) => e instanceof Error && /disposed/.test(e.message));
});

void test('packWeights: aborting rejects with the reason and leaves nothing behind', async () => {
  const be = harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
  const ac = new AbortController();
  ac.abort(new Error('stop'));
  await assert.rejects(be.packWeights(randomTensor('bf16', [64, 64], 2), { signal: ac.signal }), /stop/);
});
