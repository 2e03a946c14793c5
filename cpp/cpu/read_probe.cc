// read_probe, read_sum (read_probe.h): per 1 MiB chunk, four independent AVX-512 (or AVX2) f32 accumulators over 64-byte
// (32-byte) loads, or eight scalar ones; chunk sums land in a vector and are added in order at the end. The
// accumulators must be independent: one serial chain of adds is bound by the add's latency, not by memory (a single
// scalar chain read about 8 GB/s on a 2-core EPYC that streams 26 GB/s).
#include "read_probe.h"

#include <functional>
#include <vector>

#include "../core/isa.h"
#include "../core/threadpool.h"
#include "simd.h"

namespace moe::cpu {

namespace {

constexpr size_t kChunk = (size_t{1} << 20) / sizeof(float);  // f32 values per chunk

#if MOE_X86
MOE_TARGET_AVX512 float sum_avx512(const float* p, size_t n) {  // [n] f32, n a multiple of 64
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < n; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(p + i));
    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(p + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_loadu_ps(p + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_loadu_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

MOE_TARGET_AVX2 float sum_avx2(const float* p, size_t n) {  // [n] f32, n a multiple of 32
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < n; i += 32) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(p + i));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(p + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_loadu_ps(p + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_loadu_ps(p + i + 24));
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
#endif

// [n] f32, n a multiple of 8: eight independent chains (one chain is latency bound).
float sum_scalar(const float* p, size_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (size_t i = 0; i < n; i += 8)
    for (size_t j = 0; j < 8; ++j) s[j] += p[i + j];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

}  // namespace

float read_sum(const float* p, size_t n, Isa isa) {
  isa = clamp_isa(isa);
  size_t i = 0;
  float s = 0.0f;
#if MOE_X86
  if (isa >= Isa::Avx512) {
    i = n - n % 64;
    s = sum_avx512(p, i);
  } else if (isa == Isa::Avx2) {
    i = n - n % 32;
    s = sum_avx2(p, i);
  }
#else
  (void)isa;
#endif
  if (i == 0) {
    i = n - n % 8;
    s = sum_scalar(p, i);
  }
  for (; i < n; ++i) s += p[i];
  return s;
}

double read_probe(const float* data, size_t n, Isa isa) {
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<float> part(chunks, 0.0f);
  std::function<void(size_t, size_t)> fn = [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {
      const size_t b = c * kChunk, e = b + kChunk < n ? b + kChunk : n;
      part[c] = read_sum(data + b, e - b, isa);
    }
  };
  ThreadPool::global().parallel_for(chunks, 1, fn, nullptr);
  double s = 0.0;
  for (float v : part) s += v;
  return s;
}

}  // namespace moe::cpu
