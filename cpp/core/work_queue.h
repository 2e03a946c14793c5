// A FIFO of tasks run in order by one dedicated thread: the host side of a Stream. On the CPU backend the tasks
// are the ops themselves; on CUDA they submit work to a cudaStream (so a pageable cudaMemcpyAsync or a slow launch
// never blocks the JS thread).
//
// A compute queue's thread runs CPU kernels (it takes part in parallel_for) and is marked a batch thread
// (mark_compute_thread). A queue that only submits or waits (a CUDA stream's) stays a normal thread: when it wakes
// (a completion event, a new op) it preempts the batch threads of a busy pool instead of waiting for a time slice.
// (On an H200 host whose pool ran the CPU attention on all 16 cores, the GPU waited 73-80 ms per step for expert
// copies that 12 attention threads left on time: cores for these threads are one suspect, host bandwidth the other.)
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace moe {

class WorkQueue {
 public:
  explicit WorkQueue(bool compute = true);
  ~WorkQueue();  // stop(): tasks still queued are dropped without running (process exit only)
  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Appends a task. Tasks must not throw (ops catch their own errors and report them through their completion).
  void post(std::function<void()> task);
  // Stops the thread after the running task; queued tasks are destroyed without running. Idempotent.
  void stop();
  // Number of tasks queued or running.
  size_t depth();

 private:
  void loop();
  const bool compute_;  // before thread_: the thread reads it
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
  bool stopping_ = false;
  bool running_ = false;
  std::atomic<size_t> queued_{0};  // q_.size(), readable without the lock (the post-task spin)
  std::atomic<bool> sleeping_{false};
  std::thread thread_;
};

}  // namespace moe
