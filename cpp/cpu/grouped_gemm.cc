// grouped_gemm (grouped_gemm.h): validation, then one pool item per (group, 64-column tile of n) running
// gemm_serial on that group's rows. Items write disjoint output tiles: no reductions across threads, so the result
// is independent of the thread count.
#include "grouped_gemm.h"

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/threadpool.h"
#include "gemm.h"

namespace moe::cpu {

namespace {

constexpr int64_t kTileN = 64;

void require(bool ok, const std::string& what) {
  if (!ok) throw_error(ErrorCode::InvalidArgument, "groupedGemm: " + what);
}
std::string i64(int64_t v) { return std::to_string(v); }

}  // namespace

Isa grouped_gemm(const GroupedGemmArgs& g, Isa isa, const CancelToken* cancel) {
  require(g.g_count >= 1, "groups must be >= 1, received " + i64(g.g_count));
  require(g.n >= 1 && g.k >= 1, "n and k must be >= 1, received " + i64(g.n) + ", " + i64(g.k));
  require(g.out_dtype == DType::F32 || g.out_dtype == DType::BF16,
          std::string("out dtype must be f32 or bf16, received ") + dtype_name(g.out_dtype));
  require(g.lda >= g.k && g.ldb >= g.k && g.ldc >= g.n,
          "strides must satisfy lda >= k, ldb >= k, ldc >= n, received " + i64(g.lda) + ", " + i64(g.ldb) + ", " + i64(g.ldc));
  require(g.offsets != nullptr && g.b != nullptr, "offsets and b must be non-null");
  require(g.offsets[0] == 0, "offsets[0] must be 0, received " + i64(g.offsets[0]));
  for (int64_t x = 0; x < g.g_count; ++x) {
    const int64_t r0 = g.offsets[x], r1 = g.offsets[x + 1];
    require(r1 >= r0, "offsets must be non-decreasing, received offsets[" + i64(x) + "]=" + i64(r0) + " > offsets[" +
                          i64(x + 1) + "]=" + i64(r1));
    require(r1 == r0 || g.b[x] != nullptr, "b[" + i64(x) + "] is null but group " + i64(x) + " has " + i64(r1 - r0) + " rows");
  }
  const int64_t rows = g.offsets[g.g_count];
  require(rows == 0 || (g.a != nullptr && g.out != nullptr), "a and out must be non-null when there are rows");

  struct Item { int64_t group, n0; };
  std::vector<Item> items;
  for (int64_t x = 0; x < g.g_count; ++x)
    if (g.offsets[x + 1] > g.offsets[x])
      for (int64_t n0 = 0; n0 < g.n; n0 += kTileN) items.push_back({x, n0});
  std::atomic<int> ran{static_cast<int>(Isa::Scalar)};
  const size_t osize = dtype_size(g.out_dtype);
  std::function<void(size_t, size_t)> fn = [&](size_t i0, size_t i1) {
    for (size_t it = i0; it < i1; ++it) {
      const int64_t x = items[it].group, n0 = items[it].n0, r0 = g.offsets[x];
      const int64_t nt = g.n - n0 < kTileN ? g.n - n0 : kTileN;
      GemmArgs ga{g.a + r0 * g.lda,                                                      // [m, k] bf16
                  static_cast<const uint16_t*>(g.b[x]) + n0 * g.ldb,                     // [nt, k] bf16
                  static_cast<uint8_t*>(g.out) + static_cast<size_t>(r0 * g.ldc + n0) * osize,  // [m, nt]
                  DType::BF16, g.out_dtype, g.offsets[x + 1] - r0, nt, g.k, g.lda, g.ldb, g.ldc};
      ran.store(static_cast<int>(gemm_serial(ga, isa)), std::memory_order_relaxed);
    }
  };
  if (!items.empty() && !ThreadPool::global().parallel_for(items.size(), 1, fn, cancel))
    throw_error(ErrorCode::Cancelled, "groupedGemm: cancelled");
  if (items.empty()) {  // nothing ran: report the tier gemm would pick
    GemmArgs probe{nullptr, nullptr, nullptr, DType::BF16, g.out_dtype, 0, 0, 0, 0, 0, 0};
    return gemm_serial(probe, isa);
  }
  return static_cast<Isa>(ran.load());
}

}  // namespace moe::cpu
