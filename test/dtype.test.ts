/**
 * The JS-side conversions (lib/dtype.ts) against the independent float64 reference of the op harness: every
 * 16-bit pattern decodes exactly, and f32 -> bf16 / f16 rounds to nearest even with Inf on overflow and NaN kept.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { bf16BitsToF32, f16BitsToF32, f32ToBf16, f32ToBf16Bits, f32ToF16, f32ToF16Bits } from '../lib/index.js';
import { BF16, F16, decode, f32FromBits, isNaNBits16, roundTo, rng } from './harness/ref.js';

function samples(): number[] {
  const r = rng(7);
  const out = [0, 0x80000000, 1, 0x007fffff, 0x00800000, 0x7f7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0x3f808000, 0x3f818000, 0x477ff000, 0x477fefff, 0x33000000, 0x33000001, 0x387fe000];
  for (let i = 0; i < 300_000; i++) out.push(Math.floor(r() * 4294967296));
  return out;
}

void test('bf16 and f16 bits decode exactly (all 65536 patterns)', () => {
  for (let h = 0; h < 65536; h++) {
    for (const [fmt, fn] of [[BF16, bf16BitsToF32], [F16, f16BitsToF32]] as const) {
      const want = decode(h, fmt);
      const got = fn(h);
      assert.ok(Object.is(got, want) || (Number.isNaN(got) && Number.isNaN(want)), `0x${h.toString(16)}`);
    }
  }
});

void test('f32 -> bf16 / f16 round to nearest even, overflow to Inf, keep NaN', () => {
  for (const u of samples()) {
    const x = f32FromBits(u);
    for (const [fmt, fn] of [[BF16, f32ToBf16Bits], [F16, f32ToF16Bits]] as const) {
      const got = fn(x);
      if (Number.isNaN(x)) assert.ok(isNaNBits16(got, fmt), `NaN 0x${u.toString(16)} -> 0x${got.toString(16)}`);
      else assert.equal(got, roundTo(x, fmt), `0x${u.toString(16)}`);
    }
  }
});

void test('array helpers convert element by element', () => {
  const v = new Float32Array([1, 3.14159, -0, 65520, 1e-8]);
  assert.deepEqual(Array.from(f32ToBf16(v)), Array.from(v, f32ToBf16Bits));
  assert.deepEqual(Array.from(f32ToF16(v)), Array.from(v, f32ToF16Bits));
  assert.equal(f32ToF16Bits(65520), 0x7c00);
  assert.equal(f32ToBf16Bits(3.14159), 0x4049);
});
