// Produces prebuilds/linux-x64/moe_offload.napi.node: the cmake-js build with CUDA inside (static cudart), one
// binary that loads on CPU-only hosts (falls back to the CPU backend) and uses CUDA where a driver and GPU exist.
// node-gyp-build picks it up when build/Release is absent (e.g. in the published package). Requires nvcc.
//   npm run build:prebuild-linux            build with MOE_CUDA=ON, then copy
//   npm run build:prebuild-linux -- --copy  only copy the existing build/Release binary
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.error(`prebuild-linux: this script makes the linux-x64 binary; this is ${process.platform}-${process.arch}`);
  process.exit(1);
}
if (!process.argv.includes('--copy')) {
  const cmakeJs = path.join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
  const r = spawnSync(process.execPath, [cmakeJs, 'rebuild', '--log-level', 'warn', '--CDMOE_CUDA=ON'], {
    cwd: root,
    stdio: 'inherit',
  });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
const src = path.join(root, 'build', 'Release', 'moe_offload.node');
const dir = path.join(root, 'prebuilds', 'linux-x64');
fs.mkdirSync(dir, { recursive: true });
const dst = path.join(dir, 'moe_offload.napi.node');
fs.copyFileSync(src, dst);
console.log(`prebuild-linux: ${path.relative(root, dst)} (${(fs.statSync(dst).size / 1048576).toFixed(1)} MiB)`);
