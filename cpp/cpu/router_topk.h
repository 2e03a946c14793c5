// Router top-k and the routing bookkeeping of the fused MoE layer (issue 3), CPU side:
//   router_topk  logits [T, E] f32 -> topk_ids [T, k] i32, topk_weights [T, k] f32
//   moe_align    topk_ids [T, k] -> per-expert counts [E], padded offsets [E + 1], sorted_token_ids (vLLM
//                moe_align_block_size semantics)
// Both are scalar: they touch T * E and T * k values, negligible next to the expert GEMMs they feed.
#pragma once
#include <cstdint>

#include "../core/cancel.h"
#include "../core/isa.h"

namespace moe::cpu {

enum class Scoring : int { Softmax = 0, Sigmoid = 1 };

struct RouterTopKArgs {
  const float* logits;   // [t, e] f32
  const float* bias;     // [e] f32 or nullptr: added to the score for selection only (DeepSeek-V3)
  int32_t* topk_ids;     // [t, k] i32, in descending order of selection score; ties: lower expert id first
  float* topk_weights;   // [t, k] f32
  int64_t t, e, k;       // t >= 0, 1 <= k <= e
  Scoring scoring;
  bool renormalize;      // divide the k weights of a token by their sum
};

// Softmax: p = softmax(logits) in f32 over all E (max-subtracted, summed in expert order); selection by logit
// (softmax is monotone, so this is the top-k of p with exact-tie semantics on the logits); weight = p.
// Sigmoid: selection by logit + bias (bias optional); weight = sigmoid(logit) (unbiased).
// Threads over tokens. Throws moe::Error(InvalidArgument) for bad sizes. Returns Isa::Scalar.
Isa router_topk(const RouterTopKArgs& args, const CancelToken* cancel = nullptr);

struct MoeAlignArgs {
  const int32_t* topk_ids;    // [t, k] i32; -1 = not routed here (skipped); other values must be in [0, e)
  int32_t* counts;            // [e] i32: rows routed to each expert
  int32_t* offsets;           // [e + 1] i32: offsets[0] = 0, offsets[x + 1] = offsets[x] + roundup(counts[x], block)
  int32_t* sorted_token_ids;  // [capacity] i32: for padded row r of expert x (offsets[x] <= r < offsets[x + 1]),
                              // the index t * k + j of the routed slot, ascending; padding and r >= offsets[e]: t * k
  int64_t t, k, e, block;     // block >= 1
  int64_t capacity;           // >= moe_align_capacity(t, k, e, block)
};

// Upper bound of offsets[e] for any routing: t * k + e * (block - 1).
inline int64_t moe_align_capacity(int64_t t, int64_t k, int64_t e, int64_t block) {
  return t * k + e * (block - 1);
}

// Throws moe::Error(InvalidArgument) for bad sizes or an id outside [-1, e). Returns Isa::Scalar.
Isa moe_align(const MoeAlignArgs& args);

}  // namespace moe::cpu
