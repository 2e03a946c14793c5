// gatherRows(stream, { src, srcRows, rowBytes, ids, n, dst }, cancel?) -> Promise<tier>
// dst[i] = src[ids[i]] (rows of rowBytes bytes, packed); ids i32, -1 gives a zero row. On CUDA, src may be CUDA
// pinned host memory: the kernel reads the selected rows over PCIe directly (zero-copy gather).
#include "cpu/gather_rows.h"

#include <string>

#include "moe_cuda.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value GatherRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "gatherRows");
    uint64_t rows = static_cast<uint64_t>(s.size("srcRows"));
    uint64_t row_bytes = static_cast<uint64_t>(s.size("rowBytes"));
    uint64_t n = static_cast<uint64_t>(s.size("n"));
    TensorArg src = read_tensor(*s.op, s.params.Get("src"), "src");
    TensorArg ids = read_tensor(*s.op, s.params.Get("ids"), "ids");
    TensorArg dst = read_tensor(*s.op, s.params.Get("dst"), "dst");
    check_placement(env, src, *s.stream, "gatherRows", "src", false);
    check_placement(env, ids, *s.stream, "gatherRows", "ids", false);
    check_placement(env, dst, *s.stream, "gatherRows", "dst", false);
    check_aligned(env, ids, DType::I32, "gatherRows", "ids");
    check_bytes(env, src, rows * row_bytes, "gatherRows", "src");
    check_bytes(env, ids, n * 4, "gatherRows", "ids");
    check_bytes(env, dst, n * row_bytes, "gatherRows", "dst");
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    cpu::GatherRowsArgs g{src.ptr, rows, row_bytes, row_bytes, reinterpret_cast<const int32_t*>(ids.ptr), n, dst.ptr, row_bytes};
    s.op->work = [g, ran](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(Isa::Scalar);
        cpu::gather_rows(g, ctx.cancel);
        return;
      }
#if MOE_WITH_CUDA
      int err = moe_cuda_gather_rows(ctx.device, g.src, static_cast<int64_t>(g.src_rows), static_cast<int64_t>(g.src_stride),
                                     static_cast<int64_t>(g.row_bytes), g.ids, static_cast<int64_t>(g.n), g.dst,
                                     static_cast<int64_t>(g.dst_stride), ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("kernel launch: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
