// One asynchronous native operation: created on the JS thread with everything it needs (a plain params struct
// captured by `work`, references to every JS buffer and leases on every Memory it touches), run on a Stream's
// thread, settled back on the JS thread, where its references are released before the Promise settles.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/cancel.h"
#include "core/error.h"

namespace moe::js {

class Stream;
struct AddonData;

// What an op's work function sees on the stream thread.
struct ExecContext {
  int backend;        // BackendKind
  int device;
  void* cuda_stream;  // cudaStream_t on CUDA, nullptr on CPU
  const CancelToken* cancel;
};

class AsyncOp {
 public:
  AsyncOp(Napi::Env env, const char* name);
  // JS thread only: after settle(), or when an op is abandoned because validation failed before submission.
  ~AsyncOp();
  const char* name() const { return name_; }
  Napi::Promise promise() const { return deferred_.Promise(); }

  // Keep a JS value (e.g. a TypedArray) alive until the op settles.
  void keep(const Napi::Value& v);
  // Keep a native resource (a Memory lease, a stream, an event) alive until the op settles.
  void hold(std::shared_ptr<void> h) { holds_.push_back(std::move(h)); }

  std::shared_ptr<CancelToken> cancel;  // optional
  // Runs on the stream thread; throws moe::Error on failure. On CUDA it enqueues GPU work and returns.
  std::function<void(const ExecContext&)> work;
  // Called on whichever thread completes the op (stream thread or CUDA callback thread), before settling,
  // whether the op succeeded or failed (so nothing waiting on it can hang). Must be quick, must not call N-API.
  std::function<void()> on_complete;
  // Resolve value builder, run on the JS thread (default: undefined).
  std::function<Napi::Value(Napi::Env)> result;
  // When the op's work ran on its stream thread (steady-clock ms; set by the stream, CPU streams) and the object
  // settle() writes them to as { start, end } (optional: the op's timing argument).
  double run_start_ms = 0, run_end_ms = 0;
  Napi::ObjectReference timing;

  void fail(ErrorCode code, std::string message);
  bool failed() const { return failed_; }
  // Exactly once, from any thread: queues settlement on the JS thread. The op must not be touched afterwards.
  void complete();
  // JS thread: releases everything, then resolves or rejects.
  void settle(Napi::Env env);

 private:
  const char* name_;
  Napi::Env env_;
  AddonData* data_;  // read off the JS thread in complete(): napi_get_instance_data is JS-thread only
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::Reference<Napi::Value>> refs_;
  std::vector<std::shared_ptr<void>> holds_;
  bool failed_ = false;
  ErrorCode code_ = ErrorCode::Internal;
  std::string message_;
};

}  // namespace moe::js
