/**
 * Module-based batching (MoE-Gen): moeExperts in parts mode + moeCombine, every case on every backend present
 * (cpu-scalar, cpu-avx2, cpu-avx512, cpu-avx512bf16, cuda:N; absent ones skipped with their reason).
 * The bitwise contract: a layer's experts streamed through the table in chunks (parts mode per chunk, only that
 * chunk's experts present, then one moeCombine) give exactly the bf16 output of one fused moeExperts call with every
 * expert present (Uint16Array equal), for any partition of the experts: one expert per chunk, 3 per chunk (random
 * order), all in one chunk. Shapes: Mixtral-like (H 256, I 384, E 8, k 2), Qwen3-like (E 32, k 8), gpt-oss-like
 * (f32 biases on stacked gateUp, swiglu-oai with inputs past the clamp); T in {1, 7, 64}; about 10% of the ids -1.
 * Also checked: rows whose expert is not in a chunk keep their sentinel bits after that chunk (untouched), each
 * written row is bitwise the row the all-in-one run writes, -1 rows are never written, parts given as [T*k, H]
 * works like [T, k, H], and moeCombine against a float64 combine of the same parts (|y - ref| <= 1e-2 |ref| +
 * 1e-5 Σ|terms| per element).
 * Bad inputs (both / neither of out and parts, parts dtype or shape, moeCombine shapes, ids < -1) give
 * InvalidArgumentError, never a crash.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type Backend, type ExpertWeightsStacked, HostTensor, InvalidArgumentError, type MoeActivation, type Tensor } from '../lib/index.js';
import { harnessBackends, placer } from './harness/backends.js';
import { randomIds, uniform } from './harness/inputs.js';
import { rng } from './harness/ref.js';

const OAI: MoeActivation = { kind: 'swiglu-oai', alpha: 1.702, limit: 7 };
const SENTINEL = 0x7fc0_dead; // a NaN with a payload no kernel writes: "row untouched"
const TS = [1, 7, 64];

interface Spec {
  name: string;
  h: number;
  inter: number;
  e: number;
  k: number;
  oai?: boolean; // swiglu-oai with f32 biases (stacked gateUp + gateUpBias)
}

const SPECS: Spec[] = [
  { name: 'Mixtral-like H256 I384 E8 k2 silu', h: 256, inter: 384, e: 8, k: 2 },
  { name: 'Qwen3-like H256 I128 E32 k8 silu', h: 256, inter: 128, e: 32, k: 8 },
  { name: 'gpt-oss-like H256 I192 E16 k4 swiglu-oai + biases', h: 256, inter: 192, e: 16, k: 4, oai: true },
];

interface Problem {
  s: Spec;
  t: number;
  x: HostTensor<'bf16'>;
  ids: HostTensor<'i32'>;
  w: HostTensor<'f32'>;
  /** per expert: gateUp [2I, H], down [H, I] bf16, biases (oai) gateUpBias [2I], downBias [H] f32 */
  experts: Array<{ gateUp: HostTensor<'bf16'>; down: HostTensor<'bf16'>; gub?: HostTensor<'f32'>; bd?: HostTensor<'f32'> }>;
}

function makeProblem(s: Spec, t: number, seed: number): Problem {
  const { h, inter, e, k } = s;
  const ids = randomIds(t, k, e, seed);
  const r = rng(seed + 1);
  for (let i = 0; i < ids.length; i++) if (r() < 0.1) ids[i] = -1;
  if (t > 1) ids.fill(-1, 0, k); // token 0: no expert at all (output exactly 0 either way)
  const w = new Float32Array(t * k);
  for (let i = 0; i < w.length; i++) w[i] = 0.1 + r();
  const experts: Problem['experts'] = [];
  for (let x = 0; x < e; x++) {
    const base = seed * 1009 + x * 7;
    experts.push({
      gateUp: uniform('bf16', [2 * inter, h], 0.1, base),
      down: uniform('bf16', [h, inter], 0.1, base + 1),
      ...(s.oai ? { gub: uniform('f32', [2 * inter], 3, base + 2), bd: uniform('f32', [h], 0.5, base + 3) } : {}),
    });
  }
  // swiglu-oai: sums spread enough to pass the clamp limit on both sides (as test/moe-oai.test.ts)
  const x = uniform('bf16', [t, h], s.oai ? 120 / Math.sqrt(h) : 1, seed + 2);
  return { s, t, x, ids: new HostTensor('i32', [t, k], ids), w: new HostTensor('f32', [t, k], w), experts };
}

/** The problem placed on `be` (uploaded on cuda) with helpers to run the three ops and read results back. */
async function place(be: Backend, p: Problem) {
  const placed = placer(be);
  const put = placed.put;
  const { h, inter, e, k } = p.s;
  const x = await put(p.x);
  const ids = await put(p.ids);
  const w = await put(p.w);
  const weights: ExpertWeightsStacked[] = [];
  for (const ex of p.experts) {
    weights.push({
      gateUp: await put(ex.gateUp),
      down: await put(ex.down),
      ...(ex.gub && ex.bd ? { gateUpBias: await put(ex.gub), downBias: await put(ex.bd) } : {}),
    });
  }
  const table = be.expertTable(e, { hidden: h, intermediate: inter });
  const act = p.s.oai ? { activation: OAI } : {};
  const setOnly = (present: readonly number[]): void => {
    for (let q = 0; q < e; q++) table.clear(q);
    for (const q of present) table.set(q, weights[q]!);
  };
  const readBack = async (dst: HostTensor, src: Tensor): Promise<void> => {
    if (src !== dst) await be.copy(src, dst);
  };
  return {
    /** One fused call with every expert present -> [T, H] bf16 bits. */
    async fused(): Promise<Uint16Array> {
      setOnly([...Array(e).keys()]);
      const host = new HostTensor('bf16', [p.t, h]);
      host.data.fill(0x7fc0); // NaN: every element must be written
      const out = await put(host);
      await be.moeExperts({ x, topkIds: ids, topkWeights: w, experts: table, out, ...act });
      await readBack(host, out);
      return host.data as Uint16Array;
    },
    /** A parts tensor ([T, k, H], or [T*k, H] when flat) filled with the sentinel, on the backend. */
    async newParts(flat: boolean): Promise<{ host: HostTensor<'f32'>; dev: Tensor }> {
      const host = new HostTensor('f32', flat ? [p.t * k, h] : [p.t, k, h]) as HostTensor<'f32'>;
      new Uint32Array(host.data.buffer, host.data.byteOffset, host.data.length).fill(SENTINEL);
      return { host, dev: await put(host) };
    },
    /** Parts mode with only `chunk`'s experts present, then the parts read back into `parts.host`. */
    async partsRun(chunk: readonly number[], parts: { host: HostTensor<'f32'>; dev: Tensor }): Promise<void> {
      setOnly(chunk);
      await be.moeExperts({ x, topkIds: ids, topkWeights: w, experts: table, parts: parts.dev, ...act });
      await readBack(parts.host, parts.dev);
    },
    async combine(parts: Tensor): Promise<Uint16Array> {
      const host = new HostTensor('bf16', [p.t, h]);
      host.data.fill(0x7fc0);
      const out = await put(host);
      await be.moeCombine({ parts, topkIds: ids, topkWeights: w, out });
      await readBack(host, out);
      return host.data as Uint16Array;
    },
    dispose(): void {
      placed.dispose();
    },
  };
}

/** Experts 0..e-1 in a random order, split into chunks of `size`. */
function partition(e: number, size: number, seed: number): number[][] {
  const r = rng(seed);
  const order = [...Array(e).keys()];
  for (let i = e - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const out: number[][] = [];
  for (let i = 0; i < e; i += size) out.push(order.slice(i, i + size));
  return out;
}

function firstDiff(got: Uint16Array, want: Uint16Array, h: number): string | undefined {
  let n = 0;
  let first = -1;
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      if (first < 0) first = i;
      n++;
    }
  }
  if (n === 0) return undefined;
  const hex = (v: number): string => `0x${v.toString(16).padStart(4, '0')}`;
  return `${n} of ${want.length} differ; first token ${Math.floor(first / h)} column ${first % h}: ${hex(got[first]!)} chunked vs ${hex(want[first]!)} fused`;
}

const backends = harnessBackends();

for (const s of SPECS) {
  for (const hb of backends) {
    const skip = hb.available ? false : hb.reason ?? 'unavailable';
    void test(`moeExperts parts + moeCombine == fused, bitwise: ${s.name} on ${hb.name}`, { skip }, async (tc) => {
      const be = hb.open();
      const { h, k, e } = s;
      for (const T of TS) {
        const p = makeProblem(s, T, 31 * T + SPECS.indexOf(s));
        const b = await place(be, p);
        try {
          const want = await b.fused();
          const ids = p.ids.data as Int32Array;
          // all in one chunk: the reference rows for the row checks below
          const whole = await b.newParts(false);
          await b.partsRun([...Array(e).keys()], whole);
          const wholeBits = new Uint32Array(whole.host.data.buffer, whole.host.data.byteOffset, whole.host.data.length);
          for (let sl = 0; sl < T * k; sl++) {
            const row = wholeBits.subarray(sl * h, (sl + 1) * h);
            if (ids[sl]! < 0) assert.ok(row.every((v) => v === SENTINEL), `T=${T} slot ${sl} (id -1) was written`);
            else assert.ok(row.every((v) => v !== SENTINEL), `T=${T} slot ${sl} (expert ${ids[sl]}) not fully written`);
          }
          const d0 = firstDiff(await b.combine(whole.dev), want, h);
          assert.equal(d0, undefined, `T=${T} all experts in one chunk: ${d0}`);

          for (const [size, flat] of [[1, false], [3, true]] as const) {
            const chunks = partition(e, size, 7 * T + size);
            const parts = await b.newParts(flat);
            const bits = new Uint32Array(parts.host.data.buffer, parts.host.data.byteOffset, parts.host.data.length);
            const done = new Set<number>();
            for (const chunk of chunks) {
              await b.partsRun(chunk, parts);
              chunk.forEach((q) => done.add(q));
              // rows of experts done so far: bitwise the all-in-one rows; every other row: untouched sentinel
              for (let sl = 0; sl < T * k; sl++) {
                const id = ids[sl]!;
                const row = bits.subarray(sl * h, (sl + 1) * h);
                if (id >= 0 && done.has(id)) {
                  const ref = wholeBits.subarray(sl * h, (sl + 1) * h);
                  assert.ok(row.every((v, c) => v === ref[c]), `T=${T} chunks of ${size}: slot ${sl} (expert ${id}) differs from the all-in-one row`);
                } else {
                  assert.ok(row.every((v) => v === SENTINEL), `T=${T} chunks of ${size}: slot ${sl} (id ${id}) touched by a chunk without its expert`);
                }
              }
            }
            const d = firstDiff(await b.combine(parts.dev), want, h);
            assert.equal(d, undefined, `T=${T} chunks of ${size} (${chunks.length} chunks): ${d}`);
          }

          // moeCombine against a float64 combine of the same parts
          const got = await b.combine(whole.dev);
          const pv = whole.host.data as Float32Array;
          const wv = p.w.data as Float32Array;
          let worst = 0;
          for (let t = 0; t < T; t++) {
            for (let c = 0; c < h; c++) {
              let ref = 0;
              let mag = 0;
              for (let j = 0; j < k; j++) {
                if (ids[t * k + j]! < 0) continue;
                const term = wv[t * k + j]! * pv[(t * k + j) * h + c]!;
                ref += term;
                mag += Math.abs(term);
              }
              const y = bf16ToNumber(got[t * h + c]!);
              // |y - ref| <= 1e-2 |ref| + 1e-5 Σ|terms| (the f32 sum's own error is about k 2^-24 Σ|terms|)
              const err = Math.abs(y - ref) / (Math.abs(ref) + 1e-3 * mag);
              if (mag === 0) assert.equal(got[t * h + c], 0, `T=${T} token ${t} has no expert: output must be 0`);
              else worst = Math.max(worst, err);
            }
          }
          assert.ok(worst <= 1e-2, `T=${T}: moeCombine vs float64 relative error ${worst}`);
          tc.diagnostic(`T=${T}: one chunk, ${e} chunks of 1, ${Math.ceil(e / 3)} chunks of 3 all bitwise equal to fused; combine rel err ${worst.toExponential(2)}`);
        } finally {
          b.dispose();
        }
      }
    });
  }
}

function bf16ToNumber(bits: number): number {
  const f = new Float32Array(1);
  new Uint32Array(f.buffer)[0] = bits << 16;
  return f[0]!;
}

// ---- bad inputs: typed errors, no crash ---------------------------------------------------------------------------

void test('moeExperts parts mode and moeCombine reject bad inputs with InvalidArgumentError', async () => {
  const be = harnessBackends().find((b) => b.name === 'cpu-scalar')!.open();
  const s: Spec = { name: 'small', h: 16, inter: 8, e: 4, k: 2 };
  const p = makeProblem(s, 3, 5);
  const table = be.expertTable(4, { hidden: 16, intermediate: 8 });
  p.experts.forEach((ex, q) => table.set(q, { gateUp: ex.gateUp, down: ex.down }));
  const out = new HostTensor('bf16', [3, 16]);
  const parts = new HostTensor('f32', [3, 2, 16]);
  const base = { x: p.x, topkIds: p.ids, topkWeights: p.w, experts: table };
  const inv = (re: RegExp) => (e: unknown) => e instanceof InvalidArgumentError && re.test(e.message);
  await be.moeExperts({ ...base, parts }); // valid calls work
  await be.moeExperts({ ...base, parts: new HostTensor('f32', [6, 16]) });
  await be.moeCombine({ parts, topkIds: p.ids, topkWeights: p.w, out });
  await be.moeCombine({ parts: new HostTensor('f32', [6, 16]), topkIds: p.ids, topkWeights: p.w, out });
  // parts mode does not read topkWeights: NaN weights give the same rows, bitwise
  const nanW = new HostTensor('f32', [3, 2], new Float32Array(6).fill(NaN));
  const parts2 = new HostTensor('f32', [3, 2, 16]);
  await be.moeExperts({ ...base, topkWeights: nanW, parts: parts2 });
  assert.deepEqual(new Uint32Array(parts2.data.buffer), new Uint32Array(parts.data.buffer));

  // exactly one of out / parts
  assert.throws(() => be.moeExperts({ ...base, out, parts }), inv(/exactly one of out .* and parts .* received both/));
  assert.throws(() => be.moeExperts({ ...base }), inv(/exactly one of out .* and parts .* received neither/));
  // parts dtype / shape
  assert.throws(() => be.moeExperts({ ...base, parts: new HostTensor('bf16', [3, 2, 16]) }), inv(/parts\.dtype must be one of f32, received bf16/));
  assert.throws(() => be.moeExperts({ ...base, parts: new HostTensor('f32', [3, 2, 15]) }), inv(/parts must be \[3, 2, 16\] \(or \[6, 16\]\), received \[3, 2, 15\]/));
  assert.throws(() => be.moeExperts({ ...base, parts: new HostTensor('f32', [3, 32]) }), inv(/parts must be \[3, 2, 16\]/));
  assert.throws(() => be.moeExperts({ ...base, parts: {} as Tensor }), inv(/parts must be a HostTensor or DeviceTensor/));
  // topkWeights is validated in parts mode too
  assert.throws(() => be.moeExperts({ ...base, topkWeights: new HostTensor('f32', [3, 1]), parts }), inv(/topkWeights must be \[3, 2\]/));
  // ids outside [-1, E) in parts mode: rejected by the op
  const badE = new HostTensor('i32', [3, 2], Int32Array.from([0, 4, 1, 2, 3, 0]));
  await assert.rejects(be.moeExperts({ ...base, topkIds: badE, parts }), inv(/topkIds must be -1 or in \[0, 4\), received 4 at index 1/));

  // moeCombine: shapes that disagree, dtypes
  const c = { parts, topkIds: p.ids, topkWeights: p.w, out };
  assert.throws(() => be.moeCombine({ ...c, parts: new HostTensor('f32', [3, 3, 16]) }), inv(/parts must be \[3, 2, 16\]/));
  assert.throws(() => be.moeCombine({ ...c, parts: new HostTensor('bf16', [3, 2, 16]) }), inv(/parts\.dtype/));
  assert.throws(() => be.moeCombine({ ...c, topkWeights: new HostTensor('f32', [3, 3]) }), inv(/topkWeights must be \[3, 2\]/));
  assert.throws(() => be.moeCombine({ ...c, out: new HostTensor('bf16', [2, 16]) }), inv(/out must be \[3, H\]/));
  assert.throws(() => be.moeCombine({ ...c, out: new HostTensor('f32', [3, 16]) }), inv(/out\.dtype/));
  assert.throws(() => be.moeCombine({ ...c, out: new HostTensor('bf16', [3, 8]) }), inv(/parts must be \[3, 2, 8\]/));
  assert.throws(() => be.moeCombine({ ...c, topkIds: new HostTensor('f32', [3, 2]) }), inv(/topkIds\.dtype/));
  assert.throws(() => be.moeCombine({ ...c, topkIds: new HostTensor('i32', [6]) }), inv(/topkIds must be \[T, k\]/));
  assert.throws(() => be.moeCombine(null as never), inv(/args must be an object/));
  // ids < -1: rejected by the op (data-dependent); ids >= 0 are all read (no E here), -1 skipped
  const bad = new HostTensor('i32', [3, 2], Int32Array.from([0, -1, 7, -2, 1, 0]));
  await assert.rejects(be.moeCombine({ ...c, topkIds: bad }), inv(/moeCombine: topkIds must be -1 or >= 0, received -2 at index 3/));
  await be.moeCombine({ ...c, topkIds: new HostTensor('i32', [3, 2], Int32Array.from([0, -1, 7, 100, 1, 0])) });
});

// cuda (when present): ids < -1 are flagged by the combine kernel and the op rejects when it completes (no host
// sync), with the CPU's message; a valid call afterwards still succeeds.
void test('moeCombine on cuda rejects ids < -1 when it completes', async (t) => {
  const b = backends.find((x) => x.name.startsWith('cuda'));
  if (!b || !b.available) {
    t.skip(b?.reason ?? 'no cuda backend');
    return;
  }
  const be = b.open();
  const parts = await be.upload(uniform('f32', [3, 2, 16], 1, 3));
  const w = await be.upload(HostTensor.from('f32', [3, 2], [1, 1, 1, 1, 1, 1]));
  const out = be.alloc('bf16', [3, 16]);
  try {
    const bad = await be.upload(new HostTensor('i32', [3, 2], Int32Array.from([0, -1, 7, -2, 1, -5])));
    await assert.rejects(
      be.moeCombine({ parts, topkIds: bad, topkWeights: w, out }),
      (e: unknown) => e instanceof InvalidArgumentError && /topkIds must be -1 or >= 0, received -2 at index 3/.test(e.message),
    );
    const good = await be.upload(new HostTensor('i32', [3, 2], Int32Array.from([0, -1, 7, 2, 1, 5])));
    await be.moeCombine({ parts, topkIds: good, topkWeights: w, out });
    bad.dispose();
    good.dispose();
  } finally {
    for (const d of [parts, w, out]) d.dispose();
  }
});
