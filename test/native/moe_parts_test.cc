// Module-based batching for moe-native: moe_experts in parts mode + moe_combine against the fused moe_experts, on
// every backend (cpu::moe_experts / cpu::moe_combine per tier; moe_cuda_moe_experts_parts, moe_cuda_moe_combine and
// moe_cuda_moe_experts_ex on CUDA). The bitwise contract: the experts streamed through the table in chunks (parts
// mode per chunk with only that chunk's experts present, then one combine) give exactly the fused bf16 output, for
// partitions of 1 expert per chunk, 3 per chunk (random order) and all in one. Shapes: Mixtral-like (h 256, i 384,
// e 8, k 2), Qwen3-like (e 32, k 8), gpt-oss-like (biases, swiglu-oai past the clamp); t = 1, 7, 64; about 10% of
// the ids -1 and a token with none; one case spans two chunks of the CPU op's scratch. After each chunk, rows of the
// experts done so far are bitwise the all-in-one rows and every other row still holds its sentinel (untouched); the
// combine is checked against a float64 combine of the same parts (|y - ref| <= 1e-2 |ref| + 1e-5 sum |terms|).
// On CUDA, t = 1 runs the GEMV decode kernels in both modes (moe_experts_gemv.cuh), under the same contract.
// Bad inputs: both / neither of out and parts and ids < -1 are InvalidArgument on the CPU; on CUDA the launchers
// refuse a null parts / out, and the combine kernel flags ids < -1 in the error words (mapped pinned memory) that
// the op reads when it completes.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/moe_combine.h"
#include "cpu/moe_experts.h"
#include "cuda_util.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {

namespace {

constexpr uint32_t kSentinel = 0x7fc0dead;  // a NaN no kernel writes: "row untouched"

struct PartsShape {
  int64_t t, h, inter, e, k;
  bool oai;  // swiglu-oai (alpha 1.702, limit 7) with f32 biases on every expert
};

struct Problem {
  int64_t t, h, I, e, k;
  bool oai;
  std::vector<uint16_t> x;                    // [t, h] bf16
  std::vector<int32_t> ids;                   // [t, k] i32
  std::vector<float> w;                       // [t, k] f32
  std::vector<std::vector<uint16_t>> g, u, d;  // per expert [I, h], [I, h], [h, I] bf16
  std::vector<std::vector<float>> bg, bu, bd;  // per expert [I], [I], [h] f32 (oai)
};

Problem make_problem(const PartsShape& s) {
  Problem p{s.t, s.h, s.inter, s.e, s.k, s.oai, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  Rng rng(static_cast<uint64_t>(s.t * 100003 + s.h * 101 + s.inter * 13 + s.e * 7 + s.k + (s.oai ? 5 : 0)));
  const int64_t t = s.t, h = s.h, I = s.inter, e = s.e, k = s.k;
  p.x = rng.bf16s(static_cast<size_t>(t * h), s.oai ? 120.0 / std::sqrt(static_cast<double>(h)) : 1.0);
  p.ids.resize(static_cast<size_t>(t * k));
  p.w.resize(static_cast<size_t>(t * k));
  std::vector<int32_t> perm(static_cast<size_t>(e));
  std::iota(perm.begin(), perm.end(), 0);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = j + static_cast<int64_t>(rng.next() % static_cast<uint64_t>(e - j));
      std::swap(perm[j], perm[q]);
      p.ids[i * k + j] = 0.5 * (rng.uniform() + 1.0) < 0.1 ? -1 : perm[j];
      p.w[i * k + j] = static_cast<float>(0.6 + 0.5 * rng.uniform());
    }
  if (t > 1)
    for (int64_t j = 0; j < k; ++j) p.ids[j] = -1;  // token 0: no expert
  for (int64_t q = 0; q < e; ++q) {
    p.g.push_back(rng.bf16s(static_cast<size_t>(I * h), 0.1));
    p.u.push_back(rng.bf16s(static_cast<size_t>(I * h), 0.1));
    p.d.push_back(rng.bf16s(static_cast<size_t>(h * I), 0.1));
    if (s.oai) {
      p.bg.push_back(rng.f32s(static_cast<size_t>(I), 3.0));
      p.bu.push_back(rng.f32s(static_cast<size_t>(I), 3.0));
      p.bd.push_back(rng.f32s(static_cast<size_t>(h), 0.5));
    }
  }
  return p;
}

// The three calls on one backend; parts / out are host vectors (CUDA copies them in and out around each call).
struct Runner {
  std::function<std::vector<uint16_t>()> fused;                                    // every expert present
  std::function<void(const std::vector<int32_t>&, std::vector<float>&)> parts_run;  // only `chunk` present
  std::function<std::vector<uint16_t>(const std::vector<float>&)> combine;
};

// Table gate | up | down | gate bias | up bias | down bias ([e] each) with only `present` experts set, from the
// per-expert pointers `ptr(part, expert)`.
std::vector<const void*> table_of(const Problem& p, const std::vector<bool>& present,
                                  const std::function<const void*(int, int64_t)>& ptr) {
  std::vector<const void*> tab(static_cast<size_t>(6 * p.e), nullptr);
  for (int64_t q = 0; q < p.e; ++q) {
    if (!present[q]) continue;
    for (int part = 0; part < (p.oai ? 6 : 3); ++part) tab[part * p.e + q] = ptr(part, q);
  }
  return tab;
}

std::vector<bool> only(const Problem& p, const std::vector<int32_t>& chunk) {
  std::vector<bool> v(static_cast<size_t>(p.e), false);
  for (int32_t q : chunk) v[q] = true;
  return v;
}

Runner cpu_runner(const Backend& be, const Problem& p) {
  auto host_ptr = [&p](int part, int64_t q) -> const void* {
    switch (part) {
      case 0: return p.g[q].data();
      case 1: return p.u[q].data();
      case 2: return p.d[q].data();
      case 3: return p.bg[q].data();
      case 4: return p.bu[q].data();
      default: return p.bd[q].data();
    }
  };
  auto args = [&p](const std::vector<const void*>& tab) {
    cpu::MoeExpertsArgs a{p.x.data(), p.ids.data(), p.w.data(), tab.data(), tab.data() + p.e, tab.data() + 2 * p.e,
                          nullptr, p.t, p.h, p.I, p.e, p.k};
    if (p.oai) {
      a.gate_bias = tab.data() + 3 * p.e;
      a.up_bias = tab.data() + 4 * p.e;
      a.down_bias = tab.data() + 5 * p.e;
      a.activation = cpu::MoeActivation::SwigluOai;
    }
    return a;
  };
  Runner r;
  const Isa isa = be.isa;
  r.fused = [&p, host_ptr, args, isa] {
    const std::vector<const void*> tab = table_of(p, std::vector<bool>(static_cast<size_t>(p.e), true), host_ptr);
    std::vector<uint16_t> out(static_cast<size_t>(p.t * p.h), 0x7fc0);
    cpu::MoeExpertsArgs a = args(tab);
    a.out = out.data();
    cpu::moe_experts(a, isa);
    return out;
  };
  r.parts_run = [&p, host_ptr, args, isa](const std::vector<int32_t>& chunk, std::vector<float>& parts) {
    const std::vector<const void*> tab = table_of(p, only(p, chunk), host_ptr);
    cpu::MoeExpertsArgs a = args(tab);
    a.parts = parts.data();
    cpu::moe_experts(a, isa);
  };
  r.combine = [&p, isa](const std::vector<float>& parts) {
    std::vector<uint16_t> out(static_cast<size_t>(p.t * p.h), 0x7fc0);
    cpu::moe_combine({parts.data(), p.ids.data(), p.w.data(), out.data(), p.t, p.h, p.k}, isa);
    return out;
  };
  return r;
}

#if MOE_WITH_CUDA
template <typename T>
std::shared_ptr<DeviceBuffer> upload(const Backend& be, const std::vector<T>& host) {
  auto b = std::make_shared<DeviceBuffer>(be.device, host.size() * sizeof(T));
  if (!host.empty())
    cuda_check(moe_cuda_memcpy_async(be.device, b->get(), host.data(), host.size() * sizeof(T), be.stream), "H2D");
  cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
  return b;
}
template <typename T>
void download(const Backend& be, std::vector<T>& host, const DeviceBuffer& d) {
  cuda_check(moe_cuda_memcpy_async(be.device, host.data(), d.get(), host.size() * sizeof(T), be.stream), "D2H");
  cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
}

Runner cuda_runner(const Backend& be, const Problem& p) {
  // weights [expert][part], inputs; kept alive by the closures
  auto bufs = std::make_shared<std::vector<std::shared_ptr<DeviceBuffer>>>();
  for (int64_t q = 0; q < p.e; ++q) {
    bufs->push_back(upload(be, p.g[q]));
    bufs->push_back(upload(be, p.u[q]));
    bufs->push_back(upload(be, p.d[q]));
    if (p.oai) {
      bufs->push_back(upload(be, p.bg[q]));
      bufs->push_back(upload(be, p.bu[q]));
      bufs->push_back(upload(be, p.bd[q]));
    }
  }
  const int per = p.oai ? 6 : 3;
  auto dev_ptr = [bufs, per](int part, int64_t q) -> const void* { return (*bufs)[q * per + part]->get(); };
  auto dx = upload(be, p.x), di = upload(be, p.ids), dw = upload(be, p.w);
  auto dparts = std::make_shared<DeviceBuffer>(be.device, static_cast<size_t>(p.t * p.k * p.h) * 4);
  auto dout = std::make_shared<DeviceBuffer>(be.device, static_cast<size_t>(p.t * p.h) * 2);
  Runner r;
  r.fused = [&p, &be, dev_ptr, dx, di, dw, dout, bufs] {
    const std::vector<const void*> tab = table_of(p, std::vector<bool>(static_cast<size_t>(p.e), true), dev_ptr);
    std::vector<uint16_t> out(static_cast<size_t>(p.t * p.h), 0x7fc0);
    cuda_check(moe_cuda_memcpy_async(be.device, dout->get(), out.data(), out.size() * 2, be.stream), "H2D");
    cuda_check(moe_cuda_moe_experts_ex(be.device, dx->get(), static_cast<const int32_t*>(di->get()),
                                       static_cast<const float*>(dw->get()), tab.data(), tab.data() + p.e,
                                       tab.data() + 2 * p.e, p.oai ? tab.data() + 3 * p.e : nullptr,
                                       p.oai ? tab.data() + 4 * p.e : nullptr, p.oai ? tab.data() + 5 * p.e : nullptr,
                                       dout->get(), p.t, p.h, p.I, p.e, p.k, p.oai ? 1 : 0, 1.702f, 7.0f, nullptr,
                                       be.stream),
               "moe_cuda_moe_experts_ex");
    download(be, out, *dout);
    return out;
  };
  r.parts_run = [&p, &be, dev_ptr, dx, di, dparts](const std::vector<int32_t>& chunk, std::vector<float>& parts) {
    const std::vector<const void*> tab = table_of(p, only(p, chunk), dev_ptr);
    cuda_check(moe_cuda_memcpy_async(be.device, dparts->get(), parts.data(), parts.size() * 4, be.stream), "H2D");
    cuda_check(moe_cuda_moe_experts_parts(be.device, dx->get(), static_cast<const int32_t*>(di->get()), tab.data(),
                                          tab.data() + p.e, tab.data() + 2 * p.e, p.oai ? tab.data() + 3 * p.e : nullptr,
                                          p.oai ? tab.data() + 4 * p.e : nullptr,
                                          p.oai ? tab.data() + 5 * p.e : nullptr, static_cast<float*>(dparts->get()),
                                          p.t, p.h, p.I, p.e, p.k, p.oai ? 1 : 0, 1.702f, 7.0f, nullptr, be.stream),
               "moe_cuda_moe_experts_parts");
    download(be, parts, *dparts);
  };
  r.combine = [&p, &be, di, dw, dparts, dout](const std::vector<float>& parts) {
    std::vector<uint16_t> out(static_cast<size_t>(p.t * p.h), 0x7fc0);
    cuda_check(moe_cuda_memcpy_async(be.device, dparts->get(), parts.data(), parts.size() * 4, be.stream), "H2D");
    cuda_check(moe_cuda_memcpy_async(be.device, dout->get(), out.data(), out.size() * 2, be.stream), "H2D");
    cuda_check(moe_cuda_moe_combine(be.device, static_cast<const float*>(dparts->get()),
                                    static_cast<const int32_t*>(di->get()), static_cast<const float*>(dw->get()),
                                    nullptr, 0, dout->get(), p.t, p.h, p.k, nullptr, be.stream),
               "moe_cuda_moe_combine");
    download(be, out, *dout);
    return out;
  };
  return r;
}
#endif

std::vector<std::vector<int32_t>> partition(int64_t e, int64_t size, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> order(static_cast<size_t>(e));
  std::iota(order.begin(), order.end(), 0);
  for (int64_t i = e - 1; i > 0; --i) std::swap(order[i], order[rng.next() % static_cast<uint64_t>(i + 1)]);
  std::vector<std::vector<int32_t>> out;
  for (int64_t i = 0; i < e; i += size) out.emplace_back(order.begin() + i, order.begin() + std::min(e, i + size));
  return out;
}

uint32_t bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

Outcome run_parts(const Backend& be, const PartsShape& s) {
  const Problem p = make_problem(s);
  Runner r;
  if (be.kind == BackendKind::Cpu) {
    r = cpu_runner(be, p);
  } else {
#if MOE_WITH_CUDA
    r = cuda_runner(be, p);
#else
    return Outcome::skip("no CUDA in this build");
#endif
  }
  const int64_t t = p.t, h = p.h, k = p.k, e = p.e;
  float sentinel;
  std::memcpy(&sentinel, &kSentinel, 4);
  const std::vector<uint16_t> want = r.fused();
  auto diff = [&](const std::vector<uint16_t>& got) {
    int64_t n = 0;
    for (size_t i = 0; i < want.size(); ++i) n += got[i] != want[i];
    return n;
  };
  std::vector<std::string> problems;
  // all experts in one chunk: the reference rows
  std::vector<int32_t> all(static_cast<size_t>(e));
  std::iota(all.begin(), all.end(), 0);
  std::vector<float> whole(static_cast<size_t>(t * k * h), sentinel);
  r.parts_run(all, whole);
  for (int64_t sl = 0; sl < t * k; ++sl) {
    int64_t untouched = 0;
    for (int64_t c = 0; c < h; ++c) untouched += bits(whole[sl * h + c]) == kSentinel;
    if (p.ids[sl] < 0 ? untouched != h : untouched != 0) {
      problems.push_back("slot " + std::to_string(sl) + " (id " + std::to_string(p.ids[sl]) + "): " +
                         std::to_string(untouched) + " of " + std::to_string(h) + " untouched");
      break;
    }
  }
  if (const int64_t n = diff(r.combine(whole)))
    problems.push_back("one chunk: " + std::to_string(n) + " differ");
  for (int64_t size : {int64_t{1}, int64_t{3}}) {
    const auto chunks = partition(e, size, static_cast<uint64_t>(t * 7 + size));
    std::vector<float> parts(static_cast<size_t>(t * k * h), sentinel);
    std::set<int32_t> done;
    bool rows_ok = true;
    for (const auto& chunk : chunks) {
      r.parts_run(chunk, parts);
      done.insert(chunk.begin(), chunk.end());
      for (int64_t sl = 0; sl < t * k && rows_ok; ++sl) {
        const bool written = p.ids[sl] >= 0 && done.count(p.ids[sl]) > 0;
        for (int64_t c = 0; c < h; ++c) {
          const uint32_t b = bits(parts[sl * h + c]);
          if (written ? b != bits(whole[sl * h + c]) : b != kSentinel) {
            problems.push_back("chunks of " + std::to_string(size) + ": slot " + std::to_string(sl) + " (id " +
                               std::to_string(p.ids[sl]) + (written ? ") differs from the all-in-one row" : ") touched"));
            rows_ok = false;
            break;
          }
        }
      }
    }
    if (const int64_t n = diff(r.combine(parts)))
      problems.push_back("chunks of " + std::to_string(size) + ": " + std::to_string(n) + " differ from fused");
  }
  // the combine against a float64 combine of the same parts
  const std::vector<uint16_t> got = r.combine(whole);
  double worst = 0.0;
  for (int64_t i = 0; i < t; ++i)
    for (int64_t c = 0; c < h; ++c) {
      double ref = 0.0, mag = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        if (p.ids[i * k + j] < 0) continue;
        const double term = static_cast<double>(p.w[i * k + j]) * whole[(i * k + j) * h + c];
        ref += term;
        mag += std::fabs(term);
      }
      const double y = bf16_to_f32(got[i * h + c]);
      if (mag == 0.0) {
        if (got[i * h + c] != 0) problems.push_back("token " + std::to_string(i) + " has no expert but is not 0");
        continue;
      }
      // |y - ref| <= 1e-2 |ref| + 1e-5 sum |terms| (the f32 sum's own error is about k 2^-24 sum |terms|)
      worst = std::fmax(worst, std::fabs(y - ref) / (std::fabs(ref) + 1e-3 * mag));
    }
  if (!(worst <= 1e-2)) problems.push_back("combine vs float64: relative error " + fmt(worst));
  std::string d = "fused == parts + combine bitwise for 1 chunk, " + std::to_string(e) + " chunks of 1, " +
                  std::to_string((e + 2) / 3) + " chunks of 3; combine rel err " + fmt(worst);
  for (const auto& q : problems) d += "; FAILED: " + q;
  return Outcome::check(problems.empty(), d);
}

// Bad inputs: both / neither of out and parts, ids < -1 (CPU: InvalidArgument; CUDA: null parts / out refused by
// the launchers, ids < -1 flagged in the error words).
Outcome run_parts_invalid(const Backend& be) {
  std::vector<std::string> problems;
  uint16_t x[4] = {}, o[4] = {}, wz[8] = {};  // x [1, 4], out [1, 4], every weight [2, 4] / [4, 2] zeros
  int32_t ids[2] = {0, 1};
  float w[2] = {1, 1}, parts[8] = {};
  const void* tw[2] = {wz, wz};
  if (be.kind == BackendKind::Cpu) {
    auto expect_invalid = [&](const char* what, const std::function<void()>& f) {
      try {
        f();
        problems.push_back(std::string(what) + " did not throw");
      } catch (const moe::Error& e) {
        if (e.code() != ErrorCode::InvalidArgument) problems.push_back(std::string(what) + " threw " + error_code_string(e.code()));
      }
    };
    // t = 1, h = 4, inter = 2, e = 2, k = 2
    auto args = [&] { return cpu::MoeExpertsArgs{x, ids, w, tw, tw, tw, o, 1, 4, 2, 2, 2}; };
    expect_invalid("both out and parts", [&] {
      cpu::MoeExpertsArgs a = args();
      a.parts = parts;
      cpu::moe_experts(a, be.isa);
    });
    expect_invalid("neither out nor parts", [&] {
      cpu::MoeExpertsArgs a = args();
      a.out = nullptr;
      cpu::moe_experts(a, be.isa);
    });
    int32_t bad[2] = {0, -2};
    expect_invalid("combine id -2", [&] { cpu::moe_combine({parts, bad, w, o, 1, 4, 2}, be.isa); });
    expect_invalid("combine k = 0", [&] { cpu::moe_combine({parts, ids, w, o, 1, 4, 0}, be.isa); });
    cpu::MoeExpertsArgs a = args();  // the valid calls run
    a.out = nullptr;
    a.parts = parts;
    cpu::moe_experts(a, be.isa);
    int32_t far[2] = {7, -1};  // no e in the combine: any id >= 0 is read
    cpu::moe_combine({parts, far, w, o, 1, 4, 2}, be.isa);
  } else {
#if MOE_WITH_CUDA
    auto dx = upload(be, std::vector<uint16_t>(8, 0)), dout = upload(be, std::vector<uint16_t>(4, 0));
    auto dparts = upload(be, std::vector<float>(8, 0.0f));
    auto dw = upload(be, std::vector<float>{1, 1});
    auto dbad = upload(be, std::vector<int32_t>{0, -3}), dok = upload(be, std::vector<int32_t>{0, 1});
    const void* dtw[2] = {dx->get(), dx->get()};
    if (moe_cuda_moe_experts_parts(be.device, dx->get(), static_cast<const int32_t*>(dok->get()), dtw, dtw, dtw,
                                   nullptr, nullptr, nullptr, nullptr, 1, 4, 2, 2, 2, 0, 1.702f, 7.0f, nullptr,
                                   be.stream) == 0)
      problems.push_back("parts mode with null parts was accepted");
    if (moe_cuda_moe_experts_ex(be.device, dx->get(), static_cast<const int32_t*>(dok->get()),
                                static_cast<const float*>(dw->get()), dtw, dtw, dtw, nullptr, nullptr, nullptr, nullptr,
                                1, 4, 2, 2, 2, 0, 1.702f, 7.0f, nullptr, be.stream) == 0)
      problems.push_back("fused with null out was accepted");
    if (moe_cuda_moe_combine(be.device, static_cast<const float*>(dparts->get()), static_cast<const int32_t*>(dok->get()),
                             static_cast<const float*>(dw->get()), nullptr, 0, dout->get(), 1, 4, 0, nullptr,
                             be.stream) == 0)
      problems.push_back("combine with k = 0 was accepted");
    PinnedBuffer err(16);
    auto* words = static_cast<int32_t*>(err.get());
    for (int i = 0; i < 4; ++i) words[i] = 0;
    cuda_check(moe_cuda_moe_combine(be.device, static_cast<const float*>(dparts->get()),
                                    static_cast<const int32_t*>(dbad->get()), static_cast<const float*>(dw->get()),
                                    nullptr, 0, dout->get(), 1, 4, 2, words, be.stream),
               "moe_cuda_moe_combine");
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
    if (words[0] != 1 || words[1] != 1 || words[2] != -3)
      problems.push_back("id -3 at index 1 flagged as [" + std::to_string(words[0]) + ", " + std::to_string(words[1]) +
                         ", " + std::to_string(words[2]) + "]");
#else
    return Outcome::skip("no CUDA in this build");
#endif
  }
  std::string d = "err=" + std::to_string(problems.size());
  for (const auto& q : problems) d += "; " + q;
  return Outcome::check(problems.empty(), d);
}

}  // namespace

void add_moe_parts_cases(std::vector<Case>& cases) {
  for (int64_t t : {1, 7, 64}) {
    const PartsShape shapes[] = {
        {t, 256, 384, 8, 2, false},   // Mixtral-like
        {t, 256, 128, 32, 8, false},  // Qwen3-like
        {t, 256, 192, 16, 4, true},   // gpt-oss-like: biases, swiglu-oai
    };
    for (const PartsShape& s : shapes) {
      const std::string name = "t=" + std::to_string(s.t) + " h=" + std::to_string(s.h) + " i=" + std::to_string(s.inter) +
                               " e=" + std::to_string(s.e) + " k=" + std::to_string(s.k) + (s.oai ? " swiglu-oai bias" : " silu");
      cases.push_back({"moe_parts", name, [s](const Backend& be) { return run_parts(be, s); }});
    }
  }
  // t = 300 runs as two chunks of the CPU op's scratch (h = 8192, k = 8: 256 tokens per chunk): the parts copy of
  // the second chunk lands at its tokens' rows
  const PartsShape two_chunks{300, 8192, 16, 8, 8, false};
  cases.push_back({"moe_parts", "t=300 h=8192 i=16 e=8 k=8 silu (two scratch chunks)",
                   [two_chunks](const Backend& be) { return run_parts(be, two_chunks); }});
  cases.push_back({"moe_parts", "invalid out/parts and ids < -1", run_parts_invalid});
}

}  // namespace moe::native
