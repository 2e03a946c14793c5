// Launcher of moe_cuda_grouped_gemm (C ABI in moe_cuda.h): one launch of the dense GEMM's kernels (gemm.cuh via
// moe_cuda_gemm: mma.sync tensor-core tiles for bf16 on sm_80+) per non-empty group, all on the caller's stream,
// no host synchronisation. offsets and the b pointer table are host arrays (host metadata, as moeAlign's counts
// are read back by the runtime before it launches). Compiled, not verified on a GPU.
#include <cuda_runtime.h>

#include <cstdint>

#include "moe_cuda.h"

extern "C" int moe_cuda_grouped_gemm(int device, const void* a, const int32_t* offsets, const void* const* b, void* out,
                                     int out_dtype, int64_t g_count, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                                     int64_t ldc, void* stream) {
  if (offsets == nullptr || b == nullptr || g_count < 1) return cudaErrorInvalidValue;
  if (out_dtype != 0 && out_dtype != 2) return cudaErrorInvalidValue;  // f32 | bf16
  const int64_t out_elem = out_dtype == 0 ? 4 : 2;
  for (int64_t x = 0; x < g_count; ++x) {
    const int64_t r0 = offsets[x], rows = offsets[x + 1] - r0;
    if (rows < 0) return cudaErrorInvalidValue;
    if (rows == 0) continue;
    if (b[x] == nullptr) return cudaErrorInvalidValue;
    const void* ag = static_cast<const uint8_t*>(a) + r0 * lda * 2;        // [rows, k] bf16
    void* og = static_cast<uint8_t*>(out) + r0 * ldc * out_elem;           // [rows, n] out_dtype
    const int err = moe_cuda_gemm(device, ag, b[x], og, 2, out_dtype, rows, n, k, lda, ldb, ldc, stream);
    if (err != 0) return err;
  }
  return 0;
}
