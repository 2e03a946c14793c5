/**
 * Checkpoint reading (safetensors, sharded) and HF config parsing: every real config in ../shared/data parses to
 * the figures its summary states (or is refused as unsupported), a generated sharded checkpoint reads back bit
 * for bit (into JS and into pinned memory), and every malformed-file case gives CheckpointFormatError naming the
 * file and tensor.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

import {
  Checkpoint,
  CheckpointFormatError,
  HostTensor,
  SafetensorsFile,
  UnsupportedModelError,
  expertTensorNames,
  openBackend,
  parseModelConfig,
  writeCheckpoint,
  writeSafetensors,
} from '../lib/index.js';
import { rng } from './harness/ref.js';

const configsPath = path.join(__dirname, '..', '..', '..', 'shared', 'data', 'model-configs.json');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moe-ckpt-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface Entry {
  config: Record<string, unknown>;
  summary: Record<string, unknown>;
}

void test('every real model config parses to the figures of its summary, or is refused as unsupported', () => {
  const all = JSON.parse(fs.readFileSync(configsPath, 'utf8')) as Record<string, Entry>;
  let parsed = 0;
  for (const [name, { config, summary }] of Object.entries(all)) {
    const type = config.model_type as string;
    if (type === 'phimoe' || type.startsWith('llama4')) {
      assert.throws(() => parseModelConfig(config, name), (e: unknown) => e instanceof UnsupportedModelError && e.message.includes(type));
      continue;
    }
    const c = parseModelConfig(config, name);
    parsed++;
    assert.equal(c.hiddenSize, summary.hidden_size, `${name} hidden`);
    assert.equal(c.moeIntermediateSize, summary.moe_intermediate_size, `${name} moe intermediate`);
    assert.equal(c.numExperts, summary.num_experts, `${name} experts`);
    assert.equal(c.topK, summary.num_experts_per_tok, `${name} top-k`);
    assert.equal(c.numLayers, summary.num_hidden_layers, `${name} layers`);
    assert.equal(c.moeLayers.length, summary.num_moe_layers, `${name} MoE layers`);
    assert.equal(c.numHeads, summary.num_attention_heads, `${name} heads`);
    assert.equal(c.numKvHeads, summary.num_key_value_heads, `${name} kv heads`);
    const hd = summary.head_dim as number | { qk: number };
    assert.equal(c.headDim, typeof hd === 'number' ? hd : hd.qk, `${name} head dim`);
    assert.equal(c.sharedExperts?.count ?? 0, summary.num_shared_experts, `${name} shared experts`);
    if (typeof summary.norm_topk_prob === 'boolean') assert.equal(c.router.renormalize, summary.norm_topk_prob, `${name} renormalize`);
    const names = c.family === 'gpt_oss' ? undefined : expertTensorNames(c, c.moeLayers[0]!, 1);
    if (c.family === 'mixtral') assert.equal(names!.gate, `model.layers.${c.moeLayers[0]}.block_sparse_moe.experts.1.w1.weight`);
  }
  assert.ok(parsed >= 12, `only ${parsed} configs parsed`);
  const v2 = parseModelConfig(all['DeepSeek-V2-Lite']!.config);
  assert.deepEqual(v2.moeLayers.slice(0, 2), [1, 2], 'first_k_dense_replace = 1: layer 0 is dense');
  assert.equal(parseModelConfig(all['Qwen1.5-MoE-A2.7B']!.config).sharedExperts?.gated, true);
  assert.equal(parseModelConfig(all['gpt-oss-20b']!.config).router.scoring, 'softmax-topk');
});

void test('transformers 5 configs (rope_parameters), sliding windows and clip_qkv are read', () => {
  const all = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'shared', 'data', 'model-configs.json'), 'utf8')) as Record<string, { config: Record<string, unknown> }>;
  // transformers 5 re-saves rope_theta / rope_scaling as rope_parameters
  const { rope_theta: _t, rope_scaling: rs, ...v2Rest } = all['DeepSeek-V2-Lite']!.config;
  const v2 = parseModelConfig({ ...v2Rest, rope_parameters: { ...(rs as object), rope_type: 'yarn', rope_theta: 10000 } });
  assert.equal(v2.ropeTheta, 10000);
  assert.equal(v2.ropeScaling?.factor, 40);
  const { rope_theta: _q, ...q3Rest } = all['Qwen3-30B-A3B']!.config;
  const q3 = parseModelConfig({ ...q3Rest, rope_parameters: { rope_type: 'default', rope_theta: 1000000 } });
  assert.equal(q3.ropeTheta, 1000000);
  assert.equal(q3.ropeScaling, null);
  // Mixtral applies sliding_window whenever set; Qwen only with use_sliding_window, from max_window_layers on
  assert.equal(parseModelConfig({ ...all['Mixtral-8x7B']!.config, sliding_window: 4096 }).slidingWindow, 4096);
  const qw = parseModelConfig({ ...all['Qwen3-30B-A3B']!.config, use_sliding_window: true, sliding_window: 512, max_window_layers: 40 });
  assert.equal(qw.slidingWindow, 512);
  assert.deepEqual([qw.layerTypes![39], qw.layerTypes![40]], ['full', 'sliding']);
  assert.equal(parseModelConfig({ ...all['OLMoE-1B-7B-0924']!.config, clip_qkv: 8 }).clipQkv, 8);
});

void test('config errors name the field', () => {
  assert.throws(() => parseModelConfig({ model_type: 'mixtral' }, 'x/config.json'), /x\/config\.json: config\.hidden_size is missing/);
  assert.throws(() => parseModelConfig([], 'c'), /must be a JSON object/);
  assert.throws(
    () => parseModelConfig({ model_type: 'mixtral', hidden_size: 8, num_hidden_layers: 1, num_attention_heads: 2, num_local_experts: 4, num_experts_per_tok: 9, intermediate_size: 4, vocab_size: 4 }),
    /num_experts_per_tok must be in \[1, 4\], received 9/,
  );
});

function randomBytes(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

function tinyMoeTensors(): Map<string, HostTensor | { dtype: 'F64'; shape: number[]; bytes: Uint8Array }> {
  const m = new Map<string, HostTensor | { dtype: 'F64'; shape: number[]; bytes: Uint8Array }>();
  let seed = 1;
  const bf16 = (shape: number[]) => {
    const t = new HostTensor('bf16', shape);
    t.data.set(new Uint16Array(randomBytes(t.byteLength, seed++).buffer));
    return t;
  };
  m.set('model.embed_tokens.weight', bf16([97, 64]));
  for (let l = 0; l < 2; l++) {
    m.set(`model.layers.${l}.block_sparse_moe.gate.weight`, bf16([8, 64]));
    for (let e = 0; e < 8; e++) {
      m.set(`model.layers.${l}.block_sparse_moe.experts.${e}.w1.weight`, bf16([48, 64]));
      m.set(`model.layers.${l}.block_sparse_moe.experts.${e}.w3.weight`, bf16([48, 64]));
      m.set(`model.layers.${l}.block_sparse_moe.experts.${e}.w2.weight`, bf16([64, 48]));
    }
    m.set(`model.layers.${l}.input_layernorm.weight`, HostTensor.from('f32', [64], Array.from({ length: 64 }, (_, i) => i / 7)));
  }
  m.set('extra.ids', HostTensor.from('i32', [5], [1, -2, 3, -4, 5]));
  m.set('extra.mask', HostTensor.from('u8', [3], [0, 1, 255]));
  m.set('extra.f64', { dtype: 'F64', shape: [2], bytes: new Uint8Array(new Float64Array([Math.PI, -1]).buffer) });
  m.set('extra.empty', new HostTensor('f32', [0, 3]));
  return m;
}

function bytesOf(t: HostTensor | { bytes: Uint8Array }): Buffer {
  if (t instanceof HostTensor) return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  return Buffer.from(t.bytes);
}

void test('a generated sharded checkpoint of a small MoE reads back bit for bit, into JS and pinned memory', async () => {
  const dir = path.join(tmp, 'sharded');
  const tensors = tinyMoeTensors();
  const files = await writeCheckpoint(dir, tensors, { maxShardBytes: 64 << 10 });
  assert.ok(files.length >= 3, `expected several shards, got ${files.length}`);
  const ckpt = await Checkpoint.open(dir);
  const be = openBackend({ backend: 'cpu' });
  using pinned = be.allocPinned(1 << 20);
  try {
    assert.deepEqual(ckpt.names().sort(), [...tensors.keys()].sort());
    for (const [name, t] of tensors) {
      const info = ckpt.tensor(name);
      if (info.dtype === 'F64') {
        const raw = await ckpt.read(name, new HostTensor('u8', [info.byteLength]));
        assert.ok(bytesOf(raw).equals(bytesOf(t)), name);
        continue;
      }
      const back = await ckpt.read(name);
      assert.deepEqual(back.shape, (t as HostTensor).shape);
      assert.ok(bytesOf(back).equals(bytesOf(t)), `${name} differs`);
      if (info.byteLength > 0 && info.dtype === 'BF16') {
        const view = pinned.tensor('bf16', info.shape, 4096);
        await ckpt.read(name, view);
        assert.ok(bytesOf(view).equals(bytesOf(t)), `${name} differs when read into pinned memory`);
      }
    }
    await assert.rejects(ckpt.read('model.embed_tokens.weight', undefined, { signal: AbortSignal.abort() }), { name: 'AbortError' });
    await assert.rejects(ckpt.read('model.embed_tokens.weight', new HostTensor('f32', [97, 32])), /dst\.dtype must be bf16/);
    await assert.rejects(ckpt.read('nope'), CheckpointFormatError);
  } finally {
    await ckpt.close();
  }
  const single = path.join(tmp, 'single');
  assert.deepEqual(await writeCheckpoint(single, { a: HostTensor.from('f32', [2], [1, 2]) }), ['model.safetensors']);
  const s = await Checkpoint.open(single);
  assert.deepEqual(Array.from((await s.read('a')).data), [1, 2]);
  await s.close();
});

/** Writes a file with a hand-made header (and `data` bytes after it). */
function craft(name: string, header: unknown, data: number, opts: { lengthOverride?: bigint; raw?: string } = {}): string {
  const json = opts.raw ?? JSON.stringify(header);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(opts.lengthOverride ?? BigInt(Buffer.byteLength(json)));
  const f = path.join(tmp, name);
  fs.writeFileSync(f, Buffer.concat([len, Buffer.from(json), Buffer.alloc(data)]));
  return f;
}

void test('malformed files give CheckpointFormatError naming the file and tensor', async () => {
  const t = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });
  const cases: Array<[string, () => string, RegExp, string | undefined]> = [
    ['empty', () => (fs.writeFileSync(path.join(tmp, 'empty.st'), Buffer.alloc(3)), path.join(tmp, 'empty.st')), /truncated: 3 bytes/, undefined],
    ['header past the end', () => craft('h.st', {}, 0, { lengthOverride: 1000n }), /truncated: header says 1000 bytes/, undefined],
    ['header over the limit', () => craft('big.st', {}, 0, { lengthOverride: 2n ** 40n }), /exceeds the limit/, undefined],
    ['not JSON', () => craft('nj.st', null, 0, { raw: '{"a": ' }), /not valid JSON/, undefined],
    ['unknown dtype', () => craft('ud.st', { w: t('Q4_K', [2], [0, 2]) }, 2), /unknown dtype "Q4_K"/, 'w'],
    ['negative shape', () => craft('ns.st', { w: t('F32', [-1], [0, 4]) }, 4), /shape must be an array of non-negative integers/, 'w'],
    ['shape vs bytes', () => craft('sb.st', { w: t('F32', [3], [0, 8]) }, 8), /needs 12 bytes but data_offsets span 8/, 'w'],
    ['truncated data', () => craft('td.st', { w: t('F32', [4], [0, 16]) }, 10), /truncated: data ends at byte/, 'w'],
    ['overlap', () => craft('ov.st', { a: t('F32', [2], [0, 8]), b: t('F32', [2], [4, 12]) }, 12), /overlap those of a/, 'b'],
    ['gap', () => craft('gp.st', { a: t('F32', [1], [0, 4]), b: t('F32', [1], [8, 12]) }, 12), /gap of 4 bytes/, 'b'],
    ['trailing bytes', () => craft('tb.st', { a: t('F32', [1], [0, 4]) }, 9), /5 bytes after the last tensor/, undefined],
    ['bad offsets', () => craft('bo.st', { a: t('F32', [1], [4, 0]) }, 4), /data_offsets must be \[begin, end\]/, 'a'],
  ];
  for (const [what, make, re, tensor] of cases) {
    const file = make();
    await assert.rejects(SafetensorsFile.open(file, { maxHeaderBytes: 1 << 20 }), (e: unknown) => {
      assert.ok(e instanceof CheckpointFormatError, `${what}: ${String(e)}`);
      assert.equal(e.code, 'MOE_CHECKPOINT_FORMAT');
      assert.equal(e.file, file, what);
      assert.equal(e.tensor, tensor, what);
      assert.match(e.message, re, what);
      return true;
    });
  }
  // Sharded: a missing shard and a tensor the index promises but the shard lacks.
  const dir = path.join(tmp, 'broken');
  await writeCheckpoint(dir, { a: HostTensor.from('f32', [1024], new Array(1024).fill(1)), b: HostTensor.from('f32', [1024], new Array(1024).fill(2)) }, { maxShardBytes: 4096 });
  const index = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
  index.weight_map.c = index.weight_map.a!;
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index));
  await assert.rejects(Checkpoint.open(dir), (e: unknown) => e instanceof CheckpointFormatError && e.tensor === 'c' && /absent from this shard/.test(e.message));
  fs.rmSync(path.join(dir, index.weight_map.b!));
  await assert.rejects(Checkpoint.open(dir), (e: unknown) => e instanceof CheckpointFormatError && e.tensor === 'b' && /shard named by the index is missing/.test(e.message));
  await assert.rejects(Checkpoint.open(path.join(tmp, 'nowhere')), /neither model\.safetensors\.index\.json nor model\.safetensors exists/);
  // A header written by writeSafetensors is 8-byte aligned, as the format recommends.
  const f = path.join(tmp, 'aligned.st');
  await writeSafetensors(f, { x: HostTensor.from('u8', [3], [1, 2, 3]) });
  assert.equal(Number(fs.readFileSync(f).readBigUInt64LE(0)) % 8, 0);
});
