/**
 * A workload's prompt and output lengths (issue 8: the performance model plans for the workload's length
 * distribution): read from a request trace, and the shape the model plans with.
 *   decodeContext = the mean KV length over every decode step of every request: request r decodes o_r steps at KV
 *                   lengths p_r + 1 .. p_r + o_r, so sum_r (o_r p_r + o_r (o_r + 1) / 2) / sum_r o_r. It is also the
 *                   KV a running sequence holds on average over its decode steps (what KV capacity is divided by).
 * Trace formats: CSV with ContextTokens and GeneratedTokens columns (Azure LLM inference trace 2023), or JSONL with
 * input_length / output_length (Mooncake) or prompt_tokens / output_tokens per line.
 *
 * @example
 * const w = readWorkload('../shared/data/azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv');
 * const { decodeContext } = workloadShape(w);
 */
import fs from 'node:fs';

import { describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';

export interface Workload {
  /** Prompt tokens of each request. */
  prompts: readonly number[];
  /** Tokens each request generates. */
  outputs: readonly number[];
}

export interface WorkloadShape {
  requests: number;
  meanPrompt: number;
  meanOutput: number;
  /** The mean KV length over all decode steps (see the file header). */
  decodeContext: number;
}

/** The shape of `w`; InvalidArgumentError for an empty workload or lengths that are not non-negative integers (outputs >= 1). */
export function workloadShape(w: Workload): WorkloadShape {
  const n = w?.prompts?.length;
  if (!n || w.outputs?.length !== n) throw new InvalidArgumentError(`workload must hold as many prompts as outputs, at least one, received ${describe(w?.prompts?.length)} and ${describe(w?.outputs?.length)}`);
  let sp = 0;
  let so = 0;
  let kv = 0;
  for (let i = 0; i < n; i++) {
    const p = w.prompts[i]!;
    const o = w.outputs[i]!;
    if (!Number.isSafeInteger(p) || p < 0 || !Number.isSafeInteger(o) || o < 1) throw new InvalidArgumentError(`workload request ${i}: prompt must be an integer >= 0 and output >= 1, received ${describe(p)} and ${describe(o)}`);
    sp += p;
    so += o;
    kv += o * p + (o * (o + 1)) / 2;
  }
  return { requests: n, meanPrompt: sp / n, meanOutput: so / n, decodeContext: kv / so };
}

/**
 * The prompt and output lengths of the trace in `file` (see the file header). Requests generating nothing are
 * skipped (they never decode); a malformed line is an InvalidArgumentError naming the file and line.
 */
export function readWorkload(file: string): Workload {
  if (typeof file !== 'string' || file.length === 0) throw new InvalidArgumentError(`file must be a path, received ${describe(file)}`);
  const text = fs.readFileSync(file, 'utf8');
  const lines = text.split('\n');
  const prompts: number[] = [];
  const outputs: number[] = [];
  const push = (p: unknown, o: unknown, line: number) => {
    const pn = Number(p);
    const on = Number(o);
    if (!Number.isSafeInteger(pn) || pn < 0 || !Number.isSafeInteger(on) || on < 0) throw new InvalidArgumentError(`${file} line ${line}: expected non-negative integer prompt and output lengths, received ${describe(p)} and ${describe(o)}`);
    if (on === 0) return;
    prompts.push(pn);
    outputs.push(on);
  };
  if (lines[0]!.trimStart().startsWith('{')) {
    lines.forEach((l, i) => {
      if (l.trim() === '') return;
      let r: Record<string, unknown>;
      try {
        r = JSON.parse(l) as Record<string, unknown>;
      } catch {
        throw new InvalidArgumentError(`${file} line ${i + 1}: not JSON`);
      }
      push(r.input_length ?? r.prompt_tokens, r.output_length ?? r.output_tokens, i + 1);
    });
  } else {
    const head = lines[0]!.trim().split(',');
    const pc = head.indexOf('ContextTokens');
    const oc = head.indexOf('GeneratedTokens');
    if (pc < 0 || oc < 0) throw new InvalidArgumentError(`${file}: expected a CSV header with ContextTokens and GeneratedTokens, or JSONL, received ${JSON.stringify(lines[0]!.slice(0, 80))}`);
    for (let i = 1; i < lines.length; i++) {
      if (lines[i]!.trim() === '') continue;
      const c = lines[i]!.split(',');
      push(c[pc], c[oc], i + 1);
    }
  }
  if (prompts.length === 0) throw new InvalidArgumentError(`${file}: no requests that generate tokens`);
  return { prompts, outputs };
}
