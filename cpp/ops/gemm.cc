// gemm(stream, { a, b, out, abDtype, outDtype, m, n, k, lda, ldb, ldc, bPacked?, isa? }, cancel?) -> Promise<tier>
// out[m, n] = sum_k a[m, k] * b[n, k]: b in nn.Linear [out_features, in_features] layout; row strides in elements.
// bPacked: b is in the panel64 layout of packWeights (bf16, CPU streams only; ldb is then ignored).
#include "cpu/gemm.h"
#include "cpu/gemm_packed.h"
#include "cpu/pack_weights.h"

#include <string>

#include "moe_cuda.h"
#include "napi/op_args.h"

namespace moe::js {

namespace {

// Bytes spanned by `rows` rows of `cols` elements with row stride `ld` (0 when empty).
uint64_t span_bytes(int64_t rows, int64_t cols, int64_t ld, DType t) {
  if (rows == 0 || cols == 0) return 0;
  return (static_cast<uint64_t>(rows - 1) * static_cast<uint64_t>(ld) + static_cast<uint64_t>(cols)) * dtype_size(t);
}

}  // namespace

Napi::Value Gemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "gemm");
    DType ab = s.dtype("abDtype");
    DType ot = s.dtype("outDtype");
    if ((ab != DType::F32 && ab != DType::BF16) || (ot != DType::F32 && ot != DType::BF16))
      throw_error(env, ErrorCode::InvalidArgument, std::string("gemm: abDtype and outDtype must be f32 or bf16, received ") +
                                                       dtype_name(ab) + ", " + dtype_name(ot));
    int64_t m = s.size("m"), n = s.size("n"),
            k = s.size("k");
    int64_t lda = s.size("lda"), ldb = s.size("ldb"),
            ldc = s.size("ldc");
    if (lda < k || ldb < k || ldc < n)
      throw_error(env, ErrorCode::InvalidArgument,
                  "gemm: strides must satisfy lda >= k, ldb >= k, ldc >= n, received lda=" + std::to_string(lda) +
                      " ldb=" + std::to_string(ldb) + " ldc=" + std::to_string(ldc) + " (k=" + std::to_string(k) +
                      ", n=" + std::to_string(n) + ")");
    const bool packed = s.params.Get("bPacked").ToBoolean().Value();
    if (packed && (s.cuda() || ab != DType::BF16))
      throw_error(env, ErrorCode::InvalidArgument,
                  std::string("gemm: packed weights need bf16 operands on a CPU stream, received ") + dtype_name(ab) +
                      (s.cuda() ? " on a cuda stream" : ""));
    if (packed && (n < 1 || k < 1))
      throw_error(env, ErrorCode::InvalidArgument,
                  "gemm: packed weights need n >= 1 and k >= 1, received n=" + std::to_string(n) + " k=" + std::to_string(k));
    TensorArg a = read_tensor(*s.op, s.params.Get("a"), "a");
    TensorArg b = read_tensor(*s.op, s.params.Get("b"), "b");
    TensorArg out = read_tensor(*s.op, s.params.Get("out"), "out");
    check_placement(env, a, *s.stream, "gemm", "a", false);
    check_placement(env, b, *s.stream, "gemm", "b", false);
    check_placement(env, out, *s.stream, "gemm", "out", false);
    check_aligned(env, a, ab, "gemm", "a");
    check_aligned(env, b, ab, "gemm", "b");
    check_aligned(env, out, ot, "gemm", "out");
    struct Need { const TensorArg* t; const char* w; uint64_t bytes; } needs[3] = {
        {&a, "a", span_bytes(m, k, lda, ab)}, {&b, "b", packed ? static_cast<uint64_t>(cpu::packed_weights_numel(n, k)) * 2 : span_bytes(n, k, ldb, ab)}, {&out, "out", span_bytes(m, n, ldc, ot)}};
    for (const Need& nd : needs)
      if (nd.t->bytes < nd.bytes)
        throw_error(env, ErrorCode::InvalidArgument, std::string("gemm: ") + nd.w + " must hold at least " +
                                                         std::to_string(nd.bytes) + " bytes for its shape, received " +
                                                         std::to_string(nd.t->bytes));
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    cpu::GemmArgs g{a.ptr, b.ptr, out.ptr, ab, ot, m, n, k, lda, ldb, ldc};
    Isa isa = s.isa;
    if (packed) {
      cpu::GemmPackedArgs gp{reinterpret_cast<const uint16_t*>(a.ptr), reinterpret_cast<const uint16_t*>(b.ptr), out.ptr, ot, m, n, k, lda, ldc};
      s.op->work = [gp, isa, ran](const ExecContext& ctx) { *ran = static_cast<int>(cpu::gemm_packed(gp, isa, ctx.cancel)); };
      return submit_op(s);
    }
    s.op->work = [g, isa, ran](const ExecContext& ctx) {
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::gemm(g, isa, ctx.cancel));
        return;
      }
#if MOE_WITH_CUDA
      int err = moe_cuda_gemm(ctx.device, g.a, g.b, g.out, static_cast<int>(g.ab_dtype), static_cast<int>(g.out_dtype),
                              g.m, g.n, g.k, g.lda, g.ldb, g.ldc, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("kernel launch: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
