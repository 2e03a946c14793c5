// Launchers of moe_cuda_router_topk and moe_cuda_moe_align (C ABI in moe_cuda.h; kernels in router_topk.cuh).
// No host synchronisation (the align's scratch, when n > kAlignChunk, is stream-ordered: scratch.cuh); errors come
// back as cudaError_t.
#include <cuda_runtime.h>

#include <climits>

#include "moe_cuda.h"
#include "router_topk.cuh"
#include "scratch.cuh"

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
  const int n = static_cast<int>(t * k), ei = static_cast<int>(e);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t scratch_ints = moe_align_scratch_ints(n, ei);
  int32_t* scratch = nullptr;
  if (scratch_ints > 0) {
    err = scratch_alloc(reinterpret_cast<void**>(&scratch), static_cast<size_t>(scratch_ints) * 4, device, s);
    if (err != cudaSuccess) return err;
  }
  err = launch_moe_align(topk_ids, counts, offsets, sorted_token_ids, n, ei, static_cast<int>(block),
                         static_cast<int>(capacity), error, scratch, s);
  const cudaError_t ferr = scratch != nullptr ? cudaFreeAsync(scratch, s) : cudaSuccess;
  return err != cudaSuccess ? err : ferr;
}
