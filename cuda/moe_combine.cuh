// Kernel of moe_cuda_moe_combine (moe_combine.cu): the MoE combine of module-based batching, and the last step of
// the fused moe_cuda_moe_experts_ex (which launches it through launch_moe_combine, as moe_cuda_moe_combine does):
//   y[t, n] = bf16( sum over j = 0..k-1 in order of w[t, j] * parts[t * k + j, n] ), f32, fmaf per term,
//   over the slots whose id is present: id >= 0 and, when a presence table is given, id < e and present[id] set.
// One thread per (token, column or 4 columns): fixed order, no float atomics, so the output is bitwise
// reproducible, and the fused path (parts in scratch, then this kernel) equals parts mode + moeCombine bitwise by
// construction (with f32 scratch, the default).
// moeCombine also flags an id < -1 through `error` (mapped pinned host memory, cpp/napi/cuda_error_slot.h):
// block (0, 0) scans the ids first; such ids are skipped like -1.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.cuh"
#include "error_slot.cuh"

namespace moe {
namespace dev {

constexpr int kCombineThreads = 256;

// parts [t * k, h] f32; ids [t, k] i32; weights [t, k] f32; present: null (every id >= 0 present) or [e] device
// pointers (null: absent); out [t, h] bf16; error [3] i32 or null. Each thread sums V consecutive columns (V = 4: one
// 16-byte load per part row and an 8-byte store, when h % 4 == 0, parts 16-byte and out 8-byte aligned; the
// per-column order of terms is the same for every V, so the output is too). grid: (ceil(h / (256 V)),
// min(t, 65535)) with a grid-stride loop over tokens, block: 256.
template <int V>
static __global__ void __launch_bounds__(kCombineThreads)
    moe_combine_kernel(const float* __restrict__ parts, const int32_t* __restrict__ ids,
                       const float* __restrict__ weights, const void* const* __restrict__ present, int e,
                       uint16_t* __restrict__ out, int t, int k, int h, int32_t* error) {
  static_assert(V == 1 || V == 4, "columns per thread");
  if (error != nullptr && blockIdx.x == 0 && blockIdx.y == 0) {  // block-uniform: the barriers below are safe
    __shared__ int s_bad;  // smallest index of an id < -1; 0x7fffffff: none
    if (threadIdx.x == 0) s_bad = 0x7fffffff;
    __syncthreads();
    const int n_slots = t * k;
    for (int i = threadIdx.x; i < n_slots; i += blockDim.x)
      if (ids[i] < -1) atomicMin(&s_bad, i);  // shared-memory integer atomic: the minimum is order-free
    __syncthreads();
    if (threadIdx.x == 0 && s_bad != 0x7fffffff) {  // plain stores to mapped host memory, no atomics
      moe_write_error_words(error, s_bad, ids);
    }
  }
  const int n = (blockIdx.x * blockDim.x + threadIdx.x) * V;
  if (n >= h) return;
  for (int tok = blockIdx.y; tok < t; tok += gridDim.y) {
    float acc[V];
#pragma unroll
    for (int c = 0; c < V; ++c) acc[c] = 0.0f;
#pragma unroll 8
    for (int j = 0; j < k; ++j) {
      const int64_t s = static_cast<int64_t>(tok) * k + j;
      const int x = ids[s];
      if (x < 0) continue;
      if (present != nullptr && (x >= e || present[x] == nullptr)) continue;
      const float w = weights[s];
      if constexpr (V == 4) {
        const float4 p = *reinterpret_cast<const float4*>(parts + s * h + n);
        acc[0] = fmaf(w, p.x, acc[0]);
        acc[1] = fmaf(w, p.y, acc[1]);
        acc[2] = fmaf(w, p.z, acc[2]);
        acc[3] = fmaf(w, p.w, acc[3]);
      } else {
        acc[0] = fmaf(w, parts[s * h + n], acc[0]);
      }
    }
    uint16_t* o = out + static_cast<int64_t>(tok) * h + n;
    if constexpr (V == 4) {
      uint32_t w2[2];
#pragma unroll
      for (int c = 0; c < 2; ++c)
        w2[c] = static_cast<uint32_t>(f32_to_bf16(acc[2 * c])) |
                (static_cast<uint32_t>(f32_to_bf16(acc[2 * c + 1])) << 16);
      *reinterpret_cast<uint2*>(o) = make_uint2(w2[0], w2[1]);
    } else {
      o[0] = f32_to_bf16(acc[0]);
    }
  }
}

// The launch of moe_cuda_moe_combine (moe_combine.cu), also the fused MoE's (moe_experts.cu); arguments as the C ABI's.
cudaError_t launch_moe_combine(const float* parts, const int32_t* ids, const float* weights,
                               const void* const* present, int e, uint16_t* out, int t, int k, int h, int32_t* error,
                               cudaStream_t stream);

}  // namespace dev
}  // namespace moe
