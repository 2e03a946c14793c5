// Next-token choice for every row of a logits matrix (the engine's sampler; lib/engine/sampler.ts builds the
// per-row parameters and draws the uniforms), rows in parallel on the thread pool. Per row r of logits [rows, vocab]
// f32 with params[4 r ..] = { temperature, top_k, top_p, u }:
//   temperature 0: the highest logit, ties to the lower id (NaN never chosen; a row without one > -inf gives 0; a row
//   whose highest logit is +inf gives its first +inf at any temperature);
//   else weights exp((logit - max) / temperature), 0 for NaN. top_k (0 or >= vocab: none): the top_k best ids (best =
//   higher logit, ties to the lower id) through a size-k heap, weights in double, best first. Without top_k the whole
//   row, weights in f32 (simd.h's exp on the vector tiers, std::exp on scalar; 0 below exp(-87.3)); the draw walks
//   the ids in order, in 64-id blocks. top_p < 1 keeps the smallest best-first prefix whose weight reaches top_p of
//   the candidates' total: with top_k among the k, else by weight bands (1/8 of a doubling each): the bands before
//   the one where the mass reaches top_p whole, that band's ids best first (the only ids sorted); the draw walks the
//   whole bands best first (ids in order within one), then that band's kept ids. The draw returns the kept candidate
//   at which u x (their total) falls. The vector tiers (AVX-512, AVX2) and scalar draw the same distribution; the
//   ids a given u draws on two tiers differ only where rounding moves a boundary.
#pragma once
#include <cstdint>

#include "../core/cancel.h"
#include "../core/isa.h"

namespace moe::cpu {

struct SampleRowsArgs {
  const float* logits;   // [rows, vocab] f32
  const double* params;  // [rows, 4]: temperature >= 0, top_k >= 0 (integral), top_p in (0, 1], u in [0, 1)
  int32_t* out;          // [rows] i32
  int64_t rows, vocab;   // vocab >= 1
  Isa isa = Isa::Avx512Bf16;  // the tier cap: vector_tier(isa) (core/isa.h) runs the argmax, the weights, top_k's scan
};

// One row (exposed for tests and the single-row path).
int32_t sample_row(const float* logits, int64_t vocab, const double* params, Isa isa = Isa::Avx512Bf16);

// Every row; false when cancelled before all rows ran.
bool sample_rows(const SampleRowsArgs& a, const CancelToken* cancel);

}  // namespace moe::cpu
