// See scatter_rows.h. Ids are checked first: the range in one pass, then duplicates with a bitmap over the
// destination rows when it is small next to n, else by sorting a copy of the ids (a KV write is a few thousand
// rows into millions). Rows then go out in ranges of about 256 KiB over the pool, each converted by convert.h's
// single-threaded kernel or copied.
#include "scatter_rows.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/threadpool.h"
#include "convert.h"

namespace moe::cpu {

namespace {

void check_ids(const ScatterRowsArgs& a) {
  for (size_t i = 0; i < a.n; ++i) {
    const int32_t id = a.ids[i];
    if (id < 0 || static_cast<size_t>(id) >= a.dst_rows)
      throw_error(ErrorCode::InvalidArgument, "scatterRows: ids[" + std::to_string(i) + "] must be in [0, " +
                                                  std::to_string(a.dst_rows) + "), received " + std::to_string(id));
  }
  auto dup = [&](int32_t id) {
    size_t first = 0;
    while (a.ids[first] != id) ++first;
    size_t second = first + 1;
    while (a.ids[second] != id) ++second;
    throw_error(ErrorCode::InvalidArgument, "scatterRows: ids must be distinct, received " + std::to_string(id) + " at ids[" +
                                                std::to_string(first) + "] and ids[" + std::to_string(second) + "]");
  };
  if (a.dst_rows <= 64 * a.n) {
    std::vector<uint64_t> seen((a.dst_rows + 63) / 64, 0);
    for (size_t i = 0; i < a.n; ++i) {
      const auto id = static_cast<size_t>(a.ids[i]);
      const uint64_t bit = uint64_t{1} << (id % 64);
      if (seen[id / 64] & bit) dup(a.ids[i]);
      seen[id / 64] |= bit;
    }
    return;
  }
  std::vector<int32_t> sorted(a.ids, a.ids + a.n);
  std::sort(sorted.begin(), sorted.end());
  const auto at = std::adjacent_find(sorted.begin(), sorted.end());
  if (at != sorted.end()) dup(*at);
}

}  // namespace

Isa scatter_rows(const ScatterRowsArgs& a, Isa isa, const CancelToken* cancel) {
  const bool same = a.src_dtype == a.dst_dtype;
  if (!same && !(a.src_dtype == DType::F32 && (a.dst_dtype == DType::BF16 || a.dst_dtype == DType::F16)))
    throw_error(ErrorCode::InvalidArgument, std::string("scatterRows: dst dtype must be src's, or bf16 / f16 from f32, received ") +
                                                dtype_name(a.src_dtype) + " -> " + dtype_name(a.dst_dtype));
  if (a.n > 0 && a.row > 0 && (a.src == nullptr || a.ids == nullptr || a.dst == nullptr))
    throw_error(ErrorCode::InvalidArgument, "scatterRows: src, ids and dst must be non-null");
  check_ids(a);
  Isa ran = Isa::Scalar;
  const ConvertKernel kernel = same ? nullptr : convert_kernel(a.src_dtype, a.dst_dtype, isa, &ran);
  if (a.n == 0 || a.row == 0) return ran;
  const size_t sb = a.row * dtype_size(a.src_dtype), db = a.row * dtype_size(a.dst_dtype);
  const auto* src = static_cast<const uint8_t*>(a.src);
  auto* dst = static_cast<uint8_t*>(a.dst);
  const size_t grain = std::max<size_t>(1, (size_t{256} << 10) / sb);
  std::function<void(size_t, size_t)> fn = [&](size_t r0, size_t r1) {
    for (size_t i = r0; i < r1; ++i) {
      uint8_t* d = dst + static_cast<size_t>(a.ids[i]) * db;  // [row] dst_dtype
      if (same) std::memcpy(d, src + i * sb, sb);
      else kernel(src + i * sb, d, a.row);
    }
  };
  if (!ThreadPool::global().parallel_for(a.n, grain, fn, cancel)) throw_error(ErrorCode::Cancelled, "scatterRows: cancelled");
  return ran;
}

}  // namespace moe::cpu
