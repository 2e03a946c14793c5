// MoE combine on the CPU (moe_combine.h). moe_combine_token is THE combine: moe_experts' fused path (step 4 of
// moe_experts.cc) and moe_combine both call it, so the chunked path (parts, then moe_combine) gives bitwise the
// fused path's output. It is compiled for the baseline target (no MOE_TARGET_* attribute: no FMA on x86-64, so no
// contraction of w * p + acc) and kept out of line, so both callers run the same instructions on every tier. The
// loop is elementwise (each acc[c] is its own chain over j, in order): auto-vectorization does not change it.
#include "moe_combine.h"

#include <functional>
#include <string>
#include <vector>

#include "../core/dtype.h"
#include "../core/error.h"
#include "../core/threadpool.h"

namespace moe::cpu {

#if defined(__GNUC__) || defined(__clang__)
#define MOE_NOINLINE __attribute__((noinline))
#else
#define MOE_NOINLINE
#endif

MOE_NOINLINE void moe_combine_token(const float* const* rows, const float* w, int64_t k, int64_t h, float* acc,
                                    uint16_t* y) {
  for (int64_t c = 0; c < h; ++c) acc[c] = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    const float* p = rows[j];  // [h] f32
    if (p == nullptr) continue;
    const float wj = w[j];
    for (int64_t c = 0; c < h; ++c) acc[c] += wj * p[c];
  }
  for (int64_t c = 0; c < h; ++c) y[c] = f32_to_bf16(acc[c]);
}

namespace {
void require(bool ok, const std::string& what) {
  if (!ok) throw_error(ErrorCode::InvalidArgument, "moeCombine: " + what);
}
std::string i64(int64_t v) { return std::to_string(v); }
}  // namespace

Isa moe_combine(const MoeCombineArgs& a, Isa /*isa: one baseline function on every tier*/, const CancelToken* cancel) {
  require(a.t >= 0, "tokens must be >= 0, received " + i64(a.t));
  require(a.h >= 1 && a.k >= 1, "hidden and k must be >= 1, received " + i64(a.h) + ", " + i64(a.k));
  require(a.t == 0 || (a.parts != nullptr && a.topk_ids != nullptr && a.topk_weights != nullptr && a.out != nullptr),
          "parts, topkIds, topkWeights and out must be non-null");
  for (int64_t i = 0; i < a.t * a.k; ++i) {
    const int32_t x = a.topk_ids[i];
    require(x >= -1, "topkIds must be -1 or >= 0, received " + i64(x) + " at index " + i64(i));
  }
  const int64_t H = a.h, K = a.k;
  std::function<void(size_t, size_t)> combine = [&](size_t t0, size_t t1) {
    std::vector<float> acc(static_cast<size_t>(H));           // [h] f32
    std::vector<const float*> rows(static_cast<size_t>(K));  // [k] rows of parts, nullptr: id -1
    for (size_t tl = t0; tl < t1; ++tl) {
      const int64_t t = static_cast<int64_t>(tl);
      for (int64_t j = 0; j < K; ++j)
        rows[j] = a.topk_ids[t * K + j] >= 0 ? a.parts + (t * K + j) * H : nullptr;
      moe_combine_token(rows.data(), a.topk_weights + t * K, K, H, acc.data(), a.out + t * H);
    }
  };
  if (a.t > 0 && !ThreadPool::global().parallel_for(static_cast<size_t>(a.t), 4, combine, cancel)) {
    throw_error(ErrorCode::Cancelled, "moeCombine: cancelled");
  }
  return Isa::Scalar;
}

}  // namespace moe::cpu
