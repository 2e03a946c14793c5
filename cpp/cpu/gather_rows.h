// Row gather: dst[i] = src[ids[i]] for fixed-size rows of bytes. The CPU half of the zero-copy gather (on CUDA
// the same op reads rows straight out of mapped pinned host memory); also the embedding lookup.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/cancel.h"

namespace moe::cpu {

struct GatherRowsArgs {
  const void* src;      // [src_rows] rows of row_bytes, consecutive rows src_stride bytes apart
  size_t src_rows;
  size_t src_stride;
  size_t row_bytes;
  const int32_t* ids;   // [n]; -1 writes a zero row
  size_t n;
  void* dst;            // [n] rows, dst_stride bytes apart
  size_t dst_stride;
};

// Throws moe::Error(InvalidArgument) naming the first id outside [-1, src_rows) before writing anything, and
// moe::Error(Cancelled) when cancelled between row ranges.
void gather_rows(const GatherRowsArgs& args, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
