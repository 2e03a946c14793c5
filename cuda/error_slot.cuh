// Device side of the error words of an op (mapped pinned host memory, cpp/napi/cuda_error_slot.h): the first bad
// routing id of a call, found by one block. (moe_combine.cuh still has its own copy of this block: its kernel stays
// the one verified on a GPU until the next GPU run checks it through this helper.)
#pragma once
#include <cstdint>

namespace moe {
namespace dev {

// Every thread of the block calls it (block-uniform: two barriers). Writes the smallest index i < n with bad(ids[i])
// to error (error[1] = i, error[2] = ids[i], then error[0] = 1, plain stores: the host reads them once the op's
// stream is past this kernel); nothing when there is none.
template <class Bad>
__device__ __forceinline__ void moe_report_first_bad_id(const int32_t* ids, int n, int32_t* error, Bad bad) {
  __shared__ int s_bad;  // smallest bad index; 0x7fffffff: none
  if (threadIdx.x == 0) s_bad = 0x7fffffff;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    if (bad(ids[i])) atomicMin(&s_bad, i);  // shared-memory integer atomic: the minimum is order-free
  __syncthreads();
  if (threadIdx.x == 0 && s_bad != 0x7fffffff) {
    error[1] = s_bad;
    error[2] = ids[s_bad];
    __threadfence_system();
    error[0] = 1;
  }
}

}  // namespace dev
}  // namespace moe
