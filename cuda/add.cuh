// Kernel of moe_cuda_add: out[i] = a[i] + b[i], computed in f32 (one IEEE add, round to nearest, no FTZ since
// the build does not use --use_fast_math), f16/bf16 results rounded to nearest even exactly like dtype.h.
// Bit-identical to the CPU scalar reference for non-NaN results (NaN payloads of a + b differ between x86 and
// GPUs; the tests avoid NaN-producing inputs). out may alias a or b exactly (each element is read before it is
// written by the same thread), so no __restrict__ here. add_bcast_kernel: the row-broadcast form (b [bl] added to
// every row of a), same arithmetic.
#pragma once
#include <cstdint>

#include "dtype.cuh"
#include "elementwise.cuh"

namespace moe {
namespace dev {

// a, b, out: [n] D. Vector part: elements [head, head + 8 * nvec).
template <int D>
__global__ void __launch_bounds__(kElementwiseThreads)
    add_kernel(const typename Elem<D>::T* a, const typename Elem<D>::T* b, typename Elem<D>::T* out, int64_t n,
               int64_t head, int64_t nvec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = tid; v < nvec; v += stride) {
    float fa[kVec], fb[kVec];
    load8<D>(a + head + v * kVec, fa);
    load8<D>(b + head + v * kVec, fb);
#pragma unroll
    for (int i = 0; i < kVec; i++) fa[i] = __fadd_rn(fa[i], fb[i]);  // _rn: never contracted or reassociated
    store8<D>(out + head + v * kVec, fa);
  }
  const int64_t tail0 = head + nvec * kVec;
  const int64_t scalar_count = head + (n - tail0);
  for (int64_t i = tid; i < scalar_count; i += stride) {
    int64_t j = scalar_index(i, head, tail0);
    out[j] = Elem<D>::store(__fadd_rn(Elem<D>::load(a[j]), Elem<D>::load(b[j])));
  }
}

// a, out: [n / bl, bl] D; b: [bl] D. Vector path (Vec): bl % 8 == 0 and a, b, out 16-byte aligned, so a vector
// of 8 never straddles two rows; its column is (8 v) % bl. Otherwise one element per step, column i % bl.
template <int D, bool Vec>
__global__ void __launch_bounds__(kElementwiseThreads)
    add_bcast_kernel(const typename Elem<D>::T* a, const typename Elem<D>::T* b, typename Elem<D>::T* out, int64_t n,
                     int64_t bl) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (Vec) {
    const int64_t nvec = n / kVec;
    for (int64_t v = tid; v < nvec; v += stride) {
      float fa[kVec], fb[kVec];
      load8<D>(a + v * kVec, fa);
      load8<D>(b + (v * kVec) % bl, fb);
#pragma unroll
      for (int i = 0; i < kVec; i++) fa[i] = __fadd_rn(fa[i], fb[i]);
      store8<D>(out + v * kVec, fa);
    }
  } else {
    for (int64_t i = tid; i < n; i += stride) {
      out[i] = Elem<D>::store(__fadd_rn(Elem<D>::load(a[i]), Elem<D>::load(b[i % bl])));
    }
  }
}

}  // namespace dev
}  // namespace moe
