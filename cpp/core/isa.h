// CPU feature detection and ISA tiers. Kernels are compiled per tier with __attribute__((target(...)))
// (MOE_TARGET_* below) inside ordinary translation units, never with -march=native, and the tier is chosen at
// run time from cpuid. MOE_OFFLOAD_ISA=scalar|avx2|avx512|avx512bf16 caps the tier (so CI covers every path).
//
// Rule for code under a MOE_TARGET_* attribute: call only intrinsics and other functions with the same (or a
// lower) target; no std:: templates inside (their out-of-line copies would be shared with baseline code).
#pragma once
#include <string>

namespace moe {

// Ordered: a higher tier implies every lower one.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3 };

inline const char* isa_name(Isa i) {
  switch (i) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Bf16: return "avx512bf16";
  }
  return "scalar";
}

struct CpuInfo {
  std::string model;         // e.g. "AMD EPYC 9554 64-Core Processor" (from /proc/cpuinfo or cpuid brand string)
  int logical_cores = 1;     // usable by this process (sched_getaffinity)
  bool avx2 = false;         // avx2 + fma + f16c, with OS support for YMM state
  bool avx512f = false;      // avx512 f+bw+vl+dq, with OS support for ZMM state
  bool avx512bf16 = false;   // avx512_bf16 (vdpbf16ps, vcvtne2ps2bf16)
  bool amx = false;          // amx-tile + amx-bf16, with OS support (XTILEDATA)
  Isa best = Isa::Scalar;    // best tier this CPU supports
  Isa cap = Isa::Avx512Bf16; // from MOE_OFFLOAD_ISA (Avx512Bf16 when unset)
  Isa active = Isa::Scalar;  // min(best, cap): the default tier
};

// Detected once (thread-safe), cached.
const CpuInfo& cpu_info();

// Parses "scalar" | "avx2" | "avx512" | "avx512bf16"; returns false on anything else.
bool parse_isa(const std::string& s, Isa* out);

// min(requested, cpu_info().best): a request above what the CPU has is lowered, never trusted.
inline Isa clamp_isa(Isa requested) {
  Isa best = cpu_info().best;
  return static_cast<int>(requested) < static_cast<int>(best) ? requested : best;
}

// The tier a kernel with AVX-512F, AVX2 and scalar paths (none of its own for AVX512_BF16: argmax_rows, sample_rows,
// pack_weights) runs for `requested` on this CPU: clamp_isa, with avx512bf16 run as avx512.
inline Isa vector_tier(Isa requested) {
  const Isa t = clamp_isa(requested);
  return t == Isa::Avx512Bf16 ? Isa::Avx512 : t;
}

}  // namespace moe

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOE_X86 1
#define MOE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define MOE_TARGET_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
#define MOE_TARGET_AVX512BF16 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#else
#define MOE_X86 0
#endif
