// Launcher of moe_cuda_convert (C ABI in moe_cuda.h): picks the (src, dst) kernel of convert.cuh, or a
// stream-ordered memcpy when the types are equal. No host synchronisation; errors come back as cudaError_t.
#include <cuda_runtime.h>

#include "convert.cuh"
#include "moe_cuda.h"

namespace {

using namespace moe::dev;

int dtype_bytes(int d) { return d == kF32 ? 4 : 2; }

template <int S, int D>
cudaError_t launch(int device, const void* src, void* dst, int64_t n, cudaStream_t stream) {
  const void* ptrs[2] = {src, dst};
  const int sizes[2] = {dtype_bytes(S), dtype_bytes(D)};
  Split sp = split_for_vectors(n, ptrs, sizes, 2);
  int64_t scalar_count = n - sp.nvec * kVec;
  int64_t work = sp.nvec > scalar_count ? sp.nvec : scalar_count;
  unsigned blocks = elementwise_blocks(device, work);
  convert_kernel<S, D><<<blocks, kElementwiseThreads, 0, stream>>>(
      static_cast<const typename Elem<S>::T*>(src), static_cast<typename Elem<D>::T*>(dst), n, sp.head, sp.nvec);
  return cudaGetLastError();
}

template <int S>
cudaError_t launch_from(int device, const void* src, void* dst, int dst_dtype, int64_t n, cudaStream_t stream) {
  switch (dst_dtype) {
    case kF32: return launch<S, kF32>(device, src, dst, n, stream);
    case kF16: return launch<S, kF16>(device, src, dst, n, stream);
    case kBF16: return launch<S, kBF16>(device, src, dst, n, stream);
  }
  return cudaErrorInvalidValue;
}

bool is_float_dtype(int d) { return d == kF32 || d == kF16 || d == kBF16; }

}  // namespace

extern "C" int moe_cuda_convert(int device, const void* src, int src_dtype, void* dst, int dst_dtype, size_t n,
                                void* stream) {
  if (!is_float_dtype(src_dtype) || !is_float_dtype(dst_dtype)) return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (n == 0) return cudaSuccess;
  if (src == nullptr || dst == nullptr) return cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (src_dtype == dst_dtype) return cudaMemcpyAsync(dst, src, n * dtype_bytes(src_dtype), cudaMemcpyDefault, s);
  const int64_t count = static_cast<int64_t>(n);
  switch (src_dtype) {
    case kF32: return launch_from<kF32>(device, src, dst, dst_dtype, count, s);
    case kF16: return launch_from<kF16>(device, src, dst, dst_dtype, count, s);
    case kBF16: return launch_from<kBF16>(device, src, dst, dst_dtype, count, s);
  }
  return cudaErrorInvalidValue;
}
