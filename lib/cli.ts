#!/usr/bin/env node
/**
 * The `moe-offload` command.
 *   moe-offload demo                                   the main job on a generated tiny model
 *   moe-offload info [--json]                          what this install can do
 *   moe-offload make-model --preset NAME DIR           a random-weight HF checkpoint (the embedded default model)
 *   moe-offload generate --model DIR --prompt TEXT     stream a completion (latency mode)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { type Backend, openBackend } from './backend.js';
import { denseWeightBytes, expertBytes, hostKvLimit, kvTokensFor, stepDeviceBytes } from './batching/memory.js';
import { type ModelProfile, chooseBatch, opCost, predictPrefill, stepOps } from './batching/perf-model.js';
import { planRun, workloadThroughput } from './batching/plan.js';
import { type Workload, readWorkload, workloadShape } from './batching/workload.js';
import { profileModel, readProbeGBs } from './batching/profile.js';

import { demo } from './demo.js';
import { completedIds, generateJsonl, inputWorkload, progressLine } from './engine/jsonl.js';
import { loadModel, readJson } from './engine/model.js';
import { InvalidArgumentError } from './errors.js';
import { formatInfo, info } from './info.js';
import { parseModelConfig } from './model/config.js';
import { makeModel } from './model/make-model.js';
import { ModelTokenizer } from './model/tokenizer.js';
import { PRESETS, PRESET_NAMES } from './model/presets.js';

/** Column of the presets' descriptions in the usage text: the longest name and two spaces. */
const PRESET_WIDTH = Math.max(...PRESET_NAMES.map((p) => p.length)) + 2;

const USAGE = `usage: moe-offload <command> [options]

commands:
  demo [--backend B]         make a tiny random-weight MoE model (once); generate in latency mode with a 25% expert
                             cache, then a batch in throughput mode next to the performance model's prediction
  profile --model DIR [--max-batch N] [--out FILE] [--backend auto|cpu|cuda]
                             measure what the performance model needs for this model on this machine: each op of its
                             decode step at its own shapes vs batch (and attention vs context), per-op and per-step
                             runtime costs, on the backend generate would use (CUDA: staged, attention on the CPU);
                             default FILE ~/.cache/moe-offload/profile-<model folder name>[-cuda].json
  plan --model DIR [--context N | --workload TRACE] [--kv-gib G] [--experts FRACTION] [--device-gib G]
       [--profile FILE] [--backend auto|cpu|cuda]
                             predicted decode throughput per batch size, the binding resource, the chosen batch,
                             and the prefill throughput of prompts of the context's length; --experts FRACTION:
                             routed experts offloaded with that fraction in slots (the copies they cost per step);
                             otherwise on CUDA (or with --device-gib G of device memory) the experts that fit beside
                             each batch's step are chosen with it (measures and saves the profile when FILE is absent);
                             --workload: a request trace (CSV ContextTokens,GeneratedTokens or JSONL input_length,
                             output_length): plans at its mean decode KV length, predicts its end-to-end tokens/s
  info [--json]              package version, CPU features, CUDA devices (or why CUDA is unavailable), backend in use
  make-model --preset NAME [--seed N] [--layers N] DIR
                             write a random-weight MoE checkpoint in HF format (config.json, safetensors shards,
                             tokenizer.json, chat template) into DIR; presets:
${PRESET_NAMES.map((p) => `                               ${p.padEnd(PRESET_WIDTH)}${PRESETS[p].description}`).join('\n')}
  generate --model DIR (--prompt TEXT | --chat TEXT) [--max-new-tokens N] [--temperature T] [--top-k K]
           [--top-p P] [--seed N] [--stop S]... [--experts auto|resident|FRACTION] [--policy lru|finemoe]
           [--device-gib G] [--json] [--backend auto|cpu|cuda]
                             stream a completion to stdout, then timing (stderr, or one JSON line with --json);
                             --experts auto (default): on CUDA the routed experts that fit in GPU memory (or in
                             --device-gib G) stay there, the rest stream from host memory; on the CPU resident
  generate --model DIR --input IN.jsonl --output OUT.jsonl [--max-batch-tokens N] [--max-sequences N]
           [--micro-batches N] [--kv-gib G] [...]
                             batched: every line of IN ({"prompt"} | {"messages"} | {"turns"} | {"tokens"}, with an
                             optional "id", "max_new_tokens", ...) through continuous batching; results appended to
                             OUT as they finish; ids already in OUT are skipped (resume); Ctrl-C stops cleanly;
                             without --max-sequences the batch is the plan's (from the model's saved profile);
                             --micro-batches splits each step's attention module so CPU attention overlaps the GPU;
                             the KV cache (host memory) holds the batch at the plan's context, within a quarter of
                             the host's memory (at most 16 GiB), unless --kv-gib G

--backend: auto (default: env MOE_OFFLOAD_BACKEND, else CUDA when usable, else the CPU), cpu or cuda
`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'info': {
      const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean' } } });
      const i = info();
      process.stdout.write(values.json ? `${JSON.stringify(i, null, 2)}\n` : `${formatInfo(i)}\n`);
      return 0;
    }
    case 'demo': {
      const { values } = parseArgs({ args: rest, options: { 'max-new-tokens': { type: 'string' }, backend: { type: 'string' } } });
      const n = countOpt(values['max-new-tokens'], 'max-new-tokens');
      await demo({ ...(n !== undefined ? { maxNewTokens: n } : {}), backend: backendOpt(values.backend) });
      return 0;
    }
    case 'profile':
      return profileCmd(rest);
    case 'plan':
      return planCmd(rest);
    case 'make-model':
      return makeModelCmd(rest);
    case 'generate':
      return generateCmd(rest);
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return cmd === undefined ? 1 : 0;
    default:
      process.stderr.write(`moe-offload: unknown command ${JSON.stringify(cmd)}\n\n${USAGE}`);
      return 1;
  }
}

/**
 * --backend auto|cpu|cuda as an opened Backend (default auto: env MOE_OFFLOAD_BACKEND, else CUDA when usable, else
 * the CPU backend).
 */
function backendOpt(v: string | undefined): Backend {
  if (v !== undefined && v !== 'auto' && v !== 'cpu' && v !== 'cuda') throw new InvalidArgumentError(`--backend must be auto, cpu or cuda, received ${JSON.stringify(v)}`);
  return openBackend(v === undefined ? {} : { backend: v });
}

/** A --NAME G option of GiB as bytes (undefined when absent); a typed error unless positive. */
function gibOpt(v: string | undefined, name: string): number | undefined {
  const g = numOpt(v, name);
  if (g === undefined) return undefined;
  if (!(g > 0)) throw new InvalidArgumentError(`--${name} must be a positive number of GiB, received ${JSON.stringify(v)}`);
  return Math.floor(g * 2 ** 30);
}

/** --device-gib G: the device memory loadModel's experts 'auto' plans with (default on CUDA: the GPU's free memory). */
function deviceOpt(v: string | undefined): { deviceMemoryBytes?: number } {
  const b = gibOpt(v, 'device-gib');
  return b === undefined ? {} : { deviceMemoryBytes: b };
}

/** The device memory to plan expert slots in: --device-gib, else the GPU's free memory (none on the CPU backend: resident). */
function deviceBudget(v: string | undefined, be: Backend): number | undefined {
  return gibOpt(v, 'device-gib') ?? be.memoryInfo()?.free;
}

/** "all N" or "S of N" routed experts in device memory. */
const heldExperts = (slots: number, total: number) => `${slots === total ? `all ${total}` : `${slots} of ${total}`} routed experts in device memory`;

const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

function intOpt(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`--${name} must be an integer, received ${JSON.stringify(v)}`);
  return n;
}

/** intOpt for counts that must be at least 1 and at most `max` (the option named in the error, not the API's parameter). */
function countOpt(v: string | undefined, name: string, max = Infinity): number | undefined {
  const n = intOpt(v, name);
  if (n !== undefined && (n < 1 || n > max)) {
    throw new InvalidArgumentError(`--${name} must be an integer ${max === Infinity ? '>= 1' : `in [1, ${max}]`}, received ${JSON.stringify(v)}`);
  }
  return n;
}

function numOpt(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`--${name} must be a number, received ${JSON.stringify(v)}`);
  return n;
}

async function makeModelCmd(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { preset: { type: 'string' }, seed: { type: 'string' }, layers: { type: 'string' } },
    allowPositionals: true,
  });
  if (positionals.length !== 1) throw new InvalidArgumentError(`make-model takes one output directory, received ${positionals.length}`);
  if (values.preset === undefined) throw new InvalidArgumentError(`--preset is required (one of ${PRESET_NAMES.join(', ')})`);
  const layers = intOpt(values.layers, 'layers');
  const seed = intOpt(values.seed, 'seed');
  const t0 = performance.now();
  const m = await makeModel(positionals[0]!, {
    preset: values.preset as keyof typeof PRESETS,
    ...(seed !== undefined ? { seed } : {}),
    ...(layers !== undefined ? { config: { num_hidden_layers: layers } } : {}),
  });
  process.stdout.write(
    `wrote ${values.preset} to ${m.dir}: ${(m.parameters / 1e6).toFixed(1)} M parameters, ${(m.bytes / 2 ** 20).toFixed(1)} MiB in ${m.files.length} files (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`,
  );
  return 0;
}

async function generateCmd(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' },
      prompt: { type: 'string' },
      chat: { type: 'string' },
      'max-new-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      experts: { type: 'string' },
      policy: { type: 'string' },
      json: { type: 'boolean' },
      input: { type: 'string' },
      output: { type: 'string' },
      'max-batch-tokens': { type: 'string' },
      'max-sequences': { type: 'string' },
      'micro-batches': { type: 'string' },
      'device-gib': { type: 'string' },
      'kv-gib': { type: 'string' },
      backend: { type: 'string' },
    },
  });
  if (values.model === undefined) throw new InvalidArgumentError('--model DIR is required');
  if (values.input !== undefined) return batchCmd(values);
  if ((values.prompt === undefined) === (values.chat === undefined)) throw new InvalidArgumentError('give exactly one of --prompt TEXT, --chat TEXT or --input FILE');
  // the options checked before the model loads
  const temperature = numOpt(values.temperature, 'temperature');
  const topK = intOpt(values['top-k'], 'top-k');
  const topP = numOpt(values['top-p'], 'top-p');
  const seed = intOpt(values.seed, 'seed');
  const maxNewTokens = countOpt(values['max-new-tokens'], 'max-new-tokens');
  const experts = expertsOpt(values.experts, values.policy);
  const ac = new AbortController();
  const onSigint = () => ac.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  const model = await loadModel(values.model, { experts, signal: ac.signal, backend: backendOpt(values.backend), ...deviceOpt(values['device-gib']) });
  try {
    const s = model.stream(values.chat !== undefined ? [{ role: 'user', content: values.chat }] : values.prompt!, {
      signal: ac.signal,
      ...(temperature !== undefined ? { temperature } : {}),
      ...(topK !== undefined ? { topK } : {}),
      ...(topP !== undefined ? { topP } : {}),
      ...(seed !== undefined ? { seed } : {}),
      ...(maxNewTokens !== undefined ? { maxNewTokens } : {}),
      ...(values.stop ? { stop: values.stop } : {}),
    });
    for await (const c of s) if (!values.json) process.stdout.write(c.text);
    const r = await s.result;
    if (values.json) {
      process.stdout.write(`${JSON.stringify({ text: r.text, tokens: r.tokens, finishReason: r.finishReason, stats: r.stats })}\n`);
    } else {
      const st = r.stats;
      process.stdout.write('\n');
      process.stderr.write(
        `[${r.finishReason}] ${st.promptTokens} prompt tokens in ${st.prefillMs.toFixed(1)} ms; ${st.generatedTokens} tokens, ${st.msPerToken.toFixed(2)} ms/token ` +
          `(attention ${st.decode.attentionMs.toFixed(1)} ms, experts ${st.decode.expertMs.toFixed(1)} ms, stall ${st.decode.stallMs.toFixed(1)} ms, ` +
          `dense ${st.decode.denseMs.toFixed(1)} ms, host ${st.decode.hostMs.toFixed(1)} ms)` +
          `${st.cache ? `; expert cache ${st.cache.hits} hits / ${st.cache.misses} misses` : ''}\n`,
      );
    }
    return 0;
  } finally {
    process.off('SIGINT', onSigint);
    model.dispose();
  }
}

/** Where `profile` saves (and `plan` and `generate` look for) the model profile of the model in `dir` on a backend of `kind`. */
function defaultProfile(dir: string, kind: 'cpu' | 'cuda'): string {
  return path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'moe-offload', `profile-${path.basename(path.resolve(dir))}${kind === 'cuda' ? '-cuda' : ''}.json`);
}

/** The config.json of the model in `dir`; a missing folder or file, or one that is not JSON: typed errors naming it. */
function modelConfig(dir: string): ReturnType<typeof parseModelConfig> {
  if (!fs.existsSync(dir)) throw new InvalidArgumentError(`--model: the folder ${dir} does not exist`);
  const file = path.join(dir, 'config.json');
  return parseModelConfig(readJson(file, true), file);
}

async function measureProfile(dir: string, file: string, maxBatch: number | undefined, be: Backend): Promise<ModelProfile> {
  const cfg = modelConfig(dir);
  process.stderr.write(`profiling ${cfg.architecture} (${dir}) on this machine's ${be.name} backend${be.kind === 'cuda' ? ' (staged, as loadModel runs it: attention and RoPE on the CPU)' : ''}...\n`);
  const p = await profileModel(be, cfg, { ...(maxBatch !== undefined ? { maxBatch } : {}), onProgress: (m) => process.stderr.write(`  ${m}\n`) });
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${JSON.stringify(p, null, 2)}\n`);
  return p;
}

async function profileCmd(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { model: { type: 'string' }, out: { type: 'string' }, 'max-batch': { type: 'string' }, backend: { type: 'string' } } });
  if (values.model === undefined) throw new InvalidArgumentError('--model DIR is required (the profile measures that model\'s ops at its shapes)');
  const be = backendOpt(values.backend);
  const file = values.out ?? defaultProfile(values.model, be.kind);
  const maxBatch = countOpt(values['max-batch'], 'max-batch', 4096);
  const p = await measureProfile(values.model, file, maxBatch, be);
  const cfg = modelConfig(values.model);
  const plan = stepOps(cfg);
  const experts = plan.ops.find((o) => o.spec.op === 'moeExperts' && o.spec.experts > 1);
  const gbs = (key: string, B: number) => {
    const pt = p.ops[key]!.find((q) => q.batch === B)!;
    return pt.bytes > 0 ? `${(pt.bytes / (pt.ms * 1e6)).toFixed(1)} GB/s` : `${(pt.ms * 1000).toFixed(0)} us`;
  };
  const lm = plan.ops.find((o) => o.term === 'lmHead' && o.spec.op === 'gemm')!;
  process.stdout.write(
    `${p.backend}${p.device ? ` (${p.device})` : ''} on ${p.cpu} (${p.threads} threads), read probe ${p.readGBs.toFixed(1)} GB/s, ops stream at up to ${(100 * p.streamEfficiency).toFixed(0)}% of it\n` +
      (experts ? `  routed experts (${experts.key}): ${p.batches.map((B) => `B ${B}: ${opCost(p, experts.key, B).ms.toFixed(2)} ms`).join(', ')}\n` : '') +
      `  LM head (${lm.key}): ${gbs(lm.key, 1)} at 1 row\n` +
      `  per op ${(p.opMs * 1000).toFixed(0)} us, per awaited group ${(p.groupMs * 1000).toFixed(0)} us${p.hostGroupMs !== undefined ? ` (host backend ${(p.hostGroupMs * 1000).toFixed(0)} us)` : ''}, runtime ${(p.runtime.layerMs * 1000).toFixed(0)} us per layer + ${(p.runtime.stepMs * 1000).toFixed(0)} us per step\n` +
      (p.deviceGBs ? `  GPU memory reads ${p.deviceGBs.toFixed(0)} GB/s\n` : '') +
      (p.copyGBs ? `  offloaded experts: copies at ${p.copyGBs.toFixed(1)} GB/s${p.hostExpertGBs ? `, computed on the host at ${p.hostExpertGBs.toFixed(1)} GB/s` : ''}\n` : '') +
      (p.attentionTiers
        ? `  attention tier: ${p.attentionIsa ?? 'avx512bf16'} (trial, ms per call: ${Object.entries(p.attentionTiers).map(([t, x]) => `${t} decode ${x.decodeMs.toFixed(3)} prefill ${x.prefillMs.toFixed(3)}`).join('; ')})\n`
        : '') +
      `measured in ${p.seconds.toFixed(1)} s; saved ${file}\n`,
  );
  return 0;
}

/** The saved profile in `file` when it is a version-2 profile with every op of `cfg` (else undefined, and why). */
function savedProfile(file: string, cfg: ReturnType<typeof parseModelConfig>): { profile?: ModelProfile; why?: string } {
  if (!fs.existsSync(file)) return { why: `no profile at ${file}` };
  const p = JSON.parse(fs.readFileSync(file, 'utf8')) as ModelProfile;
  const missing = p.version === 2 ? stepOps(cfg).ops.find((o) => !p.ops[o.key]) : { key: 'a version-2 profile' };
  return missing ? { why: `${file} lacks ${missing.key} (measured for another model)` } : { profile: p };
}

async function planCmd(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' },
      context: { type: 'string' },
      workload: { type: 'string' },
      'kv-gib': { type: 'string' },
      profile: { type: 'string' },
      experts: { type: 'string' },
      'device-gib': { type: 'string' },
      backend: { type: 'string' },
    },
  });
  if (values.model === undefined) throw new InvalidArgumentError('--model DIR is required');
  const cfg = modelConfig(values.model);
  // --workload FILE: a request trace's lengths; its decode context unless --context
  const trace = values.workload !== undefined ? readWorkload(values.workload) : undefined;
  const workload = trace ? workloadShape(trace) : undefined;
  // --experts FRACTION: routed experts offloaded, that fraction of them in slots (loadModel's experts.fraction)
  const fraction = numOpt(values.experts, 'experts');
  if (fraction !== undefined && !(fraction > 0 && fraction <= 1)) throw new InvalidArgumentError(`--experts must be a fraction in (0, 1], received ${values.experts}`);
  const totalExperts = cfg.moeLayers.length * cfg.numExperts;
  const expertSlots = fraction === undefined ? undefined : Math.ceil(fraction * totalExperts);
  const be = backendOpt(values.backend);
  // without --experts: on CUDA (or with --device-gib) the slots that fit beside each batch's step, chosen with it
  const deviceBytes = fraction === undefined ? deviceBudget(values['device-gib'], be) : undefined;
  const own = defaultProfile(values.model, be.kind);
  const file = values.profile ?? own;
  let saved = savedProfile(file, cfg);
  // offloaded experts need the copy rate (profiles saved before it was measured lack it)
  if (saved.profile && (expertSlots !== undefined || deviceBytes !== undefined) && !(saved.profile.copyGBs! > 0)) saved = { why: `${file} lacks the expert copy rate` };
  if (!saved.profile) process.stderr.write(`${saved.why}: measuring this model's profile now into ${own} (moe-offload profile saves it)\n`);
  const p = saved.profile ?? (await measureProfile(values.model, own, undefined, be));
  const context = intOpt(values.context, 'context') ?? (workload ? Math.max(1, Math.round(workload.decodeContext)) : 512);
  const kvBytes = gibOpt(values['kv-gib'], 'kv-gib') ?? hostKvLimit(cfg, { totalBytes: p.hostMemoryBytes, freeBytes: os.freemem() });
  const kvGiB = kvBytes / 2 ** 30;
  const kvTokens = kvTokensFor(cfg, kvBytes);
  // predictions at the profile's own speeds: rescaling them to a read probe taken now did not help on the development
  // VM (bench/results/perf-model-cpu-2026-11-26-ab-summary.json); the probe is printed next to the profile's
  const probeNow = readProbeGBs(64 * 2 ** 20);
  if ((p.kind ?? 'cpu') !== be.kind) {
    process.stderr.write(`note: ${file} was measured on a ${p.kind ?? 'cpu'} backend; the runtime here computes on ${be.name}, which these predictions do not describe (moe-offload profile --backend ${be.kind})\n`);
  }
  process.stdout.write(
    `${cfg.architecture}, ${cfg.numLayers} layers, ${cfg.numExperts} experts top-${cfg.topK}; ${p.backend}${p.device ? ` (${p.device})` : ''}; context ${context}; KV ${kvGiB.toFixed(1)} GiB = ${kvTokens} tokens; ` +
      `read bandwidth now ${probeNow.toFixed(1)} GB/s (profile: ${p.readGBs.toFixed(1)})` +
      (expertSlots !== undefined
        ? `; routed experts offloaded, ${expertSlots} in slots (copies at ${p.copyGBs?.toFixed(1) ?? '?'} GB/s)`
        : deviceBytes !== undefined
          ? `; device memory ${gib(deviceBytes)}: dense weights ${gib(denseWeightBytes(cfg))}, routed experts ${gib(totalExperts * expertBytes(cfg))} (copies at ${p.copyGBs?.toFixed(1) ?? '?'} GB/s)`
          : '; experts resident') +
      '\n',
  );
  const best = chooseBatch(cfg, p, context, kvTokens, {}, deviceBytes !== undefined ? { deviceBytes } : expertSlots);
  for (const { batch: b, microBatches: mb, expertSlots: slots, prediction: d } of best.candidates) {
    const copies = d.copies ? `, ${d.copies.experts.toFixed(1)} experts ${d.copies.onHost ? 'computed on the host' : 'copied'}${d.copies.moduleMode ? ' (module mode)' : d.copies.streamed ? ' (streamed ahead)' : ''}` : '';
    const groups = mb > 1 ? `, ${mb} attention micro-batches (${(-d.terms.overlapMs).toFixed(2)} ms overlapped)` : '';
    const held = deviceBytes !== undefined && slots !== undefined ? `, ${slots} experts in device memory` : '';
    process.stdout.write(`  batch ${String(b).padStart(4)}: ${d.tokensPerSecond.toFixed(1).padStart(9)} tokens/s, step ${d.stepMs.toFixed(2)} ms${held}${copies}${groups}, bound: ${d.bound}\n`);
  }
  const why =
    best.limit === 'kv-capacity'
      ? `; binding: KV capacity (throughput still grows, but ${kvTokens} KV tokens hold ${Math.floor(kvTokens / context)} sequences of ${context})`
      : best.limit === 'profiled batches'
        ? `; the profile measured no larger batch (moe-offload profile --max-batch N)`
        : '';
  process.stdout.write(`choice: batch ${best.batch}${best.microBatches > 1 ? `, ${best.microBatches} micro-batches` : ''} (${best.prediction.tokensPerSecond.toFixed(1)} tokens/s predicted; ${best.prediction.bound}${why})\n`);
  if (deviceBytes !== undefined && best.expertSlots !== undefined) {
    process.stdout.write(
      `experts: ${heldExperts(best.expertSlots, totalExperts)} (${gib(best.expertSlots * expertBytes(cfg))}), ` +
        `beside the dense weights and a step of ${Math.max(best.batch, 512)} tokens (${gib(stepDeviceBytes(cfg, { tokens: Math.max(best.batch, 512) }))})` +
        `${best.expertSlots < totalExperts ? '; the rest stream from host memory' : ''}\n`,
    );
  }
  if (p.prefillTokens?.length) {
    // prefill of prompts as long as the context, in steps of generateBatch's default 512 tokens
    const f = predictPrefill(cfg, p, { prompt: context, chunk: 512 });
    process.stdout.write(`prefill: prompts of ${context} tokens in steps of 512: ${f.tokensPerSecond.toFixed(1)} tokens/s predicted (${f.steps.length} step(s) of ${f.stepMs.toFixed(1)} ms; ${f.bound})\n`);
  } else {
    process.stdout.write(`prefill: not predicted (the saved profile has no prefill points; moe-offload profile measures them)\n`);
  }
  if (workload) {
    const slots = best.expertSlots ?? expertSlots;
    const e2e = workloadThroughput(cfg, p, trace!, best.batch, { ...(slots !== undefined ? { expertSlots: slots } : {}), microBatches: best.microBatches });
    process.stdout.write(
      `workload: ${workload.requests} requests, prompts ${workload.meanPrompt.toFixed(0)} tokens and outputs ${workload.meanOutput.toFixed(0)} on average, decode context ${workload.decodeContext.toFixed(0)}` +
        (e2e.tokensPerSecond !== undefined ? `; ${e2e.tokensPerSecond.toFixed(1)} generated tokens/s end to end predicted (prefill ${e2e.prefillTokensPerSecond!.toFixed(1)} prompt tokens/s)` : '') +
        '\n',
    );
  }
  return 0;
}

async function batchCmd(values: Record<string, string | boolean | string[] | undefined>): Promise<number> {
  const str = (k: string) => values[k] as string | undefined;
  if (str('output') === undefined) throw new InvalidArgumentError('--output FILE is required with --input');
  if (!fs.existsSync(str('input')!)) throw new InvalidArgumentError(`--input: ${str('input')} does not exist`);
  const experts = expertsOpt(str('experts'), str('policy'));
  const ac = new AbortController();
  let interrupted = false;
  const onSigint = () => {
    interrupted = true;
    process.stderr.write('\nmoe-offload: interrupted; finishing the results already written (run again to resume)\n');
    ac.abort(new Error('interrupted'));
  };
  process.once('SIGINT', onSigint);
  const num = (k: string, f: (v: string | undefined, n: string) => number | undefined) => f(str(k), k);
  const maxBatchTokens = num('max-batch-tokens', countOpt);
  const maxNewTokens = num('max-new-tokens', countOpt);
  const kvCacheBytes = gibOpt(str('kv-gib'), 'kv-gib');
  const microBatches = num('micro-batches', countOpt);
  const be = backendOpt(str('backend'));
  const cfg = modelConfig(str('model')!);
  const maxSequences = num('max-sequences', countOpt);
  // the plan, before loading: the batch the performance model predicts fastest within the KV cache and the expert
  // slots that fit beside its step (from this model's saved profile), the KV cache sized for it
  const saved = maxSequences === undefined ? savedProfile(defaultProfile(str('model')!, be.kind), cfg) : {};
  // the plan's decode context: the input's requests still to run (prompts tokenized, outputs at their limits)
  let workload: Workload | undefined;
  if (saved.profile) {
    const tokenizer = await ModelTokenizer.load(str('model')!);
    const w = inputWorkload(str('input')!, tokenizer, cfg.vocabSize, maxNewTokens !== undefined ? { maxNewTokens } : {}, completedIds(str('output')!));
    if (w.prompts.length > 0) workload = w;
  }
  const plan = planRun(cfg, {
    backend: be,
    experts,
    ...(workload ? { workload } : { context: 256 + (maxNewTokens ?? 128) }),
    ...(saved.profile ? { profile: saved.profile } : {}),
    ...deviceOpt(str('device-gib')),
    ...(kvCacheBytes !== undefined ? { kvCacheBytes } : {}),
    ...(maxBatchTokens !== undefined ? { maxBatchTokens } : {}),
    ...(maxSequences !== undefined ? { maxSequences } : {}),
    ...(microBatches !== undefined ? { microBatches } : {}),
  });
  const total = cfg.moeLayers.length * cfg.numExperts;
  const b = plan.batch;
  const planLine = plan.prediction
    ? `plan: ${b.maxSequences} sequences at once${b.microBatches! > 1 ? ` in ${b.microBatches} attention micro-batches` : ''} (${plan.prediction.tokensPerSecond.toFixed(1)} decode tokens/s predicted at context ${plan.context}${plan.workload ? `, the mean KV length of the input's ${plan.workload.requests} requests` : ''}; ${plan.prediction.bound})` +
      (plan.expertSlots !== undefined ? `; ${heldExperts(plan.expertSlots, total)}` : '') +
      (plan.load.attentionIsa ? `; attention on the ${plan.load.attentionIsa} tier (the profile's trial)` : '')
    : maxSequences !== undefined
      ? `plan: ${maxSequences} sequences at once (--max-sequences)`
      : `plan: ${saved.why}; 64 sequences at once (moe-offload profile --model DIR measures this model, then generate plans its batch)`;
  const model = await loadModel(str('model')!, { ...plan.load, signal: ac.signal });
  process.stderr.write(
    `${planLine}${plan.expertSlots === undefined && model.expertCache ? `; ${model.expertCache.capacity} routed experts in slots` : ''}; KV cache ${gib(plan.load.kvCacheBytes!)} = ${model.kvTokensFree} tokens\n`,
  );
  const tty = process.stderr.isTTY;
  let lastLine = 0;
  try {
    const defaults = {
      ...(maxNewTokens !== undefined ? { maxNewTokens } : {}),
      ...(num('temperature', numOpt) !== undefined ? { temperature: num('temperature', numOpt)! } : {}),
      ...(num('top-k', intOpt) !== undefined ? { topK: num('top-k', intOpt)! } : {}),
      ...(num('top-p', numOpt) !== undefined ? { topP: num('top-p', numOpt)! } : {}),
      ...(num('seed', intOpt) !== undefined ? { seed: num('seed', intOpt)! } : {}),
    };
    const s = await generateJsonl(model, str('input')!, str('output')!, {
      defaults,
      signal: ac.signal,
      ...plan.batch,
      onError: (line, e) => {
        const code = (e as Error & { code?: string }).code;
        const msg = e.message.startsWith(`line ${line}:`) ? e.message : `line ${line}: ${e.message}`;
        process.stderr.write(`${tty ? '\n' : ''}${code ? `[${code}] ` : ''}${msg}\n`);
      },
      onProgress: (p) => {
        const now = performance.now();
        if (!tty && now - lastLine < 10_000) return;
        lastLine = now;
        const msg = progressLine(p);
        process.stderr.write(tty ? `\r${msg}\x1b[K` : `${msg}\n`);
      },
    });
    process.stderr.write(
      `${tty ? '\n' : ''}${interrupted ? 'interrupted: ' : ''}${s.done} requests written to ${str('output')}, ${s.failed} failed, ${s.skipped} already there; ${s.tokens} tokens in ${(s.elapsedMs / 1000).toFixed(1)} s (${s.tokensPerSecond.toFixed(1)} tokens/s)\n`,
    );
    return interrupted ? 130 : s.failed > 0 ? 2 : 0;
  } finally {
    process.off('SIGINT', onSigint);
    model.dispose();
  }
}

/** --experts and --policy as loadModel's experts (auto with a --policy: the auto slot count with that policy). */
function expertsOpt(experts: string | undefined, policy: string | undefined): 'auto' | 'resident' | { fraction: number; policy: 'lru' | 'finemoe' } | { slots: 'auto'; policy: 'lru' | 'finemoe' } {
  const p = policy ?? 'lru';
  if (p !== 'lru' && p !== 'finemoe') throw new InvalidArgumentError(`--policy must be lru or finemoe, received ${JSON.stringify(p)}`);
  if (experts === undefined || experts === 'auto') return policy === undefined ? 'auto' : { slots: 'auto', policy: p };
  if (experts === 'resident') return 'resident';
  const f = numOpt(experts, 'experts')!;
  return { fraction: f, policy: p };
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const err = e as Error & { code?: string };
    process.stderr.write(`moe-offload: ${err.code ? `[${err.code}] ` : ''}${err.message}\n`);
    if (err.code === 'MOE_OUT_OF_MEMORY') {
      process.stderr.write('  (the model does not fit: --experts FRACTION keeps that fraction of the routed experts in device memory and the rest in host memory; --backend cpu runs on the CPU)\n');
    }
    process.exitCode = 1;
  },
);
