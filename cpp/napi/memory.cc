// See memory.h.
#include "memory.h"

#include <unistd.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../core/threadpool.h"
#include "addon_data.h"
#include "stream.h"
#include "moe_cuda.h"

namespace moe::js {

namespace {

MemoryCounters g_counters[2][2];
std::atomic<int64_t> g_cpu_device_used{0};
constexpr size_t kHuge = size_t{2} << 20;     // x86-64 transparent huge page

int64_t parse_bytes(const char* s) {
  char* end = nullptr;
  double v = std::strtod(s, &end);
  if (end == s || !(v > 0)) return -1;
  switch (*end) {
    case 'k': case 'K': v *= 1024.0; break;
    case 'm': case 'M': v *= 1024.0 * 1024.0; break;
    case 'g': case 'G': v *= 1024.0 * 1024.0 * 1024.0; break;
    case 't': case 'T': v *= 1024.0 * 1024.0 * 1024.0 * 1024.0; break;
    default: break;
  }
  return static_cast<int64_t>(v);
}

// `bytes` (a multiple of 4096) of fresh zeroed pages at a kHuge-aligned address, advised onto transparent huge
// pages; nullptr when the OS refuses. Elsewhere than Linux: posix_memalign, zeroed here.
void* map_huge(size_t bytes) {
#if defined(__linux__)
  const size_t span = bytes + kHuge;
  if (span < bytes) return nullptr;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + kHuge - 1) / kHuge * kHuge;
  if (aligned > base) munmap(raw, aligned - base);
  const uintptr_t end = aligned + bytes;
  if (base + span > end) munmap(reinterpret_cast<void*>(end), base + span - end);
  void* p = reinterpret_cast<void*>(aligned);
#if defined(MADV_HUGEPAGE)
  if (bytes >= kHuge) madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);  // advice only
#endif
  return p;
#else
  void* p = nullptr;
  if (posix_memalign(&p, kHuge, bytes) != 0) return nullptr;
  std::memset(p, 0, bytes);
  return p;
#endif
}

void unmap_huge(void* p, size_t bytes) {
#if defined(__linux__)
  munmap(p, bytes);
#else
  (void)bytes;
  std::free(p);
#endif
}

std::string mib(size_t bytes) {
  char buf[64];
  snprintf(buf, sizeof buf, "%zu bytes (%.1f MiB)", bytes, bytes / 1048576.0);
  return buf;
}

}  // namespace

MemoryCounters& memory_counters(BackendKind b, MemKind k) {
  return g_counters[static_cast<int>(b)][static_cast<int>(k)];
}

int64_t cpu_device_budget() {
  static const int64_t budget = [] {
    if (const char* env = std::getenv("MOE_OFFLOAD_CPU_DEVICE_MEMORY")) {
      int64_t v = parse_bytes(env);
      if (v > 0) return v;
    }
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page / 2 : (int64_t{4} << 30);
  }();
  return budget;
}

std::shared_ptr<Memory> Memory::allocate(BackendKind backend, int device, MemKind kind, size_t bytes) {
  // Zero-sized tensors are legal; give them one real byte so every Memory has a distinct valid pointer.
  size_t alloc = bytes == 0 ? 1 : bytes;
  void* ptr = nullptr;
  bool mapped = false;
  if (backend == BackendKind::Cuda) {
#if MOE_WITH_CUDA
    int err = kind == MemKind::Pinned ? moe_cuda_host_alloc(alloc, &ptr) : moe_cuda_malloc(device, alloc, &ptr);
    if (err != 0) {
      // cudaErrorMemoryAllocation = 2
      ErrorCode code = err == 2 ? ErrorCode::OutOfMemory : ErrorCode::Cuda;
      moe::throw_error(code, std::string(kind == MemKind::Pinned ? "cudaHostAlloc" : "cudaMalloc") + " of " +
                            mib(bytes) + (kind == MemKind::Device ? " on cuda:" + std::to_string(device) : "") +
                            " failed: " + moe_cuda_error_name(err) + ": " + moe_cuda_error_string(err));
    }
#else
    moe::throw_error(ErrorCode::BackendUnavailable, "CUDA memory requested but this build has no CUDA");
#endif
  } else {
    if (kind == MemKind::Device) {
      int64_t budget = cpu_device_budget();
      int64_t used = g_cpu_device_used.fetch_add(static_cast<int64_t>(alloc)) + static_cast<int64_t>(alloc);
      if (used > budget) {
        g_cpu_device_used.fetch_sub(static_cast<int64_t>(alloc));
        moe::throw_error(ErrorCode::OutOfMemory, "CPU device pool exhausted: requested " + mib(bytes) + ", " +
                                                mib(static_cast<size_t>(used - static_cast<int64_t>(alloc))) +
                                                " in use of a budget of " + mib(static_cast<size_t>(budget)) +
                                                " (MOE_OFFLOAD_CPU_DEVICE_MEMORY)");
      }
    }
    // Page alignment: what cudaHostAlloc gives, and what O_DIRECT reads and AVX-512 loads like. Large buffers
    // (expert stores, slots, KV pools, weights: Backend.allocHost) are mapped fresh, 2 MiB aligned, and asked for
    // transparent huge pages: the kernels stream them in segments (a KV page of one head, an expert's rows, a
    // weight's rows) that cross many 4 KiB pages, and with 4 KiB pages every crossing costs a TLB miss and restarts
    // the hardware prefetcher (the attention decode bench read 10-15% faster on huge pages, a batch-1 GEMV 4-17%).
    // Fresh mappings are zero (allocHost relies on it) and go back to the OS when freed. The last partial 2 MiB
    // stays on 4 KiB pages (no rounding up of the size).
    const size_t rounded = (alloc + 4095) / 4096 * 4096;
    if (rounded < alloc) {
      ptr = nullptr;
    } else if (alloc >= kHugeMin) {
      ptr = map_huge(rounded);
      mapped = ptr != nullptr;
    } else if (posix_memalign(&ptr, 4096, rounded) != 0) {
      ptr = nullptr;
    }
    if (!ptr) {
      if (kind == MemKind::Device) g_cpu_device_used.fetch_sub(static_cast<int64_t>(alloc));
      moe::throw_error(ErrorCode::OutOfMemory, "host allocation of " + mib(bytes) + " failed");
    }
  }
  MemoryCounters& c = memory_counters(backend, kind);
  c.count++;
  c.bytes += static_cast<int64_t>(bytes);
  std::shared_ptr<Memory> m(new Memory(backend, device, kind, ptr, bytes, alloc));
  m->mapped_ = mapped;
  return m;
}

Memory::Memory(BackendKind b, int device, MemKind k, void* ptr, size_t bytes, size_t alloc_bytes)
    : backend_(b), device_(device), kind_(k), ptr_(ptr), bytes_(bytes), alloc_bytes_(alloc_bytes) {}

Memory::~Memory() {
  std::lock_guard<std::mutex> lock(m_);
  free_locked();
}

void Memory::free_locked() {
  if (freed_) return;
  freed_ = true;
  if (backend_ == BackendKind::Cuda) {
#if MOE_WITH_CUDA
    // A failure here (e.g. a sticky context error) cannot be reported to anyone; the bytes are lost either way.
    if (kind_ == MemKind::Pinned) moe_cuda_host_free(ptr_);
    else moe_cuda_free(device_, ptr_);
#endif
  } else {
    if (mapped_) unmap_huge(ptr_, (alloc_bytes_ + 4095) / 4096 * 4096);
    else std::free(ptr_);
    if (kind_ == MemKind::Device) g_cpu_device_used.fetch_sub(static_cast<int64_t>(alloc_bytes_));
  }
  MemoryCounters& c = memory_counters(backend_, kind_);
  c.count--;
  c.bytes -= static_cast<int64_t>(bytes_);
  ptr_ = nullptr;
}

std::shared_ptr<Memory::Lease> Memory::lease() {
  std::lock_guard<std::mutex> lock(m_);
  if (disposed_.load()) moe::throw_error(ErrorCode::Disposed, "memory was disposed");
  leases_++;
  return std::make_shared<Lease>(shared_from_this());
}

void Memory::release_lease() {
  std::lock_guard<std::mutex> lock(m_);
  if (--leases_ == 0 && disposed_.load()) free_locked();
}

void Memory::dispose() {
  std::lock_guard<std::mutex> lock(m_);
  disposed_.store(true);
  if (leases_ == 0) free_locked();
}

// ---- JS wrapper ----------------------------------------------------------------------------------------------

Napi::Function MemoryWrap::Init(Napi::Env env) {
  return DefineClass(env, "Memory",
                     {InstanceMethod<&MemoryWrap::Dispose>("dispose"),
                      InstanceMethod<&MemoryWrap::ArrayBuffer>("arrayBuffer"),
                      InstanceAccessor<&MemoryWrap::ByteLength>("byteLength"),
                      InstanceAccessor<&MemoryWrap::Disposed>("disposed")});
}

// new Memory(backend: 0 cpu | 1 cuda, device: int, kind: 0 pinned | 1 device, bytes: int)
// (allocAsync constructs it with one External holding the Memory it allocated on a worker thread)
MemoryWrap::MemoryWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MemoryWrap>(info) {
  Napi::Env env = info.Env();
  tag_object(info.This(), ClassTag::Memory);
  guarded(env, [&] {
    if (info.Length() == 1 && info[0].IsExternal()) {
      mem_ = *info[0].As<Napi::External<std::shared_ptr<Memory>>>().Data();
      reported_ = static_cast<int64_t>(mem_->size());
      Napi::MemoryManagement::AdjustExternalMemory(env, reported_);
      return;
    }
    auto backend = static_cast<BackendKind>(arg_int(info[0], "backend", 0, 1));
    int device = arg_int(info[1], "device", 0, 1023);
    auto kind = static_cast<MemKind>(arg_int(info[2], "kind", 0, 1));
    int64_t bytes = arg_size(info[3], "bytes");
    mem_ = Memory::allocate(backend, device, kind, static_cast<size_t>(bytes));
    reported_ = bytes;
    Napi::MemoryManagement::AdjustExternalMemory(env, reported_);
  });
}

MemoryWrap::~MemoryWrap() {
  // Finalizer (GC) path: only drop our hold. The bytes go when the ArrayBuffer view (if any) and in-flight ops
  // let go too: disposing here could free bytes a still-reachable ArrayBuffer points at.
  if (reported_ != 0) Napi::MemoryManagement::AdjustExternalMemory(Env(), -reported_);
  mem_.reset();
}

MemoryWrap* MemoryWrap::from(const Napi::Value& v) {
  return tagged(v, ClassTag::Memory) ? MemoryWrap::Unwrap(v.As<Napi::Object>()) : nullptr;
}

void MemoryWrap::release(Napi::Env env) {
  if (!ab_.IsEmpty()) {
    Napi::ArrayBuffer ab = ab_.Value();
    if (!ab.IsDetached()) ab.Detach();
    ab_.Reset();
  }
  if (mem_) mem_->dispose();
  if (reported_ != 0) {
    Napi::MemoryManagement::AdjustExternalMemory(env, -reported_);
    reported_ = 0;
  }
}

Napi::Value MemoryWrap::Dispose(const Napi::CallbackInfo& info) {
  release(info.Env());
  return info.Env().Undefined();
}

// The bytes as an external ArrayBuffer (host-accessible kinds only); the same object on every call.
Napi::Value MemoryWrap::ArrayBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!mem_ || mem_->disposed()) throw_error(env, ErrorCode::Disposed, "memory was disposed");
    if (!mem_->host_accessible())
      throw_error(env, ErrorCode::InvalidArgument, "device memory has no host view; copy it to host memory");
    if (!ab_.IsEmpty()) return ab_.Value();
    auto* hold = new std::shared_ptr<Memory>(mem_);
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(
        env, mem_->data(), mem_->size(), [](Napi::Env, void*, std::shared_ptr<Memory>* h) { delete h; }, hold);
    ab_ = Napi::Persistent(ab);
    return ab;
  });
}

Napi::Value MemoryWrap::ByteLength(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), mem_ ? static_cast<double>(mem_->size()) : 0.0);
}

Napi::Value MemoryWrap::Disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !mem_ || mem_->disposed());
}

// allocAsync(stream, { backend, device, kind, bytes }, cancel?) -> Promise<Memory>
// The allocation itself runs on the stream's thread: page-locking gigabytes (cudaHostAlloc) takes a noticeable
// fraction of a second per GiB, which must not stall the JS thread. Use a stream of its own (lib/ does).
Napi::Value AllocAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::shared_ptr<Stream> stream = StreamWrap::from(info[0], "stream");
    Napi::Object p = arg_object(info[1], "params");
    auto backend = static_cast<BackendKind>(arg_int(p.Get("backend"), "backend", 0, 1));
    int device = arg_int(p.Get("device"), "device", 0, 1023);
    auto kind = static_cast<MemKind>(arg_int(p.Get("kind"), "kind", 0, 1));
    size_t bytes = static_cast<size_t>(arg_size(p.Get("bytes"), "bytes"));
    auto op = std::make_unique<AsyncOp>(env, "allocAsync");
    op->cancel = CancelWrap::from(info[2]);
    auto slot = std::make_shared<std::shared_ptr<Memory>>();
    op->work = [slot, backend, device, kind, bytes](const ExecContext&) {
      *slot = Memory::allocate(backend, device, kind, bytes);
    };
    // On the JS thread after success: wrap it. A failed or abandoned op drops `slot`, freeing the bytes.
    op->result = [slot](Napi::Env e) -> Napi::Value {
      auto* hold = new std::shared_ptr<Memory>(*slot);
      Napi::External<std::shared_ptr<Memory>> ext = Napi::External<std::shared_ptr<Memory>>::New(
          e, hold, [](Napi::Env, std::shared_ptr<Memory>* h) { delete h; });
      return AddonData::get(e)->memory_ctor.New({ext});
    };
    Napi::Promise promise = op->promise();
    stream->submit(op.release());
    return promise;
  });
}

// prefaultAsync(stream, memory, cancel?) -> Promise<boolean>
// Maps in every page of CPU-backend memory ahead of its first use: fresh mappings (Memory::allocate) fault each
// page in when first written, and on a VM that costs ~11 us per 4 KiB page (the development VM: 256 MiB took 0.74 s
// on 4 KiB pages, 0.43 s on huge pages), paid inside whichever step first writes there (the KV cache's pages, a
// step arena's buffer). MADV_POPULATE_WRITE fills the page tables as a write would without touching the bytes, so
// it is safe beside ops that use the memory. The CPU pool's threads share it in 16 MiB pieces; it stops early when
// the memory is disposed. Resolves true when it populated; false when there was nothing to do (CUDA memory is
// resident once allocated) or the kernel lacks the call (Linux < 5.14). Rejects OutOfMemory when the pages cannot
// be backed.
Napi::Value PrefaultAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::shared_ptr<Stream> stream = StreamWrap::from(info[0], "stream");
    MemoryWrap* mw = MemoryWrap::from(info[1]);
    if (!mw || !mw->memory()) throw_error(env, ErrorCode::InvalidArgument, "memory must be a Memory, received " + describe(info[1]));
    std::shared_ptr<Memory::Lease> lease = mw->memory()->lease();  // throws Disposed
    auto op = std::make_unique<AsyncOp>(env, "prefaultAsync");
    op->cancel = CancelWrap::from(info[2]);
    auto done = std::make_shared<bool>(false);
    op->work = [lease, done](const ExecContext& ctx) {
      Memory& m = lease->memory();
      if (m.backend() != BackendKind::Cpu) return;
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
      char* base = static_cast<char*>(m.data());
      const size_t bytes = (m.size() + 4095) / 4096 * 4096;  // allocations are whole pages (Memory::allocate)
      constexpr size_t kPiece = size_t{16} << 20;
      const size_t pieces = (bytes + kPiece - 1) / kPiece;
      std::atomic<int> err{0};
      const bool finished = ThreadPool::global().parallel_for(pieces, 1, [&](size_t b, size_t e) {
        for (size_t i = b; i < e && err.load(std::memory_order_relaxed) == 0 && !m.disposed(); i++) {
          const size_t at = i * kPiece;
          if (madvise(base + at, std::min(kPiece, bytes - at), MADV_POPULATE_WRITE) != 0) err.store(errno);
        }
      }, ctx.cancel);
      if (!finished) moe::throw_error(ErrorCode::Cancelled, "prefault cancelled");
      const int e = err.load();
      if (e == EINVAL) return;  // a kernel without MADV_POPULATE_WRITE: pages fault in on first use, as before
      if (e == ENOMEM || e == EFAULT)
        moe::throw_error(ErrorCode::OutOfMemory, "prefault of " + mib(bytes) + ": the pages could not be backed (" + std::strerror(e) + ")");
      if (e != 0) moe::throw_error(ErrorCode::Internal, std::string("prefault: madvise failed: ") + std::strerror(e));
      *done = !m.disposed();
#else
      (void)ctx;
#endif
    };
    op->result = [done](Napi::Env e) -> Napi::Value { return Napi::Boolean::New(e, *done); };
    Napi::Promise promise = op->promise();
    stream->submit(op.release());
    return promise;
  });
}

// ---- registered host memory ---------------------------------------------------------------------------------

Napi::Function HostRegistrationWrap::Init(Napi::Env env) {
  return DefineClass(env, "HostRegistration",
                     {InstanceMethod<&HostRegistrationWrap::Dispose>("dispose"),
                      InstanceAccessor<&HostRegistrationWrap::Disposed>("disposed")});
}

HostRegistrationWrap::HostRegistrationWrap(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<HostRegistrationWrap>(info) {
  Napi::Env env = info.Env();
  guarded(env, [&] {
    if (!info[0].IsTypedArray())
      throw_error(env, ErrorCode::InvalidArgument, "array must be a TypedArray, received " + describe(info[0]));
    Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
    Napi::ArrayBuffer ab = ta.ArrayBuffer();
    if (ab.IsDetached()) throw_error(env, ErrorCode::InvalidArgument, "array: its ArrayBuffer is detached");
    if (ta.ByteLength() == 0) throw_error(env, ErrorCode::InvalidArgument, "array must not be empty");
    ptr_ = static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset();
    bool cuda = info[1].ToBoolean().Value();
    if (cuda) {
#if MOE_WITH_CUDA
      int err = moe_cuda_host_register(ptr_, ta.ByteLength());
      if (err != 0)
        throw_error(env, err == 2 ? ErrorCode::OutOfMemory : ErrorCode::Cuda,
                    std::string("cudaHostRegister of ") + mib(ta.ByteLength()) + " failed: " + moe_cuda_error_name(err) +
                        ": " + moe_cuda_error_string(err));
      registered_ = true;
#else
      throw_error(env, ErrorCode::BackendUnavailable, "cudaHostRegister requested but this build has no CUDA");
#endif
    }
    array_ = Napi::Persistent(info[0]);
  });
}

HostRegistrationWrap::~HostRegistrationWrap() { release(); }

void HostRegistrationWrap::release() {
#if MOE_WITH_CUDA
  if (registered_) moe_cuda_host_unregister(ptr_);
#endif
  registered_ = false;
  ptr_ = nullptr;
  array_.Reset();
}

Napi::Value HostRegistrationWrap::Dispose(const Napi::CallbackInfo& info) {
  release();
  return info.Env().Undefined();
}

Napi::Value HostRegistrationWrap::Disposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), array_.IsEmpty());
}

// memoryStats(): live native allocations { cpu: {pinned: {count, bytes}, device: {...}}, cuda: {...} }
Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  const char* backends[2] = {"cpu", "cuda"};
  const char* kinds[2] = {"pinned", "device"};
  for (int b = 0; b < 2; b++) {
    Napi::Object ob = Napi::Object::New(env);
    for (int k = 0; k < 2; k++) {
      MemoryCounters& c = g_counters[b][k];
      Napi::Object ok = Napi::Object::New(env);
      ok.Set("count", Napi::Number::New(env, static_cast<double>(c.count.load())));
      ok.Set("bytes", Napi::Number::New(env, static_cast<double>(c.bytes.load())));
      ob.Set(kinds[k], ok);
    }
    out.Set(backends[b], ob);
  }
  out.Set("cpuDeviceBudget", Napi::Number::New(env, static_cast<double>(cpu_device_budget())));
  // Bytes the C allocator has handed out and not got back (glibc >= 2.33): a precise native-leak signal that,
  // unlike RSS, does not move with fragmentation or with pages the allocator keeps for reuse.
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  struct mallinfo2 mi = mallinfo2();
  out.Set("mallocInUse", Napi::Number::New(env, static_cast<double>(mi.uordblks + mi.hblkhd)));
#endif
  return out;
}

}  // namespace moe::js
