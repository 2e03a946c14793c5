// moeCombine(stream, { parts, topkIds, topkWeights, out, t, h, k }, cancel?) -> Promise<tier>
//   parts [t, k, h] f32, topkIds [t, k] i32, topkWeights [t, k] f32, out [t, h] bf16 (fully written):
//   out[t] = bf16(sum over j in order of w[t, j] * parts[t, j]) over ids >= 0 (-1 skipped), f32. The combine of
//   moeExperts' fused path (cpu/moe_combine.h; CUDA: moe_cuda_moe_combine, the kernel the fused launcher ends with),
//   so moeExperts(out) == moeCombine(parts filled chunk by chunk by moeExperts(parts)), bitwise. Ids < -1 reject with
//   InvalidArgument (CUDA: flagged by the kernel in an error slot, read when the op completes, no host sync).
#include "cpu/moe_combine.h"

#include <memory>
#include <string>

#include "moe_cuda.h"
#include "napi/cuda_error_slot.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value MoeCombine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "moeCombine");
    const char* op = "moeCombine";
    const int64_t t = s.size("t"), h = s.size("h"), k = s.size("k");
    if (h < 1 || k < 1) throw_error(env, ErrorCode::InvalidArgument, "moeCombine: h and k must be >= 1");
    auto placed = [&](const char* what, DType dt, uint64_t bytes) {
      TensorArg a = read_tensor(*s.op, s.params.Get(what), what);
      check_placement(env, a, *s.stream, op, what, false);
      check_aligned(env, a, dt, op, what);
      check_bytes(env, a, bytes, op, what);
      return a;
    };
    TensorArg parts = placed("parts", DType::F32, static_cast<uint64_t>(t * k * h) * 4);
    TensorArg ids = placed("topkIds", DType::I32, static_cast<uint64_t>(t * k) * 4);
    TensorArg w = placed("topkWeights", DType::F32, static_cast<uint64_t>(t * k) * 4);
    TensorArg out = placed("out", DType::BF16, static_cast<uint64_t>(t * h) * 2);
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    const cpu::MoeCombineArgs g{reinterpret_cast<const float*>(parts.ptr), reinterpret_cast<const int32_t*>(ids.ptr),
                                reinterpret_cast<const float*>(w.ptr), reinterpret_cast<uint16_t*>(out.ptr), t, h, k};
    Isa isa = s.isa;
    // CUDA: ids < -1 are flagged by the kernel in an error slot (mapped pinned host memory) and read here when the
    // op completes (the stream's host callback): InvalidArgumentError like the CPU, no host sync.
    auto slot = std::make_shared<CudaErrorSlot>();
    AsyncOp* raw = s.op.get();  // alive while on_complete runs (complete() calls it before settling)
    s.op->on_complete = [raw, slot] {
      std::string msg = cuda_error_slot_finish(*slot, "topkIds", -1);
      if (!msg.empty()) raw->fail(ErrorCode::InvalidArgument, "moeCombine: " + msg);
    };
    s.op->work = [g, isa, ran, slot](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::moe_combine(g, isa, ctx.cancel));
        return;
      }
#if MOE_WITH_CUDA
      slot->words = cuda_error_slot_acquire();
      int err = moe_cuda_moe_combine(ctx.device, g.parts, g.topk_ids, g.topk_weights, nullptr, 0, g.out, g.t, g.h, g.k,
                                     slot->words, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("moeCombine launch: ") + moe_cuda_error_name(err));
      slot->launched = true;
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
