// Kernels of moe_cuda_gemm: out[m, n] = sum_k a[m, k] * b[n, k] (b in nn.Linear [out, in] layout, i.e. y = x W^T),
// f32 accumulation, out f32 or bf16 (round to nearest even, dtype.cuh). The simple dense GEMM of the foundation;
// the tensor-core grouped GEMM (wgmma/TMA) of the fused-MoE issue replaces it on the hot path.
//
// Two kernels, both bounds-checked for any m, n, k and row strides:
//   gemm_simt_kernel  CUDA cores, any ab dtype (f32 | bf16): 64x64 block tile, k step 16, 256 threads, each a 4x4
//                     micro-tile at stride 16 (conflict-free shared reads). Exact f32 FMAs: used for f32 inputs.
//   gemm_mma_kernel   bf16 inputs on sm_80+: mma.sync.m16n8k16 (bf16 x bf16 -> f32). 128x128 block tile, k step
//                     32, 8 warps as 2 (m) x 4 (n), each warp 64x32 = 4 x 4 mma tiles; register-staged double
//                     buffering of shared memory (next tile's global loads are in flight during the current
//                     tile's mma). Fragments are read from shared memory with plain 32-bit loads (no ldmatrix):
//                     with a row pitch of 40 bf16 (20 words) the 32 lanes of a fragment load hit 32 distinct banks.
#pragma once
#include <cstdint>

#include "dtype.cuh"

namespace moe {
namespace dev {

// ------------------------------------------------------------------------------------------------------------
// CUDA-core kernel

constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 16, kSimtThreads = 256;

template <int AB>
__device__ __forceinline__ float load_ab(const typename Elem<AB>::T* p) {
  return Elem<AB>::load(*p);
}

// a: [m, k] AB (row stride lda), b: [n, k] AB (row stride ldb), out: [m, n] OUT (row stride ldc).
// grid: (ceil(m / 64), ceil(n / 64)), block: 256.
template <int AB, int OUT>
__global__ void __launch_bounds__(kSimtThreads)
    gemm_simt_kernel(const typename Elem<AB>::T* __restrict__ a, const typename Elem<AB>::T* __restrict__ b,
                     typename Elem<OUT>::T* __restrict__ out, int m, int n, int k, int64_t lda, int64_t ldb,
                     int64_t ldc) {
  // k-major tiles so a thread's 4 rows (or columns) for one k are 4 reads at stride 16 from one smem row.
  __shared__ float As[kSimtBK][kSimtBM + 4];  // [k][m] f32
  __shared__ float Bs[kSimtBK][kSimtBN + 4];  // [k][n] f32

  const int tid = threadIdx.x;
  const int tx = tid % 16;  // columns tx + 16 * j
  const int ty = tid / 16;  // rows ty + 16 * i
  const int m0 = blockIdx.x * kSimtBM;
  const int n0 = blockIdx.y * kSimtBN;

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;

  for (int k0 = 0; k0 < k; k0 += kSimtBK) {
    // Each tile is 64 x 16 = 1024 elements: 4 per thread; consecutive threads read consecutive k (coalesced).
#pragma unroll
    for (int l = 0; l < 4; l++) {
      const int idx = tid + l * kSimtThreads;
      const int r = idx / kSimtBK;  // 0..63
      const int c = idx % kSimtBK;  // 0..15
      const int gk = k0 + c;
      const int gm = m0 + r;
      const int gn = n0 + r;
      As[c][r] = (gm < m && gk < k) ? load_ab<AB>(a + static_cast<int64_t>(gm) * lda + gk) : 0.0f;
      Bs[c][r] = (gn < n && gk < k) ? load_ab<AB>(b + static_cast<int64_t>(gn) * ldb + gk) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kSimtBK; kk++) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; i++) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; j++) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; i++) {
    const int gm = m0 + ty + 16 * i;
    if (gm >= m) continue;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int gn = n0 + tx + 16 * j;
      if (gn < n) out[static_cast<int64_t>(gm) * ldc + gn] = Elem<OUT>::store(acc[i][j]);
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Tensor-core kernel (bf16 inputs)

constexpr int kMmaBM = 128, kMmaBN = 128, kMmaBK = 32, kMmaThreads = 256;
constexpr int kMmaPitch = kMmaBK + 8;  // bf16 per smem row: 80 bytes (16-byte aligned rows, conflict-free frags)
constexpr int kMmaChunks = kMmaBM * kMmaBK / 8 / kMmaThreads;  // 16-byte chunks per thread per tile: 2

// d += a (16x16 row-major bf16) * b (16x8 "col" = [n][k] bf16), f32 accumulators. PTX ISA fragment layout
// (g = lane / 4, t = lane % 4; each .b32 register holds 2 bf16, the lower k index in the lower half):
//   a0 = A[g][2t..2t+1]  a1 = A[g+8][2t..2t+1]  a2 = A[g][2t+8..2t+9]  a3 = A[g+8][2t+8..2t+9]
//   b0 = B[k=2t..2t+1][n=g]  b1 = B[k=2t+8..2t+9][n=g]
//   d0, d1 = D[g][2t], D[g][2t+1]  d2, d3 = D[g+8][2t], D[g+8][2t+1]
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // never launched below sm_80 (the launcher checks the compute capability)
#endif
}

// Loads one 16-byte chunk (8 bf16 along k) of row `row` at column `col` of a [rows, k] matrix with row stride
// ld, zero-filling past the edges. Vector load only when the whole chunk is inside and 16-byte aligned.
__device__ __forceinline__ uint4 load_chunk_bf16(const uint16_t* __restrict__ base, int rows, int k, int64_t ld,
                                                 int row, int col) {
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (row >= rows || col >= k) return v;
  const uint16_t* p = base + static_cast<int64_t>(row) * ld + col;
  if (col + 8 <= k && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) return *reinterpret_cast<const uint4*>(p);
  uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int e = 0; e < 8; e++) {
    if (col + e < k) w[e / 2] |= static_cast<uint32_t>(p[e]) << (16 * (e % 2));
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// a: [m, k] bf16 (row stride lda), b: [n, k] bf16 (row stride ldb), out: [m, n] OUT (row stride ldc).
// grid: (ceil(m / 128), ceil(n / 128)), block: 256.
template <int OUT>
__global__ void __launch_bounds__(kMmaThreads)
    gemm_mma_kernel(const uint16_t* __restrict__ a, const uint16_t* __restrict__ b,
                    typename Elem<OUT>::T* __restrict__ out, int m, int n, int k, int64_t lda, int64_t ldb,
                    int64_t ldc) {
  // [buffer][row][k] bf16; 2 x 2 x 128 x 40 x 2 bytes = 40 KiB (static shared memory limit is 48 KiB).
  __shared__ __align__(16) uint16_t As[2][kMmaBM][kMmaPitch];
  __shared__ __align__(16) uint16_t Bs[2][kMmaBN][kMmaPitch];

  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int warp_m = warp / 4;  // 0..1: rows warp_m * 64
  const int warp_n = warp % 4;  // 0..3: cols warp_n * 32
  const int g = lane / 4;
  const int t = lane % 4;
  const int m0 = blockIdx.x * kMmaBM;
  const int n0 = blockIdx.y * kMmaBN;

  float acc[4][4][4];  // [m16 tile][n8 tile][fragment]
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int r = 0; r < 4; r++) acc[i][j][r] = 0.0f;

  // Chunk c of a tile (c = tid + l * 256, l < 2): row c / 4 (0..127), k column (c % 4) * 8 (0..24).
  uint4 ra[kMmaChunks], rb[kMmaChunks];
  auto load_tile = [&](int k0) {
#pragma unroll
    for (int l = 0; l < kMmaChunks; l++) {
      const int c = tid + l * kMmaThreads;
      const int row = c / 4;
      const int col = k0 + (c % 4) * 8;
      ra[l] = load_chunk_bf16(a, m, k, lda, m0 + row, col);
      rb[l] = load_chunk_bf16(b, n, k, ldb, n0 + row, col);
    }
  };
  auto store_tile = [&](int buf) {
#pragma unroll
    for (int l = 0; l < kMmaChunks; l++) {
      const int c = tid + l * kMmaThreads;
      const int row = c / 4;
      const int col = (c % 4) * 8;
      *reinterpret_cast<uint4*>(&As[buf][row][col]) = ra[l];
      *reinterpret_cast<uint4*>(&Bs[buf][row][col]) = rb[l];
    }
  };

  const int ktiles = (k + kMmaBK - 1) / kMmaBK;
  if (ktiles > 0) {
    load_tile(0);
    store_tile(0);
  }
  __syncthreads();

  for (int kt = 0; kt < ktiles; kt++) {
    const int cur = kt & 1;
    const bool has_next = kt + 1 < ktiles;
    if (has_next) load_tile((kt + 1) * kMmaBK);  // global loads in flight during the mma below

#pragma unroll
    for (int kk = 0; kk < kMmaBK; kk += 16) {
      uint32_t af[4][4], bfr[4][2];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const int r = warp_m * 64 + i * 16 + g;
        af[i][0] = *reinterpret_cast<const uint32_t*>(&As[cur][r][kk + 2 * t]);
        af[i][1] = *reinterpret_cast<const uint32_t*>(&As[cur][r + 8][kk + 2 * t]);
        af[i][2] = *reinterpret_cast<const uint32_t*>(&As[cur][r][kk + 2 * t + 8]);
        af[i][3] = *reinterpret_cast<const uint32_t*>(&As[cur][r + 8][kk + 2 * t + 8]);
      }
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int c = warp_n * 32 + j * 8 + g;
        bfr[j][0] = *reinterpret_cast<const uint32_t*>(&Bs[cur][c][kk + 2 * t]);
        bfr[j][1] = *reinterpret_cast<const uint32_t*>(&Bs[cur][c][kk + 2 * t + 8]);
      }
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) mma_bf16_16816(acc[i][j], af[i], bfr[j]);
    }

    // The other buffer was last read in iteration kt - 1, and every warp has passed that iteration's barrier.
    if (has_next) store_tile(cur ^ 1);
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; i++) {
#pragma unroll
    for (int h = 0; h < 2; h++) {  // h = 0: row g (d0, d1); h = 1: row g + 8 (d2, d3)
      const int gm = m0 + warp_m * 64 + i * 16 + g + 8 * h;
      if (gm >= m) continue;
#pragma unroll
      for (int j = 0; j < 4; j++) {
#pragma unroll
        for (int e = 0; e < 2; e++) {
          const int gn = n0 + warp_n * 32 + j * 8 + 2 * t + e;
          if (gn < n) out[static_cast<int64_t>(gm) * ldc + gn] = Elem<OUT>::store(acc[i][j][2 * h + e]);
        }
      }
    }
  }
}

}  // namespace dev
}  // namespace moe
