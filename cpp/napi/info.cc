// info(detail?): what this binary was built with and what it finds on this host (CPU features, CUDA devices or the
// reason CUDA is unavailable). lib/info.ts adds the package version and the backend in use.
#include <string>

#include "core/isa.h"
#include "core/threadpool.h"
#include "memory.h"
#include "moe_cuda.h"

namespace moe::js {

namespace {

std::string cuda_version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace

// detail = true also reads each device's free memory, which creates its CUDA context (hundreds of MB, ~100 ms):
// only when a person asks (lib's info()), never for backend selection.
Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool detail = info[0].ToBoolean().Value();
  Napi::Object out = Napi::Object::New(env);

  Napi::Object build = Napi::Object::New(env);
#if MOE_WITH_CUDA
  build.Set("cuda", true);
#ifdef MOE_CUDA_ARCHS
  build.Set("cudaArchitectures", MOE_CUDA_ARCHS);
#endif
#else
  build.Set("cuda", false);
#endif
#ifdef MOE_PACKAGE_BUILD
  build.Set("system", MOE_PACKAGE_BUILD);
#endif
#if defined(__clang__)
  build.Set("compiler", "clang " __clang_version__);
#elif defined(__GNUC__)
  build.Set("compiler", "gcc " __VERSION__);
#endif
  out.Set("build", build);

  const CpuInfo& c = cpu_info();
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("model", c.model);
  cpu.Set("cores", c.logical_cores);
  cpu.Set("threads", ThreadPool::global().size());
  Napi::Object feat = Napi::Object::New(env);
  feat.Set("avx2", c.avx2);
  feat.Set("avx512f", c.avx512f);
  feat.Set("avx512bf16", c.avx512bf16);
  feat.Set("amx", c.amx);
  cpu.Set("features", feat);
  cpu.Set("bestIsa", isa_name(c.best));
  cpu.Set("isaCap", isa_name(c.cap));
  cpu.Set("isa", isa_name(c.active));
  out.Set("cpu", cpu);

  Napi::Object cuda = Napi::Object::New(env);
  Napi::Array devices = Napi::Array::New(env);
#if MOE_WITH_CUDA
  int driver = 0, runtime = 0, count = 0;
  moe_cuda_driver_version(&driver);
  moe_cuda_runtime_version(&runtime);
  cuda.Set("runtimeVersion", cuda_version_string(runtime));
  cuda.Set("driverVersion", driver > 0 ? Napi::Value(Napi::String::New(env, cuda_version_string(driver)))
                                       : env.Null());
  int err = moe_cuda_device_count(&count);
  if (err != 0 || count == 0) {
    std::string why = err == 35  ? "no usable CUDA driver"
                      : err == 100 ? "no CUDA device"
                      : err == 0   ? "no CUDA device"
                                   : "CUDA initialisation failed";
    if (err != 0) why += std::string(" (") + moe_cuda_error_name(err) + ": " + moe_cuda_error_string(err) + ")";
    cuda.Set("available", false);
    cuda.Set("reason", why);
  } else {
    cuda.Set("available", true);
    for (int d = 0; d < count; d++) {
      MoeCudaDeviceInfo di;
      if (moe_cuda_device_info(d, &di) != 0) continue;
      Napi::Object o = Napi::Object::New(env);
      o.Set("index", d);
      o.Set("name", std::string(di.name));
      o.Set("computeCapability", std::to_string(di.major) + "." + std::to_string(di.minor));
      o.Set("sms", di.sm_count);
      o.Set("totalMemory", static_cast<double>(di.total_memory));
      size_t free_b = 0, total_b = 0;
      if (detail && moe_cuda_mem_info(d, &free_b, &total_b) == 0) o.Set("freeMemory", static_cast<double>(free_b));
      o.Set("l2Bytes", di.l2_bytes);
      o.Set("memoryBusWidthBits", di.memory_bus_width_bits);
      o.Set("copyEngines", di.concurrent_copy_engines);
      o.Set("canMapHostMemory", di.can_map_host_memory != 0);
      devices.Set(static_cast<uint32_t>(devices.Length()), o);
    }
  }
#else
  (void)detail;
  cuda.Set("available", false);
  cuda.Set("reason", "compiled without CUDA (no CUDA compiler when this binary was built)");
  cuda.Set("runtimeVersion", env.Null());
  cuda.Set("driverVersion", env.Null());
#endif
  cuda.Set("devices", devices);
  out.Set("cuda", cuda);
  return out;
}

// cudaMemInfo(device): { free, total } bytes of one CUDA device (cudaMemGetInfo; creates that device's context
// only, which its backend has anyway); undefined when this binary has no CUDA or the query fails.
Napi::Value CudaMemInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#if MOE_WITH_CUDA
  if (!info[0].IsNumber()) return env.Undefined();
  const int device = info[0].As<Napi::Number>().Int32Value();
  size_t free_b = 0, total_b = 0;
  if (device < 0 || moe_cuda_mem_info(device, &free_b, &total_b) != 0) return env.Undefined();
  Napi::Object o = Napi::Object::New(env);
  o.Set("free", static_cast<double>(free_b));
  o.Set("total", static_cast<double>(total_b));
  return o;
#else
  (void)info;
  return env.Undefined();
#endif
}

}  // namespace moe::js
