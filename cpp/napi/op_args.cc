// See op_args.h.
#include "op_args.h"

#include <string>

namespace moe::js {

OpStart begin_op(const Napi::CallbackInfo& info, const char* name) {
  Napi::Env env = info.Env();
  OpStart s;
  s.stream = StreamWrap::from(info[0], "stream");
  s.params = arg_object(info[1], "params");
  std::shared_ptr<CancelToken> cancel = CancelWrap::from(info[2]);
  Napi::Value isa = s.params.Get("isa");
  s.isa = isa.IsUndefined() ? cpu_info().active : clamp_isa(static_cast<Isa>(arg_int(isa, "params.isa", 0, 3)));
  s.op = std::make_unique<AsyncOp>(env, name);
  s.op->cancel = std::move(cancel);
  // info[3]: optional object the op's run interval is written to when it settles (AsyncOp::timing)
  if (info.Length() > 3 && !info[3].IsUndefined()) s.op->timing = Napi::Persistent(arg_object(info[3], "timing"));
  s.name = name;
  return s;
}

TensorArg OpStart::tensor(const char* key, DType dt, uint64_t bytes) const {
  Napi::Env env = params.Env();
  TensorArg t = read_tensor(*op, params.Get(key), key);
  check_placement(env, t, *stream, name, key, false);
  check_aligned(env, t, dt, name, key);
  check_bytes(env, t, bytes, name, key);
  return t;
}

Napi::Value submit_op(OpStart& s) {
  Napi::Promise p = s.op->promise();
  s.stream->submit(s.op.release());
  return p;
}

DType OpStart::dtype(const char* key) const { return arg_dtype(params.Get(key), key); }

DType arg_dtype(const Napi::Value& v, const char* what) {
  return static_cast<DType>(arg_int(v, what, 0, 4));
}

void resolve_with_tier(AsyncOp& op, std::shared_ptr<int> ran) {
  op.result = [ran](Napi::Env env) -> Napi::Value {
    return Napi::String::New(env, *ran < 0 ? "cuda" : isa_name(static_cast<Isa>(*ran)));
  };
}

}  // namespace moe::js
