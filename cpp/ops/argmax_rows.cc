// argmaxRows(stream, { logits, out, rows, vocab }, cancel?) -> Promise<tier>
// Greedy token of every row (cpu/argmax_rows.h; on a CUDA stream cuda/argmax_rows.cuh, the same rule): logits
// [rows, vocab] f32 -> out [rows] i32, on the stream's memory (device tensors on CUDA).
#include "cpu/argmax_rows.h"

#include <memory>
#include <string>

#include "moe_cuda.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value ArgmaxRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "argmaxRows");
    const int64_t rows = s.size("rows"), vocab = s.size("vocab");
    if (vocab < 1 || vocab > 0x7ffffffe)
      throw_error(env, ErrorCode::InvalidArgument, "argmaxRows: vocab must be in [1, 2^31 - 1), received " + std::to_string(vocab));
    const auto* logits = reinterpret_cast<const float*>(s.tensor("logits", DType::F32, static_cast<uint64_t>(rows) * vocab * 4).ptr);
    auto* out = reinterpret_cast<int32_t*>(s.tensor("out", DType::I32, static_cast<uint64_t>(rows) * 4).ptr);
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    const Isa isa = s.isa;
    s.op->work = [logits, out, rows, vocab, ran, isa](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        if (!cpu::argmax_rows(logits, rows, vocab, out, ctx.cancel, isa)) moe::throw_error(ErrorCode::Cancelled, "argmaxRows: cancelled");
        *ran = static_cast<int>(vector_tier(isa));
        return;
      }
#if MOE_WITH_CUDA
      int err = moe_cuda_argmax_rows(ctx.device, logits, rows, vocab, out, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("kernel launch: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
