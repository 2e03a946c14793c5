// Kernels of moe_cuda_moe_experts (moe_experts.cu): the fused MoE expert FFN as a grouped GEMM over a pointer
// table of experts. The rows routed to each expert are listed by moe_align_kernel (router_topk.cuh) with the
// block size kMoeBM, so every 64-row M tile belongs to exactly one expert (vLLM's fused_moe layout): A rows are
// gathered by index, never copied into a permuted buffer.
//   moe_gemm1_swiglu_kernel  act[r, n] = bf16( silu(x[tok] . gate_e[n]) * (x[tok] . up_e[n]) ): both products in
//                            one block (two B tiles, shared A tile), SwiGLU in the epilogue. gpt-oss: the
//                            expert's f32 biases added to both sums, then the clamped swiglu-oai activation
//                            (moe_act_oai; cpp/cpu/moe_experts.h has the formula).
//   moe_gemm2_kernel         part[slot, n] = act[r] . down_e[n] (+ bd_e[n]), f32: the expert's unweighted output
//                            row (the down bias in the epilogue), into scratch or, in parts mode, the caller's
//                            parts [t * k, h] (same row index t * k + j).
//   the combine              moe_combine.cuh (moe_cuda_moe_combine): y[t, n] = bf16( sum_j w[t, j] * part[t * k + j,
//                            n] ) over present slots, j in order, the routing weight applied there: fixed order, no
//                            float atomics, bitwise reproducible, and the same kernel as moeCombine's.
// These GEMM kernels are the CUDA-core (SIMT) reference path: 64x64 tiles, k step 16, 256 threads with a 4x4
// micro-tile each, f32 accumulation (the structure of gemm.cuh's gemm_simt_kernel). They run for shapes the
// tensor-core paths do not take (h or inter not a multiple of 8, unaligned weights, sm < 80) and under
// MOE_CUDA_MOE=simt; the tensor-core kernels are in moe_experts_mma.cuh (mma.sync) and moe_experts_wgmma.cuh
// (Hopper wgmma); moe_experts.cu picks the path.
#pragma once
#include <cstdint>

#include "dtype.cuh"

namespace moe {
namespace dev {

constexpr int kMoeBM = 64, kMoeBN = 64, kMoeBK = 16, kMoeThreads = 256;

// Expert of padded row r0: the x with offsets[x] <= r0 < offsets[x + 1] (offsets ascending; empty experts have
// offsets[x] == offsets[x + 1] and are never found). Returns -1 when r0 >= offsets[e].
__device__ __forceinline__ int moe_expert_of_row(const int32_t* offsets, int e, int r0) {
  if (r0 >= offsets[e]) return -1;
  int lo = 0, hi = e - 1;  // invariant: answer in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= r0) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Loads the [kMoeBM, kMoeBK] A tile (rows given by row pointers, null = zero row) and one or two [kMoeBN, kMoeBK]
// B tiles (rows n0.. of weights with row stride kdim), transposed into k-major shared memory as f32.
__device__ __forceinline__ void moe_load_a(float (*As)[kMoeBM + 4], const uint16_t* const* arow, int k0, int kdim) {
  for (int idx = threadIdx.x; idx < kMoeBM * kMoeBK; idx += kMoeThreads) {
    const int r = idx / kMoeBK, kk = idx % kMoeBK;
    const uint16_t* p = arow[r];
    As[kk][r] = (p != nullptr && k0 + kk < kdim) ? bf16_to_f32(p[k0 + kk]) : 0.0f;
  }
}
__device__ __forceinline__ void moe_load_b(float (*Bs)[kMoeBN + 4], const uint16_t* w, int n0, int ndim, int k0,
                                           int kdim) {
  for (int idx = threadIdx.x; idx < kMoeBN * kMoeBK; idx += kMoeThreads) {
    const int c = idx / kMoeBK, kk = idx % kMoeBK;
    Bs[kk][c] = (n0 + c < ndim && k0 + kk < kdim) ? bf16_to_f32(w[static_cast<int64_t>(n0 + c) * kdim + k0 + kk]) : 0.0f;
  }
}

// swiglu-oai (HF GptOssExperts): g = min(g, limit), u = clamp(u, -limit, limit), (u + 1) * g * sigmoid(alpha g).
// The comparisons keep a NaN sum NaN, as on the CPU.
__device__ __forceinline__ float moe_act_oai(float g, float u, float alpha, float limit) {
  g = g > limit ? limit : g;
  u = u > limit ? limit : (u < -limit ? -limit : u);
  return (u + 1.0f) * (g / (1.0f + expf(-alpha * g)));
}

// GEMM1's activation for output column n, shared by every path (SIMT, mma.sync, wgmma): `plain` (activation 0
// and no biases: the op of issue 3) is silu(g) * u; otherwise the expert's f32 biases bg[n] / bu[n] (bg null: none)
// are added first, then silu(g) * u or swiglu-oai.
__device__ __forceinline__ float moe_gemm1_act(float g, float u, bool plain, const float* bg, const float* bu, int n,
                                               int act_kind, float alpha, float limit) {
  if (plain) return g / (1.0f + expf(-g)) * u;
  if (bg != nullptr) {
    g += bg[n];
    u += bu[n];
  }
  return act_kind == 0 ? g / (1.0f + expf(-g)) * u : moe_act_oai(g, u, alpha, limit);
}

// x [t, h] bf16; sorted [capacity] (slot t * k + j, or sentinel n = t * k); offsets [e + 1]; gate/up [e] device
// pointers to [inter, h] bf16 (null: expert absent); gate_bias/up_bias: null (no expert has biases) or [e] device
// pointers to [inter] f32 (null: that expert has none); act_kind 0 silu, 1 swiglu-oai (alpha, limit);
// act [capacity, inter] bf16. grid: (ceil(inter / 64), capacity / 64), block: 256.
static __global__ void __launch_bounds__(kMoeThreads)
    moe_gemm1_swiglu_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ sorted,
                            const int32_t* __restrict__ offsets, const void* const* __restrict__ gate,
                            const void* const* __restrict__ up, const void* const* __restrict__ gate_bias,
                            const void* const* __restrict__ up_bias, uint16_t* __restrict__ act, int n_slots, int k,
                            int e, int h, int inter, int act_kind, float alpha, float limit) {
  __shared__ float As[kMoeBK][kMoeBM + 4];
  __shared__ float Bg[kMoeBK][kMoeBN + 4];
  __shared__ float Bu[kMoeBK][kMoeBN + 4];
  __shared__ const uint16_t* arow[kMoeBM];
  const int r0 = blockIdx.y * kMoeBM, n0 = blockIdx.x * kMoeBN;
  const int ex = moe_expert_of_row(offsets, e, r0);
  if (ex < 0) return;
  const uint16_t* wg = static_cast<const uint16_t*>(gate[ex]);
  const uint16_t* wu = static_cast<const uint16_t*>(up[ex]);
  if (wg == nullptr || wu == nullptr) return;  // absent: its slots are skipped by the combine
  const float* bg = gate_bias != nullptr ? static_cast<const float*>(gate_bias[ex]) : nullptr;  // [inter] f32
  const float* bu = up_bias != nullptr ? static_cast<const float*>(up_bias[ex]) : nullptr;      // [inter] f32
  const bool plain = act_kind == 0 && bg == nullptr;  // the op of issue 3, its expression unchanged
  for (int r = threadIdx.x; r < kMoeBM; r += kMoeThreads) {
    const int s = sorted[r0 + r];
    arow[r] = s < n_slots ? x + static_cast<int64_t>(s / k) * h : nullptr;
  }
  __syncthreads();
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float ag[4][4] = {}, au[4][4] = {};
  for (int k0 = 0; k0 < h; k0 += kMoeBK) {
    moe_load_a(As, arow, k0, h);
    moe_load_b(Bg, wg, n0, inter, k0, h);
    moe_load_b(Bu, wu, n0, inter, k0, h);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kMoeBK; ++kk) {
      float a[4], bg[4], bu[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        bg[j] = Bg[kk][tx + 16 * j];
        bu[j] = Bu[kk][tx + 16 * j];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          ag[i][j] = fmaf(a[i], bg[j], ag[i][j]);
          au[i][j] = fmaf(a[i], bu[j], au[i][j]);
        }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + 16 * i;
    if (arow[r] == nullptr) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tx + 16 * j;
      if (n >= inter) continue;
      act[static_cast<int64_t>(r0 + r) * inter + n] =
          f32_to_bf16(moe_gemm1_act(ag[i][j], au[i][j], plain, bg, bu, n, act_kind, alpha, limit));
    }
  }
}

// act [capacity, inter] bf16; down [e] device pointers to [h, inter] bf16; down_bias: null (no expert has biases)
// or [e] device pointers to [h] f32 (null: that expert has none);
// part [t * k, h] f32 (rows of present slots written, the others untouched). grid: (ceil(h / 64), capacity / 64),
// block: 256.
static __global__ void __launch_bounds__(kMoeThreads)
    moe_gemm2_kernel(const uint16_t* __restrict__ act, const int32_t* __restrict__ sorted,
                     const int32_t* __restrict__ offsets, const void* const* __restrict__ down,
                     const void* const* __restrict__ down_bias, float* __restrict__ part, int n_slots, int e, int h,
                     int inter) {
  __shared__ float As[kMoeBK][kMoeBM + 4];
  __shared__ float Bs[kMoeBK][kMoeBN + 4];
  __shared__ const uint16_t* arow[kMoeBM];
  __shared__ int slot[kMoeBM];
  const int r0 = blockIdx.y * kMoeBM, n0 = blockIdx.x * kMoeBN;
  const int ex = moe_expert_of_row(offsets, e, r0);
  if (ex < 0) return;
  const uint16_t* wd = static_cast<const uint16_t*>(down[ex]);
  if (wd == nullptr) return;
  const float* bd = down_bias != nullptr ? static_cast<const float*>(down_bias[ex]) : nullptr;  // [h] f32
  for (int r = threadIdx.x; r < kMoeBM; r += kMoeThreads) {
    const int s = sorted[r0 + r];
    slot[r] = s;
    arow[r] = s < n_slots ? act + static_cast<int64_t>(r0 + r) * inter : nullptr;
  }
  __syncthreads();
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < inter; k0 += kMoeBK) {
    moe_load_a(As, arow, k0, inter);
    moe_load_b(Bs, wd, n0, h, k0, inter);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kMoeBK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + 16 * i;
    const int s = slot[r];
    if (s >= n_slots) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tx + 16 * j;
      if (n >= h) continue;
      part[static_cast<int64_t>(s) * h + n] = bd == nullptr ? acc[i][j] : acc[i][j] + bd[n];
    }
  }
}

}  // namespace dev
}  // namespace moe
