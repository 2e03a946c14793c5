// References and helpers for the op tests: a deterministic RNG, the scalar element conversions of dtype.h by
// DType code, float64 references (gemm), and error metrics (NMSE, max abs error).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace moe::native {

// splitmix64: deterministic across platforms, so a failing case reproduces exactly.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint32_t u32() { return static_cast<uint32_t>(next() >> 32); }
  // Uniform in [-1, 1).
  double uniform() { return static_cast<double>(next() >> 11) * (2.0 / 9007199254740992.0) - 1.0; }
  // n values uniform in [-amp, amp): as f32, and rounded to bf16 (bits).
  std::vector<float> f32s(size_t n, double amp) {
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(uniform() * amp);
    return v;
  }
  std::vector<uint16_t> bf16s(size_t n, double amp) {
    std::vector<uint16_t> v(n);
    for (auto& x : v) x = f32_to_bf16(static_cast<float>(uniform() * amp));
    return v;
  }

 private:
  uint64_t s_;
};

// Raw element (f32 bits, or f16/bf16 bits) <-> f32 through dtype.h's scalar functions.
float raw_to_f32(DType t, uint32_t raw);
uint32_t f32_to_raw(DType t, float f);
// Reads / writes element i of a raw array of type t.
uint32_t load_raw(DType t, const void* base, size_t i);
void store_raw(DType t, void* base, size_t i, uint32_t raw);

// The scalar reference of a conversion: same type copies bits; otherwise through f32 (dtype.h).
uint32_t convert_ref(DType src, DType dst, uint32_t raw);

// out[m, n] = sum_k a[m, k] * b[n, k] in float64 from the stored a and b (any ab dtype), row-major [m, n] result.
std::vector<double> gemm_ref(DType ab, const void* a, const void* b, int64_t m, int64_t n, int64_t k, int64_t lda,
                             int64_t ldb);

struct ErrorStats {
  double nmse = 0;        // sum((out - ref)^2) / sum(ref^2) (0 when both are 0)
  double max_abs = 0;     // max |out - ref|
  double max_ref = 0;     // max |ref|
  size_t non_finite = 0;  // outputs that are NaN or Inf
};
ErrorStats compare(const std::vector<double>& out, const std::vector<double>& ref);

}  // namespace moe::native
