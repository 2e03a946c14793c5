// See stream.h.
#include "stream.h"

#include <chrono>

#include "addon_data.h"
#include "moe_cuda.h"

namespace moe::js {

namespace {

[[noreturn]] void cuda_fail(const char* what, int err) {
#if MOE_WITH_CUDA
  moe::throw_error(err == 2 ? ErrorCode::OutOfMemory : ErrorCode::Cuda,
                   std::string(what) + " failed: " + moe_cuda_error_name(err) + ": " + moe_cuda_error_string(err));
#else
  (void)err;
  moe::throw_error(ErrorCode::BackendUnavailable, std::string(what) + ": this build has no CUDA");
#endif
}

double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace

// ---- Stream ---------------------------------------------------------------------------------------------------

std::shared_ptr<Stream> Stream::create(BackendKind backend, int device, int priority) {
  void* cs = nullptr;
  if (backend == BackendKind::Cuda) {
#if MOE_WITH_CUDA
    int err = moe_cuda_stream_create(device, priority, &cs);
    if (err != 0) cuda_fail("cudaStreamCreateWithPriority", err);
#else
    cuda_fail("Stream", 0);
#endif
  }
  return std::shared_ptr<Stream>(new Stream(backend, device, priority, cs));
}

Stream::Stream(BackendKind backend, int device, int priority, void* cs)
    : backend_(backend), device_(device), priority_(priority), cuda_stream_(cs), queue_(cs == nullptr) {
  // a CUDA stream's threads submit and wait: normal threads (work_queue.h)
  if (cs != nullptr) completions_ = std::make_unique<WorkQueue>(false);
}

Stream::~Stream() {
  // Runs on the JS thread when the last holder (the wrapper or a settling op) lets go: both queues are empty.
  queue_.stop();
  if (completions_) completions_->stop();
#if MOE_WITH_CUDA
  for (void* ev : event_pool_) moe_cuda_event_destroy(device_, ev);
  if (cuda_stream_) moe_cuda_stream_destroy(device_, cuda_stream_);
#endif
}

void Stream::submit(AsyncOp* op) {
  op->hold(shared_from_this());
  queue_.post([this, op] { execute(op); });
}

void Stream::execute(AsyncOp* op) {
  ExecContext ctx{static_cast<int>(backend_), device_, cuda_stream_, op->cancel.get()};
  if (is_cancelled(ctx.cancel)) {
    op->fail(ErrorCode::Cancelled, "cancelled before it started");
    op->complete();
    return;
  }
  op->run_start_ms = now_ms();
  try {
    if (op->work) op->work(ctx);
  } catch (const moe::Error& e) {
    op->fail(e.code(), e.what());
  } catch (const std::bad_alloc&) {
    op->fail(ErrorCode::OutOfMemory, "out of host memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    op->fail(ErrorCode::Internal, e.what());
  }
  op->run_end_ms = now_ms();
  if (op->failed() || backend_ == BackendKind::Cpu) {
    op->complete();
    return;
  }
  complete_after_gpu(op);
}

void* Stream::take_event() {
  {
    std::lock_guard<std::mutex> lock(pool_m_);
    if (!event_pool_.empty()) {
      void* ev = event_pool_.back();
      event_pool_.pop_back();
      return ev;
    }
  }
  void* ev = nullptr;
#if MOE_WITH_CUDA
  int err = moe_cuda_event_create(device_, 2, &ev);
  if (err != 0) cuda_fail("cudaEventCreate", err);
#endif
  return ev;
}

void Stream::give_event(void* ev) {
  std::lock_guard<std::mutex> lock(pool_m_);
  event_pool_.push_back(ev);
}

void Stream::complete_after_gpu(AsyncOp* op) {
#if MOE_WITH_CUDA
  void* ev = nullptr;
  try {
    ev = take_event();
  } catch (const moe::Error& e) {
    op->fail(e.code(), e.what());
    op->complete();
    return;
  }
  int err = moe_cuda_event_record(device_, ev, cuda_stream_);
  if (err != 0) {
    give_event(ev);
    op->fail(ErrorCode::Cuda, std::string("cudaEventRecord failed: ") + moe_cuda_error_name(err));
    op->complete();
    return;
  }
  completions_->post([this, op, ev] {
    const int e = moe_cuda_event_synchronize(device_, ev);
    op->run_end_ms = now_ms();  // OpOptions.timing's end on CUDA: when the host saw the GPU finish the op
    give_event(ev);
    if (e != 0) op->fail(ErrorCode::Cuda, std::string("the GPU work of this op failed: ") + moe_cuda_error_name(e));
    op->complete();
  });
#else
  op->complete();
#endif
}

// ---- EventCore ------------------------------------------------------------------------------------------------

std::shared_ptr<EventCore> EventCore::create(BackendKind backend, int device, bool timing) {
  void* ev = nullptr;
  if (backend == BackendKind::Cuda) {
#if MOE_WITH_CUDA
    int err = moe_cuda_event_create(device, timing ? 1 : 0, &ev);
    if (err != 0) cuda_fail("cudaEventCreate", err);
#else
    cuda_fail("Event", 0);
#endif
  }
  return std::shared_ptr<EventCore>(new EventCore(backend, device, timing, ev));
}

EventCore::EventCore(BackendKind backend, int device, bool timing, void* ev)
    : backend_(backend), device_(device), timing_(timing), cuda_event_(ev) {}

EventCore::~EventCore() {
#if MOE_WITH_CUDA
  if (cuda_event_) moe_cuda_event_destroy(device_, cuda_event_);
#endif
}

void EventCore::mark_submitted(uint64_t gen) {
  {
    std::lock_guard<std::mutex> lock(m_);
    if (gen > submitted_) submitted_ = gen;
  }
  cv_.notify_all();
}

void EventCore::mark_completed(uint64_t gen) {
  {
    std::lock_guard<std::mutex> lock(m_);
    if (gen > submitted_) submitted_ = gen;
    if (gen > completed_) {
      completed_ = gen;
      time_ms_ = now_ms();
    }
  }
  cv_.notify_all();
}

void EventCore::wait_submitted(uint64_t gen) {
  std::unique_lock<std::mutex> lock(m_);
  cv_.wait(lock, [&] { return submitted_ >= gen; });
}

void EventCore::wait_completed(uint64_t gen) {
  std::unique_lock<std::mutex> lock(m_);
  cv_.wait(lock, [&] { return completed_ >= gen; });
}

bool EventCore::is_completed(uint64_t gen) {
  std::lock_guard<std::mutex> lock(m_);
  return completed_ >= gen;
}

double EventCore::cpu_time_ms() {
  std::lock_guard<std::mutex> lock(m_);
  return time_ms_;
}

// ---- JS wrappers ----------------------------------------------------------------------------------------------

Napi::Function StreamWrap::Init(Napi::Env env) {
  return DefineClass(env, "Stream",
                     {InstanceMethod<&StreamWrap::Synchronize>("synchronize"),
                      InstanceMethod<&StreamWrap::WaitEvent>("waitEvent"),
                      InstanceMethod<&StreamWrap::Dispose>("dispose"),
                      InstanceAccessor<&StreamWrap::Disposed>("disposed")});
}

// new Stream(backend: 0 cpu | 1 cuda, device, priority: 0 | 1)
StreamWrap::StreamWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<StreamWrap>(info) {
  tag_object(info.This(), ClassTag::Stream);
  guarded(info.Env(), [&] {
    auto backend = static_cast<BackendKind>(arg_int(info[0], "backend", 0, 1));
    int device = arg_int(info[1], "device", 0, 1023);
    int priority = arg_int(info[2], "priority", 0, 1);
    stream_ = Stream::create(backend, device, priority);
  });
}

std::shared_ptr<Stream> StreamWrap::from(const Napi::Value& v, const char* what) {
  Napi::Env env = v.Env();
  if (!tagged(v, ClassTag::Stream))
    throw_error(env, ErrorCode::InvalidArgument, std::string(what) + " must be a Stream, received " + describe(v));
  StreamWrap* w = StreamWrap::Unwrap(v.As<Napi::Object>());
  if (!w->stream_) throw_error(env, ErrorCode::Disposed, std::string(what) + ": the stream was disposed");
  return w->stream_;
}

// synchronize(): settles once every op queued before it has finished.
Napi::Value StreamWrap::Synchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!stream_) throw_error(env, ErrorCode::Disposed, "Stream.synchronize: the stream was disposed");
    auto* op = new AsyncOp(env, "Stream.synchronize");
    Napi::Promise p = op->promise();
    stream_->submit(op);
    return p;
  });
}

// waitEvent(event): ops queued on this stream after this call start only after the event's latest record.
Napi::Value StreamWrap::WaitEvent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!stream_) throw_error(env, ErrorCode::Disposed, "Stream.waitEvent: the stream was disposed");
    Napi::Value ev = info[0];
    if (!tagged(ev, ClassTag::Event))
      throw_error(env, ErrorCode::InvalidArgument, "event must be an Event, received " + describe(ev));
    std::shared_ptr<EventCore> e = EventWrap::Unwrap(ev.As<Napi::Object>())->get(env);
    // An event of another backend or device (a CPU stream waiting for a CUDA copy, a CUDA stream for CPU attention)
    // is waited for on this stream's host thread, until the event's point has completed; a CUDA event of the same
    // device, by cudaStreamWaitEvent (the host thread goes on queuing).
    const bool same = e->backend() == stream_->backend() && e->device() == stream_->device();
    uint64_t gen = e->recorded();
    auto* op = new AsyncOp(env, "Stream.waitEvent");
    op->hold(e);
    EventCore* raw = e.get();
    op->work = [raw, gen, same](const ExecContext& ctx) {
      if (!same || ctx.backend == static_cast<int>(BackendKind::Cpu)) {
        raw->wait_completed(gen);
        return;
      }
#if MOE_WITH_CUDA
      raw->wait_submitted(gen);
      if (gen == 0) return;
      int err = moe_cuda_stream_wait_event(ctx.device, ctx.cuda_stream, raw->cuda_event());
      if (err != 0) cuda_fail("cudaStreamWaitEvent", err);
#endif
    };
    Napi::Promise p = op->promise();
    stream_->submit(op);
    return p;
  });
}

Napi::Value StreamWrap::Dispose(const Napi::CallbackInfo& info) {
  // Queued ops keep the stream alive until they settle; the thread stops after the last one.
  stream_.reset();
  return info.Env().Undefined();
}

Napi::Value StreamWrap::Disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !stream_);
}

Napi::Function EventWrap::Init(Napi::Env env) {
  return DefineClass(env, "Event",
                     {InstanceMethod<&EventWrap::Record>("record"), InstanceMethod<&EventWrap::Reserve>("reserve"),
                      InstanceMethod<&EventWrap::Query>("query"),
                      InstanceMethod<&EventWrap::ElapsedMs>("elapsedMs"),
                      InstanceMethod<&EventWrap::Dispose>("dispose")});
}

// new Event(backend, device, timing: boolean)
EventWrap::EventWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EventWrap>(info) {
  tag_object(info.This(), ClassTag::Event);
  guarded(info.Env(), [&] {
    auto backend = static_cast<BackendKind>(arg_int(info[0], "backend", 0, 1));
    int device = arg_int(info[1], "device", 0, 1023);
    bool timing = info[2].ToBoolean().Value();
    event_ = EventCore::create(backend, device, timing);
  });
}

std::shared_ptr<EventCore> EventWrap::get(Napi::Env env) {
  if (!event_) throw_error(env, ErrorCode::Disposed, "the event was disposed");
  return event_;
}

// reserve() -> the generation the next record(stream, generation) will complete.
Napi::Value EventWrap::Reserve(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value { return Napi::Number::New(env, static_cast<double>(get(env)->next_generation())); });
}

// record(stream, generation?) -> Promise that settles when the stream reaches this point. Without generation a
// new point; with one, the point reserve() returned.
Napi::Value EventWrap::Record(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::shared_ptr<EventCore> e = get(env);
    std::shared_ptr<Stream> s = StreamWrap::from(info[0], "stream");
    if (e->backend() != s->backend() || e->device() != s->device())
      throw_error(env, ErrorCode::InvalidArgument, "event belongs to another backend or device than the stream");
    uint64_t gen;
    if (info[1].IsUndefined()) {
      gen = e->next_generation();
    } else {
      int64_t g = arg_size(info[1], "generation");
      if (g < 1 || static_cast<uint64_t>(g) > e->recorded())
        throw_error(env, ErrorCode::InvalidArgument,
                    "generation must be one reserve() returned (1.." + std::to_string(e->recorded()) + "), received " +
                        std::to_string(g));
      gen = static_cast<uint64_t>(g);
    }
    auto* op = new AsyncOp(env, "Event.record");
    op->hold(e);
    EventCore* raw = e.get();
    op->work = [raw, gen](const ExecContext& ctx) {
      if (ctx.backend == static_cast<int>(BackendKind::Cpu)) return;
#if MOE_WITH_CUDA
      int err = moe_cuda_event_record(ctx.device, raw->cuda_event(), ctx.cuda_stream);
      if (err != 0) cuda_fail("cudaEventRecord", err);
      raw->mark_submitted(gen);
#endif
    };
    // CPU: the stream thread reached the record; CUDA: the GPU did (host callback after the record). A failed
    // record completes too, so a stream waiting on it cannot hang; the failure rejects record()'s Promise.
    op->on_complete = [raw, gen] { raw->mark_completed(gen); };
    Napi::Promise p = op->promise();
    s->submit(op);
    return p;
  });
}

Napi::Value EventWrap::Query(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::shared_ptr<EventCore> e = get(env);
    return Napi::Boolean::New(env, e->is_completed(e->recorded()));
  });
}

// elapsedMs(start): milliseconds from start's latest record to this event's latest record; both must be complete.
Napi::Value EventWrap::ElapsedMs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::shared_ptr<EventCore> end = get(env);
    Napi::Value sv = info[0];
    if (!tagged(sv, ClassTag::Event))
      throw_error(env, ErrorCode::InvalidArgument, "start must be an Event, received " + describe(sv));
    std::shared_ptr<EventCore> start = EventWrap::Unwrap(sv.As<Napi::Object>())->get(env);
    if (!start->timing() || !end->timing())
      throw_error(env, ErrorCode::InvalidArgument, "both events must be created with timing: true");
    if (start->recorded() == 0 || end->recorded() == 0)
      throw_error(env, ErrorCode::InvalidArgument, "both events must have been recorded");
    if (!start->is_completed(start->recorded()) || !end->is_completed(end->recorded()))
      throw_error(env, ErrorCode::InvalidArgument, "both events must be complete (await their record first)");
    if (end->backend() == BackendKind::Cpu) return Napi::Number::New(env, end->cpu_time_ms() - start->cpu_time_ms());
#if MOE_WITH_CUDA
    float ms = 0;
    int err = moe_cuda_event_elapsed_ms(&ms, start->cuda_event(), end->cuda_event());
    if (err != 0) cuda_fail("cudaEventElapsedTime", err);
    return Napi::Number::New(env, ms);
#else
    return env.Undefined();
#endif
  });
}

Napi::Value EventWrap::Dispose(const Napi::CallbackInfo& info) {
  event_.reset();
  return info.Env().Undefined();
}

Napi::Function CancelWrap::Init(Napi::Env env) {
  return DefineClass(env, "CancelToken", {InstanceMethod<&CancelWrap::Cancel>("cancel")});
}

CancelWrap::CancelWrap(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<CancelWrap>(info), token_(std::make_shared<CancelToken>()) {
  tag_object(info.This(), ClassTag::Cancel);
}

std::shared_ptr<CancelToken> CancelWrap::from(const Napi::Value& v) {
  Napi::Env env = v.Env();
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  if (!tagged(v, ClassTag::Cancel))
    throw_error(env, ErrorCode::InvalidArgument, "cancel must be a CancelToken, received " + describe(v));
  return CancelWrap::Unwrap(v.As<Napi::Object>())->token_;
}

Napi::Value CancelWrap::Cancel(const Napi::CallbackInfo& info) {
  token_->cancel();
  return info.Env().Undefined();
}

}  // namespace moe::js
