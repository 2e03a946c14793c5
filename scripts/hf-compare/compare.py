#!/usr/bin/env python3
"""
compare.py: the moe-offload runtime against Hugging Face `transformers` itself (issue 7's strongest check).

For each family (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, plus probe variants that switch on config features the
presets leave off):
  1. `moe-offload make-model --preset P` writes our tiny preset (config.json + tokenizer files);
  2. transformers builds the model from that config.json (AutoConfig / AutoModelForCausalLM.from_config, seeded),
     re-initialises it so activations are O(1) (the default 0.02 init makes every logit ~0), casts it to bfloat16 and
     saves it with save_pretrained (safetensors, several shards) into a new directory; our tokenizer files are copied;
  3. HF reference logits: the saved bf16 weights loaded as float32 and as float64 (eager attention, eager experts);
     HF bf16 (defaults, as users run it) shows the error of bf16 inference itself;
  4. our runtime (scripts/hf-compare/run-engine.cjs, CPU backend) runs the same ids on the HF directory as saved,
     and, where transformers 5 wrote `rope_parameters` instead of the top-level `rope_theta` our parser reads, on a
     copy whose config.json also has the legacy keys (so numerics and the config-key issue are measured apart);
  5. compare: relative error ||ours - hf|| / ||hf|| overall and per position, argmax agreement, routing agreement
     (HF's router top-k ids captured with forward hooks vs ours from model.logits(ids, { routing })).
DeepSeek-V2 and gpt-oss go through the same steps; where our runtime refuses the family (UnsupportedModelError),
the HF checkpoint, HF f32 logits (hf_f32_logits.npy in the work directory) and our parser's / loader's verdict are kept.

Usage (see README.md):
  MOE_OFFLOAD_PREBUILD=/work/main/.h-norm /work/venv-hf/bin/python scripts/hf-compare/compare.py \
      --out bench/results/hf-compare-2026-11-25.json
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

transformers.utils.logging.disable_progress_bar()

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
CLI = os.path.join(REPO, 'dist', 'lib', 'cli.js')
RUN_ENGINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'run-engine.cjs')
TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json']
TEXT = ('The quick brown fox jumps over the lazy dog while 42 experts route tokens: '
        'alpha, beta, gamma and delta all agree.')

# name -> preset, config overrides, what the variant exercises, runtime executes it
VARIANTS = {
    'mixtral': dict(preset='tiny-mixtral', overrides={}, note='renormalised top-2, GQA 4:2'),
    'qwen2_moe': dict(preset='tiny-qwen2-moe', overrides={}, note='top-4 of 16, q/k/v bias, sigmoid-gated shared expert'),
    'qwen3_moe': dict(preset='tiny-qwen3-moe', overrides={}, note='renormalised top-4 of 32, per-head q/k norm, head_dim 128'),
    'olmoe': dict(preset='tiny-olmoe', overrides={}, note='top-4 of 16 without renormalisation, whole-projection q/k norm'),
    # probes: config features the tiny presets leave off
    'qwen3_moe+mlp_only_layers': dict(preset='tiny-qwen3-moe', overrides={'mlp_only_layers': [1]},
                                      note='layer 1 dense (intermediate_size 768): the dense-MLP path', probe=True),
    'qwen2_moe+decoder_sparse_step2': dict(preset='tiny-qwen2-moe', overrides={'decoder_sparse_step': 2},
                                          note='MoE on layers 1 and 3, dense MLP (intermediate_size 512) on 0 and 2', probe=True),
    'olmoe+clip_qkv': dict(preset='tiny-olmoe', overrides={'clip_qkv': 1.5},
                           note='clip_qkv 1.5: HF clamps q (after q_norm), k (after k_norm) and v', probe=True),
    'qwen3_moe+yarn': dict(preset='tiny-qwen3-moe',
                           overrides={'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 32768},
                                      'max_position_embeddings': 131072},
                           note='YaRN rope scaling as Qwen3 documents it for long context (factor 4 of 32768)', probe=True),
    'mixtral+rope_llama3': dict(preset='tiny-mixtral',
                                overrides={'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                                                            'high_freq_factor': 4.0, 'original_max_position_embeddings': 8192}},
                                note='llama3 rope scaling', probe=True),
    'qwen3_moe+tied_embeddings': dict(preset='tiny-qwen3-moe', overrides={'tie_word_embeddings': True},
                                      note='tie_word_embeddings: HF saves no lm_head.weight', probe=True),
    'mixtral+sliding_window': dict(preset='tiny-mixtral', overrides={'sliding_window': 8},
                                   note='sliding_window 8 < sequence length 32 (Mixtral applies it whenever it is set)', probe=True),
}

# Families our runtime may refuse (UnsupportedModelError): the HF checkpoint, HF logits and our loader's verdict are
# recorded; when the runtime does run them (work in progress in lib/), they are compared like the others.
# `preset` is used when this build of moe-offload has it, else `config` (written by hand) with `tokenizer_preset`'s tokenizer.
EXTRA_FAMILIES = {
    'deepseek_v2': dict(preset='tiny-deepseek-v2', tokenizer_preset='tiny-qwen3-moe', overrides={},
                        note='MLA (q_lora_rank null), first layer dense, 2 shared experts, greedy top-4 of 16', config={
        'architectures': ['DeepseekV2ForCausalLM'], 'model_type': 'deepseek_v2',
        'hidden_size': 256, 'intermediate_size': 512, 'moe_intermediate_size': 128, 'num_hidden_layers': 3,
        'num_attention_heads': 4, 'num_key_value_heads': 4, 'n_routed_experts': 16, 'n_shared_experts': 2,
        'num_experts_per_tok': 4, 'first_k_dense_replace': 1, 'moe_layer_freq': 1, 'kv_lora_rank': 64,
        'q_lora_rank': None, 'qk_nope_head_dim': 64, 'qk_rope_head_dim': 32, 'v_head_dim': 64,
        'topk_method': 'greedy', 'n_group': 1, 'topk_group': 1, 'routed_scaling_factor': 1.0,
        'norm_topk_prob': False, 'scoring_func': 'softmax', 'rms_norm_eps': 1e-6, 'rope_theta': 10000,
        'max_position_embeddings': 4096, 'tie_word_embeddings': False, 'hidden_act': 'silu'}),
    'gpt_oss': dict(tokenizer_preset='tiny-qwen3-moe', overrides={},
                    note='attention sinks, alternating sliding/full attention, clamped SwiGLU with biases, yarn', config={
        'architectures': ['GptOssForCausalLM'], 'model_type': 'gpt_oss',
        'hidden_size': 256, 'intermediate_size': 128, 'num_hidden_layers': 2, 'num_attention_heads': 4,
        'num_key_value_heads': 2, 'head_dim': 64, 'num_local_experts': 8, 'num_experts_per_tok': 2,
        'sliding_window': 16, 'layer_types': ['sliding_attention', 'full_attention'], 'swiglu_limit': 7.0,
        'rms_norm_eps': 1e-5, 'max_position_embeddings': 4096, 'tie_word_embeddings': False, 'eos_token_id': 511}),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def machine_info():
    model, flags = None, []
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if model is None and line.startswith('model name'):
                    model = line.split(':', 1)[1].strip()
                if not flags and line.startswith('flags'):
                    flags = line.split(':', 1)[1].split()
    except OSError:
        pass
    node = subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()
    return {
        'cpu': model, 'cores': os.cpu_count(),
        'cpu_features': [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags],
        'platform': platform.platform(), 'python': platform.python_version(), 'node': node,
        'torch': torch.__version__, 'transformers': transformers.__version__,
        'torch_threads': torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------------------------
# building the HF checkpoint

def reinit_(model, cfg, seed):
    """Weights with O(1) activations: linears N(0, 1/fan_in), routers 3x that, norms 1 + 0.1 N, embeddings N(0, 1),
    biases 0.1 N (other 1-D parameters, e.g. gpt-oss sinks, 0.1 N too)."""
    g = torch.Generator().manual_seed(seed)
    H = cfg.hidden_size
    kinds = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            randn = torch.randn(shape, generator=g, dtype=torch.float32)
            if name.endswith('embed_tokens.weight'):
                v, kind = randn, 'embed'
            elif p.ndim == 1 and 'norm' in name:
                v, kind = 1 + 0.1 * randn, 'norm'
            elif p.ndim == 1:
                v, kind = 0.1 * randn, 'bias'
            elif name.endswith('.gate.weight') or name.endswith('.router.weight'):
                v, kind = randn * (3.0 / np.sqrt(shape[-1])), 'router'
            elif p.ndim == 3:
                # stacked experts: gate_up_proj [E, 2I, H] (gpt-oss [E, H, 2I]), down_proj [E, H, I] (gpt-oss [E, I, H])
                if name.endswith('gate_up_proj'):
                    fan_in = H
                else:
                    fan_in = shape[-1] if shape[-1] != H else shape[-2]
                v, kind = randn / np.sqrt(fan_in), 'experts'
            elif p.ndim == 2 and name.endswith('_bias'):  # gpt-oss stacked expert biases [E, 2I] / [E, H]
                v, kind = 0.1 * randn, 'bias'
            else:
                v, kind = randn / np.sqrt(shape[-1]), 'linear'
            p.copy_(v.to(p.dtype))
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def build_hf_checkpoint(config_dict, tok_src, out_dir, seed, shard='2MB'):
    """transformers builds the model from `config_dict`, re-initialises, casts to bf16, saves (sharded safetensors)."""
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    src_cfg = os.path.join(out_dir, '_src_config')
    os.makedirs(src_cfg)
    with open(os.path.join(src_cfg, 'config.json'), 'w') as f:
        json.dump(config_dict, f, indent=2)
    coerced = []
    for _ in range(32):
        try:
            cfg = AutoConfig.from_pretrained(src_cfg)
            break
        except Exception as e:  # noqa: BLE001
            # transformers 5 validates config dataclass fields strictly: a float field given a JSON integer (JavaScript's
            # JSON.stringify writes 0.0 as 0) is refused. Coerce that one field to float and retry; the report lists them.
            msg = str(e)
            field = msg.split("field '", 1)[1].split("'", 1)[0] if "field '" in msg and 'expected float' in msg else None
            if field is None or not isinstance(config_dict.get(field), int):
                raise
            config_dict = dict(config_dict, **{field: float(config_dict[field])})
            coerced.append(field)
            with open(os.path.join(src_cfg, 'config.json'), 'w') as f:
                json.dump(config_dict, f, indent=2)
    shutil.rmtree(src_cfg)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation='eager')
    kinds = reinit_(model, cfg, seed)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=shard)
    for fn in TOKENIZER_FILES:
        shutil.copy(os.path.join(tok_src, fn), os.path.join(out_dir, fn))
    del model
    shards = sorted(f for f in os.listdir(out_dir) if f.endswith('.safetensors'))
    with open(os.path.join(out_dir, 'config.json')) as f:
        saved_cfg = json.load(f)
    names = []
    idx_path = os.path.join(out_dir, 'model.safetensors.index.json')
    if os.path.exists(idx_path):
        with open(idx_path) as f:
            names = sorted(json.load(f)['weight_map'])
    return {'dir': out_dir, 'shards': len(shards), 'config_fields_coerced_to_float_for_hf': coerced, 'init_counts': kinds, 'saved_config': saved_cfg,
            'tensor_count': len(names), 'tensor_name_examples': [n for n in names if '.0.' in n or '.layers.' not in n][:40]}


def legacy_keys_copy(hf_dir, out_dir):
    """A view of hf_dir (symlinked files) whose config.json also carries the pre-v5 keys: rope_theta (and rope_scaling
    for a non-default rope_type) from rope_parameters. None when the saved config already has rope_theta."""
    with open(os.path.join(hf_dir, 'config.json')) as f:
        cfg = json.load(f)
    rp = cfg.get('rope_parameters')
    if 'rope_theta' in cfg or not isinstance(rp, dict) or 'rope_theta' not in rp:
        return None, []
    added = {'rope_theta': rp['rope_theta']}
    if rp.get('rope_type', 'default') != 'default':
        added['rope_scaling'] = {k: v for k, v in rp.items() if k != 'rope_theta'}
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    for fn in os.listdir(hf_dir):
        if fn != 'config.json':
            os.symlink(os.path.join(hf_dir, fn), os.path.join(out_dir, fn))
    cfg.update(added)
    with open(os.path.join(out_dir, 'config.json'), 'w') as f:
        json.dump(cfg, f, indent=2)
    return out_dir, sorted(added)


# ---------------------------------------------------------------------------------------------------------------
# running

def hf_forward(model_dir, ids, dtype, attn='eager', experts='eager'):
    """Logits [T, V] (float64 numpy) and per-layer router (logits [T, E] f64, top-k ids [T, k]) from HF hooks."""
    kw = {'dtype': dtype}
    if attn is not None:
        kw['attn_implementation'] = attn
    if experts is not None:
        kw['experts_implementation'] = experts
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    model.eval()
    routers = {}
    hooks = []
    for name, mod in model.named_modules():
        if type(mod).__name__.lower().endswith('topkrouter'):
            layer = int(name.split('layers.')[1].split('.')[0])

            def hook(m, inp, out, layer=layer):
                logits, _scores, idx = out
                routers[layer] = (logits.detach().double().reshape(-1, logits.shape[-1]).numpy(),
                                  idx.detach().reshape(-1, idx.shape[-1]).numpy().astype(np.int64))
            hooks.append(mod.register_forward_hook(hook))
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    ms = (time.perf_counter() - t0) * 1e3
    for h in hooks:
        h.remove()
    impl = {'attn': getattr(model.config, '_attn_implementation', None),
            'experts': getattr(model.config, '_experts_implementation', None)}
    logits = out.logits[0].detach().double().numpy()
    del model
    return logits, routers, impl, ms


def run_ours(model_dir, ids, prefix, node_env):
    ids_file = prefix + '.ids.json'
    with open(ids_file, 'w') as f:
        json.dump(ids, f)
    t0 = time.perf_counter()
    r = subprocess.run(['node', RUN_ENGINE, model_dir, ids_file, prefix, TEXT], env=node_env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f'run-engine failed ({r.returncode}): {r.stderr[-2000:]}')
    with open(prefix + '.json') as f:
        rep = json.load(f)
    rep['wallMs'] = (time.perf_counter() - t0) * 1e3
    if rep.get('ok'):
        rep['logits'] = np.fromfile(prefix + '.logits.f32', dtype='<f4').reshape(rep['T'], rep['V']).astype(np.float64)
    return rep


# ---------------------------------------------------------------------------------------------------------------
# metrics

def rnd(x, n=4):
    return float(f'{x:.{n}g}')


def logit_metrics(a, ref, clean_prefix=None):
    d = a - ref
    per_pos = np.linalg.norm(d, axis=1) / np.linalg.norm(ref, axis=1)
    am, rm = a.argmax(1), ref.argmax(1)
    srt = np.sort(ref, axis=1)
    margin = srt[:, -1] - srt[:, -2]
    m = {
        'rel_err': rnd(np.linalg.norm(d) / np.linalg.norm(ref)),
        'rel_err_per_position': [rnd(x, 3) for x in per_pos],
        'rel_err_per_position_median': rnd(float(np.median(per_pos))),
        'rel_err_per_position_max': rnd(float(per_pos.max())),
        'max_abs_err': rnd(float(np.abs(d).max())),
        'ref_logit_rms': rnd(float(np.sqrt((ref ** 2).mean()))),
        'argmax_agreement': rnd(float((am == rm).mean())),
        'argmax_disagreements': [{'pos': int(t), 'ref': int(rm[t]), 'got': int(am[t]), 'ref_top1_top2_margin': rnd(float(margin[t]), 3)}
                                 for t in np.nonzero(am != rm)[0]],
    }
    if clean_prefix is not None:
        m['positions_before_first_routing_flip'] = int(clean_prefix)
        if clean_prefix > 0:
            dc, rc = d[:clean_prefix], ref[:clean_prefix]
            m['rel_err_before_first_flip'] = rnd(np.linalg.norm(dc) / np.linalg.norm(rc))
    return m


def routing_metrics(ref_routers, got_ids_by_layer, moe_layers, k, T):
    """ref_routers: {layer: (router logits [T, E], ids [T, k])} of the reference run; got_ids_by_layer: {layer: ids [T, k]}.
    Set agreement per token and per (token, slot); each flip with the reference's prob gap between its k-th and (k+1)-th
    expert (a tiny gap = a near-tie that any rounding difference can flip)."""
    layers = []
    tokens_same = slots_same = total = 0
    first_flip = T
    flips = []
    for l in moe_layers:
        if l not in ref_routers or l not in got_ids_by_layer:
            layers.append({'layer': l, 'missing': True})
            continue
        logits, ref_ids = ref_routers[l]
        got = got_ids_by_layer[l]
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ps = np.sort(p, axis=1)[:, ::-1]
        same_tok = 0
        for t in range(T):
            a, b = set(ref_ids[t].tolist()), set(got[t].tolist())
            inter = len(a & b)
            slots_same += inter
            if a == b:
                same_tok += 1
            else:
                first_flip = min(first_flip, t)
                if len(flips) < 24:
                    flips.append({'layer': l, 'pos': t, 'ref': sorted(a), 'got': sorted(b),
                                  'ref_prob_gap_k_vs_k+1': rnd(float(ps[t, k - 1] - ps[t, k]), 3) if ps.shape[1] > k else None})
        tokens_same += same_tok
        total += T
        layers.append({'layer': l, 'token_set_agreement': rnd(same_tok / T)})
    return {
        'token_set_agreement': rnd(tokens_same / max(1, total)),
        'slot_agreement': rnd(slots_same / max(1, total * k)),
        'per_layer': layers,
        'first_flip_position': int(first_flip) if first_flip < T else None,
        'flips': flips,
    }


def ours_routing(rep, T):
    k = rep['routing']['topK']
    return {l: np.array(a, dtype=np.int64).reshape(T, k) for l, a in zip(rep['routing']['moeLayers'], rep['routing']['ids'])}


def hf_routing_ids(routers):
    return {l: ids for l, (_, ids) in routers.items()}


def min_gap(routers, k):
    """Smallest HF f32 prob gap between the k-th and (k+1)-th expert over all tokens and layers (near-tie indicator)."""
    g = np.inf
    for logits, _ in routers.values():
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        ps = np.sort(p, axis=1)[:, ::-1]
        if ps.shape[1] > k:
            g = min(g, float((ps[:, k - 1] - ps[:, k]).min()))
    return rnd(g, 3)


# ---------------------------------------------------------------------------------------------------------------

def token_ids(hf_dir, T):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(hf_dir, 'tokenizer.json'))
    enc = tok.encode(TEXT).ids
    ids = (enc * (T // max(1, len(enc)) + 1))[:T]
    return ids, enc


def compare_variant(name, spec, args, node_env):
    log(f'== {name}')
    work = os.path.join(args.work, name)
    os.makedirs(work, exist_ok=True)
    ours_dir = os.path.join(work, 'ours-preset')
    if os.path.exists(ours_dir):
        shutil.rmtree(ours_dir)
    preset = spec.get('preset') if spec.get('preset') in available_presets(node_env) else None
    subprocess.run(['node', CLI, 'make-model', '--preset', preset or spec['tokenizer_preset'], ours_dir], env=node_env, check=True, capture_output=True)
    with open(os.path.join(ours_dir, 'config.json')) as f:
        cfg = json.load(f)
    if preset is None:  # hand-written config, the preset's tokenizer
        cfg = dict(spec['config'], vocab_size=cfg['vocab_size'])
    cfg.update(spec['overrides'])
    hf_dir = os.path.join(work, 'hf-bf16')
    ck = build_hf_checkpoint(cfg, ours_dir, hf_dir, args.seed)
    ids, enc = token_ids(hf_dir, args.seq_len)
    T = len(ids)
    res = {'preset': preset, 'input_config': cfg if preset is None else None, 'config_overrides': spec['overrides'], 'note': spec['note'], 'probe': spec.get('probe', False),
           'checkpoint': {k: v for k, v in ck.items() if k != 'dir'}, 'token_ids': ids}

    hf32, r32, impl32, ms32 = hf_forward(hf_dir, ids, torch.float32)
    np.save(os.path.join(work, 'hf_f32_logits.npy'), hf32.astype(np.float32))
    k = next(iter(r32.values()))[1].shape[1] if r32 else cfg.get('num_experts_per_tok')
    moe_layers = sorted(r32)
    res['hf_f32'] = {'implementation': impl32, 'forward_ms': rnd(ms32), 'moe_layers': moe_layers, 'top_k': int(k),
                     'min_router_prob_gap_k_vs_k+1': min_gap(r32, k)}
    try:
        hf64, r64, impl64, _ = hf_forward(hf_dir, ids, torch.float64)
        res['hf_f64_vs_hf_f32'] = {'note': 'HF float64 run (HF keeps RMSNorm and the softmaxes in float32 by design)',
                                   **{kk: v for kk, v in logit_metrics(hf32, hf64).items() if kk != 'rel_err_per_position'},
                                   'routing': routing_metrics(r64, hf_routing_ids(r32), moe_layers, k, T)}
    except Exception as e:  # noqa: BLE001
        res['hf_f64_vs_hf_f32'] = {'error': repr(e)}
    # HF bf16 as users run it: default attention and experts implementations
    try:
        hf16, r16, impl16, ms16 = hf_forward(hf_dir, ids, torch.bfloat16, attn=None, experts=None)
    except Exception as e:  # noqa: BLE001
        log(f'   HF bf16 with defaults failed ({e!r}); eager')
        hf16, r16, impl16, ms16 = hf_forward(hf_dir, ids, torch.bfloat16)
    rt16 = routing_metrics(r32, hf_routing_ids(r16), moe_layers, k, T)
    res['hf_bf16_vs_hf_f32'] = {'implementation': impl16, 'forward_ms': rnd(ms16), 'routing': rt16,
                                **logit_metrics(hf16, hf32, rt16['first_flip_position'] if rt16['first_flip_position'] is not None else T)}

    def ours_block(model_dir, tag):
        rep = run_ours(model_dir, ids, os.path.join(work, tag), node_env)
        b = {'dir': model_dir, 'ok': rep.get('ok', False)}
        if not rep.get('ok'):
            b['error'] = rep.get('error')
            b['parsed_config'] = rep.get('parsedConfig')
            return b
        pc = rep['parsedConfig']
        b.update({'backend': rep['backend'], 'forward_ms': rnd(rep['forwardMs']),
                  'parsed': {kk: pc[kk] for kk in ('ropeTheta', 'ropeScaling', 'moeLayers', 'numExperts', 'topK', 'router', 'slidingWindow',
                                                    'qkNorm', 'attentionBias', 'headDim', 'rmsNormEps', 'sharedExperts')},
                  'tokenizer_matches_python_tokenizers': rep.get('encoded') == enc})
        rt = routing_metrics(r32, ours_routing(rep, T), moe_layers, k, T)
        b['vs_hf_f32'] = {**logit_metrics(rep['logits'], hf32, rt['first_flip_position'] if rt['first_flip_position'] is not None else T),
                          'routing': rt}
        b['vs_hf_bf16'] = {kk: v for kk, v in logit_metrics(rep['logits'], hf16).items() if kk in ('rel_err', 'argmax_agreement', 'max_abs_err')}
        return b

    res['ours_on_hf_dir_as_saved'] = ours_block(hf_dir, 'ours-as-saved')
    leg_dir, added = legacy_keys_copy(hf_dir, os.path.join(work, 'hf-bf16-legacy-keys'))
    if leg_dir:
        res['ours_on_hf_dir_with_legacy_keys'] = {'added_keys': added, **ours_block(leg_dir, 'ours-legacy')}
    if args.tiers and not spec.get('probe') and res['ours_on_hf_dir_as_saved'].get('ok'):
        # the other CPU kernel tiers on the same checkpoint (config with legacy keys where needed)
        res['ours_other_cpu_tiers'] = {}
        for isa in [t for t in args.tiers.split(',') if t]:
            env = dict(node_env, HFC_ISA=isa)
            rep = run_ours(leg_dir or hf_dir, ids, os.path.join(work, f'ours-{isa}'), env)
            if not rep.get('ok'):
                res['ours_other_cpu_tiers'][isa] = {'error': rep.get('error')}
                continue
            rt = routing_metrics(r32, ours_routing(rep, T), moe_layers, k, T)
            lm = logit_metrics(rep['logits'], hf32, rt['first_flip_position'] if rt['first_flip_position'] is not None else T)
            res['ours_other_cpu_tiers'][isa] = {'backend': rep['backend'], 'forward_ms': rnd(rep['forwardMs']),
                                                **{kk: lm[kk] for kk in ('rel_err', 'rel_err_before_first_flip', 'rel_err_per_position_median',
                                                                          'argmax_agreement') if kk in lm},
                                                'routing_token_set_agreement': rt['token_set_agreement']}

    # the other direction: HF loads the checkpoint our makeModel wrote (format compatibility of our writer)
    try:
        if preset is None:
            raise LookupError('no moe-offload preset for this family in this build')
        if spec.get('probe'):
            raise LookupError('probe variant: the preset itself is covered by its base family')
        ho, ro, _, _ = hf_forward(ours_dir, ids, torch.float32)
        rep = run_ours(ours_dir, ids, os.path.join(work, 'ours-own'), node_env)
        if rep.get('ok'):
            rt = routing_metrics(ro, ours_routing(rep, T), sorted(ro), k, T)
            res['hf_loads_our_make_model_checkpoint'] = {
                'note': 'HF f32 on the checkpoint moe-offload make-model wrote (its own init), vs our runtime on the same files',
                **{kk: v for kk, v in logit_metrics(rep['logits'], ho, rt['first_flip_position'] if rt['first_flip_position'] is not None else T).items()
                   if kk != 'rel_err_per_position'}, 'routing': rt}
        else:
            res['hf_loads_our_make_model_checkpoint'] = {'ours_error': rep.get('error')}
    except Exception as e:  # noqa: BLE001
        res['hf_loads_our_make_model_checkpoint'] = {'skipped' if isinstance(e, LookupError) else 'error': str(e) if isinstance(e, LookupError) else repr(e)}

    best = res.get('ours_on_hf_dir_with_legacy_keys', res['ours_on_hf_dir_as_saved'])
    if not best.get('ok'):
        log(f"   ours: {best.get('error')}")
    log(f"   hf bf16 vs f32 rel {res['hf_bf16_vs_hf_f32']['rel_err']} | ours(as saved) "
        f"{res['ours_on_hf_dir_as_saved'].get('vs_hf_f32', {}).get('rel_err')} | ours(legacy keys) "
        f"{best.get('vs_hf_f32', {}).get('rel_err')} routing {best.get('vs_hf_f32', {}).get('routing', {}).get('token_set_agreement')}")
    return res


_PRESETS = None


def available_presets(node_env):
    global _PRESETS
    if _PRESETS is None:
        r = subprocess.run(['node', '-e', f"console.log(JSON.stringify(Object.keys(require({json.dumps(os.path.join(REPO, 'dist', 'lib', 'index.js'))}).PRESETS)))"],
                           env=node_env, capture_output=True, text=True, check=True)
        _PRESETS = json.loads(r.stdout)
    return _PRESETS


def git_state():
    def g(*a):
        r = subprocess.run(['git', '-C', REPO, *a], capture_output=True, text=True)
        return r.stdout.rstrip('\n') if r.returncode == 0 else None
    status = g('status', '--porcelain')
    return {'head': g('rev-parse', 'HEAD'), 'uncommitted': [l[3:] for l in status.splitlines() if l.strip()] if status else []}


def summarize(out):
    """One row per family: the headline numbers of the sections above."""
    rows = {}
    for group in ('families', 'extra_families'):
        for name, r in out[group].items():
            if 'error' in r and 'hf_f32' not in r:
                rows[name] = {'error': r['error']}
                continue
            saved = r['ours_on_hf_dir_as_saved']
            leg = r.get('ours_on_hf_dir_with_legacy_keys', saved)
            row = {'probe': r.get('probe', False),
                   'hf_bf16_vs_hf_f32_rel_err': r['hf_bf16_vs_hf_f32']['rel_err'],
                   'hf_bf16_vs_hf_f32_argmax': r['hf_bf16_vs_hf_f32']['argmax_agreement'],
                   'hf_bf16_routing_token_set_agreement': r['hf_bf16_vs_hf_f32']['routing']['token_set_agreement'],
                   'hf_f64_vs_hf_f32_rel_err': r['hf_f64_vs_hf_f32'].get('rel_err')}
            if not leg.get('ok'):
                row['ours_error'] = (leg.get('error') or {}).get('name')
            else:
                v = leg['vs_hf_f32']
                row.update({
                    'ours_vs_hf_f32_rel_err_config_as_saved': saved['vs_hf_f32']['rel_err'] if saved.get('ok') else None,
                    'ours_vs_hf_f32_rel_err': v['rel_err'],
                    'ours_config_keys_added': leg.get('added_keys', []),
                    'ours_rel_err_before_first_routing_flip': v.get('rel_err_before_first_flip'),
                    'ours_rel_err_per_position_median': v['rel_err_per_position_median'],
                    'ours_argmax_agreement': v['argmax_agreement'],
                    'ours_routing_token_set_agreement': v['routing']['token_set_agreement'],
                    'ours_routing_slot_agreement': v['routing']['slot_agreement'],
                    'ours_vs_hf_bf16_rel_err': leg['vs_hf_bf16']['rel_err'],
                })
            h = r.get('hf_loads_our_make_model_checkpoint', {})
            if 'rel_err' in h:
                row['hf_on_our_make_model_checkpoint_rel_err'] = h['rel_err']
                row['hf_on_our_make_model_checkpoint_rel_err_before_first_flip'] = h.get('rel_err_before_first_flip')
            elif 'error' in h:
                row['hf_on_our_make_model_checkpoint_error'] = h['error'][:200]
            rows[name] = row
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', f'hf-compare-{datetime.date.today().isoformat()}.json'))
    ap.add_argument('--work', default='/tmp/hf-compare', help='scratch directory for the checkpoints (outside the repo)')
    ap.add_argument('--variants', default=','.join(VARIANTS), help='comma-separated subset of: ' + ', '.join(VARIANTS))
    ap.add_argument('--extra', default=','.join(EXTRA_FAMILIES), help="'' to skip; subset of: " + ', '.join(EXTRA_FAMILIES))
    ap.add_argument('--tiers', default='avx2,scalar', help="extra CPU kernel tiers run on the base families ('' to skip)")
    ap.add_argument('--seq-len', type=int, default=32)
    ap.add_argument('--seed', type=int, default=1234)
    args = ap.parse_args()
    node_env = dict(os.environ)
    if not node_env.get('MOE_OFFLOAD_PREBUILD'):
        log('note: MOE_OFFLOAD_PREBUILD is not set; node-gyp-build looks for the addon in the repo build/')
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    out = {
        'benchmark': 'hf-compare',
        'description': 'moe-offload runtime (CPU backend) vs HF transformers on tiny MoE models built and saved by transformers '
                       '(bf16 safetensors); reference = HF float32 on the same bf16 weights, eager attention and experts',
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'machine': machine_info(),
        'prebuild': os.environ.get('MOE_OFFLOAD_PREBUILD'),
        'git': git_state(),
        'text': TEXT, 'seq_len': args.seq_len, 'seed': args.seed,
        'families': {}, 'extra_families': {},
    }
    for name in [v for v in args.variants.split(',') if v]:
        out['families'][name] = compare_variant(name, VARIANTS[name], args, node_env)
    for name in [v for v in args.extra.split(',') if v]:
        try:
            out['extra_families'][name] = compare_variant(name, EXTRA_FAMILIES[name], args, node_env)
        except Exception as e:  # noqa: BLE001
            out['extra_families'][name] = {'error': repr(e)}
            log(f'   {name}: {e!r}')
    out['summary'] = summarize(out)
    out['total_s'] = rnd(time.time() - t0)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(out, f, indent=1)
        f.write('\n')
    log(f'wrote {args.out} ({out["total_s"]} s)')


if __name__ == '__main__':
    main()
