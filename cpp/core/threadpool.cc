// The CPU kernels' thread pool (threadpool.h). One job per parallel_for call: the job lives on the caller's stack,
// is published in a list that idle workers scan, and hands out ranges through an atomic counter. The caller always
// claims ranges of its own job until none remain and only then waits for ranges that workers are still running,
// so concurrent calls (two streams) and nested calls (parallel_for inside fn) make progress even when every worker
// is busy elsewhere: in the worst case the caller runs its whole job alone.
#include "threadpool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "isa.h"

#if defined(__linux__)
#include <sched.h>
#endif

namespace moe {

void mark_compute_thread() {
#if defined(__linux__)
  sched_param param{};
  param.sched_priority = 0;
  // pid 0: the calling thread. Failure (e.g. a seccomp policy) only loses the hint.
  (void)sched_setscheduler(0, SCHED_BATCH, &param);
#endif
}

namespace {

struct Job {
  const std::function<void(size_t, size_t)>* fn;
  size_t n;
  size_t grain;
  size_t chunks;                     // ceil(n / grain)
  const CancelToken* cancel;
  std::atomic<size_t> next{0};       // next chunk index to hand out
  std::atomic<bool> stop{false};     // set on cancellation or exception: hand out nothing more
  std::atomic<bool> skipped{false};  // a chunk was not run because of cancellation
  std::exception_ptr error;          // first exception thrown by fn (guarded by the pool mutex)
  int workers_inside = 0;            // workers currently claiming from this job (guarded by the pool mutex)
  int max_workers = 0;               // workers (the caller not counted) allowed inside at once
  std::condition_variable done_cv;   // signalled when workers_inside drops to 0

  // Whether a worker may join (pool mutex held).
  bool wants_worker() const {
    return workers_inside < max_workers && !stop.load(std::memory_order_relaxed) &&
           next.load(std::memory_order_relaxed) < chunks;
  }
};

int threads_from_env() {
  if (const char* env = std::getenv("MOE_OFFLOAD_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0) return v > 1024 ? 1024 : static_cast<int>(v);
  }
  int n = cpu_info().logical_cores;
  return n > 0 ? n : 1;
}

}  // namespace

int idle_spin_us() {
  static const int us = [] {
    if (const char* env = std::getenv("MOE_OFFLOAD_SPIN_US")) {
      char* end = nullptr;
      long v = std::strtol(env, &end, 10);
      if (end != env && *end == '\0' && v >= 0) return v > 1000000 ? 1000000 : static_cast<int>(v);
    }
    return 50;
  }();
  return us;
}

struct ThreadPool::Impl {
  int size = 1;
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable wake;
  std::vector<Job*> jobs;               // published jobs (guarded by mu)
  std::atomic<uint64_t> published{0};   // bumped on every publish: lets an idle worker spin briefly without mu
  bool stopping = false;                // guarded by mu

  // Claims and runs chunks of `job` until none remain; records cancellation and the first exception.
  void run_chunks(Job* job) {
    for (;;) {
      if (job->stop.load(std::memory_order_relaxed)) return;
      size_t c = job->next.fetch_add(1, std::memory_order_relaxed);
      if (c >= job->chunks) return;
      if (is_cancelled(job->cancel)) {
        job->skipped.store(true, std::memory_order_relaxed);
        job->stop.store(true, std::memory_order_relaxed);
        return;
      }
      size_t begin = c * job->grain;
      size_t end = begin + job->grain < job->n ? begin + job->grain : job->n;
      try {
        (*job->fn)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!job->error) job->error = std::current_exception();
        job->stop.store(true, std::memory_order_relaxed);
        return;
      }
    }
  }

  Job* find_job_locked() {
    for (Job* j : jobs) {
      if (j->wants_worker()) return j;
    }
    return nullptr;
  }

  void worker_loop() {
    mark_compute_thread();
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      Job* job = find_job_locked();
      if (job == nullptr) {
        if (stopping) return;
        // Short spin (about 50 us) before sleeping: back-to-back parallel_for calls then do not pay a futex wake.
        uint64_t seen = published.load(std::memory_order_acquire);
        lock.unlock();
        auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(idle_spin_us());
        while (published.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until) {
          std::this_thread::yield();
        }
        lock.lock();
        job = find_job_locked();
        if (job == nullptr) {
          if (stopping) return;
          wake.wait(lock);
          continue;
        }
      }
      ++job->workers_inside;
      lock.unlock();
      run_chunks(job);
      lock.lock();
      if (--job->workers_inside == 0) job->done_cv.notify_all();
    }
  }
};

ThreadPool::ThreadPool(int threads) : impl_(new Impl) {
  impl_->size = threads > 0 ? threads : 1;
  impl_->workers.reserve(static_cast<size_t>(impl_->size - 1));
  for (int i = 1; i < impl_->size; ++i) {
    impl_->workers.emplace_back([this] { impl_->worker_loop(); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  for (std::thread& t : impl_->workers) t.join();
  delete impl_;
}

ThreadPool& ThreadPool::global() {
  // Intentionally leaked: never destroyed at process exit. A static ThreadPool would be destroyed during exit()
  // while other threads (libuv workers, a second stream) may still be inside parallel_for, and its destructor
  // would join workers from a static destructor (or from dlclose of the addon), which can hang or touch freed
  // state. The OS reclaims the sleeping workers when the process ends.
  static ThreadPool* pool = new ThreadPool(threads_from_env());
  return *pool;
}

int ThreadPool::size() const { return impl_->size; }

bool ThreadPool::parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn,
                              const CancelToken* cancel, int max_threads) {
  if (grain == 0) grain = 1;
  if (n == 0) return !is_cancelled(cancel);
  const size_t workers = impl_->workers.size();
  const size_t max_workers = max_threads > 0 && static_cast<size_t>(max_threads) - 1 < workers ? static_cast<size_t>(max_threads) - 1 : workers;
  if (n <= grain || max_workers == 0) {
    // Inline: no publication, no locks. Cancellation is still checked between ranges.
    for (size_t begin = 0; begin < n; begin += grain) {
      if (is_cancelled(cancel)) return false;
      fn(begin, n - begin > grain ? begin + grain : n);
    }
    return true;
  }

  Job job;
  job.fn = &fn;
  job.n = n;
  job.grain = grain;
  job.chunks = (n + grain - 1) / grain;
  job.cancel = cancel;
  job.max_workers = static_cast<int>(max_workers);

  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->jobs.push_back(&job);
    impl_->published.fetch_add(1, std::memory_order_release);
  }
  // Wake as many workers as there are chunks beyond the one the caller starts on (at most max_workers).
  size_t helpers = job.chunks - 1 < max_workers ? job.chunks - 1 : max_workers;
  if (helpers >= workers) {
    impl_->wake.notify_all();
  } else {
    for (size_t i = 0; i < helpers; ++i) impl_->wake.notify_one();
  }

  impl_->run_chunks(&job);

  {
    std::unique_lock<std::mutex> lock(impl_->mu);
    // Unpublish first so no new worker enters, then wait for those inside to finish their current range.
    for (size_t i = 0; i < impl_->jobs.size(); ++i) {
      if (impl_->jobs[i] == &job) {
        impl_->jobs.erase(impl_->jobs.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
    job.done_cv.wait(lock, [&job] { return job.workers_inside == 0; });
  }
  if (job.error) std::rethrow_exception(job.error);
  return !job.skipped.load(std::memory_order_relaxed);
}

}  // namespace moe
