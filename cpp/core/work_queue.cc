// See work_queue.h.
#include "work_queue.h"

#include <chrono>

#include "threadpool.h"

namespace moe {

WorkQueue::WorkQueue(bool compute) : compute_(compute), thread_([this] { loop(); }) {}

WorkQueue::~WorkQueue() { stop(); }

void WorkQueue::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(m_);
    if (stopping_) return;
    q_.push_back(std::move(task));
    queued_.store(q_.size(), std::memory_order_release);
  }
  // The thread spins briefly after each task; only a sleeping thread needs the (slow) futex wake.
  if (sleeping_.load(std::memory_order_acquire)) cv_.notify_one();
}

size_t WorkQueue::depth() {
  std::lock_guard<std::mutex> lock(m_);
  return q_.size() + (running_ ? 1 : 0);
}

void WorkQueue::stop() {
  std::deque<std::function<void()>> dropped;
  {
    std::lock_guard<std::mutex> lock(m_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    dropped.swap(q_);
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void WorkQueue::loop() {
  // A CPU stream's thread runs CPU kernels too (it takes part in parallel_for).
  if (compute_) mark_compute_thread();
  for (;;) {
    // After a task, spin about 50 us before sleeping: an op awaited from JS is usually followed by the next one
    // within that window, and catching it here saves a futex wake-up (measured in bench/run.ts).
    for (auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(idle_spin_us());
         queued_.load(std::memory_order_acquire) == 0 && std::chrono::steady_clock::now() < until;) {
      std::this_thread::yield();
    }
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(m_);
      if (q_.empty() && !stopping_) {
        sleeping_.store(true, std::memory_order_release);
        cv_.wait(lock, [this] { return stopping_ || !q_.empty(); });
        sleeping_.store(false, std::memory_order_release);
      }
      if (stopping_) return;
      task = std::move(q_.front());
      q_.pop_front();
      queued_.store(q_.size(), std::memory_order_release);
      running_ = true;
    }
    task();
    {
      std::lock_guard<std::mutex> lock(m_);
      running_ = false;
    }
  }
}

}  // namespace moe
