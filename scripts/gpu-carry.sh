#!/usr/bin/env bash
# Prepares everything the Node side needs on a lent GPU machine (which has no Node and no network) in one ignored
# folder, .device/carry (well under the 64 MiB a device call may carry):
#   addon/moe_offload.node  the addon with CUDA inside (cmake-js, MOE_CUDA=ON, static cudart; built in .h-gpu)
#   dist/                   the compiled TypeScript (lib, test, bench)
#   node_modules/           the runtime dependencies only (@huggingface/*, node-gyp-build)
#   node.xz                 this machine's node binary, xz-compressed
# Then, with the device tool: `OUT=$OUT bash scripts/gpu-session.sh` carrying `.device/carry` (see its header).
# Usage (here, where nvcc is installed): bash scripts/gpu-carry.sh   (CUDA_ARCHS=90a-real: one target, a faster build;
# OLD_REF=<commit> [OLD_ADDON=1]: also that commit's dist/ (and addon) for the A/B step)
set -euo pipefail
cd "$(dirname "$0")/.."
out=.device/carry
rm -rf "$out" && mkdir -p "$out/addon" "$out/node_modules"
npx cmake-js build --log-level warn -O .h-gpu/build --CDMOE_CUDA=ON ${CUDA_ARCHS:+--CDCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS} -p "$(nproc)"
cp .h-gpu/build/Release/moe_offload.node "$out/addon/"
npx tsc -p tsconfig.json
cp -r dist "$out/dist"
for m in @huggingface node-gyp-build; do cp -r "node_modules/$m" "$out/node_modules/"; done
xz -T0 -6 -c "$(command -v node)" > "$out/node.xz"
# OLD_REF=<commit>: that commit's compiled TypeScript too, in old/dist, with its package.json and (OLD_ADDON=1: when
# its native interface differs from this checkout's, e.g. before 0c2ed1a) its own CUDA addon in old/prebuild
# (gpu-session.sh step ab: scripts/ab-decode.mjs runs it against this checkout's in one process)
if [ -n "${OLD_REF:-}" ]; then
  wt=.h-gpu/old-ref && rm -rf "$wt" && git worktree prune && git worktree add -f "$wt" "$OLD_REF" >/dev/null
  ln -s "$PWD/node_modules" "$wt/node_modules" && (cd "$wt" && npx tsc -p tsconfig.json)
  mkdir -p "$out/old" && cp -r "$wt/dist" "$out/old/dist" && cp "$wt/package.json" "$out/old/"
  if [ -n "${OLD_ADDON:-}" ]; then
    (cd "$wt" && npx cmake-js build --log-level warn -O build --CDMOE_CUDA=ON ${CUDA_ARCHS:+--CDCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS} -p "$(nproc)")
    mkdir -p "$out/old/prebuild/build/Release" && cp "$wt/build/Release/moe_offload.node" "$out/old/prebuild/build/Release/"
  fi
  git worktree remove --force "$wt"
fi
du -sh "$out"
