// Dense GEMM over packed weights: out[m, n] = a[m, k] b[n, k]^T with b in the panel64 layout (pack_weights.h),
// bf16 a and b, f32 accumulation, f32 or bf16 out. The projection and LM-head GEMMs of the CPU runtime.
// Every output is summed the same way on every path (batch invariance): one f32 accumulator that starts at 0 and
// takes the k pairs in order, one vdpbf16ps per pair (tier avx512bf16; tier avx2: one FMA per k, in order; tier
// scalar: one f32 sum over k in order).
// Blocking (rows per tile, k blocks, threads) only decides when an accumulator is stored to the f32 tile and
// loaded back, which does not change its value, so a row of out is bitwise the same whatever m and the other rows.
#pragma once
#include <cstdint>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct GemmPackedArgs {
  const uint16_t* a;    // [m, k] bf16, row stride lda
  const uint16_t* b;    // packed [packed_weights_numel(n, k)] bf16 (pack_weights.h)
  void* out;            // [m, n] out_dtype, row stride ldc
  DType out_dtype;      // f32 | bf16
  int64_t m, n, k;      // m >= 0, n >= 1, k >= 1
  int64_t lda, ldc;     // >= k, >= n
};

// Tiers: avx512bf16 (6 x 64 outer-product tiles of vdpbf16ps); avx2, also for the avx512 tier (5 x 16 outer-product
// tiles of f32 FMAs, each pair's even then odd product); scalar (the reference: plain loops over the packed layout).
// Returns the tier that ran. Throws moe::Error(InvalidArgument) for bad sizes or null pointers; (Cancelled).
Isa gemm_packed(const GemmPackedArgs& args, Isa isa, const CancelToken* cancel = nullptr);

// The kernel tier gemm_packed runs for a requested `isa` (lowered to what the CPU has): avx512bf16; avx2 for the avx2
// and avx512 tiers (8-lane FMAs); scalar.
Isa packed_tier(Isa isa);

// The kernel of one work item, for other ops over packed weights (moe_experts): tile[i][c] (row stride 64, f32)
// = dot(row i of a, column c of one panel) for i < m, c < 64, with a [m, k] bf16 (row stride lda) and `panel` the
// [ceil(k/2)][64][2] block of a packed weight, on `tier` (a packed_tier result). The summation order is
// gemm_packed's, so results agree with it bitwise on the same tier.
void packed_panel_dots(const uint16_t* a, int64_t lda, int64_t m, const uint16_t* panel, int64_t k, Isa tier, float* tile);

// Work items (each `panels` panels of a k-column weight against m rows) per pool range: enough for about 256 KiB of
// panel bytes or 8 MFLOP, so that small GEMMs (tiny models, decode of small projections) run on the calling thread
// instead of paying a cross-thread handoff per op.
size_t packed_items_grain(int64_t m, int64_t k, int64_t panels);

}  // namespace moe::cpu
