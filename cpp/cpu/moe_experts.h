// Fused MoE expert FFN on the CPU (issue 3):
//   y[t] = sum_j w[t, j] * down_e( silu(gate_e(x[t])) * up_e(x[t]) ),  e = topk_ids[t, j]
// Experts are reached through a pointer table indexed by expert id (they sit in cache slots, not in one
// contiguous array); an id of -1 or an absent expert (null pointers) contributes zero, so a token whose experts
// are all absent gets exactly 0.
#pragma once
#include <cstdint>

#include "../core/cancel.h"
#include "../core/isa.h"

namespace moe::cpu {

struct MoeExpertsArgs {
  const uint16_t* x;              // [t, h] bf16
  const int32_t* topk_ids;        // [t, k] i32: -1 or in [0, e)
  const float* topk_weights;      // [t, k] f32
  const void* const* gate;        // [e] pointers to [inter, h] bf16 (row stride h), nullptr = expert absent
  const void* const* up;          // [e] pointers to [inter, h] bf16
  const void* const* down;        // [e] pointers to [h, inter] bf16 (row stride inter)
  uint16_t* out;                  // [t, h] bf16 (fully written)
  int64_t t, h, inter, e, k;      // t >= 0; h, inter, e, k >= 1
};

// Multithreaded over (expert, n tile) work items on the project's pool (avx512bf16: experts with <= 16 routed
// rows take a weight-streaming kernel that reads each weight row once, see moe_experts.cc); deterministic (fixed combine order, no
// atomics on floats). Returns the GEMM tier that ran. Throws moe::Error(InvalidArgument) for bad sizes, ids
// outside [-1, e), or a table entry with some but not all of gate/up/down null; (Cancelled) when cancelled.
Isa moe_experts(const MoeExpertsArgs& args, Isa isa, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
