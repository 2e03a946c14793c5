/**
 * MoE-Lens-style performance model of a decode step (v2): the step is composed analytically from the ops
 * lib/engine/forward.ts issues for the model, each costed by interpolating a model profile (profile.ts
 * `profileModel`) that measured exactly that op at the model's own shapes on this machine.
 *
 *   step(B, L) =  Σ over the step's ops  calls × cost(op, B [, L])     interpolated over the measured batches
 *               + awaited groups × groupMs                               (each group is one round trip to JS)
 *               + host work: KV writes, OLMoE clipping, MLA assembly, the few tensors still allocated fresh
 *                 (ids and positions per step, MLA's assembled q, k, v per layer: the rest is the step arena's),
 *                 sampling B × vocab
 *               + the runtime's fixed costs per step, per layer and per sequence (residual of real decode steps
 *                 of generated copies of the family's tiny preset with n and n + 8 layers, and at batch 1 and 16)
 * with B sequences decoding one token each (T = B rows) at context L, experts resident. The routed-expert op is
 * measured as the call a decode step makes: B × k routed rows over U(B) = E (1 - (1 - k/E)^B) distinct experts
 * (independent uniform routing), read from cache-cold memory like the model's.
 *
 * Memory bandwidth: every measured point keeps the read-probe bandwidth taken around it. Its time splits into a
 * memory part — its bytes at the best streaming efficiency the profile saw (`streamEfficiency` × probe), capped
 * at the time — and the rest (compute, dispatch, JS). A prediction under `Conditions` (the probe now) rescales
 * the memory part by the bandwidth (up to the fastest streaming the ops reached: the probe, a pure read, goes
 * faster than kernels that compute as they stream), so points measured at different moments of a VM whose
 * bandwidth drifts 15-44 GB/s predict consistently. Optional: over eleven bench runs on the development VM
 * (2026-11-26) the rescaled predictions were no better than the profile's own (9.3% against 8.3% mean error; the
 * probe read 26-55 GB/s while the kernels streamed 42-49), so `plan` and the demo predict without Conditions.
 * Decode throughput = B / step time.
 * Staged profiles (a GPU; profile.ts) compose the staged step the same way, sequentially, from its ops as stepOps
 * lists them with `staged` (the copies between the backends, RoPE and attention on the host backend, greedy sampling
 * as an argmax on the compute backend). Offloaded experts in module mode on CUDA: the copy engine streams the next
 * layer's experts while this one computes, so the copies add only where they exceed the rest of the step.
 *
 * @example
 * const p = await profileModel(be, model.config, { maxBatch: 64 });
 * const pred = predictDecode(model.config, p, { batch: 32, context: 512 });
 * console.log(pred.tokensPerSecond, pred.bound, pred.terms);
 */
import type { CpuIsa } from '../backend.js';
import { describe } from '../dtype.js';
import { InvalidArgumentError, OutOfMemoryError } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import { attentionHeadDim } from '../model/weights.js';
import { LOGIT_ROWS, queuesLayers, rescalesRouting } from '../engine/forward.js';
import { expertSlotsFor } from './memory.js';

/** An op of the step as the profile measures it; `rows` are per token (T = B at decode). */
export type OpSpec =
  /** out [rows, n] f32 = a [rows, k] · w [n, k]ᵀ, a and w of `dtype` (rows = tokens or sequences: B at decode) */
  | { op: 'gemm'; n: number; k: number; dtype: 'bf16' | 'f32' }
  /** x f32 [T * rowsPerToken, d] (+= add) -> out */
  | { op: 'rmsNorm'; rowsPerToken: number; d: number; out: 'bf16' | 'f32'; add: 'bf16' | 'f32' | null }
  /** a [T, n] += b ([n] bias, or [T, n]) */
  | { op: 'add'; n: number; dtype: 'bf16' | 'f32'; bias: boolean }
  | { op: 'convert'; n: number; from: 'bf16' | 'f32'; to: 'bf16' | 'f32' }
  /** q [T, qHeads, headDim], k [T, kHeads, headDim] f32, rotary dims from the model's rope parameters */
  | { op: 'rope'; qHeads: number; kHeads: number; headDim: number }
  | { op: 'routerTopK'; e: number; k: number; scoring: 'softmax' | 'sigmoid' }
  /** dst [T, n] bf16 = src [srcRows, n] rows (srcRows 0: the step's own T rows) */
  | { op: 'gatherRows'; srcRows: number; n: number }
  /** decode attention of T sequences over their KV cache (q f32, out bf16); `threads`: on that many of the CPU
   * pool's threads (absent: all; ModelProfile.attentionThreads) */
  | { op: 'attention'; qHeads: number; kvHeads: number; headDim: number; threads?: number }
  /** prefill attention: a step's new tokens attend causally to their sequences' keys (q f32, out bf16); its points'
   * `batch` counts query-key pairs (per head: sum over the new tokens of the keys each attends to) */
  | { op: 'attentionPrefill'; qHeads: number; kvHeads: number; headDim: number; threads?: number }
  /** fused SwiGLU experts: routed (table of E, k per token) or a one-expert MLP (shared expert, dense layer) */
  | { op: 'moeExperts'; experts: number; k: number; hidden: number; inter: number }
  /** staged: a copy of T rows of `rowBytes` between the compute backend's memory and pinned host memory ('down':
   * device to host, 'up': host to device) */
  | { op: 'transfer'; dir: 'down' | 'up'; rowBytes: number }
  /** staged greedy sampling on the compute backend: the index of each row's maximum of n f32 logits */
  | { op: 'argmaxRows'; n: number }
  /** host: KvCache.write of one token's k and v for each of T sequences */
  | { op: 'kvWrite'; kvHeads: number; headDim: number }
  /** host: clamp of T × n f32 (OLMoE clip_qkv) */
  | { op: 'clamp'; n: number }
  /** host: MLA's per-head assembly of q, k, v (T × heads rows of `parts` spans) and, when narrower, v's prefix */
  | { op: 'mlaAssemble'; heads: number; nope: number; rope: number; v: number; headDim: number }
  /** host: the tensors forward.ts allocates fresh (per step or per layer), bytes per row (T = B rows) of each; an op
   * writes them first, so each costs its allocation and its first touch */
  | { op: 'alloc'; rowBytes: number[] };

/** Where an op's time is reported. */
export type TermName = 'attentionProj' | 'attention' | 'router' | 'experts' | 'shared' | 'lmHead' | 'host';

/** One distinct op of the step: `calls` per step (layers summed), and the sliding window of attention calls. */
export interface PlannedOp {
  key: string;
  spec: OpSpec;
  calls: number;
  term: TermName;
  /** Backend op (what opsPerStep counts) or host work between groups. */
  backend: boolean;
  /** Attention: the window of these calls (null: full context). */
  window?: number | null;
  /** Runs on one row per sequence of the step (the LM head, its row gather, the logits), not one per token. */
  perSequence?: boolean;
  /** Staged: a backend op of the host (CPU) backend, not the compute backend (RoPE; attention always is). */
  host?: boolean;
  /**
   * Part of a layer's attention module, which runs once per micro-batch (forward.ts stepGroups) on its rows: 'pre'
   * the q/k/v projections (and their copies down), 'host' RoPE, the KV writes and attention, 'post' the attention
   * output's copy up and the output projection.
   */
  module?: 'pre' | 'host' | 'post';
  /** Staged LM head: runs on at most this many rows at a time (forward.ts LOGIT_ROWS), chunk after chunk. */
  chunkRows?: number;
}

export interface StepPlan {
  ops: PlannedOp[];
  /**
   * Awaited op groups per step (round trips to JS) of a step that is not queued (micro-batches, clip, MLA): on the
   * compute backend (not staged: every group).
   */
  groups: number;
  /** Staged: awaited ops of the host backend per step (attention, RoPE); 0 when not staged (counted in groups). */
  hostGroups: number;
  /** Of groups and hostGroups, those of the attention modules (per step, all layers): each micro-batch has its own. */
  moduleGroups: { pre: number; host: number; post: number };
  /**
   * With one micro-batch forward.ts queues each layer (no clip, no MLA: queuesLayers): the attention module rides on
   * its router's round trip, and `queuedTrips` replaces groups, hostGroups and the module's trips.
   */
  queued: boolean;
  /**
   * Round trips per step of a queued step: the embedding's, per MoE layer the router's (and the upload of router
   * weights rescaled on the host; the experts are submitted behind it), per dense MLP layer two, the LM head's; with
   * resident experts (and the router's weights not rescaled on the host) one: the whole step is queued.
   */
  queuedTrips: number;
  /** Backend ops per layer (layer order) and outside the layers. */
  perLayer: number[];
  perStep: number;
}

/** The profile key of an op: everything that determines its cost at a given T. */
export function opKey(s: OpSpec): string {
  switch (s.op) {
    case 'gemm':
      return `gemm ${s.n}x${s.k} ${s.dtype}`;
    case 'rmsNorm':
      return `rmsNorm ${s.rowsPerToken}x${s.d} f32>${s.out}${s.add ? ` +${s.add}` : ''}`;
    case 'add':
      return `add ${s.n} ${s.dtype}${s.bias ? ' bias' : ''}`;
    case 'convert':
      return `convert ${s.n} ${s.from}>${s.to}`;
    case 'rope':
      return `rope ${s.qHeads}+${s.kHeads}x${s.headDim}`;
    case 'routerTopK':
      return `routerTopK ${s.e} k${s.k} ${s.scoring}`;
    case 'gatherRows':
      return `gatherRows ${s.srcRows}x${s.n}`;
    case 'attention':
      return `attention ${s.qHeads}/${s.kvHeads}x${s.headDim}${s.threads ? ` t${s.threads}` : ''}`;
    case 'attentionPrefill':
      return `attentionPrefill ${s.qHeads}/${s.kvHeads}x${s.headDim}${s.threads ? ` t${s.threads}` : ''}`;
    case 'moeExperts':
      return `moeExperts ${s.experts}x${s.hidden}x${s.inter} k${s.k}`;
    case 'transfer':
      return `transfer ${s.dir} ${s.rowBytes}`;
    case 'argmaxRows':
      return `argmaxRows ${s.n}`;
    case 'kvWrite':
      return `kvWrite ${s.kvHeads}x${s.headDim}`;
    case 'clamp':
      return `clamp ${s.n}`;
    case 'mlaAssemble':
      return `mlaAssemble ${s.heads}x${s.nope}+${s.rope}/${s.v}>${s.headDim}`;
    case 'alloc':
      return `alloc ${s.rowBytes.join(',')}`;
  }
}

/**
 * Every op one decode step issues for `cfg`, in lib/engine/forward.ts order, with its awaited groups: [embedding
 * (gather; convert)], per layer [input norm + q/k/v (+ biases, q/k norms) + rope] (OLMoE: rope after the host clip,
 * its own group), KV writes, [attention], [o (+ bias) + post norm (+ convert) + router (+ bias) + top-k (+ shared
 * gate, top-k, shared expert)] or [o + norm] then [dense MLP], [routed experts], [shared add]; then [final norm,
 * gather of the sequences' last rows, LM head]. Sampling (B × vocab argmax) is host work after the step. Without
 * clip or MLA, one micro-batch (`queued`): the module's [q/k/v + rope], KV writes and [attention] join the [o + ...
 * router] group (forward.ts queues them), and with resident experts (`resident`, default true) and the router's
 * weights not rescaled on the host, the whole step is one group (`queuedTrips`).
 *
 * `staged` (activations in the compute backend's memory: a CUDA backend, or the CPU backend with
 * deviceActivations): the step's tensors come from arenas kept between steps (only the host inputs are fresh), the
 * token ids and the one-expert ids and weights go up in the embedding's group, q/k/v (MLA: its five projections)
 * come down in their group, RoPE runs on the host backend (awaited alone unless queued), the attention output goes
 * up (awaited unless queued), the top-k ids and weights come down in the router's group (not when the whole step
 * is queued: nothing on the host reads them), the sequences' last rows go up in the LM head's group, and greedy
 * sampling is an argmax on the compute backend whose token ids come down in that group too.
 */
export function stepOps(cfg: ModelConfig, options: { staged?: boolean; resident?: boolean } = {}): StepPlan {
  const staged = options.staged === true;
  const queued = queuesLayers(cfg);
  // the whole step queued (forward.ts): the routing never comes down, the step is one round trip
  const whole = queued && options.resident !== false && !rescalesRouting(cfg);
  let queuedTrips = 2; // the embedding's group and the LM head's
  const H = cfg.hiddenSize;
  const nH = cfg.numHeads;
  const hd = cfg.headDim;
  const D = attentionHeadDim(cfg);
  const kvHeads = cfg.mla ? nH : cfg.numKvHeads;
  const list: Array<Omit<PlannedOp, 'key' | 'calls'> & { layer: number }> = [];
  let groups = 0;
  let hostGroups = 0;
  const moduleGroups = { pre: 0, host: 0, post: 0 };
  // the attention module part the ops pushed now belong to (undefined: outside the module)
  let part: PlannedOp['module'];
  const group = (n = 1, onHost = false) => {
    if (onHost) hostGroups += n;
    else groups += n;
    if (part) moduleGroups[part] += n;
  };
  const perLayer: number[] = [];
  const push = (layer: number, spec: OpSpec, term: TermName, window?: number | null, perSequence = false, host = false, chunkRows?: number) => {
    const backend = spec.op !== 'kvWrite' && spec.op !== 'clamp' && spec.op !== 'mlaAssemble' && spec.op !== 'alloc';
    list.push({ layer, spec, term, backend, ...(window !== undefined ? { window } : {}), ...(perSequence ? { perSequence } : {}), ...(host ? { host } : {}), ...(part ? { module: part } : {}), ...(chunkRows ? { chunkRows } : {}) });
  };
  const gemm = (layer: number, n: number, k: number, term: TermName, dtype: 'bf16' | 'f32' = 'bf16') => push(layer, { op: 'gemm', n, k, dtype }, term);
  const move = (layer: number, dir: 'down' | 'up', rowBytes: number, term: TermName, perSequence = false) => push(layer, { op: 'transfer', dir, rowBytes }, term, undefined, perSequence);
  const K = cfg.topK;
  // the step's arenas hold its activations (forward.ts StepMemory, staged or direct): fresh each step are the ids,
  // positions and the one-expert ids and weights per token, and per sequence its last row's index
  push(-1, { op: 'alloc', rowBytes: [4, 4, 4, 4] }, 'host');
  push(-1, { op: 'alloc', rowBytes: [4] }, 'host', undefined, true);
  // staged: the one-expert ids and weights, then the token ids, go up (in the embedding's group)
  if (staged) for (let i = 0; i < 3; i++) move(-1, 'up', 4, 'lmHead');
  // embedding: gather rows of the table, then bf16 -> f32 residual stream (one group)
  push(-1, { op: 'gatherRows', srcRows: cfg.vocabSize, n: H }, 'lmHead');
  push(-1, { op: 'convert', n: H, from: 'bf16', to: 'f32' }, 'lmHead');
  groups += 1;
  const moe = new Set(cfg.moeLayers);
  for (let l = 0; l < cfg.numLayers; l++) {
    push(l, { op: 'rmsNorm', rowsPerToken: 1, d: H, out: 'bf16', add: l === 0 ? null : 'bf16' }, 'attentionProj');
    part = 'pre'; // the attention module, per micro-batch: projections ...
    if (cfg.mla) {
      const m = cfg.mla;
      // fresh: the assembled q, k, v and v's prefix when narrower (the parts they come from: the arena's)
      const prefix = m.vHeadDim < D ? [2 * nH * m.vHeadDim] : [];
      const assembled = [4 * nH * D, 4 * nH * D, 4 * nH * D, ...prefix];
      push(l, { op: 'alloc', rowBytes: assembled }, 'host');
      let qIn = H;
      if (m.qLoraRank) {
        gemm(l, m.qLoraRank, H, 'attentionProj');
        push(l, { op: 'rmsNorm', rowsPerToken: 1, d: m.qLoraRank, out: 'bf16', add: null }, 'attentionProj');
        qIn = m.qLoraRank;
      }
      gemm(l, nH * m.qkNopeHeadDim, qIn, 'attentionProj');
      gemm(l, nH * m.qkRopeHeadDim, qIn, 'attentionProj');
      gemm(l, m.kvLoraRank, H, 'attentionProj');
      push(l, { op: 'rmsNorm', rowsPerToken: 1, d: m.kvLoraRank, out: 'bf16', add: null }, 'attentionProj');
      gemm(l, m.qkRopeHeadDim, H, 'attentionProj');
      gemm(l, nH * m.qkNopeHeadDim, m.kvLoraRank, 'attentionProj');
      gemm(l, nH * m.vHeadDim, m.kvLoraRank, 'attentionProj');
      if (staged) {
        for (const b of [4 * nH * m.qkNopeHeadDim, 4 * nH * m.qkRopeHeadDim, 4 * m.qkRopeHeadDim, 4 * nH * m.qkNopeHeadDim, 4 * nH * m.vHeadDim]) move(l, 'down', b, 'attentionProj');
        group();
        part = 'host';
        push(l, { op: 'rope', qHeads: nH, kHeads: 1, headDim: m.qkRopeHeadDim }, 'attentionProj', undefined, false, true);
        group(1, true);
      } else {
        push(l, { op: 'rope', qHeads: nH, kHeads: 1, headDim: m.qkRopeHeadDim }, 'attentionProj');
        group();
        part = 'host';
      }
      push(l, { op: 'mlaAssemble', heads: nH, nope: m.qkNopeHeadDim, rope: m.qkRopeHeadDim, v: m.vHeadDim, headDim: D }, 'host');
    } else {
      gemm(l, nH * hd, H, 'attentionProj');
      gemm(l, cfg.numKvHeads * hd, H, 'attentionProj');
      gemm(l, cfg.numKvHeads * hd, H, 'attentionProj');
      if (cfg.attentionBias) {
        push(l, { op: 'add', n: nH * hd, dtype: 'f32', bias: true }, 'attentionProj');
        push(l, { op: 'add', n: cfg.numKvHeads * hd, dtype: 'f32', bias: true }, 'attentionProj');
        push(l, { op: 'add', n: cfg.numKvHeads * hd, dtype: 'f32', bias: true }, 'attentionProj');
      }
      if (cfg.qkNorm) {
        // Qwen3: per head [T * heads, hd]; OLMoE: over the whole projection [T, heads * hd]
        const perHead = cfg.family !== 'olmoe';
        push(l, perHead ? { op: 'rmsNorm', rowsPerToken: nH, d: hd, out: 'f32', add: null } : { op: 'rmsNorm', rowsPerToken: 1, d: nH * hd, out: 'f32', add: null }, 'attentionProj');
        push(l, perHead ? { op: 'rmsNorm', rowsPerToken: cfg.numKvHeads, d: hd, out: 'f32', add: null } : { op: 'rmsNorm', rowsPerToken: 1, d: cfg.numKvHeads * hd, out: 'f32', add: null }, 'attentionProj');
      }
      if (staged) for (const b of [4 * nH * hd, 4 * cfg.numKvHeads * hd, 4 * cfg.numKvHeads * hd]) move(l, 'down', b, 'attentionProj');
      // not staged and no clip: RoPE in the projections' group
      if (!staged && cfg.clipQkv === null) push(l, { op: 'rope', qHeads: nH, kHeads: cfg.numKvHeads, headDim: hd }, 'attentionProj');
      group();
      part = 'host'; // ... host work: the clip, RoPE, KV writes, attention ...
      if (cfg.clipQkv !== null) push(l, { op: 'clamp', n: (nH + 2 * cfg.numKvHeads) * hd }, 'host');
      if (staged) {
        push(l, { op: 'rope', qHeads: nH, kHeads: cfg.numKvHeads, headDim: hd }, 'attentionProj', undefined, false, true);
        group(1, true);
      } else if (cfg.clipQkv !== null) {
        push(l, { op: 'rope', qHeads: nH, kHeads: cfg.numKvHeads, headDim: hd }, 'attentionProj');
        group(); // rope awaited alone after the clip
      }
    }
    push(l, { op: 'kvWrite', kvHeads, headDim: D }, 'host');
    const window = cfg.layerTypes && cfg.layerTypes[l] !== 'sliding' ? null : cfg.slidingWindow;
    push(l, { op: 'attention', qHeads: nH, kvHeads, headDim: D }, 'attention', window, false, staged);
    group(1, staged);
    part = 'post'; // ... the output up (staged) and its projection
    if (staged) {
      move(l, 'up', 2 * nH * (cfg.mla ? cfg.mla.vHeadDim : hd), 'attentionProj'); // the attention output, awaited
      group();
    }
    gemm(l, H, cfg.mla ? nH * cfg.mla.vHeadDim : nH * hd, 'attentionProj');
    if (cfg.family === 'gpt_oss') push(l, { op: 'add', n: H, dtype: 'f32', bias: true }, 'attentionProj');
    part = undefined;
    if (!moe.has(l)) {
      push(l, { op: 'rmsNorm', rowsPerToken: 1, d: H, out: 'bf16', add: 'f32' }, 'attentionProj');
      push(l, { op: 'moeExperts', experts: 1, k: 1, hidden: H, inter: cfg.denseIntermediateSize }, 'experts');
      groups += 2;
      queuedTrips += 2;
    } else {
      push(l, { op: 'rmsNorm', rowsPerToken: 1, d: H, out: 'f32', add: 'f32' }, 'attentionProj');
      push(l, { op: 'convert', n: H, from: 'f32', to: 'bf16' }, 'attentionProj');
      gemm(l, cfg.numExperts, H, 'router', 'f32');
      if (cfg.family === 'gpt_oss') push(l, { op: 'add', n: cfg.numExperts, dtype: 'f32', bias: true }, 'router');
      push(l, { op: 'routerTopK', e: cfg.numExperts, k: cfg.topK, scoring: 'softmax' }, 'router');
      if (staged && !whole) for (let i = 0; i < 2; i++) move(l, 'down', 4 * K, 'router'); // top-k ids and weights
      const sh = cfg.sharedExperts;
      if (sh) {
        if (sh.gated) {
          gemm(l, 1, H, 'shared');
          push(l, { op: 'routerTopK', e: 1, k: 1, scoring: 'sigmoid' }, 'shared');
        }
        push(l, { op: 'moeExperts', experts: 1, k: 1, hidden: H, inter: sh.intermediateSize }, 'shared');
      }
      push(l, { op: 'moeExperts', experts: cfg.numExperts, k: cfg.topK, hidden: H, inter: cfg.moeIntermediateSize }, 'experts');
      groups += 2;
      // queued: the router's round trip (and the rescaled weights' upload); the experts and a shared add are submitted
      // behind it and the next layer behind them (ExpertProvider.submit)
      queuedTrips += rescalesRouting(cfg) ? 2 : 1;
      if (sh) {
        push(l, { op: 'add', n: H, dtype: 'bf16', bias: false }, 'shared');
        groups += 1;
      }
    }
    perLayer.push(list.filter((o) => o.layer === l && o.backend && !o.host && o.spec.op !== 'transfer').length);
  }
  // the final norm, the sequences' last rows (up, staged), their gather and the LM head: one group
  push(-1, { op: 'rmsNorm', rowsPerToken: 1, d: H, out: 'bf16', add: 'bf16' }, 'lmHead');
  if (staged) move(-1, 'up', 4, 'lmHead', true);
  push(-1, { op: 'gatherRows', srcRows: 0, n: H }, 'lmHead', undefined, true);
  // staged: in chunks of LOGIT_ROWS rows, queued one after another
  push(-1, { op: 'gemm', n: cfg.vocabSize, k: H, dtype: 'bf16' }, 'lmHead', undefined, true, false, staged ? LOGIT_ROWS : undefined);
  groups += 1;
  if (staged) {
    // greedy sampling on the compute backend, its token ids down (in the LM head's group)
    push(-1, { op: 'argmaxRows', n: cfg.vocabSize }, 'host', undefined, true, false, LOGIT_ROWS);
    move(-1, 'down', 4, 'host', true);
  }
  // aggregate identical ops reported in the same term (attention also by window)
  const byKey = new Map<string, PlannedOp>();
  for (const o of list) {
    const key = opKey(o.spec);
    const id = `${key} ${o.term}${o.window === undefined ? '' : ` w${o.window}`}${o.perSequence ? ' seq' : ''}${o.module ? ` ${o.module}` : ''}`;
    const e = byKey.get(id);
    if (e) e.calls++;
    else {
      const { layer: _, ...op } = o;
      byKey.set(id, { ...op, key, calls: 1 });
    }
  }
  const perStep = list.filter((o) => o.layer < 0 && o.backend && !o.host && o.spec.op !== 'transfer').length;
  return { ops: [...byKey.values()], groups, hostGroups, moduleGroups, queued, queuedTrips: whole ? 1 : queuedTrips, perLayer, perStep };
}

/** Backend ops lib/engine/forward.ts issues per layer for this config (and per step outside the layers). */
export function opsPerStep(cfg: ModelConfig): { perLayer: number[]; perStep: number } {
  const p = stepOps(cfg);
  return { perLayer: p.perLayer, perStep: p.perStep };
}

/** One measurement: an op's cost (ms) at `batch` rows (and `context`), the bytes it streams, the probe next to it. */
export interface OpPoint {
  batch: number;
  /** Attention: KV tokens per sequence. */
  context?: number;
  /** Cost inside a group of ops (the group's round trip excluded). */
  ms: number;
  /** Bytes the op streams from memory (weights, routed experts, K and V); 0 for ops on cached activations. */
  bytes: number;
  /** Read-probe bandwidth around this point (mean of a probe before and after), GB/s. */
  probeGBs: number;
  /** Routed experts: distinct experts per call (mean over the timed calls). */
  experts?: number;
  /**
   * Ops streaming weights or K/V: measured cache-cold (64 MiB between two uses of one copy of its weights or K/V)
   * or warm (8 MiB: from the last-level cache, as in a step whose working set fits it); undefined for the others.
   */
  cold?: boolean;
}

/** What `profileModel` measures for one model on one backend. */
export interface ModelProfile {
  version: 2;
  backend: string;
  /** The compute backend's kind (absent in older profiles: 'cpu'). */
  kind?: 'cpu' | 'cuda';
  /** The GPU's name on a CUDA profile. */
  device?: string;
  /**
   * The CPU pool threads of the attention points keyed ` t<threads>` (opKey): how the runtime runs attention while
   * expert copies stream (CUDA, offloaded experts; LoadModelOptions.attentionThreads). Absent: not measured.
   */
  attentionThreads?: number;
  /**
   * The CPU kernel tier the attention points ran on when below the host's best (absent: the best): chosen by the
   * profile's trial (`attentionTiers`), and what the runtime should run (planRun's load: LoadModelOptions.attentionIsa).
   */
  attentionIsa?: CpuIsa;
  /**
   * The profile's attention tier trial, when it ran (an avx512bf16 host, ProfileModelOptions.attentionIsa 'auto'): ms
   * per call of a decode batch and of a prefill prompt at the model's shapes, per tier.
   */
  attentionTiers?: Partial<Record<CpuIsa, { decodeMs: number; prefillMs: number }>>;
  /**
   * Measured as a staged step runs (stepOps `staged`): activations in the compute backend's memory, attention and
   * RoPE on the host backend, copies between them (absent: false). A CUDA profile always is.
   */
  staged?: boolean;
  cpu: string;
  threads: number;
  /** The config the profile was measured for (the shapes; layers and vocab do not change op keys but are kept). */
  model: { architecture: string; family: string; hiddenSize: number; numLayers: number; numExperts: number; topK: number; vocabSize: number };
  /** Batches (decode sequences = rows) measured. */
  batches: number[];
  /** Attention contexts measured. */
  contexts: number[];
  /**
   * Prefill step sizes (tokens) the row ops were also measured at, with the prefill attention (attentionPrefill);
   * empty or absent: the profile predicts decode only.
   */
  prefillTokens?: number[];
  /** Measured points per op key (opKey). */
  ops: Record<string, OpPoint[]>;
  /** Round trip of one awaited group of ops back to JS, ms (staged: of the compute backend). */
  groupMs: number;
  /** Staged: round trip of one awaited op of the host backend (attention, RoPE), ms (absent: groupMs). */
  hostGroupMs?: number;
  /** Per-op dispatch cost of a trivial op inside a group, ms (what an op costs at least). */
  opMs: number;
  /** The fraction of the read probe's bandwidth memory-bound ops stream at (profile.ts: near the best seen). */
  streamEfficiency: number;
  /** The fastest the ops streamed from memory (near the best seen), GB/s: they do not follow the probe beyond (0: no cap). */
  peakGBs: number;
  /** Argmax sampling, ns per logit. */
  sampleNsPerLogit: number;
  /**
   * Copies of one routed expert from pinned host memory into the backend's device memory (an expert slot), GB/s:
   * what a miss of offloaded experts costs per byte (absent in older profiles).
   */
  copyGBs?: number;
  /**
   * Staged: routed experts computed on the host backend straight from pinned host memory (one token, k experts of a
   * layer, cache-cold), GB/s of expert weights: what computing a missed expert on the CPU costs per byte instead of
   * copying it (CachedExperts' hostCompute 'auto', the default on CUDA).
   */
  hostExpertGBs?: number;
  /**
   * The runtime's costs the measured ops do not explain (tensor allocation, JS between groups, bookkeeping), from
   * real decode steps of copies of the family's tiny preset: per step, per layer and per sequence of the step (ms).
   */
  runtime: {
    /** The preset whose copies were run (null: not calibrated, all 0). */
    preset: string | null;
    stepMs: number;
    layerMs: number;
    /**
     * Per sequence of a step (its KV bookkeeping, block tables, scheduling, its rows' tensors and the tail of a
     * queued step that its rows lengthen): the residual of a batch-16 step over a batch-1 step, per sequence. Absent
     * in profiles made before 2026-11-27 (0).
     */
    seqMs?: number;
    /** The calibration steps: measured (median time between decode steps) and predicted without these costs. */
    points: Array<{ layers: number; batch: number; measuredMs: number; predictedMs: number }>;
  };
  /** A GPU profile: its memory's read bandwidth (device-to-device copies), GB/s: the probe of its ops' points. */
  deviceGBs?: number;
  /** Read-probe bandwidth at the start of the profile, GB/s. */
  readGBs: number;
  /** Last-level cache, bytes: a step whose working set exceeds it reads cold. */
  cacheBytes: number;
  hostMemoryBytes: number;
  measuredAt: string;
  /** Wall time the profile took, s. */
  seconds: number;
}

/**
 * Piecewise-linear interpolation over points sorted by x: extended along the last segment beyond it (never below
 * the last value); below the first point clamped, or with `extendBelow` extended along the first segment (never
 * below half the first value: what remains of a cost at a shorter context).
 */
export function interp(points: ReadonlyArray<{ x: number; y: number }>, x: number, extendBelow = false): number {
  if (points.length === 0) throw new InvalidArgumentError('interp: no points');
  if (points.length === 1) return points[0]!.y;
  if (x <= points[0]!.x) {
    if (!extendBelow) return points[0]!.y;
    const [a, b] = [points[0]!, points[1]!];
    return Math.max(a.y / 2, a.y - ((b.y - a.y) * (a.x - x)) / (b.x - a.x));
  }
  for (let i = 1; i < points.length; i++) {
    const a = points[i - 1]!;
    const b = points[i]!;
    if (x <= b.x) return a.y + ((b.y - a.y) * (x - a.x)) / (b.x - a.x);
  }
  const a = points[points.length - 2]!;
  const b = points[points.length - 1]!;
  return b.y + Math.max(0, ((b.y - a.y) * (x - b.x)) / (b.x - a.x));
}

/** The machine's state at prediction time: the read-probe bandwidth (GB/s; left out: as measured). */
export interface Conditions {
  readGBs?: number;
}

/**
 * The memory part of a point as measured: its bytes at the best streaming efficiency, at most its time (none for a
 * warm point: its bytes come from the last-level cache, not memory).
 */
function memAt(p: OpPoint, efficiency: number): number {
  return p.bytes > 0 && p.probeGBs > 0 && p.cold !== false ? Math.min(p.ms, p.bytes / (efficiency * p.probeGBs * 1e6)) : 0;
}

/** A point's cost under `now`: its memory part scales with the bandwidth, the rest (compute, dispatch) does not. */
export function pointMs(p: OpPoint, efficiency: number, now: Conditions = {}, peakGBs = 0): number {
  return p.ms - memAt(p, efficiency) + pointMemMs(p, efficiency, now, peakGBs);
}

/**
 * The memory part of a point under `now`, ms: it streams at min(efficiency × probe, peak) — the kernels follow
 * the read bandwidth up to the fastest streaming the profile saw them reach (`peakGBs`), not beyond.
 */
function pointMemMs(p: OpPoint, efficiency: number, now: Conditions, peakGBs = 0): number {
  const mem = memAt(p, efficiency);
  if (now.readGBs === undefined || mem === 0) return mem;
  const rate = (gbs: number) => (peakGBs > 0 ? Math.min(efficiency * gbs, peakGBs) : efficiency * gbs);
  return (mem * rate(p.probeGBs)) / rate(now.readGBs);
}

/**
 * Cost of op `key` at `batch` (and `context` for attention) from the profile under `now`, ms; and its memory part.
 * `cold` in [0, 1] blends an op's warm and cold measurements (1: cold; ops measured one way use that).
 */
export function opCost(p: ModelProfile, key: string, batch: number, context = 0, now: Conditions = {}, cold = 1): { ms: number; memMs: number } {
  const all = p.ops[key];
  if (!all || all.length === 0) throw new InvalidArgumentError(`the profile has no measurements of "${key}" (measured for ${p.model.architecture}, hidden ${p.model.hiddenSize}): profile this model`);
  const warm = all.filter((q) => q.cold === false);
  const hot = all.filter((q) => q.cold !== false);
  if (warm.length > 0 && hot.length > 0 && cold < 1) {
    const w = opCostOf(p, warm, batch, context, now);
    if (cold <= 0) return w;
    const h = opCostOf(p, hot, batch, context, now);
    return { ms: w.ms + cold * (h.ms - w.ms), memMs: w.memMs + cold * (h.memMs - w.memMs) };
  }
  return opCostOf(p, hot.length > 0 ? hot : warm, batch, context, now);
}

function opCostOf(p: ModelProfile, pts: OpPoint[], batch: number, context: number, now: Conditions): { ms: number; memMs: number } {
  const e = p.streamEfficiency;
  const curve = (sel: OpPoint[], x: (q: OpPoint) => number, at: number, below = false) => ({
    ms: interp(
      sel.map((q) => ({ x: x(q), y: pointMs(q, e, now, p.peakGBs) })),
      at,
      below,
    ),
    memMs: interp(
      sel.map((q) => ({ x: x(q), y: pointMemMs(q, e, now, p.peakGBs) })),
      at,
      below,
    ),
  });
  if (pts[0]!.context === undefined) return curve(pts, (q) => q.batch, batch);
  // attention: linear in the context at each measured batch (also below the shortest context), then over the batch
  const batches = [...new Set(pts.map((q) => q.batch))].sort((a, b) => a - b);
  const atB = batches.map((b) => ({ b, c: curve(pts.filter((q) => q.batch === b).sort((x, y) => x.context! - y.context!), (q) => q.context!, context, true) }));
  return {
    ms: interp(atB.map((r) => ({ x: r.b, y: r.c.ms })), batch),
    memMs: interp(atB.map((r) => ({ x: r.b, y: r.c.memMs })), batch),
  };
}

/**
 * Bytes one decode step of B sequences at context L streams: its weights (routed experts: U(B) per MoE layer)
 * and every layer's K and V. Beyond the last-level cache, the step's ops read cold.
 */
export function stepWorkingSet(cfg: ModelConfig, B: number, L: number): number {
  let bytes = 0;
  for (const o of stepOps(cfg).ops) {
    const s = o.spec;
    if (s.op === 'gemm') bytes += o.calls * s.n * s.k * (s.dtype === 'bf16' ? 2 : 4);
    else if (s.op === 'moeExperts') bytes += o.calls * 3 * s.hidden * s.inter * 2 * (s.experts === 1 ? 1 : expectedExperts(s.experts, s.k, B));
    else if (s.op === 'attention') bytes += o.calls * B * (o.window ? Math.min(L, o.window) : L) * 2 * s.kvHeads * s.headDim * 2;
  }
  return bytes;
}

export interface DecodeShape {
  /** Sequences decoding together. */
  batch: number;
  /** Tokens in each sequence's KV cache. */
  context: number;
  /**
   * Routed experts offloaded: the expert slots on the compute backend (model.expertCache.capacity; LRU), the rest
   * in pinned host memory (the profile's copyGBs prices a miss). Absent: every expert resident.
   */
  expertSlots?: number;
  /**
   * Micro-batches of the attention modules (BatchOptions.microBatches; default 1): each layer's attention module
   * runs once per group of B / M sequences. On the CPU backend the groups run one after another; on CUDA a group's
   * host work (RoPE, KV writes, attention) overlaps the GPU's projections of the others (stepOps `module` parts).
   */
  microBatches?: number;
}

export interface StepTerms {
  /** Attention projections, norms, rope, o projection (dense weights of the attention block). */
  attentionProjMs: number;
  attentionMs: number;
  routerMs: number;
  /** Routed experts (and dense layers' MLPs). */
  expertsMs: number;
  sharedMs: number;
  /** Embedding, final norm, LM head. */
  lmHeadMs: number;
  /** Host work: KV writes, clipping, MLA assembly, fresh tensors, sampling. */
  hostMs: number;
  /** Group round trips and the runtime's fixed costs. */
  overheadMs: number;
  /**
   * Offloaded experts: copying the step's missed experts into the slots (0 when resident), or on CUDA computing them
   * on the host (copies.onHost): the part the GPU's experts do not hide.
   */
  expertCopyMs: number;
  /** Micro-batches on CUDA: the attention modules' time that overlaps (<= 0; 0 otherwise). */
  overlapMs: number;
}

export interface DecodePrediction {
  stepMs: number;
  tokensPerSecond: number;
  terms: StepTerms;
  /** The resource whose share of the step is largest. */
  bound: 'weights (memory bandwidth)' | 'attention (KV bandwidth)' | 'compute' | 'per-op overhead' | 'expert copies (H2D)';
  /** Distinct routed experts per MoE layer per step (expected, uniform routing). */
  expertsPerLayer: number;
  /**
   * Offloaded experts: experts copied into the slots per step (expected), whether the layers run in module mode,
   * whether the copies stream ahead of their layers (expertCopies), and (CUDA, demand fetches) whether computing the missed experts on the host is predicted faster than copying them.
   */
  copies?: { experts: number; moduleMode: boolean; streamed: boolean; onHost?: boolean };
}

/**
 * Experts copied into `slots` per decode step of B tokens (expected, independent uniform routing over the MoE layers'
 * E experts each, U(B) distinct per layer), as lib/engine/experts.ts CachedExperts with LRU runs them:
 *   U(B) > slots: module mode: each layer's experts stream through the slots once per step (the ones the previous
 *     step left are evicted by the other layers' streaming, or were themselves prefetched: copies either way), and
 *     after each layer the next one's experts of the previous step are prefetched into the free slots (up to
 *     min(slots, U)), of which a share 1 - U/E is not routed to again: L (U + min(slots, U) (1 - U/E));
 *   else a step touching L U(B) >= slots experts cycles the LRU cache (each is evicted before its next use): with
 *     U >= 3E/4 the next layer's experts of the previous step stream ahead after each layer as in module mode (U
 *     of them, a share 1 - U/E not routed to again): L (U + U (1 - U/E)); below that each is fetched on demand: L U;
 *   else demand fetches of the experts not cached: under independent uniform routing LRU holds a requested expert
 *     with probability slots / (L E): L U (1 - slots / (L E)); none once every expert fits.
 * `streamed`: the copies run ahead of their layer (module mode, or the cycling with streaming above), so on CUDA they
 * overlap the rest of the step.
 */
export function expertCopies(cfg: ModelConfig, B: number, slots: number): { experts: number; moduleMode: boolean; streamed: boolean } {
  const L = cfg.moeLayers.length;
  const E = cfg.numExperts;
  const U = expectedExperts(E, cfg.topK, B);
  if (L === 0 || slots >= L * E) return { experts: 0, moduleMode: false, streamed: false };
  if (U > slots) return { experts: L * (U + Math.min(slots, U) * (1 - U / E)), moduleMode: true, streamed: true };
  if (L * U >= slots && 4 * U >= 3 * E) return { experts: L * (U + U * (1 - U / E)), moduleMode: false, streamed: true };
  if (L * U >= slots) return { experts: L * U, moduleMode: false, streamed: false };
  return { experts: L * U * (1 - slots / (L * E)), moduleMode: false, streamed: false };
}

/**
 * Whether steps with routed experts offloaded into `slots` (undefined: resident) need no JS-side expert decision:
 * resident experts, or a pool with a slot for every expert (CachedExperts fills it and then queues whole steps).
 */
export function queuesWhole(cfg: ModelConfig, slots: number | undefined): boolean {
  return slots === undefined || slots >= cfg.moeLayers.length * cfg.numExperts;
}

/** Expected distinct experts of B tokens each routed to k of E (independent uniform routing). */
export function expectedExperts(E: number, k: number, B: number): number {
  return E * (1 - (1 - k / E) ** B);
}

/**
 * Predicted decode step of `shape` for model `cfg` from its profile (its backend; experts resident unless
 * `expertSlots`) at the read
 * bandwidth `now` (default: as measured): the interval between decode steps, so with sampling (greedy argmax over
 * the vocabulary for each sequence) and, in the runtime costs (calibrated on intervals), the scheduler's work.
 */
export function predictDecode(cfg: ModelConfig, p: ModelProfile, shape: DecodeShape, now: Conditions = {}): DecodePrediction {
  const B = shape.batch;
  const L = shape.context;
  if (!(B >= 1) || !(L >= 1)) throw new InvalidArgumentError(`batch and context must be >= 1, received batch ${shape.batch}, context ${shape.context}`);
  // how cold the step reads: warm while its working set fits the last-level cache, cold from twice that
  const cold = Math.min(1, Math.max(0, stepWorkingSet(cfg, B, L) / p.cacheBytes - 1));
  const { copies, copyMs, overlap } = copyCost(cfg, p, B, shape.expertSlots);
  const M = shape.microBatches ?? 1;
  if (!Number.isSafeInteger(M) || M < 1 || M > B) throw new InvalidArgumentError(`microBatches must be an integer in [1, batch ${B}], received ${describe(shape.microBatches)}`);
  const step = composeStep(cfg, p, B, B, now, cold, (o, f) => opCost(p, attentionKey(cfg, p, o, shape.expertSlots, false), B * f, o.window ? Math.min(L, o.window) : L, now, cold), copyMs, overlap, M, queuesWhole(cfg, shape.expertSlots));
  return { ...step, tokensPerSecond: (B * 1000) / step.stepMs, expertsPerLayer: expectedExperts(cfg.numExperts, cfg.topK, B), ...(copies ? { copies } : {}) };
}

/**
 * The expert copies of a step of T tokens with routed experts offloaded into `slots` (none when undefined): how many
 * (expertCopies), their time at the profile's copy rate, and whether they overlap the compute (streamed ahead, on CUDA).
 * On CUDA with demand fetches the runtime computes missed experts on the host instead when that is faster (its
 * measured choice, CachedExperts' hostCompute 'auto'): the cheaper of the two, at the profile's hostExpertGBs.
 */
function copyCost(cfg: ModelConfig, p: ModelProfile, T: number, slots: number | undefined): { copies?: { experts: number; moduleMode: boolean; streamed: boolean; onHost?: boolean }; copyMs: number; overlap: CopyOverlap } {
  if (slots === undefined) return { copyMs: 0, overlap: false };
  if (!Number.isSafeInteger(slots) || slots < 0) throw new InvalidArgumentError(`expertSlots must be an integer >= 0, received ${describe(slots)}`);
  const copies = expertCopies(cfg, T, slots);
  if (copies.experts === 0) return { copies, copyMs: 0, overlap: false };
  if (!(p.copyGBs! > 0)) throw new InvalidArgumentError('the profile has no expert copy rate (copyGBs): profile this model again to predict offloaded experts');
  const bytes = copies.experts * 3 * cfg.hiddenSize * cfg.moeIntermediateSize * 2;
  const copyMs = bytes / (p.copyGBs! * 1e6);
  if (p.kind === 'cuda' && !copies.streamed && p.hostExpertGBs! > 0) {
    const hostMs = bytes / (p.hostExpertGBs! * 1e6);
    // the host computes them while the GPU computes the layer's resident experts (CachedExperts #runSplit)
    if (hostMs < copyMs) return { copies: { ...copies, onHost: true }, copyMs: hostMs, overlap: 'experts' };
  }
  return { copies, copyMs, overlap: copies.streamed && p.kind === 'cuda' ? 'step' : false };
}

/** What hides the expert copies (copyCost): the rest of the step (module mode on CUDA), the GPU's experts (missed experts computed on the host on CUDA) or nothing. */
type CopyOverlap = 'step' | 'experts' | false;

/**
 * Wall time of one layer's attention module in M micro-batches on CUDA, from its parts' times per micro-batch: the
 * projections of every group queue on the GPU at once (pre, a each), each group's host work (h) starts when its
 * projections are done and the host finished the group before, and its output projection (post, b) runs on the GPU
 * after its host work and after everything queued before it.
 */
export function moduleOverlapMs(M: number, a: number, h: number, b: number): number {
  let hostEnd = 0;
  let gpuEnd = M * a;
  for (let g = 0; g < M; g++) {
    hostEnd = Math.max((g + 1) * a, hostEnd) + h;
    gpuEnd = Math.max(hostEnd, gpuEnd) + b;
  }
  return gpuEnd;
}

/**
 * One step of T tokens from S sequences: every op of stepOps at T rows (S for the per-sequence ones), attention
 * from `attention(op, f)` (f: the share of the step's sequences it covers), sampling S rows, the group round trips
 * and runtime costs; its terms and binding resource. M micro-batches: the attention modules' ops run M times at
 * T / M rows with their round trips; on CUDA their parts overlap (moduleOverlapMs, the saving in overlapMs).
 */
function composeStep(
  cfg: ModelConfig,
  p: ModelProfile,
  T: number,
  S: number,
  now: Conditions,
  cold: number,
  attention: (o: PlannedOp, f: number) => { ms: number; memMs: number },
  copyMs = 0,
  overlapCopies: CopyOverlap = false,
  M = 1,
  resident = true,
): Omit<DecodePrediction, 'tokensPerSecond' | 'expertsPerLayer'> {
  const plan = stepOps(cfg, { staged: p.staged === true, resident });
  const terms: StepTerms = { attentionProjMs: 0, attentionMs: 0, routerMs: 0, expertsMs: 0, sharedMs: 0, lmHeadMs: 0, hostMs: 0, overheadMs: 0, expertCopyMs: 0, overlapMs: 0 };
  let weightsMem = 0;
  let kvMem = 0;
  let perOp = 0;
  const hostTrip = p.staged ? (p.hostGroupMs ?? p.groupMs) : p.groupMs;
  // the attention modules' parts (all layers, all micro-batches), round trips included
  const mod = { pre: plan.moduleGroups.pre * M * p.groupMs, host: plan.moduleGroups.host * M * hostTrip, post: plan.moduleGroups.post * M * p.groupMs };
  for (const o of plan.ops) {
    const n = o.module ? M : 1; // runs per step (per layer)
    const f = 1 / n;
    const rows = (o.perSequence ? S : T) * f;
    let c: { ms: number; memMs: number };
    if (o.spec.op === 'attention') c = attention(o, f);
    else if (o.chunkRows && rows > o.chunkRows) {
      // whole chunks, then the rest
      const full = Math.floor(rows / o.chunkRows);
      const rest = rows - full * o.chunkRows;
      const a = opCost(p, o.key, o.chunkRows, 0, now, cold);
      const b = rest > 0 ? opCost(p, o.key, rest, 0, now, cold) : { ms: 0, memMs: 0 };
      c = { ms: full * a.ms + b.ms, memMs: full * a.memMs + b.memMs };
    } else c = opCost(p, o.key, rows, 0, now, cold);
    const ms = o.calls * n * c.ms;
    terms[`${o.term}Ms` as keyof StepTerms] += ms;
    if (o.module) mod[o.module] += ms;
    if (o.spec.op === 'attention') kvMem += o.calls * n * c.memMs;
    else weightsMem += o.calls * n * c.memMs;
    if (o.backend) perOp += o.calls * n * Math.min(c.ms, p.opMs);
  }
  // staged: greedy sampling is the argmaxRows op of the plan; otherwise the host samples S rows of logits
  if (!p.staged) terms.hostMs += (S * cfg.vocabSize * p.sampleNsPerLogit) / 1e6;
  const r = p.runtime;
  const moduleTrips = (M - 1) * ((plan.moduleGroups.pre + plan.moduleGroups.post) * p.groupMs + plan.moduleGroups.host * hostTrip);
  // one micro-batch, queued: the modules ride on their routers' round trips, and with resident experts the whole step
  // is one
  const trips = plan.queued && M === 1 ? plan.queuedTrips * p.groupMs : plan.groups * p.groupMs + plan.hostGroups * (p.hostGroupMs ?? p.groupMs) + moduleTrips;
  terms.overheadMs = trips + r.stepMs + cfg.numLayers * r.layerMs + S * (r.seqMs ?? 0);
  if (p.kind === 'cuda' && M > 1) {
    // per layer and micro-batch (the layers' modules alike: their mean)
    const per = M * cfg.numLayers;
    const serial = mod.pre + mod.host + mod.post;
    terms.overlapMs = Math.min(0, cfg.numLayers * moduleOverlapMs(M, mod.pre / per, mod.host / per, mod.post / per) - serial);
  }
  const rest = Object.values(terms).reduce((a, b) => a + b, 0);
  // copies of offloaded experts: on the CPU backend they share the cores and the memory with the compute, and a
  // demand fetch stalls its layer: they add to the step; on CUDA in module mode the copy engine streams the next
  // layer's experts while this one computes: only what the compute does not hide adds; missed experts computed on
  // the host run beside the GPU's experts of the same layers: only what those do not hide adds
  const hiddenBy = overlapCopies === 'step' ? rest : overlapCopies === 'experts' ? terms.expertsMs : 0;
  terms.expertCopyMs = Math.max(0, copyMs - hiddenBy);
  const stepMs = rest + terms.expertCopyMs;
  const overhead = terms.overheadMs + terms.hostMs + perOp;
  const compute = rest - terms.overlapMs - overhead - weightsMem - kvMem;
  const shares: Array<[DecodePrediction['bound'], number]> = [
    ['weights (memory bandwidth)', weightsMem],
    ['attention (KV bandwidth)', kvMem],
    ['compute', compute],
    ['per-op overhead', overhead],
    ['expert copies (H2D)', overlapCopies === 'step' ? (copyMs > rest ? stepMs : 0) : terms.expertCopyMs],
  ];
  const bound = shares.reduce((a, b) => (b[1] > a[1] ? b : a))[0];
  return { stepMs, terms, bound };
}

/** The prefill attention op of a decode attention op (the same heads and head dim). */
export function prefillAttention(s: Extract<OpSpec, { op: 'attention' }>): Extract<OpSpec, { op: 'attentionPrefill' }> {
  return { op: 'attentionPrefill', qHeads: s.qHeads, kvHeads: s.kvHeads, headDim: s.headDim, ...(s.threads ? { threads: s.threads } : {}) };
}

/**
 * The attention op a step runs with routed experts offloaded into `slots` (undefined: resident): on CUDA with fewer
 * slots than experts the runtime runs it on p.attentionThreads of the pool (LoadModelOptions.attentionThreads
 * 'auto'), priced by the points measured so (the op itself when the profile has none).
 */
function attentionKey(cfg: ModelConfig, p: ModelProfile, o: PlannedOp, slots: number | undefined, prefill: boolean): string {
  const s = o.spec as Extract<OpSpec, { op: 'attention' }>;
  const capped = p.kind === 'cuda' && p.attentionThreads! > 0 && slots !== undefined && !queuesWhole(cfg, slots);
  const at = capped ? { ...s, threads: p.attentionThreads! } : s;
  const key = opKey(prefill ? prefillAttention(at) : at);
  if (p.ops[key]) return key;
  return opKey(prefill ? prefillAttention(s) : s);
}

/** Query-key pairs (per head) of q new tokens after a prefix of P, causal, each token seeing at most `window` keys. */
export function prefillPairs(q: number, P: number, window: number | null = null): number {
  if (window === null || window >= P + q) return q * P + (q * (q + 1)) / 2;
  let n = 0;
  for (let i = 0; i < q; i++) n += Math.min(P + i + 1, window);
  return n;
}

export interface PrefillShape {
  /** Prompt tokens per sequence. */
  prompt: number;
  /** Tokens per step (generateBatch's maxBatchTokens; default 512): shorter prompts share a step, longer ones are chunked. */
  chunk?: number;
  /** Routed experts offloaded into this many slots (as DecodeShape.expertSlots: a step of T tokens copies expertCopies(T)). */
  expertSlots?: number;
}

export interface PrefillPrediction {
  /** Prompt tokens per second over the steps that prefill `prompt`. */
  tokensPerSecond: number;
  /** Mean step time, and the steps: tokens, sequences and time of each. */
  stepMs: number;
  steps: Array<{ tokens: number; sequences: number; prefix: number; ms: number }>;
  /** Terms summed over the steps (ms). */
  terms: StepTerms;
  bound: DecodePrediction['bound'];
}

/**
 * Predicted prefill of prompts of `shape.prompt` tokens in steps of `chunk` tokens (experts resident, or offloaded
 * into `expertSlots` slots: each step's copies as a decode step of as many tokens):
 * a prompt that fits shares its step with floor(chunk / prompt) others (one step of S prompts); a longer one runs in
 * chunks of `chunk` tokens after its own growing prefix. Each step is the decode step's ops at T rows (routed experts
 * at T tokens: U(T) distinct experts), one LM-head row per sequence, and prefill attention at the step's query-key
 * pairs (profile op attentionPrefill); sampling S rows. Needs a profile measured with prefill points.
 * @example
 * const p = await profileModel(be, cfg, { prefillTokens: [512] });
 * predictPrefill(cfg, p, { prompt: 1000 }).tokensPerSecond;
 */
export function predictPrefill(cfg: ModelConfig, p: ModelProfile, shape: PrefillShape, now: Conditions = {}): PrefillPrediction {
  const P = shape.prompt;
  const C = shape.chunk ?? 512;
  if (!Number.isSafeInteger(P) || P < 1 || !Number.isSafeInteger(C) || C < 1) {
    throw new InvalidArgumentError(`prompt and chunk must be integers >= 1, received prompt ${describe(shape.prompt)}, chunk ${describe(shape.chunk)}`);
  }
  const units: Array<{ S: number; q: number; prefix: number }> = [];
  if (P <= C) units.push({ S: Math.floor(C / P), q: P, prefix: 0 });
  else for (let at = 0; at < P; at += C) units.push({ S: 1, q: Math.min(C, P - at), prefix: at });
  const terms: StepTerms = { attentionProjMs: 0, attentionMs: 0, routerMs: 0, expertsMs: 0, sharedMs: 0, lmHeadMs: 0, hostMs: 0, overheadMs: 0, expertCopyMs: 0, overlapMs: 0 };
  const steps: PrefillPrediction['steps'] = [];
  const binds = new Map<DecodePrediction['bound'], number>();
  let tokens = 0;
  for (const u of units) {
    const T = u.S * u.q;
    const kvPerRow = (u.S * (u.prefix + u.q)) / T; // the step's KV reads, as stepWorkingSet counts them per row
    const cold = Math.min(1, Math.max(0, stepWorkingSet(cfg, T, kvPerRow) / p.cacheBytes - 1));
    const { copyMs, overlap } = copyCost(cfg, p, T, shape.expertSlots);
    const st = composeStep(
      cfg,
      p,
      T,
      u.S,
      now,
      cold,
      (o, f) => {
        const pairs = u.S * f * prefillPairs(u.q, u.prefix, o.window ?? null);
        return opCost(p, attentionKey(cfg, p, o, shape.expertSlots, true), pairs, 0, now, cold);
      },
      copyMs,
      overlap,
      1,
      queuesWhole(cfg, shape.expertSlots),
    );
    for (const k of Object.keys(terms) as Array<keyof StepTerms>) terms[k] += st.terms[k];
    binds.set(st.bound, (binds.get(st.bound) ?? 0) + st.stepMs);
    steps.push({ tokens: T, sequences: u.S, prefix: u.prefix, ms: st.stepMs });
    tokens += T;
  }
  const total = steps.reduce((a, x) => a + x.ms, 0);
  const bound = [...binds.entries()].reduce((a, b) => (b[1] > a[1] ? b : a))[0];
  return { tokensPerSecond: (tokens * 1000) / total, stepMs: total / steps.length, steps, terms, bound };
}

/**
 * The batch that maximises predicted decode throughput at `context` within the KV cache's `kvTokens` (batches
 * 1, 2, 4, ... and the largest that fits, up to what the profile measured), and what limits it: 'throughput' (a
 * larger batch that fits is predicted slower), 'kv-capacity' (throughput still grows but a larger batch does not
 * fit the KV cache: the binding resource is KV capacity) or 'profiled batches' (the profile measured no larger).
 * With `expertSlots`, for routed experts offloaded into that many slots (predictDecode); with `{ deviceBytes }`, each
 * batch with the slots that fit beside the dense weights and its step (memory.ts expertSlotsFor: the step of
 * max(batch, `stepTokens`, default 512 = generateBatch's prefill steps) tokens), batches that leave no room for two
 * skipped (OutOfMemoryError when none fits); the choice's `expertSlots` says how many. Each batch at the best of
 * the micro-batch counts `microBatches` (default: 1, 2 and 4 on a CUDA profile, where the attention modules' host
 * work overlaps the GPU; 1 on the CPU backend, where the groups only add round trips). `candidates`: every batch
 * tried, with its prediction at its best count.
 * @example
 * const { batch, microBatches, limit } = chooseBatch(cfg, profile, 512, model.kvTokensFree);
 */
export function chooseBatch(
  cfg: ModelConfig,
  p: ModelProfile,
  context: number,
  kvTokens: number,
  now: Conditions = {},
  expertSlots?: number | { deviceBytes: number; stepTokens?: number },
  microBatches: readonly number[] = p.kind === 'cuda' ? [1, 2, 4] : [1],
): {
  batch: number;
  microBatches: number;
  expertSlots?: number;
  prediction: DecodePrediction;
  limit: 'throughput' | 'kv-capacity' | 'profiled batches';
  candidates: Array<{ batch: number; microBatches: number; expertSlots?: number; prediction: DecodePrediction }>;
} {
  if (!Array.isArray(microBatches) || microBatches.length === 0 || microBatches.some((m) => !Number.isSafeInteger(m) || m < 1)) {
    throw new InvalidArgumentError(`microBatches must be positive integers, received ${describe(microBatches)}`);
  }
  const maxB = Math.max(...p.batches);
  const fits = Math.floor(kvTokens / context);
  const top = Math.max(1, Math.min(maxB, fits));
  const batches: number[] = [];
  for (let b = 1; b < top; b *= 2) batches.push(b);
  batches.push(top);
  const budget = typeof expertSlots === 'object' && expertSlots !== null ? expertSlots : undefined;
  const stepTokens = budget?.stepTokens ?? 512;
  if (budget && (!Number.isSafeInteger(stepTokens) || stepTokens < 1)) throw new InvalidArgumentError(`stepTokens must be a positive integer, received ${describe(budget.stepTokens)}`);
  // the slots each batch gets (undefined: resident); null: the batch's step leaves no room for two
  const slotsAt = (batch: number): number | undefined | null => {
    if (!budget) return expertSlots as number | undefined;
    try {
      return expertSlotsFor(cfg, budget.deviceBytes, { tokens: Math.max(batch, stepTokens) });
    } catch (e) {
      if (e instanceof OutOfMemoryError) return null;
      throw e;
    }
  };
  const candidates = batches.flatMap((batch) => {
    const slots = slotsAt(batch);
    if (slots === null) return [];
    const at = slots !== undefined ? { expertSlots: slots } : {};
    const tried = microBatches
      .filter((m) => m <= batch)
      .map((m) => ({ batch, microBatches: m, ...at, prediction: predictDecode(cfg, p, { batch, context, microBatches: m, ...at }, now) }));
    const one = tried.length > 0 ? tried : [{ batch, microBatches: 1, ...at, prediction: predictDecode(cfg, p, { batch, context, ...at }, now) }];
    return [one.reduce((x, c) => (c.prediction.tokensPerSecond > x.prediction.tokensPerSecond ? c : x))];
  });
  // no batch fits: the smallest one's error says what does not
  if (candidates.length === 0) expertSlotsFor(cfg, budget!.deviceBytes, { tokens: stepTokens });
  const best = candidates.reduce((a, c) => (c.prediction.tokensPerSecond > a.prediction.tokensPerSecond ? c : a));
  const limit = best.batch < top ? 'throughput' : fits < maxB ? 'kv-capacity' : 'profiled batches';
  return { ...best, limit, candidates };
}
