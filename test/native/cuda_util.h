// RAII helpers over moe_cuda.h for the native executable: device buffers, pinned buffers, the test stream.
// Everything here exists only when MOE_WITH_CUDA=1, so moe-native also builds CPU-only. Helpers throw
// CudaFailure, which the harness reports as FAIL with the CUDA error name.
#pragma once
#if MOE_WITH_CUDA
#include <cstddef>
#include <stdexcept>
#include <string>

#if MOE_WITH_CUDA
#include "moe_cuda.h"
#endif

namespace moe::native {

class CudaFailure : public std::runtime_error {
 public:
  CudaFailure(const std::string& what, int err)
      : std::runtime_error(what + ": " + moe_cuda_error_name(err) + " (" + moe_cuda_error_string(err) + ")"),
        err_(err) {}
  int err() const { return err_; }

 private:
  int err_;
};

inline void cuda_check(int err, const char* what) {
  if (err != 0) throw CudaFailure(what, err);
}

// Device memory on one device; freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t bytes) : device_(device), bytes_(bytes) {
    cuda_check(moe_cuda_malloc(device, bytes == 0 ? 1 : bytes, &ptr_), "moe_cuda_malloc");
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) moe_cuda_free(device_, ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  char* bytes_ptr() const { return static_cast<char*>(ptr_); }
  size_t size() const { return bytes_; }

 private:
  int device_;
  size_t bytes_;
  void* ptr_ = nullptr;
};

// Page-locked, mapped host memory (moe_cuda_host_alloc); freed on destruction.
class PinnedBuffer {
 public:
  explicit PinnedBuffer(size_t bytes) : bytes_(bytes) {
    cuda_check(moe_cuda_host_alloc(bytes == 0 ? 1 : bytes, &ptr_), "moe_cuda_host_alloc");
  }
  ~PinnedBuffer() {
    if (ptr_ != nullptr) moe_cuda_host_free(ptr_);
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void* get() const { return ptr_; }
  char* bytes_ptr() const { return static_cast<char*>(ptr_); }
  size_t size() const { return bytes_; }

 private:
  size_t bytes_;
  void* ptr_ = nullptr;
};

// A non-blocking stream on one device; destroyed on destruction.
class Stream {
 public:
  explicit Stream(int device, int priority = 0) : device_(device) {
    cuda_check(moe_cuda_stream_create(device, priority, &s_), "moe_cuda_stream_create");
  }
  ~Stream() {
    if (s_ != nullptr) moe_cuda_stream_destroy(device_, s_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* get() const { return s_; }
  int device() const { return device_; }
  void sync() const { cuda_check(moe_cuda_stream_synchronize(device_, s_), "moe_cuda_stream_synchronize"); }

 private:
  int device_;
  void* s_ = nullptr;
};

// Synchronous helpers on a stream: copy then wait.
inline void copy_sync(const Stream& s, void* dst, const void* src, size_t bytes) {
  cuda_check(moe_cuda_memcpy_async(s.device(), dst, src, bytes, s.get()), "moe_cuda_memcpy_async");
  s.sync();
}

}  // namespace moe::native
#endif  // MOE_WITH_CUDA
