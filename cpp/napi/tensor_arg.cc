// See tensor_arg.h.
#include "tensor_arg.h"

#include <cmath>
#include <string>

namespace moe::js {

TensorArg read_tensor_source(const Napi::Value& v, const char* what, TensorSource& src) {
  Napi::Env env = v.Env();
  if (!v.IsArray())
    throw_error(env, ErrorCode::InvalidArgument,
                std::string(what) + " must be a tensor descriptor [Memory | TypedArray, offset, bytes], received " +
                    describe(v));
  Napi::Array a = v.As<Napi::Array>();
  // element reads, and the argument's name built only for an error message (this runs for every tensor of every op)
  auto size_at = [&](uint32_t i, const char* suffix) -> int64_t {
    Napi::Value x = a.Get(i);
    if (x.IsNumber()) {
      double d = x.As<Napi::Number>().DoubleValue();
      if (d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d) return static_cast<int64_t>(d);
    }
    return arg_size(x, (std::string(what) + suffix).c_str());  // throws the typed error
  };
  Napi::Value source = a.Get(0u);
  int64_t offset = size_at(1, ".offset");
  int64_t bytes = size_at(2, ".bytes");
  auto range = [&](uint64_t size, const char* of) {
    if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(bytes) > size)
      throw_error(env, ErrorCode::InvalidArgument,
                  std::string(what) + ": range [" + std::to_string(offset) + ", " + std::to_string(offset + bytes) +
                      ") exceeds the " + of + "'s " + std::to_string(size) + " bytes");
  };
  TensorArg t;
  bool is_typed = false;
  napi_is_typedarray(env, source, &is_typed);
  if (is_typed) {
    // one napi_get_typedarray_info for what node-addon-api's accessors would each ask it for again
    napi_typedarray_type type;
    size_t length = 0;
    void* data = nullptr;
    napi_value buffer = nullptr;
    size_t byte_offset = 0;
    NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, source, &type, &length, &data, &buffer, &byte_offset), TensorArg());
    bool detached = false;
    NAPI_THROW_IF_FAILED(env, napi_is_detached_arraybuffer(env, buffer, &detached), TensorArg());
    if (detached)
      throw_error(env, ErrorCode::InvalidArgument, std::string(what) + ": its ArrayBuffer is detached (transferred or disposed)");
    size_t elem = 1;
    switch (type) {
      case napi_int16_array: case napi_uint16_array: elem = 2; break;
      case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
      case napi_float64_array: case napi_bigint64_array: case napi_biguint64_array: elem = 8; break;
      default: elem = 1;  // int8, uint8, uint8 clamped (a float16 array, where Node has one, is not a tensor source)
    }
    Napi::TypedArray ta = source.As<Napi::TypedArray>();
    range(length * elem, "array");
    t.ptr = static_cast<uint8_t*>(data) + offset;
    src.array = ta;
  } else if (MemoryWrap* mw = MemoryWrap::from(source)) {
    if (!mw->memory() || mw->memory()->disposed())
      throw_error(env, ErrorCode::Disposed, std::string(what) + ": its memory was disposed");
    Memory& m = *mw->memory();
    range(m.size(), "memory");
    t.ptr = static_cast<uint8_t*>(m.data()) + offset;
    t.native = true;
    t.backend = m.backend();
    t.kind = m.kind();
    t.device = m.device();
    t.memory = &m;
    src.memory = mw->memory();
  } else {
    throw_error(env, ErrorCode::InvalidArgument,
                std::string(what) + "[0] must be a Memory or a TypedArray, received " + describe(source));
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
