// rms_norm and row-broadcast add cases for moe-native, on the CPU tiers and on CUDA (moe_cuda_rms_norm,
// moe_cuda_add_bcast): the same shapes as test/norm.test.ts. rms_norm: float64 reference from the stored inputs,
// per-element relative tolerance 2^-24 (8 + 2 sqrt(d)) for f32 outputs and 2^-8 + twice that for bf16; x after
// the fused add compared bit-exactly with the f32 sum; sentinels after x and out (no stray writes). Broadcast add:
// bit-exact against dtype.h's rounding of the f32 sum, at aligned and unaligned element offsets (the GPU's vector
// and scalar paths). Argument errors: moe::Error(InvalidArgument) on the CPU, cudaErrorInvalidValue on CUDA.
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/add.h"
#include "cpu/rms_norm.h"
#include "cuda_util.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {
namespace {

#if MOE_WITH_CUDA
void h2d(const Backend& be, void* dst, const void* src, size_t bytes) {
  cuda_check(moe_cuda_memcpy_async(be.device, dst, src, bytes, be.stream), "H2D");
  cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
}
void d2h(const Backend& be, void* dst, const void* src, size_t bytes) {
  cuda_check(moe_cuda_memcpy_async(be.device, dst, src, bytes, be.stream), "D2H");
  cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
}
#endif

std::string ran_suffix(const Backend& be, Isa ran) {
  return be.kind == BackendKind::Cpu && ran != be.isa ? std::string(" ran=") + isa_name(ran) : std::string();
}

// ---- rms_norm ----------------------------------------------------------------------------------------------------

struct NormShape {
  int64_t rows, d;
  DType x, w, out;
  bool add;      // fused residual add (x f32)
  DType add_t;
  bool alias;    // out is x
  float eps;
};

std::string norm_name(const NormShape& s) {
  std::string r = "rows=" + std::to_string(s.rows) + " d=" + std::to_string(s.d) + " x=" + dtype_name(s.x) +
                  " w=" + dtype_name(s.w) + " out=" + (s.alias ? std::string("x") : std::string(dtype_name(s.out)));
  if (s.add) r += std::string(" add=") + dtype_name(s.add_t);
  return r + " eps=" + fmt(s.eps);
}

Outcome run_norm(const Backend& be, const NormShape& s) {
  const size_t n = static_cast<size_t>(s.rows * s.d), d = static_cast<size_t>(s.d), guard = 8;
  const DType out_t = s.alias ? s.x : s.out;
  const size_t xs = dtype_size(s.x), os = dtype_size(out_t), as = dtype_size(s.add_t), ws = dtype_size(s.w);
  Rng rng(static_cast<uint64_t>(s.rows * 1009 + s.d * 7 + (s.add ? 3 : 0)));
  const uint32_t sent_x = xs == 4 ? 0x5a5a5a5au : 0x5a5au, sent_o = os == 4 ? 0x5a5a5a5au : 0x5a5au;
  std::vector<uint8_t> x((n + guard) * xs), add(s.add ? n * as : 1), w(d * ws), out((n + guard) * os);
  for (size_t i = 0; i < n; i++) {
    const double mag = std::pow(10.0, static_cast<double>((i / d) % 5) - 2.0);  // per-row magnitude 1e-2 .. 1e2
    store_raw(s.x, x.data(), i, f32_to_raw(s.x, static_cast<float>(2 * rng.uniform() * mag)));
    if (s.add) store_raw(s.add_t, add.data(), i, f32_to_raw(s.add_t, static_cast<float>(rng.uniform() * mag)));
    store_raw(out_t, out.data(), i, sent_o);
  }
  for (size_t i = n; i < n + guard; i++) {
    store_raw(s.x, x.data(), i, sent_x);
    store_raw(out_t, out.data(), i, sent_o);
  }
  for (size_t j = 0; j < d; j++) store_raw(s.w, w.data(), j, f32_to_raw(s.w, static_cast<float>(1.5 * rng.uniform())));

  // Reference: x updated as f32, then float64 RMSNorm of the stored values.
  std::vector<double> xv(n), ref(n);
  for (size_t i = 0; i < n; i++) {
    float v = raw_to_f32(s.x, load_raw(s.x, x.data(), i));
    if (s.add) v = static_cast<float>(static_cast<double>(v) + raw_to_f32(s.add_t, load_raw(s.add_t, add.data(), i)));
    xv[i] = v;
  }
  for (size_t r = 0; r < static_cast<size_t>(s.rows); r++) {
    double ss = 0;
    for (size_t j = 0; j < d; j++) ss += xv[r * d + j] * xv[r * d + j];
    const double sc = 1.0 / std::sqrt(ss / static_cast<double>(d) + static_cast<double>(s.eps));
    for (size_t j = 0; j < d; j++) ref[r * d + j] = xv[r * d + j] * sc * raw_to_f32(s.w, load_raw(s.w, w.data(), j));
  }

  std::vector<uint8_t>& res = s.alias ? x : out;
  Isa ran = be.isa;
  if (be.kind == BackendKind::Cpu) {
    cpu::RmsNormArgs a;
    a.x = x.data();
    a.add = s.add ? add.data() : nullptr;
    a.weight = w.data();
    a.out = res.data();
    a.x_dtype = s.x;
    a.add_dtype = s.add_t;
    a.w_dtype = s.w;
    a.out_dtype = out_t;
    a.rows = static_cast<size_t>(s.rows);
    a.d = d;
    a.eps = s.eps;
    ran = cpu::rms_norm(a, be.isa);
  } else {
#if MOE_WITH_CUDA
    DeviceBuffer dx(be.device, x.size()), dadd(be.device, add.size()), dw(be.device, w.size()), dout(be.device, out.size());
    h2d(be, dx.get(), x.data(), x.size());
    h2d(be, dadd.get(), add.data(), add.size());
    h2d(be, dw.get(), w.data(), w.size());
    h2d(be, dout.get(), out.data(), out.size());
    cuda_check(moe_cuda_rms_norm(be.device, dx.get(), static_cast<int>(s.x), s.add ? dadd.get() : nullptr,
                                 static_cast<int>(s.add_t), dw.get(), static_cast<int>(s.w),
                                 s.alias ? dx.get() : dout.get(), static_cast<int>(out_t), s.rows, s.d, s.eps,
                                 be.stream),
               "moe_cuda_rms_norm");
    d2h(be, x.data(), dx.get(), x.size());
    if (!s.alias) d2h(be, out.data(), dout.get(), out.size());
#endif
  }

  const double f32_tol = std::ldexp(8 + 2 * std::sqrt(static_cast<double>(d)), -24);
  const double tol = out_t == DType::F32 ? f32_tol : std::ldexp(1.0, -8) + 2 * f32_tol;
  size_t bad = 0, x_bad = 0, guard_bad = 0;
  double worst = 0;
  std::string first;
  for (size_t i = 0; i < n; i++) {
    const double got = raw_to_f32(out_t, load_raw(out_t, res.data(), i));
    const double err = std::fabs(got - ref[i]), lim = tol * std::fabs(ref[i]) + 1e-37;
    if (ref[i] != 0) worst = std::max(worst, err / (tol * std::fabs(ref[i])));
    if (!(err <= lim) && bad++ == 0)
      first = " first: element " + std::to_string(i) + " got " + fmt(got, "%.9g") + " want " + fmt(ref[i], "%.9g");
    if (!s.alias) {
      // x: f32 sum when add, else untouched
      const uint32_t want = s.add ? f32_bits(static_cast<float>(xv[i])) : f32_to_raw(s.x, static_cast<float>(xv[i]));
      x_bad += load_raw(s.x, x.data(), i) != want;
    }
  }
  for (size_t i = n; i < n + guard; i++) {
    guard_bad += load_raw(s.x, x.data(), i) != sent_x;
    if (!s.alias) guard_bad += load_raw(out_t, out.data(), i) != sent_o;
  }
  return Outcome::check(bad == 0 && x_bad == 0 && guard_bad == 0,
                        "err=" + fmt(worst) + " of tol " + fmt(tol) + ", " + std::to_string(bad) + " of " +
                            std::to_string(n) + " outside, x wrong " + std::to_string(x_bad) + ", guards " +
                            std::to_string(guard_bad) + first + ran_suffix(be, ran));
}

// ---- row-broadcast add -----------------------------------------------------------------------------------------

Outcome run_add_bcast(const Backend& be, DType t, int64_t rows, int64_t bl, size_t offset, bool in_place) {
  const size_t n = static_cast<size_t>(rows * bl), es = dtype_size(t), guard = 8;
  const uint32_t sentinel = es == 4 ? 0x5a5a5a5au : 0x5a5au;
  Rng rng(static_cast<uint64_t>(rows * 31 + bl) + static_cast<uint64_t>(t));
  const size_t len = offset + n + guard;
  std::vector<uint8_t> a(len * es), b(static_cast<size_t>(bl) * es), o(len * es);
  std::vector<float> av(n), bv(static_cast<size_t>(bl));
  for (size_t i = 0; i < len; i++) {
    store_raw(t, a.data(), i, sentinel);
    store_raw(t, o.data(), i, sentinel);
  }
  for (size_t i = 0; i < n; i++) {
    store_raw(t, a.data(), offset + i, f32_to_raw(t, static_cast<float>(4 * rng.uniform())));
    av[i] = raw_to_f32(t, load_raw(t, a.data(), offset + i));
  }
  for (size_t j = 0; j < bv.size(); j++) {
    store_raw(t, b.data(), j, f32_to_raw(t, static_cast<float>(4 * rng.uniform())));
    bv[j] = raw_to_f32(t, load_raw(t, b.data(), j));
  }
  std::vector<uint8_t>& res = in_place ? a : o;
  Isa ran = be.isa;
  if (be.kind == BackendKind::Cpu) {
    cpu::AddArgs args{a.data() + offset * es, b.data(), res.data() + offset * es, t, n, static_cast<size_t>(bl)};
    ran = cpu::add(args, be.isa);
  } else {
#if MOE_WITH_CUDA
    DeviceBuffer da(be.device, a.size()), db(be.device, b.size()), dout(be.device, o.size());
    h2d(be, da.get(), a.data(), a.size());
    h2d(be, db.get(), b.data(), b.size());
    h2d(be, dout.get(), o.data(), o.size());
    char* out_ptr = (in_place ? da.bytes_ptr() : dout.bytes_ptr()) + offset * es;
    cuda_check(moe_cuda_add_bcast(be.device, da.bytes_ptr() + offset * es, db.get(), out_ptr, static_cast<int>(t), n,
                                  static_cast<size_t>(bl), be.stream),
               "moe_cuda_add_bcast");
    d2h(be, res.data(), in_place ? da.get() : dout.get(), res.size());
#endif
  }
  size_t bad = 0, guard_bad = 0;
  for (size_t i = 0; i < len; i++) {
    const uint32_t got = load_raw(t, res.data(), i);
    if (i < offset || i >= offset + n) {
      guard_bad += got != sentinel;
      continue;
    }
    const size_t k = i - offset;
    // float64 sum rounded to f32 is the f32 sum (double has >= 2p + 2 bits), then dtype.h's rounding
    bad += got != f32_to_raw(t, static_cast<float>(static_cast<double>(av[k]) + bv[k % static_cast<size_t>(bl)]));
  }
  return Outcome::check(bad == 0 && guard_bad == 0, "err=" + std::to_string(bad) + " of " + std::to_string(n) +
                                                        " elements differ, " + std::to_string(guard_bad) +
                                                        " guard elements overwritten" + ran_suffix(be, ran));
}

// ---- argument errors ---------------------------------------------------------------------------------------------

Outcome run_norm_invalid(const Backend& be) {
  std::vector<std::string> problems;
  float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8] = {};
  auto args = [&](DType xt, DType wt, DType ot, const void* add, float eps) {
    cpu::RmsNormArgs a;
    a.x = x;
    a.add = add;
    a.weight = x;
    a.out = y;
    a.x_dtype = xt;
    a.w_dtype = wt;
    a.out_dtype = ot;
    a.rows = 2;
    a.d = 4;
    a.eps = eps;
    return a;
  };
  if (be.kind == BackendKind::Cpu) {
    auto expect_invalid = [&](const char* what, const std::function<void()>& fn) {
      try {
        fn();
        problems.push_back(std::string(what) + " did not throw");
      } catch (const moe::Error& e) {
        if (e.code() != ErrorCode::InvalidArgument) problems.push_back(std::string(what) + " threw " + error_code_string(e.code()));
      }
    };
    expect_invalid("rms_norm x=f16", [&] { cpu::rms_norm(args(DType::F16, DType::F32, DType::F32, nullptr, 1e-6f), be.isa); });
    expect_invalid("rms_norm w=i32", [&] { cpu::rms_norm(args(DType::F32, DType::I32, DType::F32, nullptr, 1e-6f), be.isa); });
    expect_invalid("rms_norm out=f16", [&] { cpu::rms_norm(args(DType::F32, DType::F32, DType::F16, nullptr, 1e-6f), be.isa); });
    expect_invalid("rms_norm add with x=bf16", [&] { cpu::rms_norm(args(DType::BF16, DType::F32, DType::F32, y, 1e-6f), be.isa); });
    expect_invalid("rms_norm eps<0", [&] { cpu::rms_norm(args(DType::F32, DType::F32, DType::F32, nullptr, -1.0f), be.isa); });
    expect_invalid("rms_norm eps=nan", [&] { cpu::rms_norm(args(DType::F32, DType::F32, DType::F32, nullptr, NAN), be.isa); });
    expect_invalid("add n % b_len", [&] { cpu::add({x, x, y, DType::F32, 7, 3}, be.isa); });
  } else {
#if MOE_WITH_CUDA
    DeviceBuffer d(be.device, 256);
    auto expect = [&](const char* what, int got, int want) {
      if (got != want) problems.push_back(std::string(what) + " returned " + moe_cuda_error_name(got));
    };
    void* p = d.get();
    expect("rms_norm x=f16", moe_cuda_rms_norm(be.device, p, 1, nullptr, 0, p, 0, p, 0, 2, 4, 1e-6f, be.stream), 1);
    expect("rms_norm add with x=bf16", moe_cuda_rms_norm(be.device, p, 2, p, 0, p, 0, p, 0, 2, 4, 1e-6f, be.stream), 1);
    expect("rms_norm eps<0", moe_cuda_rms_norm(be.device, p, 0, nullptr, 0, p, 0, p, 0, 2, 4, -1.0f, be.stream), 1);
    expect("rms_norm eps=inf", moe_cuda_rms_norm(be.device, p, 0, nullptr, 0, p, 0, p, 0, 2, 4, INFINITY, be.stream), 1);
    expect("rms_norm rows=0", moe_cuda_rms_norm(be.device, nullptr, 0, nullptr, 0, nullptr, 0, nullptr, 0, 0, 4, 1e-6f,
                                                be.stream), 0);
    expect("add_bcast n % b_len", moe_cuda_add_bcast(be.device, p, p, p, 0, 7, 3, be.stream), 1);
    expect("add_bcast b_len=0", moe_cuda_add_bcast(be.device, p, p, p, 0, 8, 0, be.stream), 1);
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "moe_cuda_stream_synchronize");
#endif
  }
  std::string detail = "err=" + std::to_string(problems.size());
  for (const auto& p : problems) detail += "; " + p;
  return Outcome::check(problems.empty(), detail);
}

}  // namespace

void add_rms_norm_cases(std::vector<Case>& cases) {
  const DType F = DType::F32, B = DType::BF16;
  const NormShape shapes[] = {
      {1, 4096, F, B, B, true, B, false, 1e-6f},    // decode, fused residual add
      {1, 4096, F, F, F, false, F, false, 1e-5f},
      {512, 4096, F, B, B, true, F, false, 1e-6f},  // prefill
      {512, 4096, B, B, B, false, F, false, 1e-6f},
      {224, 128, B, B, B, false, F, true, 1e-6f},   // Qwen3 per-head q norm, in place
      {52, 128, B, B, F, false, F, false, 1e-6f},
      {5, 2048, B, B, B, false, F, false, 1e-5f},   // OLMoE q norm over the projection
      {3, 2048, F, F, F, true, F, true, 1e-5f},
      {3, 7, F, F, F, false, F, false, 1e-6f},
      {3, 7, B, F, B, false, F, false, 1e-6f},
      {9, 33, F, B, B, true, B, false, 1e-6f},
      {9, 33, B, B, F, false, F, false, 1e-6f},
      {5, 100, F, F, B, true, F, false, 1e-6f},
      {6, 100, B, F, B, false, F, true, 1e-6f},
      {3, 1500, F, B, F, true, B, false, 1e-6f},    // block layout with a partial last warp
      {2, 9000, F, F, F, false, F, false, 1e-6f},   // 1024-thread blocks
      {0, 64, F, B, B, true, F, false, 1e-6f},      // no rows
      {10, 96, F, F, F, true, B, false, 1.0f},      // eps dominating small rows
      {10, 96, B, B, B, false, F, false, 1e4f},
      {10, 96, F, F, F, false, F, false, 0.0f},
  };
  for (const NormShape& s : shapes)
    cases.push_back({"rms_norm", norm_name(s), [s](const Backend& be) { return run_norm(be, s); }});
  struct B2 {
    DType t;
    int64_t rows, bl;
    size_t offset;
    bool in_place;
  };
  const B2 bc[] = {{F, 5, 7, 0, false},      {DType::F16, 3, 33, 1, true}, {B, 1000, 24, 0, false},
                   {B, 37, 4096, 0, true},   {F, 9, 64, 3, false},         {DType::F16, 16, 8, 0, false},
                   {F, 2, 3000, 0, true},    {B, 0, 8, 0, false}};
  for (const B2& c : bc) {
    std::string name = std::string("bcast ") + dtype_name(c.t) + " rows=" + std::to_string(c.rows) + " n=" +
                       std::to_string(c.bl) + (c.offset ? " offset=" + std::to_string(c.offset) : "") +
                       (c.in_place ? " out=a" : "");
    cases.push_back({"add", name, [c](const Backend& be) { return run_add_bcast(be, c.t, c.rows, c.bl, c.offset, c.in_place); }});
  }
  cases.push_back({"api", "rms_norm and add_bcast invalid arguments", run_norm_invalid});
}

}  // namespace moe::native
