// Greedy next token of every row of a logits matrix: out[r] = the id of row r's highest logit, ties to the lower
// id, NaN never chosen, and 0 for a row without a logit above -inf. The rule of sample_rows.h at temperature 0
// (sample_rows uses argmax_row), and of the CUDA kernel (cuda/argmax_rows.cuh), so a staged step can take its
// greedy tokens on the device and download rows x 4 bytes instead of the logits.
#pragma once
#include <cstdint>

#include "../core/cancel.h"
#include "../core/isa.h"

namespace moe::cpu {

// One row of n >= 1 logits, on vector_tier(isa) (core/isa.h; every tier gives the same id).
int32_t argmax_row(const float* l, int64_t n, Isa isa = Isa::Avx512Bf16);

// logits [rows, vocab] f32 -> out [rows] i32, rows in parallel on the pool; false when cancelled.
bool argmax_rows(const float* logits, int64_t rows, int64_t vocab, int32_t* out, const CancelToken* cancel = nullptr,
                 Isa isa = Isa::Avx512Bf16);

}  // namespace moe::cpu
