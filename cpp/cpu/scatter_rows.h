// Row scatter: dst[ids[i]] = src[i] for rows of `row` elements, converting f32 -> bf16 / f16 on the way (or copying
// rows of the same type). The mirror of gather_rows; the KV cache's writes (lib/kv/cache.ts: a step's new K and V
// rows, f32 from the projections, into their pages, bf16).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct ScatterRowsArgs {
  const void* src;      // [n, row] src_dtype, packed
  DType src_dtype;      // f32 | f16 | bf16 (any dtype when dst_dtype is the same)
  size_t n;
  size_t row;           // elements per row
  const int32_t* ids;   // [n] distinct, each in [0, dst_rows)
  void* dst;            // [dst_rows, row] dst_dtype, packed
  DType dst_dtype;      // src_dtype, or bf16 / f16 from f32 (rounded to nearest even as convert.h)
  size_t dst_rows;
};

// Rows in parallel on the pool. Checks every id (range, then no id twice: two rows racing into one destination
// would leave it torn) before it writes anything: throws moe::Error(InvalidArgument) naming the first bad one.
// Returns the tier of the conversion (Scalar for a plain copy); moe::Error(Cancelled) between row ranges.
Isa scatter_rows(const ScatterRowsArgs& args, Isa isa, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
