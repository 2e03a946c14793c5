// Packing of bf16 weights into the panel64 layout (pack_weights.h). Per panel, blocks of 16 pairs: the 64 rows'
// 16 pairs (64 bytes each, read as 32-bit words) are written pair-major, so reads are whole cache lines of W and
// writes run sequentially through the panel. A block of whole pairs of 64 real rows is a transpose of 32-bit words:
// four 16 x 16 transposes in registers on AVX-512 (eight 8 x 8 on AVX2), the scalar loop elsewhere (the last rows
// and a padded last pair). Measured (bench/native/bench.cc pack rows, both cores of a 2-core AVX-512 VM,
// 2026-11-28): a Qwen3 expert projection (768 x 2048) scalar 7.9-8.6 GB/s, AVX2 22-24, AVX-512 26-37; Mixtral's
// (14336 x 4096) scalar 8.2-8.5, AVX2 13-16, AVX-512 15-17 (streaming stores for the output made no difference).
#include "pack_weights.h"

#include <cstring>
#include <functional>
#include <string>

#include "../core/error.h"
#include "../core/threadpool.h"
#include "simd.h"

namespace moe::cpu {

namespace {

// Pair p of row r of w (0 past k or n).
inline uint32_t pair_of(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, int64_t r, int64_t p) {
  if (r >= n) return 0;
  const uint16_t* row = w + r * ldw;
  const uint32_t lo = 2 * p < k ? row[2 * p] : 0, hi = 2 * p + 1 < k ? row[2 * p + 1] : 0;
  return lo | (hi << 16);
}

#if MOE_X86
// dst[i * 64 + c] = word p0 + i of row r0 + c, i, c < 16: 16 rows of 16 words transposed in registers.
MOE_TARGET_AVX512 inline void block16_avx512(const uint16_t* w, int64_t ldw, int64_t r0, int64_t p0, uint32_t* dst) {
  __m512i a[16], b[16];
  for (int c = 0; c < 16; ++c) a[c] = _mm512_loadu_si512(w + (r0 + c) * ldw + 2 * p0);
  // words: 32-bit, then 64-bit interleaves of row pairs, then 128-bit lanes across quads, then halves
  for (int c = 0; c < 16; c += 2) {
    b[c] = _mm512_unpacklo_epi32(a[c], a[c + 1]);
    b[c + 1] = _mm512_unpackhi_epi32(a[c], a[c + 1]);
  }
  for (int c = 0; c < 16; c += 4) {
    a[c] = _mm512_unpacklo_epi64(b[c], b[c + 2]);
    a[c + 1] = _mm512_unpackhi_epi64(b[c], b[c + 2]);
    a[c + 2] = _mm512_unpacklo_epi64(b[c + 1], b[c + 3]);
    a[c + 3] = _mm512_unpackhi_epi64(b[c + 1], b[c + 3]);
  }
  // a[4 g + j] lane L (128-bit) holds words 4 L + {0..3}'s j-th... of rows 4 g .. 4 g + 3: gather lanes across g
  for (int j = 0; j < 4; ++j) {
    const __m512i t0 = _mm512_shuffle_i32x4(a[j], a[4 + j], 0x88), t1 = _mm512_shuffle_i32x4(a[j], a[4 + j], 0xdd);
    const __m512i t2 = _mm512_shuffle_i32x4(a[8 + j], a[12 + j], 0x88), t3 = _mm512_shuffle_i32x4(a[8 + j], a[12 + j], 0xdd);
    b[j] = _mm512_shuffle_i32x4(t0, t2, 0x88);
    b[8 + j] = _mm512_shuffle_i32x4(t0, t2, 0xdd);
    b[4 + j] = _mm512_shuffle_i32x4(t1, t3, 0x88);
    b[12 + j] = _mm512_shuffle_i32x4(t1, t3, 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + i * kPanelCols, b[i]);
}

// dst[i * 64 + c] = word p0 + i of row r0 + c, i, c < 8.
MOE_TARGET_AVX2 inline void block8_avx2(const uint16_t* w, int64_t ldw, int64_t r0, int64_t p0, uint32_t* dst) {
  __m256 a[8], b[8];
  for (int c = 0; c < 8; ++c) a[c] = _mm256_loadu_ps(reinterpret_cast<const float*>(w + (r0 + c) * ldw + 2 * p0));
  for (int c = 0; c < 8; c += 2) {
    b[c] = _mm256_unpacklo_ps(a[c], a[c + 1]);
    b[c + 1] = _mm256_unpackhi_ps(a[c], a[c + 1]);
  }
  for (int c = 0; c < 8; c += 4) {
    a[c] = _mm256_shuffle_ps(b[c], b[c + 2], 0x44);
    a[c + 1] = _mm256_shuffle_ps(b[c], b[c + 2], 0xee);
    a[c + 2] = _mm256_shuffle_ps(b[c + 1], b[c + 3], 0x44);
    a[c + 3] = _mm256_shuffle_ps(b[c + 1], b[c + 3], 0xee);
  }
  for (int j = 0; j < 4; ++j) {
    b[j] = _mm256_permute2f128_ps(a[j], a[4 + j], 0x20);
    b[4 + j] = _mm256_permute2f128_ps(a[j], a[4 + j], 0x31);
  }
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(reinterpret_cast<float*>(dst + i * kPanelCols), b[i]);
}
#endif

// The whole-pair blocks of 64 real rows through the vector transposes; false: none here (the scalar loop does all).
bool pack_full_blocks(const uint16_t* w, int64_t ldw, int64_t r0, int64_t p0, uint32_t* dst, Isa tier) {
#if MOE_X86
  if (tier >= Isa::Avx512) {
    for (int64_t c = 0; c < kPanelCols; c += 16) block16_avx512(w, ldw, r0 + c, p0, dst + p0 * kPanelCols + c);
    return true;
  }
  if (tier >= Isa::Avx2) {
    for (int64_t h = 0; h < 16; h += 8)
      for (int64_t c = 0; c < kPanelCols; c += 8) block8_avx2(w, ldw, r0 + c, p0 + h, dst + (p0 + h) * kPanelCols + c);
    return true;
  }
#else
  (void)w, (void)ldw, (void)r0, (void)p0, (void)dst, (void)tier;
#endif
  return false;
}

void pack_panel(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, int64_t q, uint32_t* dst /* [kp][64] */, Isa tier) {
  const int64_t kp = (k + 1) / 2, full = k / 2;  // pairs, pairs without a padded half
  const int64_t r0 = q * kPanelCols;
  for (int64_t p0 = 0; p0 < kp; p0 += 16) {
    const int64_t pn = kp - p0 < 16 ? kp - p0 : 16;
    if (pn == 16 && p0 + 16 <= full && r0 + kPanelCols <= n && pack_full_blocks(w, ldw, r0, p0, dst, tier)) continue;
    for (int64_t c = 0; c < kPanelCols; ++c) {
      const int64_t r = r0 + c;
      if (r < n && p0 + pn <= full) {  // whole pairs of a real row: 32-bit loads
        const uint16_t* src = w + r * ldw + 2 * p0;
        for (int64_t i = 0; i < pn; ++i) {
          uint32_t v;
          std::memcpy(&v, src + 2 * i, 4);
          dst[(p0 + i) * kPanelCols + c] = v;
        }
      } else {
        for (int64_t i = 0; i < pn; ++i) dst[(p0 + i) * kPanelCols + c] = pair_of(w, n, k, ldw, r, p0 + i);
      }
    }
  }
}

void require(bool ok, const std::string& what) {
  if (!ok) throw_error(ErrorCode::InvalidArgument, "packWeights: " + what);
}

}  // namespace

void pack_weights(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, uint16_t* dst, const CancelToken* cancel, Isa isa) {
  require(n >= 1 && k >= 1, "n and k must be >= 1, received n=" + std::to_string(n) + " k=" + std::to_string(k));
  require(ldw >= k, "ldw must be >= k, received ldw=" + std::to_string(ldw) + " k=" + std::to_string(k));
  require(w != nullptr && dst != nullptr, "w and dst must be non-null");
  const int64_t panels = (n + kPanelCols - 1) / kPanelCols;
  const Isa tier = vector_tier(isa);
  std::function<void(size_t, size_t)> fn = [&](size_t b, size_t e) {
    for (size_t q = b; q < e; ++q)
      pack_panel(w, n, k, ldw, static_cast<int64_t>(q), reinterpret_cast<uint32_t*>(dst + q * packed_panel_numel(k)), tier);
  };
  if (!ThreadPool::global().parallel_for(static_cast<size_t>(panels), 1, fn, cancel))
    throw_error(ErrorCode::Cancelled, "packWeights: cancelled");
}

}  // namespace moe::cpu
