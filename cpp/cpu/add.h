// Elementwise add: out[i] = a[i] + b[i]; computed in f32, bf16/f16 results rounded to nearest even.
// Row broadcast (b_len = N, 0 < N < n, n a multiple of N): out[r, j] = a[r, j] + b[j] over rows of N (bias add).
#pragma once
#include <cstddef>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct AddArgs {
  const void* a;  // [n] dtype
  const void* b;  // [n] dtype, or [b_len] dtype when broadcast
  void* out;      // [n] dtype (may alias a exactly; b only when not broadcast)
  DType dtype;    // f32 | f16 | bf16
  size_t n;
  size_t b_len = 0;  // 0 or n: b has a's shape; else b is [b_len], added to each of the n / b_len rows of a
};

// Returns the tier that ran. Throws moe::Error(InvalidArgument) for other dtypes or an n that is not a multiple of
// b_len, (Cancelled) when cancelled. Broadcast results are bit-identical to the same-shape add with b repeated.
Isa add(const AddArgs& args, Isa isa, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
