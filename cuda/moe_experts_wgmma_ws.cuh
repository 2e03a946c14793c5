// Warp-specialised variant of the wgmma kernels of moe_experts_wgmma.cuh (opt-in MOE_CUDA_WG=ws, moe_experts.cu;
// compiled, not yet run on a GPU). Same tiles (MoeWgCfg: BM 128 x kN, BK 64, the 128B-swizzled ring), same
// epilogues and results bit for bit (each output is the same wgmma chain over k tiles in order); what changes is who
// copies and how the stages are handed over:
//   * 384 threads. Warpgroup 0 is the producer: its 128 threads issue every cp.async of a k tile (A: 8 chunks per
//     thread, B: kN / 16), lower their registers to kWsProducerRegs (setmaxnreg) and never touch the accumulators.
//     Warpgroups 1 and 2 are the consumers of the tile's two 64-row halves (as warpgroups 0 and 1 of the base kernel),
//     raised to kWsConsumerRegs.
//   * Per stage two mbarriers in shared memory. full[s]: 128 arrivals; a producer thread arrives once its copies of
//     the tile in s have landed (cp.async.wait_group) and are fenced for the async proxy (fence.proxy.async), the
//     order the base kernel keeps with __syncthreads. empty[s]: 256 arrivals; a consumer thread arrives once its
//     warpgroup's wgmma group of the tile in s is complete (wgmma.wait_group), so the producer may overwrite s.
//   * Producer: tile kt goes to stage kt % STAGES after empty[s] completed its (kt / STAGES - 1)-th phase; it keeps
//     kWsLag tiles of copies in flight before it signals full for the oldest. Consumers: wait full[s] (phase
//     kt / STAGES), 4 wgmma, commit, wait for the previous tile's group, arrive on its empty. No block-wide barrier
//     inside the k loop, so copies run ahead of the tensor cores by up to STAGES tiles.
#pragma once
#include <cstdint>

#include "moe_experts_wgmma.cuh"

namespace moe {
namespace dev {

constexpr int kWsThreads = 384;
constexpr int kWsProducerRegs = 96, kWsConsumerRegs = 200;  // 128 x 96 + 256 x 200 = 63488 <= 65536; no spills (ptxas)

__device__ __forceinline__ void moe_mbar_init(uint32_t bar, int count) {
#if MOE_WGMMA_ENABLED
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void moe_mbar_arrive(uint32_t bar) {
#if MOE_WGMMA_ENABLED
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
// Spins until the phase of `bar` with parity `parity` has completed.
__device__ __forceinline__ void moe_mbar_wait(uint32_t bar, uint32_t parity) {
#if MOE_WGMMA_ENABLED
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}
template <int N>
__device__ __forceinline__ void moe_setmaxnreg_dec() {
#if MOE_WGMMA_ENABLED
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void moe_setmaxnreg_inc() {
#if MOE_WGMMA_ENABLED
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

constexpr int kWsLag = 2;  // producer: tiles of copies in flight beyond the one it signals (<= STAGES - 2)

// The producer's k loop. copy(kt, stage): this thread's cp.async of k tile kt into the stage at shared address
// `stage` (no commit). full / empty: shared addresses of the STAGES mbarriers of each kind (8 bytes apart).
template <class C, class Copy>
__device__ __forceinline__ void moe_ws_produce(int ktiles, uint32_t ring, uint32_t full, uint32_t empty, Copy copy) {
  static_assert(kWsLag <= C::STAGES - 2, "the producer must not wait on a stage it has not signalled");
  for (int kt = 0; kt < ktiles; ++kt) {
    const int s = kt % C::STAGES;
    if (kt >= C::STAGES) moe_mbar_wait(empty + 8 * s, static_cast<uint32_t>((kt / C::STAGES - 1) & 1));
    copy(kt, C::stage_addr(ring, s));
    moe_cp_async_commit();
    if (kt >= kWsLag) {
      moe_cp_async_wait<kWsLag>();  // this thread's copies of tile kt - kWsLag landed
      moe_fence_proxy_async();
      moe_mbar_arrive(full + 8 * ((kt - kWsLag) % C::STAGES));
    }
  }
  moe_cp_async_wait<0>();
  moe_fence_proxy_async();
  for (int kt = ktiles - kWsLag < 0 ? 0 : ktiles - kWsLag; kt < ktiles; ++kt) moe_mbar_arrive(full + 8 * (kt % C::STAGES));
}

// A consumer warpgroup's k loop: acc += its 64-row half (cwg 0 or 1) of A . B^T over every k tile.
template <class C>
__device__ __forceinline__ void moe_ws_consume(float (&acc)[C::kAcc], int ktiles, int cwg, uint32_t ring, uint32_t full,
                                               uint32_t empty) {
  for (int kt = 0; kt < ktiles; ++kt) {
    const int s = kt % C::STAGES;
    moe_mbar_wait(full + 8 * s, static_cast<uint32_t>((kt / C::STAGES) & 1));
    const uint32_t stage = C::stage_addr(ring, s);
    moe_wg_fence_acc(acc);
    moe_wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < C::BK / 16; ++kk) moe_wg_mma<C>(acc, C::a_desc(stage, cwg, kk), C::b_desc(stage, kk));
    moe_wgmma_commit();
    moe_wg_fence_acc(acc);
    moe_wgmma_wait<1>();  // this warpgroup's group of tile kt - 1 is complete
    moe_wg_fence_acc(acc);
    if (kt >= 1) moe_mbar_arrive(empty + 8 * ((kt - 1) % C::STAGES));
  }
  moe_wgmma_wait<0>();
  moe_wg_fence_acc(acc);
}

// Producer copy of k tile kt for rows given by a row function: A rows a_row(r) (null: zero row), B rows b_row(r)
// (null: zero row), both already offset to column 0; K the row length. Thread ptid (0..127) takes chunk ptid % 8 of
// rows ptid / 8 + 16 i.
template <class C, class ARow, class BRow>
__device__ __forceinline__ void moe_ws_copy(int kt, uint32_t stage, int ptid, int K, const uint16_t* fallback,
                                            ARow a_row, BRow b_row) {
  const int chunk = ptid & 7, kcol = kt * C::BK + chunk * 8;
  const bool kin = kcol < K;
#pragma unroll
  for (int i = 0; i < C::BM / 16; ++i) {
    const int r = (ptid >> 3) + 16 * i;
    const uint16_t* p = a_row(r);
    const bool v = kin && p != nullptr;
    moe_cp_async16(stage + moe_mma_swz(r, chunk), v ? p + kcol : fallback, v);
  }
#pragma unroll
  for (int i = 0; i < C::kN / 16; ++i) {
    const int r = (ptid >> 3) + 16 * i;
    const uint16_t* p = b_row(r);
    const bool v = kin && p != nullptr;
    moe_cp_async16(stage + static_cast<uint32_t>(C::kABytes) + moe_mma_swz(r, chunk), v ? p + kcol : fallback, v);
  }
}

// Block setup of both kernels: the mbarriers (thread 0), then a barrier that also publishes s_slot.
template <class C>
__device__ __forceinline__ void moe_ws_init(uint32_t full, uint32_t empty) {
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < C::STAGES; ++s) {
      moe_mbar_init(full + 8 * s, 128);
      moe_mbar_init(empty + 8 * s, 256);
    }
  }
  __syncthreads();
}

// Both kernels after the tile's expert is known: the slots, the barriers, then the producer warpgroup (copies A rows
// a_row(r) and B rows b_row(r), rows of length K; fallback: any valid global address) or a consumer warpgroup (its
// half of the accumulators, then epilogue(acc, ctid), ctid the base kernels' thread index 0..255).
template <class C, class ARow, class BRow, class Epilogue>
__device__ __forceinline__ void moe_ws_body(int* s_slot, uint64_t* s_bar, const int32_t* __restrict__ sorted, int r0,
                                            int K, const uint16_t* fallback, ARow a_row, BRow b_row,
                                            Epilogue epilogue) {
  const int tid = threadIdx.x;
  for (int r = tid; r < C::BM; r += kWsThreads) s_slot[r] = sorted[r0 + r];
  const uint32_t full = static_cast<uint32_t>(__cvta_generic_to_shared(s_bar));
  const uint32_t empty = full + 8 * C::STAGES;
  moe_ws_init<C>(full, empty);  // (its barrier also publishes s_slot)
  const uint32_t ring = moe_wg_ring();
  const int ktiles = (K + C::BK - 1) / C::BK;
  if (tid < 128) {  // producer warpgroup
    moe_setmaxnreg_dec<kWsProducerRegs>();
    moe_ws_produce<C>(ktiles, ring, full, empty,
                      [&](int kt, uint32_t stage) { moe_ws_copy<C>(kt, stage, tid, K, fallback, a_row, b_row); });
    return;
  }
  moe_setmaxnreg_inc<kWsConsumerRegs>();
  const int ctid = tid - 128;
  float acc[C::kAcc];
#pragma unroll
  for (int v = 0; v < C::kAcc; ++v) acc[v] = 0.0f;
  moe_ws_consume<C>(acc, ktiles, ctid >> 7, ring, full, empty);
  epilogue(acc, ctid);
}

// GEMM1 + SwiGLU, warp-specialised. Arguments as moe_wg_gemm1_kernel; block kWsThreads.
template <class C, int kSearch>
static __global__ void __launch_bounds__(kWsThreads, 1)
    moe_wg_gemm1_ws_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ sorted,
                           const int32_t* __restrict__ offsets, const void* const* __restrict__ gate,
                           const void* const* __restrict__ up, const void* const* __restrict__ gate_bias,
                           const void* const* __restrict__ up_bias, uint16_t* __restrict__ act, int n_slots, int k,
                           int e, int h, int inter, int act_kind, float alpha, float limit, int m_tiles) {
  static_assert(C::GATED, "GEMM1 stacks gate and up");
#if MOE_WGMMA_ENABLED
  __shared__ int s_slot[C::BM];
  __shared__ __align__(8) uint64_t s_bar[2 * C::STAGES];
  int mt, nt;
  moe_wg_tile(static_cast<int>(blockIdx.x), m_tiles, (inter + C::BN - 1) / C::BN, mt, nt);
  const int r0 = mt * C::BM, n0 = nt * C::BN;
  const int ex = moe_tile_expert(offsets, e, r0, kSearch);
  if (ex < 0) return;
  const uint16_t* w_gate = static_cast<const uint16_t*>(gate[ex]);
  const uint16_t* w_up = static_cast<const uint16_t*>(up[ex]);
  if (w_gate == nullptr || w_up == nullptr) return;  // absent: its slots are skipped by the combine
  moe_ws_body<C>(
      s_slot, s_bar, sorted, r0, h, x,
      [&](int r) -> const uint16_t* {
        const int s = s_slot[r];
        return s < n_slots ? x + static_cast<int64_t>(s / k) * h : nullptr;
      },
      [&](int r) -> const uint16_t* {  // stacked tile: gate rows n0 .., then up rows n0 ..
        const bool is_up = r >= C::BN;
        const int n = n0 + r - (is_up ? C::BN : 0);
        return n < inter ? (is_up ? w_up : w_gate) + static_cast<int64_t>(n) * h : nullptr;
      },
      [&](const float (&acc)[C::kAcc], int ctid) {
        moe_wg_gemm1_epilogue<C>(acc, ctid, s_slot, r0, n0, act, n_slots, inter,
                                 gate_bias != nullptr ? static_cast<const float*>(gate_bias[ex]) : nullptr,
                                 up_bias != nullptr ? static_cast<const float*>(up_bias[ex]) : nullptr, act_kind,
                                 alpha, limit);
      });
#else
  __trap();
#endif
}

// GEMM2, warp-specialised. Arguments as moe_wg_gemm2_kernel; block kWsThreads.
template <class C, int kSearch, class PT>
static __global__ void __launch_bounds__(kWsThreads, 1)
    moe_wg_gemm2_ws_kernel(const uint16_t* __restrict__ act, const int32_t* __restrict__ sorted,
                           const int32_t* __restrict__ offsets, const void* const* __restrict__ down,
                           const void* const* __restrict__ down_bias, PT* __restrict__ part, int n_slots, int e,
                           int h, int inter, int m_tiles) {
  static_assert(!C::GATED, "GEMM2 has one B matrix");
#if MOE_WGMMA_ENABLED
  __shared__ int s_slot[C::BM];
  __shared__ __align__(8) uint64_t s_bar[2 * C::STAGES];
  int mt, nt;
  moe_wg_tile(static_cast<int>(blockIdx.x), m_tiles, (h + C::BN - 1) / C::BN, mt, nt);
  const int r0 = mt * C::BM, n0 = nt * C::BN;
  const int ex = moe_tile_expert(offsets, e, r0, kSearch);
  if (ex < 0) return;
  const uint16_t* wd = static_cast<const uint16_t*>(down[ex]);
  if (wd == nullptr) return;
  moe_ws_body<C>(
      s_slot, s_bar, sorted, r0, inter, wd,
      [&](int r) -> const uint16_t* {
        return s_slot[r] < n_slots ? act + static_cast<int64_t>(r0 + r) * inter : nullptr;
      },
      [&](int r) -> const uint16_t* {
        const int n = n0 + r;
        return n < h ? wd + static_cast<int64_t>(n) * inter : nullptr;
      },
      [&](const float (&acc)[C::kAcc], int ctid) {
        moe_wg_gemm2_epilogue<C>(acc, ctid, s_slot, n0, part, n_slots, h,
                                 down_bias != nullptr ? static_cast<const float*>(down_bias[ex]) : nullptr);
      });
#else
  __trap();
#endif
}

}  // namespace dev
}  // namespace moe
