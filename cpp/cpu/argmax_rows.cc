// See argmax_rows.h. A strict > from -inf: the first of equal maxima wins, NaN compares false, and a row of -inf /
// NaN keeps id 0. The vector tiers keep a running maximum and its index per lane (each lane sees its ids in
// increasing order, so a strict > keeps the lane's first maximum), several accumulators to hide the compare's
// latency (unrolled: as an array in a rolled loop they lived on the stack, 2x slower), then the largest lane value
// and, among the lanes holding it, the smallest id: the same id as the scalar loop, on every tier. Measured
// (bench/native/bench.cc, 32 x 151936 logits, 2-core AVX-512 VM, 2026-11-28): scalar 1.86 ms (a compare chained
// through the running maximum), AVX2 0.37 ms, AVX-512 0.19 ms.
#include "argmax_rows.h"

#include <functional>
#include <limits>

#include "../core/threadpool.h"
#include "simd.h"

namespace moe::cpu {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int32_t row_scalar(const float* l, int64_t n, int64_t from = 0, int32_t best = 0, float bv = kNegInf) {
  for (int64_t i = from; i < n; ++i)
    if (l[i] > bv) {
      bv = l[i];
      best = static_cast<int32_t>(i);
    }
  return best;
}

#if MOE_X86
// The vector tiers' lanes at the end of their rounds: the largest of n lane maxima `vals` and, among the lanes
// holding it, the smallest of their ids; (0, -inf) when no lane went above -inf.
int32_t best_lane(const float* vals, const int32_t* ids, int n, float* bv) {
  float b = kNegInf;
  int32_t r = 0;
  for (int j = 0; j < n; ++j)
    if (vals[j] > b || (vals[j] == b && b != kNegInf && ids[j] < r)) {
      b = vals[j];
      r = ids[j];
    }
  *bv = b;
  return r;
}

// 4 accumulators of 16 lanes: ids i .. i + 63 per round.
MOE_TARGET_AVX512 int32_t row_avx512(const float* l, int64_t n) {
  constexpr int kAcc = 4;
  if (n < 16 * kAcc) return row_scalar(l, n);
  __m512 best[kAcc];
  __m512i at[kAcc], idx[kAcc];
  for (int a = 0; a < kAcc; ++a) {
    best[a] = _mm512_set1_ps(kNegInf);
    at[a] = _mm512_setzero_si512();
    idx[a] = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(16 * a));
  }
  const __m512i step = _mm512_set1_epi32(16 * kAcc);
  int64_t i = 0;
  for (; i + 16 * kAcc <= n; i += 16 * kAcc) {
#pragma GCC unroll 4  // the accumulators stay in registers only when the lanes' loop is unrolled
    for (int a = 0; a < kAcc; ++a) {
      const __m512 v = _mm512_loadu_ps(l + i + 16 * a);
      const __mmask16 gt = _mm512_cmp_ps_mask(v, best[a], _CMP_GT_OQ);  // NaN: false
      best[a] = _mm512_mask_mov_ps(best[a], gt, v);
      at[a] = _mm512_mask_mov_epi32(at[a], gt, idx[a]);
      idx[a] = _mm512_add_epi32(idx[a], step);
    }
  }
  alignas(64) float vals[16 * kAcc];
  alignas(64) int32_t ids[16 * kAcc];
  for (int a = 0; a < kAcc; ++a) {
    _mm512_store_ps(vals + 16 * a, best[a]);
    _mm512_store_si512(ids + 16 * a, at[a]);
  }
  float bv;
  const int32_t r = best_lane(vals, ids, 16 * kAcc, &bv);
  return row_scalar(l, n, i, r, bv);
}

// 2 accumulators of 8 lanes: ids i .. i + 15 per round.
MOE_TARGET_AVX2 int32_t row_avx2(const float* l, int64_t n) {
  constexpr int kAcc = 2;
  if (n < 8 * kAcc) return row_scalar(l, n);
  __m256 best[kAcc];
  __m256i at[kAcc], idx[kAcc];
  for (int a = 0; a < kAcc; ++a) {
    best[a] = _mm256_set1_ps(kNegInf);
    at[a] = _mm256_setzero_si256();
    idx[a] = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * a));
  }
  const __m256i step = _mm256_set1_epi32(8 * kAcc);
  int64_t i = 0;
  for (; i + 8 * kAcc <= n; i += 8 * kAcc) {
#pragma GCC unroll 2
    for (int a = 0; a < kAcc; ++a) {
      const __m256 v = _mm256_loadu_ps(l + i + 8 * a);
      const __m256 gt = _mm256_cmp_ps(v, best[a], _CMP_GT_OQ);  // NaN: false
      best[a] = _mm256_blendv_ps(best[a], v, gt);
      at[a] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(at[a]), _mm256_castsi256_ps(idx[a]), gt));
      idx[a] = _mm256_add_epi32(idx[a], step);
    }
  }
  alignas(32) float vals[8 * kAcc];
  alignas(32) int32_t ids[8 * kAcc];
  for (int a = 0; a < kAcc; ++a) {
    _mm256_store_ps(vals + 8 * a, best[a]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(ids + 8 * a), at[a]);
  }
  float bv;
  const int32_t r = best_lane(vals, ids, 8 * kAcc, &bv);
  return row_scalar(l, n, i, r, bv);
}
#endif

}  // namespace

int32_t argmax_row(const float* l, int64_t n, Isa isa) {
#if MOE_X86
  const Isa tier = clamp_isa(isa);
  if (tier >= Isa::Avx512) return row_avx512(l, n);
  if (tier >= Isa::Avx2) return row_avx2(l, n);
#else
  (void)isa;
#endif
  return row_scalar(l, n);
}

bool argmax_rows(const float* logits, int64_t rows, int64_t vocab, int32_t* out, const CancelToken* cancel, Isa isa) {
  // about 64K logits per range
  const size_t grain = static_cast<size_t>(vocab >= 65536 ? 1 : 65536 / vocab);
  std::function<void(size_t, size_t)> fn = [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) out[r] = argmax_row(logits + static_cast<int64_t>(r) * vocab, vocab, isa);
  };
  return ThreadPool::global().parallel_for(static_cast<size_t>(rows), grain, fn, cancel);
}

}  // namespace moe::cpu
