// Status going up from pure C++ code: a typed exception that the N-API layer turns into a JS error with a
// `code`, and the native test executable prints. Kernels themselves never throw or abort.
#pragma once
#include <stdexcept>
#include <string>

namespace moe {

enum class ErrorCode {
  InvalidArgument,     // MOE_INVALID_ARGUMENT
  OutOfMemory,         // MOE_OUT_OF_MEMORY
  Cuda,                // MOE_CUDA_ERROR
  Disposed,            // MOE_DISPOSED
  BackendUnavailable,  // MOE_BACKEND_UNAVAILABLE
  Cancelled,           // MOE_CANCELLED (TS replaces it with the AbortSignal's reason)
  Internal,            // MOE_INTERNAL
};

inline const char* error_code_string(ErrorCode c) {
  switch (c) {
    case ErrorCode::InvalidArgument: return "MOE_INVALID_ARGUMENT";
    case ErrorCode::OutOfMemory: return "MOE_OUT_OF_MEMORY";
    case ErrorCode::Cuda: return "MOE_CUDA_ERROR";
    case ErrorCode::Disposed: return "MOE_DISPOSED";
    case ErrorCode::BackendUnavailable: return "MOE_BACKEND_UNAVAILABLE";
    case ErrorCode::Cancelled: return "MOE_CANCELLED";
    case ErrorCode::Internal: return "MOE_INTERNAL";
  }
  return "MOE_INTERNAL";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void throw_error(ErrorCode code, const std::string& message) { throw Error(code, message); }

}  // namespace moe
