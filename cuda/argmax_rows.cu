// Launcher of moe_cuda_argmax_rows (C ABI in moe_cuda.h). No host synchronisation.
#include <cuda_runtime.h>

#include "argmax_rows.cuh"
#include "moe_cuda.h"

extern "C" int moe_cuda_argmax_rows(int device, const float* logits, int64_t rows, int64_t vocab, int32_t* out, void* stream) {
  if (rows < 0 || vocab < 1 || vocab > INT32_MAX - 1) return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (rows == 0) return cudaSuccess;
  if (logits == nullptr || out == nullptr) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>(rows < 65535 ? rows : 65535);
  moe::dev::argmax_rows_kernel<<<blocks, moe::dev::kArgmaxThreads, 0, static_cast<cudaStream_t>(stream)>>>(logits, rows, vocab, out);
  return cudaGetLastError();
}
