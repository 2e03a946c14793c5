// Hopper (sm_90a) warpgroup-MMA kernels of moe_cuda_moe_experts for the large-T (prefill) case (launcher
// moe_experts.cu; routing layout in moe_experts.cuh; the mma.sync path of moe_experts_mma.cuh is the model and its
// cp.async / swizzle helpers are reused). Same contract as the other paths:
//   moe_wg_gemm1_kernel  act[r, n] = bf16( swiglu( x[sorted[r] / k] . gate_e[n], x[sorted[r] / k] . up_e[n] ) )
//   moe_wg_gemm2_kernel  part[sorted[r], n] = act[r] . down_e[n] (+ bd_e[n]), f32
// for the rows r of a 128-row M tile of one expert (moe_align_kernel run with block == BM == 128); padding rows
// (sorted[r] == n_slots) are zero-filled on load and never written. Epilogue formulas are those of the mma path.
//
// Design:
//   * Block tile BM 128 x kN, BK 64 (one 128-byte swizzle row of bf16). 256 threads = 2 warpgroups; warpgroup wg
//     owns tile rows 64 wg .. 64 wg + 63 and issues wgmma.mma_async.sync.aligned.m64n{kN}k16.f32.bf16.bf16 with
//     both operands in shared memory (descriptors), 4 per k tile (k16 steps kk = 0..3), f32 accumulation.
//     GEMM1 (GATED): the B tile stacks gate rows n0 .. n0+BN-1 then up rows n0 .. n0+BN-1 (kN = 2 BN = 256), so
//     accumulator column j (gate) and column BN + j (up) of one output sit in the same thread: SwiGLU in registers.
//     GEMM2: kN = BN = 256 down rows.
//   * Producer: all 256 threads, cp.async.cg 16-byte copies (rows gathered by pointer, like the mma path; A rows of
//     GEMM1 are x rows picked by sorted[], so plain TMA tiles do not apply). Zero fill (src-size 0, nothing read)
//     for padding rows, rows n >= N and 16-byte chunks past K (K % 8 == 0): the k tail contributes exactly 0.
//   * Ring of STAGES stages in dynamic shared memory, aligned to 1024 bytes at run time (kSmem has 1 KiB slack).
//     Stage = A tile [128][64] bf16 (16 KiB) then B tile [kN][64] bf16 (kN * 128 bytes); every tile base is a
//     multiple of 1024 bytes from the aligned ring start. Chunk c (16 bytes, k = 8c .. 8c+7) of tile row r lives at
//     byte r * 128 + ((c ^ (r % 8)) * 16) (moe_mma_swz): exactly the K-major SWIZZLE_128B layout wgmma reads (8-row
//     x 128-byte atoms stacked every 1024 bytes along M / N; 16-byte chunk index XOR row-in-atom).
//   * Schedule per k tile kt (test/native/moe_wgmma_layout_check.cu replays it):
//       cp.async.wait_group STAGES-2 (own copies of tile kt done); fence.proxy.async.shared::cta (the generic-proxy
//       cp.async writes become visible to the async proxy that wgmma reads through); __syncthreads (everyone's);
//       wgmma.fence; 4 wgmma on tile kt; wgmma.commit_group; wgmma.wait_group 1 (this warpgroup's tile kt-1 reads
//       done); __syncthreads (both warpgroups: the slot of tile kt-1 is free); cp.async of tile kt+STAGES-1 into
//       that slot; commit. The tensor pipe always holds the wgmma group of tile kt while the barriers and copies of
//       the next tile run; STAGES-1 tiles of copies in flight.
//   * Shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format", 64 bits):
//       bits  0-13  start address >> 4 (address & 0x3FFFF)
//       bits 16-29  leading-dimension byte offset >> 4: 1 (not used by K-major swizzled layouts; CUTLASS writes 1)
//       bits 32-45  stride-dimension byte offset >> 4: 1024 >> 4 = 64 (next 8-row group of M / N)
//       bits 49-51  base offset: 0 (every start address has bits 7-9 == 0: tile bases are 1024-aligned, the k16
//                   step adds 32 * kk < 128 bytes, warpgroup 1 adds 8192)
//       bits 62-63  swizzle mode: 1 = 128B
//     A of warpgroup wg, k16 step kk: start = stage + 8192 wg + 32 kk; B: start = stage + 16384 + 32 kk (the start
//     advances by 32 bytes inside the 128-byte swizzle row, as CUTLASS / DeepGEMM do; the hardware swizzles the
//     full address: bits 4-6 ^= bits 7-9). trans-a = trans-b = 0: A [M][K] and B [N][K] both K-major.
//   * Accumulators (PTX ISA wgmma D fragment, m64nN f32): thread lane l of warp w (0..3) of warpgroup wg holds
//     d[4 i + 2 hh + c] = D[16 w + l / 4 + 8 hh][8 i + 2 (l % 4) + c], i < kN / 8: the mma.sync m16n8 D layout per
//     n8 column group. Tile row 64 wg + that row.
//   * Grid: 1D, m_tiles x n_tiles blocks, grouped raster (moe_wg_tile): kMoeWgGroupN n tiles per group, the m tile
//     varying slowest inside a group, so the ~132 resident blocks share weight tiles (all M tiles of an expert run
//     together) and x / act rows (a group's n tiles run together); weights stream from HBM about once.
//   * Determinism: one accumulation chain per output over k tiles in order, fixed hardware order inside wgmma; no
//     split-K, no atomics.
// Configurations (moe_experts.cu): GEMM1 BN 128 (+128 up), GEMM2 BN 256 (both wgmma n256); 4 stages of 48 KiB =
// 192 KiB + 1 KiB alignment slack (197632 bytes dynamic, 512 static), 1 block per SM, 128 accumulators per thread;
// ptxas (sm_90a): 190 / 192 registers, no spills. MoeWgCfg<64, true, 6> / <128, false, 3> (n128) are the smaller
// alternatives the layout check also covers; n128 tiles at 2 blocks per SM (<64, true, 3> / <128, false, 3>, 118
// registers) were measured on an H100 (2026-11-26) and were no faster overall: +-5% by shape, 1.05x slower on
// Mixtral T = 16384.
// Device code exists only for sm_90a (MOE_WGMMA_ENABLED); elsewhere the kernels trap, and the launcher selects them
// only on compute capability 9.0 (the build's 90a-real SASS).
#pragma once
#include <cuda.h>  // CUtensorMap (type only)

#include <cstdint>

#include "dtype.cuh"
#include "moe_experts.cuh"
#include "mbarrier.cuh"
#include "moe_experts_mma.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOE_WGMMA_ENABLED 1
#else
#define MOE_WGMMA_ENABLED 0
#endif

namespace moe {
namespace dev {

constexpr int kMoeWgBM = 128;     // M tile = align block of the wgmma path
constexpr int kMoeWgGroupN = 8;   // n tiles per raster group

// Shared-memory matrix descriptor of a K-major SWIZZLE_128B tile whose 8-row groups are 1024 bytes apart (header).
__host__ __device__ __forceinline__ uint64_t moe_wg_desc(uint32_t smem_addr) {
  return static_cast<uint64_t>((smem_addr & 0x3FFFFu) >> 4) |  // bits 0-13: start address >> 4
         (static_cast<uint64_t>(1) << 16) |                      // bits 16-29: leading byte offset >> 4 (unused)
         (static_cast<uint64_t>(1024 >> 4) << 32) |              // bits 32-45: stride byte offset >> 4
         (static_cast<uint64_t>(1) << 62);                       // bits 62-63: 1 = 128B swizzle; base offset 0
}

// Block b of the 1D grid -> (m tile, n tile): groups of kMoeWgGroupN n tiles (the last may be narrower); inside a
// group the n tile varies fastest.
__host__ __device__ __forceinline__ void moe_wg_tile(int b, int m_tiles, int n_tiles, int& mt, int& nt) {
  const int per_group = kMoeWgGroupN * m_tiles;
  const int g = b / per_group, first = g * kMoeWgGroupN;
  const int gsize = n_tiles - first < kMoeWgGroupN ? n_tiles - first : kMoeWgGroupN;
  const int local = b - g * per_group;
  mt = local / gsize;
  nt = first + local % gsize;
}

template <int BN_, bool GATED_, int STAGES_>
struct MoeWgCfg {
  static constexpr int BM = kMoeWgBM, BK = 64, BN = BN_, STAGES = STAGES_;
  static constexpr bool GATED = GATED_;
  static constexpr int kThreads = 256;                 // 2 warpgroups
  static constexpr int kMats = GATED ? 2 : 1;          // B matrices (gate, up) or (down)
  static constexpr int kN = kMats * BN;                // wgmma N = B tile rows
  static constexpr int kAcc = kN / 2;                  // f32 accumulators per thread: 64 x kN / 128 threads
  static constexpr int kAIters = BM * 8 / kThreads;    // 16-byte A chunks per thread per k tile
  static constexpr int kBIters = kN * 8 / kThreads;    // 16-byte B chunks per thread per k tile
  static constexpr int kABytes = BM * 128, kWgABytes = 64 * 128, kStageBytes = (BM + kN) * 128;
  static constexpr int kSmem = STAGES * kStageBytes + 1024;  // + slack: the ring is aligned to 1024 at run time
  static_assert(kN == 128 || kN == 256, "wgmma wrappers exist for n128 and n256");
  static_assert(kStageBytes % 1024 == 0 && kABytes % 1024 == 0, "SWIZZLE_128B atoms must stay 1024-aligned");
  static_assert(STAGES >= 2, "pipeline depth");
  static_assert(kSmem <= 227 * 1024, "shared memory per block");

  // Copy mapping (as the mma path): chunk i of thread tid is row load_row(tid, i), chunk load_chunk(tid).
  __host__ __device__ static int load_row(int tid, int i) { return (tid >> 3) + i * (kThreads >> 3); }
  __host__ __device__ static int load_chunk(int tid) { return tid & 7; }
  // Shared address of stage s of the ring; destinations of copy i of thread tid in a stage (A tile, then B tile).
  __host__ __device__ static uint32_t stage_addr(uint32_t ring, int s) {
    return ring + static_cast<uint32_t>(s * kStageBytes);
  }
  __host__ __device__ static uint32_t a_dst(uint32_t stage, int tid, int i) {
    return stage + moe_mma_swz(load_row(tid, i), load_chunk(tid));
  }
  __host__ __device__ static uint32_t b_dst(uint32_t stage, int tid, int i) {
    return stage + static_cast<uint32_t>(kABytes) + moe_mma_swz(load_row(tid, i), load_chunk(tid));
  }
  // Thread tid's chunk of k tile kt lies inside K (whole chunks: K % 8 == 0); else it is zero-filled.
  __host__ __device__ static bool k_in(int kt, int tid, int K) { return kt * BK + load_chunk(tid) * 8 < K; }
  // Copy source rows (offset by the thread's chunk column; null: zero row). GEMM1 A: x row of slot s (padding
  // s >= n_slots); GEMM1 B row `row` of the stacked tile: gate n0 + row, or up n0 + row - BN; GEMM2 A: act row r0 +
  // row when its slot s is real; GEMM2 B: down row n0 + row. N: inter (GEMM1) or h (GEMM2).
  __host__ __device__ static const uint16_t* g1_a(const uint16_t* x, int s, int n_slots, int k, int h, int tid) {
    return s < n_slots ? x + static_cast<int64_t>(s / k) * h + load_chunk(tid) * 8 : nullptr;
  }
  __host__ __device__ static const uint16_t* g1_b(const uint16_t* w_gate, const uint16_t* w_up, int n0, int inter,
                                                  int h, int tid, int i) {
    const int row = load_row(tid, i);
    const bool is_up = row >= BN;
    const int n = n0 + row - (is_up ? BN : 0);
    return n < inter ? (is_up ? w_up : w_gate) + static_cast<int64_t>(n) * h + load_chunk(tid) * 8 : nullptr;
  }
  __host__ __device__ static const uint16_t* g2_a(const uint16_t* act, int s, int n_slots, int r0, int inter,
                                                  int tid, int i) {
    return s < n_slots ? act + static_cast<int64_t>(r0 + load_row(tid, i)) * inter + load_chunk(tid) * 8 : nullptr;
  }
  __host__ __device__ static const uint16_t* g2_b(const uint16_t* wd, int n0, int h, int inter, int tid, int i) {
    const int n = n0 + load_row(tid, i);
    return n < h ? wd + static_cast<int64_t>(n) * inter + load_chunk(tid) * 8 : nullptr;
  }
  // Descriptors of k16 step kk (0..3) for a stage at shared address `stage` (1024-aligned): the start address
  // advances by 32 bytes per step (+2 in the >> 4 field, no carry out of it: shared addresses < 2^18 - 64).
  __host__ __device__ static uint64_t a_desc(uint32_t stage, int wg, int kk) {
    return moe_wg_desc(stage + static_cast<uint32_t>(wg * kWgABytes)) + static_cast<uint64_t>(2 * kk);
  }
  __host__ __device__ static uint64_t b_desc(uint32_t stage, int kk) {
    return moe_wg_desc(stage + static_cast<uint32_t>(kABytes)) + static_cast<uint64_t>(2 * kk);
  }
  // Tile row / column of accumulator d[4 i + 2 hh + c] of thread tid (the D layout of the header).
  __host__ __device__ static int acc_row(int tid, int hh) {
    return 64 * (tid >> 7) + 16 * ((tid >> 5) & 3) + ((tid & 31) >> 2) + 8 * hh;
  }
  __host__ __device__ static int acc_col(int tid, int i, int c) { return 8 * i + 2 * (tid & 3) + c; }
  __host__ __device__ static int acc_idx(int i, int hh, int c) { return 4 * i + 2 * hh + c; }
  // GEMM1: the up accumulator of gate accumulator acc_idx(i, hh, c), i < BN / 8 (column BN + the gate column).
  __host__ __device__ static int up_idx(int i, int hh, int c) { return acc_idx(i + BN / 8, hh, c); }
};

// ---- PTX wrappers (sm_90a only; the launcher never selects these kernels elsewhere) ---------------------------

// Makes this thread's completed generic-proxy shared-memory writes (cp.async) visible to the async proxy (wgmma).
__device__ __forceinline__ void moe_fence_proxy_async() {
#if MOE_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void moe_wgmma_fence() {
#if MOE_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void moe_wgmma_commit() {
#if MOE_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void moe_wgmma_wait() {
#if MOE_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Compiler-only fence on the accumulators (no instruction): keeps their reads / writes from moving across the
// wgmma issue / wait points (CUTLASS's warpgroup_fence_operand).
template <int R>
__device__ __forceinline__ void moe_wg_fence_acc(float (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d[0..63] += A(desc_a, m64 x k16) . B(desc_b, k16 x n128), f32 accumulators (D layout: header comment).
__device__ __forceinline__ void moe_wg_mma_n128(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
#if MOE_WGMMA_ENABLED
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, 1, 0;\n"  // scale-d = true: D = A.B + D
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      " %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      " %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63},"
      " %64, %65, p, 1, 1, 0, 0;\n"  // scale-a 1, scale-b 1, trans-a 0, trans-b 0 (both K-major)
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(desc_a), "l"(desc_b)
      : "memory");
#else
  (void)d;
  (void)desc_a;
  (void)desc_b;
  __trap();
#endif
}

// d[0..127] += A(desc_a, m64 x k16) . B(desc_b, k16 x n256), f32 accumulators (D layout: header comment).
__device__ __forceinline__ void moe_wg_mma_n256(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
#if MOE_WGMMA_ENABLED
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, 1, 0;\n"  // scale-d = true: D = A.B + D
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
      " %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
      " %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
      " %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
      " %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
      " %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
      " %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
      " %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127},"
      " %128, %129, p, 1, 1, 0, 0;\n"  // scale-a 1, scale-b 1, trans-a 0, trans-b 0 (both K-major)
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b)
      : "memory");
#else
  (void)d;
  (void)desc_a;
  (void)desc_b;
  __trap();
#endif
}

template <class C>
__device__ __forceinline__ void moe_wg_mma(float (&d)[C::kAcc], uint64_t desc_a, uint64_t desc_b) {
  if constexpr (C::kN == 256) {
    moe_wg_mma_n256(d, desc_a, desc_b);
  } else {
    moe_wg_mma_n128(d, desc_a, desc_b);
  }
}

// One k tile of warpgroup `wg`: its BK / 16 wgmma from shared-memory `stage` as one committed group, then a wait
// until at most this group is in flight (the previous k tile's group retired, its shared-memory reads done: the
// caller may release that tile's stage). Accumulators fenced around every issue / wait point.
template <class C>
__device__ __forceinline__ void moe_wg_ktile(float (&acc)[C::kAcc], uint32_t stage, int wg) {
  moe_wg_fence_acc(acc);
  moe_wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < C::BK / 16; ++kk) moe_wg_mma<C>(acc, C::a_desc(stage, wg, kk), C::b_desc(stage, kk));
  moe_wgmma_commit();
  moe_wg_fence_acc(acc);
  moe_wgmma_wait<1>();
  moe_wg_fence_acc(acc);
}

// ---- TMA (the TMA kernels of moe_experts_wgmma_tma.cuh; their mbarriers: mbarrier.cuh) -----------------------

// Orders this block's later TMA reads of the tensor map at `map` (global memory) after the host's write of it.
__device__ __forceinline__ void moe_tensormap_acquire(const CUtensorMap* map) {
#if MOE_WGMMA_ENABLED
  asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;\n" ::"l"(reinterpret_cast<uint64_t>(map))
               : "memory");
#endif
}
// Box (column c0 = k, row c1 = n) of the matrix of `map` into shared memory at `dst` (1024-aligned), completing its
// bytes on the mbarrier `bar`.
__device__ __forceinline__ void moe_tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
#if MOE_WGMMA_ENABLED
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
#endif
}

// The STAGES mbarriers of a TMA kernel, initialised by thread 0 (count 1) and visible to all after the next
// __syncthreads; returns their shared address.
template <class C>
__device__ __forceinline__ uint32_t moe_wg_tma_bars(uint64_t (&bars)[C::STAGES]) {
  const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(bars));
  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < C::STAGES; ++s) moe_mbar_init(base + 8u * static_cast<uint32_t>(s), 1);
    moe_mbar_init_fence();
  }
  return base;
}

// Which tiles of a stage TMA loads (the rest cp.async): none (the cp.async kernels), B, or A and B.
enum class MoeWgTma { None, B, AB };
// The issue function of a stage's TMA boxes when there are none.
struct MoeWgNoTma {
  __device__ void operator()(uint32_t, int, uint32_t) const {}
};

// ---- mainloop ------------------------------------------------------------------------------------------------
// acc[kAcc] += A[BM, K] . B[kN, K]^T for this thread's D fragment. ap[i] / bp[i]: this thread's copy rows
// (load_row(tid, i)), already offset by its chunk column (load_chunk(tid) * 8 elements), null for a zero row; the
// tiles kTma loads by TMA ignore them. fallback: any valid global address (the src operand of zero-filled copies).
// ring: 1024-aligned shared address of the STAGES ring. K % 8 == 0, K >= 8.
// kTma != None (moe_experts_wgmma_tma.cuh): thread 0 arms stage s's mbarrier (bars + 8 s, count 1) with the TMA
// bytes (the B tile, and with AB the A tile) and calls issue(stage address, k column, mbarrier), which issues the
// boxes; before computing tile kt every thread waits for its stage's phase (kt / STAGES) & 1.
template <class C, MoeWgTma kTma = MoeWgTma::None, class Issue = MoeWgNoTma>
__device__ __forceinline__ void moe_wg_mainloop(float (&acc)[C::kAcc], const uint16_t* const (&ap)[C::kAIters],
                                                const uint16_t* const (&bp)[C::kBIters], const uint16_t* fallback,
                                                int K, uint32_t ring, uint32_t bars = 0, Issue issue = {}) {
  constexpr uint32_t kTxBytes = kTma == MoeWgTma::None ? 0u
                                : static_cast<uint32_t>(C::kN) * 128 +
                                      (kTma == MoeWgTma::AB ? static_cast<uint32_t>(C::kABytes) : 0u);
  const int tid = threadIdx.x, wg = tid >> 7;
  const int ktiles = (K + C::BK - 1) / C::BK;

  auto load_tile = [&](int kt, int s) {
    const int kcol = kt * C::BK;
    const bool kin = C::k_in(kt, tid, K);
    const uint32_t stage = C::stage_addr(ring, s);
    if constexpr (kTma != MoeWgTma::AB) {
#pragma unroll
      for (int i = 0; i < C::kAIters; ++i) {
        const bool v = kin && ap[i] != nullptr;
        moe_cp_async16(C::a_dst(stage, tid, i), v ? ap[i] + kcol : fallback, v);
      }
    }
    if constexpr (kTma == MoeWgTma::None) {
#pragma unroll
      for (int i = 0; i < C::kBIters; ++i) {
        const bool v = kin && bp[i] != nullptr;
        moe_cp_async16(C::b_dst(stage, tid, i), v ? bp[i] + kcol : fallback, v);
      }
    } else if (tid == 0) {
      const uint32_t bar = bars + 8u * static_cast<uint32_t>(s);
      moe_mbar_arrive_expect_tx(bar, kTxBytes);
      issue(stage, kcol, bar);
    }
  };

  // Prologue: tiles 0 .. STAGES-2 (a group is committed even when empty: group q holds tile q throughout).
#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < ktiles) load_tile(s, s);
    moe_cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    // Committed: STAGES - 1 + kt groups; at most STAGES - 2 pending => this thread's copies of tile kt landed.
    moe_cp_async_wait<C::STAGES - 2>();
    moe_fence_proxy_async();
    if constexpr (kTma != MoeWgTma::None)  // the stage's TMA bytes of tile kt arrived
      moe_mbar_wait(bars + 8u * static_cast<uint32_t>(kt % C::STAGES), static_cast<uint32_t>((kt / C::STAGES) & 1));
    __syncthreads();  // every thread's copies of tile kt are written and fenced
    moe_wg_ktile<C>(acc, C::stage_addr(ring, kt % C::STAGES), wg);  // this warpgroup's group of tile kt - 1 retired
    __syncthreads();      // both warpgroups past that point: the slot of tile kt - 1 may be overwritten
    {
      const int nk = kt + C::STAGES - 1;  // slot nk % STAGES == (kt - 1) % STAGES
      if (nk < ktiles) load_tile(nk, nk % C::STAGES);
      moe_cp_async_commit();
    }
  }
  moe_wgmma_wait<0>();
  moe_wg_fence_acc(acc);
  moe_cp_async_wait<0>();  // only empty groups can be pending here
}

// ---- block setup -----------------------------------------------------------------------------------------------

// This block's tile of the grouped raster over an N of n_extent: its first row r0 and column n0; returns its expert
// (-1 past the last non-empty tile).
template <class C>
__device__ __forceinline__ int moe_wg_block_tile(int m_tiles, int n_extent, const int32_t* offsets, int e, int& r0,
                                                 int& n0) {
  int mt, nt;
  moe_wg_tile(static_cast<int>(blockIdx.x), m_tiles, (n_extent + C::BN - 1) / C::BN, mt, nt);
  r0 = mt * C::BM;
  n0 = nt * C::BN;
  return moe_expert_of_row(offsets, e, r0);
}

// s_slot[r] = sorted[r0 + r], then a CTA barrier (which also publishes anything set up before it).
template <class C>
__device__ __forceinline__ void moe_wg_load_slots(int* s_slot, const int32_t* sorted, int r0) {
  for (int r = threadIdx.x; r < C::BM; r += C::kThreads) s_slot[r] = sorted[r0 + r];
  __syncthreads();
}

template <class C>
__device__ __forceinline__ void moe_wg_zero(float (&acc)[C::kAcc]) {
#pragma unroll
  for (int v = 0; v < C::kAcc; ++v) acc[v] = 0.0f;
}

extern __shared__ __align__(128) uint8_t moe_wg_smem[];

// Ring start for the dynamic shared memory at shared address `base`: the next multiple of 1024 (the slack is part of
// kSmem), so every tile base is 1024-aligned in the address space the 128B swizzle pattern repeats on.
__host__ __device__ __forceinline__ uint32_t moe_wg_align_ring(uint32_t base) { return (base + 1023u) & ~1023u; }
__device__ __forceinline__ uint32_t moe_wg_ring() {
  return moe_wg_align_ring(static_cast<uint32_t>(__cvta_generic_to_shared(moe_wg_smem)));
}

// ---- epilogues ---------------------------------------------------------------------------------------------------
// tid: the thread's index in the two accumulator warpgroups (0..255); s_slot: the tile's slots.

// GEMM1: act[r0 + r, n] = bf16(act_fn(gate, up)) for the tile's real rows; bg / bu: the expert's f32 biases or null.
template <class C>
__device__ __forceinline__ void moe_wg_gemm1_epilogue(const float (&acc)[C::kAcc], int tid, const int* s_slot, int r0,
                                                      int n0, uint16_t* __restrict__ act, int n_slots, int inter,
                                                      const float* bg, const float* bu, int act_kind, float alpha,
                                                      float limit) {
  const bool plain = act_kind == 0 && bg == nullptr;  // the SIMT kernel's expressions, unchanged
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int r = C::acc_row(tid, hh);
    if (s_slot[r] >= n_slots) continue;  // padding row
    uint16_t* orow = act + static_cast<int64_t>(r0 + r) * inter;
#pragma unroll
    for (int i = 0; i < C::BN / 8; ++i) {  // gate column group i, up column group i + BN / 8: the same n
      const int n = n0 + C::acc_col(tid, i, 0);  // even; n < inter => n + 1 < inter (inter % 8 == 0)
      if (n >= inter) continue;
      uint32_t packed = 0;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float v = moe_gemm1_act(acc[C::acc_idx(i, hh, c)], acc[C::up_idx(i, hh, c)], plain, bg, bu, n + c,
                                      act_kind, alpha, limit);
        packed |= static_cast<uint32_t>(f32_to_bf16(v)) << (16 * c);
      }
      *reinterpret_cast<uint32_t*>(orow + n) = packed;  // 4-byte aligned: act base 256-aligned, inter and n even
    }
  }
}

// GEMM2: part[slot, n] = acc (+ bd[n]) for the tile's real rows, f32; bd: the expert's f32 bias or null.
template <class C>
__device__ __forceinline__ void moe_wg_gemm2_epilogue(const float (&acc)[C::kAcc], int tid, const int* s_slot, int n0,
                                                      float* __restrict__ part, int n_slots, int h, const float* bd) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int s = s_slot[C::acc_row(tid, hh)];
    if (s >= n_slots) continue;  // padding row
    float* orow = part + static_cast<int64_t>(s) * h;
#pragma unroll
    for (int i = 0; i < C::kN / 8; ++i) {
      const int n = n0 + C::acc_col(tid, i, 0);  // even; n < h => n + 1 < h (h % 8 == 0)
      if (n >= h) continue;
      float2 v = make_float2(acc[C::acc_idx(i, hh, 0)], acc[C::acc_idx(i, hh, 1)]);
      if (bd != nullptr) {
        v.x += bd[n];
        v.y += bd[n + 1];
      }
      *reinterpret_cast<float2*>(orow + n) = v;  // 8-byte aligned: part base 8-aligned (launcher), h and n even
    }
  }
}

// A per-expert f32 bias of table b (null: none).
__device__ __forceinline__ const float* moe_wg_bias(const void* const* b, int ex) {
  return b != nullptr ? static_cast<const float*>(b[ex]) : nullptr;
}

// The block of a GEMM1 kernel (moe_wg_gemm1_kernel; with kTma B moe_wg_gemm1_tma_kernel: the gate / up tiles from the
// tensor maps maps[ex] / maps[e + ex], boxes of [BN, 64]; maps unused otherwise).
template <class C, MoeWgTma kTma>
__device__ __forceinline__ void moe_wg_gemm1_block(const uint16_t* __restrict__ x, const int32_t* __restrict__ sorted,
                                                   const int32_t* __restrict__ offsets, const void* const* gate,
                                                   const void* const* up, const void* const* gate_bias,
                                                   const void* const* up_bias, const CUtensorMap* maps,
                                                   uint16_t* __restrict__ act, int n_slots, int k, int e, int h,
                                                   int inter, int act_kind, float alpha, float limit, int m_tiles) {
  static_assert(C::GATED, "GEMM1 stacks gate and up");
  static_assert(kTma != MoeWgTma::AB, "GEMM1's A rows are gathered: no TMA box");
  __shared__ int s_slot[C::BM];
  __shared__ __align__(8) uint64_t s_bars[kTma == MoeWgTma::None ? 1 : C::STAGES];
  int r0, n0;
  const int ex = moe_wg_block_tile<C>(m_tiles, inter, offsets, e, r0, n0);
  if (ex < 0) return;
  const uint16_t* w_gate = static_cast<const uint16_t*>(gate[ex]);
  const uint16_t* w_up = static_cast<const uint16_t*>(up[ex]);
  if (w_gate == nullptr || w_up == nullptr) return;  // absent: its slots are skipped by the combine
  const int tid = threadIdx.x;
  const CUtensorMap* gmap = maps + ex;
  const CUtensorMap* umap = maps + e + ex;
  uint32_t bars = 0;
  if constexpr (kTma != MoeWgTma::None) {
    if (tid == 0) {
      moe_tensormap_acquire(gmap);
      moe_tensormap_acquire(umap);
    }
    bars = moe_wg_tma_bars<C>(s_bars);
  }
  moe_wg_load_slots<C>(s_slot, sorted, r0);

  const uint16_t* ap[C::kAIters];
#pragma unroll
  for (int i = 0; i < C::kAIters; ++i) ap[i] = C::g1_a(x, s_slot[C::load_row(tid, i)], n_slots, k, h, tid);
  const uint16_t* bp[C::kBIters];  // null with kTma: B by TMA
#pragma unroll
  for (int i = 0; i < C::kBIters; ++i) bp[i] = kTma == MoeWgTma::None ? C::g1_b(w_gate, w_up, n0, inter, h, tid, i) : nullptr;

  float acc[C::kAcc];
  moe_wg_zero<C>(acc);
  if constexpr (kTma == MoeWgTma::None) {
    moe_wg_mainloop<C>(acc, ap, bp, x, h, moe_wg_ring());
  } else {
    moe_wg_mainloop<C, kTma>(acc, ap, bp, x, h, moe_wg_ring(), bars, [&](uint32_t stage, int kcol, uint32_t bar) {
      const uint32_t b = stage + static_cast<uint32_t>(C::kABytes);
      moe_tma_load_2d(b, gmap, kcol, n0, bar);                                         // gate rows n0 .. n0+BN-1
      moe_tma_load_2d(b + static_cast<uint32_t>(C::BN) * 128u, umap, kcol, n0, bar);  // up rows, the same n
    });
  }

  moe_wg_gemm1_epilogue<C>(acc, tid, s_slot, r0, n0, act, n_slots, inter, moe_wg_bias(gate_bias, ex),
                           moe_wg_bias(up_bias, ex), act_kind, alpha, limit);
}

// The block of a GEMM2 kernel (moe_wg_gemm2_kernel: A rows from act; with kTma AB moe_wg_gemm2_tma_kernel: the A tile
// from act_map (act [capacity, inter] in boxes of [BM, 64]: act rows r0 .. r0 + BM - 1 are contiguous; padding rows
// load whatever act holds there, which only reaches their own accumulator rows, never written) and the down tile from
// down_maps[ex], boxes of [BN, 64]).
template <class C, MoeWgTma kTma>
__device__ __forceinline__ void moe_wg_gemm2_block(const uint16_t* __restrict__ act, const CUtensorMap* act_map,
                                                   const int32_t* __restrict__ sorted,
                                                   const int32_t* __restrict__ offsets, const void* const* down,
                                                   const void* const* down_bias, const CUtensorMap* down_maps,
                                                   float* __restrict__ part, int n_slots, int e, int h, int inter,
                                                   int m_tiles) {
  static_assert(!C::GATED, "GEMM2 has one B matrix");
  static_assert(kTma != MoeWgTma::B, "GEMM2 by TMA loads both tiles");
  __shared__ int s_slot[C::BM];
  __shared__ __align__(8) uint64_t s_bars[kTma == MoeWgTma::None ? 1 : C::STAGES];
  int r0, n0;
  const int ex = moe_wg_block_tile<C>(m_tiles, h, offsets, e, r0, n0);
  if (ex < 0) return;
  const uint16_t* wd = static_cast<const uint16_t*>(down[ex]);
  if (wd == nullptr) return;
  const int tid = threadIdx.x;
  const CUtensorMap* dmap = down_maps + ex;
  uint32_t bars = 0;
  if constexpr (kTma != MoeWgTma::None) {
    if (tid == 0) moe_tensormap_acquire(dmap);
    bars = moe_wg_tma_bars<C>(s_bars);
  }
  moe_wg_load_slots<C>(s_slot, sorted, r0);

  const uint16_t* ap[C::kAIters] = {};  // null with kTma: A and B by TMA
  const uint16_t* bp[C::kBIters] = {};
  if constexpr (kTma == MoeWgTma::None) {
#pragma unroll
    for (int i = 0; i < C::kAIters; ++i) ap[i] = C::g2_a(act, s_slot[C::load_row(tid, i)], n_slots, r0, inter, tid, i);
#pragma unroll
    for (int i = 0; i < C::kBIters; ++i) bp[i] = C::g2_b(wd, n0, h, inter, tid, i);
  }

  float acc[C::kAcc];
  moe_wg_zero<C>(acc);
  if constexpr (kTma == MoeWgTma::None) {
    moe_wg_mainloop<C>(acc, ap, bp, wd, inter, moe_wg_ring());
  } else {
    moe_wg_mainloop<C, kTma>(acc, ap, bp, nullptr, inter, moe_wg_ring(), bars, [&](uint32_t stage, int kcol, uint32_t bar) {
      moe_tma_load_2d(stage, act_map, kcol, r0, bar);                                      // act rows r0 .. r0+BM-1
      moe_tma_load_2d(stage + static_cast<uint32_t>(C::kABytes), dmap, kcol, n0, bar);  // down rows n0 .. n0+BN-1
    });
  }

  moe_wg_gemm2_epilogue<C>(acc, tid, s_slot, n0, part, n_slots, h, moe_wg_bias(down_bias, ex));
}

// GEMM1 + SwiGLU. Arguments as moe_mma_gemm1_kernel (h % 8 == 0, inter % 8 == 0, x and the gate/up rows 16-byte
// aligned: host checks) plus m_tiles = capacity / BM. grid: m_tiles * ceil(inter / BN) (1D, moe_wg_tile), block
// C::kThreads, dynamic shared memory C::kSmem. act [capacity, inter] bf16: rows of real slots written.
template <class C>
static __global__ void __launch_bounds__(C::kThreads, 1)
    moe_wg_gemm1_kernel(const uint16_t* __restrict__ x, const int32_t* __restrict__ sorted,
                        const int32_t* __restrict__ offsets, const void* const* __restrict__ gate,
                        const void* const* __restrict__ up, const void* const* __restrict__ gate_bias,
                        const void* const* __restrict__ up_bias, uint16_t* __restrict__ act, int n_slots, int k,
                        int e, int h, int inter, int act_kind, float alpha, float limit, int m_tiles) {
#if MOE_WGMMA_ENABLED
  moe_wg_gemm1_block<C, MoeWgTma::None>(x, sorted, offsets, gate, up, gate_bias, up_bias, nullptr, act, n_slots, k, e,
                                        h, inter, act_kind, alpha, limit, m_tiles);
#else
  __trap();
#endif
}

// GEMM2. Arguments as moe_mma_gemm2_kernel (h % 8 == 0, inter % 8 == 0, down rows 16-byte aligned) plus m_tiles.
// grid: m_tiles * ceil(h / BN) (1D, moe_wg_tile), block C::kThreads, dynamic shared memory C::kSmem.
template <class C>
static __global__ void __launch_bounds__(C::kThreads, 1)
    moe_wg_gemm2_kernel(const uint16_t* __restrict__ act, const int32_t* __restrict__ sorted,
                        const int32_t* __restrict__ offsets, const void* const* __restrict__ down,
                        const void* const* __restrict__ down_bias, float* __restrict__ part, int n_slots, int e,
                        int h, int inter, int m_tiles) {
#if MOE_WGMMA_ENABLED
  moe_wg_gemm2_block<C, MoeWgTma::None>(act, nullptr, sorted, offsets, down, down_bias, nullptr, part, n_slots, e, h,
                                        inter, m_tiles);
#else
  __trap();
#endif
}

// The configurations the launcher instantiates (see the header comment).
using MoeWgG1 = MoeWgCfg<128, true, 4>;
using MoeWgG2 = MoeWgCfg<256, false, 4>;
static_assert(MoeWgG1::BM == kMoeWgBM && MoeWgG2::BM == kMoeWgBM, "align block of the wgmma path");

}  // namespace dev
}  // namespace moe
