// GEMM over panel64-packed weights (gemm_packed.h). Work items are (panel of 64 columns, tile of up to kTileRows
// rows); an item keeps its [rows, 64] f32 tile on the stack and walks k in blocks of kBlockPairs pairs (the panel's
// block, 64 KiB, stays in L2 while every row group of the tile uses it). The micro-kernel holds MR (<= 6) rows x
// 64 columns of accumulators in 24 registers: per k pair, 4 loads of the panel (256 contiguous bytes) and MR
// broadcasts of the rows' 32-bit pairs feed 4 MR vdpbf16ps. Items are ordered row tile first within a panel, so
// a panel streams from memory once per call when m fits one tile (decode: m rows at once, the whole panel in one
// pass) and the pool's threads take consecutive panels. The micro-kernel's loops carry unroll pragmas: without them
// GCC -O2 kept the accumulators in memory (2.6x slower); with them -O2 and -O3 give the same code speed.
// Tried and not kept (interleaved A/B, medians of 30 calls): software prefetch of the panel a few KiB ahead (decode
// m = 4: 0.82-0.90x) or of the next block spread over the row groups (m = 128 / 512: 0.92-0.95x, into L1 or L2);
// tiles of 48-144 rows and blocks of 128-512 pairs (all within noise of 96 x 256).
#include "gemm_packed.h"

#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#include "../core/error.h"
#include "../core/threadpool.h"
#include "pack_weights.h"
#include "simd.h"

namespace moe::cpu {

namespace {

constexpr int64_t kTileRows = 96;     // rows per work item (f32 tile of 96 x 64 = 24 KiB on the stack)
constexpr int64_t kBlockPairs = 256;  // k pairs per block (64 KiB of the panel)

void require(bool ok, const std::string& what) {
  if (!ok) throw_error(ErrorCode::InvalidArgument, "gemm (packed weights): " + what);
}

// Scalar reference: tile[r][c] += a_r . column c over pairs [p0, p1) (f32, k in order).
void block_scalar(const uint16_t* const* a, int mr, int64_t k, int64_t p0, int64_t p1, const uint16_t* panel,
                  float* tile) {
  for (int r = 0; r < mr; ++r)
    for (int64_t c = 0; c < kPanelCols; ++c) {
      float s = tile[r * kPanelCols + c];
      for (int64_t p = p0; p < p1; ++p)
        for (int e = 0; e < 2 && 2 * p + e < k; ++e)
          s += bf16_to_f32(a[r][2 * p + e]) * bf16_to_f32(panel[(p * kPanelCols + c) * 2 + e]);
      tile[r * kPanelCols + c] = s;
    }
}

#if MOE_X86
// 32-bit pair p of row x (the high half 0 past k).
inline int32_t pair_bits(const uint16_t* x, int64_t k, int64_t p) {
  if (2 * p + 1 < k) {
    int32_t v;
    std::memcpy(&v, x + 2 * p, 4);
    return v;
  }
  return static_cast<int32_t>(x[2 * p]);
}

// tile[r][0..64) (row stride 64) += pairs [p0, p1) of rows a[0..MR) against the panel, in pair order.
template <int MR>
MOE_TARGET_AVX512BF16 void block_bf16(const uint16_t* const* a, int64_t k, int64_t p0, int64_t p1, const uint16_t* panel,
                                      float* tile) {
  __m512 acc[MR][4];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_loadu_ps(tile + r * kPanelCols + 16 * v);
  const int64_t full = k / 2;  // pairs with both halves inside k
  const int64_t pe = p1 < full ? p1 : full;
  const uint16_t* bp = panel + p0 * kPanelCols * 2;
  int64_t p = p0;
  for (; p < pe; ++p, bp += kPanelCols * 2) {
    __m512bh b[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) b[v] = (__m512bh)_mm512_loadu_si512(bp + 32 * v);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      int32_t bits;
      std::memcpy(&bits, a[r] + 2 * p, 4);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(bits);
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, b[v]);
    }
  }
  for (; p < p1; ++p, bp += kPanelCols * 2) {  // the last pair of an odd k
    __m512bh b[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) b[v] = (__m512bh)_mm512_loadu_si512(bp + 32 * v);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair_bits(a[r], k, p));
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, b[v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(tile + r * kPanelCols + 16 * v, acc[r][v]);
}

using BlockFn = void (*)(const uint16_t* const*, int64_t, int64_t, int64_t, const uint16_t*, float*);
constexpr BlockFn kBlockBf16[6] = {block_bf16<1>, block_bf16<2>, block_bf16<3>, block_bf16<4>, block_bf16<5>, block_bf16<6>};
#endif

// tile[i][0..64) = rows[i] . panel for i < mt <= kTileRows, k in blocks of kBlockPairs pairs.
void tile_dots(const uint16_t* const* rows, int64_t mt, const uint16_t* panel, int64_t k, bool bf16, float* tile) {
  std::memset(tile, 0, sizeof(float) * static_cast<size_t>(mt * kPanelCols));
  const int64_t kp = (k + 1) / 2;
  for (int64_t p0 = 0; p0 < kp; p0 += kBlockPairs) {
    const int64_t p1 = kp - p0 < kBlockPairs ? kp : p0 + kBlockPairs;
    for (int64_t i = 0; i < mt; i += 6) {
      const int mr = static_cast<int>(mt - i < 6 ? mt - i : 6);
#if MOE_X86
      if (bf16) {
        kBlockBf16[mr - 1](rows + i, k, p0, p1, panel, tile + i * kPanelCols);
        continue;
      }
#endif
      (void)bf16;
      block_scalar(rows + i, mr, k, p0, p1, panel, tile + i * kPanelCols);
    }
  }
}

void run_item(const GemmPackedArgs& g, bool bf16, int64_t q, int64_t i0, int64_t mt) {
  alignas(64) float tile[kTileRows * kPanelCols];
  packed_panel_dots(g.a + i0 * g.lda, g.lda, mt, g.b + q * packed_panel_numel(g.k), g.k, bf16, tile);
  const int64_t j0 = q * kPanelCols, nc = g.n - j0 < kPanelCols ? g.n - j0 : kPanelCols;
  for (int64_t i = 0; i < mt; ++i) {
    const float* src = tile + i * kPanelCols;
    if (g.out_dtype == DType::F32) {
      float* dst = static_cast<float*>(g.out) + (i0 + i) * g.ldc + j0;
      std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(nc));
    } else {
      uint16_t* dst = static_cast<uint16_t*>(g.out) + (i0 + i) * g.ldc + j0;
      for (int64_t j = 0; j < nc; ++j) dst[j] = f32_to_bf16(src[j]);
    }
  }
}

}  // namespace

void packed_panel_dots(const uint16_t* a, int64_t lda, int64_t m, const uint16_t* panel, int64_t k, bool bf16, float* tile) {
  const uint16_t* rows[kTileRows] = {};
  for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
    const int64_t mt = m - i0 < kTileRows ? m - i0 : kTileRows;
    for (int64_t i = 0; i < mt; ++i) rows[i] = a + (i0 + i) * lda;
    tile_dots(rows, mt, panel, k, bf16, tile + i0 * kPanelCols);
  }
}

size_t packed_items_grain(int64_t m, int64_t k, int64_t panels) {
  const double bytes = static_cast<double>(panels) * static_cast<double>(packed_panel_numel(k)) * 2;
  const double flops = 2.0 * static_cast<double>(panels) * static_cast<double>(m < 1 ? 1 : m) * kPanelCols * static_cast<double>(k);
  const double by_bytes = std::ceil(256.0 * 1024 / bytes), by_flops = std::ceil(8e6 / flops);
  const double g = by_bytes < by_flops ? by_bytes : by_flops;
  return g < 1 ? 1 : static_cast<size_t>(g);
}

Isa gemm_packed(const GemmPackedArgs& g, Isa isa, const CancelToken* cancel) {
  require(g.m >= 0 && g.n >= 1 && g.k >= 1,
          "need m >= 0, n >= 1, k >= 1, received m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k));
  require(g.lda >= g.k && g.ldc >= g.n, "need lda >= k and ldc >= n, received lda=" + std::to_string(g.lda) +
                                            " ldc=" + std::to_string(g.ldc));
  require(g.out_dtype == DType::F32 || g.out_dtype == DType::BF16,
          std::string("out dtype must be f32 or bf16, received ") + dtype_name(g.out_dtype));
  require(g.b != nullptr && (g.m == 0 || (g.a != nullptr && g.out != nullptr)), "a, b and out must be non-null");
  bool bf16 = false;
#if MOE_X86
  bf16 = clamp_isa(isa) >= Isa::Avx512Bf16;
#else
  (void)isa;
#endif
  if (g.m == 0) return bf16 ? Isa::Avx512Bf16 : Isa::Scalar;
  const int64_t panels = (g.n + kPanelCols - 1) / kPanelCols;
  const int64_t tiles = (g.m + kTileRows - 1) / kTileRows;
  std::function<void(size_t, size_t)> fn = [&](size_t b, size_t e) {
    for (size_t it = b; it < e; ++it) {
      const int64_t q = static_cast<int64_t>(it) / tiles, t = static_cast<int64_t>(it) % tiles;
      const int64_t i0 = t * kTileRows, mt = g.m - i0 < kTileRows ? g.m - i0 : kTileRows;
      run_item(g, bf16, q, i0, mt);
    }
  };
  const size_t grain = packed_items_grain(g.m < kTileRows ? g.m : kTileRows, g.k, 1);
  if (!ThreadPool::global().parallel_for(static_cast<size_t>(panels * tiles), grain, fn, cancel))
    throw_error(ErrorCode::Cancelled, "gemm: cancelled");
  return bf16 ? Isa::Avx512Bf16 : Isa::Scalar;
}

}  // namespace moe::cpu
