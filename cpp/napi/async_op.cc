// See async_op.h.
#include "async_op.h"

#include "addon_data.h"
#include "common.h"

namespace moe::js {

AsyncOp::AsyncOp(Napi::Env env, const char* name)
    : name_(name), env_(env), data_(AddonData::get(env)), deferred_(Napi::Promise::Deferred::New(env)) {
  data_->op_started(env);
}

AsyncOp::~AsyncOp() {
  refs_.clear();
  data_->op_finished(env_);
}

void AsyncOp::keep(const Napi::Value& v) { refs_.push_back(Napi::Persistent(v)); }

void AsyncOp::fail(ErrorCode code, std::string message) {
  if (failed_) return;
  failed_ = true;
  code_ = code;
  message_ = std::move(message);
}

void AsyncOp::complete() {
  if (on_complete) on_complete();
  // The env's channel outlives every op: ops in flight keep it referenced, and the cleanup hook aborts it only
  // at environment teardown, when a failed call just leaks this op.
  // A failed call means the environment is shutting down: nothing can be settled any more.
  (void)data_->completion.NonBlockingCall(this);
}

void AsyncOp::settle(Napi::Env env) {
  // Release buffers and leases first, so a caller awaiting the Promise sees memory freed and buffers usable.
  refs_.clear();
  holds_.clear();
  cancel.reset();
  work = nullptr;
  on_complete = nullptr;
  if (!timing.IsEmpty()) {
    Napi::Object t = timing.Value();
    t.Set("start", Napi::Number::New(env, run_start_ms));
    t.Set("end", Napi::Number::New(env, run_end_ms));
    timing.Reset();
  }
  if (failed_) {
    std::string msg = std::string(name_) + ": " + message_;
    deferred_.Reject(make_error(env, code_, msg).Value());
    return;
  }
  try {
    deferred_.Resolve(result ? result(env) : env.Undefined());
  } catch (const Napi::Error& e) {
    deferred_.Reject(e.Value());
  }
}

void settle_op(Napi::Env env, Napi::Function, std::nullptr_t*, AsyncOp* op) {
  if (env == nullptr) return;  // channel torn down with the environment: leak, nothing to settle
  op->settle(env);
  delete op;
}

}  // namespace moe::js
