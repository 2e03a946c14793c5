/**
 * Memory objects: lifetimes, views, dispose and use-after-dispose, out-of-memory, GC safety net, and no leaks
 * over 10,000 allocate/dispose cycles.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DeviceTensor, DisposedError, HostTensor, InvalidArgumentError, OutOfMemoryError, PinnedBuffer, memoryStats, openBackend } from '../lib/index.js';
import { collect, nativeCounts } from './harness/memory.js';

const be = openBackend({ backend: 'cpu' });

void test('HostTensor holds dtype, shape and data; dispose makes data unusable; double dispose is harmless', () => {
  const t = HostTensor.from('bf16', [2, 2], [1, -2, 0.5, 3.140625]);
  assert.equal(t.numel, 4);
  assert.equal(t.byteLength, 8);
  assert.deepEqual(Array.from(t.toFloat32()), [1, -2, 0.5, 3.140625]);
  assert.ok(t.data instanceof Uint16Array);
  t.dispose();
  t.dispose();
  assert.equal(t.disposed, true);
  assert.throws(() => t.data, DisposedError);
  assert.throws(() => be.add(t, t, t), DisposedError);
  {
    using u = new HostTensor('i32', [3]);
    assert.deepEqual(Array.from(u.data), [0, 0, 0]);
  }
});

void test('PinnedBuffer: bytes and tensor views share memory; dispose detaches views and frees at once', () => {
  const before = memoryStats().cpu.pinned.count;
  const p = be.allocPinned(4096);
  assert.ok(p instanceof PinnedBuffer);
  assert.equal(memoryStats().cpu.pinned.count, before + 1);
  const f = p.tensor('f32', [4], 16);
  f.data.set([1, 2, 3, 4]);
  assert.equal(new Float32Array(p.bytes.buffer, 16, 4)[2], 3);
  assert.equal(p.bytes.byteOffset % 4096, 0);
  const bytes = p.bytes;
  p.dispose();
  p.dispose();
  assert.equal(memoryStats().cpu.pinned.count, before);
  assert.equal(bytes.byteLength, 0, 'views of disposed pinned memory must be detached, not dangling');
  assert.throws(() => p.bytes, DisposedError);
  assert.throws(() => f.data, DisposedError);
  assert.throws(() => p.tensor('u8', [1]), DisposedError);
  assert.throws(() => be.copy(f, new HostTensor('f32', [4])), DisposedError);
});

void test('allocHost: from 4 MiB native huge-page memory on the CPU backend, zeroed, freed by dispose (views retired); JS memory below', async () => {
  const before = memoryStats().cpu.pinned;
  const small = be.allocHost('f32', [1024, 1023]); // 4 KiB short of 4 MiB
  assert.equal(small.placement.kind, 'js');
  assert.deepEqual(memoryStats().cpu.pinned, before);
  const w = be.allocHost('bf16', [2048, 1024]); // 4 MiB
  assert.deepEqual(w.placement, { kind: 'pinned', backend: 'cpu' });
  assert.deepEqual(memoryStats().cpu.pinned, { count: before.count + 1, bytes: before.bytes + 4 * 2 ** 20 });
  assert.equal(w.data.byteOffset, 0);
  assert.ok(w.data.every((v) => v === 0), 'zeroed');
  // gemm reads it exactly as it reads the same values in JS memory
  const js = new HostTensor('bf16', [2048, 1024]);
  for (let i = 0; i < js.numel; i++) js.data[i] = 0x3c00 + (((i * 2654435761) >>> 20) % 384); // 1.0 .. 7.9
  w.data.set(js.data);
  for (const m of [1, 3]) {
    const a = new HostTensor('bf16', [m, 1024]);
    for (let i = 0; i < a.numel; i++) a.data[i] = 0xbc00 + (i % 128); // -1.0 ..
    const [o1, o2] = [new HostTensor('f32', [m, 2048]), new HostTensor('f32', [m, 2048])];
    await be.gemm(a, w, o1);
    await be.gemm(a, js, o2);
    assert.deepEqual(o1.data, o2.data, `m = ${m}: bitwise the same as over JS memory`);
  }
  const view = w.rows(7, 2);
  w.dispose();
  w.dispose();
  assert.deepEqual(memoryStats().cpu.pinned, before, 'dispose frees the memory at once');
  assert.equal(view.disposed, true);
  assert.throws(() => view.data, DisposedError);
  assert.throws(() => be.allocHost('q8' as 'f32', [4]), InvalidArgumentError);
  assert.throws(() => be.allocHost('f32', [-1]), InvalidArgumentError);
});

void test('allocHostAsync: allocHost with the pages mapped in off the JS thread; the same placement rules, typed errors, abort', async () => {
  const before = memoryStats().cpu.pinned;
  const small = await be.allocHostAsync('f32', [1024, 1023]);
  assert.equal(small.placement.kind, 'js');
  const w = await be.allocHostAsync('bf16', [2048, 1024]);
  assert.deepEqual(w.placement, { kind: 'pinned', backend: 'cpu' });
  assert.deepEqual(w.shape, [2048, 1024]);
  assert.deepEqual(memoryStats().cpu.pinned, { count: before.count + 1, bytes: before.bytes + 4 * 2 ** 20 });
  assert.ok(w.data.every((v) => v === 0), 'zeroed');
  w.data[w.numel - 1] = 7;
  assert.equal(w.data[w.numel - 1], 7);
  w.dispose();
  assert.deepEqual(memoryStats().cpu.pinned, before, 'dispose frees it');
  await assert.rejects(be.allocHostAsync('q8' as 'f32', [4]), InvalidArgumentError);
  await assert.rejects(be.allocHostAsync('f32', [-1]), InvalidArgumentError);
  const ac = new AbortController();
  ac.abort(new Error('stop'));
  await assert.rejects(be.allocHostAsync('bf16', [2048, 1024], { signal: ac.signal }), /stop/);
  assert.deepEqual(memoryStats().cpu.pinned, before, 'nothing left allocated after the abort');
});

void test('DeviceTensor: views share the allocation; disposing the root retires every view', async () => {
  const before = memoryStats().cpu.device;
  const d = be.alloc('f32', [8]);
  assert.ok(d instanceof DeviceTensor);
  assert.equal(memoryStats().cpu.device.bytes, before.bytes + 32);
  const hi = d.view('f32', [4], 16);
  await be.copy(HostTensor.from('f32', [8], [0, 1, 2, 3, 4, 5, 6, 7]), d);
  assert.deepEqual(Array.from((await be.download(hi)).data), [4, 5, 6, 7]);
  hi.dispose(); // a view's dispose does not free the allocation
  assert.equal(d.disposed, false);
  const other = d.view('f32', [2]);
  d.dispose();
  d.dispose();
  assert.equal(other.disposed, true);
  assert.deepEqual(memoryStats().cpu.device, before);
  assert.throws(() => other.view('f32', [1]), DisposedError);
  assert.throws(() => be.copy(other, new HostTensor('f32', [2])), DisposedError);
});

void test('zero-sized tensors are legal everywhere', async () => {
  using d = be.alloc('bf16', [0, 2048]);
  using p = be.allocPinned(0);
  const h = new HostTensor('bf16', [0, 2048]);
  assert.equal(d.byteLength, 0);
  assert.equal(p.bytes.byteLength, 0);
  await be.copy(h, d);
  await be.add(h, h, h);
});

void test('allocations beyond what exists give OutOfMemoryError and leave nothing behind', () => {
  const before = nativeCounts();
  assert.throws(() => be.alloc('u8', [2 ** 50]), (e: unknown) => e instanceof OutOfMemoryError && /CPU device pool/.test(e.message));
  assert.throws(() => be.allocPinned(2 ** 50), OutOfMemoryError);
  assert.deepEqual(nativeCounts(), before);
});

void test('disposing memory while an op uses it frees it only when the op settles', async () => {
  const before = memoryStats().cpu.pinned.count;
  const p = be.allocPinned(64 << 20);
  const src = p.tensor('f32', [16 << 20]);
  src.data.fill(1.5);
  const dst = new HostTensor('f32', [16 << 20]);
  const op = be.copy(src, dst);
  p.dispose(); // the op holds a lease: the bytes stay valid until it settles
  await op;
  assert.equal(memoryStats().cpu.pinned.count, before);
  assert.equal(dst.data[12345], 1.5);
});

void test('the GC frees memory that was never disposed (finalizer safety net), pinned views included', async () => {
  await collect();
  const before = memoryStats();
  (() => {
    for (let i = 0; i < 50; i++) {
      const p = be.allocPinned(1 << 16);
      p.tensor('u8', [16]).data[0] = 1;
      be.alloc('f32', [1024]);
    }
  })();
  assert.ok(memoryStats().cpu.pinned.count >= before.cpu.pinned.count + 50);
  for (let i = 0; i < 20 && memoryStats().cpu.pinned.count !== before.cpu.pinned.count; i++) await collect();
  assert.equal(memoryStats().cpu.pinned.count, before.cpu.pinned.count);
  assert.equal(memoryStats().cpu.device.count, before.cpu.device.count);
});

void test('10,000 allocate/dispose cycles leave RSS and native counts flat', async () => {
  const cycle = (n: number) => {
    for (let i = 0; i < n; i++) {
      const p = be.allocPinned(64 << 10);
      p.tensor('f32', [1024]).data[0] = i;
      p.bytes[100] = 1;
      const d = be.alloc('bf16', [32 << 10]);
      d.view('bf16', [16]).dispose();
      d.dispose();
      p.dispose();
    }
  };
  // Warm-up to the plateau: malloc arenas, the V8 heap and the JIT settle within a few thousand cycles (RSS
  // then stays level over any number of further blocks, measured: +0.1 MiB per 10,000 after the first).
  cycle(10_000);
  await collect();
  const { mallocInUse: heap0, ...counts } = memoryStats();
  const rss0 = process.memoryUsage.rss();
  cycle(10_000);
  await collect();
  const { mallocInUse: heap1, ...after } = memoryStats();
  assert.deepEqual(after, counts);
  // The C heap: 1 MiB over 10,000 cycles would be a leak of 100 bytes per cycle.
  if (heap0 !== undefined && heap1 !== undefined) {
    assert.ok(heap1 - heap0 < 1 << 20, `C heap grew by ${((heap1 - heap0) / 1024).toFixed(0)} KiB over 10,000 cycles`);
  }
  // RSS also moves with allocator fragmentation and V8's pages (seen: steps of a few MiB that then stay level),
  // so its bound is coarse: 16 MiB, i.e. 1.6 KiB per cycle.
  const grown = process.memoryUsage.rss() - rss0;
  assert.ok(grown < 16 << 20, `RSS grew by ${(grown / 1048576).toFixed(1)} MiB over 10,000 cycles`);
});
