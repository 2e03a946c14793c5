// Launcher of moe_cuda_rope (C ABI in moe_cuda.h). No host synchronisation; errors come back as cudaError_t.
// Compiled, not verified on a GPU.
#include <cuda_runtime.h>

#include "moe_cuda.h"
#include "rope.cuh"

namespace {

using namespace moe::dev;

template <int D>
cudaError_t launch(void* q, void* k, const int32_t* positions, const float* inv_freq, int64_t tokens, int q_heads,
                   int kv_heads, int head_dim, int rotary_dim, float attention_scaling, cudaStream_t stream) {
  using T = typename Elem<D>::T;
  rope_kernel<D><<<static_cast<unsigned>(tokens), kRopeThreads, 0, stream>>>(
      static_cast<T*>(q), static_cast<T*>(k), positions, inv_freq, q_heads, kv_heads, head_dim, rotary_dim / 2,
      attention_scaling);
  return cudaGetLastError();
}

}  // namespace

extern "C" int moe_cuda_rope(int device, void* q, void* k, const int32_t* positions, const float* inv_freq, int dtype,
                             int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t head_dim, int64_t rotary_dim,
                             float attention_scaling, void* stream) {
  if (dtype != kF32 && dtype != kBF16) return cudaErrorInvalidValue;
  if (tokens < 0 || tokens > 0x7fffffff || q_heads < 0 || kv_heads < 0 || q_heads + kv_heads > (1 << 20) || head_dim < 2 ||
      head_dim > 1024 || rotary_dim < 2 || rotary_dim % 2 != 0 || rotary_dim > head_dim)
    return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (tokens == 0 || q_heads + kv_heads == 0) return cudaSuccess;
  if (positions == nullptr || inv_freq == nullptr || (q_heads > 0 && q == nullptr) || (kv_heads > 0 && k == nullptr))
    return cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int qh = static_cast<int>(q_heads), kh = static_cast<int>(kv_heads), hd = static_cast<int>(head_dim),
            rd = static_cast<int>(rotary_dim);
  if (dtype == kF32) return launch<kF32>(q, k, positions, inv_freq, tokens, qh, kh, hd, rd, attention_scaling, s);
  return launch<kBF16>(q, k, positions, inv_freq, tokens, qh, kh, hd, rd, attention_scaling, s);
}
