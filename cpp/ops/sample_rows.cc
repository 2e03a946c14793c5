// sampleRows(stream, { logits, params, out, rows, vocab }, cancel?) -> Promise<tier>
// Next token of every row (cpu/sample_rows.h), on a CPU stream: logits [rows, vocab] f32 and out [rows] i32 host
// tensors; params a Float64Array of rows x 4 (temperature, topK, topP, u), copied when the op is queued and checked
// here: temperature finite >= 0, topK a non-negative integer, topP in (0, 1], u in [0, 1).
#include "cpu/sample_rows.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "napi/op_args.h"

namespace moe::js {

Napi::Value SampleRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    OpStart s = begin_op(info, "sampleRows");
    if (s.cuda()) throw_error(env, ErrorCode::InvalidArgument, "sampleRows: runs on a CPU stream (host tensors), received a CUDA stream");
    const int64_t rows = s.size("rows"), vocab = s.size("vocab");
    if (vocab < 1 || vocab > 0x7fffffff)
      throw_error(env, ErrorCode::InvalidArgument, "sampleRows: vocab must be in [1, 2^31), received " + std::to_string(vocab));
    Napi::Value pv = s.params.Get("params");
    if (!pv.IsTypedArray() || pv.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      throw_error(env, ErrorCode::InvalidArgument, "sampleRows: params must be a Float64Array of rows x 4");
    Napi::Float64Array pa = pv.As<Napi::Float64Array>();
    if (static_cast<int64_t>(pa.ElementLength()) != rows * 4)
      throw_error(env, ErrorCode::InvalidArgument, "sampleRows: params must hold rows x 4 = " + std::to_string(rows * 4) +
                                                       " numbers, received " + std::to_string(pa.ElementLength()));
    auto params = std::make_shared<std::vector<double>>(pa.Data(), pa.Data() + pa.ElementLength());
    for (int64_t r = 0; r < rows; ++r) {
      const double* q = params->data() + 4 * r;
      if (!(std::isfinite(q[0]) && q[0] >= 0) || !(q[1] >= 0 && q[1] == std::floor(q[1]) && q[1] < 9e15) ||
          !(q[2] > 0 && q[2] <= 1) || !(q[3] >= 0 && q[3] < 1))
        throw_error(env, ErrorCode::InvalidArgument,
                    "sampleRows: row " + std::to_string(r) + " needs temperature finite >= 0, topK a non-negative integer, topP in (0, 1], u in [0, 1); received " +
                        std::to_string(q[0]) + ", " + std::to_string(q[1]) + ", " + std::to_string(q[2]) + ", " + std::to_string(q[3]));
    }
    cpu::SampleRowsArgs a{};
    a.rows = rows;
    a.vocab = vocab;
    a.logits = reinterpret_cast<const float*>(s.tensor("logits", DType::F32, static_cast<uint64_t>(rows) * vocab * 4).ptr);
    a.out = reinterpret_cast<int32_t*>(s.tensor("out", DType::I32, static_cast<uint64_t>(rows) * 4).ptr);
    a.params = params->data();
    a.isa = s.isa;

    auto ran = std::make_shared<int>(-1);
    resolve_with_tier(*s.op, ran);
    s.op->work = [a, params, ran](const ExecContext& ctx) {
      if (!cpu::sample_rows(a, ctx.cancel)) moe::throw_error(ErrorCode::Cancelled, "sampleRows: cancelled");
      *ran = static_cast<int>(vector_tier(a.isa));
    };
    return submit_op(s);
  });
}

}  // namespace moe::js
