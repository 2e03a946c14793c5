// Row gather kernel: dst[i] = src[ids[i]] (rows of row_bytes; id -1 or out of range -> zero row). src may be mapped
// pinned HOST memory (cudaHostAlloc portable|mapped: UVA pointers are valid on the device): each row then crosses
// PCIe once, read directly by the kernel, with no copy into a slot first ("zero-copy gather").
#pragma once
#include <cstdint>

namespace moe::dev {

// One block per output row (grid-stride), threads copying 16-byte words when every address and the row size
// allow it, bytes otherwise.
__global__ void gather_rows_kernel(const uint8_t* __restrict__ src, int64_t src_rows, int64_t src_stride,
                                   int64_t row_bytes, const int32_t* __restrict__ ids, int64_t n,
                                   uint8_t* __restrict__ dst, int64_t dst_stride, bool vec16) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int32_t id = ids[i];
    uint8_t* d = dst + i * dst_stride;
    const bool valid = id >= 0 && id < src_rows;
    const uint8_t* s = src + (valid ? static_cast<int64_t>(id) * src_stride : 0);
    if (vec16) {
      const int64_t words = row_bytes / 16;
      auto* d4 = reinterpret_cast<uint4*>(d);
      const auto* s4 = reinterpret_cast<const uint4*>(s);
      for (int64_t w = threadIdx.x; w < words; w += blockDim.x) d4[w] = valid ? s4[w] : make_uint4(0, 0, 0, 0);
    } else {
      for (int64_t b = threadIdx.x; b < row_bytes; b += blockDim.x) d[b] = valid ? s[b] : 0;
    }
  }
}

}  // namespace moe::dev
