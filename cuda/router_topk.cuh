// Kernels of moe_cuda_router_topk and moe_cuda_moe_align (router_topk.cu), the routing ops of the fused MoE layer.
//   router_topk_kernel  one warp per token: softmax (or sigmoid) in f32 with warp reductions, then k rounds of a
//                       warp-wide argmax over (score desc, expert id asc); each lane owns experts lane + 32 i
//                       (i < 32, so e <= 1024) and marks taken ones in a bit mask.
//   moe_align_count_kernel  one block of 1024 threads: per-expert counts with shared-memory integer atomics
//                       (integer, so the result is exact and order-free), prefix sum of the padded counts, sentinel
//                       fill of sorted (its writes precede the placement: same stream);
//   moe_align_place_kernel  one warp per expert across the grid: the warp reads every id (4 chunks of 32 per step, so
//                       4 loads are in flight) and places its expert's slots in ascending slot order with ballot/popc
//                       (stable, deterministic). One block scanning for every expert cost ~4 ms at t * k = 131072,
//                       e = 128 on an H200 (2026-11-26); spread over the chip the same reads (from L2) are ~100x
//                       cheaper. launch_moe_align runs both.
// Ids outside [0, e) are skipped (treated as -1) by the placement; ids other than -1 among them are also reported
// through `error` when it is not null (mapped pinned host memory, cpp/napi/cuda_error_slot.h): [0] = 1, [1] the
// smallest such index, [2] its id. The op reads it in its completion callback and rejects, like the CPU op.
// Kernels are static (internal linkage): moe_experts.cu includes router_topk.cuh too.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace moe {
namespace dev {

// (score, id) a ranks before (score, id) b: higher score, then lower id; NaN below everything.
__device__ __forceinline__ bool topk_better(float sa, int a, float sb, int b) {
  const bool na = isnan(sa), nb = isnan(sb);
  if (na != nb) return nb;
  if (na) return a < b;
  return sa > sb || (sa == sb && a < b);
}

constexpr int kTopkWarps = 8;

// logits [t, e] f32, bias [e] f32 or null, ids [t, k] i32, weights [t, k] f32. grid: ceil(t / 8), block: 256.
static __global__ void __launch_bounds__(kTopkWarps * 32)
    router_topk_kernel(const float* __restrict__ logits, const float* __restrict__ bias, int32_t* __restrict__ ids,
                       float* __restrict__ weights, int t, int e, int k, int sigmoid, int renormalize) {
  const int lane = threadIdx.x % 32;
  const int tok = blockIdx.x * kTopkWarps + threadIdx.x / 32;
  if (tok >= t) return;
  const float* l = logits + static_cast<int64_t>(tok) * e;  // [e]
  float mx = -INFINITY, sum = 0.0f;
  if (!sigmoid) {
    for (int x = lane; x < e; x += 32) mx = fmaxf(mx, l[x]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    for (int x = lane; x < e; x += 32) sum += expf(l[x] - mx);
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  }
  uint32_t taken = 0;  // bit i: expert lane + 32 i selected
  float wsum = 0.0f;
  for (int j = 0; j < k; ++j) {
    float bs = 0.0f;
    int bi = -1;
    for (int i = 0, x = lane; x < e; ++i, x += 32) {
      if (taken & (1u << i)) continue;
      const float sc = sigmoid && bias != nullptr ? l[x] + bias[x] : l[x];
      if (bi < 0 || topk_better(sc, x, bs, bi)) {
        bs = sc;
        bi = x;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float os = __shfl_xor_sync(0xffffffffu, bs, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (oi >= 0 && (bi < 0 || topk_better(os, oi, bs, bi))) {
        bs = os;
        bi = oi;
      }
    }
    if (bi % 32 == lane) taken |= 1u << (bi / 32);
    const float w = sigmoid ? 1.0f / (1.0f + expf(-l[bi])) : expf(l[bi] - mx) / sum;
    wsum += w;
    if (lane == 0) {
      ids[static_cast<int64_t>(tok) * k + j] = bi;
      weights[static_cast<int64_t>(tok) * k + j] = w;
    }
  }
  if (renormalize) {
    __syncwarp();
    for (int j = lane; j < k; j += 32) {
      float* w = weights + static_cast<int64_t>(tok) * k + j;
      *w = wsum > 0.0f ? *w / wsum : 0.0f;
    }
  }
}

constexpr int kAlignThreads = 1024;
constexpr int kPlaceWarps = 8;  // warps (experts) per placement block

// ids [n] i32 (n = t * k), counts [e], offsets [e + 1], sorted [capacity] (every entry set to n, the padding
// value); error [3] i32 or null. grid: 1, block: 1024, dynamic shared memory: (2 e + 1) * 4 bytes.
static __global__ void __launch_bounds__(kAlignThreads)
    moe_align_count_kernel(const int32_t* __restrict__ ids, int32_t* __restrict__ counts,
                           int32_t* __restrict__ offsets, int32_t* __restrict__ sorted, int n, int e, int block,
                           int capacity, int32_t* error) {
  extern __shared__ int32_t s_align[];
  __shared__ int s_bad;            // smallest index of an id outside [-1, e); 0x7fffffff: none
  int32_t* s_count = s_align;      // [e]
  int32_t* s_off = s_align + e;    // [e + 1]
  if (threadIdx.x == 0) s_bad = 0x7fffffff;
  for (int x = threadIdx.x; x < e; x += blockDim.x) s_count[x] = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int x = ids[i];
    if (x >= 0 && x < e) {
      atomicAdd(&s_count[x], 1);
    } else if (x != -1) {
      atomicMin(&s_bad, i);  // shared-memory integer atomic: the minimum is order-free
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (error != nullptr && s_bad != 0x7fffffff) {  // plain stores to mapped host memory, no atomics
      error[1] = s_bad;
      error[2] = ids[s_bad];
      __threadfence_system();
      error[0] = 1;
    }
    int acc = 0;
    for (int x = 0; x < e; ++x) {
      s_off[x] = acc;
      acc += (s_count[x] + block - 1) / block * block;
    }
    s_off[e] = acc;
  }
  __syncthreads();
  for (int x = threadIdx.x; x < e; x += blockDim.x) counts[x] = s_count[x];
  for (int x = threadIdx.x; x <= e; x += blockDim.x) offsets[x] = s_off[x];
  for (int r = threadIdx.x; r < capacity; r += blockDim.x) sorted[r] = n;
}

// Warp w of block b places the slots of expert x = b * kPlaceWarps + w at sorted[offsets[x] ...], ascending.
// grid: ceil(e / kPlaceWarps), block: kPlaceWarps * 32. Runs after moe_align_count_kernel on the same stream.
static __global__ void __launch_bounds__(kPlaceWarps * 32)
    moe_align_place_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ offsets,
                           int32_t* __restrict__ sorted, int n, int e) {
  const int lane = threadIdx.x % 32;
  const int x = blockIdx.x * kPlaceWarps + threadIdx.x / 32;
  if (x >= e) return;  // whole warps leave together: the ballots below stay full-warp
  const uint32_t below = (1u << lane) - 1u;
  int base = offsets[x];
  for (int c0 = 0; c0 < n; c0 += 128) {
    int v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int i = c0 + 32 * u + lane;
      v[u] = i < n ? ids[i] : -1;  // -1 never equals x >= 0
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const bool hit = v[u] == x;
      const uint32_t m = __ballot_sync(0xffffffffu, hit);
      if (hit) sorted[base + __popc(m & below)] = c0 + 32 * u + lane;
      base += __popc(m);
    }
  }
}

// The align of moe_cuda_moe_align and the fused MoE launcher: counts, offsets, sentinels, then the placement.
static inline cudaError_t launch_moe_align(const int32_t* ids, int32_t* counts, int32_t* offsets, int32_t* sorted,
                                           int n, int e, int block, int capacity, int32_t* error, cudaStream_t s) {
  moe_align_count_kernel<<<1, kAlignThreads, static_cast<size_t>(2 * e + 1) * sizeof(int32_t), s>>>(
      ids, counts, offsets, sorted, n, e, block, capacity, error);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  moe_align_place_kernel<<<static_cast<unsigned>((e + kPlaceWarps - 1) / kPlaceWarps), kPlaceWarps * 32, 0, s>>>(
      ids, offsets, sorted, n, e);
  return cudaGetLastError();
}

}  // namespace dev
}  // namespace moe
