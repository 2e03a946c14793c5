/**
 * Float64 references for the op harness, written independently of the kernels: rounding to bf16/f16 is done
 * with float64 arithmetic (nearest representable value, ties to the even mantissa), not with the bit tricks the
 * kernels and lib/dtype.ts use, so a shared mistake cannot hide.
 */

/** Deterministic PRNG (mulberry32), uniform in [0, 1). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Format {
  mantBits: number; // explicit mantissa bits
  expBits: number;
  expBias: number;
}
export const BF16: Format = { mantBits: 7, expBits: 8, expBias: 127 };
export const F16: Format = { mantBits: 10, expBits: 5, expBias: 15 };

/** Decodes raw bits of a binary floating-point format into a float64. */
export function decode(bits: number, f: Format): number {
  const sign = (bits >>> (f.mantBits + f.expBits)) & 1 ? -1 : 1;
  const e = (bits >>> f.mantBits) & ((1 << f.expBits) - 1);
  const m = bits & ((1 << f.mantBits) - 1);
  if (e === (1 << f.expBits) - 1) return m === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * m * 2 ** (1 - f.expBias - f.mantBits);
  return sign * (1 + m / 2 ** f.mantBits) * 2 ** (e - f.expBias);
}

/**
 * Rounds a float64 to the nearest value of format f (ties to even mantissa), returning the bits.
 * Overflow (beyond max finite after rounding) gives Inf. NaN is not handled here (callers check it).
 */
export function roundTo(x: number, f: Format): number {
  const signBit = x < 0 || Object.is(x, -0) ? 1 << (f.mantBits + f.expBits) : 0;
  const a = Math.abs(x);
  const expMax = (1 << f.expBits) - 1;
  const inf = signBit | (expMax << f.mantBits);
  if (a === Infinity) return inf;
  const minE = 1 - f.expBias;
  // Binade of a; subnormals use the smallest normal binade's ulp.
  let e = minE;
  if (a >= 2 ** minE) {
    e = Math.floor(Math.log2(a));
    while (2 ** e > a) e--;
    while (2 ** (e + 1) <= a) e++;
  }
  const ulp = 2 ** (e - f.mantBits);
  const q = a / ulp; // exact: a has at most 24 significant bits and ulp is a power of two
  let n = Math.floor(q);
  const rem = q - n;
  if (rem > 0.5 || (rem === 0.5 && n % 2 === 1)) n++;
  const maxFinite = (2 - 2 ** -f.mantBits) * 2 ** (expMax - 1 - f.expBias);
  if (n * ulp > maxFinite) return inf;
  if (e === minE && n < 2 ** f.mantBits) return signBit | n; // subnormal or zero
  if (n === 2 ** (f.mantBits + 1)) {
    e++;
    n = 2 ** f.mantBits;
  }
  return signBit | ((e + f.expBias) << f.mantBits) | (n - 2 ** f.mantBits);
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);
export function f32FromBits(u: number): number {
  u32buf[0] = u >>> 0;
  return f32buf[0]!;
}
export function isNaNBits16(bits: number, f: Format): boolean {
  const e = (bits >>> f.mantBits) & ((1 << f.expBits) - 1);
  return e === (1 << f.expBits) - 1 && (bits & ((1 << f.mantBits) - 1)) !== 0;
}

/** Reference conversion of one f32/f16/bf16 value (given as float64 + NaN flag) to the target's bits or f32. */
export function refConvertTo(x: number, dst: 'f32' | 'f16' | 'bf16'): number {
  if (dst === 'f32') return Math.fround(x);
  return roundTo(x, dst === 'bf16' ? BF16 : F16);
}

/** out[m, n] = sum_k a[m, k] b[n, k] in float64. */
export function refGemm(a: Float64Array, b: Float64Array, m: number, n: number, k: number): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += a[i * k + p]! * b[j * k + p]!;
      out[i * n + j] = s;
    }
  }
  return out;
}

/** Normalised mean squared error sum((x - r)^2) / sum(r^2) (0 when both are zero). */
export function nmse(x: ArrayLike<number>, r: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < r.length; i++) {
    const d = x[i]! - r[i]!;
    num += d * d;
    den += r[i]! * r[i]!;
  }
  if (den === 0) return num === 0 ? 0 : Infinity;
  return num / den;
}
