/**
 * The package as users get it: require() and import both work and share one copy of every class; both are
 * typed; the published tarball's prebuilt binary loads with no build tools on PATH and no install step; without
 * a prebuild, the install script builds the CPU-only addon from binding.gyp with node-gyp.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

const root = path.join(__dirname, '..', '..');
const node = process.execPath;
let tmp = '';
let pkgDir = '';

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd ?? root, env: opts.env ?? process.env, maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-offload-pkg-'));
  // The linux-x64 prebuild from the cmake-js build (CUDA inside when nvcc exists), then the real tarball.
  if (process.platform === 'linux' && process.arch === 'x64') run(node, ['scripts/prebuild-linux.mjs', '--copy']);
  const out = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp]);
  const file = (JSON.parse(out) as Array<{ filename: string }>)[0]!.filename;
  run('tar', ['-xzf', path.join(tmp, path.basename(file)), '-C', tmp]);
  pkgDir = path.join(tmp, 'package');
  // Runtime dependencies, as npm would install them (copied: no network in tests).
  for (const dep of ['node-gyp-build', 'node-addon-api', '@huggingface/tokenizers', '@huggingface/jinja']) {
    fs.cpSync(path.join(root, 'node_modules', dep), path.join(pkgDir, 'node_modules', dep), { recursive: true });
  }
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

void test('require() and import of the package name both work and share the same classes', () => {
  const cjs = run(node, ['-e', "const m = require('moe-offload'); console.log(typeof m.openBackend, m.info().version)"]);
  assert.match(cjs, /^function \d+\.\d+\.\d+/);
  const esm = run(node, [
    '--input-type=module',
    '-e',
    "import moe, { HostTensor, info } from 'moe-offload'; import { createRequire } from 'node:module';" +
      "const c = createRequire(import.meta.url)('moe-offload');" +
      'console.log(c.HostTensor === HostTensor, moe.HostTensor === HostTensor, info().version)',
  ]);
  assert.match(esm, /^true true \d+\.\d+\.\d+/);
});

void test('ESM and CommonJS consumers type-check against the published declarations', () => {
  run(node, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'test/types/tsconfig.json']);
});

void test('the tarball ships the sources, the build files and the linux-x64 prebuild, and nothing of the tests', () => {
  const has = (p: string) => fs.existsSync(path.join(pkgDir, p));
  for (const p of ['package.json', 'dist/lib/index.js', 'dist/lib/index.mjs', 'dist/lib/index.d.ts', 'dist/lib/index.d.mts', 'dist/lib/cli.js', 'CMakeLists.txt', 'binding.gyp', 'cpp/addon.cc', 'cuda/moe_cuda.h', 'scripts/install.cjs', 'scripts/gyp-sources.cjs']) {
    assert.ok(has(p), `${p} missing from the tarball`);
  }
  assert.ok(!has('dist/test') && !has('test'), 'tests leaked into the tarball');
  if (process.platform === 'linux' && process.arch === 'x64') assert.ok(has('prebuilds/linux-x64/moe_offload.napi.node'));
});

void test('the prebuilt binary loads from prebuilds/ with no build tools on PATH, install script or not', (t) => {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    t.skip('the prebuild is linux-x64');
    return;
  }
  const env = { PATH: path.join(tmp, 'empty-bin'), HOME: tmp };
  fs.mkdirSync(env.PATH, { recursive: true });
  // The install hook finds a loadable binary and does nothing (no compiler is reachable anyway).
  run(node, ['scripts/install.cjs'], { cwd: pkgDir, env });
  const out = run(
    node,
    [
      '-e',
      `(async () => { const m = require('./'); const i = m.info();
        const be = m.openBackend(); const x = m.HostTensor.from('bf16', [2, 4], [1,2,3,4,5,6,7,8]);
        const y = new m.HostTensor('f32', [2, 2]); await be.gemm(x, x, y);
        console.log(JSON.stringify({ binary: i.binary, cuda: i.build.cuda, reason: i.cuda.reason, y: Array.from(y.data) })) })()`,
    ],
    { cwd: pkgDir, env },
  );
  const r = JSON.parse(out) as { binary: string; cuda: boolean; reason?: string; y: number[] };
  assert.equal(r.binary, path.join('prebuilds', 'linux-x64', 'moe_offload.napi.node'));
  assert.deepEqual(r.y, [30, 70, 70, 174]);
  // Static cudart: no load-time dependency on CUDA libraries.
  const readelf = spawnSync('readelf', ['-d', path.join(pkgDir, r.binary)], { encoding: 'utf8' });
  if (readelf.status === 0) assert.doesNotMatch(readelf.stdout, /NEEDED.*(libcudart|libcuda\.so)/);
});

void test('without a prebuild, the install script builds the CPU-only addon from binding.gyp (node-gyp)', { timeout: 15 * 60_000 }, () => {
  fs.rmSync(path.join(pkgDir, 'prebuilds'), { recursive: true, force: true });
  // `npm run install` runs the hook as a package manager would, with npm's bundled node-gyp on PATH.
  run('npm', ['run', 'install'], { cwd: pkgDir, env: { ...process.env, JOBS: String(os.availableParallelism()), npm_config_jobs: String(os.availableParallelism()) } });
  const out = run(
    node,
    [
      '-e',
      `(async () => { const m = require('./'); const i = m.info(); const tiers = [];
        for (const b of m.listBackends().filter((b) => b.kind === 'cpu' && b.available)) {
          const be = m.openBackend({ backend: 'cpu', isa: b.isa });
          const x = m.HostTensor.from('bf16', [2, 4], [1,2,3,4,5,6,7,8]); const y = new m.HostTensor('f32', [2, 2]);
          tiers.push(await be.gemm(x, x, y) + ':' + Array.from(y.data).join(','));
        }
        console.log(JSON.stringify({ binary: i.binary, system: i.build.system, cuda: i.build.cuda, reason: i.cuda.reason, tiers })) })()`,
    ],
    { cwd: pkgDir },
  );
  const r = JSON.parse(out) as { binary: string; system: string; cuda: boolean; reason: string; tiers: string[] };
  assert.equal(r.binary, path.join('build', 'Release', 'moe_offload.node'));
  assert.equal(r.system, 'node-gyp');
  assert.equal(r.cuda, false);
  assert.match(r.reason, /compiled without CUDA/);
  assert.ok(r.tiers.length >= 1);
  for (const tier of r.tiers) assert.match(tier, /:30,70,70,174$/);
});

void test('a package without any binary fails on first use with NativeBindingError saying what to do', () => {
  fs.rmSync(path.join(pkgDir, 'build'), { recursive: true, force: true });
  fs.rmSync(path.join(pkgDir, 'prebuilds'), { recursive: true, force: true });
  const out = run(node, ['-e', "const m = require('./'); try { m.info() } catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })) }"], { cwd: pkgDir });
  const r = JSON.parse(out) as { name: string; code: string; message: string };
  assert.equal(r.name, 'NativeBindingError');
  assert.equal(r.code, 'MOE_NATIVE_BINDING');
  assert.match(r.message, /What to do/);
  void execFileSync;
});

void test('the README examples type-check, and the first one runs as written', () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
  assert.ok(blocks.length >= 1, 'no ts block in README.md');
  // Inside the package folder, so `import ... from 'moe-offload'` resolves to this package by its name.
  const dir = path.join(root, 'dist', 'readme-example');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const files = blocks.map((code, i) => {
    fs.writeFileSync(path.join(dir, `example${i}.mts`), code);
    return `example${i}.mts`;
  });
  fs.writeFileSync(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { module: 'nodenext', target: 'es2022', lib: ['es2023', 'esnext.disposable'], types: ['node'], strict: true, skipLibCheck: true, typeRoots: [path.join(root, 'node_modules/@types')] }, files }),
  );
  run(node, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', path.join(dir, 'tsconfig.json')]);
  const out = run(node, [path.join(dir, 'example0.mjs')]);
  assert.match(out, /loaded \d+ experts tensors/);
  assert.match(out, /attentionMs/); // r.stats.decode printed
});
