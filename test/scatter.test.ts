/**
 * scatterRows (the KV cache's writes: a step's K / V rows into their pages) on every backend: rows land at their ids
 * and nowhere else, f32 rows rounded to bf16 / f16 exactly as the float64 reference (NaN, denormals, ties,
 * overflow), same-dtype rows copied bit for bit; bad and repeated ids rejected before any row is written.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type Backend, type DType, HostTensor, InvalidArgumentError, openBackend } from '../lib/index.js';
import { BF16, F16, isNaNBits16, rng, roundTo } from './harness/ref.js';
import { type OpCase, runCaseTable } from './harness/table.js';

/** f32 values from bit patterns: the special ones first, then random bits (every exponent). */
function f32Values(n: number, seed: number): Float32Array {
  const special = [0, 0x80000000, 1, 0x007fffff, 0x00800000, 0x7f7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0x3f808000, 0x3f818000, 0x477ff000, 0x477fefff, 0x33000000, 0x387fe000];
  const r = rng(seed);
  const u = new Uint32Array(n);
  for (let i = 0; i < n; i++) u[i] = i < special.length ? special[i]! : Math.floor(r() * 4294967296);
  return new Float32Array(u.buffer);
}

const CASES: OpCase[] = [];
for (const [src, dst, rows, row, n] of [
  ['f32', 'bf16', 300, 128, 64],
  ['f32', 'f16', 40, 64, 40],
  ['f32', 'f32', 9, 33, 5],
  ['bf16', 'bf16', 2000, 256, 700],
  ['u8', 'u8', 17, 3, 16],
  ['f32', 'bf16', 5, 7, 0],
] as const) {
  CASES.push({
    op: 'scatterRows',
    name: `scatterRows ${src} -> ${dst} [${n}, ${row}] into ${rows} rows`,
    anyTier: true, // a CPU op: on a CUDA backend it runs on the CPU
    async run(be: Backend) {
      const r = rng(rows * 31 + n);
      const s = new HostTensor(src as DType, [n, row]);
      if (src === 'f32') s.data.set(f32Values(n * row, rows + n));
      else for (let i = 0; i < s.numel; i++) (s.data as Uint8Array | Uint16Array)[i] = Math.floor(r() * (src === 'u8' ? 256 : 65536));
      // n distinct destination rows, in a shuffled order
      const perm = Array.from({ length: rows }, (_, i) => i);
      for (let i = rows - 1; i > 0; i--) {
        const j = Math.floor(r() * (i + 1));
        [perm[i], perm[j]] = [perm[j]!, perm[i]!];
      }
      const ids = HostTensor.from('i32', [n], perm.slice(0, n));
      const out = new HostTensor(dst as DType, [rows, row]);
      const ob = new Uint8Array(out.data.buffer, out.data.byteOffset, out.byteLength);
      ob.fill(0xee);
      const tier = await be.scatterRows(s, ids, out);
      const target = new Int32Array(rows).fill(-1);
      ids.data.forEach((id, i) => (target[id] = i));
      const sb = new Uint8Array(s.data.buffer, s.data.byteOffset, s.byteLength);
      const rowBytes = out.byteLength / rows;
      for (let d = 0; d < rows; d++) {
        const i = target[d]!;
        if (i < 0) {
          assert.ok(ob.subarray(d * rowBytes, (d + 1) * rowBytes).every((b) => b === 0xee), `row ${d} (no id) untouched`);
        } else if (src === dst) {
          assert.ok(Buffer.from(ob.subarray(d * rowBytes, (d + 1) * rowBytes)).equals(Buffer.from(sb.subarray(i * rowBytes, (i + 1) * rowBytes))), `row ${d} = src row ${i}`);
        } else {
          const fmt = dst === 'bf16' ? BF16 : F16;
          const bits = out.data as Uint16Array;
          const x = s.data as Float32Array;
          for (let e = 0; e < row; e++) {
            const v = x[i * row + e]!, got = bits[d * row + e]!;
            if (Number.isNaN(v)) assert.ok(isNaNBits16(got, fmt), `row ${d} [${e}]: NaN -> 0x${got.toString(16)}`);
            else assert.equal(got, roundTo(v, fmt), `row ${d} [${e}]: ${v} -> 0x${got.toString(16)}`);
          }
        }
      }
      return { tier };
    },
  });
}
runCaseTable('scatterRows', CASES);

void test('scatterRows rejects bad and repeated ids before writing, bad shapes and dtypes synchronously', async () => {
  const be = openBackend({ backend: 'cpu' });
  const src = HostTensor.from('f32', [3, 2], [1, 2, 3, 4, 5, 6]);
  const dst = HostTensor.from('f32', [4, 2], [9, 9, 9, 9, 9, 9, 9, 9]);
  await assert.rejects(be.scatterRows(src, HostTensor.from('i32', [3], [0, 4, 1]), dst), (e: unknown) => e instanceof InvalidArgumentError && /ids\[1\] must be in \[0, 4\), received 4/.test(e.message));
  await assert.rejects(be.scatterRows(src, HostTensor.from('i32', [3], [2, -1, 1]), dst), /ids\[1\] must be in \[0, 4\), received -1/);
  await assert.rejects(be.scatterRows(src, HostTensor.from('i32', [3], [2, 0, 2]), dst), (e: unknown) => e instanceof InvalidArgumentError && /distinct, received 2 at ids\[0\] and ids\[2\]/.test(e.message));
  // the sorted-copy duplicate check (few ids into many rows)
  const big = new HostTensor('f32', [1000, 2]);
  await assert.rejects(be.scatterRows(src, HostTensor.from('i32', [3], [999, 5, 999]), big), /distinct, received 999 at ids\[0\] and ids\[2\]/);
  assert.ok(big.data.every((x) => x === 0));
  assert.deepEqual(Array.from(dst.data), [9, 9, 9, 9, 9, 9, 9, 9]);
  assert.throws(() => be.scatterRows(src, HostTensor.from('i32', [2], [0, 1]), dst), /ids must be \[3\] \(src's rows\), received \[2\]/);
  assert.throws(() => be.scatterRows(src, HostTensor.from('f32', [3], [0, 1, 2]), dst), /ids\.dtype must be one of i32/);
  assert.throws(() => be.scatterRows(src, HostTensor.from('i32', [3], [0, 1, 2]), new HostTensor('f32', [4, 3])), /dst must be \[rows, 2\]/);
  assert.throws(() => be.scatterRows(HostTensor.from('bf16', [3, 2], [1, 2, 3, 4, 5, 6]), HostTensor.from('i32', [3], [0, 1, 2]), new HostTensor('f32', [4, 2])), /bf16 -> f32/);
  await be.scatterRows(src, HostTensor.from('i32', [3], [3, 0, 2]), dst);
  assert.deepEqual(Array.from(dst.data), [3, 4, 9, 9, 5, 6, 1, 2]);
});
