// Error words that CUDA kernels write when they find bad input, read by the op when it completes: no host sync.
// A slot is 4 int32 in mapped pinned host memory (moe_cuda_host_alloc: portable + mapped, so a kernel on any device
// stores to it through UVA with the host pointer). Slots come from pages that are allocated once and never freed
// (cudaFreeHost would synchronise the device). Protocol of one op (moeExperts, moeAlign, moeCombine on CUDA):
//   work (stream thread): acquire() a zeroed slot, pass it to the launcher; mark launched once every launch succeeded.
//   on_complete (the stream's host callback, after the kernels finished; or the stream thread when work failed):
//   finish() reads the slot, then returns it to the free list. A slot whose launches did not all succeed is never
//   reused: a kernel launched before the failure may still write to it.
// Layout written by the kernels: [0] 1 = an id was outside [-1, e) (moeCombine: < -1), [1] its index (the smallest),
// [2] its value.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace moe::js {

struct CudaErrorSlot {
  int32_t* words = nullptr;  // [4] i32, null until acquired
  bool launched = false;     // every launch of the op succeeded: the slot may be read and reused
};

// A zeroed slot (throws moe::Error(Cuda) when pinned memory cannot be allocated). Any thread.
int32_t* cuda_error_slot_acquire();

// After completion: if the kernels flagged an id, a message "<what> must be -1 or in [0, e), received v at index i"
// ("<what> must be -1 or >= 0, ..." when e < 0: no upper bound, moeCombine); empty otherwise. Returns the slot to
// the free list when launched, else leaves it out of use. Any thread; no-op on a slot never acquired.
std::string cuda_error_slot_finish(CudaErrorSlot& slot, const char* what, int64_t e);

}  // namespace moe::js
