/**
 * Bad input never crashes and never corrupts state: every public function answers wrong types, dtypes, shapes,
 * negative sizes and detached buffers with a typed error whose message names the argument, and the native
 * surface itself survives garbage (for callers that bypass lib/).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  BackendUnavailableError,
  DeviceTensor,
  DisposedError,
  HostTensor,
  InvalidArgumentError,
  MAX_VIEW_BYTES,
  MoeOffloadError,
  openBackend,
} from '../lib/index.js';
import { nativeCounts } from './harness/memory.js';
import { native } from '../lib/native.js';

const be = openBackend({ backend: 'cpu' });

function invalid(re: RegExp) {
  return (e: unknown) => e instanceof InvalidArgumentError && e.code === 'MOE_INVALID_ARGUMENT' && re.test(e.message);
}

void test('openBackend rejects unknown backends, devices, tiers and options', () => {
  assert.throws(() => openBackend({ backend: 'tpu' as 'cpu' }), invalid(/options\.backend .*received "tpu"/));
  assert.throws(() => openBackend({ device: -1 }), invalid(/options\.device .*received -1/));
  assert.throws(() => openBackend({ device: 0.5 }), invalid(/options\.device/));
  assert.throws(() => openBackend({ backend: 'cpu', isa: 'sse2' as 'avx2' }), invalid(/options\.isa .*received "sse2"/));
  assert.throws(() => openBackend(null as unknown as object), invalid(/options must be an object/));
});

void test('HostTensor rejects bad dtypes, shapes, data and detached buffers', () => {
  assert.throws(() => new HostTensor('f64' as 'f32', [1]), invalid(/dtype must be one of .*received "f64"/));
  assert.throws(() => new HostTensor('f32', [2, -1]), invalid(/shape\[1\] must be a non-negative integer, received -1/));
  assert.throws(() => new HostTensor('f32', [1.5]), invalid(/shape\[0\]/));
  assert.throws(() => new HostTensor('f32', 'abc' as unknown as number[]), invalid(/shape must be an array/));
  assert.throws(() => new HostTensor('f32', [1, 1, 1, 1, 1, 1, 1, 1, 1]), invalid(/at most 8 dimensions/));
  assert.throws(() => new HostTensor('f32', [2 ** 30, 2 ** 30]), invalid(/too many elements/));
  assert.throws(() => new HostTensor('bf16', [2], new Float32Array(2) as unknown as Uint16Array), invalid(/Uint16Array/));
  assert.throws(() => new HostTensor('f32', [3], new Float32Array(2)), invalid(/3 elements .*received 2/));
  const detached = new Float32Array(4);
  structuredClone(detached.buffer, { transfer: [detached.buffer as ArrayBuffer] });
  assert.throws(() => new HostTensor('f32', [4], detached), invalid(/detached/));
  assert.throws(() => HostTensor.from('f32', [2], [1]), invalid(/values must have 2 elements for shape \[2\], received 1/));
});

void test('a buffer detached after the tensor was made is refused by the op, not read', async () => {
  const t = HostTensor.from('f32', [4], [1, 2, 3, 4]);
  const out = new HostTensor('f32', [4]);
  structuredClone(t.data.buffer, { transfer: [t.data.buffer as ArrayBuffer] });
  assert.throws(() => be.add(t, t, out), invalid(/a: its ArrayBuffer is detached|must hold 16 bytes/));
  assert.deepEqual(Array.from(out.data), [0, 0, 0, 0]);
});

void test('alloc, allocPinned and views reject negative, fractional and oversized requests', () => {
  assert.throws(() => be.alloc('f32', [-4]), invalid(/shape\[0\]/));
  assert.throws(() => be.alloc('x' as 'f32', [4]), invalid(/dtype/));
  assert.throws(() => be.allocPinned(-1), invalid(/bytes must be a non-negative integer, received -1/));
  assert.throws(() => be.allocPinned(1.5), invalid(/bytes/));
  assert.throws(() => be.allocPinned('64' as unknown as number), invalid(/received "64"/));
  using p = be.allocPinned(64);
  assert.throws(() => p.tensor('f32', [4], 2), invalid(/byteOffset must be a multiple of 4/));
  assert.throws(() => p.tensor('f32', [17]), invalid(/does not fit the buffer's 64 bytes/));
  using d = be.alloc('f32', [4]);
  assert.throws(() => d.view('f32', [5]), invalid(/does not fit the allocation's 16 bytes/));
  assert.throws(() => d.view('f32', [1], -4), invalid(/byteOffset/));
});

void test('a pinned buffer larger than a JS view can address has no views: a typed error, not an abort', () => {
  // Node exposes native memory to JS as an external buffer of at most buffer.constants.MAX_LENGTH bytes; a view of
  // a larger one used to abort the process (double free inside Node's external-buffer path). Virtual memory only:
  // the pages are never touched.
  using big = be.allocPinned(MAX_VIEW_BYTES + 4096);
  assert.throws(() => big.tensor('u8', [16]), invalid(/at most \d+ bytes \(Node's limit for external buffers\)/));
  assert.throws(() => big.bytes, invalid(/PinnedBuffer\.bytes/));
});

void test('ops reject wrong tensor types, dtypes, shapes, streams and signals before queuing anything', () => {
  const a = HostTensor.from('f32', [2, 3], [1, 2, 3, 4, 5, 6]);
  const b16 = new HostTensor('bf16', [2, 3]);
  const i32 = new HostTensor('i32', [2, 3]);
  assert.throws(() => be.add(a, [1, 2] as unknown as HostTensor, a), invalid(/b must be a HostTensor or DeviceTensor, received \[1, 2\]/));
  assert.throws(() => be.add(a, b16, a), invalid(/b\.dtype must equal a\.dtype \(f32\), received bf16/));
  assert.throws(() => be.add(i32, i32, i32), invalid(/a\.dtype must be one of f32, f16, bf16, received i32/));
  assert.throws(() => be.add(a, new HostTensor('f32', [3, 2]), a), invalid(/b must have a's shape \[2, 3\], received \[3, 2\]/));
  assert.throws(() => be.convert(a, new HostTensor('bf16', [6])), invalid(/dst must have src's shape/));
  assert.throws(() => be.copy(a, new HostTensor('f32', [5])), invalid(/dst must hold as many bytes as src \(24\), received 20/));
  assert.throws(() => be.gemm(a, new HostTensor('f32', [4, 2]), new HostTensor('f32', [2, 4])), invalid(/b must be \[N, 3\]/));
  assert.throws(() => be.gemm(a, new HostTensor('f32', [4, 3]), new HostTensor('f32', [4, 2])), invalid(/out must be \[2, 4\]/));
  assert.throws(() => be.gemm(new HostTensor('f32', [6]), a, a), invalid(/a must be 2-D/));
  assert.throws(() => be.gemm(a, b16, new HostTensor('f32', [2, 2])), invalid(/b\.dtype must equal a\.dtype/));
  assert.throws(() => be.add(a, a, a, { stream: {} as never }), invalid(/options\.stream must be a Stream/));
  assert.throws(() => be.add(a, a, a, { signal: 'stop' as never }), invalid(/options\.signal must be an AbortSignal/));
  assert.throws(() => be.add(a, a, a, 5 as never), invalid(/options must be an object/));
  assert.deepEqual(Array.from(a.data), [1, 2, 3, 4, 5, 6]);
});

void test('upload, download and the conversion helpers reject what they cannot take', async () => {
  await assert.rejects(be.upload([1, 2] as unknown as HostTensor), invalid(/host must be a HostTensor, received \[1, 2\]/));
  await assert.rejects(be.download(new HostTensor('f32', [1]) as unknown as DeviceTensor), invalid(/dev must be a DeviceTensor/));
  assert.throws(() => be.convert(new HostTensor('i32', [2]), new HostTensor('f32', [2])), invalid(/src\.dtype must be one of f32, f16, bf16, received i32/));
  assert.throws(() => be.gemm(new HostTensor('f16', [1, 1]), new HostTensor('f16', [1, 1]), new HostTensor('f32', [1, 1])), invalid(/a\.dtype must be one of f32, bf16, received f16/));
});

void test('streams and events report misuse with typed errors', async () => {
  const s = be.createStream();
  const e = be.createEvent();
  assert.throws(() => be.createStream({ priority: 'urgent' as 'high' }), invalid(/priority/));
  assert.throws(() => e.record({} as never), invalid(/stream must be a Stream/));
  assert.throws(() => s.waitEvent({} as never), invalid(/event must be an Event/));
  e.record(s);
  await e.synchronize();
  assert.throws(() => e.elapsedMs(e), invalid(/timing: true/));
  s.dispose();
  s.dispose();
  await assert.rejects(s.synchronize(), DisposedError);
  assert.throws(() => e.record(s), DisposedError);
  assert.throws(() => be.add(new HostTensor('f32', [1]), new HostTensor('f32', [1]), new HostTensor('f32', [1]), { stream: s }), DisposedError);
  e.dispose();
  assert.throws(() => e.isComplete(), DisposedError);
});

void test('typed errors carry the caller stack and a stable code', () => {
  try {
    be.alloc('f32', [-1]);
    assert.fail('no error');
  } catch (e) {
    assert.ok(e instanceof MoeOffloadError);
    assert.match((e as Error).stack ?? '', /errors\.test\.js/);
  }
  assert.throws(() => openBackend({ backend: 'cuda', device: 0 }), (e: unknown) => e instanceof BackendUnavailableError || e === undefined);
});

void test('an op that fails after submission rejects with a typed error whose stack names the awaiting caller', async () => {
  // an id out of range is found by the native kernel on the stream, after gatherRows returned its Promise
  const src = new HostTensor('f32', [3, 4]);
  const out = new HostTensor('f32', [2, 4]);
  async function callerOfTheOp(): Promise<void> {
    await be.gatherRows(src, HostTensor.from('i32', [2], [0, 3]), out);
  }
  let p: Promise<void> | undefined;
  assert.doesNotThrow(() => {
    p = callerOfTheOp();
  }, 'the failure is asynchronous');
  try {
    await p;
    assert.fail('no error');
  } catch (e) {
    assert.ok(e instanceof InvalidArgumentError, String(e));
    assert.equal((e as InvalidArgumentError).code, 'MOE_INVALID_ARGUMENT');
    assert.match((e as Error).stack ?? '', /callerOfTheOp/);
    assert.match((e as Error).stack ?? '', /errors\.test\.js/);
  }
});

void test('the native surface survives garbage arguments: typed errors, no crash, no leak', async () => {
  const n = native();
  const before = nativeCounts();
  const s = new n.Stream(0, 0, 0);
  const garbage: unknown[] = [undefined, null, 0, -1, 1.5, NaN, 'x', {}, [], () => 1, 2 ** 60, [{}, 0, 1], { mem: {}, offset: 0, bytes: 1 }];
  for (const g of garbage) {
    for (const op of ['copy', 'convert', 'add', 'gemm'] as const) {
      let threw = false;
      try {
        await (n[op] as (...args: unknown[]) => Promise<unknown>)(g, g, g);
      } catch (e) {
        threw = true;
        assert.match(String((e as { code?: string }).code), /^MOE_/, `${op}(${String(g)}) threw without a code: ${String(e)}`);
      }
      assert.ok(threw, `${op} accepted garbage ${String(g)}`);
      try {
        await (n[op] as (...args: unknown[]) => Promise<unknown>)(s, { a: g, b: g, out: g, src: g, dst: g, dtype: g, n: g, m: g, k: g });
        assert.fail(`${op} accepted garbage params`);
      } catch (e) {
        assert.match(String((e as { code?: string }).code), /^MOE_/);
      }
    }
    if (g === 0) continue; // a valid backend code and a valid (empty) size
    assert.throws(() => new n.Memory(g as 0, 0, 0, 16), (e: unknown) => /^MOE_/.test(String((e as { code?: string }).code)));
    assert.throws(() => new n.Memory(0, 0, 1, g as number), (e: unknown) => /^MOE_/.test(String((e as { code?: string }).code)));
  }
  // An out-of-range view into native memory is refused, not read (validation throws before anything is queued).
  const mem = new n.Memory(0, 0, 0, 64);
  assert.throws(() => n.copy(s, { src: [mem, 60, 8], dst: [new Uint8Array(8), 0, 8] }), /exceeds the memory's 64 bytes/);
  assert.throws(() => n.copy(s, { src: [mem, 0, 32], dst: [mem, 16, 32] }), /overlap/);
  assert.throws(() => n.copy(s, { src: [mem, -1, 8], dst: [new Uint8Array(8), 0, 8] }), /src\.offset must be a non-negative integer, received -1/);
  assert.throws(() => n.copy(s, { src: [mem, 0, 8], dst: [{}, 0, 8] } as never), /dst\[0\] must be a Memory or a TypedArray/);
  assert.throws(() => n.copy(s, { src: { mem, offset: 0, bytes: 8 }, dst: [new Uint8Array(8), 0, 8] } as never), /src must be a tensor descriptor \[Memory \| TypedArray, offset, bytes\], received/);
  mem.dispose();
  assert.throws(() => n.copy(s, { src: [mem, 0, 8], dst: [new Uint8Array(8), 0, 8] }), /disposed/);
  s.dispose();
  assert.deepEqual(nativeCounts(), before);
  assert.ok(DeviceTensor);
});

void test('the benches\' probes: typed errors for bad arguments; dotProbe counts threads x iters x 12 multiply-adds', () => {
  const n = native();
  const code = (e: unknown) => (e as { code?: string }).code === 'MOE_INVALID_ARGUMENT';
  for (const g of [undefined, 'x', NaN, 0, 0.5, -3, 1e11]) assert.throws(() => n.dotProbe(g as number), code, `dotProbe(${String(g)})`);
  for (const g of [undefined, 'x', new Float64Array(4), new Uint8Array(4), [1, 2]]) assert.throws(() => n.readProbe(g as unknown as Float32Array), code, `readProbe(${String(g)})`);
  // FLOP of one multiply-add of the active tier's kind (the probe's claim, counted here): vdpbf16ps on 512 bits (32
  // bf16 pairs), an f32 FMA on 512 or 256 bits, none on the scalar tier
  const { isa, threads } = n.info().cpu;
  const per = ({ avx512bf16: 64, avx512: 32, avx2: 16 } as Record<string, number>)[isa] ?? 0;
  const r = n.dotProbe(1000);
  assert.equal(r.flops, threads * 1000 * 12 * per);
  assert.ok(r.seconds >= 0 && Number.isFinite(r.seconds));
  const s = n.readProbe(new Float32Array([1, 2, 3.5]));
  assert.equal(s.sum, 6.5);
});
