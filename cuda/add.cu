// Launchers of moe_cuda_add and moe_cuda_add_bcast (C ABI in moe_cuda.h). No host synchronisation; errors come
// back as cudaError_t.
#include <cuda_runtime.h>

#include "add.cuh"
#include "moe_cuda.h"

namespace {

using namespace moe::dev;

template <int D>
cudaError_t launch(int device, const void* a, const void* b, void* out, int64_t n, cudaStream_t stream) {
  const void* ptrs[3] = {a, b, out};
  const int size = D == kF32 ? 4 : 2;
  const int sizes[3] = {size, size, size};
  Split sp = split_for_vectors(n, ptrs, sizes, 3);
  int64_t scalar_count = n - sp.nvec * kVec;
  int64_t work = sp.nvec > scalar_count ? sp.nvec : scalar_count;
  unsigned blocks = elementwise_blocks(device, work);
  using T = typename Elem<D>::T;
  add_kernel<D><<<blocks, kElementwiseThreads, 0, stream>>>(static_cast<const T*>(a), static_cast<const T*>(b),
                                                           static_cast<T*>(out), n, sp.head, sp.nvec);
  return cudaGetLastError();
}

template <int D>
cudaError_t launch_bcast(int device, const void* a, const void* b, void* out, int64_t n, int64_t bl,
                         cudaStream_t stream) {
  using T = typename Elem<D>::T;
  const bool vec = bl % kVec == 0 && ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
                                       reinterpret_cast<uintptr_t>(out)) & 15u) == 0;
  unsigned blocks = elementwise_blocks(device, vec ? n / kVec : n);
  const T* ta = static_cast<const T*>(a);
  const T* tb = static_cast<const T*>(b);
  T* to = static_cast<T*>(out);
  if (vec) add_bcast_kernel<D, true><<<blocks, kElementwiseThreads, 0, stream>>>(ta, tb, to, n, bl);
  else add_bcast_kernel<D, false><<<blocks, kElementwiseThreads, 0, stream>>>(ta, tb, to, n, bl);
  return cudaGetLastError();
}

}  // namespace

extern "C" int moe_cuda_add_bcast(int device, const void* a, const void* b, void* out, int dtype, size_t n,
                                  size_t b_len, void* stream) {
  if (dtype != kF32 && dtype != kF16 && dtype != kBF16) return cudaErrorInvalidValue;
  if (b_len == 0 || n % b_len != 0) return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (n == 0) return cudaSuccess;
  if (a == nullptr || b == nullptr || out == nullptr) return cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t count = static_cast<int64_t>(n), bl = static_cast<int64_t>(b_len);
  switch (dtype) {
    case kF32: return launch_bcast<kF32>(device, a, b, out, count, bl, s);
    case kF16: return launch_bcast<kF16>(device, a, b, out, count, bl, s);
    case kBF16: return launch_bcast<kBF16>(device, a, b, out, count, bl, s);
  }
  return cudaErrorInvalidValue;
}

extern "C" int moe_cuda_add(int device, const void* a, const void* b, void* out, int dtype, size_t n,
                            void* stream) {
  if (dtype != kF32 && dtype != kF16 && dtype != kBF16) return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (n == 0) return cudaSuccess;
  if (a == nullptr || b == nullptr || out == nullptr) return cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t count = static_cast<int64_t>(n);
  switch (dtype) {
    case kF32: return launch<kF32>(device, a, b, out, count, s);
    case kF16: return launch<kF16>(device, a, b, out, count, s);
    case kBF16: return launch<kBF16>(device, a, b, out, count, s);
  }
  return cudaErrorInvalidValue;
}
