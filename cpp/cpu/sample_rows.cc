// Row sampler (sample_rows.h). The ordering "a ranks above b" is: higher logit; NaN below every number; equal
// logits (or two NaNs): the lower id.
#include "sample_rows.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/threadpool.h"
#include "argmax_rows.h"

namespace moe::cpu {
namespace {

inline bool above(const float* l, int32_t a, int32_t b) {
  const float x = l[a], y = l[b];
  const bool nx = std::isnan(x), ny = std::isnan(y);
  if (nx || ny) return nx == ny ? a < b : ny;  // NaN below every number; two NaNs: the lower id
  if (x != y) return x > y;
  return a < b;
}

// Heap over h[0 .. n): parent ranks above its children when kMax, below them otherwise.
template <bool kMax>
void sift_down(int32_t* h, int64_t n, int64_t i, const float* l) {
  const int32_t v = h[i];
  for (;;) {
    int64_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && above(l, h[c + 1], h[c]) == kMax) ++c;
    if (above(l, h[c], v) != kMax) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = v;
}
template <bool kMax>
void heapify(int32_t* h, int64_t n, const float* l) {
  for (int64_t i = n / 2 - 1; i >= 0; --i) sift_down<kMax>(h, n, i, l);
}

// The kept candidate at which u x (their total weight) falls, walking them in order (the last on rounding).
int32_t draw(double u, const int32_t* ids, const double* p, int64_t keep) {
  double mass = 0;
  for (int64_t i = 0; i < keep; ++i) mass += p[i];
  double x = u * mass;
  for (int64_t i = 0; i < keep; ++i) {
    x -= p[i];
    if (x < 0) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace

int32_t sample_row(const float* l, int64_t n, const double* params, Isa isa) {
  const double temperature = params[0], top_p = params[2], u = params[3];
  const int64_t top_k = static_cast<int64_t>(params[1]);
  const int32_t best = argmax_row(l, n, isa);
  const float bv = l[best];
  // greedy; also a row without a logit > -inf, and one whose maximum is +inf (its weights would be inf - inf)
  if (temperature == 0 || !(bv > -std::numeric_limits<float>::infinity()) || std::isinf(bv)) return best;
  const double m = bv;
  auto weight = [&](int64_t i) { return std::isnan(l[i]) ? 0.0 : std::exp((static_cast<double>(l[i]) - m) / temperature); };

  if (top_k > 0 && top_k < n) {
    // min-heap of the k best seen (root: the worst of them), then popped worst-last: best first
    std::vector<int32_t> h(static_cast<size_t>(top_k));
    for (int64_t i = 0; i < top_k; ++i) h[i] = static_cast<int32_t>(i);
    heapify<false>(h.data(), top_k, l);
    for (int64_t i = top_k; i < n; ++i) {
      if (!above(l, static_cast<int32_t>(i), h[0])) continue;
      h[0] = static_cast<int32_t>(i);
      sift_down<false>(h.data(), top_k, 0, l);
    }
    for (int64_t end = top_k - 1; end > 0; --end) {
      std::swap(h[0], h[end]);
      sift_down<false>(h.data(), end, 0, l);
    }
    std::vector<double> p(static_cast<size_t>(top_k));
    double sum = 0;
    for (int64_t i = 0; i < top_k; ++i) sum += p[i] = weight(h[i]);
    int64_t keep = top_k;
    if (top_p < 1) {
      double c = 0;
      for (int64_t i = 0; i < top_k; ++i) {
        c += p[i] / sum;
        if (c >= top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    return draw(u, h.data(), p.data(), keep);
  }

  std::vector<double> wt(static_cast<size_t>(n));
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += wt[i] = weight(i);
  if (top_p >= 1) {
    double x = u * total;
    int32_t last = best;
    for (int64_t i = 0; i < n; ++i) {
      if (wt[i] == 0) continue;
      last = static_cast<int32_t>(i);
      x -= wt[i];
      if (x < 0) return last;
    }
    return last;
  }
  // top-p over the row: band b = floor(log2(max weight / weight)) (63: the rest, NaN included); the heap starts with
  // the bands up to one past the first whose cumulative mass reaches top_p (every id outside ranks below every id in)
  std::vector<uint8_t> band_of(static_cast<size_t>(n));
  double band_mass[64] = {};
  for (int64_t i = 0; i < n; ++i) {
    const double b = std::floor(((m - static_cast<double>(l[i])) / temperature) * 1.4426950408889634);
    band_of[i] = std::isnan(l[i]) || !(b < 63) ? 63 : static_cast<uint8_t>(b);
    band_mass[band_of[i]] += wt[i];
  }
  int band = 0;
  for (double c = band_mass[0]; band < 63 && c < top_p * total;) c += band_mass[++band];
  const int cut = std::min(63, band + 1);
  std::vector<int32_t> h(static_cast<size_t>(n));
  int64_t size = 0;
  for (int64_t i = 0; i < n; ++i)
    if (band_of[i] <= cut) h[size++] = static_cast<int32_t>(i);
  bool widened = cut >= 63;
  heapify<true>(h.data(), size, l);
  std::vector<int32_t> ids;
  std::vector<double> p;
  double c = 0;
  for (;;) {
    if (size == 0) {
      if (widened) break;
      widened = true;  // rounding left the pops short of top_p: every other id joins
      for (int64_t i = 0; i < n; ++i)
        if (band_of[i] > cut) h[size++] = static_cast<int32_t>(i);
      heapify<true>(h.data(), size, l);
      if (size == 0) break;
    }
    const int32_t id = h[0];
    ids.push_back(id);
    p.push_back(wt[id]);
    c += wt[id];
    if (c / total >= top_p) break;
    h[0] = h[--size];
    sift_down<true>(h.data(), size, 0, l);
  }
  return draw(u, ids.data(), p.data(), static_cast<int64_t>(ids.size()));
}

bool sample_rows(const SampleRowsArgs& a, const CancelToken* cancel) {
  auto fn = [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r)
      a.out[r] = sample_row(a.logits + static_cast<int64_t>(r) * a.vocab, a.vocab, a.params + 4 * r, a.isa);
  };
  return ThreadPool::global().parallel_for(static_cast<size_t>(a.rows), 1, fn, cancel);
}

}  // namespace moe::cpu
