// Cooperative cancellation: set from the JS thread (AbortSignal), polled by kernels between chunks.
#pragma once
#include <atomic>

namespace moe {

struct CancelToken {
  std::atomic<bool> cancelled{false};
  void cancel() { cancelled.store(true, std::memory_order_relaxed); }
  bool is_cancelled() const { return cancelled.load(std::memory_order_relaxed); }
};

inline bool is_cancelled(const CancelToken* t) { return t != nullptr && t->is_cancelled(); }

}  // namespace moe
