// Device copies of the fused MoE's expert pointer tables, kept per (device, stream) so that a call whose table equals
// one uploaded before on the same stream (a resident model's layers: the same table every step) skips the upload
// (a pageable cudaMemcpyAsync of 3 e or 6 e pointers on the call's timeline). An entry is immutable once uploaded;
// the kernels of stream s read only entries of s, and an entry evicted from s's list (least recently used, beyond
// kTablesPerStream) is freed with cudaFreeAsync on s, after every kernel queued on s before it: stream order alone
// keeps it safe. Entries of a stream that is destroyed stay allocated (at most kTablesPerStream per stream handle).
// Measured on an H200 (2026-11-26, opt-in then): 1.05x on a Qwen3-shaped decode call at T = 1, neutral elsewhere;
// with the GEMV path's L2 hints 1.11-1.13x at T = 1 (bench/results/moe-cuda-2026-11-26-decode-h200.json).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "scratch.cuh"

namespace moe {
namespace dev {

constexpr size_t kTablesPerStream = 64;

struct CachedTable {
  uint64_t hash;
  std::vector<const void*> key;
  void* dev;
};

inline uint64_t table_hash(const std::vector<const void*>& t) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the pointer values
  for (const void* p : t) {
    h ^= static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p));
    h *= 1099511628211ull;
  }
  return h;
}

// *out = a device copy of the bytes `build` writes for `key` (called on a miss only: build(std::vector<unsigned char>&)
// -> cudaError_t), usable by work queued on stream s of `device` (the current device). Each Kind has its own lists.
template <int Kind, class Build>
inline cudaError_t cached_on_device(const std::vector<const void*>& key, Build build, int device, cudaStream_t s,
                                    void** out) {
  static std::mutex mu;
  static std::map<std::pair<int, cudaStream_t>, std::list<CachedTable>> cache;
  const uint64_t h = table_hash(key);
  std::lock_guard<std::mutex> lock(mu);
  std::list<CachedTable>& lru = cache[{device, s}];
  for (auto it = lru.begin(); it != lru.end(); ++it) {
    if (it->hash == h && it->key == key) {
      lru.splice(lru.begin(), lru, it);
      *out = lru.front().dev;
      return cudaSuccess;
    }
  }
  std::vector<unsigned char> bytes;
  cudaError_t err = build(bytes);
  if (err != cudaSuccess) return err;
  void* dev = nullptr;
  err = scratch_alloc(&dev, bytes.size(), device, s);
  if (err != cudaSuccess) return err;
  // pageable source: the copy has read `bytes` when it returns
  err = cudaMemcpyAsync(dev, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, s);
  if (err != cudaSuccess) {
    cudaFreeAsync(dev, s);
    return err;
  }
  lru.push_front(CachedTable{h, key, dev});
  if (lru.size() > kTablesPerStream) {
    err = cudaFreeAsync(lru.back().dev, s);
    lru.pop_back();
    if (err != cudaSuccess) return err;
  }
  *out = dev;
  return cudaSuccess;
}

// *out = a device copy of `table` usable by work queued on stream s of `device` (the current device).
inline cudaError_t table_on_device(const std::vector<const void*>& table, int device, cudaStream_t s,
                                   const void*** out) {
  void* dev = nullptr;
  const cudaError_t err = cached_on_device<0>(
      table,
      [&](std::vector<unsigned char>& bytes) {
        bytes.resize(table.size() * sizeof(void*));
        std::memcpy(bytes.data(), table.data(), bytes.size());
        return cudaSuccess;
      },
      device, s, &dev);
  *out = static_cast<const void**>(dev);
  return err;
}

}  // namespace dev
}  // namespace moe
