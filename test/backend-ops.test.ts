/**
 * The op test table (the model is llama.cpp's test-backend-ops): every case runs on every backend present
 * (cpu-scalar, cpu-avx2, cpu-avx512, cpu-avx512bf16, cuda:N) against an independent float64 reference with an
 * op-specific tolerance. Absent backends are skipped with their reason. Later ops add rows to CASES.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { HostTensor, type KernelTier, bf16ToF32, f16ToF32 } from '../lib/index.js';
import { harnessBackends, onBackend } from './harness/backends.js';
import { randomTensor, values } from './harness/inputs.js';
import { type OpCase, runCaseTable } from './harness/table.js';
import { BF16, F16, decode, f32FromBits, isNaNBits16, nmse, refConvertTo, refGemm, rng } from './harness/ref.js';


// ---- inputs ----------------------------------------------------------------------------------------------------

/** n random f32 bit patterns, with every special class mixed in (zeros, subnormals, Inf, NaN payloads, ties). */
function specialF32(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const u = new Uint32Array(n);
  const specials = [
    0, 0x80000000, 1, 0x80000001, 0x007fffff, 0x00800000, 0x7f7fffff, 0xff7fffff, 0x7f800000, 0xff800000, 0x7fc00000,
    0xffc00001, 0x7f800001, 0x7fbfffff, 0x3f808000, 0x3f818000, 0x3f80c000, 0x477ff000, 0x477fefff, 0x33000000,
    0x33000001, 0x387fe000, 0x38800000, 0x3f7fffff, 0x47800000,
  ];
  for (let i = 0; i < n; i++) {
    const pick = r();
    if (pick < 0.05) u[i] = specials[Math.floor(r() * specials.length)]!;
    else if (pick < 0.2) u[i] = ((Math.floor(r() * 0x1ff) << 23) | (Math.floor(r() * 0x10000) << 7) | 0x40) >>> 0; // ties for bf16 (low half 0x8000 pattern)
    else if (pick < 0.35) u[i] = ((Math.floor(r() * 512) << 23) | (Math.floor(r() * 0x4000) << 13) | 0x1000) >>> 0; // ties for f16
    else u[i] = Math.floor(r() * 4294967296) >>> 0;
  }
  return new Float32Array(u.buffer);
}



// ---- cases -----------------------------------------------------------------------------------------------------

const CASES: OpCase[] = [];

// copy: bit-exact round trips at unaligned byte offsets (DESIGN.md section 6 sizes; larger ones belong to the
// weight-residency issue's transfer tests).
for (const bytes of [4096, 1 << 20, 9_400_000]) {
  for (const offset of [0, 1, 13]) {
    CASES.push({
      op: 'copy',
      anyTier: true,
      name: `copy ${bytes} B at offset ${offset}`,
      async run(be) {
        const src = new HostTensor('u8', [bytes]);
        const r = rng(bytes + offset);
        for (let i = 0; i < bytes; i++) src.data[i] = (r() * 256) | 0;
        // Device side: an allocation with `offset` bytes of slack in front, viewed at that odd offset.
        using dev = be.alloc('u8', [bytes + offset]);
        const view = dev.view('u8', [bytes], offset);
        using pinned = be.allocPinned(bytes + 2 * offset + 1);
        const pinnedView = pinned.tensor('u8', [bytes], offset * 2 + 1);
        const back = new HostTensor('u8', [bytes]);
        const tier = await be.copy(src, view);
        await be.copy(view, pinnedView);
        await be.copy(pinnedView, back);
        assert.ok(Buffer.compare(Buffer.from(src.data.buffer), Buffer.from(back.data.buffer)) === 0, 'round trip is not bit-exact');
        return { tier };
      },
    });
  }
}

// convert: bit-exact against the float64 reference for every pair, all 16-bit patterns, many f32 patterns.
const FLOATS: Array<'f32' | 'f16' | 'bf16'> = ['f32', 'f16', 'bf16'];
for (const src of FLOATS) {
  for (const dst of FLOATS) {
    if (src === dst) continue;
    for (const n of src === 'f32' ? [1, 7, 111, 1_000_003] : [65536, 19]) {
      CASES.push({
        op: 'convert',
        name: `convert ${src}->${dst} n=${n}`,
        async run(be) {
          let input: HostTensor;
          if (src === 'f32') input = new HostTensor('f32', [n], specialF32(n, n));
          else {
            const bits = new Uint16Array(n);
            for (let i = 0; i < n; i++) bits[i] = n === 65536 ? i : (i * 7919 + 13) & 0xffff;
            input = new HostTensor(src, [n], bits);
          }
          const out = new HostTensor(dst, [n]);
          const tier = await onBackend(be, [input], [out], (i, o) => be.convert(i[0]!, o[0]!));
          const inBits = src === 'f32' ? new Uint32Array(input.data.buffer, input.data.byteOffset, n) : (input.data as Uint16Array);
          const fmt = src === 'bf16' ? BF16 : F16;
          let bad = 0;
          let firstBad = '';
          for (let i = 0; i < n; i++) {
            const isNaN = src === 'f32' ? Number.isNaN(f32FromBits(inBits[i]!)) : isNaNBits16(inBits[i]!, fmt);
            const x = src === 'f32' ? f32FromBits(inBits[i]!) : decode(inBits[i]!, fmt);
            const got = out.data[i]!;
            let ok: boolean;
            if (isNaN) {
              ok = dst === 'f32' ? Number.isNaN(got) : isNaNBits16(got, dst === 'bf16' ? BF16 : F16);
            } else if (dst === 'f32') {
              ok = Object.is(got, refConvertTo(x, 'f32'));
            } else {
              ok = got === refConvertTo(x, dst);
            }
            if (!ok && bad++ === 0) firstBad = `input bits 0x${inBits[i]!.toString(16)} -> got ${dst === 'f32' ? got : `0x${got.toString(16)}`}`;
          }
          assert.equal(bad, 0, `${bad} of ${n} wrong; first: ${firstBad}`);
          return { tier };
        },
      });
    }
  }
}

// add: bit-exact (computed in f32, rounded to nearest even), odd lengths; one case writes into a.
for (const dtype of FLOATS) {
  for (const n of [1, 7, 1_000_003]) {
    for (const inPlace of n === 7 ? [false, true] : [false]) {
      CASES.push({
        op: 'add',
        name: `add ${dtype} n=${n}${inPlace ? ' out=a' : ''}`,
        async run(be) {
          const a = randomTensor(dtype, [n], 1 + n);
          const b = randomTensor(dtype, [n], 2 + n);
          const va = values(a);
          const vb = values(b);
          let tier: KernelTier;
          let out: HostTensor;
          if (inPlace) {
            out = a;
            tier = await onBackend(be, [], [a], async (_i, o) => {
              const bIn = be.kind === 'cpu' ? b : await be.upload(b);
              try {
                if (be.kind !== 'cpu') await be.copy(a, o[0]!);
                return await be.add(o[0]!, bIn, o[0]!);
              } finally {
                if (bIn !== b) bIn.dispose();
              }
            });
          } else {
            out = new HostTensor(dtype, [n]);
            tier = await onBackend(be, [a, b], [out], (i, o) => be.add(i[0]!, i[1]!, o[0]!));
          }
          let bad = 0;
          for (let i = 0; i < n; i++) {
            const want = refConvertTo(Math.fround(va[i]! + vb[i]!), dtype);
            const got = out.data[i]!;
            if (dtype === 'f32' ? !Object.is(got, want) : got !== want) bad++;
          }
          assert.equal(bad, 0, `${bad} of ${n} elements differ from the reference`);
          return { tier };
        },
      });
    }
  }
}

// gemm: odd sizes (flashinfer's 19/111/989, vLLM's K=511), decode-like M=1 and prefill-like shapes.
const GEMM_SHAPES: Array<[number, number, number]> = [
  [1, 1, 1],
  [1, 128, 128],
  [7, 19, 111],
  [33, 64, 511],
  [64, 96, 989],
  [128, 256, 1024],
  [1, 2048, 128],
  [33, 2048, 128],
  [5, 3, 0],
  [0, 4, 8],
];
for (const [m, n, k] of GEMM_SHAPES) {
  for (const ab of ['bf16', 'f32'] as const) {
    for (const outT of ['f32', 'bf16'] as const) {
      if (ab === 'f32' && outT === 'bf16' && m * n * k > 100_000) continue; // covered by the bf16 rows
      CASES.push({
        op: 'gemm',
        name: `gemm ${ab}->${outT} m=${m} n=${n} k=${k}`,
        async run(be) {
          const a = randomTensor(ab, [m, k], m * 31 + k);
          const b = randomTensor(ab, [n, k], n * 17 + k);
          const out = new HostTensor(outT, [m, n]);
          out.set(new Float32Array(m * n).fill(123)); // must be overwritten (also when k == 0)
          const tier = await onBackend(be, [a, b], [out], (i, o) => be.gemm(i[0]!, i[1]!, o[0]!));
          const ref = refGemm(values(a), values(b), m, n, k);
          const got = outT === 'bf16' ? bf16ToF32(out.data as Uint16Array) : (out.data as Float32Array);
          // f32 out: only f32 accumulation error; bf16 out: plus one rounding (relative 2^-9 at most).
          const tol = outT === 'f32' ? 1e-9 : 1e-5;
          const e = nmse(got, ref);
          assert.ok(e <= tol, `NMSE ${e.toExponential(2)} > ${tol}`);
          return { tier, metric: `NMSE ${e.toExponential(2)} <= ${tol}` };
        },
      });
    }
  }
}

// ---- run every case on every backend ---------------------------------------------------------------------------

runCaseTable('backend', CASES);

const backends = harnessBackends();

void test('the harness sees every CPU tier this CPU has and reports missing ones with a reason', () => {
  const names = backends.map((b) => b.name);
  for (const n of ['cpu-scalar', 'cpu-avx2', 'cpu-avx512', 'cpu-avx512bf16']) assert.ok(names.includes(n), `${n} missing`);
  assert.ok(names.some((n) => n.startsWith('cuda')), 'cuda backend not listed');
  for (const b of backends) if (!b.available) assert.ok(b.reason && b.reason.length > 0, `${b.name} skipped without a reason`);
  assert.ok(backends.find((b) => b.name === 'cpu-scalar')!.available, 'the scalar path must always be available');
});

// Decode helpers used by the cases, checked once here so a reference bug cannot pass silently.
void test('float64 reference decoders agree with the package decoders on all 16-bit patterns', () => {
  const bits = new Uint16Array(65536).map((_, i) => i);
  const bf = bf16ToF32(bits);
  const hf = f16ToF32(bits);
  for (let i = 0; i < 65536; i++) {
    const rb = decode(i, BF16);
    const rh = decode(i, F16);
    assert.ok(Object.is(bf[i], rb) || (Number.isNaN(bf[i]!) && Number.isNaN(rb)), `bf16 0x${i.toString(16)}`);
    assert.ok(Object.is(hf[i], rh) || (Number.isNaN(hf[i]!) && Number.isNaN(rh)), `f16 0x${i.toString(16)}`);
  }
});

