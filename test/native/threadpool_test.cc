// thread_pool cases for moe-native: parallel_for's max_threads cap (core/threadpool.h). Each range records how many
// ranges run at that moment and on which thread; with a cap of c no more than c ever run at once, every index runs
// exactly once, and cap 1 runs everything on the calling thread. Ranges hold for ~200 us so a pool that ignored the
// cap would overlap them. CPU only; on a one-thread pool every cap is trivially met (reported in the detail).
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "core/threadpool.h"
#include "harness.h"

namespace moe::native {
namespace {

Outcome run_cap(const Backend& be, int cap) {
  if (be.kind != BackendKind::Cpu) return Outcome::skip("CPU only: the host's thread pool");
  ThreadPool& pool = ThreadPool::global();
  const size_t n = 64;
  std::vector<std::atomic<int>> hits(n);
  std::atomic<int> inside{0}, most{0}, off_caller{0};
  const std::thread::id caller = std::this_thread::get_id();
  auto fn = [&](size_t b, size_t e) {
    const int now = inside.fetch_add(1) + 1;
    for (int m = most.load(); now > m && !most.compare_exchange_weak(m, now);) {
    }
    if (std::this_thread::get_id() != caller) off_caller.fetch_add(1);
    for (size_t i = b; i < e; ++i) hits[i].fetch_add(1);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    inside.fetch_sub(1);
  };
  const bool done = pool.parallel_for(n, 1, fn, nullptr, cap);
  bool once = true;
  for (auto& h : hits) once = once && h.load() == 1;
  const int limit = cap > 0 && cap < pool.size() ? cap : pool.size();
  const bool ok = done && once && most.load() <= limit && (cap != 1 || off_caller.load() == 0) &&
                  (pool.size() < 2 || limit < 2 || most.load() >= 2);  // a cap above 1 still runs in parallel
  return Outcome::check(ok, "pool=" + std::to_string(pool.size()) + " cap=" + std::to_string(cap) + " most at once=" +
                                std::to_string(most.load()) + " off the caller=" + std::to_string(off_caller.load()) +
                                (once ? "" : " (an index did not run exactly once)"));
}

}  // namespace

void add_threadpool_cases(std::vector<Case>& cases) {
  for (int cap : {0, 1, 2, 3, 1 << 20})
    cases.push_back({"thread_pool", "max_threads=" + std::to_string(cap), [=](const Backend& be) { return run_cap(be, cap); }});
}

}  // namespace moe::native
