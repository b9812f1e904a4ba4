"""Reference side of the model parity tests: small random DeepseekV3ForCausalLM checkpoints built
with transformers, and transformers' logits / log-probs on them.

  hf_deepseek.py make OUT --variant NAME [--layout fused|per-expert] [--shards N] [--mtp N]
      writes OUT/{config.json, safetensors...} (with --mtp, N multi-token-prediction layers in
      DeepSeek-V3's release layout after the main ones, which transformers' model skips), OUT/tokens.jsonl (one sequence per line, varied
      lengths), OUT/texts.jsonl with a word-level tokenizer.json, and OUT/reference.json: {"ids": [[...]] (a fixed batch), "logits": [...] (flat,
      fp32), "shape": [B, T, V], "loss": mean next-token cross-entropy over the batch,
      "scores": [{"sum_logprob", "token_logprobs"}] per tokens.jsonl line}
  hf_deepseek.py logits DIR IDS_JSON OUT_JSON
      loads DIR with transformers and writes its logits on the batch in IDS_JSON (for round trips)
  hf_deepseek.py score DIR TOKENS_JSONL OUT_JSONL [--dtype bfloat16] [--device cuda]
      transformers' answer to `os-eval score`, one sequence at a time
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

VARIANTS = {
    # q_proj, untied head, one group
    "plain": dict(hidden_size=64, num_hidden_layers=2, q_lora_rank=None, tie_word_embeddings=False, n_group=1, topk_group=1),
    # low-rank queries, tied head, 2 groups choose 1
    "lora_tied": dict(hidden_size=64, num_hidden_layers=2, q_lora_rank=32, tie_word_embeddings=True, n_group=2, topk_group=1),
    # 3 layers, hidden 128, 4 groups choose 2
    "groups": dict(hidden_size=128, num_hidden_layers=3, q_lora_rank=None, tie_word_embeddings=False, n_group=4, topk_group=2),
    # YaRN rope with mscale, rotate-half rope layout, attention biases, no prob normalisation
    "yarn": dict(hidden_size=96, num_hidden_layers=2, q_lora_rank=24, tie_word_embeddings=False, n_group=2, topk_group=2,
                 rope_interleave=False, attention_bias=True, norm_topk_prob=False,
                 rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                  "original_max_position_embeddings": 32, "mscale": 1.0, "mscale_all_dim": 1.0,
                                  "beta_fast": 32.0, "beta_slow": 1.0}),
}


def scaled_init_(model):
    """Weights large enough that routing and logits are far from uniform: matrices N(0, 1/fan_in),
    norms 1 ± 0.2, other vectors 0.1·N(0, 1); from the global generator."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif p.dim() >= 2:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn_like(p))


def build(variant, seed):
    torch.manual_seed(seed)
    cfg = DeepseekV3Config(
        vocab_size=256, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4, num_key_value_heads=4,
        n_shared_experts=2, n_routed_experts=8, num_experts_per_tok=2, routed_scaling_factor=2.446,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, first_k_dense_replace=1,
        max_position_embeddings=128, rms_norm_eps=1e-6, num_nextn_predict_layers=0, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, **({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}} | VARIANTS[variant]),
    )
    model = DeepseekV3ForCausalLM(cfg).float().eval()
    scaled_init_(model)
    with torch.no_grad():
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None:
                # Non-zero correction bias, comparable to the score spread: it changes which experts win.
                gate.e_score_correction_bias.copy_(0.3 * torch.randn_like(gate.e_score_correction_bias))
    return model


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float()


def scores_of(model, seq):
    logits = logits_of(model, [seq])[0]
    lp = torch.log_softmax(logits.double(), -1)[:-1].gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
    return {"sum_logprob": float(lp.sum()), "token_logprobs": lp.tolist()}


def mtp_tensors(model, depths):
    """Random weights of `depths` MTP layers as DeepSeek-V3's release stores them:
    model.layers.{L + k}.{enorm, hnorm, eh_proj, shared_head.norm}, a decoder layer (built by
    transformers for that layer index), and the copies of the shared embedding and head."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer, DeepseekV3RMSNorm
    cfg = model.config
    h, n = cfg.hidden_size, cfg.num_hidden_layers
    out = {}
    for k in range(depths):
        p = f"model.layers.{n + k}."
        layer = torch.nn.ModuleDict({
            "enorm": DeepseekV3RMSNorm(h), "hnorm": DeepseekV3RMSNorm(h),
            "eh_proj": torch.nn.Linear(2 * h, h, bias=False), "layer": DeepseekV3DecoderLayer(cfg, n + k),
            "head_norm": DeepseekV3RMSNorm(h)}).float()
        scaled_init_(layer)
        with torch.no_grad():
            for name, t in layer.state_dict().items():
                key = name.replace("layer.", "", 1).replace("head_norm.", "shared_head.norm.")
                out[p + key] = t.clone()
            out[p + "embed_tokens.weight"] = model.model.embed_tokens.weight.detach().clone()
            out[p + "shared_head.head.weight"] = model.lm_head.weight.detach().clone()
    return out


def relayout(out, layout, shards, extra=None):
    """Rewrite the saved weights as fused or per-expert tensors, in `shards` files (with `extra` tensors added)."""
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    state = {}
    for f in files:
        state.update(load_file(os.path.join(out, f)))
        os.remove(os.path.join(out, f))
    if os.path.exists(os.path.join(out, "model.safetensors.index.json")):
        os.remove(os.path.join(out, "model.safetensors.index.json"))
    state.update(extra or {})
    new = {}
    fused = {}
    for name, t in state.items():
        parts = name.split(".")
        if "experts" in parts and parts[parts.index("experts") + 1].isdigit():
            i = parts.index("experts")
            prefix, e, proj = ".".join(parts[: i + 1]), int(parts[i + 1]), parts[i + 2]
            fused.setdefault(prefix, {}).setdefault(e, {})[proj] = t
        elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            prefix, proj = name.rsplit(".", 1)
            for e in range(t.shape[0]):
                if proj == "down_proj":
                    fused.setdefault(prefix, {}).setdefault(e, {})["down_proj"] = t[e]
                else:
                    g, u = t[e].chunk(2, 0)
                    fused.setdefault(prefix, {}).setdefault(e, {}).update(gate_proj=g, up_proj=u)
        else:
            new[name] = t
    for prefix, experts in fused.items():
        n = len(experts)
        if layout == "fused":
            new[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([experts[e]["gate_proj"], experts[e]["up_proj"]], 0) for e in range(n)])
            new[f"{prefix}.down_proj"] = torch.stack([experts[e]["down_proj"] for e in range(n)])
        else:
            for e in range(n):
                for proj in ("gate_proj", "up_proj", "down_proj"):
                    new[f"{prefix}.{e}.{proj}.weight"] = experts[e][proj]
    names = sorted(new)
    if shards == 1:
        save_file({k: new[k].contiguous() for k in names}, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    per = (len(names) + shards - 1) // shards
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s * per:(s + 1) * per]
        save_file({k: new[k].contiguous() for k in part}, os.path.join(out, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    total = sum(t.numel() * t.element_size() for t in new.values())
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


def make(args):
    model = build(args.variant, args.seed)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    if args.mtp:
        with open(os.path.join(args.out, "config.json")) as f:
            config = json.load(f)
        config["num_nextn_predict_layers"] = args.mtp
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    if args.layout or args.mtp:
        relayout(args.out, args.layout or "per-expert", args.shards, mtp_tensors(model, args.mtp))
    # The saved checkpoint is what both sides use: reload it so the reference is computed from it.
    model = DeepseekV3ForCausalLM.from_pretrained(args.out, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(3, 256, (3, 17), generator=g).tolist()
    logits = logits_of(model, ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), torch.tensor(ids)[:, 1:].reshape(-1))
    # The correction bias must matter: without it, routing (and so the logits) change.
    saved = [l.mlp.gate.e_score_correction_bias.clone() for l in model.model.layers if hasattr(l.mlp, "gate")]
    with torch.no_grad():
        for l in model.model.layers:
            if hasattr(l.mlp, "gate"):
                l.mlp.gate.e_score_correction_bias.zero_()
        unbiased = logits_of(model, ids)
        it = iter(saved)
        for l in model.model.layers:
            if hasattr(l.mlp, "gate"):
                l.mlp.gate.e_score_correction_bias.copy_(next(it))
    assert (unbiased - logits).abs().max() > 1e-3, "the correction bias does not change the logits: the test would not exercise it"
    lengths = [1, 2, 5, 17, 40, 9]
    seqs = [torch.randint(3, 256, (n,), generator=g).tolist() for n in lengths]
    with open(os.path.join(args.out, "tokens.jsonl"), "w") as f:
        for s in seqs:
            f.write(json.dumps({"tokens": s}) + "\n")
    scores = [scores_of(model, s) if len(s) >= 2 else {"sum_logprob": 0.0, "token_logprobs": []} for s in seqs]
    # A small word-level tokenizer for text input (ids below the vocabulary; <s> is BOS).
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(200)] + ["the", "model", "scores", "text"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>"}, f)
    texts = ["the model scores text", "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11", "text", "w150 the unknownword w7 model"]
    with open(os.path.join(args.out, "texts.jsonl"), "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    def score_any(seq):
        return scores_of(model, seq) if len(seq) >= 2 else {"sum_logprob": 0.0, "token_logprobs": []}
    text_ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    ref = {"ids": ids, "logits": logits.flatten().tolist(), "shape": list(logits.shape), "loss": float(loss), "scores": scores,
           "text_scores": [score_any(t) for t in text_ids], "text_bos_scores": [score_any([1] + t) for t in text_ids]}
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(json.dumps({"variant": args.variant, "files": sorted(os.listdir(args.out))}))


def logits_cmd(args):
    model = DeepseekV3ForCausalLM.from_pretrained(args.dir, dtype=torch.float32).eval()
    ids = json.load(open(args.ids))["ids"]
    logits = logits_of(model, ids)
    with open(args.out, "w") as f:
        json.dump({"logits": logits.flatten().tolist(), "shape": list(logits.shape)}, f)


def score_cmd(args):
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = DeepseekV3ForCausalLM.from_pretrained(args.dir, dtype=dtype).to(args.device).eval()
    with open(args.tokens) as f, open(args.out, "w") as out:
        for line in f:
            seq = json.loads(line)["tokens"]
            if len(seq) < 2:
                out.write(json.dumps({"sum_logprob": 0.0, "token_logprobs": []}) + "\n")
                continue
            with torch.no_grad():
                logits = model(torch.tensor([seq], device=args.device)).logits[0].float()
            lp = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(seq[1:], device=args.device)[:, None])[:, 0].double()
            out.write(json.dumps({"sum_logprob": float(lp.sum()), "token_logprobs": lp.tolist()}) + "\n")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out")
    m.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    m.add_argument("--layout", choices=["fused", "per-expert"])
    m.add_argument("--shards", type=int, default=1)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--mtp", type=int, default=0)
    l = sub.add_parser("logits")
    l.add_argument("dir")
    l.add_argument("ids")
    l.add_argument("out")
    s = sub.add_parser("score")
    s.add_argument("dir")
    s.add_argument("tokens")
    s.add_argument("out")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    s.add_argument("--device", default="cpu")
    args = p.parse_args()
    {"make": make, "logits": logits_cmd, "score": score_cmd}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
