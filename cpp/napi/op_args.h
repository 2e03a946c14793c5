// The common shape of every op binding: op(stream, params, cancelToken?, timing?) -> Promise.
//   begin_op   reads the stream, the params object, the optional cancel token, the optional timing object (filled
//              with the op's run interval on its stream thread when it settles) and the CPU tier (params.isa)
//   submit_op  queues the op on its stream and returns its Promise
// Validation failures throw before anything is queued (the op is abandoned, nothing leaks).
#pragma once
#include <memory>

#include "async_op.h"
#include "common.h"
#include "core/dtype.h"
#include "core/isa.h"
#include "stream.h"
#include "tensor_arg.h"

namespace moe::js {

struct OpStart {
  std::unique_ptr<AsyncOp> op;
  std::shared_ptr<Stream> stream;
  Napi::Object params;
  Isa isa = Isa::Scalar;  // clamped to what the CPU has
  bool cuda() const { return stream->backend() == BackendKind::Cuda; }
  // params[key] read as a size / dtype code / number; errors name `key`.
  int64_t size(const char* key) const { return arg_size(params.Get(key), key); }
  // An optional size: `absent` when params[key] is undefined.
  int64_t size_or(const char* key, int64_t absent) const {
    Napi::Value v = params.Get(key);
    return v.IsUndefined() ? absent : arg_size(v, key);
  }
  DType dtype(const char* key) const;
  double number(const char* key) const { return arg_number(params.Get(key), key); }
  // params[key] as a tensor on this op's stream (host memory only for CPU streams), `dtype`-aligned, holding at
  // least `bytes`; errors name the op and `key`.
  TensorArg tensor(const char* key, DType dtype, uint64_t bytes) const;
  const char* name = "";
};

OpStart begin_op(const Napi::CallbackInfo& info, const char* name);
Napi::Value submit_op(OpStart& s);
DType arg_dtype(const Napi::Value& v, const char* what);
// Makes the op resolve with the name of the kernel tier that ran ("scalar" ... "avx512bf16", or "cuda").
// `ran` is written by the work function on the stream thread and read on the JS thread after completion.
void resolve_with_tier(AsyncOp& op, std::shared_ptr<int> ran);

}  // namespace moe::js
