// <immintrin.h> for the ISA-tier kernels in cpp/cpu (x86 only; MOE_X86 from core/isa.h), and the vector helpers
// those kernels share (namespace moe::cpu::simd): 16-bit float loads into f32 lanes, f32 stores to bf16 / f16 and
// the AVX-512 tail mask. Every helper is bit-identical, lane by lane, to dtype.h's scalar conversion it replaces
// (NaN payloads, denormals, ties, overflow); add.cc, convert.cc and gemm.cc rely on that.
// Pointers are already offset to the first element; the AVX-512 helpers take the lane mask of a (possibly partial)
// block of 16, and masked-off lanes are neither read nor written. The rule of core/isa.h holds here too: only
// intrinsics under the MOE_TARGET_* attributes, no std:: templates.
// GCC 12.2's AVX-512 headers build _mm512_undefined_*() from a self-initialised variable and then warn about it
// (-Wuninitialized, GCC bug 105593, fixed in 12.3); the warning points into the header, so silence it there.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/isa.h"

#if MOE_X86
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace moe::cpu {
namespace simd {

// ---- AVX2 + F16C: 8 lanes -------------------------------------------------------------------------------------
// [8] bf16 -> [8] f32: zero-extend and shift left by 16 (exact).
MOE_TARGET_AVX2 static inline __m256 ld_bf16_avx2(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// [8] f16 -> [8] f32. vcvtph2ps is exact but quiets signalling NaNs, while dtype.h's f16_to_f32 keeps the payload
// as is (0x7c01 -> 0x7f802000, the hardware gives 0x7fc02000): NaN lanes are patched to
// sign | 0x7f800000 | mantissa << 13.
MOE_TARGET_AVX2 static inline __m256 ld_f16_avx2(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m256i w = _mm256_cvtepu16_epi32(h);  // [8] u32, the f16 bits
  __m256 f = _mm256_cvtph_ps(h);
  __m256i mag = _mm256_and_si256(w, _mm256_set1_epi32(0x7fff));
  __m256i is_nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7c00));
  __m256i nan = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x8000)), 16),
                                _mm256_or_si256(_mm256_set1_epi32(0x7f800000),
                                                _mm256_slli_epi32(_mm256_and_si256(w, _mm256_set1_epi32(0x3ff)), 13)));
  return _mm256_blendv_ps(f, _mm256_castsi256_ps(nan), _mm256_castsi256_ps(is_nan));
}

// [8] f32 -> [8] bf16, dtype.h's f32_to_bf16: integer round-to-nearest-even, NaN -> (bits >> 16) | 0x40 (quiet bit).
MOE_TARGET_AVX2 static inline void st_bf16_avx2(uint16_t* p, __m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i mag = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  __m256i is_nan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7f800000));  // mag >= 0 as signed: safe
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  __m256i b = _mm256_blendv_epi8(rounded, quiet, is_nan);  // values <= 0xffff: the unsigned saturating pack is exact
  __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0x08);  // lanes 0,2 hold the 8 results
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

// [8] f32 -> [8] f16: vcvtps2ph with an explicit round-to-nearest-even immediate is IEEE RNE with subnormals,
// overflow to Inf and NaN -> quiet NaN keeping the top payload bits, exactly dtype.h's f32_to_f16.
MOE_TARGET_AVX2 static inline void st_f16_avx2(uint16_t* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// ---- AVX-512 (F+BW+VL+DQ): 16 lanes, masked ------------------------------------------------------------------
// Mask of the first min(left, 16) lanes (left > 0: the elements still to do from this block on).
MOE_TARGET_AVX512 static inline __mmask16 tail_mask16(size_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
}

// [16] bf16 -> [16] f32 (masked-off lanes are 0.0f), as ld_bf16_avx2.
MOE_TARGET_AVX512 static inline __m512 ld_bf16_512(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// [16] f16 -> [16] f32 with the NaN payload kept, as ld_f16_avx2.
MOE_TARGET_AVX512 static inline __m512 ld_f16_512(const uint16_t* p, __mmask16 m) {
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  __m512i w = _mm512_cvtepu16_epi32(h);  // [16] u32, the f16 bits
  __m512 f = _mm512_cvtph_ps(h);
  __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(w, _mm512_set1_epi32(0x7fff)), _mm512_set1_epi32(0x7c00));
  __m512i nan = _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x8000)), 16),
                                _mm512_or_si512(_mm512_set1_epi32(0x7f800000),
                                                _mm512_slli_epi32(_mm512_and_si512(w, _mm512_set1_epi32(0x3ff)), 13)));
  return _mm512_mask_blend_ps(is_nan, f, _mm512_castsi512_ps(nan));
}

// [16] f32 -> [16] bf16, as st_bf16_avx2.
MOE_TARGET_AVX512 static inline void st_bf16_512(uint16_t* p, __mmask16 m, __m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                             _mm512_set1_epi32(0x7f800000));
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  __m512i b = _mm512_mask_blend_epi32(is_nan, rounded, quiet);
  _mm512_mask_cvtepi32_storeu_epi16(p, m, b);  // vpmovdw: keeps the low 16 bits
}

// [16] f32 -> [16] f16, as st_f16_avx2.
MOE_TARGET_AVX512 static inline void st_f16_512(uint16_t* p, __mmask16 m, __m512 v) {
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// exp(x) for x <= 0 (x = -inf or below -87.3 gives 0; NaN lanes give exp(-87.3)): Cephes-style range reduction
// x = n ln2 + f, |f| <= ln2/2, degree-6 polynomial, then 2^n; relative error ~2e-7. attention.cc's softmax and
// moe_experts.cc's SwiGLU.
MOE_TARGET_AVX512 static inline __m512 exp_neg512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f);
  __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(x, lo);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(f, f), _mm512_add_ps(f, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~under), _mm512_scalef_ps(p, n));
}

// exp_neg512 on 8 lanes (AVX2: 2^n built from the exponent bits; x below -87.3, -inf and NaN give 0).
MOE_TARGET_AVX2 static inline __m256 exp_neg256(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);  // false for x < lo and for NaN / -inf
  x = _mm256_max_ps(x, lo);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 f = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  f = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), f);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(f, f), _mm256_add_ps(f, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

}  // namespace simd
}  // namespace moe::cpu
#endif  // MOE_X86
