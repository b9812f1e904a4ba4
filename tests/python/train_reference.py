"""Reference side of os-train's training-loop parity test: the same steps as os-train, written the
plain PyTorch way (transformers' DeepseekV3ForCausalLM in fp32 on the CPU, torch.optim.AdamW,
torch.nn.utils.clip_grad_norm_), on exactly the micro-batches os-train reads.

  train_reference.py PLAN_JSON OUT
      PLAN_JSON: {"seed", "vocab", "eos", "hyper": {...}, "modes": ["per_micro_batch", ...],
      "steps": [[micro-batch, ...], ...]} with each micro-batch {"tokens": [[...]], "labels": [[...]],
      "loss_mask": [[...]]} as os-train's reader made it. Writes OUT/init, a small random
      DeepseekV3ForCausalLM checkpoint (config.json + model.safetensors) that both sides start from,
      trains from it once per mode and writes OUT/reference.json: {mode: [{"loss", "lr", "grad_norm"}]}

What os-train does that a plain loop would not, done here as os-train documents it:
  - loss averaging (lib/train/src/train_step.rs): per_micro_batch divides each micro-batch's masked
    loss sum by its loss-token count times the micro-batches per step (Megatron's default);
    per_token divides by the step's loss-token count (Megatron's --calculate-per-token-loss);
  - the learning rate of a step is Megatron's schedule (lib/train/src/schedule.rs) at the samples
    of the updates taken before it; warm-up linear from 0, then cosine to min_lr;
  - no weight decay on norms, biases and the router's correction bias (lib/train/src/optim.rs);
  - DeepSeek-V3's auxiliary-loss-free balancing after each step: bias_e += rate * sign(mean load -
    load_e), the loads being the step's tokens per expert (lib/model/src/moe.rs Router::update_bias).
"""

import json
import math
import os
import sys

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM


def init(out, seed, vocab, eos):
    torch.manual_seed(seed)
    cfg = DeepseekV3Config(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
        first_k_dense_replace=1, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=None, kv_lora_rank=8,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
        n_shared_experts=1, n_group=1, topk_group=1, routed_scaling_factor=2.446, max_position_embeddings=256,
        rms_norm_eps=1e-6, num_nextn_predict_layers=0, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=eos, pad_token_id=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = DeepseekV3ForCausalLM(cfg).float()
    with torch.no_grad():
        # Router weights large enough that the experts' scores are well apart (no near-ties that
        # rounding could flip between the two implementations).
        for layer in model.model.layers:
            gate = getattr(layer.mlp, "gate", None)
            if gate is not None:
                gate.weight.copy_(torch.randn_like(gate.weight) / gate.weight.shape[1] ** 0.5)
    model.save_pretrained(out, safe_serialization=True)


def decays(name):
    return not (name.endswith("norm.weight") or name.endswith(".bias") or name.endswith("e_score_correction_bias"))


def lr_at(h, samples):
    """Megatron's OptimizerParamScheduler.get_lr in samples: linear warm-up, then cosine."""
    if h["warmup_samples"] > 0 and samples <= h["warmup_samples"]:
        return h["lr"] * samples / h["warmup_samples"]
    if samples > h["decay_end_samples"]:
        return h["min_lr"]
    ratio = (samples - h["warmup_samples"]) / (h["decay_end_samples"] - h["warmup_samples"])
    return h["min_lr"] + 0.5 * (math.cos(math.pi * ratio) + 1.0) * (h["lr"] - h["min_lr"])


def train(ckpt, plan, mode):
    h = plan["hyper"]
    model = DeepseekV3ForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    model.train()
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n)], "weight_decay": h["weight_decay"]},
        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=0.0, betas=(h["adam_beta1"], h["adam_beta2"]), eps=h["adam_eps"], foreach=False)
    routers = [l.mlp.gate for l in model.model.layers if hasattr(l.mlp, "gate")]
    loads = [torch.zeros(r.e_score_correction_bias.shape[0], dtype=torch.float32) for r in routers]

    def count_load(i):
        def hook(_module, _inputs, output):
            loads[i] += torch.bincount(output[2].flatten(), minlength=loads[i].shape[0]).float()
        return hook

    for i, r in enumerate(routers):
        r.register_forward_hook(count_load(i))

    schedule_samples = 0
    records = []
    for step in plan["steps"]:
        for l in loads:
            l.zero_()
        counts = [float(torch.tensor(mb["loss_mask"]).sum()) for mb in step]
        if mode == "per_token":
            denominators = [max(sum(counts), 1.0)] * len(step)
        else:
            denominators = [max(c, 1.0) * len(step) for c in counts]
        loss_total = 0.0
        for mb, denominator in zip(step, denominators):
            tokens = torch.tensor(mb["tokens"])
            labels = torch.tensor(mb["labels"]).flatten()
            mask = torch.tensor(mb["loss_mask"], dtype=torch.float32).flatten()
            logits = model(input_ids=tokens).logits.float()
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, reduction="none")
            loss = (ce * mask).sum() / denominator
            loss.backward()
            loss_total += loss.item()
        lr = lr_at(h, schedule_samples)
        clip = h["clip_grad"]
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf")).item()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        schedule_samples += h["global_batch_size"]
        rate = h["router_bias_update_rate"]
        if rate > 0:
            with torch.no_grad():
                for r, load in zip(routers, loads):
                    r.e_score_correction_bias.add_(torch.sign(load.mean() - load) * rate)
        records.append({"loss": loss_total, "lr": lr, "grad_norm": grad_norm})
    return records


def main():
    plan_path, out = sys.argv[1:]
    with open(plan_path) as f:
        plan = json.load(f)
    torch.set_num_threads(1)
    ckpt = os.path.join(out, "init")
    init(ckpt, plan["seed"], plan["vocab"], plan["eos"])
    reference = {mode: train(ckpt, plan, mode) for mode in plan["modes"]}
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f)


if __name__ == "__main__":
    sys.exit(main())
