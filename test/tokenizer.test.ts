/**
 * Tokenizers for the model runtime: the byte-level BPE generator (buildByteLevelBpe) writes tokenizer.json /
 * tokenizer_config.json that ModelTokenizer loads; encode agrees with an independent reference BPE encoder written
 * here (GPT-2 byte map + split regex + merges applied by rank), decode inverts encode on varied text, special tokens
 * and bos behave, both chat templates render to hand-built strings, the streaming decoder adds up to decode() and
 * never emits a broken character, and every error case carries its code.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  CHATML_TEMPLATE,
  CheckpointFormatError,
  DEFAULT_CORPUS,
  INST_TEMPLATE,
  InvalidArgumentError,
  ModelTokenizer,
  buildByteLevelBpe,
  type ByteLevelBpeOptions,
} from '../lib/index.js';
import { rng } from './harness/ref.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-tok-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const INST_OPTS: ByteLevelBpeOptions = {
  corpus: DEFAULT_CORPUS,
  vocabSize: 512,
  specialTokens: ['<unk>', '<s>', '</s>'],
  bosToken: '<s>',
  eosToken: '</s>',
  chatTemplate: INST_TEMPLATE,
};
const CHATML_OPTS: ByteLevelBpeOptions = {
  corpus: DEFAULT_CORPUS,
  vocabSize: 512,
  specialTokens: ['<|endoftext|>', '<|im_start|>', '<|im_end|>'],
  eosToken: '<|im_end|>',
  chatTemplate: CHATML_TEMPLATE,
};

interface Generated {
  opts: ByteLevelBpeOptions;
  json: { model: { vocab: Record<string, number>; merges: string[] }; added_tokens: Array<{ id: number; content: string; special: boolean }> };
  dir: string;
  tok: ModelTokenizer;
  ref: RefEncoder;
}

function writeDir(name: string, files: Record<string, unknown>): string {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [f, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, f), typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return dir;
}

async function generate(name: string, opts: ByteLevelBpeOptions): Promise<Generated> {
  const { tokenizerJson, tokenizerConfig } = buildByteLevelBpe(opts);
  const dir = writeDir(name, { 'tokenizer.json': tokenizerJson, 'tokenizer_config.json': tokenizerConfig });
  const json = tokenizerJson as unknown as Generated['json'];
  return { opts, json, dir, tok: await ModelTokenizer.load(dir), ref: new RefEncoder(json, opts.bosToken) };
}

let inst: Generated;
let chatml: Generated;
before(async () => {
  inst = await generate('inst', INST_OPTS);
  chatml = await generate('chatml', CHATML_OPTS);
});

// ---------------------------------------------------------------------------------------------------------------
// Independent reference: GPT-2 byte-level BPE, written from the algorithm's definition.

/** GPT-2 bytes_to_unicode: bytes that are printable Latin-1 keep their code point, the rest take 256, 257, ... */
function refByteMap(): Map<number, string> {
  const keep: number[] = [];
  const ranges: Array<[string, string]> = [['!', '~'], ['\u00a1', '\u00ac'], ['\u00ae', '\u00ff']];
  for (const [lo, hi] of ranges) for (let c = lo.codePointAt(0)!; c <= hi.codePointAt(0)!; c++) keep.push(c);
  const map = new Map<number, string>();
  let extra = 0;
  for (let b = 0; b <= 255; b++) map.set(b, String.fromCodePoint(keep.includes(b) ? b : 256 + extra++));
  return map;
}

class RefEncoder {
  readonly #ranks = new Map<string, number>();
  readonly #vocab: Record<string, number>;
  readonly #specials: Array<{ content: string; id: number }>;
  readonly #bosId: number | undefined;
  readonly #bytes = refByteMap();

  constructor(json: Generated['json'], bos: string | undefined) {
    json.model.merges.forEach((m, rank) => this.#ranks.set(m, rank));
    this.#vocab = json.model.vocab;
    this.#specials = json.added_tokens.map((a) => ({ content: a.content, id: a.id }));
    this.#bosId = bos === undefined ? undefined : json.added_tokens.find((a) => a.content === bos)!.id;
  }

  encode(text: string, addSpecial = true): number[] {
    const out: number[] = addSpecial && this.#bosId !== undefined ? [this.#bosId] : [];
    // Split out special tokens: at each position the longest special that starts there.
    let plain = '';
    for (let i = 0; i < text.length; ) {
      let hit: { content: string; id: number } | undefined;
      for (const s of this.#specials) if (text.startsWith(s.content, i) && (!hit || s.content.length > hit.content.length)) hit = s;
      if (hit) {
        out.push(...this.#encodePlain(plain));
        plain = '';
        out.push(hit.id);
        i += hit.content.length;
      } else {
        plain += text[i];
        i++;
      }
    }
    out.push(...this.#encodePlain(plain));
    return out;
  }

  #encodePlain(text: string): number[] {
    const ids: number[] = [];
    const pieces = text.match(/'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu) ?? [];
    for (const piece of pieces) {
      let parts = [...Buffer.from(piece, 'utf8')].map((b) => this.#bytes.get(b)!);
      // Repeatedly merge the adjacent pair of lowest rank (leftmost on ties) until none is mergeable.
      for (;;) {
        let bestRank = Infinity;
        let at = -1;
        for (let i = 0; i + 1 < parts.length; i++) {
          const r = this.#ranks.get(`${parts[i]} ${parts[i + 1]}`);
          if (r !== undefined && r < bestRank) {
            bestRank = r;
            at = i;
          }
        }
        if (at < 0) break;
        parts = [...parts.slice(0, at), parts[at]! + parts[at + 1]!, ...parts.slice(at + 2)];
      }
      for (const p of parts) {
        const id = this.#vocab[p];
        assert.ok(id !== undefined, `reference: piece ${p} missing from the vocabulary`);
        ids.push(id);
      }
    }
    return ids;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Test strings.

const FIXED = [
  'Hello world!',
  '',
  ' ',
  'a',
  '   leading spaces and trailing   ',
  'line one\nline two\n\n\nthree\r\nfour\t\ttabs',
  'café naïve résumé façade Ångström',
  '日本語のテキストと中文字符 한국어',
  'emoji 🙂 👍🏽 👨‍👩‍👧 🇫🇷 ❤️',
  '12345 3.14159 1,000,000 -42 0x1F 2026-11-25 10:30',
  'def f(x):\n    return x**2  # square\n\nconsole.log(`${a} + ${b}`);',
  "don't I'm we've they'll she'd it's THEY'RE",
  '{"name": "demo", "port": 8080, "debug": false}',
  '\u00a0non-breaking\u2003em space\u3000ideographic',
  'control \u0001\u0007\u001b[0m chars \u007f',
  'x'.repeat(300),
  '<s>special</s> <unk> inside text',
  '<|im_start|>user\nhi<|im_end|>',
];

/** Random strings mixing every kind of character (seeded). */
function randomStrings(count: number, seed: number): string[] {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const words = DEFAULT_CORPUS.split(/\s+/).filter((w) => w.length > 0);
  const gens: Array<() => string> = [
    () => pick(words),
    () => ` ${pick(words)}`,
    () => String.fromCharCode(0x20 + Math.floor(r() * 95)),
    () => pick([' ', '  ', '\n', '\t', '\r\n', '\n\n', '   ']),
    () => pick(['é', 'à', 'ü', 'ß', 'ñ', 'ø', 'Ω', 'ж', 'ك', 'ॐ']),
    () => String.fromCodePoint(0x4e00 + Math.floor(r() * 0x5000)),
    () => pick(['🙂', '👍🏽', '👨‍👩‍👧', '🚀', '🇯🇵', '✨', '𝔘']),
    () => String(Math.floor(r() * 100000)),
    () => pick(["'s", "'ll", "'t", "'"]),
    () => pick(['<s>', '</s>', '<unk>', '<|im_start|>', '<|im_end|>', '<|endoftext|>', '<s', '|>']),
  ];
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    let s = '';
    const n = 1 + Math.floor(r() * 30);
    for (let j = 0; j < n; j++) s += pick(gens)();
    out.push(s);
  }
  return out;
}

const CORPUS_LINES = DEFAULT_CORPUS.split('\n').slice(0, 60);

// ---------------------------------------------------------------------------------------------------------------

void test('generated tokenizer.json has the HF layout: 256 byte ids, merges in vocab, specials last', () => {
  for (const g of [inst, chatml]) {
    const { tokenizerJson: j, tokenizerConfig: c } = buildByteLevelBpe(g.opts);
    assert.equal(j.version, '1.0');
    const model = j.model as { type: string; vocab: Record<string, number>; merges: string[] };
    assert.equal(model.type, 'BPE');
    assert.deepEqual(j.pre_tokenizer, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true });
    assert.equal((j.decoder as { type: string }).type, 'ByteLevel');
    const bytes = refByteMap();
    for (let b = 0; b < 256; b++) assert.equal(model.vocab[bytes.get(b)!], b, `byte ${b}`);
    const specials = g.opts.specialTokens;
    assert.equal(Object.keys(model.vocab).length, g.opts.vocabSize - specials.length);
    const ids = new Set(Object.values(model.vocab));
    assert.equal(ids.size, g.opts.vocabSize - specials.length, 'vocab ids are unique');
    for (let id = 0; id < ids.size; id++) assert.ok(ids.has(id), `vocab id ${id} present`);
    for (const m of model.merges) {
      const [a, b, ...rest] = m.split(' ');
      assert.equal(rest.length, 0);
      assert.ok(model.vocab[a!] !== undefined && model.vocab[b!] !== undefined && model.vocab[a! + b!] !== undefined, `merge ${m} in vocab`);
    }
    const added = j.added_tokens as Array<{ id: number; content: string; special: boolean }>;
    assert.deepEqual(
      added.map((a) => [a.id, a.content, a.special]),
      specials.map((s, i) => [g.opts.vocabSize - specials.length + i, s, true]),
    );
    assert.equal(c.tokenizer_class, 'PreTrainedTokenizerFast');
    assert.equal(c.eos_token, g.opts.eosToken);
    assert.equal(c.bos_token, g.opts.bosToken ?? null);
    assert.equal(c.chat_template, g.opts.chatTemplate);
    assert.equal(c.model_max_length, 32768);
    const decoderEntries = c.added_tokens_decoder as Record<string, { content: string; special: boolean }>;
    for (const a of added) assert.deepEqual([decoderEntries[String(a.id)]!.content, decoderEntries[String(a.id)]!.special], [a.content, true]);
    assert.equal((j.post_processor as { type: string }).type, g.opts.bosToken === undefined ? 'ByteLevel' : 'TemplateProcessing');
    // Deterministic: a second run gives the same files.
    assert.deepEqual(buildByteLevelBpe(g.opts), { tokenizerJson: j, tokenizerConfig: c });
    assert.equal(g.tok.vocabSize, g.opts.vocabSize);
  }
});

void test('generation is fast: 512 tokens on the ~8 KB default corpus well under a second', () => {
  assert.ok(DEFAULT_CORPUS.length > 6000, `corpus is ${DEFAULT_CORPUS.length} chars`);
  const t0 = performance.now();
  buildByteLevelBpe(INST_OPTS);
  const ms = performance.now() - t0;
  assert.ok(ms < 1000, `buildByteLevelBpe took ${ms.toFixed(0)} ms`);
});

void test('decode(encode(s)) === s for ASCII, accents, CJK, emoji, whitespace runs, digits, code and random text', () => {
  const all = [...FIXED, ...CORPUS_LINES, ...randomStrings(300, 7)];
  for (const g of [inst, chatml]) {
    for (const s of all) {
      assert.equal(g.tok.decode(g.tok.encode(s, { addSpecialTokens: false })), s, JSON.stringify(s));
      assert.equal(g.tok.decode(g.tok.encode(s)), (g.opts.bosToken ?? '') + s, JSON.stringify(s));
    }
  }
});

void test('encode agrees with the independent reference BPE encoder', () => {
  const all = [...FIXED, ...CORPUS_LINES, ...randomStrings(400, 11)];
  let tokens = 0;
  for (const g of [inst, chatml]) {
    for (const s of all) {
      const ids = g.tok.encode(s, { addSpecialTokens: false });
      assert.deepEqual(ids, g.ref.encode(s, false), JSON.stringify(s));
      assert.deepEqual(g.tok.encode(s), g.ref.encode(s, true), JSON.stringify(s));
      tokens += ids.length;
    }
  }
  // The merges do real work: ordinary prose takes far fewer tokens than bytes.
  const prose = CORPUS_LINES.join('\n');
  assert.ok(inst.tok.encode(prose).length < Buffer.byteLength(prose) / 1.5, 'merges compress the corpus');
  assert.ok(tokens > 0);
});

void test('special tokens encode to single ids; bos added only when configured; skipSpecialTokens drops them', () => {
  for (const g of [inst, chatml]) {
    for (const a of g.json.added_tokens) {
      assert.deepEqual(g.tok.encode(a.content, { addSpecialTokens: false }), [a.id]);
      assert.equal(g.tok.tokenToId(a.content), a.id);
      assert.equal(g.tok.decode([a.id]), a.content);
      assert.equal(g.tok.decode([a.id], { skipSpecialTokens: true }), '');
    }
  }
  const idOf = (g: Generated, s: string): number => g.json.added_tokens.find((a) => a.content === s)!.id;
  assert.equal(inst.tok.bosTokenId, idOf(inst, '<s>'));
  assert.deepEqual(inst.tok.eosTokenIds, [idOf(inst, '</s>')]);
  assert.equal(chatml.tok.bosTokenId, null);
  assert.deepEqual(chatml.tok.eosTokenIds, [idOf(chatml, '<|im_end|>')]);

  const body = inst.tok.encode('Hello there', { addSpecialTokens: false });
  assert.deepEqual(inst.tok.encode('Hello there'), [idOf(inst, '<s>'), ...body]);
  assert.deepEqual(inst.tok.encode(''), [idOf(inst, '<s>')]);
  assert.deepEqual(chatml.tok.encode('Hello there'), chatml.tok.encode('Hello there', { addSpecialTokens: false }));
  assert.deepEqual(chatml.tok.encode(''), []);

  const ids = [idOf(inst, '<s>'), ...body, idOf(inst, '</s>')];
  assert.equal(inst.tok.decode(ids), '<s>Hello there</s>');
  assert.equal(inst.tok.decode(ids, { skipSpecialTokens: true }), 'Hello there');
  assert.equal(inst.tok.decode(Int32Array.from(ids), { skipSpecialTokens: true }), 'Hello there');
  assert.equal(inst.tok.decode([]), '');
  // Ids the tokenizer does not know (a model's padded vocabulary) decode to nothing, as in the Rust library.
  assert.equal(inst.tok.decode([...body, 512, 100000]), 'Hello there');
});

void test('chat templates render the hand-built strings', () => {
  const conv = [
    { role: 'user', content: 'What is 2+2?' },
    { role: 'assistant', content: 'It is 4.' },
    { role: 'user', content: 'And 3+3?' },
  ];
  assert.equal(
    chatml.tok.applyChatTemplate(conv),
    '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n',
  );
  assert.equal(
    chatml.tok.applyChatTemplate([{ role: 'system', content: 'Be brief.' }, conv[0]!], { addGenerationPrompt: false }),
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n',
  );
  assert.equal(chatml.tok.applyChatTemplate([]), '<|im_start|>assistant\n');
  assert.equal(inst.tok.applyChatTemplate(conv), '<s>[INST] What is 2+2? [/INST]It is 4.</s>[INST] And 3+3? [/INST]');
  assert.equal(inst.tok.applyChatTemplate(conv.slice(0, 2), { addGenerationPrompt: false }), '<s>[INST] What is 2+2? [/INST]It is 4.</s>');
  assert.ok(inst.tok.hasChatTemplate && chatml.tok.hasChatTemplate);

  // The rendered prompt tokenizes with the specials as single ids (no doubled bos with addSpecialTokens: false).
  const ids = inst.tok.encode(inst.tok.applyChatTemplate(conv), { addSpecialTokens: false });
  assert.equal(ids[0], inst.tok.bosTokenId);
  assert.equal(ids.filter((i) => i === inst.tok.bosTokenId).length, 1);
  assert.equal(ids.filter((i) => i === inst.tok.eosTokenIds[0]).length, 1);

  // Roles out of order raise the template's error as InvalidArgumentError.
  for (const bad of [[{ role: 'assistant', content: 'hi' }], [conv[0]!, conv[0]!], [{ role: 'system', content: 'x' }]]) {
    assert.throws(
      () => inst.tok.applyChatTemplate(bad),
      (e: unknown) => e instanceof InvalidArgumentError && e.code === 'MOE_INVALID_ARGUMENT' && /roles must alternate|Only user and assistant/.test(e.message),
    );
  }
});

void test('chat_template.jinja wins over tokenizer_config; a template list uses "default"; none -> InvalidArgumentError', async () => {
  const { tokenizerJson, tokenizerConfig } = buildByteLevelBpe(CHATML_OPTS);
  const jinjaDir = writeDir('jinja', {
    'tokenizer.json': tokenizerJson,
    'tokenizer_config.json': tokenizerConfig,
    'chat_template.jinja': '{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}',
  });
  const a = await ModelTokenizer.load(jinjaDir);
  assert.equal(a.applyChatTemplate([{ role: 'user', content: 'hi' }]), '[user] hi\n[assistant]');

  const listDir = writeDir('list', {
    'tokenizer.json': tokenizerJson,
    'tokenizer_config.json': { ...tokenizerConfig, chat_template: [{ name: 'tool_use', template: 'TOOLS' }, { name: 'default', template: 'DEFAULT {{ eos_token }}' }] },
  });
  assert.equal((await ModelTokenizer.load(listDir)).applyChatTemplate([]), 'DEFAULT <|im_end|>');

  const noDefault = writeDir('nodefault', {
    'tokenizer.json': tokenizerJson,
    'tokenizer_config.json': { ...tokenizerConfig, chat_template: [{ name: 'tool_use', template: 'TOOLS' }] },
  });
  const nd = await ModelTokenizer.load(noDefault);
  assert.equal(nd.hasChatTemplate, false);
  assert.throws(() => nd.applyChatTemplate([]), (e: unknown) => e instanceof InvalidArgumentError && /no chat template.*tool_use/.test(e.message));

  const bare = await ModelTokenizer.load(writeDir('bare', { 'tokenizer.json': tokenizerJson }));
  assert.equal(bare.hasChatTemplate, false);
  assert.equal(bare.bosTokenId, null);
  assert.deepEqual(bare.eosTokenIds, []);
  assert.throws(
    () => bare.applyChatTemplate([{ role: 'user', content: 'x' }]),
    (e: unknown) => e instanceof InvalidArgumentError && e.code === 'MOE_INVALID_ARGUMENT' && /no chat template/.test(e.message),
  );
  assert.equal(bare.decode(bare.encode('still works')), 'still works');
});

/** Runs ids through a fresh streaming decoder; checks the chunks against decode(all). */
function checkStream(g: Generated, ids: readonly number[], skipSpecialTokens: boolean): void {
  const d = g.tok.decoder({ skipSpecialTokens });
  const chunks = ids.map((id) => d.push(id));
  chunks.push(d.flush());
  const full = g.tok.decode(ids, { skipSpecialTokens });
  assert.equal(chunks.join(''), full, `ids ${JSON.stringify(ids)}`);
  if (!full.includes('\uFFFD')) for (const c of chunks) assert.ok(!c.includes('\uFFFD'), `chunk ${JSON.stringify(c)} of ${JSON.stringify(full)}`);
  for (const c of chunks) assert.ok(!/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(c), 'no lone surrogate in a chunk');
}

void test('decoder(): pushes + flush equal decode(all) and never emit a broken character', () => {
  const texts = [
    '🙂👍🏽👨‍👩‍👧 emoji, then 日本語のテキスト and 中文字符, then é à ü 한국어.',
    ...FIXED,
    ...randomStrings(150, 23),
  ];
  let held = 0;
  for (const g of [inst, chatml]) {
    for (const t of texts) {
      const ids = g.tok.encode(t);
      for (const skip of [false, true]) checkStream(g, ids, skip);
      // Multi-byte characters split over several tokens are held back until their last byte arrives.
      const d = g.tok.decoder();
      for (const id of ids) if (d.push(id) === '') held++;
      d.flush();
    }
    const r = rng(g === inst ? 5 : 6);
    for (let n = 0; n < 200; n++) {
      const ids = Array.from({ length: 1 + Math.floor(r() * 40) }, () => Math.floor(r() * g.opts.vocabSize));
      checkStream(g, ids, false);
      checkStream(g, ids, true);
    }
  }
  assert.ok(held > 0, 'some pushes had to wait for the rest of a character');

  // Byte by byte: a 4-byte emoji as its four single-byte tokens arrives whole on the fourth push.
  const d = chatml.tok.decoder();
  const bytes = [...Buffer.from('🙂', 'utf8')];
  assert.deepEqual(bytes.map((b) => d.push(b)), ['', '', '', '🙂']);
  assert.equal(d.flush(), '');
  // An unfinished character at the end is flushed as U+FFFD, as decode() gives it.
  const e = chatml.tok.decoder();
  assert.equal(e.push(bytes[0]!) + e.push(bytes[1]!), '');
  assert.equal(e.flush(), chatml.tok.decode(bytes.slice(0, 2)));
  assert.throws(() => e.push(-1), (err: unknown) => err instanceof InvalidArgumentError && /id must be a non-negative integer/.test(err.message));
});

/**
 * The streaming decoder's chunks as the general algorithm defines them, from decode() alone: the ids since the last
 * chunk are decoded (with those of the chunk before, for start-dependent decoders) and their new text is emitted
 * unless it is empty or ends in U+FFFD.
 */
function refChunks(tok: ModelTokenizer, ids: readonly number[], skipSpecialTokens: boolean): string[] {
  const o = { skipSpecialTokens };
  const dec = (a: number[]) => (a.length ? tok.decode(a, o) : '');
  const chunks: string[] = [];
  let prefix = 0;
  let read = 0;
  for (let i = 0; i < ids.length; i++) {
    const before = dec(ids.slice(prefix, read));
    const now = dec(ids.slice(prefix, i + 1));
    if (now.length <= before.length || now.endsWith('\uFFFD')) {
      chunks.push('');
      continue;
    }
    chunks.push(now.slice(before.length));
    prefix = read;
    read = i + 1;
  }
  chunks.push(read === ids.length ? '' : dec(ids.slice(prefix)).slice(dec(ids.slice(prefix, read)).length));
  return chunks;
}

void test('decoder(): a byte-level tokenizer streams chunk for chunk as the general algorithm over decode()', async () => {
  // added tokens (special and not), tokenizer_config's additional_special_tokens (a plain vocabulary entry), and a
  // vocabulary entry with a character outside GPT-2's byte map
  const { tokenizerJson, tokenizerConfig } = buildByteLevelBpe(CHATML_OPTS);
  const json = structuredClone(tokenizerJson) as unknown as Generated['json'];
  const next = Math.max(...Object.values(json.model.vocab), ...json.added_tokens.map((t) => t.id)) + 1;
  json.model.vocab['x\u4e16y'] = next;
  json.added_tokens.push({ id: next + 1, content: '<tool>', special: false, single_word: false, lstrip: false, rstrip: false, normalized: false } as Generated['json']['added_tokens'][0]);
  const plain = Object.keys(json.model.vocab).find((t) => /^[a-z]{2,}$/.test(t))!;
  const dir = writeDir('bytelevel-extra', { 'tokenizer.json': json, 'tokenizer_config.json': { ...(tokenizerConfig as object), additional_special_tokens: [plain, { content: 'ignored' }] } });
  const extra = await ModelTokenizer.load(dir);
  const sp = await ModelTokenizer.load(writeDir('sp-streaming', { 'tokenizer.json': sentencePieceStyleJson() }));
  assert.equal(sp.streaming, 'general');
  for (const tok of [inst.tok, chatml.tok, extra]) {
    assert.equal(tok.streaming, 'byte-level');
    const r = rng(41);
    const texts = ['🙂👍🏽 日本語 é', ...FIXED.slice(0, 8), ...randomStrings(40, 42)];
    const seqs = texts.map((t) => tok.encode(t));
    for (let n = 0; n < 300; n++) seqs.push(Array.from({ length: 1 + Math.floor(r() * 30) }, () => Math.floor(r() * (tok.vocabSize + 4))));
    // bytes of a character split over pushes, a lone continuation byte, an unfinished character at the end
    seqs.push([...Buffer.from('é🙂', 'utf8')], [0x80, 0x41, 0xe4, 0xb8], [0xf0, 0x9f, next + 1, 0x41]);
    for (const ids of seqs) {
      for (const skip of [false, true]) {
        const d = tok.decoder({ skipSpecialTokens: skip });
        const got = ids.map((id) => d.push(id));
        got.push(d.flush());
        assert.deepEqual(got, refChunks(tok, ids, skip), `ids ${JSON.stringify(ids)} skip ${skip}`);
      }
    }
  }
  assert.equal(extra.decode([next]), 'x\u0000y', "a character outside the byte map decodes to byte 0 (the library's rule)");
  assert.equal(extra.decode([extra.tokenToId(plain)!], { skipSpecialTokens: true }), '', 'additional_special_tokens are skipped');
});

void test('errors: typed, with codes, naming the file or argument', async () => {
  // tokenizer.json missing / not JSON / not a tokenizer; tokenizer_config.json not JSON.
  const empty = writeDir('empty', {});
  await assert.rejects(
    ModelTokenizer.load(empty),
    (e: unknown) => e instanceof CheckpointFormatError && e.code === 'MOE_CHECKPOINT_FORMAT' && e.file === path.join(empty, 'tokenizer.json') && /missing/.test(e.message),
  );
  const broken = writeDir('broken', { 'tokenizer.json': '{"version": "1.0", "model": ' });
  await assert.rejects(ModelTokenizer.load(broken), (e: unknown) => e instanceof CheckpointFormatError && /tokenizer\.json: is not valid JSON/.test(e.message));
  const notTok = writeDir('nottok', { 'tokenizer.json': { version: '1.0' } });
  await assert.rejects(ModelTokenizer.load(notTok), (e: unknown) => e instanceof CheckpointFormatError && /no "model" object/.test(e.message));
  const badModel = writeDir('badmodel', { 'tokenizer.json': { version: '1.0', model: { type: 'NoSuchModel' } } });
  await assert.rejects(ModelTokenizer.load(badModel), (e: unknown) => e instanceof CheckpointFormatError && /tokenizer\.json: cannot be loaded/.test(e.message));
  const { tokenizerJson } = buildByteLevelBpe(CHATML_OPTS);
  const badCfg = writeDir('badcfg', { 'tokenizer.json': tokenizerJson, 'tokenizer_config.json': '{ nope' });
  await assert.rejects(
    ModelTokenizer.load(badCfg),
    (e: unknown) => e instanceof CheckpointFormatError && e.file === path.join(badCfg, 'tokenizer_config.json') && /not valid JSON/.test(e.message),
  );
  const badTpl = writeDir('badtpl', { 'tokenizer.json': tokenizerJson, 'chat_template.jinja': '{% for m in messages %}unterminated' });
  const bt = await ModelTokenizer.load(badTpl);
  assert.throws(() => bt.applyChatTemplate([]), (e: unknown) => e instanceof CheckpointFormatError && e.file === path.join(badTpl, 'chat_template.jinja'));

  // Aborted before the read: rejects with the signal's reason.
  const ac = new AbortController();
  ac.abort(new Error('stop now'));
  await assert.rejects(ModelTokenizer.load(chatml.dir, { signal: ac.signal }), /stop now/);

  // Bad arguments.
  const isArg = (re: RegExp) => (e: unknown) => e instanceof InvalidArgumentError && e.code === 'MOE_INVALID_ARGUMENT' && re.test(e.message);
  await assert.rejects(ModelTokenizer.load(''), isArg(/dir must be a non-empty path string, received ""/));
  const t = chatml.tok;
  assert.throws(() => t.encode(42 as unknown as string), isArg(/text must be a string, received 42/));
  assert.throws(() => t.encode('x', { addSpecialTokens: 'yes' as unknown as boolean }), isArg(/options\.addSpecialTokens must be a boolean, received "yes"/));
  assert.throws(() => t.decode('abc' as unknown as number[]), isArg(/ids must be an array .* received "abc"/));
  assert.throws(() => t.decode([1, -1]), isArg(/ids\[1\] must be a non-negative integer token id, received -1/));
  assert.throws(() => t.decode([1.5]), isArg(/ids\[0\] must be a non-negative integer token id, received 1\.5/));
  assert.throws(() => t.decode([1], { skipSpecialTokens: 1 as unknown as boolean }), isArg(/options\.skipSpecialTokens must be a boolean/));
  assert.throws(() => t.applyChatTemplate('hi' as unknown as []), isArg(/messages must be an array/));
  assert.throws(() => t.applyChatTemplate([{ role: 'user' } as unknown as { role: string; content: string }]), isArg(/messages\[0\]\.content must be a string, received undefined/));
  assert.throws(() => t.applyChatTemplate([], { addGenerationPrompt: 'no' as unknown as boolean }), isArg(/options\.addGenerationPrompt must be a boolean/));

  // Generator options.
  assert.throws(() => buildByteLevelBpe({ ...CHATML_OPTS, vocabSize: 100 }), isArg(/options\.vocabSize must be an integer in \[259, .* received 100/));
  assert.throws(() => buildByteLevelBpe({ ...CHATML_OPTS, eosToken: '</s>' }), isArg(/options\.eosToken must be one of options\.specialTokens/));
  assert.throws(() => buildByteLevelBpe({ ...INST_OPTS, bosToken: '<bos>' }), isArg(/options\.bosToken must be one of options\.specialTokens/));
  assert.throws(() => buildByteLevelBpe({ ...CHATML_OPTS, specialTokens: ['<|im_end|>', '<|im_end|>'] }), isArg(/must not repeat/));
  assert.throws(() => buildByteLevelBpe({ ...CHATML_OPTS, corpus: 'tiny corpus' }), isArg(/corpus yields only \d+ tokens/));
  assert.throws(() => buildByteLevelBpe({ ...CHATML_OPTS, modelMaxLength: 0 }), isArg(/options\.modelMaxLength must be a positive integer/));
});

void test('a merge never spells a special token; specials in the corpus still encode as one id', async () => {
  // '##' is one GPT-2 pre-token, so without the rule the trainer would learn it as an ordinary token.
  const corpus = `${DEFAULT_CORPUS}\n${'##\n'.repeat(300)}`;
  const g = await generate('specials-in-corpus', { ...INST_OPTS, specialTokens: ['<s>', '</s>', '##'], corpus });
  assert.equal(g.json.model.vocab['##'], undefined, '## is not a learnt token');
  const text = 'a ## b\n##\n###';
  const ids = g.tok.encode(text, { addSpecialTokens: false });
  assert.deepEqual(ids, g.ref.encode(text, false));
  assert.equal(ids.filter((i) => i === g.tok.tokenToId('##')).length, 3);
  assert.equal(g.tok.decode(ids), text);
});

/** A hand-written Llama/Mixtral-style tokenizer.json: '▁' normalizer, byte-fallback BPE, Replace/ByteFallback/Fuse/Strip decoder. */
function sentencePieceStyleJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  for (const p of ['▁', 'H', 'e', 'l', 'o', 'w', 'r', 'd', 'é', 'll', 'llo', 'ello', '▁w', 'or', '▁wor', 'ld', '▁world', '▁H', '▁Hello']) {
    vocab[p] = Object.keys(vocab).length;
  }
  const bos = { SpecialToken: { id: '<s>', type_id: 0 } };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: ['<unk>', '<s>', '</s>'].map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: { type: 'TemplateProcessing', single: [bos, { Sequence: { id: 'A', type_id: 0 } }], pair: [], special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } } },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: ['l l', 'll o', 'e llo', '▁ w', 'o r', '▁w or', 'l d', '▁wor ld', '▁ H', '▁H ello'],
    },
  };
}

void test('a SentencePiece-style tokenizer.json (byte fallback, Strip decoder) loads, round-trips and streams consistently', async () => {
  const dir = writeDir('sp', { 'tokenizer.json': sentencePieceStyleJson(), 'tokenizer_config.json': { bos_token: '<s>', eos_token: '</s>' } });
  const tok = await ModelTokenizer.load(dir);
  assert.equal(tok.bosTokenId, 1);
  assert.deepEqual(tok.eosTokenIds, [2]);
  const vocab = (sentencePieceStyleJson().model as { vocab: Record<string, number> }).vocab;
  assert.deepEqual(tok.encode('Hello world'), [1, vocab['▁Hello'], vocab['▁world']]);
  for (const s of ['Hello world', 'Hello world 🙂 é世 xyz', ' lead', 'a  b', '世界']) {
    const ids = tok.encode(s);
    assert.equal(tok.decode(ids, { skipSpecialTokens: true }), s);
    const d = tok.decoder({ skipSpecialTokens: true });
    const chunks = ids.map((id) => d.push(id));
    chunks.push(d.flush());
    assert.equal(chunks.join(''), s, JSON.stringify(chunks));
    for (const c of chunks) assert.ok(!c.includes('\uFFFD'), JSON.stringify(chunks));
  }
});
