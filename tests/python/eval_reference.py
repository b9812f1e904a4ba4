"""Reference side of the os-eval run tests: a tiny random DeepseekV3ForCausalLM with OpenSeek's
tokenizer, and transformers' log-likelihoods of requests computed the way lighteval's HF backend
computes them (one forward of (context + continuation)[:-1] per request, fp32, the continuation's
log-probs summed).

  eval_reference.py make OUT --tokenizer DIR [--seed N]
      writes OUT/{config.json, model.safetensors} and copies the tokenizer files of DIR into OUT
  eval_reference.py loglik MODEL REQUESTS_JSONL OUT_JSONL
      one {"context": [ids], "continuation": [ids]} per line in, one {"logprob": x} per line out
  eval_reference.py h5dump FILE
      prints an HDF5 file read with h5py as JSON: root attributes, and per group its attributes
      and every dataset's values (strings decoded)
"""

import argparse
import json
import os
import shutil

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

from hf_deepseek import scaled_init_

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "qwen.tiktoken"]


def make(args):
    torch.manual_seed(args.seed)
    files = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(args.tokenizer, f))]
    vocab = args.vocab
    cfg = DeepseekV3Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, n_shared_experts=1, n_routed_experts=4, num_experts_per_tok=2,
        routed_scaling_factor=2.446, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=8,
        v_head_dim=8, first_k_dense_replace=1, n_group=1, topk_group=1, max_position_embeddings=4096,
        rms_norm_eps=1e-6, num_nextn_predict_layers=0, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    model = DeepseekV3ForCausalLM(cfg).float().eval()
    # Large enough weights that choices get clearly different scores.
    scaled_init_(model)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    for f in files:
        shutil.copy(os.path.join(args.tokenizer, f), os.path.join(args.out, f))
    print(json.dumps({"files": sorted(os.listdir(args.out))}))


def loglik(args):
    model = DeepseekV3ForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    with open(args.requests) as f, open(args.out, "w") as out, torch.no_grad():
        for line in f:
            r = json.loads(line)
            ctx, cont = r["context"], r["continuation"]
            inp = (ctx + cont)[:-1]
            logits = model(torch.tensor([inp])).logits[0].double()
            lp = torch.log_softmax(logits, -1)[len(inp) - len(cont):]
            score = lp.gather(1, torch.tensor(cont)[:, None]).sum().item()
            out.write(json.dumps({"logprob": score}) + "\n")


def h5dump(args):
    import h5py
    import numpy as np

    def plain(v):
        if isinstance(v, bytes):
            return v.decode()
        if isinstance(v, np.ndarray):
            return [plain(x) for x in v.tolist()]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    with h5py.File(args.file, "r") as f:
        out = {"attrs": {k: plain(v) for k, v in f.attrs.items()}, "groups": {}}
        for name, g in f.items():
            out["groups"][name] = {
                "attrs": {k: plain(v) for k, v in g.attrs.items()},
                "datasets": {k: plain(d[()]) for k, d in g.items()},
            }
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out")
    m.add_argument("--tokenizer", required=True)
    m.add_argument("--vocab", type=int, default=151851)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(fn=make)
    l = sub.add_parser("loglik")
    l.add_argument("model")
    l.add_argument("requests")
    l.add_argument("out")
    l.set_defaults(fn=loglik)
    h = sub.add_parser("h5dump")
    h.add_argument("file")
    h.set_defaults(fn=h5dump)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
