// dot_probe (dot_probe.h): 12 accumulators hide the multiply-add's latency (4-6 cycles on two ports); the result is
// summed into a volatile so the loop is not removed.
#include "dot_probe.h"

#include <functional>
#include <vector>

#include "../core/isa.h"
#include "../core/threadpool.h"
#include "simd.h"

namespace moe::cpu {

namespace {

volatile float g_sink;

#if MOE_X86
MOE_TARGET_AVX512BF16 float dp_loop(int64_t iters, float seed) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(seed * static_cast<float>(i));
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80);
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3c00);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

MOE_TARGET_AVX512 float fma512_loop(int64_t iters, float seed) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(seed * static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(2e-8f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
  __m512 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

MOE_TARGET_AVX2 float fma256_loop(int64_t iters, float seed) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(seed * static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(2e-8f);
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(a, b, acc[i]);
  __m256 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, acc[i]);
  alignas(32) float l[8];
  _mm256_store_ps(l, s);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}
#endif

}  // namespace

const char* dot_probe_op(Isa isa) {
#if MOE_X86
  isa = clamp_isa(isa);
  return isa == Isa::Avx512Bf16 ? "vdpbf16ps" : isa == Isa::Scalar ? "none (scalar)" : "f32 FMA";
#else
  (void)isa;
  return "none (scalar)";
#endif
}

double dot_probe(int64_t iters, Isa isa) {
#if MOE_X86
  isa = clamp_isa(isa);
  if (isa == Isa::Scalar || iters <= 0) return 0;
  const size_t threads = static_cast<size_t>(ThreadPool::global().size());
  ThreadPool::global().parallel_for(threads, 1, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const float seed = static_cast<float>(i);
      g_sink = isa == Isa::Avx512Bf16 ? dp_loop(iters, seed) : isa == Isa::Avx512 ? fma512_loop(iters, seed) : fma256_loop(iters, seed);
    }
  });
  const double per = isa == Isa::Avx512Bf16 ? 64.0 : isa == Isa::Avx512 ? 32.0 : 16.0;
  return static_cast<double>(threads) * static_cast<double>(iters) * 12.0 * per;
#else
  (void)iters;
  (void)isa;
  return 0;
#endif
}

}  // namespace moe::cpu
