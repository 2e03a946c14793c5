/**
 * Batched generation (the first slice of throughput mode): many requests share every forward step. A step takes
 * one decode token from each running sequence and fills the rest of its token budget with prefill chunks of
 * sequences still reading their prompt, so prefill and decode of different sequences share steps; finished
 * sequences leave and waiting ones join between steps without stalling the others.
 *
 * KV admission: a request joins only when the KV cache can hold its prompt plus its maxNewTokens (pages reserved
 * up front), so a running sequence never runs out of pages: requests wait for room, none is lost. A request that
 * cannot fit even in an empty cache fails alone (OutOfMemoryError in its result); a malformed one too.
 *
 * Greedy results equal one-at-a-time generation when every op is batch invariant (a token's output row does not
 * depend on the other rows of the call): the CPU GEMM is; the attention kernel is given a fixed split count here.
 */
import type { StepMemoryShape } from '../batching/memory.js';
import { describe } from '../dtype.js';
import { InvalidArgumentError, OutOfMemoryError } from '../errors.js';
import type { KvCache } from '../kv/cache.js';
import type { StreamDecoder } from '../model/tokenizer.js';
import type { ForwardPass, StepSequence, StepTimes } from './forward.js';
import { emptyTimes } from './forward.js';
import { Sampler } from './sampler.js';

export interface BatchRequestOptions {
  maxNewTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: readonly string[];
  stopAtEos?: boolean;
}

export interface BatchOptions {
  /** Tokens per forward step, decode and prefill together (default 512). */
  maxBatchTokens?: number;
  /** Sequences running at once (default 64). */
  maxSequences?: number;
  /**
   * Micro-batches of each step's attention module (default 1): its sequences in up to this many groups, so that the
   * CPU attention of one overlaps the GPU projections of the others (lib/engine/forward.ts StepOptions). The tokens
   * do not depend on it.
   */
  microBatches?: number;
  signal?: AbortSignal;
  /**
   * After every step: sequences in it, tokens, wall ms, and where that step's time went (`times`: attention, expert
   * compute, transfer stall, dense ops, host JS between native groups, in ms).
   */
  onStep?: (s: { sequences: number; tokens: number; decodeTokens: number; ms: number; waiting: number; running: number; times: StepTimes }) => void;
}

/** A finished request: its tokens and text, or the error that failed it alone. */
export interface BatchResult {
  /** Position of the request in the input. */
  index: number;
  text: string;
  tokens: number[];
  promptTokens: number;
  finishReason: 'eos' | 'stop' | 'length' | 'error';
  error?: Error;
  /** Time from the request's admission to its last token, ms. */
  latencyMs: number;
}

/** The median of `v` (the upper one of an even count): the statistic the runtime calibration and the benches use. */
export function medianOf(v: readonly number[]): number {
  return [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
}

/**
 * Intervals between consecutive steps in which every sequence decodes, end of one to end of the next (what decode
 * throughput is: the step with its sampling, and the scheduling between steps): call `mark(full)` from onStep at
 * every step; true when it recorded one.
 * @example
 * const iv = new StepIntervals();
 * for await (const _ of model.generateBatch(reqs, { onStep: (s) => iv.mark(s.decodeTokens === B && s.tokens === B) }));
 * const tokensPerSecond = (B * 1000) / medianOf(iv.ms);
 */
export class StepIntervals {
  readonly ms: number[] = [];
  #last = -1;
  mark(full: boolean): boolean {
    const now = performance.now();
    const recorded = full && this.#last >= 0;
    if (recorded) this.ms.push(now - this.#last);
    this.#last = full ? now : -1;
    return recorded;
  }
}

/** What the scheduler needs from the model (kept narrow so it is testable). */
export interface BatchModel {
  readonly kv: KvCache;
  readonly forward: ForwardPass;
  readonly maxPositions: number;
  readonly eos: ReadonlySet<number>;
  encode(req: unknown): number[];
  decoder(): StreamDecoder;
  /**
   * Runs one forward step under the model's step lock and returns each sequence's next token (ForwardPass.stepTokens):
   * samplers[i] for sequence i, null for one whose token is not read.
   */
  step(seqs: StepSequence[], samplers: ReadonlyArray<Sampler | null>, times: StepTimes, signal: AbortSignal | undefined): Promise<Int32Array>;
  /**
   * Allocates, before the first step, the step memory that the batch's largest steps need (`shape`: maxBatchTokens
   * tokens, up to maxSequences rows to the LM head, the micro-batches), where less is there.
   */
  prepareSteps?(shape: StepMemoryShape): Promise<void>;
}

interface Running {
  index: number;
  seq: number;
  prompt: number[];
  fed: number; // prompt tokens already in the KV cache
  out: number[];
  next: number; // the token to feed in the next decode step (-1: still prefilling)
  sampler: Sampler;
  decoder: StreamDecoder;
  text: string;
  maxNew: number;
  stops: readonly string[];
  stopAtEos: boolean;
  pages: number;
  t0: number;
}

function checkOptions(o: BatchRequestOptions | undefined, index: number): Required<Pick<BatchRequestOptions, 'maxNewTokens' | 'stopAtEos'>> & { stops: readonly string[] } {
  const maxNew = o?.maxNewTokens ?? 128;
  if (!Number.isSafeInteger(maxNew) || maxNew < 1) throw new InvalidArgumentError(`request ${index}: maxNewTokens must be a positive integer, received ${describe(o?.maxNewTokens)}`);
  const stops = o?.stop ?? [];
  if (!Array.isArray(stops) || stops.some((s) => typeof s !== 'string' || s.length === 0)) {
    throw new InvalidArgumentError(`request ${index}: stop must be an array of non-empty strings, received ${describe(o?.stop)}`);
  }
  return { maxNewTokens: maxNew, stopAtEos: o?.stopAtEos ?? true, stops };
}

/**
 * Runs `requests` (prompt + options each) through continuous batching; yields results as requests finish (not
 * in input order: `index` says which).
 */
export async function* runBatch(
  model: BatchModel,
  requests: AsyncIterable<{ prompt: unknown; options?: BatchRequestOptions }> | Iterable<{ prompt: unknown; options?: BatchRequestOptions }>,
  options: BatchOptions = {},
): AsyncGenerator<BatchResult, void, undefined> {
  const maxTokens = options.maxBatchTokens ?? 512;
  const maxSeqs = options.maxSequences ?? 64;
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw new InvalidArgumentError(`maxBatchTokens must be a positive integer, received ${describe(options.maxBatchTokens)}`);
  if (!Number.isSafeInteger(maxSeqs) || maxSeqs < 1) throw new InvalidArgumentError(`maxSequences must be a positive integer, received ${describe(options.maxSequences)}`);
  const micro = options.microBatches ?? 1;
  if (!Number.isSafeInteger(micro) || micro < 1) throw new InvalidArgumentError(`microBatches must be a positive integer, received ${describe(options.microBatches)}`);
  const signal = options.signal;
  const kv = model.kv;
  const bs = kv.blockSize;
  const source = (Symbol.asyncIterator in requests ? requests[Symbol.asyncIterator]() : (requests as Iterable<{ prompt: unknown; options?: BatchRequestOptions }>)[Symbol.iterator]()) as
    | AsyncIterator<{ prompt: unknown; options?: BatchRequestOptions }>
    | Iterator<{ prompt: unknown; options?: BatchRequestOptions }>;
  let exhausted = false;
  let nextIndex = 0;
  const waiting: Array<{ index: number; prompt: number[]; o: BatchRequestOptions | undefined; checked: ReturnType<typeof checkOptions> }> = [];
  const failed: BatchResult[] = [];
  const running: Running[] = [];
  let reservedPages = 0;
  const times = emptyTimes();
  await model.prepareSteps?.({ tokens: maxTokens, rows: Math.min(maxSeqs, maxTokens), microBatches: Math.min(micro, maxTokens) });

  const pull = async () => {
    while (!exhausted && waiting.length < maxSeqs) {
      const r = await source.next();
      if (r.done) {
        exhausted = true;
        break;
      }
      const index = nextIndex++;
      try {
        const req = r.value;
        if (typeof req !== 'object' || req === null) throw new InvalidArgumentError(`request ${index} must be an object { prompt, options }, received ${describe(req)}`);
        const checked = checkOptions(req.options, index);
        const prompt = model.encode(req.prompt);
        if (prompt.length === 0) throw new InvalidArgumentError(`request ${index}: the prompt encodes to no tokens`);
        const pages = Math.ceil((prompt.length + checked.maxNewTokens) / bs);
        if (pages > kv.numPages) {
          throw new OutOfMemoryError(`request ${index}: prompt ${prompt.length} + maxNewTokens ${checked.maxNewTokens} tokens need ${pages} KV pages; the cache has ${kv.numPages}`);
        }
        waiting.push({ index, prompt, o: req.options, checked });
      } catch (e) {
        failed.push({ index, text: '', tokens: [], promptTokens: 0, finishReason: 'error', error: e as Error, latencyMs: 0 });
      }
    }
  };

  const finish = (r: Running, reason: BatchResult['finishReason']): BatchResult => {
    kv.free(r.seq);
    reservedPages -= r.pages;
    running.splice(running.indexOf(r), 1);
    if (reason !== 'stop') r.text += r.decoder.flush();
    return { index: r.index, text: r.text, tokens: r.out, promptTokens: r.prompt.length, finishReason: reason, latencyMs: performance.now() - r.t0 };
  };

  try {
    for (;;) {
      signal?.throwIfAborted();
      await pull();
      while (failed.length) yield failed.shift()!;
      // admit waiting requests in order while their KV pages fit
      while (waiting.length && running.length < maxSeqs) {
        const w = waiting[0]!;
        const pages = Math.ceil((w.prompt.length + w.checked.maxNewTokens) / bs);
        if (reservedPages + pages > kv.numPages) break;
        waiting.shift();
        reservedPages += pages;
        running.push({
          index: w.index,
          seq: kv.allocate(),
          prompt: w.prompt,
          fed: 0,
          out: [],
          next: -1,
          sampler: new Sampler(w.o ?? {}),
          decoder: model.decoder(),
          text: '',
          maxNew: Math.min(w.checked.maxNewTokens, model.maxPositions - w.prompt.length),
          stops: w.checked.stops,
          stopAtEos: w.checked.stopAtEos,
          pages,
          t0: performance.now(),
        });
      }
      if (running.length === 0) {
        if (exhausted && waiting.length === 0) return;
        continue;
      }
      // the step: every decoding sequence's next token, then prefill chunks within the token budget
      const step: Array<{ r: Running; s: StepSequence; completes: boolean }> = [];
      let budget = maxTokens;
      for (const r of running) {
        if (r.next >= 0 && budget > 0) {
          step.push({ r, s: { seq: r.seq, tokens: [r.next] }, completes: true });
          budget--;
        }
      }
      for (const r of running) {
        if (r.next >= 0 || budget <= 0) continue;
        const n = Math.min(budget, r.prompt.length - r.fed);
        step.push({ r, s: { seq: r.seq, tokens: r.prompt.slice(r.fed, r.fed + n) }, completes: r.fed + n === r.prompt.length });
        budget -= n;
      }
      const t0 = performance.now();
      const before = { ...times };
      // one native sampling call for the step's rows; a prompt chunk that does not complete its prompt draws nothing
      const tokens = await model.step(
        step.map((x) => x.s),
        step.map((x) => (x.r.next >= 0 || x.completes ? x.r.sampler : null)),
        times,
        signal,
      );
      const stepTimes = emptyTimes();
      for (const key of Object.keys(stepTimes) as Array<keyof StepTimes>) stepTimes[key] = times[key] - before[key];
      options.onStep?.({
        sequences: step.length,
        tokens: maxTokens - budget,
        decodeTokens: step.filter((x) => x.r.next >= 0).length,
        ms: performance.now() - t0,
        waiting: waiting.length,
        running: running.length,
        times: stepTimes,
      });
      const done: BatchResult[] = [];
      step.forEach((x, i) => {
        const r = x.r;
        if (r.next < 0) {
          r.fed += x.s.tokens.length;
          if (!x.completes) return;
        }
        const token = tokens[i]!;
        if (r.stopAtEos && model.eos.has(token)) {
          done.push(finish(r, 'eos'));
          return;
        }
        r.out.push(token);
        const before = r.text.length;
        r.text += r.decoder.push(token);
        if (r.stops.length) {
          // the text before this token held no stop string: a match ends in the new part (no rescan of the whole text)
          let cut = -1;
          for (const s of r.stops) {
            const at = r.text.indexOf(s, Math.max(0, before - s.length + 1));
            if (at >= 0 && (cut < 0 || at < cut)) cut = at;
          }
          if (cut >= 0) {
            r.text = r.text.slice(0, cut);
            done.push(finish(r, 'stop'));
            return;
          }
        }
        if (r.out.length >= r.maxNew) {
          done.push(finish(r, 'length'));
          return;
        }
        r.next = token;
      });
      for (const d of done) yield d;
    }
  } finally {
    // cancelled or failed: free every running sequence's pages
    for (const r of running) kv.free(r.seq);
    running.length = 0;
    if (!exhausted) await (source as AsyncIterator<unknown>).return?.();
  }
}
