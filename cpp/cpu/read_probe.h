// Streaming-read bandwidth probe (bench only): sums a buffer of f32 on the project's thread pool, so the time of
// one pass is the time to read it from memory (one add per 64 bytes; no writes). Used by bench/moe.ts as the
// "measured read bandwidth" the decode floors of issue 3 are stated against.
#pragma once
#include <cstddef>

namespace moe::cpu {

// Sum of data[0, n) (f32), read once, multithreaded over 1 MiB chunks; the order of the partial sums is fixed.
double read_probe(const float* data, size_t n);

}  // namespace moe::cpu
