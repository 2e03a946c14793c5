// Greedy token kernel: out[r] = argmax of logits row r (f32), ties to the lower id, NaN never chosen, 0 for a row
// without a logit above -inf: cpu/argmax_rows.h's rule exactly. A max with lowest-index ties does not depend on the
// order of comparisons, so the block reduction gives the CPU's answer bit for bit.
#pragma once
#include <cstdint>

namespace moe::dev {

constexpr int kArgmaxThreads = 256;

// (v, i) ranks above (w, j): a larger value, or an equal one at a lower index. Index INT32_MAX: nothing yet.
__device__ __forceinline__ bool argmax_above(float v, int32_t i, float w, int32_t j) { return v > w || (v == w && i < j); }

// One block per row (grid-stride over rows); each thread walks its strided ids in increasing order keeping the
// first strict maximum, then a warp-shuffle and a shared-memory step combine the 256 candidates.
__global__ void argmax_rows_kernel(const float* __restrict__ logits, int64_t rows, int64_t vocab, int32_t* __restrict__ out) {
  __shared__ float sv[kArgmaxThreads / 32];
  __shared__ int32_t si[kArgmaxThreads / 32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* l = logits + r * vocab;  // [vocab]
    float bv = -__int_as_float(0x7f800000);  // -inf
    int32_t bi = INT32_MAX;
    for (int64_t c = threadIdx.x; c < vocab; c += blockDim.x) {
      const float x = __ldg(l + c);
      if (x > bv) {  // NaN and -inf never taken
        bv = x;
        bi = static_cast<int32_t>(c);
      }
    }
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_down_sync(0xffffffffu, bv, off);
      const int32_t oi = __shfl_down_sync(0xffffffffu, bi, off);
      if (argmax_above(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
      sv[warp] = bv;
      si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kArgmaxThreads / 32; ++w)
        if (argmax_above(sv[w], si[w], bv, bi)) {
          bv = sv[w];
          bi = si[w];
        }
      out[r] = bi == INT32_MAX ? 0 : bi;
    }
    __syncthreads();  // sv / si are reused by the next row
  }
}

}  // namespace moe::dev
