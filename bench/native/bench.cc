// `moe-native bench [--json PATH] [--cuda-only] [--ops=a,b]`: kernel timings with napkin math. Every throughput is printed with the fraction
// of a roofline; bandwidth rooflines are measured in the same run on the same machine (a device-to-device copy
// on the GPU, a streaming AVX-512/AVX2 read on the CPU), the GPU tensor-core roofline is DESIGN.md's measured
// H100 peak (stated as such, not measured here).
//   CUDA: events on a stream, 3 warm-ups, median of 20 runs, L2 flushed (memset of a buffer > L2) before each run.
//   CPU:  steady_clock, 1 warm-up, median of 3..11 runs (about 1.5 s per measurement at most), per ISA tier.
// The JSON holds the date, the machine and every measurement with its unit.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/isa.h"
#include "core/threadpool.h"
#include "cpu/add.h"
#include "cpu/argmax_rows.h"
#include "cpu/convert.h"
#include "cpu/dot_probe.h"
#include "cpu/gemm.h"
#include "cpu/gemm_packed.h"
#include "cpu/read_probe.h"
#include "cpu/sample_rows.h"
#include "cpu/pack_weights.h"
#include "cuda_util.h"
#include "harness.h"
#include "ref.h"

#if MOE_X86
#include "cpu/simd.h"
#endif

namespace moe::native {
namespace {

// ---- results ----------------------------------------------------------------------------------------------------

struct Measurement {
  std::string backend;  // "cuda", "cpu-avx512", ...
  std::string op;       // "gemm", "convert", "h2d", ...
  std::string shape;    // "m=1024 n=1024 k=1024 bf16->bf16"
  double time_ms = 0;   // median
  double value = 0;     // throughput
  std::string unit;     // "TFLOP/s", "GB/s", "GFLOP/s"
  double roofline = 0;  // 0: none
  std::string roofline_source;
  std::string note;
};

std::vector<Measurement> g_results;

void report(Measurement m) {
  std::printf("%-16s %-9s %-44s %9.3f ms %10.2f %-7s", m.backend.c_str(), m.op.c_str(), m.shape.c_str(), m.time_ms,
              m.value, m.unit.c_str());
  if (m.roofline > 0) std::printf("  %5.1f%% of %.1f %s (%s)", 100.0 * m.value / m.roofline, m.roofline,
                                  m.unit.c_str(), m.roofline_source.c_str());
  if (!m.note.empty()) std::printf("  [%s]", m.note.c_str());
  std::printf("\n");
  std::fflush(stdout);
  g_results.push_back(std::move(m));
}

[[maybe_unused]] double median(std::vector<double> v) {  // CUDA timings
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

std::string json_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      r += '\\';
      r += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      r += buf;
    } else {
      r += c;
    }
  }
  return r;
}

std::string json_num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}

// ---- CPU --------------------------------------------------------------------------------------------------------

// --ops=a,b: only these CPU ops (convert, add, argmax, sample, pack, gemm, packed); empty: all
std::vector<std::string> g_ops;
bool want(const char* op) {
  return g_ops.empty() || std::find(g_ops.begin(), g_ops.end(), op) != g_ops.end();
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One warm-up, then runs until >= 3 runs and >= budget_ms spent, or 11 runs. Returns the median in ms.
double time_cpu_ms(const std::function<void()>& fn, double budget_ms = 1500) {
  fn();
  double t[11];
  size_t runs = 0;
  const double start = now_ms();
  while (runs < 11 && (runs < 3 || now_ms() - start < budget_ms)) {
    double t0 = now_ms();
    fn();
    t[runs++] = now_ms() - t0;
  }
  std::sort(t, t + runs);
  return runs % 2 ? t[runs / 2] : 0.5 * (t[runs / 2 - 1] + t[runs / 2]);
}


struct AlignedBuffer {
  void* p = nullptr;
  explicit AlignedBuffer(size_t bytes) {
    p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 1, bytes);  // touch every page before timing (non-zero: zero-filled pages read faster here)
  }
  ~AlignedBuffer() { std::free(p); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

// Streaming read bandwidth of the whole thread pool over 256 MiB with the best vector ISA: the CPU roofline.
double cpu_read_bandwidth(std::string* how) {
  const size_t bytes = size_t{256} << 20;
  AlignedBuffer buf(bytes);
  std::fill(buf.as<float>(), buf.as<float>() + bytes / 4, 1.0f);  // normal values (the 0x01 bytes are denormals)
  const Isa best = cpu_info().best;
  volatile double sink = 0;
  const double ms = time_cpu_ms([&] { sink = cpu::read_probe(buf.as<float>(), bytes / 4, best); });
  (void)sink;
  *how = std::string("cpu::read_probe (") + isa_name(best) + "), " + std::to_string(ThreadPool::global().size()) + " threads, 256 MiB";
  return bytes / (ms * 1e-3) / 1e9;
}

void bench_cpu() {
  const CpuInfo& ci = cpu_info();
  std::string how;
  const double read_gbs = cpu_read_bandwidth(&how);
  report({"cpu", "read-bw", "256 MiB", 256.0 * 1048576 / read_gbs / 1e6, read_gbs, "GB/s", 0, "", how});
  const std::string roof_src = "streaming read probe, this run (bytes read + written vs read-only)";

  const size_t n = size_t{32} << 20;  // elements
  AlignedBuffer f32(n * 4), bf_a(n * 2), bf_b(n * 2), bf_o(n * 2);
  for (size_t i = 0; i < n; i++) f32.as<float>()[i] = static_cast<float>(i % 1000) * 0.001f;
  for (size_t i = 0; i < n; i++) bf_a.as<uint16_t>()[i] = bf_b.as<uint16_t>()[i] = 0x3f80;  // 1.0

  const int64_t gm_small = 256, gk = 1024;
  AlignedBuffer ga(size_t{1024} * 1024 * 2), gb(size_t{1024} * 1024 * 2), go(size_t{1024} * 1024 * 4);
  for (size_t i = 0; i < size_t{1024} * 1024; i++) {
    ga.as<uint16_t>()[i] = f32_to_bf16(static_cast<float>(i % 17) * 0.01f);
    gb.as<uint16_t>()[i] = f32_to_bf16(static_cast<float>(i % 13) * 0.01f);
  }

  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16}) {
    const std::string be = std::string("cpu-") + isa_name(isa);
    if (isa > ci.best) {
      std::printf("%-16s SKIP: CPU lacks %s\n", be.c_str(), isa_name(isa));
      continue;
    }
    Isa ran = isa;
    auto note = [&] { return ran != isa ? std::string("ran ") + isa_name(ran) : std::string(); };

    double ms = 0;
    if (want("convert")) {
      ms = time_cpu_ms([&] { ran = cpu::convert({f32.p, DType::F32, bf_o.p, DType::BF16, n}, isa); });
      report({be, "convert", "n=32M f32->bf16", ms, n * 6.0 / (ms * 1e-3) / 1e9, "GB/s", read_gbs, roof_src, note()});
      ms = time_cpu_ms([&] { ran = cpu::convert({bf_a.p, DType::BF16, f32.p, DType::F32, n}, isa); });
      report({be, "convert", "n=32M bf16->f32", ms, n * 6.0 / (ms * 1e-3) / 1e9, "GB/s", read_gbs, roof_src, note()});
    }
    if (want("add")) {
      ms = time_cpu_ms([&] { ran = cpu::add({bf_a.p, bf_b.p, bf_o.p, DType::BF16, n}, isa); });
      report({be, "add", "n=32M bf16", ms, n * 6.0 / (ms * 1e-3) / 1e9, "GB/s", read_gbs, roof_src, note()});
    }

    // greedy tokens of a decode step: 32 rows of Qwen3's 151936 logits (cpu/argmax_rows.h), all pool threads
    if (want("argmax")) {
      constexpr int64_t rows = 32, vocab = 151936;
      const float* logits = f32.as<float>();  // 4.9M of the 32M floats above (a repeating ramp: ties resolved by id)
      std::vector<int32_t> ids(rows);
      ms = time_cpu_ms([&] { cpu::argmax_rows(logits, rows, vocab, ids.data(), nullptr, isa); });
      ran = vector_tier(isa);
      // the 19 MB stay in cache from run to run (as the LM head's fresh logits partly are): no roofline
      report({be, "argmax", "rows=32 vocab=151936 f32 (cache-warm)", ms, rows * vocab * 4.0 / (ms * 1e-3) / 1e9, "GB/s", 0,
              "", note()});
    }
    // sampled tokens of a decode step: 32 rows of Qwen3's 151936 logits, temperature 0.8, each sampling mode
    // (cpu/sample_rows.h), all pool threads; logits an LM's spread (a sum of 4 uniforms: about N(0, 3^2))
    if (want("sample")) {
      constexpr int64_t rows = 32, vocab = 151936;
      static std::vector<float> logits;
      if (logits.empty()) {
        logits.resize(static_cast<size_t>(rows * vocab));
        uint32_t s = 12345;
        auto uni = [&] { return (s = s * 1664525u + 1013904223u) / 4294967296.0; };
        for (float& v : logits) v = static_cast<float>((uni() + uni() + uni() + uni() - 2.0) * 5.2);
      }
      struct Mode { const char* name; double top_k, top_p; };
      for (const Mode& mode : {Mode{"plain", 0, 1}, Mode{"top_p=0.95", 0, 0.95}, Mode{"top_k=50", 50, 1}, Mode{"top_k=50 top_p=0.9", 50, 0.9}}) {
        std::vector<double> params(static_cast<size_t>(rows * 4));
        for (int64_t r = 0; r < rows; ++r) {
          params[4 * r] = 0.8;
          params[4 * r + 1] = mode.top_k;
          params[4 * r + 2] = mode.top_p;
          params[4 * r + 3] = (static_cast<double>(r) + 0.5) / rows;
        }
        std::vector<int32_t> ids(rows);
        ms = time_cpu_ms([&] { cpu::sample_rows({logits.data(), params.data(), ids.data(), rows, vocab, isa}, nullptr); });
        report({be, "sample", std::string("rows=32 vocab=151936 T=0.8 ") + mode.name, ms, rows * vocab / (ms * 1e-3) / 1e9, "Glogit/s", 0, "", ""});
      }
    }
    // packing weights into the panel64 layout at load (cpu/pack_weights.h): Qwen3's expert projection (768 x 2048)
    // and Mixtral's (14336 x 4096), into memory already mapped in, all pool threads; roofline: the read probe
    if (want("pack")) {
      struct Shape { int64_t n, k; };
      for (Shape sh : {Shape{768, 2048}, Shape{14336, 4096}}) {
        static AlignedBuffer src(size_t{14336} * 4096 * 2), dst(static_cast<size_t>(cpu::packed_weights_numel(14336, 4096)) * 2);
        for (int64_t i = 0; i < sh.n * sh.k; ++i) src.as<uint16_t>()[i] = static_cast<uint16_t>(i * 2654435761u >> 16);
        cpu::pack_weights(src.as<uint16_t>(), sh.n, sh.k, sh.k, dst.as<uint16_t>(), nullptr, isa);  // maps dst in
        ms = time_cpu_ms([&] { cpu::pack_weights(src.as<uint16_t>(), sh.n, sh.k, sh.k, dst.as<uint16_t>(), nullptr, isa); });
        ran = vector_tier(isa);
        report({be, "pack", "n=" + std::to_string(sh.n) + " k=" + std::to_string(sh.k) + " bf16 -> panel64", ms,
                sh.n * sh.k * 2.0 / (ms * 1e-3) / 1e9, "GB/s", read_gbs, "streaming read probe, this run (bytes of w)", note()});
      }
    }
    for (int64_t m : {gm_small, int64_t{1024}}) {
      if (!want("gemm")) break;
      cpu::GemmArgs args{ga.p, gb.p, go.p, DType::BF16, DType::F32, m, 1024, gk, gk, gk, 1024};
      ms = time_cpu_ms([&] { ran = cpu::gemm(args, isa); }, 2000);
      double gflops = 2.0 * m * 1024 * gk / (ms * 1e-3) / 1e9;
      report({be, "gemm", "m=" + std::to_string(m) + " n=1024 k=1024 bf16->f32", ms, gflops, "GFLOP/s", 0, "",
              note()});
    }
  }
}

// GEMM over packed weights (gemm_packed.h) against the row-major gemm, same shapes and inputs, at the best tier
// (avx512bf16: vdpbf16ps; avx512 and avx2: the 8-lane FMA kernels): the projection shapes of Mixtral-8x7B (an
// expert's [14336, 4096] at decode and prefill m) and a square one. Roofline: the tier's register peak
// (cpu::dot_probe, every pool thread, best of 3) measured in this run; m <= 8 also against the read probe (bytes of
// b / time).
void bench_cpu_packed() {
  const Isa best = cpu_info().best, tier = cpu::packed_tier(best);
  const std::string be = std::string("cpu-") + isa_name(best);
  if (!want("packed")) return;
  if (tier == Isa::Scalar) {
    std::printf("%-16s SKIP: packed gemm has no vector kernel on this CPU\n", be.c_str());
    return;
  }
  const std::string peak_of = cpu::dot_probe_op(best);
  std::string how;
  const double read_gbs = cpu_read_bandwidth(&how);
  double peak = 0;
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const double flops = cpu::dot_probe(20000000, best);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    peak = std::max(peak, flops / sec / 1e9);
  }
  report({"cpu", "dot-peak", peak_of + " chains, all threads", 0, peak, "GFLOP/s", 0, "", "register peak, this run"});
  struct Shape { int64_t m, n, k; };
  for (Shape sh : {Shape{1, 14336, 4096}, Shape{4, 14336, 4096}, Shape{8, 14336, 4096}, Shape{16, 14336, 4096},
                   Shape{128, 14336, 4096}, Shape{512, 14336, 4096}, Shape{1024, 1024, 1024}}) {
    AlignedBuffer a(static_cast<size_t>(sh.m * sh.k) * 2), b(static_cast<size_t>(sh.n * sh.k) * 2),
        bp(static_cast<size_t>(cpu::packed_weights_numel(sh.n, sh.k)) * 2), o(static_cast<size_t>(sh.m * sh.n) * 4);
    for (int64_t i = 0; i < sh.m * sh.k; ++i) a.as<uint16_t>()[i] = f32_to_bf16(static_cast<float>(i % 17) * 0.01f);
    for (int64_t i = 0; i < sh.n * sh.k; ++i) b.as<uint16_t>()[i] = f32_to_bf16(static_cast<float>(i % 13) * 0.01f);
    cpu::pack_weights(b.as<uint16_t>(), sh.n, sh.k, sh.k, bp.as<uint16_t>());
    const std::string shape = "m=" + std::to_string(sh.m) + " n=" + std::to_string(sh.n) + " k=" + std::to_string(sh.k) + " bf16->f32";
    const double flop = 2.0 * sh.m * sh.n * sh.k, bbytes = 2.0 * sh.n * sh.k;
    cpu::GemmArgs rm{a.p, b.p, o.p, DType::BF16, DType::F32, sh.m, sh.n, sh.k, sh.k, sh.k, sh.n};
    cpu::GemmPackedArgs pk{a.as<uint16_t>(), bp.as<uint16_t>(), o.p, DType::F32, sh.m, sh.n, sh.k, sh.k, sh.n};
    // interleaved: row-major, packed, row-major, packed (the VM's speed drifts); the best of each
    double ms_rm = 1e30, ms_pk = 1e30;
    for (int r = 0; r < 3; ++r) {
      ms_rm = std::min(ms_rm, time_cpu_ms([&] { cpu::gemm(rm, best); }, 1500));
      ms_pk = std::min(ms_pk, time_cpu_ms([&] { cpu::gemm_packed(pk, best); }, 1500));
    }
    const bool decode = sh.m <= 8;
    for (int v = 0; v < 2; ++v) {
      const double ms = v == 0 ? ms_rm : ms_pk;
      const char* op = v == 0 ? "gemm" : "gemm-packed";
      const std::string note = v == 0 ? "row-major weights" : "panel64 weights, x" + std::to_string(ms_rm / ms_pk).substr(0, 4) + " vs row-major";
      if (decode)
        report({be, op, shape, ms, bbytes / (ms * 1e-3) / 1e9, "GB/s", read_gbs, "streaming read probe, this run", note});
      else
        report({be, op, shape, ms, flop / (ms * 1e-3) / 1e9, "GFLOP/s", peak, peak_of + " register peak, this run", note});
    }
  }
}

// ---- CUDA -------------------------------------------------------------------------------------------------------

#if MOE_WITH_CUDA
constexpr double kH100PeakTflops = 790.0;
const char* kPeakSource = "measured peak from DESIGN.md section 7, not measured here";

struct CudaBench {
  int dev = 0;
  Stream stream{0};
  void* e0 = nullptr;
  void* e1 = nullptr;
  DeviceBuffer* flush = nullptr;

  CudaBench() {
    cuda_check(moe_cuda_event_create(dev, 1, &e0), "moe_cuda_event_create");
    cuda_check(moe_cuda_event_create(dev, 1, &e1), "moe_cuda_event_create");
  }
  ~CudaBench() {
    if (e0) moe_cuda_event_destroy(dev, e0);
    if (e1) moe_cuda_event_destroy(dev, e1);
  }

  // Median of `runs` timings of enqueue() (after `warmup` untimed calls), L2 flushed before each when asked.
  double time_ms(const std::function<int()>& enqueue, bool flush_l2 = true, int runs = 20, int warmup = 3) {
    for (int i = 0; i < warmup; i++) cuda_check(enqueue(), "warm-up launch");
    stream.sync();
    std::vector<double> t;
    for (int i = 0; i < runs; i++) {
      if (flush_l2 && flush != nullptr) {
        cuda_check(moe_cuda_memset_async(dev, flush->get(), i & 0xff, flush->size(), stream.get()), "L2 flush");
      }
      cuda_check(moe_cuda_event_record(dev, e0, stream.get()), "moe_cuda_event_record");
      cuda_check(enqueue(), "timed launch");
      cuda_check(moe_cuda_event_record(dev, e1, stream.get()), "moe_cuda_event_record");
      cuda_check(moe_cuda_event_synchronize(dev, e1), "moe_cuda_event_synchronize");
      float ms = 0;
      cuda_check(moe_cuda_event_elapsed_ms(&ms, e0, e1), "moe_cuda_event_elapsed_ms");
      t.push_back(ms);
    }
    return median(t);
  }
};

void bench_cuda(const MoeCudaDeviceInfo& info) {
  CudaBench cb;
  const int dev = cb.dev;
  void* s = cb.stream.get();
  const size_t flush_bytes = std::max<size_t>(size_t{2} * static_cast<size_t>(info.l2_bytes), size_t{64} << 20);
  DeviceBuffer flush(dev, flush_bytes);
  cb.flush = &flush;

  // Bandwidth roofline: device-to-device copy, bytes read + written.
  const size_t copy_bytes = size_t{512} << 20;
  double d2d_gbs = 0;
  {
    DeviceBuffer x(dev, copy_bytes), y(dev, copy_bytes);
    cuda_check(moe_cuda_memset_async(dev, x.get(), 1, copy_bytes, s), "memset");
    double ms = cb.time_ms([&] { return moe_cuda_memcpy_async(dev, y.get(), x.get(), copy_bytes, s); });
    d2d_gbs = 2.0 * copy_bytes / (ms * 1e-3) / 1e9;
    report({"cuda", "d2d-copy", "512 MiB", ms, d2d_gbs, "GB/s", 0, "", "bytes read + written; bandwidth roofline"});
  }
  const std::string bw_src = "device-to-device copy, this run";

  // Elementwise ops: 64M elements.
  {
    const size_t n = size_t{64} << 20;
    DeviceBuffer f32(dev, n * 4), ba(dev, n * 2), bb(dev, n * 2), bo(dev, n * 2);
    cuda_check(moe_cuda_memset_async(dev, f32.get(), 0x3f, n * 4, s), "memset");
    cuda_check(moe_cuda_memset_async(dev, ba.get(), 0x3f, n * 2, s), "memset");
    cuda_check(moe_cuda_memset_async(dev, bb.get(), 0x3e, n * 2, s), "memset");
    double ms = cb.time_ms([&] { return moe_cuda_convert(dev, f32.get(), 0, bo.get(), 2, n, s); });
    report({"cuda", "convert", "n=64M f32->bf16", ms, n * 6.0 / (ms * 1e-3) / 1e9, "GB/s", d2d_gbs, bw_src, ""});
    ms = cb.time_ms([&] { return moe_cuda_convert(dev, ba.get(), 2, f32.get(), 0, n, s); });
    report({"cuda", "convert", "n=64M bf16->f32", ms, n * 6.0 / (ms * 1e-3) / 1e9, "GB/s", d2d_gbs, bw_src, ""});
    ms = cb.time_ms([&] { return moe_cuda_add(dev, ba.get(), bb.get(), bo.get(), 2, n, s); });
    report({"cuda", "add", "n=64M bf16", ms, n * 6.0 / (ms * 1e-3) / 1e9, "GB/s", d2d_gbs, bw_src, ""});
    ms = cb.time_ms([&] { return moe_cuda_add(dev, f32.get(), f32.get(), f32.get(), 0, n, s); });
    report({"cuda", "add", "n=64M f32 in-place", ms, n * 12.0 / (ms * 1e-3) / 1e9, "GB/s", d2d_gbs, bw_src, ""});
  }

  // GEMM: out[m, n] = a[m, k] b[n, k]^T.
  {
    const size_t a_elems = size_t{4096} * 4096, b_elems = size_t{32000} * 4096, o_elems = size_t{4096} * 4096;
    DeviceBuffer a(dev, a_elems * 4), b(dev, b_elems * 2), o(dev, o_elems * 4);
    {
      // random operands (constant data can run faster than real data on tensor cores): bf16 uniform +-0.5; the f32
      // row reads a's bytes as f32, each an f32 near the bf16 in its high half (finite, |x| < 0.51)
      Rng rng(2026);
      const std::vector<uint16_t> ha = rng.bf16s(a_elems * 2, 0.5), hb = rng.bf16s(b_elems, 0.5);
      copy_sync(cb.stream, a.get(), ha.data(), a_elems * 4);
      copy_sync(cb.stream, b.get(), hb.data(), b_elems * 2);
    }
    struct G {
      int64_t m, n, k;
      int ab, out;
    };
    // bf16 -> f32 rows: the shapes the opt-in MOE_CUDA_GEMM=moe path takes (decode m 1, an LM head at m 256).
    const G shapes[] = {{1024, 1024, 1024, 2, 2}, {4096, 4096, 4096, 2, 2}, {32, 14336, 4096, 2, 2},
                        {1024, 1024, 1024, 2, 0}, {1, 14336, 4096, 2, 0},   {256, 32000, 4096, 2, 0},
                        {1024, 1024, 1024, 0, 0}};
    // MOE_CUDA_GEMM (simt | moe) changes the kernel moe_cuda_gemm picks: the rows say so.
    const char* force = std::getenv("MOE_CUDA_GEMM");
    const std::string force_note = force != nullptr ? std::string("MOE_CUDA_GEMM=") + force : std::string();
    for (const G& g : shapes) {
      double ms = cb.time_ms(
          [&] { return moe_cuda_gemm(dev, a.get(), b.get(), o.get(), g.ab, g.out, g.m, g.n, g.k, g.k, g.k, g.n, s); });
      double tflops = 2.0 * g.m * g.n * g.k / (ms * 1e-3) / 1e12;
      std::string shape = "m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) +
                          (g.ab == 2 ? " bf16" : " f32") + (g.out == 2 ? "->bf16" : "->f32");
      if (g.ab == 2) {
        report({"cuda", "gemm", shape, ms, tflops, "TFLOP/s", kH100PeakTflops, kPeakSource, force_note});
      } else {
        report({"cuda", "gemm", shape, ms, tflops, "TFLOP/s", 0, "", "CUDA-core f32 kernel" +
                                                                      (force_note.empty() ? "" : "; " + force_note)});
      }
    }
  }

  // Host <-> device from pinned memory (moe_cuda_host_alloc); no L2 flush (PCIe-bound).
  {
    const size_t max_bytes = size_t{352321536};  // one Mixtral-8x7B bf16 expert (3 x 4096 x 14336 x 2)
    PinnedBuffer host(max_bytes);
    std::memset(host.get(), 1, max_bytes);
    DeviceBuffer d(dev, max_bytes);
    for (size_t bytes : {size_t{4096}, size_t{65536}, size_t{1} << 20, size_t{16} << 20, size_t{64} << 20,
                         max_bytes}) {
      double ms = cb.time_ms([&] { return moe_cuda_memcpy_async(dev, d.get(), host.get(), bytes, s); }, false);
      report({"cuda", "h2d", std::to_string(bytes) + " B pinned", ms, bytes / (ms * 1e-3) / 1e9, "GB/s", 0, "", ""});
      ms = cb.time_ms([&] { return moe_cuda_memcpy_async(dev, host.get(), d.get(), bytes, s); }, false);
      report({"cuda", "d2h", std::to_string(bytes) + " B pinned", ms, bytes / (ms * 1e-3) / 1e9, "GB/s", 0, "", ""});
    }

    // Zero-copy gather vs the copy engine: the kernel reads rows of a pinned host expert over PCIe (UVA) into
    // device memory. Roofline: the plain pinned H2D copy of the same bytes, measured just above in this run.
    const int64_t row_bytes = 4096 * 2;  // one row of gate/up [I, H=4096] bf16
    const int64_t rows = static_cast<int64_t>(max_bytes) / row_bytes;
    for (int64_t n : {int64_t{64}, int64_t{1024}, rows}) {
      std::vector<int32_t> ids(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 7919) % rows);
      DeviceBuffer did(dev, ids.size() * 4);
      cuda_check(moe_cuda_memcpy_async(dev, did.get(), ids.data(), ids.size() * 4, s), "H2D ids");
      const size_t bytes = static_cast<size_t>(n * row_bytes);
      double copy_ms = cb.time_ms([&] { return moe_cuda_memcpy_async(dev, d.get(), host.get(), bytes, s); }, false);
      double gather_ms = cb.time_ms([&] {
        return moe_cuda_gather_rows(dev, host.get(), rows, row_bytes, row_bytes, static_cast<const int32_t*>(did.get()), n,
                                    d.get(), row_bytes, s);
      }, false);
      const double copy_gbs = bytes / (copy_ms * 1e-3) / 1e9;
      report({"cuda", "gather", std::to_string(n) + " rows x 8 KiB from pinned host (zero-copy)", gather_ms,
              bytes / (gather_ms * 1e-3) / 1e9, "GB/s", copy_gbs, "pinned H2D memcpy of the same bytes, this run", ""});
    }
  }
}
#endif  // MOE_WITH_CUDA

// ---- machine and JSON -------------------------------------------------------------------------------------------

struct Machine {
  std::string cpu;
  int cores = 0;
  std::string isa;
  std::string gpu = "none";
  std::string driver = "none";
  std::string runtime = "none";
  std::string cuda_status = "not built";
};

std::string iso_date() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool write_json(const std::string& path, const Machine& mc) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return false;
  std::fprintf(f, "{\n  \"date\": \"%s\",\n", iso_date().c_str());
  std::fprintf(f,
               "  \"machine\": {\"cpu\": \"%s\", \"cores\": %d, \"cpu_best_isa\": \"%s\", \"gpu\": \"%s\", "
               "\"cuda_driver\": \"%s\", \"cuda_runtime\": \"%s\", \"cuda_status\": \"%s\"},\n",
               json_escape(mc.cpu).c_str(), mc.cores, mc.isa.c_str(), json_escape(mc.gpu).c_str(),
               mc.driver.c_str(), mc.runtime.c_str(), json_escape(mc.cuda_status).c_str());
  std::fprintf(f, "  \"measurements\": [\n");
  for (size_t i = 0; i < g_results.size(); i++) {
    const Measurement& m = g_results[i];
    std::fprintf(f,
                 "    {\"backend\": \"%s\", \"op\": \"%s\", \"shape\": \"%s\", \"time_ms\": %s, \"value\": %s, "
                 "\"unit\": \"%s\"",
                 json_escape(m.backend).c_str(), json_escape(m.op).c_str(), json_escape(m.shape).c_str(),
                 json_num(m.time_ms).c_str(), json_num(m.value).c_str(), json_escape(m.unit).c_str());
    if (m.roofline > 0) {
      std::fprintf(f, ", \"roofline\": %s, \"roofline_unit\": \"%s\", \"fraction\": %s, \"roofline_source\": \"%s\"",
                   json_num(m.roofline).c_str(), json_escape(m.unit).c_str(), json_num(m.value / m.roofline).c_str(),
                   json_escape(m.roofline_source).c_str());
    }
    if (!m.note.empty()) std::fprintf(f, ", \"note\": \"%s\"", json_escape(m.note).c_str());
    std::fprintf(f, "}%s\n", i + 1 < g_results.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  return std::fclose(f) == 0;
}

}  // namespace

int bench_main(int argc, char** argv) {
  std::string json_path;
  bool cuda_only = false;
  for (int i = 0; i < argc; i++) {
    if (std::strcmp(argv[i], "--cuda-only") == 0) {
      cuda_only = true;
    } else if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else if (std::strncmp(argv[i], "--json=", 7) == 0) {
      json_path = argv[i] + 7;
    } else if (std::strncmp(argv[i], "--ops=", 6) == 0) {
      for (const char* p = argv[i] + 6; *p;) {
        const char* e = std::strchr(p, ',');
        g_ops.emplace_back(p, e ? e - p : std::strlen(p));
        p = e ? e + 1 : p + std::strlen(p);
      }
    } else {
      std::fprintf(stderr, "moe-native bench: unknown argument '%s' (usage: moe-native bench [--json PATH] [--cuda-only] [--ops=convert,add,argmax,sample,pack,gemm,packed])\n",
                   argv[i]);
      return 2;
    }
  }
  Machine mc;
  const CpuInfo& ci = cpu_info();
  mc.cpu = ci.model;
  mc.cores = ci.logical_cores;
  mc.isa = isa_name(ci.best);
  std::printf("moe-native bench  %s\ncpu: %s, %d logical cores, best tier %s, thread pool %d\n", iso_date().c_str(),
              ci.model.c_str(), ci.logical_cores, isa_name(ci.best), ThreadPool::global().size());

#if MOE_WITH_CUDA
  int drv = 0, rt = 0;
  if (moe_cuda_driver_version(&drv) == 0) mc.driver = std::to_string(drv);
  if (moe_cuda_runtime_version(&rt) == 0) mc.runtime = std::to_string(rt);
  int count = 0;
  int err = moe_cuda_device_count(&count);
  MoeCudaDeviceInfo info{};
  if (err == 0 && count > 0 && (err = moe_cuda_device_info(0, &info)) == 0) {
    mc.gpu = info.name;
    mc.cuda_status = "available";
    std::printf("gpu: %s, cc %d.%d, %d SMs, L2 %d MiB, driver %d, runtime %d\n", info.name, info.major, info.minor,
                info.sm_count, info.l2_bytes >> 20, drv, rt);
    try {
      bench_cuda(info);
    } catch (const std::exception& e) {
      std::printf("cuda bench failed: %s\n", e.what());
      mc.cuda_status = std::string("bench failed: ") + e.what();
    }
  } else {
    mc.cuda_status = err != 0 ? std::string("unavailable: ") + moe_cuda_error_name(err) : "no device";
    std::printf("cuda: SKIP (%s)\n", mc.cuda_status.c_str());
  }
#else
  std::printf("cuda: SKIP (built without CUDA)\n");
#endif

  if (!cuda_only) {
    bench_cpu();
    bench_cpu_packed();
  }

  if (!json_path.empty()) {
    if (!write_json(json_path, mc)) {
      std::fprintf(stderr, "moe-native bench: cannot write %s\n", json_path.c_str());
      return 1;
    }
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}

}  // namespace moe::native
