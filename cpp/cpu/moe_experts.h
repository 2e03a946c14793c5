// Fused MoE expert FFN on the CPU (issue 3):
//   y[t] = sum_j w[t, j] * down_e( act(gate_e(x[t]), up_e(x[t])) ),  e = topk_ids[t, j]
// act (MoeActivation): Silu (default, Mixtral / Qwen / OLMoE): silu(g) * u. SwigluOai (gpt-oss, HF GptOssExperts):
//   g = min(g, limit), u = clamp(u, -limit, limit), (u + 1) * g * sigmoid(alpha * g).
// Optional per-expert f32 biases (gpt-oss): g = x.Wg^T + bg, u = x.Wu^T + bu before the activation, and
//   down_e(a) = a.Wd^T + bd, so y[t] += w[t, j] * (a.Wd^T + bd). No biases and Silu is the op of issue 3, bitwise.
// Experts are reached through a pointer table indexed by expert id (they sit in cache slots, not in one
// contiguous array); an id of -1 or an absent expert (null pointers) contributes zero, so a token whose experts
// are all absent gets exactly 0.
// Parts mode (module-based batching: the experts of a layer streamed through a few slots in chunks): given `parts`
// instead of `out`, the op writes parts[t, j, :] = the expert's unweighted f32 output row down_e(a) (+ bd) for every
// (t, j) whose id is a present expert and leaves every other row untouched; topk_weights is not read. moe_combine
// (moe_combine.h) then gives bitwise the fused output from the rows of any partition of the experts into chunks.
#pragma once
#include <cstdint>

#include "../core/cancel.h"
#include "../core/isa.h"

namespace moe::cpu {

enum class MoeActivation : int32_t { Silu = 0, SwigluOai = 1 };

struct MoeExpertsArgs {
  const uint16_t* x;              // [t, h] bf16
  const int32_t* topk_ids;        // [t, k] i32: -1 or in [0, e)
  const float* topk_weights;      // [t, k] f32
  const void* const* gate;        // [e] pointers to [inter, h] bf16 (row stride h), nullptr = expert absent
  const void* const* up;          // [e] pointers to [inter, h] bf16
  const void* const* down;        // [e] pointers to [h, inter] bf16 (row stride inter)
  uint16_t* out;                  // [t, h] bf16 (fully written); nullptr in parts mode
  int64_t t, h, inter, e, k;      // t >= 0; h, inter, e, k >= 1
  // Optional (defaults: the op of issue 3). Bias tables: each null (no expert has biases) or [e] pointers, an
  // expert's three all set (present expert with biases) or all null.
  const void* const* gate_bias = nullptr;  // [e] pointers to [inter] f32
  const void* const* up_bias = nullptr;    // [e] pointers to [inter] f32
  const void* const* down_bias = nullptr;  // [e] pointers to [h] f32
  MoeActivation activation = MoeActivation::Silu;
  float alpha = 1.702f;  // SwigluOai: sigmoid slope (finite)
  float limit = 7.0f;    // SwigluOai: clamp bound (finite, > 0)
  // Parts mode (see above): [t, k, h] f32, rows of present experts written, the rest untouched; out must then be
  // nullptr (exactly one of out and parts when t > 0).
  float* parts = nullptr;
  // Packed weights: gate, up and down point at the panel64 forms (pack_weights.h) of their [inter, h], [inter, h]
  // and [h, inter] weights. Tiers: avx512bf16 (gemm_packed's kernel), otherwise the scalar reference.
  bool packed = false;
};

// Multithreaded over (expert, n tile) work items on the project's pool (experts with <= 16 routed rows take a
// weight-streaming kernel that reads each weight row once, see moe_experts.cc; packed weights: (expert, 64-column
// panel) items of gemm_packed's outer-product kernel at every row count); deterministic (fixed combine order,
// no atomics on floats) and batch invariant: a token's output row is bitwise the same whatever the other tokens of
// the call (their number, their routing), on every tier. Returns the GEMM tier that ran. Throws
// moe::Error(InvalidArgument) for bad sizes, both or neither of out and parts, ids outside [-1, e), a table entry
// with some but not all of gate/up/down null, biases on an absent expert or some but not all of an expert's biases,
// an unknown activation or a non-finite alpha / non-positive limit; (Cancelled) when cancelled.
Isa moe_experts(const MoeExpertsArgs& args, Isa isa, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
