// Runtime half of the C ABI in moe_cuda.h: errors, versions, device info, memory, streams, events and copies.
// Thin wrappers over the CUDA runtime. Every function returns the cudaError_t value (as int) and never aborts or
// throws; functions that take a device select it first (cudaSetDevice is cheap when the device is unchanged), so
// callers on any thread get the right context.
#include <cuda_runtime.h>

#include <cstring>

#include "moe_cuda.h"

namespace {

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
inline cudaEvent_t as_event(void* e) { return static_cast<cudaEvent_t>(e); }

// Attribute query that leaves *out at 0 when the runtime does not report it.
inline cudaError_t attr(int* out, cudaDeviceAttr a, int device) {
  int v = 0;
  cudaError_t e = cudaDeviceGetAttribute(&v, a, device);
  *out = e == cudaSuccess ? v : 0;
  return e;
}

}  // namespace

extern "C" {

// ---- errors and versions ----------------------------------------------------------------------------------------

const char* moe_cuda_error_name(int err) { return cudaGetErrorName(static_cast<cudaError_t>(err)); }

const char* moe_cuda_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

int moe_cuda_driver_version(int* version) {
  if (version == nullptr) return cudaErrorInvalidValue;
  int v = 0;
  cudaError_t e = cudaDriverGetVersion(&v);
  // cudaDriverGetVersion returns success with 0 when no driver is installed; report that as the error
  // every other call would give, so callers can print a reason.
  if (e != cudaSuccess) {
    *version = 0;
    return e;
  }
  *version = v;
  if (v == 0) return cudaErrorInsufficientDriver;
  return cudaSuccess;
}

int moe_cuda_runtime_version(int* version) {
  if (version == nullptr) return cudaErrorInvalidValue;
  int v = 0;
  cudaError_t e = cudaRuntimeGetVersion(&v);
  *version = e == cudaSuccess ? v : 0;
  return e;
}

int moe_cuda_device_count(int* count) {
  if (count == nullptr) return cudaErrorInvalidValue;
  int c = 0;
  cudaError_t e = cudaGetDeviceCount(&c);
  if (e != cudaSuccess) {
    *count = 0;
    // The failed call leaves a sticky "last error" in this thread; clear it so a later launcher's
    // cudaGetLastError() does not report it.
    (void)cudaGetLastError();
    return e;
  }
  *count = c;
  return cudaSuccess;
}

int moe_cuda_device_info(int device, MoeCudaDeviceInfo* out) {
  if (out == nullptr) return cudaErrorInvalidValue;
  std::memset(out, 0, sizeof(*out));
  // No cudaSetDevice / cudaMemGetInfo here: since CUDA 12 they create the device's primary context (hundreds of
  // MB and ~100 ms per device), which a query of properties must not do. Free memory: moe_cuda_mem_info.
  cudaError_t e;
  // cudaDeviceProp lost clockRate / memoryClockRate in CUDA 13: every scalar comes from cudaDeviceGetAttribute,
  // the name from the properties struct.
  cudaDeviceProp prop;
  std::memset(&prop, 0, sizeof(prop));
  e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) return e;
  std::strncpy(out->name, prop.name, sizeof(out->name) - 1);
  out->name[sizeof(out->name) - 1] = '\0';
  out->total_memory = prop.totalGlobalMem;
  if ((e = attr(&out->major, cudaDevAttrComputeCapabilityMajor, device)) != cudaSuccess) return e;
  if ((e = attr(&out->minor, cudaDevAttrComputeCapabilityMinor, device)) != cudaSuccess) return e;
  if ((e = attr(&out->sm_count, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return e;
  if ((e = attr(&out->pci_bus_id, cudaDevAttrPciBusId, device)) != cudaSuccess) return e;
  if ((e = attr(&out->memory_bus_width_bits, cudaDevAttrGlobalMemoryBusWidth, device)) != cudaSuccess) return e;
  if ((e = attr(&out->l2_bytes, cudaDevAttrL2CacheSize, device)) != cudaSuccess) return e;
  if ((e = attr(&out->can_map_host_memory, cudaDevAttrCanMapHostMemory, device)) != cudaSuccess) return e;
  if ((e = attr(&out->concurrent_copy_engines, cudaDevAttrAsyncEngineCount, device)) != cudaSuccess) return e;
  // Clock rate: still an attribute in CUDA 13 but may be unsupported on some devices; 0 then, not an error.
  if (attr(&out->clock_khz, cudaDevAttrClockRate, device) != cudaSuccess) (void)cudaGetLastError();
  return cudaSuccess;
}

// ---- memory ----------------------------------------------------------------------------------------------------

int moe_cuda_malloc(int device, size_t bytes, void** ptr) {
  if (ptr == nullptr) return cudaErrorInvalidValue;
  *ptr = nullptr;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  void* p = nullptr;
  e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    // The launchers' scratch pool keeps memory reserved (scratch.cuh): hand what it holds unused back, then retry.
    (void)cudaGetLastError();
    cudaMemPool_t pool = nullptr;
    if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess && cudaMemPoolTrimTo(pool, 0) == cudaSuccess) {
      e = cudaMalloc(&p, bytes);
    }
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // an OOM is reported here, not left sticky for the next launch check
    return e;
  }
  *ptr = p;
  return cudaSuccess;
}

int moe_cuda_free(int device, void* ptr) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return cudaFree(ptr);
}

int moe_cuda_host_alloc(size_t bytes, void** ptr) {
  if (ptr == nullptr) return cudaErrorInvalidValue;
  *ptr = nullptr;
  void* p = nullptr;
  cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocPortable | cudaHostAllocMapped);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return e;
  }
  *ptr = p;
  return cudaSuccess;
}

int moe_cuda_host_free(void* ptr) { return cudaFreeHost(ptr); }

int moe_cuda_host_register(void* ptr, size_t bytes) {
  cudaError_t e = cudaHostRegister(ptr, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped);
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e;
}

int moe_cuda_host_unregister(void* ptr) { return cudaHostUnregister(ptr); }

int moe_cuda_mem_info(int device, size_t* free_bytes, size_t* total_bytes) {
  if (free_bytes == nullptr || total_bytes == nullptr) return cudaErrorInvalidValue;
  *free_bytes = 0;
  *total_bytes = 0;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return cudaMemGetInfo(free_bytes, total_bytes);
}

// ---- streams and events ----------------------------------------------------------------------------------------

int moe_cuda_stream_create(int device, int priority, void** stream) {
  if (stream == nullptr) return cudaErrorInvalidValue;
  *stream = nullptr;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  int least = 0, greatest = 0;
  e = cudaDeviceGetStreamPriorityRange(&least, &greatest);
  if (e != cudaSuccess) return e;
  // Lower numbers are higher priorities; 0 is the default priority.
  int p = priority == 1 ? greatest : 0;
  cudaStream_t s = nullptr;
  e = cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, p);
  if (e != cudaSuccess) return e;
  *stream = s;
  return cudaSuccess;
}

int moe_cuda_stream_destroy(int device, void* stream) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return cudaStreamDestroy(as_stream(stream));
}

int moe_cuda_stream_synchronize(int device, void* stream) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return cudaStreamSynchronize(as_stream(stream));
}

int moe_cuda_stream_wait_event(int device, void* stream, void* event) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return cudaStreamWaitEvent(as_stream(stream), as_event(event), 0);
}

int moe_cuda_launch_host_func(int device, void* stream, void (*fn)(void*), void* user) {
  if (fn == nullptr) return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return cudaLaunchHostFunc(as_stream(stream), fn, user);
}

int moe_cuda_event_create(int device, int timing, void** event) {
  if (event == nullptr) return cudaErrorInvalidValue;
  *event = nullptr;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  cudaEvent_t ev = nullptr;
  const unsigned flags = timing == 1 ? cudaEventDefault
                         : timing == 2 ? (cudaEventDisableTiming | cudaEventBlockingSync)
                                       : cudaEventDisableTiming;
  e = cudaEventCreateWithFlags(&ev, flags);
  if (e != cudaSuccess) return e;
  *event = ev;
  return cudaSuccess;
}

int moe_cuda_event_destroy(int device, void* event) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return cudaEventDestroy(as_event(event));
}

int moe_cuda_event_record(int device, void* event, void* stream) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return cudaEventRecord(as_event(event), as_stream(stream));
}

int moe_cuda_event_synchronize(int device, void* event) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return cudaEventSynchronize(as_event(event));
}

int moe_cuda_event_query(int device, void* event, int* done) {
  if (done == nullptr) return cudaErrorInvalidValue;
  *done = 0;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  e = cudaEventQuery(as_event(event));
  if (e == cudaSuccess) {
    *done = 1;
    return cudaSuccess;
  }
  if (e == cudaErrorNotReady) {
    // cudaErrorNotReady is not sticky, but clear it anyway so cudaGetLastError stays meaningful.
    (void)cudaGetLastError();
    return cudaSuccess;
  }
  return e;
}

int moe_cuda_event_elapsed_ms(float* ms, void* start, void* end) {
  if (ms == nullptr) return cudaErrorInvalidValue;
  *ms = 0.0f;
  return cudaEventElapsedTime(ms, as_event(start), as_event(end));
}

// ---- copies ----------------------------------------------------------------------------------------------------

int moe_cuda_memcpy_async(int device, void* dst, const void* src, size_t bytes, void* stream) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (bytes == 0) return cudaSuccess;
  // cudaMemcpyDefault: the direction comes from the pointers (UVA), so one entry point serves H2D, D2H, D2D, H2H.
  return cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, as_stream(stream));
}

int moe_cuda_memset_async(int device, void* dst, int value, size_t bytes, void* stream) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (bytes == 0) return cudaSuccess;
  return cudaMemsetAsync(dst, value, bytes, as_stream(stream));
}

}  // extern "C"
