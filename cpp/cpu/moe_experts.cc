// Fused MoE expert FFN on the CPU (moe_experts.h). Per chunk of tokens:
//   1. routing: the (token, j) slots routed to each present expert, in ascending slot order; x rows gathered into
//      a per-expert contiguous block xs [rows, h] bf16 (a copy of rows * h * 2 bytes, small next to the weights).
//   2. GEMM1 + SwiGLU, one work item per (expert, 64-column tile of inter): g = xs_e gate_e^T and u = xs_e up_e^T
//      for the tile (f32, gemm_serial: the dense GEMM's micro-kernels, vdpbf16ps / AVX-512 / AVX2 / scalar), then
//      act = silu(g) * u rounded to bf16 into act [rows, inter] (gpt-oss: g, u plus the expert's f32 biases, then
//      the clamped swiglu-oai activation, see moe_experts.h; same rounding).
//   3. GEMM2, one item per (expert, 64-column tile of h): part [rows, h] f32 = act_e down_e^T (+ the expert's down
//      bias, f32, when it has biases).
//   4. combine, per token: y[t] = sum over j in order 0..k-1 of w[t, j] * part[slot(t, j)] in f32, rounded to
//      bf16 once. Fixed order and no float atomics: two runs give bitwise the same output, whatever the threads.
// The intermediate act is kept in bf16, not f32: the second GEMM then runs vdpbf16ps straight on it (no f32
// packing), it halves that buffer's traffic, and it is what the tensor-core kernels do (their A operand is bf16).
// Its rounding (relative 2^-9 per element, independent across the inter sum) is far below the 1e-2 tolerance.
// Decode path (avx512bf16 tier, an expert with <= kStreamMaxRows routed rows): steps 2 and 3 become weight
// streaming. A work item is (expert, block of kStreamRows weight rows); each weight row is read from memory exactly
// once, front to back over the full k (no k blocking, so the hardware prefetcher sees long sequential streams),
// against all of that expert's rows at once: a dot-product kernel of up to 4 x rows by 4 weight rows walked one
// after the other (vdpbf16ps, 64-byte loads; consecutive weight rows are one sequential stream, see stream_dot_seq).
// GEMM1 takes gate rows j, j+1 and up rows j, j+1 as its 4 weight rows, so gate and up are one pass and SwiGLU is
// applied on the sums right away. Items of one expert are consecutive,
// so the pool's threads stream different rows of the same expert. Larger experts (prefill) take the blocked GEMM.
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
#include "gemm.h"
#include "simd.h"

namespace moe::cpu {

namespace {

constexpr int64_t kTileN = 64;                       // columns per work item (the GEMM kernels' n tile)
constexpr int64_t kScratchBytes = int64_t{64} << 20;  // per chunk: rows * max(h, inter) f32
constexpr int64_t kStreamMaxRows = 16;  // an expert with at most this many rows takes the streaming path
constexpr int64_t kStreamRows = 64;     // weight rows per streaming work item (gate/up: 64 of each)
// Longest weight row (in bf16 values) that the streaming kernel walks row after row (stream_dot_seq); longer rows
// are walked side by side (stream_dot_side). 2048: every row of Qwen3-30B-A3B, OLMoE and DeepSeek-V2-Lite (h = 2048,
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
// `plain` (silu, no biases) is the op of issue 3: silu_mul, the expression the kernels always had, so that path
// stays bitwise what it was; everything else goes through act_general.
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

// f32 scratch of this thread ([rows, 2 * kTileN] for the g and u tiles).
float* scratch_f32(size_t n) {
  static thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}


#if MOE_X86
MOE_TARGET_AVX512BF16 inline __m512 sdp(__m512 c, __m512i x, __m512i y) {
  return _mm512_dpbf16_ps(c, (__m512bh)x, (__m512bh)y);
}
// MT rows of x times 4 weight rows, [kk] bf16 each, over the full kk: sums[r * 4 + c] = dot(x[r], w[c]). One
// accumulator per output, k in order: the same inputs give bitwise the same sums. The 4 weight rows are walked one
// after the other, not side by side: consecutive rows of one matrix (down rows j..j+3; gate rows j, j+1 then up
// rows j, j+1) then form one or two long sequential streams across a work item. Side by side, short rows (down
// [h, inter] with inter = 768: 1.5 KB) started 3 new short streams per group of 4 that the hardware prefetcher had
// to pick up anew: Qwen3-30B-A3B at T = 1 ran GEMM2 at 19 GB/s against 29 GB/s now (Zen 4 VM, 2 threads).
template <int MT>
MOE_TARGET_AVX512BF16 void stream_dot_seq(const uint16_t* const* x, const uint16_t* const* w, int64_t kk,
                                          float* sums) {
  const int64_t full = kk - kk % 32, left = kk - full;
  const __mmask32 m = static_cast<__mmask32>((1u << left) - 1u);  // left < 32
  for (int c = 0; c < 4; ++c) {
    const uint16_t* wc = w[c];  // [kk] bf16
    __m512 acc[MT];
    for (int r = 0; r < MT; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t p = 0; p < full; p += 32) {
      const __m512i y = _mm512_loadu_si512(wc + p);
#pragma GCC unroll 4
      for (int r = 0; r < MT; ++r) acc[r] = sdp(acc[r], _mm512_loadu_si512(x[r] + p), y);
    }
    if (left > 0) {
      const __m512i y = _mm512_maskz_loadu_epi16(m, wc + full);
#pragma GCC unroll 4
      for (int r = 0; r < MT; ++r) acc[r] = sdp(acc[r], _mm512_maskz_loadu_epi16(m, x[r] + full), y);
    }
    for (int r = 0; r < MT; ++r) sums[r * 4 + c] = _mm512_reduce_add_ps(acc[r]);
  }
}
// The same sums walking the 4 weight rows side by side (4 streams, one x load per 4 weight loads): for long rows
// (kk > kSeqMaxK), where 4 streams are long too and the x rows no longer fit in L1, so that stream_dot_seq's 4x x
// loads would come from L2 (Mixtral-8x7B's down rows, kk = 14336, ran 20% slower at T = 8 with stream_dot_seq).
template <int MT>
MOE_TARGET_AVX512BF16 void stream_dot_side(const uint16_t* const* x, const uint16_t* const* w, int64_t kk,
                                           float* sums) {
  __m512 acc[MT][4];
  for (int r = 0; r < MT; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  const uint16_t *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
  int64_t p = 0;
  for (; p + 32 <= kk; p += 32) {
    const __m512i y0 = _mm512_loadu_si512(w0 + p), y1 = _mm512_loadu_si512(w1 + p),
                  y2 = _mm512_loadu_si512(w2 + p), y3 = _mm512_loadu_si512(w3 + p);
#pragma GCC unroll 4
    for (int r = 0; r < MT; ++r) {
      const __m512i xv = _mm512_loadu_si512(x[r] + p);
      acc[r][0] = sdp(acc[r][0], xv, y0);
      acc[r][1] = sdp(acc[r][1], xv, y1);
      acc[r][2] = sdp(acc[r][2], xv, y2);
      acc[r][3] = sdp(acc[r][3], xv, y3);
    }
  }
  if (p < kk) {
    const __mmask32 m = static_cast<__mmask32>((1u << (kk - p)) - 1u);  // kk - p < 32
    const __m512i y0 = _mm512_maskz_loadu_epi16(m, w0 + p), y1 = _mm512_maskz_loadu_epi16(m, w1 + p),
                  y2 = _mm512_maskz_loadu_epi16(m, w2 + p), y3 = _mm512_maskz_loadu_epi16(m, w3 + p);
#pragma GCC unroll 4
    for (int r = 0; r < MT; ++r) {
      const __m512i xv = _mm512_maskz_loadu_epi16(m, x[r] + p);
      acc[r][0] = sdp(acc[r][0], xv, y0);
      acc[r][1] = sdp(acc[r][1], xv, y1);
      acc[r][2] = sdp(acc[r][2], xv, y2);
      acc[r][3] = sdp(acc[r][3], xv, y3);
    }
  }
  for (int r = 0; r < MT; ++r)
    for (int c = 0; c < 4; ++c) sums[r * 4 + c] = _mm512_reduce_add_ps(acc[r][c]);
}
#endif

// Rows of x (any count) times 4 weight rows: groups of up to 4 x rows. sums [rows, 4]. Both kernels give bitwise
// the same sums; stream_dot_seq for rows of up to kSeqMaxK values, stream_dot_side beyond.
template <int MT>
void stream_dot_group(const uint16_t* const* x, const uint16_t* const* w, int64_t kk, float* sums) {
#if MOE_X86
  if (kk <= kSeqMaxK) stream_dot_seq<MT>(x, w, kk, sums);
  else stream_dot_side<MT>(x, w, kk, sums);
#else
  (void)x; (void)w; (void)kk; (void)sums;
#endif
}
void stream_dot_rows(const uint16_t* const* x, int64_t rows, const uint16_t* const* w, int64_t kk, float* sums) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) stream_dot_group<4>(x + r, w, kk, sums + r * 4);
  switch (rows - r) {  // only the first group streams from memory: the others find the rows in cache
    case 3: stream_dot_group<3>(x + r, w, kk, sums + r * 4); break;
    case 2: stream_dot_group<2>(x + r, w, kk, sums + r * 4); break;
    case 1: stream_dot_group<1>(x + r, w, kk, sums + r * 4); break;
    default: break;
  }
}

}  // namespace

Isa moe_experts(const MoeExpertsArgs& a, Isa isa, const CancelToken* cancel) {
  require(a.t >= 0, "tokens must be >= 0, received " + i64(a.t));
  require(a.h >= 1 && a.inter >= 1, "hidden and intermediate must be >= 1, received " + i64(a.h) + ", " + i64(a.inter));
  require(a.e >= 1 && a.k >= 1, "experts and k must be >= 1, received " + i64(a.e) + ", " + i64(a.k));
  require(a.t == 0 || (a.x != nullptr && a.topk_ids != nullptr && a.topk_weights != nullptr && a.out != nullptr),
          "x, topkIds, topkWeights and out must be non-null");
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
#if MOE_X86
  const bool stream_ok = clamp_isa(isa) >= Isa::Avx512Bf16;  // the streaming kernel is vdpbf16ps only
#else
  const bool stream_ok = false;
#endif
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
  std::vector<uint16_t> xs, act;
  std::vector<float> part;
  std::vector<Item> items;

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

    // 2. GEMM1 + SwiGLU per (expert, inter tile).
    // Streaming path per expert (see the header): tiles of kStreamRows rows instead of kTileN.
    auto streams = [&](int64_t x) { return stream_ok && count[x] <= kStreamMaxRows; };
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
            stream_dot_rows(xr, m, w, H, sums);
            for (int64_t i = 0; i < m; ++i) {
              uint16_t* dst = act.data() + (row0[x] + i) * I;  // [inter] bf16
              for (int64_t c = 0; c < (j1 > j ? 2 : 1); ++c) {
                const float gv = sums[i * 4 + c], uv = sums[i * 4 + 2 + c];
                dst[j + c] = f32_to_bf16(ep.plain ? silu_mul(gv, uv) : act_general(ep, gv, uv, j + c));
              }
            }
          }
          ran.store(static_cast<int>(Isa::Avx512Bf16), std::memory_order_relaxed);
          continue;
        }
        float* g = scratch_f32(static_cast<size_t>(m * 2 * kTileN));  // [m, nt] gate | [m, nt] up
        float* u = g + m * kTileN;
        const uint16_t* xa = xs.data() + static_cast<int64_t>(row0[x]) * H;  // [m, h] bf16
        const uint16_t* wg = static_cast<const uint16_t*>(a.gate[x]) + n0 * H;  // [nt, h] bf16
        const uint16_t* wu = static_cast<const uint16_t*>(a.up[x]) + n0 * H;    // [nt, h] bf16
        Isa r = gemm_serial({xa, wg, g, DType::BF16, DType::F32, m, nt, H, H, H, nt}, isa);
        gemm_serial({xa, wu, u, DType::BF16, DType::F32, m, nt, H, H, H, nt}, isa);
        ran.store(static_cast<int>(r), std::memory_order_relaxed);
        for (int64_t i = 0; i < m; ++i) {
          uint16_t* dst = act.data() + (row0[x] + i) * I + n0;  // [nt] bf16
          if (ep.plain) {
            for (int64_t c = 0; c < nt; ++c) dst[c] = f32_to_bf16(silu_mul(g[i * nt + c], u[i * nt + c]));
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
            stream_dot_rows(ar, m, w, I, sums);
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
        gemm_serial({aa, wd, dst, DType::BF16, DType::F32, m, nt, I, I, I, H}, isa);
        if (bd != nullptr) {
          for (int64_t i = 0; i < m; ++i)
            for (int64_t c = 0; c < nt; ++c) dst[i * H + c] += bd[n0 + c];
        }
      }
    };
    if (!items.empty() && !pool.parallel_for(items.size(), 1, gemm2, cancel)) {
      throw_error(ErrorCode::Cancelled, "moeExperts: cancelled");
    }

    // 4. combine in slot order, one bf16 rounding.
    std::function<void(size_t, size_t)> combine = [&](size_t t0, size_t t1) {
      std::vector<float> acc(static_cast<size_t>(H));
      for (size_t tl = t0; tl < t1; ++tl) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < K; ++j) {
          const int32_t r = slot_row[tl * K + j];
          if (r < 0) continue;
          const float w = a.topk_weights[(c0 + static_cast<int64_t>(tl)) * K + j];
          const float* p = part.data() + static_cast<int64_t>(r) * H;  // [h] f32
          for (int64_t c = 0; c < H; ++c) acc[c] += w * p[c];
        }
        uint16_t* y = a.out + (c0 + static_cast<int64_t>(tl)) * H;  // [h] bf16
        for (int64_t c = 0; c < H; ++c) y[c] = f32_to_bf16(acc[c]);
      }
    };
    if (!pool.parallel_for(static_cast<size_t>(tc), 4, combine, cancel)) {
      throw_error(ErrorCode::Cancelled, "moeExperts: cancelled");
    }
  }
  return static_cast<Isa>(ran.load());
}

}  // namespace moe::cpu
