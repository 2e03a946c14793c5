// Element access for CUDA kernels by DType code, on top of the conversions of cpp/core/dtype.h (one definition,
// __host__ __device__ under nvcc, so every CUDA kernel rounds bit-identically to the CPU scalar reference).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace moe {
namespace dev {

// DType codes of cpp/core/dtype.h (the C ABI passes them as int).
constexpr int kF32 = 0;
constexpr int kF16 = 1;
constexpr int kBF16 = 2;

// The conversions themselves live once, in cpp/core/dtype.h (__host__ __device__ under nvcc).
using moe::bf16_to_f32;
using moe::bits_f32;
using moe::f16_to_f32;
using moe::f32_bits;
using moe::f32_to_bf16;
using moe::f32_to_f16;

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
