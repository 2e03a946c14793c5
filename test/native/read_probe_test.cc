// read_probe cases for moe-native: the bench's streaming-read probe (cpu/read_probe.h) sums what it reads, on
// every CPU tier, against a float64 sum: lengths around the vector steps and the 1 MiB chunk (tails in the vector
// loop, the scalar loop and the last chunk), varied positive values (a loop that skips or repeats a block moves the
// sum far past the tolerance), a sentinel past the end, a length of 0. CPU only: it measures host memory.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cpu/read_probe.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {
namespace {

Outcome run_read_probe(const Backend& be, size_t n) {
  if (be.kind != BackendKind::Cpu) return Outcome::skip("CPU only: it reads host memory");
  Rng rng(n * 31 + 7);
  std::vector<float> v(n + 1);
  double ref = 0.0, mag = 0.0;
  for (size_t i = 0; i < n; ++i) {
    v[i] = static_cast<float>(static_cast<double>(rng.next() % 1001) / 1000.0);  // [0, 1]: a skipped block of 64 moves the sum by ~32
    ref += v[i];
    mag += std::fabs(v[i]);
  }
  v[n] = 1e30f;  // one past the end: a read past n shows
  const double got = cpu::read_probe(v.data(), n, be.isa);
  // f32 partial sums: each adds at most ~2^-24 relative error per add along chains of at most 2^18 values
  const double err = std::fabs(got - ref), tol = 1e-5 * mag + 1e-6;
  char d[96];
  std::snprintf(d, sizeof d, "err=%.3g tol=%.3g", err, tol);
  return Outcome::check(err <= tol, d);
}

}  // namespace

void add_read_probe_cases(std::vector<Case>& cases) {
  const size_t chunk = (size_t{1} << 20) / 4;
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{63}, size_t{64}, size_t{100}, size_t{4099}, chunk - 1, chunk, 3 * chunk + 77})
    cases.push_back({"read_probe", "n=" + std::to_string(n), [=](const Backend& be) { return run_read_probe(be, n); }});
}

}  // namespace moe::native
