// Dense GEMM with the weight in nn.Linear / safetensors layout: out[m, n] = sum_k a[m, k] * b[n, k]
// (y = x W^T). Accumulates in f32. This is the simple dense op of the foundation; the grouped-expert GEMM of the
// fused MoE issue builds on the same micro-kernels.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct GemmArgs {
  const void* a;    // [m, k] ab_dtype, row stride lda elements
  const void* b;    // [n, k] ab_dtype, row stride ldb elements
  void* out;        // [m, n] out_dtype, row stride ldc elements
  DType ab_dtype;   // f32 | bf16 (a and b share it)
  DType out_dtype;  // f32 | bf16
  int64_t m, n, k;  // m, n >= 0, k >= 0 (k == 0 writes zeros)
  int64_t lda, ldb, ldc;  // >= k, >= k, >= n
};

// Multithreaded over (m tile, n tile); for m <= 8 over ranges of b rows, each b row read once (gemm.cc's
// streaming path). Batch invariant: a row of out is bitwise the same whatever m, the other rows of a and the
// thread count are (per tier). Returns the tier that ran.
// Throws moe::Error(InvalidArgument) for unsupported dtypes, (Cancelled) when cancelled.
Isa gemm(const GemmArgs& args, Isa isa, const CancelToken* cancel = nullptr);

// The same GEMM on the calling thread only (no pool): for callers that parallelise over their own work items,
// e.g. the grouped expert GEMMs of moe_experts.cc (one item per (expert, n tile)). Same tiers, same results.
Isa gemm_serial(const GemmArgs& args, Isa isa);

}  // namespace moe::cpu
