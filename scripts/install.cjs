// `npm install` hook of the published package. Order:
//   1. a binary that loads already (prebuilds/<platform>-<arch>/ or build/Release): nothing to do;
//   2. a development checkout (a .git folder): nothing here, `prepare` builds the full addon with cmake-js;
//   3. otherwise: build the CPU-only addon from source with node-gyp (binding.gyp).
// Package managers that skip install scripts still work where a prebuilt binary exists (step 1 needs no script).
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.join(__dirname, '..');

function loads() {
  try {
    require('node-gyp-build')(root);
    return true;
  } catch {
    return false;
  }
}

if (loads()) process.exit(0);
if (fs.existsSync(path.join(root, '.git'))) {
  console.log('moe-offload: development checkout; `prepare` builds the addon with cmake-js');
  process.exit(0);
}
console.log('moe-offload: no prebuilt binary for this platform; building the CPU-only addon with node-gyp');
const r = spawnSync('node-gyp', ['rebuild'], { cwd: root, stdio: 'inherit', shell: process.platform === 'win32' });
process.exit(r.status ?? 1);
