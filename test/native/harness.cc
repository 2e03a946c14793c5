// Backend detection, case runner and result printing of the op tests (see harness.h).
#include "harness.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>

#include "core/error.h"
#include "cuda_util.h"

namespace moe::native {

std::string fmt(double v, const char* spec) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), spec, v);
  return buf;
}

namespace {

Backend cpu_backend(Isa isa) {
  Backend b;
  b.name = std::string("cpu-") + isa_name(isa);
  b.kind = BackendKind::Cpu;
  b.isa = isa;
  const CpuInfo& ci = cpu_info();
  b.available = static_cast<int>(isa) <= static_cast<int>(ci.best);
  if (!b.available) b.reason = std::string("CPU lacks ") + isa_name(isa) + " (best tier: " + isa_name(ci.best) + ")";
  return b;
}

Backend cuda_backend() {
  Backend b;
  b.name = "cuda";
  b.kind = BackendKind::Cuda;
  b.isa = Isa::Scalar;
  b.available = false;
#if MOE_WITH_CUDA
  int count = 0;
  int err = moe_cuda_device_count(&count);
  if (err != 0) {
    b.reason = std::string("CUDA unavailable: ") + moe_cuda_error_name(err) + " (" + moe_cuda_error_string(err) + ")";
  } else if (count == 0) {
    b.reason = "CUDA unavailable: no device";
  } else {
    // One stream for all cases, alive until exit (the OS reclaims it).
    void* s = nullptr;
    err = moe_cuda_stream_create(0, 0, &s);
    if (err != 0) {
      b.reason = std::string("moe_cuda_stream_create failed: ") + moe_cuda_error_name(err);
    } else {
      b.available = true;
      b.device = 0;
      b.stream = s;
    }
  }
#else
  b.reason = "built without CUDA (MOE_WITH_CUDA=0)";
#endif
  return b;
}

const char* status_word(Status s) {
  switch (s) {
    case Status::Pass: return "PASS";
    case Status::Fail: return "FAIL";
    case Status::Skip: return "SKIP";
  }
  return "FAIL";
}

}  // namespace

const std::vector<Backend>& backends() {
  static const std::vector<Backend> list = [] {
    std::vector<Backend> v;
    v.push_back(cpu_backend(Isa::Scalar));
    v.push_back(cpu_backend(Isa::Avx2));
    v.push_back(cpu_backend(Isa::Avx512));
    v.push_back(cpu_backend(Isa::Avx512Bf16));
    v.push_back(cuda_backend());
    return v;
  }();
  return list;
}

int run_cases(const std::vector<Case>& cases, const std::vector<std::string>& filters) {
  int passed = 0, failed = 0, skipped = 0;
  for (const Case& c : cases) {
    for (const Backend& b : backends()) {
      if (c.cuda_only && b.kind != BackendKind::Cuda) continue;
      std::string line = c.op + " " + c.shape + " " + b.name;
      if (std::any_of(filters.begin(), filters.end(), [&](const std::string& f) { return line.find(f) == std::string::npos; }))
        continue;
      Outcome o;
      if (!b.available) {
        o = Outcome::skip(b.reason);
      } else {
        try {
          o = c.run(b);
        } catch (const moe::Error& e) {
          o = Outcome::fail(std::string("threw ") + error_code_string(e.code()) + ": " + e.what());
        } catch (const std::exception& e) {
          o = Outcome::fail(std::string("threw: ") + e.what());
        }
      }
      switch (o.status) {
        case Status::Pass: passed++; break;
        case Status::Fail: failed++; break;
        case Status::Skip: skipped++; break;
      }
      std::printf("%s %s %s\n", status_word(o.status), line.c_str(), o.detail.c_str());
      std::fflush(stdout);
    }
  }
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed;
}

int test_main(int argc, char** argv) {
  std::vector<std::string> filters;  // a case runs when its line holds every one
  for (int i = 0; i < argc; i++) {
    if (std::strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
      filters.emplace_back(argv[++i]);
    } else if (std::strncmp(argv[i], "--filter=", 9) == 0) {
      filters.emplace_back(argv[i] + 9);
    } else {
      std::fprintf(stderr, "moe-native test: unknown argument '%s' (usage: moe-native test [--filter SUBSTR]...)\n",
                   argv[i]);
      return 2;
    }
  }
  std::vector<Case> cases;
  add_copy_cases(cases);
  add_convert_cases(cases);
  add_add_cases(cases);
  add_gemm_cases(cases);
  add_attention_cases(cases);
  add_moe_cases(cases);
  add_moe_oai_cases(cases);
  add_grouped_gemm_cases(cases);
  add_gather_cases(cases);
  add_argmax_cases(cases);
  add_pack_cases(cases);
  add_rms_norm_cases(cases);
  add_gemv_cases(cases);
  add_read_probe_cases(cases);
  add_dot_probe_cases(cases);
  add_threadpool_cases(cases);
  add_moe_invariance_cases(cases);
  add_moe_parts_cases(cases);
  add_api_cases(cases);
  return run_cases(cases, filters) > 0 ? 1 : 0;
}

}  // namespace moe::native
