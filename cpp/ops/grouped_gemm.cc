// groupedGemm(stream, { a, b, out, offsets, outDtype, g, n, k, lda, ldb, ldc, isa? }, cancel?) -> Promise<tier>
//   a [rows, k] bf16 (row stride lda), out [rows, n] f32|bf16 (row stride ldc), rows = offsets[g];
//   b: array of g entries, each a tensor arg [n, k] bf16 (row stride ldb) or null for an empty group;
//   offsets: plain JS array of g + 1 integers (host metadata, copied at submit: the same on CPU and CUDA).
// Group x: out[offsets[x] : offsets[x+1]] = a[offsets[x] : offsets[x+1]] b[x]^T (cpu/grouped_gemm.h).
#include "cpu/grouped_gemm.h"

#include <memory>
#include <string>
#include <vector>

#include "moe_cuda.h"
#include "napi/op_args.h"

namespace moe::js {

Napi::Value GroupedGemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "groupedGemm");
    const char* op = "groupedGemm";
    DType ot = s.dtype("outDtype");
    if (ot != DType::F32 && ot != DType::BF16)
      throw_error(env, ErrorCode::InvalidArgument, std::string("groupedGemm: outDtype must be f32 or bf16, received ") + dtype_name(ot));
    const int64_t g = s.size("g"), n = s.size("n"),
                  k = s.size("k"), lda = s.size("lda"),
                  ldb = s.size("ldb"), ldc = s.size("ldc");
    if (g < 1 || n < 1 || k < 1 || lda < k || ldb < k || ldc < n)
      throw_error(env, ErrorCode::InvalidArgument,
                  "groupedGemm: need g, n, k >= 1, lda >= k, ldb >= k, ldc >= n, received g=" + std::to_string(g) +
                      " n=" + std::to_string(n) + " k=" + std::to_string(k) + " lda=" + std::to_string(lda) +
                      " ldb=" + std::to_string(ldb) + " ldc=" + std::to_string(ldc));
    Napi::Value ov = s.params.Get("offsets");
    if (!ov.IsArray() || ov.As<Napi::Array>().Length() != static_cast<uint32_t>(g + 1))
      throw_error(env, ErrorCode::InvalidArgument, "groupedGemm: offsets must be an array of " + std::to_string(g + 1) +
                                                       " integers, received " + describe(ov));
    auto offsets = std::make_shared<std::vector<int32_t>>(static_cast<size_t>(g + 1));
    Napi::Array oa = ov.As<Napi::Array>();
    for (uint32_t i = 0; i <= static_cast<uint32_t>(g); ++i) {
      const int64_t v = arg_size(oa.Get(i), "offsets[i]");
      if (v > INT32_MAX || (i > 0 && v < (*offsets)[i - 1]) || (i == 0 && v != 0))
        throw_error(env, ErrorCode::InvalidArgument, "groupedGemm: offsets must start at 0 and be non-decreasing, received " +
                                                         std::to_string(v) + " at index " + std::to_string(i));
      (*offsets)[i] = static_cast<int32_t>(v);
    }
    const int64_t rows = (*offsets)[static_cast<size_t>(g)];
    auto span = [](int64_t r, int64_t cols, int64_t ld, uint64_t es) -> uint64_t {
      return r == 0 ? 0 : (static_cast<uint64_t>(r - 1) * static_cast<uint64_t>(ld) + static_cast<uint64_t>(cols)) * es;
    };
    auto placed = [&](const Napi::Value& v, const std::string& what, DType dt, uint64_t bytes) {
      TensorArg a = read_tensor(*s.op, v, what.c_str());
      check_placement(env, a, *s.stream, op, what.c_str(), false);
      check_aligned(env, a, dt, op, what.c_str());
      if (a.bytes < bytes)  // at least: a and out may have rows past offsets[g]
        throw_error(env, ErrorCode::InvalidArgument, "groupedGemm: " + what + " must hold at least " + std::to_string(bytes) +
                                                         " bytes for its shape, received " + std::to_string(a.bytes));
      return a;
    };
    TensorArg a = placed(s.params.Get("a"), "a", DType::BF16, span(rows, k, lda, 2));
    TensorArg out = placed(s.params.Get("out"), "out", ot, span(rows, n, ldc, dtype_size(ot)));
    Napi::Value bv = s.params.Get("b");
    if (!bv.IsArray() || bv.As<Napi::Array>().Length() != static_cast<uint32_t>(g))
      throw_error(env, ErrorCode::InvalidArgument, "groupedGemm: b must be an array of " + std::to_string(g) +
                                                       " entries, received " + describe(bv));
    auto bptr = std::make_shared<std::vector<const void*>>(static_cast<size_t>(g), nullptr);
    Napi::Array ba = bv.As<Napi::Array>();
    for (uint32_t i = 0; i < static_cast<uint32_t>(g); ++i) {
      Napi::Value v = ba.Get(i);
      const bool empty = (*offsets)[i + 1] == (*offsets)[i];
      if (v.IsNull() || v.IsUndefined()) {
        if (!empty)
          throw_error(env, ErrorCode::InvalidArgument, "groupedGemm: b[" + std::to_string(i) + "] is null but group " +
                                                           std::to_string(i) + " has rows");
        continue;
      }
      (*bptr)[i] = placed(v, "b[" + std::to_string(i) + "]", DType::BF16, span(n, k, ldb, 2)).ptr;
    }
    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    cpu::GroupedGemmArgs ga{reinterpret_cast<const uint16_t*>(a.ptr), nullptr, nullptr, out.ptr, ot, g, n, k, lda, ldb, ldc};
    Isa isa = s.isa;
    s.op->work = [ga, isa, ran, offsets, bptr](const ExecContext& ctx) {
      cpu::GroupedGemmArgs args = ga;
      args.offsets = offsets->data();
      args.b = bptr->data();
      if (ctx.cuda_stream == nullptr) {
        *ran = static_cast<int>(cpu::grouped_gemm(args, isa, ctx.cancel));
        return;
      }
#if MOE_WITH_CUDA
      int err = moe_cuda_grouped_gemm(ctx.device, args.a, args.offsets, args.b, args.out, static_cast<int>(args.out_dtype),
                                      args.g_count, args.n, args.k, args.lda, args.ldb, args.ldc, ctx.cuda_stream);
      if (err != 0) moe::throw_error(ErrorCode::Cuda, std::string("groupedGemm launch: ") + moe_cuda_error_name(err));
#endif
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
