// The wgmma kernels of moe_experts_wgmma.cuh with tiles loaded by TMA (opt-in: MOE_CUDA_WG=tma; sm_90a). Same
// tiles, ring, descriptors, raster, epilogues and numerics (one accumulation chain per output, bitwise the cp.async
// kernels' results); the mainloop is moe_wg_mainloop with kTma B (GEMM1) or AB (GEMM2):
//   * B tile of k tile kt (GEMM1: gate rows n0.. then up rows n0.., two boxes of [BN, 64]; GEMM2: down rows n0..,
//     one box of [BN, 64]) = cp.async.bulk.tensor.2d by thread 0 from the expert's tensor map (tensor_map.cuh:
//     128B swizzle, so the box lands exactly as moe_mma_swz places cp.async chunks; rows past N and columns past K
//     zero-filled by the hardware), completing on the stage's mbarrier with expect-tx = the boxes' bytes;
//   * A tile: GEMM1 by cp.async from all 256 threads as before (its rows are gathered x rows: no TMA box); GEMM2 by
//     TMA too (act rows r0 .. r0 + 127 are one box of a map over act passed as a __grid_constant__ parameter), so
//     GEMM2 issues no cp.async at all;
//   * schedule per k tile kt: cp.async.wait_group STAGES-2 + fence.proxy.async (own A copies of tile kt), mbarrier
//     wait on stage kt % STAGES at parity (kt / STAGES) & 1 (its TMA bytes landed), __syncthreads, wgmma x 4,
//     commit, wgmma.wait_group 1 (tile kt - 1 read), __syncthreads, then refill that slot: thread 0 arms its
//     mbarrier (arrive.expect_tx) and issues the TMA, every thread its A cp.async. The slot's previous readers (wgmma
//     of tile kt - 1, async proxy) retired before the barrier, so the TMA (async proxy) may overwrite it;
//   * each stage's mbarrier (count 1: thread 0's arrive.expect_tx) completes once per use of the stage, in order; a
//     wait that never completes traps (moe_mbar_wait) instead of hanging;
//   * the expert tensor maps live in global memory (written by a host copy before the kernel); each block fences its
//     maps into the tensormap proxy (fence.proxy.tensormap::generic.acquire) before its first TMA.
// MOE_CUDA_WG=tma-ws / tma-wsp: moe_wg_ws_kernel below, warp-specialized with every tile by TMA (a block per tile, or
// persistent with the epilogue overlapping the next tile's loads).
// Why: issue 3's large-T target. The cp.async kernels issue 12 16-byte copies per thread per k tile with their
// predicates and addresses; here 4 (GEMM1) or none (GEMM2), the tiles moving as one to three bulk transfers.
// The tma kernels are thin wrappers of moe_experts_wgmma.cuh's moe_wg_gemm1_block / moe_wg_gemm2_block, which the
// cp.async kernels run too. ptxas (sm_90a): GEMM1 160, GEMM2 154, tma-ws 154 / 160 registers, no spills.
// Compiled, not yet run on a GPU (2026-11-26); the host replay test/native/moe_wgmma_layout_check.cu covers the
// boxes' placement and coordinates.
#pragma once
#include <cuda.h>  // CUtensorMap (type only)

#include <cstdint>

#include "moe_experts_wgmma.cuh"

namespace moe {
namespace dev {

// GEMM1 + SwiGLU, as moe_wg_gemm1_kernel, with maps[ex] (gate) and maps[e + ex] (up): boxes of [BN, 64].
template <class C>
static __global__ void __launch_bounds__(C::kThreads, 1)
    moe_wg_gemm1_tma_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ sorted,
                            const int32_t* __restrict__ offsets, const void* const* __restrict__ gate,
                            const void* const* __restrict__ up, const void* const* __restrict__ gate_bias,
                            const void* const* __restrict__ up_bias, const CUtensorMap* __restrict__ maps,
                            uint16_t* __restrict__ act, int n_slots, int k, int e, int h, int inter, int act_kind,
                            float alpha, float limit, int m_tiles) {
#if MOE_WGMMA_ENABLED
  moe_wg_gemm1_block<C, MoeWgTma::B>(x, sorted, offsets, gate, up, gate_bias, up_bias, maps, act, n_slots, k, e, h,
                                     inter, act_kind, alpha, limit, m_tiles);
#else
  __trap();
#endif
}

// GEMM2, as moe_wg_gemm2_kernel, with both tiles by TMA: act_map over act [capacity, inter] (boxes of [BM, 64]) and
// down_maps[ex] (boxes of [BN, 64]).
template <class C>
static __global__ void __launch_bounds__(C::kThreads, 1)
    moe_wg_gemm2_tma_kernel(const __grid_constant__ CUtensorMap act_map, const int32_t* __restrict__ sorted,
                            const int32_t* __restrict__ offsets, const void* const* __restrict__ down,
                            const void* const* __restrict__ down_bias, const CUtensorMap* __restrict__ down_maps,
                            float* __restrict__ part, int n_slots, int e, int h, int inter, int m_tiles) {
#if MOE_WGMMA_ENABLED
  moe_wg_gemm2_block<C, MoeWgTma::AB>(nullptr, &act_map, sorted, offsets, down, down_bias, down_maps, part, n_slots, e,
                                      h, inter, m_tiles);
#else
  __trap();
#endif
}

// ---- warp-specialized, all-TMA (MOE_CUDA_WG=tma-ws) ---------------------------------------------------------------
// 384 threads: warpgroup 0 produces (its thread 0 issues every TMA box: A from a_map at rows r0.., B from the
// expert's maps), warpgroups 1 and 2 consume (wgmma on rows 64 c .. 64 c + 63 of the tile, c = consumer index) and
// run the epilogue. No CTA barrier after the setup: per stage a full mbarrier (count 1: the producer's
// arrive.expect_tx; A and B bytes) and an empty one (count 2: one arrival per consumer warpgroup once its wgmma on
// the stage retired, wgmma.wait_group 1 of the next tile). The producer refills stage s for tile kt >= STAGES after
// the empty phase (kt / STAGES - 1) & 1; consumers compute tile kt after the full phase (kt / STAGES) & 1.
// GEMM1's A rows are gathered first (moe_gather_slots_kernel: xs [capacity, h], row r = x row sorted[r] / k), so
// both GEMMs' A tiles are plain boxes. Padding rows load whatever their A rows hold; they reach only their own
// accumulator rows, never written.

// One plain arrival on the mbarrier.
__device__ __forceinline__ void moe_mbar_arrive(uint32_t bar) {
#if MOE_WGMMA_ENABLED
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}

// xs[r, :] = x[sorted[r] / k, :] for the rows r < offsets[e] of real slots (sorted[r] < n_slots); other rows are left
// as they are. 16 bytes per thread and step, grid-stride. h % 8 == 0, x and xs 16-byte aligned.
static __global__ void moe_gather_slots_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ sorted,
                                               const int32_t* __restrict__ offsets, int e, uint16_t* __restrict__ xs,
                                               int n_slots, int k, int h) {
  const int64_t chunks = h / 8;
  const int64_t n = static_cast<int64_t>(offsets[e]) * chunks;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / chunks, c = i % chunks;
    const int slot = sorted[r];
    if (slot >= n_slots) continue;
    reinterpret_cast<uint4*>(xs + r * h)[c] = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(slot / k) * h)[c];
  }
}

constexpr int kMoeWsThreads = 384;

// GEMM1 (C::GATED: act = act_fn(A gate^T, A up^T) over N = inter, K = h; w0 / w1 gate / up, b0 / b1 their biases,
// maps0 / maps1 their tensor maps; a_map over xs) or GEMM2 (part = A down^T (+ b0) over N = h, K = inter; w0 down,
// maps0 its maps; a_map over act). Tiles b = blockIdx.x, blockIdx.x + gridDim.x, ... of the m_tiles * ceil(N / BN)
// of the grouped raster (moe_wg_tile): a grid of that many blocks runs one tile each; a smaller one (the SM count)
// is persistent, its producer running into the next tile's k tiles while the consumers run the epilogue (the
// stage and phase counters continue across tiles). Block kMoeWsThreads, dynamic shared memory C::kSmem.
template <class C>
static __global__ void __launch_bounds__(kMoeWsThreads, 1)
    moe_wg_ws_kernel(const __grid_constant__ CUtensorMap a_map, const int32_t* __restrict__ sorted,
                     const int32_t* __restrict__ offsets, const void* const* __restrict__ w0,
                     const void* const* __restrict__ w1, const void* const* __restrict__ b0,
                     const void* const* __restrict__ b1, const CUtensorMap* __restrict__ maps0,
                     const CUtensorMap* __restrict__ maps1, uint16_t* __restrict__ act, float* __restrict__ part,
                     int n_slots, int e, int h, int inter, int act_kind, float alpha, float limit, int m_tiles) {
#if MOE_WGMMA_ENABLED
  __shared__ __align__(8) uint64_t s_full[C::STAGES];
  __shared__ __align__(8) uint64_t s_empty[C::STAGES];
  const int N = C::GATED ? inter : h, K = C::GATED ? h : inter;
  const int n_tiles = (N + C::BN - 1) / C::BN, tiles = m_tiles * n_tiles;
  const int ktiles = (K + C::BK - 1) / C::BK;
  const int tid = threadIdx.x;
  const uint32_t full = static_cast<uint32_t>(__cvta_generic_to_shared(s_full));
  const uint32_t empty = static_cast<uint32_t>(__cvta_generic_to_shared(s_empty));
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < C::STAGES; ++s) {
      moe_mbar_init(full + 8u * s, 1);
      moe_mbar_init(empty + 8u * s, 2);
    }
    moe_mbar_init_fence();
  }
  __syncthreads();  // the mbarriers are initialised (the only CTA barrier)
  const uint32_t ring = moe_wg_ring();
  // The tile b: its rows r0 .., columns n0 .. and expert; false when it has none (past the last non-empty tile, or an
  // absent expert: its slots are skipped by the combine). Both roles skip the same tiles.
  auto tile = [&](int b, int& r0, int& n0, int& ex) {
    int mt, nt;
    moe_wg_tile(b, m_tiles, n_tiles, mt, nt);
    r0 = mt * C::BM;
    n0 = nt * C::BN;
    ex = moe_expert_of_row(offsets, e, r0);
    return ex >= 0 && w0[ex] != nullptr && (!C::GATED || w1[ex] != nullptr);
  };
  constexpr uint32_t kTx = static_cast<uint32_t>(C::kABytes) + static_cast<uint32_t>(C::kN) * 128u;

  if (tid < 128) {  // producer warpgroup: one thread issues
    if (tid != 0) return;
    int g = 0;  // k tiles issued by this block so far (stage g % STAGES, its use g / STAGES)
    for (int b = static_cast<int>(blockIdx.x); b < tiles; b += static_cast<int>(gridDim.x)) {
      int r0, n0, ex;
      if (!tile(b, r0, n0, ex)) continue;
      moe_tensormap_acquire(maps0 + ex);
      if (C::GATED) moe_tensormap_acquire(maps1 + ex);
      for (int kt = 0; kt < ktiles; ++kt, ++g) {
        const int s = g % C::STAGES;
        if (g >= C::STAGES) moe_mbar_wait(empty + 8u * s, static_cast<uint32_t>((g / C::STAGES - 1) & 1));
        const uint32_t stage = C::stage_addr(ring, s), bar = full + 8u * s, bb = stage + static_cast<uint32_t>(C::kABytes);
        moe_mbar_arrive_expect_tx(bar, kTx);
        moe_tma_load_2d(stage, &a_map, kt * C::BK, r0, bar);
        moe_tma_load_2d(bb, maps0 + ex, kt * C::BK, n0, bar);
        if (C::GATED) moe_tma_load_2d(bb + static_cast<uint32_t>(C::BN) * 128u, maps1 + ex, kt * C::BK, n0, bar);
      }
    }
    return;
  }

  const int ctid = tid - 128, wg = ctid >> 7;  // consumer thread 0..255 (the epilogues' tid), its warpgroup
  const bool signals = (ctid & 127) == 0;      // one arrival per consumer warpgroup on the empty mbarriers
  int g = 0;
  for (int b = static_cast<int>(blockIdx.x); b < tiles; b += static_cast<int>(gridDim.x)) {
    int r0, n0, ex;
    if (!tile(b, r0, n0, ex)) continue;
    float acc[C::kAcc];
    moe_wg_zero<C>(acc);
    for (int kt = 0; kt < ktiles; ++kt, ++g) {
      const int s = g % C::STAGES;
      moe_mbar_wait(full + 8u * s, static_cast<uint32_t>((g / C::STAGES) & 1));
      moe_wg_ktile<C>(acc, C::stage_addr(ring, s), wg);  // the previous k tile's wgmma retired: release its stage
      if (kt > 0 && signals) moe_mbar_arrive(empty + 8u * static_cast<uint32_t>((g - 1) % C::STAGES));
    }
    moe_wgmma_wait<0>();
    moe_wg_fence_acc(acc);
    if (signals) moe_mbar_arrive(empty + 8u * static_cast<uint32_t>((g - 1) % C::STAGES));  // the tile's last stage
    // the epilogue reads the tile's slots straight from sorted (global memory, cached): no shared copy to guard
    if constexpr (C::GATED) {
      moe_wg_gemm1_epilogue<C>(acc, ctid, sorted + r0, r0, n0, act, n_slots, inter, moe_wg_bias(b0, ex),
                               moe_wg_bias(b1, ex), act_kind, alpha, limit);
    } else {
      moe_wg_gemm2_epilogue<C>(acc, ctid, sorted + r0, n0, part, n_slots, h, moe_wg_bias(b0, ex));
    }
  }
#else
  __trap();
#endif
}

}  // namespace dev
}  // namespace moe
