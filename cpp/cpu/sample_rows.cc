// Row sampler (sample_rows.h). The ordering "a ranks above b" is: higher logit; NaN below every number; equal
// logits (or two NaNs): the lower id. The whole-row modes (no top_k) take their weights in one vector pass (f32,
// simd.h's exp) with 64-id block sums (no top_p) or weight bands (top_p), so they read the row twice (the argmax and
// the weights) and sort only the ids of one band; top_k's scan skips, a vector at a time, the ids that cannot enter
// its heap. Measured (bench/native/bench.cc, 32 x 151936 logits, temperature 0.8, both cores of a 2-core AVX-512 VM,
// 2026-11-28), a double exp per logit and top_p by heap pops before -> now: plain 11.2 -> 1.1-1.3 ms, top_p 0.95
// 49 -> 3.7-4.2 ms, top_k 50 3.6 -> 0.7-0.8 ms.
#include "sample_rows.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/threadpool.h"
#include "argmax_rows.h"
#include "simd.h"

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

// ---- whole-row weights: w[i] = exp((l[i] - max) / temperature) in f32 (0 for NaN, -inf and below exp(-87.3)) ----

constexpr int64_t kBlock = 64;                           // ids per block sum (4 AVX-512 vectors)
constexpr int kBands = 1024;                             // weight bands of 1/8 doubling; the last also holds w = 0
constexpr float kBandScale = 8 * 1.44269504088896341f;  // band = floor(-x log2(e) 8), x = (l - max) / temperature

inline float weight_scalar(float x) { return std::isnan(x) || x < -87.3f ? 0.0f : std::exp(x); }
inline uint16_t band_scalar(float x) {
  const float t = -x * kBandScale;  // NaN, -inf (t = inf) and t >= the last band: the last band
  return t < static_cast<float>(kBands - 1) ? static_cast<uint16_t>(t) : static_cast<uint16_t>(kBands - 1);
}

// Row scratch of a pool thread (kept: a Qwen3 row's weights are 600 KB).
struct Scratch {
  std::vector<float> w, blk;
  std::vector<uint16_t> band;
  std::vector<int32_t> ids;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// w [n] and either blk [ceil(n / kBlock)] (each block's sum, f32) or band [n]; scalar tier.
void weights_scalar(const float* l, int64_t n, float m, float inv_t, float* w, float* blk, uint16_t* band) {
  for (int64_t b = 0; b < n; b += kBlock) {
    float sum = 0;
    for (int64_t i = b; i < std::min(n, b + kBlock); ++i) {
      const float x = l[i] == m ? 0.0f : (l[i] - m) * inv_t;
      sum += w[i] = weight_scalar(x);
      if (band) band[i] = band_scalar(x);
    }
    if (blk) blk[b / kBlock] = sum;
  }
}

#if MOE_X86
MOE_TARGET_AVX512 void weights_avx512(const float* l, int64_t n, float m, float inv_t, float* w, float* blk, uint16_t* band) {
  const __m512 vm = _mm512_set1_ps(m), vt = _mm512_set1_ps(inv_t), scale = _mm512_set1_ps(-kBandScale);
  const __m512 last = _mm512_set1_ps(static_cast<float>(kBands - 1));
  for (int64_t b = 0; b < n; b += kBlock) {
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = b; i < std::min(n, b + kBlock); i += 16) {
      const __mmask16 k = simd::tail_mask16(static_cast<size_t>(n - i));
      const __m512 v = _mm512_maskz_loadu_ps(k, l + i);
      const __mmask16 num = _mm512_mask_cmp_ps_mask(k, v, v, _CMP_ORD_Q);
      // x = (l - max) / temperature, exactly 0 at the maximum (an infinite 1 / temperature times 0 would be NaN)
      const __mmask16 top = _mm512_cmp_ps_mask(v, vm, _CMP_EQ_OQ);
      const __m512 x = _mm512_mask_mov_ps(_mm512_mul_ps(_mm512_sub_ps(v, vm), vt), top, _mm512_setzero_ps());
      const __m512 wv = _mm512_maskz_mov_ps(num, simd::exp_neg512(x));
      _mm512_mask_storeu_ps(w + i, k, wv);
      sum = _mm512_add_ps(sum, wv);
      if (band) {
        // min(NaN, last) is last: NaN lanes and t >= last land in the last band
        const __m512 t = _mm512_min_ps(_mm512_mul_ps(x, scale), last);
        _mm256_mask_storeu_epi16(band + i, k, _mm512_cvtepi32_epi16(_mm512_cvttps_epi32(t)));
      }
    }
    if (blk) blk[b / kBlock] = _mm512_reduce_add_ps(sum);
  }
}

MOE_TARGET_AVX2 void weights_avx2(const float* l, int64_t n, float m, float inv_t, float* w, float* blk, uint16_t* band) {
  const __m256 vm = _mm256_set1_ps(m), vt = _mm256_set1_ps(inv_t), scale = _mm256_set1_ps(-kBandScale);
  const __m256 last = _mm256_set1_ps(static_cast<float>(kBands - 1));
  int64_t b = 0;
  for (; b + kBlock <= n; b += kBlock) {
    __m256 sum = _mm256_setzero_ps();
    for (int64_t i = b; i < b + kBlock; i += 8) {
      const __m256 v = _mm256_loadu_ps(l + i);
      const __m256 num = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
      const __m256 top = _mm256_cmp_ps(v, vm, _CMP_EQ_OQ);
      const __m256 x = _mm256_andnot_ps(top, _mm256_mul_ps(_mm256_sub_ps(v, vm), vt));
      const __m256 wv = _mm256_and_ps(simd::exp_neg256(x), num);
      _mm256_storeu_ps(w + i, wv);
      sum = _mm256_add_ps(sum, wv);
      if (band) {
        // vminps returns its second operand when the first is NaN: NaN lanes land in the last band
        const __m256i t = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_mul_ps(x, scale), last));
        const __m128i b16 = _mm_packus_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(band + i), b16);
      }
    }
    if (blk) {
      __m128 q = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
      q = _mm_add_ps(q, _mm_movehl_ps(q, q));
      blk[b / kBlock] = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
    }
  }
  if (b < n) weights_scalar(l + b, n - b, m, inv_t, w + b, blk ? blk + b / kBlock : nullptr, band ? band + b : nullptr);
}

// The first i in [from, n) with l[i] > v (v a number; NaN logits never are), or n.
MOE_TARGET_AVX512 int64_t next_above_avx512(const float* l, int64_t from, int64_t n, float v) {
  const __m512 vv = _mm512_set1_ps(v);
  int64_t i = from;
  for (; i + 32 <= n; i += 32) {
    const __mmask16 a = _mm512_cmp_ps_mask(_mm512_loadu_ps(l + i), vv, _CMP_GT_OQ);
    const __mmask16 b = _mm512_cmp_ps_mask(_mm512_loadu_ps(l + i + 16), vv, _CMP_GT_OQ);
    if (a | b) return i + (a ? __builtin_ctz(a) : 16 + __builtin_ctz(b));
  }
  for (; i < n; ++i)
    if (l[i] > v) return i;
  return n;
}

MOE_TARGET_AVX2 int64_t next_above_avx2(const float* l, int64_t from, int64_t n, float v) {
  const __m256 vv = _mm256_set1_ps(v);
  int64_t i = from;
  for (; i + 16 <= n; i += 16) {
    const int a = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(l + i), vv, _CMP_GT_OQ));
    const int b = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(l + i + 8), vv, _CMP_GT_OQ));
    if (a | b) return i + (a ? __builtin_ctz(a) : 8 + __builtin_ctz(b));
  }
  for (; i < n; ++i)
    if (l[i] > v) return i;
  return n;
}
#endif

void weights(Isa tier, const float* l, int64_t n, float m, float inv_t, float* w, float* blk, uint16_t* band) {
#if MOE_X86
  if (tier >= Isa::Avx512) return weights_avx512(l, n, m, inv_t, w, blk, band);
  if (tier >= Isa::Avx2) return weights_avx2(l, n, m, inv_t, w, blk, band);
#else
  (void)tier;
#endif
  weights_scalar(l, n, m, inv_t, w, blk, band);
}

int64_t next_above(Isa tier, const float* l, int64_t from, int64_t n, float v) {
#if MOE_X86
  if (tier >= Isa::Avx512) return next_above_avx512(l, from, n, v);
  if (tier >= Isa::Avx2) return next_above_avx2(l, from, n, v);
#else
  (void)tier;
#endif
  for (int64_t i = from; i < n; ++i)
    if (l[i] > v) return i;
  return n;
}

}  // namespace

int32_t sample_row(const float* l, int64_t n, const double* params, Isa isa) {
  const double temperature = params[0], top_p = params[2], u = params[3];
  const int64_t top_k = static_cast<int64_t>(params[1]);
  const int32_t best = argmax_row(l, n, isa);
  const float bv = l[best];
  // greedy; also a row without a logit > -inf, and one whose maximum is +inf (its weights would be inf - inf)
  if (temperature == 0 || !(bv > -std::numeric_limits<float>::infinity()) || std::isinf(bv)) return best;
  const Isa tier = vector_tier(isa);

  if (top_k > 0 && top_k < n) {
    // min-heap of the k best seen (root: the worst of them), then popped worst-last: best first. An id enters when it
    // ranks above the root: a higher logit (it comes after every id in the heap), or any number over a NaN root.
    const double m = bv;
    std::vector<int32_t> h(static_cast<size_t>(top_k));
    for (int64_t i = 0; i < top_k; ++i) h[i] = static_cast<int32_t>(i);
    heapify<false>(h.data(), top_k, l);
    for (int64_t i = top_k; i < n; ++i) {
      const float root = l[h[0]];
      if (std::isnan(root)) {
        if (std::isnan(l[i])) continue;
      } else if ((i = next_above(tier, l, i, n, root)) == n) {
        break;
      }
      h[0] = static_cast<int32_t>(i);
      sift_down<false>(h.data(), top_k, 0, l);
    }
    for (int64_t end = top_k - 1; end > 0; --end) {
      std::swap(h[0], h[end]);
      sift_down<false>(h.data(), end, 0, l);
    }
    std::vector<double> p(static_cast<size_t>(top_k));
    double sum = 0;
    for (int64_t i = 0; i < top_k; ++i) sum += p[i] = std::isnan(l[h[i]]) ? 0.0 : std::exp((static_cast<double>(l[h[i]]) - m) / temperature);
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

  // the whole row: f32 weights (1 at the maximum); 1 / temperature capped so that it stays finite
  Scratch& sc = scratch();
  sc.w.resize(static_cast<size_t>(n));
  const float inv_t = static_cast<float>(std::min(1.0 / temperature, static_cast<double>(std::numeric_limits<float>::max())));
  const float* w = sc.w.data();
  if (top_p >= 1) {
    // the draw walks the ids in order: whole blocks while u x total lies beyond them
    const int64_t nb = (n + kBlock - 1) / kBlock;
    sc.blk.resize(static_cast<size_t>(nb));
    weights(tier, l, n, bv, inv_t, sc.w.data(), sc.blk.data(), nullptr);
    double total = 0;
    for (int64_t b = 0; b < nb; ++b) total += sc.blk[b];
    double x = u * total;
    int32_t last = best;
    for (int64_t b = 0; b < nb; ++b) {
      if (x >= sc.blk[b]) {
        x -= sc.blk[b];
        continue;
      }
      for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) {
        if (w[i] == 0) continue;
        last = static_cast<int32_t>(i);
        x -= w[i];
        if (x < 0) return last;
      }
    }
    return last;  // rounding: the last id with a weight walked
  }

  // top_p: the bands' masses best first up to the band c where they reach top_p of the total; every id of a band
  // before c is kept (each ranks above every id of c and after), c's ids best first until the mass is reached
  sc.band.resize(static_cast<size_t>(n));
  weights(tier, l, n, bv, inv_t, sc.w.data(), nullptr, sc.band.data());
  const uint16_t* band = sc.band.data();
  double mass[2][kBands] = {};
  int64_t i = 0;
  for (; i + 1 < n; i += 2) {  // two histograms: consecutive ids of one band do not wait on each other's add
    mass[0][band[i]] += w[i];
    mass[1][band[i + 1]] += w[i + 1];
  }
  if (i < n) mass[0][band[i]] += w[i];
  double total = 0;
  for (int b = 0; b < kBands; ++b) total += mass[0][b] += mass[1][b];
  const double target = top_p * total;
  double before = 0;  // mass of the bands before c
  int c = 0;
  for (; c < kBands - 1 && before + mass[0][c] < target; ++c) before += mass[0][c];
  std::vector<int32_t>& ids = sc.ids;
  ids.clear();
  for (int64_t j = 0; j < n; ++j)
    if (band[j] == c && w[j] > 0) ids.push_back(static_cast<int32_t>(j));
  std::sort(ids.begin(), ids.end(), [l](int32_t a, int32_t b) { return above(l, a, b); });
  double part = 0;
  size_t keep = 0;
  while (keep < ids.size() && before + part < target) part += w[ids[keep++]];
  // the draw: bands before c whole (ids in order within a band), then c's kept ids best first
  double x = u * (before + part);
  int32_t last = best;
  for (int b = 0; b < c; ++b) {
    if (x >= mass[0][b]) {
      x -= mass[0][b];
      continue;
    }
    for (int64_t j = 0; j < n; ++j) {
      if (band[j] != b || w[j] == 0) continue;
      last = static_cast<int32_t>(j);
      x -= w[j];
      if (x < 0) return last;
    }
  }
  for (size_t j = 0; j < keep; ++j) {
    last = ids[j];
    x -= w[ids[j]];
    if (x < 0) return last;
  }
  return last;  // rounding: the last kept id walked
}

bool sample_rows(const SampleRowsArgs& a, const CancelToken* cancel) {
  auto fn = [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r)
      a.out[r] = sample_row(a.logits + static_cast<int64_t>(r) * a.vocab, a.vocab, a.params + 4 * r, a.isa);
  };
  return ThreadPool::global().parallel_for(static_cast<size_t>(a.rows), 1, fn, cancel);
}

}  // namespace moe::cpu
