// convert(stream, { src, srcDtype, dst, dstDtype, n, isa? }, cancel?) -> Promise<tier>
// Element type conversion among f32, f16, bf16, rounding to nearest even.
#include "cpu/convert.h"

#include "moe_cuda.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value Convert(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "convert");
    DType st = s.dtype("srcDtype");
    DType dt = s.dtype("dstDtype");
    auto floaty = [](DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; };
    if (!floaty(st) || !floaty(dt))
      throw_error(env, ErrorCode::InvalidArgument, std::string("convert: dtypes must be f32, f16 or bf16, received ") +
                                                       dtype_name(st) + " -> " + dtype_name(dt));
    uint64_t n = static_cast<uint64_t>(s.size("n"));
    TensorArg src = read_tensor(*s.op, s.params.Get("src"), "src");
    TensorArg dst = read_tensor(*s.op, s.params.Get("dst"), "dst");
    check_placement(env, src, *s.stream, "convert", "src", false);
    check_placement(env, dst, *s.stream, "convert", "dst", false);
    check_aligned(env, src, st, "convert", "src");
    check_aligned(env, dst, dt, "convert", "dst");
    check_bytes(env, src, n * dtype_size(st), "convert", "src");
    check_bytes(env, dst, n * dtype_size(dt), "convert", "dst");
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    cpu::ConvertArgs a{src.ptr, st, dst.ptr, dt, static_cast<size_t>(n)};
    Isa isa = s.isa;
    s.op->work = [a, isa, ran](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::convert(a, isa, ctx.cancel));
        return;
      }
#if MOE_WITH_CUDA
      int err = moe_cuda_convert(ctx.device, a.src, static_cast<int>(a.src_dtype), a.dst,
                                 static_cast<int>(a.dst_dtype), a.n, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("kernel launch: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
