// Threaded host memcpy: the CPU backend's "transfer". One memcpy below 256 KiB (thread hand-off costs more than
// it saves there); above, 1 MiB chunks over the pool, so a single core's copy bandwidth (about 25 GB/s read on
// the development machine, 33 GB/s with both cores) is not the limit, and cancellation is polled between chunks.
#include "copy.h"

#include <cstdint>
#include <cstring>
#include <functional>

#include "../core/threadpool.h"

namespace moe::cpu {

namespace {
constexpr size_t kSingleCopyBelow = 256u << 10;  // bytes
constexpr size_t kChunk = 1u << 20;              // bytes per range handed to a thread
}  // namespace

bool copy(void* dst, const void* src, size_t bytes, const CancelToken* cancel) {
  if (is_cancelled(cancel)) return false;
  if (bytes == 0) return true;
  if (bytes < kSingleCopyBelow) {
    std::memcpy(dst, src, bytes);
    return true;
  }
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  const size_t chunks = (bytes + kChunk - 1) / kChunk;
  std::function<void(size_t, size_t)> fn = [=](size_t c0, size_t c1) {
    size_t begin = c0 * kChunk;
    size_t end = c1 * kChunk < bytes ? c1 * kChunk : bytes;
    std::memcpy(d + begin, s + begin, end - begin);
  };
  return ThreadPool::global().parallel_for(chunks, 1, fn, cancel);
}

}  // namespace moe::cpu
