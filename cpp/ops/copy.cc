// copy(stream, { src, dst }, cancel?) -> Promise<tier>
// Byte copy between any two memories the stream can reach: threaded memcpy on CPU streams, cudaMemcpyAsync
// (any direction, UVA) on CUDA streams. src and dst hold the same number of bytes and must not overlap.
#include "cpu/copy.h"

#include "moe_cuda.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value Copy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "copy");
    TensorArg src = read_tensor(*s.op, s.params.Get("src"), "src");
    TensorArg dst = read_tensor(*s.op, s.params.Get("dst"), "dst");
    check_placement(env, src, *s.stream, "copy", "src", true);
    check_placement(env, dst, *s.stream, "copy", "dst", true);
    check_bytes(env, dst, src.bytes, "copy", "dst");
    if (src.bytes > 0 && src.ptr < dst.ptr + dst.bytes && dst.ptr < src.ptr + src.bytes)
      throw_error(env, ErrorCode::InvalidArgument, "copy: src and dst overlap");
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    uint8_t* d = dst.ptr;
    const uint8_t* sp = src.ptr;
    size_t n = src.bytes;
    s.op->work = [d, sp, n, ran](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(Isa::Scalar);
        if (!cpu::copy(d, sp, n, ctx.cancel)) moe::throw_error(ErrorCode::Cancelled, "cancelled");
        return;
      }
#if MOE_WITH_CUDA
      int err = moe_cuda_memcpy_async(ctx.device, d, sp, n, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("cudaMemcpyAsync: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
