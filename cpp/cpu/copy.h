// Host memory copy, split over the thread pool (a "transfer" on the CPU backend is a threaded memcpy).
#pragma once
#include <cstddef>

#include "../core/cancel.h"

namespace moe::cpu {

// dst[0..bytes) = src[0..bytes). Regions must not overlap. Returns false if cancelled before finishing.
bool copy(void* dst, const void* src, size_t bytes, const CancelToken* cancel = nullptr);

}  // namespace moe::cpu
