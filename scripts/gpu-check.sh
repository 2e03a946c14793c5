#!/usr/bin/env bash
# One-shot check of every CUDA kernel on a GPU host, without Node: builds moe-native with CUDA (same
# CMakeLists.txt), prints the device, runs the op table on every backend (CUDA included) and the kernel timings,
# and writes the results to $OUT (default bench/results). Meant for a lent GPU machine with CMake and nvcc:
#   OUT=/some/dir bash scripts/gpu-check.sh
# Exit status: the op table's (non-zero when any case failed).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
stamp=$(date -u +%Y-%m-%d)
{ nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv || true; } > "$OUT/gpu-$stamp.txt" 2>&1
cmake -S . -B build-native -DMOE_ADDON=OFF -DMOE_NATIVE_TESTS=ON -DMOE_CUDA=ON -DCMAKE_BUILD_TYPE=Release > "$OUT/gpu-build-$stamp.log" 2>&1 &&
  cmake --build build-native -j "$(nproc)" >> "$OUT/gpu-build-$stamp.log" 2>&1 || { tail -40 "$OUT/gpu-build-$stamp.log"; exit 2; }
build-native/moe-native info | tee "$OUT/gpu-info-$stamp.txt"
build-native/moe-native test > "$OUT/gpu-test-$stamp.txt" 2>&1
status=$?
grep -E '^(FAIL|[0-9]+ passed)' "$OUT/gpu-test-$stamp.txt" | tail -40
build-native/moe-native bench --json "$OUT/native-kernels-gpu-$stamp.json" | tail -60
exit $status
