"""Peer of os-soup's parity tests and benchmark.

  make DIR --models N [--dtype bfloat16] [--hidden 64] [--layers 2] [--vocab 256] [--seed 0]
      write DIR/base and DIR/m1..mN: tiny LlamaForCausalLM-shaped HF checkpoints (safetensors,
      config.json, a tokenizer_config.json); each model is the base plus seeded noise.
  mergekit CONFIG OUT     merge with mergekit (PyPI, pinned in tests/requirements.txt) on CPU.
  compare A B             print JSON {tensor: {"max_abs", "max_rel", "dtype_a", "dtype_b"}} of two merged dirs.
  ema OUT DECAY DIR...    reference EMA (sequential, float32) of checkpoints, saved as safetensors.
  dare_stats BASE MERGED MODEL DENSITY   JSON statistics of a dare_linear merge of one model.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def llama_shapes(hidden, layers, vocab):
    inter, heads, kv = hidden * 2, 4, 2
    head_dim = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "vocab_size": vocab, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "torch_dtype": "float32",
    }
    return shapes, config


def make(out, n, dtype, hidden, layers, vocab, seed, shard_mb):
    shapes, config = llama_shapes(hidden, layers, vocab)
    config["torch_dtype"] = dtype
    gen = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}
    for name in ["base"] + [f"m{i}" for i in range(1, n + 1)]:
        if name == "base":
            tensors = base
        else:
            tensors = {k: v + torch.randn(v.shape, generator=gen) * 0.02 for k, v in base.items()}
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        tensors = {k: v.to(DTYPES[dtype]).contiguous() for k, v in tensors.items()}
        # shard like HF when asked, to exercise index reading
        if shard_mb:
            limit, shards, cur, size = shard_mb * 1e6, [], {}, 0
            for k, v in tensors.items():
                b = v.numel() * v.element_size()
                if cur and size + b > limit:
                    shards.append(cur)
                    cur, size = {}, 0
                cur[k] = v
                size += b
            shards.append(cur)
            wm = {}
            for i, s in enumerate(shards):
                fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(s, os.path.join(d, fn), metadata={"format": "pt"})
                wm.update({k: fn for k in s})
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {}, "weight_map": wm}, f)
        else:
            save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128, "from": name}, f)


def run_mergekit(config_path, out):
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    with open(config_path) as f:
        cfg = MergeConfiguration.model_validate(yaml.safe_load(f))
    run_merge(cfg, out, options=MergeOptions(cuda=False, copy_tokenizer=False, lazy_unpickle=False, low_cpu_memory=False))


def load_dir(d):
    out = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, fn)))
    return out


def compare(a, b):
    ta, tb = load_dir(a), load_dir(b)
    res = {}
    for k in sorted(set(ta) | set(tb)):
        if k not in ta or k not in tb:
            res[k] = {"missing_in": a if k not in ta else b}
            continue
        x, y = ta[k].double(), tb[k].double()
        if x.shape != y.shape:
            res[k] = {"shape_a": list(x.shape), "shape_b": list(y.shape)}
            continue
        diff = (x - y).abs()
        res[k] = {
            "max_abs": diff.max().item(),
            "max_rel": (diff / y.abs().clamp_min(1e-6)).max().item(),
            "max_ref": y.abs().max().item(),
            "dtype_a": str(ta[k].dtype), "dtype_b": str(tb[k].dtype),
        }
    print(json.dumps(res))


def ema(out, decay, dirs):
    decay = float(decay)
    acc = None
    for d in dirs:
        t = {k: v.float() for k, v in load_dir(d).items()}
        acc = t if acc is None else {k: decay * acc[k] + (1 - decay) * t[k] for k in acc}
    os.makedirs(out, exist_ok=True)
    save_file(acc, os.path.join(out, "model.safetensors"))


def dare_stats(base, merged, model, density):
    """For a dare_linear merge of one model with weight 1: the fraction of elements kept, and
    the ratio of L1 norms of the kept delta to the full delta (1 with rescale)."""
    tb, tm, tx = load_dir(base), load_dir(merged), load_dir(model)
    kept = total = 0
    ratios = []
    for k in tb:
        full = (tx[k].double() - tb[k].double())
        got = (tm[k].double() - tb[k].double())
        nz = got.abs() > 1e-7
        kept += nz.sum().item()
        total += got.numel()
        ratios.append(got.abs().sum().item() / full.abs().sum().item())
    print(json.dumps({"kept_fraction": kept / total, "min_l1_ratio": min(ratios), "max_l1_ratio": max(ratios), "density": float(density)}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make":
        import argparse
        p = argparse.ArgumentParser()
        p.add_argument("out")
        p.add_argument("--models", type=int, default=3)
        p.add_argument("--dtype", default="float32")
        p.add_argument("--hidden", type=int, default=64)
        p.add_argument("--layers", type=int, default=2)
        p.add_argument("--vocab", type=int, default=256)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--shard-mb", type=float, default=0)
        a = p.parse_args(args)
        make(a.out, a.models, a.dtype, a.hidden, a.layers, a.vocab, a.seed, a.shard_mb)
    elif cmd == "mergekit":
        run_mergekit(*args)
    elif cmd == "compare":
        compare(*args)
    elif cmd == "ema":
        ema(args[0], args[1], args[2:])
    elif cmd == "dare_stats":
        dare_stats(*args)
    else:
        sys.exit(f"unknown command {cmd}")
