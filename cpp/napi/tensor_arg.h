// Reading a tensor argument of an op. lib/ passes every tensor as a three-element array
//   [source: Memory | TypedArray, offset: number, bytes: number]
// (a Memory for native memory, a TypedArray for JS memory; offset/bytes relative to it): element reads, where an
// object's named properties cost V8 a string lookup each (about 60% of a small op's native call did, callgrind
// 2026-11-27). The op keeps a reference to the array or a lease on the memory until it settles, so nothing it reads
// can be freed under it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "async_op.h"
#include "core/dtype.h"
#include "memory.h"
#include "stream.h"

namespace moe::js {

struct TensorArg {
  uint8_t* ptr = nullptr;
  size_t bytes = 0;
  bool native = false;                    // native Memory (else a JS TypedArray)
  BackendKind backend = BackendKind::Cpu; // of the Memory
  MemKind kind = MemKind::Pinned;         // of the Memory
  int device = 0;
  const Memory* memory = nullptr;         // for overlap checks
  bool host_accessible() const { return !native || backend == BackendKind::Cpu || kind == MemKind::Pinned; }
  bool cuda_device() const { return native && backend == BackendKind::Cuda && kind == MemKind::Device; }
};

TensorArg read_tensor(AsyncOp& op, const Napi::Value& v, const char* what);

// What keeps a tensor argument's bytes alive: its native Memory (not leased: dispose() still frees it) or its JS
// TypedArray. read_tensor_source reads and range-checks v like read_tensor but holds nothing itself; for holders
// that outlive one op (cpp/napi/expert_table.h). Throws Disposed when the Memory was disposed.
struct TensorSource {
  std::shared_ptr<Memory> memory;  // set for native memory
  Napi::TypedArray array;          // set for JS memory
};
TensorArg read_tensor_source(const Napi::Value& v, const char* what, TensorSource& src);

// Where may an op on `stream` read/write t? CPU streams: host-accessible memory. CUDA streams: device memory of
// the same device or CUDA pinned (mapped) memory; copies (any_host = true) also accept any host memory.
void check_placement(Napi::Env env, const TensorArg& t, const Stream& stream, const char* op, const char* what,
                     bool any_host);
// The same for ops of a backend and device (BackendKind::Cuda: a cuda device), without a stream at hand.
void check_placement(Napi::Env env, const TensorArg& t, BackendKind backend, int device, const char* op,
                     const char* what, bool any_host);

// t must start on a multiple of the element size (GPU kernels fault on misaligned elements; lib/ views ensure
// it, direct callers of the native surface might not).
void check_aligned(Napi::Env env, const TensorArg& t, DType dtype, const char* op, const char* what);

// t must hold exactly `bytes` bytes.
void check_bytes(Napi::Env env, const TensorArg& t, uint64_t bytes, const char* op, const char* what);

}  // namespace moe::js
