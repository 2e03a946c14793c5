// rmsNorm(stream, { x, xDtype, weight, wDtype, out, outDtype, add?, addDtype?, rows, d, eps, isa? }, cancel?)
//   -> Promise<tier>
// RMSNorm over rows of d with an optional fused residual add (cpu/rms_norm.h; CUDA: cuda/rms_norm.cu, compiled not
// verified): x [rows, d] f32|bf16 (f32 when add: x += add in place first), add [rows, d] f32|bf16, weight [d]
// f32|bf16, out [rows, d] f32|bf16 (may be x). eps finite >= 0.
#include "cpu/rms_norm.h"

#include <cmath>
#include <string>

#include "moe_cuda.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "rmsNorm");
    cpu::RmsNormArgs g{};
    g.x_dtype = s.dtype("xDtype");
    g.w_dtype = s.dtype("wDtype");
    g.out_dtype = s.dtype("outDtype");
    const int64_t rows = s.size("rows"), d = s.size("d");
    if (d > 0x7fffffff)
      throw_error(env, ErrorCode::InvalidArgument, "rmsNorm: d must be < 2^31, received " + std::to_string(d));
    g.rows = static_cast<size_t>(rows);
    g.d = static_cast<size_t>(d);
    const double eps = s.number("eps");
    if (!(eps >= 0 && eps <= 3.4028234663852886e38))
      throw_error(env, ErrorCode::InvalidArgument, "rmsNorm: eps must be finite and >= 0, received " + std::to_string(eps));
    g.eps = static_cast<float>(eps);
    Napi::Value av = s.params.Get("add");
    const bool has_add = !av.IsUndefined() && !av.IsNull();
    if (has_add) g.add_dtype = s.dtype("addDtype");
    auto f32_or_bf16 = [](DType t) { return t == DType::F32 || t == DType::BF16; };
    for (auto [name, t] : {std::pair<const char*, DType>{"xDtype", g.x_dtype}, {"wDtype", g.w_dtype},
                           {"outDtype", g.out_dtype}, {"addDtype", has_add ? g.add_dtype : DType::F32}}) {
      if (!f32_or_bf16(t))
        throw_error(env, ErrorCode::InvalidArgument, std::string("rmsNorm: ") + name + " must be f32 or bf16, received " +
                                                         dtype_name(t));
    }
    if (has_add && g.x_dtype != DType::F32)
      throw_error(env, ErrorCode::InvalidArgument,
                  std::string("rmsNorm: x must be f32 when add is given (updated in place), received ") + dtype_name(g.x_dtype));

    const uint64_t elems = static_cast<uint64_t>(rows) * static_cast<uint64_t>(d);
    // (elements -> bytes)
    auto tensor = [&](const char* key, DType dt, uint64_t n) { return s.tensor(key, dt, n * dtype_size(dt)); };
    g.x = tensor("x", g.x_dtype, elems).ptr;
    g.weight = tensor("weight", g.w_dtype, static_cast<uint64_t>(d)).ptr;
    g.out = tensor("out", g.out_dtype, elems).ptr;
    if (has_add) g.add = tensor("add", g.add_dtype, elems).ptr;

    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    Isa isa = s.isa;
    s.op->work = [g, isa, ran](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::rms_norm(g, isa, ctx.cancel));
        return;
      }
#if MOE_WITH_CUDA
      int err = moe_cuda_rms_norm(ctx.device, g.x, static_cast<int>(g.x_dtype), g.add, static_cast<int>(g.add_dtype),
                                  g.weight, static_cast<int>(g.w_dtype), g.out, static_cast<int>(g.out_dtype),
                                  static_cast<int64_t>(g.rows), static_cast<int64_t>(g.d), g.eps, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("kernel launch: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
