// Packing of bf16 weights into the panel64 layout (pack_weights.h). Per panel, blocks of 16 pairs: the 64 rows'
// 16 pairs (64 bytes each, read as 32-bit words) are written pair-major, so reads are whole cache lines of W and
// writes run sequentially through the panel.
#include "pack_weights.h"

#include <cstring>
#include <functional>
#include <string>

#include "../core/error.h"
#include "../core/threadpool.h"

namespace moe::cpu {

namespace {

// Pair p of row r of w (0 past k or n).
inline uint32_t pair_of(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, int64_t r, int64_t p) {
  if (r >= n) return 0;
  const uint16_t* row = w + r * ldw;
  const uint32_t lo = 2 * p < k ? row[2 * p] : 0, hi = 2 * p + 1 < k ? row[2 * p + 1] : 0;
  return lo | (hi << 16);
}

void pack_panel(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, int64_t q, uint32_t* dst /* [kp][64] */) {
  const int64_t kp = (k + 1) / 2, full = k / 2;  // pairs, pairs without a padded half
  const int64_t r0 = q * kPanelCols;
  for (int64_t p0 = 0; p0 < kp; p0 += 16) {
    const int64_t pn = kp - p0 < 16 ? kp - p0 : 16;
    for (int64_t c = 0; c < kPanelCols; ++c) {
      const int64_t r = r0 + c;
      if (r < n && p0 + pn <= full) {  // whole pairs of a real row: 32-bit loads
        const uint16_t* src = w + r * ldw + 2 * p0;
        for (int64_t i = 0; i < pn; ++i) {
          uint32_t v;
          std::memcpy(&v, src + 2 * i, 4);
          dst[(p0 + i) * kPanelCols + c] = v;
        }
      } else {
        for (int64_t i = 0; i < pn; ++i) dst[(p0 + i) * kPanelCols + c] = pair_of(w, n, k, ldw, r, p0 + i);
      }
    }
  }
}

void require(bool ok, const std::string& what) {
  if (!ok) throw_error(ErrorCode::InvalidArgument, "packWeights: " + what);
}

}  // namespace

void pack_weights(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, uint16_t* dst, const CancelToken* cancel) {
  require(n >= 1 && k >= 1, "n and k must be >= 1, received n=" + std::to_string(n) + " k=" + std::to_string(k));
  require(ldw >= k, "ldw must be >= k, received ldw=" + std::to_string(ldw) + " k=" + std::to_string(k));
  require(w != nullptr && dst != nullptr, "w and dst must be non-null");
  const int64_t panels = (n + kPanelCols - 1) / kPanelCols;
  std::function<void(size_t, size_t)> fn = [&](size_t b, size_t e) {
    for (size_t q = b; q < e; ++q)
      pack_panel(w, n, k, ldw, static_cast<int64_t>(q), reinterpret_cast<uint32_t*>(dst + q * packed_panel_numel(k)));
  };
  if (!ThreadPool::global().parallel_for(static_cast<size_t>(panels), 1, fn, cancel))
    throw_error(ErrorCode::Cancelled, "packWeights: cancelled");
}

}  // namespace moe::cpu
