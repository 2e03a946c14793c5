// The wgmma kernels of moe_experts_wgmma.cuh with tiles loaded by TMA (sm_90a; the default of the wgmma path when the
// driver can encode tensor maps, MOE_CUDA_WG=cpasync keeps the cp.async kernels). Same
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
// Why: issue 3's large-T target. The cp.async kernels issue 12 16-byte copies per thread per k tile with their
// predicates and addresses; here 4 (GEMM1) or none (GEMM2), the tiles moving as one to three bulk transfers.
// Measured on an H200 (2026-11-27, bench/results/moe-cuda-2026-11-27-h200-tma.json): 1.14-1.26x the cp.async kernels
// at T = 4096 and 16384 on the four real shapes (Mixtral at 16384: 618 TFLOP/s, 0.79 of torch.matmul's 8192^3 rate),
// 1.16x at T = 512 on Mixtral; the native op table passed with it. Two warp-specialized all-TMA forms (a block per tile,
// and persistent) passed too but ran 0.81-1.03x this one; removed.
// The tma kernels are thin wrappers of moe_experts_wgmma.cuh's moe_wg_gemm1_block / moe_wg_gemm2_block, which the
// cp.async kernels run too. ptxas (sm_90a): GEMM1 160, GEMM2 154 registers, no spills. The host replay
// test/native/moe_wgmma_layout_check.cu covers the boxes' placement and coordinates.
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

}  // namespace dev
}  // namespace moe
