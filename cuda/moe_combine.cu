// Launcher of moe_cuda_moe_combine (C ABI in moe_cuda.h; kernel in moe_combine.cuh). Stream-ordered, no host
// synchronisation, no allocation. moe_cuda_moe_experts_ex launches its combine through launch_moe_combine (with its
// presence table), so the fused path and parts mode + moeCombine run the same kernel.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "moe_combine.cuh"
#include "moe_cuda.h"

using namespace moe::dev;

extern "C" int moe_cuda_moe_combine(int device, const float* parts, const int32_t* topk_ids,
                                    const float* topk_weights, const void* const* present, int64_t e, void* out,
                                    int64_t t, int64_t h, int64_t k, int32_t* error, void* stream) {
  if (t < 0 || h < 1 || k < 1 || e < 0 || e > INT_MAX) return cudaErrorInvalidValue;
  if (t > INT_MAX / k || h > INT_MAX) return cudaErrorInvalidValue;
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return err;
  if (t == 0) return cudaSuccess;
  if (parts == nullptr || topk_ids == nullptr || topk_weights == nullptr || out == nullptr) return cudaErrorInvalidValue;
  return launch_moe_combine(parts, topk_ids, topk_weights, present, static_cast<int>(e),
                            static_cast<uint16_t*>(out), static_cast<int>(t), static_cast<int>(k),
                            static_cast<int>(h), error, static_cast<cudaStream_t>(stream));
}

cudaError_t moe::dev::launch_moe_combine(const float* parts, const int32_t* ids, const float* weights,
                                         const void* const* present, int e, uint16_t* out, int t, int k, int h,
                                         int32_t* error, cudaStream_t s) {
  const unsigned gy = static_cast<unsigned>(t < 65535 ? t : 65535);
  const bool vec4 = h % 4 == 0 && (reinterpret_cast<uintptr_t>(parts) & 15u) == 0 &&
                    (reinterpret_cast<uintptr_t>(out) & 7u) == 0;
  const int64_t per_block = kCombineThreads * (vec4 ? 4 : 1);
  const dim3 grid(static_cast<unsigned>((h + per_block - 1) / per_block), gy);
  auto go = [&](auto kernel) {
    kernel<<<grid, kCombineThreads, 0, s>>>(parts, ids, weights, present, e, out, t, k, h, error);
    return cudaGetLastError();
  };
  return vec4 ? go(moe_combine_kernel<4>) : go(moe_combine_kernel<1>);
}
