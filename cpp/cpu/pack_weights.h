// Packed weights (the "panel64" layout): a bf16 weight W [n, k] (nn.Linear / safetensors layout, y = x W^T)
// rearranged so that the CPU kernels run as outer products instead of dot products (vdpbf16ps on avx512bf16; on avx2
// and avx512 a pair's 32-bit lane widens to two f32 by a shift and a mask, then two FMAs).
//   panels of 64 output columns; panel q holds rows j in [64 q, 64 q + 64) of W as [kp][64][2] bf16, kp = ceil(k / 2):
//   packed[((q * kp + p) * 64 + c) * 2 + e] = W[64 q + c][2 p + e], and 0 where 64 q + c >= n or 2 p + e >= k.
// One vdpbf16ps then takes the 32-bit pair (x[2p], x[2p+1]) of an activation row, broadcast, against 16 columns' pairs
// (64 contiguous bytes) and adds both products into 16 column accumulators: no horizontal sums, and the panel is
// one contiguous stream (kp * 256 bytes). gemm_packed.h computes with it.
// Measured (2-core Zen 4 VM; bench/results/native-kernels-2026-11-26.json, moe-cpu-2026-11-26.json): gemm over
// packed weights reaches 0.92-0.95 of the vdpbf16ps register peak at m >= 128 (row-major gemm: 0.77-0.87), 1.4x the
// row-major speed at m = 16, and the same read-bandwidth-bound speed at m = 1 (both at the read probe, within the
// VM's noise); moeExperts 1.1-2.0x at 8+ tokens per expert on the four real-model shapes, parity at decode.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/cancel.h"
#include "../core/isa.h"

namespace moe::cpu {

constexpr int64_t kPanelCols = 64;  // output columns per panel

// Elements (bf16 values) of one panel of a weight with k input columns: ceil(k / 2) * 64 * 2. Panel q starts at
// element q * packed_panel_numel(k).
inline int64_t packed_panel_numel(int64_t k) { return (k + 1) / 2 * kPanelCols * 2; }

// Elements (bf16 values) of the packed form of an [n, k] weight: ceil(n / 64) panels.
inline int64_t packed_weights_numel(int64_t n, int64_t k) { return (n + kPanelCols - 1) / kPanelCols * packed_panel_numel(k); }

// dst [packed_weights_numel(n, k)] bf16 <- w [n, k] bf16 (row stride ldw >= k). Multithreaded over panels on the
// project's pool; the transposes on vector_tier(isa) (core/isa.h; every tier writes the same bytes). Throws
// moe::Error(InvalidArgument) for bad sizes or null pointers; (Cancelled) when cancelled (dst is then partly written).
void pack_weights(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, uint16_t* dst, const CancelToken* cancel = nullptr,
                  Isa isa = Isa::Avx512Bf16);

}  // namespace moe::cpu
