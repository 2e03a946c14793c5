// moeExperts(stream, { x, topkIds, topkWeights, out | parts, t, h, inter, e, k, experts: { gate, up, down } }, cancel?)
//   -> Promise<tier>. x [t, h] bf16, topkIds [t, k] i32, topkWeights [t, k] f32, out [t, h] bf16;
//   or, instead of out (exactly one of the two), parts [t, k, h] f32: parts mode (cpu/moe_experts.h), the
//   unweighted output row of every (t, j) routed to a present expert, other rows untouched, topkWeights not read;
//   experts.gate / .up / .down: arrays of e entries, each a tensor arg (gate, up [inter, h] bf16; down [h, inter]
//   bf16) or null (expert absent: contributes zero). lib/ turns a stacked gateUp [2 * inter, h] into gate and up
//   args at offsets 0 and inter * h * 2 of the same memory.
//   Optional (gpt-oss): experts.gateBias / .upBias / .downBias, arrays of e entries (f32 [inter], [inter], [h], or
//   null: that expert has no biases; all three arrays or none); activation 0 silu (default) or 1 swiglu-oai with
//   alpha and limit (numbers). lib/ splits a stacked gateUpBias [2 * inter] like gateUp.
// The table becomes a host array of pointers here (CPU: used as is; CUDA: the launcher uploads it to the device
// on the stream before the kernels). Every expert tensor is leased by the op until it settles.
#include "cpu/moe_experts.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "moe_cuda.h"
#include "napi/cuda_error_slot.h"
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
    Napi::Object ex = arg_object(s.params.Get("experts"), "experts");
    // Biases: present when experts.gateBias is given (then all three arrays must be).
    const Napi::Value gbv = ex.Get("gateBias");
    const bool biases = !gbv.IsUndefined() && !gbv.IsNull();
    const int parts = biases ? 6 : 3;
    // gate | up | down [| gateBias | upBias | downBias], e pointers each
    auto table = std::make_shared<std::vector<const void*>>(static_cast<size_t>(parts * e), nullptr);
    const char* names[6] = {"gate", "up", "down", "gateBias", "upBias", "downBias"};
    const uint64_t wbytes = static_cast<uint64_t>(inter * h) * 2;
    const uint64_t pbytes[6] = {wbytes, wbytes, wbytes, static_cast<uint64_t>(inter) * 4, static_cast<uint64_t>(inter) * 4,
                                static_cast<uint64_t>(h) * 4};
    for (int p = 0; p < parts; ++p) {
      Napi::Value arr = ex.Get(names[p]);
      if (!arr.IsArray() || arr.As<Napi::Array>().Length() != static_cast<uint32_t>(e))
        throw_error(env, ErrorCode::InvalidArgument, std::string("moeExperts: experts.") + names[p] + " must be an array of " +
                                                         std::to_string(e) + " entries, received " + describe(arr));
      Napi::Array a = arr.As<Napi::Array>();
      for (uint32_t i = 0; i < static_cast<uint32_t>(e); ++i) {
        Napi::Value v = a.Get(i);
        if (v.IsNull() || v.IsUndefined()) continue;
        std::string what = std::string("experts.") + names[p] + "[" + std::to_string(i) + "]";
        TensorArg ta = placed(v, what, p < 3 ? DType::BF16 : DType::F32, pbytes[p]);
        (*table)[p * e + i] = ta.ptr;
      }
    }
    // Bias entries: all three or none per expert, none on an absent expert (also checked by the CPU kernel; the
    // CUDA launcher cannot report it as InvalidArgument).
    for (int64_t i = 0; biases && i < e; ++i) {
      const std::vector<const void*>& tb = *table;
      const int nb = (tb[3 * e + i] != nullptr) + (tb[4 * e + i] != nullptr) + (tb[5 * e + i] != nullptr);
      const int nw = (tb[i] != nullptr) + (tb[e + i] != nullptr) + (tb[2 * e + i] != nullptr);
      if ((nb != 0 && nb != 3) || (nb == 3 && nw != 3))
        throw_error(env, ErrorCode::InvalidArgument,
                    "moeExperts: expert " + std::to_string(i) + " must have gateBias, upBias and downBias all set (with its weights) or all null, received " +
                        std::to_string(nb) + " of 3 biases and " + std::to_string(nw) + " of 3 weights");
    }
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
    s.op->work = [g, isa, ran, table, slot](const ExecContext& ctx) {
      cpu::MoeExpertsArgs a = g;
      a.gate = table->data();
      a.up = table->data() + a.e;
      a.down = table->data() + 2 * a.e;
      if (table->size() == static_cast<size_t>(6 * a.e)) {
        a.gate_bias = table->data() + 3 * a.e;
        a.up_bias = table->data() + 4 * a.e;
        a.down_bias = table->data() + 5 * a.e;
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
