// Shared pieces of the elementwise kernels (convert, add): 8-element vector load/store by DType code, the
// head/vector/tail split that lets a grid-stride loop use 16-byte accesses at any element offset, and the grid
// size. Vector layout: 8 elements = one 16-byte access for 16-bit types, two for f32.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "dtype.cuh"

namespace moe {
namespace dev {

constexpr int kVec = 8;             // elements per vector step
constexpr int kElementwiseThreads = 256;

// p must be 16-byte aligned.
template <int D>
__device__ __forceinline__ void load8(const typename Elem<D>::T* p, float f[8]);
template <>
__device__ __forceinline__ void load8<kF32>(const float* p, float f[8]) {
  float4 x = reinterpret_cast<const float4*>(p)[0];
  float4 y = reinterpret_cast<const float4*>(p)[1];
  f[0] = x.x; f[1] = x.y; f[2] = x.z; f[3] = x.w;
  f[4] = y.x; f[5] = y.y; f[6] = y.z; f[7] = y.w;
}
template <int D>
__device__ __forceinline__ void load8_16(const uint16_t* p, float f[8]) {
  uint4 v = *reinterpret_cast<const uint4*>(p);
  uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {  // little-endian: the lower half is the element with the lower index
    f[2 * i] = Elem<D>::load(static_cast<uint16_t>(w[i] & 0xffffu));
    f[2 * i + 1] = Elem<D>::load(static_cast<uint16_t>(w[i] >> 16));
  }
}
template <>
__device__ __forceinline__ void load8<kF16>(const uint16_t* p, float f[8]) { load8_16<kF16>(p, f); }
template <>
__device__ __forceinline__ void load8<kBF16>(const uint16_t* p, float f[8]) { load8_16<kBF16>(p, f); }

template <int D>
__device__ __forceinline__ void store8(typename Elem<D>::T* p, const float f[8]);
template <>
__device__ __forceinline__ void store8<kF32>(float* p, const float f[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}
template <int D>
__device__ __forceinline__ void store8_16(uint16_t* p, const float f[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    w[i] = static_cast<uint32_t>(Elem<D>::store(f[2 * i])) |
           (static_cast<uint32_t>(Elem<D>::store(f[2 * i + 1])) << 16);
  }
  *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}
template <>
__device__ __forceinline__ void store8<kF16>(uint16_t* p, const float f[8]) { store8_16<kF16>(p, f); }
template <>
__device__ __forceinline__ void store8<kBF16>(uint16_t* p, const float f[8]) { store8_16<kBF16>(p, f); }

// Split of [0, n): scalar head [0, head), vectors [head, head + 8 * nvec), scalar tail [head + 8 * nvec, n).
// The vector part exists only when some head < 8 makes every pointer 16-byte aligned; otherwise head = n.
struct Split {
  int64_t head;
  int64_t nvec;
};

// ptrs[i] + h * sizes[i] must be 16-byte aligned for all i.
inline Split split_for_vectors(int64_t n, const void* const* ptrs, const int* sizes, int count) {
  for (int64_t h = 0; h < kVec && h <= n; h++) {
    bool ok = true;
    for (int i = 0; i < count; i++) {
      uintptr_t a = reinterpret_cast<uintptr_t>(ptrs[i]) + static_cast<uintptr_t>(h) * sizes[i];
      if ((a & 15u) != 0) ok = false;
    }
    if (ok) return Split{h, (n - h) / kVec};
  }
  return Split{n, 0};
}

// Scalar positions: i in [0, head + tail) maps to element i (head) or tail0 + (i - head) (tail).
__device__ __forceinline__ int64_t scalar_index(int64_t i, int64_t head, int64_t tail0) {
  return i < head ? i : tail0 + (i - head);
}

// Enough blocks for `work` items one per thread, capped at 8 blocks of 256 per SM (full occupancy); the kernels
// loop grid-stride over the rest.
inline unsigned elementwise_blocks(int device, int64_t work) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    sms = 132;
  }
  int64_t cap = static_cast<int64_t>(sms) * 8;
  int64_t blocks = (work + kElementwiseThreads - 1) / kElementwiseThreads;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

}  // namespace dev
}  // namespace moe
