#!/usr/bin/env node
// A/B of two builds' decode steps in ONE process, alternated (the development VM's phases swing single runs by 2x, so
// separate processes cannot show a 10-30% change; alternating inside one process cancels them).
//   B: this checkout's dist/. A: another build's dist/ folder, e.g. the last commit's:
//     git worktree add /tmp/old HEAD && (cd /tmp/old && ln -s "$PWD/../<repo>/node_modules" . && npx tsc -p .)
//   (its lib loads the same addon: give it this checkout's build/ as a symlink when the native side is compatible;
//   otherwise build its own and pass --old-prebuild=<its folder holding build/Release>; tensor descriptors became
//   arrays at 0c2ed1a, so builds before it need their own)
// Usage: node scripts/ab-decode.mjs --old=/tmp/old/dist [--old-prebuild=DIR] [--preset=tiny-qwen3-moe] [--layers=N] [--staged]
//          [--experts=resident|all|FRACTION] (default: the backend's default; all: a pool with a slot for every expert)
//          [--backend=cpu|cuda] [--batches=1,32] [--reps=6] [--prompt=16] [--new-tokens=24]
// On a GPU machine: scripts/gpu-carry.sh with OLD_REF=<commit> carries that commit's dist/ (gpu-session.sh step ab).
// With --old-prebuild the process holds two addons, each with its own thread pool: on a 2-core machine they contend
// (2026-11-27, tiny-qwen3-moe batch 1: B/A 0.87 against 0.64 with one shared addon), so compare such ratios only with
// each other.
// Prints, per batch, the median step time (full decode steps: every sequence decoding) of A and B over the
// repetitions and every repetition's median; --save also writes them to bench/results/ab-decode-<date>[-label].json
// (MOE_BENCH_LABEL) with the machine and the arguments (--note=TEXT: what A and B are).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const arg = (name, dflt) => {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : dflt;
};
const oldDist = arg('old');
if (!oldDist) {
  console.error('usage: node scripts/ab-decode.mjs --old=DIST_OF_THE_OTHER_BUILD [--preset=P] [--staged] [--backend=cpu|cuda] [--batches=1,32] [--reps=6]');
  process.exit(2);
}
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const B_ = await import(path.join(root, 'dist', 'lib', 'index.js'));
const A_ = await import(path.resolve(oldDist, 'lib', 'index.js'));
// --old-prebuild=DIR: A loads its own addon (DIR/build/Release/moe_offload.node) where the native interface changed
// between the builds; each lib loads its addon at its first native call, so the variable is set around A's load only
const oldPrebuild = arg('old-prebuild');
const { benchModel, randomRequests } = await import(path.join(root, 'dist', 'bench', 'bench-models.js'));
const { machine, resultsFile } = await import(path.join(root, 'dist', 'bench', 'machine.js'));

const preset = arg('preset', 'tiny-qwen3-moe');
const staged = process.argv.includes('--staged');
const backend = arg('backend', 'cpu');
const batches = arg('batches', '1,32').split(',').map(Number);
const reps = Number(arg('reps', '6'));
const prompt = Number(arg('prompt', '16'));
const newTokens = Number(arg('new-tokens', '24'));

const layers = arg('layers') ? Number(arg('layers')) : undefined;
const dir = await benchModel(preset, layers);
const expertsArg = arg('experts');
const experts = expertsArg === undefined ? {} : { experts: expertsArg === 'resident' ? 'resident' : { fraction: expertsArg === 'all' ? 1 : Number(expertsArg), policy: 'lru' } };
const placement = { backend, ...(backend === 'cpu' ? { deviceActivations: staged } : {}), ...experts };
const prebuild = process.env.MOE_OFFLOAD_PREBUILD;
if (oldPrebuild) process.env.MOE_OFFLOAD_PREBUILD = path.resolve(oldPrebuild);
const modelA = await A_.loadModel(dir, placement);
if (prebuild === undefined) delete process.env.MOE_OFFLOAD_PREBUILD;
else process.env.MOE_OFFLOAD_PREBUILD = prebuild;
const models = { A: modelA, B: await B_.loadModel(dir, placement) };
const median = (v) => [...v].sort((x, y) => x - y)[Math.floor(v.length / 2)];

/** The median full-decode step (ms) of a batch of B random prompts on `model`. */
async function run(model, B) {
  const ms = [];
  const reqs = randomRequests(B, prompt, 99 + B, newTokens);
  const onStep = (s) => {
    if (s.decodeTokens === B && s.tokens === B) ms.push(s.ms);
  };
  for await (const _ of model.generateBatch(reqs, { maxSequences: B, maxBatchTokens: Math.max(1024, B * prompt), onStep })) {
    // the step times are what is measured
  }
  return median(ms);
}

const res = { A: new Map(), B: new Map() };
for (let rep = 0; rep < reps; rep++) {
  for (const B of batches) {
    for (const k of rep % 2 ? ['B', 'A'] : ['A', 'B']) {
      const v = await run(models[k], B);
      res[k].set(B, [...(res[k].get(B) ?? []), v]);
    }
  }
}
const f = (v) => v.map((x) => x.toFixed(2)).join(' ');
for (const B of batches) {
  const a = res.A.get(B);
  const b = res.B.get(B);
  console.log(`${preset} ${backend}${staged ? ' staged' : ''} batch ${B}: A ${median(a).toFixed(3)} ms, B ${median(b).toFixed(3)} ms per step (B/A ${(median(b) / median(a)).toFixed(3)}; A: ${f(a)} | B: ${f(b)})`);
}
if (process.argv.includes('--save')) {
  const fs = await import('node:fs');
  const rows = batches.map((B) => ({ batch: B, a_step_ms: median(res.A.get(B)), b_step_ms: median(res.B.get(B)), b_over_a: +(median(res.B.get(B)) / median(res.A.get(B))).toFixed(3), a_reps_ms: res.A.get(B), b_reps_ms: res.B.get(B) }));
  const out = { bench: 'A/B of two builds\' decode steps, alternated in one process (scripts/ab-decode.mjs)', machine: machine(), a: path.resolve(oldDist), b: path.join(root, 'dist'), note: arg('note', ''), args: { preset, layers: layers ?? null, backend, staged, experts: expertsArg ?? 'default', prompt, new_tokens: newTokens, reps }, rows };
  const file = resultsFile('ab-decode', '');
  fs.writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`saved ${file}`);
}
models.A.dispose();
models.B.dispose();
