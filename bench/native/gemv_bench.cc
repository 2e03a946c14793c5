// `moe-native bench-gemv [--isa TIER] [--runs N] [--json PATH]`: decode-shaped dense GEMMs (small m, cpu/gemm.h)
// as weight streaming: GB/s of b read (n * k * bytes per call / time) against cpu::read_probe (cpp/cpu/read_probe.h,
// the probe bench/moe.ts and bench/model.ts use: one multithreaded f32 sum over 512 MiB of 1.0f) measured in the
// same run: one probe pass right after every timed call, and the fraction reported is the median over the calls of
// (call GB/s / the next probe's GB/s). The memory bandwidth of the shared development VM drifts by 2x within
// minutes (probe passes from 15 to 40 GB/s), so only such adjacent pairs compare.
// Shapes: Mixtral gate/up rows [1|2, 4096] x [14336, 4096], the Qwen LM head [1, 2048] x [151936, 2048], the
// Llama/Mistral LM head [1, 4096] x [32000, 4096], an attention projection [1, 2048] x [4096, 2048] and a batch of
// 4 tokens [4, 4096] x [4096, 4096]; bf16 a and b, f32 out (plus bf16 out and f32 a/b on one shape each).
// Every buffer is malloc'd like a JS ArrayBuffer (no huge-page madvise) and filled with non-zero values. Before
// every timed call a 96 MiB buffer is read, so that b (up to 33 MiB here) never starts in the 32 MiB L3: a decode
// step streams every weight once. Timing: steady_clock, 1 warm-up, median of --runs (default 7) calls. --sweep:
// m = 1..16 on [m, 4096] x [8192, 4096] and [m, 2048] x [16384, 2048] instead (where the streaming path ends).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/isa.h"
#include "core/threadpool.h"
#include "cpu/gemm.h"
#include "cpu/read_probe.h"
#include "harness.h"

namespace moe::native {
namespace {

struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t b) : bytes((b + 63) / 64 * 64) {
    p = std::aligned_alloc(64, bytes);
    if (p == nullptr) throw std::bad_alloc();
  }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

volatile double g_sink;

struct Probe {
  Buf buf{size_t{512} << 20};  // [128 Mi] f32
  std::vector<double> gbs;
  Probe() {
    float* f = buf.as<float>();
    for (size_t i = 0; i < buf.bytes / 4; ++i) f[i] = 1.0f;
  }
  void run(int passes) {
    for (int i = 0; i < passes; ++i) {
      const double t0 = now_s();
      g_sink = cpu::read_probe(buf.as<float>(), buf.bytes / 4);
      gbs.push_back(static_cast<double>(buf.bytes) / (now_s() - t0) / 1e9);
    }
  }
};

struct Shape {
  int64_t m, n, k;
  DType ab, out;
};

std::string shape_name(const Shape& s) {
  return "[" + std::to_string(s.m) + "," + std::to_string(s.k) + "]x[" + std::to_string(s.n) + "," +
         std::to_string(s.k) + "] " + dtype_name(s.ab) + "->" + dtype_name(s.out);
}

struct Row {
  std::string tier, shape, ran;
  double ms, gbs, frac;  // median time, b bytes / median time, median of the per-call fractions of the probe
};

}  // namespace

int gemv_bench_main(int argc, char** argv) {
  std::string json_path;
  int runs = 7;
  bool sweep = false;
  std::vector<Isa> tiers = {Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2};
  for (int i = 0; i < argc; i++) {
    const std::string a = argv[i];
    Isa t;
    if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "--runs" && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--sweep") {
      sweep = true;
    } else if (a == "--isa" && i + 1 < argc && parse_isa(argv[i + 1], &t)) {
      tiers = {t};
      ++i;
    } else {
      std::fprintf(stderr, "usage: moe-native bench-gemv [--isa scalar|avx2|avx512|avx512bf16] [--runs N] [--sweep] [--json PATH]\n");
      return 2;
    }
  }
  const CpuInfo& ci = cpu_info();
  std::printf("moe-native bench-gemv: %s, %d threads, best tier %s, %d runs per shape (median)\n", ci.model.c_str(),
              ThreadPool::global().size(), isa_name(ci.best), runs);

  std::vector<Shape> shapes = {
      {1, 14336, 4096, DType::BF16, DType::F32},  {2, 14336, 4096, DType::BF16, DType::F32},
      {1, 151936, 2048, DType::BF16, DType::F32}, {1, 32000, 4096, DType::BF16, DType::F32},
      {1, 4096, 2048, DType::BF16, DType::F32},   {4, 4096, 4096, DType::BF16, DType::F32},
      {1, 14336, 4096, DType::BF16, DType::BF16}, {1, 14336, 4096, DType::F32, DType::F32},
  };
  if (sweep) {  // m = 1..16 on two weight shapes (where the streaming path stops paying off)
    shapes.clear();
    for (int64_t k : {int64_t{4096}, int64_t{2048}})
      for (int64_t m = 1; m <= 16; m = m < 8 ? m + 1 : m + 4) shapes.push_back({m, 8192 * 4096 / k, k, DType::BF16, DType::F32});
  }
  size_t max_b = 0, max_a = 0, max_o = 0;
  for (const Shape& s : shapes) {
    max_b = std::max(max_b, static_cast<size_t>(s.n * s.k) * dtype_size(s.ab));
    max_a = std::max(max_a, static_cast<size_t>(s.m * s.k) * dtype_size(s.ab));
    max_o = std::max(max_o, static_cast<size_t>(s.m * s.n) * 4);
  }
  Probe probe;
  Buf b(max_b), a(max_a), out(max_o), flush(size_t{96} << 20);
  {
    uint32_t x = 12345;  // xorshift: values in [-0.5, 0.5), every byte of b touched and non-zero pages
    uint16_t* bb = b.as<uint16_t>();
    for (size_t i = 0; i < b.bytes / 2; ++i) {
      x ^= x << 13, x ^= x >> 17, x ^= x << 5;
      bb[i] = f32_to_bf16(static_cast<float>(x >> 8) / 16777216.0f - 0.5f);
    }
    std::memcpy(a.p, b.p, a.bytes);
    std::memset(out.p, 0, out.bytes);
    std::memset(flush.p, 1, flush.bytes);
  }
  auto flush_l3 = [&] { g_sink = cpu::read_probe(flush.as<float>(), flush.bytes / 4); };

  std::vector<Row> rows;
  for (const Shape& s : shapes) {
    const double bytes = static_cast<double>(s.n * s.k) * static_cast<double>(dtype_size(s.ab));
    for (Isa tier : tiers) {
      if (tier > ci.best) continue;
      cpu::GemmArgs g{a.p, b.p, out.p, s.ab, s.out, s.m, s.n, s.k, s.k, s.k, s.n};
      Isa ran = cpu::gemm(g, tier);  // warm-up
      std::vector<double> t, frac;
      for (int r = 0; r < runs; ++r) {
        flush_l3();
        const double t0 = now_s();
        ran = cpu::gemm(g, tier);
        t.push_back(now_s() - t0);
        probe.run(1);  // right after the call: the bandwidth of this moment (it drifts on a shared host)
        frac.push_back(bytes / t.back() / 1e9 / probe.gbs.back());
      }
      const double sec = median(t);
      rows.push_back({isa_name(tier), shape_name(s), isa_name(ran), sec * 1e3, bytes / sec / 1e9, median(frac)});
      std::printf("  %-11s %-36s %9.3f ms %7.2f GB/s of b, %.3f of the probe%s\n", isa_name(tier),
                  rows.back().shape.c_str(), rows.back().ms, rows.back().gbs, rows.back().frac,
                  ran != tier ? (std::string(" (ran ") + isa_name(ran) + ")").c_str() : "");
      std::fflush(stdout);
    }
  }
  const double pr = median(probe.gbs);
  const auto mm = std::minmax_element(probe.gbs.begin(), probe.gbs.end());
  std::printf("read probe: median %.2f GB/s over %zu passes (min %.2f, max %.2f)\n", pr, probe.gbs.size(), *mm.first,
              *mm.second);
  std::printf("%-11s %-36s %9s %9s %8s\n", "tier", "shape", "ms", "GB/s", "probe");
  for (const Row& r : rows) {
    std::printf("%-11s %-36s %9.3f %9.2f %7.3f\n", r.tier.c_str(), r.shape.c_str(), r.ms, r.gbs, r.frac);
  }
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "moe-native bench-gemv: cannot write %s\n", json_path.c_str());
      return 1;
    }
    std::fprintf(f, "{\"cpu\":\"%s\",\"threads\":%d,\"runs\":%d,\"read_probe_gbs\":%.3f,\"results\":[", ci.model.c_str(),
                 ThreadPool::global().size(), runs, pr);
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::fprintf(f, "%s{\"tier\":\"%s\",\"ran\":\"%s\",\"shape\":\"%s\",\"ms\":%.4f,\"gbs\":%.3f,\"frac_probe\":%.4f}",
                   i ? "," : "", r.tier.c_str(), r.ran.c_str(), r.shape.c_str(), r.ms, r.gbs, r.frac);
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  return 0;
}

}  // namespace moe::native
