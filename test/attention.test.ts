/**
 * Paged-KV attention (Backend.attention, cpp/cpu/attention.cc) and the KV cache (lib/kv/cache.ts), against an
 * independent float64 reference (softmax over the decoded K/V values, computed per head without pages).
 *
 * Matrix (DESIGN.md section 6): head_dim {64,128,256} x (q_heads, kv_heads) {(32,8),(28,4),(4,4),(9,3),(64,4)} x
 * kv_len {1,7,113,512,1024,4097}; mixed (q_len, kv_len) batches [(1,213),(1,1),(1,312),(1,7),(1,7812)] and
 * [(5,5),(3,16),(134,5131)]; pages scattered (shuffled block tables); split and unsplit agree; sliding window and
 * sinks; f32 / f16 / bf16 KV, f32 / bf16 q and out.
 * Scaling, so the file runs in ~20 s on 2 cores: each (head_dim, heads) pair is ONE decode batch holding all six
 * kv lengths (15 batches), and the float64 reference of each case is computed once and shared by all backends;
 * with that the full matrix runs on every tier, scalar included (the scalar kernel costs ~1 s of the total). Every
 * tier runs both mixed batches (the prefill one with (4,4) heads, head_dim 128, where the float64 reference costs
 * ~1.4 GFLOP in JS), the window/sinks case, the f32/f16 KV cases and the error cases. On a CUDA backend the op
 * runs on the CPU by design (the KV cache is host memory): the cases run there through the CUDA Backend object.
 * Tolerances: NMSE <= 5e-4 with bf16 anywhere (KV, q or out); <= 1e-6 with f32/f16 KV, f32 q and out.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type Backend, HostTensor, InvalidArgumentError, KvCache, MAX_VIEW_BYTES, OutOfMemoryError, type KernelTier, memoryStats } from '../lib/index.js';
import { harnessBackends } from './harness/backends.js';
import { TIER_ORDER } from './harness/table.js';
import { BF16, nmse, rng, roundTo } from './harness/ref.js';

type KvDt = 'bf16' | 'f16' | 'f32';

interface Case {
  name: string;
  hd: number;
  qHeads: number;
  kvHeads: number;
  seqs: [number, number][]; // (q_len, kv_len)
  kvDtype?: KvDt;
  qDtype?: 'f32' | 'bf16';
  outDtype?: 'f32' | 'bf16';
  blockSize?: number;
  window?: number;
  sinks?: boolean;
  /** explicit split count compared with unsplit (besides auto) */
  splits?: number;
}

const HEADS: [number, number][] = [[32, 8], [28, 4], [4, 4], [9, 3], [64, 4]];
const KV_LENS = [1, 7, 113, 512, 1024, 4097];
const MIX_DECODE: [number, number][] = [[1, 213], [1, 1], [1, 312], [1, 7], [1, 7812]];
const MIX_PREFILL: [number, number][] = [[5, 5], [3, 16], [134, 5131]];

// ---- inputs: pools with scattered pages, plus the logical K/V as float64 for the reference --------------------

interface Inputs {
  q: HostTensor;
  k: HostTensor;
  v: HostTensor;
  blockTables: HostTensor<'i32'>;
  kvLens: HostTensor<'i32'>;
  qLens: HostTensor<'i32'>;
  sinks?: HostTensor<'f32'>;
  ref: Float64Array;
  totalQ: number;
}

function decodeAll(t: HostTensor): Float64Array {
  return Float64Array.from(t.toFloat32());
}

const inputCache = new Map<string, Inputs>();

function makeInputs(c: Case): Inputs {
  const hit = inputCache.get(c.name);
  if (hit) return hit;
  const bs = c.blockSize ?? 16;
  const { hd, qHeads, kvHeads } = c;
  const kvDt = c.kvDtype ?? 'bf16';
  const r = rng(c.name.length * 7919 + hd + qHeads * 31 + kvHeads);
  const nb = c.seqs.map(([, L]) => Math.ceil(L / bs));
  const numPages = nb.reduce((a, b) => a + b, 0) + 3;
  const perm = Array.from({ length: numPages }, (_, i) => i);
  for (let i = perm.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  const maxBlocks = Math.max(1, ...nb) + 1;
  const bt = new Int32Array(c.seqs.length * maxBlocks).fill(-7); // padding past the needed blocks is never read
  let next = 0;
  const pageElems = kvHeads * bs * hd;
  const kf = new Float32Array(numPages * pageElems).map(() => (r() * 2 - 1) * 1.5);
  const vf = new Float32Array(numPages * pageElems).map(() => r() * 2 - 1);
  const k = HostTensor.from(kvDt, [numPages, kvHeads, bs, hd], kf);
  const v = HostTensor.from(kvDt, [numPages, kvHeads, bs, hd], vf);
  const kd = decodeAll(k);
  const vd = decodeAll(v);
  const totalQ = c.seqs.reduce((a, [Q]) => a + Q, 0);
  const qv = new Float32Array(totalQ * qHeads * hd).map(() => (r() * 2 - 1) * 1.5);
  const q = HostTensor.from(c.qDtype ?? 'f32', [totalQ, qHeads, hd], qv);
  const qd = decodeAll(q);
  const sinkVals = c.sinks ? Float32Array.from({ length: qHeads }, () => r() * 4 - 1) : undefined;
  const scale = 1 / Math.sqrt(hd);
  const g = qHeads / kvHeads;
  const ref = new Float64Array(totalQ * qHeads * hd);
  let qBase = 0;
  c.seqs.forEach(([Q, L], s) => {
    for (let b = 0; b < nb[s]!; b++) bt[s * maxBlocks + b] = perm[next++]!;
    // logical rows: element (pos, kvh, e) of the pools
    const at = (pos: number, kvh: number): number => (bt[s * maxBlocks + Math.floor(pos / bs)]! * kvHeads + kvh) * bs * hd + (pos % bs) * hd;
    const sc = new Float64Array(L);
    for (let i = 0; i < Q; i++) {
      const pos = L - Q + i;
      const lo = c.window ? Math.max(0, pos - c.window + 1) : 0;
      for (let h = 0; h < qHeads; h++) {
        const kvh = Math.floor(h / g);
        const qo = ((qBase + i) * qHeads + h) * hd;
        let m = -Infinity;
        for (let j = lo; j <= pos; j++) {
          const ko = at(j, kvh);
          let d = 0;
          for (let e = 0; e < hd; e++) d += qd[qo + e]! * kd[ko + e]!;
          sc[j] = d * scale;
          if (sc[j]! > m) m = sc[j]!;
        }
        if (sinkVals) m = Math.max(m, sinkVals[h]!);
        let den = sinkVals ? Math.exp(sinkVals[h]! - m) : 0;
        const o = ref.subarray(qo, qo + hd);
        for (let j = lo; j <= pos; j++) {
          const p = Math.exp(sc[j]! - m);
          den += p;
          const vo = at(j, kvh);
          for (let e = 0; e < hd; e++) o[e]! += p * vd[vo + e]!;
        }
        for (let e = 0; e < hd; e++) o[e]! /= den;
      }
    }
    qBase += Q;
  });
  const inp: Inputs = {
    q,
    k,
    v,
    blockTables: new HostTensor('i32', [c.seqs.length, maxBlocks], bt),
    kvLens: new HostTensor('i32', [c.seqs.length], Int32Array.from(c.seqs.map(([, L]) => L))),
    qLens: new HostTensor('i32', [c.seqs.length], Int32Array.from(c.seqs.map(([Q]) => Q))),
    ...(sinkVals ? { sinks: new HostTensor('f32', [qHeads], sinkVals) } : {}),
    ref,
    totalQ,
  };
  inputCache.set(c.name, inp);
  return inp;
}

function tolerance(c: Case): number {
  return (c.kvDtype ?? 'bf16') === 'bf16' || c.qDtype === 'bf16' || c.outDtype === 'bf16' ? 5e-4 : 1e-6;
}

async function runCase(be: Backend, c: Case, numSplits: number, splitTokens = 0): Promise<{ tier: KernelTier; out: Float64Array }> {
  const inp = makeInputs(c);
  const out = new HostTensor(c.outDtype ?? 'f32', [inp.totalQ, c.qHeads, c.hd]);
  const tier = await be.attention({
    q: inp.q,
    k: inp.k,
    v: inp.v,
    out,
    blockTables: inp.blockTables,
    kvLens: inp.kvLens,
    qLens: inp.qLens,
    ...(inp.sinks ? { sinks: inp.sinks } : {}),
    ...(c.window ? { slidingWindow: c.window } : {}),
    numSplits,
    splitTokens,
  });
  return { tier, out: decodeAll(out) };
}

// ---- the case tables --------------------------------------------------------------------------------------------

function decodeMatrix(hds: number[], heads: [number, number][]): Case[] {
  const out: Case[] = [];
  for (const hd of hds) {
    for (const [qh, kh] of heads) {
      out.push({ name: `decode kv_len {${KV_LENS.join(',')}} hd=${hd} heads=${qh}/${kh}`, hd, qHeads: qh, kvHeads: kh, seqs: KV_LENS.map((L) => [1, L]), splits: 5 });
    }
  }
  return out;
}

const COMMON: Case[] = [
  { name: 'mixed decode [(1,213),(1,1),(1,312),(1,7),(1,7812)] block 64 hd=128 heads=32/8', hd: 128, qHeads: 32, kvHeads: 8, seqs: MIX_DECODE, blockSize: 64, splits: 7 },
  { name: 'mixed prefill [(5,5),(3,16),(134,5131)] hd=128 heads=4/4', hd: 128, qHeads: 4, kvHeads: 4, seqs: MIX_PREFILL, splits: 4 },
  { name: 'extend with window 100 + sinks, block 32, hd=64 heads=8/2', hd: 64, qHeads: 8, kvHeads: 2, seqs: [[1, 700], [17, 300], [3, 3]], window: 100, sinks: true, blockSize: 32, splits: 3 },
  { name: 'odd block size 7 with window 13, bf16 KV, hd=256 heads=6/2', hd: 256, qHeads: 6, kvHeads: 2, seqs: [[9, 50], [1, 33], [2, 2]], blockSize: 7, window: 13, splits: 3 },
  { name: 'f32 KV, f32 q/out, hd=128 heads=9/3', hd: 128, qHeads: 9, kvHeads: 3, seqs: [[1, 1000], [6, 77]], kvDtype: 'f32', splits: 3 },
  { name: 'f16 KV, bf16 q and out, block 8, hd=256 heads=4/2', hd: 256, qHeads: 4, kvHeads: 2, seqs: [[2, 600], [1, 9]], kvDtype: 'f16', qDtype: 'bf16', outDtype: 'bf16', blockSize: 8, splits: 2 },
];

function casesFor(isa: string): Case[] {
  void isa; // every tier gets the whole table (measured: the file runs in ~20 s on 2 cores, scalar tier included)
  return [...decodeMatrix([64, 128, 256], HEADS), ...COMMON];
}

// ---- run the cases on every backend -----------------------------------------------------------------------------

const backends = harnessBackends();

for (const hb of backends) {
  void test(`attention on ${hb.name}`, { skip: hb.available ? false : `${hb.name} unavailable: ${hb.reason}` }, async (t) => {
    const be = hb.open();
    // cuda: attention runs on the CPU (by design), at the backend's CPU tier.
    const cases = casesFor(be.isa);
    for (const c of cases) {
      await t.test(`${c.name} [${hb.name}]`, async (st) => {
        const inp = makeInputs(c);
        const tol = tolerance(c);
        const one = await runCase(be, c, 1);
        const auto = await runCase(be, c, 0);
        const split = await runCase(be, c, c.splits ?? 3);
        const byLen = await runCase(be, c, 0, 100); // ceil(kvLen / 100) splits per sequence
        assert.ok(TIER_ORDER.indexOf(one.tier) <= TIER_ORDER.indexOf(be.isa), `ran tier ${one.tier} above ${be.isa}`);
        const e1 = nmse(one.out, inp.ref);
        const e2 = nmse(auto.out, inp.ref);
        const e3 = nmse(split.out, inp.ref);
        assert.ok(e1 <= tol, `unsplit NMSE ${e1} > ${tol}`);
        assert.ok(e2 <= tol, `auto-split NMSE ${e2} > ${tol}`);
        assert.ok(e3 <= tol, `${c.splits}-split NMSE ${e3} > ${tol}`);
        // split and unsplit agree far more closely than either with the reference: f32 rounding only, plus on
        // the avx512bf16 tier the bf16 rounding of p, which depends on each split's running max
        const agree = nmse(split.out, one.out);
        const agreeTol = c.outDtype === 'bf16' ? 1e-4 : one.tier === 'avx512bf16' ? 1e-6 : 1e-9;
        assert.ok(agree <= agreeTol, `split vs unsplit NMSE ${agree} > ${agreeTol}`);
        const e4 = nmse(byLen.out, inp.ref);
        assert.ok(e4 <= tol, `splitTokens 100 NMSE ${e4} > ${tol}`);
        const agreeLen = nmse(byLen.out, one.out);
        assert.ok(agreeLen <= agreeTol, `splitTokens 100 vs unsplit NMSE ${agreeLen} > ${agreeTol}`);
        st.diagnostic(`kernel ${one.tier}, NMSE ${e1.toExponential(2)} (split ${e3.toExponential(2)}, split vs unsplit ${agree.toExponential(2)}), tol ${tol}`);
      });
    }

    await t.test(`argument errors are typed [${hb.name}]`, async () => {
      const c = COMMON.find((x) => x.kvDtype === 'f32')!;
      const inp = makeInputs(c);
      const out = new HostTensor('f32', [inp.totalQ, c.qHeads, c.hd]);
      const base = { q: inp.q, k: inp.k, v: inp.v, out, blockTables: inp.blockTables, kvLens: inp.kvLens, qLens: inp.qLens };
      const nb = inp.blockTables.shape[1]!;
      const numPages = inp.k.shape[0]!;
      // page id out of range / negative, in a block that is needed
      for (const badId of [numPages, -1]) {
        const bt = new HostTensor('i32', inp.blockTables.shape, Int32Array.from(inp.blockTables.data));
        bt.data[3] = badId;
        await assert.rejects(be.attention({ ...base, blockTables: bt }), (e: unknown) => e instanceof InvalidArgumentError && /page id/.test(e.message));
      }
      // kv_len beyond the block table
      const kvl = new HostTensor('i32', [2], Int32Array.from([nb * 16 + 1, 77]));
      await assert.rejects(be.attention({ ...base, kvLens: kvl }), (e: unknown) => e instanceof InvalidArgumentError && /block table has/.test(e.message));
      // q_len > kv_len, and q_lens not summing to totalQ
      await assert.rejects(be.attention({ ...base, qLens: new HostTensor('i32', [2], Int32Array.from([1, 78])) }), InvalidArgumentError);
      await assert.rejects(be.attention({ ...base, qLens: new HostTensor('i32', [2], Int32Array.from([1, 5])) }), /sum to 6/);
      // mismatched heads, head dims, shapes: synchronous
      const q8 = new HostTensor('f32', [inp.totalQ, 8, c.hd]);
      assert.throws(() => be.attention({ ...base, q: q8, out: new HostTensor('f32', [inp.totalQ, 8, c.hd]) }), /multiple of the kv heads/);
      assert.throws(() => be.attention({ ...base, out: new HostTensor('f32', [inp.totalQ, c.qHeads, 64]) }), InvalidArgumentError);
      const q96 = new HostTensor('f32', [inp.totalQ, c.qHeads, 96]);
      assert.throws(() => be.attention({ ...base, q: q96, out: q96 }), /64, 128 or 256/);
      assert.throws(() => be.attention({ ...base, kvLens: new HostTensor('i32', [3]) }), InvalidArgumentError);
      assert.throws(() => be.attention({ ...base, v: new HostTensor('bf16', inp.v.shape) }), InvalidArgumentError);
      assert.throws(() => be.attention({ ...base, numSplits: -1 }), InvalidArgumentError);
      assert.throws(() => be.attention({ ...base, splitTokens: -1 }), /splitTokens must be an integer/);
      assert.throws(() => be.attention({ ...base, splitTokens: 2 ** 31 }), /splitTokens must be an integer/);
      assert.throws(() => be.attention({ ...base, splitTokens: 1.5 }), /splitTokens must be an integer/);
      for (const threads of [-1, 1.5, 2 ** 20, '4' as unknown as number]) assert.throws(() => be.attention({ ...base, threads }), /threads must be an integer in \[0, 65536\]/);
      // cancellation before start
      const ac = new AbortController();
      ac.abort(new Error('stop'));
      await assert.rejects(be.attention(base, { signal: ac.signal }), /stop/);
    });
  });
}

// ---- the KV cache -------------------------------------------------------------------------------------------------

function randKv(n: number, kvHeads: number, hd: number, seed: number): HostTensor<'f32'> {
  const r = rng(seed);
  return HostTensor.from('f32', [n, kvHeads, hd], Array.from({ length: n * kvHeads * hd }, () => r() * 2 - 1)) as HostTensor<'f32'>;
}

/** float64 attention of one query row over logical K/V rows [L][kvHeads][hd] (bf16-rounded like the cache). */
function refRow(qRow: Float64Array, ks: Float64Array[], vs: Float64Array[], kvh: number, kvHeads: number, hd: number, scale: number): Float64Array {
  const L = ks.length;
  const sc = ks.map((k) => {
    let d = 0;
    for (let e = 0; e < hd; e++) d += qRow[e]! * k[kvh * hd + e]!;
    return d * scale;
  });
  const m = Math.max(...sc);
  const out = new Float64Array(hd);
  let den = 0;
  for (let j = 0; j < L; j++) {
    const p = Math.exp(sc[j]! - m);
    den += p;
    for (let e = 0; e < hd; e++) out[e]! += p * vs[j]![kvh * hd + e]!;
  }
  return out.map((x) => x / den);
}

void test('KvCache: pages, fork with shared prefix and copy on write, typed out-of-pages error, free', async () => {
  const cpu = harnessBackends().filter((b) => b.available && b.name.startsWith('cpu-'));
  const be = cpu[cpu.length - 1]!.open();
  const L = 2;
  const kvHeads = 2;
  const hd = 64;
  const bs = 16;
  const bytesPerPage = L * 2 * kvHeads * bs * hd * 2;
  using cache = KvCache.create(be, { layers: L, kvHeads, headDim: hd, blockSize: bs, budgetBytes: 6 * bytesPerPage + 100 });
  assert.equal(cache.numPages, 6);
  assert.equal(cache.bytesPerPage, bytesPerPage);
  assert.equal(cache.tokensFree(), 6 * bs);

  // logical contents per sequence per layer: rows [kvHeads * hd] as float64 (bf16-rounded)
  const logical = new Map<number, Float64Array[][]>();
  const put = async (seq: number, layer: number, pos: number, k: HostTensor<'f32'>, v: HostTensor<'f32'>): Promise<void> => {
    await cache.write(layer, seq, pos, k, v);
    const kb = HostTensor.from('bf16', k.shape, k.data).toFloat32();
    const vb = HostTensor.from('bf16', v.shape, v.data).toFloat32();
    const rows = logical.get(seq) ?? [[], [], [], []];
    for (let t = 0; t < k.shape[0]!; t++) {
      rows[layer * 2]![pos + t] = Float64Array.from(kb.subarray(t * kvHeads * hd, (t + 1) * kvHeads * hd));
      rows[layer * 2 + 1]![pos + t] = Float64Array.from(vb.subarray(t * kvHeads * hd, (t + 1) * kvHeads * hd));
    }
    logical.set(seq, rows);
  };

  const a = cache.allocate();
  const filler = cache.allocate(); // interleaved appends scatter a's pages
  assert.equal(cache.append(a, 10), 0);
  cache.append(filler, 16);
  assert.equal(cache.append(a, 11), 10); // a: 21 tokens, pages non-adjacent
  for (let layer = 0; layer < L; layer++) await put(a, layer, 0, randKv(21, kvHeads, hd, 10 + layer), randKv(21, kvHeads, hd, 20 + layer));
  const [p0, p1] = cache.blockTable(a) as [number, number];
  assert.notEqual(p1, p0 + 1);
  assert.equal(cache.tokensFree(a), 11 + 3 * bs);

  const b = cache.fork(a);
  logical.set(b, logical.get(a)!.map((rows) => [...rows]));
  assert.deepEqual(cache.blockTable(b), [p0, p1]);
  assert.equal(cache.refCount(p0), 2);
  assert.equal(cache.refCount(p1), 2);
  assert.equal(cache.freePages, 3);
  // writing into a shared page is refused
  assert.throws(() => cache.write(0, b, 20, randKv(1, kvHeads, hd, 1), randKv(1, kvHeads, hd, 2)), /shared with a forked sequence/);
  // b's last page is shared: its free slots need a copy first
  assert.equal(cache.tokensFree(b), 11 + 2 * bs);

  // diverge: a appends 3, b appends 5 (copy on write of the partial page p1 for the first one that appends)
  cache.append(a, 3);
  cache.append(b, 5);
  const ta = cache.blockTable(a);
  const tb = cache.blockTable(b);
  assert.equal(ta[0], p0);
  assert.equal(tb[0], p0); // the full first page stays shared
  assert.equal(cache.refCount(p0), 2);
  assert.notEqual(ta[1], tb[1]); // the partial page was copied
  assert.ok(ta[1] === p1 || tb[1] === p1);
  assert.equal(cache.refCount(p1), 1);
  for (let layer = 0; layer < L; layer++) {
    await put(a, layer, 21, randKv(3, kvHeads, hd, 30 + layer), randKv(3, kvHeads, hd, 40 + layer));
    await put(b, layer, 21, randKv(5, kvHeads, hd, 50 + layer), randKv(5, kvHeads, hd, 60 + layer));
  }

  // attention over [a, b] with q_len (3, 5), both layers, against the logical contents
  const qHeads = 4;
  const r = rng(99);
  const q = HostTensor.from('f32', [8, qHeads, hd], Array.from({ length: 8 * qHeads * hd }, () => r() * 2 - 1));
  const batch = cache.batch([a, b], [3, 5]);
  assert.deepEqual(Array.from(batch.kvLens.data), [24, 26]);
  for (let layer = 0; layer < L; layer++) {
    const out = new HostTensor('f32', [8, qHeads, hd]);
    await be.attention({ q, k: cache.keys(layer), v: cache.values(layer), out, ...batch });
    const ref = new Float64Array(8 * qHeads * hd);
    const qd = Float64Array.from(q.data);
    [
      [a, 3, 24, 0],
      [b, 5, 26, 3],
    ].forEach(([seq, Q, len, q0]) => {
      const rows = logical.get(seq!)!;
      for (let i = 0; i < Q!; i++) {
        const upto = len! - Q! + i + 1;
        for (let h = 0; h < qHeads; h++) {
          const o = ((q0! + i) * qHeads + h) * hd;
          ref.set(refRow(qd.subarray(o, o + hd), rows[layer * 2]!.slice(0, upto), rows[layer * 2 + 1]!.slice(0, upto), Math.floor(h / 2), kvHeads, hd, 1 / Math.sqrt(hd)), o);
        }
      }
    });
    const e = nmse(Float64Array.from(out.data), ref);
    assert.ok(e <= 5e-4, `layer ${layer}: NMSE ${e}`);
  }

  // out of pages: a typed error, nothing changes
  const freeBefore = cache.freePages;
  const lenBefore = cache.length(a);
  assert.equal(cache.tokensFree(a), 8 + freeBefore * bs);
  assert.throws(() => cache.append(a, 8 + freeBefore * bs + 1), OutOfMemoryError);
  assert.equal(cache.freePages, freeBefore);
  assert.equal(cache.length(a), lenBefore);
  assert.equal(cache.append(a, 8 + freeBefore * bs), lenBefore); // exactly what tokensFree said fits
  assert.equal(cache.freePages, 0);
  assert.throws(() => cache.append(a, 1), (e: unknown) => e instanceof OutOfMemoryError && e.code === 'MOE_OUT_OF_MEMORY');

  // free: shared pages survive until the last user goes
  cache.free(a);
  assert.equal(cache.refCount(p0), 1);
  cache.free(b);
  cache.free(filler);
  assert.equal(cache.freePages, 6);
  assert.throws(() => cache.length(a), InvalidArgumentError);
  assert.throws(() => KvCache.create(be, { layers: 1, kvHeads: 1, headDim: 64, budgetBytes: 10 }), InvalidArgumentError);
  assert.throws(() => KvCache.create(be, { layers: 1, kvHeads: 1, headDim: 80, budgetBytes: 1 << 20 }), /64, 128 or 256/);
  // a layer's K (or V) pages must fit one JS view (the KV writes): a larger budget is refused before allocating
  const pinned0 = memoryStats()[be.kind].pinned;
  const regionPage = 8 * 64 * 128 * 2;
  assert.throws(
    () => KvCache.create(be, { layers: 1, kvHeads: 8, headDim: 128, blockSize: 64, budgetBytes: 2 * (MAX_VIEW_BYTES + 4 * regionPage) }),
    (e: unknown) => e instanceof InvalidArgumentError && /Node's limit for external buffers\); use at most \d+/.test(e.message),
  );
  assert.deepEqual(memoryStats()[be.kind].pinned, pinned0);
});

void test('KvCache.writeMany writes what one write per sequence writes, and checks every entry before writing', async () => {
  const cpu = harnessBackends().filter((b) => b.available && b.name.startsWith('cpu-'));
  const be = cpu[cpu.length - 1]!.open();
  const kvHeads = 2, hd = 64, bs = 16;
  const make = () => KvCache.create(be, { layers: 2, kvHeads, headDim: hd, blockSize: bs, budgetBytes: 12 * 2 * 2 * kvHeads * bs * hd * 2 });
  using one = make();
  using many = make();
  const lens = [3, 1, 17, 5];
  const entries = (c: KvCache) => {
    const seqs = lens.map(() => c.allocate());
    c.append(seqs[2]!, 4); // earlier tokens: the entries start mid-page
    return seqs.map((seq, i) => ({ seq, pos: c.append(seq, lens[i]!), n: lens[i]! }));
  };
  const e1 = entries(one), e2 = entries(many);
  const T = lens.reduce((a, b) => a + b, 0);
  const k = randKv(T, kvHeads, hd, 11), v = randKv(T, kvHeads, hd, 12);
  let t0 = 0;
  for (const { seq, pos, n } of e1) {
    await one.write(1, seq, pos, k.rows(t0, n), v.rows(t0, n));
    t0 += n;
  }
  await many.writeMany(1, e2, k, v);
  // the written rows (pages hold unwritten memory elsewhere): [page][head][slot][hd] of every entry's positions
  const rows = (c: KvCache, es: typeof e1, layer: number) => {
    const out: number[] = [];
    for (const { seq, pos, n } of es) {
      const table = c.blockTable(seq);
      for (const part of [c.keys(layer).data, c.values(layer).data])
        for (let p = pos; p < pos + n; p++)
          for (let h = 0; h < kvHeads; h++) {
            const o = ((table[Math.floor(p / bs)]! * kvHeads + h) * bs + (p % bs)) * hd;
            out.push(...part.subarray(o, o + hd));
          }
    }
    return out;
  };
  // independent reference (the harness's float64 rounding): the f32 rows as bf16, in the entries' order
  const want: number[] = [];
  let r0 = 0;
  for (const { n } of e1) {
    for (const src of [k, v])
      for (let t = 0; t < n; t++)
        for (let h = 0; h < kvHeads; h++)
          for (let d = 0; d < hd; d++) want.push(roundTo(src.data[((r0 + t) * kvHeads + h) * hd + d]!, BF16));
    r0 += n;
  }
  assert.deepEqual(rows(one, e1, 1), want);
  assert.deepEqual(rows(many, e2, 1), want);
  // a bad last entry, or rows that do not add up: typed errors, and nothing of the call written
  const before = rows(many, e2, 1);
  const k2 = randKv(T, kvHeads, hd, 13);
  assert.throws(() => many.writeMany(1, [...e2.slice(0, 3), { seq: 999, pos: 0, n: 5 }], k2, k2), InvalidArgumentError);
  assert.throws(() => many.writeMany(1, e2.slice(0, 3), k2, k2), (e: unknown) => e instanceof InvalidArgumentError && /entries' 21 tokens, received 26/.test(e.message));
  // the same position twice: the native scatter rejects before writing a row (two writers would tear it)
  const twice = [...e2.slice(0, 3), { seq: e2[2]!.seq, pos: e2[2]!.pos, n: 5 }];
  await assert.rejects(many.writeMany(1, twice, k2, k2), (e: unknown) => e instanceof InvalidArgumentError && /ids must be distinct/.test(e.message));
  assert.deepEqual(rows(many, e2, 1), before);
});

void test('attention: cancelling an in-flight prefill rejects with the signal reason and stops early (cpu-scalar)', async () => {
  const hb = harnessBackends().find((b) => b.name === 'cpu-scalar' && b.available);
  assert.ok(hb, 'cpu-scalar backend');
  const be = hb.open();
  // one sequence, q_len = kv_len = 1024, 8 heads, head_dim 128: ~1 GFLOP, >= ~1 s on the scalar tier (2 cores)
  const L = 1024;
  const H = 8;
  const hd = 128;
  const bs = 16;
  const nb = L / bs;
  const r = rng(4242);
  const q = HostTensor.from('f32', [L, H, hd], Array.from({ length: L * H * hd }, () => r() - 0.5));
  const k = HostTensor.from('f32', [nb, H, bs, hd], Array.from({ length: nb * H * bs * hd }, () => r() - 0.5));
  const v = HostTensor.from('f32', [nb, H, bs, hd], Array.from({ length: nb * H * bs * hd }, () => r() - 0.5));
  const out = new HostTensor('f32', [L, H, hd]);
  const p = {
    q,
    k,
    v,
    out,
    blockTables: HostTensor.from('i32', [1, nb], Int32Array.from({ length: nb }, (_, i) => nb - 1 - i)),
    kvLens: HostTensor.from('i32', [1], Int32Array.from([L])),
    qLens: HostTensor.from('i32', [1], Int32Array.from([L])),
  };
  let t0 = performance.now();
  await be.attention(p);
  const full = performance.now() - t0;
  const ac = new AbortController();
  const reason = new Error('user stopped the prefill');
  t0 = performance.now();
  const pending = be.attention(p, { signal: ac.signal });
  const delay = Math.min(50, full / 10);
  await new Promise((res) => setTimeout(res, delay)); // the op has started: nothing else is queued on the stream
  ac.abort(reason);
  await assert.rejects(pending, (e: unknown) => e === reason || (e instanceof Error && /user stopped the prefill/.test(e.message)));
  const took = performance.now() - t0;
  // work items are <= 16 query tokens x 1024 keys of one head group (~1/500 of the op): it stops within a few items
  assert.ok(took < full / 2, `cancelled op took ${took.toFixed(0)} ms, the full op ${full.toFixed(0)} ms`);
});

void test('attention: params.isa runs a lower tier than the backend\'s (capped at it) with the same result up to rounding; a bad tier is a typed error', async () => {
  const best = backends.filter((b) => b.available && b.name.startsWith('cpu-')).map((b) => b.name.slice(4)).at(-1);
  assert.ok(best, 'a cpu backend');
  const be = harnessBackends().find((b) => b.name === `cpu-${best}`)!.open();
  const r = rng(77);
  const [S, L, H, KVH, hd, bs] = [3, 200, 8, 2, 64, 16];
  const nb = Math.ceil(L / bs);
  const q = HostTensor.from('f32', [S, H, hd], Array.from({ length: S * H * hd }, () => r() - 0.5));
  const k = HostTensor.from('bf16', [S * nb, KVH, bs, hd], Array.from({ length: S * nb * KVH * bs * hd }, () => r() - 0.5));
  const v = HostTensor.from('bf16', [S * nb, KVH, bs, hd], Array.from({ length: S * nb * KVH * bs * hd }, () => r() - 0.5));
  const p = {
    q,
    k,
    v,
    blockTables: HostTensor.from('i32', [S, nb], Int32Array.from({ length: S * nb }, (_, i) => i)),
    kvLens: HostTensor.from('i32', [S], Int32Array.from([L, L - 50, 17])),
    qLens: HostTensor.from('i32', [S], Int32Array.from([1, 1, 1])),
  };
  const ref = new HostTensor('f32', [S, H, hd]);
  assert.equal(await be.attention({ ...p, out: ref, isa: 'scalar' }), 'scalar');
  for (const isa of ['avx2', 'avx512', 'avx512bf16'] as const) {
    const out = new HostTensor('f32', [S, H, hd]);
    const ran = await be.attention({ ...p, out, isa });
    // the lower of the two tiers; bf16 K/V runs the avx512bf16 kernels only there (f32 math below it)
    const expect: KernelTier = TIER_ORDER.indexOf(isa) <= TIER_ORDER.indexOf(best as KernelTier) ? isa : (best as KernelTier);
    assert.equal(ran, expect, `isa ${isa}`);
    assert.ok(nmse(Array.from(out.data), Array.from(ref.data)) < 1e-5, `isa ${isa}: nmse against the scalar tier`);
  }
  assert.throws(() => be.attention({ ...p, out: ref, isa: 'avx9000' as never }), (e: unknown) => e instanceof InvalidArgumentError && /^isa must be one of scalar, avx2, avx512, avx512bf16, received/.test(e.message));
});
