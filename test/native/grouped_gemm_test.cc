// groupedGemm cases (issue 3 building block) for moe-native: cpu::grouped_gemm on every CPU tier and
// moe_cuda_grouped_gemm on a GPU (the launcher the Node tests cannot reach without one), against a float64
// reference. Same table as test/grouped-gemm.test.ts: empty groups (b = null), one row per group (decode), K = 511,
// f32 and bf16 out, rows past offsets[G] left untouched; inputs uniform in [-0.1, 0.1]. Tolerances: f32 out
// max abs <= 1e-4; bf16 out rel L2 <= 1e-2 and max abs <= 2e-2 * max |ref|. Two runs bitwise identical.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "cpu/grouped_gemm.h"
#include "cuda_util.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {

namespace {

struct GroupedShape {
  std::vector<int32_t> rows;  // rows per group (0: empty group, b = null)
  int64_t n, k;
  bool bf16_out;
  int64_t extra_rows;  // out rows past offsets[G] that must stay untouched
};

Outcome run_grouped(const Backend& be, const GroupedShape& s) {
  const int64_t g = static_cast<int64_t>(s.rows.size()), n = s.n, k = s.k;
  std::vector<int32_t> off(static_cast<size_t>(g + 1), 0);  // [g + 1]
  for (int64_t x = 0; x < g; ++x) off[x + 1] = off[x] + s.rows[x];
  const int64_t rows = off[g], total = rows + s.extra_rows;
  const int64_t alloc_rows = total > 0 ? total : 1;
  Rng rng(static_cast<uint64_t>(n * 131 + k * 7 + g));
  std::vector<uint16_t> a = rng.bf16s(static_cast<size_t>(alloc_rows * k), 0.1);  // [total, k] bf16
  std::vector<std::vector<uint16_t>> b(static_cast<size_t>(g));         // [n, k] bf16 each, empty when no rows
  for (int64_t x = 0; x < g; ++x)
    if (s.rows[x] > 0) b[x] = rng.bf16s(static_cast<size_t>(n * k), 0.1);
  const size_t out_elem = s.bf16_out ? 2 : 4;
  const size_t out_bytes = static_cast<size_t>(alloc_rows * n) * out_elem;  // [total, n] out dtype
  auto fill_nan = [&](std::vector<uint8_t>& o) {
    for (size_t i = 0; i < o.size() / out_elem; ++i) {
      if (s.bf16_out) {
        const uint16_t q = 0x7fc0;
        std::memcpy(o.data() + i * 2, &q, 2);
      } else {
        const float q = NAN;
        std::memcpy(o.data() + i * 4, &q, 4);
      }
    }
  };
  std::vector<uint8_t> out(out_bytes), out2(out_bytes);
  Isa ran = be.isa;
  auto run_once = [&](std::vector<uint8_t>& o) {
    fill_nan(o);
    std::vector<const void*> bp(static_cast<size_t>(g), nullptr);
    if (be.kind == BackendKind::Cpu) {
      for (int64_t x = 0; x < g; ++x) bp[x] = b[x].empty() ? nullptr : b[x].data();
      ran = cpu::grouped_gemm({a.data(), off.data(), bp.data(), o.data(), s.bf16_out ? DType::BF16 : DType::F32, g, n,
                               k, k, k, n},
                              be.isa);
    } else {
#if MOE_WITH_CUDA
      DeviceBuffer da(be.device, a.size() * 2), dout(be.device, out_bytes);
      std::vector<std::unique_ptr<DeviceBuffer>> db;
      auto h2d = [&](void* dst, const void* src, size_t bytes) {
        cuda_check(moe_cuda_memcpy_async(be.device, dst, src, bytes, be.stream), "H2D");
      };
      h2d(da.get(), a.data(), a.size() * 2);
      h2d(dout.get(), o.data(), out_bytes);  // NaN: rows past offsets[G] must stay NaN
      for (int64_t x = 0; x < g; ++x) {
        if (b[x].empty()) continue;
        db.emplace_back(new DeviceBuffer(be.device, b[x].size() * 2));
        h2d(db.back()->get(), b[x].data(), b[x].size() * 2);
        bp[x] = db.back()->get();
      }
      cuda_check(moe_cuda_grouped_gemm(be.device, da.get(), off.data(), bp.data(), dout.get(), s.bf16_out ? 2 : 0, g, n,
                                       k, k, k, n, be.stream),
                 "moe_cuda_grouped_gemm");
      cuda_check(moe_cuda_memcpy_async(be.device, o.data(), dout.get(), out_bytes, be.stream), "D2H");
      cuda_check(moe_cuda_stream_synchronize(be.device, be.stream), "sync");
#endif
    }
  };
  run_once(out);
  run_once(out2);
  // float64 reference of rows [0, rows)
  std::vector<double> ref(static_cast<size_t>(rows * n)), got(static_cast<size_t>(rows * n));
  for (int64_t x = 0; x < g; ++x)
    for (int64_t r = off[x]; r < off[x + 1]; ++r)
      for (int64_t c = 0; c < n; ++c) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p) acc += static_cast<double>(bf16_to_f32(a[r * k + p])) * bf16_to_f32(b[x][c * k + p]);
        ref[r * n + c] = acc;
      }
  auto value = [&](size_t i) -> double {
    if (s.bf16_out) {
      uint16_t q;
      std::memcpy(&q, out.data() + i * 2, 2);
      return bf16_to_f32(q);
    }
    float q;
    std::memcpy(&q, out.data() + i * 4, 4);
    return q;
  };
  for (size_t i = 0; i < got.size(); ++i) got[i] = value(i);
  size_t untouched_bad = 0;  // rows past offsets[G] must still be NaN
  for (size_t i = static_cast<size_t>(rows * n); i < static_cast<size_t>(total * n); ++i)
    if (!std::isnan(value(i))) ++untouched_bad;
  const ErrorStats st = compare(got, ref);
  const double rel = std::sqrt(st.nmse);
  const bool same = std::memcmp(out.data(), out2.data(), out.size()) == 0;
  const bool tol_ok = s.bf16_out ? (rel <= 1e-2 && st.max_abs <= 2e-2 * st.max_ref) : st.max_abs <= 1e-4;
  const bool ok = st.non_finite == 0 && tol_ok && same && untouched_bad == 0;
  std::string d = "rel=" + fmt(rel) + " max_abs=" + fmt(st.max_abs) +
                  (s.bf16_out ? " tol=1e-2/2e-2*max_ref" : " tol=max_abs 1e-4");
  if (!same) d += ", two runs differ";
  if (untouched_bad) d += ", " + std::to_string(untouched_bad) + " values past offsets[G] written";
  if (st.non_finite) d += ", " + std::to_string(st.non_finite) + " non-finite";
  if (be.kind == BackendKind::Cpu && ran != be.isa) d += std::string(" ran=") + isa_name(ran);
  return Outcome::check(ok, d);
}

// Bad offsets / a null b of a group with rows: InvalidArgument on the CPU, an error code from the CUDA launcher.
Outcome run_grouped_invalid(const Backend& be) {
  std::vector<std::string> problems;
  uint16_t a[6 * 4] = {}, w[2 * 4] = {};
  float o[6 * 2] = {};
  const void* b_null[2] = {w, nullptr};
  const void* b_ok[2] = {w, w};
  const int32_t off_null[3] = {0, 3, 6};    // group 1 has rows but a null b
  const int32_t off_decr[3] = {0, 4, 2};    // decreasing
  const int32_t off_start[3] = {1, 3, 6};   // not starting at 0
  struct Bad {
    const char* what;
    const int32_t* off;
    const void* const* b;
  } bad[] = {{"null b of a group with rows", off_null, b_null}, {"decreasing offsets", off_decr, b_ok},
             {"offsets not starting at 0", off_start, b_ok}};
  for (const Bad& x : bad) {
    if (be.kind == BackendKind::Cpu) {
      try {
        cpu::grouped_gemm({a, x.off, x.b, o, DType::F32, 2, 2, 4, 4, 4, 2}, be.isa);
        problems.push_back(std::string(x.what) + " did not throw");
      } catch (const moe::Error& e) {
        if (e.code() != ErrorCode::InvalidArgument)
          problems.push_back(std::string(x.what) + " threw " + error_code_string(e.code()));
      }
    } else {
#if MOE_WITH_CUDA
      (void)x;  // the launcher checks host metadata group by group: only a bad FIRST group returns before any launch
#endif
    }
  }
#if MOE_WITH_CUDA
  if (be.kind == BackendKind::Cuda) {
    // Null a/out: were a check missing, nothing could be launched on host memory either way.
    const void* b_first_null[2] = {nullptr, w};
    const int32_t off_first_neg[3] = {2, 1, 6};  // group 0 has -1 rows
    const int e1 = moe_cuda_grouped_gemm(be.device, nullptr, off_null, b_first_null, nullptr, 0, 2, 2, 4, 4, 4, 2, be.stream);
    if (e1 == 0) problems.push_back("cuda: null b of a group with rows returned success");
    const int e2 = moe_cuda_grouped_gemm(be.device, nullptr, off_first_neg, b_ok, nullptr, 0, 2, 2, 4, 4, 4, 2, be.stream);
    if (e2 == 0) problems.push_back("cuda: negative group rows returned success");
    const int e3 = moe_cuda_grouped_gemm(be.device, nullptr, off_null, b_ok, nullptr, 1, 2, 2, 4, 4, 4, 2, be.stream);
    if (e3 == 0) problems.push_back("cuda: out dtype f16 returned success");
  }
#endif
  std::string d = "err=" + std::to_string(problems.size());
  for (const auto& p : problems) d += "; " + p;
  return Outcome::check(problems.empty(), d);
}

}  // namespace

void add_grouped_gemm_cases(std::vector<Case>& cases) {
  const GroupedShape shapes[] = {
      {{37}, 100, 256, false, 0},                       // one group (dense)
      {{5, 0, 17, 1, 0, 64}, 96, 128, false, 3},        // mixed groups with empty ones, rows past offsets[G]
      {{1, 1, 1, 1, 1, 1, 1, 1}, 130, 512, false, 0},   // decode: one row per group
      {{7, 3, 33}, 64, 511, false, 0},                  // K = 511
      {{9, 0, 22}, 72, 200, true, 0},                   // bf16 out
      {{0, 0, 0}, 16, 32, false, 2},                    // every group empty: nothing written
      {{200, 130}, 192, 1024, true, 0},                 // large groups (blocked GEMM)
  };
  for (const GroupedShape& s : shapes) {
    std::string rows;
    for (size_t i = 0; i < s.rows.size(); ++i) rows += (i ? "," : "") + std::to_string(s.rows[i]);
    std::string name = "rows=[" + rows + "] n=" + std::to_string(s.n) + " k=" + std::to_string(s.k) +
                       (s.bf16_out ? " out=bf16" : " out=f32") + (s.extra_rows ? " extra=" + std::to_string(s.extra_rows) : "");
    cases.push_back({"grouped_gemm", name, [s](const Backend& be) { return run_grouped(be, s); }});
  }
  cases.push_back({"grouped_gemm", "invalid offsets and null b", run_grouped_invalid});
}

}  // namespace moe::native
