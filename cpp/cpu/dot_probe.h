// bf16 dot-product peak probe (bench only): every pool thread runs 12 independent vdpbf16ps chains on registers
// (no memory traffic), so flops / time is the most the CPU backend's bf16 kernels could reach. The compute
// roofline of bench/throughput.ts and bench/native/attention_bench.cc.
#pragma once
#include <cstdint>

namespace moe::cpu {

// Runs `iters` x 12 vdpbf16ps (64 FLOP each) on each pool thread; returns the FLOP done (0 when the CPU has no
// AVX512_BF16: the caller reports the probe as unavailable).
double dot_probe(int64_t iters);

}  // namespace moe::cpu
