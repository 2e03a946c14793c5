/**
 * `node dist/bench/residency.js`: the weight-residency path on the backend at hand (the CPU backend here; the
 * same code drives CUDA copies on a GPU host).
 *   1. transfer engine throughput (pinned -> device, default chunks: 4 MiB x 6 in flight on CUDA, 16 MiB x 2 on the
 *      CPU backend; also 4 MiB chunks at the default depth, 4 MiB x 2, 4 MiB x 12 and 16 MiB x 4) as a fraction of ONE plain copy
 *      of the same bytes on the same backend, measured alternately in the same run (the target: >= 90%
 *      for >= 64 MB, >= 80% with 4 MB chunks);
 *   2. H2D and D2H by host memory kind (pinned, registered JS memory, pageable JS memory) at 4, 64 and 256 MiB as
 *      fractions of the plain pinned H2D copy, and copy/compute overlap (GEMMs alone, with a concurrent transfer
 *      on the engine's copy stream, the transfer alone);
 *   3. checkpoint load throughput (Checkpoint.read straight into pinned memory) as a fraction of a plain
 *      sequential fs read of the same files into one Buffer of the same total size (so both write the same amount
 *      of fresh destination memory), same run, files in the page cache for both (warm).
 * Writes bench/results/residency-<date>.json with the machine.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { Checkpoint, HostTensor, TransferEngine, openBackend, writeCheckpoint } from '../lib/index.js';
import { machine } from './machine.js';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const be = openBackend();
  const engine = new TransferEngine(be);
  const engine4 = new TransferEngine(be, { chunkBytes: 4 << 20 });
  // queue depth and chunk size around the defaults (the JS round trip per chunk is what depth hides)
  const variants = [
    { key: 'engine_4MiB_depth2_fraction_of_plain', engine: new TransferEngine(be, { chunkBytes: 4 << 20, maxInFlight: 2 }) },
    { key: 'engine_4MiB_depth12_fraction_of_plain', engine: new TransferEngine(be, { chunkBytes: 4 << 20, maxInFlight: 12 }) },
    { key: 'engine_16MiB_depth4_fraction_of_plain', engine: new TransferEngine(be, { chunkBytes: 16 << 20, maxInFlight: 4 }) },
  ];
  const rows: Array<Record<string, unknown>> = [];
  for (const mb of [4, 16, 64, 256, 1024]) {
    const bytes = mb << 20;
    using host = be.allocPinned(bytes);
    host.bytes.fill(7); // touch the pages: a real copy, not a read of untouched zero pages
    using dev = be.alloc('u8', [bytes]);
    await be.copy(host.tensor('u8', [bytes]), dev); // touch device pages too
    const plain: number[] = [];
    const chunked: number[] = [];
    const chunked4: number[] = [];
    const vt: number[][] = variants.map(() => []);
    const reps = mb >= 256 ? 5 : 11;
    for (let r = 0; r < reps; r++) {
      let t0 = performance.now();
      await be.copy(host.tensor('u8', [bytes]), dev);
      plain.push(performance.now() - t0);
      t0 = performance.now();
      await engine.submit(host.tensor('u8', [bytes]), dev).done;
      chunked.push(performance.now() - t0);
      t0 = performance.now();
      await engine4.submit(host.tensor('u8', [bytes]), dev).done;
      chunked4.push(performance.now() - t0);
      for (let v = 0; v < variants.length; v++) {
        t0 = performance.now();
        await variants[v]!.engine.submit(host.tensor('u8', [bytes]), dev).done;
        vt[v]!.push(performance.now() - t0);
      }
    }
    const p = median(plain);
    const c = median(chunked);
    const c4 = median(chunked4);
    rows.push({
      what: `transfer ${mb} MiB pinned->device (${be.name}, default chunks ${engine.chunkBytes >> 20} MiB x ${engine.maxInFlight} in flight)`,
      plain_GBps: +(bytes / p / 1e6).toFixed(2),
      engine_GBps: +(bytes / c / 1e6).toFixed(2),
      engine_fraction_of_plain: +(p / c).toFixed(3),
      engine_4MiB_fraction_of_plain: +(p / c4).toFixed(3),
      ...Object.fromEntries(variants.map((v, i) => [v.key, +(p / median(vt[i]!)).toFixed(3)])),
    });
  }
  engine.dispose();
  engine4.dispose();
  for (const v of variants) v.engine.dispose();

  // H2D and D2H by host memory kind (pinned allocation, registered JS memory, pageable JS memory), each as a
  // fraction of the plain pinned H2D copy of the same size, all alternated in one loop.
  for (const mb of [4, 64, 256]) {
    const bytes = mb << 20;
    using pinned = be.allocPinned(bytes);
    pinned.bytes.fill(3);
    const regT = new HostTensor('u8', [bytes]);
    regT.data.fill(5);
    using reg = be.registerHost(regT);
    const pageT = new HostTensor('u8', [bytes]);
    pageT.data.fill(9);
    using dev = be.alloc('u8', [bytes]);
    const kinds = [
      ['pinned', pinned.tensor('u8', [bytes])],
      ['registered', reg.tensor],
      ['pageable', pageT],
    ] as const;
    const t: Record<string, number[]> = {};
    const time = async (key: string, f: () => Promise<unknown>) => {
      const t0 = performance.now();
      await f();
      (t[key] ??= []).push(performance.now() - t0);
    };
    for (let r = 0; r < (mb >= 256 ? 5 : 9); r++) {
      for (const [k, h] of kinds) {
        await time(`h2d_${k}`, () => be.copy(h, dev));
        await time(`d2h_${k}`, () => be.copy(dev, h));
      }
    }
    const ref = median(t.h2d_pinned!);
    const row: Record<string, unknown> = { what: `H2D / D2H ${mb} MiB by host memory kind (${be.name}), one plain copy each` };
    for (const key of Object.keys(t)) {
      row[`${key}_GBps`] = +(bytes / median(t[key]!) / 1e6).toFixed(2);
      row[`${key}_fraction_of_pinned_h2d`] = +(ref / median(t[key]!)).toFixed(3);
    }
    rows.push(row);
  }

  // Copy/compute overlap: a GEMM on the compute stream alone, then with a 1 GiB pinned -> device transfer running
  // on the engine's copy stream at the same time (and that transfer alone): overlap shows as GEMM time unchanged
  // and the pair finishing in about max(alone times), not their sum.
  {
    const bytes = (be.kind === 'cuda' ? 1024 : 128) << 20;
    using pinned = be.allocPinned(bytes);
    pinned.bytes.fill(1);
    using dev = be.alloc('u8', [bytes]);
    const n = be.kind === 'cuda' ? 8192 : 1024;
    const hA = new HostTensor('bf16', [n, n]);
    for (let i = 0; i < hA.data.length; i++) hA.data[i] = 0x3c00 | (Math.imul(i, 2654435761) >>> 25);
    using a = await be.upload(hA);
    using c = be.alloc('f32', [n, n]);
    const reps = be.kind === 'cuda' ? 10 : 2; // GEMMs queued back to back per timing
    const gemms = async () => {
      await Promise.all(Array.from({ length: reps }, () => be.gemm(a, a, c)));
      await be.synchronize();
    };
    const eng = new TransferEngine(be);
    const copy = () => eng.submit(pinned.tensor('u8', [bytes]), dev).done;
    const alone: number[] = [], copyAlone: number[] = [], withCopy: number[] = [], both: number[] = [];
    await gemms();
    for (let r = 0; r < 5; r++) {
      let t0 = performance.now();
      await gemms();
      alone.push(performance.now() - t0);
      t0 = performance.now();
      await copy();
      copyAlone.push(performance.now() - t0);
      t0 = performance.now();
      const cp = copy().then(() => performance.now() - t0);
      await gemms();
      withCopy.push(performance.now() - t0);
      both.push(Math.max(await cp, performance.now() - t0));
    }
    eng.dispose();
    const g = median(alone), ca = median(copyAlone), gw = median(withCopy), b = median(both);
    rows.push({
      what: `overlap: ${reps} GEMMs bf16 ${n}^3 with a ${bytes >> 20} MiB H2D on the copy stream (${be.name})`,
      gemm_alone_ms: +g.toFixed(3),
      copy_alone_ms: +ca.toFixed(3),
      gemm_with_copy_ms: +gw.toFixed(3),
      both_done_ms: +b.toFixed(3),
      gemm_slowdown: +(gw / g).toFixed(3),
      overlap_fraction: +((g + ca - b) / Math.min(g, ca)).toFixed(3), // 1: the shorter one hidden entirely, 0: serial
    });
  }

  // Checkpoint load vs plain sequential read of the same file.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-bench-ckpt-'));
  try {
    const n = 64;
    const shape = [1024, 2048]; // 4 MiB bf16 each, 256 MiB in all
    const tensors = new Map<string, HostTensor>();
    for (let i = 0; i < n; i++) {
      const t = new HostTensor('bf16', shape);
      t.data.fill(i);
      tensors.set(`t${i}`, t);
    }
    await writeCheckpoint(dir, tensors, { maxShardBytes: 128 << 20 });
    tensors.clear();
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).map((f) => path.join(dir, f));
    const total = files.reduce((a, f) => a + fs.statSync(f).size, 0);
    using pinned = be.allocPinned(n * 4 << 20);
    const plain: number[] = [];
    const ours: number[] = [];
    const buf = Buffer.alloc(total);
    for (let r = 0; r < 5; r++) {
      let t0 = performance.now();
      let at = 0;
      for (const f of files) {
        const fh = await fs.promises.open(f, 'r');
        for (let pos = 0; ; ) {
          const { bytesRead } = await fh.read(buf, at, Math.min(64 << 20, buf.byteLength - at), pos);
          if (bytesRead === 0) break;
          pos += bytesRead;
          at += bytesRead;
        }
        await fh.close();
      }
      plain.push(performance.now() - t0);
      t0 = performance.now();
      const ckpt = await Checkpoint.open(dir);
      for (let i = 0; i < n; i++) await ckpt.read(`t${i}`, pinned.tensor('bf16', shape, i * (4 << 20)));
      await ckpt.close();
      ours.push(performance.now() - t0);
    }
    rows.push({
      what: `checkpoint load ${(total / 2 ** 20).toFixed(0)} MiB into pinned memory (warm page cache)`,
      plain_read_GBps: +(total / median(plain) / 1e6).toFixed(2),
      checkpoint_GBps: +(total / median(ours) / 1e6).toFixed(2),
      fraction_of_plain_read: +(median(plain) / median(ours)).toFixed(3),
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.table(rows);
  const result = { benchmark: 'residency', machine: machine(), results: rows };
  const out = path.join(__dirname, '..', '..', 'bench', 'results', `residency-${result.machine.date.slice(0, 10)}.json`);
  fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${path.relative(process.cwd(), out)}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
