// dot_probe cases for moe-native: the benches' compute roofline (cpu/dot_probe.h) on every CPU tier. What it claims
// is counted independently here: the FLOP it returns must be threads x iters x 12 chains x the FLOP of one
// multiply-add of the tier's kind (vdpbf16ps on 512 bits: 32 bf16 pairs, 64 FLOP; an f32 FMA on 512 bits: 16 lanes,
// 32 FLOP; on 256 bits: 8 lanes, 16 FLOP; 0 on the scalar tier), with dot_probe_op naming the same kind; and the rate
// it implies must stay under two multiply-adds per cycle per thread at 6 GHz (a loop the compiler removed, or one
// that ran fewer iterations than it counts, would report more). CPU only.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/threadpool.h"
#include "cpu/dot_probe.h"
#include "harness.h"

namespace moe::native {
namespace {

// FLOP of one multiply-add of the kind dot_probe runs on tier `isa` (already lowered to the CPU), and its name.
double flop_per_op(Isa isa, const char** name) {
  switch (isa) {
    case Isa::Avx512Bf16: *name = "vdpbf16ps"; return 2.0 * 32;  // 32 bf16 pairs, each a multiply and an add
    case Isa::Avx512: *name = "f32 FMA"; return 2.0 * 16;
    case Isa::Avx2: *name = "f32 FMA"; return 2.0 * 8;
    default: *name = "none (scalar)"; return 0.0;
  }
}

Outcome run_dot_probe(const Backend& be, int64_t iters) {
  if (be.kind != BackendKind::Cpu) return Outcome::skip("CPU only: it measures the host's cores");
  const Isa tier = clamp_isa(be.isa);
  const char* want_name = nullptr;
  const double per = flop_per_op(tier, &want_name);
  const double threads = static_cast<double>(ThreadPool::global().size());
  const auto t0 = std::chrono::steady_clock::now();
  const double flops = cpu::dot_probe(iters, be.isa);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double want = iters > 0 ? threads * static_cast<double>(iters) * 12.0 * per : 0.0;
  const char* name = cpu::dot_probe_op(be.isa);
  // the most a core could do: 2 multiply-adds per cycle (two FMA ports) at 6 GHz, every pool thread on its own core
  const double ceiling = threads * 2.0 * per * 6e9;
  const double rate = sec > 0 ? flops / sec : (flops > 0 ? 1e300 : 0.0);
  char d[200];
  std::snprintf(d, sizeof d, "flops=%.6g want=%.6g op=%s want %s, %.3g FLOP/s (ceiling %.3g)", flops, want, name,
                want_name, rate, ceiling);
  const bool ok = flops == want && std::strcmp(name, want_name) == 0 && rate <= ceiling;
  return Outcome::check(ok, d);
}

}  // namespace

void add_dot_probe_cases(std::vector<Case>& cases) {
  for (int64_t iters : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{200000}})
    cases.push_back({"dot_probe", "iters=" + std::to_string(iters), [=](const Backend& be) { return run_dot_probe(be, iters); }});
}

}  // namespace moe::native
