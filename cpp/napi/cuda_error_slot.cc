// See cuda_error_slot.h.
#include "cuda_error_slot.h"

#include <mutex>
#include <vector>

#include "core/error.h"
#include "moe_cuda.h"

namespace moe::js {

#if MOE_WITH_CUDA
namespace {
constexpr size_t kPageBytes = 4096, kSlotWords = 4;  // 256 slots of 16 bytes per page
std::mutex g_mu;
std::vector<int32_t*>& free_slots() {
  static auto* v = new std::vector<int32_t*>();  // leaked on purpose, like the pages it points into
  return *v;
}
}  // namespace

int32_t* cuda_error_slot_acquire() {
  int32_t* slot = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    std::vector<int32_t*>& fs = free_slots();
    if (fs.empty()) {
      void* page = nullptr;
      int err = moe_cuda_host_alloc(kPageBytes, &page);
      if (err != 0 || page == nullptr)
        throw_error(ErrorCode::Cuda, std::string("error slot: cudaHostAlloc failed: ") + moe_cuda_error_name(err));
      for (size_t i = 0; i < kPageBytes / (kSlotWords * 4); ++i) fs.push_back(static_cast<int32_t*>(page) + i * kSlotWords);
    }
    slot = fs.back();
    fs.pop_back();
  }
  // Host stores before the launch that reads them: ordered by the launch itself.
  volatile int32_t* w = slot;
  for (size_t i = 0; i < kSlotWords; ++i) w[i] = 0;
  return slot;
}

std::string cuda_error_slot_finish(CudaErrorSlot& slot, const char* what, int64_t e) {
  if (slot.words == nullptr) return {};
  std::string msg;
  if (slot.launched) {
    // The host callback runs after the stream's earlier kernels completed: their stores are visible here.
    const volatile int32_t* w = slot.words;
    if (w[0] != 0) {
      const std::string range = e < 0 ? " must be -1 or >= 0" : " must be -1 or in [0, " + std::to_string(e) + ")";
      msg = std::string(what) + range + ", received " + std::to_string(w[2]) + " at index " + std::to_string(w[1]);
    }
    std::lock_guard<std::mutex> lock(g_mu);
    free_slots().push_back(slot.words);
  }
  slot.words = nullptr;
  return msg;
}
#else
int32_t* cuda_error_slot_acquire() {
  throw_error(ErrorCode::BackendUnavailable, "error slot: this build has no CUDA");
}
std::string cuda_error_slot_finish(CudaErrorSlot& slot, const char*, int64_t) {
  slot.words = nullptr;
  return {};
}
#endif

}  // namespace moe::js
