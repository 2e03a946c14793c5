// Multiply-add peak probe (bench only): every pool thread runs 12 independent chains of the tier's multiply-add on
// registers (no memory traffic), so flops / time is the most that tier's kernels could reach: vdpbf16ps on
// avx512bf16, f32 FMA (zmm) on avx512, f32 FMA (ymm) on avx2 (those tiers widen bf16 to f32 and FMA). The compute
// roofline of bench/moe.ts, bench/throughput.ts and bench/native/attention_bench.cc.
#pragma once
#include <cstdint>

#include "../core/isa.h"

namespace moe::cpu {

// Runs `iters` x 12 multiply-adds of `isa`'s kind (lowered to what the CPU has; default: the active tier) on each
// pool thread: vdpbf16ps (64 FLOP each), zmm FMA (32), ymm FMA (16). Returns the FLOP done (0 on the scalar tier or
// a non-x86 CPU: the caller reports the probe as unavailable).
double dot_probe(int64_t iters, Isa isa = cpu_info().active);

// The multiply-add dot_probe runs for `isa` (lowered as above), for labels: "vdpbf16ps", "f32 FMA" or "none (scalar)".
const char* dot_probe_op(Isa isa);

}  // namespace moe::cpu
