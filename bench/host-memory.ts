/**
 * Weights in JS memory vs Backend.allocHost memory (transparent huge pages) on the CPU backend: the same gemm
 * (a [M, K] bf16 x [N, K] weight, M = 1 and 8) over one weight of each kind, alternated in rounds (which goes first
 * alternates too), at the LM-head and projection shapes of the real-shape presets; row-major, and on the avx512bf16
 * tier also packed (panel64, the model's default layout there: PackedTensor storage in JS memory vs packWeights'). A batch-1 GEMV streams its
 * weight once, so every 4 KiB page it crosses costs a TLB miss on JS memory; on huge pages one per 2 MiB. Reports
 * each shape's median time of both and their ratio (JS / huge pages: above 1, huge pages faster), the huge-page
 * bytes the process holds (smaps AnonHugePages: whether the kernel granted them), and the machine.
 * Run: node dist/bench/host-memory.js [--rounds=12]  -> bench/results/host-memory-<date>[-$MOE_BENCH_LABEL].json
 */
import fs from 'node:fs';
import path from 'node:path';

import { HostTensor, PackedTensor, type Tensor, openBackend, packedNumel } from '../lib/index.js';
import { packsWeightsByDefault } from '../lib/backend.js';
import { machine, resultsFile } from './machine.js';

const arg = (name: string, dflt: number): number => {
  const a = process.argv.find((s) => s.startsWith(`--${name}=`));
  return a ? Number(a.split('=')[1]) : dflt;
};

/** [N, K] weights: LM heads of qwen3-30b-a3b-shape and olmoe-1b-7b-shape, a q projection (x16 copies: 256 MiB). */
const SHAPES: Array<{ name: string; n: number; k: number; copies: number }> = [
  { name: 'LM head 151936 x 2048', n: 151936, k: 2048, copies: 1 },
  { name: 'LM head 50304 x 2048', n: 50304, k: 2048, copies: 1 },
  { name: 'projection 4096 x 2048 (16 copies in turn)', n: 4096, k: 2048, copies: 16 },
];

function anonHugeBytes(): number | null {
  try {
    const m = /AnonHugePages:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/smaps_rollup', 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

const median = (v: number[]): number => [...v].sort((a, b) => a - b)[v.length >> 1]!;

async function main(): Promise<void> {
  const rounds = arg('rounds', 12);
  const be = openBackend({ backend: 'cpu' });
  const rows: Array<Record<string, unknown>> = [];
  const layouts: Array<'row-major' | 'packed'> = packsWeightsByDefault(be) ? ['row-major', 'packed'] : ['row-major'];
  for (const s of SHAPES) {
    for (const layout of layouts) {
      const js: Tensor[] = [];
      const huge: Tensor[] = [];
      for (let c = 0; c < s.copies; c++) {
        const w = new HostTensor('bf16', [s.n, s.k]);
        const d = w.data as Uint16Array;
        for (let i = 0; i < d.length; i++) d[i] = 0x3c00 + ((i + c) % 97); // 1.0 .. 1.7, bf16 bits
        if (layout === 'packed') {
          const inJs = PackedTensor.wrap(new HostTensor('bf16', [packedNumel(s.n, s.k)]), s.n, s.k);
          await be.packWeightsInto(w, inJs);
          js.push(inJs);
          huge.push(await be.packWeights(w));
        } else {
          const h = be.allocHost('bf16', [s.n, s.k]);
          h.data.set(d);
          js.push(w);
          huge.push(h);
        }
      }
      const hugeBytes = anonHugeBytes();
      for (const M of [1, 8]) {
        const a = new HostTensor('bf16', [M, s.k]);
        a.data.fill(0x3c00);
        const out = new HostTensor('f32', [M, s.n]);
        // ms per weight read: the median of 3 passes over every copy
        const time = async (ws: Tensor[]): Promise<number> => {
          const ts: number[] = [];
          for (let p = 0; p < 3; p++) {
            const t0 = performance.now();
            for (const w of ws) await be.gemm(a, w, out);
            ts.push((performance.now() - t0) / ws.length);
          }
          return median(ts);
        };
        await time(js);
        await time(huge);
        const J: number[] = [];
        const H: number[] = [];
        for (let r = 0; r < rounds; r++) {
          if (r % 2 === 0) {
            J.push(await time(js));
            H.push(await time(huge));
          } else {
            H.push(await time(huge));
            J.push(await time(js));
          }
        }
        const ratios = J.map((j, i) => j / H[i]!);
        const bytes = s.n * s.k * 2;
        const row = {
          shape: s.name,
          layout,
          M,
          js_ms: +median(J).toFixed(3),
          huge_pages_ms: +median(H).toFixed(3),
          js_GBs: +(bytes / median(J) / 1e6).toFixed(1),
          huge_pages_GBs: +(bytes / median(H) / 1e6).toFixed(1),
          ratio_js_over_huge: +(median(J) / median(H)).toFixed(3),
          rounds_huge_faster: ratios.filter((q) => q > 1).length,
          rounds,
          round_ratios: ratios.map((q) => +q.toFixed(3)),
          process_anon_huge_MiB: hugeBytes === null ? null : Math.round(hugeBytes / 2 ** 20),
          weight_MiB: +((bytes * s.copies) / 2 ** 20).toFixed(1),
        };
        rows.push(row);
        console.log(`${s.name.padEnd(44)} ${layout.padEnd(9)} M=${M}: JS ${row.js_ms} ms (${row.js_GBs} GB/s), huge pages ${row.huge_pages_ms} ms (${row.huge_pages_GBs} GB/s), ratio ${row.ratio_js_over_huge} (huge faster in ${row.rounds_huge_faster}/${rounds} rounds)`);
      }
      for (const h of huge) (h as HostTensor | PackedTensor).dispose();
    }
  }
  const result = { bench: 'host-memory', machine: machine(), backend: be.name, rows };
  const file = resultsFile('host-memory');
  fs.writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${path.relative(process.cwd(), file)}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
