// Native memory with explicit lifetime: pinned host memory (cudaHostAlloc on CUDA, page-aligned host memory on
// the CPU backend) and device memory (cudaMalloc on CUDA, a separate budgeted host pool on the CPU backend).
//
// Ownership: a Memory is held by shared_ptr from its JS wrapper, from the external ArrayBuffer that views it
// (host kinds), and from every in-flight op through a Lease. dispose() detaches the ArrayBuffer at once and frees
// the bytes as soon as no Lease is left (immediately when idle); the struct itself dies with its last holder.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "common.h"

namespace moe::js {

// Host buffers from this size are 2 MiB aligned and advised onto transparent huge pages (memory.cc); exported to JS
// as the addon's hugePageMin (Backend.allocHost takes its huge-page path from the same size).
constexpr size_t kHugeMin = size_t{4} << 20;

// Numeric values are part of the JS contract (lib/native.ts).
enum class BackendKind : int { Cpu = 0, Cuda = 1 };
enum class MemKind : int { Pinned = 0, Device = 1 };

struct MemoryCounters {
  std::atomic<int64_t> count{0};
  std::atomic<int64_t> bytes{0};
};
// [backend][kind]: live allocations, for leak tests and info().
MemoryCounters& memory_counters(BackendKind b, MemKind k);
// CPU backend "device" pool budget in bytes (MOE_OFFLOAD_CPU_DEVICE_MEMORY, default half of physical memory).
int64_t cpu_device_budget();

class Memory : public std::enable_shared_from_this<Memory> {
 public:
  // Throws moe::Error(OutOfMemory) when the allocation fails or exceeds the CPU pool budget,
  // (Cuda) for other CUDA errors, (BackendUnavailable) for CUDA in a build without it.
  static std::shared_ptr<Memory> allocate(BackendKind backend, int device, MemKind kind, size_t bytes);
  ~Memory();

  class Lease {
   public:
    explicit Lease(std::shared_ptr<Memory> m) : m_(std::move(m)) {}
    ~Lease() { m_->release_lease(); }
    Memory& memory() const { return *m_; }

   private:
    std::shared_ptr<Memory> m_;
  };
  // Pins the bytes for an op; throws moe::Error(Disposed) after dispose().
  std::shared_ptr<Lease> lease();
  // Marks disposed; frees now if no lease is held, else when the last lease ends. Idempotent.
  void dispose();

  bool disposed() const { return disposed_.load(); }
  void* data() const { return ptr_; }
  size_t size() const { return bytes_; }
  BackendKind backend() const { return backend_; }
  MemKind kind() const { return kind_; }
  int device() const { return device_; }
  bool host_accessible() const { return kind_ == MemKind::Pinned || backend_ == BackendKind::Cpu; }

 private:
  Memory(BackendKind b, int device, MemKind k, void* ptr, size_t bytes, size_t alloc_bytes);
  void release_lease();
  void free_locked();

  BackendKind backend_;
  int device_;
  MemKind kind_;
  void* ptr_;
  size_t bytes_;
  size_t alloc_bytes_;
  std::mutex m_;
  int leases_ = 0;
  std::atomic<bool> disposed_{false};
  bool freed_ = false;
  bool mapped_ = false;  // CPU memory from map_huge (munmap), else posix_memalign (free)
};

// JS class `Memory(backend, device, kind, bytes)`: dispose(), byteLength, disposed, arrayBuffer().
class MemoryWrap : public Napi::ObjectWrap<MemoryWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit MemoryWrap(const Napi::CallbackInfo& info);
  ~MemoryWrap() override;
  const std::shared_ptr<Memory>& memory() const { return mem_; }
  // The wrapped Memory of a JS value, or nullptr when it is not a Memory object.
  static MemoryWrap* from(const Napi::Value& v);

 private:
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value ArrayBuffer(const Napi::CallbackInfo& info);
  Napi::Value ByteLength(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  void release(Napi::Env env);

  std::shared_ptr<Memory> mem_;
  Napi::Reference<Napi::ArrayBuffer> ab_;
  int64_t reported_ = 0;  // bytes reported to the GC with AdjustExternalMemory
};

// JS class `HostRegistration(typedArray, cuda: boolean)`: page-locks existing JS memory for fast, asynchronous
// CUDA copies (cudaHostRegister, portable + mapped) and keeps the array alive until dispose(); on the CPU backend
// (cuda = false) it only keeps the array alive: there is nothing to lock. dispose() unregisters; the GC does too.
class HostRegistrationWrap : public Napi::ObjectWrap<HostRegistrationWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit HostRegistrationWrap(const Napi::CallbackInfo& info);
  ~HostRegistrationWrap() override;

 private:
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info);
  void release();
  Napi::Reference<Napi::Value> array_;
  void* ptr_ = nullptr;
  bool registered_ = false;  // with CUDA
};

Napi::Value MemoryStats(const Napi::CallbackInfo& info);
Napi::Value AllocAsync(const Napi::CallbackInfo& info);
Napi::Value PrefaultAsync(const Napi::CallbackInfo& info);

}  // namespace moe::js
