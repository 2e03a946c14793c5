// Launchers of moe_cuda_moe_experts, _ex and _parts (C ABI in moe_cuda.h; kernels in moe_experts.cuh and
// router_topk.cuh, the combine in moe_combine.cuh). Stream-ordered, no host synchronisation: the device copy of the
// pointer table from table_cache.cuh (uploaded with cudaMemcpyAsync from the host array when this stream has not
// seen the same table recently), one cudaMallocAsync scratch block (scratch.cuh: counts, offsets, sorted slots,
// act [capacity, inter] bf16, part [t * k, h] f32, the parallel align's histograms), align ->
// GEMM1 + SwiGLU -> GEMM2 (unweighted part rows)
// -> combine (launch_moe_combine: the routing weights, the kernel moeCombine runs), then cudaFreeAsync.
// Parts mode (moe_cuda_moe_experts_parts) is the same minus the combine, GEMM2 writing the caller's parts [t * k, h]
// (rows t * k + j, the scratch layout) instead of scratch: fused == parts + moeCombine bitwise by construction.
// moe_cuda_moe_experts_ex adds the gpt-oss options (per-expert f32 biases, swiglu-oai); moe_cuda_moe_experts is it
// with neither. The table grows to 6 e pointers only when bias tables are given.
// GEMM kernels: the tensor-core ones of moe_experts_mma.cuh on sm_80+ when h and inter are multiples of 8 and x and
// every present expert's weights are 16-byte aligned, with the decode tiles (align block 16) when t * k <= 8 e and
// the large ones (align block 64) otherwise; on compute capability 9.0 (the build's sm_90a code) the wgmma kernels of
// moe_experts_wgmma.cuh (align block 128) replace the large ones when t * k >= 128 e; else the SIMT kernels of
// moe_experts.cuh. MOE_CUDA_MOE: simt forces the SIMT kernels, mma the mma.sync ones (never wgmma), wgmma uses wgmma
// wherever its preconditions hold regardless of the rows per expert (tests: small shapes through the wgmma path).
// The wgmma kernels load their weight tiles (and GEMM2 its activation tiles) with TMA (moe_experts_wgmma_tma.cuh) when
// the driver can encode tensor maps; MOE_CUDA_WG=cpasync keeps the cp.async kernels (an A/B switch).
// moe_launch_gemm2 (moe_gemm2_launch.cuh) exposes the GEMM2 launches alone: cuda/gemm.cu's dense path runs them
// under identity routing. Fused and parts calls of at most decode_gemv_max_t() tokens (default 2) whose routed
// weights are at most kGemvMaxBytes run the GEMV kernels of moe_experts_gemv.cuh instead (no align, scratch parts or
// combine kernel).
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "moe_combine.cuh"
#include "moe_cuda.h"
#include "moe_experts.cuh"
#include "moe_experts_gemv.cuh"
#include "moe_experts_mma.cuh"
#include "moe_experts_wgmma.cuh"
#include "moe_experts_wgmma_tma.cuh"
#include "moe_gemm2_launch.cuh"
#include "router_topk.cuh"
#include "scratch.cuh"
#include "table_cache.cuh"
#include "tensor_map.cuh"

using namespace moe::dev;

namespace {

// MOE_CUDA_MOE: simt forces the CUDA-core kernels (to tell a tensor-core bug from anything else), mma the mma.sync
// kernels (never wgmma), wgmma the wgmma kernels wherever their preconditions hold (any rows per expert).
enum class MoeForce { None, Simt, Mma, Wgmma };
// Whether environment variable `var` is set to exactly `value`.
bool env_is(const char* var, const char* value) {
  const char* v = std::getenv(var);
  return v != nullptr && std::strcmp(v, value) == 0;
}

MoeForce moe_force() {
  if (env_is("MOE_CUDA_MOE", "simt")) return MoeForce::Simt;
  if (env_is("MOE_CUDA_MOE", "mma")) return MoeForce::Mma;
  if (env_is("MOE_CUDA_MOE", "wgmma")) return MoeForce::Wgmma;
  return MoeForce::None;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// GEMM kernels of one call: SIMT (the reference, any shape), mma.sync with the large (BM 64) or decode (BM 16)
// tiles, or wgmma (BM 128, sm_90a). The align block equals the kernels' BM.
enum class MoePath { Simt, MmaLarge, MmaSmall, Wgmma, Gemv };

// The tile thresholds kMoeSmallRowsPerExpert / kMoeWgmmaRowsPerExpert are in moe_gemm2_launch.cuh.

// Fused and parts calls of at most decode_gemv_max_t() tokens whose routed weights (t * k experts' gate, up and down)
// are at most kGemvMaxBytes run the two GEMV kernels of moe_experts_gemv.cuh (no align, no part scratch, no combine
// kernel; on sm_90+ the second is launched with programmatic dependent launch and prefetches its weights while the
// first runs). MOE_CUDA_DECODE_MAX_T=N sets the token limit (0: never; at most kGemvMaxT); default 2. Measured on an
// H200 (2026-11-26, bench/results/moe-cuda-2026-11-26-variants-2.json): 1.08-1.16x the tile path at T = 1 and 2 on
// the Qwen3 / DeepSeek-V2-Lite / OLMoE shapes (75-210 MB of weights), slower on Mixtral (704 MB at T = 1: 0.96x;
// 0.7x at T = 2-4, where GEMM1 reads an expert's rows once per slot that picks it) and at T = 4. Read once.
constexpr int64_t kGemvMaxBytes = int64_t{256} << 20;
int decode_gemv_max_t() {
  static const int v = [] {
    const char* e = std::getenv("MOE_CUDA_DECODE_MAX_T");
    if (e == nullptr || *e == '\0') return 2;
    const long n = std::strtol(e, nullptr, 10);
    return static_cast<int>(std::clamp<long>(n, 0, kGemvMaxT));
  }();
  return v;
}

// The GEMV path's kernels (moe_experts_gemv.cuh), MOE_CUDA_GEMV (read once):
//   default (wide): GEMM1 with two rows per warp (moe_gemv1_kernel<.., 2>, one wave on the decode shapes) and GEMM2
//     with a warp per (column, slot) pair (moe_gemv2_wide_kernel, k <= kGemvWideMaxK). Measured on an H200
//     (2026-11-27, bench/results/moe-cuda-2026-11-27-h200-tma.json): 1.09-1.14x the narrow ones at T = 1 and
//     1.04-1.07x at T = 2 on the Qwen3, DeepSeek-V2-Lite and OLMoE shapes, equal on Mixtral;
//   narrow: a row per warp, a column per warp (an A/B switch).
// Both compute the same floats. A third form, the wide kernels with their weight rows copied into shared memory by
// cp.async.bulk, ran 0.82-0.98x the wide ones at T = 1-2 on an H200 (2026-11-27,
// bench/results/moe-cuda-2026-11-27-h200-gemv-bulk.json) and was removed.
enum class GemvMode { Wide, Narrow };
GemvMode gemv_mode() {
  static const GemvMode v = env_is("MOE_CUDA_GEMV", "narrow") ? GemvMode::Narrow : GemvMode::Wide;
  return v;
}

// MOE_CUDA_WG=cpasync: the wgmma path loads its tiles with cp.async (the kernels it falls back to when the driver
// cannot encode tensor maps) instead of TMA. Read once.
bool wg_cp_async() {
  static const bool v = env_is("MOE_CUDA_WG", "cpasync");
  return v;
}

// The GEMV decode path (moe_experts_gemv.cuh): scratch = the table and act [t * k, inter] bf16; table upload,
// GEMM1 + activation, GEMM2 + weighted combine into out (parts null) or GEMM2 into parts, which reports ids outside
// [-1, e) through `error`; free. sm90: launch GEMM2 with programmatic dependent launch.
cudaError_t run_gemv(const std::vector<const void*>& table, bool biases, const uint16_t* x, const int32_t* ids,
                     const float* weights, uint16_t* out, float* parts, int t, int k, int e, int h, int inter, int activation,
                     float alpha, float limit, int32_t* error, bool sm90, int device, cudaStream_t s) {
  const GemvMode mode = gemv_mode();
  const size_t b_act = scratch_bytes(static_cast<size_t>(t) * static_cast<size_t>(k) * static_cast<size_t>(inter) * 2);
  char* base = nullptr;
  cudaError_t err = scratch_alloc(reinterpret_cast<void**>(&base), b_act, device, s);
  if (err != cudaSuccess) return err;
  const void** d_table = nullptr;
  uint16_t* d_act = reinterpret_cast<uint16_t*>(base);
  do {
    err = table_on_device(table, device, s, &d_table);
    if (err != cudaSuccess) break;
    // L2 hints (GEMM1's weight loads evict_first, GEMM2's prefetch evict_last) at one token: measured on an H200
    // (2026-11-26, bench/results/moe-cuda-2026-11-26-decode-h200.json) 1.11-1.13x with the table cache at T = 1 on
    // the small-expert models, 0.95-0.98x at T = 2.
    const bool hints = t == 1;
    const int rows1 = mode == GemvMode::Narrow ? 1 : 2;  // GEMM1 rows per warp
    auto gemv1 = rows1 == 2 ? (hints ? moe_gemv1_kernel<true, 2> : moe_gemv1_kernel<false, 2>)
                            : (hints ? moe_gemv1_kernel<true> : moe_gemv1_kernel<false>);
    const unsigned blocks1 = static_cast<unsigned>((inter + kGemvWarps * rows1 - 1) / (kGemvWarps * rows1));
    gemv1<<<dim3(blocks1, static_cast<unsigned>(t * k)), 32 * kGemvWarps, 0, s>>>(
        x, ids, d_table, d_table + e, biases ? d_table + 3 * e : nullptr, biases ? d_table + 4 * e : nullptr, d_act,
        k, e, h, inter, activation, alpha, limit);
    if ((err = cudaGetLastError()) != cudaSuccess) break;
    const bool wide = mode != GemvMode::Narrow && k <= kGemvWideMaxK;
    const int cols = wide ? (k < kGemvWarps ? kGemvWarps / k : 1) : kGemvWarps;  // columns per block
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(static_cast<unsigned>((h + cols - 1) / cols), static_cast<unsigned>(t));
    cfg.blockDim = dim3(32 * kGemvWarps);
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = sm90 ? 1 : 0;
    const void* const* d_down = d_table + 2 * e;
    const void* const* d_down_bias = biases ? d_table + 5 * e : nullptr;
    auto gemv2 = wide ? (hints ? moe_gemv2_wide_kernel<true> : moe_gemv2_wide_kernel<false>)
                      : (hints ? moe_gemv2_kernel<true> : moe_gemv2_kernel<false>);
    err = cudaLaunchKernelEx(&cfg, gemv2,
                             static_cast<const uint16_t*>(d_act), ids, weights, d_down,
                             d_down_bias, out, parts, t, k, e, h, inter, error);
  } while (false);
  const cudaError_t ferr = cudaFreeAsync(base, s);
  return err != cudaSuccess ? err : ferr;
}

template <class C, class Kernel>
cudaError_t set_smem(Kernel kernel) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
}

// GEMM2 of the mma.sync path (also moe_launch_gemm2's, moe_gemm2_launch.cuh): down / down_bias are device arrays
// of e pointers (down_bias null: no biases). grid: (ceil(h / BN), m_tiles).
template <class C2>
cudaError_t launch_mma_gemm2(unsigned m_tiles, const uint16_t* act, const int32_t* sorted, const int32_t* offsets,
                             const void* const* down, const void* const* down_bias, float* part, int n_slots, int e,
                             int h, int inter, cudaStream_t s) {
  cudaError_t err = set_smem<C2>(moe_mma_gemm2_kernel<C2>);
  if (err != cudaSuccess) return err;
  moe_mma_gemm2_kernel<C2><<<dim3(static_cast<unsigned>((h + C2::BN - 1) / C2::BN), m_tiles), C2::kThreads,
                             C2::kSmem, s>>>(act, sorted, offsets, down, down_bias, part, n_slots, e, h, inter);
  return cudaGetLastError();
}
template <class C1>
cudaError_t launch_mma_gemm1(unsigned m_tiles, const uint16_t* x, const int32_t* sorted, const int32_t* offsets,
                             const void* const* table, bool biases, uint16_t* act, int n_slots, int k, int e, int h,
                             int inter, int activation, float alpha, float limit, cudaStream_t s) {
  cudaError_t err = set_smem<C1>(moe_mma_gemm1_kernel<C1>);
  if (err != cudaSuccess) return err;
  moe_mma_gemm1_kernel<C1><<<dim3(static_cast<unsigned>((inter + C1::BN - 1) / C1::BN), m_tiles), C1::kThreads,
                             C1::kSmem, s>>>(x, sorted, offsets, table, table + e, biases ? table + 3 * e : nullptr,
                                             biases ? table + 4 * e : nullptr, act, n_slots, k, e, h, inter,
                                             activation, alpha, limit);
  return cudaGetLastError();
}

// wgmma path (moe_experts_wgmma.cuh): 1D grids of m_tiles x n_tiles blocks (the host checked the product fits int).
// GEMM2 of the wgmma path (also moe_launch_gemm2's): 1D grid of m_tiles * ceil(h / BN) blocks (the caller checked
// the product fits int).
template <class C2>
cudaError_t launch_wg_gemm2(unsigned m_tiles, const uint16_t* act, const int32_t* sorted, const int32_t* offsets,
                            const void* const* down, const void* const* down_bias, float* part, int n_slots, int e,
                            int h, int inter, cudaStream_t s) {
  cudaError_t err = set_smem<C2>(moe_wg_gemm2_kernel<C2>);
  if (err != cudaSuccess) return err;
  moe_wg_gemm2_kernel<C2><<<m_tiles * static_cast<unsigned>((h + C2::BN - 1) / C2::BN), C2::kThreads, C2::kSmem, s>>>(
      act, sorted, offsets, down, down_bias, part, n_slots, e, h, inter, static_cast<int>(m_tiles));
  return cudaGetLastError();
}
template <class C1>
cudaError_t launch_wg_gemm1(unsigned m_tiles, const uint16_t* x, const int32_t* sorted, const int32_t* offsets,
                            const void* const* table, bool biases, uint16_t* act, int n_slots, int k, int e, int h,
                            int inter, int activation, float alpha, float limit, cudaStream_t s) {
  cudaError_t err = set_smem<C1>(moe_wg_gemm1_kernel<C1>);
  if (err != cudaSuccess) return err;
  moe_wg_gemm1_kernel<C1><<<m_tiles * static_cast<unsigned>((inter + C1::BN - 1) / C1::BN), C1::kThreads, C1::kSmem,
                            s>>>(x, sorted, offsets, table, table + e, biases ? table + 3 * e : nullptr,
                                 biases ? table + 4 * e : nullptr, act, n_slots, k, e, h, inter, activation, alpha,
                                 limit, static_cast<int>(m_tiles));
  return cudaGetLastError();
}

// GEMM2 of the wgmma path with both tiles by TMA (also moe_launch_gemm2's dense path): act_map over act, down_maps
// [e] in device memory; grid as launch_wg_gemm2's.
cudaError_t launch_wg_gemm2_tma(unsigned m_tiles, const CUtensorMap& act_map, const int32_t* sorted,
                                const int32_t* offsets, const void* const* down, const void* const* down_bias,
                                const CUtensorMap* down_maps, float* part, int n_slots, int e, int h, int inter,
                                cudaStream_t s) {
  using C2 = MoeWgG2;
  const cudaError_t err = set_smem<C2>(moe_wg_gemm2_tma_kernel<C2>);
  if (err != cudaSuccess) return err;
  moe_wg_gemm2_tma_kernel<C2><<<m_tiles * static_cast<unsigned>((h + C2::BN - 1) / C2::BN), C2::kThreads, C2::kSmem,
                                s>>>(act_map, sorted, offsets, down, down_bias, down_maps, part, n_slots, e, h, inter,
                                     static_cast<int>(m_tiles));
  return cudaGetLastError();
}

// The wgmma path with TMA loads: GEMM1 (maps: gate | up | down, e each) then GEMM2 (act [capacity, inter] through a
// map encoded here), grids as the cp.async kernels'.
cudaError_t launch_wg_tma_gemms(unsigned m_tiles, const uint16_t* x, const int32_t* sorted, const int32_t* offsets,
                                const void* const* table, const CUtensorMap* maps, bool biases, uint16_t* act,
                                int capacity, float* part, int n_slots, int k, int e, int h, int inter, int activation,
                                float alpha, float limit, cudaStream_t s) {
  using C1 = MoeWgG1;
  using C2 = MoeWgG2;
  CUtensorMap act_map;
  if (!encode_bf16_map(&act_map, act, static_cast<uint64_t>(capacity), static_cast<uint64_t>(inter), C2::BM))
    return cudaErrorNotSupported;
  cudaError_t err = set_smem<C1>(moe_wg_gemm1_tma_kernel<C1>);
  if (err != cudaSuccess) return err;
  moe_wg_gemm1_tma_kernel<C1><<<m_tiles * static_cast<unsigned>((inter + C1::BN - 1) / C1::BN), C1::kThreads,
                                C1::kSmem, s>>>(x, sorted, offsets, table, table + e,
                                                biases ? table + 3 * e : nullptr, biases ? table + 4 * e : nullptr,
                                                maps, act, n_slots, k, e, h, inter, activation, alpha, limit,
                                                static_cast<int>(m_tiles));
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  return launch_wg_gemm2_tma(m_tiles, act_map, sorted, offsets, table + 2 * e, biases ? table + 5 * e : nullptr,
                             maps + 2 * e, part, n_slots, e, h, inter, s);
}

// GEMM1 then GEMM2 of the mma.sync (kWg false) or wgmma (kWg true) path.
template <bool kWg, class C1, class C2>
cudaError_t launch_gemms(unsigned m_tiles, const uint16_t* x, const int32_t* sorted, const int32_t* offsets,
                         const void* const* table, bool biases, uint16_t* act, float* part, int n_slots, int k, int e,
                         int h, int inter, int activation, float alpha, float limit, cudaStream_t s) {
  const void* const* down_bias = biases ? table + 5 * e : nullptr;
  if constexpr (kWg) {
    cudaError_t err = launch_wg_gemm1<C1>(m_tiles, x, sorted, offsets, table, biases, act, n_slots, k, e, h, inter,
                                             activation, alpha, limit, s);
    if (err != cudaSuccess) return err;
    return launch_wg_gemm2<C2>(m_tiles, act, sorted, offsets, table + 2 * e, down_bias, part, n_slots, e, h,
                                      inter, s);
  } else {
    cudaError_t err = launch_mma_gemm1<C1>(m_tiles, x, sorted, offsets, table, biases, act, n_slots, k, e, h,
                                              inter, activation, alpha, limit, s);
    if (err != cudaSuccess) return err;
    return launch_mma_gemm2<C2>(m_tiles, act, sorted, offsets, table + 2 * e, down_bias, part, n_slots, e, h,
                                       inter, s);
  }
}

// SIMT path (moe_experts.cuh): grids (ceil(n / 64), m_tiles), 256 threads.
cudaError_t launch_simt(unsigned m_tiles, const uint16_t* x, const int32_t* sorted, const int32_t* offsets,
                        const void* const* table, bool biases, uint16_t* act, float* part, int n_slots, int k, int e,
                        int h, int inter, int activation, float alpha, float limit, cudaStream_t s) {
  moe_gemm1_swiglu_kernel<<<dim3(static_cast<unsigned>((inter + kMoeBN - 1) / kMoeBN), m_tiles), kMoeThreads, 0,
                            s>>>(x, sorted, offsets, table, table + e, biases ? table + 3 * e : nullptr,
                                 biases ? table + 4 * e : nullptr, act, n_slots, k, e, h, inter, activation, alpha,
                                 limit);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  moe_gemm2_kernel<<<dim3(static_cast<unsigned>((h + kMoeBN - 1) / kMoeBN), m_tiles), kMoeThreads, 0, s>>>(
      act, sorted, offsets, table + 2 * e, biases ? table + 5 * e : nullptr, part, n_slots, e, h, inter);
  return cudaGetLastError();
}
}  // namespace

// moe_gemm2_launch.cuh: GEMM2 alone, for cuda/gemm.cu's MOE_CUDA_GEMM=moe dense path (identity routing).
int moe::dev::moe_gemm2_block(MoeGemm2Tiles tiles) {
  return tiles == MoeGemm2Tiles::MmaSmall ? MoeMmaG2Small::BM
         : tiles == MoeGemm2Tiles::Wgmma  ? MoeWgG2::BM
                                          : MoeMmaG2Large::BM;
}

cudaError_t moe::dev::moe_launch_gemm2(MoeGemm2Tiles tiles, unsigned m_tiles, const uint16_t* act,
                                       const int32_t* sorted, const int32_t* offsets, const void* const* down,
                                       const void* const* down_bias, float* part, int n_slots, int e, int h,
                                       int inter, cudaStream_t s, const void* dense_b, int device) {
  if (m_tiles == 0 || h < 1) return cudaSuccess;
  if (tiles == MoeGemm2Tiles::Wgmma) {
    const int64_t n_tiles = (static_cast<int64_t>(h) + MoeWgG2::BN - 1) / MoeWgG2::BN;
    if (static_cast<int64_t>(m_tiles) * n_tiles > INT_MAX) return cudaErrorInvalidValue;
  } else if (m_tiles > 65535u) {
    return cudaErrorInvalidValue;  // grid.y
  }
  if (tiles == MoeGemm2Tiles::Wgmma && dense_b != nullptr && e == 1 && down_bias == nullptr && !wg_cp_async()) {
    using C2 = MoeWgG2;
    const CUtensorMap* b_map = nullptr;
    CUtensorMap act_map;
    cudaError_t err = matrix_map_on_device(dense_b, h, inter, C2::BN, device, s, &b_map);
    if (err == cudaSuccess &&
        encode_bf16_map(&act_map, act, static_cast<uint64_t>(n_slots), static_cast<uint64_t>(inter), C2::BM))
      return launch_wg_gemm2_tma(m_tiles, act_map, sorted, offsets, down, nullptr, b_map, part, n_slots, e, h, inter, s);
    if (err != cudaSuccess && err != cudaErrorNotSupported) return err;
    // no encoder: the cp.async kernel below
  }
  if (tiles == MoeGemm2Tiles::Wgmma)
    return launch_wg_gemm2<MoeWgG2>(m_tiles, act, sorted, offsets, down, down_bias, part, n_slots, e, h, inter, s);
  if (tiles == MoeGemm2Tiles::MmaSmall)
    return launch_mma_gemm2<MoeMmaG2Small>(m_tiles, act, sorted, offsets, down, down_bias, part, n_slots, e, h, inter,
                                           s);
  return launch_mma_gemm2<MoeMmaG2Large>(m_tiles, act, sorted, offsets, down, down_bias, part, n_slots, e, h, inter, s);
}

// Fused (out != null: topk_weights read by the combine) or parts mode (parts != null, out and topk_weights null).
static int run_moe_experts(int device, const void* x, const int32_t* topk_ids, const float* topk_weights,
                           const void* const* gate, const void* const* up, const void* const* down,
                           const void* const* gate_bias, const void* const* up_bias, const void* const* down_bias,
                           void* out, float* parts, int64_t t, int64_t h, int64_t inter, int64_t e, int64_t k,
                           int activation, float alpha, float limit, int32_t* error, void* stream) {
  if (t < 0 || h < 1 || inter < 1 || e < 1 || e > 8192 || k < 1) return cudaErrorInvalidValue;
  if (gate == nullptr || up == nullptr || down == nullptr) return cudaErrorInvalidValue;
  const bool biases = gate_bias != nullptr || up_bias != nullptr || down_bias != nullptr;
  if (biases && (gate_bias == nullptr || up_bias == nullptr || down_bias == nullptr)) return cudaErrorInvalidValue;
  if (activation != 0 && activation != 1) return cudaErrorInvalidValue;
  if (activation == 1 && (!std::isfinite(alpha) || !std::isfinite(limit) || !(limit > 0.0f))) return cudaErrorInvalidValue;
  const int64_t n_slots = t * k;
  if (n_slots > INT_MAX / 2 || h > INT_MAX / 2 || inter > INT_MAX / 2) return cudaErrorInvalidValue;
  if (n_slots + e * (kMoeBM - 1) > INT_MAX / 2) return cudaErrorInvalidValue;  // mma / SIMT capacity
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return err;
  if (t == 0) return cudaSuccess;
  if (x == nullptr || topk_ids == nullptr) return cudaErrorInvalidValue;
  if (parts == nullptr && (out == nullptr || topk_weights == nullptr)) return cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);

  // Host copy of the table: gate | up | down [| gate_bias | up_bias | down_bias], e pointers each. An expert's
  // biases count only with all three of them and its weights present (the op layer rejects anything else).
  std::vector<const void*> table(static_cast<size_t>((biases ? 6 : 3) * e));
  for (int64_t i = 0; i < e; ++i) {
    const bool present = gate[i] != nullptr && up[i] != nullptr && down[i] != nullptr;
    table[i] = present ? gate[i] : nullptr;
    table[e + i] = present ? up[i] : nullptr;
    table[2 * e + i] = present ? down[i] : nullptr;
    if (biases) {
      const bool pb = present && gate_bias[i] != nullptr && up_bias[i] != nullptr && down_bias[i] != nullptr;
      table[3 * e + i] = pb ? gate_bias[i] : nullptr;
      table[4 * e + i] = pb ? up_bias[i] : nullptr;
      table[5 * e + i] = pb ? down_bias[i] : nullptr;
    }
  }

  // Path: mma.sync on sm_80+ when every row is whole 16-byte chunks (cp.async): h, inter multiples of 8, x and every
  // present expert's weights 16-byte aligned (act is scratch: 256-aligned, rows of inter * 2 bytes). wgmma on top of
  // that only on compute capability 9.0 exactly (its kernels are sm_90a code: they trap anywhere else), with its
  // larger capacity and 1D grids within int range.
  const MoeForce force = moe_force();
  MoePath path = MoePath::Simt;
  int major = 0, minor = 0;
  if (force != MoeForce::Simt && h % 8 == 0 && inter % 8 == 0 && aligned16(x)) {
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (err != cudaSuccess) return err;
    err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    if (err != cudaSuccess) return err;
    bool ok = major >= 8;
    for (size_t i = 0; ok && i < static_cast<size_t>(3 * e); ++i) ok = aligned16(table[i]);  // null is aligned
    if (ok) {
      path = n_slots <= kMoeSmallRowsPerExpert * e ? MoePath::MmaSmall : MoePath::MmaLarge;
      const int64_t wg_capacity = n_slots + e * (kMoeWgBM - 1);
      // (the grid is m tiles x n tiles, 1D); GEMM2's epilogue stores float2 (parts 8-byte aligned; the scratch part
      // is 256-aligned).
      const int64_t wg_n_tiles = std::max((inter + MoeWgG1::BN - 1) / MoeWgG1::BN, (h + MoeWgG2::BN - 1) / MoeWgG2::BN);
      const bool wg_ok = major == 9 && minor == 0 && force != MoeForce::Mma && wg_capacity <= INT_MAX / 2 &&
                         (wg_capacity / kMoeWgBM) * wg_n_tiles <= INT_MAX &&
                         (reinterpret_cast<uintptr_t>(parts) & 7u) == 0;
      if (wg_ok && (force == MoeForce::Wgmma || n_slots >= kMoeWgmmaRowsPerExpert * e)) path = MoePath::Wgmma;
      // t * k experts' gate, up and down at most (double: no int64 overflow for any accepted shape)
      const double routed_bytes = static_cast<double>(n_slots) * 3.0 * static_cast<double>(h) * static_cast<double>(inter) * 2.0;
      if (t <= decode_gemv_max_t() && routed_bytes <= static_cast<double>(kGemvMaxBytes) && force == MoeForce::None)
        path = MoePath::Gemv;
    }
  }
  if (path == MoePath::Gemv) {
    return run_gemv(table, biases, static_cast<const uint16_t*>(x), topk_ids, topk_weights, static_cast<uint16_t*>(out),
                    parts, static_cast<int>(t), static_cast<int>(k), static_cast<int>(e), static_cast<int>(h),
                    static_cast<int>(inter), activation, alpha, limit, error, major >= 9, device, s);
  }
  const int64_t block = path == MoePath::MmaSmall ? kMoeMmaSmallBM : path == MoePath::Wgmma ? kMoeWgBM : kMoeBM;
  const int64_t capacity = n_slots + e * (block - 1);
  if (capacity / block > 65535) return cudaErrorInvalidValue;  // grid.y limit

  const size_t b_counts = scratch_bytes(static_cast<size_t>(e) * 4);
  const size_t b_offsets = scratch_bytes(static_cast<size_t>(e + 1) * 4);
  const size_t b_sorted = scratch_bytes(static_cast<size_t>(capacity) * 4);
  const size_t b_act = scratch_bytes(static_cast<size_t>(capacity) * static_cast<size_t>(inter) * 2);
  const size_t b_part = parts != nullptr ? 0 : scratch_bytes(static_cast<size_t>(n_slots) * static_cast<size_t>(h) * 4);
  const size_t b_align =
      scratch_bytes(static_cast<size_t>(moe_align_scratch_ints(static_cast<int>(n_slots), static_cast<int>(e))) * 4);
  char* base = nullptr;
  err = scratch_alloc(reinterpret_cast<void**>(&base),
                      b_counts + b_offsets + b_sorted + b_act + b_part + b_align, device, s);
  if (err != cudaSuccess) return err;
  const void** d_table = nullptr;  // table_on_device
  int32_t* d_counts = reinterpret_cast<int32_t*>(base);
  int32_t* d_offsets = reinterpret_cast<int32_t*>(base + b_counts);
  int32_t* d_sorted = reinterpret_cast<int32_t*>(base + b_counts + b_offsets);
  uint16_t* d_act = reinterpret_cast<uint16_t*>(base + b_counts + b_offsets + b_sorted);
  float* d_part = parts != nullptr ? parts  // [t * k, h] f32
                                    : reinterpret_cast<float*>(base + b_counts + b_offsets + b_sorted + b_act);
  int32_t* d_align = b_align == 0 ? nullptr  // the parallel align's scratch (router_topk.cuh)
                                  : reinterpret_cast<int32_t*>(base + b_counts + b_offsets + b_sorted +
                                                               b_act + b_part);

  const int hi = static_cast<int>(h), ii = static_cast<int>(inter),
            ei = static_cast<int>(e), ki = static_cast<int>(k), ni = static_cast<int>(n_slots),
            ci = static_cast<int>(capacity);
  do {
    err = table_on_device(table, device, s, &d_table);
    if (err != cudaSuccess) break;
    if ((err = launch_moe_align(topk_ids, d_counts, d_offsets, d_sorted, ni, ei, static_cast<int>(block), ci, error,
                                d_align, s)) != cudaSuccess) break;
    // Non-empty tiles are the first offsets[e] / block (each expert's range is padded to whole tiles, empty experts
    // take none), at most one per slot: the grid needs no more (decode: 8 slots of Qwen3 take 8 of 120).
    const unsigned m_tiles = static_cast<unsigned>(std::min<int64_t>(capacity / block, n_slots));
    const uint16_t* xb = static_cast<const uint16_t*>(x);
    const CUtensorMap* maps = nullptr;
    if (path == MoePath::Wgmma && !wg_cp_async()) {
      err = expert_maps_on_device(table, e, h, inter, MoeWgG1::BN, MoeWgG2::BN, device, s, &maps);
      if (err == cudaErrorNotSupported) {  // no encoder: the cp.async kernels
        maps = nullptr;
        err = cudaSuccess;
      }
      if (err != cudaSuccess) break;
    }
    if (maps != nullptr) {
      err = launch_wg_tma_gemms(m_tiles, xb, d_sorted, d_offsets, d_table, maps, biases, d_act, ci, d_part, ni, ki, ei,
                                hi, ii, activation, alpha, limit, s);
      if (err == cudaErrorNotSupported)  // act's map could not be encoded (nothing launched): the cp.async kernels
        err = launch_gemms<true, MoeWgG1, MoeWgG2>(m_tiles, xb, d_sorted, d_offsets, d_table, biases, d_act, d_part,
                                                   ni, ki, ei, hi, ii, activation, alpha, limit, s);
    } else if (path == MoePath::Wgmma) {
      err = launch_gemms<true, MoeWgG1, MoeWgG2>(m_tiles, xb, d_sorted, d_offsets, d_table, biases, d_act, d_part, ni,
                                                 ki, ei, hi, ii, activation, alpha, limit, s);
    } else if (path == MoePath::MmaSmall) {
      err = launch_gemms<false, MoeMmaG1Small, MoeMmaG2Small>(m_tiles, xb, d_sorted, d_offsets, d_table, biases, d_act,
                                                              d_part, ni, ki, ei, hi, ii, activation, alpha, limit, s);
    } else if (path == MoePath::MmaLarge) {
      err = launch_gemms<false, MoeMmaG1Large, MoeMmaG2Large>(m_tiles, xb, d_sorted, d_offsets, d_table, biases, d_act,
                                                              d_part, ni, ki, ei, hi, ii, activation, alpha, limit, s);
    } else {
      err = launch_simt(m_tiles, xb, d_sorted, d_offsets, d_table, biases, d_act, d_part, ni, ki, ei, hi, ii,
                        activation, alpha, limit, s);
    }
    if (err != cudaSuccess) break;
    if (parts != nullptr) break;  // parts mode: the caller combines
    // The combine of moeCombine, with the gate table as presence (absent experts' scratch rows are never read).
    err = launch_moe_combine(d_part, topk_ids, topk_weights, d_table, ei, static_cast<uint16_t*>(out),
                             static_cast<int>(t), ki, hi, nullptr, s);
  } while (false);
  cudaError_t ferr = cudaFreeAsync(base, s);
  return err != cudaSuccess ? err : ferr;
}

extern "C" int moe_cuda_moe_experts_ex(int device, const void* x, const int32_t* topk_ids, const float* topk_weights,
                                       const void* const* gate, const void* const* up, const void* const* down,
                                       const void* const* gate_bias, const void* const* up_bias,
                                       const void* const* down_bias, void* out, int64_t t, int64_t h, int64_t inter,
                                       int64_t e, int64_t k, int activation, float alpha, float limit, int32_t* error,
                                       void* stream) {
  return run_moe_experts(device, x, topk_ids, topk_weights, gate, up, down, gate_bias, up_bias, down_bias, out,
                         nullptr, t, h, inter, e, k, activation, alpha, limit, error, stream);
}

extern "C" int moe_cuda_moe_experts_parts(int device, const void* x, const int32_t* topk_ids, const void* const* gate,
                                          const void* const* up, const void* const* down,
                                          const void* const* gate_bias, const void* const* up_bias,
                                          const void* const* down_bias, float* parts, int64_t t, int64_t h,
                                          int64_t inter, int64_t e, int64_t k, int activation, float alpha,
                                          float limit, int32_t* error, void* stream) {
  return run_moe_experts(device, x, topk_ids, nullptr, gate, up, down, gate_bias, up_bias, down_bias, nullptr,
                         parts, t, h, inter, e, k, activation, alpha, limit, error, stream);
}

extern "C" int moe_cuda_moe_experts(int device, const void* x, const int32_t* topk_ids, const float* topk_weights,
                                    const void* const* gate, const void* const* up, const void* const* down,
                                    void* out, int64_t t, int64_t h, int64_t inter, int64_t e, int64_t k,
                                    int32_t* error, void* stream) {
  return moe_cuda_moe_experts_ex(device, x, topk_ids, topk_weights, gate, up, down, nullptr, nullptr, nullptr, out, t,
                                 h, inter, e, k, 0, 1.702f, 7.0f, error, stream);
}
