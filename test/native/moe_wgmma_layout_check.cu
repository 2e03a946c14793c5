// Host-only replay of the wgmma path of cuda/moe_experts_wgmma.cuh (no GPU needed; not part of the CMake build).
// Nothing on this machine can run wgmma, so the hardware's side is emulated from the PTX ISA text; these are the
// statements the emulation encodes and that only a GPU run can confirm:
//   [D1] Matrix descriptor bit fields (PTX ISA "Matrix Descriptor Format" of wgmma): bits 0-13 start address >> 4,
//        16-29 leading-dimension byte offset >> 4, 32-45 stride-dimension byte offset >> 4, 49-51 base offset,
//        62-63 swizzle mode (0 none, 1 128B, 2 64B, 3 32B); other bits 0.
//   [D2] K-major operand, 128B swizzle, 16-bit elements (the ISA's canonical layout ((8,m),(T,2k)):((8T,SBO),(1,T))
//        with T = 8 elements = 16 bytes): element (row, k) of the m64 x k16 A (row = m) or n x k16 B (row = n) is
//        read from pre = start + (row / 8) * SBO + (row % 8) * 128 + (k / 8) * 16 + (k % 8) * 2, and the 128B
//        swizzle is applied to that full shared-memory address: bits 4-6 ^= bits 7-9 (CUTLASS Swizzle<3,4,3>; the
//        pattern repeats every 1024 bytes of the address space, hence the 1024-aligned tiles and base offset 0).
//        The leading-dimension byte offset is not used in this mode (the k16 slice lies inside one 128-byte row).
//        Consequence relied on: advancing the start address by 32 bytes selects k16 step kk of a 64-wide k tile
//        (what CUTLASS / DeepGEMM do).
//   [D3] trans-a = trans-b = 0 means A is M x K with K contiguous and B is given as N rows of K contiguous.
//   [D4] Accumulator fragment of m64nNk16 .f32 (PTX ISA wgmma D figure; equally CUTLASS's CLayout_64xN
//        ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)) on (m + 64 n)): thread l of warp w of the warpgroup holds
//        d[4 i + 2 hh + c] = D[16 w + l / 4 + 8 hh][8 i + 2 (l % 4) + c].
//   [S1] cp.async writes are generic-proxy writes: after cp.async.wait_group, fence.proxy.async.shared::cta by the
//        writing thread and a CTA barrier make them visible to wgmma (async proxy). wgmma.wait_group N returns when
//        at most N of this thread's most recent wgmma groups are pending, all older ones complete (their shared-
//        memory reads included).
//   [T1] (the TMA kernels of moe_experts_wgmma_tma.cuh) cp.async.bulk.tensor.2d of a tensor map over a row-major
//        [N, K] bf16 matrix with SWIZZLE_128B and a box of [R, 64] at coordinates (c0 = k0, c1 = n0) into a
//        1024-aligned shared address dst writes element (n0 + r, k0 + 8 c + q) to dst + r * 128 + ((c ^ (r % 8)) *
//        16) + 2 q (CUDA programming guide, "TMA swizzle"), and 0 for elements outside the matrix (OOB fill NONE).
// What is checked, for every configuration the launcher instantiates (and two others the template allows):
//   * the cp.async copy mapping writes every element of a stage exactly once, without bank conflicts per 8-thread
//     phase; the ring stays inside the dynamic allocation for any 16-byte-aligned base; shared addresses fit the
//     descriptor field and the start-address increments do not carry out of it;
//   * descriptors decoded per [D1], addresses generated per [D2], read the intended A / B element for every
//     (stage, warpgroup, k16 step, row, k);
//   * acc_row / acc_col agree with [D4] (from CUTLASS's layout algebra, a formulation independent of the helper) and
//     cover the block tile once; GEMM1's gate / up registers pair the same output column;
//   * the grouped raster (moe_wg_tile) visits every (m tile, n tile) once;
//   * the pipeline schedule of moe_wg_mainloop (cp.async group counts, the two barriers, wgmma.wait_group 1): tile kt
//     is complete when computed, a slot is refilled only after both warpgroups' wgmma on its previous tile retired;
//   * end to end: both kernels replayed thread by thread (pointer setup, zero fill, k tails, copy, descriptor
//     reads, accumulators, epilogue incl. biases and swiglu-oai, padding and absent experts) on small problems with
//     several M tiles per expert, ragged N and K, many k tiles and empty experts, against a float64 reference; and
//     again with the tiles written per [T1] from the boxes the TMA kernels request (GEMM1's B, GEMM2's A and B;
//     coordinates, the up box's offset, zero fill past N and K), bitwise equal to the cp.async replay.
// Build and run: nvcc -std=c++17 -I cpp -I cuda test/native/moe_wgmma_layout_check.cu -o /tmp/wg_check && /tmp/wg_check
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <set>
#include <vector>

#include "moe_experts_wgmma.cuh"

using namespace moe::dev;

static int g_fail = 0;
#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (!(cond)) {                                        \
      if (g_fail < 20) {                                  \
        std::printf("FAIL %s:%d ", __FILE__, __LINE__);   \
        std::printf(__VA_ARGS__);                         \
        std::printf("\n");                                \
      }                                                   \
      ++g_fail;                                           \
    }                                                     \
  } while (0)

constexpr uint32_t kSmemSpace = 1u << 18;  // the descriptor's 18-bit address range

// ---- [D1], [D2]: the hardware side --------------------------------------------------------------------------
struct Desc {
  uint32_t start, lbo, sbo, base_offset, swizzle;
  bool reserved_zero;
};
Desc decode(uint64_t d) {
  Desc r;
  r.start = static_cast<uint32_t>(d & 0x3FFF) << 4;
  r.lbo = static_cast<uint32_t>((d >> 16) & 0x3FFF) << 4;
  r.sbo = static_cast<uint32_t>((d >> 32) & 0x3FFF) << 4;
  r.base_offset = static_cast<uint32_t>((d >> 49) & 7);
  r.swizzle = static_cast<uint32_t>(d >> 62);
  const uint64_t used = 0x3FFFull | (0x3FFFull << 16) | (0x3FFFull << 32) | (7ull << 49) | (3ull << 62);
  r.reserved_zero = (d & ~used) == 0;
  return r;
}
// Shared-memory byte address wgmma reads element (row, k) (k < 16) of a K-major 128B-swizzled operand from.
uint32_t wgmma_addr(uint64_t desc, int row, int k) {
  const Desc d = decode(desc);
  CHECK(d.swizzle == 1 && d.base_offset == 0 && d.reserved_zero, "descriptor mode (swz %u base %u)", d.swizzle,
        d.base_offset);
  const uint32_t pre = d.start + static_cast<uint32_t>(row / 8) * d.sbo + static_cast<uint32_t>(row % 8) * 128 +
                       static_cast<uint32_t>(k / 8) * 16 + static_cast<uint32_t>(k % 8) * 2;
  return pre ^ (((pre >> 7) & 7) << 4);
}
// [D4] via CUTLASS's CLayout_64xN: thread t (0..127 of the warpgroup), value v -> (m, n).
void d_frag(int t, int v, int& m, int& n) {
  const int t0 = t % 4, t1 = (t / 4) % 8, t2 = t / 32;
  const int v0 = v % 2, v1 = (v / 2) % 2, v2 = v / 4;
  const int off = 128 * t0 + 1 * t1 + 16 * t2 + 64 * v0 + 8 * v1 + 512 * v2;
  m = off % 64;
  n = off / 64;
}

// ---- structural checks ----------------------------------------------------------------------------------------
struct Tag {
  int mat = -1, row = -1, k = -1;
};

template <class C>
void check_structure(const char* name) {
  const int before = g_fail;
  // copy mapping over one stage (offsets relative to the stage)
  std::vector<Tag> st(C::kStageBytes / 2);
  for (int tid = 0; tid < C::kThreads; ++tid) {
    const int chunk = C::load_chunk(tid);
    for (int pass = 0; pass < 2; ++pass) {
      const int iters = pass == 0 ? C::kAIters : C::kBIters, rows = pass == 0 ? C::BM : C::kN;
      const uint32_t base = pass == 0 ? 0 : C::kABytes;
      for (int i = 0; i < iters; ++i) {
        const int row = C::load_row(tid, i);
        CHECK(row >= 0 && row < rows, "%s load row %d", name, row);
        const uint32_t off = base + moe_mma_swz(row, chunk);
        for (int q = 0; q < 8; ++q) {
          Tag& t = st[off / 2 + q];
          CHECK(t.mat < 0, "%s element written twice", name);
          t = Tag{pass, row, chunk * 8 + q};
        }
      }
    }
  }
  for (const Tag& t : st) CHECK(t.mat >= 0, "%s element never written", name);
  for (int w = 0; w < C::kThreads / 32; ++w)
    for (int pass = 0; pass < 2; ++pass)
      for (int i = 0; i < (pass == 0 ? C::kAIters : C::kBIters); ++i)
        for (int ph = 0; ph < 4; ++ph) {
          std::set<int> banks;
          for (int l = 8 * ph; l < 8 * ph + 8; ++l) {
            const int tid = 32 * w + l;
            banks.insert(static_cast<int>(moe_mma_swz(C::load_row(tid, i), C::load_chunk(tid)) % 128 / 16));
          }
          CHECK(banks.size() == 8, "%s copy phase bank conflict", name);
        }

  // ring placement for several dynamic-smem base addresses (the static s_slot and reserved bytes precede it)
  for (uint32_t raw : {0u, 16u, 512u, 1024u, 1040u, 1536u, 2048u - 16u}) {
    const uint32_t ring = moe_wg_align_ring(raw);  // moe_wg_ring
    CHECK(ring % 1024 == 0 && ring >= raw && ring + C::STAGES * C::kStageBytes <= raw + C::kSmem, "%s ring bounds",
          name);
    CHECK(raw + C::kSmem + 1024 < kSmemSpace, "%s address range", name);
    // descriptors for every stage / warpgroup / k16 step, read element by element through [D2]
    std::vector<Tag> mem(kSmemSpace / 2);
    for (int s = 0; s < C::STAGES; ++s)
      for (size_t q = 0; q < st.size(); ++q) mem[(ring + s * C::kStageBytes) / 2 + q] = st[q];
    for (int s = 0; s < C::STAGES; ++s) {
      const uint32_t stage = ring + static_cast<uint32_t>(s * C::kStageBytes);
      for (int kk = 0; kk < C::BK / 16; ++kk) {
        for (int wg = 0; wg < 2; ++wg) {
          const uint64_t d0 = C::a_desc(stage, wg, 0), d = C::a_desc(stage, wg, kk);
          CHECK(decode(d).start == decode(d0).start + 32 * kk && decode(d).sbo == 1024, "%s A desc carry", name);
          for (int m = 0; m < 64; ++m)
            for (int k = 0; k < 16; ++k) {
              const uint32_t a = wgmma_addr(d, m, k);
              CHECK(a % 2 == 0 && a >= stage && a < stage + C::kABytes, "%s A addr out of tile", name);
              const Tag& t = mem[a / 2];
              CHECK(t.mat == 0 && t.row == 64 * wg + m && t.k == 16 * kk + k,
                    "%s A stage %d wg %d kk %d (m %d, k %d): got (%d, %d, %d)", name, s, wg, kk, m, k, t.mat, t.row,
                    t.k);
            }
        }
        const uint64_t d0 = C::b_desc(stage, 0), d = C::b_desc(stage, kk);
        CHECK(decode(d).start == decode(d0).start + 32 * kk, "%s B desc carry", name);
        for (int n = 0; n < C::kN; ++n)
          for (int k = 0; k < 16; ++k) {
            const Tag& t = mem[wgmma_addr(d, n, k) / 2];
            CHECK(t.mat == 1 && t.row == n && t.k == 16 * kk + k, "%s B stage %d kk %d (n %d, k %d): got (%d, %d, %d)",
                  name, s, kk, n, k, t.mat, t.row, t.k);
          }
      }
    }
  }

  // accumulators
  std::vector<int> cover(static_cast<size_t>(C::BM * C::kN), 0);
  for (int tid = 0; tid < C::kThreads; ++tid)
    for (int v0 = 0; v0 < C::kAcc; ++v0) {
      const int i = v0 / 4, hh = (v0 % 4) / 2, c = v0 % 2, v = C::acc_idx(i, hh, c);
      CHECK(v >= 0 && v < C::kAcc, "%s acc_idx range", name);
      int m, n;
      d_frag(tid % 128, v, m, n);
      const int r = C::acc_row(tid, hh), col = C::acc_col(tid, i, c);
      CHECK(r == 64 * (tid / 128) + m && col == n, "%s acc tid %d v %d: helper (%d, %d) vs ISA (%d, %d)", name, tid, v,
            r, col, 64 * (tid / 128) + m, n);
      CHECK(C::acc_col(tid, i, 0) + c == col && col % 2 == c, "%s pair column", name);
      if (r >= 0 && r < C::BM && col >= 0 && col < C::kN) ++cover[r * C::kN + col];
      if (C::GATED && i < C::BN / 8) {
        const int vu = C::up_idx(i, hh, c);
        int mu, nu;
        d_frag(tid % 128, vu, mu, nu);
        CHECK(mu == m && nu == n + C::BN, "%s gate / up pairing", name);
      }
    }
  for (int v : cover) CHECK(v == 1, "%s output covered %d times", name, v);

  // pipeline schedule of moe_wg_mainloop
  for (int ktiles = 1; ktiles <= 3 * C::STAGES + 2; ++ktiles) {
    std::vector<int> slot(C::STAGES, -1), group_of_tile(ktiles, -1);
    int groups = 0, wg_done = -1;  // wgmma: tiles <= wg_done retired in both warpgroups (known after a barrier)
    for (int s = 0; s < C::STAGES - 1; ++s) {
      if (s < ktiles) {
        slot[s] = s;
        group_of_tile[s] = groups;
      }
      ++groups;
    }
    for (int kt = 0; kt < ktiles; ++kt) {
      const int completed = groups - (C::STAGES - 2);  // cp.async.wait_group STAGES - 2
      CHECK(group_of_tile[kt] >= 0 && group_of_tile[kt] < completed, "%s tile %d not landed", name, kt);
      CHECK(slot[kt % C::STAGES] == kt, "%s computes on the wrong slot", name);
      // wgmma group of tile kt issued; wait_group 1 retires tile kt - 1 in each warpgroup; barrier 2 joins them
      wg_done = kt - 1;
      const int nk = kt + C::STAGES - 1;
      if (nk < ktiles) {
        const int old = slot[nk % C::STAGES];
        CHECK(old <= wg_done, "%s slot of tile %d refilled while wgmma may read it", name, old);
        slot[nk % C::STAGES] = nk;
        group_of_tile[nk] = groups;
      }
      ++groups;
    }
  }
  std::printf("%-22s kN %3d stages %d smem %6d B, %3d acc/thread: %s\n", name, C::kN, C::STAGES, C::kSmem, C::kAcc,
              g_fail == before ? "ok" : "FAILED");
}

void check_raster() {
  const int before = g_fail;
  for (int m_tiles = 1; m_tiles <= 13; ++m_tiles)
    for (int n_tiles = 1; n_tiles <= 3 * kMoeWgGroupN + 3; ++n_tiles) {
      std::vector<int> seen(static_cast<size_t>(m_tiles * n_tiles), 0);
      for (int b = 0; b < m_tiles * n_tiles; ++b) {
        int mt, nt;
        moe_wg_tile(b, m_tiles, n_tiles, mt, nt);
        CHECK(mt >= 0 && mt < m_tiles && nt >= 0 && nt < n_tiles, "raster out of range");
        if (mt >= 0 && mt < m_tiles && nt >= 0 && nt < n_tiles) ++seen[mt * n_tiles + nt];
      }
      for (int v : seen) CHECK(v == 1, "raster visits a tile %d times", v);
    }
  std::printf("%-22s %s\n", "raster", g_fail == before ? "ok" : "FAILED");
}

// ---- end-to-end replay --------------------------------------------------------------------------------------
uint16_t to_bf16(float f) { return moe::f32_to_bf16(f); }
float from_bf16(uint16_t b) { return moe::bf16_to_f32(b); }
constexpr uint16_t kNaN16 = 0x7fc0;

float act_oai(float g, float u, float alpha, float limit) {  // moe_act_oai
  g = g > limit ? limit : g;
  u = u > limit ? limit : (u < -limit ? -limit : u);
  return (u + 1.0f) * (g / (1.0f + expf(-alpha * g)));
}
int expert_of_row(const std::vector<int32_t>& offsets, int e, int r0) {  // moe_expert_of_row
  if (r0 >= offsets[e]) return -1;
  int lo = 0, hi = e - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= r0) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Shared memory of one block: bf16 words at address / 2, NaN where never written.
struct Smem {
  std::vector<uint16_t> w = std::vector<uint16_t>(kSmemSpace / 2, kNaN16);
};

// [T1]: the TMA box [rows, 64] at (k0, n0) of w [N, K] into dst.
void tma_box(Smem& sm, uint32_t dst, const uint16_t* w, int N, int K, int rows, int k0, int n0) {
  CHECK(dst % 1024 == 0, "TMA destination %u not 1024-aligned", dst);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < 8; ++c)
      for (int q = 0; q < 8; ++q) {
        const int n = n0 + r, kk = k0 + 8 * c + q;
        sm.w[(dst + r * 128 + ((c ^ (r % 8)) * 16) + 2 * q) / 2] = n < N && kk < K ? w[static_cast<size_t>(n) * K + kk] : 0;
      }
}

// moe_wg_mainloop, one block: ap / bp [tid][i] as the kernel builds them (tma set: moe_wg_mainloop with kTma B or AB, whose issue
// tma(sm, stage address, k column) writes the B tile instead of bp, and with tma_a the A tile too instead of ap). The copies of a k tile are applied, then
// each warpgroup's 4 wgmma steps read through the descriptors ([D2]) and accumulate into acc[tid][v] ([D4]).
template <class C>
void emu_mainloop(Smem& sm, std::vector<std::vector<float>>& acc, const std::vector<std::vector<const uint16_t*>>& ap,
                  const std::vector<std::vector<const uint16_t*>>& bp, int K, uint32_t ring,
                  const std::function<void(Smem&, uint32_t, int)>& tma = {}, bool tma_a = false) {
  const int ktiles = (K + C::BK - 1) / C::BK;
  for (int kt = 0; kt < ktiles; ++kt) {
    const uint32_t stage = C::stage_addr(ring, kt % C::STAGES);
    if (tma) tma(sm, stage, kt * C::BK);
    for (int tid = 0; tid < C::kThreads; ++tid) {  // load_tile(kt, kt % STAGES)
      const int kcol = kt * C::BK;
      const bool kin = C::k_in(kt, tid, K);
      for (int pass = tma && tma_a ? 2 : 0; pass < (tma ? 1 : 2); ++pass)
        for (int i = 0; i < (pass == 0 ? C::kAIters : C::kBIters); ++i) {
          const uint16_t* p = pass == 0 ? ap[tid][i] : bp[tid][i];
          const bool v = kin && p != nullptr;
          const uint32_t dst = pass == 0 ? C::a_dst(stage, tid, i) : C::b_dst(stage, tid, i);
          CHECK(dst % 16 == 0 && dst >= stage && dst + 16 <= stage + C::kStageBytes, "copy destination");
          for (int q = 0; q < 8; ++q) sm.w[dst / 2 + q] = v ? p[kcol + q] : 0;  // src-size 0: zero fill
        }
    }
    for (int wg = 0; wg < 2; ++wg)
      for (int kk = 0; kk < C::BK / 16; ++kk) {
        const uint64_t da = C::a_desc(stage, wg, kk), db = C::b_desc(stage, kk);
        for (int t = 0; t < 128; ++t)
          for (int v = 0; v < C::kAcc; ++v) {
            int m, n;
            d_frag(t, v, m, n);
            float s = 0.0f;
            for (int k = 0; k < 16; ++k)
              s += from_bf16(sm.w[wgmma_addr(da, m, k) / 2]) * from_bf16(sm.w[wgmma_addr(db, n, k) / 2]);
            acc[128 * wg + t][v] += s;
          }
      }
  }
}

struct Problem {
  int t, h, inter, e, k;
  bool oai, bias;
  const char* name;
};

// Returns act and part (the TMA replay must equal the cp.async one bitwise). tma: false the cp.async kernels, true
// the TMA ones (GEMM1's B, GEMM2's A and B by TMA).
template <class C1, class C2>
std::pair<std::vector<uint16_t>, std::vector<float>> check_e2e(const Problem& P, bool tma = false) {
  const int before = g_fail;
  const int t = P.t, h = P.h, I = P.inter, e = P.e, k = P.k, n_slots = t * k;
  uint64_t rng = 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(t * 131 + h * 7 + I);
  auto rnd = [&] {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return static_cast<float>(static_cast<double>(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  };
  const float xs = P.oai ? 3.0f : 0.5f;
  std::vector<uint16_t> x(static_cast<size_t>(t) * h);
  for (auto& v : x) v = to_bf16(xs * rnd());
  // routing: expert 1 gets slot 0 of every token (> 128 rows for t > 128), expert e - 2 nothing, expert e - 1 absent
  // (weights null), every 7th slot -1
  std::vector<int32_t> ids(static_cast<size_t>(n_slots));
  for (int i = 0; i < t; ++i)
    for (int j = 0; j < k; ++j) {
      int q = j == 0 ? 1 : static_cast<int>((static_cast<unsigned>(i * 7 + j * 3) % static_cast<unsigned>(e)));
      if (j > 0 && (q == 1 || q == e - 2)) q = 0;
      if ((i * k + j) % 7 == 3) q = -1;
      ids[i * k + j] = q;
    }
  std::vector<std::vector<uint16_t>> wg(e), wu(e), wd(e);
  std::vector<std::vector<float>> bg(e), bu(e), bd(e);
  for (int q = 0; q < e; ++q) {
    wg[q].resize(static_cast<size_t>(I) * h);
    wu[q].resize(static_cast<size_t>(I) * h);
    wd[q].resize(static_cast<size_t>(h) * I);
    for (auto& v : wg[q]) v = to_bf16(0.2f * rnd());
    for (auto& v : wu[q]) v = to_bf16(0.2f * rnd());
    for (auto& v : wd[q]) v = to_bf16(0.2f * rnd());
    bg[q].resize(I);
    bu[q].resize(I);
    bd[q].resize(h);
    for (auto& v : bg[q]) v = rnd();
    for (auto& v : bu[q]) v = rnd();
    for (auto& v : bd[q]) v = rnd();
  }
  std::vector<const void*> tg(e), tu(e), td(e), tbg(e), tbu(e), tbd(e);
  for (int q = 0; q < e; ++q) {
    const bool present = q != e - 1;
    tg[q] = present ? wg[q].data() : nullptr;
    tu[q] = present ? wu[q].data() : nullptr;
    td[q] = present ? wd[q].data() : nullptr;
    tbg[q] = present && P.bias ? bg[q].data() : nullptr;
    tbu[q] = present && P.bias ? bu[q].data() : nullptr;
    tbd[q] = present && P.bias ? bd[q].data() : nullptr;
  }
  const float alpha = 1.702f, limit = 7.0f;
  const int act_kind = P.oai ? 1 : 0;

  // moe_align_kernel with block = BM
  const int block = kMoeWgBM, capacity = n_slots + e * (block - 1), m_tiles = capacity / block;
  std::vector<int32_t> counts(e, 0), offsets(e + 1, 0), sorted(capacity, n_slots);
  for (int32_t q : ids)
    if (q >= 0 && q < e) ++counts[q];
  for (int q = 0; q < e; ++q) offsets[q + 1] = offsets[q] + (counts[q] + block - 1) / block * block;
  {
    std::vector<int> cur(offsets.begin(), offsets.end() - 1);
    for (int i = 0; i < n_slots; ++i)
      if (ids[i] >= 0 && ids[i] < e) sorted[cur[ids[i]]++] = i;
  }
  int max_rows = 0;
  for (int q = 0; q < e; ++q) max_rows = counts[q] > max_rows ? counts[q] : max_rows;

  std::vector<uint16_t> act(static_cast<size_t>(capacity) * I, kNaN16);
  std::vector<float> part(static_cast<size_t>(n_slots) * h, NAN);
  const uint32_t raw_base = 512;  // after the static s_slot
  const uint32_t ring = moe_wg_align_ring(raw_base);

  // ---- GEMM1 (moe_wg_gemm1_kernel) ----
  {
    using C = C1;
    const int n_tiles = (I + C::BN - 1) / C::BN;
    for (int b = 0; b < m_tiles * n_tiles; ++b) {
      int mt, nt;
      moe_wg_tile(b, m_tiles, n_tiles, mt, nt);
      const int r0 = mt * C::BM, n0 = nt * C::BN;
      const int ex = expert_of_row(offsets, e, r0);
      if (ex < 0) continue;
      const uint16_t* w_gate = static_cast<const uint16_t*>(tg[ex]);
      const uint16_t* w_up = static_cast<const uint16_t*>(tu[ex]);
      if (w_gate == nullptr || w_up == nullptr) continue;
      std::vector<int> s_slot(C::BM);
      for (int r = 0; r < C::BM; ++r) s_slot[r] = sorted[r0 + r];
      std::vector<std::vector<const uint16_t*>> ap(C::kThreads, std::vector<const uint16_t*>(C::kAIters)),
          bp(C::kThreads, std::vector<const uint16_t*>(C::kBIters));
      for (int tid = 0; tid < C::kThreads; ++tid) {
        for (int i = 0; i < C::kAIters; ++i)
          ap[tid][i] = C::g1_a(x.data(), s_slot[C::load_row(tid, i)], n_slots, k, h, tid);
        for (int i = 0; i < C::kBIters; ++i) bp[tid][i] = C::g1_b(w_gate, w_up, n0, I, h, tid, i);
      }
      std::vector<std::vector<float>> acc(C::kThreads, std::vector<float>(C::kAcc, 0.0f));
      Smem sm;
      emu_mainloop<C>(sm, acc, ap, bp, h, ring,
                      tma ? std::function<void(Smem&, uint32_t, int)>([&](Smem& m, uint32_t stage, int kcol) {
                        const uint32_t b = stage + static_cast<uint32_t>(C::kABytes);
                        tma_box(m, b, w_gate, I, h, C::BN, kcol, n0);
                        tma_box(m, b + static_cast<uint32_t>(C::BN) * 128u, w_up, I, h, C::BN, kcol, n0);
                      })
                          : std::function<void(Smem&, uint32_t, int)>(),
                      false);
      const float* pbg = tbg[ex] != nullptr ? static_cast<const float*>(tbg[ex]) : nullptr;
      const float* pbu = tbu[ex] != nullptr ? static_cast<const float*>(tbu[ex]) : nullptr;
      const bool plain = act_kind == 0 && pbg == nullptr;
      for (int tid = 0; tid < C::kThreads; ++tid)
        for (int hh = 0; hh < 2; ++hh) {
          const int r = C::acc_row(tid, hh);
          if (s_slot[r] >= n_slots) continue;
          uint16_t* orow = act.data() + static_cast<int64_t>(r0 + r) * I;
          for (int i = 0; i < C::BN / 8; ++i) {
            const int n = n0 + C::acc_col(tid, i, 0);
            if (n >= I) continue;
            for (int c = 0; c < 2; ++c) {
              float g = acc[tid][C::acc_idx(i, hh, c)], u = acc[tid][C::up_idx(i, hh, c)];
              float v;
              if (plain) {
                v = g / (1.0f + expf(-g)) * u;
              } else {
                if (pbg != nullptr) {
                  g += pbg[n + c];
                  u += pbu[n + c];
                }
                v = act_kind == 0 ? g / (1.0f + expf(-g)) * u : act_oai(g, u, alpha, limit);
              }
              CHECK(orow[n + c] == kNaN16, "%s act (%d, %d) written twice", P.name, r0 + r, n + c);
              orow[n + c] = to_bf16(v);
            }
          }
        }
    }
  }
  // GEMM1 reference (float64) and coverage: rows of real slots of present experts written, every other row untouched
  double max_err1 = 0;
  for (int q = 0; q < e; ++q)
    for (int r = offsets[q]; r < offsets[q + 1]; ++r) {
      const int s = sorted[r];
      const bool want = s < n_slots && tg[q] != nullptr;
      for (int n = 0; n < I; ++n) {
        const uint16_t got = act[static_cast<size_t>(r) * I + n];
        if (!want) {
          CHECK(got == kNaN16, "%s act row %d (padding / absent) written", P.name, r);
          continue;
        }
        CHECK(got != kNaN16, "%s act (%d, %d) not written", P.name, r, n);
        double g = 0, u = 0;
        for (int c = 0; c < h; ++c) {
          const double xv = from_bf16(x[static_cast<size_t>(s / k) * h + c]);
          g += xv * from_bf16(wg[q][static_cast<size_t>(n) * h + c]);
          u += xv * from_bf16(wu[q][static_cast<size_t>(n) * h + c]);
        }
        double v;
        if (P.bias) {
          g += bg[q][n];
          u += bu[q][n];
        }
        if (P.oai) {
          const double gg = g > limit ? limit : g, uu = u > limit ? limit : (u < -limit ? -limit : u);
          v = (uu + 1.0) * (gg / (1.0 + std::exp(-alpha * gg)));
        } else {
          v = g / (1.0 + std::exp(-g)) * u;
        }
        const double err = std::fabs(from_bf16(got) - v) / (std::fabs(v) + 0.05);
        max_err1 = err > max_err1 ? err : max_err1;
      }
    }
  for (size_t i = static_cast<size_t>(offsets[e]) * I; i < act.size(); ++i)
    CHECK(act[i] == kNaN16, "%s act past offsets[e] written", P.name);
  CHECK(max_err1 <= 1e-2, "%s GEMM1 max rel err %g", P.name, max_err1);

  // ---- GEMM2 (moe_wg_gemm2_kernel) on the replayed act ----
  {
    using C = C2;
    const int n_tiles = (h + C::BN - 1) / C::BN;
    for (int b = 0; b < m_tiles * n_tiles; ++b) {
      int mt, nt;
      moe_wg_tile(b, m_tiles, n_tiles, mt, nt);
      const int r0 = mt * C::BM, n0 = nt * C::BN;
      const int ex = expert_of_row(offsets, e, r0);
      if (ex < 0) continue;
      const uint16_t* w_d = static_cast<const uint16_t*>(td[ex]);
      if (w_d == nullptr) continue;
      std::vector<int> s_slot(C::BM);
      for (int r = 0; r < C::BM; ++r) s_slot[r] = sorted[r0 + r];
      std::vector<std::vector<const uint16_t*>> ap(C::kThreads, std::vector<const uint16_t*>(C::kAIters)),
          bp(C::kThreads, std::vector<const uint16_t*>(C::kBIters));
      for (int tid = 0; tid < C::kThreads; ++tid) {
        for (int i = 0; i < C::kAIters; ++i)
          ap[tid][i] = C::g2_a(act.data(), s_slot[C::load_row(tid, i)], n_slots, r0, I, tid, i);
        for (int i = 0; i < C::kBIters; ++i) bp[tid][i] = C::g2_b(w_d, n0, h, I, tid, i);
      }
      std::vector<std::vector<float>> acc(C::kThreads, std::vector<float>(C::kAcc, 0.0f));
      Smem sm;
      emu_mainloop<C>(sm, acc, ap, bp, I, ring,
                      tma ? std::function<void(Smem&, uint32_t, int)>([&](Smem& m, uint32_t stage, int kcol) {
                        tma_box(m, stage, act.data(), capacity, I, C::BM, kcol, r0);  // act rows r0 .. r0+BM-1
                        tma_box(m, stage + static_cast<uint32_t>(C::kABytes), w_d, h, I, C::BN, kcol, n0);
                      })
                          : std::function<void(Smem&, uint32_t, int)>(),
                      tma);
      const float* pbd = tbd[ex] != nullptr ? static_cast<const float*>(tbd[ex]) : nullptr;
      for (int tid = 0; tid < C::kThreads; ++tid)
        for (int hh = 0; hh < 2; ++hh) {
          const int s = s_slot[C::acc_row(tid, hh)];
          if (s >= n_slots) continue;
          float* orow = part.data() + static_cast<int64_t>(s) * h;
          for (int i = 0; i < C::kN / 8; ++i) {
            const int n = n0 + C::acc_col(tid, i, 0);
            if (n >= h) continue;
            for (int c = 0; c < 2; ++c) {
              const float v = acc[tid][C::acc_idx(i, hh, c)];
              CHECK(std::isnan(orow[n + c]), "%s part (%d, %d) written twice", P.name, s, n + c);
              orow[n + c] = pbd == nullptr ? v : v + pbd[n + c];
            }
          }
        }
    }
  }
  double max_err2 = 0;
  for (int s = 0; s < n_slots; ++s) {
    const int q = ids[s];
    const bool want = q >= 0 && q < e && td[q] != nullptr;
    int r = -1;
    for (int rr = 0; rr < capacity && want; ++rr)
      if (sorted[rr] == s) r = rr;
    for (int n = 0; n < h; ++n) {
      const float got = part[static_cast<size_t>(s) * h + n];
      if (!want) {
        CHECK(std::isnan(got), "%s part row %d (unrouted / absent) written", P.name, s);
        continue;
      }
      CHECK(!std::isnan(got), "%s part (%d, %d) not written", P.name, s, n);
      double ref = P.bias ? bd[q][n] : 0.0;
      for (int j = 0; j < I; ++j)
        ref += static_cast<double>(from_bf16(act[static_cast<size_t>(r) * I + j])) *
               from_bf16(wd[q][static_cast<size_t>(n) * I + j]);
      const double err = std::fabs(got - ref) / (std::fabs(ref) + 0.05);
      max_err2 = err > max_err2 ? err : max_err2;
    }
  }
  CHECK(max_err2 <= 1e-4, "%s GEMM2 max rel err %g", P.name, max_err2);
  std::printf("%-22s%s t %d h %d i %d e %d k %d, max rows/expert %d, m_tiles %d: GEMM1 err %.2e GEMM2 err %.2e %s\n",
              P.name, tma ? " (tma)" : "", t, h, I, e, k, max_rows, m_tiles, max_err1, max_err2,
              g_fail == before ? "ok" : "FAILED");
  return {act, part};
}

// The TMA replay of P equals the cp.async one bitwise (act and part).
template <class C1, class C2>
void check_tma(const Problem& P) {
  const auto a = check_e2e<C1, C2>(P, false), b = check_e2e<C1, C2>(P, true);
  CHECK(a.first == b.first, "%s: TMA act differs from cp.async", P.name);
  CHECK(std::memcmp(a.second.data(), b.second.data(), a.second.size() * sizeof(float)) == 0, "%s: TMA part differs", P.name);
}

int main() {
  check_structure<MoeWgG1>("MoeWgG1");
  check_structure<MoeWgG2>("MoeWgG2");
  check_structure<MoeWgCfg<64, true, 6>>("G1 n128 (64+64) 6st");
  check_structure<MoeWgCfg<128, false, 3>>("G2 n128 3st");
  check_raster();
  // several M tiles per expert (expert 1: t - t / 7 or so rows > 128), ragged N (inter 136 -> 128 + 8; h 200 / 520
  // < 256 multiples), K tails (200 = 3 * 64 + 8, 136 = 2 * 64 + 8, 520 = 8 * 64 + 8), k tiles > stages (520: 9,
  // 1160: 19), G1 n tiles > kMoeWgGroupN (1160: 10 -> raster groups 8 + 2), empty expert e - 2, absent e - 1, -1 ids
  check_tma<MoeWgG1, MoeWgG2>({300, 200, 136, 6, 2, false, false, "silu"});
  check_tma<MoeWgG1, MoeWgG2>({150, 136, 200, 5, 3, true, true, "oai+bias"});
  check_tma<MoeWgG1, MoeWgG2>({140, 520, 1160, 4, 2, false, true, "silu+bias long"});
  check_e2e<MoeWgCfg<64, true, 6>, MoeWgCfg<128, false, 3>>({150, 200, 136, 5, 2, false, false, "n128 configs"});
  std::printf(g_fail == 0 ? "all ok\n" : "%d failures\n", g_fail);
  return g_fail == 0 ? 0 : 1;
}
