/**
 * Performance model accuracy (issue 8): predicted vs measured decode throughput of batched generation on this
 * machine, over models x batch x context, and prefill throughput over models x prompt length (below). Each
 * configuration runs `generateBatch` with B random prompts of L tokens, all prefilled in one step so the B sequences
 * then decode in lockstep, and times the interval between consecutive steps in which all B decode (the step,
 * sampling and the scheduler: what decode throughput is; median). The model predicts the same step at the mean KV
 * length of the timed steps, as `plan` does, from the model profile (lib/batching/profile.ts `profileModel`: the
 * model's own ops at its shapes), and also rescaled to the read bandwidth measured around the run (a 64 MiB probe
 * before and after, as the profile's points have; `_rescaled` columns): over eleven runs on 2026-11-26 the
 * rescaling did not help (perf-model-cpu-2026-11-26-ab-summary.json).
 * Each configuration runs 3 times (1 with --quick) in interleaved rounds, so that a burst of other jobs on this
 * shared machine hits one run of a configuration rather than all; its row is the run with the median measured
 * interval. The profile measures the routed experts and the LM head on the model's own memory (profileModel's
 * `model`: on this VM memory of the same size reads up to 1.18x faster or slower by which pages an allocation got,
 * stable within a process; --generated-weights measures them on generated copies, as a profile saved for later runs
 * is). The profile is measured once before each round (--passes=N: N passes there) and the rounds' profiles
 * merged (`mergeProfiles`: the median per point), so that it samples the same stretch of time as the runs it
 * predicts: this VM's memory bandwidth drifts between phases minutes long, and a profile measured in one phase made
 * every prediction of a model err the same way (the rows of perf-model-cpu-staged-2026-11-26-memplan-real.json were
 * all optimistic, 0-18%). --profile-first measures it once before the rounds instead (--passes, default 3).
 * Reports |predicted - measured| / measured of the throughput per configuration and the mean (target <= 6%,
 * MoE-Lens's 94%), with the load average during the run (the machine is shared).
 * Prefill: prompts of 128, 512 and 1200 tokens in steps of 512 tokens (four 128-token prompts share a step, 512
 * fills one, 1200 runs in three chunks), each request generating one token so every step only prefills; measured
 * prompt tokens/s over those steps vs predictPrefill (the profile then also measures its row ops at 128, 256 and
 * 512 rows and the prefill attention).
 * Offloaded experts: the same model with a quarter of its experts in LRU slots (`experts: { fraction: 0.25 }`),
 * decode at each batch at context 128, vs predictDecode with `expertSlots` (expert copies at the profile's copy
 * rate), with the experts copied per step measured (the cache's bytes moved) and predicted; and the prefill
 * prompts again, vs predictPrefill with `expertSlots`.
 * Backends: the CPU backend by default; --staged runs it as a GPU host would (loadModel's deviceActivations: the
 * activations in the backend's memory, attention and RoPE on a CPU backend of their own, the copies between them;
 * the profile measured the same way); --backend=cuda runs the compute on the GPU (always staged; the offloaded
 * experts then stream through GPU slots, and module mode's copies overlap the compute in the model).
 * --micro-batches=1,2: the decode configurations also at those attention micro-batch counts (predictDecode's
 * microBatches: on the CPU the groups run one after another; on CUDA their host work overlaps the GPU's).
 * Run: node dist/bench/perf-model.js [--quick] [--reps=N] [--passes=N] [--profile-first] [--generated-weights] [--models=a,b]
 *        [--batches=1,8,32] [--backend=cpu|cuda] [--staged] [--micro-batches=1,2] [--decode-only]
 *   -> bench/results/perf-model-<cpu|cpu-staged|cuda>-<date>.json (--quick: one run per configuration, its profile
 *      quick)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { type ModelProfile, predictDecode, predictPrefill } from '../lib/batching/perf-model.js';
import { mergeProfiles, profileModel, readProbeGBs } from '../lib/batching/profile.js';
import { type BatchOptions, kvBytesFor, loadModel, type MoeModel, parseModelConfig, type PresetName } from '../lib/index.js';
import { medianOf, StepIntervals } from '../lib/engine/batch.js';
import { benchModel, randomRequests } from './bench-models.js';
import { machine, resultsFile } from './machine.js';

const r3 = (v: number): number => +v.toFixed(3);
const PROBE = 64 * 2 ** 20;
/** Tokens per prefill step (generateBatch's default maxBatchTokens). */
const CHUNK = 512;
/** KV length of the offloaded-experts configurations. */
const OFFLOAD_CONTEXT = 128;

type StepInfo = Parameters<NonNullable<BatchOptions['onStep']>>[0];

/**
 * B random prompts of L tokens, all prefilled in one step, so the B sequences then decode in lockstep (step j at KV
 * length L + j): the intervals between consecutive all-decode steps, their mean KV length, the read probe before
 * and after, and the load average. `onStep` sees every step, with whether all B decoded in it.
 */
async function lockstepDecode(model: MoeModel, B: number, L: number, seed: number, steps: number, vocab: number, onStep: (st: StepInfo, pure: boolean) => void, microBatches = 1) {
  const reqs = randomRequests(B, L, seed, steps + 2, vocab);
  const before = readProbeGBs(PROBE);
  const load = os.loadavg()[0]!;
  const intervals = new StepIntervals();
  const ctx: number[] = [];
  let decoded = 0;
  for await (const _ of model.generateBatch(reqs, {
    maxSequences: B,
    maxBatchTokens: B * L + B,
    microBatches,
    onStep: (st) => {
      const pure = st.decodeTokens === B && st.tokens === B;
      if (pure) decoded++;
      onStep(st, pure);
      if (intervals.mark(pure)) ctx.push(L + decoded);
    },
  })) {
    // the timings are what is measured
  }
  const after = readProbeGBs(PROBE);
  if (intervals.ms.length === 0) throw new Error(`no two consecutive steps decoded all ${B} sequences (${model.config.architecture}, context ${L})`);
  return { intervals: intervals.ms, context: ctx.reduce((a, b) => a + b, 0) / ctx.length, before, after, load };
}

/** The run with the median measurement (the lower middle one of an even count). */
/**
 * Prefill of prompts of P tokens in steps of CHUNK tokens (one new token each, so every step only prefills): a prompt
 * that fits shares its step with floor(CHUNK / P) others (two such steps), a longer one runs alone in chunks (two
 * prompts). Prompt tokens per second over those steps, the steps, the read probe around and the load average.
 */
async function prefillRun(model: MoeModel, P: number, seed: number, vocab: number) {
  const S = P <= CHUNK ? Math.floor(CHUNK / P) : 1;
  const reqs = randomRequests(P <= CHUNK ? 2 * S : 2, P, seed, 1, vocab);
  const before = readProbeGBs(PROBE);
  const load = os.loadavg()[0]!;
  let tokens = 0;
  let ms = 0;
  let steps = 0;
  for await (const _ of model.generateBatch(reqs, {
    maxSequences: S,
    maxBatchTokens: CHUNK,
    onStep: (st) => {
      if (st.decodeTokens !== 0) return;
      tokens += st.tokens;
      ms += st.ms;
      steps++;
    },
  })) {
    // the timings are what is measured
  }
  return { measured: (tokens * 1000) / ms, steps, before, after: readProbeGBs(PROBE), load };
}

type PrefillRun = Awaited<ReturnType<typeof prefillRun>>;

/**
 * One round of prefill runs of `model`: each prompt length of `prompts` once (seeds from `seed`, by round), appended
 * to `runs` per length; each run's load average goes to `loads`.
 */
async function prefillRound(model: MoeModel, prompts: readonly number[], rep: number, seed: number, runs: Map<number, PrefillRun[]>, loads: number[]): Promise<void> {
  const vocab = Math.min(model.config.vocabSize, 500);
  for (const P of prompts) {
    const run = await prefillRun(model, P, seed + P + 1000 * rep, vocab);
    runs.set(P, [...(runs.get(P) ?? []), run]);
    loads.push(run.load);
  }
}

/**
 * Prefill rows (experts offloaded into `slots` when given): per prompt length the median of its runs against the
 * prediction (predictPrefill); the error is of the time per prompt token (1 / throughput), as the decode rows
 * compare step times.
 */
function prefillTable(cfg: MoeModel['config'], profile: ModelProfile, preset: string, prompts: readonly number[], runs: Map<number, PrefillRun[]>, slots?: number): Array<Record<string, unknown>> {
  const pred = (P: number) => predictPrefill(cfg, profile, { prompt: P, chunk: CHUNK, ...(slots !== undefined ? { expertSlots: slots } : {}) });
  return prompts.map((P) => {
    const all = runs.get(P)!;
    const r = medianRun(all);
    const p = pred(P);
    const row = {
      model: preset,
      layers: cfg.numLayers,
      prompt: P,
      chunk: CHUNK,
      ...(slots !== undefined ? { expert_slots: slots, copy_GBs: r3(profile.copyGBs!) } : {}),
      steps: r.steps,
      measured_tokens_per_s: r3(r.measured),
      predicted_tokens_per_s: r3(p.tokensPerSecond),
      rel_error: r3(Math.abs(1 / p.tokensPerSecond - 1 / r.measured) * r.measured),
      read_GBs: r3((r.before + r.after) / 2),
      load_avg_1m: r3(r.load),
      bound: p.bound,
      predicted_steps: p.steps.map((x) => ({ ...x, ms: r3(x.ms) })),
      terms_ms: Object.fromEntries(Object.entries(p.terms).map(([k, v]) => [k, r3(v)])),
      runs: all.map((x) => ({ measured_tokens_per_s: r3(x.measured), read_GBs: r3((x.before + x.after) / 2), load_avg_1m: r3(x.load) })),
    };
    console.log(JSON.stringify({ ...row, terms_ms: undefined, predicted_steps: undefined }));
    return row;
  });
}

function medianRun<R extends { measured: number }>(all: readonly R[]): R {
  return [...all].sort((a, b) => a.measured - b.measured)[Math.floor((all.length - 1) / 2)]!;
}

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const only = arg('models')?.split(',');
  const batches = (arg('batches') ?? '1,8,32').split(',').map(Number);
  if (batches.some((b) => !Number.isSafeInteger(b) || b < 1)) throw new Error(`--batches must be positive integers, received ${arg('batches')}`);
  const kind = arg('backend') ?? 'cpu';
  if (kind !== 'cpu' && kind !== 'cuda') throw new Error(`--backend must be cpu or cuda, received ${kind}`);
  const staged = kind === 'cuda' || process.argv.includes('--staged');
  const placement = { backend: kind, deviceActivations: staged } as const;
  // attention micro-batches of the decode configurations (each count a configuration of its own)
  const microBatches = (arg('micro-batches') ?? '1').split(',').map(Number);
  if (microBatches.some((mb) => !Number.isSafeInteger(mb) || mb < 1)) throw new Error(`--micro-batches must be positive integers, received ${arg('micro-batches')}`);
  // --decode-only: skip the prefill and offloaded-experts configurations
  const decodeOnly = process.argv.includes('--decode-only');
  const contexts = [128, 512];
  const prompts = [128, 512, 1200];
  const prefillRows: Array<Record<string, unknown>> = [];
  const offloadRows: Array<Record<string, unknown>> = [];
  const offloadPrefillRows: Array<Record<string, unknown>> = [];
  const models: Array<{ preset: PresetName; layers?: number }> = [
    { preset: 'tiny-qwen3-moe' },
    { preset: 'tiny-mixtral' },
    { preset: 'olmoe-1b-7b-shape', layers: 2 },
    { preset: 'qwen3-30b-a3b-shape', layers: 2 },
  ];
  const decodeSteps = quick ? 8 : 16;
  const reps = Number(arg('reps') ?? (quick ? 1 : 3));
  const passes = arg('passes') === undefined ? undefined : Number(arg('passes'));
  // --profile-first: the profile measured once per model before its rounds (all passes there); by default one
  // profile before each round, merged
  const profileFirst = process.argv.includes('--profile-first');
  const ownMemory = !process.argv.includes('--generated-weights');
  const rows: Array<Record<string, unknown>> = [];
  const profiles: Record<string, unknown> = {};
  const loads: number[] = [];
  const t0 = performance.now();
  for (const m of models.filter((x) => !only || only.includes(x.preset))) {
    const dir = await benchModel(m.preset, m.layers);
    // the KV cache holds the largest decode configuration's sequences whole (B x (context + its new tokens)), at
    // least 1 GiB: with less, the scheduler admits part of the batch and the rest never decode in lockstep
    const kvCacheBytes = Math.max(1 << 30, kvBytesFor(parseModelConfig(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'))), Math.max(...batches) * (Math.max(...contexts, OFFLOAD_CONTEXT) + decodeSteps + 2 + 64)));
    const model = await loadModel(dir, { kvCacheBytes, ...placement });
    let off: MoeModel | undefined;
    try {
      // offloaded experts: a quarter of them in LRU slots (predicted with the slot count: expert copies priced at the
      // profile's copy rate)
      if (!decodeOnly) off = await loadModel(dir, { kvCacheBytes, experts: { fraction: 0.25, policy: 'lru' }, ...placement });
      const cfg = model.config;
      const V = cfg.vocabSize;
      // warm-up, not measured: a few steps at the largest batch, so that the first configuration does not pay what
      // a model's first steps do (on a GPU the expert pool filling: the 2026-11-28 H200 run's first Qwen3-shape row,
      // batch 1, read its experts at 0.8-1.3 ms a step, 0.01 ms in the next row)
      for (const mdl of off ? [model, off] : [model]) {
        for await (const _ of mdl.generateBatch(randomRequests(Math.max(...batches), 16, 777, 4, Math.min(V, 500)), { maxSequences: Math.max(...batches), maxBatchTokens: 16 * Math.max(...batches) })) {
          // discarded
        }
      }
      // the attention points on the tier the model runs it on (no tier trial); the routed experts and the LM head on
      // the model's own memory (--generated-weights: on generated copies, as a profile saved for later runs)
      const profileOptions = { maxBatch: Math.max(...batches), prefillTokens: [128, 256, CHUNK], quick, staged, attentionIsa: model.attentionIsa, ...(ownMemory ? { model } : {}) };
      const measure = async (n: number) => {
        loads.push(os.loadavg()[0]!);
        const p = await profileModel(model.backend, cfg, { ...profileOptions, passes: n });
        console.log(`${m.preset}: profile (${n} pass${n > 1 ? 'es' : ''}) in ${p.seconds.toFixed(1)} s, read ${p.readGBs.toFixed(1)} GB/s, stream efficiency ${p.streamEfficiency.toFixed(2)}, runtime ${JSON.stringify({ ...p.runtime, points: undefined })}`);
        return p;
      };
      // the profile: measured before each round (passes per round; merged by mergeProfiles), or all at the start
      const measured: ModelProfile[] = profileFirst ? [await measure(passes ?? (quick ? 1 : 3))] : [];
      // each configuration runs `reps` times, the rounds interleaved (a burst of other jobs then hits one run of a
      // configuration, not all); the row is the run with the median measured interval
      const runs = new Map<string, Array<{ measured: number; step: number; parts: Record<string, number>; context: number; before: number; after: number; load: number; timed: number }>>();
      const prefill = new Map<number, PrefillRun[]>();
      const offRuns = new Map<number, Array<{ measured: number; context: number; copied: number; read: number; load: number }>>();
      const offPrefill = new Map<number, PrefillRun[]>();
      for (let rep = 0; rep < reps; rep++) {
        if (!profileFirst) measured.push(await measure(passes ?? 1));
        for (const B of batches) {
          for (const L of contexts) {
            for (const M of microBatches.filter((mb) => mb <= B)) {
              const stepMs: number[] = [];
              const parts: Record<string, number[]> = { attention: [], experts: [], stall: [], dense: [], host: [] };
              const { intervals, context, before, after, load } = await lockstepDecode(model, B, L, 12345 + B * 7 + L + 1000 * rep, decodeSteps, Math.min(V, 500), (st, pure) => {
                if (!pure) return;
                stepMs.push(st.ms);
                parts.attention!.push(st.times.attentionMs);
                parts.experts!.push(st.times.expertMs);
                parts.stall!.push(st.times.stallMs);
                parts.dense!.push(st.times.denseMs);
                parts.host!.push(st.times.hostMs);
              }, M);
              const key = `${B}/${L}/${M}`;
              const partMs = Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, medianOf(v)]));
              runs.set(key, [...(runs.get(key) ?? []), { measured: medianOf(intervals), step: medianOf(stepMs), parts: partMs, context, before, after, load, timed: intervals.length }]);
              loads.push(load);
            }
          }
        }
        if (!off) continue;
        // prefill: prompts of P tokens in steps of CHUNK (generateBatch's default maxBatchTokens), as prefillRun runs them
        await prefillRound(model, prompts, rep, 777, prefill, loads);
        for (const B of batches) {
          let moved = off.cacheStats!.bytesMoved;
          const copied: number[] = [];
          const { intervals, context, before, after, load } = await lockstepDecode(off, B, OFFLOAD_CONTEXT, 4321 + B * 7 + 1000 * rep, decodeSteps, Math.min(V, 500), (_, pure) => {
            const now = off!.cacheStats!.bytesMoved; // set: the round continued past `if (!off)`
            if (pure) copied.push(now - moved);
            moved = now;
          });
          offRuns.set(B, [...(offRuns.get(B) ?? []), { measured: medianOf(intervals), context, copied: medianOf(copied), read: (before + after) / 2, load }]);
          loads.push(load);
        }
        // prefill with the experts offloaded: each step's copies as a decode step of as many tokens (predictPrefill's
        // expertSlots); the same prompts as the resident prefill
        await prefillRound(off, prompts, rep, 999, offPrefill, loads);
      }
      const profile = mergeProfiles(measured);
      profiles[m.preset] = profile;
      for (const B of batches) {
        for (const L of contexts) {
          for (const M of microBatches.filter((mb) => mb <= B)) {
            const all = runs.get(`${B}/${L}/${M}`)!;
            const r = medianRun(all);
            // the model as plan uses it (the profile's own speeds), and rescaled to the read probe around the run
            const predict = (x: { context: number }, now = {}) => predictDecode(cfg, profile, { batch: B, context: x.context, microBatches: M }, now);
            const pred = predict(r);
            const rescaled = predict(r, { readGBs: (r.before + r.after) / 2 }).stepMs;
            const row = {
              model: m.preset,
              layers: cfg.numLayers,
              batch: B,
              context: L,
              micro_batches: M,
              kv_length: r3(r.context),
              measured_interval_ms: r3(r.measured),
              measured_step_ms: r3(r.step),
              predicted_interval_ms: r3(pred.stepMs),
              measured_tokens_per_s: r3((B * 1000) / r.measured),
              predicted_tokens_per_s: r3(pred.tokensPerSecond),
              rel_error: r3(Math.abs(pred.stepMs - r.measured) / r.measured),
              // the same with its memory-bound parts rescaled to the read probe around the run (Conditions.readGBs)
              predicted_interval_ms_rescaled: r3(rescaled),
              rel_error_rescaled: r3(Math.abs(rescaled - r.measured) / r.measured),
              read_GBs_before: r3(r.before),
              read_GBs_after: r3(r.after),
              load_avg_1m: r3(r.load),
              bound: pred.bound,
              terms_ms: Object.fromEntries(Object.entries(pred.terms).map(([k, v]) => [k, r3(v)])),
              // where the measured step went (generateBatch's onStep times, medians over the timed steps): attention,
              // experts, stall and dense are awaited native op groups, host the JS between them; next to terms_ms
              // they show which predicted term misses
              measured_parts_ms: Object.fromEntries(Object.entries(r.parts).map(([k, v]) => [k, r3(v)])),
              intervals_timed: r.timed,
              runs: all.map((x) => ({ measured_interval_ms: r3(x.measured), predicted_interval_ms: r3(predict(x).stepMs), read_GBs: r3((x.before + x.after) / 2), load_avg_1m: r3(x.load) })),
            };
            rows.push(row);
            console.log(JSON.stringify({ ...row, terms_ms: undefined }));
          }
        }
      }
      if (!off) continue;
      prefillRows.push(...prefillTable(cfg, profile, m.preset, prompts, prefill));
      const slots = off.expertCache!.capacity;
      const expertBytes = 3 * cfg.hiddenSize * cfg.moeIntermediateSize * 2;
      for (const B of batches) {
        const all = offRuns.get(B)!;
        const r = medianRun(all);
        const pred = predictDecode(cfg, profile, { batch: B, context: r.context, expertSlots: slots });
        const row = {
          model: m.preset,
          layers: cfg.numLayers,
          batch: B,
          context: OFFLOAD_CONTEXT,
          expert_slots: slots,
          measured_interval_ms: r3(r.measured),
          predicted_interval_ms: r3(pred.stepMs),
          rel_error: r3(Math.abs(pred.stepMs - r.measured) / r.measured),
          measured_experts_copied_per_step: r3(r.copied / expertBytes),
          predicted_experts_copied_per_step: r3(pred.copies!.experts),
          module_mode: pred.copies!.moduleMode,
          streamed: pred.copies!.streamed,
          copy_GBs: r3(profile.copyGBs!),
          read_GBs: r3(r.read),
          load_avg_1m: r3(r.load),
          bound: pred.bound,
          terms_ms: Object.fromEntries(Object.entries(pred.terms).map(([k, v]) => [k, r3(v)])),
          runs: all.map((x) => ({ measured_interval_ms: r3(x.measured), experts_copied: r3(x.copied / expertBytes) })),
        };
        offloadRows.push(row);
        console.log(JSON.stringify({ ...row, terms_ms: undefined }));
      }
      offloadPrefillRows.push(...prefillTable(cfg, profile, m.preset, prompts, offPrefill, slots));
    } finally {
      off?.dispose();
      model.dispose();
    }
  }
  const mean = rows.reduce((a, r) => a + (r.rel_error as number), 0) / rows.length;
  const meanRescaled = rows.reduce((a, r) => a + (r.rel_error_rescaled as number), 0) / rows.length;
  const meanPrefill = prefillRows.length ? prefillRows.reduce((a, r) => a + (r.rel_error as number), 0) / prefillRows.length : null;
  const meanLoad = loads.reduce((a, b) => a + b, 0) / loads.length;
  console.log(`decode: mean |predicted - measured| / measured over ${rows.length} configurations: ${(mean * 100).toFixed(1)}% (rescaled to the read probe: ${(meanRescaled * 100).toFixed(1)}%; load average ${meanLoad.toFixed(2)}, ${((performance.now() - t0) / 1000).toFixed(0)} s)`);
  if (meanPrefill !== null) console.log(`prefill: mean over ${prefillRows.length} configurations: ${(meanPrefill * 100).toFixed(1)}%`);
  const meanOff = offloadRows.length ? offloadRows.reduce((a, r) => a + (r.rel_error as number), 0) / offloadRows.length : null;
  if (meanOff !== null) console.log(`offloaded experts: mean over ${offloadRows.length} configurations: ${(meanOff * 100).toFixed(1)}%`);
  const meanOffPre = offloadPrefillRows.length ? offloadPrefillRows.reduce((a, r) => a + (r.rel_error as number), 0) / offloadPrefillRows.length : null;
  if (meanOffPre !== null) console.log(`offloaded experts, prefill: mean over ${offloadPrefillRows.length} configurations: ${(meanOffPre * 100).toFixed(1)}%`);
  const out = {
    bench: 'performance model accuracy, batched decode throughput (bench/perf-model.ts)',
    machine: machine(),
    backend: kind,
    staged,
    quick,
    runs_per_configuration: reps,
    decode_steps: decodeSteps,
    profile_passes: profileFirst ? (passes ?? (quick ? 1 : 3)) : reps * (passes ?? 1),
    profile_schedule: profileFirst ? 'all passes before the rounds' : 'one profile before each round, merged (mergeProfiles)',
    profile_weights: ownMemory ? "the model's own memory for the routed experts and the LM head (profileModel's model)" : 'generated copies',
    load_avg_1m_mean: r3(meanLoad),
    load_avg_1m_max: r3(Math.max(...loads)),
    mean_rel_error: r3(mean),
    mean_rel_error_rescaled: r3(meanRescaled),
    prefill_mean_rel_error: meanPrefill === null ? null : r3(meanPrefill),
    offloaded_mean_rel_error: meanOff === null ? null : r3(meanOff),
    rows,
    prefill_rows: prefillRows,
    offloaded_rows: offloadRows,
    offloaded_prefill_mean_rel_error: meanOffPre === null ? null : r3(meanOffPre),
    offloaded_prefill_rows: offloadPrefillRows,
    profiles,
  };
  const file = resultsFile(`perf-model-${kind}${kind === 'cpu' && staged ? '-staged' : ''}`);
  fs.writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(`saved ${file}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
