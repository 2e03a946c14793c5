// Host-only replay of the index helpers of cuda/moe_experts_mma.cuh against the PTX ISA fragment layouts (no GPU
// needed; not part of the CMake build). For every configuration the launcher instantiates it checks:
//   * the cp.async copy mapping fills every element of a stage exactly once, each 8-thread phase writes 8 distinct
//     16-byte bank groups, and 8 consecutive threads read one row's 8 chunks (coalesced);
//   * ldmatrix.x4 (emulated: matrix q's row r address from lane 8 q + r; lane l gets in register q the two bf16 at
//     that row's address + 4 (l % 4)) with the a_ldsm / b_ldsm addresses gives, decoded with the mma.m16n8k16 A / B
//     fragment layouts, exactly element (row, k) of the warp's m16 tile / n8 tile for the k16 step, with every
//     8-address phase free of bank conflicts;
//   * acc_row / acc_col follow the D layout and cover each (row, col) of every B matrix of the block tile once;
//   * the STAGES ring of moe_mma_mainloop computes on tile kt only after it was loaded and refills a slot only after
//     its tile was consumed (the wait_group count included).
// Build and run: nvcc -std=c++17 -I cpp -I cuda test/native/moe_mma_layout_check.cu -o /tmp/mma_check && /tmp/mma_check
#include <cstdio>
#include <cstdlib>
#include <set>
#include <vector>

#include "moe_experts_mma.cuh"

using namespace moe::dev;

static int g_fail = 0;
#define CHECK(cond, ...)                       \
  do {                                         \
    if (!(cond)) {                             \
      if (g_fail < 20) {                       \
        std::printf("FAIL %s:%d ", __FILE__, __LINE__); \
        std::printf(__VA_ARGS__);              \
        std::printf("\n");                     \
      }                                        \
      ++g_fail;                                \
    }                                          \
  } while (0)

// Tag of a shared-memory bf16: which matrix (0 A, 1 B), tile row, k within the BK = 64 tile.
struct Tag {
  int mat = -1, row = -1, k = -1;
};

template <class C>
void check_cfg(const char* name) {
  const int before = g_fail;
  // ---- copy mapping ----
  std::vector<Tag> sm(C::kStageBytes / 2);  // one stage, bf16 elements
  for (int tid = 0; tid < C::kThreads; ++tid) {
    const int chunk = C::load_chunk(tid);
    CHECK(chunk >= 0 && chunk < 8, "chunk");
    for (int pass = 0; pass < 2; ++pass) {
      const int iters = pass == 0 ? C::kAIters : C::kBIters;
      const int rows = pass == 0 ? C::BM : C::kBRows;
      const uint32_t base = pass == 0 ? 0 : C::kABytes;
      for (int i = 0; i < iters; ++i) {
        const int row = C::load_row(tid, i);
        CHECK(row >= 0 && row < rows, "%s load row %d out of range", name, row);
        const uint32_t off = moe_mma_swz(row, chunk);
        CHECK(off % 16 == 0 && off < static_cast<uint32_t>(rows * 128), "swz off");
        for (int q = 0; q < 8; ++q) {
          Tag& t = sm[(base + off) / 2 + q];
          CHECK(t.mat < 0, "%s element written twice", name);
          t = Tag{pass, row, chunk * 8 + q};
        }
      }
    }
  }
  for (const Tag& t : sm) CHECK(t.mat >= 0, "%s element never written", name);
  for (int w = 0; w < C::kThreads / 32; ++w)
    for (int pass = 0; pass < 2; ++pass)
      for (int i = 0; i < (pass == 0 ? C::kAIters : C::kBIters); ++i)
        for (int ph = 0; ph < 4; ++ph) {
          std::set<int> banks, chunks;
          int row0 = -1;
          for (int l = 8 * ph; l < 8 * ph + 8; ++l) {
            const int tid = 32 * w + l;
            const int row = C::load_row(tid, i);
            banks.insert(static_cast<int>(moe_mma_swz(row, C::load_chunk(tid)) % 128 / 16));
            chunks.insert(C::load_chunk(tid));
            if (l == 8 * ph) row0 = row;
            CHECK(row == row0, "%s copy phase spans rows", name);
          }
          CHECK(banks.size() == 8 && chunks.size() == 8, "%s copy phase bank conflict / not one whole row", name);
        }

  // ---- ldmatrix + fragments ----
  auto ldsm_x4 = [&](const uint32_t addr[32], uint32_t base, Tag out[32][4][2]) {
    for (int q = 0; q < 4; ++q) {
      std::set<int> banks;
      for (int r = 0; r < 8; ++r) {
        CHECK(addr[8 * q + r] % 16 == 0, "ldsm addr alignment");
        banks.insert(static_cast<int>((base + addr[8 * q + r]) % 128 / 16));
      }
      CHECK(banks.size() == 8, "%s ldmatrix bank conflict", name);
      for (int l = 0; l < 32; ++l)
        for (int h = 0; h < 2; ++h) out[l][q][h] = sm[(base + addr[8 * q + l / 4]) / 2 + 2 * (l % 4) + h];
    }
  };
  for (int warp = 0; warp < C::kThreads / 32; ++warp) {
    const int wm = warp / C::WN, wn = warp % C::WN;
    for (int kk = 0; kk < kMoeMmaBK / 16; ++kk) {
      for (int i = 0; i < C::kMT; ++i) {
        uint32_t addr[32];
        for (int l = 0; l < 32; ++l) addr[l] = C::a_ldsm(wm, i, kk, l);
        Tag reg[32][4][2];
        ldsm_x4(addr, 0, reg);
        for (int l = 0; l < 32; ++l) {
          const int g = l / 4, t = l % 4;
          // a0 = A[g][2t..], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
          const int rr[4] = {g, g + 8, g, g + 8}, kc[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
          for (int q = 0; q < 4; ++q)
            for (int h = 0; h < 2; ++h) {
              const Tag& tg = reg[l][q][h];
              CHECK(tg.mat == 0 && tg.row == wm * C::kWTM + i * 16 + rr[q] && tg.k == kk * 16 + kc[q] + h,
                    "%s A frag warp %d kk %d i %d lane %d reg %d: got (%d,%d,%d)", name, warp, kk, i, l, q, tg.mat,
                    tg.row, tg.k);
            }
        }
      }
      for (int m = 0; m < C::kMats; ++m)
        for (int jj = 0; jj < C::kNT / 2; ++jj) {
          uint32_t addr[32];
          for (int l = 0; l < 32; ++l) addr[l] = C::b_ldsm(m, wn, jj, kk, l);
          Tag reg[32][4][2];
          ldsm_x4(addr, C::kABytes, reg);
          for (int l = 0; l < 32; ++l) {
            const int g = l / 4, t = l % 4;
            // registers 0, 1: b0, b1 of n8 tile 2 jj; 2, 3: of tile 2 jj + 1. b0 = B[k=2t..][n=g], b1 = B[k=2t+8..][n=g]
            for (int q = 0; q < 4; ++q) {
              const int j = 2 * jj + q / 2;
              for (int h = 0; h < 2; ++h) {
                const Tag& tg = reg[l][q][h];
                CHECK(tg.mat == 1 && tg.row == m * C::BN + wn * C::kWTN + j * 8 + g &&
                          tg.k == kk * 16 + 2 * t + 8 * (q % 2) + h,
                      "%s B frag warp %d kk %d mat %d jj %d lane %d reg %d: got (%d,%d,%d)", name, warp, kk, m, jj, l,
                      q, tg.mat, tg.row, tg.k);
              }
            }
          }
        }
    }
  }

  // ---- accumulator positions: D[g][2t + c] (d0, d1), D[g + 8][2t + c] (d2, d3) of tile (i, j) ----
  std::vector<int> cover(static_cast<size_t>(C::BM * C::BN), 0);
  for (int warp = 0; warp < C::kThreads / 32; ++warp) {
    const int wm = warp / C::WN, wn = warp % C::WN;
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < C::kMT; ++i)
        for (int j = 0; j < C::kNT; ++j)
          for (int hh = 0; hh < 2; ++hh)
            for (int c = 0; c < 2; ++c) {
              const int r = C::acc_row(wm, i, hh, l), n = C::acc_col(wn, j, c, l);
              CHECK(r == wm * C::kWTM + i * 16 + l / 4 + 8 * hh && n == wn * C::kWTN + j * 8 + 2 * (l % 4) + c,
                    "%s acc position", name);
              CHECK(C::acc_col(wn, j, 0, l) + c == n && n % 2 == c, "%s pair column", name);
              CHECK(r >= 0 && r < C::BM && n >= 0 && n < C::BN, "%s acc out of tile", name);
              if (r >= 0 && r < C::BM && n >= 0 && n < C::BN) ++cover[r * C::BN + n];
            }
  }
  for (int v : cover) CHECK(v == 1, "%s output covered %d times", name, v);

  // ---- pipeline schedule of moe_mma_mainloop ----
  for (int ktiles = 0; ktiles <= 3 * C::STAGES + 1; ++ktiles) {
    std::vector<int> slot(C::STAGES, -1);  // tile held by each stage slot
    std::vector<int> group_of_tile(ktiles, -1);
    int groups = 0;
    for (int s = 0; s < C::STAGES - 1; ++s) {
      if (s < ktiles) {
        slot[s] = s;
        group_of_tile[s] = groups;
      }
      ++groups;
    }
    for (int kt = 0; kt < ktiles; ++kt) {
      const int completed = groups - (C::STAGES - 2);  // wait_group<STAGES - 2>: groups [0, completed) done
      CHECK(group_of_tile[kt] >= 0 && group_of_tile[kt] < completed, "%s tile %d not landed", name, kt);
      const int nk = kt + C::STAGES - 1;
      if (nk < ktiles) {
        const int old = slot[nk % C::STAGES];
        CHECK(old < kt, "%s slot of tile %d refilled before use", name, old);  // old == kt - 1 or none
        slot[nk % C::STAGES] = nk;
        group_of_tile[nk] = groups;
      }
      ++groups;
      CHECK(slot[kt % C::STAGES] == kt, "%s computes on the wrong slot", name);
    }
  }
  std::printf("%-14s BM %3d BN %3d warps %dx%d threads %3d stages %d smem %6d B: %s\n", name, C::BM, C::BN, C::WM,
              C::WN, C::kThreads, C::STAGES, C::kSmem, g_fail == before ? "ok" : "FAILED");
}

int main() {
  check_cfg<MoeMmaG1Large>("G1Large");
  check_cfg<MoeMmaG2Large>("G2Large");
  check_cfg<MoeMmaG1Small>("G1Small");
  check_cfg<MoeMmaG2Small>("G2Small");
  // other shapes the template allows
  check_cfg<MoeMmaCfg<128, 64, 4, 2, 3, true, 1>>("G1 128x64 4x2");
  check_cfg<MoeMmaCfg<64, 64, 1, 4, 4, false, 1>>("G2 64x64 1x4");
  std::printf(g_fail == 0 ? "all ok\n" : "%d failures\n", g_fail);
  return g_fail == 0 ? 0 : 1;
}
