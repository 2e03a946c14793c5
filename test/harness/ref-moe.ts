/**
 * float64 reference of the fused MoE layer with SiLU experts (no intermediate rounding):
 * y[t] = Σ_j w[t, j] · down_e(silu(gate_e x[t]) ⊙ up_e x[t]), e = ids[t, j]; ids of -1 and absent (undefined)
 * experts contribute nothing. x [T, H] bf16, ids / w [T, k], gate and up [I, H], down [H, I] bf16.
 * (test/moe-oai.test.ts keeps its own reference: biases and swiglu-oai, on stacked weights.)
 */
import type { HostTensor } from '../../lib/index.js';
import { values } from './inputs.js';

export type RefExpert = { gate: HostTensor<'bf16'>; up: HostTensor<'bf16'>; down: HostTensor<'bf16'> } | undefined;

export function refMoe(x: HostTensor<'bf16'>, ids: Int32Array, w: Float32Array, k: number, experts: readonly RefExpert[]): Float64Array {
  const [t, h] = x.shape as [number, number];
  const xv = values(x);
  const vals = experts.map((wt) => (wt ? { g: values(wt.gate), u: values(wt.up), d: values(wt.down), inter: wt.gate.shape[0]! } : undefined));
  const y = new Float64Array(t * h);
  for (let i = 0; i < t; i++) {
    for (let j = 0; j < k; j++) {
      const e = ids[i * k + j]!;
      const v = e >= 0 ? vals[e] : undefined;
      if (!v) continue;
      const act = new Float64Array(v.inter);
      for (let n = 0; n < v.inter; n++) {
        let g = 0;
        let u = 0;
        for (let c = 0; c < h; c++) {
          g += xv[i * h + c]! * v.g[n * h + c]!;
          u += xv[i * h + c]! * v.u[n * h + c]!;
        }
        act[n] = (g / (1 + Math.exp(-g))) * u;
      }
      const wj = w[i * k + j]!;
      for (let c = 0; c < h; c++) {
        let s = 0;
        for (let n = 0; n < v.inter; n++) s += act[n]! * v.d[c * v.inter + n]!;
        y[i * h + c] = y[i * h + c]! + wj * s;
      }
    }
  }
  return y;
}
