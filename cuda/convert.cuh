// Kernel of moe_cuda_convert: dst[i] = convert(src[i]) between f32, f16 and bf16, round to nearest even,
// bit-identical to cpp/core/dtype.h (conversions between the 16-bit types go through f32, like the CPU).
// One grid-stride kernel per (src, dst) pair: 16-byte vector accesses on the aligned middle part (see
// elementwise.cuh), scalar head and tail.
#pragma once
#include <cstdint>

#include "dtype.cuh"
#include "elementwise.cuh"

namespace moe {
namespace dev {

// src: [n] S, dst: [n] D. Vector part: elements [head, head + 8 * nvec).
template <int S, int D>
__global__ void __launch_bounds__(kElementwiseThreads)
    convert_kernel(const typename Elem<S>::T* __restrict__ src, typename Elem<D>::T* __restrict__ dst, int64_t n,
                   int64_t head, int64_t nvec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = tid; v < nvec; v += stride) {
    float f[kVec];
    load8<S>(src + head + v * kVec, f);
    store8<D>(dst + head + v * kVec, f);
  }
  const int64_t tail0 = head + nvec * kVec;
  const int64_t scalar_count = head + (n - tail0);
  for (int64_t i = tid; i < scalar_count; i += stride) {
    int64_t j = scalar_index(i, head, tail0);
    dst[j] = Elem<D>::store(Elem<S>::load(src[j]));
  }
}

}  // namespace dev
}  // namespace moe
