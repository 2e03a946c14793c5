// Kernel of moe_cuda_rope: HF "rotate_half" rotary embedding in place (cpp/cpu/rope.h has the formula). One block
// per token; its threads stride over (head, i) pairs of q then k, i in [0, rotary_dim / 2). The angle and its
// cos / sin are computed in double (as the CPU tiers do), folded with the scaling and rounded to f32; the
// rotation is f32 (__fmul_rn / __fadd_rn: no contraction), bf16 rounded to nearest even like dtype.h.
// Compiled, not verified on a GPU (none on the development machine).
#pragma once
#include <cstdint>

#include "dtype.cuh"

namespace moe {
namespace dev {

constexpr int kRopeThreads = 128;

// q [tokens, q_heads, head_dim] D, k [tokens, kv_heads, head_dim] D (either may be null with 0 heads),
// positions [tokens] i32, inv_freq [rotary_dim / 2] f32. grid.x = tokens.
template <int D>
__global__ void __launch_bounds__(kRopeThreads)
    rope_kernel(typename Elem<D>::T* q, typename Elem<D>::T* k, const int32_t* positions, const float* inv_freq,
                int q_heads, int kv_heads, int head_dim, int half, float attention_scaling) {
  const int64_t t = blockIdx.x;
  const double pos = static_cast<double>(positions[t]);
  const int per_head = half;
  const int total = (q_heads + kv_heads) * per_head;
  for (int w = threadIdx.x; w < total; w += blockDim.x) {
    const int h = w / per_head, i = w % per_head;
    typename Elem<D>::T* row = h < q_heads ? q + (t * q_heads + h) * head_dim : k + (t * kv_heads + (h - q_heads)) * head_dim;
    double sd, cd;
    sincos(pos * static_cast<double>(inv_freq[i]), &sd, &cd);
    const float c = static_cast<float>(cd * attention_scaling), s = static_cast<float>(sd * attention_scaling);
    const float x1 = Elem<D>::load(row[i]), x2 = Elem<D>::load(row[i + half]);
    row[i] = Elem<D>::store(__fadd_rn(__fmul_rn(x1, c), -__fmul_rn(x2, s)));
    row[i + half] = Elem<D>::store(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
  }
}

}  // namespace dev
}  // namespace moe
