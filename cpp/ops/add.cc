// add(stream, { a, b, out, dtype, n, bLen?, isa? }, cancel?) -> Promise<tier>
// out = a + b elementwise; f32, f16 or bf16, computed in f32. out may be a or b. bLen (0 / absent / n: b has n
// elements) 0 < bLen < n: b [bLen] is added to every row of bLen elements of a (n a multiple of bLen; out may be a).
#include "cpu/add.h"

#include "moe_cuda.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "add");
    DType t = s.dtype("dtype");
    if (t != DType::F32 && t != DType::F16 && t != DType::BF16)
      throw_error(env, ErrorCode::InvalidArgument, std::string("add: dtype must be f32, f16 or bf16, received ") +
                                                       dtype_name(t));
    uint64_t n = static_cast<uint64_t>(s.size("n"));
    uint64_t b_len = static_cast<uint64_t>(s.size_or("bLen", 0));
    if (b_len == n) b_len = 0;
    if (b_len != 0 && n % b_len != 0)
      throw_error(env, ErrorCode::InvalidArgument, "add: n (" + std::to_string(n) + ") must be a multiple of bLen (" +
                                                       std::to_string(b_len) + ")");
    TensorArg a = read_tensor(*s.op, s.params.Get("a"), "a");
    TensorArg b = read_tensor(*s.op, s.params.Get("b"), "b");
    TensorArg out = read_tensor(*s.op, s.params.Get("out"), "out");
    for (auto* p : {&a, &b, &out}) {
      const char* w = p == &a ? "a" : p == &b ? "b" : "out";
      check_placement(env, *p, *s.stream, "add", w, false);
      check_aligned(env, *p, t, "add", w);
      check_bytes(env, *p, (p == &b && b_len != 0 ? b_len : n) * dtype_size(t), "add", w);
    }
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    cpu::AddArgs args{a.ptr, b.ptr, out.ptr, t, static_cast<size_t>(n), static_cast<size_t>(b_len)};
    Isa isa = s.isa;
    s.op->work = [args, isa, ran](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::add(args, isa, ctx.cancel));
        return;
      }
#if MOE_WITH_CUDA
      int err = args.b_len == 0 ? moe_cuda_add(ctx.device, args.a, args.b, args.out, static_cast<int>(args.dtype),
                                               args.n, ctx.cuda_stream)
                                : moe_cuda_add_bcast(ctx.device, args.a, args.b, args.out, static_cast<int>(args.dtype),
                                                     args.n, args.b_len, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("kernel launch: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
