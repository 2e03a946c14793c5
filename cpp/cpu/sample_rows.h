// Next-token choice for every row of a logits matrix (the engine's sampler; lib/engine/sampler.ts builds the
// per-row parameters and draws the uniforms), rows in parallel on the thread pool. Per row r of logits [rows, vocab]
// f32 with params[4 r ..] = { temperature, top_k, top_p, u }:
//   temperature 0: the highest logit, ties to the lower id (NaN never chosen; a row without one > -inf gives 0; a row
//   whose highest logit is +inf gives its first +inf at any temperature);
//   else weights exp((logit - max) / temperature) in double (0 for NaN), and the candidates are the top_k best ids
//   (0 or >= vocab: all; best = higher logit, ties to the lower id), best first, or without top_k the whole row;
//   top_p < 1 keeps the smallest best-first prefix whose weight reaches top_p of the candidates' total; the draw
//   returns the kept candidate at which u x (their total) falls, walking them best first (top_k / top_p) or in id
//   order (neither). No full sort: top_k through a size-k heap, top_p by best-first pops from a heap over the ids in
//   the power-of-two weight bands that can reach top_p (the others join only if rounding leaves the pops short).
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
  Isa isa = Isa::Avx512Bf16;  // the tier cap of the greedy argmax (argmax_rows.h: every tier gives the same id)
};

// One row (exposed for tests and the single-row path).
int32_t sample_row(const float* logits, int64_t vocab, const double* params, Isa isa = Isa::Avx512Bf16);

// Every row; false when cancelled before all rows ran.
bool sample_rows(const SampleRowsArgs& a, const CancelToken* cancel);

}  // namespace moe::cpu
