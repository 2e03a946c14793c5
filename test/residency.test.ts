/**
 * Weight residency on the CPU backend (the same code drives CUDA): transfer engine round trips at the sizes of
 * DESIGN.md section 6, demand fetches overtaking a gigabyte of queued prefetch, cancellation, events that compute
 * streams can wait on right after submit, the pinned expert store (budget check, loading from a checkpoint) and
 * the slot pool (10,000 fill/evict cycles without a leak).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import { type DeviceTensor,
  Checkpoint,
  DisposedError,
  InvalidArgumentError,
  PackedTensor,
  ExpertStore,
  HostTensor,
  OutOfMemoryError,
  SlotPool,
  TransferEngine,
  memoryStats,
  openBackend,
  parseModelConfig,
  writeCheckpoint,
} from '../lib/index.js';
import { collect, nativeCounts } from './harness/memory.js';


const be = openBackend({ backend: 'cpu' });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-res-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Fast deterministic fill (xorshift32) of a byte view. */
function fill(bytes: Uint8Array, seed: number): void {
  const words = Math.floor(bytes.byteLength / 4);
  let x = seed | 1;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < words; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    dv.setUint32(i * 4, x >>> 0, true);
  }
  for (let i = words * 4; i < bytes.byteLength; i++) bytes[i] = i & 0xff;
}

void test('transfers round-trip bit-exactly at 4 KiB .. 352 MB, unaligned offsets', async () => {
  const engine = new TransferEngine(be);
  let chunks = 0;
  for (const [bytes, offset] of [[4096, 3], [1 << 20, 1], [9_400_000, 7], [44_000_000, 4095], [352_321_536, 1]] as const) {
    chunks += 2 * Math.ceil(bytes / engine.chunkBytes);
    using pinned = be.allocPinned(bytes + offset);
    const src = pinned.tensor('u8', [bytes], offset);
    fill(src.data, bytes);
    using dev = be.alloc('u8', [bytes + 5]);
    const back = new HostTensor('u8', [bytes + 2]);
    const t1 = engine.submit(src, dev.bytesView(5, bytes));
    await t1.done;
    await engine.submit(dev.bytesView(5, bytes), back.bytesView(2, bytes)).done;
    assert.ok(Buffer.from(src.data.buffer, src.data.byteOffset, bytes).equals(Buffer.from(back.data.buffer, 2, bytes)), `${bytes} bytes differ`);
  }
  assert.equal(engine.stats.chunks, chunks, 'every copy is cut into chunkBytes pieces');
  assert.ok(chunks > 40);
  engine.dispose();
});

void test('registered host memory: round trips at unaligned offsets, lifetime and misuse', async () => {
  const engine = new TransferEngine(be);
  for (const [bytes, offset] of [[4096, 3], [1 << 20, 1], [9_400_000, 7], [44_000_000, 4095]] as const) {
    const host = new HostTensor('u8', [bytes + offset]);
    fill(host.data, bytes ^ 0x5a);
    using reg = be.registerHost(host);
    using dev = be.alloc('u8', [bytes]);
    const back = new HostTensor('u8', [bytes + offset]);
    using regBack = be.registerHost(back);
    await engine.submit(host.bytesView(offset, bytes), dev).done;
    await engine.submit(dev, back.bytesView(offset, bytes)).done;
    assert.ok(Buffer.from(host.data.buffer, offset, bytes).equals(Buffer.from(back.data.buffer, offset, bytes)), `${bytes} bytes differ`);
    assert.equal(reg.disposed, false);
    void regBack;
  }
  engine.dispose();
  using pinned = be.allocPinned(64);
  assert.throws(() => be.registerHost(pinned.tensor('u8', [64])), /already page-locked/);
  assert.throws(() => be.registerHost(new HostTensor('u8', [0])), /must not be empty/);
  const t = new HostTensor('f32', [4]);
  const reg = be.registerHost(t);
  reg.dispose();
  reg.dispose();
  assert.equal(reg.disposed, true);
});

void test('asynchronous allocation: pinned and device memory off the JS thread, typed failures, abort, no leak', async () => {
  const before = nativeCounts();
  const p = await be.allocPinnedAsync(1 << 20);
  p.bytes[5] = 7;
  const d = await be.allocAsync('bf16', [64, 32]);
  assert.equal(d.byteLength, 4096);
  await be.copy(p.tensor('u8', [4096]), d);
  assert.equal((await be.download(d.bytesView(0, 8))).data[5], 7);
  await assert.rejects(be.allocPinnedAsync(2 ** 50), OutOfMemoryError);
  await assert.rejects(be.allocAsync('u8', [2 ** 50]), (e: unknown) => e instanceof OutOfMemoryError && /CPU device pool/.test(e.message));
  const reason = new Error('no longer needed');
  await assert.rejects(be.allocPinnedAsync(64, { signal: AbortSignal.abort(reason) }), (e) => e === reason);
  await assert.rejects(be.allocPinnedAsync(-1), /bytes must be a non-negative integer/);
  const store = await ExpertStore.createAsync(be, { layers: [0, 1], experts: 4, hidden: 64, intermediate: 32, chunkBytes: 3 * 4096 });
  assert.equal(store.expert(1, 3).whole.byteLength, 3 * 64 * 32 * 2);
  await assert.rejects(ExpertStore.createAsync(be, { layers: [0], experts: 8, hidden: 4096, intermediate: 14336, hostBudgetBytes: 1 << 30 }), OutOfMemoryError);
  store.dispose();
  p.dispose();
  d.dispose();
  assert.deepEqual(nativeCounts(), before);
});

void test('prefault: a fresh buffer\'s pages mapped in off the JS thread, its bytes unchanged; typed errors, abort, no leak', async () => {
  const before = nativeCounts();
  const bytes = 64 << 20;
  // true where the kernel has MADV_POPULATE_WRITE (Linux >= 5.14): then the buffer is resident. The process's RSS
  // moves with other threads' frees too, so a fresh buffer up to three times until one grows it by half its size
  // (without the prefault it would not grow at all)
  const grown: number[] = [];
  let did = false;
  for (let i = 0; i < 3 && !(grown.at(-1)! > bytes / 2); i++) {
    using probe = be.allocPinned(bytes);
    const rss0 = process.memoryUsage().rss;
    did = await be.prefault(probe);
    grown.push(process.memoryUsage().rss - rss0);
    if (!did) break;
  }
  if (did) assert.ok(grown.some((g) => g > bytes / 2), `resident memory grew by ${grown.join(', ')} bytes for ${bytes}-byte prefaults`);
  const buf = be.allocPinned(bytes);
  buf.bytes[12345] = 7; // a page written before: its byte stays
  assert.equal(await be.prefault(buf), did);
  const words = new Uint32Array(buf.bytes.buffer, buf.bytes.byteOffset, bytes / 4);
  assert.equal(buf.bytes[12345], 7);
  buf.bytes[12345] = 0;
  assert.ok(words.every((w) => w === 0), 'every other byte still zero');
  assert.equal(await be.prefault(buf), did, 'again: the same');
  await assert.rejects(be.prefault({} as never), InvalidArgumentError);
  const reason = new Error('no longer needed');
  await assert.rejects(be.prefault(buf, { signal: AbortSignal.abort(reason) }), (e) => e === reason);
  const pre = await be.allocPinnedAsync(8 << 20, { prefault: true });
  assert.equal(pre.byteLength, 8 << 20);
  await assert.rejects(be.allocPinnedAsync(64, { prefault: 1 as never }), /options\.prefault must be a boolean, received 1/);
  buf.dispose();
  pre.dispose();
  await assert.rejects(be.prefault(buf), DisposedError);
  assert.deepEqual(nativeCounts(), before);
});

void test('a demand fetch issued behind 1 GB of queued prefetch completes first', async () => {
  const engine = new TransferEngine(be, { chunkBytes: 4 << 20, maxInFlight: 2 });
  const part = 256 << 20;
  using host = be.allocPinned(4 * part);
  using dev = be.alloc('u8', [4 * part]);
  const order: string[] = [];
  const t0 = performance.now();
  const prefetches = [0, 1, 2, 3].map((i) => {
    const t = engine.submit(host.tensor('u8', [part], i * part), dev.bytesView(i * part, part), { priority: 'prefetch' });
    void t.done.then(() => order.push(`prefetch${i}`));
    return t;
  });
  using small = be.allocPinned(4 << 20);
  using smallDev = be.alloc('u8', [4 << 20]);
  const demand = engine.submit(small.tensor('u8', [4 << 20]), smallDev, { priority: 'demand' });
  await demand.done;
  const demandMs = performance.now() - t0;
  order.push('demand');
  await Promise.all(prefetches.map((t) => t.done));
  const allMs = performance.now() - t0;
  assert.equal(order[0], 'demand', `completion order: ${order.join(', ')}`);
  assert.ok(demandMs < allMs / 4, `demand took ${demandMs.toFixed(1)} ms of ${allMs.toFixed(1)} ms`);
  engine.dispose();
});

void test('promoting a queued prefetch moves its remaining chunks ahead of the other prefetches', async () => {
  const engine = new TransferEngine(be, { chunkBytes: 1 << 20, maxInFlight: 1 });
  using host = be.allocPinned(96 << 20);
  using dev = be.alloc('u8', [96 << 20]);
  const order: string[] = [];
  const ts = ['a', 'b', 'c'].map((name, i) => {
    const t = engine.submit(host.tensor('u8', [32 << 20], i * (32 << 20)), dev.bytesView(i * (32 << 20), 32 << 20), { priority: 'prefetch' });
    void t.done.then(() => order.push(name));
    return t;
  });
  assert.equal(ts[2]!.promote(), true);
  assert.equal(ts[2]!.priority, 'demand');
  assert.equal(ts[2]!.promote(), false, 'already demand');
  await Promise.all(ts.map((t) => t.done));
  assert.equal(order[0], 'c', `completion order ${order.join(', ')}`);
  engine.dispose();
});

void test('cancelling queued prefetches stops their chunks; the rest still completes', async () => {
  const engine = new TransferEngine(be, { chunkBytes: 1 << 20, maxInFlight: 1 });
  using host = be.allocPinned(64 << 20);
  using dev = be.alloc('u8', [64 << 20]);
  const a = engine.submit(host.tensor('u8', [32 << 20]), dev.bytesView(0, 32 << 20), { priority: 'prefetch' });
  const ac = new AbortController();
  const b = engine.submit(host.tensor('u8', [32 << 20], 32 << 20), dev.bytesView(32 << 20, 32 << 20), { priority: 'prefetch', signal: ac.signal });
  const reason = new Error('not needed any more');
  ac.abort(reason);
  await assert.rejects(b.done, (e) => e === reason);
  await a.done;
  assert.equal(b.cancel(), false, 'cancelling twice is a no-op');
  assert.equal(engine.stats.cancelled, 1);
  assert.ok(engine.stats.bytesSaved >= 31 << 20);
  assert.equal(a.cancel(), false, 'a finished transfer cannot be cancelled');
  engine.dispose();
});

void test('a compute stream that waits on a transfer event right after submit sees the whole copy', async () => {
  const engine = new TransferEngine(be, { chunkBytes: 1 << 20, maxInFlight: 1 });
  const compute = be.createStream();
  const n = 24 << 20;
  using host = be.allocPinned(n);
  fill(host.bytes, 99);
  using dev = be.alloc('u8', [n]);
  const check = new HostTensor('u8', [n]);
  // Queue prefetch work first, so this transfer's chunks are not even submitted when compute starts waiting.
  using filler = be.alloc('u8', [32 << 20]);
  using fillerHost = be.allocPinned(32 << 20);
  const before = engine.submit(fillerHost.tensor('u8', [32 << 20]), filler, { priority: 'prefetch' });
  const t = engine.submit(host.tensor('u8', [n]), dev, { priority: 'prefetch' });
  void compute.waitEvent(t.event);
  await be.copy(dev, check, { stream: compute }); // queued on compute: must run after the transfer's last chunk
  assert.ok(Buffer.from(host.bytes).equals(Buffer.from(check.data.buffer)), 'compute read a half-copied destination');
  await Promise.all([before.done, t.done]);
  // A cancelled transfer still releases its waiters (no hang).
  const c = engine.submit(fillerHost.tensor('u8', [32 << 20]), filler, { priority: 'prefetch' });
  const c2 = engine.submit(host.tensor('u8', [n]), dev, { priority: 'prefetch' });
  void compute.waitEvent(c2.event);
  c2.cancel();
  await assert.rejects(c2.done, { name: 'AbortError' });
  await compute.synchronize();
  await c.done;
  compute.dispose();
  engine.dispose();
});

void test('the expert store checks its budget before allocating and loads a checkpoint into pinned views', async () => {
  const before = nativeCounts();
  assert.throws(
    () => ExpertStore.create(be, { layers: [0, 1], experts: 8, hidden: 4096, intermediate: 14336, hostBudgetBytes: 1 << 30 }),
    (e: unknown) => e instanceof OutOfMemoryError && /needs 5\.25 GiB \(16 experts x 352321536 bytes\) but the host budget is 1\.00 GiB; nothing was allocated/.test(e.message),
  );
  assert.deepEqual(nativeCounts(), before);

  const cfg = parseModelConfig({
    model_type: 'mixtral', hidden_size: 64, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, num_local_experts: 4, num_experts_per_tok: 2, vocab_size: 32,
  });
  const tensors = new Map<string, HostTensor>();
  let seed = 1;
  for (const l of cfg.moeLayers) {
    for (let e = 0; e < cfg.numExperts; e++) {
      for (const [w, shape] of [['w1', [48, 64]], ['w3', [48, 64]], ['w2', [64, 48]]] as const) {
        const t = new HostTensor('bf16', [...shape]);
        fill(new Uint8Array(t.data.buffer), seed++);
        tensors.set(`model.layers.${l}.block_sparse_moe.experts.${e}.${w}.weight`, t);
      }
    }
  }
  const dir = path.join(tmp, 'ckpt');
  await writeCheckpoint(dir, tensors, { maxShardBytes: 20_000 });
  const ckpt = await Checkpoint.open(dir);
  // Small chunks so experts spread over several pinned allocations.
  using store = ExpertStore.create(be, { layers: cfg.moeLayers, experts: 4, hidden: 64, intermediate: 48, chunkBytes: 3 * 18432 });
  let progress = 0;
  await store.load(ckpt, cfg, { onProgress: (d) => (progress = d) });
  await ckpt.close();
  assert.equal(progress, 2 * 4 * 3);
  using pool = SlotPool.create(be, { slots: 3, hidden: 64, intermediate: 48 });
  const engine = new TransferEngine(be);
  for (const l of cfg.moeLayers) {
    for (let e = 0; e < 4; e++) {
      const v = store.expert(l, e);
      const eq = (a: HostTensor, name: string) => Buffer.from(a.data.buffer, a.data.byteOffset, a.byteLength).equals(Buffer.from(tensors.get(name)!.data.buffer));
      const p = `model.layers.${l}.block_sparse_moe.experts.${e}`;
      assert.ok(eq(v.gate as HostTensor, `${p}.w1.weight`) && eq(v.up as HostTensor, `${p}.w3.weight`) && eq(v.down as HostTensor, `${p}.w2.weight`), `${p} differs`);
      // Whole expert -> a slot -> back: bit-exact, and the slot's down view is the down projection.
      const slot = pool.slot((l * 4 + e) % 3);
      await engine.submit(v.whole, slot.whole).done;
      const down = await be.download(slot.down as DeviceTensor);
      assert.ok(eq(down, `${p}.w2.weight`));
    }
  }
  engine.dispose();
  assert.throws(() => store.expert(5, 0), /layer 5 is not in the store/);
  assert.throws(() => store.expert(0, 4), /expert must be an integer in \[0, 4\)/);
  assert.throws(() => pool.slot(3), /slot must be an integer in \[0, 3\)/);
});

void test('a packed store: experts load into panel64 views (padding zero), move whole into packed slots, and moeExperts over the slots gives the store\'s output bitwise', async () => {
  const H = 64;
  const I = 48; // not a multiple of 64: the gate / up panels are zero-padded
  const cfg = parseModelConfig({
    model_type: 'mixtral', hidden_size: H, intermediate_size: I, num_hidden_layers: 1, num_attention_heads: 4,
    num_key_value_heads: 2, num_local_experts: 4, num_experts_per_tok: 2, vocab_size: 32,
  });
  const tensors = new Map<string, HostTensor>();
  let seed = 77;
  for (let e = 0; e < 4; e++) {
    for (const [w, shape] of [['w1', [I, H]], ['w3', [I, H]], ['w2', [H, I]]] as const) {
      const t = new HostTensor('bf16', [...shape]);
      for (let i = 0; i < t.numel; i++) t.data[i] = 0x3c00 + ((seed * 131 + i * 7) % 512) - 256; // finite bf16 near 1/128
      seed++;
      tensors.set(`model.layers.0.block_sparse_moe.experts.${e}.${w}.weight`, t);
    }
  }
  const dir = path.join(tmp, 'ckpt-packed');
  await writeCheckpoint(dir, tensors);
  const ckpt = await Checkpoint.open(dir);
  using store = ExpertStore.create(be, { layers: [0], experts: 4, hidden: H, intermediate: I, packed: true });
  const progress: number[] = [];
  await store.load(ckpt, cfg, { onProgress: (d, total) => progress.push(d, total) });
  await ckpt.close();
  assert.deepEqual(progress, Array.from({ length: 12 }, (_, i) => [i + 1, 12]).flat(), 'progress once per tensor, in order, after its pack');
  // aborted midway (a pack in flight while the next tensor is read): rejects with the signal's reason, and the
  // store stays usable (loaded again in full below, and disposed by `using`)
  {
    const again = await Checkpoint.open(dir);
    const ac = new AbortController();
    const reason = new Error('stop loading');
    await assert.rejects(store.load(again, cfg, { signal: ac.signal, onProgress: (d) => d === 5 && ac.abort(reason) }), (e) => e === reason);
    await store.load(again, cfg);
    await again.close();
  }
  assert.equal(store.expertBytes, 2 * (2 * 64 * H + 64 * I)); // packedNumel(48, 64) = 64 * 64, packedNumel(64, 48) = 64 * 48
  const unpacked = (p: PackedTensor): Uint16Array => {
    const [n, k] = p.shape as [number, number];
    const kp = Math.ceil(k / 2);
    const src = (p.storage as HostTensor).data as Uint16Array;
    const out = new Uint16Array(n * k);
    for (let r = 0; r < n; r++) for (let x = 0; x < k; x++) out[r * k + x] = src[(Math.floor(r / 64) * kp + Math.floor(x / 2)) * 128 + (r % 64) * 2 + (x % 2)]!;
    return out;
  };
  for (let e = 0; e < 4; e++) {
    const v = store.expert(0, e);
    const p = `model.layers.0.block_sparse_moe.experts.${e}`;
    for (const [part, w] of [['gate', 'w1'], ['up', 'w3'], ['down', 'w2']] as const) {
      assert.ok(v[part] instanceof PackedTensor);
      assert.deepEqual(unpacked(v[part] as PackedTensor), tensors.get(`${p}.${w}.weight`)!.data, `${p} ${part}`);
    }
    const gateStore = (v.gate as PackedTensor).storage as HostTensor;
    for (let i = 0; i < gateStore.numel; i++) if (i % 128 >= 2 * I) assert.equal(gateStore.data[i], 0, `padding at ${i}`);
  }
  // write(): the row-major form packed into place (expert 2's gate replaced by expert 0's)
  await store.write(0, 2, 'gate', tensors.get('model.layers.0.block_sparse_moe.experts.0.w1.weight')!);
  assert.deepEqual(unpacked(store.expert(0, 2).gate as PackedTensor), tensors.get('model.layers.0.block_sparse_moe.experts.0.w1.weight')!.data);
  await assert.rejects(async () => store.write(0, 2, 'down', new HostTensor('bf16', [I, H])), (e: unknown) => e instanceof InvalidArgumentError && /rows must be bf16 \[64, 48\]/.test(e.message));
  // whole experts into packed slots, then the same op over both tables
  using pool = SlotPool.create(be, { slots: 4, hidden: H, intermediate: I, packed: true });
  assert.equal(pool.slotBytes, store.expertBytes);
  const engine = new TransferEngine(be);
  const fromStore = be.expertTable(4, { hidden: H, intermediate: I, packed: true });
  const fromSlots = be.expertTable(4, { hidden: H, intermediate: I, packed: true });
  for (let e = 0; e < 4; e++) {
    await engine.submit(store.expert(0, e).whole, pool.slot(e).whole).done;
    fromStore.set(e, store.expert(0, e));
    fromSlots.set(e, pool.slot(e));
  }
  engine.dispose();
  const T = 9;
  const x = new HostTensor('bf16', [T, H]);
  for (let i = 0; i < x.numel; i++) x.data[i] = 0x3f00 + (i % 97);
  const ids = HostTensor.from('i32', [T, 2], Array.from({ length: 2 * T }, (_, i) => (i * 3) % 4));
  const w = HostTensor.from('f32', [T, 2], new Array(2 * T).fill(0.5));
  const a = new HostTensor('bf16', [T, H]);
  const b = new HostTensor('bf16', [T, H]);
  await be.moeExperts({ x, topkIds: ids, topkWeights: w, experts: fromStore, out: a });
  await be.moeExperts({ x, topkIds: ids, topkWeights: w, experts: fromSlots, out: b });
  assert.deepEqual(b.data, a.data);
  assert.ok(a.data.some((v) => v !== 0));
  // the layout is bf16 and CPU-only
  assert.throws(() => ExpertStore.create(be, { layers: [0], experts: 1, hidden: 8, intermediate: 8, dtype: 'f32', packed: true }), (e: unknown) => e instanceof InvalidArgumentError && /packed: true needs bf16 experts on the CPU backend, received f32/.test(e.message));
  assert.throws(() => fromStore.set(0, { gate: new HostTensor('bf16', [I, H]), up: new HostTensor('bf16', [I, H]), down: new HostTensor('bf16', [H, I]) }), (e: unknown) => e instanceof InvalidArgumentError && /expert 0 down must be a PackedTensor \(the table is packed\)/.test(e.message));
});

void test('10,000 slot fill/evict cycles leak nothing', async () => {
  const engine = new TransferEngine(be, { chunkBytes: 4096 });
  const before = nativeCounts();
  {
    using store = ExpertStore.create(be, { layers: [0], experts: 16, hidden: 32, intermediate: 16 });
    using pool = SlotPool.create(be, { slots: 4, hidden: 32, intermediate: 16 });
    const cycles = async (n: number) => {
      const inflight: Promise<void>[] = [];
      for (let i = 0; i < n; i++) {
        inflight.push(engine.submit(store.expert(0, i % 16).whole, pool.slot(i % 4).whole, { priority: i % 3 ? 'prefetch' : 'demand' }).done);
        if (inflight.length === 64) await Promise.all(inflight.splice(0));
      }
      await Promise.all(inflight);
    };
    await cycles(10_000);
    // After those 10,000 (the warm-up to the allocator/heap plateau), 10,000 more must not grow what stays
    // reachable: measured after full GCs, so garbage awaiting collection does not count.
    await collect();
    const heap0 = memoryStats().mallocInUse;
    const rss0 = process.memoryUsage.rss();
    await cycles(10_000);
    await collect();
    const heap1 = memoryStats().mallocInUse;
    if (heap0 !== undefined && heap1 !== undefined) {
      assert.ok(heap1 - heap0 < 1 << 20, `C heap grew by ${((heap1 - heap0) / 1024).toFixed(0)} KiB over 10,000 cycles`);
    }
    // Coarse: RSS steps with allocator fragmentation (measured with valgrind: no native bytes are lost per cycle).
    const grown = process.memoryUsage.rss() - rss0;
    assert.ok(grown < 24 << 20, `RSS grew by ${(grown / 1048576).toFixed(1)} MiB over 10,000 cycles`);
  }
  engine.dispose();
  assert.deepEqual(nativeCounts(), before);
  assert.equal(engine.stats.transfers, 20_000);
});
