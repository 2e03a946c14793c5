// dot_probe (dot_probe.h): 12 accumulators hide vdpbf16ps latency; the result is summed into a volatile so the
// loop is not removed.
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
#endif

}  // namespace

double dot_probe(int64_t iters) {
#if MOE_X86
  if (clamp_isa(Isa::Avx512Bf16) < Isa::Avx512Bf16 || iters <= 0) return 0;
  const size_t threads = static_cast<size_t>(ThreadPool::global().size());
  ThreadPool::global().parallel_for(threads, 1, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) g_sink = dp_loop(iters, static_cast<float>(i));
  });
  return static_cast<double>(threads) * static_cast<double>(iters) * 12.0 * 64.0;
#else
  (void)iters;
  return 0;
#endif
}

}  // namespace moe::cpu
