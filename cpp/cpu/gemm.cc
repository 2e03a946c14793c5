// Dense GEMM out[m, n] = sum_k a[m, k] * b[n, k] (gemm.h), f32 accumulation, tiers:
//   scalar      reference: one f32 accumulator per output, k in order. Simple on purpose.
//   avx2        3x4 dot-product micro-kernel on f32 (12 ymm accumulators along k), bf16 inputs converted to f32
//               per k block into a per-thread buffer first. Rows left below a multiple of 3 go through a 1x8
//               row kernel that reads bf16 in place and converts in registers (converting b for them too would
//               cost more than their dot products).
//   avx512      4x4 micro-kernel on f32 (16 zmm accumulators), same packing for bf16 inputs; 1x16 row kernel.
//   avx512bf16  bf16 inputs only: 4x4 micro-kernel of vdpbf16ps straight on the bf16 rows (32 k per
//               instruction, no conversion). vdpbf16ps flushes denormal inputs/outputs and rounds each pair sum,
//               so results differ slightly from f32 FMA; the tests compare against float64 with a tolerance.
//               f32 inputs run the avx512 kernels (and report avx512).
// Both operands are k-contiguous (y = x W^T), so the micro-kernels are dot products: MR rows of a times NR rows of
// b, one vector accumulator per output along k, reduced horizontally once per k block. The work is split into
// output tiles of about 64 x 64 (one pool range each, cancellation polled between tiles); inside a tile the k
// dimension is walked in blocks (512 f32 or 1024 bf16 values, so the block of b rows of a tile stays in L2) and
// the partial sums go to an f32 tile that is rounded to out_dtype once at the end. Tiles are numbered row tile
// first within a column tile, so consecutive tiles (one thread's range) share their b rows and b streams from
// memory about once per call: [128, 4096] x [14336, 4096] ran 5-10% faster, m = 512 10-20%, than with b
// re-streamed per row tile. The CPU runtime uses gemm_packed.h instead (packed weights, outer products).
// Small m (m <= kStreamMaxM = 8: decode, a few tokens), every tier: weight streaming instead of tiles, because there
// b is read once per call and the call takes the time to read it from memory. The n rows of b are split into ranges
// of consecutive rows (about 256 KiB of b each, handed to the pool's threads in order; cancellation polled between
// ranges). A range is walked in groups of R consecutive b rows (4; AVX2 with 3 rows of a: 3, with 4 or more: 2, for
// its 16 registers; scalar: 1), each b row read exactly once, front to back over the full k, against the rows of a in groups
// of up to 4 (m > 4: the second group finds the R b rows in L1/L2; a, <= 8 x k values, stays in L1/L2). Each vector
// of a loaded serves R outputs: one b row at a time (R = 1) ran about 15% slower at m = 1 and, in a prototype, at
// 0.6x the speed at m = 4. bf16 a on avx2/avx512 is converted to f32 once per call (exact), so only b is converted in the inner loop,
// where the conversions compete with the FMAs for the vector pipes (single core, b in L2, m = 4: avx512 21 -> 25,
// avx2 17 -> 20 GB/s of b).
// Batch invariance (batched generation relies on it, lib/engine/batch.ts): the streaming kernels sum every output
// exactly as the tiled kernels do (per k block of kc_block values counted from k = 0, one vector accumulator fed in
// k order by the same instruction, the same horizontal reduction tree, block sums added in order to an f32 total that
// starts at 0), so a row of out is bitwise the same whatever m and the other rows of a are, and whatever the split
// of n and the thread count (gemm() and gemm_serial() agree); test/native/gemv_test.cc checks all three.
// Measured with moe-native bench-gemv on the 2-core Zen 4 VM (fraction of cpu::read_probe timed right after each
// call, median of 8 x 7 calls; before = the tiled path for every m; bf16 -> f32):
//                                  avx512bf16     avx512        avx2
//   [1, 4096] x [14336, 4096]      1.09 -> 1.08   0.80 -> 0.98  0.75 -> 0.91
//   [2, 4096] x [14336, 4096]      0.79 -> 0.97   0.56 -> 0.91  0.62 -> 0.84
//   [1, 2048] x [151936, 2048]     1.07 -> 1.05   0.77 -> 0.92  0.76 -> 0.86
//   [1, 4096] x [32000, 4096]      1.11 -> 1.11   0.79 -> 1.00  0.75 -> 0.95
//   [1, 2048] x [4096, 2048]       0.99 -> 0.92   0.75 -> 0.78  0.73 -> 0.76   (16 MiB, 0.5 ms)
//   [4, 4096] x [4096, 4096]       0.80 -> 0.83   0.32 -> 0.73  0.31 -> 0.49
// The probe read 26 to 44 GB/s over the runs. Where streaming stops paying (bench-gemv --sweep, 3 x 5 calls,
// [m, 4096] x [8192, 4096], tiled -> streaming): avx512bf16 m = 5, 6, 7, 8: 0.65, 0.50, 0.41, 0.62 -> 0.76, 0.68,
// 0.65, 0.65; avx512 0.23..0.31 -> 0.58..0.69; avx2 0.19..0.22 -> 0.37..0.45; at m = 12 and 16 no gain, so the
// tiled path keeps m > 8.
// The bf16 -> f32 register loads and the AVX-512 tail mask are simd.h's (shared with add.cc and convert.cc).
// Measured on the 2-core Zen 4 development machine, m = n = k = 1024 bf16 -> f32: avx2 about 160, avx512 about
// 165, avx512bf16 about 370 GFLOP/s (vdpbf16ps peak about 406); f32 inputs: avx2 125, avx512 150 (FMA peak 224).
#include "gemm.h"

#include <functional>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/threadpool.h"

#include "simd.h"

namespace moe::cpu {

namespace {

constexpr int64_t kMaxTile = 64;  // upper bound of a tile's rows and columns (f32 tile buffer on the stack)
constexpr int64_t kStreamMaxM = 8;  // m <= this takes the streaming path (stream_rows)
constexpr int64_t kStreamChunkBytes = int64_t{256} << 10;  // bytes of b per pool range of the streaming path

// Kernels see rows already offset to the current k block; `kc` values per row.
// MR x NR block: sums[r * NR + c] = dot(a_rows[r], b_rows[c]), on packed f32 rows when the tier packs.
using MicroKernel = void (*)(const void* const* a_rows, const void* const* b_rows, int64_t kc, float* sums);
// 1 x NR1 block: sums[c] = dot(a_row, b_rows[c]), always on the rows of a and b in place (ab_dtype).
using RowKernel = void (*)(const void* a_row, const void* const* b_rows, int64_t kc, float* sums);
// [kc] bf16 -> [kc] f32.
using PackFn = void (*)(const uint16_t* src, float* dst, int64_t kc);

// Streaming small-m path: MT (1..4) rows of a times R (1..4) consecutive rows of b (row stride ldb) over the full k:
// sums[r * R + c] = dot(a_rows[r], b_row0 + c * ldb). Each output's sum is the same for every MT and R.
// Sums as the tiled path does (k blocks of kb values, see the kernels), so a row of out does not depend on m.
using StreamKernel = void (*)(const void* const* a_rows, const void* b_row0, int64_t ldb, int64_t k, int64_t kb,
                              float* sums);

struct Kernels {
  MicroKernel mk;
  RowKernel rk;
  PackFn pack;        // nullptr: the MR x NR kernel reads a and b in place
  int mr, nr, nr1;
  int64_t tile_m, tile_n;  // multiple of mr, <= kMaxTile
  int64_t kc_block;  // k values per block
  StreamKernel sk[4][4];  // sk[MT - 1][R - 1]: the streaming kernel for MT rows of a and R rows of b
  int sk_rows[4];         // sk_rows[MT - 1]: the R the streaming path uses for MT rows of a (registers permitting)
  bool sk_a_f32;          // the streaming kernels take a as f32 (bf16 a converted once per call: stream_a_rows)
};

#if MOE_X86
// ---- AVX2 + FMA -----------------------------------------------------------------------------------------------
MOE_TARGET_AVX2 inline __m256 tail_mask_avx2_ps(int64_t left) {  // lanes < left set
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}
// Four [8] accumulators -> [4] sums (c0, c1, c2, c3).
MOE_TARGET_AVX2 inline __m128 reduce4_avx2(__m256 c0, __m256 c1, __m256 c2, __m256 c3) {
  __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(c0, c1), _mm256_hadd_ps(c2, c3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

#define MOE_AVX2_3X4_STEP(LOAD)                                                                          \
  {                                                                                                      \
    __m256 x0 = LOAD(a0), x1 = LOAD(a1), x2 = LOAD(a2), y;                                               \
    y = LOAD(b0); c00 = _mm256_fmadd_ps(x0, y, c00); c10 = _mm256_fmadd_ps(x1, y, c10); c20 = _mm256_fmadd_ps(x2, y, c20); \
    y = LOAD(b1); c01 = _mm256_fmadd_ps(x0, y, c01); c11 = _mm256_fmadd_ps(x1, y, c11); c21 = _mm256_fmadd_ps(x2, y, c21); \
    y = LOAD(b2); c02 = _mm256_fmadd_ps(x0, y, c02); c12 = _mm256_fmadd_ps(x1, y, c12); c22 = _mm256_fmadd_ps(x2, y, c22); \
    y = LOAD(b3); c03 = _mm256_fmadd_ps(x0, y, c03); c13 = _mm256_fmadd_ps(x1, y, c13); c23 = _mm256_fmadd_ps(x2, y, c23); \
  }

// 3 rows of a x 4 rows of b, [kc] f32 each.
MOE_TARGET_AVX2 void mk_f32_3x4_avx2(const void* const* ar, const void* const* br, int64_t kc, float* sums) {
  const float *a0 = static_cast<const float*>(ar[0]), *a1 = static_cast<const float*>(ar[1]),
              *a2 = static_cast<const float*>(ar[2]);
  const float *b0 = static_cast<const float*>(br[0]), *b1 = static_cast<const float*>(br[1]),
              *b2 = static_cast<const float*>(br[2]), *b3 = static_cast<const float*>(br[3]);
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00,
         c20 = c00, c21 = c00, c22 = c00, c23 = c00;
  int64_t p = 0;
#define MOE_LD(ptr) _mm256_loadu_ps(ptr + p)
  for (; p + 8 <= kc; p += 8) MOE_AVX2_3X4_STEP(MOE_LD)
#undef MOE_LD
  if (p < kc) {
    __m256i m = _mm256_castps_si256(tail_mask_avx2_ps(kc - p));
#define MOE_LD(ptr) _mm256_maskload_ps(ptr + p, m)
    MOE_AVX2_3X4_STEP(MOE_LD)
#undef MOE_LD
  }
  _mm_storeu_ps(sums + 0, reduce4_avx2(c00, c01, c02, c03));
  _mm_storeu_ps(sums + 4, reduce4_avx2(c10, c11, c12, c13));
  _mm_storeu_ps(sums + 8, reduce4_avx2(c20, c21, c22, c23));
}
#undef MOE_AVX2_3X4_STEP

#define MOE_AVX2_1X8_STEP(LOAD)                                                                      \
  {                                                                                                  \
    __m256 x = LOAD(a);                                                                              \
    c0 = _mm256_fmadd_ps(x, LOAD(b0), c0); c1 = _mm256_fmadd_ps(x, LOAD(b1), c1);                    \
    c2 = _mm256_fmadd_ps(x, LOAD(b2), c2); c3 = _mm256_fmadd_ps(x, LOAD(b3), c3);                    \
    c4 = _mm256_fmadd_ps(x, LOAD(b4), c4); c5 = _mm256_fmadd_ps(x, LOAD(b5), c5);                    \
    c6 = _mm256_fmadd_ps(x, LOAD(b6), c6); c7 = _mm256_fmadd_ps(x, LOAD(b7), c7);                    \
  }

// 1 row of a x 8 rows of b (the rows left over below a multiple of 3, and m = 1 decode).
MOE_TARGET_AVX2 void rk_f32_1x8_avx2(const void* ar, const void* const* br, int64_t kc, float* sums) {
  const float* a = static_cast<const float*>(ar);
  const float *b0 = static_cast<const float*>(br[0]), *b1 = static_cast<const float*>(br[1]),
              *b2 = static_cast<const float*>(br[2]), *b3 = static_cast<const float*>(br[3]),
              *b4 = static_cast<const float*>(br[4]), *b5 = static_cast<const float*>(br[5]),
              *b6 = static_cast<const float*>(br[6]), *b7 = static_cast<const float*>(br[7]);
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  int64_t p = 0;
#define MOE_LD(ptr) _mm256_loadu_ps(ptr + p)
  for (; p + 8 <= kc; p += 8) MOE_AVX2_1X8_STEP(MOE_LD)
#undef MOE_LD
  if (p < kc) {
    __m256i m = _mm256_castps_si256(tail_mask_avx2_ps(kc - p));
#define MOE_LD(ptr) _mm256_maskload_ps(ptr + p, m)
    MOE_AVX2_1X8_STEP(MOE_LD)
#undef MOE_LD
  }
  _mm_storeu_ps(sums + 0, reduce4_avx2(c0, c1, c2, c3));
  _mm_storeu_ps(sums + 4, reduce4_avx2(c4, c5, c6, c7));
}
// Same on bf16 rows, converted in registers (rows left over by the 3x4 kernel read a and b in place, so they do
// not pay for converting all of b first). The k tail (< 8) goes through zero-padded copies: the same sums as the
// 3x4 kernel's masked loads of the packed rows, so a row's result does not depend on which kernel ran it.
MOE_TARGET_AVX2 void rk_bf16_1x8_avx2(const void* ar, const void* const* br, int64_t kc, float* sums) {
  const uint16_t* a = static_cast<const uint16_t*>(ar);
  const uint16_t *b0 = static_cast<const uint16_t*>(br[0]), *b1 = static_cast<const uint16_t*>(br[1]),
                 *b2 = static_cast<const uint16_t*>(br[2]), *b3 = static_cast<const uint16_t*>(br[3]),
                 *b4 = static_cast<const uint16_t*>(br[4]), *b5 = static_cast<const uint16_t*>(br[5]),
                 *b6 = static_cast<const uint16_t*>(br[6]), *b7 = static_cast<const uint16_t*>(br[7]);
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  int64_t p = 0;
#define MOE_LD(ptr) simd::ld_bf16_avx2(ptr + p)
  for (; p + 8 <= kc; p += 8) MOE_AVX2_1X8_STEP(MOE_LD)
#undef MOE_LD
  if (p < kc) {
    alignas(16) uint16_t t[9][8];  // [a, b0 .. b7] x [8]: the last kc - p values, zero-padded
    for (int i = 0; i < 8; ++i) {
      t[0][i] = p + i < kc ? a[p + i] : 0;
      for (int c = 0; c < 8; ++c) t[c + 1][i] = p + i < kc ? static_cast<const uint16_t*>(br[c])[p + i] : 0;
    }
    a = t[0], b0 = t[1], b1 = t[2], b2 = t[3], b3 = t[4], b4 = t[5], b5 = t[6], b6 = t[7], b7 = t[8];
#define MOE_LD(ptr) simd::ld_bf16_avx2(ptr)
    MOE_AVX2_1X8_STEP(MOE_LD)
#undef MOE_LD
  }
  _mm_storeu_ps(sums + 0, reduce4_avx2(c0, c1, c2, c3));
  _mm_storeu_ps(sums + 4, reduce4_avx2(c4, c5, c6, c7));
}
#undef MOE_AVX2_1X8_STEP

MOE_TARGET_AVX2 void pack_bf16_avx2(const uint16_t* src, float* dst, int64_t kc) {  // [kc] bf16 -> [kc] f32
  int64_t p = 0;
  for (; p + 8 <= kc; p += 8) _mm256_storeu_ps(dst + p, simd::ld_bf16_avx2(src + p));
  for (; p < kc; ++p) dst[p] = bf16_to_f32(src[p]);
}

// ---- AVX-512 ----------------------------------------------------------------------------------------------------
// 16 accumulators -> [16] sums, lane r = horizontal sum of c[r]. A transpose-and-add tree: 15 adds and 30
// shuffles for all 16, instead of 16 separate reductions.
MOE_TARGET_AVX512 inline __m512 reduce_pair_ps(__m512 r0, __m512 r1) {  // per 128-bit lane: [r0, r1, r0, r1]
  return _mm512_add_ps(_mm512_unpacklo_ps(r0, r1), _mm512_unpackhi_ps(r0, r1));
}
MOE_TARGET_AVX512 inline __m512 reduce_quad_ps(__m512 x01, __m512 x23) {  // per 128-bit lane: [r0, r1, r2, r3]
  __m512d a = _mm512_castps_pd(x01), b = _mm512_castps_pd(x23);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
}
MOE_TARGET_AVX512 inline __m512 reduce_lanes_ps(__m512 y0, __m512 y1) {  // add 128-bit lanes pairwise
  return _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(y0, y1, _MM_SHUFFLE(3, 1, 3, 1)));
}
MOE_TARGET_AVX512 inline __m512 reduce16_ps(__m512 c0, __m512 c1, __m512 c2, __m512 c3, __m512 c4, __m512 c5,
                                            __m512 c6, __m512 c7, __m512 c8, __m512 c9, __m512 c10, __m512 c11,
                                            __m512 c12, __m512 c13, __m512 c14, __m512 c15) {
  __m512 y0 = reduce_quad_ps(reduce_pair_ps(c0, c1), reduce_pair_ps(c2, c3));
  __m512 y1 = reduce_quad_ps(reduce_pair_ps(c4, c5), reduce_pair_ps(c6, c7));
  __m512 y2 = reduce_quad_ps(reduce_pair_ps(c8, c9), reduce_pair_ps(c10, c11));
  __m512 y3 = reduce_quad_ps(reduce_pair_ps(c12, c13), reduce_pair_ps(c14, c15));
  return reduce_lanes_ps(reduce_lanes_ps(y0, y1), reduce_lanes_ps(y2, y3));
}

#define MOE_4X4_STEP(V, FMA, LOAD)                                                                     \
  {                                                                                                    \
    V x0 = LOAD(a0), x1 = LOAD(a1), x2 = LOAD(a2), x3 = LOAD(a3), y;                                   \
    y = LOAD(b0); c00 = FMA(c00, x0, y); c10 = FMA(c10, x1, y); c20 = FMA(c20, x2, y); c30 = FMA(c30, x3, y); \
    y = LOAD(b1); c01 = FMA(c01, x0, y); c11 = FMA(c11, x1, y); c21 = FMA(c21, x2, y); c31 = FMA(c31, x3, y); \
    y = LOAD(b2); c02 = FMA(c02, x0, y); c12 = FMA(c12, x1, y); c22 = FMA(c22, x2, y); c32 = FMA(c32, x3, y); \
    y = LOAD(b3); c03 = FMA(c03, x0, y); c13 = FMA(c13, x1, y); c23 = FMA(c23, x2, y); c33 = FMA(c33, x3, y); \
  }
#define MOE_1X16_STEP(V, FMA, LOAD)                                                                    \
  {                                                                                                    \
    V x = LOAD(a);                                                                                     \
    c0 = FMA(c0, x, LOAD(br[0])); c1 = FMA(c1, x, LOAD(br[1])); c2 = FMA(c2, x, LOAD(br[2]));          \
    c3 = FMA(c3, x, LOAD(br[3])); c4 = FMA(c4, x, LOAD(br[4])); c5 = FMA(c5, x, LOAD(br[5]));          \
    c6 = FMA(c6, x, LOAD(br[6])); c7 = FMA(c7, x, LOAD(br[7])); c8 = FMA(c8, x, LOAD(br[8]));          \
    c9 = FMA(c9, x, LOAD(br[9])); c10 = FMA(c10, x, LOAD(br[10])); c11 = FMA(c11, x, LOAD(br[11]));    \
    c12 = FMA(c12, x, LOAD(br[12])); c13 = FMA(c13, x, LOAD(br[13])); c14 = FMA(c14, x, LOAD(br[14])); \
    c15 = FMA(c15, x, LOAD(br[15]));                                                                   \
  }
#define MOE_ZERO_16_ACC                                                                                \
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0,      \
         c8 = c0, c9 = c0, c10 = c0, c11 = c0, c12 = c0, c13 = c0, c14 = c0, c15 = c0;
#define MOE_ZERO_4X4_ACC                                                                               \
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,  \
         c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;

MOE_TARGET_AVX512 inline __m512 fma_ps_512(__m512 c, __m512 x, __m512 y) { return _mm512_fmadd_ps(x, y, c); }

// 4 rows of a x 4 rows of b, [kc] f32 each.
MOE_TARGET_AVX512 void mk_f32_4x4_avx512(const void* const* ar, const void* const* br, int64_t kc, float* sums) {
  const float *a0 = static_cast<const float*>(ar[0]), *a1 = static_cast<const float*>(ar[1]),
              *a2 = static_cast<const float*>(ar[2]), *a3 = static_cast<const float*>(ar[3]);
  const float *b0 = static_cast<const float*>(br[0]), *b1 = static_cast<const float*>(br[1]),
              *b2 = static_cast<const float*>(br[2]), *b3 = static_cast<const float*>(br[3]);
  MOE_ZERO_4X4_ACC
  int64_t p = 0;
#define MOE_LD(ptr) _mm512_loadu_ps(ptr + p)
  for (; p + 16 <= kc; p += 16) MOE_4X4_STEP(__m512, fma_ps_512, MOE_LD)
#undef MOE_LD
  if (p < kc) {
    __mmask16 m = simd::tail_mask16(static_cast<size_t>(kc - p));
#define MOE_LD(ptr) _mm512_maskz_loadu_ps(m, ptr + p)
    MOE_4X4_STEP(__m512, fma_ps_512, MOE_LD)
#undef MOE_LD
  }
  _mm512_storeu_ps(sums, reduce16_ps(c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32,
                                     c33));
}

// 1 row of a x 16 rows of b, [kc] f32 each.
MOE_TARGET_AVX512 void rk_f32_1x16_avx512(const void* ar, const void* const* bv, int64_t kc, float* sums) {
  const float* a = static_cast<const float*>(ar);
  const float* br[16];
  for (int c = 0; c < 16; ++c) br[c] = static_cast<const float*>(bv[c]);
  MOE_ZERO_16_ACC
  int64_t p = 0;
#define MOE_LD(ptr) _mm512_loadu_ps((ptr) + p)
  for (; p + 16 <= kc; p += 16) MOE_1X16_STEP(__m512, fma_ps_512, MOE_LD)
#undef MOE_LD
  if (p < kc) {
    __mmask16 m = simd::tail_mask16(static_cast<size_t>(kc - p));
#define MOE_LD(ptr) _mm512_maskz_loadu_ps(m, (ptr) + p)
    MOE_1X16_STEP(__m512, fma_ps_512, MOE_LD)
#undef MOE_LD
  }
  _mm512_storeu_ps(sums, reduce16_ps(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15));
}

// Same on bf16 rows, converted in registers (see rk_bf16_1x8_avx2).
MOE_TARGET_AVX512 void rk_bf16_1x16_avx512(const void* ar, const void* const* bv, int64_t kc, float* sums) {
  const uint16_t* a = static_cast<const uint16_t*>(ar);
  const uint16_t* br[16];
  for (int c = 0; c < 16; ++c) br[c] = static_cast<const uint16_t*>(bv[c]);
  MOE_ZERO_16_ACC
  for (int64_t p = 0; p < kc; p += 16) {
    const __mmask16 m = simd::tail_mask16(static_cast<size_t>(kc - p));
#define MOE_LD(ptr) simd::ld_bf16_512((ptr) + p, m)
    MOE_1X16_STEP(__m512, fma_ps_512, MOE_LD)
#undef MOE_LD
  }
  _mm512_storeu_ps(sums, reduce16_ps(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15));
}

MOE_TARGET_AVX512 void pack_bf16_avx512(const uint16_t* src, float* dst, int64_t kc) {  // [kc] bf16 -> [kc] f32
  for (int64_t p = 0; p < kc; p += 16) {
    const __mmask16 m = simd::tail_mask16(static_cast<size_t>(kc - p));
    _mm512_mask_storeu_ps(dst + p, m, simd::ld_bf16_512(src + p, m));
  }
}

// ---- AVX-512 BF16: vdpbf16ps on the bf16 rows in place ---------------------------------------------------------
MOE_TARGET_AVX512BF16 inline __m512 dp_bf16_512(__m512 c, __m512i x, __m512i y) {
  return _mm512_dpbf16_ps(c, (__m512bh)x, (__m512bh)y);  // c[i] += x[2i] y[2i] + x[2i+1] y[2i+1]
}
MOE_TARGET_AVX512BF16 inline __mmask32 tail_mask32(int64_t left) {
  return left >= 32 ? static_cast<__mmask32>(0xffffffffu) : static_cast<__mmask32>((1u << left) - 1u);
}

// 4 rows of a x 4 rows of b, [kc] bf16 each; 32 values of k per instruction (an odd kc is padded with zeros).
MOE_TARGET_AVX512BF16 void mk_bf16_4x4_avx512bf16(const void* const* ar, const void* const* br, int64_t kc,
                                                  float* sums) {
  const uint16_t *a0 = static_cast<const uint16_t*>(ar[0]), *a1 = static_cast<const uint16_t*>(ar[1]),
                 *a2 = static_cast<const uint16_t*>(ar[2]), *a3 = static_cast<const uint16_t*>(ar[3]);
  const uint16_t *b0 = static_cast<const uint16_t*>(br[0]), *b1 = static_cast<const uint16_t*>(br[1]),
                 *b2 = static_cast<const uint16_t*>(br[2]), *b3 = static_cast<const uint16_t*>(br[3]);
  MOE_ZERO_4X4_ACC
  int64_t p = 0;
#define MOE_LD(ptr) _mm512_loadu_si512(ptr + p)
  for (; p + 32 <= kc; p += 32) MOE_4X4_STEP(__m512i, dp_bf16_512, MOE_LD)
#undef MOE_LD
  if (p < kc) {
    __mmask32 m = tail_mask32(kc - p);
#define MOE_LD(ptr) _mm512_maskz_loadu_epi16(m, ptr + p)
    MOE_4X4_STEP(__m512i, dp_bf16_512, MOE_LD)
#undef MOE_LD
  }
  _mm512_storeu_ps(sums, reduce16_ps(c00, c01, c02, c03, c10, c11, c12, c13, c20, c21, c22, c23, c30, c31, c32,
                                     c33));
}

// 1 row of a x 16 rows of b, [kc] bf16 each.
MOE_TARGET_AVX512BF16 void rk_bf16_1x16_avx512bf16(const void* ar, const void* const* bv, int64_t kc,
                                                   float* sums) {
  const uint16_t* a = static_cast<const uint16_t*>(ar);
  const uint16_t* br[16];
  for (int c = 0; c < 16; ++c) br[c] = static_cast<const uint16_t*>(bv[c]);
  MOE_ZERO_16_ACC
  int64_t p = 0;
#define MOE_LD(ptr) _mm512_loadu_si512((ptr) + p)
  for (; p + 32 <= kc; p += 32) MOE_1X16_STEP(__m512i, dp_bf16_512, MOE_LD)
#undef MOE_LD
  if (p < kc) {
    __mmask32 m = tail_mask32(kc - p);
#define MOE_LD(ptr) _mm512_maskz_loadu_epi16(m, (ptr) + p)
    MOE_1X16_STEP(__m512i, dp_bf16_512, MOE_LD)
#undef MOE_LD
  }
  _mm512_storeu_ps(sums, reduce16_ps(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15));
}
#undef MOE_4X4_STEP
#undef MOE_1X16_STEP
#undef MOE_ZERO_16_ACC
#undef MOE_ZERO_4X4_ACC
#endif  // MOE_X86

#if MOE_X86
// ---- streaming small-m kernels: MT <= 4 rows of a x R <= 4 consecutive rows of b, the full k ----------------------
// sums[r * R + c] = dot(a_rows[r], b_row0 + c * ldb). The R b rows are walked side by side, front to back, each
// read once; every a vector loaded serves R outputs. Each output is summed exactly as the tiled path sums it (batch
// invariance: a row of out is bitwise the same whatever m is): per k block of kb values (the tier's kc_block,
// counted from k = 0), one vector accumulator fed in k order by the same instruction as the tier's micro-kernels
// (vdpbf16ps per 32 k, or FMA on f32 lanes holding consecutive k, masked tail), reduced by the same tree (reduce16_ps
// / reduce4_avx2), and added to an f32 total that starts at 0.
#define MOE_SK_PROLOGUE(TA, TB, V)                                                                      \
  const TB* b[R];                                                                                       \
  for (int c = 0; c < R; ++c) b[c] = static_cast<const TB*>(bv) + c * ldb;                              \
  const TA* a[MT];                                                                                      \
  for (int r = 0; r < MT; ++r) a[r] = static_cast<const TA*>(av[r]);                                    \
  float tot[MT * R];                                                                                    \
  for (int i = 0; i < MT * R; ++i) tot[i] = 0.0f;                                                       \
  V acc[MT][R];
// One block step over [p, p + step). kAFirst (the kernel's constant): the MT a vectors first, then each b vector
// against them as it is loaded; otherwise the R b vectors first, then every row of a against them. Each accumulator
// gets the same additions in the same order either way (one FMA per step); only the instruction schedule differs.
// a-first for MT = 2 on avx512bf16 and avx2 (bf16): paired per call against b-first (median ratio of 9 calls, b
// streamed from memory, 2-core Zen 4): avx512bf16 m = 2 +0..3%, m = 6 (4 + 2) +0..3%; avx2 m = 2 +3..5%, m = 6
// 0..+12%; b L2-resident, one thread: avx512bf16 m = 2 49 -> 60 GB/s of b, m = 6 24 -> 27. It was 5-7% slower on
// the avx512 tier (bf16 b converted in registers) at m = 2, and for MT = 3 50% faster with b in L2 but 4-7% slower
// at m = 3 streaming b from memory; MT = 1 and 4 gained nothing: those stay b-first.
#define MOE_SK_STEP(V, YV, LOADB, LOADA, FMA)                                                           \
  if constexpr (kAFirst) {                                                                              \
    YV x[MT];                                                                                           \
    _Pragma("GCC unroll 4") for (int r = 0; r < MT; ++r) x[r] = LOADA(r);                               \
    _Pragma("GCC unroll 4") for (int c = 0; c < R; ++c) {                                               \
      const YV y = LOADB(c);                                                                            \
      _Pragma("GCC unroll 4") for (int r = 0; r < MT; ++r) acc[r][c] = FMA(acc[r][c], x[r], y);         \
    }                                                                                                   \
  } else {                                                                                              \
    YV y[R];                                                                                            \
    _Pragma("GCC unroll 4") for (int c = 0; c < R; ++c) y[c] = LOADB(c);                                \
    _Pragma("GCC unroll 4") for (int r = 0; r < MT; ++r) {                                              \
      const YV x = LOADA(r);                                                                            \
      _Pragma("GCC unroll 4") for (int c = 0; c < R; ++c) acc[r][c] = FMA(acc[r][c], x, y[c]);          \
    }                                                                                                   \
  }

// tot[i] += horizontal sum of c[i] (i < n <= 16), each by reduce16_ps's tree (the tiled path's sums).
MOE_TARGET_AVX512 inline void add_reduced_512(const __m512* c, int n, float* tot) {
  __m512 v[16];
  for (int i = 0; i < 16; ++i) v[i] = i < n ? c[i] : _mm512_setzero_ps();
  alignas(64) float s[16];
  _mm512_store_ps(s, reduce16_ps(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
                                 v[13], v[14], v[15]));
  for (int i = 0; i < n; ++i) tot[i] += s[i];
}
// Same with reduce4_avx2's tree, 4 at a time.
MOE_TARGET_AVX2 inline void add_reduced_avx2(const __m256* c, int n, float* tot) {
  for (int i0 = 0; i0 < n; i0 += 4) {
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = i0 + i < n ? c[i0 + i] : _mm256_setzero_ps();
    alignas(16) float s[4];
    _mm_store_ps(s, reduce4_avx2(v[0], v[1], v[2], v[3]));
    for (int i = 0; i < 4 && i0 + i < n; ++i) tot[i0 + i] += s[i];
  }
}

MOE_TARGET_AVX2 inline __m256 fma_ps_256(__m256 c, __m256 x, __m256 y) { return _mm256_fmadd_ps(x, y, c); }

// AVX2, 8 k per step: f32 a and b, or f32 a (the caller's copy of bf16 a, see stream_a_rows) and bf16 b converted
// in registers as rk_bf16_1x8_avx2 does. AVX2 has no 16-bit masked load: the bf16 k tail (< 8) goes through
// zero-padded copies, the same values the tiled path's masked loads of its packed f32 rows give.
template <int MT, int R>
MOE_TARGET_AVX2 void sk_bf16_avx2(const void* const* av, const void* bv, int64_t ldb, int64_t k, int64_t kb,
                                  float* sums) {
  MOE_SK_PROLOGUE(float, uint16_t, __m256)
  constexpr bool kAFirst = MT == 2;  // MOE_SK_STEP's schedule
  for (int64_t k0 = 0; k0 < k; k0 += kb) {
    const int64_t k1 = k - k0 < kb ? k : k0 + kb;
    for (int r = 0; r < MT; ++r)
      for (int c = 0; c < R; ++c) acc[r][c] = _mm256_setzero_ps();
    int64_t p = k0;
#define MOE_LDB(c) simd::ld_bf16_avx2(b[c] + p)
#define MOE_LDA(r) _mm256_loadu_ps(a[r] + p)
    for (; p + 8 <= k1; p += 8) MOE_SK_STEP(__m256, __m256, MOE_LDB, MOE_LDA, fma_ps_256)
#undef MOE_LDB
#undef MOE_LDA
    if (p < k1) {
      alignas(16) uint16_t tb[R][8];
      for (int i = 0; i < 8; ++i)
        for (int c = 0; c < R; ++c) tb[c][i] = p + i < k1 ? b[c][p + i] : 0;
      const __m256i m = _mm256_castps_si256(tail_mask_avx2_ps(k1 - p));
#define MOE_LDB(c) simd::ld_bf16_avx2(tb[c])
#define MOE_LDA(r) _mm256_maskload_ps(a[r] + p, m)
      MOE_SK_STEP(__m256, __m256, MOE_LDB, MOE_LDA, fma_ps_256)
#undef MOE_LDB
#undef MOE_LDA
    }
    add_reduced_avx2(&acc[0][0], MT * R, tot);
  }
  for (int i = 0; i < MT * R; ++i) sums[i] = tot[i];
}

template <int MT, int R>
MOE_TARGET_AVX2 void sk_f32_avx2(const void* const* av, const void* bv, int64_t ldb, int64_t k, int64_t kb,
                                 float* sums) {
  MOE_SK_PROLOGUE(float, float, __m256)
  constexpr bool kAFirst = false;  // MOE_SK_STEP's schedule
  for (int64_t k0 = 0; k0 < k; k0 += kb) {
    const int64_t k1 = k - k0 < kb ? k : k0 + kb;
    for (int r = 0; r < MT; ++r)
      for (int c = 0; c < R; ++c) acc[r][c] = _mm256_setzero_ps();
    int64_t p = k0;
#define MOE_LDB(c) _mm256_loadu_ps(b[c] + p)
#define MOE_LDA(r) _mm256_loadu_ps(a[r] + p)
    for (; p + 8 <= k1; p += 8) MOE_SK_STEP(__m256, __m256, MOE_LDB, MOE_LDA, fma_ps_256)
#undef MOE_LDB
#undef MOE_LDA
    if (p < k1) {
      const __m256i m = _mm256_castps_si256(tail_mask_avx2_ps(k1 - p));
#define MOE_LDB(c) _mm256_maskload_ps(b[c] + p, m)
#define MOE_LDA(r) _mm256_maskload_ps(a[r] + p, m)
      MOE_SK_STEP(__m256, __m256, MOE_LDB, MOE_LDA, fma_ps_256)
#undef MOE_LDB
#undef MOE_LDA
    }
    add_reduced_avx2(&acc[0][0], MT * R, tot);
  }
  for (int i = 0; i < MT * R; ++i) sums[i] = tot[i];
}

// AVX-512, 16 k per step, masked tail: f32 a and b, or f32 a (the caller's copy of bf16 a) and bf16 b converted in
// registers as rk_bf16_1x16_avx512 does.
template <int MT, int R>
MOE_TARGET_AVX512 void sk_bf16_avx512(const void* const* av, const void* bv, int64_t ldb, int64_t k, int64_t kb,
                                      float* sums) {
  MOE_SK_PROLOGUE(float, uint16_t, __m512)
  constexpr bool kAFirst = false;  // MOE_SK_STEP's schedule
  for (int64_t k0 = 0; k0 < k; k0 += kb) {
    const int64_t k1 = k - k0 < kb ? k : k0 + kb;
    for (int r = 0; r < MT; ++r)
      for (int c = 0; c < R; ++c) acc[r][c] = _mm512_setzero_ps();
    int64_t p = k0;
#define MOE_LDB(c) _mm512_castsi512_ps(_mm512_slli_epi32( \
    _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[c] + p))), 16))
#define MOE_LDA(r) _mm512_loadu_ps(a[r] + p)
    for (; p + 16 <= k1; p += 16) MOE_SK_STEP(__m512, __m512, MOE_LDB, MOE_LDA, fma_ps_512)
#undef MOE_LDB
#undef MOE_LDA
    if (p < k1) {
      const __mmask16 m = simd::tail_mask16(static_cast<size_t>(k1 - p));
#define MOE_LDB(c) simd::ld_bf16_512(b[c] + p, m)
#define MOE_LDA(r) _mm512_maskz_loadu_ps(m, a[r] + p)
      MOE_SK_STEP(__m512, __m512, MOE_LDB, MOE_LDA, fma_ps_512)
#undef MOE_LDB
#undef MOE_LDA
    }
    add_reduced_512(&acc[0][0], MT * R, tot);
  }
  for (int i = 0; i < MT * R; ++i) sums[i] = tot[i];
}

template <int MT, int R>
MOE_TARGET_AVX512 void sk_f32_avx512(const void* const* av, const void* bv, int64_t ldb, int64_t k, int64_t kb,
                                     float* sums) {
  MOE_SK_PROLOGUE(float, float, __m512)
  constexpr bool kAFirst = false;  // MOE_SK_STEP's schedule
  for (int64_t k0 = 0; k0 < k; k0 += kb) {
    const int64_t k1 = k - k0 < kb ? k : k0 + kb;
    for (int r = 0; r < MT; ++r)
      for (int c = 0; c < R; ++c) acc[r][c] = _mm512_setzero_ps();
    int64_t p = k0;
#define MOE_LDB(c) _mm512_loadu_ps(b[c] + p)
#define MOE_LDA(r) _mm512_loadu_ps(a[r] + p)
    for (; p + 16 <= k1; p += 16) MOE_SK_STEP(__m512, __m512, MOE_LDB, MOE_LDA, fma_ps_512)
#undef MOE_LDB
#undef MOE_LDA
    if (p < k1) {
      const __mmask16 m = simd::tail_mask16(static_cast<size_t>(k1 - p));
#define MOE_LDB(c) _mm512_maskz_loadu_ps(m, b[c] + p)
#define MOE_LDA(r) _mm512_maskz_loadu_ps(m, a[r] + p)
      MOE_SK_STEP(__m512, __m512, MOE_LDB, MOE_LDA, fma_ps_512)
#undef MOE_LDB
#undef MOE_LDA
    }
    add_reduced_512(&acc[0][0], MT * R, tot);
  }
  for (int i = 0; i < MT * R; ++i) sums[i] = tot[i];
}

// AVX-512 BF16 on bf16: vdpbf16ps on the rows in place, 32 k per step; an odd k is padded with zeros by the masked
// tail load.
template <int MT, int R>
MOE_TARGET_AVX512BF16 void sk_bf16_avx512bf16(const void* const* av, const void* bv, int64_t ldb, int64_t k,
                                              int64_t kb, float* sums) {
  MOE_SK_PROLOGUE(uint16_t, uint16_t, __m512)
  constexpr bool kAFirst = MT == 2;  // MOE_SK_STEP's schedule
  for (int64_t k0 = 0; k0 < k; k0 += kb) {
    const int64_t k1 = k - k0 < kb ? k : k0 + kb;
    for (int r = 0; r < MT; ++r)
      for (int c = 0; c < R; ++c) acc[r][c] = _mm512_setzero_ps();
    int64_t p = k0;
#define MOE_LDB(c) _mm512_loadu_si512(b[c] + p)
#define MOE_LDA(r) _mm512_loadu_si512(a[r] + p)
    for (; p + 32 <= k1; p += 32) MOE_SK_STEP(__m512, __m512i, MOE_LDB, MOE_LDA, dp_bf16_512)
#undef MOE_LDB
#undef MOE_LDA
    if (p < k1) {
      const __mmask32 m = tail_mask32(k1 - p);
#define MOE_LDB(c) _mm512_maskz_loadu_epi16(m, b[c] + p)
#define MOE_LDA(r) _mm512_maskz_loadu_epi16(m, a[r] + p)
      MOE_SK_STEP(__m512, __m512i, MOE_LDB, MOE_LDA, dp_bf16_512)
#undef MOE_LDB
#undef MOE_LDA
    }
    add_reduced_512(&acc[0][0], MT * R, tot);
  }
  for (int i = 0; i < MT * R; ++i) sums[i] = tot[i];
}
#undef MOE_SK_STEP
#undef MOE_SK_PROLOGUE
#endif  // MOE_X86

// ---- tile driver (plain C++, calls the tier's kernels through pointers) ---------------------------------------
// Per-thread conversion buffer for packed bf16 -> f32 blocks: (tile_m + tile_n) x kc_block floats.
float* pack_buffer(size_t floats) {
  static thread_local std::vector<float> buf;
  if (buf.size() < floats) buf.resize(floats);
  return buf.data();
}

// out[i0 : i0 + mt, j0 : j0 + nt] for one tile.
void run_tile(const GemmArgs& g, const Kernels& kn, int64_t i0, int64_t mt, int64_t j0, int64_t nt) {
  float acc[kMaxTile * kMaxTile];  // [mt, nt] f32, row stride kMaxTile
  for (int64_t i = 0; i < mt; ++i) {
    for (int64_t j = 0; j < nt; ++j) acc[i * kMaxTile + j] = 0.0f;
  }
  const size_t in_elem = dtype_size(g.ab_dtype);
  const auto* a = static_cast<const uint8_t*>(g.a);
  const auto* b = static_cast<const uint8_t*>(g.b);
  const int64_t m_full = mt - mt % kn.mr;  // rows done by the MR x NR kernel; the rest by the row kernel
  // bf16 -> f32 packing pays off only for the MR x NR kernel (b rows reused MR times, a rows NR times).
  float* packed = kn.pack != nullptr && m_full > 0
                      ? pack_buffer(static_cast<size_t>((kn.tile_m + kn.tile_n) * kn.kc_block))
                      : nullptr;
  const void* araw[kMaxTile];  // [mt] rows of a at the current k block, in place
  const void* braw[kMaxTile];  // [nt] rows of b at the current k block, in place
  const void* amk[kMaxTile];   // [m_full] rows of a for the MR x NR kernel (packed or in place)
  const void* bmk[kMaxTile];   // [nt] rows of b for the MR x NR kernel
  float sums[16];

  for (int64_t k0 = 0; k0 < g.k; k0 += kn.kc_block) {
    const int64_t kc = g.k - k0 < kn.kc_block ? g.k - k0 : kn.kc_block;
    for (int64_t i = 0; i < mt; ++i) araw[i] = a + static_cast<size_t>((i0 + i) * g.lda + k0) * in_elem;
    for (int64_t j = 0; j < nt; ++j) braw[j] = b + static_cast<size_t>((j0 + j) * g.ldb + k0) * in_elem;
    for (int64_t i = 0; i < m_full; ++i) {
      amk[i] = araw[i];
      if (packed != nullptr) {
        float* dst = packed + i * kn.kc_block;  // [kc] f32
        kn.pack(static_cast<const uint16_t*>(araw[i]), dst, kc);
        amk[i] = dst;
      }
    }
    for (int64_t j = 0; j < nt && m_full > 0; ++j) {
      bmk[j] = braw[j];
      if (packed != nullptr) {
        float* dst = packed + (kn.tile_m + j) * kn.kc_block;  // [kc] f32
        kn.pack(static_cast<const uint16_t*>(braw[j]), dst, kc);
        bmk[j] = dst;
      }
    }

    // Full groups of mr rows; b rows past nt repeat the last one (their sums are dropped).
    for (int64_t i = 0; i < m_full; i += kn.mr) {
      for (int64_t j = 0; j < nt; j += kn.nr) {
        const void* bp[16];
        for (int c = 0; c < kn.nr; ++c) bp[c] = bmk[j + c < nt ? j + c : nt - 1];
        kn.mk(&amk[i], bp, kc, sums);
        const int64_t ncols = nt - j < kn.nr ? nt - j : kn.nr;
        for (int r = 0; r < kn.mr; ++r) {
          for (int64_t c = 0; c < ncols; ++c) acc[(i + r) * kMaxTile + j + c] += sums[r * kn.nr + c];
        }
      }
    }
    // Rows left over (and m < mr, e.g. decode with one token): one row against nr1 rows of b at a time.
    for (int64_t i = m_full; i < mt; ++i) {
      for (int64_t j = 0; j < nt; j += kn.nr1) {
        const void* bp[16];
        for (int c = 0; c < kn.nr1; ++c) bp[c] = braw[j + c < nt ? j + c : nt - 1];
        kn.rk(araw[i], bp, kc, sums);
        const int64_t ncols = nt - j < kn.nr1 ? nt - j : kn.nr1;
        for (int64_t c = 0; c < ncols; ++c) acc[i * kMaxTile + j + c] += sums[c];
      }
    }
  }

  for (int64_t i = 0; i < mt; ++i) {
    const float* src = acc + i * kMaxTile;
    if (g.out_dtype == DType::F32) {
      float* dst = static_cast<float*>(g.out) + (i0 + i) * g.ldc + j0;  // [nt] f32
      for (int64_t j = 0; j < nt; ++j) dst[j] = src[j];
    } else {
      uint16_t* dst = static_cast<uint16_t*>(g.out) + (i0 + i) * g.ldc + j0;  // [nt] bf16
      for (int64_t j = 0; j < nt; ++j) dst[j] = f32_to_bf16(src[j]);
    }
  }
}

// ---- scalar reference tier --------------------------------------------------------------------------------------
inline float load_ab(const void* p, DType t, int64_t idx) {
  return t == DType::BF16 ? bf16_to_f32(static_cast<const uint16_t*>(p)[idx]) : static_cast<const float*>(p)[idx];
}

void scalar_rows(const GemmArgs& g, int64_t i_begin, int64_t i_end) {
  for (int64_t i = i_begin; i < i_end; ++i) {
    for (int64_t j = 0; j < g.n; ++j) {
      float acc = 0.0f;
      for (int64_t p = 0; p < g.k; ++p) acc += load_ab(g.a, g.ab_dtype, i * g.lda + p) * load_ab(g.b, g.ab_dtype, j * g.ldb + p);
      if (g.out_dtype == DType::F32) {
        static_cast<float*>(g.out)[i * g.ldc + j] = acc;
      } else {
        static_cast<uint16_t*>(g.out)[i * g.ldc + j] = f32_to_bf16(acc);
      }
    }
  }
}

// ---- streaming small-m path --------------------------------------------------------------------------------------
// Scalar streaming kernel (R = 1): per row of a, one f32 accumulator, k in order (the same sums as scalar_rows).
inline float ab_f32(uint16_t v) { return bf16_to_f32(v); }
inline float ab_f32(float v) { return v; }
template <class T, int MT>
void sk_scalar(const void* const* av, const void* bv, int64_t ldb, int64_t k, int64_t kb, float* sums) {
  (void)ldb;
  (void)kb;
  const T* b = static_cast<const T*>(bv);  // [k]
  for (int r = 0; r < MT; ++r) {
    const T* a = static_cast<const T*>(av[r]);  // [k]
    float acc = 0.0f;
    for (int64_t p = 0; p < k; ++p) acc += ab_f32(a[p]) * ab_f32(b[p]);
    sums[r] = acc;
  }
}

// ar[0 : m]: the rows of a as the streaming kernels take them: in place, or (kn.sk_a_f32, bf16 a) converted to f32
// once per call into this thread's buffer (exact; the conversion then leaves the kernels' inner loop, where it
// competed with the FMAs for the vector pipes), which stays valid until this thread's next call.
void stream_a_rows(const GemmArgs& g, const Kernels& kn, const void** ar) {
  const size_t es = dtype_size(g.ab_dtype);
  const auto* a = static_cast<const uint8_t*>(g.a);
  for (int64_t i = 0; i < g.m && g.k > 0; ++i) ar[i] = a + static_cast<size_t>(i * g.lda) * es;
  if (!kn.sk_a_f32 || g.ab_dtype != DType::BF16 || g.k == 0) return;
  static thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(g.m * g.k)) buf.resize(static_cast<size_t>(g.m * g.k));
  for (int64_t i = 0; i < g.m; ++i) {
    kn.pack(static_cast<const uint16_t*>(ar[i]), buf.data() + i * g.k, g.k);  // [k] bf16 -> [k] f32
    ar[i] = buf.data() + i * g.k;
  }
}

// out[0 : m, j0 : j1] for m <= kStreamMaxM: the b rows j0 .. j1 - 1 in groups of R consecutive rows, each group
// walked once over the full k against the rows of a in groups of up to 4 (when m > 4, the later groups find the R
// b rows in L1/L2).
void stream_rows(const GemmArgs& g, const Kernels& kn, const void* const* ar, int64_t j0, int64_t j1) {
  const size_t es = dtype_size(g.ab_dtype);
  const auto* b = static_cast<const uint8_t*>(g.b);
  float sums[kStreamMaxM * 4];  // [m, R] f32: columns j .. j + R - 1 of out
  for (int64_t i = 0; i < g.m * 4; ++i) sums[i] = 0.0f;
  const int64_t rmax = kn.sk_rows[(g.m < 4 ? g.m : 4) - 1];
  for (int64_t j = j0; j < j1; j += rmax) {
    const int64_t nr = j1 - j < rmax ? j1 - j : rmax;
    if (g.k > 0) {
      const void* br = b + static_cast<size_t>(j * g.ldb) * es;  // [nr, k] rows j .. of b, stride ldb
      for (int64_t i0 = 0; i0 < g.m; i0 += 4) {
        const int64_t mt = g.m - i0 < 4 ? g.m - i0 : 4;
        kn.sk[mt - 1][nr - 1](ar + i0, br, g.ldb, g.k, kn.kc_block, sums + i0 * nr);
      }
    }
    for (int64_t i = 0; i < g.m; ++i) {
      if (g.out_dtype == DType::F32) {
        float* dst = static_cast<float*>(g.out) + i * g.ldc + j;  // [nr] f32
        for (int64_t c = 0; c < nr; ++c) dst[c] = sums[i * nr + c];
      } else {
        uint16_t* dst = static_cast<uint16_t*>(g.out) + i * g.ldc + j;  // [nr] bf16
        for (int64_t c = 0; c < nr; ++c) dst[c] = f32_to_bf16(sums[i * nr + c]);
      }
    }
  }
}

void require(bool ok, const std::string& what) {
  if (!ok) throw_error(ErrorCode::InvalidArgument, "gemm: " + what);
}

std::string i64(int64_t v) { return std::to_string(v); }

void validate(const GemmArgs& g) {
  require(g.ab_dtype == DType::F32 || g.ab_dtype == DType::BF16,
          std::string("ab_dtype must be f32 or bf16, received ") + dtype_name(g.ab_dtype));
  require(g.out_dtype == DType::F32 || g.out_dtype == DType::BF16,
          std::string("out_dtype must be f32 or bf16, received ") + dtype_name(g.out_dtype));
  require(g.m >= 0, "m must be >= 0, received " + i64(g.m));
  require(g.n >= 0, "n must be >= 0, received " + i64(g.n));
  require(g.k >= 0, "k must be >= 0, received " + i64(g.k));
  require(g.lda >= g.k, "lda must be >= k (" + i64(g.k) + "), received " + i64(g.lda));
  require(g.ldb >= g.k, "ldb must be >= k (" + i64(g.k) + "), received " + i64(g.ldb));
  require(g.ldc >= g.n, "ldc must be >= n (" + i64(g.n) + "), received " + i64(g.ldc));
  require(g.a != nullptr || g.m == 0 || g.k == 0, "a must be non-null when m > 0 and k > 0, received null");
  require(g.b != nullptr || g.n == 0 || g.k == 0, "b must be non-null when n > 0 and k > 0, received null");
  require(g.out != nullptr || g.m == 0 || g.n == 0, "out must be non-null when m > 0 and n > 0, received null");
}

// The kernels of the best implemented tier <= isa for g's dtypes; returns that tier (Scalar: kn unused).
Isa select_kernels(const GemmArgs& g, Isa isa, Kernels* out) {
  Isa ran = Isa::Scalar;
  Kernels kn{};
#if MOE_X86
  const Isa tier = clamp_isa(isa);
  const bool bf16_in = g.ab_dtype == DType::BF16;
  if (tier >= Isa::Avx512Bf16 && bf16_in) {
    kn = Kernels{mk_bf16_4x4_avx512bf16, rk_bf16_1x16_avx512bf16, nullptr, 4, 4, 16, 64, 64, 1024, {}, {}, false};
    ran = Isa::Avx512Bf16;
  } else if (tier >= Isa::Avx512) {
    kn = bf16_in ? Kernels{mk_f32_4x4_avx512, rk_bf16_1x16_avx512, pack_bf16_avx512, 4, 4, 16, 64, 64, 512, {}, {}, false}
                 : Kernels{mk_f32_4x4_avx512, rk_f32_1x16_avx512, nullptr, 4, 4, 16, 64, 64, 512, {}, {}, false};
    ran = Isa::Avx512;
  } else if (tier >= Isa::Avx2) {
    kn = bf16_in ? Kernels{mk_f32_3x4_avx2, rk_bf16_1x8_avx2, pack_bf16_avx2, 3, 4, 8, 60, 64, 512, {}, {}, false}
                 : Kernels{mk_f32_3x4_avx2, rk_f32_1x8_avx2, nullptr, 3, 4, 8, 60, 64, 512, {}, {}, false};
    ran = Isa::Avx2;
  }
#else
  (void)g;
  (void)isa;
#endif
  // Streaming kernels: sk[MT - 1][R - 1] and the R used per MT (AVX2 has 16 registers: fewer b rows for MT > 1).
  const bool bf16_ab = g.ab_dtype == DType::BF16;
  const int rows_512[4] = {4, 4, 4, 4}, rows_avx2[4] = {4, 4, 3, 2};
  const int* rows = nullptr;
#define MOE_SET_SK(FN)                                                                                   \
  kn.sk[0][0] = FN<1, 1>, kn.sk[0][1] = FN<1, 2>, kn.sk[0][2] = FN<1, 3>, kn.sk[0][3] = FN<1, 4>,        \
  kn.sk[1][0] = FN<2, 1>, kn.sk[1][1] = FN<2, 2>, kn.sk[1][2] = FN<2, 3>, kn.sk[1][3] = FN<2, 4>,        \
  kn.sk[2][0] = FN<3, 1>, kn.sk[2][1] = FN<3, 2>, kn.sk[2][2] = FN<3, 3>, kn.sk[2][3] = FN<3, 4>,        \
  kn.sk[3][0] = FN<4, 1>, kn.sk[3][1] = FN<4, 2>, kn.sk[3][2] = FN<4, 3>, kn.sk[3][3] = FN<4, 4>
#if MOE_X86
  if (ran == Isa::Avx512Bf16) {
    MOE_SET_SK(sk_bf16_avx512bf16);
    rows = rows_512;
  } else if (ran == Isa::Avx512) {
    if (bf16_ab) MOE_SET_SK(sk_bf16_avx512); else MOE_SET_SK(sk_f32_avx512);
    rows = rows_512;
    kn.sk_a_f32 = bf16_ab;
  } else if (ran == Isa::Avx2) {
    if (bf16_ab) MOE_SET_SK(sk_bf16_avx2); else MOE_SET_SK(sk_f32_avx2);
    rows = rows_avx2;
    kn.sk_a_f32 = bf16_ab;
  }
#endif
#undef MOE_SET_SK
  if (rows == nullptr) {  // scalar: one b row at a time
    for (int mt = 0; mt < 4; ++mt) kn.sk_rows[mt] = 1;
    if (bf16_ab) {
      kn.sk[0][0] = sk_scalar<uint16_t, 1>, kn.sk[1][0] = sk_scalar<uint16_t, 2>, kn.sk[2][0] = sk_scalar<uint16_t, 3>,
      kn.sk[3][0] = sk_scalar<uint16_t, 4>;
    } else {
      kn.sk[0][0] = sk_scalar<float, 1>, kn.sk[1][0] = sk_scalar<float, 2>, kn.sk[2][0] = sk_scalar<float, 3>,
      kn.sk[3][0] = sk_scalar<float, 4>;
    }
  } else {
    for (int mt = 0; mt < 4; ++mt) kn.sk_rows[mt] = rows[mt];
  }
  *out = kn;
  return ran;
}

}  // namespace

Isa gemm_serial(const GemmArgs& args, Isa isa) {
  validate(args);
  const GemmArgs& g = args;
  Kernels kn{};
  const Isa ran = select_kernels(g, isa, &kn);
  if (g.m == 0 || g.n == 0) return ran;
  if (g.m <= kStreamMaxM) {
    const void* ar[kStreamMaxM];
    stream_a_rows(g, kn, ar);
    stream_rows(g, kn, ar, 0, g.n);
    return ran;
  }
  if (ran == Isa::Scalar) {
    scalar_rows(g, 0, g.m);
    return ran;
  }
  for (int64_t i0 = 0; i0 < g.m; i0 += kn.tile_m) {
    for (int64_t j0 = 0; j0 < g.n; j0 += kn.tile_n) {
      const int64_t mt = g.m - i0 < kn.tile_m ? g.m - i0 : kn.tile_m;
      const int64_t nt = g.n - j0 < kn.tile_n ? g.n - j0 : kn.tile_n;
      run_tile(g, kn, i0, mt, j0, nt);
    }
  }
  return ran;
}

Isa gemm(const GemmArgs& args, Isa isa, const CancelToken* cancel) {
  validate(args);
  const GemmArgs g = args;
  ThreadPool& pool = ThreadPool::global();
  Kernels kn{};
  const Isa ran = select_kernels(g, isa, &kn);

  if (g.m == 0 || g.n == 0) {
    if (is_cancelled(cancel)) throw_error(ErrorCode::Cancelled, "gemm: cancelled");
    return ran;
  }

  bool finished;
  if (g.m <= kStreamMaxM) {
    // Ranges of consecutive b rows (about kStreamChunkBytes each), handed out in order: every b row is read once.
    const int64_t row_bytes = g.k * static_cast<int64_t>(dtype_size(g.ab_dtype));
    int64_t rows = kStreamChunkBytes / (row_bytes > 0 ? row_bytes : 1);
    rows = rows < 4 ? 4 : rows - rows % 4;  // whole groups of 4 b rows
    const void* ar[kStreamMaxM];  // the caller's buffer (if any) outlives parallel_for
    stream_a_rows(g, kn, ar);
    std::function<void(size_t, size_t)> fn = [&g, &kn, &ar](size_t j0, size_t j1) {
      stream_rows(g, kn, ar, static_cast<int64_t>(j0), static_cast<int64_t>(j1));
    };
    finished = pool.parallel_for(static_cast<size_t>(g.n), static_cast<size_t>(rows), fn, cancel);
  } else if (ran == Isa::Scalar) {
    std::function<void(size_t, size_t)> fn = [&g](size_t i0, size_t i1) {
      scalar_rows(g, static_cast<int64_t>(i0), static_cast<int64_t>(i1));
    };
    finished = pool.parallel_for(static_cast<size_t>(g.m), 1, fn, cancel);
  } else {
    const int64_t tiles_m = (g.m + kn.tile_m - 1) / kn.tile_m;
    const int64_t tiles_n = (g.n + kn.tile_n - 1) / kn.tile_n;
    std::function<void(size_t, size_t)> fn = [&g, &kn, tiles_m](size_t t0, size_t t1) {
      for (size_t t = t0; t < t1; ++t) {
        const int64_t tn = static_cast<int64_t>(t) / tiles_m, tm = static_cast<int64_t>(t) % tiles_m;
        const int64_t i0 = tm * kn.tile_m, j0 = tn * kn.tile_n;
        const int64_t mt = g.m - i0 < kn.tile_m ? g.m - i0 : kn.tile_m;
        const int64_t nt = g.n - j0 < kn.tile_n ? g.n - j0 : kn.tile_n;
        run_tile(g, kn, i0, mt, j0, nt);
      }
    };
    finished = pool.parallel_for(static_cast<size_t>(tiles_m * tiles_n), 1, fn, cancel);
  }
  if (!finished) throw_error(ErrorCode::Cancelled, "gemm: cancelled");
  return ran;
}

}  // namespace moe::cpu
