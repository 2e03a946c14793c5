/** Deterministic op inputs for the tests, and their exact float64 values. */
import { HostTensor } from '../../lib/index.js';
import { BF16, F16, decode, rng } from './ref.js';

/** Uniform values in [-1, 1] / 10 (vLLM's fused-MoE input scale), rounded to the dtype. */
export function randomTensor<D extends 'f32' | 'bf16' | 'f16'>(dtype: D, shape: number[], seed: number): HostTensor<D> {
  const r = rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = (r() * 2 - 1) / 10;
  return HostTensor.from(dtype, shape, v);
}

/** Uniform values in [-amp, amp], rounded to bf16 (f32 when dtype is 'f32'). */
export function uniform<D extends 'bf16' | 'f32'>(dtype: D, shape: number[], amp: number, seed: number): HostTensor<D> {
  const r = rng(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = (r() * 2 - 1) * amp;
  return HostTensor.from(dtype, shape, v);
}

/** [t, k] expert ids: k distinct experts per token, uniform, as top-k routing would give. */
export function randomIds(t: number, k: number, e: number, seed: number): Int32Array {
  const r = rng(seed);
  const ids = new Int32Array(t * k);
  const perm = Array.from({ length: e }, (_, i) => i);
  for (let i = 0; i < t; i++) {
    for (let j = 0; j < k; j++) {
      const p = j + Math.floor(r() * (e - j));
      [perm[j], perm[p]] = [perm[p]!, perm[j]!];
      ids[i * k + j] = perm[j]!;
    }
  }
  return ids;
}

export function randomBf16(shape: number[], seed: number): HostTensor<'bf16'> {
  return randomTensor('bf16', shape, seed);
}

/** Element values as float64 (bf16/f16 decoded exactly). */
export function values(t: HostTensor): Float64Array {
  const d = t.data;
  const out = new Float64Array(d.length);
  for (let i = 0; i < d.length; i++) {
    out[i] = t.dtype === 'bf16' ? decode(d[i]!, BF16) : t.dtype === 'f16' ? decode(d[i]!, F16) : d[i]!;
  }
  return out;
}
