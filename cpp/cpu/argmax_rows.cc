// See argmax_rows.h. A strict > from -inf: the first of equal maxima wins, NaN compares false, and a row of -inf /
// NaN keeps id 0.
#include "argmax_rows.h"

#include <functional>
#include <limits>

#include "../core/threadpool.h"

namespace moe::cpu {

int32_t argmax_row(const float* l, int64_t n) {
  int32_t best = 0;
  float bv = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i)
    if (l[i] > bv) {
      bv = l[i];
      best = static_cast<int32_t>(i);
    }
  return best;
}

bool argmax_rows(const float* logits, int64_t rows, int64_t vocab, int32_t* out, const CancelToken* cancel) {
  // about 64K logits per range
  const size_t grain = static_cast<size_t>(vocab >= 65536 ? 1 : 65536 / vocab);
  std::function<void(size_t, size_t)> fn = [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) out[r] = argmax_row(logits + static_cast<int64_t>(r) * vocab, vocab);
  };
  return ThreadPool::global().parallel_for(static_cast<size_t>(rows), grain, fn, cancel);
}

}  // namespace moe::cpu
