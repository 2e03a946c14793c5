/**
 * The persistent native expert table (lib/moe.ts ExpertTable over cpp/napi/expert_table.h), on the CPU backend:
 *  - set validates once, with InvalidArgumentError naming the entry and argument (dtype, shape, placement for the
 *    table's backend, alignment and bytes at the native surface); a failed set leaves the entry as it was;
 *  - a cleared expert contributes zero; a set after clear takes effect (float64 reference, vLLM tolerance);
 *  - set / clear / dispose while ops are in flight change nothing for those ops (each equals, bitwise, the same
 *    call run alone afterwards) and nothing crashes; a disposed tensor's memory is freed once no op uses it;
 *  - the table keeps the JS memory of its entries alive when JS drops every other reference, and lets it go on
 *    clear (FinalizationRegistry after forced GCs);
 *  - a table of another backend, a table of other dimensions and objects that are not tables are rejected;
 *  - a JS buffer detached after set is reported when the op is called, not read.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type Backend, DisposedError, ExpertTable, HostTensor, InvalidArgumentError, memoryStats } from '../lib/index.js';
import { type NativeTensorArg, native } from '../lib/native.js';
import { harnessBackends } from './harness/backends.js';
import { randomBf16, randomIds, values } from './harness/inputs.js';
import { collect } from './harness/memory.js';
import { refMoe } from './harness/ref-moe.js';
import { nmse } from './harness/ref.js';

const H = 32;
const I = 16;
const E = 6;
const K = 2;

type Weights = { gate: HostTensor<'bf16'>; up: HostTensor<'bf16'>; down: HostTensor<'bf16'> };

const weights = (seed: number): Weights => ({ gate: randomBf16([I, H], seed), up: randomBf16([I, H], seed + 1), down: randomBf16([H, I], seed + 2) });

/** float64 reference over the experts present in `ws` (test/harness/ref-moe.ts). */
const ref = (x: HostTensor<'bf16'>, ids: Int32Array, w: Float32Array, ws: ReadonlyArray<Weights | undefined>): Float64Array => refMoe(x, ids, w, K, ws);

/** vLLM's fused-MoE tolerance, as test/moe-ops.test.ts: relative norm error <= 1e-2, max abs error <= 2e-2. */
function assertClose(out: HostTensor<'bf16'>, r: Float64Array, what: string): void {
  const got = values(out);
  const err = Math.sqrt(nmse(got, r));
  let maxAbs = 0;
  for (let i = 0; i < r.length; i++) maxAbs = Math.max(maxAbs, Math.abs(got[i]! - r[i]!));
  assert.ok(err <= 1e-2 && maxAbs <= 2e-2, `${what}: relative error ${err}, max abs ${maxAbs}`);
}

function cpu(): Backend {
  return harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
}

function problem(t: number, seed: number): { x: HostTensor<'bf16'>; ids: HostTensor<'i32'>; w: HostTensor<'f32'> } {
  const w = new Float32Array(t * K);
  for (let i = 0; i < w.length; i++) w[i] = 0.25 + (i % 5) / 10;
  // every expert is routed to by some token (t >= E)
  const ids = randomIds(t, K, E, seed);
  for (let e = 0; e < E && e < t; e++) ids[e * K] = e;
  for (let i = 0; i < t && i < E; i++) if (ids[i * K + 1] === ids[i * K]) ids[i * K + 1] = (ids[i * K]! + 1) % E;
  return { x: randomBf16([t, H], seed + 5), ids: new HostTensor('i32', [t, K], ids), w: new HostTensor('f32', [t, K], w) };
}

async function run(be: Backend, table: ExpertTable, p: ReturnType<typeof problem>): Promise<HostTensor<'bf16'>> {
  const out = new HostTensor('bf16', [p.x.shape[0]!, H]);
  out.data.fill(0x7fc0);
  await be.moeExperts({ x: p.x, topkIds: p.ids, topkWeights: p.w, experts: table, out });
  return out;
}

void test('set validates once: InvalidArgumentError naming the entry and argument; a failed set changes nothing', async () => {
  const be = cpu();
  const table = be.expertTable(E, { hidden: H, intermediate: I });
  const w = weights(1);
  const invalid = (fn: () => unknown, re: RegExp): void => assert.throws(fn, (e: unknown) => e instanceof InvalidArgumentError && re.test(e.message), String(re));
  invalid(() => table.set(2, { ...w, gate: new HostTensor('f32', [I, H]) }), /expert 2 gate\.dtype must be bf16, received f32/);
  invalid(() => table.set(2, { ...w, down: randomBf16([I, H], 9) }), /expert 2 down must be \[32, 16\], received \[16, 32\]/);
  invalid(() => table.set(2, { gateUp: randomBf16([I, H], 9), down: w.down }), /expert 2 gateUp must be \[32, 32\]/);
  invalid(() => table.set(E, w), /expert id must be an integer in \[0, 6\)/);
  assert.equal(table.has(2), false, 'a failed set left expert 2 absent');
  table.set(2, w);
  invalid(() => table.set(2, { ...w, up: new HostTensor('bf16', [I, H + 1]) }), /expert 2 up must be/);
  assert.equal(table.has(2), true, 'a failed set kept the previous entry');

  // placement: JS memory in a table for cuda:0 is refused at set (the native check, the table's backend)
  const cudaTable = new ExpertTable('cuda', 0, E, { hidden: H, intermediate: I });
  invalid(() => cudaTable.set(1, w), /ExpertTable\.set: experts\[1\]\.gate is in JS memory, but the op runs on cuda:0/);
  invalid(() => cudaTable.set(3, { gateUp: randomBf16([2 * I, H], 3), down: w.down }), /experts\[3\]\.gateUp is in JS memory/);
  assert.equal(cudaTable.has(1), false);

  // the native surface (callers that bypass lib/): bytes, alignment, range, biases all-or-none, ids
  const n = native().ExpertTable;
  const t = new n(0, 0, E, H, I);
  const bytes = I * H * 2;
  const arg = (b: number, offset = 0): NativeTensorArg => [new Uint8Array(b + 8), offset, b];
  const nat = (fn: () => unknown, re: RegExp): void =>
    assert.throws(fn, (e: unknown) => (e as { code?: string }).code === 'MOE_INVALID_ARGUMENT' && re.test((e as Error).message), String(re));
  nat(() => t.set(0, { gate: arg(bytes - 2), up: arg(bytes), down: arg(bytes) }, false), /experts\[0\]\.gate must hold 1024 bytes, received 1022/);
  nat(() => t.set(0, { gate: arg(bytes), up: arg(bytes, 1), down: arg(bytes) }, false), /experts\[0\]\.up must start on a multiple of 2 bytes/);
  nat(() => t.set(0, { gate: arg(bytes), up: arg(bytes), down: arg(bytes, 16) }, false), /experts\[0\]\.down: range \[16, 1040\) exceeds the array's 1032 bytes/);
  nat(() => t.set(0, { gate: arg(bytes), up: arg(bytes), down: arg(bytes), downBias: arg(H * 4) }, false), /biases must be gateBias, upBias and downBias together or none, received 1 of 3/);
  nat(() => t.set(0, { gate: arg(bytes), up: arg(bytes) } as never, false), /needs gate, up and down, received 2 of 3/);
  nat(() => t.set(E, { gate: arg(bytes), up: arg(bytes), down: arg(bytes) }, false), /expert id must be an integer in \[0, 6\)/);
  nat(() => new n(0, 0, 0, H, I), /e must be in \[1, 2\^24\]/);
  t.set(0, { gate: arg(bytes), up: arg(bytes), down: arg(bytes) }, false);
  t.clear(0);
});

void test('a cleared expert contributes zero; set again, it is back; the stacked form gives the same result', async () => {
  const be = cpu();
  const ws = Array.from({ length: E }, (_, e) => weights(10 + 3 * e));
  const p = problem(9, 4);
  const table = be.expertTable(E, { hidden: H, intermediate: I });
  ws.forEach((w, e) => table.set(e, w));
  const all = await run(be, table, p);
  assertClose(all, ref(p.x, p.ids.data, p.w.data, ws), 'all experts');

  table.clear(2).clear(4);
  assert.equal(table.presentCount, E - 2);
  const cleared = await run(be, table, p);
  assertClose(cleared, ref(p.x, p.ids.data, p.w.data, ws.map((w, e) => (e === 2 || e === 4 ? undefined : w))), 'experts 2 and 4 cleared');
  // the same as a table in which they were never set, bitwise
  const fresh = be.expertTable(E, { hidden: H, intermediate: I });
  ws.forEach((w, e) => e !== 2 && e !== 4 && fresh.set(e, w));
  assert.deepEqual(cleared.data, (await run(be, fresh, p)).data);

  table.set(2, ws[2]!).set(4, ws[4]!);
  assert.deepEqual((await run(be, table, p)).data, all.data, 'set again: the full result, bitwise');

  // stacked gateUp [2I, H] (two views of one allocation) in the same table
  const stacked = new Uint16Array(2 * I * H);
  stacked.set(ws[3]!.gate.data, 0);
  stacked.set(ws[3]!.up.data, I * H);
  table.set(3, { gateUp: new HostTensor('bf16', [2 * I, H], stacked), down: ws[3]!.down });
  assert.deepEqual((await run(be, table, p)).data, all.data, 'expert 3 stacked');
});

void test('set / clear / dispose while ops are in flight do not change those ops, and nothing crashes', async () => {
  const be = cpu();
  const ws = Array.from({ length: E }, (_, e) => weights(40 + 3 * e));
  const alt = weights(90);
  const p = problem(64, 6); // a few ms per op on cpu-scalar: the later ops are queued behind the first
  const table = be.expertTable(E, { hidden: H, intermediate: I });
  ws.forEach((w, e) => table.set(e, w));
  const submit = (): { out: HostTensor<'bf16'>; done: Promise<unknown> } => {
    const out = new HostTensor('bf16', [64, H]);
    return { out, done: be.moeExperts({ x: p.x, topkIds: p.ids, topkWeights: p.w, experts: table, out }) };
  };
  const a = submit(); // all experts
  table.clear(1);
  const b = submit(); // without 1
  table.set(1, alt);
  const c = submit(); // 1 = alt
  for (let e = 0; e < E; e++) table.clear(e);
  const d = submit(); // none: exactly 0
  table.set(0, ws[0]!); // and mutated again before anything settled
  await Promise.all([a.done, b.done, c.done, d.done]);
  assertClose(a.out, ref(p.x, p.ids.data, p.w.data, ws), 'op a');
  assertClose(b.out, ref(p.x, p.ids.data, p.w.data, ws.map((w, e) => (e === 1 ? undefined : w))), 'op b');
  assertClose(c.out, ref(p.x, p.ids.data, p.w.data, ws.map((w, e) => (e === 1 ? alt : w))), 'op c');
  assert.ok(d.out.data.every((v) => v === 0), 'op d: every expert cleared gives exactly 0');
  // each equals the same call run alone, bitwise
  ws.forEach((w, e) => table.set(e, w));
  assert.deepEqual((await run(be, table, p)).data, a.out.data);
  table.set(1, alt);
  assert.deepEqual((await run(be, table, p)).data, c.out.data);

  // weights in (CPU-pool) device memory: disposed and cleared while the op is in flight, the op still reads them
  // (its lease); the memory is freed when it settles; a table holding a disposed tensor is refused by the next op
  const base = memoryStats().cpu.device.count;
  const dev = await Promise.all(ws.map(async (w) => ({ gate: await be.upload(w.gate), up: await be.upload(w.up), down: await be.upload(w.down) })));
  const devTable = be.expertTable(E, { hidden: H, intermediate: I });
  dev.forEach((w, e) => devTable.set(e, w));
  const out = new HostTensor('bf16', [64, H]);
  const inflight = be.moeExperts({ x: p.x, topkIds: p.ids, topkWeights: p.w, experts: devTable, out });
  dev[5]!.down.dispose();
  assert.throws(
    () => be.moeExperts({ x: p.x, topkIds: p.ids, topkWeights: p.w, experts: devTable, out: new HostTensor('bf16', [64, H]) }),
    (e: unknown) => e instanceof DisposedError && /experts\[5\]\.down/.test(e.message),
  );
  for (const w of dev) for (const t of [w.gate, w.up, w.down]) t.dispose();
  for (let e = 0; e < E; e++) devTable.clear(e);
  await inflight;
  assert.deepEqual(out.data, a.out.data, 'device-memory op equals the JS-memory one');
  assert.equal(memoryStats().cpu.device.count, base, 'every disposed allocation freed once the op settled');

  // disposed while set, no op in flight: freed at once (the table does not pin it)
  const g = await be.upload(ws[0]!.gate);
  devTable.set(0, { ...ws[0]!, gate: g });
  assert.equal(memoryStats().cpu.device.count, base + 1);
  g.dispose();
  assert.equal(memoryStats().cpu.device.count, base);
  devTable.clear(0);
});

void test('the table keeps its entries\' JS memory alive and lets it go on clear', async () => {
  const be = cpu();
  const p = problem(8, 8);
  const ws = Array.from({ length: E }, (_, e) => weights(60 + 3 * e));
  const expected = ref(p.x, p.ids.data, p.w.data, ws);
  const collected = new Set<number>();
  const registry = new FinalizationRegistry<number>((e) => collected.add(e));
  const table = be.expertTable(E, { hidden: H, intermediate: I });
  // copies only the table references: the buffers' one other holder is the registry (weakly)
  ws.forEach((w, e) => {
    const copy = { gate: new HostTensor('bf16', [I, H], w.gate.data.slice()), up: new HostTensor('bf16', [I, H], w.up.data.slice()), down: new HostTensor('bf16', [H, I], w.down.data.slice()) };
    registry.register(copy.gate.data.buffer, e);
    table.set(e, copy);
  });
  await collect();
  assert.equal(collected.size, 0, 'nothing collected while the table holds it');
  assertClose(await run(be, table, p), expected, 'after GC');

  // the native table alone (no lib/ wrapper holding the tensors): its references keep the arrays alive
  const n = new (native().ExpertTable)(0, 0, E, H, I);
  const nativeCollected = new Set<number>();
  const nativeRegistry = new FinalizationRegistry<number>((e) => nativeCollected.add(e));
  ws.forEach((w, e) => {
    const a = (t: HostTensor): [Uint16Array, number, number] => [(t.data as Uint16Array).slice(), 0, t.byteLength];
    const gate = a(w.gate);
    nativeRegistry.register(gate[0].buffer, e);
    n.set(e, { gate, up: a(w.up), down: a(w.down) }, false);
  });
  await collect();
  assert.equal(nativeCollected.size, 0, 'nothing collected while the native table holds it');
  const out = new HostTensor('bf16', [8, H]);
  const stream = new (native().Stream)(0, 0, 0);
  const x = (t: HostTensor): NativeTensorArg => [t.data, 0, t.byteLength];
  await native().moeExperts(stream, { x: x(p.x), topkIds: x(p.ids), topkWeights: x(p.w), out: x(out), experts: n, t: 8, h: H, inter: I, e: E, k: K });
  assertClose(out, expected, 'native table after GC');
  stream.dispose();
  for (let e = 0; e < E; e++) n.clear(e);
  for (let i = 0; i < 20 && nativeCollected.size < E; i++) await collect();
  assert.equal(nativeCollected.size, E, 'the native table let its cleared entries go');

  // an op in flight keeps the memory of the entries it saw after the table clears them
  const big = problem(64, 9);
  const out2 = new HostTensor('bf16', [64, H]);
  const inflight = be.moeExperts({ x: big.x, topkIds: big.ids, topkWeights: big.w, experts: table, out: out2 });
  for (let e = 0; e < E; e++) table.clear(e);
  await collect();
  await inflight;
  assertClose(out2, ref(big.x, big.ids.data, big.w.data, ws), 'op in flight while its entries were cleared and GC ran');
  for (let i = 0; i < 20 && collected.size < E; i++) await collect();
  assert.equal(collected.size, E, 'cleared entries are collected');
});

void test('a table of another backend or other dimensions, and objects that are not tables, are rejected', async () => {
  const be = cpu();
  const p = problem(4, 3);
  const args = { x: p.x, topkIds: p.ids, topkWeights: p.w, out: new HostTensor('bf16', [4, H]) };
  const cudaTable = new ExpertTable('cuda', 0, E, { hidden: H, intermediate: I });
  assert.throws(() => be.moeExperts({ ...args, experts: cudaTable }), (e: unknown) => e instanceof InvalidArgumentError && /experts belongs to cuda:0/.test(e.message));

  // the native glue checks it too, and the table's dimensions, and that experts is a table at all
  const n = native();
  const stream = new n.Stream(0, 0, 0);
  const x = (t: HostTensor): NativeTensorArg => [t.data, 0, t.byteLength];
  const params = { x: x(p.x), topkIds: x(p.ids), topkWeights: x(p.w), out: x(args.out), t: 4, h: H, inter: I, e: E, k: K };
  const rejects = (experts: unknown, re: RegExp): void =>
    assert.throws(() => n.moeExperts(stream, { ...params, experts } as never), (e: unknown) => (e as { code?: string }).code === 'MOE_INVALID_ARGUMENT' && re.test((e as Error).message), String(re));
  rejects(new n.ExpertTable(1, 0, E, H, I), /experts is a table for cuda:0, but the op runs on cpu/);
  rejects(new n.ExpertTable(0, 0, E + 1, H, I), /experts is a table of 7 experts of \[16, 32\], but e, inter, h are 6, 16, 32/);
  rejects(new n.ExpertTable(0, 0, E, H, I * 2), /table of 6 experts of \[32, 32\]/);
  rejects({ gate: [], up: [], down: [] }, /experts must be an ExpertTable/);
  rejects(new n.Memory(0, 0, 0, 64), /experts must be an ExpertTable/); // another wrapped object
  rejects(new n.CancelToken(), /experts must be an ExpertTable/);
  rejects(undefined, /experts must be an ExpertTable/);
  await n.moeExperts(stream, { ...params, experts: new n.ExpertTable(0, 0, E, H, I) }); // empty table: zeros
  assert.ok(args.out.data.every((v) => v === 0));
  stream.dispose();
});

void test('a JS buffer detached after set is reported when the op is called', () => {
  const be = cpu();
  const p = problem(4, 5);
  const w = weights(7);
  const table = be.expertTable(E, { hidden: H, intermediate: I });
  table.set(1, w);
  structuredClone(w.up.data.buffer, { transfer: [w.up.data.buffer as ArrayBuffer] });
  assert.throws(
    () => be.moeExperts({ x: p.x, topkIds: p.ids, topkWeights: p.w, experts: table, out: new HostTensor('bf16', [4, H]) }),
    (e: unknown) => e instanceof InvalidArgumentError && /experts\[1\]\.up: its ArrayBuffer was detached/.test(e.message),
  );
  table.clear(1);
});
