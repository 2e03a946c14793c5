// Prints the C++ sources of the CPU-only addon for binding.gyp: the same folders CMakeLists.txt globs, minus
// CUDA (cuda/*.cu is only built by CMake). Paths are relative to the package root, separated by spaces.
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const dirs = ['cpp', 'cpp/napi', 'cpp/ops', 'cpp/core', 'cpp/cpu'];
const files = [];
for (const dir of dirs) {
  for (const f of fs.readdirSync(path.join(root, dir)).sort()) {
    if (f.endsWith('.cc') && (dir !== 'cpp' || f === 'addon.cc')) files.push(`${dir}/${f}`);
  }
}
process.stdout.write(files.join(' '));
