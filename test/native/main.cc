// moe-native: the op tests and kernel timings of moe-offload without Node (how the CUDA kernels are checked on a
// GPU host). Subcommands:
//   moe-native info                      CPU tiers, CUDA driver/runtime, devices (or why CUDA is unavailable)
//   moe-native test [--filter SUBSTR]... table-driven op tests on every backend (harness.h); exit 1 on failure
//   moe-native bench [--json PATH] [--cuda-only]  kernel timings with roofline fractions (bench/native/bench.cc)
//   moe-native bench-moe-cuda [--json PATH]       the fused MoE FFN on the GPU at real shapes (moe_cuda_bench.cc)
// Built by CMake with -DMOE_NATIVE_TESTS=ON (scripts/native-tests.mjs). CUDA only through moe_cuda.h.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "core/isa.h"
#include "core/threadpool.h"
#if MOE_WITH_CUDA
#include "moe_cuda.h"
#endif
#include "harness.h"

namespace moe::native {
namespace {

int info_main() {
  const CpuInfo& ci = cpu_info();
  std::printf("cpu: %s\n", ci.model.c_str());
  std::printf("  logical cores: %d, thread pool: %d\n", ci.logical_cores, ThreadPool::global().size());
  std::printf("  avx2: %s, avx512: %s, avx512bf16: %s, amx: %s\n", ci.avx2 ? "yes" : "no",
              ci.avx512f ? "yes" : "no", ci.avx512bf16 ? "yes" : "no", ci.amx ? "yes" : "no");
  std::printf("  best tier: %s, cap (MOE_OFFLOAD_ISA): %s, active: %s\n", isa_name(ci.best), isa_name(ci.cap),
              isa_name(ci.active));
#if MOE_WITH_CUDA
  int drv = 0, rt = 0;
  int e_drv = moe_cuda_driver_version(&drv);
  int e_rt = moe_cuda_runtime_version(&rt);
  std::printf("cuda: built in, runtime %d.%d%s, driver %d.%d%s\n", rt / 1000, (rt % 1000) / 10,
              e_rt ? " (query failed)" : "", drv / 1000, (drv % 1000) / 10,
              e_drv ? (std::string(" (") + moe_cuda_error_name(e_drv) + ")").c_str() : "");
  int count = 0;
  int err = moe_cuda_device_count(&count);
  if (err != 0) {
    std::printf("  CUDA unavailable: %s (%s)\n", moe_cuda_error_name(err), moe_cuda_error_string(err));
    return 0;
  }
  std::printf("  devices: %d\n", count);
  for (int d = 0; d < count; d++) {
    MoeCudaDeviceInfo info;
    err = moe_cuda_device_info(d, &info);
    if (err != 0) {
      std::printf("  [%d] device_info failed: %s\n", d, moe_cuda_error_name(err));
      continue;
    }
    size_t free_b = 0, total_b = 0;
    if (moe_cuda_mem_info(d, &free_b, &total_b) != 0) free_b = 0;
    std::printf("  [%d] %s, cc %d.%d, %d SMs, %.1f GiB (%.1f GiB free), clock %d MHz, bus %d bits, L2 %d MiB, "
                "pci bus %d, copy engines %d, map host memory %s\n",
                d, info.name, info.major, info.minor, info.sm_count, info.total_memory / 1073741824.0,
                free_b / 1073741824.0, info.clock_khz / 1000, info.memory_bus_width_bits,
                info.l2_bytes >> 20, info.pci_bus_id, info.concurrent_copy_engines,
                info.can_map_host_memory ? "yes" : "no");
  }
#else
  std::printf("cuda: not built (configured with MOE_CUDA=OFF or no CUDA compiler found)\n");
#endif
  return 0;
}

void usage() {
  std::fprintf(stderr,
               "usage: moe-native info\n"
               "       moe-native test [--filter SUBSTR]...\n"
               "       moe-native bench [--json PATH]\n"
               "       moe-native bench-attention [--json PATH] [--quick]\n"
               "       moe-native bench-gemv [--isa TIER] [--runs N] [--json PATH]\n"
               "       moe-native bench-moe-cuda [--json PATH] [--quick] [--once] [--models a,b] [--t T1,T2]\n");
}

}  // namespace
}  // namespace moe::native

int main(int argc, char** argv) {
  using namespace moe::native;
  if (argc < 2) {
    usage();
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "info") return info_main();
    if (cmd == "test") return test_main(argc - 2, argv + 2);
    if (cmd == "bench") return bench_main(argc - 2, argv + 2);
    if (cmd == "bench-attention") return attention_bench_main(argc - 2, argv + 2);
    if (cmd == "bench-gemv") return gemv_bench_main(argc - 2, argv + 2);
    if (cmd == "bench-moe-cuda") return moe_cuda_bench_main(argc - 2, argv + 2);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-native %s: %s\n", cmd.c_str(), e.what());
    return 1;
  }
  usage();
  return 2;
}
