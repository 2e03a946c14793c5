// Rotary position embedding (rope.h). Per token: a (cos, sin) table of rotary_dim / 2 entries in double -> f32
// (scaling folded in), then every q and k head row of the token is rotated with it. Tiers: scalar (plain loops),
// AVX2 (8 lanes + scalar tail), AVX-512 (16 lanes, masked tail); bf16 through simd.h's conversions.
#include "rope.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/threadpool.h"

#include "simd.h"

namespace moe::cpu {

namespace {

// Rotates one head row x [head_dim] dtype with cs = cos [half] then sin [half] (f32, scaled).
using RowKernel = void (*)(void* x, DType t, const float* cs, int half);

inline float ld(const void* x, DType t, int i) {
  return t == DType::F32 ? static_cast<const float*>(x)[i] : bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
}
inline void st(void* x, DType t, int i, float v) {
  if (t == DType::F32) static_cast<float*>(x)[i] = v;
  else static_cast<uint16_t*>(x)[i] = f32_to_bf16(v);
}

void row_scalar(void* x, DType t, const float* cs, int half) {
  const float* sn = cs + half;
  for (int i = 0; i < half; ++i) {
    const float x1 = ld(x, t, i), x2 = ld(x, t, i + half);
    st(x, t, i, x1 * cs[i] - x2 * sn[i]);
    st(x, t, i + half, x2 * cs[i] + x1 * sn[i]);
  }
}

#if MOE_X86
MOE_TARGET_AVX2 void row_avx2(void* x, DType t, const float* cs, int half) {
  const float* sn = cs + half;
  int i = 0;
  if (t == DType::F32) {
    float* f = static_cast<float*>(x);
    for (; i + 8 <= half; i += 8) {
      const __m256 x1 = _mm256_loadu_ps(f + i), x2 = _mm256_loadu_ps(f + half + i);
      const __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
      _mm256_storeu_ps(f + i, _mm256_fmsub_ps(x1, c, _mm256_mul_ps(x2, s)));
      _mm256_storeu_ps(f + half + i, _mm256_fmadd_ps(x2, c, _mm256_mul_ps(x1, s)));
    }
  } else {
    uint16_t* b = static_cast<uint16_t*>(x);
    for (; i + 8 <= half; i += 8) {
      const __m256 x1 = simd::ld_bf16_avx2(b + i), x2 = simd::ld_bf16_avx2(b + half + i);
      const __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
      simd::st_bf16_avx2(b + i, _mm256_fmsub_ps(x1, c, _mm256_mul_ps(x2, s)));
      simd::st_bf16_avx2(b + half + i, _mm256_fmadd_ps(x2, c, _mm256_mul_ps(x1, s)));
    }
  }
  for (; i < half; ++i) {
    const float x1 = ld(x, t, i), x2 = ld(x, t, i + half);
    st(x, t, i, x1 * cs[i] - x2 * sn[i]);
    st(x, t, i + half, x2 * cs[i] + x1 * sn[i]);
  }
}

MOE_TARGET_AVX512 void row_avx512(void* x, DType t, const float* cs, int half) {
  const float* sn = cs + half;
  for (int i = 0; i < half; i += 16) {
    const __mmask16 m = simd::tail_mask16(static_cast<size_t>(half - i));
    const __m512 c = _mm512_maskz_loadu_ps(m, cs + i), s = _mm512_maskz_loadu_ps(m, sn + i);
    if (t == DType::F32) {
      float* f = static_cast<float*>(x);
      const __m512 x1 = _mm512_maskz_loadu_ps(m, f + i), x2 = _mm512_maskz_loadu_ps(m, f + half + i);
      _mm512_mask_storeu_ps(f + i, m, _mm512_fmsub_ps(x1, c, _mm512_mul_ps(x2, s)));
      _mm512_mask_storeu_ps(f + half + i, m, _mm512_fmadd_ps(x2, c, _mm512_mul_ps(x1, s)));
    } else {
      uint16_t* b = static_cast<uint16_t*>(x);
      const __m512 x1 = simd::ld_bf16_512(b + i, m), x2 = simd::ld_bf16_512(b + half + i, m);
      simd::st_bf16_512(b + i, m, _mm512_fmsub_ps(x1, c, _mm512_mul_ps(x2, s)));
      simd::st_bf16_512(b + half + i, m, _mm512_fmadd_ps(x2, c, _mm512_mul_ps(x1, s)));
    }
  }
}
#endif  // MOE_X86

std::string str(int64_t v) { return std::to_string(v); }

}  // namespace

void rope_validate(const RopeArgs& a) {
  auto bad = [](const std::string& m) { throw_error(ErrorCode::InvalidArgument, "rope: " + m); };
  if (a.dtype != DType::F32 && a.dtype != DType::BF16) bad(std::string("dtype must be f32 or bf16, received ") + dtype_name(a.dtype));
  if (a.tokens < 0 || a.q_heads < 0 || a.kv_heads < 0) bad("tokens and head counts must be non-negative");
  if (a.head_dim < 2 || a.head_dim > 1024) bad("head_dim must be in [2, 1024], received " + str(a.head_dim));
  if (a.rotary_dim < 2 || a.rotary_dim % 2 != 0 || a.rotary_dim > a.head_dim)
    bad("rotary_dim must be even and in [2, head_dim=" + str(a.head_dim) + "], received " + str(a.rotary_dim));
  if (!std::isfinite(a.attention_scaling)) bad("attention_scaling must be finite");
  if (a.tokens == 0) return;
  if (a.positions == nullptr || a.inv_freq == nullptr) bad("positions and inv_freq must be non-null");
  if ((a.q_heads > 0 && a.q == nullptr) || (a.kv_heads > 0 && a.k == nullptr)) bad("q / k must be non-null when their head count is > 0");
  for (int64_t i = 0; i < a.rotary_dim / 2; ++i)
    if (!std::isfinite(a.inv_freq[i])) bad("inv_freq[" + str(i) + "] is not finite");
  for (int64_t t = 0; t < a.tokens; ++t)
    if (a.positions[t] < 0) bad("positions[" + str(t) + "] = " + str(a.positions[t]) + " is negative");
}

Isa rope(const RopeArgs& a, Isa isa, const CancelToken* cancel) {
  rope_validate(a);
  RowKernel kernel = row_scalar;
  Isa ran = Isa::Scalar;
#if MOE_X86
  const Isa tier = clamp_isa(isa);
  if (tier >= Isa::Avx512) {
    kernel = row_avx512;
    ran = Isa::Avx512;
  } else if (tier >= Isa::Avx2) {
    kernel = row_avx2;
    ran = Isa::Avx2;
  }
#else
  (void)isa;
#endif
  if (a.tokens == 0 || a.q_heads + a.kv_heads == 0) return ran;
  const int half = static_cast<int>(a.rotary_dim / 2);
  const size_t es = dtype_size(a.dtype);
  const size_t row_bytes = static_cast<size_t>(a.head_dim) * es;
  const RopeArgs args = a;
  // ~16 KiB of rows per range handed to a thread
  const size_t grain = std::max<size_t>(1, (size_t{1} << 14) / (static_cast<size_t>(a.q_heads + a.kv_heads) * row_bytes));
  std::function<void(size_t, size_t)> fn = [args, kernel, half, row_bytes](size_t begin, size_t end) {
    std::vector<float> cs(static_cast<size_t>(2 * half));
    for (size_t t = begin; t < end; ++t) {
      const double pos = static_cast<double>(args.positions[t]);
      for (int i = 0; i < half; ++i) {
        const double ang = pos * static_cast<double>(args.inv_freq[i]);
        cs[i] = static_cast<float>(std::cos(ang) * args.attention_scaling);
        cs[half + i] = static_cast<float>(std::sin(ang) * args.attention_scaling);
      }
      for (int64_t h = 0; h < args.q_heads; ++h)
        kernel(static_cast<uint8_t*>(args.q) + (t * args.q_heads + h) * row_bytes, args.dtype, cs.data(), half);
      for (int64_t h = 0; h < args.kv_heads; ++h)
        kernel(static_cast<uint8_t*>(args.k) + (t * args.kv_heads + h) * row_bytes, args.dtype, cs.data(), half);
    }
  };
  if (!ThreadPool::global().parallel_for(static_cast<size_t>(a.tokens), grain, fn, cancel))
    throw_error(ErrorCode::Cancelled, "rope: cancelled");
  return ran;
}

}  // namespace moe::cpu
