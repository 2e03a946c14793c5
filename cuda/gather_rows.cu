// Launcher of moe_cuda_gather_rows (C ABI in moe_cuda.h). No host synchronisation.
#include <cuda_runtime.h>

#include "gather_rows.cuh"
#include "moe_cuda.h"

extern "C" int moe_cuda_gather_rows(int device, const void* src, int64_t src_rows, int64_t src_stride,
                                    int64_t row_bytes, const int32_t* ids, int64_t n, void* dst, int64_t dst_stride,
                                    void* stream) {
  if (src_rows < 0 || row_bytes < 0 || n < 0 || src_stride < row_bytes || dst_stride < row_bytes)
    return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (n == 0 || row_bytes == 0) return cudaSuccess;
  if (src == nullptr || ids == nullptr || dst == nullptr) return cudaErrorInvalidValue;
  const auto aligned = [](const void* p, int64_t v) {
    return (reinterpret_cast<uintptr_t>(p) % 16 == 0) && (v % 16 == 0);
  };
  const bool vec16 = aligned(src, src_stride) && aligned(dst, dst_stride) && row_bytes % 16 == 0;
  // Enough blocks to keep every SM's load units busy with independent rows; rows beyond that are grid-strided.
  const unsigned blocks = static_cast<unsigned>(n < 65535 ? n : 65535);
  moe::dev::gather_rows_kernel<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint8_t*>(src), src_rows, src_stride, row_bytes, ids, n, static_cast<uint8_t*>(dst),
      dst_stride, vec16);
  return cudaGetLastError();
}
