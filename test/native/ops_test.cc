// The op test table: copy, convert, add and gemm cases, each run on every backend (harness.h). References:
// bit-exact against dtype.h's scalar conversions for copy/convert/add, float64 for gemm. Odd sizes, unaligned
// offsets (to reach the scalar head/tail and unaligned paths of vector kernels), strided rows with NaN in the
// padding (a kernel that reads past k poisons its output), sentinels around every output (no stray writes).
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/add.h"
#include "cpu/convert.h"
#include "cpu/copy.h"
#include "cpu/gemm.h"
#include "cuda_util.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {

namespace {

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%x", v);
  return buf;
}

std::string ran_suffix(const Backend& be, Isa ran) {
  return be.kind == BackendKind::Cpu && ran != be.isa ? std::string(" ran=") + isa_name(ran) : std::string();
}

#if MOE_WITH_CUDA
// Host bytes -> a new device buffer (synchronous on the backend's stream).
struct Dev {
  const Backend& be;
  explicit Dev(const Backend& b) : be(b) {}
  void upload(DeviceBuffer& d, const void* host, size_t bytes) const {
    cuda_check(moe_cuda_memcpy_async(be.device, d.get(), host, bytes, be.stream), "moe_cuda_memcpy_async H2D");
    sync();
  }
  void download(void* host, const DeviceBuffer& d, size_t bytes) const {
    cuda_check(moe_cuda_memcpy_async(be.device, host, d.get(), bytes, be.stream), "moe_cuda_memcpy_async D2H");
    sync();
  }
  void sync() const { cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "moe_cuda_stream_synchronize"); }
};
#endif

// ---- copy -------------------------------------------------------------------------------------------------------

size_t count_diff(const uint8_t* a, const uint8_t* b, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += a[i] != b[i];
  return bad;
}

size_t count_not(const uint8_t* a, size_t n, uint8_t v) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += a[i] != v;
  return bad;
}

Outcome run_copy(const Backend& be, size_t bytes) {
  const size_t pad = 64, so = 3;
  Rng rng(0xC0C0 + bytes);
  std::vector<uint8_t> src(bytes + pad);
  for (auto& x : src) x = static_cast<uint8_t>(rng.next() >> 56);

  if (be.kind == BackendKind::Cpu) {
    const size_t dof = 5;
    std::vector<uint8_t> dst(bytes + pad, 0xA5);
    if (!cpu::copy(dst.data() + dof, src.data() + so, bytes)) return Outcome::fail("copy returned false");
    size_t bad = count_diff(dst.data() + dof, src.data() + so, bytes);
    size_t guard = count_not(dst.data(), dof, 0xA5) + count_not(dst.data() + dof + bytes, pad - dof, 0xA5);
    return Outcome::check(bad == 0 && guard == 0, "err=" + std::to_string(bad) + " mismatched bytes, " +
                                                       std::to_string(guard) + " guard bytes overwritten");
  }
#if MOE_WITH_CUDA
  Dev dev(be);
  DeviceBuffer d1(be.device, bytes + pad), d2(be.device, bytes + pad);
  PinnedBuffer pin(bytes + pad);
  std::memset(pin.get(), 0xA5, bytes + pad);
  // Chain 1: pageable src+3 -> device d1+5 -> device d2+1 -> pinned +7.
  cuda_check(moe_cuda_memcpy_async(be.device, d1.bytes_ptr() + 5, src.data() + so, bytes, be.stream), "H2D");
  cuda_check(moe_cuda_memcpy_async(be.device, d2.bytes_ptr() + 1, d1.bytes_ptr() + 5, bytes, be.stream), "D2D");
  cuda_check(moe_cuda_memcpy_async(be.device, pin.bytes_ptr() + 7, d2.bytes_ptr() + 1, bytes, be.stream), "D2H");
  dev.sync();
  const uint8_t* p = reinterpret_cast<const uint8_t*>(pin.bytes_ptr());
  size_t bad1 = count_diff(p + 7, src.data() + so, bytes);
  size_t guard = count_not(p, 7, 0xA5) + count_not(p + 7 + bytes, pad - 7, 0xA5);
  // Chain 2: pinned +7 -> device d1+2 -> pageable +1.
  std::vector<uint8_t> back(bytes + pad, 0x5A);
  cuda_check(moe_cuda_memcpy_async(be.device, d1.bytes_ptr() + 2, pin.bytes_ptr() + 7, bytes, be.stream), "H2D");
  cuda_check(moe_cuda_memcpy_async(be.device, back.data() + 1, d1.bytes_ptr() + 2, bytes, be.stream), "D2H");
  dev.sync();
  size_t bad2 = count_diff(back.data() + 1, src.data() + so, bytes);
  guard += count_not(back.data(), 1, 0x5A) + count_not(back.data() + 1 + bytes, pad - 1, 0x5A);
  return Outcome::check(bad1 == 0 && bad2 == 0 && guard == 0,
                        "err=" + std::to_string(bad1 + bad2) + " mismatched bytes (pageable->dev->dev->pinned " +
                            std::to_string(bad1) + ", pinned->dev->pageable " + std::to_string(bad2) + "), " +
                            std::to_string(guard) + " guard bytes overwritten");
#else
  return Outcome::skip("built without CUDA");
#endif
}

// ---- convert ----------------------------------------------------------------------------------------------------

// Inputs: every 16-bit pattern, or for f32 specials + random bit patterns + values on bf16/f16 rounding ties.
std::vector<uint32_t> convert_inputs(DType src) {
  std::vector<uint32_t> v;
  if (src != DType::F32) {
    for (uint32_t i = 0; i < 65536; i++) v.push_back(i);
    return v;
  }
  const uint32_t specials[] = {
      0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,  // +-0, +-Inf
      0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u,  // quiet / signalling NaN
      0x7fbfffffu, 0x7fffffffu, 0x7f80ffffu, 0x7f810000u,  // NaN payloads near the bf16 cut
      0x00000001u, 0x80000001u, 0x007fffffu, 0x00800000u,  // f32 subnormals, smallest normal
      0x7f7fffffu, 0xff7fffffu,                            // FLT_MAX (rounds to Inf in bf16 and f16)
      0x477fe000u, 0x477fefffu, 0x477ff000u, 0x47800000u,  // 65504, just below / at the f16 Inf threshold
      0x38800000u, 0x387fffffu, 0x33000000u, 0x33000001u,  // f16 smallest normal / subnormal boundaries
      0x32ffffffu, 0x33800000u, 0x33c00000u, 0x34000000u,
      0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u,  // bf16 ties (even / odd) and neighbours
      0x3f801000u, 0x3f803000u, 0x3f800fffu, 0x3f801001u,  // f16 ties and neighbours
      0x3f800000u, 0xbf800000u, 0x40490fdbu, 0xc0490fdbu,
  };
  for (uint32_t s : specials) v.push_back(s);
  Rng rng(0xF32);
  for (int i = 0; i < (1 << 20); i++) {
    uint32_t u = rng.u32();
    switch (i % 4) {
      case 0: break;                                          // any pattern
      case 1: u = (u & ~0xffffu) | 0x8000u; break;            // exact bf16 tie
      case 2: u = (u & ~0x1fffu) | 0x1000u; break;            // exact f16 tie (normal range)
      case 3: u = (u & 0x807fffffu) | ((0x66u + (u >> 24) % 0x1cu) << 23); break;  // f16 subnormal..normal range
    }
    v.push_back(u);
  }
  return v;
}

Outcome run_convert(const Backend& be, DType st, DType dt) {
  const std::vector<uint32_t> in = convert_inputs(st);
  const size_t n = in.size(), ss = dtype_size(st), ds = dtype_size(dt);
  // (src offset, dst offset) in elements: aligned (vector path), (1, 3) (no common alignment: scalar path on the
  // GPU), (2, 2) (a scalar head, then vectors).
  const size_t offsets[3][2] = {{0, 0}, {1, 3}, {2, 2}};
  const size_t guard = 8;
  const uint32_t sentinel = ds == 4 ? 0x5a5a5a5au : 0x5a5au;
  size_t mismatches = 0, guard_bad = 0;
  std::string first;
  Isa ran = be.isa;
  for (const auto& off : offsets) {
    std::vector<uint8_t> src((n + guard) * ss), dst((n + 2 * guard) * ds);
    for (size_t i = 0; i < n; i++) store_raw(st, src.data(), off[0] + i, in[i]);
    for (size_t i = 0; i < n + 2 * guard; i++) store_raw(dt, dst.data(), i, sentinel);
    if (be.kind == BackendKind::Cpu) {
      cpu::ConvertArgs args{src.data() + off[0] * ss, st, dst.data() + off[1] * ds, dt, n};
      ran = cpu::convert(args, be.isa);
    } else {
#if MOE_WITH_CUDA
      Dev dev(be);
      DeviceBuffer ds_buf(be.device, src.size()), dd_buf(be.device, dst.size());
      dev.upload(ds_buf, src.data(), src.size());
      dev.upload(dd_buf, dst.data(), dst.size());
      cuda_check(moe_cuda_convert(be.device, ds_buf.bytes_ptr() + off[0] * ss, static_cast<int>(st),
                                  dd_buf.bytes_ptr() + off[1] * ds, static_cast<int>(dt), n, be.stream),
                 "moe_cuda_convert");
      dev.download(dst.data(), dd_buf, dst.size());
#endif
    }
    for (size_t i = 0; i < n + 2 * guard; i++) {
      uint32_t got = load_raw(dt, dst.data(), i);
      if (i < off[1] || i >= off[1] + n) {
        guard_bad += got != sentinel;
        continue;
      }
      uint32_t want = convert_ref(st, dt, in[i - off[1]]);
      if (got != want) {
        if (mismatches == 0) {
          first = " first: offsets (" + std::to_string(off[0]) + "," + std::to_string(off[1]) + ") src=" +
                  hex(in[i - off[1]]) + " got=" + hex(got) + " want=" + hex(want);
        }
        mismatches++;
      }
    }
  }
  return Outcome::check(mismatches == 0 && guard_bad == 0,
                        "err=" + std::to_string(mismatches) + " of " + std::to_string(3 * n) + " elements differ, " +
                            std::to_string(guard_bad) + " guard elements overwritten" + first + ran_suffix(be, ran));
}

// ---- add --------------------------------------------------------------------------------------------------------

struct FloatLayout {
  int exp_shift;
  uint32_t exp_max, mant_mask, sign;
};
FloatLayout layout(DType t) {
  switch (t) {
    case DType::F16: return {10, 0x1fu, 0x3ffu, 0x8000u};
    case DType::BF16: return {7, 0xffu, 0x7fu, 0x8000u};
    default: return {23, 0xffu, 0x7fffffu, 0x80000000u};
  }
}

// Random non-NaN bit patterns: a uniform over all patterns (subnormals, Inf, huge and tiny included); b either
// uniform or with an exponent within 2 of a's (so sums round, cancel and overflow); never Inf + -Inf.
void add_inputs(DType t, size_t n, uint64_t seed, std::vector<uint32_t>& a, std::vector<uint32_t>& b) {
  const FloatLayout L = layout(t);
  const uint32_t width_mask = dtype_size(t) == 4 ? 0xffffffffu : 0xffffu;
  Rng rng(seed);
  auto denan = [&](uint32_t u) {
    uint32_t e = (u >> L.exp_shift) & L.exp_max;
    if (e == L.exp_max) u &= ~L.mant_mask;  // NaN -> Inf (keeps a few Infs in the set)
    return u;
  };
  a.resize(n);
  b.resize(n);
  for (size_t i = 0; i < n; i++) {
    uint32_t x = denan(rng.u32() & width_mask);
    uint32_t y = rng.u32() & width_mask;
    if (i % 2 == 1) {
      int e = static_cast<int>((x >> L.exp_shift) & L.exp_max) + static_cast<int>(rng.next() % 5) - 2;
      if (e < 0) e = 0;
      if (e > static_cast<int>(L.exp_max) - 1) e = static_cast<int>(L.exp_max) - 1;
      y = (y & (L.sign | L.mant_mask)) | (static_cast<uint32_t>(e) << L.exp_shift);
    }
    y = denan(y);
    const uint32_t inf = L.exp_max << L.exp_shift;
    if ((x & ~L.sign) == inf && (y & ~L.sign) == inf && (x & L.sign) != (y & L.sign)) y = 0;
    a[i] = x;
    b[i] = y;
  }
}

Outcome run_add(const Backend& be, DType t, size_t n) {
  std::vector<uint32_t> av, bv;
  add_inputs(t, n, 0xADD0 + n + static_cast<uint64_t>(t), av, bv);
  std::vector<uint32_t> want(n);
  for (size_t i = 0; i < n; i++) {
    // float64 sum rounded to f32 equals the f32 sum (double has >= 2p+2 bits), then dtype.h's rounding.
    double s = static_cast<double>(raw_to_f32(t, av[i])) + static_cast<double>(raw_to_f32(t, bv[i]));
    want[i] = f32_to_raw(t, static_cast<float>(s));
  }
  const size_t es = dtype_size(t), guard = 8;
  const uint32_t sentinel = es == 4 ? 0x5a5a5a5au : 0x5a5au;
  // Variants: element offsets of (a, b, out); in-place writes out over a (offsets of a).
  struct Variant {
    size_t oa, ob, oo;
    bool in_place;
    const char* name;
  };
  const Variant variants[] = {{0, 0, 0, false, "aligned"},
                              {1, 1, 1, false, "offset(1,1,1)"},
                              {1, 2, 3, false, "offset(1,2,3)"},
                              {2, 0, 2, true, "in-place"}};
  size_t mismatches = 0, guard_bad = 0;
  std::string first;
  Isa ran = be.isa;
  for (const Variant& v : variants) {
    const size_t len = n + 2 * guard;
    std::vector<uint8_t> a(len * es), b(len * es), o(len * es);
    for (size_t i = 0; i < len; i++) {
      store_raw(t, a.data(), i, sentinel);
      store_raw(t, b.data(), i, sentinel);
      store_raw(t, o.data(), i, sentinel);
    }
    for (size_t i = 0; i < n; i++) {
      store_raw(t, a.data(), v.oa + i, av[i]);
      store_raw(t, b.data(), v.ob + i, bv[i]);
    }
    std::vector<uint8_t>& result = v.in_place ? a : o;
    const size_t oo = v.in_place ? v.oa : v.oo;
    if (be.kind == BackendKind::Cpu) {
      cpu::AddArgs args{a.data() + v.oa * es, b.data() + v.ob * es, result.data() + oo * es, t, n};
      ran = cpu::add(args, be.isa);
    } else {
#if MOE_WITH_CUDA
      Dev dev(be);
      DeviceBuffer da(be.device, a.size()), db(be.device, b.size()), dout(be.device, o.size());
      dev.upload(da, a.data(), a.size());
      dev.upload(db, b.data(), b.size());
      dev.upload(dout, o.data(), o.size());
      char* out_ptr = v.in_place ? da.bytes_ptr() + oo * es : dout.bytes_ptr() + oo * es;
      cuda_check(moe_cuda_add(be.device, da.bytes_ptr() + v.oa * es, db.bytes_ptr() + v.ob * es, out_ptr,
                              static_cast<int>(t), n, be.stream),
                 "moe_cuda_add");
      dev.download(result.data(), v.in_place ? da : dout, result.size());
#endif
    }
    for (size_t i = 0; i < len; i++) {
      uint32_t got = load_raw(t, result.data(), i);
      if (i < oo || i >= oo + n) {
        guard_bad += got != sentinel;
        continue;
      }
      uint32_t w = want[i - oo];
      if (got != w) {
        if (mismatches == 0) {
          first = std::string(" first: ") + v.name + " a=" + hex(av[i - oo]) + " b=" + hex(bv[i - oo]) +
                  " got=" + hex(got) + " want=" + hex(w);
        }
        mismatches++;
      }
    }
  }
  return Outcome::check(mismatches == 0 && guard_bad == 0,
                        "err=" + std::to_string(mismatches) + " of " + std::to_string(4 * n) + " elements differ, " +
                            std::to_string(guard_bad) + " guard elements overwritten" + first + ran_suffix(be, ran));
}

// ---- gemm -------------------------------------------------------------------------------------------------------

struct GemmShape {
  int64_t m, n, k, lda, ldb, ldc;
};

Outcome run_gemm(const Backend& be, const GemmShape& s, DType ab, DType od) {
  const size_t es = dtype_size(ab), os = dtype_size(od);
  const size_t a_len = static_cast<size_t>(s.m * s.lda), b_len = static_cast<size_t>(s.n * s.ldb);
  const size_t o_len = static_cast<size_t>(s.m * s.ldc);
  // Row padding of a and b is NaN: a kernel that multiplies anything past k poisons its output.
  const uint32_t nan_bits = es == 4 ? 0x7fc00000u : 0x7fc0u;
  const uint32_t sentinel = os == 4 ? 0x5a5a5a5au : 0x5a5au;
  std::vector<uint8_t> a((a_len + 1) * es), b((b_len + 1) * es), o((o_len + 1) * os);
  Rng rng(0x6E33 + static_cast<uint64_t>(s.m * 1000003 + s.n * 1009 + s.k));
  auto fill = [&](std::vector<uint8_t>& buf, int64_t rows, int64_t ld) {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < ld; c++) {
        // Inputs in [-0.1, 0.1]; bf16 inputs are rounded to bf16, and the reference reads the stored values.
        uint32_t raw = c < s.k ? f32_to_raw(ab, static_cast<float>(rng.uniform() * 0.1)) : nan_bits;
        store_raw(ab, buf.data(), static_cast<size_t>(r * ld + c), raw);
      }
  };
  fill(a, s.m, s.lda);
  fill(b, s.n, s.ldb);
  for (size_t i = 0; i < o_len + 1; i++) store_raw(od, o.data(), i, sentinel);

  Isa ran = be.isa;
  if (be.kind == BackendKind::Cpu) {
    cpu::GemmArgs args{a.data(), b.data(), o.data(), ab, od, s.m, s.n, s.k, s.lda, s.ldb, s.ldc};
    ran = cpu::gemm(args, be.isa);
  } else {
#if MOE_WITH_CUDA
    Dev dev(be);
    DeviceBuffer da(be.device, a.size()), db(be.device, b.size()), dout(be.device, o.size());
    dev.upload(da, a.data(), a.size());
    dev.upload(db, b.data(), b.size());
    dev.upload(dout, o.data(), o.size());
    cuda_check(moe_cuda_gemm(be.device, da.get(), db.get(), dout.get(), static_cast<int>(ab), static_cast<int>(od),
                             s.m, s.n, s.k, s.lda, s.ldb, s.ldc, be.stream),
               "moe_cuda_gemm");
    dev.download(o.data(), dout, o.size());
#endif
  }

  // Padding columns [n, ldc) and the element past the end must keep the sentinel.
  size_t stray = load_raw(od, o.data(), o_len) != sentinel;
  std::vector<double> out(static_cast<size_t>(s.m * s.n));
  for (int64_t r = 0; r < s.m; r++)
    for (int64_t c = 0; c < s.ldc; c++) {
      uint32_t raw = load_raw(od, o.data(), static_cast<size_t>(r * s.ldc + c));
      if (c < s.n) {
        out[static_cast<size_t>(r * s.n + c)] = raw_to_f32(od, raw);
      } else {
        stray += raw != sentinel;
      }
    }
  const std::vector<double> ref = gemm_ref(ab, a.data(), b.data(), s.m, s.n, s.k, s.lda, s.ldb);
  const ErrorStats st = compare(out, ref);
  std::string extra = (stray ? ", " + std::to_string(stray) + " padding elements overwritten" : std::string()) +
                      (st.non_finite ? ", " + std::to_string(st.non_finite) + " non-finite outputs" : std::string()) +
                      ran_suffix(be, ran);
  if (s.k == 0) {
    return Outcome::check(stray == 0 && st.max_abs == 0.0, "err=" + fmt(st.max_abs) + " (max |out|, want 0)" + extra);
  }
  if (ab == DType::F32 && od == DType::F32) {
    const double tol = 1e-5 * st.max_ref + 1e-6;
    return Outcome::check(stray == 0 && st.max_abs <= tol,
                          "err=" + fmt(st.max_abs) + " max abs (tol " + fmt(tol) + ")" + extra);
  }
  const double tol = od == DType::BF16 ? 5e-4 : 1e-5;
  return Outcome::check(stray == 0 && st.nmse <= tol, "err=" + fmt(st.nmse) + " nmse (tol " + fmt(tol) + ")" + extra);
}

std::string gemm_shape_name(const GemmShape& s, DType ab, DType od) {
  std::string r = "m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k);
  if (s.lda != s.k || s.ldb != s.k || s.ldc != s.n) {
    r += " lda=" + std::to_string(s.lda) + " ldb=" + std::to_string(s.ldb) + " ldc=" + std::to_string(s.ldc);
  }
  return r + " ab=" + dtype_name(ab) + " out=" + dtype_name(od);
}

// ---- argument errors and the CUDA runtime wrappers -----------------------------------------------------------

// Invalid dtypes are rejected (CPU: moe::Error InvalidArgument; CUDA: cudaErrorInvalidValue = 1) and an empty
// gemm is a no-op.
Outcome run_invalid_args(const Backend& be) {
  std::vector<std::string> problems;
  if (be.kind == BackendKind::Cpu) {
    auto expect_invalid = [&](const char* what, const std::function<void()>& fn) {
      try {
        fn();
        problems.push_back(std::string(what) + " did not throw");
      } catch (const moe::Error& e) {
        if (e.code() != ErrorCode::InvalidArgument) {
          problems.push_back(std::string(what) + " threw " + error_code_string(e.code()));
        }
      }
    };
    float x[4] = {0, 0, 0, 0}, y[4] = {0, 0, 0, 0};
    expect_invalid("convert i32->f32", [&] { cpu::convert({x, DType::I32, y, DType::F32, 4}, be.isa); });
    expect_invalid("add u8", [&] { cpu::add({x, x, y, DType::U8, 4}, be.isa); });
    expect_invalid("gemm ab=i32", [&] { cpu::gemm({x, x, y, DType::I32, DType::F32, 1, 1, 1, 1, 1, 1}, be.isa); });
    expect_invalid("gemm out=f16", [&] { cpu::gemm({x, x, y, DType::F32, DType::F16, 1, 1, 1, 1, 1, 1}, be.isa); });
  } else {
#if MOE_WITH_CUDA
    DeviceBuffer d(be.device, 64);
    auto expect = [&](const char* what, int got, int want) {
      if (got != want) problems.push_back(std::string(what) + " returned " + moe_cuda_error_name(got));
    };
    expect("convert i32->f32", moe_cuda_convert(be.device, d.get(), 3, d.get(), 0, 4, be.stream), 1);
    expect("add u8", moe_cuda_add(be.device, d.get(), d.get(), d.get(), 4, 4, be.stream), 1);
    expect("gemm ab=i32", moe_cuda_gemm(be.device, d.get(), d.get(), d.get(), 3, 0, 1, 1, 1, 1, 1, 1, be.stream), 1);
    expect("gemm out=f16", moe_cuda_gemm(be.device, d.get(), d.get(), d.get(), 0, 1, 1, 1, 1, 1, 1, 1, be.stream), 1);
    expect("gemm ldc<n", moe_cuda_gemm(be.device, d.get(), d.get(), d.get(), 0, 0, 1, 4, 1, 1, 1, 2, be.stream), 1);
    expect("gemm m=0", moe_cuda_gemm(be.device, nullptr, nullptr, nullptr, 2, 2, 0, 5, 5, 5, 5, 5, be.stream), 0);
    expect("convert n=0", moe_cuda_convert(be.device, nullptr, 0, nullptr, 2, 0, be.stream), 0);
    cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "moe_cuda_stream_synchronize");
#endif
  }
  std::string detail = "err=" + std::to_string(problems.size());
  for (const auto& p : problems) detail += "; " + p;
  return Outcome::check(problems.empty(), detail);
}

#if MOE_WITH_CUDA
void host_flag(void* p) { static_cast<std::atomic<int>*>(p)->store(1); }
#endif

// Streams (both priorities), events (timing and not), query, host callbacks, mem_info, host_register, info.
Outcome run_cuda_runtime(const Backend& be) {
#if MOE_WITH_CUDA
  std::vector<std::string> problems;
  const int dev = be.device;
  MoeCudaDeviceInfo info;
  cuda_check(moe_cuda_device_info(dev, &info), "moe_cuda_device_info");
  if (info.sm_count <= 0 || info.major < 8 || info.total_memory == 0 || info.l2_bytes <= 0) {
    problems.push_back("implausible device info (sm " + std::to_string(info.sm_count) + ", cc " +
                       std::to_string(info.major) + ")");
  }
  size_t free_b = 0, total_b = 0;
  cuda_check(moe_cuda_mem_info(dev, &free_b, &total_b), "moe_cuda_mem_info");
  if (free_b == 0 || total_b < free_b) problems.push_back("implausible mem_info");

  Stream hi(dev, 1), lo(dev, 0);
  void *e_timing = nullptr, *e_plain = nullptr, *e_start = nullptr;
  cuda_check(moe_cuda_event_create(dev, 1, &e_start), "moe_cuda_event_create");
  cuda_check(moe_cuda_event_create(dev, 1, &e_timing), "moe_cuda_event_create");
  cuda_check(moe_cuda_event_create(dev, 0, &e_plain), "moe_cuda_event_create");
  const size_t bytes = size_t{64} << 20;
  DeviceBuffer d(dev, bytes);
  std::vector<uint8_t> host(bytes, 7);
  cuda_check(moe_cuda_host_register(host.data(), bytes), "moe_cuda_host_register");
  std::atomic<int> flag{0};
  cuda_check(moe_cuda_event_record(dev, e_start, hi.get()), "moe_cuda_event_record");
  cuda_check(moe_cuda_memcpy_async(dev, d.get(), host.data(), bytes, hi.get()), "moe_cuda_memcpy_async");
  cuda_check(moe_cuda_event_record(dev, e_timing, hi.get()), "moe_cuda_event_record");
  cuda_check(moe_cuda_event_record(dev, e_plain, hi.get()), "moe_cuda_event_record");
  // lo waits for hi's copy, then writes the buffer back and runs a host callback.
  cuda_check(moe_cuda_stream_wait_event(dev, lo.get(), e_plain), "moe_cuda_stream_wait_event");
  cuda_check(moe_cuda_memset_async(dev, d.get(), 9, 16, lo.get()), "moe_cuda_memset_async");
  cuda_check(moe_cuda_memcpy_async(dev, host.data(), d.get(), bytes, lo.get()), "moe_cuda_memcpy_async");
  cuda_check(moe_cuda_launch_host_func(dev, lo.get(), host_flag, &flag), "moe_cuda_launch_host_func");
  int done = -1;
  cuda_check(moe_cuda_event_query(dev, e_plain, &done), "moe_cuda_event_query");  // 0 or 1, never an error
  if (done != 0 && done != 1) problems.push_back("event_query left done=" + std::to_string(done));
  cuda_check(moe_cuda_event_synchronize(dev, e_timing), "moe_cuda_event_synchronize");
  cuda_check(moe_cuda_event_query(dev, e_timing, &done), "moe_cuda_event_query");
  if (done != 1) problems.push_back("event_query after synchronize gave done=" + std::to_string(done));
  float ms = -1;
  cuda_check(moe_cuda_event_elapsed_ms(&ms, e_start, e_timing), "moe_cuda_event_elapsed_ms");
  if (!(ms > 0)) problems.push_back("elapsed " + fmt(ms) + " ms");
  lo.sync();
  if (flag.load() != 1) problems.push_back("host callback did not run before stream sync returned");
  if (host[0] != 9 || host[15] != 9 || host[16] != 7 || host[bytes - 1] != 7) problems.push_back("data mismatch");
  cuda_check(moe_cuda_host_unregister(host.data()), "moe_cuda_host_unregister");
  moe_cuda_event_destroy(dev, e_start);
  moe_cuda_event_destroy(dev, e_timing);
  moe_cuda_event_destroy(dev, e_plain);
  std::string detail = "err=" + std::to_string(problems.size()) + " (64 MiB H2D on high-priority stream: " +
                       fmt(ms) + " ms, " + fmt(bytes / (ms * 1e-3) / 1e9) + " GB/s registered)";
  for (const auto& p : problems) detail += "; " + p;
  return Outcome::check(problems.empty(), detail);
#else
  return Outcome::skip("built without CUDA");
#endif
}

}  // namespace

void add_api_cases(std::vector<Case>& cases) {
  cases.push_back({"api", "invalid dtypes and empty shapes", run_invalid_args});
  Case rt{"runtime", "streams events host-func register mem-info", run_cuda_runtime};
  rt.cuda_only = true;
  cases.push_back(rt);
}

void add_copy_cases(std::vector<Case>& cases) {
  for (size_t bytes : {size_t{4096}, size_t{1} << 20, size_t{9400000}}) {
    cases.push_back({"copy", "bytes=" + std::to_string(bytes) + " unaligned",
                     [bytes](const Backend& be) { return run_copy(be, bytes); }});
  }
}

void add_convert_cases(std::vector<Case>& cases) {
  const DType types[] = {DType::F32, DType::F16, DType::BF16};
  for (DType st : types)
    for (DType dt : types) {
      std::string shape = std::string(dtype_name(st)) + "->" + dtype_name(dt) +
                          (st == DType::F32 ? " n=1048618" : " n=65536 all patterns");
      cases.push_back({"convert", shape, [st, dt](const Backend& be) { return run_convert(be, st, dt); }});
    }
}

void add_add_cases(std::vector<Case>& cases) {
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (size_t n : {size_t{1}, size_t{7}, size_t{1000003}}) {
      cases.push_back({"add", std::string(dtype_name(t)) + " n=" + std::to_string(n),
                       [t, n](const Backend& be) { return run_add(be, t, n); }});
    }
}

void add_gemm_cases(std::vector<Case>& cases) {
  auto dense = [](int64_t m, int64_t n, int64_t k) { return GemmShape{m, n, k, k, k, n}; };
  const std::vector<GemmShape> shapes = {
      dense(1, 1, 1),      dense(1, 128, 128),  dense(7, 19, 111),    dense(33, 64, 511),
      dense(64, 96, 989),  dense(128, 256, 1024), dense(1, 2048, 128), dense(257, 300, 200),
      {7, 19, 111, 115, 120, 23},    // strided, odd strides
      {33, 64, 511, 512, 519, 70},   // a rows 16-byte aligned, b rows not
      {64, 96, 989, 1000, 992, 100},
      {130, 136, 64, 72, 64, 136},   // aligned strides, partial tiles in m and n
      {5, 7, 0, 4, 4, 9},            // k == 0 writes zeros
  };
  const DType combos[][2] = {
      {DType::F32, DType::F32}, {DType::BF16, DType::F32}, {DType::BF16, DType::BF16}, {DType::F32, DType::BF16}};
  for (const auto& c : combos)
    for (const GemmShape& s : shapes) {
      const DType ab = c[0], od = c[1];
      cases.push_back(
          {"gemm", gemm_shape_name(s, ab, od), [s, ab, od](const Backend& be) { return run_gemm(be, s, ab, od); }});
    }
  // Dense bf16 shapes the MoE path of cuda/gemm.cu can take (lda == k, ldb == k, ldc == n, k % 8 == 0, n even),
  // to f32 and to bf16 (through its f32 scratch): m 1, 5, 16, 33 the decode tiles (BM 16; taken by default), 100 the
  // large mma.sync ones (BM 64), 200 and 1000 wgmma on compute capability 9.0 (mma.sync large elsewhere); n 8, 100,
  // 520 a partial N tile of every config; k 8, 520, 1032 partial k tiles. n = 101 (odd) must fall back to the
  // existing kernel (the past-the-end guard catches a stray column). m = 1000, n = 4400: 8 x 18 wgmma tiles, enough
  // to fill a 132-SM chip, so the default takes the MoE path there. MOE_CUDA_GEMM=moe forces the path wherever it
  // applies, =mma the existing kernel. CUDA only: the CPU gemm has its cases above.
  std::vector<GemmShape> sweep;
  for (int64_t m : {1, 5, 16, 33, 100, 200, 1000})
    for (int64_t n : {8, 100, 520, 101})
      for (int64_t k : {8, 520, 1032}) {
        if (n == 101 && k != 520) continue;
        sweep.push_back(dense(m, n, k));
      }
  sweep.push_back(dense(1000, 4400, 72));
  for (DType od : {DType::F32, DType::BF16})
    for (const GemmShape& s : sweep) {
      Case c{"gemm", gemm_shape_name(s, DType::BF16, od) + " moe-path sweep",
             [s, od](const Backend& be) { return run_gemm(be, s, DType::BF16, od); }};
      c.cuda_only = true;
      cases.push_back(c);
    }
}

}  // namespace moe::native
