#!/usr/bin/env bash
# On a lent GPU machine, after scripts/gpu-carry.sh here and a device call carrying .device/carry: runs the Node
# tests that exercise CUDA (the op harness on cuda:0, the runtime's CPU/CUDA agreement and staged paths, parts +
# combine, the expert table) with the carried CUDA addon, and writes the TAP output and the device facts to $OUT
# (default bench/results). Exit status: the tests'.
#   OUT=$OUT bash scripts/gpu-runtime-check.sh [test files relative to dist/test ...]
set -u
cd "$(dirname "$0")/.."
carry=.device/carry
OUT=${OUT:-bench/results}
mkdir -p "$OUT" .device/bin
stamp=$(date -u +%Y-%m-%d)
[ -x .device/bin/node ] || xz -d -c "$carry/node.xz" > .device/bin/node && chmod +x .device/bin/node
# copies, not links: Node resolves a module's real path, and the addon is found from the package root above dist/
rm -rf dist node_modules && cp -r "$carry/dist" dist && cp -r "$carry/node_modules" node_modules
mkdir -p .device/prebuild/build/Release && cp "$carry/addon/moe_offload.node" .device/prebuild/build/Release/
export MOE_OFFLOAD_PREBUILD="$PWD/.device/prebuild"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; .device/bin/node dist/lib/cli.js info; } > "$OUT/gpu-runtime-info-$stamp.txt" 2>&1
cat "$OUT/gpu-runtime-info-$stamp.txt"
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(backend-ops.test.js moe-parts.test.js expert-table.test.js model.test.js residency.test.js staging.test.js)
files=()
for t in "${tests[@]}"; do files+=("dist/test/$t"); done
.device/bin/node --test --test-reporter=tap "${files[@]}" > "$OUT/gpu-runtime-tests-$stamp.tap" 2>&1
status=$?
grep -E '^# (tests|pass|fail|skipped)|^not ok|^    not ok' "$OUT/gpu-runtime-tests-$stamp.tap" | head -60
exit $status
