// Elementwise add: out[i] = a[i] + b[i]; computed in f32, bf16/f16 results rounded to nearest even.
#pragma once
#include <cstddef>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct AddArgs {
  const void* a;  // [n] dtype
  const void* b;  // [n] dtype
  void* out;      // [n] dtype (may alias a or b exactly)
  DType dtype;    // f32 | f16 | bf16
  size_t n;
};

// Returns the tier that ran. Throws moe::Error(InvalidArgument) for other dtypes, (Cancelled) when cancelled.
Isa add(const AddArgs& args, Isa isa, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
