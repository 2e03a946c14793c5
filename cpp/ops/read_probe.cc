// readProbe(f32: Float32Array) -> { seconds, sum }: one timed pass of cpu::read_probe over a JS-owned buffer,
// synchronous on the calling thread (bench only: bench/moe.ts measures read bandwidth with it).
#include "cpu/read_probe.h"

#include <chrono>

#include "napi/common.h"

namespace moe::js {

Napi::Value ReadProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw_error(env, ErrorCode::InvalidArgument, "readProbe: expected a Float32Array");
    Napi::Float32Array a = info[0].As<Napi::Float32Array>();
    const auto t0 = std::chrono::steady_clock::now();
    const double sum = cpu::read_probe(a.Data(), a.ElementLength());
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Napi::Object r = Napi::Object::New(env);
    r.Set("seconds", sec);
    r.Set("sum", sum);
    return r;
  });
}

}  // namespace moe::js
