// Per-environment state of the addon (worker threads and Node environments each get their own): the Memory
// constructor (allocAsync wraps what it allocated) and the completion channel that settles op Promises on the JS
// thread. (Class checks use type tags: common.h `tagged`.)
#pragma once
#include <napi.h>

#include <cstdint>

namespace moe::js {

class AsyncOp;
void settle_op(Napi::Env env, Napi::Function, std::nullptr_t*, AsyncOp* op);
using CompletionTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, AsyncOp, settle_op>;

struct AddonData {
  Napi::FunctionReference memory_ctor;  // new Memory(External) in allocAsync
  // One thread-safe function for every completion; referenced (keeps the loop alive) only while ops are in flight.
  CompletionTsfn completion;
  int64_t inflight = 0;  // JS thread only
  bool closing = false;  // set by the env cleanup hook

  static AddonData* get(Napi::Env env) { return env.GetInstanceData<AddonData>(); }
  void op_started(Napi::Env env) {
    if (inflight++ == 0) completion.Ref(env);
  }
  void op_finished(Napi::Env env) {
    if (--inflight == 0) completion.Unref(env);
  }
};

}  // namespace moe::js
