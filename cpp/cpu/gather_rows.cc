// See gather_rows.h. memcpy per row (rows are typically KiB: a hidden-size vector or an expert row), ranges of
// rows over the thread pool so both cores' load bandwidth is used; ids validated first so a bad id never leaves a
// half-written destination.
#include "gather_rows.h"

#include <cstring>
#include <functional>
#include <string>

#include "../core/error.h"
#include "../core/threadpool.h"

namespace moe::cpu {

void gather_rows(const GatherRowsArgs& a, const CancelToken* cancel) {
  for (size_t i = 0; i < a.n; ++i) {
    int32_t id = a.ids[i];
    if (id < -1 || (id >= 0 && static_cast<size_t>(id) >= a.src_rows))
      throw_error(ErrorCode::InvalidArgument, "ids[" + std::to_string(i) + "] must be in [-1, " +
                                                  std::to_string(a.src_rows) + "), received " + std::to_string(id));
  }
  if (a.n == 0 || a.row_bytes == 0) return;
  const auto* src = static_cast<const uint8_t*>(a.src);
  auto* dst = static_cast<uint8_t*>(a.dst);
  // About 256 KiB of rows per range: enough to amortise the hand-off, small enough to split work across cores.
  size_t grain = (size_t{256} << 10) / a.row_bytes;
  if (grain == 0) grain = 1;
  std::function<void(size_t, size_t)> fn = [&](size_t r0, size_t r1) {
    for (size_t i = r0; i < r1; ++i) {
      uint8_t* d = dst + i * a.dst_stride;
      int32_t id = a.ids[i];
      if (id < 0) std::memset(d, 0, a.row_bytes);
      else std::memcpy(d, src + static_cast<size_t>(id) * a.src_stride, a.row_bytes);
    }
  };
  if (!ThreadPool::global().parallel_for(a.n, grain, fn, cancel)) throw_error(ErrorCode::Cancelled, "cancelled");
}

}  // namespace moe::cpu
