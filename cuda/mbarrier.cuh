// Shared-memory mbarriers (sm_90+: the TMA kernels of moe_experts_wgmma_tma.cuh). Below sm_90 the wrappers are empty:
// their launchers never select those kernels there (each kernel also traps there).
#pragma once
#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MOE_MBAR_ENABLED 1
#else
#define MOE_MBAR_ENABLED 0
#endif

namespace moe {
namespace dev {

__device__ __forceinline__ void moe_mbar_init(uint32_t bar, uint32_t count) {
#if MOE_MBAR_ENABLED
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
// Makes the mbarrier inits visible to the other threads and the async proxy (before the CTA barrier that follows).
__device__ __forceinline__ void moe_mbar_init_fence() {
#if MOE_MBAR_ENABLED
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// One arrival that also expects `bytes` more transaction bytes in the current phase (the phase's total must stay
// under 2^20 bytes).
__device__ __forceinline__ void moe_mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if MOE_MBAR_ENABLED
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
// Waits until the phase of parity `parity` of the mbarrier completed; traps after 2^24 unsuccessful polls (each
// try_wait suspends up to a hardware time limit: seconds in all), so a wrong byte count fails instead of hanging the
// GPU. The loop is in PTX (a counter and two predicates): the compiler need not wait for in-flight wgmma
// accumulators around it.
__device__ __forceinline__ void moe_mbar_wait(uint32_t bar, uint32_t parity) {
#if MOE_MBAR_ENABLED
  asm volatile(
      "{\n"
      ".reg .pred p, q;\n"
      ".reg .u32 n;\n"
      "mov.u32 n, 0;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra DONE;\n"
      "add.u32 n, n, 1;\n"
      "setp.lt.u32 q, n, 16777216;\n"
      "@q bra WAIT;\n"
      "trap;\n"
      "DONE:\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}

}  // namespace dev
}  // namespace moe
