/**
 * gatherRows (the zero-copy gather of the weight-residency issue, and the embedding lookup) on every backend:
 * bit-exact against a JS reference, repeated and -1 ids, sources in JS, pinned and device memory, bad ids rejected
 * before anything is written.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type Backend, HostTensor, InvalidArgumentError, openBackend } from '../lib/index.js';
import { onBackend } from './harness/backends.js';
import { rng } from './harness/ref.js';
import { type OpCase, runCaseTable } from './harness/table.js';

const CASES: OpCase[] = [];
for (const [rows, rowShape, dtype, n] of [
  [50, [64], 'bf16', 17],
  [7, [3, 5], 'f32', 40],
  [1000, [2048], 'bf16', 8],
  [9, [1], 'u8', 33],
] as const) {
  for (const srcIn of ['device', 'pinned'] as const) {
    CASES.push({
      op: 'gatherRows',
      name: `gatherRows ${dtype} [${rows}, ${rowShape.join(', ')}] n=${n} src in ${srcIn} memory`,
      async run(be: Backend) {
        const r = rng(rows * n);
        const src = new HostTensor(dtype, [rows, ...rowShape]);
        const bytes = new Uint8Array(src.data.buffer);
        for (let i = 0; i < bytes.length; i++) bytes[i] = (r() * 256) | 0;
        const ids = HostTensor.from('i32', [n], Array.from({ length: n }, (_, i) => (i % 5 === 4 ? -1 : Math.floor(r() * rows))));
        const out = new HostTensor(dtype, [n, ...rowShape]);
        new Uint8Array(out.data.buffer).fill(0xee);
        let tier;
        if (srcIn === 'pinned') {
          using pinned = be.allocPinned(src.byteLength);
          const view = pinned.tensor(dtype, [rows, ...rowShape]);
          new Uint8Array(view.data.buffer, view.data.byteOffset, view.byteLength).set(bytes);
          tier = await onBackend(be, [ids], [out], (i, o) => be.gatherRows(view, i[0]!, o[0]!));
        } else {
          tier = await onBackend(be, [src, ids], [out], (i, o) => be.gatherRows(i[0]!, i[1]!, o[0]!));
        }
        const rowBytes = src.byteLength / rows;
        const got = new Uint8Array(out.data.buffer);
        for (let i = 0; i < n; i++) {
          const id = ids.data[i]!;
          const want = id < 0 ? new Uint8Array(rowBytes) : bytes.subarray(id * rowBytes, (id + 1) * rowBytes);
          assert.ok(Buffer.from(got.subarray(i * rowBytes, (i + 1) * rowBytes)).equals(Buffer.from(want)), `row ${i} (id ${id})`);
        }
        return { tier };
      },
    });
  }
}
runCaseTable('gatherRows', CASES);

void test('gatherRows rejects bad ids before writing and bad shapes synchronously', async () => {
  const be = openBackend({ backend: 'cpu' });
  const src = HostTensor.from('f32', [3, 2], [1, 2, 3, 4, 5, 6]);
  const out = HostTensor.from('f32', [2, 2], [9, 9, 9, 9]);
  await assert.rejects(be.gatherRows(src, HostTensor.from('i32', [2], [0, 3]), out), (e: unknown) => e instanceof InvalidArgumentError && /ids\[1\] must be in \[-1, 3\), received 3/.test(e.message));
  assert.deepEqual(Array.from(out.data), [9, 9, 9, 9]);
  assert.throws(() => be.gatherRows(src, HostTensor.from('f32', [2], [0, 1]), out), /ids\.dtype must be one of i32/);
  assert.throws(() => be.gatherRows(src, HostTensor.from('i32', [2], [0, 1]), new HostTensor('f32', [2, 3])), /dst must be \[2, 2\]/);
  assert.throws(() => be.gatherRows(src, HostTensor.from('i32', [2], [0, 1]), new HostTensor('bf16', [2, 2])), /dst\.dtype must equal src\.dtype/);
  await be.gatherRows(src, HostTensor.from('i32', [2], [2, -1]), out);
  assert.deepEqual(Array.from(out.data), [5, 6, 0, 0]);
});
