// rope(stream, { q?, k?, positions, invFreq, dtype, tokens, qHeads, kvHeads, headDim, rotaryDim,
//   attentionScaling, isa? }, cancel?) -> Promise<tier>
// Rotary embedding in place (cpu/rope.h; CUDA: cuda/rope.cu, compiled not verified): q [tokens, qHeads, headDim],
// k [tokens, kvHeads, headDim] dtype f32|bf16 (either absent with 0 heads), positions [tokens] i32, invFreq
// [rotaryDim / 2] f32. Positions and invFreq are checked when the op runs on the CPU (they may be written by
// earlier ops on the stream); a bad value rejects with MOE_INVALID_ARGUMENT.
#include "cpu/rope.h"

#include <cmath>
#include <string>

#include "moe_cuda.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value Rope(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "rope");
    cpu::RopeArgs g{};
    g.dtype = s.dtype("dtype");
    if (g.dtype != DType::F32 && g.dtype != DType::BF16)
      throw_error(env, ErrorCode::InvalidArgument, std::string("rope: dtype must be f32 or bf16, received ") + dtype_name(g.dtype));
    g.tokens = s.size("tokens");
    g.q_heads = s.size("qHeads");
    g.kv_heads = s.size("kvHeads");
    g.head_dim = s.size("headDim");
    g.rotary_dim = s.size("rotaryDim");
    g.attention_scaling = static_cast<float>(s.number("attentionScaling"));
    if (g.tokens > 0x7fffffff || g.q_heads > (1 << 16) || g.kv_heads > (1 << 16) || g.head_dim < 2 || g.head_dim > 1024 ||
        g.rotary_dim < 2 || g.rotary_dim % 2 != 0 || g.rotary_dim > g.head_dim)
      throw_error(env, ErrorCode::InvalidArgument,
                  "rope: need tokens < 2^31, heads <= 65536, 2 <= headDim <= 1024, rotaryDim even in [2, headDim]; received headDim=" +
                      std::to_string(g.head_dim) + " rotaryDim=" + std::to_string(g.rotary_dim));
    const uint64_t es = dtype_size(g.dtype);
    const uint64_t row = static_cast<uint64_t>(g.head_dim) * es;
    if (g.q_heads > 0) g.q = s.tensor("q", g.dtype, static_cast<uint64_t>(g.tokens) * g.q_heads * row).ptr;
    if (g.kv_heads > 0) g.k = s.tensor("k", g.dtype, static_cast<uint64_t>(g.tokens) * g.kv_heads * row).ptr;
    g.positions = reinterpret_cast<const int32_t*>(s.tensor("positions", DType::I32, static_cast<uint64_t>(g.tokens) * 4).ptr);
    g.inv_freq = reinterpret_cast<const float*>(s.tensor("invFreq", DType::F32, static_cast<uint64_t>(g.rotary_dim / 2) * 4).ptr);
    if (!std::isfinite(g.attention_scaling)) throw_error(env, ErrorCode::InvalidArgument, "rope: attentionScaling must be finite");

    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    Isa isa = s.isa;
    s.op->work = [g, isa, ran](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::rope(g, isa, ctx.cancel));
        return;
      }
#if MOE_WITH_CUDA
      int err = moe_cuda_rope(ctx.device, g.q, g.k, g.positions, g.inv_freq, static_cast<int>(g.dtype), g.tokens, g.q_heads,
                              g.kv_heads, g.head_dim, g.rotary_dim, g.attention_scaling, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("kernel launch: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
