// Kernel of moe_cuda_rms_norm: RMSNorm with an optional fused residual add (formula in cpp/cpu/rms_norm.h).
// Two layouts by row length: a warp per row (d <= kRmsWarpMaxD: Qwen3's per-head q/k norm, many rows of 128) or a
// block per row (hidden-size rows). Each thread walks its elements j = lane, lane + width, ... in both passes, so a
// thread reads back its own pass-1 writes of x (x += add) and out may alias x exactly. Sum of squares: per-thread
// f32 FMA chain, then a warp xor-shuffle tree, then (block layout) warp 0 adds the per-warp sums in warp order: a
// fixed order for a given d, so the result depends only on d, not on the grid size. f32 arithmetic with explicit
// _rn intrinsics (never contracted), bf16 stores rounded to nearest even like dtype.h. Dtypes are runtime flags
// (uniform across the grid: no divergence), which keeps this to two kernels instead of sixteen instantiations.
// Compiled, not verified on a GPU (none on the development machine).
#pragma once
#include <cstdint>

#include "dtype.cuh"

namespace moe {
namespace dev {

constexpr int kRmsWarpMaxD = 1024;       // rows up to this length: one warp per row
constexpr int kRmsWarpRowsPerBlock = 4;  // warp layout: 4 warps (rows) per block of 128 threads

struct RmsNormParams {
  void* x;             // [rows, d] f32 | bf16 (f32 when add)
  const void* add;     // [rows, d] f32 | bf16, or null
  const void* weight;  // [d] f32 | bf16
  void* out;           // [rows, d] f32 | bf16
  int64_t rows;
  int d;
  float eps;
  bool x_bf, add_bf, w_bf, out_bf;
};

__device__ __forceinline__ float rms_ld(const void* p, bool bf, int64_t i) {
  return bf ? bf16_to_f32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}
__device__ __forceinline__ void rms_st(void* p, bool bf, int64_t i, float v) {
  if (bf) static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
  else static_cast<float*>(p)[i] = v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;  // every lane holds the same sum (xor tree: same operand order in every lane)
}

// Pass 1 over this thread's elements of row r (x += add when present): its partial sum of squares.
__device__ __forceinline__ float rms_pass1(const RmsNormParams& p, int64_t r, int first, int step) {
  const int64_t base = r * p.d;
  float ss = 0.0f;
  if (p.add != nullptr) {
    float* x = static_cast<float*>(p.x);
    for (int j = first; j < p.d; j += step) {
      const float v = __fadd_rn(x[base + j], rms_ld(p.add, p.add_bf, base + j));
      x[base + j] = v;
      ss = __fmaf_rn(v, v, ss);
    }
  } else {
    for (int j = first; j < p.d; j += step) {
      const float v = rms_ld(p.x, p.x_bf, base + j);
      ss = __fmaf_rn(v, v, ss);
    }
  }
  return ss;
}

// Pass 2: out = (x * scale) * weight over this thread's elements of row r.
__device__ __forceinline__ void rms_pass2(const RmsNormParams& p, int64_t r, int first, int step, float scale) {
  const int64_t base = r * p.d;
  for (int j = first; j < p.d; j += step) {
    const float v = __fmul_rn(__fmul_rn(rms_ld(p.x, p.x_bf, base + j), scale), rms_ld(p.weight, p.w_bf, j));
    rms_st(p.out, p.out_bf, base + j, v);
  }
}

__device__ __forceinline__ float rms_scale(float ss, int d, float eps) {
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, static_cast<float>(d)), eps)));
}

// Warp layout: blockDim.x = 32 * kRmsWarpRowsPerBlock; warps stride over rows.
__global__ void __launch_bounds__(32 * kRmsWarpRowsPerBlock) rms_norm_warp_kernel(RmsNormParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kRmsWarpRowsPerBlock;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kRmsWarpRowsPerBlock + (threadIdx.x >> 5);
  for (int64_t r = first; r < p.rows; r += warps) {
    const float ss = warp_sum(rms_pass1(p, r, lane, 32));
    rms_pass2(p, r, lane, 32, rms_scale(ss, p.d, p.eps));
  }
}

// Block layout: one block (blockDim.x a multiple of 32, <= 1024) per row; blocks stride over rows.
__global__ void __launch_bounds__(1024) rms_norm_block_kernel(RmsNormParams p) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float ws = warp_sum(rms_pass1(p, r, threadIdx.x, blockDim.x));
    if (lane == 0) partial[warp] = ws;
    __syncthreads();
    if (threadIdx.x == 0) {
      float ss = 0.0f;
      for (int w = 0; w < nwarps; ++w) ss = __fadd_rn(ss, partial[w]);
      total = ss;
    }
    __syncthreads();
    const float scale = rms_scale(total, p.d, p.eps);
    rms_pass2(p, r, threadIdx.x, blockDim.x, scale);
    __syncthreads();  // partial / total are rewritten for the next row
  }
}

}  // namespace dev
}  // namespace moe
