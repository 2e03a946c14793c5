// See work_queue.h.
#include "work_queue.h"

#include "threadpool.h"

namespace moe {

WorkQueue::WorkQueue() : thread_([this] { loop(); }) {}

WorkQueue::~WorkQueue() { stop(); }

void WorkQueue::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(m_);
    if (stopping_) return;
    q_.push_back(std::move(task));
  }
  cv_.notify_one();
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
  // Stream threads run CPU kernels too (they take part in parallel_for).
  mark_compute_thread();
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(m_);
      cv_.wait(lock, [this] { return stopping_ || !q_.empty(); });
      if (stopping_) return;
      task = std::move(q_.front());
      q_.pop_front();
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
