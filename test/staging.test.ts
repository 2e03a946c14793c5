/**
 * Activation staging (lib/residency/staging.ts) on the CPU backend: bit-exact D2H / H2D round trips at odd sizes,
 * FIFO waiting when every buffer is busy, event ordering of uploads against a compute stream (no host sync),
 * aborts, dispose with waiters, typed errors, and a pipelined loop of 1,000 layer steps
 * (download -> JS transform -> upload -> device op) checked against a float64 reference, without leaks.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DisposedError, HostTensor, InvalidArgumentError, StagedTensor, StagingRing, openBackend } from '../lib/index.js';
import { collect, nativeCounts } from './harness/memory.js';

const ticks = async (n = 20): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

const be = openBackend({ backend: 'cpu' });

/** Deterministic bytes (xorshift32). */
function fill(bytes: Uint8Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
}
const u8 = (t: HostTensor): Buffer => Buffer.from(t.data.buffer, t.data.byteOffset, t.byteLength);

/** Whether a Promise has settled (after letting pending callbacks run). */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  await ticks();
  return done;
}

void test('D2H and H2D round trips are bit-exact at odd sizes and unaligned device offsets', async () => {
  const ring = await StagingRing.create(be, { bufferBytes: 1_000_003 });
  assert.equal(ring.buffers, 2);
  for (const [bytes, off] of [[1, 0], [3, 1], [4097, 7], [65_537, 3], [1_000_003, 5]] as const) {
    const src = new HostTensor('u8', [bytes]);
    fill(src.data, bytes);
    using dev = be.alloc('u8', [bytes + off]);
    const view = dev.bytesView(off, bytes);
    await be.copy(src, view);
    // D2H
    const down = await ring.download(view);
    assert.ok(down instanceof StagedTensor);
    assert.deepEqual(down.shape, [bytes]);
    assert.equal(down.placement.kind, 'pinned');
    assert.ok(u8(down).equals(u8(src)), `${bytes} bytes D2H differ`);
    down.release();
    // H2D from JS memory (staged through a buffer) into a fresh region
    using dev2 = be.alloc('u8', [bytes + off]);
    const v2 = dev2.bytesView(off, bytes);
    await ring.upload(src, v2).done;
    const back = new HostTensor('u8', [bytes]);
    await be.copy(v2, back);
    assert.ok(u8(back).equals(u8(src)), `${bytes} bytes H2D (staged) differ`);
    // H2D straight from a held lease
    const lease = await ring.acquire('u8', [bytes]);
    fill(lease.data, bytes ^ 0x55);
    const expect = Buffer.from(u8(lease));
    const up = ring.upload(lease, v2);
    lease.release(); // fine right after upload: the buffer comes back when the copy is done
    await up.done;
    await be.copy(v2, back);
    assert.ok(back.data.every((b, i) => b === expect[i]), `${bytes} bytes H2D (lease) differ`);
  }
  // dtype and shape carried through; bf16 bits untouched
  const x = HostTensor.from('bf16', [7, 13], Array.from({ length: 91 }, (_, i) => (i - 45) / 8));
  using dx = await be.upload(x);
  using hx = await ring.download(dx);
  assert.equal(hx.dtype, 'bf16');
  assert.deepEqual(hx.shape, [7, 13]);
  assert.deepEqual(Array.from(hx.data), Array.from(x.data));
  hx.release();
  assert.equal(ring.available, 2);
  ring.dispose();
});

void test('a third request waits (FIFO) until a buffer is released, then proceeds', async () => {
  const ring = await StagingRing.create(be, { bufferBytes: 4096 });
  const src = HostTensor.from('f32', [3, 5], Array.from({ length: 15 }, (_, i) => i * 1.5));
  using dev = await be.upload(src);
  const a = await ring.download(dev);
  const b = await ring.download(dev);
  assert.notEqual(a.index, b.index);
  assert.equal(ring.available, 0);
  const c = ring.download(dev);
  const d = ring.acquire('u8', [16]);
  assert.equal(await settled(c), false, 'c must wait while both buffers are held');
  assert.equal(ring.waiting, 2);
  b.release();
  const hc = await c;
  assert.equal(hc.index, b.index, 'c gets the buffer b released');
  assert.deepEqual(Array.from(hc.data), Array.from(src.data));
  assert.throws(() => b.data, DisposedError, 'a released view is unusable');
  assert.equal(await settled(d), false, 'd still waits');
  a.release();
  assert.equal((await d).index, a.index);
  assert.equal(ring.stats.waits, 2);
  // a buffer still read by a pending upload is not handed out: upload from hc, release at once
  const blocker = new HostTensor('u8', [128 << 20]);
  using bigDev = be.alloc('u8', [128 << 20]);
  const slow = be.copy(blocker, bigDev, { stream: ring.stream }); // occupies the copy stream
  const up = ring.upload(hc, dev, { after: null });
  hc.release();
  // Ordering, not timing (a GPU may finish the blocker before any check of "still pending"): the buffer is handed
  // out only once its upload has copied it.
  let copied = false;
  void up.done.then(() => { copied = true; });
  const e = ring.acquire('u8', [4096]);
  const he = await e;
  assert.ok(copied, 'the buffer is busy until its upload has copied it');
  await slow;
  await up.done;
  assert.equal(he.index, hc.index);
  he.release();
  (await d).release();
  assert.equal(ring.available, 2);
  ring.dispose();
});

void test("a compute op queued after waiting on the upload's event sees the uploaded data (no host sync)", async () => {
  const ring = await StagingRing.create(be, { bufferBytes: 1 << 20 });
  const n = 200_003; // f32 elements
  const data = HostTensor.from('f32', [n], Array.from({ length: n }, (_, i) => (i % 1000) - 500));
  using dst = be.alloc('f32', [n]);
  using zeros = await be.upload(new HostTensor('f32', [n]));
  using out = be.alloc('f32', [n]);
  // Keep the copy stream busy so the upload is far from done when the compute op is queued.
  const blocker = new HostTensor('u8', [128 << 20]);
  using bigDev = be.alloc('u8', [128 << 20]);
  const slow = be.copy(blocker, bigDev, { stream: ring.stream });
  // Both buffers held: the upload cannot even get a buffer yet; its event is waitable anyway (reserved at submit).
  const h1 = await ring.acquire('u8', [8]);
  const h2 = await ring.acquire('u8', [8]);
  const up = ring.upload(data, dst, { after: null });
  void be.stream.waitEvent(up.event);
  const add = be.add(dst, zeros, out); // on be.stream, after the wait
  assert.equal(await settled(up.done), false, 'upload not done yet');
  assert.equal(await settled(add), false, 'the compute op waits for the upload');
  setTimeout(() => h1.release(), 30);
  await add;
  assert.equal(await settled(up.done), true);
  const back = await be.download(out);
  assert.deepEqual(back.data, data.data);
  await slow;
  h2.release();
  // A caller-owned event reused every step works the same.
  const ev = be.createEvent();
  for (let k = 0; k < 3; k++) {
    const vals = HostTensor.from('f32', [n], Array.from({ length: n }, (_, i) => i * k));
    const u = ring.upload(vals, dst, { event: ev });
    void be.stream.waitEvent(ev);
    await be.add(dst, zeros, out);
    assert.deepEqual((await be.download(out)).data, vals.data);
    await u.done;
  }
  ev.dispose();
  ring.dispose();
});

void test('download after: an Event orders the D2H after the producing kernel', async () => {
  const ring = await StagingRing.create(be, { bufferBytes: 4 * 100_001 });
  const n = 100_001;
  const a = HostTensor.from('f32', [n], Array.from({ length: n }, (_, i) => i));
  using da = await be.upload(a);
  using dy = be.alloc('f32', [n]);
  const compute = be.createStream();
  const ready = be.createEvent();
  for (let k = 0; k < 5; k++) {
    void be.add(da, da, dy, { stream: compute }); // y = 2a
    ready.record(compute);
    using y = await ring.download(dy, { after: ready });
    for (let i = 0; i < n; i += 997) assert.equal(y.data[i], 2 * i);
    void be.copy(new HostTensor('f32', [n]), dy, { stream: compute }); // clobber for the next round
  }
  await compute.synchronize();
  compute.dispose();
  ready.dispose();
  ring.dispose();
});

/** Rejects if `p` has not settled within `ms` (a deadlock shows as a failure, not a hung suite). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms (deadlock?)`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

void test('no deadlock when the compute stream waits on an upload still waiting for a buffer', async () => {
  const ring = await StagingRing.create(be, { bufferBytes: 4 * 1001 });
  const n = 1001;
  const vals = (k: number) => HostTensor.from('f32', [n], Array.from({ length: n }, (_, i) => i * 3 + k));
  using zeros = await be.upload(new HostTensor('f32', [n]));
  using d1 = be.alloc('f32', [n]);
  using d2 = await be.upload(vals(2));
  using d3 = be.alloc('f32', [n]);
  using out1 = be.alloc('f32', [n]);
  const a = await ring.acquire('f32', [n]);
  const b = await ring.acquire('f32', [n]);
  a.data.set(vals(3).data);
  const u1 = ring.upload(vals(1), d1); // no free buffer: not queued on the copy stream yet
  void be.stream.waitEvent(u1.event); // the compute stream now waits for it
  const add = be.add(d1, zeros, out1);
  const down = ring.download(d2); // after be.stream: behind the wait on u1 (waits for a buffer too)
  const r = ring.upload(a, d3, { after: be.stream }); // has its buffer, but its `after` point lies behind u1
  a.release();
  assert.equal(await settled(r.done), false);
  b.release(); // u1 gets b, the compute stream goes on, then r and the download
  await within(add, 5000, 'compute after u1');
  const h = await within(down, 5000, 'download');
  await within(r.done, 5000, 'own-buffer upload');
  assert.deepEqual(h.data, vals(2).data);
  h.release();
  assert.deepEqual((await be.download(out1)).data, vals(1).data);
  assert.deepEqual((await be.download(d3)).data, vals(3).data);
  assert.equal(ring.available, 2);
  ring.dispose();
});

void test('abort while waiting for a buffer', async () => {
  const ring = await StagingRing.create(be, { bufferBytes: 256, buffers: 1 });
  using dev = be.alloc('u8', [256]);
  const held = await ring.acquire('u8', [256]);
  const ac = new AbortController();
  const p = ring.download(dev, { signal: ac.signal });
  const q = ring.acquire('u8', [4]);
  const ac2 = new AbortController();
  const up = ring.upload(new HostTensor('u8', [256]), dev, { signal: ac2.signal });
  void be.stream.waitEvent(up.event);
  assert.equal(ring.waiting, 3);
  const reason = new Error('stop');
  ac.abort(reason);
  await assert.rejects(p, (e) => e === reason);
  ac2.abort();
  await assert.rejects(up.done, { name: 'AbortError' });
  await be.synchronize(); // the compute stream waiting on the aborted upload's event is not stranded
  assert.equal(ring.waiting, 1);
  held.release();
  (await q).release();
  assert.equal(ring.available, 1);
  // already aborted
  await assert.rejects(ring.download(dev, { signal: AbortSignal.abort(reason) }), (e) => e === reason);
  assert.equal(ring.available, 1);
  ring.dispose();
});

void test('dispose rejects waiters, frees buffers and makes held views unusable', async () => {
  await collect();
  const base = nativeCounts();
  const ring = await StagingRing.create(be, { bufferBytes: 1000, buffers: 1 });
  using dev = be.alloc('u8', [1000]);
  const held = await ring.download(dev);
  const w1 = ring.download(dev);
  const w2 = ring.acquire('f32', [10]);
  const up = ring.upload(new HostTensor('u8', [1000]), dev);
  void be.stream.waitEvent(up.event);
  ring.dispose();
  await assert.rejects(w1, DisposedError);
  await assert.rejects(w2, DisposedError);
  await assert.rejects(up.done, DisposedError);
  await be.synchronize(); // up.event was recorded: nothing waits forever
  assert.throws(() => held.data, DisposedError);
  held.release(); // no-op after dispose
  ring.dispose(); // idempotent
  assert.throws(() => ring.download(dev), DisposedError);
  assert.throws(() => ring.upload(new HostTensor('u8', [1000]), dev), DisposedError);
  dev.dispose();
  await collect();
  assert.deepEqual(nativeCounts(), base, 'pinned buffers freed');
});

void test('typed errors for bad input', async () => {
  await assert.rejects(StagingRing.create(be, { bufferBytes: 0 }), InvalidArgumentError);
  await assert.rejects(StagingRing.create(be, { bufferBytes: 8, buffers: 0 }), InvalidArgumentError);
  await assert.rejects(StagingRing.create(be, { bufferBytes: 8, stream: {} as never }), InvalidArgumentError);
  const ring = await StagingRing.create(be, { bufferBytes: 64 });
  using big = be.alloc('u8', [65]);
  using small = be.alloc('u8', [64]);
  const host = new HostTensor('u8', [64]);
  assert.throws(() => ring.download(big), /65 bytes, more than a staging buffer's 64/);
  assert.throws(() => ring.download(host as never), (e) => e instanceof InvalidArgumentError && /src must be a DeviceTensor/.test(e.message));
  assert.throws(() => ring.upload(host, host as never), (e) => e instanceof InvalidArgumentError && /dst must be a DeviceTensor/.test(e.message));
  assert.throws(() => ring.upload(small as never, small), /host must be a HostTensor/);
  assert.throws(() => ring.upload(new HostTensor('u8', [65]), big), /more than a staging buffer/);
  assert.throws(() => ring.upload(new HostTensor('u8', [63]), small), /as many bytes as host \(63\)/);
  assert.throws(() => ring.acquire('f32', [17]), InvalidArgumentError);
  assert.throws(() => ring.download(small, { after: 3 as never }), /options.after must be/);
  assert.throws(() => ring.download(small, { signal: 'x' as never }), /options.signal must be an AbortSignal/);
  const lease = await ring.acquire('u8', [64]);
  lease.release();
  assert.throws(() => ring.upload(lease, small), DisposedError);
  assert.equal(ring.available, 2);
  ring.dispose();
});

void test('pipelined loop: 1,000 layer steps (download -> JS transform -> upload -> device op) exact, no leak', async () => {
  await collect();
  const base = nativeCounts();
  const n = 1031; // f32 elements per activation (odd)
  const chains = 2; // two micro-batches in flight: while the CPU transforms one, the other's D2H runs
  const layers = 500; // x 2 chains = 1,000 layer steps
  const ring = await StagingRing.create(be, { bufferBytes: n * 4 });
  const one = HostTensor.from('f32', [n], new Array<number>(n).fill(1));
  const ones = await be.upload(one);
  const ev = [be.createEvent(), be.createEvent()];
  const init = (c: number, i: number) => (i * 7 + c * 13) % 1009;
  const dev = await Promise.all([0, 1].map((c) => be.upload(HostTensor.from('f32', [n], Array.from({ length: n }, (_, i) => init(c, i))))));
  // float64 reference: per layer x = (3x + layer + c) mod 65521, then + 1 on the device (values stay < 2^24)
  const ref = [0, 1].map((c) => Float64Array.from({ length: n }, (_, i) => init(c, i)));
  for (let l = 0; l < layers; l++) {
    for (let c = 0; c < chains; c++) for (let i = 0; i < n; i++) ref[c]![i] = ((3 * ref[c]![i]! + l + c) % 65521) + 1;
  }
  let maxInUse = 0;
  async function chain(c: number): Promise<void> {
    const d = dev[c]!;
    for (let l = 0; l < layers; l++) {
      const x = await ring.download(d); // waits for be.stream (the previous layer's add) by default
      maxInUse = Math.max(maxInUse, ring.buffers - ring.available);
      const xs = x.data as Float32Array;
      let up;
      if (l % 2 === 0) {
        for (let i = 0; i < n; i++) xs[i] = (3 * xs[i]! + l + c) % 65521; // in place, upload from the lease
        up = ring.upload(x, d, { event: ev[c] });
        x.release();
      } else {
        const y = new HostTensor('f32', [n]); // into JS memory, staged through a buffer
        for (let i = 0; i < n; i++) y.data[i] = (3 * xs[i]! + l + c) % 65521;
        x.release();
        up = ring.upload(y, d, { event: ev[c] });
      }
      void be.stream.waitEvent(up.event);
      void be.add(d, ones, d); // the device op of this layer, after the upload, never awaited here
    }
  }
  const t0 = performance.now();
  await Promise.all([chain(0), chain(1)]);
  await be.synchronize();
  const ms = performance.now() - t0;
  for (let c = 0; c < chains; c++) {
    const got = await be.download(dev[c]!);
    for (let i = 0; i < n; i++) assert.equal(got.data[i], ref[c]![i], `chain ${c} element ${i}`);
  }
  const st = ring.stats;
  assert.equal(st.downloads, 1000);
  assert.equal(st.uploads, 1000);
  assert.equal(st.stagedUploads, 500);
  assert.equal(maxInUse, 2, 'both buffers were in use at once (double buffering)');
  assert.equal(ring.available, 2);
  assert.ok(ms < 15_000, `1,000 steps took ${ms.toFixed(0)} ms`);
  ring.dispose();
  for (const d of dev) d.dispose();
  ones.dispose();
  for (const e of ev) e.dispose();
  await collect();
  assert.deepEqual(nativeCounts(), base, 'memoryStats counts back to baseline');
});
