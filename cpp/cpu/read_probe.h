// Streaming-read bandwidth probe (bench only): sums a buffer of f32 on the project's thread pool, so the time of
// one pass is the time to read it from memory (one add per 64 bytes; no writes). Used by bench/moe.ts as the
// "measured read bandwidth" the decode floors of issue 3 are stated against.
#pragma once
#include <cstddef>

#include "../core/isa.h"

namespace moe::cpu {

// Sum of data[0, n) (f32), read once, multithreaded over 1 MiB chunks; the order of the partial sums is fixed.
// `isa`: the tier of the per-chunk loop (lowered to what the CPU has; default: the active tier, MOE_OFFLOAD_ISA's
// cap included).
double read_probe(const float* data, size_t n, Isa isa = cpu_info().active);

// Sum of data[0, n) (f32) on the calling thread, with the same loop: the read side of a bench's own access pattern
// (bench/native/attention_bench.cc reads K/V pages in the kernel's order with it). `isa` as above.
float read_sum(const float* data, size_t n, Isa isa = cpu_info().active);

}  // namespace moe::cpu
