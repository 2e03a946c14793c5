#!/usr/bin/env bash
# On a lent GPU machine, after scripts/gpu-carry.sh here and a device call carrying .device/carry: throughput mode on
# the GPU (bench/throughput-cuda.ts: prefill and decode tokens/s of a Mixtral-8x7B-shaped model with L layers,
# experts offloaded and resident, next to the GEMM rate, H2D and device copy bandwidth measured in the same run).
# The JSON and the log go to $OUT (default bench/results). The model is generated first (about 2.7 GiB per layer
# of random weights in $TMPDIR): keep L small enough for the device time left.
#   OUT=$OUT bash scripts/gpu-throughput.sh [--layers=N] [--prompt=P] [--quick]
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
. scripts/gpu-node-env.sh
"$NODE" dist/bench/throughput-cuda.js "$@" 2>&1 | tee "$OUT/gpu-throughput-$(date -u +%Y-%m-%d).log"
status=${PIPESTATUS[0]}
cp bench/results/throughput-staged-cuda-*.json "$OUT/" 2>/dev/null || true
exit $status
