// packWeights(stream, { w, n, k, out }, cancel?) -> Promise<void>
// out <- w [n, k] bf16 in the panel64 layout (cpu/pack_weights.h): the weights of gemm's bPacked form on the CPU
// backend. A CPU-stream op: packed weights are a CPU-kernel layout (the CUDA kernels read nn.Linear rows).
#include "cpu/pack_weights.h"

#include <string>

#include "napi/op_args.h"

namespace moe::js {

Napi::Value PackWeights(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "packWeights");
    if (s.cuda())
      throw_error(env, ErrorCode::InvalidArgument, "packWeights: packed weights are a CPU-backend layout, received a cuda stream");
    const int64_t n = s.size("n"), k = s.size("k");
    if (n < 1 || k < 1)
      throw_error(env, ErrorCode::InvalidArgument,
                  "packWeights: n and k must be >= 1, received n=" + std::to_string(n) + " k=" + std::to_string(k));
    TensorArg w = read_tensor(*s.op, s.params.Get("w"), "w");
    TensorArg out = read_tensor(*s.op, s.params.Get("out"), "out");
    check_placement(env, w, *s.stream, "packWeights", "w", false);
    check_placement(env, out, *s.stream, "packWeights", "out", false);
    check_aligned(env, w, DType::BF16, "packWeights", "w");
    check_aligned(env, out, DType::BF16, "packWeights", "out");
    check_bytes(env, w, static_cast<uint64_t>(n) * static_cast<uint64_t>(k) * 2, "packWeights", "w");
    check_bytes(env, out, static_cast<uint64_t>(cpu::packed_weights_numel(n, k)) * 2, "packWeights", "out");
    const uint16_t* src = reinterpret_cast<const uint16_t*>(w.ptr);
    uint16_t* dst = reinterpret_cast<uint16_t*>(out.ptr);
    const Isa isa = s.isa;
    s.op->work = [src, dst, n, k, isa](const ExecContext& ctx) { cpu::pack_weights(src, n, k, k, dst, ctx.cancel, isa); };
    return submit_op(s);
  });
}

}  // namespace moe::js
