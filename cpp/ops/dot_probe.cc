// dotProbe(iters: number) -> { seconds, flops }: one timed run of cpu::dot_probe (the multiply-add peak of the active
// CPU tier over the pool), synchronous on the calling thread (bench only: bench/throughput.ts). flops 0: scalar tier.
#include "cpu/dot_probe.h"

#include <chrono>

#include "napi/common.h"

namespace moe::js {

Napi::Value DotProbe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsNumber())
      throw_error(env, ErrorCode::InvalidArgument, "dotProbe: iters must be a number");
    const double it = info[0].As<Napi::Number>().DoubleValue();
    if (!(it >= 1 && it <= 1e10))
      throw_error(env, ErrorCode::InvalidArgument, "dotProbe: iters must be in [1, 1e10], received " + std::to_string(it));
    const auto t0 = std::chrono::steady_clock::now();
    const double flops = cpu::dot_probe(static_cast<int64_t>(it));
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Napi::Object r = Napi::Object::New(env);
    r.Set("seconds", sec);
    r.Set("flops", flops);
    return r;
  });
}

}  // namespace moe::js
