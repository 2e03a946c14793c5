// Grouped GEMM (issue 3 building block): G independent GEMMs over one stacked A. Group g owns the rows
// offsets[g] .. offsets[g + 1] of a and of out and multiplies them by its own weight b[g] (nn.Linear layout):
//   out[r, :] = a[r, :] b[g]^T  for offsets[g] <= r < offsets[g + 1],   b[g]: [n, k]
// The moe_experts GEMMs are this with groups = experts (rows sorted by expert, e.g. by moeAlign); the dense gemm
// is the one-group case. bf16 inputs, f32 accumulation, f32 or bf16 out.
#pragma once
#include <cstdint>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct GroupedGemmArgs {
  const uint16_t* a;          // [rows, k] bf16, row stride lda; rows = offsets[g_count]
  const int32_t* offsets;     // [g_count + 1] i32, offsets[0] == 0, non-decreasing
  const void* const* b;       // [g_count] pointers to [n, k] bf16 (row stride ldb); may be null for an empty group
  void* out;                  // [rows, n] out_dtype, row stride ldc (rows of empty groups: none)
  DType out_dtype;            // f32 | bf16
  int64_t g_count, n, k;      // g_count >= 1, n >= 1, k >= 1
  int64_t lda, ldb, ldc;      // >= k, >= k, >= n
};

// Multithreaded over (group, 64-column tile) items; each item runs the dense GEMM's micro-kernels on its group's
// rows (gemm_serial), so results match gemm() on each group bitwise. Returns the tier that ran.
// Throws moe::Error(InvalidArgument) for bad sizes, offsets or a null b of a non-empty group; (Cancelled).
Isa grouped_gemm(const GroupedGemmArgs& args, Isa isa, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
