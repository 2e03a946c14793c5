// read_probe (read_probe.h): per 1 MiB chunk, four independent AVX-512 (or AVX2, or scalar) f32 accumulators
// over 64-byte loads; chunk sums land in a vector and are added in order at the end.
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
#endif

float sum_chunk(const float* p, size_t n) {
  size_t i = 0;
  float s = 0.0f;
#if MOE_X86
  if (clamp_isa(Isa::Avx512Bf16) >= Isa::Avx512) {
    i = n - n % 64;
    s = sum_avx512(p, i);
  }
#endif
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace

double read_probe(const float* data, size_t n) {
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<float> part(chunks, 0.0f);
  std::function<void(size_t, size_t)> fn = [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {
      const size_t b = c * kChunk, e = b + kChunk < n ? b + kChunk : n;
      part[c] = sum_chunk(data + b, e - b);
    }
  };
  ThreadPool::global().parallel_for(chunks, 1, fn, nullptr);
  double s = 0.0;
  for (float v : part) s += v;
  return s;
}

}  // namespace moe::cpu
