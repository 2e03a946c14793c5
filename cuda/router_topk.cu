// Launchers of moe_cuda_router_topk and moe_cuda_moe_align (C ABI in moe_cuda.h; kernels in router_topk.cuh).
// No host synchronisation; errors come back as cudaError_t.
#include <cuda_runtime.h>

#include <climits>

#include "moe_cuda.h"
#include "router_topk.cuh"

using namespace moe::dev;

extern "C" int moe_cuda_router_topk(int device, const float* logits, const float* bias, int32_t* topk_ids,
                                    float* topk_weights, int64_t t, int64_t e, int64_t k, int scoring,
                                    int renormalize, void* stream) {
  if (t < 0 || e < 1 || e > 1024 || k < 1 || k > e || t > INT_MAX / 2 || (scoring != 0 && scoring != 1)) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return err;
  if (t == 0) return cudaSuccess;
  if (logits == nullptr || topk_ids == nullptr || topk_weights == nullptr) return cudaErrorInvalidValue;
  const unsigned grid = static_cast<unsigned>((t + kTopkWarps - 1) / kTopkWarps);
  router_topk_kernel<<<grid, kTopkWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(
      logits, bias, topk_ids, topk_weights, static_cast<int>(t), static_cast<int>(e), static_cast<int>(k), scoring,
      renormalize);
  return cudaGetLastError();
}

extern "C" int moe_cuda_moe_align(int device, const int32_t* topk_ids, int32_t* counts, int32_t* offsets,
                                  int32_t* sorted_token_ids, int64_t t, int64_t k, int64_t e, int64_t block,
                                  int64_t capacity, int32_t* error, void* stream) {
  if (t < 0 || k < 1 || e < 1 || block < 1 || e > 8192) return cudaErrorInvalidValue;
  const int64_t need = t * k + e * (block - 1);
  // (the placement's index reaches n + 127: keep it in int)
  if (need > INT_MAX - 128 || capacity < need || capacity > INT_MAX) return cudaErrorInvalidValue;
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return err;
  if (counts == nullptr || offsets == nullptr || (capacity > 0 && sorted_token_ids == nullptr) ||
      (t > 0 && topk_ids == nullptr)) {
    return cudaErrorInvalidValue;
  }
  return launch_moe_align(topk_ids, counts, offsets, sorted_token_ids, static_cast<int>(t * k), static_cast<int>(e),
                          static_cast<int>(block), static_cast<int>(capacity), error,
                          static_cast<cudaStream_t>(stream));
}
