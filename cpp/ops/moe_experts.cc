// moeExperts(stream, { x, topkIds, topkWeights, out | parts, t, h, inter, e, k, experts }, cancel?)
//   -> Promise<tier>. x [t, h] bf16, topkIds [t, k] i32, topkWeights [t, k] f32, out [t, h] bf16;
//   or, instead of out (exactly one of the two), parts [t, k, h] f32: parts mode (cpu/moe_experts.h), the
//   unweighted output row of every (t, j) routed to a present expert, other rows untouched, topkWeights not read;
//   experts: a native ExpertTable (cpp/napi/expert_table.h) of this backend (and device) with e experts of
//   gate, up [inter, h] bf16 and down [h, inter] bf16, optional f32 biases per expert (gpt-oss); an absent expert
//   contributes zero. activation 0 silu (default) or 1 swiglu-oai with alpha and limit (numbers).
// The table's entries were validated when they were set; the op takes the table's current snapshot (host arrays
// of pointers: CPU uses them as is, the CUDA launcher uploads them to the device on the stream before the
// kernels), leases every allocation the snapshot points into and holds the snapshot until it settles.
#include "cpu/moe_experts.h"

#include <cmath>
#include <memory>
#include <string>

#include "moe_cuda.h"
#include "napi/cuda_error_slot.h"
#include "napi/expert_table.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value MoeExperts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "moeExperts");
    const char* op = "moeExperts";
    int64_t t = s.size("t"), h = s.size("h"),
            inter = s.size("inter"), e = s.size("e"),
            k = s.size("k");
    if (h < 1 || inter < 1 || e < 1 || k < 1)
      throw_error(env, ErrorCode::InvalidArgument, "moeExperts: h, inter, e and k must be >= 1");
    auto placed = [&](const Napi::Value& v, const std::string& what, DType dt, uint64_t bytes) {
      TensorArg a = read_tensor(*s.op, v, what.c_str());
      check_placement(env, a, *s.stream, op, what.c_str(), false);
      check_aligned(env, a, dt, op, what.c_str());
      check_bytes(env, a, bytes, op, what.c_str());
      return a;
    };
    TensorArg x = placed(s.params.Get("x"), "x", DType::BF16, static_cast<uint64_t>(t * h) * 2);
    TensorArg ids = placed(s.params.Get("topkIds"), "topkIds", DType::I32, static_cast<uint64_t>(t * k) * 4);
    TensorArg w = placed(s.params.Get("topkWeights"), "topkWeights", DType::F32, static_cast<uint64_t>(t * k) * 4);
    const Napi::Value outv = s.params.Get("out"), partsv = s.params.Get("parts");
    const bool has_out = !outv.IsUndefined() && !outv.IsNull(), parts_mode = !partsv.IsUndefined() && !partsv.IsNull();
    if (has_out == parts_mode)
      throw_error(env, ErrorCode::InvalidArgument, std::string("moeExperts: exactly one of out and parts must be given, received ") +
                                                       (has_out ? "both" : "neither"));
    TensorArg out = parts_mode ? placed(partsv, "parts", DType::F32, static_cast<uint64_t>(t * k * h) * 4)
                               : placed(outv, "out", DType::BF16, static_cast<uint64_t>(t * h) * 2);
    // The persistent table (cpp/napi/expert_table.h): validated at set; here only its snapshot is taken (shared
    // while the table is unchanged), leased and checked per distinct allocation, and held until the op settles.
    const Napi::Value exv = s.params.Get("experts");
    ExpertTableWrap* tw = ExpertTableWrap::from(exv);
    if (!tw) throw_error(env, ErrorCode::InvalidArgument, "moeExperts: experts must be an ExpertTable, received " + describe(exv));
    if (tw->backend() != s.stream->backend() || (s.cuda() && tw->device() != s.stream->device()))
      throw_error(env, ErrorCode::InvalidArgument,
                  std::string("moeExperts: experts is a table for ") + (tw->backend() == BackendKind::Cuda ? "cuda:" + std::to_string(tw->device()) : std::string("cpu")) +
                      ", but the op runs on " + (s.cuda() ? "cuda:" + std::to_string(s.stream->device()) : std::string("cpu")));
    if (tw->experts() != e || tw->hidden() != h || tw->inter() != inter)
      throw_error(env, ErrorCode::InvalidArgument,
                  "moeExperts: experts is a table of " + std::to_string(tw->experts()) + " experts of [" + std::to_string(tw->inter()) + ", " +
                      std::to_string(tw->hidden()) + "], but e, inter, h are " + std::to_string(e) + ", " + std::to_string(inter) + ", " +
                      std::to_string(h));
    std::shared_ptr<const ExpertTableSnapshot> table = tw->snapshot();
    table->lease_into(env, *s.op, op);
    s.op->hold(std::const_pointer_cast<ExpertTableSnapshot>(table));
    const void* const* ptrs = table->ptrs.data();  // valid while the op holds the snapshot (until it settles)
    const bool biases = table->biases;
    // activation: 0 silu (default), 1 swiglu-oai (alpha, limit); the kernels validate the values again.
    const Napi::Value actv = s.params.Get("activation");
    const double act = actv.IsUndefined() ? 0.0 : s.number("activation");
    if (act != 0.0 && act != 1.0)
      throw_error(env, ErrorCode::InvalidArgument, "moeExperts: activation must be 0 (silu) or 1 (swiglu-oai), received " + describe(actv));
    float alpha = 1.702f, limit = 7.0f;
    if (act == 1.0) {
      alpha = static_cast<float>(s.number("alpha"));
      limit = static_cast<float>(s.number("limit"));
      if (!std::isfinite(alpha) || !std::isfinite(limit) || !(limit > 0.0f))
        throw_error(env, ErrorCode::InvalidArgument, "moeExperts: swiglu-oai alpha must be finite and limit finite and > 0, received " +
                                                         std::to_string(alpha) + ", " + std::to_string(limit));
    }
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    cpu::MoeExpertsArgs g{reinterpret_cast<const uint16_t*>(x.ptr), reinterpret_cast<const int32_t*>(ids.ptr),
                          reinterpret_cast<const float*>(w.ptr), nullptr, nullptr, nullptr,
                          parts_mode ? nullptr : reinterpret_cast<uint16_t*>(out.ptr), t, h, inter, e, k};
    g.parts = parts_mode ? reinterpret_cast<float*>(out.ptr) : nullptr;
    g.packed = tw->packed();  // only CPU tables are packed (checked when the table was made)
    g.activation = act == 1.0 ? cpu::MoeActivation::SwigluOai : cpu::MoeActivation::Silu;
    g.alpha = alpha;
    g.limit = limit;
    Isa isa = s.isa;
    // CUDA: ids outside [-1, e) are flagged by the align kernel in an error slot (mapped pinned host memory) and
    // read here when the op completes (the stream's host callback): InvalidArgumentError like the CPU, no host sync.
    auto slot = std::make_shared<CudaErrorSlot>();
    AsyncOp* raw = s.op.get();  // alive while on_complete runs (complete() calls it before settling)
    s.op->on_complete = [raw, slot, e] {
      std::string msg = cuda_error_slot_finish(*slot, "topkIds", e);
      if (!msg.empty()) raw->fail(ErrorCode::InvalidArgument, msg);
    };
    // The work function sees only the raw pointer arrays: the snapshot (which holds napi references) is released
    // by the op's settle() on the JS thread.
    s.op->work = [g, isa, ran, ptrs, biases, slot](const ExecContext& ctx) {
      cpu::MoeExpertsArgs a = g;
      a.gate = ptrs;
      a.up = ptrs + a.e;
      a.down = ptrs + 2 * a.e;
      if (biases) {
        a.gate_bias = ptrs + 3 * a.e;
        a.up_bias = ptrs + 4 * a.e;
        a.down_bias = ptrs + 5 * a.e;
      }
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::moe_experts(a, isa, ctx.cancel));
        return;
      }
#if MOE_WITH_CUDA
      slot->words = cuda_error_slot_acquire();
      int err = a.parts != nullptr
                    ? moe_cuda_moe_experts_parts(ctx.device, a.x, a.topk_ids, a.gate, a.up, a.down, a.gate_bias,
                                                 a.up_bias, a.down_bias, a.parts, a.t, a.h, a.inter, a.e, a.k,
                                                 static_cast<int>(a.activation), a.alpha, a.limit, slot->words,
                                                 ctx.cuda_stream)
                    : moe_cuda_moe_experts_ex(ctx.device, a.x, a.topk_ids, a.topk_weights, a.gate, a.up, a.down,
                                              a.gate_bias, a.up_bias, a.down_bias, a.out, a.t, a.h, a.inter, a.e, a.k,
                                              static_cast<int>(a.activation), a.alpha, a.limit, slot->words,
                                              ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("moeExperts launch: ") + moe_cuda_error_name(err));
      slot->launched = true;
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
