// scatterRows(stream, { src, srcDtype, n, row, ids, dst, dstDtype, dstRows, isa? }, cancel?) -> Promise<tier>
// dst[ids[i]] = src[i] (cpu/scatter_rows.h), rows of `row` elements, f32 -> bf16 / f16 converted on the way; on a
// CPU stream (host tensors). The ids are checked when the op runs (a bad or repeated id rejects, nothing written).
#include "cpu/scatter_rows.h"

#include <memory>
#include <string>

#include "napi/op_args.h"

namespace moe::js {

Napi::Value ScatterRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "scatterRows");
    if (s.cuda()) throw_error(env, ErrorCode::InvalidArgument, "scatterRows: runs on a CPU stream (host tensors), received a CUDA stream");
    const DType st = s.dtype("srcDtype"), dt = s.dtype("dstDtype");
    const auto n = static_cast<uint64_t>(s.size("n")), row = static_cast<uint64_t>(s.size("row"));
    const auto dst_rows = static_cast<uint64_t>(s.size("dstRows"));
    cpu::ScatterRowsArgs a{};
    a.src = s.tensor("src", st, n * row * dtype_size(st)).ptr;
    a.src_dtype = st;
    a.n = n;
    a.row = row;
    a.ids = reinterpret_cast<const int32_t*>(s.tensor("ids", DType::I32, n * 4).ptr);
    a.dst = s.tensor("dst", dt, dst_rows * row * dtype_size(dt)).ptr;
    a.dst_dtype = dt;
    a.dst_rows = dst_rows;
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    const Isa isa = s.isa;
    s.op->work = [a, isa, ran](const ExecContext& ctx) { *ran = static_cast<int>(cpu::scatter_rows(a, isa, ctx.cancel)); };
    return submit_op(s);
  });
}

}  // namespace moe::js
