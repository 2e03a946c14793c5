// Tensor-core (sm_80+) kernels of moe_cuda_moe_experts (launcher moe_experts.cu; the SIMT reference kernels and the
// routing layout are described in moe_experts.cuh). Same contract as moe_gemm1_swiglu_kernel / moe_gemm2_kernel:
//   moe_mma_gemm1_kernel  act[r, n] = bf16( swiglu( x[sorted[r] / k] . gate_e[n], x[sorted[r] / k] . up_e[n] ) )
//   moe_mma_gemm2_kernel  part[sorted[r], n] = act[r] . down_e[n] (+ bd_e[n]), f32
// for the rows r of an M tile of one expert (moe_align_kernel run with block == BM, so a tile never straddles two
// experts); padding rows (sorted[r] == n_slots) are zero-filled on load and never written.
//
// Design (one mainloop, moe_mma_mainloop, for both GEMMs):
//   * mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, f32 accumulation. A = [BM rows, K] row-major, B = weight
//     rows [n][K] (nn.Linear layout, K contiguous: exactly mma's "col" operand, no transpose anywhere).
//   * K step BK = 64 bf16 = 128 bytes per tile row = 8 chunks of 16 bytes. global -> shared by cp.async.cg 16-byte
//     copies; a chunk is all inside or all outside (K % 8 == 0, a precondition checked by the host); rows outside
//     (padding rows, n >= N) and chunks past K are zero-filled with src-size 0 (nothing is read from global).
//   * STAGES-deep ring of shared tiles (cp.async.commit_group per k tile, wait_group STAGES - 2, one __syncthreads per
//     k tile: the barrier both publishes tile kt and retires the reads of tile kt - 1, whose slot is refilled next).
//   * Shared tile layout [rows][8 chunks], chunk c of row r at byte r * 128 + ((c ^ (r & 7)) * 16) (XOR swizzle): the
//     8 row addresses of one ldmatrix 8x8 matrix (8 consecutive rows, same logical chunk) hit 8 distinct 16-byte
//     bank groups, and a warp's cp.async stores (4 rows x 8 chunks) too: no bank conflicts, no padding.
//   * Stage = A tile [BM][64] then B tile [kBRows][64]; GEMM1 (GATED) stacks gate rows n0..n0+BN-1 and up rows
//     n0..n0+BN-1, so a warp's gate and up accumulators for the same (row, col) sit in the same thread for the
//     SwiGLU epilogue. smem = STAGES * (BM + kBRows) * 128 bytes.
//   * Warps WM x WN; warp (wm, wn) owns rows wm * kWTM + [0, kWTM) and columns wn * kWTN + [0, kWTN) of each B
//     matrix: kMT = kWTM / 16 m16 tiles x kNT = kWTN / 8 n8 tiles (x 2 matrices when GATED).
//   * Fragments (PTX ISA, g = lane / 4, t = lane % 4, two bf16 per .b32, lower k in the lower half):
//       A m16k16: a0 = A[g][2t..2t+1]  a1 = A[g+8][2t..]  a2 = A[g][2t+8..]  a3 = A[g+8][2t+8..]
//         = ldmatrix.x4 of the 8x8 matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
//           (rows 8-15, k 8-15): lane l gives row (l & 15), chunk (l >> 4) of the k16 step.
//       B k16n8 ([n][k] in shared): b0 = B[k=2t..2t+1][n=g]  b1 = B[k=2t+8..][n=g]; one ldmatrix.x4 loads two n8
//         tiles: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15): lane l gives row
//         (l & 7) + 8 (l >> 4), chunk (l >> 3) & 1.
//       D m16n8 f32: d0, d1 = D[g][2t], D[g][2t+1]  d2, d3 = D[g+8][2t], D[g+8][2t+1]
//     (test/native/moe_mma_layout_check.cu replays these index helpers on the host against the PTX layouts.)
//   * Determinism: every output is one accumulator chain over k = 0, 16, 32, ... in order, independent of the tile
//     shape, so the large and the decode variant give bitwise the same value for the same row (no split-K, no atomics).
// Configurations (moe_experts.cu):
//   large   BM 64, GEMM1 BN 64 (+64 up), GEMM2 BN 128; 2 x 2 warps (128 threads), warp tile 32 x 64 accumulators;
//           3 stages: (64 + 128) * 128 * 3 = 72 KiB.
//   decode  BM 16 (align block 16), BN 32 (+32 up) / 32, 1 x 2 warps (64 threads), 6 / 8 stages: 60 / 48 KiB. Many
//           narrow N blocks and deep rings so the whole chip streams the expert weights with many bytes in flight;
//           the A tile is mostly zero-fill (no traffic). Registers (ptxas, sm_90a): large 168 / 164 (3 blocks per
//           SM, __launch_bounds__ min blocks), decode 108 / 77; no spills. GEMM1 decode tiles of BN 16 (one warp, 8
//           stages, twice the blocks) were measured on an H100 (2026-11-26): no faster at T = 1 (Qwen3 0.0615 ms
//           against 0.0613).
#pragma once
#include <cstdint>

#include "dtype.cuh"
#include "moe_experts.cuh"

namespace moe {
namespace dev {

constexpr int kMoeMmaBK = 64;  // bf16 per tile row: 128 bytes, 8 chunks of 16 bytes

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a [rows][64] bf16 shared tile (XOR swizzle).
__host__ __device__ __forceinline__ uint32_t moe_mma_swz(int row, int chunk) {
  return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

template <int BM_, int BN_, int WM_, int WN_, int STAGES_, bool GATED_, int MIN_BLOCKS_>
struct MoeMmaCfg {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, STAGES = STAGES_, kMinBlocks = MIN_BLOCKS_;
  static constexpr bool GATED = GATED_;
  static constexpr int kThreads = WM * WN * 32;
  static constexpr int kMats = GATED ? 2 : 1;      // B matrices (gate, up) or (down)
  static constexpr int kBRows = kMats * BN;        // B tile rows in shared memory
  static constexpr int kWTM = BM / WM, kWTN = BN / WN;
  static constexpr int kMT = kWTM / 16, kNT = kWTN / 8;
  static constexpr int kAIters = BM * 8 / kThreads;      // 16-byte A chunks per thread per k tile
  static constexpr int kBIters = kBRows * 8 / kThreads;  // 16-byte B chunks per thread per k tile
  static constexpr int kABytes = BM * 128, kStageBytes = (BM + kBRows) * 128;
  static constexpr int kSmem = STAGES * kStageBytes;
  static_assert(BM % (16 * WM) == 0 && BN % (16 * WN) == 0, "warp tile: m16 tiles, an even number of n8 tiles");
  static_assert((BM * 8) % kThreads == 0 && (kBRows * 8) % kThreads == 0, "whole chunks per thread");
  static_assert(STAGES >= 2, "pipeline depth");

  // Copy mapping: chunk i of thread tid is row load_row(tid, i), chunk load_chunk(tid) (8 threads per 128-byte row,
  // coalesced; the chunk column of a thread is the same for every i).
  __host__ __device__ static int load_row(int tid, int i) { return (tid >> 3) + i * (kThreads >> 3); }
  __host__ __device__ static int load_chunk(int tid) { return tid & 7; }
  // ldmatrix.x4 address (byte offset in the A tile) of lane `lane` for m16 tile i of warp row wm, k16 step kk (0..3).
  __host__ __device__ static uint32_t a_ldsm(int wm, int i, int kk, int lane) {
    return moe_mma_swz(wm * kWTM + i * 16 + (lane & 15), 2 * kk + (lane >> 4));
  }
  // ldmatrix.x4 address (byte offset in the B tile) of lane `lane` for n8 tiles 2 jj, 2 jj + 1 of matrix mat, warp
  // column wn, k16 step kk.
  __host__ __device__ static uint32_t b_ldsm(int mat, int wn, int jj, int kk, int lane) {
    return moe_mma_swz(mat * BN + wn * kWTN + jj * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1));
  }
  // Tile row / column of accumulator acc[..][i][j][2 hh + c] of lane `lane` (the D layout above).
  __host__ __device__ static int acc_row(int wm, int i, int hh, int lane) { return wm * kWTM + i * 16 + (lane >> 2) + 8 * hh; }
  __host__ __device__ static int acc_col(int wn, int j, int c, int lane) { return wn * kWTN + j * 8 + 2 * (lane & 3) + c; }
};

// ---- PTX wrappers (sm_80+; the launcher never selects these kernels below compute capability 8.0) ----------------

__device__ __forceinline__ void moe_cp_async16(uint32_t dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const int bytes = valid ? 16 : 0;  // 0: the 16 bytes are zero-filled, src is not read
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void moe_cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void moe_cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void moe_ldsm_x4(uint32_t r[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#else
  __trap();
#endif
}
// d += a (m16 x k16, row) * b (k16 x n8, col), f32 accumulators (fragment layouts in the header comment).
__device__ __forceinline__ void moe_mma_16816(float d[4], const uint32_t a[4], const uint32_t b0, const uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// ---- mainloop ------------------------------------------------------------------------------------------------
// acc[mat][i][j][4] += A[BM, K] . B_mat[BN, K]^T for this warp's fragments. ap[i] / bp[i]: this thread's copy rows
// (load_row(tid, i)), already offset by its chunk column (load_chunk(tid) * 8 elements), null for a zero row.
// fallback: any valid global address (the src operand of zero-filled copies). K % 8 == 0.
template <class C>
__device__ __forceinline__ void moe_mma_mainloop(float (&acc)[C::kMats][C::kMT][C::kNT][4],
                                                 const uint16_t* const (&ap)[C::kAIters],
                                                 const uint16_t* const (&bp)[C::kBIters], const uint16_t* fallback,
                                                 int K, uint32_t smem) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / C::WN, wn = warp % C::WN;
  const int chunk = C::load_chunk(tid);
  const int ktiles = (K + kMoeMmaBK - 1) / kMoeMmaBK;

  auto load_tile = [&](int kt, int stage) {
    const int kcol = kt * kMoeMmaBK;
    const bool kin = kcol + chunk * 8 < K;  // the whole chunk (K % 8 == 0)
    const uint32_t sa = smem + static_cast<uint32_t>(stage * C::kStageBytes);
    const uint32_t sb = sa + static_cast<uint32_t>(C::kABytes);
#pragma unroll
    for (int i = 0; i < C::kAIters; ++i) {
      const bool v = kin && ap[i] != nullptr;
      moe_cp_async16(sa + moe_mma_swz(C::load_row(tid, i), chunk), v ? ap[i] + kcol : fallback, v);
    }
#pragma unroll
    for (int i = 0; i < C::kBIters; ++i) {
      const bool v = kin && bp[i] != nullptr;
      moe_cp_async16(sb + moe_mma_swz(C::load_row(tid, i), chunk), v ? bp[i] + kcol : fallback, v);
    }
  };

  // Prologue: tiles 0 .. STAGES-2 (a group is committed even when empty, so the group count stays kt-aligned).
#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < ktiles) load_tile(s, s);
    moe_cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    // Committed so far: STAGES - 1 + kt groups (group q = tile q); at most STAGES - 2 pending => tile kt landed
    // (this thread's copies); the barrier makes every thread's copies visible and ends all reads of tile kt - 1.
    moe_cp_async_wait<C::STAGES - 2>();
    __syncthreads();
    {
      const int nk = kt + C::STAGES - 1;  // refills the slot of tile kt - 1
      if (nk < ktiles) load_tile(nk, nk % C::STAGES);
      moe_cp_async_commit();
    }
    const uint32_t sa = smem + static_cast<uint32_t>((kt % C::STAGES) * C::kStageBytes);
    const uint32_t sb = sa + static_cast<uint32_t>(C::kABytes);
#pragma unroll
    for (int kk = 0; kk < kMoeMmaBK / 16; ++kk) {
      uint32_t af[C::kMT][4];
#pragma unroll
      for (int i = 0; i < C::kMT; ++i) moe_ldsm_x4(af[i], sa + C::a_ldsm(wm, i, kk, lane));
#pragma unroll
      for (int m = 0; m < C::kMats; ++m) {
#pragma unroll
        for (int jj = 0; jj < C::kNT / 2; ++jj) {
          uint32_t bf[4];  // b0, b1 of n8 tile 2 jj, then of n8 tile 2 jj + 1
          moe_ldsm_x4(bf, sb + C::b_ldsm(m, wn, jj, kk, lane));
#pragma unroll
          for (int i = 0; i < C::kMT; ++i) {
            moe_mma_16816(acc[m][i][2 * jj], af[i], bf[0], bf[1]);
            moe_mma_16816(acc[m][i][2 * jj + 1], af[i], bf[2], bf[3]);
          }
        }
      }
    }
  }
  moe_cp_async_wait<0>();  // only empty groups can be pending here; no shared memory is reused after this
}

extern __shared__ __align__(128) uint8_t moe_mma_smem[];

// GEMM1 + SwiGLU. Arguments as moe_gemm1_swiglu_kernel (moe_experts.cuh); h % 8 == 0, inter % 8 == 0, x and the
// gate/up rows 16-byte aligned (host checks). grid: (ceil(inter / BN), capacity / BM), block: C::kThreads, dynamic
// shared memory C::kSmem. act [capacity, inter] bf16: rows of real slots written, padding rows untouched.
template <class C>
static __global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
    moe_mma_gemm1_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ sorted,
                         const int32_t* __restrict__ offsets, const void* const* __restrict__ gate,
                         const void* const* __restrict__ up, const void* const* __restrict__ gate_bias,
                         const void* const* __restrict__ up_bias, uint16_t* __restrict__ act, int n_slots, int k,
                         int e, int h, int inter, int act_kind, float alpha, float limit) {
  static_assert(C::GATED, "GEMM1 stacks gate and up");
  __shared__ int s_slot[C::BM];
  const int r0 = blockIdx.y * C::BM, n0 = blockIdx.x * C::BN;
  const int ex = moe_expert_of_row(offsets, e, r0);
  if (ex < 0) return;
  const uint16_t* wg = static_cast<const uint16_t*>(gate[ex]);
  const uint16_t* wu = static_cast<const uint16_t*>(up[ex]);
  if (wg == nullptr || wu == nullptr) return;  // absent: its slots are skipped by the combine
  const int tid = threadIdx.x;
  for (int r = tid; r < C::BM; r += C::kThreads) s_slot[r] = sorted[r0 + r];
  __syncthreads();

  const int chunk = C::load_chunk(tid);
  const uint16_t* ap[C::kAIters];
#pragma unroll
  for (int i = 0; i < C::kAIters; ++i) {
    const int s = s_slot[C::load_row(tid, i)];
    ap[i] = s < n_slots ? x + static_cast<int64_t>(s / k) * h + chunk * 8 : nullptr;
  }
  const uint16_t* bp[C::kBIters];
#pragma unroll
  for (int i = 0; i < C::kBIters; ++i) {
    const int row = C::load_row(tid, i);
    const bool is_up = row >= C::BN;
    const int n = n0 + row - (is_up ? C::BN : 0);
    bp[i] = n < inter ? (is_up ? wu : wg) + static_cast<int64_t>(n) * h + chunk * 8 : nullptr;
  }

  float acc[C::kMats][C::kMT][C::kNT][4];
#pragma unroll
  for (int m = 0; m < C::kMats; ++m)
#pragma unroll
    for (int i = 0; i < C::kMT; ++i)
#pragma unroll
      for (int j = 0; j < C::kNT; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[m][i][j][c] = 0.0f;
  moe_mma_mainloop<C>(acc, ap, bp, x, h, static_cast<uint32_t>(__cvta_generic_to_shared(moe_mma_smem)));

  const float* bg = gate_bias != nullptr ? static_cast<const float*>(gate_bias[ex]) : nullptr;  // [inter] f32
  const float* bu = up_bias != nullptr ? static_cast<const float*>(up_bias[ex]) : nullptr;      // [inter] f32
  const bool plain = act_kind == 0 && bg == nullptr;  // the SIMT kernel's expressions, unchanged
  const int lane = tid & 31, warp = tid >> 5, wm = warp / C::WN, wn = warp % C::WN;
#pragma unroll
  for (int i = 0; i < C::kMT; ++i) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int r = C::acc_row(wm, i, hh, lane);
      if (s_slot[r] >= n_slots) continue;  // padding row
      uint16_t* orow = act + static_cast<int64_t>(r0 + r) * inter;
#pragma unroll
      for (int j = 0; j < C::kNT; ++j) {
        const int n = n0 + C::acc_col(wn, j, 0, lane);  // even; n < inter => n + 1 < inter (inter % 8 == 0)
        if (n >= inter) continue;
        uint32_t packed = 0;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float v = moe_gemm1_act(acc[0][i][j][2 * hh + c], acc[1][i][j][2 * hh + c], plain, bg, bu, n + c,
                                        act_kind, alpha, limit);
          packed |= static_cast<uint32_t>(f32_to_bf16(v)) << (16 * c);
        }
        *reinterpret_cast<uint32_t*>(orow + n) = packed;  // 4-byte aligned: act base 256-aligned, inter and n even
      }
    }
  }
}

// GEMM2. Arguments as moe_gemm2_kernel (moe_experts.cuh); h % 8 == 0, inter % 8 == 0, down rows 16-byte aligned.
// grid: (ceil(h / BN), capacity / BM), block: C::kThreads, dynamic shared memory C::kSmem.
template <class C>
static __global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
    moe_mma_gemm2_kernel(const uint16_t* __restrict__ act, const int32_t* __restrict__ sorted,
                         const int32_t* __restrict__ offsets, const void* const* __restrict__ down,
                         const void* const* __restrict__ down_bias, float* __restrict__ part, int n_slots, int e,
                         int h, int inter) {
  static_assert(!C::GATED, "GEMM2 has one B matrix");
  __shared__ int s_slot[C::BM];
  const int r0 = blockIdx.y * C::BM, n0 = blockIdx.x * C::BN;
  const int ex = moe_expert_of_row(offsets, e, r0);
  if (ex < 0) return;
  const uint16_t* wd = static_cast<const uint16_t*>(down[ex]);
  if (wd == nullptr) return;
  const int tid = threadIdx.x;
  for (int r = tid; r < C::BM; r += C::kThreads) s_slot[r] = sorted[r0 + r];
  __syncthreads();

  const int chunk = C::load_chunk(tid);
  const uint16_t* ap[C::kAIters];
#pragma unroll
  for (int i = 0; i < C::kAIters; ++i) {
    const int row = C::load_row(tid, i);
    ap[i] = s_slot[row] < n_slots ? act + static_cast<int64_t>(r0 + row) * inter + chunk * 8 : nullptr;
  }
  const uint16_t* bp[C::kBIters];
#pragma unroll
  for (int i = 0; i < C::kBIters; ++i) {
    const int n = n0 + C::load_row(tid, i);
    bp[i] = n < h ? wd + static_cast<int64_t>(n) * inter + chunk * 8 : nullptr;
  }

  float acc[C::kMats][C::kMT][C::kNT][4];
#pragma unroll
  for (int i = 0; i < C::kMT; ++i)
#pragma unroll
    for (int j = 0; j < C::kNT; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[0][i][j][c] = 0.0f;
  moe_mma_mainloop<C>(acc, ap, bp, wd, inter, static_cast<uint32_t>(__cvta_generic_to_shared(moe_mma_smem)));

  const float* bd = down_bias != nullptr ? static_cast<const float*>(down_bias[ex]) : nullptr;  // [h] f32
  const int lane = tid & 31, warp = tid >> 5, wm = warp / C::WN, wn = warp % C::WN;
#pragma unroll
  for (int i = 0; i < C::kMT; ++i) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int s = s_slot[C::acc_row(wm, i, hh, lane)];
      if (s >= n_slots) continue;  // padding row
      float* orow = part + static_cast<int64_t>(s) * h;
#pragma unroll
      for (int j = 0; j < C::kNT; ++j) {
        const int n = n0 + C::acc_col(wn, j, 0, lane);  // even; n < h => n + 1 < h (h % 8 == 0)
        if (n >= h) continue;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float v = acc[0][i][j][2 * hh + c];
          orow[n + c] = bd == nullptr ? v : v + bd[n + c];
        }
      }
    }
  }
}

// The configurations the launcher instantiates (see the header comment).
using MoeMmaG1Large = MoeMmaCfg<64, 64, 2, 2, 3, true, 3>;
using MoeMmaG2Large = MoeMmaCfg<64, 128, 2, 2, 3, false, 3>;
using MoeMmaG1Small = MoeMmaCfg<16, 32, 1, 2, 6, true, 1>;
using MoeMmaG2Small = MoeMmaCfg<16, 32, 1, 2, 8, false, 1>;
constexpr int kMoeMmaSmallBM = 16;
static_assert(MoeMmaG1Large::BM == kMoeBM && MoeMmaG2Large::BM == kMoeBM, "large tiles use the SIMT align block");
static_assert(MoeMmaG1Small::BM == kMoeMmaSmallBM && MoeMmaG2Small::BM == kMoeMmaSmallBM, "decode align block");

}  // namespace dev
}  // namespace moe
