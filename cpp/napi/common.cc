// See common.h.
#include "common.h"

#include <cmath>

namespace moe::js {

Napi::Error make_error(Napi::Env env, ErrorCode code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Value().Set("code", Napi::String::New(env, error_code_string(code)));
  return err;
}

void throw_error(Napi::Env env, ErrorCode code, const std::string& message) {
  throw make_error(env, code, message);
}

namespace {
// Random 128-bit values, one per class (napi_type_tag: lower, upper).
constexpr napi_type_tag kTags[] = {
    {0x6d6f652d6d656d31ULL, 0x9b1f2c7a5e3d4c81ULL},  // Memory
    {0x6d6f652d73747231ULL, 0x2f8e6a1c9d3b7e55ULL},  // Stream
    {0x6d6f652d65766e31ULL, 0xc41d7b9e0a6f3d29ULL},  // Event
    {0x6d6f652d636e6331ULL, 0x58a3e0f7b21c9d64ULL},  // Cancel
};
}  // namespace

void tag_object(const Napi::Value& object, ClassTag tag) {
  object.As<Napi::Object>().TypeTag(&kTags[static_cast<int>(tag)]);
}

bool tagged(const Napi::Value& v, ClassTag tag) {
  return v.IsObject() && v.As<Napi::Object>().CheckTypeTag(&kTags[static_cast<int>(tag)]);
}

std::string describe(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return v.As<Napi::Boolean>().Value() ? "true" : "false";
    case napi_number: {
      double d = v.As<Napi::Number>().DoubleValue();
      if (std::isnan(d)) return "NaN";
      char buf[64];
      snprintf(buf, sizeof buf, "%.17g", d);
      return buf;
    }
    case napi_string: {
      std::string s = v.As<Napi::String>().Utf8Value();
      if (s.size() > 40) s = s.substr(0, 40) + "...";
      return "\"" + s + "\"";
    }
    case napi_symbol: return "a symbol";
    case napi_function: return "a function";
    case napi_bigint: return "a bigint";
    default:
      if (v.IsTypedArray()) return "a typed array";
      if (v.IsArrayBuffer()) return "an ArrayBuffer";
      if (v.IsArray()) return "an array";
      return "an object";
  }
}

Napi::Object arg_object(const Napi::Value& v, const char* what) {
  if (!v.IsObject()) throw_error(v.Env(), ErrorCode::InvalidArgument,
                                 std::string(what) + " must be an object, received " + describe(v));
  return v.As<Napi::Object>();
}

double arg_number(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw_error(v.Env(), ErrorCode::InvalidArgument,
                                 std::string(what) + " must be a number, received " + describe(v));
  return v.As<Napi::Number>().DoubleValue();
}

int64_t arg_size(const Napi::Value& v, const char* what) {
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= 0 && d <= 9007199254740991.0 && std::floor(d) == d))
    throw_error(v.Env(), ErrorCode::InvalidArgument,
                std::string(what) + " must be a non-negative integer, received " + describe(v));
  return static_cast<int64_t>(d);
}

int32_t arg_int(const Napi::Value& v, const char* what, int32_t lo, int32_t hi) {
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= lo && d <= hi && std::floor(d) == d))
    throw_error(v.Env(), ErrorCode::InvalidArgument,
                std::string(what) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                    "], received " + describe(v));
  return static_cast<int32_t>(d);
}

std::string arg_string(const Napi::Value& v, const char* what) {
  if (!v.IsString()) throw_error(v.Env(), ErrorCode::InvalidArgument,
                                 std::string(what) + " must be a string, received " + describe(v));
  return v.As<Napi::String>().Utf8Value();
}

}  // namespace moe::js
