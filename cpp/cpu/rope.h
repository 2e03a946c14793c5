// Rotary position embedding (issue 5 item 3), HF "rotate_half" convention, applied in place to q and k:
//   for each token t, head h, i in [0, rotary_dim / 2), with half = rotary_dim / 2, a = positions[t] * inv_freq[i]:
//     x1 = x[i], x2 = x[i + half]
//     x[i]        = (x1 cos a - x2 sin a) * attention_scaling
//     x[i + half] = (x2 cos a + x1 sin a) * attention_scaling
//   elements [rotary_dim, head_dim) pass through unchanged (partial rotary).
// This is HF `apply_rotary_pos_emb(q, k, cos, sin)` with `cos = cos(emb) * attention_scaling` where
// `emb = cat(freqs, freqs)`, `freqs = position * inv_freq` (the rotary-embedding modules of Llama / Mixtral /
// Qwen / OLMoE / gpt-oss). inv_freq and attention_scaling come from the config (lib/rope.ts computes them as
// HF's _compute_default_rope_parameters / _compute_llama3_parameters / _compute_yarn_parameters do).
// Numerics: the angle and its cos / sin are computed in double once per (token, i) (f32 angles lose ~1e-2 rad at
// positions ~1e5), rounded to f32 with the scaling folded in; the rotation is f32; bf16 results rounded once to
// nearest even (HF rounds cos / sin to bf16 and multiplies in bf16: we are closer to the float64 formula).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct RopeArgs {
  void* q;                   // [tokens, q_heads, head_dim] dtype, rotated in place (nullptr when q_heads == 0)
  void* k;                   // [tokens, kv_heads, head_dim] dtype, rotated in place (nullptr when kv_heads == 0)
  const int32_t* positions;  // [tokens] i32, each >= 0 (any order, repeats allowed)
  const float* inv_freq;     // [rotary_dim / 2] f32, finite
  DType dtype;               // f32 | bf16 (q and k alike)
  int64_t tokens, q_heads, kv_heads, head_dim, rotary_dim;  // rotary_dim even, 2 <= rotary_dim <= head_dim <= 1024
  float attention_scaling;   // multiplies the rotated part (1 except yarn); finite
};

// Validates every argument (positions included) and throws moe::Error(InvalidArgument) naming the first problem.
void rope_validate(const RopeArgs& args);

// Multithreaded over tokens on ThreadPool::global(). Tiers: scalar, AVX2, AVX-512 (the Avx512Bf16 tier runs the
// AVX-512 kernel and reports Avx512: there are no dot products here). Returns the tier that ran. Throws
// moe::Error(InvalidArgument) for bad arguments, (Cancelled) when cancelled (q / k then partly rotated).
Isa rope(const RopeArgs& args, Isa isa, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
