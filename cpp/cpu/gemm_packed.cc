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
// The avx2 kernel (avx2 and avx512 tiers) has 16 registers: 5 rows x 16 columns per pass, four passes per block of
// 64 pairs (16 KiB, so passes 2-4 read L1; the first prefetches each pair's other lines), one row over all 64
// columns in one pass. Measured on a 2-core AVX2 EPYC (native-kernels-2026-11-27-avx2.json): 1.14-1.50x the
// row-major gemm at 16-512 rows, 0.82-1.03x at 1-8 rows; with the next block prefetched (block_avx2),
// 1.41x / 1.17x at 4 / 8 rows (-avx2-prefetch.json). Tried and not kept: 256-pair blocks (m = 4-8: 0.4-0.6x
// row-major, the four strided passes then came from L2 / memory), prefetch 2 KiB ahead in the one-row kernel (0.6x).
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
constexpr int64_t kBlockPairsAvx2 = 64;  // the avx2 kernel's (16 KiB: its four 16-column passes over a block hit L1)

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

// dst[0, n) = src[0, n) bf16 -> f32 (exact).
MOE_TARGET_AVX2 void cvt_row_avx2(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_store_ps(dst + i, simd::ld_bf16_avx2(src + i));
  for (; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

// The avx2 tier (also run where avx512 lacks BF16): tile[r][0..64) (row stride 64) += pairs [p0, p1) of rows
// af[0..MR) (f32, [2 (p1 - p0)] each: the block's values of a, converted) against the panel, 16 columns at a time:
// per pair, two 32-byte loads hold 8 columns' (even, odd) bf16 each; a shift and a mask make them f32, and each row
// takes two FMAs per 8 columns, its even value then its odd one (broadcast from af). So every output is one f32
// accumulator fed k in order, whatever MR: the same sums at every row count (batch invariance).
// `next` (or null): the panel's next block (past the panel's end: the next panel's first), prefetched into L1 a line
// per pair and pass, so that its first pass finds it there instead of loading from memory while computing only a
// quarter of its work (2-core AVX2 EPYC, [m, 4096] x [14336, 4096], interleaved runs: m = 2 / 4 / 8 1.2-1.3x,
// m = 16 / 32 / 128 1.05-1.1x; moe-native bench: 1.41x / 1.17x the row-major gemm at m = 4 / 8, 1.03x / 0.84x before;
// into L2 about the same; in the one-row kernel within noise, so not there).
template <int MR>
MOE_TARGET_AVX2 void block_avx2(const float* const* af, int64_t p0, int64_t p1, const uint16_t* panel, float* tile,
                                const char* next) {
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  for (int c0 = 0; c0 < kPanelCols; c0 += 16) {
    __m256 acc[MR][2];
#pragma GCC unroll 5
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < 2; ++v) acc[r][v] = _mm256_loadu_ps(tile + r * kPanelCols + c0 + 8 * v);
    const uint16_t* bp = panel + (p0 * kPanelCols + c0) * 2;
    for (int64_t p = 0; p < p1 - p0; ++p, bp += kPanelCols * 2) {
      if (c0 == 0) {  // the first pass over the block pulls each pair's other three lines too: one sequential stream
        _mm_prefetch(reinterpret_cast<const char*>(bp) + 64, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(bp) + 128, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(bp) + 192, _MM_HINT_T0);
      }
      // one line of the next block per pair and pass: its 4 (p1 - p0) lines spread over this block's compute
      if (next) _mm_prefetch(next + (c0 / 16 * (p1 - p0) + p) * 64, _MM_HINT_T0);
      __m256 be[2], bo[2];
#pragma GCC unroll 2
      for (int v = 0; v < 2; ++v) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 16 * v));
        be[v] = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
        bo[v] = _mm256_castsi256_ps(_mm256_and_si256(x, hi));
      }
#pragma GCC unroll 5
      for (int r = 0; r < MR; ++r) {
        const __m256 xe = _mm256_broadcast_ss(af[r] + 2 * p);
#pragma GCC unroll 2
        for (int v = 0; v < 2; ++v) acc[r][v] = _mm256_fmadd_ps(xe, be[v], acc[r][v]);
        const __m256 xo = _mm256_broadcast_ss(af[r] + 2 * p + 1);
#pragma GCC unroll 2
        for (int v = 0; v < 2; ++v) acc[r][v] = _mm256_fmadd_ps(xo, bo[v], acc[r][v]);
      }
    }
#pragma GCC unroll 5
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int v = 0; v < 2; ++v) _mm256_storeu_ps(tile + r * kPanelCols + c0 + 8 * v, acc[r][v]);
  }
}

// One row (decode): the same sums as block_avx2<1>, all 64 columns per pair in one pass (8 accumulators), so the
// panel is read front to back once.
MOE_TARGET_AVX2 void block_avx2_row(const float* const* af, int64_t p0, int64_t p1, const uint16_t* panel, float* tile,
                                    const char*) {
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  __m256 acc[8];
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) acc[v] = _mm256_loadu_ps(tile + 8 * v);
  const uint16_t* bp = panel + p0 * kPanelCols * 2;
  const float* a = af[0];
  for (int64_t p = 0; p < p1 - p0; ++p, bp += kPanelCols * 2) {
    const __m256 xe = _mm256_broadcast_ss(a + 2 * p), xo = _mm256_broadcast_ss(a + 2 * p + 1);
#pragma GCC unroll 8
    for (int v = 0; v < 8; ++v) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bp + 16 * v));
      acc[v] = _mm256_fmadd_ps(xe, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)), acc[v]);
      acc[v] = _mm256_fmadd_ps(xo, _mm256_castsi256_ps(_mm256_and_si256(x, hi)), acc[v]);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) _mm256_storeu_ps(tile + 8 * v, acc[v]);
}

using BlockF32Fn = void (*)(const float* const*, int64_t, int64_t, const uint16_t*, float*, const char*);
constexpr BlockF32Fn kBlockAvx2[5] = {block_avx2_row, block_avx2<2>, block_avx2<3>, block_avx2<4>, block_avx2<5>};
#endif

// tile[i][0..64) = rows[i] . panel for i < mt <= kTileRows, k in blocks of kBlockPairs pairs, on `tier` (one of
// packed_tier's).
void tile_dots(const uint16_t* const* rows, int64_t mt, const uint16_t* panel, int64_t k, Isa tier, float* tile) {
  std::memset(tile, 0, sizeof(float) * static_cast<size_t>(mt * kPanelCols));
  const int64_t kp = (k + 1) / 2;
  const int64_t block = tier == Isa::Avx2 ? kBlockPairsAvx2 : kBlockPairs;
  for (int64_t p0 = 0; p0 < kp; p0 += block) {
    const int64_t p1 = kp - p0 < block ? kp : p0 + block;
#if MOE_X86
    if (tier == Isa::Avx2) {
      // the block's values of 5 rows at a time as f32 (0 past k), then the FMA kernel
      alignas(32) float af[5][2 * kBlockPairsAvx2];
      const float* ap[5] = {af[0], af[1], af[2], af[3], af[4]};
      const int64_t e0 = 2 * p0, e1 = 2 * p1 < k ? 2 * p1 : k;
      for (int64_t i = 0; i < mt; i += 5) {
        const int mr = static_cast<int>(mt - i < 5 ? mt - i : 5);
        for (int r = 0; r < mr; ++r) {
          cvt_row_avx2(rows[i + r] + e0, af[r], e1 - e0);
          if (e1 - e0 < 2 * (p1 - p0)) af[r][e1 - e0] = 0.0f;  // the odd half of the last pair of an odd k
        }
        // the first row group prefetches the next block (the others find this one in L1)
        const char* next = i == 0 ? reinterpret_cast<const char*>(panel + p1 * kPanelCols * 2) : nullptr;
        kBlockAvx2[mr - 1](ap, p0, p1, panel, tile + i * kPanelCols, next);
      }
      continue;
    }
#endif
    for (int64_t i = 0; i < mt; i += 6) {
      const int mr = static_cast<int>(mt - i < 6 ? mt - i : 6);
#if MOE_X86
      if (tier == Isa::Avx512Bf16) {
        kBlockBf16[mr - 1](rows + i, k, p0, p1, panel, tile + i * kPanelCols);
        continue;
      }
#endif
      block_scalar(rows + i, mr, k, p0, p1, panel, tile + i * kPanelCols);
    }
  }
}

void run_item(const GemmPackedArgs& g, Isa tier, int64_t q, int64_t i0, int64_t mt) {
  alignas(64) float tile[kTileRows * kPanelCols];
  packed_panel_dots(g.a + i0 * g.lda, g.lda, mt, g.b + q * packed_panel_numel(g.k), g.k, tier, tile);
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

Isa packed_tier(Isa isa) {
  isa = clamp_isa(isa);
#if MOE_X86
  return isa >= Isa::Avx512Bf16 ? Isa::Avx512Bf16 : isa >= Isa::Avx2 ? Isa::Avx2 : Isa::Scalar;
#else
  (void)isa;
  return Isa::Scalar;
#endif
}

void packed_panel_dots(const uint16_t* a, int64_t lda, int64_t m, const uint16_t* panel, int64_t k, Isa tier, float* tile) {
  const uint16_t* rows[kTileRows] = {};
  for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
    const int64_t mt = m - i0 < kTileRows ? m - i0 : kTileRows;
    for (int64_t i = 0; i < mt; ++i) rows[i] = a + (i0 + i) * lda;
    tile_dots(rows, mt, panel, k, tier, tile + i0 * kPanelCols);
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
  const Isa tier = packed_tier(isa);
  if (g.m == 0) return tier;
  const int64_t panels = (g.n + kPanelCols - 1) / kPanelCols;
  const int64_t tiles = (g.m + kTileRows - 1) / kTileRows;
  std::function<void(size_t, size_t)> fn = [&](size_t b, size_t e) {
    for (size_t it = b; it < e; ++it) {
      const int64_t q = static_cast<int64_t>(it) / tiles, t = static_cast<int64_t>(it) % tiles;
      const int64_t i0 = t * kTileRows, mt = g.m - i0 < kTileRows ? g.m - i0 : kTileRows;
      run_item(g, tier, q, i0, mt);
    }
  };
  const size_t grain = packed_items_grain(g.m < kTileRows ? g.m : kTileRows, g.k, 1);
  if (!ThreadPool::global().parallel_for(static_cast<size_t>(panels * tiles), grain, fn, cancel))
    throw_error(ErrorCode::Cancelled, "gemm: cancelled");
  return tier;
}

}  // namespace moe::cpu
