// MoE combine on the CPU (module-based batching, MoE-Gen): the weighted sum of the per-expert output rows that
// moe_experts writes in parts mode (moe_experts.h, MoeExpertsArgs::parts):
//   y[t] = sum over j = 0..k-1 in order of w[t, j] * parts[t, j]  for ids[t, j] >= 0 (-1 skipped), in f32,
//   rounded to bf16 once.
// Bitwise contract: moe_experts(out) == moe_combine(parts filled by moe_experts(parts) runs over any partition of
// the routed experts into chunks), on every tier. It holds by construction: moe_experts' fused step 4 calls
// moe_combine_token, the one definition of the combine (moe_combine.cc, baseline target on every tier, never
// inlined, so one machine-code copy: FMA contraction cannot differ between the two callers), with the same rows
// (a part row is the same bits whatever the other experts of the call, see moe_experts.cc).
#pragma once
#include <cstdint>

#include "../core/cancel.h"
#include "../core/isa.h"

namespace moe::cpu {

struct MoeCombineArgs {
  const float* parts;         // [t, k, h] f32 (rows of ids -1 not read)
  const int32_t* topk_ids;    // [t, k] i32: -1 (skipped) or >= 0 (present: its parts row is read)
  const float* topk_weights;  // [t, k] f32
  uint16_t* out;              // [t, h] bf16 (fully written)
  int64_t t, h, k;            // t >= 0; h, k >= 1
};

// Multithreaded over tokens; deterministic and batch invariant (a token's row depends on its own inputs only).
// Returns Isa::Scalar whatever `isa` asks: the combine is one baseline-target function on every tier (the bitwise
// contract above). Throws moe::Error(InvalidArgument) for bad sizes, null pointers or an id < -1 (naming its index
// and value); (Cancelled) when cancelled.
Isa moe_combine(const MoeCombineArgs& args, Isa isa, const CancelToken* cancel = nullptr);

// The combine of one token, shared by moe_combine and moe_experts' fused step 4:
//   acc[c] = 0; for j in 0..k-1 with rows[j] != nullptr: acc[c] += w[j] * rows[j][c]; y[c] = bf16(acc[c]).
// rows [k] pointers to [h] f32 (nullptr: slot skipped), w [k] f32, acc [h] f32 scratch, y [h] bf16.
void moe_combine_token(const float* const* rows, const float* w, int64_t k, int64_t h, float* acc, uint16_t* y);

}  // namespace moe::cpu
