/**
 * Backend choice, info() and the CLI: facts checked against independent sources (/proc/cpuinfo, package.json,
 * whether nvcc exists), forcing CUDA where it is unavailable, and the env switches MOE_OFFLOAD_BACKEND and
 * MOE_OFFLOAD_ISA (in child processes, since they are read once per process).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { BackendUnavailableError, HostTensor, info, listBackends, openBackend } from '../lib/index.js';
import { transparentHugePages } from '../lib/info.js';
import { PRESETS } from '../lib/model/presets.js';

const root = path.join(__dirname, '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };

function nvccExists(): boolean {
  return spawnSync('nvcc', ['--version']).status === 0 || fs.existsSync('/usr/local/cuda/bin/nvcc');
}

function childJson(code: string, env: Record<string, string>): unknown {
  const out = execFileSync(process.execPath, ['-e', `const m = require(${JSON.stringify(path.join(root, 'dist/lib/index.js'))}); ${code}`], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
  return JSON.parse(out);
}

void test('info() reports the version, the build, the CPU as /proc/cpuinfo describes it, and CUDA or why not', () => {
  const i = info();
  assert.equal(i.version, pkg.version);
  assert.equal(i.build.cuda, nvccExists(), 'the CUDA sources must be compiled in exactly when a CUDA compiler exists');
  if (i.build.cuda) assert.equal(i.build.cudaArchitectures, '80-real,90a-real,90-virtual');
  if (fs.existsSync('/proc/cpuinfo')) {
    const flags = new Set((/^flags\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? '').split(/\s+/));
    assert.equal(i.cpu.features.avx2, flags.has('avx2'));
    assert.equal(i.cpu.features.avx512f, flags.has('avx512f'));
    assert.equal(i.cpu.features.avx512bf16, flags.has('avx512_bf16'));
    assert.equal(i.cpu.features.amx, flags.has('amx_tile') && flags.has('amx_bf16'));
  }
  assert.ok(i.cpu.cores >= 1 && i.cpu.threads >= 1);
  assert.equal(i.host.memoryBytes, os.totalmem());
  const thp = '/sys/kernel/mm/transparent_hugepage/enabled';
  if (fs.existsSync(thp)) {
    // the bracketed word of the kernel's own file, read here independently
    const words = fs.readFileSync(thp, 'utf8').trim().split(/\s+/);
    assert.equal(i.host.transparentHugePages, words.find((w) => w.startsWith('['))!.slice(1, -1));
  } else {
    assert.equal(i.host.transparentHugePages, null);
  }
  if (i.cuda.available) {
    assert.ok(i.cuda.devices.length > 0 && i.cuda.driverVersion);
  } else {
    assert.match(i.cuda.reason ?? '', /driver|device|compiled without CUDA/);
    if (!fs.existsSync('/dev/nvidia0') && i.build.cuda) assert.match(i.cuda.reason ?? '', /cudaError/);
  }
  assert.ok('name' in i.backend && i.backend.name === (i.cuda.available ? 'cuda:0' : `cpu-${i.cpu.isa}`));
});

void test('transparentHugePages reads the bracketed mode of the kernel file, null without one', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thp-'));
  try {
    const f = path.join(dir, 'enabled');
    for (const [text, want] of [['always [madvise] never\n', 'madvise'], ['[always] madvise never\n', 'always'], ['always madvise [never]', 'never'], ['garbage', null]] as const) {
      fs.writeFileSync(f, text);
      assert.equal(transparentHugePages(f), want, text);
    }
    assert.equal(transparentHugePages(path.join(dir, 'missing')), null);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

void test('forcing cuda where it is unavailable throws BackendUnavailableError with the reason', (t) => {
  const i = info();
  if (i.cuda.available) {
    t.skip('CUDA is available on this host');
    return;
  }
  assert.throws(
    () => openBackend({ backend: 'cuda' }),
    (e: unknown) => e instanceof BackendUnavailableError && e.code === 'MOE_BACKEND_UNAVAILABLE' && e.message.includes(i.cuda.reason!),
  );
  const r = childJson(
    `try { m.openBackend(); console.log(JSON.stringify({ ok: true })) } catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })) }`,
    { MOE_OFFLOAD_BACKEND: 'cuda' },
  ) as { name: string; code: string };
  assert.equal(r.name, 'BackendUnavailableError');
  assert.equal(r.code, 'MOE_BACKEND_UNAVAILABLE');
});

void test('MOE_OFFLOAD_BACKEND picks the default, an explicit option wins, bad values are typed errors', () => {
  const r = childJson(
    `const a = m.openBackend().name; const b = m.openBackend({ backend: 'cpu' }).name; console.log(JSON.stringify({ a, b }))`,
    { MOE_OFFLOAD_BACKEND: 'cpu' },
  ) as { a: string; b: string };
  assert.match(r.a, /^cpu-/);
  assert.equal(r.a, r.b);
  const bad = childJson(`try { m.openBackend() } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })) }`, {
    MOE_OFFLOAD_BACKEND: 'gpu',
  }) as { code: string; message: string };
  assert.equal(bad.code, 'MOE_INVALID_ARGUMENT');
  assert.match(bad.message, /MOE_OFFLOAD_BACKEND .*received "gpu"/);
});

void test('MOE_OFFLOAD_ISA caps the CPU tier: higher tiers report why they are unavailable and never run', () => {
  const r = childJson(
    `(async () => {
       const be = m.openBackend({ backend: 'cpu' });
       const a = m.HostTensor.from('bf16', [8, 64], new Array(512).fill(0.25));
       const tier = await be.gemm(a, a, new m.HostTensor('f32', [8, 8]));
       let err; try { m.openBackend({ backend: 'cpu', isa: 'avx512' }) } catch (e) { err = e.name + ': ' + e.message }
       console.log(JSON.stringify({ isa: m.info().cpu.isa, name: be.name, tier, err, backends: m.listBackends() }));
     })()`,
    { MOE_OFFLOAD_ISA: 'avx2' },
  ) as { isa: string; name: string; tier: string; err: string; backends: Array<{ name: string; available: boolean; reason?: string }> };
  const best = info().cpu.bestIsa;
  if (best === 'scalar') {
    assert.equal(r.isa, 'scalar');
    return;
  }
  assert.equal(r.isa, 'avx2');
  assert.equal(r.name, 'cpu-avx2');
  assert.equal(r.tier, 'avx2');
  assert.match(r.err, /BackendUnavailableError: cpu-avx512 unavailable: (capped by MOE_OFFLOAD_ISA=avx2|this CPU)/);
  const avx512 = r.backends.find((b) => b.name === 'cpu-avx512')!;
  assert.equal(avx512.available, false);
});

void test('listBackends names every backend with availability and reasons', () => {
  const l = listBackends();
  assert.deepEqual(
    l.filter((b) => b.kind === 'cpu').map((b) => b.name),
    ['cpu-scalar', 'cpu-avx2', 'cpu-avx512', 'cpu-avx512bf16'],
  );
  for (const b of l) if (!b.available) assert.ok(b.reason);
});

void test('memoryInfo: the GPU\'s free and total bytes on CUDA (as info() reports them), none on the CPU backend', () => {
  assert.equal(openBackend({ backend: 'cpu' }).memoryInfo(), undefined);
  const cuda = listBackends().find((b) => b.kind === 'cuda' && b.available);
  if (!cuda) return;
  const m = openBackend({ backend: 'cuda' }).memoryInfo()!;
  const d = info().cuda.devices[0]!;
  assert.equal(m.total, d.totalMemory);
  assert.ok(m.free > 0 && m.free <= m.total);
});

void test('a CPU op resolves with the kernel tier that ran', async () => {
  const be = openBackend({ backend: 'cpu' });
  const x = HostTensor.from('f32', [2], [1, 2]);
  assert.equal(await be.add(x, x, x), be.isa === 'avx512bf16' ? 'avx512' : be.isa);
  assert.deepEqual(Array.from(x.data), [2, 4]);
});

void test('ownStream: a Backend whose ops default to a stream of its own, ordered against the shared one by events', async () => {
  const shared = openBackend({ backend: 'cpu' });
  const own = openBackend({ backend: 'cpu', ownStream: true });
  assert.equal(shared.stream, openBackend({ backend: 'cpu' }).stream, 'Backend objects of a device share its default stream');
  assert.notEqual(own.stream, shared.stream);
  assert.equal(own.stream, own.stream, 'made once');
  assert.notEqual(openBackend({ backend: 'cpu', ownStream: true }).stream, own.stream);
  // an op on the own stream queued behind an event of the shared one sees the shared stream's result
  const a = HostTensor.from('f32', [4], [1, 2, 3, 4]);
  const b = new HostTensor('f32', [4]);
  const c = new HostTensor('f32', [4]);
  const ev = shared.createEvent();
  const first = shared.add(a, a, b);
  ev.record(shared.stream);
  void own.stream.waitEvent(ev);
  await own.add(b, a, c);
  await first;
  assert.deepEqual(Array.from(c.data), [3, 6, 9, 12]);
  assert.throws(() => openBackend({ backend: 'cpu', ownStream: 'yes' as unknown as boolean }), { code: 'MOE_INVALID_ARGUMENT', message: /options.ownStream must be a boolean, received "yes"/ });
});

void test('npx moe-offload info prints the facts; --json is machine-readable', () => {
  const cli = path.join(root, 'dist/lib/cli.js');
  const text = execFileSync(process.execPath, [cli, 'info'], { encoding: 'utf8' });
  assert.match(text, new RegExp(`^moe-offload ${pkg.version.replace(/\./g, '\\.')}`));
  assert.match(text, /cpu: .*cores/);
  assert.match(text, /cuda: /);
  assert.match(text, /backend: +(cpu-|cuda:)/);
  const j = JSON.parse(execFileSync(process.execPath, [cli, 'info', '--json'], { encoding: 'utf8' })) as { version: string; cpu: object };
  assert.equal(j.version, pkg.version);
  assert.match(text, /host: +[\d.]+ GiB memory, transparent huge pages /);
  // --help lists every preset with its description, at least two spaces after the longest name
  const help = execFileSync(process.execPath, [cli, '--help'], { encoding: 'utf8' });
  for (const [name, p] of Object.entries(PRESETS)) assert.match(help, new RegExp(`^ +${name} {2,}${p.description.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'), name);
  const bad = spawnSync(process.execPath, [cli, 'frobnicate'], { encoding: 'utf8' });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /unknown command "frobnicate"/);
});
