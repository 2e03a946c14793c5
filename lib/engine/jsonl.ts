/**
 * Offline batch generation over JSONL files (`moe-offload generate --input in.jsonl --output out.jsonl`):
 * requests stream in line by line, results are appended as they complete (one whole line per write), ids already
 * in the output are skipped (so an interrupted run resumes where it stopped), and a malformed line is reported with
 * its line number while the rest still runs.
 *
 * Input lines (one JSON object each): { "id"?, "prompt": "text" } | { "messages": [{ role, content }] } |
 * { "turns": ["..."] } (MT-Bench: the first turn as a user message) | { "tokens": [ids] }, with optional
 * "max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop". The id defaults to "question_id", then to
 * the line number. Output lines: { id, text, tokens, finish_reason, prompt_tokens, generated_tokens, latency_ms }.
 */
import fs from 'node:fs';
import readline from 'node:readline';

import { describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';
import type { BatchOptions, BatchRequestOptions } from './batch.js';
import type { Workload } from '../batching/workload.js';
import type { ModelTokenizer } from '../model/tokenizer.js';
import { type MoeModel, type Prompt, encodePrompt } from './model.js';

export interface JsonlProgress {
  /** Non-empty input lines (requests to run, already done, or malformed), counted before the run starts. */
  total: number;
  done: number;
  failed: number;
  skipped: number;
  tokens: number;
  elapsedMs: number;
  running: number;
  waiting: number;
}

export interface JsonlRunOptions extends Pick<BatchOptions, 'maxBatchTokens' | 'maxSequences' | 'microBatches' | 'signal'> {
  /** Defaults for every request (a line's own fields win). */
  defaults?: BatchRequestOptions;
  onProgress?: (p: JsonlProgress) => void;
  /** A malformed line or a failed request: line number (1-based) and the error. */
  onError?: (line: number, error: Error) => void;
}

export interface JsonlSummary extends JsonlProgress {
  /** Output tokens per second of wall time. */
  tokensPerSecond: number;
}

/** Parses one input line into a prompt and options (throws InvalidArgumentError naming the field). */
export function parseRequestLine(line: string, lineNo: number, defaults: BatchRequestOptions = {}): { id: string; prompt: Prompt; options: BatchRequestOptions } {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(line) as Record<string, unknown>;
  } catch (e) {
    throw new InvalidArgumentError(`line ${lineNo}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgumentError(`line ${lineNo}: must be a JSON object, received ${describe(v)}`);
  const rawId = v.id ?? v.question_id ?? lineNo;
  if (typeof rawId !== 'string' && typeof rawId !== 'number') throw new InvalidArgumentError(`line ${lineNo}: id must be a string or number, received ${describe(rawId)}`);
  let prompt: Prompt;
  if (typeof v.prompt === 'string') prompt = v.prompt;
  else if (Array.isArray(v.messages)) prompt = v.messages as Array<{ role: string; content: string }>;
  else if (Array.isArray(v.turns) && typeof v.turns[0] === 'string') prompt = [{ role: 'user', content: v.turns[0] }];
  else if (Array.isArray(v.tokens)) prompt = { tokens: v.tokens as number[] };
  else throw new InvalidArgumentError(`line ${lineNo}: needs "prompt" (string), "messages", "turns" or "tokens"`);
  const o: BatchRequestOptions = { ...defaults };
  const num = (k: string, set: (n: number) => void) => {
    if (v[k] === undefined) return;
    if (typeof v[k] !== 'number') throw new InvalidArgumentError(`line ${lineNo}: ${k} must be a number, received ${describe(v[k])}`);
    set(v[k] as number);
  };
  num('max_new_tokens', (n) => (o.maxNewTokens = n));
  num('temperature', (n) => (o.temperature = n));
  num('top_k', (n) => (o.topK = n));
  num('top_p', (n) => (o.topP = n));
  num('seed', (n) => (o.seed = n));
  if (v.stop !== undefined) {
    const stop = typeof v.stop === 'string' ? [v.stop] : v.stop;
    if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string')) throw new InvalidArgumentError(`line ${lineNo}: stop must be a string or an array of strings`);
    o.stop = stop as string[];
  }
  return { id: String(rawId), prompt, options: o };
}

/**
 * The prompt and output lengths of the requests in `input` still to run (ids not in `skip`), as the run will see them
 * (prompts tokenized as MoeModel.encode does; outputs at their max_new_tokens, else `defaults`, else 128: an upper
 * bound, as EOS may end them sooner). Bad lines are left out (the run reports them). For planRun's `workload`.
 */
export function inputWorkload(input: string, tokenizer: ModelTokenizer, vocabSize: number, defaults: BatchRequestOptions = {}, skip: ReadonlySet<string> = new Set()): Workload {
  const prompts: number[] = [];
  const outputs: number[] = [];
  fs.readFileSync(input, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if (!line.trim()) return;
      try {
        const r = parseRequestLine(line, i + 1, defaults);
        if (skip.has(r.id)) return;
        prompts.push(encodePrompt(tokenizer, vocabSize, r.prompt).length);
        outputs.push(r.options.maxNewTokens ?? 128);
      } catch (e) {
        if (!(e instanceof InvalidArgumentError)) throw e;
      }
    });
  return { prompts, outputs };
}

/** Ids already present in an output file (for resuming); a torn last line is ignored. */
export function completedIds(file: string): Set<string> {
  const ids = new Set<string>();
  if (!fs.existsSync(file)) return ids;
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      const v = JSON.parse(line) as { id?: unknown };
      if (typeof v.id === 'string') ids.add(v.id);
    } catch {
      // a line cut by a crash: its request runs again
    }
  }
  return ids;
}

/**
 * Runs every request of `input` not yet in `output` through model.generateBatch, appending results to `output`.
 * Resolves with totals when the input is done or `signal` aborts (results finished by then are all written).
 */
export async function generateJsonl(model: MoeModel, input: string, output: string, o: JsonlRunOptions = {}): Promise<JsonlSummary> {
  if (!fs.existsSync(input)) throw new InvalidArgumentError(`input ${input} does not exist`);
  const done = completedIds(output);
  // a torn last line (crash mid-write) would glue onto the next record: start on a fresh line
  if (fs.existsSync(output)) {
    const size = fs.statSync(output).size;
    if (size > 0) {
      const fd = fs.openSync(output, 'r');
      const last = Buffer.alloc(1);
      fs.readSync(fd, last, 0, 1, size - 1);
      fs.closeSync(fd);
      if (last[0] !== 0x0a) fs.appendFileSync(output, '\n');
    }
  }
  const out = fs.openSync(output, 'a');
  const progress: JsonlProgress = { total: await countLines(input), done: 0, failed: 0, skipped: 0, tokens: 0, elapsedMs: 0, running: 0, waiting: 0 };
  const t0 = performance.now();
  const meta: Array<{ id: string; line: number }> = [];
  const onError = o.onError ?? (() => undefined);
  const seen = new Set<string>();
  async function* requests(): AsyncGenerator<{ prompt: unknown; options?: BatchRequestOptions }> {
    const rl = readline.createInterface({ input: fs.createReadStream(input, 'utf8'), crlfDelay: Infinity });
    let lineNo = 0;
    try {
      for await (const line of rl) {
        lineNo++;
        if (!line.trim()) continue;
        let req: ReturnType<typeof parseRequestLine>;
        try {
          req = parseRequestLine(line, lineNo, o.defaults);
        } catch (e) {
          progress.failed++;
          onError(lineNo, e as Error);
          continue;
        }
        if (done.has(req.id) || seen.has(req.id)) {
          progress.skipped++;
          continue;
        }
        seen.add(req.id);
        meta.push({ id: req.id, line: lineNo });
        yield { prompt: req.prompt, options: req.options };
      }
    } finally {
      rl.close();
    }
  }
  try {
    const it = model.generateBatch(requests() as AsyncIterable<{ prompt: Prompt; options?: BatchRequestOptions }>, {
      ...(o.maxBatchTokens !== undefined ? { maxBatchTokens: o.maxBatchTokens } : {}),
      ...(o.maxSequences !== undefined ? { maxSequences: o.maxSequences } : {}),
      ...(o.microBatches !== undefined ? { microBatches: o.microBatches } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
      onStep: (s) => {
        progress.running = s.running;
        progress.waiting = s.waiting;
        progress.elapsedMs = performance.now() - t0;
        o.onProgress?.({ ...progress });
      },
    });
    try {
      for await (const r of it) {
        const m = meta[r.index]!;
        if (r.finishReason === 'error') {
          progress.failed++;
          onError(m.line, r.error!);
          continue;
        }
        const rec = { id: m.id, text: r.text, tokens: r.tokens, finish_reason: r.finishReason, prompt_tokens: r.promptTokens, generated_tokens: r.tokens.length, latency_ms: Math.round(r.latencyMs) };
        fs.writeSync(out, `${JSON.stringify(rec)}\n`);
        progress.done++;
        progress.tokens += r.tokens.length;
      }
    } catch (e) {
      if (!(o.signal?.aborted && e === o.signal.reason)) throw e;
    }
  } finally {
    fs.closeSync(out);
  }
  progress.elapsedMs = performance.now() - t0;
  return { ...progress, tokensPerSecond: progress.elapsedMs > 0 ? (progress.tokens * 1000) / progress.elapsedMs : 0 };
}

/** Non-empty lines of a text file (streamed). */
async function countLines(file: string): Promise<number> {
  const rl = readline.createInterface({ input: fs.createReadStream(file, 'utf8'), crlfDelay: Infinity });
  let n = 0;
  try {
    for await (const line of rl) if (line.trim()) n++;
  } finally {
    rl.close();
  }
  return n;
}

/**
 * A one-line progress report: a bar over the input's requests, counts, tokens/s and the ETA (from the rate at
 * which this run has finished requests so far).
 * @example
 * process.stderr.write(`\r${progressLine(p)}`)   // [#######.............] 35% 70/200 | 412.0 tokens/s | 38 s, ETA 71 s
 */
export function progressLine(p: JsonlProgress): string {
  const finished = p.done + p.failed + p.skipped;
  const frac = p.total > 0 ? Math.min(1, finished / p.total) : 0;
  const width = 20;
  const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.');
  const tps = p.elapsedMs > 0 ? (p.tokens * 1000) / p.elapsedMs : 0;
  const ranHere = p.done + p.failed;
  const left = Math.max(0, p.total - finished);
  const eta = ranHere > 0 && p.elapsedMs > 0 ? ((p.elapsedMs / ranHere) * left) / 1000 : undefined;
  return (
    `[${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ${finished}/${p.total} | ${p.running} running, ${p.waiting} waiting, ${p.failed} failed, ${p.skipped} skipped | ` +
    `${tps.toFixed(1)} tokens/s | ${(p.elapsedMs / 1000).toFixed(0)} s${eta !== undefined ? `, ETA ${eta.toFixed(0)} s` : ''}`
  );
}
