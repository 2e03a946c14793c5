/**
 * The native test executable (test/native, bench/native): built by the same CMakeLists with MOE_NATIVE_TESTS=ON,
 * it runs the op table without Node on every backend present; this is how CUDA kernels are checked on a GPU host.
 * Here it must build (CUDA objects included when nvcc exists), pass on every CPU tier and report cuda as skipped
 * with a reason when no GPU is usable.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';

import { info } from '../lib/index.js';

const root = path.join(__dirname, '..', '..');

void test('moe-native builds and its op table passes on every backend present', { timeout: 20 * 60_000 }, () => {
  const r = spawnSync(process.execPath, ['scripts/native-tests.mjs', 'test'], { cwd: root, encoding: 'utf8', maxBuffer: 64 << 20 });
  const out = `${r.stdout}\n${r.stderr}`;
  assert.equal(r.status, 0, out.slice(-4000));
  const m = /^(\d+) passed, (\d+) failed, (\d+) skipped$/m.exec(r.stdout);
  assert.ok(m, `no summary line in:\n${r.stdout.slice(-2000)}`);
  assert.ok(Number(m[1]) > 100, `only ${m[1]} cases passed`);
  assert.equal(Number(m[2]), 0);
  if (!info().cuda.available) assert.match(r.stdout, /SKIP .*cuda.*cudaError|SKIP .*cuda.*CUDA/);
});
