// Internal (not part of the C ABI of moe_cuda.h): the tensor-core GEMM2 launches of the fused MoE (moe_experts.cu,
// kernels moe_mma_gemm2_kernel / moe_wg_gemm2_kernel, unchanged) for other launchers of this library. Used by
// cuda/gemm.cu's opt-in dense path (MOE_CUDA_GEMM=moe): a dense out = a . b^T is GEMM2 under identity routing (one
// expert whose down weights are b, slot r = row r). Declarations and the tile thresholds; the definitions are in
// moe_experts.cu.
//
// Contract of GEMM2 (moe_experts.cuh, moe_experts_mma.cuh): for every padded row r with offsets[x] <= r <
// offsets[x + 1] and sorted[r] < n_slots, part[sorted[r], n] = act[r, :] . down[x][n, :] (+ down_bias[x][n]), f32,
// n < h; act rows have stride inter (= K), down rows stride inter; rows with sorted[r] >= n_slots (padding) are
// neither read nor written, nor are rows r >= offsets[e]. Preconditions (the caller checks): compute capability >=
// 8.0 (Wgmma: exactly 9.0, the build's sm_90a code); inter % 8 == 0 and inter >= 8; h even (the epilogue writes the
// column pairs n, n + 1 for even n < h); act, every present down[x] 16-byte aligned; n_slots, h, inter <= INT_MAX / 2;
// offsets [e + 1] with offsets[x] multiples of the tiles' BM (moe_gemm2_block) and offsets[e] <= m_tiles * BM.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace moe {
namespace dev {

// Tiles by the expected rows per expert (t * k / e; a dense GEMM's m), for moe_experts.cu and gemm.cu alike.
// Decode tiles when at most this many (one 16-row tile covers nearly every expert; the call is weight-bandwidth
// bound and the narrow N blocks keep every SM streaming).
constexpr int64_t kMoeSmallRowsPerExpert = 8;
// wgmma tiles (BM 128) when at least this many. Measured on an H200 (2026-11-26, bench-moe-cuda): at 64 rows per
// expert (OLMoE, T 512) wgmma took 0.415 ms against mma.sync's 0.351 (one half-full 128-row tile per expert); from
// 256 rows on it was faster (Mixtral T 4096: 6.4 vs 11.1 ms).
constexpr int64_t kMoeWgmmaRowsPerExpert = 128;

// Tile configurations of moe_experts.cu's GEMM2: the decode tiles (BM 16, mma.sync), the large ones (BM 64,
// mma.sync), or the Hopper wgmma ones (BM 128 x BN 256, sm_90a).
enum class MoeGemm2Tiles { MmaSmall, MmaLarge, Wgmma };

// BM of the tiles (the align block: every M tile lies in one expert): 16, 64 or 128.
int moe_gemm2_block(MoeGemm2Tiles tiles);

// Launches GEMM2 with those tiles on stream s over m_tiles M tiles (rows [0, m_tiles * BM) of sorted / act): sets the
// kernel's dynamic shared-memory attribute, then the launch of moe_experts.cu's fused path. sorted [m_tiles * BM],
// offsets [e + 1], down / down_bias: device arrays of e device pointers (down_bias may be null: no biases).
// cudaErrorInvalidValue when the grid does not fit (mma: m_tiles > 65535; wgmma: m_tiles * n tiles > INT_MAX).
// dense_b (optional): a dense call's b, the host's copy of down[0] (identity routing: e = 1, sorted[r] = r, act of
// n_slots rows, no biases). With the Wgmma tiles the kernel then loads both tiles by TMA (moe_wg_gemm2_tma_kernel:
// act rows past n_slots zero-filled, never read past) on the device `device`, unless MOE_CUDA_WG=cpasync or the
// driver cannot encode tensor maps.
cudaError_t moe_launch_gemm2(MoeGemm2Tiles tiles, unsigned m_tiles, const uint16_t* act, const int32_t* sorted,
                             const int32_t* offsets, const void* const* down, const void* const* down_bias,
                             float* part, int n_slots, int e, int h, int inter, cudaStream_t s,
                             const void* dense_b = nullptr, int device = 0);

}  // namespace dev
}  // namespace moe
