// argmax_rows cases for moe-native: greedy tokens on the CPU tiers and on CUDA against an independent reference
// (the largest non-NaN value above -inf, then its first index; 0 when there is none), with ties on a coarse grid,
// NaN, rows of -inf or NaN only, and several +inf.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu/argmax_rows.h"
#include "cuda_util.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {
namespace {

int32_t reference(const float* l, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i)
    if (!std::isnan(l[i]) && static_cast<double>(l[i]) > m) m = l[i];
  if (m == -std::numeric_limits<double>::infinity()) return 0;
  for (int64_t i = 0; i < n; ++i)
    if (static_cast<double>(l[i]) == m) return static_cast<int32_t>(i);
  return -1;
}

Outcome run_argmax(const Backend& be, int64_t rows, int64_t vocab) {
  Rng rng(static_cast<uint64_t>(rows * 7919 + vocab));
  std::vector<float> l(static_cast<size_t>(rows * vocab));
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t r = 0; r < rows; ++r) {
    float* x = l.data() + r * vocab;
    const int kind = static_cast<int>(r % 6);
    for (int64_t i = 0; i < vocab; ++i) {
      const double u = static_cast<double>(rng.next() % 1000000) / 1000000.0;
      x[i] = kind == 1 ? static_cast<float>(std::round(u * 8)) : static_cast<float>(u * 20 - 10);  // kind 1: ties
      if (kind == 2 && i % 3 == 0) x[i] = nan;
    }
    if (kind == 3) for (int64_t i = 0; i < vocab; ++i) x[i] = i % 2 ? -inf : nan;  // nothing above -inf: 0
    if (kind == 4) for (int64_t i = vocab / 3; i < vocab; i += vocab / 4 + 1) x[i] = inf;  // the first +inf
    if (kind == 5) x[vocab - 1] = 1e30f;  // the last id
  }
  std::vector<int32_t> out(static_cast<size_t>(rows), -7);
  if (be.kind == BackendKind::Cpu) {
    cpu::argmax_rows(l.data(), rows, vocab, out.data(), nullptr, be.isa);
  } else {
#if MOE_WITH_CUDA
    DeviceBuffer dl(be.device, l.size() * 4), dout(be.device, out.size() * 4);
    cuda_check(moe_cuda_memcpy_async(be.device, dl.get(), l.data(), l.size() * 4, be.stream), "H2D");
    cuda_check(moe_cuda_argmax_rows(be.device, static_cast<const float*>(dl.get()), rows, vocab, static_cast<int32_t*>(dout.get()), be.stream),
               "moe_cuda_argmax_rows");
    cuda_check(moe_cuda_memcpy_async(be.device, out.data(), dout.get(), out.size() * 4, be.stream), "D2H");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
#endif
  }
  int64_t bad = 0, first = -1;
  for (int64_t r = 0; r < rows; ++r)
    if (out[r] != reference(l.data() + r * vocab, vocab)) {
      if (first < 0) first = r;
      bad++;
    }
  return Outcome::check(bad == 0, std::to_string(bad) + " of " + std::to_string(rows) + " rows differ" +
                                      (first >= 0 ? " (first: row " + std::to_string(first) + ")" : ""));
}

}  // namespace

void add_argmax_cases(std::vector<Case>& cases) {
  const int64_t shapes[][2] = {{1, 1}, {6, 7}, {6, 63}, {12, 64}, {12, 257}, {256, 32000}, {7, 100003}, {24, 151936}};
  for (const auto& s : shapes)
    cases.push_back({"argmax_rows", "rows=" + std::to_string(s[0]) + " vocab=" + std::to_string(s[1]),
                     [=](const Backend& be) { return run_argmax(be, s[0], s[1]); }});
}

}  // namespace moe::native
