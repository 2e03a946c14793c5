// See tensor_arg.h.
#include "tensor_arg.h"

#include <string>

namespace moe::js {

TensorArg read_tensor_source(const Napi::Value& v, const char* what, TensorSource& src) {
  Napi::Env env = v.Env();
  Napi::Object o = arg_object(v, what);
  std::string w(what);
  int64_t offset = arg_size(o.Get("offset"), (w + ".offset").c_str());
  int64_t bytes = arg_size(o.Get("bytes"), (w + ".bytes").c_str());
  TensorArg t;
  Napi::Value mem = o.Get("mem");
  if (!mem.IsUndefined()) {
    MemoryWrap* mw = MemoryWrap::from(mem);
    if (!mw) throw_error(env, ErrorCode::InvalidArgument, w + ".mem must be a Memory, received " + describe(mem));
    if (!mw->memory() || mw->memory()->disposed())
      throw_error(env, ErrorCode::Disposed, w + ": its memory was disposed");
    Memory& m = *mw->memory();
    if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(bytes) > m.size())
      throw_error(env, ErrorCode::InvalidArgument,
                  w + ": range [" + std::to_string(offset) + ", " + std::to_string(offset + bytes) +
                      ") exceeds the memory's " + std::to_string(m.size()) + " bytes");
    t.ptr = static_cast<uint8_t*>(m.data()) + offset;
    t.native = true;
    t.backend = m.backend();
    t.kind = m.kind();
    t.device = m.device();
    t.memory = &m;
    src.memory = mw->memory();
  } else {
    Napi::Value arr = o.Get("array");
    if (!arr.IsTypedArray())
      throw_error(env, ErrorCode::InvalidArgument, w + " needs .mem (Memory) or .array (TypedArray), received " +
                                                       describe(arr));
    Napi::TypedArray ta = arr.As<Napi::TypedArray>();
    Napi::ArrayBuffer ab = ta.ArrayBuffer();
    if (ab.IsDetached())
      throw_error(env, ErrorCode::InvalidArgument, w + ": its ArrayBuffer is detached (transferred or disposed)");
    if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(bytes) > ta.ByteLength())
      throw_error(env, ErrorCode::InvalidArgument,
                  w + ": range [" + std::to_string(offset) + ", " + std::to_string(offset + bytes) +
                      ") exceeds the array's " + std::to_string(ta.ByteLength()) + " bytes");
    t.ptr = static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset() + offset;
    src.array = ta;
  }
  t.bytes = static_cast<size_t>(bytes);
  return t;
}

TensorArg read_tensor(AsyncOp& op, const Napi::Value& v, const char* what) {
  TensorSource src;
  TensorArg t = read_tensor_source(v, what, src);
  // The lease pins the bytes until the op settles (read_tensor_source has just checked it is not disposed, and
  // only the JS thread disposes).
  if (src.memory) op.hold(src.memory->lease());
  else op.keep(src.array);
  return t;
}

void check_placement(Napi::Env env, const TensorArg& t, const Stream& stream, const char* op, const char* what,
                     bool any_host) {
  check_placement(env, t, stream.backend(), stream.device(), op, what, any_host);
}

void check_placement(Napi::Env env, const TensorArg& t, BackendKind backend, int device, const char* op,
                     const char* what, bool any_host) {
  auto where = [&]() -> std::string {
    if (!t.native) return "JS memory";
    std::string b = t.backend == BackendKind::Cuda ? "cuda:" + std::to_string(t.device) : "cpu";
    return (t.kind == MemKind::Pinned ? "pinned memory (" : "device memory (") + b + ")";
  };
  if (backend == BackendKind::Cpu) {
    if (!t.host_accessible())
      throw_error(env, ErrorCode::InvalidArgument,
                  std::string(op) + ": " + what + " is in " + where() +
                      ", which a cpu stream cannot read; copy it on a cuda stream first");
    return;
  }
  bool same_device = t.cuda_device() && t.device == device;
  bool cuda_pinned = t.native && t.backend == BackendKind::Cuda && t.kind == MemKind::Pinned;
  if (same_device || cuda_pinned || (any_host && !t.cuda_device())) return;
  throw_error(env, ErrorCode::InvalidArgument,
              std::string(op) + ": " + what + " is in " + where() + ", but the op runs on cuda:" +
                  std::to_string(device) + (any_host ? "" : " (it needs device memory there)"));
}

void check_aligned(Napi::Env env, const TensorArg& t, DType dtype, const char* op, const char* what) {
  if (reinterpret_cast<uintptr_t>(t.ptr) % dtype_size(dtype) != 0)
    throw_error(env, ErrorCode::InvalidArgument,
                std::string(op) + ": " + what + " must start on a multiple of " + std::to_string(dtype_size(dtype)) +
                    " bytes (the size of " + dtype_name(dtype) + ")");
}

void check_bytes(Napi::Env env, const TensorArg& t, uint64_t bytes, const char* op, const char* what) {
  if (t.bytes != bytes)
    throw_error(env, ErrorCode::InvalidArgument,
                std::string(op) + ": " + what + " must hold " + std::to_string(bytes) + " bytes, received " +
                    std::to_string(t.bytes));
}

}  // namespace moe::js
