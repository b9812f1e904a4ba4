"""Model parity at the full OpenSeek-Small-v1 shape: `os-eval score` against transformers' DeepseekV3ForCausalLM.

Builds a random-weight DeepseekV3ForCausalLM at the OpenSeek-Small-v1 shape (untied head, non-zero
e_score_correction_bias), saves it in bf16, and scores one fixed batch of random token ids with
  - transformers, fp32 weights (the bf16 checkpoint upcast) — the reference,
  - transformers, bf16,
  - `os-eval score --dtype bfloat16`,
then prints max / mean absolute differences of the per-token log-probs and of the loss (mean next-token
cross-entropy). `os-eval score` writes only the log-probs of the realised tokens, so argmax agreement is
reported for transformers bf16 against fp32 (the yardstick) only. A last row shows how far the log-probs
move when the correction bias is zeroed, so the parity figures can be read against a real routing change.

  python parity.py --os-eval PATH --out DIR [--device cuda] [--batch 4] [--seq 2048] [--shape full|small]
                   [--init scaled|hf]

`--shape small` is a CPU smoke test of the script itself (a tiny model), not a parity figure.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time

import torch
import transformers
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

# OpenSeek-Small-v1 (shared/reference/MODEL.md), HF config names.
FULL = dict(
    vocab_size=151851, hidden_size=1280, num_hidden_layers=6, num_attention_heads=10, num_key_value_heads=10,
    q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    intermediate_size=7168, moe_intermediate_size=896, n_routed_experts=64, num_experts_per_tok=6,
    n_shared_experts=2, n_group=1, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.446,
    first_k_dense_replace=1, rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=False,
    bos_token_id=151849, eos_token_id=151850, pad_token_id=151643, num_nextn_predict_layers=0,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6},
)
SMALL = FULL | dict(
    vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=32,
    qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, intermediate_size=96, moe_intermediate_size=32,
    n_routed_experts=8, num_experts_per_tok=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)


def build(shape, device, seed, init):
    torch.manual_seed(seed)
    cfg = DeepseekV3Config(**shape)
    with torch.device(device):
        model = DeepseekV3ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if init == "hf":
                break  # transformers' own init: normal(0, 0.02) matrices, unit norms
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name == "lm_head.weight":
                # Logits with std ≈ 3: distributions peaked enough that argmax and log-probs mean something.
                p.copy_(3.0 * torch.randn_like(p) / p.shape[-1] ** 0.5)
            elif p.dim() >= 2:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn_like(p))
        biases = []
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None:
                gate.e_score_correction_bias.copy_(0.1 * torch.randn_like(gate.e_score_correction_bias))
                biases.append(gate.e_score_correction_bias.detach().float().clone())
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        it = iter(biases)
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None:
                gate.e_score_correction_bias.data = next(it)  # stored fp32, as in the release
    return model


def hf_forward(model, ids, device):
    """Token log-probs [B, T-1] (fp32 math on the model's logits), argmax [B, T-1], loss (mean CE)."""
    lps, argmaxes = [], []
    with torch.no_grad():
        for row in ids:  # one sequence at a time: the fp32 logits of a 4 × 2048 batch alone are 5 GB
            x = row[None].to(device)
            logits = model(x).logits[0, :-1].float()
            lp = torch.log_softmax(logits, -1)
            lps.append(lp.gather(1, x[0, 1:, None])[:, 0].double().cpu())
            argmaxes.append(logits.argmax(-1).cpu())
            del logits, lp
    lp = torch.stack(lps)
    return lp, torch.stack(argmaxes), float(-lp.mean())


def compare(a, b):
    d = (a - b).abs()
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "max_abs_seq_sum": float((a.sum(1) - b.sum(1)).abs().max())}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--os-eval", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--shape", choices=["full", "small"], default="full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=["scaled", "hf"], default="scaled",
                   help="scaled: matrices N(0, 1/fan_in), lm_head ×3, norms 1 ± 0.2 (peaked logits, routing far from "
                        "uniform); hf: transformers' own init (N(0, 0.02), unit norms). Both set a non-zero correction bias.")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint directory")
    a = p.parse_args()
    shape = FULL if a.shape == "full" else SMALL
    os.makedirs(a.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="parity-", dir=os.environ.get("TMPDIR"))
    ckpt = os.path.join(work, "model")
    res = {"shape": a.shape, "init": a.init, "batch": a.batch, "seq": a.seq, "device": a.device, "host": platform.node(),
           "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
           "torch": torch.__version__, "transformers": transformers.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        t0 = time.time()
        model = build(shape, a.device, a.seed, a.init)
        res["params"] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(ckpt, safe_serialization=True)
        del model
        torch.cuda.empty_cache() if a.device.startswith("cuda") else None
        res["build_save_s"] = round(time.time() - t0, 1)
        res["checkpoint_files"] = sorted(os.listdir(ckpt))

        g = torch.Generator().manual_seed(a.seed + 1)
        ids = torch.randint(0, shape["vocab_size"], (a.batch, a.seq), generator=g)
        tokens = os.path.join(work, "tokens.jsonl")
        with open(tokens, "w") as f:
            for row in ids.tolist():
                f.write(json.dumps({"tokens": row}) + "\n")

        # os-eval first (the GPU is otherwise empty then).
        scored = os.path.join(work, "os-eval.jsonl")
        cmd = [a.os_eval, "score", "--model", ckpt, "--tokens", tokens, "--output", scored,
               "--device", a.device, "--dtype", "bfloat16"]
        t0 = time.time()
        subprocess.run(cmd, check=True)
        res["os_eval_wall_s"] = round(time.time() - t0, 1)
        with open(scored) as f:
            ose = torch.tensor([json.loads(line)["token_logprobs"] for line in f], dtype=torch.float64)
        assert ose.shape == (a.batch, a.seq - 1), f"os-eval wrote {tuple(ose.shape)} log-probs, expected {(a.batch, a.seq - 1)}"

        out = {}
        for name, dtype in (("hf_fp32", torch.float32), ("hf_bf16", torch.bfloat16)):
            m = DeepseekV3ForCausalLM.from_pretrained(ckpt, dtype=dtype).to(a.device).eval()
            bias_kind = str(m.model.layers[1].mlp.gate.e_score_correction_bias.dtype)
            t0 = time.time()
            out[name] = hf_forward(m, ids, a.device)
            res[f"{name}_forward_s"] = round(time.time() - t0, 1)
            res[f"{name}_bias_dtype"] = bias_kind
            if name == "hf_fp32":
                # How far the log-probs move when routing ignores the correction bias.
                with torch.no_grad():
                    for layer in m.model.layers:
                        if hasattr(layer.mlp, "gate"):
                            layer.mlp.gate.e_score_correction_bias.zero_()
                out["hf_fp32_nobias"] = hf_forward(m, ids, a.device)
            del m
            torch.cuda.empty_cache() if a.device.startswith("cuda") else None

        ref_lp, ref_arg, ref_loss = out["hf_fp32"]
        bf_lp, bf_arg, bf_loss = out["hf_bf16"]
        nb_lp, nb_arg, nb_loss = out["hf_fp32_nobias"]
        ose_loss = float(-ose.mean())
        res["loss"] = {"hf_fp32": ref_loss, "hf_bf16": bf_loss, "os_eval_bf16": ose_loss, "hf_fp32_nobias": nb_loss}
        res["rows"] = {
            "os-eval bf16 vs HF fp32": compare(ose, ref_lp) | {"loss_diff": ose_loss - ref_loss},
            "os-eval bf16 vs HF bf16": compare(ose, bf_lp) | {"loss_diff": ose_loss - bf_loss},
            "HF bf16 vs HF fp32 (yardstick)": compare(bf_lp, ref_lp) | {"loss_diff": bf_loss - ref_loss,
                                                                        "argmax_agree": float((bf_arg == ref_arg).double().mean())},
            "HF fp32 bias zeroed vs HF fp32": compare(nb_lp, ref_lp) | {"loss_diff": nb_loss - ref_loss,
                                                                        "argmax_agree": float((nb_arg == ref_arg).double().mean())},
        }
        res["mean_token_logprob_hf_fp32"] = float(ref_lp.mean())
        with open(os.path.join(a.out, "parity.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(json.dumps(res, indent=1))
        print()
        print("| comparison | max abs Δ log-prob | mean abs Δ log-prob | max abs Δ seq sum | Δ loss | argmax agree |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for k, r in res["rows"].items():
            agree = f"{100 * r['argmax_agree']:.2f} %" if "argmax_agree" in r else "n/a (os-eval writes no logits)"
            print(f"| {k} | {r['max_abs']:.4g} | {r['mean_abs']:.4g} | {r['max_abs_seq_sum']:.4g} | {r['loss_diff']:+.3g} | {agree} |")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
