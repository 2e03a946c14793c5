// Launcher of moe_cuda_gemm (C ABI in moe_cuda.h): checks dtypes and sizes, picks the tensor-core kernel for bf16
// inputs on sm_80+ and the CUDA-core kernel otherwise (gemm.cuh). k == 0 runs the same kernels (no k tiles, so
// they write zeros); m == 0 or n == 0 is a no-op. No host synchronisation; errors come back as cudaError_t.
// bf16 inputs also have the MoE path: the fused MoE's GEMM2 kernels (moe_gemm2_launch.cuh, launched by
// moe_experts.cu, kernels unchanged) under identity routing: one expert (e = 1) whose down weights are b,
// n_slots = m, sorted[r] = r for r < m and the sentinel m for the padding rows up to the capacity (m rounded up to
// the tiles' BM), offsets = {0, capacity}, act = a, part = out (f32; a bf16 out gets an f32 scratch [m, n] and
// moe_cuda_convert's rounding after); the wgmma tiles load a and b by TMA (moe_gemm2_launch.cuh's dense_b). Only when: lda == k, ldb == k, ldc == n (the kernels' fixed row strides),
// k % 8 == 0 and k > 0, n even (their epilogue writes column pairs), a and b 16-byte aligned, compute capability
// >= 8, m, n, k <= INT_MAX / 2 and the grid fits. Tiles by m: m <= 64 the decode tiles (BM 16), m >= 128 on
// compute capability 9.0 the wgmma ones (BM 128, out 8-byte aligned, moe_experts.cu's threshold with e = 1), else
// the mma.sync large ones (BM 64). It runs by default where it was measured faster (moe_gemm_pays), else the kernels of
// gemm.cuh. MOE_CUDA_GEMM: simt forces the CUDA-core kernel for bf16 too (to tell a tensor-core bug from anything
// else), mma the mma.sync kernel of gemm.cuh, moe the MoE path wherever it applies. Its routing arrays (and the f32
// scratch) are one cudaMallocAsync block (scratch.cuh), freed with cudaFreeAsync on the same stream: stream-ordered,
// no host synchronisation.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "gemm.cuh"
#include "moe_cuda.h"
#include "moe_gemm2_launch.cuh"
#include "scratch.cuh"

namespace {

using namespace moe::dev;

enum class GemmForce { None, Simt, Mma, Moe };
GemmForce gemm_force() {
  const char* v = std::getenv("MOE_CUDA_GEMM");
  if (v == nullptr) return GemmForce::None;
  if (std::strcmp(v, "simt") == 0) return GemmForce::Simt;
  if (std::strcmp(v, "mma") == 0) return GemmForce::Mma;
  if (std::strcmp(v, "moe") == 0) return GemmForce::Moe;
  return GemmForce::None;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }


// Identity routing of the MOE_CUDA_GEMM=moe path (header): sorted[r] = r for r < m, the sentinel m for m <= r <
// capacity; offsets = {0, capacity}; table[0] = b (the one expert's down pointer). grid: ceil(capacity / 256), block
// 256.
__global__ void gemm_identity_routing_kernel(int32_t* __restrict__ sorted, int32_t* __restrict__ offsets,
                                             const void** __restrict__ table, const void* b, int m, int capacity) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < capacity) sorted[i] = i < m ? static_cast<int32_t>(i) : m;
  if (i == 0) {
    offsets[0] = 0;
    offsets[1] = capacity;
    table[0] = b;
  }
}

// Tiles of the MOE_CUDA_GEMM=moe path for this call on a device of compute capability major.minor, or false when
// its preconditions (header) do not hold. ab bf16 and m, n >= 1 were checked by the caller; out: the f32 output
// the kernels write (null: a scratch of their own, aligned).
bool moe_gemm_tiles(int major, int minor, const void* a, const void* b, const void* out, int64_t m, int64_t n,
                    int64_t k, int64_t lda, int64_t ldb, int64_t ldc, MoeGemm2Tiles* tiles) {
  if (major < 8) return false;
  if (lda != k || ldb != k || ldc != n || k <= 0 || k % 8 != 0 || n % 2 != 0) return false;
  if (!aligned16(a) || !aligned16(b)) return false;
  if (m > INT_MAX / 2 || n > INT_MAX / 2 || k > INT_MAX / 2) return false;
  // Decode tiles (BM 16) up to m = 64: they stream b once per 16 rows (through L2) with many blocks in flight.
  // Measured on an H100 (2026-11-26): m = 32, n = 14336, k = 4096 bf16 -> bf16 at 38.6 TFLOP/s against 28.7 for
  // gemm.cuh's mma kernel; m <= 8 is the MoE launcher's own decode threshold (kMoeSmallRowsPerExpert).
  constexpr int64_t small_m = 64;
  if (m <= small_m) {
    *tiles = MoeGemm2Tiles::MmaSmall;
    return true;
  }
  // sm_90a code: exactly compute capability 9.0; its epilogue stores float2 (out 8-byte aligned).
  if (major == 9 && minor == 0 && m >= kMoeWgmmaRowsPerExpert && (reinterpret_cast<uintptr_t>(out) & 7u) == 0) {
    // (Its 1D grid, m tiles x n tiles of 256, exceeds int only past 2^46 outputs: moe_launch_gemm2 checks it.)
    const int64_t bm = moe_gemm2_block(MoeGemm2Tiles::Wgmma);
    if ((m + bm - 1) / bm * bm <= INT_MAX / 2) {
      *tiles = MoeGemm2Tiles::Wgmma;
      return true;
    }
  }
  const int64_t bm = moe_gemm2_block(MoeGemm2Tiles::MmaLarge);
  const int64_t m_tiles = (m + bm - 1) / bm;
  if (m_tiles > 65535 || m_tiles * bm > INT_MAX / 2) return false;  // grid.y: the existing kernel takes it
  *tiles = MoeGemm2Tiles::MmaLarge;
  return true;
}

// Whether the MoE path runs by default, against gemm.cuh's mma kernel: the decode tiles (m <= 64; H100, 2026-11-26,
// bench/results/native-kernels-gpu-2026-11-26-h100*.json: 2.2x at m = 1, n = 14336, k = 4096 to f32, 1.35x at m = 32
// to bf16) and wgmma tiles from kMoeGemmWgmmaMinTiles (m tiles x n tiles of 128 x 256) on. With TMA loads, on an
// H200 (2026-11-27, bench/results/native-kernels-gpu-2026-11-27-h200.json): 1.8x at 1024^3 to f32 (32 tiles, the
// fewest measured; 1.5x to bf16), 1.28x at 4096^3 and 1.18x at m = 256, n = 32000, k = 4096 over the cp.async form,
// which itself beat the mma kernel there. Fewer tiles: not measured, the mma kernel. The mma.sync large tiles (m
// 65-127) were not measured against it.
constexpr int64_t kMoeGemmMaxScratch = int64_t{512} << 20;  // bytes of f32 scratch a default bf16-out call may take
constexpr int64_t kMoeGemmWgmmaMinTiles = 32;

bool moe_gemm_pays(MoeGemm2Tiles tiles, int64_t m, int64_t n) {
  if (tiles == MoeGemm2Tiles::MmaSmall) return true;
  if (tiles != MoeGemm2Tiles::Wgmma) return false;
  const int64_t bm = moe_gemm2_block(tiles);
  return (m + bm - 1) / bm * ((n + 255) / 256) >= kMoeGemmWgmmaMinTiles;
}

// out[m, n] = a[m, k] . b[n, k]^T (bf16, rows of k, out rows of n; out f32, or bf16 through an f32 scratch and
// moe_cuda_convert) through GEMM2 with identity routing.
cudaError_t launch_moe_gemm(int device, MoeGemm2Tiles tiles, const void* a, const void* b, void* out, bool bf16_out,
                            int m, int n, int k, cudaStream_t s) {
  const int64_t bm = moe_gemm2_block(tiles);
  const int64_t capacity = (m + bm - 1) / bm * bm;
  const size_t b_table = scratch_bytes(sizeof(void*)), b_offsets = scratch_bytes(2 * sizeof(int32_t));
  const size_t b_sorted = scratch_bytes(static_cast<size_t>(capacity) * sizeof(int32_t));
  const size_t b_f32 = bf16_out ? scratch_bytes(static_cast<size_t>(m) * static_cast<size_t>(n) * sizeof(float)) : 0;
  char* base = nullptr;
  cudaError_t err = scratch_alloc(reinterpret_cast<void**>(&base), b_table + b_offsets + b_sorted + b_f32, device, s);
  if (err != cudaSuccess) return err;
  const void** d_table = reinterpret_cast<const void**>(base);
  int32_t* d_offsets = reinterpret_cast<int32_t*>(base + b_table);
  int32_t* d_sorted = reinterpret_cast<int32_t*>(base + b_table + b_offsets);
  float* d_out = bf16_out ? reinterpret_cast<float*>(base + b_table + b_offsets + b_sorted) : static_cast<float*>(out);
  const int ci = static_cast<int>(capacity);
  gemm_identity_routing_kernel<<<static_cast<unsigned>((capacity + 255) / 256), 256, 0, s>>>(d_sorted, d_offsets,
                                                                                              d_table, b, m, ci);
  err = cudaGetLastError();
  if (err == cudaSuccess) {
    err = moe_launch_gemm2(tiles, static_cast<unsigned>(capacity / bm), static_cast<const uint16_t*>(a), d_sorted,
                           d_offsets, d_table, nullptr, d_out, m, 1, n, k, s, b, device);
  }
  if (err == cudaSuccess && bf16_out) {
    err = static_cast<cudaError_t>(moe_cuda_convert(device, d_out, kF32, out, kBF16,
                                                    static_cast<size_t>(m) * static_cast<size_t>(n), s));
  }
  const cudaError_t ferr = cudaFreeAsync(base, s);
  return err != cudaSuccess ? err : ferr;
}

template <int AB, int OUT>
cudaError_t launch_simt(const void* a, const void* b, void* out, int m, int n, int k, int64_t lda, int64_t ldb,
                        int64_t ldc, cudaStream_t stream) {
  const unsigned gx = static_cast<unsigned>((m + kSimtBM - 1) / kSimtBM);
  const unsigned gy = static_cast<unsigned>((n + kSimtBN - 1) / kSimtBN);
  if (gy > 65535u) return cudaErrorInvalidValue;
  using TAB = typename Elem<AB>::T;
  gemm_simt_kernel<AB, OUT><<<dim3(gx, gy), kSimtThreads, 0, stream>>>(
      static_cast<const TAB*>(a), static_cast<const TAB*>(b), static_cast<typename Elem<OUT>::T*>(out), m, n, k,
      lda, ldb, ldc);
  return cudaGetLastError();
}

template <int OUT>
cudaError_t launch_mma(const void* a, const void* b, void* out, int m, int n, int k, int64_t lda, int64_t ldb,
                       int64_t ldc, cudaStream_t stream) {
  const unsigned gx = static_cast<unsigned>((m + kMmaBM - 1) / kMmaBM);
  const unsigned gy = static_cast<unsigned>((n + kMmaBN - 1) / kMmaBN);
  if (gy > 65535u) return cudaErrorInvalidValue;
  gemm_mma_kernel<OUT><<<dim3(gx, gy), kMmaThreads, 0, stream>>>(static_cast<const uint16_t*>(a),
                                                                 static_cast<const uint16_t*>(b),
                                                                 static_cast<typename Elem<OUT>::T*>(out), m, n,
                                                                 k, lda, ldb, ldc);
  return cudaGetLastError();
}

}  // namespace

extern "C" int moe_cuda_gemm(int device, const void* a, const void* b, void* out, int ab_dtype, int out_dtype,
                             int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                             void* stream) {
  if ((ab_dtype != kF32 && ab_dtype != kBF16) || (out_dtype != kF32 && out_dtype != kBF16)) {
    return cudaErrorInvalidValue;
  }
  if (m < 0 || n < 0 || k < 0) return cudaErrorInvalidValue;
  // Indices inside the kernels are int (offsets int64): leave room for a tile past the end.
  const int64_t kMaxDim = INT_MAX - 256;
  if (m > kMaxDim || n > kMaxDim || k > kMaxDim) return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (m == 0 || n == 0) return cudaSuccess;
  if (ldc < n || (k > 0 && (lda < k || ldb < k))) return cudaErrorInvalidValue;
  if (out == nullptr || (k > 0 && (a == nullptr || b == nullptr))) return cudaErrorInvalidValue;

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  if (ab_dtype == kBF16) {
    int major = 0;
    e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e != cudaSuccess) return e;
    const GemmForce force = gemm_force();
    if (major >= 8 && (force == GemmForce::None || force == GemmForce::Moe)) {
      int minor = 0;
      if ((e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device)) != cudaSuccess) return e;
      MoeGemm2Tiles tiles = MoeGemm2Tiles::MmaLarge;
      // (a bf16 out needs an f32 scratch of m x n: by default only up to kMoeGemmMaxScratch)
      const bool scratch_ok = out_dtype == kF32 || m * n * 4 <= kMoeGemmMaxScratch;
      if (moe_gemm_tiles(major, minor, a, b, out_dtype == kF32 ? out : nullptr, m, n, k, lda, ldb, ldc, &tiles) &&
          (force == GemmForce::Moe || (scratch_ok && moe_gemm_pays(tiles, m, n)))) {
        return launch_moe_gemm(device, tiles, a, b, out, out_dtype == kBF16, mi, ni, ki, s);
      }
    }
    if (major >= 8 && force != GemmForce::Simt) {
      return out_dtype == kF32 ? launch_mma<kF32>(a, b, out, mi, ni, ki, lda, ldb, ldc, s)
                               : launch_mma<kBF16>(a, b, out, mi, ni, ki, lda, ldb, ldc, s);
    }
    return out_dtype == kF32 ? launch_simt<kBF16, kF32>(a, b, out, mi, ni, ki, lda, ldb, ldc, s)
                             : launch_simt<kBF16, kBF16>(a, b, out, mi, ni, ki, lda, ldb, ldc, s);
  }
  return out_dtype == kF32 ? launch_simt<kF32, kF32>(a, b, out, mi, ni, ki, lda, ldb, ldc, s)
                           : launch_simt<kF32, kBF16>(a, b, out, mi, ni, ki, lda, ldb, ldc, s);
}
