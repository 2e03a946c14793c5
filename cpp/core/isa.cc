// CPU feature detection for the run-time choice of kernel tier (isa.h). Reads cpuid directly, and xgetbv for
// whether the OS saves the YMM/ZMM/AMX register state: __builtin_cpu_supports alone says what the silicon has, not
// whether the kernel enabled it (a VM or a kernel booted without AVX-512 state makes those instructions fault).
// Detected once, on first use, and cached; MOE_OFFLOAD_ISA caps the default tier so CI can run every path.
#include "isa.h"

#if defined(__linux__)
#include <sched.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#if MOE_X86
#include <cpuid.h>
#endif

namespace moe {

bool parse_isa(const std::string& s, Isa* out) {
  Isa v;
  if (s == "scalar") {
    v = Isa::Scalar;
  } else if (s == "avx2") {
    v = Isa::Avx2;
  } else if (s == "avx512") {
    v = Isa::Avx512;
  } else if (s == "avx512bf16") {
    v = Isa::Avx512Bf16;
  } else {
    return false;
  }
  if (out != nullptr) *out = v;
  return true;
}

namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return std::string();
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// First "model name" line of /proc/cpuinfo (x86; empty elsewhere or when unreadable).
std::string proc_model_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.compare(0, 10, "model name") != 0) continue;
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    return trim(line.substr(colon + 1));
  }
  return std::string();
}

// Cores this process may run on (a container's cpuset or taskset counts, not the machine's total).
int usable_cores() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

#if MOE_X86
uint64_t read_xcr0() {
  uint32_t lo = 0, hi = 0;
  // xgetbv with ecx = 0 reads XCR0; only valid when cpuid reports OSXSAVE (checked by the caller).
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

std::string cpuid_brand() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(0x80000000u, &a, &b, &c, &d) == 0 || a < 0x80000004u) return std::string();
  char brand[49] = {0};
  for (unsigned i = 0; i < 3; ++i) {
    unsigned r[4] = {0, 0, 0, 0};
    __get_cpuid(0x80000002u + i, &r[0], &r[1], &r[2], &r[3]);
    std::memcpy(brand + 16 * i, r, 16);
  }
  return trim(brand);
}

void detect_x86(CpuInfo* info) {
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 1) return;
  unsigned a = 0, b = 0, c = 0, d = 0;
  __get_cpuid_count(1, 0, &a, &b, &c, &d);
  const bool fma = (c >> 12) & 1u;
  const bool osxsave = (c >> 27) & 1u;
  const bool avx = (c >> 28) & 1u;
  const bool f16c = (c >> 29) & 1u;

  uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  const bool os_ymm = (xcr0 & 0x6u) == 0x6u;     // SSE + AVX state
  const bool os_zmm = (xcr0 & 0xe6u) == 0xe6u;   // + opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = (xcr0 & 0x60000u) == 0x60000u;  // XTILECFG + XTILEDATA

  bool avx2 = false, avx512f = false, avx512dq = false, avx512bw = false, avx512vl = false;
  bool avx512bf16 = false, amx_tile = false, amx_bf16 = false;
  if (max_leaf >= 7) {
    __get_cpuid_count(7, 0, &a, &b, &c, &d);
    const unsigned max_sub = a;
    avx2 = (b >> 5) & 1u;
    avx512f = (b >> 16) & 1u;
    avx512dq = (b >> 17) & 1u;
    avx512bw = (b >> 30) & 1u;
    avx512vl = (b >> 31) & 1u;
    amx_bf16 = (d >> 22) & 1u;
    amx_tile = (d >> 24) & 1u;
    if (max_sub >= 1) {
      __get_cpuid_count(7, 1, &a, &b, &c, &d);
      avx512bf16 = (a >> 5) & 1u;
    }
  }

  info->avx2 = avx && avx2 && fma && f16c && os_ymm;
  info->avx512f = info->avx2 && avx512f && avx512bw && avx512vl && avx512dq && os_zmm;
  info->avx512bf16 = info->avx512f && avx512bf16;
  // Linux additionally wants arch_prctl(ARCH_REQ_XCOMP_PERM) before the first tile instruction; whoever adds
  // AMX kernels must request it. Here we only report that the CPU and the OS state allow it.
  info->amx = amx_tile && amx_bf16 && os_amx;
}
#endif

CpuInfo detect() {
  CpuInfo info;
  info.model = proc_model_name();
#if MOE_X86
  if (info.model.empty()) info.model = cpuid_brand();
  detect_x86(&info);
#endif
  if (info.model.empty()) info.model = "unknown";
  info.logical_cores = usable_cores();

  info.best = Isa::Scalar;
  if (info.avx2) info.best = Isa::Avx2;
  if (info.avx512f) info.best = Isa::Avx512;
  if (info.avx512bf16) info.best = Isa::Avx512Bf16;

  // An unset or unrecognised MOE_OFFLOAD_ISA means no cap (an invalid value is ignored, silently).
  info.cap = Isa::Avx512Bf16;
  if (const char* env = std::getenv("MOE_OFFLOAD_ISA")) {
    Isa cap;
    if (parse_isa(trim(env), &cap)) info.cap = cap;
  }
  info.active = static_cast<int>(info.cap) < static_cast<int>(info.best) ? info.cap : info.best;
  return info;
}

}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();  // C++11 guarantees thread-safe one-time initialisation
  return info;
}

}  // namespace moe
