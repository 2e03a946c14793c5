// Device side of the error words of an op (mapped pinned host memory, cpp/napi/cuda_error_slot.h): the first bad
// routing id of a call, found by one block. (moe_combine.cuh and the align kernels find it their own ways and write
// it with moe_write_error_words.)
#pragma once
#include <cstdint>

namespace moe {
namespace dev {

// The report itself: error[1] = i, error[2] = ids[i], then error[0] = 1 (plain stores: the host reads them once the
// op's stream is past this kernel). One thread calls it.
__device__ __forceinline__ void moe_write_error_words(int32_t* error, int i, const int32_t* ids) {
  error[1] = i;
  error[2] = ids[i];
  __threadfence_system();
  error[0] = 1;
}

// Every thread of the block calls it (block-uniform: two barriers). Writes the smallest index i < n with bad(ids[i])
// to error (moe_write_error_words); nothing when there is none.
template <class Bad>
__device__ __forceinline__ void moe_report_first_bad_id(const int32_t* ids, int n, int32_t* error, Bad bad) {
  __shared__ int s_bad;  // smallest bad index; 0x7fffffff: none
  if (threadIdx.x == 0) s_bad = 0x7fffffff;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    if (bad(ids[i])) atomicMin(&s_bad, i);  // shared-memory integer atomic: the minimum is order-free
  __syncthreads();
  if (threadIdx.x == 0 && s_bad != 0x7fffffff) moe_write_error_words(error, s_bad, ids);
}

}  // namespace dev
}  // namespace moe
