// Launcher of moe_cuda_rms_norm (C ABI in moe_cuda.h). No host synchronisation; errors come back as cudaError_t.
// Layout by row length (rms_norm.cuh): d <= 1024 a warp per row (4 rows per block of 128), else a block per row
// (256 threads up to d = 4096, 512 up to 8192, 1024 beyond: 8-16 elements per thread). Grids are capped at 64
// blocks per SM; the kernels stride over the remaining rows. Compiled, not verified on a GPU.
#include <cuda_runtime.h>

#include "moe_cuda.h"
#include "rms_norm.cuh"

namespace {

using namespace moe::dev;

int64_t grid_cap(int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    sms = 132;
  }
  return static_cast<int64_t>(sms) * 64;
}

}  // namespace

extern "C" int moe_cuda_rms_norm(int device, void* x, int x_dtype, const void* add, int add_dtype, const void* weight,
                                 int w_dtype, void* out, int out_dtype, int64_t rows, int64_t d, float eps,
                                 void* stream) {
  auto f32_or_bf16 = [](int t) { return t == kF32 || t == kBF16; };
  if (!f32_or_bf16(x_dtype) || !f32_or_bf16(w_dtype) || !f32_or_bf16(out_dtype) ||
      (add != nullptr && (!f32_or_bf16(add_dtype) || x_dtype != kF32)))
    return cudaErrorInvalidValue;
  if (rows < 0 || d < 0 || d > 0x7fffffff || !(eps >= 0.0f) || eps > 3.402823466e38f) return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (rows == 0 || d == 0) return cudaSuccess;
  if (x == nullptr || weight == nullptr || out == nullptr) return cudaErrorInvalidValue;
  RmsNormParams p{x, add, weight, out, rows, static_cast<int>(d), eps,
                  x_dtype == kBF16, add_dtype == kBF16, w_dtype == kBF16, out_dtype == kBF16};
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t cap = grid_cap(device);
  if (d <= kRmsWarpMaxD) {
    int64_t blocks = (rows + kRmsWarpRowsPerBlock - 1) / kRmsWarpRowsPerBlock;
    if (blocks > cap) blocks = cap;
    rms_norm_warp_kernel<<<static_cast<unsigned>(blocks), 32 * kRmsWarpRowsPerBlock, 0, s>>>(p);
  } else {
    const int threads = d <= 4096 ? 256 : d <= 8192 ? 512 : 1024;
    const int64_t blocks = rows < cap ? rows : cap;
    rms_norm_block_kernel<<<static_cast<unsigned>(blocks), threads, 0, s>>>(p);
  }
  return cudaGetLastError();
}
