/**
 * Model load time (`loadModel`, the CPU backend, its default packing) against a plain read of the same checkpoint
 * files, on real-shape models with random weights (Qwen3-30B-A3B and OLMoE-1B-7B dimensions with 2 layers, Mixtral-8x7B
 * with 1). The roofline is measured in the same run: the checkpoint's shards read front to back into one reused
 * 64 MiB buffer, from the page cache (each shard read once before, and the load's own reads come from it too), so
 * `frac_of_read` = plain read time / load time says how much of the load is the bytes themselves and how much is
 * allocation, page faults and packing. Each model: `--reps` rounds (default 3), each a plain read then a load (then
 * its dispose); the row reports the median of each, and each load's phases from its progress events (the dense
 * weights done; the first expert tensor in, i.e. the expert store allocated and mapped in; the last).
 * Run: node dist/bench/load.js [--reps=N] [--models=a,b] -> bench/results/load-cpu-<date>.json
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { loadModel, type PresetName } from '../lib/index.js';
import { medianOf } from '../lib/engine/batch.js';
import { benchModel } from './bench-models.js';
import { machine, resultsFile } from './machine.js';

const r3 = (v: number): number => +v.toFixed(3);

/** The checkpoint's safetensors shards, read front to back into one reused buffer: ms. */
async function plainRead(files: readonly string[], buf: Uint8Array): Promise<number> {
  const t0 = performance.now();
  for (const f of files) {
    const fh = await fs.promises.open(f, 'r');
    try {
      for (let pos = 0; ; ) {
        const { bytesRead } = await fh.read(buf, 0, buf.byteLength, pos);
        if (bytesRead === 0) break;
        pos += bytesRead;
      }
    } finally {
      await fh.close();
    }
  }
  return performance.now() - t0;
}

async function main(): Promise<void> {
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const reps = Number(arg('reps') ?? 3);
  if (!Number.isSafeInteger(reps) || reps < 1) throw new Error(`--reps must be a positive integer, received ${arg('reps')}`);
  const only = arg('models')?.split(',');
  const models: Array<{ preset: PresetName; layers: number }> = [
    { preset: 'qwen3-30b-a3b-shape', layers: 2 },
    { preset: 'olmoe-1b-7b-shape', layers: 2 },
    { preset: 'mixtral-8x7b-shape', layers: 1 },
  ];
  const buf = new Uint8Array(64 * 2 ** 20);
  const rows: Array<Record<string, unknown>> = [];
  for (const m of models.filter((x) => !only || only.includes(x.preset))) {
    const dir = await benchModel(m.preset, m.layers);
    const files = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.safetensors'))
      .map((f) => path.join(dir, f));
    const bytes = files.reduce((n, f) => n + fs.statSync(f).size, 0);
    await plainRead(files, buf); // into the page cache
    const reads: number[] = [];
    const loads: number[] = [];
    const phases: Array<Record<string, number>> = [];
    let packed = false;
    for (let r = 0; r < reps; r++) {
      reads.push(await plainRead(files, buf));
      const t0 = performance.now();
      const seen: Record<string, { first: number; last: number }> = {};
      const model = await loadModel(dir, {
        kvCacheBytes: 1 << 28,
        backend: 'cpu',
        onProgress: (p) => {
          const now = performance.now() - t0;
          seen[p.phase] ??= { first: now, last: now };
          seen[p.phase]!.last = now;
        },
      });
      loads.push(performance.now() - t0);
      // from the start: the dense weights' last tensor, the experts' first (after the store is allocated and mapped
      // in) and last
      phases.push({ dense_done: r3(seen['dense']?.last ?? 0), experts_first: r3(seen['experts']?.first ?? 0), experts_done: r3(seen['experts']?.last ?? 0) });
      packed = model.packedWeights;
      model.dispose();
    }
    const read = medianOf(reads);
    const load = medianOf(loads);
    const row = {
      model: m.preset,
      layers: m.layers,
      checkpoint_GB: r3(bytes / 1e9),
      packed_weights: packed,
      load_ms: r3(load),
      load_GBs: r3(bytes / load / 1e6),
      plain_read_ms: r3(read),
      plain_read_GBs: r3(bytes / read / 1e6),
      frac_of_read: r3(read / load),
      load_runs_ms: loads.map(r3),
      load_phases_ms: phases,
      read_runs_ms: reads.map(r3),
      load_avg_1m: r3(os.loadavg()[0]!),
    };
    console.log(JSON.stringify(row));
    rows.push(row);
  }
  const file = resultsFile('load-cpu');
  fs.writeFileSync(file, `${JSON.stringify({ bench: 'load', date: new Date().toISOString(), machine: machine(), reps, rows }, null, 2)}\n`);
  console.log(`wrote ${file}`);
}

void main();
