// Small-m gemm cases for moe-native (the streaming decode path of cpu/gemm.cc, m <= 8, and m = 9 on the tiled path
// next to it), on every CPU tier against the float64 reference of ref.h: m = 1..8 with n not a multiple of the
// kernels' 2..4 rows of b, odd k (the masked and zero-padded k tails, k blocks of 512 and 1024 with a partial last
// one), strided rows with NaN padding past k (a kernel
// that reads past k poisons its output), sentinels after every output row (no stray writes), and b placed so that
// its last row ends right before an unreadable page (a read past the end of b faults). Tolerances as in
// ops_test.cc's gemm cases. Each case also checks that the result does not depend on the threads: gemm() on the
// pool, gemm_serial() on one thread and gemm() over n split in two odd parts give bitwise the same output; and that
// it does not depend on the other rows of a (batch invariance, which batched generation relies on): the same rows
// first or last in a call with 6 more rows (the tiled path) give bitwise the same rows of out.
// A cancelled token stops the streaming path with moe::Error(Cancelled). CPU only: the CUDA gemm is covered by
// ops_test.cc's cases.
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "core/cancel.h"
#include "core/dtype.h"
#include "core/error.h"
#include "cpu/gemm.h"
#include "harness.h"
#include "ref.h"

namespace moe::native {

namespace {

struct GemvShape {
  int64_t m, n, k, lda, ldb, ldc;
};

// `bytes` of host memory whose end touches an inaccessible page (Linux), so a read past the end faults.
class GuardedBuf {
 public:
  explicit GuardedBuf(size_t bytes) : bytes_(bytes) {
#if defined(__linux__)
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    map_bytes_ = (bytes + page - 1) / page * page + page;
    void* p = mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      map_ = static_cast<uint8_t*>(p);
      mprotect(map_ + map_bytes_ - page, page, PROT_NONE);
      data_ = map_ + map_bytes_ - page - bytes;
      return;
    }
#endif
    fallback_.resize(bytes > 0 ? bytes : 1);
    data_ = fallback_.data();
  }
  ~GuardedBuf() {
#if defined(__linux__)
    if (map_ != nullptr) munmap(map_, map_bytes_);
#endif
  }
  GuardedBuf(const GuardedBuf&) = delete;
  GuardedBuf& operator=(const GuardedBuf&) = delete;
  uint8_t* data() { return data_; }

 private:
  size_t bytes_;
  uint8_t* map_ = nullptr;
  size_t map_bytes_ = 0;
  uint8_t* data_ = nullptr;
  std::vector<uint8_t> fallback_;
};

std::string shape_name(const GemvShape& s, DType ab, DType od) {
  std::string r = "m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k);
  if (s.lda != s.k || s.ldb != s.k || s.ldc != s.n) {
    r += " lda=" + std::to_string(s.lda) + " ldb=" + std::to_string(s.ldb) + " ldc=" + std::to_string(s.ldc);
  }
  return r + " ab=" + dtype_name(ab) + " out=" + dtype_name(od);
}

Outcome run_gemv(const Backend& be, const GemvShape& s, DType ab, DType od) {
  if (be.kind != BackendKind::Cpu) return Outcome::skip("CPU streaming path (ops_test.cc covers the CUDA gemm)");
  const size_t es = dtype_size(ab), os = dtype_size(od);
  // a: [m, lda]; b: [n, ldb] with the last row only k long (it ends at the guard page); out: [m, ldc] + 1.
  const size_t a_len = static_cast<size_t>(s.m * s.lda);
  const size_t b_len = s.n > 0 ? static_cast<size_t>((s.n - 1) * s.ldb + s.k) : 0;
  const size_t o_len = static_cast<size_t>(s.m * s.ldc);
  const uint32_t nan_bits = es == 4 ? 0x7fc00000u : 0x7fc0u;
  const uint32_t sentinel = os == 4 ? 0x5a5a5a5au : 0x5a5au;
  std::vector<uint8_t> a(a_len * es + es);
  GuardedBuf b(b_len * es);
  Rng rng(0x9E3 + static_cast<uint64_t>(s.m * 1000003 + s.n * 1009 + s.k));
  auto fill = [&](uint8_t* buf, int64_t rows, int64_t ld, size_t len) {
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < ld && static_cast<size_t>(r * ld + c) < len; c++) {
        uint32_t raw = c < s.k ? f32_to_raw(ab, static_cast<float>(rng.uniform() * 0.1)) : nan_bits;
        store_raw(ab, buf, static_cast<size_t>(r * ld + c), raw);
      }
  };
  fill(a.data(), s.m, s.lda, a_len);
  fill(b.data(), s.n, s.ldb, b_len);

  // Three outputs: gemm on the pool, gemm_serial, gemm over n split in [0, n1) and [n1, n).
  std::vector<std::vector<uint8_t>> outs(3, std::vector<uint8_t>((o_len + 1) * os));
  for (auto& o : outs)
    for (size_t i = 0; i < o_len + 1; i++) store_raw(od, o.data(), i, sentinel);
  cpu::GemmArgs args{a.data(), b.data(), outs[0].data(), ab, od, s.m, s.n, s.k, s.lda, s.ldb, s.ldc};
  const Isa ran = cpu::gemm(args, be.isa);
  args.out = outs[1].data();
  const Isa ran_serial = cpu::gemm_serial(args, be.isa);
  const int64_t n1 = s.n / 2 | 1;  // odd: the second part starts inside a group of 4 b rows
  if (n1 < s.n) {
    args.out = outs[2].data();
    args.n = n1;
    cpu::gemm(args, be.isa);
    args.b = b.data() + static_cast<size_t>(n1 * s.ldb) * es;
    args.out = outs[2].data() + static_cast<size_t>(n1) * os;
    args.n = s.n - n1;
    cpu::gemm(args, be.isa);
  } else {
    outs[2] = outs[0];
  }

  // Batch invariance: the same m rows inside a call with 6 more rows (the tiled path), first and last.
  size_t batch_diff = 0;
  const int64_t more = 6, mb = s.m + more;
  for (int last = 0; last < 2; ++last) {
    std::vector<uint8_t> ab_rows(static_cast<size_t>(mb * s.lda) * es + es), ob(static_cast<size_t>(mb * s.ldc) * os);
    const int64_t at = last ? more : 0;  // row of the big call that holds row 0 of a
    fill(ab_rows.data(), mb, s.lda, static_cast<size_t>(mb * s.lda));
    std::memcpy(ab_rows.data() + static_cast<size_t>(at * s.lda) * es, a.data(), a_len * es);
    cpu::GemmArgs big{ab_rows.data(), b.data(), ob.data(), ab, od, mb, s.n, s.k, s.lda, s.ldb, s.ldc};
    cpu::gemm(big, be.isa);
    for (int64_t r = 0; r < s.m; ++r)
      for (int64_t c = 0; c < s.n; ++c)
        batch_diff += load_raw(od, ob.data(), static_cast<size_t>((at + r) * s.ldc + c)) !=
                      load_raw(od, outs[0].data(), static_cast<size_t>(r * s.ldc + c));
  }

  size_t stray = 0;
  std::vector<double> out(static_cast<size_t>(s.m * s.n));
  for (size_t i = 0; i < o_len + 1; i++) {
    const int64_t r = static_cast<int64_t>(i) / s.ldc, c = static_cast<int64_t>(i) % s.ldc;
    const uint32_t raw = load_raw(od, outs[0].data(), i);
    if (r < s.m && c < s.n) {
      out[static_cast<size_t>(r * s.n + c)] = raw_to_f32(od, raw);
    } else {
      stray += raw != sentinel;
    }
  }
  const bool same_serial = std::memcmp(outs[0].data(), outs[1].data(), outs[0].size()) == 0;
  const bool same_split = std::memcmp(outs[0].data(), outs[2].data(), outs[0].size()) == 0;
  const std::vector<double> ref = gemm_ref(ab, a.data(), b.data(), s.m, s.n, s.k, s.lda, s.ldb);
  const ErrorStats st = compare(out, ref);
  std::string extra = (stray ? ", " + std::to_string(stray) + " padding elements overwritten" : std::string()) +
                      (st.non_finite ? ", " + std::to_string(st.non_finite) + " non-finite outputs" : std::string()) +
                      (same_serial ? std::string() : std::string(", gemm and gemm_serial differ")) +
                      (same_split ? std::string() : std::string(", split n differs")) +
                      (batch_diff ? ", " + std::to_string(batch_diff) + " outputs differ inside m + 6 rows" : std::string()) +
                      (ran != ran_serial ? std::string(", serial ran ") + isa_name(ran_serial) : std::string()) +
                      (ran != be.isa ? std::string(" ran=") + isa_name(ran) : std::string());
  const bool same = stray == 0 && same_serial && same_split && batch_diff == 0 && ran == ran_serial;
  if (s.k == 0) {
    return Outcome::check(same && st.max_abs == 0.0, "err=" + fmt(st.max_abs) + " (max |out|, want 0)" + extra);
  }
  if (ab == DType::F32 && od == DType::F32) {
    const double tol = 1e-5 * st.max_ref + 1e-6;
    return Outcome::check(same && st.max_abs <= tol, "err=" + fmt(st.max_abs) + " max abs (tol " + fmt(tol) + ")" + extra);
  }
  const double tol = od == DType::BF16 ? 5e-4 : 1e-5;
  return Outcome::check(same && st.nmse <= tol, "err=" + fmt(st.nmse) + " nmse (tol " + fmt(tol) + ")" + extra);
}

// A token cancelled before the call: the streaming path throws Cancelled and writes no output.
Outcome run_gemv_cancel(const Backend& be) {
  if (be.kind != BackendKind::Cpu) return Outcome::skip("CPU cancellation token");
  const int64_t m = 2, n = 4099, k = 256;
  std::vector<uint16_t> a(static_cast<size_t>(m * k), 0x3f80), b(static_cast<size_t>(n * k), 0x3f80);
  std::vector<float> out(static_cast<size_t>(m * n), -1.0f);
  CancelToken token;
  token.cancel();
  try {
    cpu::gemm({a.data(), b.data(), out.data(), DType::BF16, DType::F32, m, n, k, k, k, n}, be.isa, &token);
    return Outcome::fail("did not throw");
  } catch (const moe::Error& e) {
    if (e.code() != ErrorCode::Cancelled) return Outcome::fail(std::string("threw ") + error_code_string(e.code()));
  }
  size_t written = 0;
  for (float v : out) written += v != -1.0f;
  return Outcome::check(written == 0, "err=" + std::to_string(written) + " outputs written after cancellation");
}

}  // namespace

void add_gemv_cases(std::vector<Case>& cases) {
  auto dense = [](int64_t m, int64_t n, int64_t k) { return GemvShape{m, n, k, k, k, n}; };
  const std::vector<GemvShape> shapes = {
      dense(1, 1, 1),      dense(1, 3, 7),      dense(1, 37, 33),    dense(1, 130, 1023), dense(1, 1029, 4097),
      dense(2, 5, 31),     dense(2, 37, 95),    dense(2, 6, 2048),   dense(3, 7, 65),     dense(3, 130, 257),
      dense(4, 3, 17),     dense(4, 37, 2049),  dense(4, 130, 511),  dense(5, 37, 95),    dense(6, 11, 1025),
      dense(7, 130, 33),   dense(8, 37, 513),   dense(9, 37, 95),
      {3, 37, 95, 101, 99, 41},     // strided, odd strides
      {4, 130, 255, 256, 263, 131},
      {7, 37, 95, 101, 99, 41},
      {2, 5, 0, 4, 4, 9},           // k == 0 writes zeros
  };
  const DType combos[][2] = {
      {DType::BF16, DType::F32}, {DType::BF16, DType::BF16}, {DType::F32, DType::F32}, {DType::F32, DType::BF16}};
  for (const auto& c : combos)
    for (const GemvShape& s : shapes) {
      const DType ab = c[0], od = c[1];
      cases.push_back(
          {"gemv", shape_name(s, ab, od), [s, ab, od](const Backend& be) { return run_gemv(be, s, ab, od); }});
    }
  cases.push_back({"gemv", "cancelled m=2 n=4099 k=256", [](const Backend& be) { return run_gemv_cancel(be); }});
}

}  // namespace moe::native
