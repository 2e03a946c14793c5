/**
 * The runtime's tokenizer: a model directory's HF `tokenizer.json` (+ optional `tokenizer_config.json` and
 * `chat_template.jinja`) loaded with @huggingface/tokenizers, chat templates rendered with @huggingface/jinja, and
 * an incremental detokenizer for streaming generation that never cuts a UTF-8 sequence.
 *
 * Decoding is lossless: HF's legacy `clean_up_tokenization_spaces` text rewrite (" ," -> ",", ...) is never
 * applied, so streamed chunks always add up to decode() of the same ids. Ids the tokenizer does not know (a
 * model's padded vocab_size above the tokenizer's) decode to nothing, as in the Rust library.
 *
 * Streaming has two implementations with the same chunks: the general one re-decodes a short window of ids with
 * the library per pushed id (two decodes a push, ~2.3 us: 4.7 ms of JS per step of a 2048-sequence batch on the
 * development VM), and, for tokenizers whose decoder is ByteLevel alone (GPT-2 style: Qwen, OLMoE, DeepSeek, gpt-oss,
 * the generated ones), a byte-level one: each id's bytes once (GPT-2's byte map), an all-ASCII token's text
 * returned as is, other bytes decoded as UTF-8 with the library's TextDecoder settings. It is checked against the
 * library on the first decoder() (every added token and a spread of ids) and not used when any differ.
 *
 * @example
 * const tok = await ModelTokenizer.load('/models/Qwen3-30B-A3B');
 * const prompt = tok.applyChatTemplate([{ role: 'user', content: 'Hello!' }]);
 * const ids = tok.encode(prompt, { addSpecialTokens: false }); // the template already holds the special tokens
 * const stream = tok.decoder({ skipSpecialTokens: true });
 * for (const id of generated) process.stdout.write(stream.push(id));
 * process.stdout.write(stream.flush());
 */
import fs from 'node:fs';
import path from 'node:path';

import { Template } from '@huggingface/jinja';
import { Tokenizer } from '@huggingface/tokenizers';

import { describe } from '../dtype.js';
import { CheckpointFormatError, InvalidArgumentError } from '../errors.js';

/** One chat turn for {@link ModelTokenizer.applyChatTemplate}. */
export interface ChatMessage {
  role: string;
  content: string;
}

/** Streaming detokenizer from {@link ModelTokenizer.decoder}. */
export interface StreamDecoder {
  /** Adds one generated id; returns the text that became final (possibly ''), never a partial UTF-8 character. */
  push(id: number): string;
  /** Returns whatever is still held back (an unfinished UTF-8 sequence decodes to U+FFFD, as decode() does). */
  flush(): string;
}

type Json = Record<string, unknown>;

interface TemplateSource {
  source: string;
  file: string;
}

export class ModelTokenizer {
  /** Number of ids the tokenizer knows (largest id + 1, added tokens included). */
  readonly vocabSize: number;
  /** Id of tokenizer_config's bos_token, or null when it has none. */
  readonly bosTokenId: number | null;
  /** Id of tokenizer_config's eos_token (the engine adds generation_config.json's eos_token_id on top). */
  readonly eosTokenIds: number[];
  /** True when chat_template.jinja or tokenizer_config.json's chat_template provides a (default) template. */
  readonly hasChatTemplate: boolean;

  readonly #tok: Tokenizer;
  readonly #vocab: readonly (string | undefined)[];
  readonly #template: TemplateSource | undefined;
  readonly #templateNames: readonly string[];
  readonly #templateVars: Json;
  #compiled: Template | undefined;
  /** The byte-level streaming pieces; null: the tokenizer is not byte-level, or they disagreed with the library. */
  #pieces: ByteLevelPieces | null;
  #piecesChecked = false;

  private constructor(tok: Tokenizer, config: Json, template: TemplateSource | undefined, templateNames: readonly string[], byteLevel: ByteLevelSource | null) {
    this.#tok = tok;
    this.#vocab = tok.model?.vocab ?? [];
    this.#pieces = byteLevel ? new ByteLevelPieces(this.#vocab, byteLevel) : null;
    this.vocabSize = this.#vocab.length;
    this.#template = template;
    this.#templateNames = templateNames;
    this.hasChatTemplate = template !== undefined;
    const bos = tokenContent(config.bos_token);
    const eos = tokenContent(config.eos_token);
    this.bosTokenId = bos === undefined ? null : (tok.token_to_id(bos) ?? null);
    const eosId = eos === undefined ? undefined : tok.token_to_id(eos);
    this.eosTokenIds = eosId === undefined ? [] : [eosId];
    // Special-token strings templates refer to (bos_token, eos_token, ...), as transformers passes them.
    this.#templateVars = {};
    for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
      const v = tokenContent(config[key]);
      if (v !== undefined) this.#templateVars[key] = v;
    }
  }

  /**
   * Loads the tokenizer of a HF model directory: tokenizer.json (required), tokenizer_config.json and
   * chat_template.jinja (optional; the .jinja file takes precedence over tokenizer_config's chat_template, which
   * may also be a list of {name, template}, of which "default" is used).
   * Throws CheckpointFormatError naming the file when tokenizer.json is missing, not JSON or not loadable, or when
   * tokenizer_config.json is not JSON; `signal` aborts the reads (rejecting with its reason).
   *
   * @example
   * const tok = await ModelTokenizer.load('/models/Mixtral-8x7B-Instruct-v0.1');
   * tok.encode('Hello'); // [1, 22557]: bos + tokens
   */
  static async load(dir: string, options: { signal?: AbortSignal } = {}): Promise<ModelTokenizer> {
    if (typeof dir !== 'string' || dir.length === 0) throw new InvalidArgumentError(`dir must be a non-empty path string, received ${describe(dir)}`);
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
    const signal = options.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new InvalidArgumentError(`options.signal must be an AbortSignal, received ${describe(signal)}`);
    }
    signal?.throwIfAborted();

    const tokFile = path.join(dir, 'tokenizer.json');
    const tokText = await readOptional(tokFile, signal);
    if (tokText === undefined) throw new CheckpointFormatError(tokFile, undefined, 'missing: the model directory has no tokenizer.json');
    const tokJson = parseJsonObject(tokFile, tokText);
    if (typeof tokJson.model !== 'object' || tokJson.model === null) {
      throw new CheckpointFormatError(tokFile, undefined, 'has no "model" object: not a Hugging Face tokenizer.json');
    }

    const cfgFile = path.join(dir, 'tokenizer_config.json');
    const cfgText = await readOptional(cfgFile, signal);
    const config = cfgText === undefined ? {} : parseJsonObject(cfgFile, cfgText);

    const jinjaFile = path.join(dir, 'chat_template.jinja');
    const jinjaText = await readOptional(jinjaFile, signal);
    let template: TemplateSource | undefined;
    let templateNames: string[] = [];
    if (jinjaText !== undefined) {
      template = { source: jinjaText, file: jinjaFile };
    } else if (typeof config.chat_template === 'string') {
      template = { source: config.chat_template, file: cfgFile };
    } else if (Array.isArray(config.chat_template)) {
      for (const entry of config.chat_template as unknown[]) {
        const e = entry as { name?: unknown; template?: unknown } | null;
        if (typeof e !== 'object' || e === null || typeof e.name !== 'string' || typeof e.template !== 'string') {
          throw new CheckpointFormatError(cfgFile, undefined, 'chat_template list entries must be {name, template} objects of strings');
        }
        templateNames.push(e.name);
        if (e.name === 'default') template = { source: e.template, file: cfgFile };
      }
    }

    // tokenizers.js needs these keys present (null when absent); added_tokens may be missing in older files.
    const normalized: Json = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, added_tokens: [], ...tokJson };
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(normalized, config);
    } catch (e) {
      throw new CheckpointFormatError(tokFile, undefined, `cannot be loaded: ${(e as Error).message}`, { cause: e });
    }
    return new ModelTokenizer(tok, config, template, templateNames, byteLevelSource(normalized, config));
  }

  /**
   * Text -> token ids. `addSpecialTokens` (default true) applies the tokenizer's post-processor (e.g. the bos
   * token of Mixtral/Llama); special-token strings in the text always encode to their single ids. Encode a chat
   * template's output with `addSpecialTokens: false`: the template already wrote them.
   *
   * @example
   * tok.encode('Hi there');                                // [bos, ...ids]
   * tok.encode('<|im_start|>user', { addSpecialTokens: false }); // [im_start_id, ...ids of 'user']
   */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    if (typeof text !== 'string') throw new InvalidArgumentError(`text must be a string, received ${describe(text)}`);
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
    const add = options.addSpecialTokens ?? true;
    if (typeof add !== 'boolean') throw new InvalidArgumentError(`options.addSpecialTokens must be a boolean, received ${describe(add)}`);
    const { ids, tokens } = this.#tok.encode(text, { add_special_tokens: add });
    for (let i = 0; i < ids.length; i++) {
      if (typeof ids[i] !== 'number') {
        throw new InvalidArgumentError(`text: piece ${JSON.stringify(tokens[i])} has no id in this vocabulary and the tokenizer has no unk_token`);
      }
    }
    return ids;
  }

  /**
   * Token ids -> text. `skipSpecialTokens` (default false) drops special tokens (bos, eos, <|im_end|>, ...).
   * Accepts a plain array or an Int32Array/Uint32Array of non-negative integer ids.
   *
   * @example
   * tok.decode(tok.encode('héllo 世界 🙂', { addSpecialTokens: false })); // 'héllo 世界 🙂'
   * tok.decode([bos, ...ids, eos], { skipSpecialTokens: true });
   */
  decode(ids: readonly number[] | Int32Array | Uint32Array, options: { skipSpecialTokens?: boolean } = {}): string {
    const list = checkIds(ids);
    return this.#decode(list, skipOption(options));
  }

  /**
   * Renders a conversation with the model's chat template (jinja), with `add_generation_prompt` (default true)
   * and the special-token strings (bos_token, eos_token, ...) of tokenizer_config.json. Throws
   * InvalidArgumentError when the tokenizer has no template, for malformed messages, and when the template
   * raises (e.g. roles out of order), with the template's message; CheckpointFormatError naming the file when the
   * template itself does not parse (it is compiled on first use, so a model with an exotic template still loads).
   *
   * @example
   * tok.applyChatTemplate([{ role: 'user', content: 'Hi' }]);
   * // '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n'
   */
  applyChatTemplate(messages: ReadonlyArray<ChatMessage>, options: { addGenerationPrompt?: boolean } = {}): string {
    if (this.#template === undefined) {
      const named = this.#templateNames.length > 0 ? ` (tokenizer_config.json has templates named ${this.#templateNames.join(', ')} but no "default")` : '';
      throw new InvalidArgumentError(
        `this tokenizer has no chat template${named}: neither chat_template.jinja nor tokenizer_config.json's chat_template; format the prompt yourself and call encode()`,
      );
    }
    if (!Array.isArray(messages)) throw new InvalidArgumentError(`messages must be an array of {role, content}, received ${describe(messages)}`);
    const plain = messages.map((m: unknown, i) => {
      const msg = m as { role?: unknown; content?: unknown } | null;
      if (typeof msg !== 'object' || msg === null) throw new InvalidArgumentError(`messages[${i}] must be a {role, content} object, received ${describe(m)}`);
      if (typeof msg.role !== 'string') throw new InvalidArgumentError(`messages[${i}].role must be a string, received ${describe(msg.role)}`);
      if (typeof msg.content !== 'string') throw new InvalidArgumentError(`messages[${i}].content must be a string, received ${describe(msg.content)}`);
      return { role: msg.role, content: msg.content };
    });
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
    const gen = options.addGenerationPrompt ?? true;
    if (typeof gen !== 'boolean') throw new InvalidArgumentError(`options.addGenerationPrompt must be a boolean, received ${describe(gen)}`);

    if (this.#compiled === undefined) {
      try {
        this.#compiled = new Template(this.#template.source);
      } catch (e) {
        throw new CheckpointFormatError(this.#template.file, undefined, `chat template does not parse: ${(e as Error).message}`, { cause: e });
      }
    }
    try {
      return this.#compiled.render({ ...this.#templateVars, messages: plain, add_generation_prompt: gen });
    } catch (e) {
      throw new InvalidArgumentError(`chat template: ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * An incremental detokenizer for streaming generation: `push(id)` returns only text that is final (it holds
   * back ids that end inside a UTF-8 character or that do not add text yet), `flush()` returns the rest. The
   * pushed chunks plus flush() equal decode() of all the ids with the same skipSpecialTokens.
   *
   * @example
   * const d = tok.decoder({ skipSpecialTokens: true });
   * let text = '';
   * for (const id of ids) text += d.push(id); // '🙂' arrives whole, after its last byte's token
   * text += d.flush();
   */
  decoder(options: { skipSpecialTokens?: boolean } = {}): StreamDecoder {
    const skip = skipOption(options);
    const pieces = this.#checkedPieces();
    if (pieces) return byteLevelStream(pieces, skip);
    const ids: number[] = [];
    let prefix = 0; // window start: a character boundary, re-decoded so start-dependent decoders (Strip) agree
    let read = 0; // ids before this are already emitted
    const self = this;
    return {
      push(id: number): string {
        checkPushed(id);
        ids.push(id);
        const before = read > prefix ? self.#decode(ids.slice(prefix, read), skip) : '';
        const now = self.#decode(ids.slice(prefix), skip);
        // A trailing U+FFFD is an unfinished UTF-8 sequence (or a lone bad byte: held until the next id or flush).
        if (now.length <= before.length || now.endsWith('\uFFFD')) return '';
        prefix = read;
        read = ids.length;
        return now.slice(before.length);
      },
      flush(): string {
        if (read === ids.length) return '';
        const before = read > prefix ? self.#decode(ids.slice(prefix, read), skip) : '';
        const now = self.#decode(ids.slice(prefix), skip);
        prefix = read = ids.length;
        return now.slice(before.length);
      },
    };
  }

  /**
   * Which streaming decoder {@link decoder} returns: 'byte-level' (a ByteLevel tokenizer whose pieces matched the
   * library) or 'general' (re-decodes a window of ids per push); both give the same chunks.
   * @example
   * tok.streaming; // 'byte-level' for Qwen3's tokenizer, 'general' for Mixtral's (SentencePiece-style)
   */
  get streaming(): 'byte-level' | 'general' {
    return this.#checkedPieces() ? 'byte-level' : 'general';
  }

  /**
   * The byte-level pieces after their check against the library (first call): every added token and ids spread
   * over the vocabulary, each with and without skipSpecialTokens, must decode alone as decode() does.
   */
  #checkedPieces(): ByteLevelPieces | null {
    if (this.#piecesChecked) return this.#pieces;
    this.#piecesChecked = true;
    const pieces = this.#pieces;
    if (!pieces) return null;
    const n = this.#vocab.length;
    const ids = new Set<number>(pieces.addedIds());
    for (let i = 0; i < Math.min(n, 256); i++) ids.add(i);
    for (let i = 0; i < 256; i++) ids.add(Math.floor(((i + 0.5) * n) / 256));
    for (const id of ids) {
      for (const skip of [false, true]) {
        const s = byteLevelStream(pieces, skip);
        if (s.push(id) + s.flush() !== this.#decode([id], skip)) {
          this.#pieces = null;
          return null;
        }
      }
    }
    return pieces;
  }

  /** Id of a token string (a vocabulary entry in its stored form, or an added token's content), or undefined. */
  tokenToId(token: string): number | undefined {
    if (typeof token !== 'string') throw new InvalidArgumentError(`token must be a string, received ${describe(token)}`);
    return this.#tok.token_to_id(token);
  }

  #decode(ids: number[], skip: boolean): string {
    const known = ids.filter((id) => this.#vocab[id] !== undefined);
    if (known.length === 0) return '';
    return this.#tok.decode(known, { skip_special_tokens: skip, clean_up_tokenization_spaces: false });
  }
}

function checkPushed(id: number): void {
  if (!Number.isSafeInteger(id) || id < 0) throw new InvalidArgumentError(`id must be a non-negative integer token id, received ${describe(id)}`);
}

// ---- byte-level streaming ------------------------------------------------------------------------------------------

/** What decode() of a ByteLevel tokenizer treats specially: added tokens (passed through) and the special ones. */
interface ByteLevelSource {
  added: ReadonlySet<string>;
  special: ReadonlySet<string>;
}

/**
 * The ByteLevel facts of a tokenizer, or null when its decode is not byte-level alone: a decoder of type ByteLevel
 * (not in a Sequence) and no end-of-word suffix. Added tokens pass through as their content; special ones (theirs,
 * and tokenizer_config's additional_special_tokens strings) are dropped with skipSpecialTokens, as the library does.
 */
function byteLevelSource(tokJson: Json, config: Json): ByteLevelSource | null {
  const dec = tokJson.decoder as { type?: unknown } | null;
  const model = tokJson.model as { end_of_word_suffix?: unknown };
  if (dec?.type !== 'ByteLevel' || model.end_of_word_suffix) return null;
  const added = new Set<string>();
  const special = new Set<string>();
  for (const t of (Array.isArray(tokJson.added_tokens) ? tokJson.added_tokens : []) as Array<{ content?: unknown; special?: unknown }>) {
    if (typeof t?.content !== 'string') return null;
    added.add(t.content);
    if (t.special) special.add(t.content);
  }
  for (const t of Array.isArray(config.additional_special_tokens) ? (config.additional_special_tokens as unknown[]) : []) if (typeof t === 'string') special.add(t);
  return { added, special };
}

/** GPT-2's bytes_to_unicode reversed (what the ByteLevel decoder maps each character of a token back to). */
const BYTE_OF_CHAR: ReadonlyMap<string, number> = (() => {
  const m = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    m.set(String.fromCodePoint(printable ? b : 256 + extra++), b);
  }
  return m;
})();

const NONE = 1;
const ASCII = 2;
const BYTES = 3;
const ADDED = 4;

/** Per id, computed on first use: nothing (unknown id), ASCII text, UTF-8 bytes, or an added token's content. */
class ByteLevelPieces {
  readonly #vocab: readonly (string | undefined)[];
  readonly #src: ByteLevelSource;
  readonly #kind: Uint8Array;
  readonly #special: Uint8Array;
  readonly #text: Array<string | undefined> = [];
  readonly #bytes: Array<Uint8Array | undefined> = [];

  constructor(vocab: readonly (string | undefined)[], src: ByteLevelSource) {
    this.#vocab = vocab;
    this.#src = src;
    this.#kind = new Uint8Array(vocab.length);
    this.#special = new Uint8Array(vocab.length);
  }

  /** NONE | ASCII | BYTES | ADDED for `id` (NONE: a special token when `skip`). */
  kind(id: number, skip: boolean): number {
    if (id >= this.#kind.length) return NONE;
    if (this.#kind[id] === 0) this.#fill(id);
    return skip && this.#special[id] ? NONE : this.#kind[id]!;
  }

  text(id: number): string {
    return this.#text[id]!;
  }

  bytes(id: number): Uint8Array {
    return this.#bytes[id]!;
  }

  addedIds(): number[] {
    const out: number[] = [];
    this.#vocab.forEach((t, id) => {
      if (t !== undefined && this.#src.added.has(t)) out.push(id);
    });
    return out;
  }

  #fill(id: number): void {
    const t = this.#vocab[id];
    if (t === undefined) {
      this.#kind[id] = NONE;
      return;
    }
    this.#special[id] = this.#src.special.has(t) ? 1 : 0;
    if (this.#src.added.has(t)) {
      this.#kind[id] = ADDED;
      this.#text[id] = t;
      return;
    }
    // a character outside the byte map becomes byte 0, as the library's Uint8Array of undefined does
    const bytes = Uint8Array.from([...t], (c) => BYTE_OF_CHAR.get(c) ?? 0);
    if (bytes.every((b) => b < 0x80)) {
      this.#kind[id] = ASCII;
      this.#text[id] = String.fromCharCode(...bytes);
    } else {
      this.#kind[id] = BYTES;
      this.#bytes[id] = bytes;
    }
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

/**
 * The general streaming decoder's chunks for a byte-level tokenizer without re-decoding: the ids since the last
 * emitted chunk are held as text closed by added tokens plus the open run of bytes after them; their text is emitted
 * when it is not empty and does not end in U+FFFD (an unfinished character, or a bad byte held until the next id).
 */
function byteLevelStream(pieces: ByteLevelPieces, skip: boolean): StreamDecoder {
  let closed = ''; // text of held ids up to the last added token among them
  let run: number[] = []; // bytes of held ids after it
  let held = false;
  const pending = (): string => closed + (run.length ? UTF8.decode(Uint8Array.from(run)) : '');
  return {
    push(id: number): string {
      checkPushed(id);
      const kind = pieces.kind(id, skip);
      if (kind === NONE) return '';
      if (kind === ASCII && !held) return pieces.text(id);
      held = true;
      if (kind === ADDED) {
        closed = pending() + pieces.text(id);
        run = [];
      } else if (kind === ASCII) {
        const t = pieces.text(id);
        for (let i = 0; i < t.length; i++) run.push(t.charCodeAt(i));
      } else {
        for (const b of pieces.bytes(id)) run.push(b);
      }
      const text = pending();
      if (text.length === 0 || text.endsWith('\uFFFD')) return '';
      closed = '';
      run = [];
      held = false;
      return text;
    },
    flush(): string {
      const text = held ? pending() : '';
      closed = '';
      run = [];
      held = false;
      return text;
    },
  };
}

function checkIds(ids: unknown): number[] {
  let list: number[];
  if (Array.isArray(ids)) list = ids as number[];
  else if (ids instanceof Int32Array || ids instanceof Uint32Array) list = Array.from(ids);
  else throw new InvalidArgumentError(`ids must be an array (or Int32Array/Uint32Array) of token ids, received ${describe(ids)}`);
  for (let i = 0; i < list.length; i++) {
    const id = list[i];
    if (!Number.isSafeInteger(id) || (id as number) < 0) throw new InvalidArgumentError(`ids[${i}] must be a non-negative integer token id, received ${describe(id)}`);
  }
  return list;
}

function skipOption(options: unknown): boolean {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
  const skip = (options as { skipSpecialTokens?: unknown }).skipSpecialTokens ?? false;
  if (typeof skip !== 'boolean') throw new InvalidArgumentError(`options.skipSpecialTokens must be a boolean, received ${describe(skip)}`);
  return skip;
}

/** A tokenizer_config token entry: a string, an AddedToken dict {content, ...}, or null/absent. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return undefined;
}

async function readOptional(file: string, signal: AbortSignal | undefined): Promise<string | undefined> {
  try {
    return await fs.promises.readFile(file, signal === undefined ? { encoding: 'utf8' } : { encoding: 'utf8', signal });
  } catch (e) {
    if (signal?.aborted) throw signal.reason;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    throw new CheckpointFormatError(file, undefined, `cannot be read: ${(e as Error).message}`, { cause: e });
  }
}

function parseJsonObject(file: string, text: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new CheckpointFormatError(file, undefined, `is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new CheckpointFormatError(file, undefined, `must hold a JSON object, found ${describe(v)}`);
  return v as Json;
}
