// RMSNorm with an optional fused residual add (rms_norm.h). Per row, two passes over d elements:
//   1. (x += add, stored back as f32) and the f32 sum of squares;
//   2. out = (x * scale) * weight, scale = 1 / sqrt(sumsq / d + eps).
// Tiers: scalar (one running sum), AVX2 (4 x 8-lane partial sums, FMA, scalar tail added last), AVX-512 (2 x 16-lane
// partial sums, masked tail). Each tier's reduction order is fixed, so a row's result depends only on the tier, never
// on the thread count. Pass 2 is the same two f32 multiplies in every tier (bit-identical for equal scales).
// Mixed dtypes (x, add, weight, out each f32 or bf16) branch per vector on loop-invariant flags: the op is
// memory-bound and the branches are perfectly predicted.
#include "rms_norm.h"

#include <cmath>
#include <functional>
#include <string>

#include "../core/error.h"
#include "../core/threadpool.h"

#include "simd.h"

namespace moe::cpu {

namespace {

constexpr size_t kChunkElems = size_t{1} << 14;  // elements per range handed to a thread (~64 KiB of f32)

// One row: the args with x / add / out already offset to row r.
struct Row {
  void* x;
  const void* add;  // nullptr: no residual add
  const void* w;
  void* out;
  bool x_bf, add_bf, w_bf, out_bf;
  size_t d;
  float eps;
};
using RowKernel = void (*)(const Row& row);

inline float ld(const void* p, bool bf, size_t i) {
  return bf ? bf16_to_f32(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}
inline void st(void* p, bool bf, size_t i, float v) {
  if (bf) static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
  else static_cast<float*>(p)[i] = v;
}
inline float scale_of(float sumsq, size_t d, float eps) {
  return 1.0f / std::sqrt(sumsq / static_cast<float>(d) + eps);
}

// ---- scalar reference tier ------------------------------------------------------------------------------------
void row_scalar(const Row& r) {
  float ss = 0.0f;
  if (r.add != nullptr) {
    float* x = static_cast<float*>(r.x);  // [d] f32
    for (size_t j = 0; j < r.d; ++j) {
      const float v = x[j] + ld(r.add, r.add_bf, j);
      x[j] = v;
      ss += v * v;
    }
  } else {
    for (size_t j = 0; j < r.d; ++j) {
      const float v = ld(r.x, r.x_bf, j);
      ss += v * v;
    }
  }
  const float s = scale_of(ss, r.d, r.eps);
  for (size_t j = 0; j < r.d; ++j) st(r.out, r.out_bf, j, (ld(r.x, r.x_bf, j) * s) * ld(r.w, r.w_bf, j));
}

#if MOE_X86
// ---- AVX2 + FMA + F16C: 8 lanes, 4 partial sums, scalar tail ---------------------------------------------------
MOE_TARGET_AVX2 inline __m256 ld8(const void* p, bool bf, size_t i) {
  return bf ? simd::ld_bf16_avx2(static_cast<const uint16_t*>(p) + i)
            : _mm256_loadu_ps(static_cast<const float*>(p) + i);
}
MOE_TARGET_AVX2 inline void st8(void* p, bool bf, size_t i, __m256 v) {
  if (bf) simd::st_bf16_avx2(static_cast<uint16_t*>(p) + i, v);
  else _mm256_storeu_ps(static_cast<float*>(p) + i, v);
}
// x[i, i + 8) (+= add when present), returned as f32.
MOE_TARGET_AVX2 inline __m256 pass1_8(const Row& r, size_t i) {
  if (r.add == nullptr) return ld8(r.x, r.x_bf, i);
  float* x = static_cast<float*>(r.x);
  const __m256 v = _mm256_add_ps(_mm256_loadu_ps(x + i), ld8(r.add, r.add_bf, i));
  _mm256_storeu_ps(x + i, v);
  return v;
}
MOE_TARGET_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

MOE_TARGET_AVX2 void row_avx2(const Row& r) {
  const size_t d = r.d;
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= d; i += 32) {
    const __m256 v0 = pass1_8(r, i), v1 = pass1_8(r, i + 8), v2 = pass1_8(r, i + 16), v3 = pass1_8(r, i + 24);
    s0 = _mm256_fmadd_ps(v0, v0, s0);
    s1 = _mm256_fmadd_ps(v1, v1, s1);
    s2 = _mm256_fmadd_ps(v2, v2, s2);
    s3 = _mm256_fmadd_ps(v3, v3, s3);
  }
  for (; i + 8 <= d; i += 8) {
    const __m256 v = pass1_8(r, i);
    s0 = _mm256_fmadd_ps(v, v, s0);
  }
  float ss = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < d; ++i) {
    float v;
    if (r.add != nullptr) {
      float* x = static_cast<float*>(r.x);
      v = x[i] + ld(r.add, r.add_bf, i);
      x[i] = v;
    } else {
      v = ld(r.x, r.x_bf, i);
    }
    ss += v * v;
  }
  const float s = scale_of(ss, d, r.eps);
  const __m256 sv = _mm256_set1_ps(s);
  size_t j = 0;
  for (; j + 8 <= d; j += 8) {
    st8(r.out, r.out_bf, j, _mm256_mul_ps(_mm256_mul_ps(ld8(r.x, r.x_bf, j), sv), ld8(r.w, r.w_bf, j)));
  }
  for (; j < d; ++j) st(r.out, r.out_bf, j, (ld(r.x, r.x_bf, j) * s) * ld(r.w, r.w_bf, j));
}

// ---- AVX-512 (F+BW+VL+DQ): 16 lanes, 2 partial sums, masked tail -----------------------------------------------
MOE_TARGET_AVX512 inline __m512 ld16(const void* p, bool bf, size_t i, __mmask16 m) {
  return bf ? simd::ld_bf16_512(static_cast<const uint16_t*>(p) + i, m)
            : _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
}
MOE_TARGET_AVX512 inline void st16(void* p, bool bf, size_t i, __mmask16 m, __m512 v) {
  if (bf) simd::st_bf16_512(static_cast<uint16_t*>(p) + i, m, v);
  else _mm512_mask_storeu_ps(static_cast<float*>(p) + i, m, v);
}
// x[i, i + 16) under mask m (+= add when present), returned as f32 (masked-off lanes 0).
MOE_TARGET_AVX512 inline __m512 pass1_16(const Row& r, size_t i, __mmask16 m) {
  if (r.add == nullptr) return ld16(r.x, r.x_bf, i, m);
  float* x = static_cast<float*>(r.x);
  const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), ld16(r.add, r.add_bf, i, m));
  _mm512_mask_storeu_ps(x + i, m, v);
  return v;
}

MOE_TARGET_AVX512 void row_avx512(const Row& r) {
  const size_t d = r.d;
  const __mmask16 all = 0xffff;
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= d; i += 32) {
    const __m512 v0 = pass1_16(r, i, all), v1 = pass1_16(r, i + 16, all);
    s0 = _mm512_fmadd_ps(v0, v0, s0);
    s1 = _mm512_fmadd_ps(v1, v1, s1);
  }
  for (; i < d; i += 16) {
    const __mmask16 m = simd::tail_mask16(d - i);
    const __m512 v = pass1_16(r, i, m);
    s0 = _mm512_fmadd_ps(v, v, s0);
  }
  const float s = scale_of(_mm512_reduce_add_ps(_mm512_add_ps(s0, s1)), d, r.eps);
  const __m512 sv = _mm512_set1_ps(s);
  for (size_t j = 0; j < d; j += 16) {
    const __mmask16 m = simd::tail_mask16(d - j);
    st16(r.out, r.out_bf, j, m, _mm512_mul_ps(_mm512_mul_ps(ld16(r.x, r.x_bf, j, m), sv), ld16(r.w, r.w_bf, j, m)));
  }
}
#endif  // MOE_X86

bool f32_or_bf16(DType t) { return t == DType::F32 || t == DType::BF16; }

}  // namespace

void rms_norm_validate(const RmsNormArgs& a) {
  auto bad = [](const std::string& m) { throw_error(ErrorCode::InvalidArgument, "rmsNorm: " + m); };
  const struct {
    const char* name;
    DType t;
  } dts[] = {{"x", a.x_dtype}, {"weight", a.w_dtype}, {"out", a.out_dtype}, {"add", a.add_dtype}};
  for (const auto& e : dts) {
    if (e.name[0] == 'a' && a.add == nullptr) continue;
    if (!f32_or_bf16(e.t)) bad(std::string(e.name) + " dtype must be f32 or bf16, received " + dtype_name(e.t));
  }
  if (a.add != nullptr && a.x_dtype != DType::F32)
    bad(std::string("x must be f32 when add is given (x is updated in place), received ") + dtype_name(a.x_dtype));
  if (!std::isfinite(a.eps) || a.eps < 0) bad("eps must be finite and >= 0, received " + std::to_string(a.eps));
  if (a.rows > 0 && a.d > 0 && (a.x == nullptr || a.weight == nullptr || a.out == nullptr))
    bad("x, weight and out must be non-null when rows * d > 0");
}

Isa rms_norm(const RmsNormArgs& a, Isa isa, const CancelToken* cancel) {
  rms_norm_validate(a);
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
  if (a.rows == 0 || a.d == 0) return ran;
  const RmsNormArgs args = a;
  const size_t xs = dtype_size(a.x_dtype) * a.d, as = dtype_size(a.add_dtype) * a.d, os = dtype_size(a.out_dtype) * a.d;
  // Whole rows per range; ranges of ~kChunkElems elements. rows * d <= kChunkElems: one range, no fan-out.
  const size_t grain = (kChunkElems + a.d - 1) / a.d;
  std::function<void(size_t, size_t)> fn = [args, kernel, xs, as, os](size_t begin, size_t end) {
    Row row{nullptr, nullptr, args.weight, nullptr, args.x_dtype == DType::BF16, args.add_dtype == DType::BF16,
            args.w_dtype == DType::BF16, args.out_dtype == DType::BF16, args.d, args.eps};
    for (size_t r = begin; r < end; ++r) {
      row.x = static_cast<uint8_t*>(args.x) + r * xs;                                          // [d] x_dtype
      row.add = args.add == nullptr ? nullptr : static_cast<const uint8_t*>(args.add) + r * as;  // [d] add_dtype
      row.out = static_cast<uint8_t*>(args.out) + r * os;                                      // [d] out_dtype
      kernel(row);
    }
  };
  if (!ThreadPool::global().parallel_for(a.rows, grain, fn, cancel))
    throw_error(ErrorCode::Cancelled, "rmsNorm: cancelled");
  return ran;
}

}  // namespace moe::cpu
