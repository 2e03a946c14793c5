#!/usr/bin/env bash
# On a lent GPU machine, after scripts/gpu-carry.sh here and a device call carrying .device/carry: runs the Node
# tests that exercise CUDA (the op harness on cuda:0, the runtime's CPU/CUDA agreement and staged paths, parts +
# combine, the expert table) with the carried CUDA addon, and writes the TAP output and the device facts to $OUT
# (default bench/results). Exit status: the tests'.
#   OUT=$OUT bash scripts/gpu-runtime-check.sh [test files relative to dist/test ...]
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
stamp=$(date -u +%Y-%m-%d)
. scripts/gpu-node-env.sh
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; "$NODE" dist/lib/cli.js info; } > "$OUT/gpu-runtime-info-$stamp.txt" 2>&1
cat "$OUT/gpu-runtime-info-$stamp.txt"
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(backend-ops.test.js moe-parts.test.js expert-table.test.js model.test.js residency.test.js staging.test.js)
files=()
for t in "${tests[@]}"; do files+=("dist/test/$t"); done
"$NODE" --test --test-reporter=tap "${files[@]}" > "$OUT/gpu-runtime-tests-$stamp.tap" 2>&1
status=$?
grep -E '^# (tests|pass|fail|skipped)|^not ok|^    not ok' "$OUT/gpu-runtime-tests-$stamp.tap" | head -60
exit $status
