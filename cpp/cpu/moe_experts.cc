// Fused MoE expert FFN on the CPU (moe_experts.h). Per chunk of tokens:
//   1. routing: the (token, j) slots routed to each present expert, in ascending slot order; x rows gathered into
//      a per-expert contiguous block xs [rows, h] bf16 (a copy of rows * h * 2 bytes, small next to the weights).
//   2. GEMM1 + SwiGLU, one work item per (expert, tile of inter columns): g = xs_e gate_e^T and u = xs_e up_e^T
//      (f32), then act = silu(g) * u rounded to bf16 into act [rows, inter] (gpt-oss: g, u plus the expert's f32
//      biases, then the clamped swiglu-oai activation, see moe_experts.h; same rounding).
//   3. GEMM2, one item per (expert, tile of h columns): part [rows, h] f32 = act_e down_e^T (+ the expert's down
//      bias, f32, when it has biases).
//   4. combine, per token: y[t] = sum over j in order 0..k-1 of w[t, j] * part[slot(t, j)] in f32, rounded to
//      bf16 once. Fixed order and no float atomics: two runs give bitwise the same output, whatever the threads.
//      The combine is moe_combine_token (moe_combine.h), the function moe_combine runs too, so the chunked path
//      (parts mode, then moe_combine) gives bitwise this output. Parts mode replaces this step by a copy of each
//      part row to parts[t, j] (a part row does not depend on which other experts the call has: an expert's rows,
//      hence its path and tiles, and the token chunks depend only on its own routing and on t).
// Batch invariance: a token's output row is bitwise the same whatever the other tokens of the call (T, their
// routing, the chunking), so batching sequences gives exactly the tokens of one-at-a-time generation. Every dot
// product is summed by this file's kernels in one fixed order per tier (see "dot products" below), whichever loop
// computes it; the activation, the bias adds and the combine are per (token, element) and in a fixed order. The
// GEMMs use this file's kernels, not gemm.cc's, so that this order is pinned down here whatever gemm.cc's paths do
// (test/moe-invariance.test.ts and test/native/moe_invariance_test.cc check it on every tier).
// The intermediate act is kept in bf16, not f32: the second GEMM then runs vdpbf16ps straight on it (no f32
// packing), it halves that buffer's traffic, and it is what the tensor-core kernels do (their A operand is bf16).
// Its rounding (relative 2^-9 per element, independent across the inter sum) is far below the 1e-2 tolerance.
// Decode path (an expert with <= kStreamMaxRows routed rows, every tier): steps 2 and 3 become weight streaming.
// A work item is (expert, block of kStreamRows weight rows); each weight row is read from memory exactly once,
// front to back, against all of that expert's rows at once (rows4: up to 4 x rows by 4 weight rows; avx512bf16
// walks rows of up to kSeqMaxK values one after the other, see rows4_seq_dp). GEMM1 takes gate rows j, j+1 and up
// rows j, j+1 as its 4 weight rows, so gate and up are one pass and SwiGLU is applied on the sums right away. Items
// of one expert are consecutive, so the pool's threads stream different rows of the same expert. Larger experts
// (prefill) take tiles of kTileN columns (tile_dots: register tiles over k blocks that stay in L2).
// Packed weights (args.packed: the panel64 layout of pack_weights.h): one work item per (expert, panel of 64 output
// columns) at every row count, the tile computed by gemm_packed's outer-product kernel (packed_panel_dots): k pairs
// in order into one f32 accumulator per output, whatever the rows, so batch invariance holds on that path too.
// Chunks bound the scratch memory (rows * max(h, inter) * 4 bytes <= 64 MiB); weights are re-read per chunk,
// which only happens at prefill sizes where the GEMMs are compute-bound anyway.
#include "moe_experts.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "../core/dtype.h"
#include "../core/error.h"
#include "../core/threadpool.h"
#include "gemm_packed.h"
#include "moe_combine.h"
#include "pack_weights.h"
#include "simd.h"

namespace moe::cpu {

namespace {

constexpr int64_t kTileN = 64;                       // columns per prefill work item
constexpr int64_t kScratchBytes = int64_t{64} << 20;  // per chunk: rows * max(h, inter) f32
constexpr int64_t kStreamMaxRows = 16;  // an expert with at most this many rows takes the streaming path
constexpr int64_t kStreamRows = 64;     // weight rows per streaming work item (gate/up: 64 of each)
// Longest weight row (in bf16 values) that the avx512bf16 streaming kernel walks row after row (rows4_seq_dp); longer
// rows are walked side by side (rows4_side_dp). 2048: every row of Qwen3-30B-A3B, OLMoE and DeepSeek-V2-Lite (h = 2048,
// inter <= 1408) goes row after row, Mixtral-8x7B's (4096, 14336) side by side as before.
constexpr int64_t kSeqMaxK = 2048;

void require(bool ok, const std::string& what) {
  if (!ok) throw_error(ErrorCode::InvalidArgument, "moeExperts: " + what);
}
std::string i64(int64_t v) { return std::to_string(v); }

struct Item {
  int32_t expert;
  int32_t tile;
};

// The SwiGLU epilogue of one expert: f32 sums g, u of intermediate column n -> act (before its bf16 rounding).
// `plain` (silu, no biases) is the op of issue 3: swiglu_row (below) on every path of a call; everything else goes
// through act_general.
struct Epilogue {
  bool plain;
  bool oai;                // MoeActivation::SwigluOai
  float alpha, limit;
  const float* bg;         // [inter] f32 gate bias, nullptr: none
  const float* bu;         // [inter] f32 up bias (set with bg)
};
inline float silu_mul(float g, float u) { return g / (1.0f + std::exp(-g)) * u; }
// HF GptOssExperts: gate.clamp(max=limit), up.clamp(-limit, limit), (up + 1) * gate * sigmoid(gate * alpha). The
// comparisons keep a NaN sum NaN (as torch.clamp does).
inline float act_general(const Epilogue& p, float g, float u, int64_t n) {
  if (p.bg != nullptr) {
    g += p.bg[n];
    u += p.bu[n];
  }
  if (!p.oai) return silu_mul(g, u);
  g = g > p.limit ? p.limit : g;
  u = u > p.limit ? p.limit : (u < -p.limit ? -p.limit : u);
  return (u + 1.0f) * (g / (1.0f + std::exp(-p.alpha * g)));
}

#if MOE_X86
// swiglu_row on 16 lanes: silu(g) = g sigmoid(g) with t = exp(-|g|) (simd::exp_neg512, never overflows): sigmoid(g)
// = 1 / (1 + t) for g >= 0, t / (1 + t) below. Relative error ~3e-7 against std::exp's silu; NaN stays NaN.
MOE_TARGET_AVX512 void swiglu_row512(const float* g, const float* u, int64_t n, uint16_t* dst) {
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = simd::tail_mask16(static_cast<size_t>(n - c));
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + c), uv = _mm512_maskz_loadu_ps(m, u + c);
    const __m512 t = simd::exp_neg512(_mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(gv), _mm512_set1_epi32(INT32_MIN))));
    const __m512 num = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(gv, zero, _CMP_GE_OQ), t, one);  // g >= 0 ? 1 : t
    const __m512 silu = _mm512_div_ps(_mm512_mul_ps(gv, num), _mm512_add_ps(one, t));
    simd::st_bf16_512(dst + c, m, _mm512_mul_ps(silu, uv));
  }
}
#endif

// dst[c] = bf16(silu(g[c]) u[c]) for c < n: the plain SwiGLU of every path (streaming, tiles, packed), so a
// token's activations are the same whichever path its expert took (batch invariance). vec (the AVX-512 tiers):
// swiglu_row512; otherwise silu_mul with std::exp. Vectorised, the epilogue went from ~10% of an expert call at
// Qwen3-30B-A3B's shape (h = 2048: 8 k flops per activation) to ~1%.
void swiglu_row(bool vec, const float* g, const float* u, int64_t n, uint16_t* dst) {
#if MOE_X86
  if (vec) {
    swiglu_row512(g, u, n, dst);
    return;
  }
#else
  (void)vec;
#endif
  for (int64_t c = 0; c < n; ++c) dst[c] = f32_to_bf16(silu_mul(g[c], u[c]));
}

// f32 scratch of this thread ([rows, 2 * kTileN] for the g and u tiles).
float* scratch_f32(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// ---- dot products in one fixed order per tier (batch invariance, see the header) ------------------------------
// Every dot product of the op, dot(x row, weight row) over kk bf16 values, is summed by these kernels only, in the
// tier's order; the decode and prefill loops differ in which dot products they compute together, never in how one
// is summed:
//   scalar      one f32 accumulator, k in order.
//   avx512bf16  k in blocks of 2048; in a block, one 16-lane accumulator, vdpbf16ps on 32 k at a time (a zero-padded
//               masked tail); at the block's end the lanes are summed by hsum16's tree and added to the output's
//               f32 sum (from 0, block after block).
//   avx512      the same with blocks of 1024 and, per 32 k, two f32 FMAs: the 16 even-k products, then the 16 odd-k
//               ones (a bf16 pair in a 32-bit lane becomes two f32 by a shift and a mask, in registers, or packed
//               into an f32 buffer in that same even/odd layout for the prefill micro-kernel).
//   avx2        as avx512 with blocks of 512, 8 lanes (16 k per step), hsum8's tree.
// The decode kernels (rows4) walk one weight row once against all of an expert's rows; the prefill micro-kernels
// (micro) walk 4 x 4 (avx2: 3 x 4) register tiles over one k block at a time. Each output's sequence of operations is
// the same in both, and the same whatever the other rows of the call, so a token's result does not depend on
// which path its expert took, on the chunking, or on the threads.
constexpr int64_t kTileM = 64;  // rows per prefill tile (f32 accumulator tile on the stack)

struct Tier {
  Isa isa;
  int64_t kblock;  // k values per block (0: scalar, one sequential sum)
  // Decode: MT = 1..4 rows of x times 4 weight rows over the full kk: sums[r * 4 + c] = dot(x[r], w[c]).
  using Rows4 = void (*)(const uint16_t* const* x, const uint16_t* const* w, int64_t kk, float* sums);
  Rows4 rows4[4];
  // Prefill: MT = 1..mr rows of x times nr weight rows over one k block (kc values, or the packed length when
  // pack is set), each output's block partial already reduced: part[r * nr + c].
  using Micro = void (*)(const void* const* x, const void* const* w, int64_t kc, float* part);
  Micro micro[4];
  int mr, nr;
  // [kc] bf16 -> [round_up(kc, pad)] f32 in the even/odd layout the f32 micro-kernel reads; nullptr: bf16 in place.
  void (*pack)(const uint16_t* src, int64_t kc, float* dst);
  int64_t pad;
};

float dot_scalar(const uint16_t* x, const uint16_t* w, int64_t kk) {  // [kk] bf16 each
  float acc = 0.0f;
  for (int64_t p = 0; p < kk; ++p) acc += bf16_to_f32(x[p]) * bf16_to_f32(w[p]);
  return acc;
}
template <int MT>
void rows4_scalar(const uint16_t* const* x, const uint16_t* const* w, int64_t kk, float* sums) {
  for (int r = 0; r < MT; ++r)
    for (int c = 0; c < 4; ++c) sums[r * 4 + c] = dot_scalar(x[r], w[c], kk);
}

#if MOE_X86
#define MOE_ALWAYS_INLINE inline __attribute__((always_inline))
// ---- horizontal sums: one fixed tree per vector width ----
// 16 lanes: t_i = e_i + e_{i+8} (256-bit halves), u_i = t_i + t_{i+4} (128-bit halves), then (u0 + u2) + (u1 + u3).
// Written out here rather than left to _mm512_reduce_add_ps (whose tree is the compiler's choice). Its 256- and
// 128-bit steps are cheap on Zen 4: a tree of 512-bit cross-lane shuffles made the decode kernels 7% slower.
MOE_TARGET_AVX512 MOE_ALWAYS_INLINE float hsum16(__m512 v) {
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  const __m256 t = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
  __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  u = _mm_add_ps(u, _mm_movehl_ps(u, u));      // [u0 + u2, u1 + u3, ..]
  u = _mm_add_ss(u, _mm_movehdup_ps(u));       // (u0 + u2) + (u1 + u3)
  return _mm_cvtss_f32(u);
}
// The same tree for 16 accumulators at once (transpose-and-add, about 50 instructions instead of 16 x 8):
// out[r] = hsum16(c[r]) bitwise, each add having the same two operands as in hsum16 (up to their order).
// [t(a) (8 lanes), t(b)], t_i = e_i + e_{i+8}
MOE_TARGET_AVX512 MOE_ALWAYS_INLINE __m512 halves16(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}
// 128-bit lanes [u(p's first), u(p's second), u(q's first), u(q's second)], u_i = t_i + t_{i+4}
MOE_TARGET_AVX512 MOE_ALWAYS_INLINE __m512 quarters16(__m512 p, __m512 q) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(p, q, _MM_SHUFFLE(3, 1, 3, 1)));
}
MOE_TARGET_AVX512 MOE_ALWAYS_INLINE void reduce16(const __m512* c, float* out) {  // c[16] -> out[16]
  // g_j's 128-bit lane q holds u of accumulator 4 q + j; the unpack steps below finish the 4 sums of lane q of
  // g_0..g_3 in that lane's slots 0..3, so out[4 q + j] = hsum16(c[4 q + j]).
  const __m512 g0 = quarters16(halves16(c[0], c[4]), halves16(c[8], c[12]));
  const __m512 g1 = quarters16(halves16(c[1], c[5]), halves16(c[9], c[13]));
  const __m512 g2 = quarters16(halves16(c[2], c[6]), halves16(c[10], c[14]));
  const __m512 g3 = quarters16(halves16(c[3], c[7]), halves16(c[11], c[15]));
  // per 128-bit lane q: [g0 u0+u2, g1 u0+u2, g0 u1+u3, g1 u1+u3] and the same for g2, g3
  const __m512 p01 = _mm512_add_ps(_mm512_unpacklo_ps(g0, g1), _mm512_unpackhi_ps(g0, g1));
  const __m512 p23 = _mm512_add_ps(_mm512_unpacklo_ps(g2, g3), _mm512_unpackhi_ps(g2, g3));
  const __m512d a = _mm512_castps_pd(p01), b = _mm512_castps_pd(p23);
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                                      _mm512_castpd_ps(_mm512_unpackhi_pd(a, b))));
}
// acc[MT][R] (row-major) -> part[r * R + c].
template <int MT, int R>
MOE_TARGET_AVX512 MOE_ALWAYS_INLINE void reduce_acc16(const __m512 (&acc)[MT][R], float* part) {
  if constexpr (MT * R == 16) {
    reduce16(&acc[0][0], part);
  } else {
    for (int r = 0; r < MT; ++r)
      for (int c = 0; c < R; ++c) part[r * R + c] = hsum16(acc[r][c]);
  }
}
// 8 lanes: ((e0 + e1) + (e2 + e3)) + ((e4 + e5) + (e6 + e7)), the tree of horizontal adds (cheap for 4 accumulators at
// once, reduce4x8, which the prefill micro-kernel does per block).
MOE_TARGET_AVX2 MOE_ALWAYS_INLINE float hsum8(__m256 v) {
  __m256 h = _mm256_hadd_ps(v, v);  // [e0+e1, e2+e3, .., .. | e4+e5, e6+e7, .., ..]
  h = _mm256_hadd_ps(h, h);          // [(e0+e1)+(e2+e3), .. | (e4+e5)+(e6+e7), ..]
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}
// The same tree for 4 accumulators: out[0..3] = hsum8(c0..c3), bitwise.
MOE_TARGET_AVX2 MOE_ALWAYS_INLINE void reduce4x8(__m256 c0, __m256 c1, __m256 c2, __m256 c3, float* out) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(c0, c1), _mm256_hadd_ps(c2, c3));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}
MOE_TARGET_AVX512BF16 MOE_ALWAYS_INLINE __mmask32 mask32(int64_t left) {  // the first min(left, 32) lanes
  return left >= 32 ? static_cast<__mmask32>(0xffffffffu) : static_cast<__mmask32>((1u << left) - 1u);
}

// ---- avx512bf16 ----
MOE_TARGET_AVX512BF16 MOE_ALWAYS_INLINE __m512 sdp(__m512 c, __m512i x, __m512i y) {
  return _mm512_dpbf16_ps(c, (__m512bh)x, (__m512bh)y);  // c[i] += x[2i] y[2i] + x[2i+1] y[2i+1]
}
// avx512bf16 k block. 2048: every row of Qwen3-30B-A3B, OLMoE and DeepSeek-V2-Lite is one block, so their decode loop
// is the full-row loop it was before blocks (1024 cost 3-6% of single-thread decode bandwidth: one more loop exit and
// reduction per row); the prefill tiles' 64 x 2048 x and weight rows (512 KiB) stay in L2, 5% faster than 1024.
constexpr int64_t kBlockDp = 2048;
// acc[r][c] += the products of x[r] and w[c] over [k0, k1) (one block or its end), R weight rows side by side: every
// x vector loaded serves R outputs.
template <int MT, int R>
MOE_TARGET_AVX512BF16 MOE_ALWAYS_INLINE void span_dp(const uint16_t* const* x, const uint16_t* const* w, int64_t k0,
                                                     int64_t k1, __m512 (&acc)[MT][R]) {
#define MOE_DP_STEP(LOAD)                                                                              \
  {                                                                                                    \
    __m512i y[R];                                                                                      \
    _Pragma("GCC unroll 4") for (int c = 0; c < R; ++c) y[c] = LOAD(w[c]);                             \
    _Pragma("GCC unroll 4") for (int r = 0; r < MT; ++r) {                                             \
      const __m512i xr = LOAD(x[r]);                                                                   \
      _Pragma("GCC unroll 4") for (int c = 0; c < R; ++c) acc[r][c] = sdp(acc[r][c], xr, y[c]);        \
    }                                                                                                  \
  }
  int64_t p = k0;
#define MOE_LD(ptr) _mm512_loadu_si512((ptr) + p)
  for (; p + 32 <= k1; p += 32) MOE_DP_STEP(MOE_LD)
#undef MOE_LD
  if (p < k1) {
    const __mmask32 m = mask32(k1 - p);
#define MOE_LD(ptr) _mm512_maskz_loadu_epi16(m, (ptr) + p)
    MOE_DP_STEP(MOE_LD)
#undef MOE_LD
  }
#undef MOE_DP_STEP
}
// Prefill micro-kernel: MT rows of x times 4 weight rows over one block of kc (<= kBlockDp) values: part[r * 4 + c].
template <int MT>
MOE_TARGET_AVX512BF16 void micro_dp(const void* const* xv, const void* const* wv, int64_t kc, float* part) {
  const uint16_t* x[MT];
  const uint16_t* w[4];
  for (int r = 0; r < MT; ++r) x[r] = static_cast<const uint16_t*>(xv[r]);
  for (int c = 0; c < 4; ++c) w[c] = static_cast<const uint16_t*>(wv[c]);
  __m512 acc[MT][4];
  for (int r = 0; r < MT; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  span_dp<MT, 4>(x, w, 0, kc, acc);
  reduce_acc16<MT, 4>(acc, part);
}
// Decode, rows of up to kSeqMaxK values: the 4 weight rows walked one after the other (consecutive rows of one matrix
// then form one or two long sequential streams across a work item: down rows j..j+3; gate rows j, j+1, then up
// rows j, j+1). Side by side, short rows (down [h, inter] with inter = 768: 1.5 KB) started 3 new short streams per
// group of 4 that the hardware prefetcher had to pick up anew: Qwen3-30B-A3B at T = 1 ran GEMM2 at 19 GB/s against
// 29 GB/s this way (Zen 4 VM, 2 threads).
template <int MT>
MOE_TARGET_AVX512BF16 void rows4_seq_dp(const uint16_t* const* x, const uint16_t* const* w, int64_t kk, float* sums) {
  // The first block peeled off (the only one when kk <= kBlockDp): the per-row loop is then the plain full-row loop
  // (a block loop around it cost 2-3% of single-thread decode bandwidth). Same sums: 0 + block 0, + block 1, ...
  const int64_t k_first = kk < kBlockDp ? kk : kBlockDp;
  for (int c = 0; c < 4; ++c) {
    const uint16_t* wc[1] = {w[c]};  // [kk] bf16
    __m512 acc[MT][1];
    for (int r = 0; r < MT; ++r) acc[r][0] = _mm512_setzero_ps();
    span_dp<MT, 1>(x, wc, 0, k_first, acc);
    float s[MT];
    for (int r = 0; r < MT; ++r) s[r] = 0.0f + hsum16(acc[r][0]);
    for (int64_t k0 = k_first; k0 < kk; k0 += kBlockDp) {
      for (int r = 0; r < MT; ++r) acc[r][0] = _mm512_setzero_ps();
      span_dp<MT, 1>(x, wc, k0, kk - k0 < kBlockDp ? kk : k0 + kBlockDp, acc);
      for (int r = 0; r < MT; ++r) s[r] += hsum16(acc[r][0]);
    }
    for (int r = 0; r < MT; ++r) sums[r * 4 + c] = s[r];
  }
}
// Decode, longer rows (Mixtral-8x7B's 4096 and 14336): side by side (4 streams, one x load per 4 weight loads;
// walking them one after the other re-read the x rows from L2 and ran 20% slower at T = 8).
template <int MT>
MOE_TARGET_AVX512BF16 void rows4_side_dp(const uint16_t* const* x, const uint16_t* const* w, int64_t kk, float* sums) {
  float s[MT * 4], part[MT * 4];
  for (int i = 0; i < MT * 4; ++i) s[i] = 0.0f;
  for (int64_t k0 = 0; k0 < kk; k0 += kBlockDp) {
    __m512 acc[MT][4];
    for (int r = 0; r < MT; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
    span_dp<MT, 4>(x, w, k0, kk - k0 < kBlockDp ? kk : k0 + kBlockDp, acc);
    reduce_acc16<MT, 4>(acc, part);
    for (int i = 0; i < MT * 4; ++i) s[i] += part[i];
  }
  for (int i = 0; i < MT * 4; ++i) sums[i] = s[i];
}
template <int MT>
void rows4_dp(const uint16_t* const* x, const uint16_t* const* w, int64_t kk, float* sums) {
  if (kk <= kSeqMaxK) rows4_seq_dp<MT>(x, w, kk, sums);
  else rows4_side_dp<MT>(x, w, kk, sums);
}

// ---- avx512 (bf16 converted in registers, or packed to f32 for the micro-kernel) ----
// avx512 k block (packed f32 in the prefill tiles: 64 x 1024 x 4 bytes of x rows and as many of weight rows, 512 KiB,
// in the 1 MiB and larger L2 of AVX-512 CPUs). avx2: 512 (Zen 2/3 have 512 KiB of L2).
constexpr int64_t kBlock512 = 1024;
constexpr int64_t kBlock256 = 512;
// A 32-bit lane holding the bf16 pair (v[2i], v[2i+1]): v[2i] as f32 is the lane shifted left by 16, v[2i+1] the
// lane with its low half masked off.
MOE_TARGET_AVX512 MOE_ALWAYS_INLINE __m512 even512(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }
MOE_TARGET_AVX512 MOE_ALWAYS_INLINE __m512 odd512(__m512i v) {
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}
// acc[r][c] += the products over [k0, k1), bf16 read in place: per 32 k, acc += xe * ye, then acc += xo * yo.
template <int MT, int R>
MOE_TARGET_AVX512 MOE_ALWAYS_INLINE void span_cvt512(const uint16_t* const* x, const uint16_t* const* w, int64_t k0,
                                                     int64_t k1, __m512 (&acc)[MT][R]) {
#define MOE_CVT_STEP(LOAD)                                                                             \
  {                                                                                                    \
    __m512 ye[R], yo[R];                                                                               \
    _Pragma("GCC unroll 4") for (int c = 0; c < R; ++c) {                                              \
      const __m512i y = LOAD(w[c]);                                                                    \
      ye[c] = even512(y);                                                                              \
      yo[c] = odd512(y);                                                                               \
    }                                                                                                  \
    _Pragma("GCC unroll 4") for (int r = 0; r < MT; ++r) {                                             \
      const __m512i xr = LOAD(x[r]);                                                                   \
      const __m512 xe = even512(xr), xo = odd512(xr);                                                  \
      _Pragma("GCC unroll 4") for (int c = 0; c < R; ++c) {                                            \
        acc[r][c] = _mm512_fmadd_ps(xe, ye[c], acc[r][c]);                                             \
        acc[r][c] = _mm512_fmadd_ps(xo, yo[c], acc[r][c]);                                             \
      }                                                                                                \
    }                                                                                                  \
  }
  int64_t p = k0;
#define MOE_LD(ptr) _mm512_loadu_si512((ptr) + p)
  for (; p + 32 <= k1; p += 32) MOE_CVT_STEP(MOE_LD)
#undef MOE_LD
  if (p < k1) {
    const __mmask32 m = static_cast<__mmask32>((1u << (k1 - p)) - 1u);  // k1 - p < 32
#define MOE_LD(ptr) _mm512_maskz_loadu_epi16(m, (ptr) + p)
    MOE_CVT_STEP(MOE_LD)
#undef MOE_LD
  }
#undef MOE_CVT_STEP
}
template <int MT>
MOE_TARGET_AVX512 void rows4_cvt512(const uint16_t* const* x, const uint16_t* const* w, int64_t kk, float* sums) {
  float s[MT * 4], part[MT * 4];
  for (int i = 0; i < MT * 4; ++i) s[i] = 0.0f;
  for (int64_t k0 = 0; k0 < kk; k0 += kBlock512) {
    __m512 acc[MT][4];
    for (int r = 0; r < MT; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
    span_cvt512<MT, 4>(x, w, k0, kk - k0 < kBlock512 ? kk : k0 + kBlock512, acc);
    reduce_acc16<MT, 4>(acc, part);
    for (int i = 0; i < MT * 4; ++i) s[i] += part[i];
  }
  for (int i = 0; i < MT * 4; ++i) sums[i] = s[i];
}
// [kc] bf16 -> [round_up(kc, 32)] f32: per 32 values, the 16 even-k ones then the 16 odd-k ones (zeros past kc).
MOE_TARGET_AVX512 void pack512(const uint16_t* src, int64_t kc, float* dst) {
  for (int64_t p = 0; p < kc; p += 32) {
    const __mmask32 m =
        kc - p >= 32 ? static_cast<__mmask32>(0xffffffffu) : static_cast<__mmask32>((1u << (kc - p)) - 1u);
    const __m512i v = _mm512_maskz_loadu_epi16(m, src + p);
    _mm512_storeu_ps(dst + p, even512(v));
    _mm512_storeu_ps(dst + p + 16, odd512(v));
  }
}
// MT (<= 4) packed rows of x times 4 packed weight rows, kp (a multiple of 32) f32 each: the FMAs of span_cvt512 in
// the same order (even vector, odd vector, next 32 k).
template <int MT>
MOE_TARGET_AVX512 void micro_f32_512(const void* const* xv, const void* const* wv, int64_t kp, float* part) {
  const float* x[MT];
  const float* w[4];
  for (int r = 0; r < MT; ++r) x[r] = static_cast<const float*>(xv[r]);
  for (int c = 0; c < 4; ++c) w[c] = static_cast<const float*>(wv[c]);
  __m512 acc[MT][4];
  for (int r = 0; r < MT; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; p += 16) {
    __m512 xr[MT];
#pragma GCC unroll 4
    for (int r = 0; r < MT; ++r) xr[r] = _mm512_loadu_ps(x[r] + p);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m512 y = _mm512_loadu_ps(w[c] + p);
#pragma GCC unroll 4
      for (int r = 0; r < MT; ++r) acc[r][c] = _mm512_fmadd_ps(xr[r], y, acc[r][c]);
    }
  }
  reduce_acc16<MT, 4>(acc, part);
}

// ---- avx2 ----
MOE_TARGET_AVX2 MOE_ALWAYS_INLINE __m256 even256(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
MOE_TARGET_AVX2 MOE_ALWAYS_INLINE __m256 odd256(__m256i v) {
  return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}
// acc[r][c] += the products over [k0, k1), bf16 in place, 16 k per step (acc += xe * ye, then xo * yo); the tail
// (< 16) through zero-padded copies (AVX2 has no 16-bit masked load). Registers: MT * R + 2 R + 3 <= 16.
template <int MT, int R>
MOE_TARGET_AVX2 MOE_ALWAYS_INLINE void span_cvt256(const uint16_t* const* x, const uint16_t* const* w, int64_t k0,
                                                   int64_t k1, __m256 (&acc)[MT][R]) {
#define MOE_CVT_STEP(LOADW, LOADX)                                                                     \
  {                                                                                                    \
    __m256 ye[R], yo[R];                                                                               \
    _Pragma("GCC unroll 4") for (int c = 0; c < R; ++c) {                                              \
      const __m256i y = LOADW(c);                                                                      \
      ye[c] = even256(y);                                                                              \
      yo[c] = odd256(y);                                                                               \
    }                                                                                                  \
    _Pragma("GCC unroll 4") for (int r = 0; r < MT; ++r) {                                             \
      const __m256i xr = LOADX(r);                                                                     \
      const __m256 xe = even256(xr), xo = odd256(xr);                                                  \
      _Pragma("GCC unroll 4") for (int c = 0; c < R; ++c) {                                            \
        acc[r][c] = _mm256_fmadd_ps(xe, ye[c], acc[r][c]);                                             \
        acc[r][c] = _mm256_fmadd_ps(xo, yo[c], acc[r][c]);                                             \
      }                                                                                                \
    }                                                                                                  \
  }
  int64_t p = k0;
#define MOE_LDW(c) _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[c] + p))
#define MOE_LDX(r) _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[r] + p))
  for (; p + 16 <= k1; p += 16) MOE_CVT_STEP(MOE_LDW, MOE_LDX)
#undef MOE_LDW
#undef MOE_LDX
  if (p < k1) {
    alignas(32) uint16_t tw[R][16], tx[MT][16];
    for (int i = 0; i < 16; ++i) {
      for (int c = 0; c < R; ++c) tw[c][i] = p + i < k1 ? w[c][p + i] : 0;
      for (int r = 0; r < MT; ++r) tx[r][i] = p + i < k1 ? x[r][p + i] : 0;
    }
#define MOE_LDW(c) _mm256_load_si256(reinterpret_cast<const __m256i*>(tw[c]))
#define MOE_LDX(r) _mm256_load_si256(reinterpret_cast<const __m256i*>(tx[r]))
    MOE_CVT_STEP(MOE_LDW, MOE_LDX)
#undef MOE_LDW
#undef MOE_LDX
  }
#undef MOE_CVT_STEP
}
// Decode, block by block: one x row against the 4 weight rows side by side (15 registers), more rows against two
// pairs of weight rows (MT x 2 accumulators fit the 16 registers).
template <int MT>
MOE_TARGET_AVX2 void rows4_cvt256(const uint16_t* const* x, const uint16_t* const* w, int64_t kk, float* sums) {
  float s[MT * 4];
  for (int i = 0; i < MT * 4; ++i) s[i] = 0.0f;
  for (int64_t k0 = 0; k0 < kk; k0 += kBlock256) {
    const int64_t k1 = kk - k0 < kBlock256 ? kk : k0 + kBlock256;
    if constexpr (MT == 1) {
      __m256 acc[1][4];
      for (int c = 0; c < 4; ++c) acc[0][c] = _mm256_setzero_ps();
      span_cvt256<1, 4>(x, w, k0, k1, acc);
      for (int c = 0; c < 4; ++c) s[c] += hsum8(acc[0][c]);
      continue;
    }
    for (int h = 0; h < 2; ++h) {
      __m256 acc[MT][2];
      for (int r = 0; r < MT; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      span_cvt256<MT, 2>(x, w + 2 * h, k0, k1, acc);
      for (int r = 0; r < MT; ++r)
        for (int c = 0; c < 2; ++c) s[r * 4 + 2 * h + c] += hsum8(acc[r][c]);
    }
  }
  for (int i = 0; i < MT * 4; ++i) sums[i] = s[i];
}
// [kc] bf16 -> [round_up(kc, 16)] f32: per 16 values, the 8 even-k ones then the 8 odd-k ones (zeros past kc).
MOE_TARGET_AVX2 void pack256(const uint16_t* src, int64_t kc, float* dst) {
  int64_t p = 0;
  for (; p + 16 <= kc; p += 16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + p));
    _mm256_storeu_ps(dst + p, even256(v));
    _mm256_storeu_ps(dst + p + 8, odd256(v));
  }
  if (p < kc) {
    alignas(32) uint16_t t[16];
    for (int i = 0; i < 16; ++i) t[i] = p + i < kc ? src[p + i] : 0;
    const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
    _mm256_storeu_ps(dst + p, even256(v));
    _mm256_storeu_ps(dst + p + 8, odd256(v));
  }
}
// MT (<= 3) packed rows of x times 4 packed weight rows, kp (a multiple of 16) f32 each; the FMAs of span_cvt256
// in the same order. 3 x 4: 12 accumulators + 3 x + 1 weight vector = the 16 registers.
template <int MT>
MOE_TARGET_AVX2 void micro_f32_256(const void* const* xv, const void* const* wv, int64_t kp, float* part) {
  const float* x[MT];
  const float* w[4];
  for (int r = 0; r < MT; ++r) x[r] = static_cast<const float*>(xv[r]);
  for (int c = 0; c < 4; ++c) w[c] = static_cast<const float*>(wv[c]);
  __m256 acc[MT][4];
  for (int r = 0; r < MT; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kp; p += 8) {
    __m256 xr[MT];
#pragma GCC unroll 4
    for (int r = 0; r < MT; ++r) xr[r] = _mm256_loadu_ps(x[r] + p);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const __m256 y = _mm256_loadu_ps(w[c] + p);
#pragma GCC unroll 4
      for (int r = 0; r < MT; ++r) acc[r][c] = _mm256_fmadd_ps(xr[r], y, acc[r][c]);
    }
  }
  for (int r = 0; r < MT; ++r) reduce4x8(acc[r][0], acc[r][1], acc[r][2], acc[r][3], part + r * 4);
}
#undef MOE_ALWAYS_INLINE
#endif  // MOE_X86

// The kernels of tier min(isa, the CPU's best).
const Tier& tier_for(Isa isa) {
  static const Tier scalar{Isa::Scalar, 0, {rows4_scalar<1>, rows4_scalar<2>, rows4_scalar<3>, rows4_scalar<4>},
                           {}, 0, 0, nullptr, 0};
#if MOE_X86
  static const Tier avx2{Isa::Avx2, kBlock256,
                         {rows4_cvt256<1>, rows4_cvt256<2>, rows4_cvt256<3>, rows4_cvt256<4>},
                         {micro_f32_256<1>, micro_f32_256<2>, micro_f32_256<3>, nullptr}, 3, 4, pack256, 16};
  static const Tier avx512{Isa::Avx512, kBlock512,
                           {rows4_cvt512<1>, rows4_cvt512<2>, rows4_cvt512<3>, rows4_cvt512<4>},
                           {micro_f32_512<1>, micro_f32_512<2>, micro_f32_512<3>, micro_f32_512<4>}, 4, 4, pack512, 32};
  static const Tier dp{Isa::Avx512Bf16, kBlockDp, {rows4_dp<1>, rows4_dp<2>, rows4_dp<3>, rows4_dp<4>},
                       {micro_dp<1>, micro_dp<2>, micro_dp<3>, micro_dp<4>}, 4, 4, nullptr, 0};
  switch (clamp_isa(isa)) {
    case Isa::Avx512Bf16: return dp;
    case Isa::Avx512: return avx512;
    case Isa::Avx2: return avx2;
    case Isa::Scalar: break;
  }
#else
  (void)isa;
#endif
  return scalar;
}

// Rows of x (any count) times 4 weight rows, over the full kk: groups of up to 4 rows; sums [rows, 4]. Only the
// first group streams the weight rows from memory: the others find them in cache.
void rows_dot4(const Tier& tr, const uint16_t* const* x, int64_t rows, const uint16_t* const* w, int64_t kk,
               float* sums) {
  for (int64_t r = 0; r < rows; r += 4) {
    const int64_t mt = rows - r < 4 ? rows - r : 4;
    tr.rows4[mt - 1](x + r, w, kk, sums + r * 4);
  }
}

// Per-thread f32 buffer of the packing tiers: (kTileM + kTileN) rows of one packed k block.
float* pack_buffer(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Prefill: out[i * ldo + j] = dot(x + i * ldx, w + j * ldw) over kk values, i < m, j < nt (<= kTileN); x, w bf16,
// out f32. Tiles of kTileM rows; in a tile, k block by k block (so the tile's x rows and nt weight rows of one
// block stay in L2), register tiles of mr x nr outputs whose block partials are added to an f32 tile.
void tile_dots(const Tier& tr, const uint16_t* x, int64_t ldx, int64_t m, const uint16_t* w, int64_t ldw, int64_t nt,
               int64_t kk, float* out, int64_t ldo) {
  if (tr.kblock == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < nt; ++j) out[i * ldo + j] = dot_scalar(x + i * ldx, w + j * ldw, kk);
    return;
  }
  float acc[kTileM * kTileN];  // [mt, nt] f32, row stride kTileN
  float* packed = tr.pack != nullptr ? pack_buffer(static_cast<size_t>((kTileM + kTileN) * tr.kblock)) : nullptr;
  const void* xp[kTileM];  // the tile's x rows at the current block (packed or in place)
  const void* wp[kTileN];  // the nt weight rows at the current block
  float part[16];
  const int64_t tile_m = kTileM - kTileM % tr.mr;  // whole register tiles (avx2: 63 rows of 3)
  for (int64_t i0 = 0; i0 < m; i0 += tile_m) {
    const int64_t mt = m - i0 < tile_m ? m - i0 : tile_m;
    for (int64_t i = 0; i < mt * kTileN; ++i) acc[i] = 0.0f;
    for (int64_t k0 = 0; k0 < kk; k0 += tr.kblock) {
      int64_t kc = kk - k0 < tr.kblock ? kk - k0 : tr.kblock;
      for (int64_t i = 0; i < mt; ++i) xp[i] = x + (i0 + i) * ldx + k0;
      for (int64_t j = 0; j < nt; ++j) wp[j] = w + j * ldw + k0;
      if (packed != nullptr) {
        for (int64_t i = 0; i < mt; ++i) {
          tr.pack(static_cast<const uint16_t*>(xp[i]), kc, packed + i * tr.kblock);
          xp[i] = packed + i * tr.kblock;
        }
        for (int64_t j = 0; j < nt; ++j) {
          tr.pack(static_cast<const uint16_t*>(wp[j]), kc, packed + (kTileM + j) * tr.kblock);
          wp[j] = packed + (kTileM + j) * tr.kblock;
        }
        kc = (kc + tr.pad - 1) / tr.pad * tr.pad;  // the packed length (zero-padded)
      }
      for (int64_t i = 0; i < mt; i += tr.mr) {
        const int64_t rt = mt - i < tr.mr ? mt - i : tr.mr;
        for (int64_t j = 0; j < nt; j += tr.nr) {
          const void* wq[4];  // weight rows past nt repeat the last one (their sums are dropped)
          for (int c = 0; c < tr.nr; ++c) wq[c] = wp[j + c < nt ? j + c : nt - 1];
          tr.micro[rt - 1](xp + i, wq, kc, part);
          const int64_t nc = nt - j < tr.nr ? nt - j : tr.nr;
          for (int64_t r = 0; r < rt; ++r)
            for (int64_t c = 0; c < nc; ++c) acc[(i + r) * kTileN + j + c] += part[r * tr.nr + c];
        }
      }
    }
    for (int64_t i = 0; i < mt; ++i)
      for (int64_t j = 0; j < nt; ++j) out[(i0 + i) * ldo + j] = acc[i * kTileN + j];
  }
}

}  // namespace

Isa moe_experts(const MoeExpertsArgs& a, Isa isa, const CancelToken* cancel) {
  require(a.t >= 0, "tokens must be >= 0, received " + i64(a.t));
  require(a.h >= 1 && a.inter >= 1, "hidden and intermediate must be >= 1, received " + i64(a.h) + ", " + i64(a.inter));
  require(a.e >= 1 && a.k >= 1, "experts and k must be >= 1, received " + i64(a.e) + ", " + i64(a.k));
  require(a.t == 0 || (a.out != nullptr) != (a.parts != nullptr),
          std::string("exactly one of out and parts must be set, received ") + (a.out != nullptr ? "both" : "neither"));
  require(a.t == 0 || (a.x != nullptr && a.topk_ids != nullptr && a.topk_weights != nullptr),
          "x, topkIds and topkWeights must be non-null");
  require(a.gate != nullptr && a.up != nullptr && a.down != nullptr, "the expert table must be non-null");
  for (int64_t x = 0; x < a.e; ++x) {
    const int present = (a.gate[x] != nullptr) + (a.up[x] != nullptr) + (a.down[x] != nullptr);
    require(present == 0 || present == 3,
            "expert " + i64(x) + " must have gate, up and down all set or all absent, received " + i64(present) + " of 3");
  }
  const bool any_bias = a.gate_bias != nullptr || a.up_bias != nullptr || a.down_bias != nullptr;
  if (any_bias) {
    require(a.gate_bias != nullptr && a.up_bias != nullptr && a.down_bias != nullptr,
            "the bias tables (gate, up, down) must be all set or all null");
    for (int64_t x = 0; x < a.e; ++x) {
      const int nb = (a.gate_bias[x] != nullptr) + (a.up_bias[x] != nullptr) + (a.down_bias[x] != nullptr);
      require(nb == 0 || nb == 3, "expert " + i64(x) + " must have gate, up and down biases all set or all absent, received " +
                                      i64(nb) + " of 3");
      require(nb == 0 || a.gate[x] != nullptr, "expert " + i64(x) + " has biases but no weights (absent experts take none)");
    }
  }
  require(a.activation == MoeActivation::Silu || a.activation == MoeActivation::SwigluOai,
          "activation must be silu (0) or swiglu-oai (1), received " + i64(static_cast<int64_t>(a.activation)));
  if (a.activation == MoeActivation::SwigluOai) {
    require(std::isfinite(a.alpha), "swiglu-oai alpha must be finite, received " + std::to_string(a.alpha));
    require(std::isfinite(a.limit) && a.limit > 0.0f, "swiglu-oai limit must be finite and > 0, received " + std::to_string(a.limit));
  }
  for (int64_t i = 0; i < a.t * a.k; ++i) {
    const int32_t x = a.topk_ids[i];
    require(x >= -1 && x < a.e, "topkIds must be -1 or in [0, " + i64(a.e) + "), received " + i64(x) + " at index " + i64(i));
  }

  ThreadPool& pool = ThreadPool::global();
  std::atomic<int> ran{static_cast<int>(Isa::Scalar)};
  const Tier& tr = tier_for(isa);  // every dot product of the call: this tier's kernels, its one order
  const int64_t H = a.h, I = a.inter, K = a.k, E = a.e;
  const int64_t widest = H > I ? H : I;
  auto epilogue_of = [&](int64_t x) {
    Epilogue p{};
    p.oai = a.activation == MoeActivation::SwigluOai;
    p.alpha = a.alpha;
    p.limit = a.limit;
    p.bg = any_bias ? static_cast<const float*>(a.gate_bias[x]) : nullptr;
    p.bu = any_bias ? static_cast<const float*>(a.up_bias[x]) : nullptr;
    p.plain = !p.oai && p.bg == nullptr;
    return p;
  };
  // [h] f32 down bias of expert x, nullptr: none
  auto down_bias_of = [&](int64_t x) { return any_bias ? static_cast<const float*>(a.down_bias[x]) : nullptr; };
  int64_t chunk = kScratchBytes / (K * widest * 4);
  if (chunk < 1) chunk = 1;

  std::vector<int32_t> count(static_cast<size_t>(E)), row0(static_cast<size_t>(E) + 1);
  std::vector<int32_t> slot_row, row_token;
  // The chunk's gathered rows, activations and parts: per thread and kept between calls (at most the chunk bound
  // each), so a call neither zero-fills nor page-faults tens of MiB of fresh scratch.
  // (References to the calling thread's buffers: the pool's threads must not name the thread_locals themselves.)
  thread_local std::vector<uint16_t> tl_xs, tl_act;
  thread_local std::vector<float> tl_part;
  std::vector<uint16_t>& xs = tl_xs;
  std::vector<uint16_t>& act = tl_act;
  std::vector<float>& part = tl_part;
  std::vector<Item> items;

  // Steps 2 and 3 over packed weights: items (expert, panel); GEMM1 tiles of gate and up, then SwiGLU; GEMM2.
  const Isa pk_tier = packed_tier(isa);
  bool vec_act = false;  // swiglu_row's AVX-512 form, for every path of the call
#if MOE_X86
  vec_act = clamp_isa(isa) >= Isa::Avx512;
#endif
  auto packed_gemms = [&](int64_t rows) {
    if (rows == 0) return;
    ran.store(static_cast<int>(pk_tier), std::memory_order_relaxed);
    const int64_t gate_panel = packed_panel_numel(H), down_panel = packed_panel_numel(I);  // bf16 values per panel
    auto panel_items = [&](int64_t cols) {
      items.clear();
      const int64_t panels = (cols + kPanelCols - 1) / kPanelCols;
      for (int64_t x = 0; x < E; ++x)
        for (int64_t q = 0; count[x] > 0 && q < panels; ++q) items.push_back({static_cast<int32_t>(x), static_cast<int32_t>(q)});
    };
    int64_t present = 0;
    for (int64_t x = 0; x < E; ++x) present += count[x] > 0;
    const int64_t mean_rows = present > 0 ? (rows + present - 1) / present : 1;
    panel_items(I);
    std::function<void(size_t, size_t)> gemm1 = [&](size_t i0, size_t i1) {
      for (size_t it = i0; it < i1; ++it) {
        const int64_t x = items[it].expert, q = items[it].tile, m = count[x];
        const int64_t n0 = q * kPanelCols, nc = I - n0 < kPanelCols ? I - n0 : kPanelCols;
        const Epilogue ep = epilogue_of(x);
        float* g = scratch_f32(static_cast<size_t>(m * 2 * kPanelCols));  // [m, 64] gate | [m, 64] up
        float* u = g + m * kPanelCols;
        const uint16_t* xa = xs.data() + static_cast<int64_t>(row0[x]) * H;  // [m, h] bf16
        packed_panel_dots(xa, H, m, static_cast<const uint16_t*>(a.gate[x]) + q * gate_panel, H, pk_tier, g);
        packed_panel_dots(xa, H, m, static_cast<const uint16_t*>(a.up[x]) + q * gate_panel, H, pk_tier, u);
        for (int64_t i = 0; i < m; ++i) {
          uint16_t* dst = act.data() + (row0[x] + i) * I + n0;  // [nc] bf16
          const float* gi = g + i * kPanelCols;
          const float* ui = u + i * kPanelCols;
          if (ep.plain) {
            swiglu_row(vec_act, gi, ui, nc, dst);
          } else {
            for (int64_t c = 0; c < nc; ++c) dst[c] = f32_to_bf16(act_general(ep, gi[c], ui[c], n0 + c));
          }
        }
      }
    };
    if (!pool.parallel_for(items.size(), packed_items_grain(mean_rows, H, 2), gemm1, cancel))
      throw_error(ErrorCode::Cancelled, "moeExperts: cancelled");
    panel_items(H);
    std::function<void(size_t, size_t)> gemm2 = [&](size_t i0, size_t i1) {
      for (size_t it = i0; it < i1; ++it) {
        const int64_t x = items[it].expert, q = items[it].tile, m = count[x];
        const int64_t n0 = q * kPanelCols, nc = H - n0 < kPanelCols ? H - n0 : kPanelCols;
        const float* bd = down_bias_of(x);  // [h] f32 or nullptr
        float* tile = scratch_f32(static_cast<size_t>(m * kPanelCols));  // [m, 64]
        const uint16_t* aa = act.data() + static_cast<int64_t>(row0[x]) * I;  // [m, inter] bf16
        packed_panel_dots(aa, I, m, static_cast<const uint16_t*>(a.down[x]) + q * down_panel, I, pk_tier, tile);
        for (int64_t i = 0; i < m; ++i) {
          float* dst = part.data() + (row0[x] + i) * H + n0;  // [nc] f32
          const float* src = tile + i * kPanelCols;
          if (bd == nullptr) {
            for (int64_t c = 0; c < nc; ++c) dst[c] = src[c];
          } else {
            for (int64_t c = 0; c < nc; ++c) dst[c] = src[c] + bd[n0 + c];
          }
        }
      }
    };
    if (!pool.parallel_for(items.size(), packed_items_grain(mean_rows, I, 1), gemm2, cancel))
      throw_error(ErrorCode::Cancelled, "moeExperts: cancelled");
  };

  for (int64_t c0 = 0; c0 < a.t; c0 += chunk) {
    const int64_t tc = a.t - c0 < chunk ? a.t - c0 : chunk;
    // 1. routing of this chunk: rows of each present expert, in slot order.
    std::fill(count.begin(), count.end(), 0);
    for (int64_t s = 0; s < tc * K; ++s) {
      const int32_t x = a.topk_ids[c0 * K + s];
      if (x >= 0 && a.gate[x] != nullptr) ++count[static_cast<size_t>(x)];
    }
    row0[0] = 0;
    for (int64_t x = 0; x < E; ++x) row0[x + 1] = row0[x] + count[x];
    const int64_t rows = row0[E];
    slot_row.assign(static_cast<size_t>(tc * K), -1);
    row_token.assign(static_cast<size_t>(rows), 0);
    {
      std::vector<int32_t> cur(row0.begin(), row0.end() - 1);
      for (int64_t s = 0; s < tc * K; ++s) {
        const int32_t x = a.topk_ids[c0 * K + s];
        if (x < 0 || a.gate[x] == nullptr) continue;
        const int32_t r = cur[x]++;
        slot_row[s] = r;
        row_token[r] = static_cast<int32_t>(c0 + s / K);
      }
    }
    xs.resize(static_cast<size_t>(rows * H));
    act.resize(static_cast<size_t>(rows * I));
    part.resize(static_cast<size_t>(rows * H));
    std::function<void(size_t, size_t)> gather = [&](size_t r0, size_t r1) {
      for (size_t r = r0; r < r1; ++r) {
        const uint16_t* src = a.x + static_cast<int64_t>(row_token[r]) * H;  // [h] bf16
        std::copy(src, src + H, xs.data() + r * H);
      }
    };
    if (rows > 0 && !pool.parallel_for(static_cast<size_t>(rows), 64, gather, cancel)) {
      throw_error(ErrorCode::Cancelled, "moeExperts: cancelled");
    }

    if (a.packed) {
      packed_gemms(rows);
    } else {
      // 2. GEMM1 + SwiGLU per (expert, inter tile).
      // Streaming path per expert (see the header): tiles of kStreamRows rows instead of kTileN.
      auto streams = [&](int64_t x) { return count[x] <= kStreamMaxRows; };
      auto tile_of = [&](int64_t x) { return streams(x) ? kStreamRows : kTileN; };
      // Work items (expert, tile) over `cols` output columns of every expert that has rows.
      auto build_items = [&](int64_t cols) {
        items.clear();
        for (int64_t x = 0; x < E; ++x) {
          const int64_t tiles = count[x] > 0 ? (cols + tile_of(x) - 1) / tile_of(x) : 0;
          for (int64_t tl = 0; tl < tiles; ++tl) items.push_back({static_cast<int32_t>(x), static_cast<int32_t>(tl)});
        }
      };
      build_items(I);
      std::function<void(size_t, size_t)> gemm1 = [&](size_t i0, size_t i1) {
        for (size_t it = i0; it < i1; ++it) {
          const int64_t x = items[it].expert, tn = tile_of(x), n0 = items[it].tile * tn;
          const int64_t nt = I - n0 < tn ? I - n0 : tn, m = count[x];
          const Epilogue ep = epilogue_of(x);
          if (streams(x)) {
            const uint16_t* xr[kStreamMaxRows];  // [m] rows of xs, [h] bf16 each
            for (int64_t i = 0; i < m; ++i) xr[i] = xs.data() + (row0[x] + i) * H;
            const auto* wg = static_cast<const uint16_t*>(a.gate[x]);  // [inter, h] bf16
            const auto* wu = static_cast<const uint16_t*>(a.up[x]);    // [inter, h] bf16
            float sums[kStreamMaxRows * 4];
            for (int64_t j = n0; j < n0 + nt; j += 2) {
              const int64_t j1 = j + 1 < n0 + nt ? j + 1 : j;  // odd tail: row j twice, second dropped
              const uint16_t* w[4] = {wg + j * H, wg + j1 * H, wu + j * H, wu + j1 * H};
              rows_dot4(tr, xr, m, w, H, sums);
              for (int64_t i = 0; i < m; ++i) {
                uint16_t* dst = act.data() + (row0[x] + i) * I;  // [inter] bf16
                if (ep.plain) {
                  swiglu_row(vec_act, sums + i * 4, sums + i * 4 + 2, j1 > j ? 2 : 1, dst + j);
                  continue;
                }
                for (int64_t c = 0; c < (j1 > j ? 2 : 1); ++c) {
                  const float gv = sums[i * 4 + c], uv = sums[i * 4 + 2 + c];
                  dst[j + c] = f32_to_bf16(act_general(ep, gv, uv, j + c));
                }
              }
            }
            ran.store(static_cast<int>(tr.isa), std::memory_order_relaxed);
            continue;
          }
          float* g = scratch_f32(static_cast<size_t>(m * 2 * kTileN));  // [m, nt] gate | [m, nt] up
          float* u = g + m * kTileN;
          const uint16_t* xa = xs.data() + static_cast<int64_t>(row0[x]) * H;  // [m, h] bf16
          const uint16_t* wg = static_cast<const uint16_t*>(a.gate[x]) + n0 * H;  // [nt, h] bf16
          const uint16_t* wu = static_cast<const uint16_t*>(a.up[x]) + n0 * H;    // [nt, h] bf16
          tile_dots(tr, xa, H, m, wg, H, nt, H, g, nt);
          tile_dots(tr, xa, H, m, wu, H, nt, H, u, nt);
          ran.store(static_cast<int>(tr.isa), std::memory_order_relaxed);
          for (int64_t i = 0; i < m; ++i) {
            uint16_t* dst = act.data() + (row0[x] + i) * I + n0;  // [nt] bf16
            if (ep.plain) {
              swiglu_row(vec_act, g + i * nt, u + i * nt, nt, dst);
            } else {
              for (int64_t c = 0; c < nt; ++c) dst[c] = f32_to_bf16(act_general(ep, g[i * nt + c], u[i * nt + c], n0 + c));
            }
          }
        }
      };
      if (!items.empty() && !pool.parallel_for(items.size(), 1, gemm1, cancel)) {
        throw_error(ErrorCode::Cancelled, "moeExperts: cancelled");
      }

      // 3. GEMM2 per (expert, h tile): part = act_e down_e^T, f32.
      build_items(H);
      std::function<void(size_t, size_t)> gemm2 = [&](size_t i0, size_t i1) {
        for (size_t it = i0; it < i1; ++it) {
          const int64_t x = items[it].expert, tn = tile_of(x), n0 = items[it].tile * tn;
          const int64_t nt = H - n0 < tn ? H - n0 : tn, m = count[x];
          const float* bd = down_bias_of(x);  // [h] f32 or nullptr
          if (streams(x)) {
            const uint16_t* ar[kStreamMaxRows];  // [m] rows of act, [inter] bf16 each
            for (int64_t i = 0; i < m; ++i) ar[i] = act.data() + (row0[x] + i) * I;
            const auto* wd = static_cast<const uint16_t*>(a.down[x]);  // [h, inter] bf16
            float sums[kStreamMaxRows * 4];
            for (int64_t j = n0; j < n0 + nt; j += 4) {
              const uint16_t* w[4];
              for (int c = 0; c < 4; ++c) w[c] = wd + (j + c < n0 + nt ? j + c : n0 + nt - 1) * I;
              rows_dot4(tr, ar, m, w, I, sums);
              const int64_t nc = n0 + nt - j < 4 ? n0 + nt - j : 4;
              for (int64_t i = 0; i < m; ++i) {
                float* dst = part.data() + (row0[x] + i) * H + j;  // [nc] f32
                if (bd == nullptr) {
                  for (int64_t c = 0; c < nc; ++c) dst[c] = sums[i * 4 + c];
                } else {
                  for (int64_t c = 0; c < nc; ++c) dst[c] = sums[i * 4 + c] + bd[j + c];
                }
              }
            }
            continue;
          }
          const uint16_t* aa = act.data() + static_cast<int64_t>(row0[x]) * I;       // [m, inter] bf16
          const uint16_t* wd = static_cast<const uint16_t*>(a.down[x]) + n0 * I;     // [nt, inter] bf16
          float* dst = part.data() + static_cast<int64_t>(row0[x]) * H + n0;         // [m, nt] f32, stride h
          tile_dots(tr, aa, I, m, wd, I, nt, I, dst, H);
          if (bd != nullptr) {
            for (int64_t i = 0; i < m; ++i)
              for (int64_t c = 0; c < nt; ++c) dst[i * H + c] += bd[n0 + c];
          }
        }
      };
      if (!items.empty() && !pool.parallel_for(items.size(), 1, gemm2, cancel)) {
        throw_error(ErrorCode::Cancelled, "moeExperts: cancelled");
      }
    }

    // 4. combine in slot order, one bf16 rounding (moe_combine_token, shared with moe_combine); parts mode: the
    // part rows of present experts copied to parts[t, j], the other rows untouched.
    std::function<void(size_t, size_t)> combine = [&](size_t t0, size_t t1) {
      if (a.parts != nullptr) {
        for (size_t tl = t0; tl < t1; ++tl)
          for (int64_t j = 0; j < K; ++j) {
            const int32_t r = slot_row[tl * K + j];
            if (r < 0) continue;
            const float* p = part.data() + static_cast<int64_t>(r) * H;                    // [h] f32
            std::copy(p, p + H, a.parts + ((c0 + static_cast<int64_t>(tl)) * K + j) * H);  // [h] f32
          }
        return;
      }
      std::vector<float> acc(static_cast<size_t>(H));           // [h] f32
      std::vector<const float*> rows(static_cast<size_t>(K));  // [k] part rows, nullptr: -1 or absent
      for (size_t tl = t0; tl < t1; ++tl) {
        for (int64_t j = 0; j < K; ++j) {
          const int32_t r = slot_row[tl * K + j];
          rows[j] = r < 0 ? nullptr : part.data() + static_cast<int64_t>(r) * H;
        }
        moe_combine_token(rows.data(), a.topk_weights + (c0 + static_cast<int64_t>(tl)) * K, K, H, acc.data(),
                          a.out + (c0 + static_cast<int64_t>(tl)) * H);
      }
    };
    if (!pool.parallel_for(static_cast<size_t>(tc), 4, combine, cancel)) {
      throw_error(ErrorCode::Cancelled, "moeExperts: cancelled");
    }
  }
  return static_cast<Isa>(ran.load());
}

}  // namespace moe::cpu
