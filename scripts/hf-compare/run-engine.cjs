#!/usr/bin/env node
/**
 * run-engine.cjs: runs the moe-offload runtime (CPU backend) on one HF checkpoint directory for compare.py.
 *
 *   node scripts/hf-compare/run-engine.cjs DIR IDS_JSON OUT_PREFIX [TEXT]
 *
 * IDS_JSON is a JSON array of token ids. Writes
 *   OUT_PREFIX.logits.f32   raw little-endian float32 logits [T, V] (row-major), from model.logits(ids)
 *   OUT_PREFIX.json         { ok, T, V, family, parsedConfig, routing: { moeLayers, ids: [[T*k]...] }, encoded?, ms }
 * When loading or running fails (e.g. UnsupportedModelError for a family the runtime does not execute), OUT_PREFIX.json
 * holds { ok: false, error: { name, code, message } } and the process still exits 0, so the caller records it.
 * With TEXT, `encoded` is model.encode(TEXT) (a tokenizer cross-check against the Python `tokenizers` library).
 * Also writes the parsed config (parseModelConfig of DIR/config.json) even when the runtime refuses the family.
 *
 * The native build comes from MOE_OFFLOAD_PREBUILD (e.g. /work/main/.h-norm), as everywhere in this repo.
 * HFC_ISA=scalar|avx2|avx512|avx512bf16 picks the CPU kernel tier (default: the best the CPU has).
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const lib = require(path.join(__dirname, '..', '..', 'dist', 'lib', 'index.js'));

async function main() {
  const [dir, idsFile, outPrefix, text] = process.argv.slice(2);
  if (!dir || !idsFile || !outPrefix) {
    console.error('usage: run-engine.cjs DIR IDS_JSON OUT_PREFIX [TEXT]');
    process.exit(2);
  }
  const ids = JSON.parse(fs.readFileSync(idsFile, 'utf8'));
  const report = { ok: false, dir };
  try {
    const raw = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    report.parsedConfig = lib.parseModelConfig(raw, path.join(dir, 'config.json'));
  } catch (e) {
    report.parseError = { name: e.name, code: e.code, message: e.message };
  }
  let model;
  try {
    const t0 = performance.now();
    const isa = process.env.HFC_ISA;
    const backend = isa ? lib.openBackend({ backend: 'cpu', isa }) : 'cpu';
    model = await lib.loadModel(dir, { backend });
    report.loadMs = performance.now() - t0;
    report.backend = model.backend.name;
    report.family = model.config.family;
    if (text !== undefined) report.encoded = model.encode(text);
    const routing = { ids: [], probs: [], gates: [] };
    const t1 = performance.now();
    const logits = await model.logits(ids, { routing }); // HostTensor f32 [T, V]
    report.forwardMs = performance.now() - t1;
    const [T, V] = logits.shape;
    report.T = T;
    report.V = V;
    fs.writeFileSync(`${outPrefix}.logits.f32`, Buffer.from(logits.data.buffer, logits.data.byteOffset, logits.data.byteLength));
    report.routing = {
      moeLayers: model.config.moeLayers,
      topK: model.config.topK,
      ids: routing.ids.map((a) => Array.from(a)), // per MoE layer: [T * k], expert ids
      probs: routing.probs.map((a) => Array.from(a)), // per MoE layer: [T * k], routing weights
    };
    report.ok = true;
  } catch (e) {
    report.error = { name: e.name, code: e.code, message: e.message };
  } finally {
    if (model) model.dispose();
  }
  fs.writeFileSync(`${outPrefix}.json`, JSON.stringify(report));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
