// pack_weights cases for moe-native: the panel64 layout (cpu/pack_weights.h) on every CPU tier against an
// independent reference of its formula, packed[((q kp + p) 64 + c) 2 + e] = W[64 q + c][2 p + e] (0 past n or k),
// on shapes with whole and partial panels, odd k and a k whose last block of 16 pairs is short.
#include <string>
#include <vector>

#include "cpu/pack_weights.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {
namespace {

Outcome run_pack(const Backend& be, int64_t n, int64_t k) {
  if (be.kind != BackendKind::Cpu) return Outcome::skip("packed weights are a CPU layout");
  Rng rng(static_cast<uint64_t>(n * 131 + k));
  std::vector<uint16_t> w(static_cast<size_t>(n * k));
  for (auto& v : w) v = static_cast<uint16_t>(rng.next());
  const int64_t kp = (k + 1) / 2, panels = (n + 63) / 64;
  std::vector<uint16_t> want(static_cast<size_t>(cpu::packed_weights_numel(n, k)));
  for (int64_t q = 0; q < panels; ++q)
    for (int64_t p = 0; p < kp; ++p)
      for (int64_t c = 0; c < 64; ++c)
        for (int64_t e = 0; e < 2; ++e) {
          const int64_t r = 64 * q + c, col = 2 * p + e;
          want[static_cast<size_t>(((q * kp + p) * 64 + c) * 2 + e)] = r < n && col < k ? w[static_cast<size_t>(r * k + col)] : 0;
        }
  std::vector<uint16_t> got(want.size(), 0xdead);
  cpu::pack_weights(w.data(), n, k, k, got.data(), nullptr, be.isa);
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < want.size(); ++i)
    if (got[i] != want[i]) {
      if (first < 0) first = static_cast<int64_t>(i);
      bad++;
    }
  return Outcome::check(bad == 0, std::to_string(bad) + " of " + std::to_string(want.size()) + " values differ" +
                                      (first >= 0 ? " (first at " + std::to_string(first) + ")" : "") + " [ran " +
                                      isa_name(vector_tier(be.isa)) + "]");
}

}  // namespace

void add_pack_cases(std::vector<Case>& cases) {
  const int64_t shapes[][2] = {{1, 1}, {64, 32}, {64, 33}, {70, 64}, {128, 96}, {192, 2048}, {200, 511}, {768, 2048}};
  for (const auto& s : shapes)
    cases.push_back({"pack_weights", "n=" + std::to_string(s[0]) + " k=" + std::to_string(s[1]),
                     [=](const Backend& be) { return run_pack(be, s[0], s[1]); }});
}

}  // namespace moe::native
