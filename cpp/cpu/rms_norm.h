// RMSNorm (HF LlamaRMSNorm semantics, f32 math) over rows of length d, with an optional fused residual add:
//   if add: x[r, j] += add[r, j]                 (x f32: the residual stream, updated in place)
//   out[r, j] = x[r, j] * (1 / sqrt(sum_j x[r, j]^2 / d + eps)) * weight[j]
// The sum of squares is accumulated in f32 in a fixed order per row (one thread per row, so the result does not
// depend on the thread count; the vector tiers use more partial sums than the scalar tier, so tiers may differ in
// the last bits of the scale); the products are f32 ((x * scale) * weight, no FMA), bf16 outputs rounded to nearest
// even once at the end. HF rounds x * scale to the input dtype before the weight multiply: we round once.
#pragma once
#include <cstddef>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct RmsNormArgs {
  void* x;             // [rows, d] x_dtype (f32 | bf16); x += add in place when add != nullptr (then x_dtype is f32)
  const void* add;     // [rows, d] add_dtype (f32 | bf16), or nullptr
  const void* weight;  // [d] w_dtype (f32 | bf16)
  void* out;           // [rows, d] out_dtype (f32 | bf16); may alias x exactly (same dtype)
  DType x_dtype = DType::F32, add_dtype = DType::F32, w_dtype = DType::F32, out_dtype = DType::F32;
  size_t rows = 0, d = 0;
  float eps = 0;       // finite, >= 0
};

// Throws moe::Error(InvalidArgument) naming the first bad argument.
void rms_norm_validate(const RmsNormArgs& args);

// Rows in parallel on ThreadPool::global() when there is enough work (about 16K elements per range handed to a
// thread; fewer elements in total run on the calling thread without fan-out). Tiers: scalar, AVX2, AVX-512 (the
// Avx512Bf16 tier runs the AVX-512 kernel and reports Avx512: memory-bound, no dot products). Returns the tier that
// ran. Throws moe::Error(InvalidArgument) for bad arguments, (Cancelled) when cancelled (then some rows are done).
Isa rms_norm(const RmsNormArgs& args, Isa isa, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
