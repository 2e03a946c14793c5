// The project's own thread pool for CPU kernels (never libuv's 4 shared threads). Sized from the usable cores
// (MOE_OFFLOAD_THREADS overrides). parallel_for may be called concurrently from several threads (e.g. two
// streams); the calling thread takes chunks too, so nested or concurrent calls cannot deadlock.
#pragma once
#include <cstddef>
#include <functional>

#include "cancel.h"

namespace moe {

// Marks the calling thread as a batch compute thread (Linux SCHED_BATCH): the scheduler then lets interactive
// threads, above all Node's JS thread, preempt it on wakeup, so the event loop stays responsive while kernels keep
// every core busy. Pool workers and stream threads call it when they start; a no-op elsewhere.
void mark_compute_thread();

// How long (us) an idle compute thread (pool worker, stream thread) polls for new work before it sleeps.
int idle_spin_us();

class ThreadPool {
 public:
  static ThreadPool& global();
  // Number of threads that run chunks, the caller included.
  int size() const;

  // Calls fn(begin, end) for consecutive ranges covering [0, n), each at most `grain` long (grain >= 1).
  // Stops handing out ranges once `cancel` is set; returns false in that case (some ranges did not run).
  // An exception thrown by fn is rethrown in the caller after all running ranges finished.
  // max_threads > 0 caps the threads that run this call's ranges, the caller included (0: every thread of the
  // pool): e.g. the CPU attention on a CUDA host leaves cores to the threads that feed the GPU.
  bool parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn,
                    const CancelToken* cancel = nullptr, int max_threads = 0);

  ~ThreadPool();

 private:
  ThreadPool(int threads);
  struct Impl;
  Impl* impl_;
};

}  // namespace moe
