// Shared N-API plumbing: typed JS errors from moe::Error, the per-env addon data, and argument readers.
// Only cpp/napi, cpp/ops and cpp/addon.cc include napi.h (DESIGN.md section 2).
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>

#include "core/error.h"

namespace moe::js {

// A JS Error whose `code` is error_code_string(code); lib/errors.ts maps it to the typed class.
Napi::Error make_error(Napi::Env env, ErrorCode code, const std::string& message);
[[noreturn]] void throw_error(Napi::Env env, ErrorCode code, const std::string& message);

// Runs fn and turns moe::Error / std::bad_alloc / std::exception into thrown JS errors with a code,
// so no C++ exception other than Napi::Error ever reaches node-addon-api.
template <class F>
auto guarded(Napi::Env env, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const moe::Error& e) {
    throw make_error(env, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    throw make_error(env, ErrorCode::OutOfMemory, "out of host memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    throw make_error(env, ErrorCode::Internal, std::string("internal error: ") + e.what());
  }
}

// Type tags of the addon's classes, set by each constructor: `tagged` is one napi_check_object_type_tag where
// InstanceOf took three calls and a prototype-chain walk (per op: the stream and every tensor in native memory).
enum class ClassTag { Memory, Stream, Event, Cancel };
void tag_object(const Napi::Value& object, ClassTag tag);
bool tagged(const Napi::Value& v, ClassTag tag);

// Argument readers: each names the argument in its message (`what`) and says what was received.
std::string describe(const Napi::Value& v);
Napi::Object arg_object(const Napi::Value& v, const char* what);
double arg_number(const Napi::Value& v, const char* what);
// A non-negative safe integer (<= 2^53 - 1).
int64_t arg_size(const Napi::Value& v, const char* what);
int32_t arg_int(const Napi::Value& v, const char* what, int32_t lo, int32_t hi);
std::string arg_string(const Napi::Value& v, const char* what);

}  // namespace moe::js
