// Streams, events and cancel tokens.
//
// A Stream is an ordered queue of ops with its own host thread (core/work_queue.h). On the CPU backend that
// thread runs each op; on CUDA it submits each op to a cudaStream, records a pooled blocking-sync event after it,
// and a second thread (completions_) waits for those events in order and settles each op, so neither the JS thread
// nor the GPU waits: a cudaLaunchHostFunc per op (the first design) stalled the stream until the callback thread
// ran (~50 us per op on an H200: 4 MiB chunked copies reached 0.6 of one plain copy's rate). An Event marks a point in a stream: record() enqueues it,
// waitEvent() makes another stream wait for it (CPU: the stream thread blocks; CUDA: cudaStreamWaitEvent, issued
// only after the record has been submitted on the other stream's thread).
#pragma once
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "async_op.h"
#include "common.h"
#include "core/work_queue.h"
#include "memory.h"

namespace moe::js {

class Stream : public std::enable_shared_from_this<Stream> {
 public:
  // priority: 0 normal, 1 high (CUDA stream priority; on CPU only a label).
  static std::shared_ptr<Stream> create(BackendKind backend, int device, int priority);
  ~Stream();
  // JS thread: queues op (taking ownership). The op holds this stream until it settles.
  void submit(AsyncOp* op);
  BackendKind backend() const { return backend_; }
  int device() const { return device_; }
  void* cuda_stream() const { return cuda_stream_; }

 private:
  Stream(BackendKind backend, int device, int priority, void* cuda_stream);
  void execute(AsyncOp* op);
  // CUDA: settles op once the GPU passed the point recorded after it (stream order is kept; the host never waits).
  void complete_after_gpu(AsyncOp* op);
  void* take_event();              // a completion event from the pool (created on demand)
  void give_event(void* ev);       // back to the pool
  BackendKind backend_;
  int device_;
  int priority_;
  void* cuda_stream_;
  std::mutex pool_m_;
  std::vector<void*> event_pool_;  // CUDA completion events (blocking sync, no timing)
  WorkQueue queue_;
  std::unique_ptr<WorkQueue> completions_;  // CUDA only: waits for completion events in submission order
};

class EventCore {
 public:
  static std::shared_ptr<EventCore> create(BackendKind backend, int device, bool timing);
  ~EventCore();
  BackendKind backend() const { return backend_; }
  int device() const { return device_; }
  void* cuda_event() const { return cuda_event_; }

  uint64_t next_generation() { return ++recorded_; }  // JS thread
  uint64_t recorded() const { return recorded_; }
  void mark_submitted(uint64_t gen);
  void mark_completed(uint64_t gen);
  // Blocks the calling (stream) thread until generation gen was submitted / completed.
  void wait_submitted(uint64_t gen);
  void wait_completed(uint64_t gen);
  bool is_completed(uint64_t gen);
  double cpu_time_ms();  // steady-clock time of the latest completion (CPU backend)
  bool timing() const { return timing_; }

 private:
  EventCore(BackendKind backend, int device, bool timing, void* ev);
  BackendKind backend_;
  int device_;
  bool timing_;
  void* cuda_event_;
  uint64_t recorded_ = 0;  // JS thread only
  std::mutex m_;
  std::condition_variable cv_;
  uint64_t submitted_ = 0;
  uint64_t completed_ = 0;
  double time_ms_ = 0;
};

// JS class `Stream(backend, device, priority)`: synchronize() -> Promise, waitEvent(event), dispose().
class StreamWrap : public Napi::ObjectWrap<StreamWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit StreamWrap(const Napi::CallbackInfo& info);
  static std::shared_ptr<Stream> from(const Napi::Value& v, const char* what);

 private:
  Napi::Value Synchronize(const Napi::CallbackInfo& info);
  Napi::Value WaitEvent(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  std::shared_ptr<Stream> stream_;
};

// JS class `Event(backend, device, timing)`: record(stream, generation?) -> Promise (settles when the point is
// reached), reserve() -> generation, query() -> boolean, elapsedMs(start) -> number, dispose().
// reserve() names the next point before it is recorded: a stream that waits on the event from then on waits for
// that point (its own host thread holds until the record is submitted), so a producer may record it later.
class EventWrap : public Napi::ObjectWrap<EventWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit EventWrap(const Napi::CallbackInfo& info);

 private:
  Napi::Value Record(const Napi::CallbackInfo& info);
  Napi::Value Reserve(const Napi::CallbackInfo& info);
  Napi::Value Query(const Napi::CallbackInfo& info);
  Napi::Value ElapsedMs(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  friend class StreamWrap;
  std::shared_ptr<EventCore> get(Napi::Env env);
  std::shared_ptr<EventCore> event_;
};

// JS class `CancelToken()`: cancel(). Passed to ops; kernels poll it between chunks.
class CancelWrap : public Napi::ObjectWrap<CancelWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit CancelWrap(const Napi::CallbackInfo& info);
  static std::shared_ptr<CancelToken> from(const Napi::Value& v);  // nullptr for undefined

 private:
  Napi::Value Cancel(const Napi::CallbackInfo& info);
  std::shared_ptr<CancelToken> token_;
};

}  // namespace moe::js
