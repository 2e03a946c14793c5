// Router top-k and moe_align on the CPU (router_topk.h). Plain scalar C++: these ops are O(T * E) and O(T * k),
// tiny next to the expert GEMMs. Deterministic: fixed summation order, ties to the lower expert id.
#include "router_topk.h"

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/threadpool.h"

namespace moe::cpu {

namespace {

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw_error(ErrorCode::InvalidArgument, std::string(op) + ": " + what);
}
std::string i64(int64_t v) { return std::to_string(v); }

// a before b in selection order: higher score, then lower id. NaN scores rank below everything.
inline bool better(float sa, int64_t a, float sb, int64_t b) {
  const bool na = std::isnan(sa), nb = std::isnan(sb);
  if (na != nb) return nb;
  if (na) return a < b;
  return sa > sb || (sa == sb && a < b);
}

void topk_token(const RouterTopKArgs& g, int64_t t, float* score, uint8_t* taken) {
  const float* l = g.logits + t * g.e;  // [e]
  int32_t* ids = g.topk_ids + t * g.k;  // [k]
  float* w = g.topk_weights + t * g.k;  // [k]
  for (int64_t x = 0; x < g.e; ++x) {
    score[x] = g.scoring == Scoring::Sigmoid && g.bias != nullptr ? l[x] + g.bias[x] : l[x];
    taken[x] = 0;
  }
  float mx = -INFINITY, sum = 0.0f;
  if (g.scoring == Scoring::Softmax) {
    for (int64_t x = 0; x < g.e; ++x) mx = l[x] > mx ? l[x] : mx;
    for (int64_t x = 0; x < g.e; ++x) sum += std::exp(l[x] - mx);
  }
  for (int64_t j = 0; j < g.k; ++j) {
    int64_t best = -1;
    for (int64_t x = 0; x < g.e; ++x) {
      if (taken[x]) continue;
      if (best < 0 || better(score[x], x, score[best], best)) best = x;
    }
    taken[best] = 1;
    ids[j] = static_cast<int32_t>(best);
    w[j] = g.scoring == Scoring::Softmax ? std::exp(l[best] - mx) / sum : 1.0f / (1.0f + std::exp(-l[best]));
  }
  if (g.renormalize) {
    float s = 0.0f;
    for (int64_t j = 0; j < g.k; ++j) s += w[j];
    for (int64_t j = 0; j < g.k; ++j) w[j] = s > 0.0f ? w[j] / s : 0.0f;
  }
}

}  // namespace

Isa router_topk(const RouterTopKArgs& g, const CancelToken* cancel) {
  const char* op = "routerTopK";
  require(g.t >= 0, op, "tokens must be >= 0, received " + i64(g.t));
  require(g.e >= 1, op, "experts must be >= 1, received " + i64(g.e));
  require(g.k >= 1 && g.k <= g.e, op, "k must be in [1, experts=" + i64(g.e) + "], received " + i64(g.k));
  require(g.scoring == Scoring::Softmax || g.scoring == Scoring::Sigmoid, op, "scoring must be softmax or sigmoid");
  require(g.t == 0 || (g.logits != nullptr && g.topk_ids != nullptr && g.topk_weights != nullptr), op,
          "logits, topkIds and topkWeights must be non-null");
  if (g.t == 0) return Isa::Scalar;
  const RouterTopKArgs a = g;
  std::function<void(size_t, size_t)> fn = [&a](size_t t0, size_t t1) {
    std::vector<float> score(static_cast<size_t>(a.e));
    std::vector<uint8_t> taken(static_cast<size_t>(a.e));
    for (size_t t = t0; t < t1; ++t) topk_token(a, static_cast<int64_t>(t), score.data(), taken.data());
  };
  const size_t grain = static_cast<size_t>(1 + 16384 / (g.e * g.k));
  if (!ThreadPool::global().parallel_for(static_cast<size_t>(g.t), grain, fn, cancel)) {
    throw_error(ErrorCode::Cancelled, "routerTopK: cancelled");
  }
  return Isa::Scalar;
}

Isa moe_align(const MoeAlignArgs& g) {
  const char* op = "moeAlign";
  require(g.t >= 0 && g.k >= 1, op, "tokens must be >= 0 and k >= 1, received " + i64(g.t) + ", " + i64(g.k));
  require(g.e >= 1, op, "experts must be >= 1, received " + i64(g.e));
  require(g.block >= 1, op, "blockSize must be >= 1, received " + i64(g.block));
  const int64_t need = moe_align_capacity(g.t, g.k, g.e, g.block);
  require(need <= INT32_MAX, op, "t * k + e * (blockSize - 1) must fit in int32, received " + i64(need));
  require(g.capacity >= need, op, "sortedTokenIds must hold at least " + i64(need) + " ids, received " + i64(g.capacity));
  const int64_t n = g.t * g.k;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t x = g.topk_ids[i];
    require(x >= -1 && x < g.e, op,
            "topkIds must be -1 or in [0, " + i64(g.e) + "), received " + i64(x) + " at index " + i64(i));
  }
  for (int64_t x = 0; x < g.e; ++x) g.counts[x] = 0;
  for (int64_t i = 0; i < n; ++i)
    if (g.topk_ids[i] >= 0) ++g.counts[g.topk_ids[i]];
  g.offsets[0] = 0;
  for (int64_t x = 0; x < g.e; ++x) {
    const int64_t padded = (g.counts[x] + g.block - 1) / g.block * g.block;
    g.offsets[x + 1] = static_cast<int32_t>(g.offsets[x] + padded);
  }
  const int32_t sentinel = static_cast<int32_t>(n);
  for (int64_t r = 0; r < g.capacity; ++r) g.sorted_token_ids[r] = sentinel;
  std::vector<int32_t> cursor(g.offsets, g.offsets + g.e);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t x = g.topk_ids[i];
    if (x >= 0) g.sorted_token_ids[cursor[static_cast<size_t>(x)]++] = static_cast<int32_t>(i);
  }
  return Isa::Scalar;
}

}  // namespace moe::cpu
