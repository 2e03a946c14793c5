// moe_experts batch invariance for moe-native: on every CPU tier, each token's output row of a call with T tokens
// (T = 5, 17, 64, 300, random routing) is bitwise the row the token gets alone (T = 1), so batching sequences gives
// exactly the tokens of one-at-a-time generation. Random routing makes experts cross the decode streaming path's
// 16-row limit and the prefill tiles' 64 rows; the shapes take rows over one k block of every tier with ragged
// tails, silu and swiglu-oai with biases (all experts, even experts only), skewed routing with -1 ids and an absent
// expert, and one case whose T = 300 call is split into two chunks of the op's scratch (h = 8192, k = 8: 256 tokens
// per chunk). CUDA: SKIP (the CPU kernels' summation order is what these cases pin down).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cpu/moe_experts.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {

namespace {

struct InvShape {
  int64_t h, inter, e, k;
  bool oai;
  int bias;    // 0 none, 1 every present expert, 2 even experts
  bool skewed;  // slot 0 of about half the tokens on expert 0, about 10% of the ids -1, expert e - 1 absent
};

constexpr int64_t kTMax = 300;

Outcome run_invariance(const Backend& be, const InvShape& s) {
  if (be.kind != BackendKind::Cpu) return Outcome::skip("batch invariance is pinned down on the CPU tiers only");
  const int64_t h = s.h, I = s.inter, e = s.e, k = s.k;
  Rng rng(static_cast<uint64_t>(h * 7919 + I * 31 + e * 7 + k + (s.oai ? 3 : 0) + s.bias * 5 + (s.skewed ? 11 : 0)));
  // [t_max, h] bf16 inputs; swiglu-oai: sums spread enough to pass the clamp on both sides (as moe_oai_test.cc)
  const double x_amp = s.oai ? 120.0 / std::sqrt(static_cast<double>(h)) : 1.0;
  const std::vector<uint16_t> x = rng.bf16s(static_cast<size_t>(kTMax * h), x_amp);
  std::vector<int32_t> ids(static_cast<size_t>(kTMax * k));
  std::vector<float> w(static_cast<size_t>(kTMax * k));
  std::vector<int32_t> perm(static_cast<size_t>(e));
  for (int64_t i = 0; i < e; ++i) perm[i] = static_cast<int32_t>(i);
  for (int64_t t = 0; t < kTMax; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t p = j + static_cast<int64_t>(rng.next() % static_cast<uint64_t>(e - j));
      std::swap(perm[j], perm[p]);
      ids[t * k + j] = perm[j];
      w[t * k + j] = static_cast<float>(0.6 + 0.5 * rng.uniform());
    }
    if (s.skewed) {
      auto u01 = [&] { return 0.5 * (rng.uniform() + 1.0); };  // uniform in [0, 1)
      if (u01() < 0.5) {
        for (int64_t j = 1; j < k; ++j)
          if (ids[t * k + j] == 0) ids[t * k + j] = ids[t * k];
        ids[t * k] = 0;
      }
      for (int64_t j = 0; j < k; ++j)
        if (u01() < 0.1) ids[t * k + j] = -1;
    }
  }
  std::vector<std::vector<uint16_t>> wg(e), wu(e), wd(e);
  std::vector<std::vector<float>> bg(e), bu(e), bd(e);
  // gate | up | down | gate bias | up bias | down bias, [e] pointers each
  std::vector<const void*> tab(static_cast<size_t>(6 * e), nullptr);
  const double b_amp = s.oai ? 3.0 : 0.1;
  for (int64_t q = 0; q < e; ++q) {
    if (s.skewed && q == e - 1) continue;  // absent
    wg[q] = rng.bf16s(static_cast<size_t>(I * h), 0.1);
    wu[q] = rng.bf16s(static_cast<size_t>(I * h), 0.1);
    wd[q] = rng.bf16s(static_cast<size_t>(h * I), 0.1);
    tab[q] = wg[q].data();
    tab[e + q] = wu[q].data();
    tab[2 * e + q] = wd[q].data();
    if (s.bias == 1 || (s.bias == 2 && q % 2 == 0)) {
      bg[q] = rng.f32s(static_cast<size_t>(I), b_amp);
      bu[q] = rng.f32s(static_cast<size_t>(I), b_amp);
      bd[q] = rng.f32s(static_cast<size_t>(h), 0.5);
      tab[3 * e + q] = bg[q].data();
      tab[4 * e + q] = bu[q].data();
      tab[5 * e + q] = bd[q].data();
    }
  }
  // Tokens [t0, t0 + t) in one call -> [t, h] bf16.
  auto run = [&](int64_t t0, int64_t t) {
    std::vector<uint16_t> out(static_cast<size_t>(t * h), 0x7fc0);
    cpu::MoeExpertsArgs a{x.data() + t0 * h, ids.data() + t0 * k, w.data() + t0 * k, tab.data(), tab.data() + e,
                          tab.data() + 2 * e, out.data(), t, h, I, e, k};
    if (s.bias != 0) {
      a.gate_bias = tab.data() + 3 * e;
      a.up_bias = tab.data() + 4 * e;
      a.down_bias = tab.data() + 5 * e;
    }
    if (s.oai) a.activation = cpu::MoeActivation::SwigluOai;
    cpu::moe_experts(a, be.isa);
    return out;
  };
  std::vector<uint16_t> alone(static_cast<size_t>(kTMax * h));  // each token on its own
  for (int64_t t = 0; t < kTMax; ++t) {
    const std::vector<uint16_t> o = run(t, 1);
    std::memcpy(alone.data() + t * h, o.data(), static_cast<size_t>(h) * 2);
  }
  for (size_t i = 0; i < alone.size(); ++i)
    if ((alone[i] & 0x7fff) > 0x7f80) return Outcome::fail("token " + std::to_string(i / h) + " alone: NaN");
  std::string detail;
  bool ok = true;
  const int64_t windows[][2] = {{0, 5}, {0, 17}, {0, 64}, {0, kTMax}, {100, 64}};
  for (const auto& win : windows) {
    const std::vector<uint16_t> got = run(win[0], win[1]);
    int64_t diff = 0, first = -1;
    for (int64_t i = 0; i < win[1] * h; ++i)
      if (got[i] != alone[win[0] * h + i]) {
        ++diff;
        if (first < 0) first = i;
      }
    if (diff > 0) {
      ok = false;
      detail += " tokens " + std::to_string(win[0]) + ".." + std::to_string(win[0] + win[1] - 1) + ": " +
                std::to_string(diff) + " differ (first token " + std::to_string(win[0] + first / h) + " column " +
                std::to_string(first % h) + ");";
    }
  }
  return Outcome::check(ok, ok ? "T = 5, 17, 64, 300 and tokens 100..163 bitwise equal to each token alone" : detail);
}

}  // namespace

void add_moe_invariance_cases(std::vector<Case>& cases) {
  const InvShape shapes[] = {
      {256, 512, 8, 2, false, 0, false},
      {256, 512, 8, 2, true, 1, false},
      {512, 256, 64, 8, true, 2, false},
      {2100, 160, 4, 2, false, 0, false},   // rows over a k block of every tier, tails
      {96, 1100, 6, 1, true, 1, true},      // skewed routing, -1 ids, absent expert
      {8192, 16, 8, 8, false, 1, false},    // T = 300 runs as two chunks of scratch (256 + 44 tokens)
  };
  for (const InvShape& s : shapes) {
    std::string name = "h=" + std::to_string(s.h) + " i=" + std::to_string(s.inter) + " e=" + std::to_string(s.e) +
                       " k=" + std::to_string(s.k) + (s.oai ? " swiglu-oai" : " silu") +
                       (s.bias == 1 ? " bias" : s.bias == 2 ? " bias-even" : "") + (s.skewed ? " skewed" : "");
    cases.push_back({"moe_experts_invariance", name, [s](const Backend& be) { return run_invariance(be, s); }});
  }
}

}  // namespace moe::native
