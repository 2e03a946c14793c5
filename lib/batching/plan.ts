/**
 * planRun: everything a throughput run decides before its model is loaded, from the model's config and (when there
 * is one) its saved profile (lib/batching/profile.ts). The batch and attention micro-batches the performance model
 * predicts fastest (chooseBatch); the routed experts kept in device memory beside that batch's step
 * (memory.ts expertSlotsFor, experts 'auto'); a KV cache in host memory sized for the batch (memory.ts
 * hostKvLimit); the attention's CPU tier when the profile chose one below the best (ModelProfile.attentionIsa). Returns loadModel's options and generateBatch's, so the API runs what `moe-offload generate --input`
 * runs.
 *
 * @example
 * const cfg = parseModelConfig(JSON.parse(fs.readFileSync(`${dir}/config.json`, 'utf8')));
 * const plan = planRun(cfg, { backend: openBackend(), profile, maxNewTokens: 128 });
 * using model = await loadModel(dir, plan.load);
 * for await (const r of model.generateBatch(requests, plan.batch)) console.log(r.text);
 */
import os from 'node:os';

import type { Backend } from '../backend.js';
import { describe } from '../dtype.js';
import type { BatchOptions } from '../engine/batch.js';
import { type ExpertMode, type LoadModelOptions, autoExpertSlots } from '../engine/model.js';
import { InvalidArgumentError } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import { hostKvLimit, kvBytesFor, kvTokensFor } from './memory.js';
import { type DecodePrediction, type ModelProfile, chooseBatch, predictDecode, predictPrefill } from './perf-model.js';
import { type Workload, type WorkloadShape, workloadShape } from './workload.js';

export interface RunPlanOptions {
  /** The backend the run computes on (its kind sets what 'auto' means; CUDA: its free memory). */
  backend: Backend;
  /** The model's profile on this backend (moe-offload profile); without one the batch is `maxSequences` or 64. */
  profile?: ModelProfile;
  /** Routed expert placement (loadModel's; default 'auto'). */
  experts?: ExpertMode;
  /** Device memory for experts 'auto' (default on CUDA: the GPU's free memory now). */
  deviceMemoryBytes?: number;
  /** The KV cache's host bytes (default: the batch at `context`, at least 256 MiB, within hostKvLimit). */
  kvCacheBytes?: number;
  /**
   * The KV length the plan assumes per sequence (default: the workload's decodeContext, else 384: prompts of 256
   * tokens and 128 new ones).
   */
  context?: number;
  /** The workload's prompt and output lengths (workload.ts readWorkload): its decode context, and the end-to-end prediction. */
  workload?: Workload;
  /** Tokens per step (generateBatch's maxBatchTokens; default 512). */
  maxBatchTokens?: number;
  /** Sequences at once: given, no batch is planned. */
  maxSequences?: number;
  /** Attention micro-batches: given, the plan tries only this count. */
  microBatches?: number;
}

export interface RunPlan {
  /** loadModel's options: the backend, experts (the planned slots under 'auto'), the KV cache, the largest step, the attention's tier (the profile's). */
  load: Pick<LoadModelOptions, 'backend' | 'experts' | 'kvCacheBytes' | 'deviceMemoryBytes' | 'maxStepTokens' | 'attentionIsa'>;
  /** generateBatch's options. */
  batch: Pick<BatchOptions, 'maxSequences' | 'microBatches' | 'maxBatchTokens'>;
  /** The KV length planned for. */
  context: number;
  /** Routed experts in device memory the plan chose (experts 'auto' with a device budget and a profile). */
  expertSlots?: number;
  /** The performance model's prediction at the chosen batch (with a profile and no maxSequences). */
  prediction?: DecodePrediction;
  /** Why no batch was planned (no profile, or maxSequences given). */
  why?: string;
  /**
   * The workload's shape, and with a profile that has prefill points its generated tokens per second end to end
   * (workloadThroughput at the chosen batch).
   */
  workload?: WorkloadShape & { tokensPerSecond?: number; prefillTokensPerSecond?: number; decodeSeconds?: number; prefillSeconds?: number };
}

/**
 * A workload's generated tokens per second end to end on profile `p`, run `batch` sequences at a time (continuous
 * batching, requests admitted in order as others finish):
 *   prefill: every prompt at the predicted prefill rate (prompts of the mean length, steps of `chunk` tokens);
 *   decode: step by step, each step predicted at the sequences still running and their mean KV length (so the batch
 *     draining at the end of a finite workload costs what it does: fewer sequences per step).
 * Prefill and decode are taken not to overlap (the runtime shares steps between them, so this errs low). Nothing
 * without the profile's prefill points.
 */
export function workloadThroughput(
  cfg: ModelConfig,
  p: ModelProfile,
  w: Workload,
  batch: number,
  o: { chunk?: number; expertSlots?: number; microBatches?: number } = {},
): { tokensPerSecond?: number; prefillTokensPerSecond?: number; decodeSeconds?: number; prefillSeconds?: number } {
  if (!p.prefillTokens?.length) return {};
  const shape = workloadShape(w);
  posInt(batch, 'batch');
  const slots = o.expertSlots !== undefined ? { expertSlots: o.expertSlots } : {};
  const prefill = predictPrefill(cfg, p, { prompt: Math.max(1, Math.round(shape.meanPrompt)), chunk: o.chunk ?? 512, ...slots });
  // decode steps: memoised by (sequences, KV length rounded to 16)
  const memo = new Map<number, number>();
  const stepMs = (b: number, kv: number): number => {
    const ctx = Math.max(16, Math.round(kv / 16) * 16);
    const key = b * 1e9 + ctx;
    let ms = memo.get(key);
    if (ms === undefined) {
      const m = Math.min(o.microBatches ?? 1, b);
      ms = predictDecode(cfg, p, { batch: b, context: ctx, ...(m > 1 ? { microBatches: m } : {}), ...slots }).stepMs;
      memo.set(key, ms);
    }
    return ms;
  };
  let decodeMs = 0;
  let next = 0;
  let active: Array<{ kv: number; left: number }> = [];
  while (next < shape.requests || active.length > 0) {
    while (active.length < batch && next < shape.requests) {
      active.push({ kv: w.prompts[next]!, left: w.outputs[next]! });
      next++;
    }
    const kv = active.reduce((a, x) => a + x.kv, 0) / active.length + 1;
    decodeMs += stepMs(active.length, kv);
    for (const x of active) {
      x.kv++;
      x.left--;
    }
    active = active.filter((x) => x.left > 0);
  }
  const prefillSeconds = (shape.meanPrompt * shape.requests) / prefill.tokensPerSecond;
  const decodeSeconds = decodeMs / 1000;
  return { prefillTokensPerSecond: prefill.tokensPerSecond, prefillSeconds, decodeSeconds, tokensPerSecond: (shape.meanOutput * shape.requests) / (prefillSeconds + decodeSeconds) };
}

const posInt = (v: number | undefined, name: string): void => {
  if (v !== undefined && (!Number.isSafeInteger(v) || v < 1)) throw new InvalidArgumentError(`${name} must be a positive integer, received ${describe(v)}`);
};

/**
 * The run's plan; see the file header. Without a profile (or with `maxSequences`) only the memory is planned: the
 * batch is maxSequences (default 64) and 'auto' leaves room for its step.
 */
export function planRun(cfg: ModelConfig, o: RunPlanOptions): RunPlan {
  if (typeof o !== 'object' || o === null) throw new InvalidArgumentError(`options must be an object, received ${describe(o)}`);
  posInt(o.maxBatchTokens, 'maxBatchTokens');
  posInt(o.maxSequences, 'maxSequences');
  posInt(o.microBatches, 'microBatches');
  posInt(o.context, 'context');
  for (const k of ['deviceMemoryBytes', 'kvCacheBytes'] as const) {
    const v = o[k];
    if (v !== undefined && !(typeof v === 'number' && v > 0 && Number.isFinite(v))) throw new InvalidArgumentError(`${k} must be a positive number of bytes, received ${describe(v)}`);
  }
  const experts = o.experts ?? 'auto';
  const auto = autoExpertSlots(experts);
  const deviceBytes = auto ? (o.deviceMemoryBytes ?? o.backend.memoryInfo()?.free) : undefined;
  const kvLimit = o.kvCacheBytes ?? hostKvLimit(cfg, { totalBytes: os.totalmem(), freeBytes: os.freemem() });
  const shape = o.workload !== undefined ? workloadShape(o.workload) : undefined;
  const context = o.context ?? (shape ? Math.max(1, Math.round(shape.decodeContext)) : 384);
  const stepTokens = o.maxBatchTokens ?? 512;
  let maxSequences = o.maxSequences;
  let microBatches = o.microBatches;
  let expertSlots: number | undefined;
  let slotsPriced: number | undefined; // the slots the prediction priced copies for (planned or the fraction's)
  let prediction: DecodePrediction | undefined;
  let why: string | undefined;
  const p = o.profile;
  if (maxSequences !== undefined) why = 'maxSequences given';
  else if (!p) why = 'no profile';
  else {
    const total = cfg.moeLayers.length * cfg.numExperts;
    // a profile without the copy rate plans offloaded experts resident (and the memory without copies)
    const copies = p.copyGBs! > 0;
    const slotPlan = auto
      ? deviceBytes !== undefined && copies
        ? { deviceBytes, stepTokens }
        : undefined
      : typeof experts === 'object' && experts !== null && experts.fraction !== undefined && copies
        ? Math.min(total, Math.ceil(experts.fraction * total))
        : undefined;
    const best = chooseBatch(cfg, p, context, kvTokensFor(cfg, kvLimit), {}, slotPlan, microBatches !== undefined ? [microBatches] : undefined);
    maxSequences = best.batch;
    microBatches ??= best.microBatches;
    expertSlots = typeof slotPlan === 'object' ? best.expertSlots : undefined;
    slotsPriced = typeof slotPlan === 'object' ? best.expertSlots : slotPlan;
    prediction = best.prediction;
  }
  const sequences = maxSequences ?? 64;
  // sized for the batch's sequences at the plan's context; longer ones wait for room
  const kvCacheBytes = o.kvCacheBytes ?? Math.min(kvLimit, Math.max(256 * 2 ** 20, kvBytesFor(cfg, sequences * context)));
  const workload =
    shape && p && prediction
      ? { ...shape, ...workloadThroughput(cfg, p, o.workload!, sequences, { chunk: stepTokens, ...(slotsPriced !== undefined ? { expertSlots: slotsPriced } : {}), ...(microBatches !== undefined ? { microBatches } : {}) }) }
      : shape;
  const planned: ExpertMode | undefined =
    expertSlots === undefined ? undefined : typeof experts === 'object' && experts !== null ? { ...experts, slots: expertSlots } : { slots: expertSlots, policy: 'lru' };
  return {
    load: {
      backend: o.backend,
      experts: planned ?? experts,
      kvCacheBytes,
      // experts auto without a plan: the slots that fit beside the largest step the batch runner takes
      ...(deviceBytes !== undefined ? { deviceMemoryBytes: deviceBytes } : {}),
      maxStepTokens: Math.max(stepTokens, sequences),
      // the attention's tier the profile chose (and measured its points on)
      ...(p?.attentionIsa ? { attentionIsa: p.attentionIsa } : {}),
    },
    batch: { maxSequences: sequences, ...(microBatches !== undefined ? { microBatches } : {}), ...(o.maxBatchTokens !== undefined ? { maxBatchTokens: o.maxBatchTokens } : {}) },
    context,
    ...(expertSlots !== undefined ? { expertSlots } : {}),
    ...(prediction ? { prediction } : {}),
    ...(why ? { why } : {}),
    ...(workload ? { workload } : {}),
  };
}
