// Element type conversion among f32, f16 and bf16 (convert.h), one kernel per (tier, pair), split over the pool.
// The scalar tier is dtype.h's conversions element by element; every vector tier is bit-identical to it for all
// inputs (NaN payloads, denormals, ties, overflow), which is what the tests check. The vector f16 / bf16 loads and
// stores doing so are simd.h's (shared with add.cc and gemm.cc):
//   f32 -> bf16  integer round-to-nearest-even, NaN -> (bits >> 16) | 0x40 (quiet bit), as dtype.h.
//   bf16 -> f32  zero-extend and shift left by 16 (exact).
//   f32 -> f16   F16C vcvtps2ph with an explicit round-to-nearest-even immediate: IEEE RNE with subnormals,
//                overflow to Inf and NaN -> quiet NaN keeping the top payload bits, exactly dtype.h's f32_to_f16.
//   f16 -> f32   F16C vcvtph2ps is exact, except that it quiets signalling NaNs while dtype.h's f16_to_f32 keeps
//                the payload as is (0x7c01 -> 0x7f802000, the hardware gives 0x7fc02000): NaN lanes are patched.
//   f16 <-> bf16 through f32, as the scalar path.
// The Avx512Bf16 tier has no kernels of its own (requests run the Avx512 kernels, and report Avx512):
// vcvtneps2bf16 treats denormal inputs as zero (0x007fffff gives 0x0000, dtype.h gives 0x0080; checked on the
// development machine), so it is not bit-identical to the reference, and the integer rounding is memory-bound
// anyway.
#include "convert.h"

#include <functional>
#include <string>

#include "../core/error.h"
#include "../core/threadpool.h"
#include "copy.h"

#include "simd.h"

namespace moe::cpu {

namespace {

constexpr size_t kGrain = size_t{1} << 16;  // elements per range handed to a thread

// ---- scalar reference tier (also the tails of the AVX2 kernels) ----------------------------------------------
inline float load_elem(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

inline void store_elem(void* p, DType t, size_t i, float v) {
  switch (t) {
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(v); break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

#define MOE_SCALAR_CVT(NAME, SD, DD)                                                  \
  void NAME(const void* src, void* dst, size_t n) {                                   \
    for (size_t i = 0; i < n; ++i) store_elem(dst, DD, i, load_elem(src, SD, i));     \
  }
MOE_SCALAR_CVT(f32_bf16_scalar, DType::F32, DType::BF16)
MOE_SCALAR_CVT(f32_f16_scalar, DType::F32, DType::F16)
MOE_SCALAR_CVT(bf16_f32_scalar, DType::BF16, DType::F32)
MOE_SCALAR_CVT(f16_f32_scalar, DType::F16, DType::F32)
MOE_SCALAR_CVT(bf16_f16_scalar, DType::BF16, DType::F16)
MOE_SCALAR_CVT(f16_bf16_scalar, DType::F16, DType::BF16)
#undef MOE_SCALAR_CVT

#if MOE_X86
// ---- AVX2 + F16C: 8 lanes, scalar tail -----------------------------------------------------------------------
// The f16 / bf16 loads and stores are simd.h's; the f32 ones are wrapped here so the macro below can take either.
MOE_TARGET_AVX2 inline __m256 ld_f32_avx2(const float* p) { return _mm256_loadu_ps(p); }
MOE_TARGET_AVX2 inline void st_f32_avx2(float* p, __m256 v) { _mm256_storeu_ps(p, v); }

#define MOE_AVX2_CVT(NAME, SRC_T, LD, DST_T, STORE, SD, DD)                             \
  MOE_TARGET_AVX2 void NAME(const void* src, void* dst, size_t n) {                     \
    const SRC_T* s = static_cast<const SRC_T*>(src);                                    \
    DST_T* d = static_cast<DST_T*>(dst);                                                \
    size_t i = 0;                                                                       \
    for (; i + 8 <= n; i += 8) STORE(d + i, LD(s + i));                                 \
    for (; i < n; ++i) store_elem(dst, DD, i, load_elem(src, SD, i));                   \
  }
MOE_AVX2_CVT(f32_bf16_avx2, float, ld_f32_avx2, uint16_t, simd::st_bf16_avx2, DType::F32, DType::BF16)
MOE_AVX2_CVT(f32_f16_avx2, float, ld_f32_avx2, uint16_t, simd::st_f16_avx2, DType::F32, DType::F16)
MOE_AVX2_CVT(bf16_f32_avx2, uint16_t, simd::ld_bf16_avx2, float, st_f32_avx2, DType::BF16, DType::F32)
MOE_AVX2_CVT(f16_f32_avx2, uint16_t, simd::ld_f16_avx2, float, st_f32_avx2, DType::F16, DType::F32)
MOE_AVX2_CVT(bf16_f16_avx2, uint16_t, simd::ld_bf16_avx2, uint16_t, simd::st_f16_avx2, DType::BF16, DType::F16)
MOE_AVX2_CVT(f16_bf16_avx2, uint16_t, simd::ld_f16_avx2, uint16_t, simd::st_bf16_avx2, DType::F16, DType::BF16)
#undef MOE_AVX2_CVT

// ---- AVX-512 (F+BW+VL+DQ): 16 lanes, masked tail --------------------------------------------------------------
MOE_TARGET_AVX512 inline __m512 ld_f32_512(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
MOE_TARGET_AVX512 inline void st_f32_512(float* p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }

#define MOE_AVX512_CVT(NAME, SRC_T, LD, DST_T, STORE)                                            \
  MOE_TARGET_AVX512 void NAME(const void* src, void* dst, size_t n) {                            \
    const SRC_T* s = static_cast<const SRC_T*>(src);                                             \
    DST_T* d = static_cast<DST_T*>(dst);                                                         \
    for (size_t i = 0; i < n; i += 16) {                                                         \
      __mmask16 m = simd::tail_mask16(n - i);                                                    \
      STORE(d + i, m, LD(s + i, m));                                                             \
    }                                                                                            \
  }
MOE_AVX512_CVT(f32_bf16_avx512, float, ld_f32_512, uint16_t, simd::st_bf16_512)
MOE_AVX512_CVT(f32_f16_avx512, float, ld_f32_512, uint16_t, simd::st_f16_512)
MOE_AVX512_CVT(bf16_f32_avx512, uint16_t, simd::ld_bf16_512, float, st_f32_512)
MOE_AVX512_CVT(f16_f32_avx512, uint16_t, simd::ld_f16_512, float, st_f32_512)
MOE_AVX512_CVT(bf16_f16_avx512, uint16_t, simd::ld_bf16_512, uint16_t, simd::st_f16_512)
MOE_AVX512_CVT(f16_bf16_avx512, uint16_t, simd::ld_f16_512, uint16_t, simd::st_bf16_512)
#undef MOE_AVX512_CVT
#endif  // MOE_X86

bool float_type(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// Index of a (src, dst) pair of distinct float types in the kernel tables below, -1 if none.
int pair_index(DType s, DType d) {
  if (s == DType::F32 && d == DType::BF16) return 0;
  if (s == DType::F32 && d == DType::F16) return 1;
  if (s == DType::BF16 && d == DType::F32) return 2;
  if (s == DType::F16 && d == DType::F32) return 3;
  if (s == DType::BF16 && d == DType::F16) return 4;
  if (s == DType::F16 && d == DType::BF16) return 5;
  return -1;
}

const ConvertKernel kScalar[6] = {f32_bf16_scalar, f32_f16_scalar, bf16_f32_scalar,
                                  f16_f32_scalar,  bf16_f16_scalar, f16_bf16_scalar};
#if MOE_X86
const ConvertKernel kAvx2[6] = {f32_bf16_avx2, f32_f16_avx2, bf16_f32_avx2,
                                f16_f32_avx2,  bf16_f16_avx2, f16_bf16_avx2};
const ConvertKernel kAvx512[6] = {f32_bf16_avx512, f32_f16_avx512, bf16_f32_avx512,
                                  f16_f32_avx512,  bf16_f16_avx512, f16_bf16_avx512};
#endif

}  // namespace

ConvertKernel convert_kernel(DType s, DType d, Isa isa, Isa* ran) {
  const int pair = pair_index(s, d);
  if (pair < 0) {
    throw_error(ErrorCode::InvalidArgument, std::string("convert: needs two distinct types among f32, f16 and bf16, received ") +
                                                dtype_name(s) + " -> " + dtype_name(d));
  }
  *ran = Isa::Scalar;
#if MOE_X86
  const Isa tier = clamp_isa(isa);
  if (tier >= Isa::Avx512) {
    *ran = Isa::Avx512;
    return kAvx512[pair];
  }
  if (tier >= Isa::Avx2) {
    *ran = Isa::Avx2;
    return kAvx2[pair];
  }
#else
  (void)isa;
#endif
  return kScalar[pair];
}

Isa convert(const ConvertArgs& args, Isa isa, const CancelToken* cancel) {
  if (!float_type(args.src_dtype) || !float_type(args.dst_dtype)) {
    throw_error(ErrorCode::InvalidArgument, std::string("convert: src_dtype and dst_dtype must be f32, f16 or bf16, "
                                                        "received ") +
                                                dtype_name(args.src_dtype) + " -> " + dtype_name(args.dst_dtype));
  }
  if (args.n > 0 && (args.src == nullptr || args.dst == nullptr)) {
    throw_error(ErrorCode::InvalidArgument, "convert: src and dst must be non-null when n > 0");
  }

  // Same type: a plain (threaded) copy, no tier involved.
  if (args.src_dtype == args.dst_dtype) {
    if (!copy(args.dst, args.src, args.n * dtype_size(args.src_dtype), cancel)) {
      throw_error(ErrorCode::Cancelled, "convert: cancelled");
    }
    return Isa::Scalar;
  }

  Isa ran = Isa::Scalar;
  const ConvertKernel kernel = convert_kernel(args.src_dtype, args.dst_dtype, isa, &ran);

  const auto* src = static_cast<const uint8_t*>(args.src);
  auto* dst = static_cast<uint8_t*>(args.dst);
  const size_t ss = dtype_size(args.src_dtype), ds = dtype_size(args.dst_dtype);
  std::function<void(size_t, size_t)> fn = [=](size_t begin, size_t end) {
    kernel(src + begin * ss, dst + begin * ds, end - begin);  // [end - begin] src_dtype -> dst_dtype
  };
  if (!ThreadPool::global().parallel_for(args.n, kGrain, fn, cancel)) {
    throw_error(ErrorCode::Cancelled, "convert: cancelled");
  }
  return ran;
}

}  // namespace moe::cpu
