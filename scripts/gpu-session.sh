#!/usr/bin/env bash
# Every GPU check of the project in ONE device call (a lent machine's time is short): the CUDA op table, the kernel
# timings, the fused MoE FFN against PyTorch's grouped GEMM, the Node tests that reach CUDA, the residency bench and
# throughput mode. Each step runs under its own time limit; after each, everything written so far is packed into
# $OUT/session.tgz (a device call returns at most 8 files) and the step's status goes to stdout.
# Here, first (nvcc is installed; no GPU needed):
#   bash scripts/gpu-carry.sh                                 # CUDA addon, dist/, node, runtime node_modules
#   cmake -S . -B build-native-gpu -G Ninja -DMOE_ADDON=OFF -DMOE_NATIVE_TESTS=ON -DMOE_CUDA=ON \
#     -DCMAKE_BUILD_TYPE=Release && ninja -C build-native-gpu moe-native
# then a device call carrying .device/carry and build-native-gpu/moe-native:
#   OUT=$OUT DEADLINE=420 bash scripts/gpu-session.sh [steps]
#   (steps: test bench attention moe moeenv profile node hostmem attnidle residency throughput modelbased perfmodel ab demo,
#   default all but attention, profile, hostmem, attnidle, modelbased, perfmodel, ab and demo; AB_ARGS: scripts/ab-decode.mjs's; PERFMODEL_ARGS: bench/perf-model.ts's (default --backend=cuda --quick, the two real shapes at batches
#   1, 8, 32, 128; the micro-batch overlap the model predicts: PERFMODEL_ARGS="--backend=cuda --quick --decode-only
#   --models=qwen3-30b-a3b-shape --batches=32,128 --micro-batches=1,2,4"); THROUGHPUT_ARGS default
#   --layers=2; PROFILE_MODELS / PROFILE_T: the profile step's bench-moe-cuda --models / --t (full model names: Qwen3-30B-A3B, 16384);
#   PROFILE_SECTIONS: its ncu options (default --section SpeedOfLight; e.g. add --section WarpStateStats); PROFILE_ENVS:
#   env words under which the profile runs again (as TEST_ENVS);
#   BUILD_NATIVE=90a-real builds moe-native there for that target; TEST_ENVS / BENCH_ENVS / MOE_ENVS: settings under
#   which the op table / kernel timings / MoE timings (ours only) run again, one run per word, each word one or more
#   VAR=value joined by commas, e.g. TEST_ENVS="MOE_CUDA_MOE=wgmma MOE_CUDA_GEMM=mma MOE_CUDA_MOE=mma,MOE_CUDA_DECODE_MAX_T=0"
#   BENCH_ENVS=MOE_CUDA_GEMM=mma MOE_ENVS="MOE_CUDA_MOE=mma MOE_CUDA_DECODE_MAX_T=0"); TEST_ENV_FILTER: a second
#   substring the op-table runs under TEST_ENVS must match (e.g. moe_: the MoE ops only); MOE_ENV_T: the token counts of
#   the MoE runs under MOE_ENVS (e.g. 512,4096,16384)
# When the carried moe-native does not run there, it is built there (slower).
# Waiting for a GPU (after the H200 run of 2026-11-28): `modelbased` with the defaults gave 4.9x / 5.5x / 5.4x
#   (attention on 12 of 16 threads; --attention-threads=16 still stalls the copies 71 ms); the step is 0.59-0.68 of
#   its H2D bound, the CPU attention (133-165 ms of 152-179) binding. `attnidle`: 1.04-1.35x after idling, not the
#   cause of the CUDA model's misses. `perfmodel` (quick, decode, OLMoE + Qwen3 shapes, batches 1-128): 17.5% / 19.5%;
#   its misses: the CPU attention at context 512 1.0-2.6x its profile points, each model's first configuration paying
#   the expert pool's fill. The prompt steps' first step still took 2.0-2.8 s with the KV cache prefaulted.
#   Since then (compiled, CPU-tested, not yet on a GPU): the profile's host-side cold spans are beyond twice the host's
#   last-level cache (the H200 host reports 300 MiB; 64 MiB spans kept the attention's KV in it), the runtime's
#   per-sequence cost is calibrated at batch 64 (was 16: 1.8-4.7 ms of a batch-128 step predicted, ~1-1.5 left by the
#   measured steps), the perf-model bench warms each model up before its first configuration, and a step arena grown
#   by a large step is no longer prefaulted on the pool's threads (on the CPU it stalled the next decode steps 2-16x);
#   generateBatch allocates its maxBatchTokens' step memory before its first step (the batch-2048 row's first prompt
#   step, 2.0-2.8 s against ~0.8 for the others, took separate tensors: prompt_steps.first_step_ms should drop).
#   Next: `perfmodel` as above, then `demo` (its CUDA prefill prediction was 4.6x over before the KV prefault), and
#   `attention` (carry build-native-gpu/moe-native): its decode-splits rows now run the throughput shape on the tier
#   below too (AVX-512F f32 FMAs; 98 vs 85 GB/s against the bf16 tier at block 64 on that Xeon, 2026-11-27): if it
#   wins there, the attention beside the copies (the step's binding part) should take it on such hosts: the
#   module-based row takes it with LoadModelOptions.attentionIsa, so `modelbased` with MODELBASED_MORE=--attention-isa=avx512
#   measures the step itself on that tier beside the default row; `moe-offload profile --model DIR` now times both
#   tiers at the model's shapes and keeps the faster (its "attention tier" line; the perf-model bench profiles on the
#   tier its model runs, without the trial).
#   The A/B switches of the defaults measured 2026-11-27: MOE_CUDA_WG=cpasync (the wgmma tiles by cp.async instead of
#   TMA), MOE_CUDA_GEMV=narrow (the narrow GEMV decode kernels).
set -u
cd "$(dirname "$0")/.."
FINAL=${OUT:-bench/results}
mkdir -p "$FINAL"
W=$(mktemp -d)
stamp=$(date -u +%Y-%m-%d)
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(test bench moe node residency throughput)
want() { local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
pack() { tar czf "$FINAL/session.tgz" -C "$W" . 2>/dev/null || true; }
# tag WORD: a file-name tag of an env word (A=b,C=d -> A-b_C-d).
tag() { local t=${1//=/-}; echo "${t//,/_}"; }
# DEADLINE (seconds, default 420): no step runs past it (set it under the device call's timeout_s, so the call
# returns with everything packed instead of being killed mid-step).
DEADLINE=${DEADLINE:-420}
# step NAME LIMIT_S CMD...: output to $W/NAME.log (tail on stdout), never aborts the session.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS - 5))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 15 ]; then
    echo "=== $name: skipped (deadline)"
    return 0
  fi
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc, $((SECONDS - t0)) s (limit $limit s)"
  tail -n "${TAIL:-12}" "$W/$name.log"
  pack
  return 0
}

{ nvidia-smi || true; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,pcie.link.gen.max,pcie.link.width.max --format=csv || true; nproc; free -g; } > "$W/machine.txt" 2>&1
head -20 "$W/machine.txt"

NATIVE=${NATIVE:-build-native-gpu/moe-native}  # NATIVE=path: a carried build elsewhere
if [ -n "${BUILD_NATIVE:-}" ] || { [ -z "${NO_BUILD:-}" ] && { ! "$NATIVE" info > "$W/native-info.txt" 2>&1 || ! grep -q 'devices:' "$W/native-info.txt"; }; }; then
  echo "carried moe-native did not run or saw no device: building here"
  cat "$W/native-info.txt"
  NATIVE=build-native-dev/moe-native
  step build 300 bash -c "cmake -S . -B build-native-dev -G Ninja -DMOE_ADDON=OFF -DMOE_NATIVE_TESTS=ON -DMOE_CUDA=ON -DCMAKE_BUILD_TYPE=Release ${BUILD_NATIVE:+-DCMAKE_CUDA_ARCHITECTURES=$BUILD_NATIVE} && ninja -C build-native-dev moe-native"
  fi
[ -x "$NATIVE" ] && "$NATIVE" info > "$W/native-info.txt" 2>&1 && cat "$W/native-info.txt"

if want test; then
  TAIL=3 step native-test 180 "$NATIVE" test --filter cuda
  grep -E '^FAIL' "$W/native-test.log" | head -40
  for v in ${TEST_ENVS:-}; do  # the op table again under each env word (e.g. MOE_CUDA_MOE=wgmma)
    TAIL=3 step "native-test-$(tag "$v")" 120 env ${v//,/ } "$NATIVE" test --filter cuda ${TEST_ENV_FILTER:+--filter "$TEST_ENV_FILTER"}
    grep -E '^FAIL' "$W/native-test-$(tag "$v").log" | head -20
  done
fi
if want test || want cputest; then  # the CPU tiers the development VM lacks (its AVX2-only EPYC): the host's avx512 ones
  TAIL=3 step native-cputest 120 "$NATIVE" test --filter cpu-avx512
  grep -E '^FAIL' "$W/native-cputest.log" | head -20
fi
if want bench; then
  step native-bench 90 "$NATIVE" bench --cuda-only --json "$W/native-kernels-gpu-$stamp.json"
  for v in ${BENCH_ENVS:-}; do  # the kernel timings again under each env word (e.g. MOE_CUDA_GEMM=moe)
    TAIL=30 step "native-bench-$(tag "$v")" 90 env ${v//,/ } "$NATIVE" bench --cuda-only \
      --json "$W/native-kernels-gpu-$stamp-$(tag "$v").json"
  done
fi
if want attention; then  # the CPU attention kernels on the GPU host's cores (decode and prefill; the throughput mode's CPU side)
  TAIL=12 step attention 120 "$NATIVE" bench-attention --json "$W/attention-native-gpu-host-$stamp.json"
fi
if want moe || want moeenv; then  # moeenv: the MOE_ENVS runs alone (no default run, no PyTorch)
  for v in ${MOE_ENVS:-}; do  # other MoE paths or tiles for comparison (e.g. MOE_CUDA_MOE=mma), ours only
    TAIL=26 step "moe-ours-$(tag "$v")" 120 env ${v//,/ } "$NATIVE" bench-moe-cuda ${MOE_ENV_T:+--t "$MOE_ENV_T"} \
      --json "$W/moe-cuda-ours-$(tag "$v").json"
  done
fi
if want moe; then
  TAIL=26 step moe-ours 120 "$NATIVE" bench-moe-cuda --json "$W/moe-cuda-ours.json"
  [ -f "$W/moe-cuda-ours.json" ] && TAIL=30 step moe-torch 180 env PYTHONUNBUFFERED=1 python3 bench/moe_cuda_torch.py \
    --ours "$W/moe-cuda-ours.json" --out "$W/moe-cuda-$stamp.json"
fi
if want profile; then  # Nsight Compute's speed-of-light per kernel of one fused MoE call (Firecracker machines)
  TAIL=40 step profile 180 ncu --clock-control none ${PROFILE_SECTIONS:---section SpeedOfLight} --csv "$NATIVE" bench-moe-cuda --once \
    --models "${PROFILE_MODELS:-Qwen3-30B-A3B}" --t "${PROFILE_T:-16384}"
  for v in ${PROFILE_ENVS:-}; do  # the same profile under each env word (e.g. MOE_CUDA_MOE=mma)
    TAIL=10 step "profile-$(tag "$v")" 120 env ${v//,/ } ncu --clock-control none ${PROFILE_SECTIONS:---section SpeedOfLight} \
      --csv "$NATIVE" bench-moe-cuda --once --models "${PROFILE_MODELS:-Qwen3-30B-A3B}" --t "${PROFILE_T:-16384}"
  done
fi
if want node || want hostmem || want attnidle || want residency || want throughput || want modelbased || want perfmodel || want ab || want demo; then
  . scripts/gpu-node-env.sh
  "$NODE" dist/lib/cli.js info > "$W/node-info.txt" 2>&1
  tail -5 "$W/node-info.txt"
fi
if want node; then
  TAIL=2 step node-tests 240 "$NODE" --test --test-reporter=tap dist/test/backend-ops.test.js dist/test/moe-parts.test.js \
    dist/test/expert-table.test.js dist/test/model.test.js dist/test/residency.test.js dist/test/staging.test.js \
    dist/test/sampler.test.js dist/test/memory-plan.test.js dist/test/async.test.js
  grep -E '^# (tests|pass|fail|skipped)|^not ok|^    not ok' "$W/node-tests.log" | head -40
  # the staged CUDA profile (profileModel on the GPU, a tiny model)
  TAIL=2 step node-profile 150 "$NODE" --test --test-reporter=tap --test-name-pattern='staged on the CPU backend and on CUDA' \
    dist/test/perf-model.test.js
  grep -E '^# (tests|pass|fail|skipped)|^not ok|^    not ok' "$W/node-profile.log" | head -20
fi
if want hostmem; then  # weights in JS vs huge-page memory on the GPU host's CPU (avx512bf16: row-major and packed)
  TAIL=14 step hostmem 150 "$NODE" dist/bench/host-memory.js --rounds=8
  cp bench/results/host-memory-*.json "$W/" 2>/dev/null
  pack
fi
if want attnidle; then  # the CPU attention back to back (the profile's way) vs after the pool idled (a CUDA step's)
  TAIL=10 step attnidle 120 "$NODE" dist/bench/attention-idle.js
  cp bench/results/attention-idle-*.json "$W/" 2>/dev/null
  pack
fi
if want residency; then
  step residency 120 "$NODE" dist/bench/residency.js
  cp bench/results/residency-*.json "$W/" 2>/dev/null
  pack
fi
if want throughput; then
  TAIL=25 step throughput 300 "$NODE" dist/bench/throughput-cuda.js ${THROUGHPUT_ARGS:---layers=2}
  cp bench/results/throughput-staged-cuda-*.json "$W/" 2>/dev/null
  pack
fi
if want modelbased; then  # issue 8's 5x: module-based batch 2048 (4 attention micro-batches, a layer's experts in slots) vs the
  # model-based cap (301 at 24 GiB, 526 tokens); 2026-11-27 at 1536 with 4 slots: 3.3x
  mkdir -p "$W/modelbased"
  mb="--layers=2 --prompt=512 --batches=2048 --micro-batches=4 --modes=offloaded"  # the module-based row
  TAIL=12 step modelbased 420 "$NODE" dist/bench/throughput-cuda.js ${MODELBASED_ARGS:-$mb --slots=8 --model-based}
  # MODELBASED_MORE: the module-based row again per word (bench args joined by commas, e.g. "--slots=12
  # --slots=14,--micro-batches=2"), without the model-based run, each saved under its own label
  for v in ${MODELBASED_MORE:-}; do
    TAIL=8 step "modelbased-$(tag "${v//--/}")" 300 env MOE_BENCH_LABEL="more-$(tag "${v//--/}")" "$NODE" dist/bench/throughput-cuda.js \
      $mb ${v//,/ }
  done
  cp bench/results/throughput-staged-cuda-*.json "$W/modelbased/" 2>/dev/null
  pack
fi
if want perfmodel; then  # issue 8's model accuracy on the GPU: a staged CUDA profile, then measured vs predicted
  TAIL=8 step perfmodel 420 "$NODE" dist/bench/perf-model.js ${PERFMODEL_ARGS:---backend=cuda --quick --models=olmoe-1b-7b-shape,qwen3-30b-a3b-shape --batches=1,8,32,128}
  cp bench/results/perf-model-cuda-*.json "$W/" 2>/dev/null
  pack
fi
if want ab; then  # this checkout's decode steps against the carried OLD_REF's (gpu-carry.sh), alternated in one process
  # AB_ARGS default: tiny-qwen3-moe on CUDA at batches 1 and 32 (2026-11-27: the whole step queued, one await per step)
  if [ -d .device/carry/old/dist ]; then
    old_addon=() && [ -d .device/carry/old/prebuild ] && old_addon=(--old-prebuild=.device/carry/old/prebuild)
    TAIL=4 step ab 180 "$NODE" scripts/ab-decode.mjs --old=.device/carry/old/dist "${old_addon[@]}" ${AB_ARGS:---backend=cuda --batches=1,32 --reps=6}
  else
    echo "ab: no .device/carry/old/dist (gpu-carry.sh with OLD_REF=<commit>)"
  fi
fi
if want demo; then  # the README's main-job command, on CUDA
  TAIL=20 step demo 180 "$NODE" dist/lib/cli.js demo --max-new-tokens 16
fi
ls -la "$W"
