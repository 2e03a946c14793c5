// Elementwise add (add.h): out[i] = a[i] + b[i] for f32, f16 and bf16, computed in f32, the 16-bit results
// rounded to nearest even. One f32 add per element is exact to round whichever way it is vectorised, so every
// vector tier is bit-identical to the scalar tier (dtype.h conversions around a scalar f32 add). The only freedom
// left is which NaN payload survives when BOTH inputs are NaN (x86 returns the first operand's, and compilers may
// commute an add): the result is a NaN in every tier, its payload is not part of the contract.
// Memory-bound: the Avx512Bf16 tier runs the Avx512 kernels (and reports Avx512). The vector f16 / bf16 loads and
// stores are simd.h's, shared with convert.cc. Row broadcast (b_len): the same kernels, called once per row of a
// with b's start, whole rows per range handed to a thread.
#include "add.h"

#include <functional>
#include <string>

#include "../core/error.h"
#include "../core/threadpool.h"

#include "simd.h"

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
// The 16-bit loads and stores are simd.h's (shared with convert.cc, bit-identical to dtype.h).
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
  for (; i + 8 <= n; i += 8) {
    simd::st_bf16_avx2(o + i, _mm256_add_ps(simd::ld_bf16_avx2(x + i), simd::ld_bf16_avx2(y + i)));
  }
  for (; i < n; ++i) o[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(y[i]));
}
MOE_TARGET_AVX2 void add_f16_avx2(const void* a, const void* b, void* out, size_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  uint16_t* o = static_cast<uint16_t*>(out);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    simd::st_f16_avx2(o + i, _mm256_add_ps(simd::ld_f16_avx2(x + i), simd::ld_f16_avx2(y + i)));
  }
  for (; i < n; ++i) o[i] = f32_to_f16(f16_to_f32(x[i]) + f16_to_f32(y[i]));
}

// ---- AVX-512 (F+BW+VL+DQ): 16 lanes, masked tail --------------------------------------------------------------
MOE_TARGET_AVX512 void add_f32_avx512(const void* a, const void* b, void* out, size_t n) {
  const float* x = static_cast<const float*>(a);
  const float* y = static_cast<const float*>(b);
  float* o = static_cast<float*>(out);
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 m = simd::tail_mask16(n - i);
    _mm512_mask_storeu_ps(o + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}
MOE_TARGET_AVX512 void add_bf16_avx512(const void* a, const void* b, void* out, size_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  uint16_t* o = static_cast<uint16_t*>(out);
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 m = simd::tail_mask16(n - i);
    simd::st_bf16_512(o + i, m, _mm512_add_ps(simd::ld_bf16_512(x + i, m), simd::ld_bf16_512(y + i, m)));
  }
}
MOE_TARGET_AVX512 void add_f16_avx512(const void* a, const void* b, void* out, size_t n) {
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  uint16_t* o = static_cast<uint16_t*>(out);
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 m = simd::tail_mask16(n - i);
    simd::st_f16_512(o + i, m, _mm512_add_ps(simd::ld_f16_512(x + i, m), simd::ld_f16_512(y + i, m)));
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
  if (args.b_len != 0 && args.b_len != args.n) {
    // out[r, j] = a[r, j] + b[j]: rows of bl elements, ~kGrain elements (whole rows) per range.
    const size_t bl = args.b_len;
    if (args.n % bl != 0) {
      throw_error(ErrorCode::InvalidArgument, "add: n (" + std::to_string(args.n) + ") must be a multiple of b_len (" +
                                                  std::to_string(bl) + ")");
    }
    const size_t row_bytes = bl * es;
    const size_t grain = bl >= kGrain ? 1 : kGrain / bl;
    std::function<void(size_t, size_t)> rows_fn = [=](size_t begin, size_t end) {
      for (size_t r = begin; r < end; ++r) kernel(a + r * row_bytes, b, out + r * row_bytes, bl);  // [bl] dtype
    };
    if (!ThreadPool::global().parallel_for(args.n / bl, grain, rows_fn, cancel)) {
      throw_error(ErrorCode::Cancelled, "add: cancelled");
    }
    return ran;
  }
  std::function<void(size_t, size_t)> fn = [=](size_t begin, size_t end) {
    kernel(a + begin * es, b + begin * es, out + begin * es, end - begin);  // [end - begin] dtype
  };
  if (!ThreadPool::global().parallel_for(args.n, kGrain, fn, cancel)) {
    throw_error(ErrorCode::Cancelled, "add: cancelled");
  }
  return ran;
}

}  // namespace moe::cpu
