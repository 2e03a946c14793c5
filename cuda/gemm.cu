// Launcher of moe_cuda_gemm (C ABI in moe_cuda.h): checks dtypes and sizes, picks the tensor-core kernel for bf16
// inputs on sm_80+ and the CUDA-core kernel otherwise (gemm.cuh). k == 0 runs the same kernels (no k tiles, so
// they write zeros); m == 0 or n == 0 is a no-op. No host synchronisation; errors come back as cudaError_t.
// MOE_CUDA_GEMM=simt forces the CUDA-core kernel for bf16 too (to tell a tensor-core bug from anything else).
#include <cuda_runtime.h>

#include <climits>
#include <cstdlib>
#include <cstring>

#include "gemm.cuh"
#include "moe_cuda.h"

namespace {

using namespace moe::dev;

bool force_simt() {
  const char* v = std::getenv("MOE_CUDA_GEMM");
  return v != nullptr && std::strcmp(v, "simt") == 0;
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
    if (major >= 8 && !force_simt()) {
      return out_dtype == kF32 ? launch_mma<kF32>(a, b, out, mi, ni, ki, lda, ldb, ldc, s)
                               : launch_mma<kBF16>(a, b, out, mi, ni, ki, lda, ldb, ldc, s);
    }
    return out_dtype == kF32 ? launch_simt<kBF16, kF32>(a, b, out, mi, ni, ki, lda, ldb, ldc, s)
                             : launch_simt<kBF16, kBF16>(a, b, out, mi, ni, ki, lda, ldb, ldc, s);
  }
  return out_dtype == kF32 ? launch_simt<kF32, kF32>(a, b, out, mi, ni, ki, lda, ldb, ldc, s)
                           : launch_simt<kF32, kBF16>(a, b, out, mi, ni, ki, lda, ldb, ldc, s);
}
