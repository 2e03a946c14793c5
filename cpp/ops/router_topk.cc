// routerTopK(stream, { logits, bias?, topkIds, topkWeights, t, e, k, scoring, renormalize }, cancel?) -> Promise<tier>
//   logits [t, e] f32, bias [e] f32 (optional), topkIds [t, k] i32, topkWeights [t, k] f32; scoring 0 softmax, 1 sigmoid
// moeAlign(stream, { topkIds, counts, offsets, sortedTokenIds, t, k, e, blockSize }, cancel?) -> Promise<tier>
//   topkIds [t, k] i32, counts [e] i32, offsets [e + 1] i32, sortedTokenIds [capacity] i32 (capacity from its bytes)
// Kernels: cpu/router_topk.{h,cc}, cuda/router_topk.{cuh,cu}.
#include "cpu/router_topk.h"

#include <string>

#include "moe_cuda.h"
#include "napi/cuda_error_slot.h"
#include "napi/op_args.h"

namespace moe::js {

namespace {

TensorArg placed(OpStart& s, const char* op, const char* what, DType t) {
  TensorArg a = read_tensor(*s.op, s.params.Get(what), what);
  check_placement(s.params.Env(), a, *s.stream, op, what, false);
  check_aligned(s.params.Env(), a, t, op, what);
  return a;
}

}  // namespace

Napi::Value RouterTopK(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "routerTopK");
    const char* op = "routerTopK";
    int64_t t = s.size("t"), e = s.size("e"), k = s.size("k");
    if (e < 1 || k < 1 || k > e)
      throw_error(env, ErrorCode::InvalidArgument, "routerTopK: need 1 <= k <= e, received k=" + std::to_string(k) + " e=" + std::to_string(e));
    int32_t scoring = arg_int(s.params.Get("scoring"), "scoring", 0, 1);
    bool renorm = s.params.Get("renormalize").ToBoolean().Value();
    TensorArg logits = placed(s, op, "logits", DType::F32);
    TensorArg ids = placed(s, op, "topkIds", DType::I32);
    TensorArg w = placed(s, op, "topkWeights", DType::F32);
    check_bytes(env, logits, static_cast<uint64_t>(t * e) * 4, op, "logits");
    check_bytes(env, ids, static_cast<uint64_t>(t * k) * 4, op, "topkIds");
    check_bytes(env, w, static_cast<uint64_t>(t * k) * 4, op, "topkWeights");
    const float* bias = nullptr;
    if (!s.params.Get("bias").IsUndefined() && !s.params.Get("bias").IsNull()) {
      TensorArg b = placed(s, op, "bias", DType::F32);
      check_bytes(env, b, static_cast<uint64_t>(e) * 4, op, "bias");
      bias = reinterpret_cast<const float*>(b.ptr);
    }
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    cpu::RouterTopKArgs g{reinterpret_cast<const float*>(logits.ptr), bias, reinterpret_cast<int32_t*>(ids.ptr),
                          reinterpret_cast<float*>(w.ptr), t, e, k, static_cast<cpu::Scoring>(scoring), renorm};
    s.op->work = [g, ran](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::router_topk(g, ctx.cancel));
        return;
      }
#if MOE_WITH_CUDA
      int err = moe_cuda_router_topk(ctx.device, g.logits, g.bias, g.topk_ids, g.topk_weights, g.t, g.e, g.k,
                                     static_cast<int>(g.scoring), g.renormalize ? 1 : 0, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("routerTopK launch: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

Napi::Value MoeAlign(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "moeAlign");
    const char* op = "moeAlign";
    int64_t t = s.size("t"), k = s.size("k"),
            e = s.size("e"), block = s.size("blockSize");
    if (k < 1 || e < 1 || block < 1)
      throw_error(env, ErrorCode::InvalidArgument, "moeAlign: k, e and blockSize must be >= 1");
    TensorArg ids = placed(s, op, "topkIds", DType::I32);
    TensorArg counts = placed(s, op, "counts", DType::I32);
    TensorArg offsets = placed(s, op, "offsets", DType::I32);
    TensorArg sorted = placed(s, op, "sortedTokenIds", DType::I32);
    check_bytes(env, ids, static_cast<uint64_t>(t * k) * 4, op, "topkIds");
    check_bytes(env, counts, static_cast<uint64_t>(e) * 4, op, "counts");
    check_bytes(env, offsets, static_cast<uint64_t>(e + 1) * 4, op, "offsets");
    const int64_t need = cpu::moe_align_capacity(t, k, e, block);
    const int64_t capacity = static_cast<int64_t>(sorted.bytes / 4);
    if (capacity < need || need > INT32_MAX)
      throw_error(env, ErrorCode::InvalidArgument, "moeAlign: sortedTokenIds must hold at least " + std::to_string(need) +
                                                       " i32 (tokens * k + experts * (blockSize - 1)), received " + std::to_string(capacity));
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    cpu::MoeAlignArgs g{reinterpret_cast<const int32_t*>(ids.ptr), reinterpret_cast<int32_t*>(counts.ptr),
                        reinterpret_cast<int32_t*>(offsets.ptr), reinterpret_cast<int32_t*>(sorted.ptr), t, k, e, block, capacity};
    // CUDA: ids outside [-1, e) are flagged by the kernel in an error slot, read when the op completes.
    auto slot = std::make_shared<CudaErrorSlot>();
    s.op->work = [g, ran, slot](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::moe_align(g));
        return;
      }
#if MOE_WITH_CUDA
      slot->words = cuda_error_slot_acquire();
      int err = moe_cuda_moe_align(ctx.device, g.topk_ids, g.counts, g.offsets, g.sorted_token_ids, g.t, g.k, g.e,
                                   g.block, g.capacity, slot->words, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("moeAlign launch: ") + moe_cuda_error_name(err));
      slot->launched = true;
#endif
    };
    AsyncOp* raw = s.op.get();  // alive while on_complete runs (complete() calls it before settling)
    const int64_t e_ = e;
    s.op->on_complete = [raw, slot, e_] {
      std::string msg = cuda_error_slot_finish(*slot, "topkIds", e_);
      if (!msg.empty()) raw->fail(ErrorCode::InvalidArgument, msg);
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
