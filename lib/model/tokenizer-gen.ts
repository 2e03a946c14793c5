/**
 * A small byte-level BPE tokenizer generator (GPT-2 style) for generated test models: trains merges on a corpus
 * and writes the exact Hugging Face `tokenizer.json` / `tokenizer_config.json` pair that the Rust `tokenizers`
 * library, transformers and @huggingface/tokenizers (ModelTokenizer) all load.
 *
 * Layout of the vocabulary: ids 0..255 are the 256 byte symbols (id = byte value, written with GPT-2's
 * byte-to-unicode map), then one id per learnt merge result in training order, then the special tokens (the last
 * `specialTokens.length` ids, as `added_tokens` with special: true). Training is deterministic: the most frequent
 * adjacent pair wins, ties go to the lexicographically smaller (left, right) pair of token strings.
 *
 * @example
 * const { tokenizerJson, tokenizerConfig } = buildByteLevelBpe({
 *   corpus: DEFAULT_CORPUS, vocabSize: 512, specialTokens: ['<unk>', '<s>', '</s>'],
 *   bosToken: '<s>', eosToken: '</s>', chatTemplate: INST_TEMPLATE,
 * });
 * fs.writeFileSync('tokenizer.json', JSON.stringify(tokenizerJson));
 * fs.writeFileSync('tokenizer_config.json', JSON.stringify(tokenizerConfig));
 */
import { describe } from '../dtype.js';
import { InvalidArgumentError } from '../errors.js';

export interface ByteLevelBpeOptions {
  /** Training text (e.g. DEFAULT_CORPUS). */
  corpus: string;
  /** Total vocabulary: 256 bytes + learnt merges + special tokens. */
  vocabSize: number;
  /** Added special tokens, given the last ids in this order. Must include eosToken and bosToken. */
  specialTokens: string[];
  /** Prepended to every encoded sequence by the post-processor (TemplateProcessing) when given. */
  bosToken?: string;
  eosToken: string;
  /** Jinja chat template written to tokenizer_config.json. */
  chatTemplate?: string;
  /** tokenizer_config.json model_max_length (default 32768). */
  modelMaxLength?: number;
}

export interface ByteLevelBpe {
  /** Contents of tokenizer.json. */
  tokenizerJson: Record<string, unknown>;
  /** Contents of tokenizer_config.json. */
  tokenizerConfig: Record<string, unknown>;
}

/** GPT-2's pre-tokenizer split (what the ByteLevel pre-tokenizer with use_regex applies). */
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** GPT-2's byte-to-unicode map: printable bytes map to themselves, the others to U+0100 upwards. */
export function byteToUnicode(): string[] {
  const map = new Array<string>(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    map[b] = String.fromCharCode(printable ? b : next++);
  }
  return map;
}

const PAIR_SHIFT = 2 ** 24; // pair key = left * 2^24 + right (ids < 2^24, keys exact in a double)

/**
 * Trains a byte-level BPE on `options.corpus` and returns tokenizer.json and tokenizer_config.json contents.
 * Throws InvalidArgumentError for bad options, or when the corpus cannot yield enough merges for vocabSize
 * (every word is already one token): the message says how many tokens it could reach.
 *
 * @example
 * const { tokenizerJson } = buildByteLevelBpe({ corpus: DEFAULT_CORPUS, vocabSize: 512,
 *   specialTokens: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'], eosToken: '<|im_end|>', chatTemplate: CHATML_TEMPLATE });
 * (tokenizerJson.model as { merges: string[] }).merges.length; // ~250 merges: 512 - 256 bytes - 3 specials new tokens
 */
export function buildByteLevelBpe(options: ByteLevelBpeOptions): ByteLevelBpe {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
  const { corpus, vocabSize, specialTokens, bosToken, eosToken, chatTemplate } = options;
  const modelMaxLength = options.modelMaxLength ?? 32768;
  if (typeof corpus !== 'string') throw new InvalidArgumentError(`options.corpus must be a string, received ${describe(corpus)}`);
  if (!Array.isArray(specialTokens) || specialTokens.some((t) => typeof t !== 'string' || t.length === 0)) {
    throw new InvalidArgumentError(`options.specialTokens must be an array of non-empty strings, received ${describe(specialTokens)}`);
  }
  if (new Set(specialTokens).size !== specialTokens.length) {
    throw new InvalidArgumentError(`options.specialTokens must not repeat a token, received ${describe(specialTokens)}`);
  }
  if (!Number.isSafeInteger(vocabSize) || vocabSize < 256 + specialTokens.length || vocabSize >= PAIR_SHIFT) {
    throw new InvalidArgumentError(
      `options.vocabSize must be an integer in [${256 + specialTokens.length}, ${PAIR_SHIFT}) (256 bytes + ${specialTokens.length} special tokens), received ${describe(vocabSize)}`,
    );
  }
  if (typeof eosToken !== 'string' || !specialTokens.includes(eosToken)) {
    throw new InvalidArgumentError(`options.eosToken must be one of options.specialTokens, received ${describe(eosToken)}`);
  }
  if (bosToken !== undefined && (typeof bosToken !== 'string' || !specialTokens.includes(bosToken))) {
    throw new InvalidArgumentError(`options.bosToken must be one of options.specialTokens, received ${describe(bosToken)}`);
  }
  if (chatTemplate !== undefined && typeof chatTemplate !== 'string') {
    throw new InvalidArgumentError(`options.chatTemplate must be a string, received ${describe(chatTemplate)}`);
  }
  if (!Number.isSafeInteger(modelMaxLength) || modelMaxLength < 1) {
    throw new InvalidArgumentError(`options.modelMaxLength must be a positive integer, received ${describe(modelMaxLength)}`);
  }

  const { tokens, merges } = train(corpus, vocabSize - specialTokens.length, new Set(specialTokens));
  const vocab: Record<string, number> = {};
  tokens.forEach((t, id) => (vocab[t] = id));

  const base = tokens.length;
  const added = specialTokens.map((content, i) => ({
    id: base + i,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const idOf = (t: string): number => base + specialTokens.indexOf(t);

  const postProcessor =
    bosToken === undefined
      ? { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: true }
      : {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: bosToken, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [
            { SpecialToken: { id: bosToken, type_id: 0 } },
            { Sequence: { id: 'A', type_id: 0 } },
            { SpecialToken: { id: bosToken, type_id: 1 } },
            { Sequence: { id: 'B', type_id: 1 } },
          ],
          special_tokens: { [bosToken]: { id: bosToken, ids: [idOf(bosToken)], tokens: [bosToken] } },
        };

  const tokenizerJson: Record<string, unknown> = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: postProcessor,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };

  const addedTokensDecoder: Record<string, unknown> = {};
  for (const a of added) {
    addedTokensDecoder[String(a.id)] = { content: a.content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  }
  const tokenizerConfig: Record<string, unknown> = {
    add_prefix_space: false,
    added_tokens_decoder: addedTokensDecoder,
    additional_special_tokens: specialTokens.filter((t) => t !== bosToken && t !== eosToken),
    bos_token: bosToken ?? null,
    ...(chatTemplate === undefined ? {} : { chat_template: chatTemplate }),
    clean_up_tokenization_spaces: false,
    eos_token: eosToken,
    errors: 'replace',
    model_max_length: modelMaxLength,
    pad_token: null,
    tokenizer_class: 'PreTrainedTokenizerFast',
    unk_token: null,
  };
  return { tokenizerJson, tokenizerConfig };
}

/**
 * The BPE trainer: pre-tokenizes with the GPT-2 split, counts unique words, then merges the best pair until
 * `target` tokens exist. Pair counts are kept incrementally (only the words containing the merged pair are
 * re-counted), so a 512-token vocabulary on ~8 KB trains in a few milliseconds.
 */
function train(corpus: string, target: number, specials: ReadonlySet<string>): { tokens: string[]; merges: string[] } {
  const b2u = byteToUnicode();
  const tokens = b2u.slice();
  const idOf = new Map<string, number>(tokens.map((t, i) => [t, i]));
  const merges: string[] = [];

  // Unique words with their frequency, as arrays of token ids.
  const freqOf = new Map<string, number>();
  for (const m of corpus.matchAll(GPT2_SPLIT)) freqOf.set(m[0], (freqOf.get(m[0]) ?? 0) + 1);
  const encoder = new TextEncoder();
  const words: number[][] = [];
  const freqs: number[] = [];
  for (const [w, f] of freqOf) {
    words.push(Array.from(encoder.encode(w)));
    freqs.push(f);
  }

  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>(); // may hold stale word indices; checked when used
  const addPairs = (wi: number, sign: 1 | -1): void => {
    const w = words[wi]!;
    const f = freqs[wi]! * sign;
    for (let i = 0; i + 1 < w.length; i++) {
      const key = w[i]! * PAIR_SHIFT + w[i + 1]!;
      const c = (pairCount.get(key) ?? 0) + f;
      if (c === 0) pairCount.delete(key);
      else pairCount.set(key, c);
      if (sign > 0) {
        let s = pairWords.get(key);
        if (!s) pairWords.set(key, (s = new Set()));
        s.add(wi);
      }
    }
  };
  for (let wi = 0; wi < words.length; wi++) addPairs(wi, 1);

  const banned = new Set<number>(); // pairs whose merge would spell a special token
  while (tokens.length < target) {
    let best = -1;
    let bestCount = 0;
    for (const [key, count] of pairCount) {
      if (count < bestCount || banned.has(key)) continue;
      if (count === bestCount && !pairLess(key, best, tokens)) continue;
      const merged = tokens[Math.floor(key / PAIR_SHIFT)]! + tokens[key % PAIR_SHIFT]!;
      if (specials.has(merged)) {
        banned.add(key);
        continue;
      }
      best = key;
      bestCount = count;
    }
    if (best < 0) {
      throw new InvalidArgumentError(
        `options.corpus yields only ${tokens.length} tokens (every word is a single token), fewer than the ${target} that options.vocabSize needs besides the special tokens: give a larger corpus or a smaller vocabSize`,
      );
    }
    const a = Math.floor(best / PAIR_SHIFT);
    const b = best % PAIR_SHIFT;
    const mergedStr = tokens[a]! + tokens[b]!;
    let m = idOf.get(mergedStr);
    if (m === undefined) {
      m = tokens.length;
      tokens.push(mergedStr);
      idOf.set(mergedStr, m);
    }
    merges.push(`${tokens[a]!} ${tokens[b]!}`);
    const affected = pairWords.get(best)!;
    pairWords.delete(best);
    for (const wi of affected) {
      const w = words[wi]!;
      let has = false;
      for (let i = 0; i + 1 < w.length && !has; i++) has = w[i] === a && w[i + 1] === b;
      if (!has) continue;
      addPairs(wi, -1);
      const out: number[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          out.push(m);
          i++;
        } else out.push(w[i]!);
      }
      words[wi] = out;
      addPairs(wi, 1);
    }
  }
  // Byte ids render through the byte-to-unicode map; merged tokens are already concatenations of those.
  return { tokens, merges };
}

/** Tie-break: true when pair `x` is lexicographically before pair `y` on (left token string, right token string). */
function pairLess(x: number, y: number, tokens: readonly string[]): boolean {
  if (y < 0) return true;
  const xl = tokens[Math.floor(x / PAIR_SHIFT)]!;
  const yl = tokens[Math.floor(y / PAIR_SHIFT)]!;
  if (xl !== yl) return xl < yl;
  return tokens[x % PAIR_SHIFT]! < tokens[y % PAIR_SHIFT]!;
}
