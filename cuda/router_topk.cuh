// Kernels of moe_cuda_router_topk and moe_cuda_moe_align (router_topk.cu), the routing ops of the fused MoE layer.
//   router_topk_kernel  one warp per token: softmax (or sigmoid) in f32 with warp reductions, then k rounds of a
//                       warp-wide argmax over (score desc, expert id asc); each lane owns experts lane + 32 i
//                       (i < 32, so e <= 1024) and marks taken ones in a bit mask.
//   moe_align_count_kernel  (t * k <= kAlignChunk) one block of 1024 threads: per-expert counts with shared-memory
//                       integer atomics (integer, so the result is exact and order-free), a block scan of the padded
//                       counts (moe_align_offsets), sentinels at the padding positions and past the last expert
//                       (their writes precede the placement: same stream);
//   moe_align_place_kernel  one warp per expert across the grid: the warp reads every id (4 chunks of 32 per step, so
//                       4 loads are in flight) and places its expert's slots in ascending slot order with ballot/popc
//                       (stable, deterministic). launch_moe_align runs both.
//   moe_align_hist / scan / scatter_kernel  (t * k > kAlignChunk) the same result in three passes over chunks of
//                       kAlignChunk ids, one warp per chunk (see the section below). The two-kernel path reads all
//                       t * k ids once per expert: 0.48 ms of a Qwen3-shaped call at t * k = 131072 on an H100
//                       (2026-11-26, ncu), and ~4 ms before it spread the experts over the chip.
// Ids outside [0, e) are skipped (treated as -1) by the placement; ids other than -1 among them are also reported
// through `error` when it is not null (mapped pinned host memory, cpp/napi/cuda_error_slot.h): [0] = 1, [1] the
// smallest such index, [2] its id. The op reads it in its completion callback and rejects, like the CPU op.
// Kernels are static (internal linkage): moe_experts.cu includes router_topk.cuh too.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "error_slot.cuh"

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

// Block-wide (kAlignThreads threads), after the counts: thread tid owns experts x = tid * per .. tid * per + per - 1
// (per = ceil(e / kAlignThreads)) and has summed their padded counts into `padded`; count(x) reads one count.
// Writes offsets [e + 1] (exclusive sums of the counts padded to `block`) and the sentinel n at every padding
// position and at offsets[e] .. capacity - 1, so that with the placed slots every entry of sorted is written.
template <class Count>
__device__ __forceinline__ void moe_align_offsets(Count count, int padded, int per, int32_t* __restrict__ offsets,
                                                  int32_t* __restrict__ sorted, int n, int e, int block,
                                                  int capacity) {
  __shared__ int s_scan[kAlignThreads];
  const int tid = threadIdx.x;
  s_scan[tid] = padded;  // inclusive sums over threads (Hillis-Steele), then exclusive by subtracting one's own
  __syncthreads();
  for (int o = 1; o < kAlignThreads; o <<= 1) {
    const int add = tid >= o ? s_scan[tid - o] : 0;
    __syncthreads();
    s_scan[tid] += add;
    __syncthreads();
  }
  int off = s_scan[tid] - padded;
  for (int j = 0; j < per; ++j) {
    const int x = tid * per + j;
    if (x >= e) break;
    const int cnt = count(x), pad = (cnt + block - 1) / block * block;
    offsets[x] = off;
    for (int r = off + cnt; r < off + pad; ++r) sorted[r] = n;
    off += pad;
  }
  const int total = s_scan[kAlignThreads - 1];
  if (tid == 0) offsets[e] = total;
  for (int r = total + tid; r < capacity; r += kAlignThreads) sorted[r] = n;
}

// ids [n] i32 (n = t * k), counts [e], offsets [e + 1], sorted [capacity] (padding positions and the tail past
// offsets[e] set to n, the padding value); error [3] i32 or null. grid: 1, block: 1024, dynamic shared memory:
// e * 4 bytes.
static __global__ void __launch_bounds__(kAlignThreads)
    moe_align_count_kernel(const int32_t* __restrict__ ids, int32_t* __restrict__ counts,
                           int32_t* __restrict__ offsets, int32_t* __restrict__ sorted, int n, int e, int block,
                           int capacity, int32_t* error) {
  extern __shared__ int32_t s_count[];  // [e]
  __shared__ int s_bad;                 // smallest index of an id outside [-1, e); 0x7fffffff: none
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
  if (threadIdx.x == 0 && error != nullptr && s_bad != 0x7fffffff) {  // plain stores to mapped host memory
    moe_write_error_words(error, s_bad, ids);
  }
  const int per = (e + kAlignThreads - 1) / kAlignThreads;
  int padded = 0;
  for (int j = 0; j < per; ++j) {
    const int x = threadIdx.x * per + j;
    if (x >= e) break;
    counts[x] = s_count[x];
    padded += (s_count[x] + block - 1) / block * block;
  }
  moe_align_offsets([&](int x) { return s_count[x]; }, padded, per, offsets, sorted, n, e, block, capacity);
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

// ---- parallel align (n > kAlignChunk): the kernels above scan all n ids per expert (one warp each) and count in
// one block, 0.48 ms of a Qwen3-shaped call at n = 131072 on an H100. Here the ids are cut into chunks of
// kAlignChunk, one warp each, three passes: per-chunk histograms, one block turning them into counts, offsets and
// each chunk's start inside each expert's range, then the placement. The result is the same array: slots ascending
// inside each expert (a chunk's slots land before the next chunk's, and in id order inside the chunk).
// scratch: moe_align_scratch_ints(n, e) ints, hist [chunks, e] then bad [chunks].
constexpr int kAlignChunk = 2048;  // ids per warp of the parallel align

__host__ __device__ inline int moe_align_chunks(int n) { return (n + kAlignChunk - 1) / kAlignChunk; }
// Scratch ints of launch_moe_align (0: the two-kernel path, no scratch).
__host__ __device__ inline int64_t moe_align_scratch_ints(int n, int e) {
  return n > kAlignChunk ? static_cast<int64_t>(moe_align_chunks(n)) * (e + 1) : 0;
}

// Walks chunk c's ids in slot order, 32 per warp step with 4 steps' loads in flight, and calls f(slot, x, grp) on
// every lane: x the lane's expert id (-1 for -1, invalid or past n), grp the lanes of the warp holding the same x
// (__match_any_sync). bad: lowered to the smallest slot whose id is outside [-1, e). Block: one warp.
template <class F>
__device__ __forceinline__ void moe_align_walk(const int32_t* __restrict__ ids, int n, int e, int c, int& bad, F f) {
  const int lane = threadIdx.x;
  const int c0 = c * kAlignChunk, c1 = min(n, c0 + kAlignChunk);
  for (int step = 0; c0 + 32 * step < c1; step += 4) {
    int v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int i = c0 + 32 * (step + u) + lane;
      int x = i < c1 ? ids[i] : -1;
      if (x < -1 || x >= e) {
        bad = min(bad, i);
        x = -1;
      }
      v[u] = x;
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      f(c0 + 32 * (step + u) + lane, v[u], __match_any_sync(0xffffffffu, v[u]));
      __syncwarp();
    }
  }
}

// Chunk c = blockIdx.x: hist[c * e + x] = its slots routed to expert x; bad[c] = its smallest invalid index
// (0x7fffffff: none). grid: chunks, block: 32, dynamic shared memory: e * 4 bytes.
static __global__ void __launch_bounds__(32)
    moe_align_hist_kernel(const int32_t* __restrict__ ids, int32_t* __restrict__ hist, int32_t* __restrict__ bad_out,
                          int n, int e) {
  extern __shared__ int32_t s_hist[];  // [e]
  const int lane = threadIdx.x, c = blockIdx.x;
  for (int x = lane; x < e; x += 32) s_hist[x] = 0;
  __syncwarp();
  int bad = 0x7fffffff;
  moe_align_walk(ids, n, e, c, bad, [&](int, int x, uint32_t grp) {
    if (x >= 0 && lane == __ffs(grp) - 1) s_hist[x] += __popc(grp);  // one leader per expert
  });
  for (int x = lane; x < e; x += 32) hist[static_cast<int64_t>(c) * e + x] = s_hist[x];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) bad = min(bad, __shfl_xor_sync(0xffffffffu, bad, o));
  if (lane == 0) bad_out[c] = bad;
}

// One block: counts[x] = sum over chunks, hist[c * e + x] := slots of expert x in chunks before c (exclusive
// prefix), offsets [e + 1] (counts padded to `block`), sorted = n at every padding position and past offsets[e]
// up to capacity, the error report (smallest invalid index over all chunks). grid: 1, block: kAlignThreads.
static __global__ void __launch_bounds__(kAlignThreads)
    moe_align_scan_kernel(const int32_t* __restrict__ ids, int32_t* __restrict__ hist,
                          const int32_t* __restrict__ bad_in, int32_t* __restrict__ counts,
                          int32_t* __restrict__ offsets, int32_t* __restrict__ sorted, int n, int e, int chunks,
                          int block, int capacity, int32_t* error) {
  __shared__ int s_bad;
  const int tid = threadIdx.x;
  const int per = (e + kAlignThreads - 1) / kAlignThreads;  // experts x = tid * per .. tid * per + per - 1
  int padded = 0;
  for (int j = 0; j < per; ++j) {
    const int x = tid * per + j;
    if (x >= e) break;
    int run = 0, c = 0;
    for (; c + 8 <= chunks; c += 8) {  // 8 independent loads in flight
      int v[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) v[u] = hist[static_cast<int64_t>(c + u) * e + x];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        hist[static_cast<int64_t>(c + u) * e + x] = run;
        run += v[u];
      }
    }
    for (; c < chunks; ++c) {
      const int v = hist[static_cast<int64_t>(c) * e + x];
      hist[static_cast<int64_t>(c) * e + x] = run;
      run += v;
    }
    counts[x] = run;
    padded += (run + block - 1) / block * block;
  }
  if (tid == 0) s_bad = 0x7fffffff;
  moe_align_offsets([&](int x) { return counts[x]; }, padded, per, offsets, sorted, n, e, block, capacity);
  for (int c = tid; c < chunks; c += kAlignThreads) atomicMin(&s_bad, bad_in[c]);
  __syncthreads();
  if (tid == 0 && error != nullptr && s_bad != 0x7fffffff) {  // plain stores to mapped host memory, no atomics
    moe_write_error_words(error, s_bad, ids);
  }
}

// Chunk c = blockIdx.x places its slots: sorted[offsets[x] + hist[c * e + x] + rank] = slot, ranks in slot order.
// grid: chunks, block: 32, dynamic shared memory: e * 4 bytes.
static __global__ void __launch_bounds__(32)
    moe_align_scatter_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ hist,
                             const int32_t* __restrict__ offsets, int32_t* __restrict__ sorted, int n, int e) {
  extern __shared__ int32_t s_next[];  // [e]: next position of each expert's slots in this chunk
  const int lane = threadIdx.x, c = blockIdx.x;
  for (int x = lane; x < e; x += 32) s_next[x] = offsets[x] + hist[static_cast<int64_t>(c) * e + x];
  __syncwarp();
  const uint32_t below = (1u << lane) - 1u;
  int bad = 0;  // (reported by the hist pass)
  moe_align_walk(ids, n, e, c, bad, [&](int slot, int x, uint32_t grp) {
    if (x >= 0) sorted[s_next[x] + __popc(grp & below)] = slot;
    __syncwarp();  // every lane has read s_next[x] before its leader moves it
    if (x >= 0 && lane == __ffs(grp) - 1) s_next[x] += __popc(grp);
  });
}

// The align of moe_cuda_moe_align and the fused MoE launcher: counts, offsets, sentinels, then the placement.
// scratch: moe_align_scratch_ints(n, e) ints of device memory (null when that is 0).
static inline cudaError_t launch_moe_align(const int32_t* ids, int32_t* counts, int32_t* offsets, int32_t* sorted,
                                           int n, int e, int block, int capacity, int32_t* error, int32_t* scratch,
                                           cudaStream_t s) {
  if (moe_align_scratch_ints(n, e) > 0) {
    if (scratch == nullptr) return cudaErrorInvalidValue;
    const int chunks = moe_align_chunks(n);
    int32_t* hist = scratch;
    int32_t* bad = scratch + static_cast<int64_t>(chunks) * e;
    const size_t smem = static_cast<size_t>(e) * sizeof(int32_t);
    moe_align_hist_kernel<<<static_cast<unsigned>(chunks), 32, smem, s>>>(ids, hist, bad, n, e);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    moe_align_scan_kernel<<<1, kAlignThreads, 0, s>>>(ids, hist, bad, counts, offsets, sorted, n, e, chunks, block,
                                                       capacity, error);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    moe_align_scatter_kernel<<<static_cast<unsigned>(chunks), 32, smem, s>>>(ids, hist, offsets, sorted, n, e);
    return cudaGetLastError();
  }
  moe_align_count_kernel<<<1, kAlignThreads, static_cast<size_t>(e) * sizeof(int32_t), s>>>(
      ids, counts, offsets, sorted, n, e, block, capacity, error);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  moe_align_place_kernel<<<static_cast<unsigned>((e + kPlaceWarps - 1) / kPlaceWarps), kPlaceWarps * 32, 0, s>>>(
      ids, offsets, sorted, n, e);
  return cudaGetLastError();
}

}  // namespace dev
}  // namespace moe
