/**
 * info(): everything a bug report needs in one object: package version, how the binary was built, the CPU
 * (model, cores, ISA features, tier in use), the host's memory and transparent-huge-page mode, CUDA (driver and
 * runtime versions, devices, or why it is unavailable), the backend `openBackend()` would pick, and live native memory.
 *
 * @example
 * const i = info();
 * console.log(i.backend.name, i.cuda.available ? i.cuda.devices[0].name : i.cuda.reason);
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { type BackendStatus, listBackends, openBackend } from './backend.js';
import { type NativeInfo, type NativeMemoryStats, native, packageRoot } from './native.js';

export interface Info extends NativeInfo {
  version: string;
  node: string;
  platform: string;
  /** The backend openBackend() picks with the current options/environment, or why none could be opened. */
  backend: { name: string; kind: 'cpu' | 'cuda'; isa: string } | { error: string };
  backends: BackendStatus[];
  memory: NativeMemoryStats;
  /** Which binary was loaded. */
  binary: string;
  /**
   * Host memory, and Linux's transparent-huge-page mode ('always' | 'madvise' | 'never'; null where there is no such
   * setting): large host buffers (expert stores, slots, KV pools) ask for huge pages, which 'never' refuses, and
   * under 'madvise' any other memory is first touched 4 KiB at a time (a page fault each).
   */
  host: { memoryBytes: number; transparentHugePages: string | null };
}

/** The bracketed choice of /sys/kernel/mm/transparent_hugepage/enabled ("always [madvise] never" -> madvise), or null. */
export function transparentHugePages(file = '/sys/kernel/mm/transparent_hugepage/enabled'): string | null {
  try {
    return /\[(\w+)\]/.exec(fs.readFileSync(file, 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

let cachedVersion: string | undefined;

/** The package version from package.json. */
export function version(): string {
  cachedVersion ??= (JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
  return cachedVersion;
}

export function info(): Info {
  const addon = native();
  const n = addon.info(true);
  let backend: Info['backend'];
  try {
    const be = openBackend();
    backend = { name: be.name, kind: be.kind, isa: be.isa };
  } catch (e) {
    backend = { error: (e as Error).message };
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const binary = path.relative(packageRoot, (require('node-gyp-build') as { resolve(dir: string): string }).resolve(packageRoot));
  return {
    version: version(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    ...n,
    backend,
    backends: listBackends(),
    memory: addon.memoryStats(),
    binary,
    host: { memoryBytes: os.totalmem(), transparentHugePages: transparentHugePages() },
  };
}

/** info() as the human-readable text `npx moe-offload info` prints. */
export function formatInfo(i: Info): string {
  const lines: string[] = [];
  const gib = (b: number) => `${(b / 2 ** 30).toFixed(1)} GiB`;
  lines.push(`moe-offload ${i.version} (node ${i.node}, ${i.platform}, binary ${i.binary})`);
  lines.push(`build:    ${i.build.cuda ? `with CUDA (architectures ${i.build.cudaArchitectures ?? '?'})` : 'CPU only'}${i.build.compiler ? `, ${i.build.compiler}` : ''}`);
  const f = i.cpu.features;
  const feats = Object.entries(f).filter(([, v]) => v).map(([k]) => k);
  lines.push(`cpu:      ${i.cpu.model}, ${i.cpu.cores} cores (${i.cpu.threads} pool threads)`);
  lines.push(`          features: ${feats.length ? feats.join(' ') : 'none of avx2/avx512f/avx512bf16/amx'}; tier in use: ${i.cpu.isa} (best ${i.cpu.bestIsa}${i.cpu.isaCap !== i.cpu.bestIsa && i.cpu.isaCap !== 'avx512bf16' ? `, capped at ${i.cpu.isaCap}` : ''})`);
  lines.push(`host:     ${gib(i.host.memoryBytes)} memory, transparent huge pages ${i.host.transparentHugePages ?? 'n/a'}`);
  if (i.cuda.available) {
    lines.push(`cuda:     driver ${i.cuda.driverVersion}, runtime ${i.cuda.runtimeVersion}`);
    for (const d of i.cuda.devices) {
      lines.push(`          [${d.index}] ${d.name}, sm_${d.computeCapability.replace('.', '')}, ${d.sms} SMs, ${gib(d.totalMemory)}${d.freeMemory === undefined ? '' : ` (${gib(d.freeMemory)} free)`}`);
    }
  } else {
    lines.push(`cuda:     unavailable: ${i.cuda.reason}`);
  }
  lines.push(`backend:  ${'error' in i.backend ? `none: ${i.backend.error}` : `${i.backend.name}`}`);
  lines.push(`backends: ${i.backends.map((b) => (b.available ? b.name : `${b.name} (unavailable: ${b.reason})`)).join(', ')}`);
  return lines.join('\n');
}
