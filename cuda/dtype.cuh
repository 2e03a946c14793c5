// Device twins of the element conversions in cpp/core/dtype.h: same bit manipulation, same rounding (nearest
// even), same NaN handling (quiet bit forced on f32 -> bf16, payload kept on f32 -> f16), so every CUDA kernel is
// bit-identical to the CPU scalar reference. Deliberately NOT __float2bfloat16 / __float2half: those are RNE too
// but their NaN results are canonicalised, which would break bit-exact comparisons against the CPU.
// __host__ __device__ so the host side of a .cu file can use them as well.
#pragma once
#include <cstdint>
#include <cstring>

namespace moe {
namespace dev {

// DType codes of cpp/core/dtype.h (the C ABI passes them as int).
constexpr int kF32 = 0;
constexpr int kF16 = 1;
constexpr int kBF16 = 2;

__host__ __device__ __forceinline__ uint32_t f32_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

__host__ __device__ __forceinline__ float bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// f32 -> bf16, round to nearest even; NaN stays NaN (quiet bit forced so rounding cannot make it Inf).
__host__ __device__ __forceinline__ uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

__host__ __device__ __forceinline__ float bf16_to_f32(uint16_t h) {
  return bits_f32(static_cast<uint32_t>(h) << 16);
}

// f32 -> IEEE binary16, round to nearest even, with subnormals, overflow to Inf, NaN preserved.
__host__ __device__ __forceinline__ uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (a < 0x38800000u) {                                                // result is subnormal or zero
    if (a < 0x33000000u) return static_cast<uint16_t>(sign);            // below half the smallest subnormal
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;  // 14..24
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = a - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

// binary16 -> f32, exact. Subnormals are built from bits (m * 2^-24 is exact; done with integer ops here so the
// result never depends on the device's denormal mode).
__host__ __device__ __forceinline__ float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0) {
    if (m == 0) return bits_f32(sign);
    // m * 2^-24 with 1 <= m < 1024: normalise m so its leading 1 is the implicit bit (a normal f32).
    uint32_t exp = 127u - 24u + 10u;  // exponent of 2^-14 with the leading bit at position 10
    while ((m & 0x400u) == 0) {
      m <<= 1;
      exp--;
    }
    m &= 0x3ffu;
    return bits_f32(sign | (exp << 23) | (m << 13));
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

// Element access by DType code: raw storage -> f32 and f32 -> raw storage.
template <int D>
struct Elem;
template <>
struct Elem<kF32> {
  using T = float;
  __host__ __device__ __forceinline__ static float load(T v) { return v; }
  __host__ __device__ __forceinline__ static T store(float f) { return f; }
};
template <>
struct Elem<kF16> {
  using T = uint16_t;
  __host__ __device__ __forceinline__ static float load(T v) { return f16_to_f32(v); }
  __host__ __device__ __forceinline__ static T store(float f) { return f32_to_f16(f); }
};
template <>
struct Elem<kBF16> {
  using T = uint16_t;
  __host__ __device__ __forceinline__ static float load(T v) { return bf16_to_f32(v); }
  __host__ __device__ __forceinline__ static T store(float f) { return f32_to_bf16(f); }
};

}  // namespace dev
}  // namespace moe
