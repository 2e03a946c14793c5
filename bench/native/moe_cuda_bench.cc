// `moe-native bench-moe-cuda [--json PATH] [--quick] [--once] [--models a,b] [--t T1,T2]`: moe_cuda_moe_experts
// (the fused MoE FFN on the GPU: align, GEMM1 + SwiGLU, GEMM2, combine) at issue 3's shapes: Mixtral-8x7B,
// Qwen3-30B-A3B, DeepSeek-V2-Lite and OLMoE expert dimensions at T in {1, 8, 64, 512, 4096, 16384} tokens.
//   routing:  token t's k experts drawn without replacement from a splitmix64 stream seeded with T * 131 + E
//             (bench/moe_cuda_torch.py draws the same ids for the PyTorch baseline), weights uniform, normalized;
//   weights:  random bf16 (uniform +-0.05), x uniform +-1: never constant data (METHOD: zeros run faster);
//   timing:   CUDA events on one stream, 1 warm-up, median of 3..20 runs (about 1.5 s per row), L2 flushed (a
//             256 MiB memset) before each run, so decode rows read their weights from HBM;
//   limits in the same run: a 512 MiB device-to-device copy (bytes read + written / time: the HBM roofline) and
//             moe_cuda_gemm bf16 8192^3 (this project's dense kernel; the cuBLAS rate comes from the PyTorch script).
// Each row: ms, TFLOP/s of the routed work (2 * T * k * 3 * H * I), weight GB/s (distinct experts touched *
// 3 * H * I * 2 bytes / time) and its fraction of the copy bandwidth. MOE_CUDA_MOE=simt is recorded as the path.
// --once: one timed run per row without warm-up, for a profiler (`ncu --clock-control none ... bench-moe-cuda --once
// --models Qwen3 --t 16384`: each kernel of the call launched once); --t picks the token counts.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "cuda_util.h"
#include "ref.h"

namespace moe::native {

#if MOE_WITH_CUDA
namespace {

struct MoeShape {
  const char* model;
  int64_t h, inter, e, k;
};

constexpr MoeShape kShapes[] = {
    {"Mixtral-8x7B", 4096, 14336, 8, 2},
    {"Qwen3-30B-A3B", 2048, 768, 128, 8},
    {"DeepSeek-V2-Lite", 2048, 1408, 64, 6},
    {"OLMoE-1B-7B", 2048, 1024, 64, 8},
};

struct Row {
  std::string model;
  int64_t h, inter, e, k, t;
  double ms, tflops, weight_gbs, frac_copy_bw;
  int experts_touched, runs;
};

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Token t's experts: k distinct ids drawn from the seeded stream (rejection of repeats); weights r / sum(r).
void routing(int64_t t, int64_t e, int64_t k, std::vector<int32_t>& ids, std::vector<float>& w) {
  Rng rng(static_cast<uint64_t>(t) * 131u + static_cast<uint64_t>(e));
  ids.assign(static_cast<size_t>(t * k), 0);
  w.assign(static_cast<size_t>(t * k), 0.0f);
  for (int64_t i = 0; i < t; ++i) {
    double sum = 0;
    for (int64_t j = 0; j < k; ++j) {
      int32_t x;
      bool again;
      do {
        x = static_cast<int32_t>(rng.next() % static_cast<uint64_t>(e));
        again = false;
        for (int64_t q = 0; q < j; ++q) again = again || ids[i * k + q] == x;
      } while (again);
      ids[i * k + j] = x;
      const double r = 0.05 + 0.95 * (0.5 * rng.uniform() + 0.5);
      w[i * k + j] = static_cast<float>(r);
      sum += r;
    }
    for (int64_t j = 0; j < k; ++j) w[i * k + j] = static_cast<float>(w[i * k + j] / sum);
  }
}

struct Timer {
  int dev;
  const Stream& s;
  DeviceBuffer& flush;
  void* e0 = nullptr;
  void* e1 = nullptr;
  Timer(int d, const Stream& st, DeviceBuffer& f) : dev(d), s(st), flush(f) {
    cuda_check(moe_cuda_event_create(dev, 1, &e0), "event_create");
    cuda_check(moe_cuda_event_create(dev, 1, &e1), "event_create");
  }
  ~Timer() {
    moe_cuda_event_destroy(dev, e0);
    moe_cuda_event_destroy(dev, e1);
  }
  double once_ms(const std::function<int()>& fn) { return run_ms(fn, 0); }
  double run_ms(const std::function<int()>& fn, int i) {
    cuda_check(moe_cuda_memset_async(dev, flush.get(), i & 0xff, flush.size(), s.get()), "L2 flush");
    cuda_check(moe_cuda_event_record(dev, e0, s.get()), "event_record");
    cuda_check(fn(), "timed launch");
    cuda_check(moe_cuda_event_record(dev, e1, s.get()), "event_record");
    cuda_check(moe_cuda_event_synchronize(dev, e1), "event_synchronize");
    float ms = 0;
    cuda_check(moe_cuda_event_elapsed_ms(&ms, e0, e1), "event_elapsed");
    return ms;
  }
  bool once = false;  // --once: one timed run, no warm-up (under a profiler: each kernel launched once per row)
  // 1 warm-up, then runs until >= 3 and about budget_ms of timed work, at most 20; median.
  double median_ms(const std::function<int()>& fn, double budget_ms, int* runs_out) {
    if (once) {
      *runs_out = 1;
      return this->once_ms(fn);
    }
    cuda_check(fn(), "warm-up launch");
    s.sync();
    std::vector<double> t;
    double spent = 0;
    while (t.size() < 20 && (t.size() < 3 || spent < budget_ms)) {
      t.push_back(run_ms(fn, static_cast<int>(t.size())));
      spent += t.back();
    }
    *runs_out = static_cast<int>(t.size());
    return median_of(t);
  }
};

// Fills dst (bytes, even) with copies of a random device pool.
void fill_random(int dev, const Stream& s, const DeviceBuffer& pool, char* dst, size_t bytes) {
  for (size_t off = 0; off < bytes; off += pool.size()) {
    const size_t n = std::min(pool.size(), bytes - off);
    cuda_check(moe_cuda_memcpy_async(dev, dst + off, pool.get(), n, s.get()), "fill");
  }
}

std::string json_str(const std::string& s) {
  std::string r = "\"";
  for (char c : s) r += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return r + "\"";
}

}  // namespace

int moe_cuda_bench_main(int argc, char** argv) {
  std::string json_path, models;
  bool quick = false, once = false;
  std::vector<int64_t> ts_arg;
  for (int i = 0; i < argc; i++) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) json_path = argv[++i];
    else if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--once") == 0) once = true;
    else if (std::strcmp(argv[i], "--models") == 0 && i + 1 < argc) models = argv[++i];
    else if (std::strcmp(argv[i], "--t") == 0 && i + 1 < argc) {
      for (const char* p = argv[++i]; *p != '\0';) {
        char* end = nullptr;
        const long long v = std::strtoll(p, &end, 10);
        if (end == p || v < 1) {
          std::fprintf(stderr, "moe-native bench-moe-cuda: --t takes token counts like 4096,16384\n");
          return 2;
        }
        ts_arg.push_back(v);
        p = *end == ',' ? end + 1 : end;
      }
    } else {
      std::fprintf(stderr, "moe-native bench-moe-cuda: unknown argument '%s' (usage: [--json PATH] [--quick] "
                           "[--once] [--models a,b] [--t T1,T2])\n", argv[i]);
      return 2;
    }
  }
  int count = 0;
  if (moe_cuda_device_count(&count) != 0 || count == 0) {
    std::printf("bench-moe-cuda: SKIP (no CUDA device)\n");
    return 0;
  }
  const int dev = 0;
  MoeCudaDeviceInfo info{};
  cuda_check(moe_cuda_device_info(dev, &info), "device_info");
  int drv = 0, rt = 0;
  moe_cuda_driver_version(&drv);
  moe_cuda_runtime_version(&rt);
  const char* path_env = std::getenv("MOE_CUDA_MOE");
  const std::string path = path_env != nullptr && *path_env ? path_env : "default";
  std::printf("bench-moe-cuda: %s, cc %d.%d, %d SMs, driver %d, runtime %d, path %s\n", info.name, info.major,
              info.minor, info.sm_count, drv, rt, path.c_str());

  Stream s(dev);
  DeviceBuffer flush(dev, 256u << 20);
  Timer timer(dev, s, flush);
  timer.once = once;

  // Random pool: 64 MiB of bf16 uniform +-0.05 (weights); x gets its own values.
  const size_t pool_elems = 32u << 20;
  DeviceBuffer pool(dev, pool_elems * 2);
  {
    Rng rng(42);
    std::vector<uint16_t> h = rng.bf16s(pool_elems, 0.05);
    copy_sync(s, pool.get(), h.data(), h.size() * 2);
  }

  // Limits: device copy bandwidth, our dense GEMM rate.
  double copy_gbs = 0, gemm_tflops = 0;
  {
    const size_t bytes = 512u << 20;
    DeviceBuffer a(dev, bytes), b(dev, bytes);
    fill_random(dev, s, pool, a.bytes_ptr(), bytes);
    int runs = 0;
    const double ms = timer.median_ms([&] { return moe_cuda_memcpy_async(dev, b.get(), a.get(), bytes, s.get()); },
                                      300, &runs);
    copy_gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
    const int64_t n = 8192;
    DeviceBuffer ga(dev, n * n * 2), gb(dev, n * n * 2), go(dev, n * n * 2);
    fill_random(dev, s, pool, ga.bytes_ptr(), n * n * 2);
    fill_random(dev, s, pool, gb.bytes_ptr(), n * n * 2);
    const double gms = timer.median_ms(
        [&] { return moe_cuda_gemm(dev, ga.get(), gb.get(), go.get(), 2, 2, n, n, n, n, n, n, s.get()); }, 300, &runs);
    gemm_tflops = 2.0 * n * n * n / (gms * 1e-3) / 1e12;
    std::printf("limits: device copy %.0f GB/s (read + write), moe_cuda_gemm bf16 8192^3 %.1f TFLOP/s\n", copy_gbs,
                gemm_tflops);
  }

  std::vector<int64_t> ts = quick ? std::vector<int64_t>{1, 64, 4096}
                                  : std::vector<int64_t>{1, 8, 64, 512, 4096, 16384};
  if (!ts_arg.empty()) ts = ts_arg;
  std::sort(ts.begin(), ts.end());  // the buffers are sized by the largest
  std::vector<Row> rows;
  std::printf("%-18s %6s %10s %9s %10s %8s %5s\n", "model", "T", "ms", "TFLOP/s", "weight GB/s", "of copy", "runs");
  for (const MoeShape& sh : kShapes) {
    if (!models.empty() && models.find(sh.model) == std::string::npos) continue;
    const size_t mat = static_cast<size_t>(sh.h * sh.inter);  // elements of one matrix
    DeviceBuffer w(dev, static_cast<size_t>(sh.e) * 3 * mat * 2);
    fill_random(dev, s, pool, w.bytes_ptr(), w.size());
    std::vector<const void*> gate(sh.e), up(sh.e), down(sh.e);
    for (int64_t x = 0; x < sh.e; ++x) {
      gate[x] = w.bytes_ptr() + (3 * x + 0) * mat * 2;
      up[x] = w.bytes_ptr() + (3 * x + 1) * mat * 2;
      down[x] = w.bytes_ptr() + (3 * x + 2) * mat * 2;
    }
    const int64_t tmax = ts.back();
    DeviceBuffer dx(dev, tmax * sh.h * 2), dout(dev, tmax * sh.h * 2);
    DeviceBuffer dids(dev, tmax * sh.k * 4), dw(dev, tmax * sh.k * 4);
    {
      Rng rng(7);
      std::vector<uint16_t> hx = rng.bf16s(static_cast<size_t>(tmax * sh.h), 1.0);
      copy_sync(s, dx.get(), hx.data(), hx.size() * 2);
    }
    for (int64_t t : ts) {
      std::vector<int32_t> ids;
      std::vector<float> wt;
      routing(t, sh.e, sh.k, ids, wt);
      copy_sync(s, dids.get(), ids.data(), ids.size() * 4);
      copy_sync(s, dw.get(), wt.data(), wt.size() * 4);
      std::vector<char> touched(sh.e, 0);
      for (int32_t x : ids) touched[x] = 1;
      const int n_touched = static_cast<int>(std::count(touched.begin(), touched.end(), 1));
      int runs = 0;
      const double ms = timer.median_ms(
          [&] {
            return moe_cuda_moe_experts(dev, dx.get(), static_cast<const int32_t*>(dids.get()),
                                        static_cast<const float*>(dw.get()), gate.data(), up.data(), down.data(),
                                        dout.get(), t, sh.h, sh.inter, sh.e, sh.k, nullptr, s.get());
          },
          1500, &runs);
      Row r{sh.model, sh.h, sh.inter, sh.e, sh.k, t, ms, 0, 0, 0, n_touched, runs};
      r.tflops = 2.0 * t * sh.k * 3.0 * sh.h * sh.inter / (ms * 1e-3) / 1e12;
      r.weight_gbs = n_touched * 3.0 * sh.h * sh.inter * 2 / (ms * 1e-3) / 1e9;
      r.frac_copy_bw = r.weight_gbs / copy_gbs;
      std::printf("%-18s %6lld %10.4f %9.2f %10.1f %7.1f%% %5d\n", sh.model, static_cast<long long>(t), ms, r.tflops,
                  r.weight_gbs, 100 * r.frac_copy_bw, runs);
      std::fflush(stdout);
      rows.push_back(r);
    }
  }

  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "bench-moe-cuda: cannot write %s\n", json_path.c_str());
      return 1;
    }
    char date[32];
    std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    std::fprintf(f, "{\n  \"bench\": \"moe-cuda\",\n  \"date\": \"%s\",\n  \"path\": %s,\n", date,
                 json_str(path).c_str());
    std::fprintf(f, "  \"gpu\": {\"name\": %s, \"cc\": \"%d.%d\", \"sms\": %d, \"driver\": %d, \"runtime\": %d},\n",
                 json_str(info.name).c_str(), info.major, info.minor, info.sm_count, drv, rt);
    std::fprintf(f, "  \"limits\": {\"device_copy_gbs\": %.1f, \"moe_cuda_gemm_8192_tflops\": %.2f},\n", copy_gbs,
                 gemm_tflops);
    std::fprintf(f, "  \"rows\": [\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::fprintf(f,
                   "    {\"model\": %s, \"h\": %lld, \"inter\": %lld, \"e\": %lld, \"k\": %lld, \"t\": %lld, "
                   "\"ms\": %.5f, \"tflops\": %.3f, \"weight_gbs\": %.1f, \"frac_copy_bw\": %.4f, "
                   "\"experts_touched\": %d, \"runs\": %d}%s\n",
                   json_str(r.model).c_str(), static_cast<long long>(r.h), static_cast<long long>(r.inter),
                   static_cast<long long>(r.e), static_cast<long long>(r.k), static_cast<long long>(r.t), r.ms,
                   r.tflops, r.weight_gbs, r.frac_copy_bw, r.experts_touched, r.runs, i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}
#else
int moe_cuda_bench_main(int, char**) {
  std::printf("bench-moe-cuda: SKIP (built without CUDA)\n");
  return 0;
}
#endif

}  // namespace moe::native
