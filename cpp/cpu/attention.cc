// Paged-KV attention (attention.h). One work item = (sequence, kv head, query tile, kv split): the query rows of
// the item are every (query token of the tile) x (query head of the kv head's group), so a K/V page segment is
// read once per kv head and used by all g = q_heads / kv_heads heads (GQA). Per chunk (one page's rows of one kv
// head; for the bf16 tier at block 16 / 32, those of 64 / block_size consecutive pages of the sequence) a tier
// kernel computes the scores of every row, updates the f32 online softmax (running max
// m, running sum l, accumulator acc[head_dim]) and adds p . V. Splits write (m, l, acc) partials that a second pass
// merges with log-sum-exp; unsplit items finalise directly. Attention sinks add exp(sink - m) to the denominator.
//
// Tiers: scalar (the reference: plain loops, std::exp), AVX2 (8 lanes, f32 FMAs as AVX-512F below),
// AVX-512F (f32 FMAs on K / V rows converted as they load, the bf16 tier's blocking), AVX-512 BF16 (q . k with vdpbf16ps on the
// bf16 K page directly, q rounded to bf16 once; p . V with vdpbf16ps on pair-interleaved V rows, p rounded to
// bf16: output NMSE ~1e-6 against float64). Scores of 16 keys are reduced together (reduce8, join8). The vector tiers
// prefetch the next chunk of the item (the next kv head of the page, then the next page) while streaming the
// current one (pages are scattered); the bf16 tier issues one L2 prefetch per K / V line it loads, the lines shared
// out over all the chunk's score calls and p . V groups. Exp is a degree-6 polynomial on 2^n scaling (relative
// error ~2e-7 for the arguments here, which are all <= 0).
// Measured (bench/native/attention_bench.cc, 2-core AMD EPYC Zen 4 VM whose read bandwidth swings between ~25 and
// ~60 GB/s, so each decode repetition is compared with a read probe run right before and after it; decode 64
// sequences, block 64, head_dim 128): items walk a page's kv heads in order (see the driver), so a page of K and of
// V is read front to back. Loads and compute used to add up at g >= 4 (0.59 / 0.48 / 0.34 of the probe at
// g = 4 / 8 / 16): the next page was prefetched into L1 in bursts. Spread L2 prefetches shared over the calls, full
// 16-key score blocks without key bounds, and the softmax's exp and bf16 packing in one pass (acc rescaled only when
// the running max moves) and p . V groups of 2 rows reading whole V rows in one pass give 0.84 / 0.86-0.89 / 0.81 /
// 0.51 at g = 1 / 4 / 8 / 16 with the probe at ~32 GB/s, 0.87-0.96 of a plain read of the same pages in the same
// order (bench/results/attention-native-2026-11-26-l2prefetch-run2.json: decode-read rows; its decode-cached rows run
// the kernel with K/V in cache). g = 16 is compute-bound: at one vdpbf16ps per cycle it needs 128 per key-head,
// 35 ns at 3.65 GHz, against ~40 ns that 0.8 of the probe allows per core. With the probe at ~50 GB/s the scattered
// pages themselves read at ~0.6-0.8 of it (-l2prefetch.json, first rows). The f32 tiers: AVX-512F 0.91 and AVX2 0.72
// of the probe at g = 4 (they were 0.25 and 0.17). Prefill 0.63 of the vdpbf16ps peak (blocks 16 and 64).
// Splits of a big batch run inside their items (see splits_in_item): the global partials they replaced were
// [rows x splits x (head_dim + 2)] f32 allocated and cleared by the calling thread, 2.2 GB for a 32768-token prefill
// step at 32 heads and 4 splits. On the AVX2 development VM (2 cores, numSplits 4, 32/8 heads of 128, bf16 K/V,
// block 64): decode of 1536 sequences x 530 tokens 351-427 -> 311-323 ms (one split: 270), prefill of 16 x 512
// tokens 1262 -> 642 ms (one split: 507-561).
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/threadpool.h"

#include "simd.h"

namespace moe::cpu {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kGroupRows = 16;     // kv heads share an item only for query tiles of at most this many rows per head
constexpr int kMaxSegs = 4;            // pages per bf16 chunk (block sizes 16 and 32: 64 / block_size pages)

// One chunk of one item, handed to a tier kernel. Rows r in [0, R): valid kv offsets j in [jlo[r], jhi[r]] of this
// chunk (jlo > jhi: the row has nothing here and is left alone).
struct Chunk {
  int R, hd, c;           // rows, head_dim, tokens readable in this chunk (every jhi < c)
  const float* qf;        // [R][hd] f32, q * scale
  const uint16_t* qb;     // [R][hd] bf16 bits of q * scale (bf16 tier only)
  DType kv;
  const int* jlo;         // [R]
  const int* jhi;         // [R]
  float* s;               // [R][s_stride] scores / probabilities scratch
  int s_stride;
  float* m;               // [R] running max
  float* l;               // [R] running sum of exp
  float* acc;             // [R][hd] running sum of p * v
  // K / V rows ([row][hd] kv_dtype, one (page, kv head) per segment) as page segments of `seg` rows: rows
  // [q seg, (q + 1) seg) start at byte addresses ks[q] / vs[q]. One segment unless the bf16 tier takes several pages
  // of a block size that is a multiple of 16 as one chunk. nks / nvs: the same for the next chunk in the item's order
  // (prefetched while this one streams; null where it has fewer segments or there is none).
  int seg;
  const char* ks[kMaxSegs];
  const char* vs[kMaxSegs];
  const char* nks[kMaxSegs];
  const char* nvs[kMaxSegs];
};

// One 64-byte line into L2 (prefetcht2), for the vector tiers' prefetch of the next chunk: spread one line per K/V
// line loaded from the current chunk, it keeps the next chunk in flight while the core computes. Measured on the
// development VM (decode, 64 sequences x kv 4096, GQA 4): prefetcht0 in the same places, or the same lines
// issued in bursts (64 per 16-key block), left loads and compute serialised (0.56-0.59 of the read probe); spread
// L2 prefetches 0.78-0.82.
inline void prefetch_l2(const char* p) { __builtin_prefetch(p, 0, 1); }

// The prefetch lines (of nl per key) that call p of `calls` issues: lines i with i % calls == p, so every line is
// prefetched once and the prefetches spread over all the calls of a block instead of bunching in the first.
inline unsigned share_lines(int p, int calls, int nl) {
  unsigned m = 0;
  for (int i = p; i < nl; i += calls) m |= 1u << i;
  return m;
}

// Whether row r has keys in the block [j0, j0 + jn) of the chunk.
inline bool row_in_block(const Chunk& ch, int r, int j0, int jn) {
  const int jlo = ch.jlo[r], jhi = ch.jhi[r];
  return jlo <= jhi && jhi >= j0 && jlo < j0 + jn;
}

// Rows from r (non-empty) with its key range, at most `most`: one p . V group.
inline int pv_group_size(const Chunk& ch, int r, int most) {
  int n = 1;
  while (n < most && r + n < ch.R && ch.jlo[r + n] == ch.jlo[r] && ch.jhi[r + n] == ch.jhi[r]) ++n;
  return n;
}

using ChunkKernel = void (*)(const Chunk&);

inline float load_f32(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
}

// ---- scalar reference tier --------------------------------------------------------------------------------------
void chunk_scalar(const Chunk& ch) {
  const int hd = ch.hd;
  for (int r = 0; r < ch.R; ++r) {
    const int jlo = ch.jlo[r], jhi = ch.jhi[r];
    if (jlo > jhi) continue;
    const float* q = ch.qf + static_cast<size_t>(r) * hd;
    float* s = ch.s + static_cast<size_t>(r) * ch.s_stride;
    float mx = kNegInf;
    for (int j = jlo; j <= jhi; ++j) {
      float d = 0.0f;
      for (int e = 0; e < hd; ++e) d += q[e] * load_f32(ch.ks[0], ch.kv, static_cast<size_t>(j) * hd + e);
      s[j] = d;
      mx = std::max(mx, d);
    }
    const float m_new = std::max(ch.m[r], mx);
    const float corr = ch.m[r] == kNegInf ? 0.0f : std::exp(ch.m[r] - m_new);
    float sum = 0.0f;
    for (int j = jlo; j <= jhi; ++j) {
      s[j] = std::exp(s[j] - m_new);
      sum += s[j];
    }
    ch.l[r] = ch.l[r] * corr + sum;
    ch.m[r] = m_new;
    float* acc = ch.acc + static_cast<size_t>(r) * hd;
    for (int e = 0; e < hd; ++e) {
      float a = acc[e] * corr;
      for (int j = jlo; j <= jhi; ++j) a += s[j] * load_f32(ch.vs[0], ch.kv, static_cast<size_t>(j) * hd + e);
      acc[e] = a;
    }
  }
}

#if MOE_X86
// ---- shared vector pieces ---------------------------------------------------------------------------------------
MOE_TARGET_AVX512 static inline float hmax512(__m512 v) { return _mm512_reduce_max_ps(v); }

// acc[0, hd) *= f (hd % 16 == 0): an accumulator row's online-softmax rescale.
MOE_TARGET_AVX512 static inline void scale_row_512(float* acc, int hd, float f) {
  const __m512 vf = _mm512_set1_ps(f);
  for (int i = 0; i < hd; i += 16) _mm512_storeu_ps(acc + i, _mm512_mul_ps(_mm512_loadu_ps(acc + i), vf));
}

// Online-softmax update of row r from its scores s[jlo..jhi]; returns corr (the factor acc must be scaled by)
// and leaves the probabilities in s.
MOE_TARGET_AVX512 static float softmax_row_512(const Chunk& ch, int r) {
  float* s = ch.s + static_cast<size_t>(r) * ch.s_stride;
  const int jlo = ch.jlo[r], n = ch.jhi[r] - jlo + 1;
  __m512 vmx = _mm512_set1_ps(kNegInf);
  for (int i = 0; i < n; i += 16) {
    __mmask16 m = simd::tail_mask16(static_cast<size_t>(n - i));
    vmx = _mm512_mask_max_ps(vmx, m, vmx, _mm512_maskz_loadu_ps(m, s + jlo + i));
  }
  const float m_old = ch.m[r];
  const float mx = hmax512(vmx);
  const float m_new = m_old > mx ? m_old : mx;
  const __m512 vm = _mm512_set1_ps(m_new);
  __m512 vsum = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    __mmask16 m = simd::tail_mask16(static_cast<size_t>(n - i));
    __m512 p = _mm512_maskz_mov_ps(m, simd::exp_neg512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + jlo + i), vm)));
    _mm512_mask_storeu_ps(s + jlo + i, m, p);
    vsum = _mm512_add_ps(vsum, p);
  }
  const float corr = m_old == kNegInf ? 0.0f : _mm_cvtss_f32(_mm512_castps512_ps128(simd::exp_neg512(_mm512_set1_ps(m_old - m_new))));
  ch.l[r] = ch.l[r] * corr + _mm512_reduce_add_ps(vsum);
  ch.m[r] = m_new;
  return corr;
}

// 16 vectors -> one vector of their 16 horizontal sums (element t = sum of v[t]) as join8(reduce8(v), reduce8(v + 8)):
// a transpose-and-add tree, ~3 instructions per sum instead of ~8 for separate reductions, split in two so a caller
// reduces keys 0-7 as soon as they are computed (reduce8: three levels of the tree, the lanes of v[t] only) and
// joins the halves later (join8).
MOE_TARGET_AVX512 static inline __m512 reduce8(const __m512* v) {
  __m512 x[4], y[2];
  for (int i = 0; i < 4; ++i)
    x[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 2; ++i) {
    __m512d a = _mm512_castps_pd(x[2 * i]), b = _mm512_castps_pd(x[2 * i + 1]);
    y[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  return _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], 0x88), _mm512_shuffle_f32x4(y[0], y[1], 0xdd));
}

MOE_TARGET_AVX512 static inline __m512 join8(__m512 z0, __m512 z1) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, 0x88), _mm512_shuffle_f32x4(z0, z1, 0xdd));
}

// Highest row index any row reads + 1 (rows read j <= jhi < c).
inline int chunk_extent(const Chunk& ch) {
  int c = 0;
  for (int r = 0; r < ch.R; ++r)
    if (ch.jlo[r] <= ch.jhi[r]) c = std::max(c, ch.jhi[r] + 1);
  return c;
}

// ---- AVX-512F: f32 FMAs ------------------------------------------------------------------------------------------
// K / V rows are converted to f32 in registers as they load (bf16: zero-extend and shift; f16: vcvtph2ps; f32: as
// is), no scratch copy of the chunk. Blocking as in the bf16 tier: the scores of two rows share every K load (16-key
// blocks, reduce8 / join8, a short last block zero-padded; q read from L1 as the FMAs' second operand), p . V over
// groups of up to 4 rows with the same key range sharing every V load (64 columns of accumulators per row in
// registers), and the next chunk prefetched into L2 one line per line loaded, shared over the calls.

template <DType KT>
constexpr int kv_size() {
  return KT == DType::F32 ? 4 : 2;
}

// 16 K / V elements at byte address p -> f32.
template <DType KT>
MOE_TARGET_AVX512 static inline __m512 ld_kv16(const char* p) {
  if constexpr (KT == DType::F32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
  } else if constexpr (KT == DType::F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
}

// Scores of rows r0 and (TWO) r1 for the 16 K rows at k16 (bytes; keys j0 .. j0 + 15, the first jn real). PF: prefetch
// line i of the next chunk's rows (pf) for the set bits of `lines`.
template <int HD, DType KT, bool TWO, bool PF>
MOE_TARGET_AVX512 static inline void scores_block_f32(const Chunk& ch, const char* k16, int j0, int jn, int r0, int r1,
                                                     const char* pf, unsigned lines) {
  constexpr int ES = kv_size<KT>(), RB = HD * ES;  // bytes per element, per K row
  const float* q0 = ch.qf + static_cast<size_t>(r0) * HD;
  const float* q1 = ch.qf + static_cast<size_t>(r1) * HD;
  __m512 z0[2], z1[2];
  for (int h = 0; h < 2; ++h) {
    __m512 d0[8], d1[8];
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) d0[t] = d1[t] = _mm512_setzero_ps();
    // k outer, the 8 keys inner: each q vector is loaded once per block of keys, not once per key (as in the avx2
    // tier, where this ordering ran decode 1.13x and prefill 1.2x faster; here compiled, not yet run on an AVX-512
    // machine); every accumulator is fed in the same k order, so the sums are the same bits
#pragma GCC unroll 16
    for (int i = 0; i < HD / 16; ++i) {
      const __m512 x0 = _mm512_loadu_ps(q0 + 16 * i);
      const __m512 x1 = TWO ? _mm512_loadu_ps(q1 + 16 * i) : x0;
#pragma GCC unroll 8
      for (int t = 0; t < 8; ++t) {
        const int j = 8 * h + t;
        if (PF && (16 * ES * i) % 64 == 0 && (lines >> (16 * ES * i / 64) & 1u))
          prefetch_l2(pf + static_cast<size_t>(j < jn ? j : 0) * RB + 16 * ES * i);
        const __m512 k = ld_kv16<KT>(k16 + static_cast<size_t>(j) * RB + 16 * ES * i);
        d0[t] = _mm512_fmadd_ps(x0, k, d0[t]);
        if (TWO) d1[t] = _mm512_fmadd_ps(x1, k, d1[t]);
      }
    }
    z0[h] = reduce8(d0);
    if (TWO) z1[h] = reduce8(d1);
  }
  const __mmask16 m = simd::tail_mask16(static_cast<size_t>(jn));
  _mm512_mask_storeu_ps(ch.s + static_cast<size_t>(r0) * ch.s_stride + j0, m, join8(z0[0], z0[1]));
  if (TWO) _mm512_mask_storeu_ps(ch.s + static_cast<size_t>(r1) * ch.s_stride + j0, m, join8(z1[0], z1[1]));
}

// acc rows [r0, r0 + G) += p . V over keys [jlo, jhi] (f32 probabilities in s), 64 columns at a time. PF: prefetch
// line L of the next chunk's V rows (ch.nvs[0]) for the set bits of `lines`. One page segment (f32 tiers).
template <int HD, DType KT, int G, bool PF>
MOE_TARGET_AVX512 static void pv_group_f32(const Chunk& ch, int r0, int jlo, int jhi, unsigned lines) {
  constexpr int ES = kv_size<KT>(), RB = HD * ES;
  const char* vb = ch.vs[0];
  const float* p[G];
  float* acc[G];
  for (int g = 0; g < G; ++g) {
    p[g] = ch.s + static_cast<size_t>(r0 + g) * ch.s_stride;
    acc[g] = ch.acc + static_cast<size_t>(r0 + g) * HD;
  }
  for (int c0 = 0; c0 < HD; c0 += 64) {
    __m512 a[G][4];
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < 4; ++i) a[g][i] = _mm512_loadu_ps(acc[g] + c0 + 16 * i);
    for (int j = jlo; j <= jhi; ++j) {
      const char* vr = vb + static_cast<size_t>(j) * RB + c0 * ES;
      __m512 v[4];
      for (int i = 0; i < 4; ++i) {
        const int off = (c0 + 16 * i) * ES;  // byte offset in the row
        if (PF && off % 64 == 0 && (lines >> (off / 64) & 1u)) prefetch_l2(ch.nvs[0] + static_cast<size_t>(j) * RB + off);
        v[i] = ld_kv16<KT>(vr + 16 * ES * i);
      }
      for (int g = 0; g < G; ++g) {
        const __m512 pj = _mm512_set1_ps(p[g][j]);
        for (int i = 0; i < 4; ++i) a[g][i] = _mm512_fmadd_ps(pj, v[i], a[g][i]);
      }
    }
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < 4; ++i) _mm512_storeu_ps(acc[g] + c0 + 16 * i, a[g][i]);
  }
}

// The AVX-512F tier for chunk_walk (below).
template <int HD, DType KT>
struct Avx512F {
  static constexpr int kBlock = 16, kRowBytes = HD * kv_size<KT>(), kMaxGroup = 4;
  static constexpr bool kPairs = true;
  template <bool TWO, bool PF>
  MOE_TARGET_AVX512 static void scores(const Chunk& ch, const char* kb, int j0, int jn, int r0, int r1, const char* pf, unsigned lines) {
    scores_block_f32<HD, KT, TWO, PF>(ch, kb, j0, jn, r0, r1, pf, lines);
  }
  MOE_TARGET_AVX512 static void softmax(const Chunk& ch, int r) {
    const float corr = softmax_row_512(ch, r);
    if (corr != 1.0f) scale_row_512(ch.acc + static_cast<size_t>(r) * HD, HD, corr);
  }
  template <int G, bool PF>
  MOE_TARGET_AVX512 static void pv(const Chunk& ch, int /*c*/, int r0, int jlo, int jhi, unsigned lines) {
    pv_group_f32<HD, KT, G, PF>(ch, r0, jlo, jhi, lines);
  }
};

template <class T>
inline void chunk_walk(const Chunk& ch);

template <int HD>
MOE_TARGET_AVX512 void chunk_avx512(const Chunk& ch) {
  switch (ch.kv) {
    case DType::F32: chunk_walk<Avx512F<HD, DType::F32>>(ch); break;
    case DType::F16: chunk_walk<Avx512F<HD, DType::F16>>(ch); break;
    default: chunk_walk<Avx512F<HD, DType::BF16>>(ch); break;
  }
}

// ---- AVX-512 BF16 -------------------------------------------------------------------------------------------------
// q . k: vdpbf16ps straight from the bf16 K page, 16 keys at a time reduced together (reduce8, join8).
// p . V: vdpbf16ps too, on V rows j, j+1 interleaved into bf16 pairs; p is rounded to bf16 (relative 2^-9 per
// probability, NMSE ~1e-6 on the output). The interleave (vpunpck{l,h}wd works within 128-bit lanes) leaves acc in
// a permuted column order: acc element 16 i + 4 L + e holds column 32 (i / 2) + 8 L + 4 (i % 2) + e. The driver
// restores the order after the item (unpermute_bf16).
// Register blocking (decode is compute-bound in the kernel at GQA >= 4 once K/V stream at memory speed):
//  - scores: two rows share every K load (2 rows x 8 keys of accumulators); keys 0-7 of a 16-key block are reduced
//    (reduce8) before keys 8-15 are computed, and join8 gives bitwise the 16-key tree of the block, so a row's scores
//    do not depend on which row it was paired with (pairing depends on the item's row count).
//  - p . V: rows with the same key range (the g heads of one query token: every row of a decode item) form groups
//    of up to 2 that share every V load and interleave; their accumulators stay in registers over the whole chunk,
//    up to 128 columns at a time (one pass over the V rows at head_dim <= 128). Each row's sums run over the pairs
//    in order, whatever the group size (bitwise the same).
// Probabilities are packed in place into bf16 pairs (s[k] holds the pair of keys 2k, 2k+1 as 32 bits).

// Scores of rows r0 and (TWO) r1 for the 16 keys at k16 (keys j0 .. j0 + 15 of the chunk; only the first jn <= 16
// are real: the caller zero-pads a short block, so the loops have no key bounds and every accumulator stays in a
// register). Lane t of the reduction tree sums only d[t], so a key's score has the same bits whatever the other
// keys are (the extent depends on the other rows of the chunk, i.e. on how a prompt was split into prefill steps).
// PF: prefetch lines of the next chunk's K rows of these keys, pf: line i (64 bytes, i < HD / 32) of every key when
// bit i of `lines` is set (the chunk's score calls share the lines out, so the prefetches spread over all of them).
template <int HD, bool TWO, bool PF>
MOE_TARGET_AVX512BF16 static inline void scores_block(const Chunk& ch, const uint16_t* k16, int j0, int jn, int r0, int r1,
                                                      const char* pf, unsigned lines) {
  __m512bh q0[HD / 32], q1[HD / 32];
  for (int i = 0; i < HD / 32; ++i) {
    q0[i] = (__m512bh)_mm512_loadu_si512(ch.qb + static_cast<size_t>(r0) * HD + 32 * i);
    if (TWO) q1[i] = (__m512bh)_mm512_loadu_si512(ch.qb + static_cast<size_t>(r1) * HD + 32 * i);
  }
  __m512 z0[2], z1[2];
  for (int h = 0; h < 2; ++h) {
    __m512 d0[8], d1[8];
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) {
      const int j = 8 * h + t;
      const uint16_t* kr = k16 + static_cast<size_t>(j) * HD;
      const char* pr = PF ? pf + static_cast<size_t>(j < jn ? j : 0) * HD * 2 : nullptr;
      if (PF && (lines & 1u)) prefetch_l2(pr);
      __m512bh k = (__m512bh)_mm512_loadu_si512(kr);
      __m512 a = _mm512_dpbf16_ps(_mm512_setzero_ps(), q0[0], k), b = _mm512_setzero_ps();
      if (TWO) b = _mm512_dpbf16_ps(_mm512_setzero_ps(), q1[0], k);
#pragma GCC unroll 8
      for (int i = 1; i < HD / 32; ++i) {
        if (PF && (lines >> i & 1u)) prefetch_l2(pr + 64 * i);
        k = (__m512bh)_mm512_loadu_si512(kr + 32 * i);
        a = _mm512_dpbf16_ps(a, q0[i], k);
        if (TWO) b = _mm512_dpbf16_ps(b, q1[i], k);
      }
      d0[t] = a;
      d1[t] = b;
    }
    z0[h] = reduce8(d0);
    if (TWO) z1[h] = reduce8(d1);
  }
  const __mmask16 m = simd::tail_mask16(static_cast<size_t>(jn));
  _mm512_mask_storeu_ps(ch.s + static_cast<size_t>(r0) * ch.s_stride + j0, m, join8(z0[0], z0[1]));
  if (TWO) _mm512_mask_storeu_ps(ch.s + static_cast<size_t>(r1) * ch.s_stride + j0, m, join8(z1[0], z1[1]));
}

// acc rows [r0, r0 + G) += p . V over the pairs [k0, k1] (every row of the group has the same pair range); c is the
// chunk extent (a pair's second V row at or past it is read as zero, its probability is zero). pf: prefetch the
// next chunk's V lines (one per V line loaded here).
template <int HD, int G, bool PF>
MOE_TARGET_AVX512BF16 static void pv_group(const Chunk& ch, int c, int r0, int k0, int k1, unsigned lines) {
  constexpr int NB = HD / 32;                               // 32-column V loads per row
  constexpr int B = NB < 4 ? NB : 4;                        // loads per column block (2 B accumulators per row)
  const uint32_t* pr[G];
  float* acc[G];
  for (int g = 0; g < G; ++g) {
    pr[g] = reinterpret_cast<const uint32_t*>(ch.s + static_cast<size_t>(r0 + g) * ch.s_stride);
    acc[g] = ch.acc + static_cast<size_t>(r0 + g) * HD;
  }
  for (int b0 = 0; b0 < NB; b0 += B) {
    __m512 a[G][2 * B];
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < 2 * B; ++i) a[g][i] = _mm512_loadu_ps(acc[g] + 16 * (2 * b0 + i));
    int q = 2 * k0 / ch.seg, qlo = q * ch.seg;  // the segment of V row 2k and its first row (2k, 2k + 1 share one)
    for (int k = k0; k <= k1; ++k) {
      if (2 * k >= qlo + ch.seg) {
        ++q;
        qlo += ch.seg;
      }
      const uint16_t* r0v = reinterpret_cast<const uint16_t*>(ch.vs[q]) + static_cast<size_t>(2 * k - qlo) * HD + 32 * b0;
      const bool two = 2 * k + 1 < c;
      __m512i vv[2 * B];
      for (int b = 0; b < B; ++b) {
        if (PF && (lines >> (b0 + b) & 1u) && ch.nvs[q] != nullptr) {
          const char* pn = ch.nvs[q] + (static_cast<size_t>(2 * k - qlo) * HD + 32 * (b0 + b)) * 2;
          prefetch_l2(pn);
          if (two) prefetch_l2(pn + HD * 2);
        }
        const __m512i x = _mm512_loadu_si512(r0v + 32 * b);
        const __m512i n = two ? _mm512_loadu_si512(r0v + HD + 32 * b) : _mm512_setzero_si512();
        vv[2 * b] = _mm512_unpacklo_epi16(x, n);
        vv[2 * b + 1] = _mm512_unpackhi_epi16(x, n);
      }
      for (int g = 0; g < G; ++g) {
        const __m512bh pp = (__m512bh)_mm512_set1_epi32(static_cast<int>(pr[g][k]));
        for (int i = 0; i < 2 * B; ++i) a[g][i] = _mm512_dpbf16_ps(a[g][i], pp, (__m512bh)vv[i]);
      }
    }
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < 2 * B; ++i) _mm512_storeu_ps(acc[g] + 16 * (2 * b0 + i), a[g][i]);
  }
}

// Online softmax of row r (non-empty range) over the chunk; probabilities -> bf16 pairs in place. acc (and l) are
// rescaled only when the running max moved (corr = exp(0) would be exactly 1). Pair k holds keys 2k, 2k+1 as 32
// bits at s[k]: the exp pass runs over whole pairs from 2 (jlo / 2), lanes outside [jlo, jhi] are 0, and its stores
// never pass unread floats (k <= 2k).
template <int HD>
MOE_TARGET_AVX512BF16 static void softmax_row_bf16(const Chunk& ch, int r) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const int jlo = ch.jlo[r], jhi = ch.jhi[r];
  float* s = ch.s + static_cast<size_t>(r) * ch.s_stride;
  const int n = jhi - jlo + 1;
  __m512 vmx = _mm512_set1_ps(kNegInf);
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = simd::tail_mask16(static_cast<size_t>(n - i));
    vmx = _mm512_mask_max_ps(vmx, m, vmx, _mm512_maskz_loadu_ps(m, s + jlo + i));
  }
  const float m_old = ch.m[r], mx = hmax512(vmx);
  const float m_new = m_old > mx ? m_old : mx;
  if (m_new != m_old) {
    const float corr =
        m_old == kNegInf ? 0.0f : _mm_cvtss_f32(_mm512_castps512_ps128(simd::exp_neg512(_mm512_set1_ps(m_old - m_new))));
    ch.l[r] *= corr;
    ch.m[r] = m_new;
    scale_row_512(ch.acc + static_cast<size_t>(r) * HD, HD, corr);
  }
  const __m512 vm = _mm512_set1_ps(m_new);
  const __m512i vlo = _mm512_set1_epi32(jlo), vhi = _mm512_set1_epi32(jhi);
  __m512 vsum = _mm512_setzero_ps();
  const int k0 = jlo / 2, np = jhi / 2 - k0 + 1;
  for (int m = 0; m < np; m += 16) {
    const int f0 = 2 * (k0 + m);  // float index of lane 0
    const __m512i pos0 = _mm512_add_epi32(lane, _mm512_set1_epi32(f0)), pos1 = _mm512_add_epi32(pos0, _mm512_set1_epi32(16));
    const __mmask16 in0 = _mm512_cmpge_epi32_mask(pos0, vlo) & _mm512_cmple_epi32_mask(pos0, vhi);
    const __mmask16 in1 = _mm512_cmpge_epi32_mask(pos1, vlo) & _mm512_cmple_epi32_mask(pos1, vhi);
    const __m512 e0 = _mm512_maskz_mov_ps(in0, simd::exp_neg512(_mm512_sub_ps(_mm512_maskz_loadu_ps(in0, s + f0), vm)));
    const __m512 e1 = _mm512_maskz_mov_ps(in1, simd::exp_neg512(_mm512_sub_ps(_mm512_maskz_loadu_ps(in1, s + f0 + 16), vm)));
    vsum = _mm512_add_ps(_mm512_add_ps(vsum, e0), e1);
    _mm512_mask_storeu_epi32(s + k0 + m, simd::tail_mask16(static_cast<size_t>(np - m)), (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
  }
  ch.l[r] += _mm512_reduce_add_ps(vsum);
}

// The bf16 tier for chunk_walk (below). Score rows go in pairs (head_dim 256: one at a time, two rows' q do not fit
// the registers). p . V groups hold up to 2 rows: two rows keep all their columns in registers at head_dim <= 128
// (2 x 8 accumulators), so a group reads its V rows in one pass, whole rows in order; groups of 4 took two passes
// over half rows, and at GQA 4-8 decode streamed at 0.86 / 0.72 of the probe instead of 0.91 / 0.83 (same minutes,
// development VM).
template <int HD>
struct Bf16 {
  static constexpr int kBlock = 16, kRowBytes = HD * 2, kMaxGroup = 2;
  static constexpr bool kPairs = HD <= 128;
  template <bool TWO, bool PF>
  MOE_TARGET_AVX512BF16 static void scores(const Chunk& ch, const char* kb, int j0, int jn, int r0, int r1, const char* pf, unsigned lines) {
    scores_block<HD, TWO, PF>(ch, reinterpret_cast<const uint16_t*>(kb), j0, jn, r0, r1, pf, lines);
  }
  MOE_TARGET_AVX512BF16 static void softmax(const Chunk& ch, int r) { softmax_row_bf16<HD>(ch, r); }
  template <int G, bool PF>
  MOE_TARGET_AVX512BF16 static void pv(const Chunk& ch, int c, int r0, int jlo, int jhi, unsigned lines) {
    pv_group<HD, G, PF>(ch, c, r0, jlo / 2, jhi / 2, lines);
  }
};

template <int HD>
MOE_TARGET_AVX512BF16 void chunk_avx512bf16(const Chunk& ch) {
  chunk_walk<Bf16<HD>>(ch);
}

// ---- AVX2: 8 lanes, f32 FMAs -----------------------------------------------------------------------------------
// The AVX-512F tier's design on 16 ymm registers: K / V rows converted to f32 as they load, two rows per K load in
// 4-key blocks (each key's 8 lanes reduced by a fixed tree: pairs, then halves), groups of up to 4 rows per V load
// with 16 columns of accumulators per row, spread L2 prefetch of the next chunk.

// 8 K / V elements at byte address p -> f32.
template <DType KT>
MOE_TARGET_AVX2 static inline __m256 ld_kv8(const char* p) {
  if constexpr (KT == DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  } else if constexpr (KT == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    return simd::ld_bf16_avx2(reinterpret_cast<const uint16_t*>(p));
  }
}

// 4 vectors -> their 4 horizontal sums (element t = sum of v[t]).
MOE_TARGET_AVX2 static inline __m128 reduce4_avx2(const __m256* v) {
  const __m256 x0 = _mm256_add_ps(_mm256_unpacklo_ps(v[0], v[1]), _mm256_unpackhi_ps(v[0], v[1]));
  const __m256 x1 = _mm256_add_ps(_mm256_unpacklo_ps(v[2], v[3]), _mm256_unpackhi_ps(v[2], v[3]));
  const __m256d a = _mm256_castps_pd(x0), b = _mm256_castps_pd(x1);
  const __m256 y = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
  return _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
}

// Scores of rows r0 and (TWO) r1 for the 4 K rows at k4 (bytes; keys j0 .. j0 + 3, the first jn real). PF: prefetch
// line i of the next chunk's rows (pf) for the set bits of `lines`. k outer, the 4 keys inner (8 accumulators): each
// q vector is loaded once per block, not once per key as with the keys outer (a q load per FMA). The builds before
// and after alternated 6 times (2-core AVX2 EPYC, GQA 32/8, head_dim 128, bf16 K/V, medians): decode of 8 x 1024
// and 4 x 256 tokens 1.13x (16.5 against 14.5 GB/s), prefill of 1024 tokens 1.2x (100 against 83 GFLOP/s). Every
// accumulator is fed in the same k order as before: the same bits.
template <int HD, DType KT, bool TWO, bool PF>
MOE_TARGET_AVX2 static inline void scores_block_avx2(const Chunk& ch, const char* k4, int j0, int jn, int r0, int r1,
                                                    const char* pf, unsigned lines) {
  constexpr int ES = kv_size<KT>(), RB = HD * ES;
  const float* q0 = ch.qf + static_cast<size_t>(r0) * HD;
  const float* q1 = ch.qf + static_cast<size_t>(r1) * HD;
  __m256 d0[4], d1[4];
#pragma GCC unroll 4
  for (int t = 0; t < 4; ++t) d0[t] = d1[t] = _mm256_setzero_ps();
#pragma GCC unroll 32
  for (int i = 0; i < HD / 8; ++i) {
    const __m256 x0 = _mm256_loadu_ps(q0 + 8 * i);
    const __m256 x1 = TWO ? _mm256_loadu_ps(q1 + 8 * i) : x0;
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) {
      const char* kr = k4 + static_cast<size_t>(t) * RB;
      if (PF && (8 * ES * i) % 64 == 0 && (lines >> (8 * ES * i / 64) & 1u)) prefetch_l2(pf + static_cast<size_t>(t < jn ? t : 0) * RB + 8 * ES * i);
      const __m256 k = ld_kv8<KT>(kr + 8 * ES * i);
      d0[t] = _mm256_fmadd_ps(x0, k, d0[t]);
      if (TWO) d1[t] = _mm256_fmadd_ps(x1, k, d1[t]);
    }
  }
  alignas(16) float z[4];
  _mm_store_ps(z, reduce4_avx2(d0));
  std::copy(z, z + jn, ch.s + static_cast<size_t>(r0) * ch.s_stride + j0);
  if (TWO) {
    _mm_store_ps(z, reduce4_avx2(d1));
    std::copy(z, z + jn, ch.s + static_cast<size_t>(r1) * ch.s_stride + j0);
  }
}

// Online-softmax update of row r (as softmax_row_512, 8 lanes): returns corr and leaves the probabilities in s.
MOE_TARGET_AVX2 static float softmax_row_avx2(const Chunk& ch, int r) {
  float* s = ch.s + static_cast<size_t>(r) * ch.s_stride;
  const int jlo = ch.jlo[r], jhi = ch.jhi[r];
  float mx = kNegInf;
  for (int j = jlo; j <= jhi; ++j) mx = s[j] > mx ? s[j] : mx;
  const float m_old = ch.m[r];
  const float m_new = m_old > mx ? m_old : mx;
  const __m256 vm = _mm256_set1_ps(m_new);
  __m256 vsum = _mm256_setzero_ps();
  int j = jlo;
  for (; j + 8 <= jhi + 1; j += 8) {
    const __m256 p = simd::exp_neg256(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
    _mm256_storeu_ps(s + j, p);
    vsum = _mm256_add_ps(vsum, p);
  }
  alignas(32) float buf[8];
  _mm256_store_ps(buf, vsum);
  float sum = ((buf[0] + buf[1]) + (buf[2] + buf[3])) + ((buf[4] + buf[5]) + (buf[6] + buf[7]));
  if (j <= jhi) {  // the last 1-7 keys as one masked vector (lanes past jhi give 0)
    for (int t = 0; t < 8; ++t) buf[t] = j + t <= jhi ? s[j + t] - m_new : kNegInf;
    _mm256_store_ps(buf, simd::exp_neg256(_mm256_load_ps(buf)));
    for (int t = 0; j + t <= jhi; ++t) {
      s[j + t] = buf[t];
      sum += buf[t];
    }
  }
  float corr = 0.0f;
  if (m_old != kNegInf) {
    _mm256_store_ps(buf, simd::exp_neg256(_mm256_set1_ps(m_old - m_new)));
    corr = buf[0];
  }
  ch.l[r] = ch.l[r] * corr + sum;
  ch.m[r] = m_new;
  return corr;
}

// acc rows [r0, r0 + G) += p . V over keys [jlo, jhi] (f32 probabilities in s), 16 columns at a time. PF: prefetch
// line L of the next chunk's V rows (ch.nvs[0]) for the set bits of `lines`. One page segment (f32 tiers).
template <int HD, DType KT, int G, bool PF>
MOE_TARGET_AVX2 static void pv_group_avx2(const Chunk& ch, int r0, int jlo, int jhi, unsigned lines) {
  constexpr int ES = kv_size<KT>(), RB = HD * ES;
  const char* vb = ch.vs[0];
  const float* p[G];
  float* acc[G];
  for (int g = 0; g < G; ++g) {
    p[g] = ch.s + static_cast<size_t>(r0 + g) * ch.s_stride;
    acc[g] = ch.acc + static_cast<size_t>(r0 + g) * HD;
  }
  for (int c0 = 0; c0 < HD; c0 += 16) {
    __m256 a[G][2];
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < 2; ++i) a[g][i] = _mm256_loadu_ps(acc[g] + c0 + 8 * i);
    for (int j = jlo; j <= jhi; ++j) {
      const char* vr = vb + static_cast<size_t>(j) * RB + c0 * ES;
      __m256 v[2];
      for (int i = 0; i < 2; ++i) {
        const int off = (c0 + 8 * i) * ES;  // byte offset in the row
        if (PF && off % 64 == 0 && (lines >> (off / 64) & 1u)) prefetch_l2(ch.nvs[0] + static_cast<size_t>(j) * RB + off);
        v[i] = ld_kv8<KT>(vr + 8 * ES * i);
      }
      for (int g = 0; g < G; ++g) {
        const __m256 pj = _mm256_set1_ps(p[g][j]);
        for (int i = 0; i < 2; ++i) a[g][i] = _mm256_fmadd_ps(pj, v[i], a[g][i]);
      }
    }
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < 2; ++i) _mm256_storeu_ps(acc[g] + c0 + 8 * i, a[g][i]);
  }
}

// The AVX2 tier for chunk_walk (below).
template <int HD, DType KT>
struct Avx2 {
  static constexpr int kBlock = 4, kRowBytes = HD * kv_size<KT>(), kMaxGroup = 4;
  static constexpr bool kPairs = true;
  template <bool TWO, bool PF>
  MOE_TARGET_AVX2 static void scores(const Chunk& ch, const char* kb, int j0, int jn, int r0, int r1, const char* pf, unsigned lines) {
    scores_block_avx2<HD, KT, TWO, PF>(ch, kb, j0, jn, r0, r1, pf, lines);
  }
  MOE_TARGET_AVX2 static void softmax(const Chunk& ch, int r) {
    const float corr = softmax_row_avx2(ch, r);
    if (corr == 1.0f) return;
    float* acc = ch.acc + static_cast<size_t>(r) * HD;
    const __m256 vc = _mm256_set1_ps(corr);
    for (int i = 0; i < HD / 8; ++i) _mm256_storeu_ps(acc + 8 * i, _mm256_mul_ps(_mm256_loadu_ps(acc + 8 * i), vc));
  }
  template <int G, bool PF>
  MOE_TARGET_AVX2 static void pv(const Chunk& ch, int /*c*/, int r0, int jlo, int jhi, unsigned lines) {
    pv_group_avx2<HD, KT, G, PF>(ch, r0, jlo, jhi, lines);
  }
};

template <int HD>
MOE_TARGET_AVX2 void chunk_avx2(const Chunk& ch) {
  switch (ch.kv) {
    case DType::F32: chunk_walk<Avx2<HD, DType::F32>>(ch); break;
    case DType::F16: chunk_walk<Avx2<HD, DType::F16>>(ch); break;
    default: chunk_walk<Avx2<HD, DType::BF16>>(ch); break;
  }
}

// The vector tiers' chunk walk (T: Bf16, Avx512F or Avx2): score blocks of T::kBlock keys (each within one page
// segment; a short last block zero-padded) over rows in pairs (T::kPairs) or one at a time, the calls of a block
// sharing out the prefetch of the next chunk's K lines; the online softmax row by row; p . V over groups of up to
// T::kMaxGroup rows with the same key range, sharing out the next chunk's V lines. The walk is plain integer code;
// T's functions carry the vector work.
template <class T, bool PF>
void pv_dispatch(const Chunk& ch, int c, int r, int n, unsigned lines) {
  const int jlo = ch.jlo[r], jhi = ch.jhi[r];
  if constexpr (T::kMaxGroup == 2) {
    if (n == 1) T::template pv<1, PF>(ch, c, r, jlo, jhi, lines);
    else T::template pv<2, PF>(ch, c, r, jlo, jhi, lines);
  } else {
    switch (n) {
      case 1: T::template pv<1, PF>(ch, c, r, jlo, jhi, lines); break;
      case 2: T::template pv<2, PF>(ch, c, r, jlo, jhi, lines); break;
      case 3: T::template pv<3, PF>(ch, c, r, jlo, jhi, lines); break;
      default: T::template pv<4, PF>(ch, c, r, jlo, jhi, lines); break;
    }
  }
}

template <class T>
__attribute__((always_inline)) inline void chunk_walk(const Chunk& ch) {
  constexpr int KB = T::kBlock, RB = T::kRowBytes, NL = RB / 64;  // keys per block; bytes, 64-byte lines per row
  const int c = chunk_extent(ch);
  if (c == 0) return;
  alignas(64) char pad[KB * RB];
  for (int j0 = 0; j0 < c; j0 += KB) {
    const int jn = c - j0 < KB ? c - j0 : KB;
    const int q = j0 / ch.seg, off = j0 - q * ch.seg;  // the block's page segment
    const char* kblk = ch.ks[q] + static_cast<size_t>(off) * RB;
    if (jn < KB) {
      std::copy(kblk, kblk + static_cast<size_t>(jn) * RB, pad);
      std::fill(pad + static_cast<size_t>(jn) * RB, pad + KB * RB, char{0});
      kblk = pad;
    }
    const char* pf = ch.nks[q] != nullptr ? ch.nks[q] + static_cast<size_t>(off) * RB : nullptr;
    int calls = 0;
    for (int r = 0; r < ch.R; ++r) calls += row_in_block(ch, r, j0, jn);
    if (T::kPairs) calls = (calls + 1) / 2;
    int call = 0, pending = -1;
    for (int r = 0; r <= ch.R; ++r) {
      // rows in pairs (r0, r1); without pairs, or the last odd row: r0 alone (r1 == r0)
      int r0, r1;
      if (r == ch.R) {
        if (pending < 0) break;
        r0 = r1 = pending;
      } else {
        if (!row_in_block(ch, r, j0, jn)) continue;
        if (!T::kPairs) {
          r0 = r1 = r;
        } else if (pending < 0) {
          pending = r;
          continue;
        } else {
          r0 = pending;
          r1 = r;
          pending = -1;
        }
      }
      const unsigned lines = pf != nullptr ? share_lines(call++, calls, NL) : 0u;
      if (r1 != r0) {
        if (lines != 0) T::template scores<true, true>(ch, kblk, j0, jn, r0, r1, pf, lines);
        else T::template scores<true, false>(ch, kblk, j0, jn, r0, r1, nullptr, 0);
      } else {
        if (lines != 0) T::template scores<false, true>(ch, kblk, j0, jn, r0, r0, pf, lines);
        else T::template scores<false, false>(ch, kblk, j0, jn, r0, r0, nullptr, 0);
      }
    }
  }
  for (int r = 0; r < ch.R; ++r)
    if (ch.jlo[r] <= ch.jhi[r]) T::softmax(ch, r);
  int groups = 0;
  for (int r = 0; r < ch.R;) {
    if (ch.jlo[r] > ch.jhi[r]) {
      ++r;
      continue;
    }
    ++groups;
    r += pv_group_size(ch, r, T::kMaxGroup);
  }
  for (int r = 0, gi = 0; r < ch.R;) {
    if (ch.jlo[r] > ch.jhi[r]) {
      ++r;
      continue;
    }
    const int n = pv_group_size(ch, r, T::kMaxGroup);
    const unsigned lines = ch.nvs[0] != nullptr ? share_lines(gi++, groups, NL) : 0u;
    if (lines != 0) pv_dispatch<T, true>(ch, c, r, n, lines);
    else pv_dispatch<T, false>(ch, c, r, n, 0);
    r += n;
  }
}
#endif  // MOE_X86

// ---- driver -------------------------------------------------------------------------------------------------------
struct Item {
  int32_t seq, kvh, nh, t0, nt, split, nsplit;  // kv heads [kvh, kvh + nh)
  int64_t q_start, cost;
};

std::string str(int64_t v) { return std::to_string(v); }

void store_out(void* out, DType t, size_t i, float v) {
  if (t == DType::F32) static_cast<float*>(out)[i] = v;
  else static_cast<uint16_t*>(out)[i] = f32_to_bf16(v);
}

#if MOE_X86
// Restores the column order of the bf16 tier's acc rows (see chunk_avx512bf16): element 16 i + 4 L + e holds
// column 32 (i / 2) + 8 L + 4 (i % 2) + e. Two vpermt2ps per 32 columns: column 32 b + c comes from the block's two
// acc vectors a0, a1 (elements 32 b .. 32 b + 31): c < 16 is a_h[4 (c / 8) + c % 4], c >= 16 is
// a_h[8 + 4 ((c - 16) / 8) + c % 4], h = (c % 8) / 4.
MOE_TARGET_AVX512 static void unpermute_bf16(float* acc, int rows, int hd) {
  alignas(64) int i0[16], i1[16];
  for (int j = 0; j < 16; ++j) {
    i0[j] = ((j % 8) / 4) * 16 + 4 * (j / 8) + j % 4;
    i1[j] = ((j % 8) / 4) * 16 + 8 + 4 * (j / 8) + j % 4;
  }
  const __m512i x0 = _mm512_load_si512(i0), x1 = _mm512_load_si512(i1);
  for (size_t p = 0; p < static_cast<size_t>(rows) * hd; p += 32) {
    const __m512 a0 = _mm512_loadu_ps(acc + p), a1 = _mm512_loadu_ps(acc + p + 16);
    _mm512_storeu_ps(acc + p, _mm512_permutex2var_ps(a0, x0, a1));
    _mm512_storeu_ps(acc + p + 16, _mm512_permutex2var_ps(a0, x1, a1));
  }
}

// The item's q rows: qf = q * scale (f32) and, for the bf16 tier (qb not null), qb = bf16(qf), 16 lanes at a time;
// bitwise the scalar loop's values (one multiply per element; st_bf16_512 rounds as f32_to_bf16).
MOE_TARGET_AVX512 static void load_q_row_512(const void* q, DType qt, size_t off, int hd, float scale, float* qf, uint16_t* qb) {
  const __m512 vs = _mm512_set1_ps(scale);
  for (int e = 0; e < hd; e += 16) {
    const __m512 x = _mm512_mul_ps(qt == DType::F32 ? _mm512_loadu_ps(static_cast<const float*>(q) + off + e)
                                                    : simd::ld_bf16_512(static_cast<const uint16_t*>(q) + off + e, 0xffff),
                                   vs);
    _mm512_storeu_ps(qf + e, x);
    if (qb != nullptr) simd::st_bf16_512(qb + e, 0xffff, x);
  }
}

// out[base .. base + hd) = acc * inv, f32 or bf16 (as store_out).
MOE_TARGET_AVX512 static void store_row_512(const float* acc, float inv, int hd, void* out, DType ot, size_t base) {
  const __m512 vi = _mm512_set1_ps(inv);
  for (int e = 0; e < hd; e += 16) {
    const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(acc + e), vi);
    if (ot == DType::F32) _mm512_storeu_ps(static_cast<float*>(out) + base + e, x);
    else simd::st_bf16_512(static_cast<uint16_t*>(out) + base + e, 0xffff, x);
  }
}
#endif

// Final output of one row from (m, l, acc) with an optional sink logit (vec: the AVX-512 tiers' 16-lane store).
void finalize_row(const float* acc, float m, float l, const float* sink, int hd, void* out, DType ot, size_t base, bool vec) {
  float scale_acc = 1.0f, denom = l;
  if (sink != nullptr) {
    const float top = std::max(m, *sink);
    scale_acc = m == kNegInf ? 0.0f : std::exp(m - top);
    denom = l * scale_acc + std::exp(*sink - top);
  }
  const float inv = denom > 0.0f ? scale_acc / denom : 0.0f;
#if MOE_X86
  if (vec) {
    store_row_512(acc, inv, hd, out, ot, base);
    return;
  }
#else
  (void)vec;
#endif
  for (int e = 0; e < hd; ++e) store_out(out, ot, base + e, acc[e] * inv);
}

// Output row from its ns split partials pp + sp * pstride = (m, l, acc[hd]), sp < ns: log-sum-exp merge in split
// order, then finalize_row. acc: hd floats of scratch. One body for the merge pass over global partials and the
// in-item merge, so both give the same bits.
void merge_row(const float* pp, int ns, size_t pstride, float* acc, const float* sink, int hd, void* out, DType ot,
               size_t base, bool vec) {
  float M = kNegInf;
  for (int sp = 0; sp < ns; ++sp) M = std::max(M, pp[sp * pstride]);
  float l = 0.0f;
  std::fill(acc, acc + hd, 0.0f);
  for (int sp = 0; sp < ns; ++sp) {
    const float* p = pp + sp * pstride;
    if (p[0] == kNegInf) continue;
    const float w = std::exp(p[0] - M);
    l += p[1] * w;
    for (int e = 0; e < hd; ++e) acc[e] += p[2 + e] * w;
  }
  finalize_row(acc, M, l, sink, hd, out, ot, base, vec);
}

}  // namespace

void attention_validate(const AttentionArgs& a) {
  auto bad = [](const std::string& m) { throw_error(ErrorCode::InvalidArgument, "attention: " + m); };
  if (a.q_dtype != DType::F32 && a.q_dtype != DType::BF16) bad(std::string("q dtype must be f32 or bf16, received ") + dtype_name(a.q_dtype));
  if (a.out_dtype != DType::F32 && a.out_dtype != DType::BF16) bad(std::string("out dtype must be f32 or bf16, received ") + dtype_name(a.out_dtype));
  if (a.kv_dtype != DType::F32 && a.kv_dtype != DType::F16 && a.kv_dtype != DType::BF16)
    bad(std::string("kv dtype must be f32, f16 or bf16, received ") + dtype_name(a.kv_dtype));
  if (a.head_dim != 64 && a.head_dim != 128 && a.head_dim != 256) bad("head_dim must be 64, 128 or 256, received " + str(a.head_dim));
  if (a.kv_heads < 1 || a.q_heads < 1 || a.q_heads % a.kv_heads != 0)
    bad("q_heads must be a positive multiple of kv_heads, received q_heads=" + str(a.q_heads) + " kv_heads=" + str(a.kv_heads));
  if (a.block_size < 1 || a.block_size > 4096) bad("block_size must be in [1, 4096], received " + str(a.block_size));
  if (a.num_seqs < 0 || a.max_blocks < 0 || a.num_pages < 0 || a.total_q < 0) bad("sizes must be non-negative");
  if (a.num_splits < 0 || a.num_splits > 1024) bad("num_splits must be in [0, 1024], received " + str(a.num_splits));
  if (a.split_tokens < 0 || a.split_tokens > (int64_t{1} << 30))
    bad("split_tokens must be in [0, 2^30], received " + str(a.split_tokens));
  if (a.threads < 0 || a.threads > 65536) bad("threads must be in [0, 65536], received " + str(a.threads));
  if (a.sliding_window < 0) bad("sliding_window must be >= 0, received " + str(a.sliding_window));
  if (!std::isfinite(a.scale)) bad("scale must be finite");
  if (a.num_seqs > 0 && (a.kv_lens == nullptr || a.q_lens == nullptr || (a.max_blocks > 0 && a.block_tables == nullptr)))
    bad("block_tables, kv_lens and q_lens must be non-null");
  int64_t sum_q = 0;
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    const int64_t L = a.kv_lens[s], Q = a.q_lens[s];
    if (L < 0 || Q < 0 || Q > L)
      bad("sequence " + str(s) + ": need 0 <= q_len <= kv_len, received q_len=" + str(Q) + " kv_len=" + str(L));
    const int64_t nb = (L + a.block_size - 1) / a.block_size;
    if (nb > a.max_blocks)
      bad("sequence " + str(s) + ": kv_len " + str(L) + " needs " + str(nb) + " blocks of " + str(a.block_size) +
          " but the block table has " + str(a.max_blocks));
    for (int64_t b = 0; b < nb; ++b) {
      const int32_t p = a.block_tables[s * a.max_blocks + b];
      if (p < 0 || p >= a.num_pages)
        bad("sequence " + str(s) + ": block_tables[" + str(s) + "][" + str(b) + "] = " + str(p) + " is not a page id in [0, " +
            str(a.num_pages) + ")");
    }
    sum_q += Q;
  }
  if (sum_q != a.total_q) bad("the q_lens sum to " + str(sum_q) + " but q holds " + str(a.total_q) + " tokens");
  if (a.total_q > 0 && (a.q == nullptr || a.out == nullptr || a.k == nullptr || a.v == nullptr)) bad("q, k, v and out must be non-null");
}

Isa attention(const AttentionArgs& a, Isa isa, const CancelToken* cancel) {
  attention_validate(a);
  const int hd = static_cast<int>(a.head_dim), bs = static_cast<int>(a.block_size);
  const int g = static_cast<int>(a.q_heads / a.kv_heads);

  ChunkKernel kernel = chunk_scalar;
  Isa ran = Isa::Scalar;
#if MOE_X86
  const Isa tier = clamp_isa(isa);
  if (tier >= Isa::Avx512Bf16 && a.kv_dtype == DType::BF16) {
    kernel = hd == 64 ? chunk_avx512bf16<64> : hd == 128 ? chunk_avx512bf16<128> : chunk_avx512bf16<256>;
    ran = Isa::Avx512Bf16;
  } else if (tier >= Isa::Avx512) {
    kernel = hd == 64 ? chunk_avx512<64> : hd == 128 ? chunk_avx512<128> : chunk_avx512<256>;
    ran = Isa::Avx512;
  } else if (tier >= Isa::Avx2) {
    kernel = hd == 64 ? chunk_avx2<64> : hd == 128 ? chunk_avx2<128> : chunk_avx2<256>;
    ran = Isa::Avx2;
  }
#else
  (void)isa;
#endif
  const bool want_bf16_q = ran == Isa::Avx512Bf16;
  const bool vector_q = ran == Isa::Avx512Bf16 || ran == Isa::Avx512;  // q rows loaded 16 lanes at a time

  // Work items: query tiles of nt tokens (rows = nt * g per kv head), groups of hg kv heads, then kv splits.
  // An item walks its pages in order and, per page, its kv heads in order: one page of K (and of V) is one
  // contiguous run of hg * block_size * head_dim values, so the item streams it front to back. One kv head per
  // item (the old decomposition) read block_size * head_dim runs from scattered places: 16 KiB runs (block 64,
  // head_dim 128) read at ~0.7 of a sequential stream on the development VM. Heads are grouped as long as the
  // pool still gets 2 items per thread, and only for query tiles of at most kGroupRows rows per head (decode):
  // a prefill tile's state (64 rows x head_dim of q and acc per head) would no longer stay in L2 across heads, and
  // its pages are reused by every row anyway. Each head's rows see exactly the chunk sequence they saw alone, so
  // the results are bitwise the same whatever the grouping.
  const int nt_max = std::max(1, 64 / g);
  std::vector<int64_t> q_start(static_cast<size_t>(a.num_seqs) + 1, 0);
  int64_t tiles = 0;
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    q_start[s + 1] = q_start[s] + a.q_lens[s];
    tiles += (a.q_lens[s] + nt_max - 1) / nt_max;
  }
  const int64_t threads = a.threads > 0 ? std::min<int64_t>(a.threads, ThreadPool::global().size()) : ThreadPool::global().size();
  int hg = static_cast<int>(a.kv_heads);
  while (hg > 1 && tiles * ((a.kv_heads + hg - 1) / hg) < 2 * threads) hg = (hg + 1) / 2;
  const int64_t base_items = tiles * ((a.kv_heads + hg - 1) / hg);
  // kv heads per item of a sequence with Q query tokens
  auto heads_per_item = [&](int64_t Q) { return std::min<int64_t>(Q, nt_max) * g <= kGroupRows ? hg : 1; };
  // Items without splits; when they alone give every thread two, a split sequence's splits run one after the other
  // inside its items (merged there: no [rows x splits x head_dim] partials for the whole call, which at a big
  // batch's prefill were gigabytes), else as items of their own. The same kernel calls and merge either way: the
  // same bits.
  int64_t unsplit_items = 0;
  for (int64_t s = 0; s < a.num_seqs; ++s)
    unsplit_items += (a.kv_heads + heads_per_item(a.q_lens[s]) - 1) / heads_per_item(a.q_lens[s]) *
                     ((a.q_lens[s] + nt_max - 1) / nt_max);
  const bool splits_in_item = unsplit_items >= 2 * threads;
  std::vector<Item> items;
  int64_t max_split = 1;
  bool global_splits = false;  // some split runs as an item of its own: the global partials and merge pass
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    const int64_t Q = a.q_lens[s], L = a.kv_lens[s];
    if (Q == 0) continue;
    const int64_t nb = (L + bs - 1) / bs;
    int64_t ns;
    if (a.split_tokens > 0) {
      ns = (L + a.split_tokens - 1) / a.split_tokens;
    } else if (a.num_splits > 0) {
      ns = a.num_splits;
    } else {  // automatic: enough items for the pool, splits of at least 512 tokens
      const int64_t want = base_items >= 2 * threads ? 1 : (4 * threads + base_items - 1) / base_items;
      ns = std::min<int64_t>(want, std::max<int64_t>(1, L / 512));
    }
    ns = std::max<int64_t>(1, std::min(ns, nb));
    max_split = std::max(max_split, ns);
    const int sg = static_cast<int>(heads_per_item(Q));  // kv heads per item
    const bool in_item = splits_in_item && ns > 1;    // split -1: every split, in the item
    global_splits = global_splits || (ns > 1 && !in_item);
    for (int32_t h = 0; h < a.kv_heads; h += sg)
      for (int64_t t0 = 0; t0 < Q; t0 += nt_max)
        for (int64_t sp = 0; sp < (in_item ? 1 : ns); ++sp) {
          const int32_t nt = static_cast<int32_t>(std::min<int64_t>(nt_max, Q - t0));
          const int32_t nh = static_cast<int32_t>(std::min<int64_t>(sg, a.kv_heads - h));
          items.push_back({static_cast<int32_t>(s), h, nh, static_cast<int32_t>(t0), nt,
                           in_item ? -1 : static_cast<int32_t>(sp), static_cast<int32_t>(ns), q_start[s],
                           (in_item ? L + bs * ns : L / ns + bs) * nt * nh});
        }
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) { return x.cost > y.cost; });

  // Partials of rows split over items: [total_q * q_heads][max_split][2 + hd] = (m, l, acc); every (row, split) the
  // merge reads is written by its item, so the buffer is not cleared.
  const size_t pstride = static_cast<size_t>(hd) + 2;
  std::unique_ptr<float[]> partial;
  if (global_splits) partial.reset(new float[static_cast<size_t>(a.total_q * a.q_heads * max_split) * pstride]);
  float* part = partial.get();

  const size_t kves = dtype_size(a.kv_dtype);
  const size_t head_elems = static_cast<size_t>(bs) * hd;
  const size_t page_elems = static_cast<size_t>(a.kv_heads) * head_elems;
  const AttentionArgs args = a;
  const int rmax = nt_max * g;  // rows per kv head
  size_t hrows = static_cast<size_t>(rmax);  // rows per item
  for (const Item& w : items) hrows = std::max(hrows, static_cast<size_t>(w.nt) * g * w.nh);
  // Pages per chunk: the bf16 tier takes 64 / block_size pages at once when the block size is 16 or 32, so the
  // per-chunk work (the softmax's reductions and rescale, p . V's accumulator loads and stores) is spread over 64
  // keys as with block 64. Chunks are aligned to multiples of that many pages of the sequence, so a row sees the same
  // chunks whatever the other rows of its item.
  const int64_t seg_pages = ran == Isa::Avx512Bf16 && bs % 16 == 0 && bs < 64 ? 64 / bs : 1;
  const int s_stride = static_cast<int>(seg_pages * bs) + 16;  // room for the even round-up and masked tails of the score rows

  std::function<void(size_t, size_t)> fn = [&, args](size_t begin, size_t end) {
    thread_local std::vector<float> fbuf;
    thread_local std::vector<uint16_t> qbuf;
    thread_local std::vector<int> ibuf;
    // [hrows][hd] qf and acc, [rmax][s_stride] scores (one head at a time), [hrows] m and l
    const size_t need = hrows * hd * 2 + static_cast<size_t>(rmax) * s_stride + hrows * 2;
    if (fbuf.size() < need) fbuf.resize(need);
    if (qbuf.size() < hrows * hd) qbuf.resize(hrows * hd);
    if (ibuf.size() < static_cast<size_t>(rmax) * 4) ibuf.resize(static_cast<size_t>(rmax) * 4);
    float* qf = fbuf.data();
    float* acc = qf + hrows * hd;
    float* sc = acc + hrows * hd;
    float* mm = sc + static_cast<size_t>(rmax) * s_stride;
    float* ll = mm + hrows;
    int* lo = ibuf.data();
    int* hi = lo + rmax;
    int* jlo = hi + rmax;
    int* jhi = jlo + rmax;
    thread_local std::vector<float> lbuf;  // in-item splits: [item rows][nsplit][pstride] partials, then hd of scratch

    // f(r, head, row) for every row of item w: r its index in the item's buffers, head its query head, row its row of
    // out ([total_q * q_heads], head_dim apart).
    auto each_row = [&](const Item& w, const auto& f) {
      const int R = w.nt * g;
      for (int u = 0; u < w.nh; ++u)
        for (int t = 0; t < w.nt; ++t)
          for (int h = 0; h < g; ++h) {
            const int64_t head = static_cast<int64_t>(w.kvh + u) * g + h;
            f(static_cast<size_t>(u) * R + t * g + h, head,
              static_cast<size_t>(w.q_start + w.t0 + t) * args.q_heads + head);
          }
    };

    // Split `split` of item w: the item's rows over that split's kv range, finalized into out (one split), else
    // written as partials: to `local` (in-item splits, row r of the item at (r * nsplit + split) * pstride) or to
    // the global buffer.
    auto run_split = [&](const Item& w, int split, float* local) {
      const int64_t L = args.kv_lens[w.seq], Q = args.q_lens[w.seq];
      const int R = w.nt * g;  // rows per kv head; head w.kvh + u has rows [u R, (u + 1) R) of qf, acc, mm, ll
      // split range of kv positions [s_lo, s_hi]
      const int64_t nb = (L + bs - 1) / bs;
      const int64_t b0 = nb * split / w.nsplit, b1 = nb * (split + 1) / w.nsplit;
      const int64_t s_lo = b0 * bs, s_hi = std::min<int64_t>(b1 * bs, L) - 1;
      int64_t rlo = s_hi + 1, rhi = s_lo - 1;
      for (int t = 0; t < w.nt; ++t) {
        const int64_t pos = L - Q + w.t0 + t;
        const int64_t low = args.sliding_window > 0 ? std::max<int64_t>(0, pos - args.sliding_window + 1) : 0;
        for (int h = 0; h < g; ++h) {
          const int r = t * g + h;
          lo[r] = static_cast<int>(std::max(low, s_lo));
          hi[r] = static_cast<int>(std::min(pos, s_hi));
          if (lo[r] <= hi[r]) {
            rlo = std::min<int64_t>(rlo, lo[r]);
            rhi = std::max<int64_t>(rhi, hi[r]);
          }
          for (int u = 0; u < w.nh; ++u) {
            // q row: token q_start + t0 + t, head (kvh + u) * g + h
            const size_t qi = (static_cast<size_t>(w.q_start + w.t0 + t) * args.q_heads + (w.kvh + u) * g + h) * hd;
            const size_t ri = static_cast<size_t>(u) * R + r;
#if MOE_X86
            if (vector_q) {
              load_q_row_512(args.q, args.q_dtype, qi, hd, args.scale, qf + ri * hd, want_bf16_q ? qbuf.data() + ri * hd : nullptr);
              mm[ri] = kNegInf;
              ll[ri] = 0.0f;
              continue;
            }
#endif
            for (int e = 0; e < hd; ++e) {
              const float x = (args.q_dtype == DType::F32 ? static_cast<const float*>(args.q)[qi + e]
                                                          : bf16_to_f32(static_cast<const uint16_t*>(args.q)[qi + e])) *
                              args.scale;
              qf[ri * hd + e] = x;
              if (want_bf16_q) qbuf[ri * hd + e] = f32_to_bf16(x);
            }
            mm[ri] = kNegInf;
            ll[ri] = 0.0f;
          }
        }
      }
      std::fill(acc, acc + static_cast<size_t>(w.nh) * R * hd, 0.0f);
      Chunk ch{R, hd, 0, qf, qbuf.data(), args.kv_dtype, jlo, jhi, sc, s_stride, mm, ll, acc, bs, {}, {}, {}, {}};
      const char* kbase = static_cast<const char*>(args.k);
      const char* vbase = static_cast<const char*>(args.v);
      const int32_t* table = args.block_tables + w.seq * args.max_blocks;
      auto at = [&](int32_t pg, int u) { return (static_cast<size_t>(pg) * page_elems + static_cast<size_t>(w.kvh + u) * head_elems) * kves; };
      const int64_t blast = rhi / bs;  // the item's pages: [rlo / bs, blast]
      auto chunk_end = [&](int64_t b) { return std::min<int64_t>((b / seg_pages + 1) * seg_pages, blast + 1); };
      for (int64_t b = rlo / bs; rhi >= rlo && b <= blast;) {
        const int64_t bend = chunk_end(b), nend = bend <= blast ? chunk_end(bend) : bend;  // this chunk's pages, the next's
        const int nseg = static_cast<int>(bend - b);
        const int64_t p0 = b * bs;
        ch.c = static_cast<int>(std::min<int64_t>(nseg * bs, L - p0));
        for (int r = 0; r < R; ++r) {
          jlo[r] = static_cast<int>(std::max<int64_t>(lo[r], p0) - p0);
          jhi[r] = static_cast<int>(std::min<int64_t>(hi[r], p0 + ch.c - 1) - p0);
        }
        // Pages are scattered, so the vector kernels prefetch the next chunk in the item's order while they stream
        // this one: the next kv head's rows of these pages, after the last head the first head's of the next pages.
        for (int u = 0; u < w.nh; ++u) {
          for (int q = 0; q < kMaxSegs; ++q) {
            const bool here = q < nseg, next = u + 1 < w.nh ? here : q < nend - bend;
            ch.ks[q] = here ? kbase + at(table[b + q], u) : nullptr;
            ch.vs[q] = here ? vbase + at(table[b + q], u) : nullptr;
            const size_t noff = !next ? 0 : u + 1 < w.nh ? at(table[b + q], u + 1) : at(table[bend + q], 0);
            ch.nks[q] = next ? kbase + noff : nullptr;
            ch.nvs[q] = next ? vbase + noff : nullptr;
          }
          const size_t r0 = static_cast<size_t>(u) * R;
          ch.qf = qf + r0 * hd;
          ch.qb = qbuf.data() + r0 * hd;
          ch.acc = acc + r0 * hd;
          ch.m = mm + r0;
          ch.l = ll + r0;
          kernel(ch);
        }
        b = bend;
      }
#if MOE_X86
      if (want_bf16_q) unpermute_bf16(acc, w.nh * R, hd);
#endif
      each_row(w, [&](size_t r, int64_t head, size_t row) {
        if (w.nsplit == 1) {
          finalize_row(acc + r * hd, mm[r], ll[r], args.sinks ? args.sinks + head : nullptr, hd, args.out,
                       args.out_dtype, row * hd, vector_q);
        } else {
          float* pp = local != nullptr ? local + (r * w.nsplit + split) * pstride
                                       : part + (row * max_split + split) * pstride;
          pp[0] = mm[r];
          pp[1] = ll[r];
          std::copy(acc + r * hd, acc + (r + 1) * hd, pp + 2);
        }
      });
    };

    for (size_t it = begin; it < end; ++it) {
      const Item& w = items[it];
      if (w.split >= 0) {
        run_split(w, w.split, nullptr);
        continue;
      }
      const size_t rows = static_cast<size_t>(w.nh) * w.nt * g, span = static_cast<size_t>(w.nsplit) * pstride;
      if (lbuf.size() < rows * span + hd) lbuf.resize(rows * span + hd);
      for (int sp = 0; sp < w.nsplit; ++sp) run_split(w, sp, lbuf.data());
      float* scratch = lbuf.data() + rows * span;
      each_row(w, [&](size_t r, int64_t head, size_t row) {
        merge_row(lbuf.data() + r * span, w.nsplit, pstride, scratch, args.sinks ? args.sinks + head : nullptr, hd,
                  args.out, args.out_dtype, row * hd, vector_q);
      });
    }
  };
  if (!ThreadPool::global().parallel_for(items.size(), 1, fn, cancel, static_cast<int>(threads))) throw_error(ErrorCode::Cancelled, "attention: cancelled");

  if (global_splits) {
    // Rows split over items: merge their partials with log-sum-exp.
    std::vector<int32_t> row_splits(static_cast<size_t>(a.total_q), 1);
    for (const Item& w : items)
      if (w.split >= 0)
        for (int t = 0; t < w.nt; ++t) row_splits[static_cast<size_t>(w.q_start + w.t0 + t)] = w.nsplit;
    std::function<void(size_t, size_t)> merge = [&, args](size_t begin, size_t end) {
      std::vector<float> acc(static_cast<size_t>(hd));
      for (size_t row = begin; row < end; ++row) {
        const int ns = row_splits[row / static_cast<size_t>(args.q_heads)];
        if (ns == 1) continue;
        const size_t head = row % static_cast<size_t>(args.q_heads);
        merge_row(part + row * max_split * pstride, ns, pstride, acc.data(), args.sinks ? args.sinks + head : nullptr,
                  hd, args.out, args.out_dtype, row * hd, vector_q);
      }
    };
    if (!ThreadPool::global().parallel_for(static_cast<size_t>(a.total_q * a.q_heads), 64, merge, cancel, static_cast<int>(threads)))
      throw_error(ErrorCode::Cancelled, "attention: cancelled");
  }
  return ran;
}

}  // namespace moe::cpu
