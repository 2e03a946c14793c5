// Stream-ordered scratch of the launchers: cudaMallocAsync / cudaFreeAsync on the device's default memory pool, whose
// release threshold scratch_alloc raises once per device so that the pool keeps up to scratch_keep_bytes reserved
// across synchronisations. With the default threshold (0) every stream or event synchronisation handed the pool's
// memory back to the system and the next call mapped its scratch again: on an H100 (2026-11-26) about 1.5 ms of a
// 5.6 ms Qwen3-shaped fused MoE call at T = 16384 (1.4 GB of act + part scratch). moe_cuda_malloc (runtime.cu) trims
// the pool and retries when a plain cudaMalloc runs out of memory, so the reserve never causes an OutOfMemoryError.
// MOE_CUDA_SCRATCH_KEEP_MB overrides the reserve (0: the CUDA default, nothing kept).
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace moe {
namespace dev {

constexpr int kScratchMaxDevices = 64;

// Bytes of one region of a launcher's scratch block, rounded up to 256 so every region starts 256-byte aligned.
inline size_t scratch_bytes(size_t v) { return (v + 255) & ~static_cast<size_t>(255); }

// Bytes the pool keeps: MOE_CUDA_SCRATCH_KEEP_MB, else total / 16 capped at 4 GiB (5 GB of an 80 GB H100 -> 4 GiB).
inline uint64_t scratch_keep_bytes(size_t total) {
  const char* v = std::getenv("MOE_CUDA_SCRATCH_KEEP_MB");
  if (v != nullptr && *v != '\0') return static_cast<uint64_t>(std::strtoull(v, nullptr, 10)) << 20;
  const uint64_t cap = static_cast<uint64_t>(4) << 30;
  return total / 16 < cap ? total / 16 : cap;
}

// Sets the release threshold of `device`'s default pool once (the caller made `device` current).
inline cudaError_t scratch_pool_setup(int device) {
  static std::atomic<bool> done[kScratchMaxDevices];  // static storage: all false
  if (device < 0 || device >= kScratchMaxDevices || done[device].load(std::memory_order_acquire)) return cudaSuccess;
  cudaMemPool_t pool = nullptr;
  cudaError_t err = cudaDeviceGetDefaultMemPool(&pool, device);
  if (err != cudaSuccess) return err;
  size_t free_b = 0, total = 0;
  if ((err = cudaMemGetInfo(&free_b, &total)) != cudaSuccess) return err;
  uint64_t keep = scratch_keep_bytes(total);
  if ((err = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep)) != cudaSuccess) return err;
  done[device].store(true, std::memory_order_release);
  return cudaSuccess;
}

// cudaMallocAsync of `bytes` on stream s from `device`'s default pool (current device), the pool set up first.
inline cudaError_t scratch_alloc(void** ptr, size_t bytes, int device, cudaStream_t s) {
  const cudaError_t err = scratch_pool_setup(device);
  if (err != cudaSuccess) return err;
  return cudaMallocAsync(ptr, bytes, s);
}

}  // namespace dev
}  // namespace moe
