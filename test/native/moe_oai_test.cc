// moe_experts with the gpt-oss options (per-expert f32 biases, the clamped swiglu-oai activation) for moe-native:
// every case on every backend (cpu::moe_experts per tier; moe_cuda_moe_experts_ex on CUDA) against a float64
// reference of HF GptOssExperts (cpp/cpu/moe_experts.h has the formula; no intermediate rounding). swiglu-oai inputs
// are scaled so that gate and up sums pass the limit on both sides, and each case checks that its reference hit
// every clamp. Tolerance: rel L2 <= 1e-2 and max abs <= 2e-2 * max(1, max |ref|) (outputs reach tens); two runs
// bitwise identical; tokens with no present expert exactly 0. A table whose bias arrays hold only nulls must give
// bitwise the output of no bias tables (the op of issue 3).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/moe_experts.h"
#include "cuda_util.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {

namespace {

#if MOE_WITH_CUDA
template <typename T>
struct DevArr {
  DeviceBuffer buf;
  DevArr(const Backend& be, const std::vector<T>& host) : buf(be.device, host.size() * sizeof(T)) {
    if (!host.empty())
      cuda_check(moe_cuda_memcpy_async(be.device, buf.get(), host.data(), host.size() * sizeof(T), be.stream), "H2D");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
  }
  T* get() const { return static_cast<T*>(buf.get()); }
};
#endif

enum class Bias { None, All, Even, EmptyTables };  // EmptyTables: bias arrays given, every entry null

struct OaiShape {
  int64_t t, h, inter, e, k;
  bool oai;    // swiglu-oai (alpha 1.702, limit 7) or silu
  Bias bias;
  int mode;    // 0 random ids, 1 expert 2 in slot 0 of every token, 2 absent experts 1 and 5 + -1 ids (token 0
               // none), 3 (t = 1, k = 4) absent experts 1 and 5, ids {1, 2, -1, 3}: absent, biased, -1, unbiased
};

std::vector<int32_t> ids_for(const OaiShape& s, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(s.t * s.k));
  std::vector<int32_t> perm(static_cast<size_t>(s.e));
  for (int64_t i = 0; i < s.e; ++i) perm[i] = static_cast<int32_t>(i);
  for (int64_t i = 0; i < s.t; ++i)
    for (int64_t j = 0; j < s.k; ++j) {
      const int64_t p = j + static_cast<int64_t>(rng.next() % static_cast<uint64_t>(s.e - j));
      std::swap(perm[j], perm[p]);
      ids[i * s.k + j] = perm[j];
    }
  if (s.mode == 1)
    for (int64_t i = 0; i < s.t; ++i) {
      for (int64_t j = 1; j < s.k; ++j)
        if (ids[i * s.k + j] == 2) ids[i * s.k + j] = ids[i * s.k];
      ids[i * s.k] = 2;
    }
  if (s.mode == 2) {
    for (size_t i = 0; i < ids.size(); i += 5) ids[i] = -1;
    for (int64_t j = 0; j < s.k; ++j) ids[j] = j == 0 ? 1 : -1;  // token 0: the absent expert 1, then -1
  }
  if (s.mode == 3) ids = {1, 2, -1, 3};
  return ids;
}

struct Run {
  std::vector<uint16_t> out;
  Isa ran;
};

Outcome run_oai(const Backend& be, const OaiShape& s) {
  const int64_t t = s.t, h = s.h, I = s.inter, e = s.e, k = s.k;
  const float alpha = 1.702f, limit = 7.0f;
  Rng rng(static_cast<uint64_t>(t * 1000003 + h * 1009 + I * 17 + e * 3 + k + s.mode * 7 + (s.oai ? 11 : 0)));
  // swiglu-oai: |x| up to 120 / sqrt(h) spreads the sums by about 4, biases in [-3, 3] shift them past the limit.
  const double x_amp = s.oai ? 120.0 / std::sqrt(static_cast<double>(h)) : 0.1, b_amp = s.oai ? 3.0 : 0.1;
  std::vector<uint16_t> x = rng.bf16s(static_cast<size_t>(t * h), x_amp);
  std::vector<int32_t> ids = ids_for(s, static_cast<uint64_t>(t + e * 7 + s.mode));
  std::vector<float> w(static_cast<size_t>(t * k));
  for (auto& v : w) v = static_cast<float>(0.6 + 0.5 * rng.uniform());
  std::vector<std::vector<uint16_t>> wg(e), wu(e), wd(e);
  std::vector<std::vector<float>> bg(e), bu(e), bd(e);
  std::vector<bool> present(static_cast<size_t>(e), true), has_bias(static_cast<size_t>(e), false);
  if (s.mode == 2 || s.mode == 3) present[1] = present[5] = false;
  for (int64_t q = 0; q < e; ++q) {
    wg[q] = rng.bf16s(static_cast<size_t>(I * h), 0.1);
    wu[q] = rng.bf16s(static_cast<size_t>(I * h), 0.1);
    wd[q] = rng.bf16s(static_cast<size_t>(h * I), 0.1);
    has_bias[q] = present[q] && (s.bias == Bias::All || (s.bias == Bias::Even && q % 2 == 0));
    bg[q] = rng.f32s(static_cast<size_t>(I), b_amp);
    bu[q] = rng.f32s(static_cast<size_t>(I), b_amp);
    bd[q] = rng.f32s(static_cast<size_t>(h), 0.5);
  }
  const bool tables = s.bias != Bias::None;
  auto run_once = [&](bool with_tables) {
    Run r{std::vector<uint16_t>(static_cast<size_t>(t * h), 0x7fc0), be.isa};
    std::vector<const void*> tab(static_cast<size_t>(6 * e), nullptr);  // gate | up | down | bg | bu | bd
    auto fill = [&](const std::function<const void*(int, int64_t)>& ptr) {
      for (int64_t q = 0; q < e; ++q) {
        for (int p = 0; p < 3; ++p) tab[p * e + q] = present[q] ? ptr(p, q) : nullptr;
        for (int p = 3; p < 6; ++p) tab[p * e + q] = has_bias[q] ? ptr(p, q) : nullptr;
      }
    };
    const void* const* gb = with_tables ? tab.data() + 3 * e : nullptr;
    const void* const* ub = with_tables ? tab.data() + 4 * e : nullptr;
    const void* const* db = with_tables ? tab.data() + 5 * e : nullptr;
    if (be.kind == BackendKind::Cpu) {
      fill([&](int p, int64_t q) -> const void* {
        switch (p) {
          case 0: return wg[q].data();
          case 1: return wu[q].data();
          case 2: return wd[q].data();
          case 3: return bg[q].data();
          case 4: return bu[q].data();
          default: return bd[q].data();
        }
      });
      cpu::MoeExpertsArgs a{x.data(), ids.data(), w.data(), tab.data(), tab.data() + e, tab.data() + 2 * e,
                            r.out.data(), t, h, I, e, k};
      a.gate_bias = gb;
      a.up_bias = ub;
      a.down_bias = db;
      a.activation = s.oai ? cpu::MoeActivation::SwigluOai : cpu::MoeActivation::Silu;
      a.alpha = alpha;
      a.limit = limit;
      r.ran = cpu::moe_experts(a, be.isa);
    } else {
#if MOE_WITH_CUDA
      std::vector<std::unique_ptr<DevArr<uint16_t>>> dw;
      std::vector<std::unique_ptr<DevArr<float>>> dbias;
      for (int64_t q = 0; q < e; ++q) {
        dw.emplace_back(new DevArr<uint16_t>(be, wg[q]));
        dw.emplace_back(new DevArr<uint16_t>(be, wu[q]));
        dw.emplace_back(new DevArr<uint16_t>(be, wd[q]));
        dbias.emplace_back(new DevArr<float>(be, bg[q]));
        dbias.emplace_back(new DevArr<float>(be, bu[q]));
        dbias.emplace_back(new DevArr<float>(be, bd[q]));
      }
      fill([&](int p, int64_t q) -> const void* {
        return p < 3 ? static_cast<const void*>(dw[3 * q + p]->get()) : static_cast<const void*>(dbias[3 * q + p - 3]->get());
      });
      DevArr<uint16_t> dx(be, x), dout(be, r.out);
      DevArr<int32_t> di(be, ids);
      DevArr<float> dwt(be, w);
      cuda_check(moe_cuda_moe_experts_ex(be.device, dx.get(), di.get(), dwt.get(), tab.data(), tab.data() + e,
                                         tab.data() + 2 * e, gb, ub, db, dout.get(), t, h, I, e, k, s.oai ? 1 : 0,
                                         alpha, limit, nullptr, be.stream),
                 "moe_cuda_moe_experts_ex");
      cuda_check(moe_cuda_memcpy_async(be.device, r.out.data(), dout.get(), r.out.size() * 2, be.stream), "D2H");
      cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
#endif
    }
    return r;
  };
  const Run r1 = run_once(tables), r2 = run_once(tables);
  // float64 reference
  std::vector<double> ref(static_cast<size_t>(t * h), 0.0), got(static_cast<size_t>(t * h)), act(static_cast<size_t>(I));
  int64_t gate_hi = 0, up_hi = 0, up_lo = 0;
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t q = ids[i * k + j];
      if (q < 0 || !present[q]) continue;
      for (int64_t n = 0; n < I; ++n) {
        double g = has_bias[q] ? bg[q][n] : 0.0, u = has_bias[q] ? bu[q][n] : 0.0;
        for (int64_t c = 0; c < h; ++c) {
          const double xv = bf16_to_f32(x[i * h + c]);
          g += xv * bf16_to_f32(wg[q][n * h + c]);
          u += xv * bf16_to_f32(wu[q][n * h + c]);
        }
        if (s.oai) {
          gate_hi += g > limit;
          up_hi += u > limit;
          up_lo += u < -limit;
          g = std::fmin(g, static_cast<double>(limit));
          u = std::fmax(std::fmin(u, static_cast<double>(limit)), -static_cast<double>(limit));
          act[n] = (u + 1.0) * (g / (1.0 + std::exp(-static_cast<double>(alpha) * g)));
        } else {
          act[n] = g / (1.0 + std::exp(-g)) * u;
        }
      }
      for (int64_t c = 0; c < h; ++c) {
        double acc = has_bias[q] ? bd[q][c] : 0.0;
        for (int64_t n = 0; n < I; ++n) acc += act[n] * bf16_to_f32(wd[q][c * I + n]);
        ref[i * h + c] += w[i * k + j] * acc;
      }
    }
  for (size_t i = 0; i < got.size(); ++i) got[i] = bf16_to_f32(r1.out[i]);
  const ErrorStats st = compare(got, ref);
  const double rel = std::sqrt(st.nmse), abs_tol = 2e-2 * std::fmax(1.0, st.max_ref);
  const bool same = std::memcmp(r1.out.data(), r2.out.data(), r1.out.size() * 2) == 0;
  bool zero_ok = true;
  if (s.mode == 2)
    for (int64_t c = 0; c < h; ++c) zero_ok = zero_ok && r1.out[c] == 0;
  const bool clamps_ok = !s.oai || (gate_hi > 0 && up_hi > 0 && up_lo > 0);
  bool plain_ok = true;  // EmptyTables: bitwise the output without bias tables
  if (s.bias == Bias::EmptyTables) plain_ok = run_once(false).out == r1.out;
  const bool ok = st.non_finite == 0 && st.max_ref > 0 && rel <= 1e-2 && st.max_abs <= abs_tol && same && zero_ok &&
                  clamps_ok && plain_ok;
  std::string d = "rel=" + fmt(rel) + " max_abs=" + fmt(st.max_abs) + " max_ref=" + fmt(st.max_ref) + " tol=1e-2/" + fmt(abs_tol);
  if (s.oai) d += " clamped gate/up+/up- " + std::to_string(gate_hi) + "/" + std::to_string(up_hi) + "/" + std::to_string(up_lo);
  if (!clamps_ok) d += ", the inputs did not hit every clamp";
  if (!same) d += ", two runs differ";
  if (!zero_ok) d += ", token 0 not exactly 0";
  if (!plain_ok) d += ", null-only bias tables differ from none";
  if (st.non_finite) d += ", " + std::to_string(st.non_finite) + " non-finite";
  if (be.kind == BackendKind::Cpu && r1.ran != be.isa) d += std::string(" ran=") + isa_name(r1.ran);
  return Outcome::check(ok, d);
}

// Bad bias tables and activation parameters: InvalidArgument on the CPU; the CUDA launcher refuses them
// (cudaErrorInvalidValue) before queueing anything.
Outcome run_oai_invalid(const Backend& be) {
  std::vector<std::string> problems;
  uint16_t x[8] = {}, o[8] = {};
  int32_t ids[2] = {0, 1};
  float w[2] = {1, 1}, b[4] = {};
  const void* tw[2] = {x, x};
  const void* tb[2] = {b, b};
  const void* tnone[2] = {nullptr, nullptr};
  const void* tpart[2] = {b, nullptr};
  auto args = [&]() {
    cpu::MoeExpertsArgs a{x, ids, w, tw, tw, tw, o, 1, 2, 2, 2, 2};
    a.gate_bias = tb;
    a.up_bias = tb;
    a.down_bias = tb;
    return a;
  };
  struct Bad {
    const char* what;
    std::function<void(cpu::MoeExpertsArgs&)> edit;
  };
  const std::vector<Bad> bad = {
      {"one bias table null", [&](cpu::MoeExpertsArgs& a) { a.up_bias = nullptr; }},
      {"some of an expert's biases", [&](cpu::MoeExpertsArgs& a) { a.down_bias = tpart; }},
      {"biases on an absent expert", [&](cpu::MoeExpertsArgs& a) { a.gate = a.up = a.down = tnone; }},
      {"unknown activation", [&](cpu::MoeExpertsArgs& a) { a.activation = static_cast<cpu::MoeActivation>(7); }},
      {"alpha NaN", [&](cpu::MoeExpertsArgs& a) { a.activation = cpu::MoeActivation::SwigluOai; a.alpha = NAN; }},
      {"limit 0", [&](cpu::MoeExpertsArgs& a) { a.activation = cpu::MoeActivation::SwigluOai; a.limit = 0; }},
      {"limit inf", [&](cpu::MoeExpertsArgs& a) { a.activation = cpu::MoeActivation::SwigluOai; a.limit = INFINITY; }},
  };
  if (be.kind == BackendKind::Cpu) {
    for (const Bad& c : bad) {
      cpu::MoeExpertsArgs a = args();
      c.edit(a);
      try {
        cpu::moe_experts(a, be.isa);
        problems.push_back(std::string(c.what) + " did not throw");
      } catch (const moe::Error& e) {
        if (e.code() != ErrorCode::InvalidArgument) problems.push_back(std::string(c.what) + " threw " + error_code_string(e.code()));
      }
    }
    cpu::MoeExpertsArgs a = args();  // the valid call runs
    cpu::moe_experts(a, be.isa);
  } else {
#if MOE_WITH_CUDA
    // Device copies, so that a call accepted by mistake still reads valid memory.
    DevArr<uint16_t> dx(be, std::vector<uint16_t>(8, 0)), dout(be, std::vector<uint16_t>(8, 0));
    DevArr<int32_t> di(be, std::vector<int32_t>{0, 1});
    DevArr<float> dw(be, std::vector<float>{1, 1}), dbias(be, std::vector<float>(4, 0.0f));
    const void* dtw[2] = {dx.get(), dx.get()};
    const void* dtb[2] = {dbias.get(), dbias.get()};
    for (const Bad& c : bad) {
      // treated as absent / no biases by the launcher (the op layer rejects them with InvalidArgument)
      if (std::strcmp(c.what, "biases on an absent expert") == 0 || std::strcmp(c.what, "some of an expert's biases") == 0) continue;
      cpu::MoeExpertsArgs a = args();
      a.gate = a.up = a.down = dtw;
      a.gate_bias = a.up_bias = a.down_bias = dtb;
      c.edit(a);
      const int err = moe_cuda_moe_experts_ex(be.device, dx.get(), di.get(), dw.get(), a.gate, a.up, a.down, a.gate_bias,
                                              a.up_bias, a.down_bias, dout.get(), 1, 2, 2, 2, 2,
                                              static_cast<int>(a.activation), a.alpha, a.limit, nullptr, be.stream);
      if (err == 0) problems.push_back(std::string(c.what) + " was accepted");
    }
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
#else
    return Outcome::skip("no CUDA in this build");
#endif
  }
  std::string d = "err=" + std::to_string(problems.size());
  for (const auto& p : problems) d += "; " + p;
  return Outcome::check(problems.empty(), d);
}

}  // namespace

void add_moe_oai_cases(std::vector<Case>& cases) {
  const OaiShape shapes[] = {
      // decode (T = 1: the avx512bf16 streaming path) and batched (T = 64: streaming and blocked experts)
      {1, 128, 96, 8, 2, false, Bias::All, 0},   {1, 128, 96, 8, 2, true, Bias::None, 0},
      {1, 128, 96, 8, 2, true, Bias::All, 0},    {1, 64, 64, 8, 4, true, Bias::Even, 3},
      {64, 128, 96, 8, 2, false, Bias::All, 0},  {64, 128, 96, 8, 2, true, Bias::None, 0},
      {64, 128, 96, 8, 2, true, Bias::All, 0},   {64, 64, 64, 8, 2, true, Bias::Even, 2},
      {64, 64, 64, 8, 2, true, Bias::Even, 1},   {64, 64, 64, 8, 2, false, Bias::Even, 0},
      {7, 96, 97, 8, 2, true, Bias::All, 0},     {1, 256, 96, 32, 4, true, Bias::All, 0},
      {33, 64, 64, 8, 2, false, Bias::EmptyTables, 0}, {1, 64, 64, 8, 2, false, Bias::EmptyTables, 0},
      // rows longer than the streaming kernel's row-after-row limit (2048), k tails
      {3, 2085, 40, 8, 2, true, Bias::All, 0},   {3, 48, 2100, 8, 2, true, Bias::All, 0},
  };
  static const char* biases[] = {" no-bias", " bias", " bias-even", " null-bias-tables"};
  static const char* modes[] = {"", " all-on-one", " absent+minus-one", " absent+minus-one"};
  for (const OaiShape& s : shapes) {
    std::string name = "t=" + std::to_string(s.t) + " h=" + std::to_string(s.h) + " i=" + std::to_string(s.inter) +
                       " e=" + std::to_string(s.e) + " k=" + std::to_string(s.k) + (s.oai ? " swiglu-oai" : " silu") +
                       biases[static_cast<int>(s.bias)] + modes[s.mode];
    cases.push_back({"moe_experts_oai", name, [s](const Backend& be) { return run_oai(be, s); }});
  }
  cases.push_back({"moe_experts_oai", "invalid bias tables and activations", run_oai_invalid});
}

}  // namespace moe::native
