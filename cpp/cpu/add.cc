// Elementwise add (add.h): out[i] = a[i] + b[i] for f32, f16 and bf16, computed in f32, the 16-bit results
// rounded to nearest even. One f32 add per element is exact to round whichever way it is vectorised, so every
// vector tier is bit-identical to the scalar tier (dtype.h conversions around a scalar f32 add). The only freedom
// left is which NaN payload survives when BOTH inputs are NaN (x86 returns the first operand's, and compilers may
// commute an add): the result is a NaN in every tier, its payload is not part of the contract.
// Memory-bound: the Avx512Bf16 tier runs the Avx512 kernels (and reports Avx512).
#include "add.h"

#include <functional>
#include <string>

#include "../core/error.h"
#include "../core/threadpool.h"

#if MOE_X86
// GCC 12.2's AVX-512 headers build _mm512_undefined_*() from a self-initialised variable and then warn about it
// (-Wuninitialized, GCC bug 105593, fixed in 12.3); the warning points into the header, so silence it there.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

namespace moe::cpu {

namespace {

// out[0, n) = a[0, n) + b[0, n) on already offset pointers.
using AddKernel = void (*)(const void* a, const void* b, void* out, size_t n);

constexpr size_t kGrain = size_t{1} << 16;  // elements per range handed to a thread

// ---- scalar reference tier ------------------------------------------------------------------------------------
void add_f32_scalar(const void* a, const void* b, void* out, size_t n) {
  const float* x = static_cast<const float*>(a);
  const float* y = static_cast<const float*>(b);
  float* o = static_cast<float*>(out);
  for (size_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
}
void add_bf16_scalar(const void* a, const void* b, void* out, size_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  uint16_t* o = static_cast<uint16_t*>(out);
  for (size_t i = 0; i < n; ++i) o[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(y[i]));
}
void add_f16_scalar(const void* a, const void* b, void* out, size_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  uint16_t* o = static_cast<uint16_t*>(out);
  for (size_t i = 0; i < n; ++i) o[i] = f32_to_f16(f16_to_f32(x[i]) + f16_to_f32(y[i]));
}

#if MOE_X86
// ---- AVX2 + F16C: 8 lanes, scalar tail -----------------------------------------------------------------------
// Conversions as in convert.cc (kept local: each op file owns its kernels).
MOE_TARGET_AVX2 inline __m256 ld_bf16_avx2(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
MOE_TARGET_AVX2 inline __m256 ld_f16_avx2(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m256i w = _mm256_cvtepu16_epi32(h);  // [8] u32, the f16 bits
  __m256 f = _mm256_cvtph_ps(h);
  // vcvtph2ps quiets signalling NaNs; dtype.h keeps the payload: patch NaN lanes to sign | 0x7f800000 | m << 13.
  __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x7fff)), _mm256_set1_epi32(0x7c00));
  __m256i nan = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16),
                                _mm256_or_si256(_mm256_set1_epi32(0x7f800000),
                                                _mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x3ff)), 13)));
  return _mm256_blendv_ps(f, _mm256_castsi256_ps(nan), _mm256_castsi256_ps(is_nan));
}
MOE_TARGET_AVX2 inline void st_bf16_avx2(uint16_t* p, __m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                      _mm256_set1_epi32(0x7f800000));
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  __m256i bits = _mm256_blendv_epi8(rounded, quiet, is_nan);
  __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
MOE_TARGET_AVX2 inline void st_f16_avx2(uint16_t* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

MOE_TARGET_AVX2 void add_f32_avx2(const void* a, const void* b, void* out, size_t n) {
  const float* x = static_cast<const float*>(a);
  const float* y = static_cast<const float*>(b);
  float* o = static_cast<float*>(out);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) o[i] = x[i] + y[i];
}
MOE_TARGET_AVX2 void add_bf16_avx2(const void* a, const void* b, void* out, size_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  uint16_t* o = static_cast<uint16_t*>(out);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) st_bf16_avx2(o + i, _mm256_add_ps(ld_bf16_avx2(x + i), ld_bf16_avx2(y + i)));
  for (; i < n; ++i) o[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(y[i]));
}
MOE_TARGET_AVX2 void add_f16_avx2(const void* a, const void* b, void* out, size_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  uint16_t* o = static_cast<uint16_t*>(out);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) st_f16_avx2(o + i, _mm256_add_ps(ld_f16_avx2(x + i), ld_f16_avx2(y + i)));
  for (; i < n; ++i) o[i] = f32_to_f16(f16_to_f32(x[i]) + f16_to_f32(y[i]));
}

// ---- AVX-512 (F+BW+VL+DQ): 16 lanes, masked tail --------------------------------------------------------------
MOE_TARGET_AVX512 inline __mmask16 tail_mask(size_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
}
MOE_TARGET_AVX512 inline __m512 ld_bf16_512(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
MOE_TARGET_AVX512 inline __m512 ld_f16_512(const uint16_t* p, __mmask16 m) {
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  __m512i w = _mm512_cvtepu16_epi32(h);  // [16] u32, the f16 bits
  __m512 f = _mm512_cvtph_ps(h);
  __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(w, _mm512_set1_epi32(0x7fff)), _mm512_set1_epi32(0x7c00));
  __m512i nan = _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x8000)), 16),
                                _mm512_or_si512(_mm512_set1_epi32(0x7f800000),
                                                _mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x3ff)), 13)));
  return _mm512_mask_blend_ps(is_nan, f, _mm512_castsi512_ps(nan));
}
MOE_TARGET_AVX512 inline void st_bf16_512(uint16_t* p, __mmask16 m, __m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                             _mm512_set1_epi32(0x7f800000));
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  _mm512_mask_cvtepi32_storeu_epi16(p, m, _mm512_mask_blend_epi32(is_nan, rounded, quiet));
}
MOE_TARGET_AVX512 inline void st_f16_512(uint16_t* p, __mmask16 m, __m512 v) {
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

MOE_TARGET_AVX512 void add_f32_avx512(const void* a, const void* b, void* out, size_t n) {
  const float* x = static_cast<const float*>(a);
  const float* y = static_cast<const float*>(b);
  float* o = static_cast<float*>(out);
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(o + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}
MOE_TARGET_AVX512 void add_bf16_avx512(const void* a, const void* b, void* out, size_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  uint16_t* o = static_cast<uint16_t*>(out);
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i);
    st_bf16_512(o + i, m, _mm512_add_ps(ld_bf16_512(x + i, m), ld_bf16_512(y + i, m)));
  }
}
MOE_TARGET_AVX512 void add_f16_avx512(const void* a, const void* b, void* out, size_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  uint16_t* o = static_cast<uint16_t*>(out);
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 m = tail_mask(n - i);
    st_f16_512(o + i, m, _mm512_add_ps(ld_f16_512(x + i, m), ld_f16_512(y + i, m)));
  }
}
#endif  // MOE_X86

}  // namespace

Isa add(const AddArgs& args, Isa isa, const CancelToken* cancel) {
  int t;
  switch (args.dtype) {
    case DType::F32: t = 0; break;
    case DType::F16: t = 1; break;
    case DType::BF16: t = 2; break;
    default:
      throw_error(ErrorCode::InvalidArgument,
                  std::string("add: dtype must be f32, f16 or bf16, received ") + dtype_name(args.dtype));
  }
  if (args.n > 0 && (args.a == nullptr || args.b == nullptr || args.out == nullptr)) {
    throw_error(ErrorCode::InvalidArgument, "add: a, b and out must be non-null when n > 0");
  }

  static const AddKernel kScalar[3] = {add_f32_scalar, add_f16_scalar, add_bf16_scalar};
  AddKernel kernel = kScalar[t];
  Isa ran = Isa::Scalar;
#if MOE_X86
  static const AddKernel kAvx2[3] = {add_f32_avx2, add_f16_avx2, add_bf16_avx2};
  static const AddKernel kAvx512[3] = {add_f32_avx512, add_f16_avx512, add_bf16_avx512};
  Isa tier = clamp_isa(isa);
  if (tier >= Isa::Avx512) {
    kernel = kAvx512[t];
    ran = Isa::Avx512;
  } else if (tier >= Isa::Avx2) {
    kernel = kAvx2[t];
    ran = Isa::Avx2;
  }
#endif

  const auto* a = static_cast<const uint8_t*>(args.a);
  const auto* b = static_cast<const uint8_t*>(args.b);
  auto* out = static_cast<uint8_t*>(args.out);
  const size_t es = dtype_size(args.dtype);
  std::function<void(size_t, size_t)> fn = [=](size_t begin, size_t end) {
    kernel(a + begin * es, b + begin * es, out + begin * es, end - begin);  // [end - begin] dtype
  };
  if (!ThreadPool::global().parallel_for(args.n, kGrain, fn, cancel)) {
    throw_error(ErrorCode::Cancelled, "add: cancelled");
  }
  return ran;
}

}  // namespace moe::cpu
