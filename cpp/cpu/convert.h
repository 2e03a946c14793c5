// Element type conversion: f32 <-> bf16, f32 <-> f16, bf16 <-> f16 (through f32), and same-type copy.
// Rounding: to nearest even (DESIGN.md section 5). NaN stays NaN, overflow becomes Inf.
#pragma once
#include <cstddef>

#include "../core/cancel.h"
#include "../core/dtype.h"
#include "../core/isa.h"

namespace moe::cpu {

struct ConvertArgs {
  const void* src;  // [n] src_dtype
  DType src_dtype;  // f32 | f16 | bf16
  void* dst;        // [n] dst_dtype
  DType dst_dtype;  // f32 | f16 | bf16
  size_t n;
};

// Runs on the thread pool with the best kernel tier <= isa. Returns the tier that ran.
// Throws moe::Error(InvalidArgument) for an unsupported dtype pair, moe::Error(Cancelled) when cancelled.
Isa convert(const ConvertArgs& args, Isa isa, const CancelToken* cancel = nullptr);

// The single-threaded kernel convert() splits over the pool, for ops that convert many short runs themselves
// (scatter_rows): dst[0, n) = src[0, n) converted, bit-identical on every tier. src and dst must be distinct float
// types (f32 | f16 | bf16); *ran gets the tier it belongs to. Throws moe::Error(InvalidArgument) for another pair.
using ConvertKernel = void (*)(const void* src, void* dst, size_t n);
ConvertKernel convert_kernel(DType src, DType dst, Isa isa, Isa* ran);

}  // namespace moe::cpu
