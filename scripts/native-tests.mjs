#!/usr/bin/env node
// `npm run build:native-tests [-- test|bench|info [args...]]`: builds `moe-native` (the op tests and kernel
// timings without Node, test/native and bench/native) with CMake into build-native/, then optionally runs it,
// streaming its output and exiting with its exit code. No dependencies beyond Node itself.
//
// A GPU host does not need Node for this; the same two plain commands are:
//   cmake -S . -B build-native -DMOE_ADDON=OFF -DMOE_NATIVE_TESTS=ON -DCMAKE_BUILD_TYPE=Release [-DMOE_CUDA=ON]
//   cmake --build build-native -j "$(nproc)"
// then: build-native/moe-native info | test [--filter SUBSTR] | bench [--json PATH]
//
// Environment: MOE_CUDA=AUTO|ON|OFF is passed through to CMake (-DMOE_CUDA=...); unset leaves CMake's default
// (AUTO: CUDA when nvcc is found).
import { spawnSync } from 'node:child_process';
import { availableParallelism, cpus } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = join(root, 'build-native');
const exe = join(buildDir, process.platform === 'win32' ? 'moe-native.exe' : 'moe-native');

function run(cmd, args) {
  console.log(`> ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.error) {
    console.error(`native-tests: cannot run ${cmd}: ${r.error.message}`);
    process.exit(1);
  }
  if (r.signal) {
    console.error(`native-tests: ${cmd} was killed by ${r.signal}`);
    process.exit(1);
  }
  return r.status ?? 1;
}

const configure = [
  '-S', '.', '-B', buildDir,
  '-DMOE_ADDON=OFF', '-DMOE_NATIVE_TESTS=ON', '-DCMAKE_BUILD_TYPE=Release',
];
if (process.env.MOE_CUDA) configure.push(`-DMOE_CUDA=${process.env.MOE_CUDA}`);
const jobs = typeof availableParallelism === 'function' ? availableParallelism() : cpus().length;

let status = run('cmake', configure);
if (status !== 0) process.exit(status);
status = run('cmake', ['--build', buildDir, '-j', String(jobs)]);
if (status !== 0) process.exit(status);

const [sub, ...rest] = process.argv.slice(2);
if (sub === undefined) process.exit(0);
if (!['test', 'bench', 'info'].includes(sub)) {
  console.error(`native-tests: unknown subcommand '${sub}' (expected test, bench or info)`);
  process.exit(2);
}
process.exit(run(exe, [sub, ...rest]));
