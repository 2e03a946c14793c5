// Decode kernels of moe_cuda_moe_experts and _parts for a few tokens (launcher moe_experts.cu: fused and parts calls
// of at most decode_gemv_max_t() tokens, default 2). GEMV style, with no align, no part scratch and no combine kernel:
//   moe_gemv1_kernel  act[slot, n] = bf16( act_fn( x[slot / k] . gate_e[n], x[slot / k] . up_e[n] ) ), e = ids[slot]
//   moe_gemv2_kernel  fused: out[t, n] = bf16( sum over j = 0..k-1 in order of w[t, j] * p[t * k + j, n] ),
//                     parts: parts[t * k + j, n] = p[t * k + j, n], where p[slot, n] = act[slot] . down_e[n] (+ bd_e[n])
// (act_fn: moe_gemm1_act, as every path; the weighted sum is moe_combine_kernel's fmaf chain, so fused == parts +
// moeCombine bitwise, the contract of the other paths.) One warp per output row: the lanes stride the row in 16-byte
// chunks (8 bf16) with kGemvUnroll chunks per lane in flight, f32 FMAs, then a fixed shuffle-down tree whose lane 0
// holds the sum: deterministic. GEMM1 reads each expert row once per slot and GEMM2 once per token, so at T = 1 every
// weight byte is read once and the two kernels are the whole layer. Slots whose id is outside [0, e) or whose expert
// is absent (null table entry) contribute nothing (act and parts rows of such slots are not written); ids outside
// [-1, e) are reported through `error` by moe_gemv2_kernel's block (0, 0), as the align reports them on the other
// paths. Preconditions (launcher): h % 8 == 0, inter % 8 == 0, x, act and every present weight row 16-byte aligned.
// Measured on an H100 (2026-11-26, T = 1): 1.13-1.17x the tile path on Qwen3 / DeepSeek-V2-Lite / OLMoE shapes,
// equal on Mixtral. Variants of the same floats (the launcher picks, MOE_CUDA_GEMV): moe_gemv1_kernel<.., 2> (two
// rows per warp) and moe_gemv2_wide_kernel (a warp per (column, slot) pair), the default.
#pragma once
#include <cstdint>

#include "dtype.cuh"
#include "error_slot.cuh"
#include "moe_experts.cuh"

namespace moe {
namespace dev {

constexpr int kGemvWarps = 8;    // warps (output rows) per block
constexpr int kGemvUnroll = 4;   // 16-byte chunks per lane and row in flight
constexpr int64_t kGemvMaxT = 4; // tokens up to which the launcher may take this path

// Programmatic dependent launch (sm_90+; no-ops elsewhere and when the kernels are launched without the attribute):
// the GEMM1 kernel lets the GEMM2 kernel start at once, and GEMM2 prefetches its weight rows into L2 before it waits
// for GEMM1's act (moe_experts.cu's run_gemv launches GEMM2 with cudaLaunchAttributeProgrammaticStreamSerialization
// on sm_90+). Both weight streams then overlap.
__device__ __forceinline__ void moe_pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void moe_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// L2 prefetch of the 128-byte lines of bytes [p, p + bytes), spread over the warp's lanes (kHint: with the
// evict_last priority, so GEMM1's streaming loads do not push them out before GEMM2 reads them).
template <bool kHint>
__device__ __forceinline__ void moe_prefetch_l2(const void* p, int64_t bytes, int lane) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = static_cast<int64_t>(lane) * 128; off < bytes; off += 32 * 128) {
    if constexpr (kHint) {
      asm volatile("prefetch.global.L2::evict_last [%0];\n" ::"l"(c + off));
    } else {
      asm volatile("prefetch.global.L2 [%0];\n" ::"l"(c + off));
    }
  }
}

// A weight chunk: a plain load, or (kHint) a non-coherent load with the L2 evict_first policy `pol` (read once).
template <bool kHint>
__device__ __forceinline__ uint4 moe_gemv_ld(const uint4* p, uint64_t pol) {
  if constexpr (kHint) {
    uint4 v;
    asm("ld.global.nc.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;\n"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p), "l"(pol));
    return v;
  } else {
    (void)pol;
    return *p;
  }
}
__device__ __forceinline__ uint64_t moe_evict_first_policy() {
  uint64_t pol;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
  return pol;
}

// a . b partial sums of 8 bf16 pairs packed in two uint4 (bf16 -> f32 is a 16-bit shift).
__device__ __forceinline__ float moe_gemv_dot8(uint4 a, uint4 b, float acc) {
  const uint32_t av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    acc = fmaf(__uint_as_float(av[i] << 16), __uint_as_float(bv[i] << 16), acc);
    acc = fmaf(__uint_as_float(av[i] & 0xffff0000u), __uint_as_float(bv[i] & 0xffff0000u), acc);
  }
  return acc;
}

// Lane 0 gets the warp's sum (a fixed tree: the same order on every run).
__device__ __forceinline__ float moe_gemv_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// R rows' dot products with vector v over len bf16 (len % 8 == 0; rows and v 16-byte aligned): lane partials over
// the lane's chunks c = lane + 32 i, kGemvUnroll chunks of v and of each row loaded before their FMAs (no branch
// between the loads: the group loop runs while all kGemvUnroll chunks exist, a one-chunk loop takes the rest).
template <int R, bool kHint, int U = kGemvUnroll>
__device__ __forceinline__ void moe_gemv_rows(const uint16_t* __restrict__ v, const uint16_t* const (&rows)[R],
                                              int len, int lane, float (&acc)[R]) {
  const uint64_t pol = kHint ? moe_evict_first_policy() : 0;
  const int chunks = len / 8;
  const uint4* vv = reinterpret_cast<const uint4*>(v);
  int c = lane;
  for (; c + 32 * (U - 1) < chunks; c += 32 * U) {
    uint4 a[U], w[R][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      a[u] = vv[c + 32 * u];
#pragma unroll
      for (int r = 0; r < R; ++r) w[r][u] = moe_gemv_ld<kHint>(reinterpret_cast<const uint4*>(rows[r]) + c + 32 * u, pol);
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = moe_gemv_dot8(a[u], w[r][u], acc[r]);
  }
  for (; c < chunks; c += 32) {
    const uint4 a = vv[c];
#pragma unroll
    for (int r = 0; r < R; ++r)
      acc[r] = moe_gemv_dot8(a, moe_gemv_ld<kHint>(reinterpret_cast<const uint4*>(rows[r]) + c, pol), acc[r]);
  }
}

// Lane 0 writes act[slot, n] from the lanes' partial sums of row n's gate and up dot products (the warp's shuffle
// trees, then the activation with expert ex's biases): both GEMM1 kernels' epilogue.
__device__ __forceinline__ void moe_gemv1_store(float gp, float up_, int lane, int slot, int n, int ex,
                                                const void* const* __restrict__ gate_bias,
                                                const void* const* __restrict__ up_bias, uint16_t* __restrict__ act,
                                                int inter, int act_kind, float alpha, float limit) {
  const float g = moe_gemv_sum(gp), u = moe_gemv_sum(up_);
  if (lane == 0) {
    const float* bg = gate_bias != nullptr ? static_cast<const float*>(gate_bias[ex]) : nullptr;  // [inter] f32
    const float* bu = up_bias != nullptr ? static_cast<const float*>(up_bias[ex]) : nullptr;
    const bool plain = act_kind == 0 && bg == nullptr;
    const float v = moe_gemm1_act(g, u, plain, bg, bu, n, act_kind, alpha, limit);
    act[static_cast<int64_t>(slot) * inter + n] = f32_to_bf16(v);
  }
}

// GEMM1 rows n0 and n0 + 1 of one slot: gate rows g (n0) and g + h (n0 + 1), up rows u and u + h (global or shared
// memory), x row xr; two chunks per lane and row in flight. Both two-row GEMM1 kernels call it: the same floats.
template <bool kHint>
__device__ __forceinline__ void moe_gemv1_row_pair(const uint16_t* __restrict__ xr, const uint16_t* g, const uint16_t* u,
                                                   int h, int lane, int slot, int n0, int ex,
                                                   const void* const* __restrict__ gate_bias,
                                                   const void* const* __restrict__ up_bias, uint16_t* __restrict__ act,
                                                   int inter, int act_kind, float alpha, float limit) {
  const uint16_t* const rows[4] = {g, u, g + h, u + h};
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  moe_gemv_rows<4, kHint, 2>(xr, rows, h, lane, acc);
  moe_gemv1_store(acc[0], acc[1], lane, slot, n0, ex, gate_bias, up_bias, act, inter, act_kind, alpha, limit);
  moe_gemv1_store(acc[2], acc[3], lane, slot, n0 + 1, ex, gate_bias, up_bias, act, inter, act_kind, alpha, limit);
}

// GEMM1 + activation. x [t, h] bf16; ids [t * k]; gate / up [e] device pointers to [inter, h] bf16 (null: absent);
// gate_bias / up_bias null or [e] pointers to [inter] f32; act [t * k, inter] bf16. grid: (ceil(inter /
// (kGemvWarps kRows)), t * k), block: 32 kGemvWarps. Warp w computes rows n = (blockIdx.x * kGemvWarps + w) kRows ..
// + kRows - 1 of slot blockIdx.y. kRows 2 (the default; MOE_CUDA_GEMV=narrow runs kRows 1, moe_experts.cu) halves
// the blocks so the grid fits one wave (ncu, H200, Qwen3 T = 1: 768 blocks of kRows 1 ran in about two,
// 19.1 us at 57% of DRAM), with 2 chunks per lane and row in flight instead of 4 (the same chunk order: the same
// floats).
template <bool kHint, int kRows = 1>
static __global__ void __launch_bounds__(32 * kGemvWarps)
    moe_gemv1_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ ids,
                     const void* const* __restrict__ gate, const void* const* __restrict__ up,
                     const void* const* __restrict__ gate_bias, const void* const* __restrict__ up_bias,
                     uint16_t* __restrict__ act, int k, int e, int h, int inter, int act_kind, float alpha,
                     float limit) {
  static_assert(kRows == 1 || kRows == 2, "rows per warp");
  moe_pdl_launch_dependents();  // GEMM2 may start now: it waits for this grid before it reads act
  const int slot = blockIdx.y, lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * kGemvWarps + (threadIdx.x >> 5)) * kRows;
  const int ex = ids[slot];
  if (ex < 0 || ex >= e || n0 >= inter) return;  // warp-uniform (inter % 8 == 0: n0 + 1 < inter too)
  const uint16_t* wg = static_cast<const uint16_t*>(gate[ex]);
  const uint16_t* wu = static_cast<const uint16_t*>(up[ex]);
  if (wg == nullptr || wu == nullptr) return;  // absent
  const uint16_t* xr = x + static_cast<int64_t>(slot / k) * h;
  if constexpr (kRows == 1) {
    const uint16_t* const rows[2] = {wg + static_cast<int64_t>(n0) * h, wu + static_cast<int64_t>(n0) * h};
    float acc[2] = {0.0f, 0.0f};
    moe_gemv_rows<2, kHint>(xr, rows, h, lane, acc);
    moe_gemv1_store(acc[0], acc[1], lane, slot, n0, ex, gate_bias, up_bias, act, inter, act_kind, alpha, limit);
  } else {
    moe_gemv1_row_pair<kHint>(xr, wg + static_cast<int64_t>(n0) * h, wu + static_cast<int64_t>(n0) * h, h, lane, slot,
                              n0, ex, gate_bias, up_bias, act, inter, act_kind, alpha, limit);
  }
}

// GEMM2's value of one (column n, slot) pair before its bias: act[slot] . wd[n]. Lane 0 holds it (the other lanes
// hold partials). Both GEMM2 kernels use it and moe_gemv2_add_bias, so they compute the same float.
__device__ __forceinline__ float moe_gemv2_dot(const uint16_t* __restrict__ act, int slot, const uint16_t* wd, int n,
                                               int inter, int lane) {
  const uint16_t* const rows[1] = {wd + static_cast<int64_t>(n) * inter};
  float acc[1] = {0.0f};
  moe_gemv_rows<1, false>(act + static_cast<int64_t>(slot) * inter, rows, inter, lane, acc);
  return moe_gemv_sum(acc[0]);
}
// d += bias_e[n] when expert ex has a down bias (down_bias null: none has).
__device__ __forceinline__ void moe_gemv2_add_bias(float& d, const void* const* __restrict__ down_bias, int ex, int n) {
  if (down_bias == nullptr) return;
  const float* bd = static_cast<const float*>(down_bias[ex]);  // [h] f32
  if (bd != nullptr) d += bd[n];
}

// L2 prefetch of GEMM2's weight row n of expert ex (nothing for an invalid id or an absent expert).
template <bool kHint>
__device__ __forceinline__ void moe_gemv2_prefetch(const void* const* __restrict__ down, int ex, int e, int n, int inter,
                                                   int lane) {
  if (ex < 0 || ex >= e || down[ex] == nullptr) return;
  moe_prefetch_l2<kHint>(static_cast<const uint16_t*>(down[ex]) + static_cast<int64_t>(n) * inter,
                         static_cast<int64_t>(inter) * 2, lane);
}

// GEMM2 + the weighted combine (parts null), or GEMM2 alone into parts. act [t * k, inter] bf16 (rows of valid,
// present slots); ids / weights [t * k] (weights unused with parts); down [e] pointers to [h, inter] bf16 (null:
// absent); down_bias null or [e] pointers to [h] f32; out [t, h] bf16 or parts [t * k, h] f32; error [3] i32 or null
// (block (0, 0) reports the smallest index of an id outside [-1, e)). grid: (ceil(h / kGemvWarps), t), block:
// 32 kGemvWarps. Warp w computes column n = blockIdx.x * kGemvWarps + w of token blockIdx.y.
template <bool kHint>
static __global__ void __launch_bounds__(32 * kGemvWarps)
    moe_gemv2_kernel(const uint16_t* __restrict__ act, const int32_t* __restrict__ ids,
                     const float* __restrict__ weights, const void* const* __restrict__ down,
                     const void* const* __restrict__ down_bias, uint16_t* __restrict__ out, float* __restrict__ parts,
                     int t, int k, int e, int h, int inter, int32_t* error) {
  if (error != nullptr && blockIdx.x == 0 && blockIdx.y == 0)  // block-uniform: the barriers inside are safe
    moe_report_first_bad_id(ids, t * k, error, [e](int32_t x) { return x < -1 || x >= e; });
  const int tok = blockIdx.y, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kGemvWarps + (threadIdx.x >> 5);
  if (n >= h) {  // warp-uniform
    moe_pdl_wait();
    return;
  }
  // Before act exists (under programmatic launch): pull this warp's weight rows into L2. ids, the table and the
  // weights were complete before GEMM1 started.
  for (int j = 0; j < k; ++j) moe_gemv2_prefetch<kHint>(down, ids[tok * k + j], e, n, inter, lane);
  moe_pdl_wait();
  float y = 0.0f;  // lane 0's running sum
  for (int j = 0; j < k; ++j) {
    const int slot = tok * k + j, ex = ids[slot];
    if (ex < 0 || ex >= e) continue;
    const uint16_t* wd = static_cast<const uint16_t*>(down[ex]);
    if (wd == nullptr) continue;  // absent
    float d = moe_gemv2_dot(act, slot, wd, n, inter, lane);
    if (lane == 0) {
      moe_gemv2_add_bias(d, down_bias, ex, n);
      if (parts != nullptr)
        parts[static_cast<int64_t>(slot) * h + n] = d;
      else
        y = fmaf(weights[slot], d, y);
    }
  }
  if (lane == 0 && parts == nullptr) out[static_cast<int64_t>(tok) * h + n] = f32_to_bf16(y);
}

// GEMM2 with one warp per (column, slot) pair instead of one per column (the default for k <= kGemvWideMaxK;
// MOE_CUDA_GEMV=narrow runs moe_gemv2_kernel, moe_experts.cu). ncu on an H200 (2026-11-26, Qwen3 shape, T = 1) put moe_gemv2_kernel at 22.8 us
// for 25 MB (23% of DRAM): each warp walks its token's k experts one after the other with only inter / 256 16-byte
// loads per lane in flight. Here block (bx, tok) owns columns n0 = bx * C .. n0 + C - 1, C = max(1, kGemvWarps / k)
// (k <= kGemvWideMaxK), and its warps take the C k pairs (column n0 + q / k, slot tok * k + q % k) in turn: each pair's
// p = act[slot] . down_e[n] (+ bd_e[n]) is the same lane-strided chunk sequence and shuffle tree as
// moe_gemv2_kernel's, so the same float. Parts mode writes p from the warp; fused, the pairs go to shared memory and
// thread c of the block runs column n0 + c's fmaf chain over j in order, skipping the same slots: bitwise
// moe_gemv2_kernel's output. grid: (ceil(h / C), t), block: 32 kGemvWarps.
constexpr int kGemvWideMaxK = 32;
template <bool kHint>
static __global__ void __launch_bounds__(32 * kGemvWarps)
    moe_gemv2_wide_kernel(const uint16_t* __restrict__ act, const int32_t* __restrict__ ids,
                          const float* __restrict__ weights, const void* const* __restrict__ down,
                          const void* const* __restrict__ down_bias, uint16_t* __restrict__ out,
                          float* __restrict__ parts, int t, int k, int e, int h, int inter, int32_t* error) {
  __shared__ float s_p[kGemvWideMaxK > kGemvWarps ? kGemvWideMaxK : kGemvWarps];
  __shared__ int s_ok[kGemvWideMaxK > kGemvWarps ? kGemvWideMaxK : kGemvWarps];
  if (error != nullptr && blockIdx.x == 0 && blockIdx.y == 0)  // block-uniform: the barriers inside are safe
    moe_report_first_bad_id(ids, t * k, error, [e](int32_t x) { return x < -1 || x >= e; });
  const int tok = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int C = k < kGemvWarps ? kGemvWarps / k : 1;
  const int n0 = blockIdx.x * C, pairs = C * k;
  // pair q's weight row (expert of slot tok * k + q % k, column n0 + q / k), or null: outside h, an invalid id or
  // an absent expert
  auto row_of = [&](int q) -> const uint16_t* {
    const int n = n0 + q / k, ex = ids[tok * k + q % k];
    return n < h && ex >= 0 && ex < e && down[ex] != nullptr ? static_cast<const uint16_t*>(down[ex]) + static_cast<int64_t>(n) * inter : nullptr;
  };
  // Before act exists (under programmatic launch): pull this warp's weight rows into L2.
  for (int q = warp; q < pairs; q += kGemvWarps)
    if (n0 + q / k < h) moe_gemv2_prefetch<kHint>(down, ids[tok * k + q % k], e, n0 + q / k, inter, lane);
  moe_pdl_wait();
  for (int q = warp; q < pairs; q += kGemvWarps) {
    const int n = n0 + q / k, slot = tok * k + q % k, ex = ids[slot];
    const uint16_t* wd = row_of(q);
    if (wd == nullptr) {  // warp-uniform: outside h, an invalid id or an absent expert
      if (lane == 0) s_ok[q] = 0;
      continue;
    }
    float d = moe_gemv2_dot(act, slot, wd, 0, inter, lane);
    if (lane == 0) {
      moe_gemv2_add_bias(d, down_bias, ex, n);
      if (parts != nullptr) parts[static_cast<int64_t>(slot) * h + n] = d;
      s_p[q] = d;
      s_ok[q] = 1;
    }
  }
  if (parts != nullptr) return;
  __syncthreads();
  const int c = threadIdx.x, n = n0 + c;
  if (c >= C || n >= h) return;
  float y = 0.0f;
  for (int j = 0; j < k; ++j)
    if (s_ok[c * k + j]) y = fmaf(weights[tok * k + j], s_p[c * k + j], y);
  out[static_cast<int64_t>(tok) * h + n] = f32_to_bf16(y);
}

}  // namespace dev
}  // namespace moe
