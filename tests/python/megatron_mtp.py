"""Reference side of the multi-token-prediction parity test (lib/train/tests/mtp_parity.rs):
megatron-core's GPTModel with a MultiTokenPredictionBlock on CPU, fp32.

  megatron_mtp.py make OUT
      builds the small DeepSeek-V3-style model of megatron_ckpt.py (MLA, dense first layer, 8 routed
      experts with expert bias, shared experts; local layer spec) with 2 MTP layers (the last
      decoder layer's spec, as get_gpt_mtp_block_spec builds them), vocabulary 256 (no padding:
      megatron-core's loss sees every row), and saves it before training as
        OUT/torch/   the legacy torch layout (one rank, Megatron's file names)
        OUT/dist/    torch_dist (megatron-core's dist_checkpointing)
      then, for each loss averaging MODE, from those weights, runs STEPS steps; per step a batch of
      token ids, labels (the next tokens) and a loss mask with holes; the decoder's output (after its
      final norm: what megatron-core hands the MTP block) is cut into a leaf, so the backward of the
      MTP loss alone (the main loss weighted 0) gives exactly the MTP part of every gradient.
      per_token: calculate_per_token_loss on (the MTP loss is the masked sum per depth times
      mtp_loss_scaling_factor / depths) and the backward scale 1 / (loss tokens), as os-train
      normalises; per_micro_batch: calculate_per_token_loss off (each depth's masked sum over its
      own tokens), one micro-batch. After each step plain SGD (lr LR) on every
      parameter. Writes OUT/MODE_stepN.safetensors: ids, labels (float32), loss_mask [B, T], hidden [B, T, H] (the
      leaf), grad.hidden, and grad.<name> for every parameter with a gradient, under the HF names
      of transformers' DeepSeek-V3 layout (MTP layer k as model.layers.{4 + k}, experts fused as
      mlp.experts.gate_up_proj [E, 2I, H] / mlp.experts.down_proj [E, H, I]); and OUT/reference.json:
      per mode and step the MTP depths' masked loss sums and token counts (megatron-core's logging
      tracker times its counts), the coefficient, the depths, the learning rate.
"""
import dataclasses
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megatron_ckpt as mc  # noqa: E402  (its CPU patches of torch.cuda apply here too)
import torch  # noqa: E402

DEPTHS, COEFF, LR, STEPS = 2, 0.3, 0.5, 3
VOCAB = 256
B, T = 2, 12


def build(per_token):
    ps = mc.megatron()
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec

    ps.initialize_model_parallel(1, 1, expert_model_parallel_size=1, expert_tensor_parallel_size=1)
    cfg = dataclasses.replace(mc.config(1, 1, 1), mtp_num_layers=DEPTHS, mtp_loss_scaling_factor=COEFF, calculate_per_token_loss=per_token)
    spec = get_gpt_decoder_block_spec(cfg, use_transformer_engine=False, normalization="RMSNorm", pp_rank=0)
    sdpa = sdpa_mla()
    for ls in spec.layer_specs:
        ls.submodules.self_attention.submodules.core_attention = sdpa
    mtp_spec = get_gpt_mtp_block_spec(cfg, spec, use_transformer_engine=False)
    torch.manual_seed(1234)
    model = GPTModel(config=cfg, transformer_layer_spec=spec, vocab_size=VOCAB, max_sequence_length=64,
                     position_embedding_type="rope", share_embeddings_and_output_weights=False,
                     pre_process=True, post_process=True, mtp_block_spec=mtp_spec)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():  # norms and expert bias are constant at init: make every tensor distinctive
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # weights large enough that routing and the losses are far from uniform
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=g))
    return model


def sdpa_mla():
    """megatron_ckpt.py's stand-in for TE's core attention: causal SDPA with MLA's softmax scale."""
    from megatron.core.transformer.module import MegatronModule

    class SdpaMLA(MegatronModule):
        def __init__(self, config, layer_number, attn_mask_type, attention_type, softmax_scale=None,
                     k_channels=None, v_channels=None, cp_comm_type=None, pg_collection=None):
            super().__init__(config=config)
            self.scale = softmax_scale

        def forward(self, q, k, v, attention_mask, attn_mask_type=None, packed_seq_params=None, **kw):
            q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            return o.permute(2, 0, 1, 3).reshape(o.shape[2], o.shape[0], -1)

    return SdpaMLA


def hf_grads(model):
    """Every parameter's gradient under transformers' DeepSeek-V3 names (fused experts)."""
    out, experts = {}, {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad.detach().clone()
        m = re.match(r"mtp\.layers\.(\d+)\.(.*)$", name)
        if m:
            k, rest = int(m.group(1)), m.group(2)
            prefix = f"model.layers.{4 + k}."
            own = {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "eh_proj.weight": "eh_proj.weight",
                   "final_layernorm.weight": "shared_head.norm.weight"}
            if rest in own:
                out[prefix + own[rest]] = g
                continue
            name = f"decoder.layers.{4 + k}." + rest.removeprefix("transformer_layer.")
        e = re.match(r"decoder\.layers\.(\d+)\.mlp\.experts\.local_experts\.(\d+)\.linear_fc([12])\.weight$", name)
        if e:
            experts.setdefault((int(e.group(1)), e.group(3)), {})[int(e.group(2))] = g
            continue
        hf = mc.hf_name(name)
        if "{gate,up}" in hf:
            half = g.shape[0] // 2
            out[hf.replace("{gate,up}", "gate")], out[hf.replace("{gate,up}", "up")] = g[:half], g[half:]
        else:
            out[hf] = g
    for (layer, fc), per in experts.items():
        stacked = torch.stack([per[e] for e in sorted(per)])
        out[f"model.layers.{layer}.mlp.experts." + ("gate_up_proj" if fc == "1" else "down_proj")] = stacked
    return out


def make(out):
    os.makedirs(out, exist_ok=True)
    mc.init_dist(0, 1, mc.free_port())
    modes = {}
    for mode in ("per_token", "per_micro_batch"):
        model = build(per_token=mode == "per_token")
        if mode == "per_token":  # the same initial weights for both modes: saved once
            save_checkpoints(model, out)
        modes[mode] = train(model, out, mode)
        mc.megatron().destroy_model_parallel()
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"depths": DEPTHS, "coeff": COEFF, "lr": LR, "modes": modes}, f)
    print(json.dumps({"steps": STEPS, "files": sorted(os.listdir(out))}))


def save_checkpoints(model, out):
    args_fields = dict(padded_vocab_size=VOCAB, mtp_num_layers=DEPTHS, mtp_loss_scaling_factor=COEFF)
    for fmt, save in (("torch", mc.save_legacy), ("dist", mc.save_dist)):
        orig = mc.args_namespace  # the args megatron_ckpt.py writes, with the MTP fields and this vocabulary
        mc.args_namespace = lambda *a, **k: _with(orig(*a, **k), args_fields)
        try:
            save(model, os.path.join(out, fmt), 1, 1, 1, False)
        finally:
            mc.args_namespace = orig


def train(model, out, mode):
    """STEPS steps of `model` (see the module comment); returns each step's MTP loss sums and counts."""
    from safetensors.torch import save_file
    from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler, MTPLossLoggingHelper

    model.train()
    captured = {}

    def cut(module, inputs, output):
        leaf = output.detach().requires_grad_()
        captured["hidden"] = leaf
        return leaf

    model.decoder.register_forward_hook(cut)
    g = torch.Generator().manual_seed(5)
    steps = []
    for step in range(1, STEPS + 1):
        seq = torch.randint(0, VOCAB, (B, T + 1), generator=g)
        ids, labels = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        loss_mask = (torch.rand(B, T, generator=g) > 0.2).float()
        tokens = float(loss_mask.sum())
        # per_token: the masked sums, scaled by 1 / (loss tokens) as os-train normalises; per
        # micro-batch: megatron-core divides each depth by its own tokens, 1 / (micro-batches) = 1.
        MTPLossAutoScaler.set_loss_scale(torch.tensor(1.0 / tokens if mode == "per_token" else 1.0))
        model.zero_grad(set_to_none=True)
        pos = torch.arange(T).unsqueeze(0).expand(B, T)
        main = model(ids, pos, attention_mask=None, labels=labels, loss_mask=loss_mask)
        (main * 0.0).sum().backward()
        values = MTPLossLoggingHelper.tracker["values"].clone()  # per depth: masked sum / its tokens
        MTPLossLoggingHelper.clean_loss_in_tracker()
        counts, mask = [], loss_mask.clone()
        for _ in range(DEPTHS):
            mask = torch.roll(mask, -1, -1)
            mask[:, -1] = 0
            counts.append(float(mask.sum()))
        hidden = captured["hidden"]  # [T, B, H]
        # Token ids as float32 (exact below 2^24): the model crate's safetensors reader takes float dtypes.
        tensors = {"ids": ids.float(), "labels": labels.float(), "loss_mask": loss_mask, "hidden": hidden.detach().transpose(0, 1).contiguous(),
                   "grad.hidden": hidden.grad.transpose(0, 1).contiguous()}
        tensors.update({f"grad.{k}": v.contiguous() for k, v in hf_grads(model).items()})
        save_file(tensors, os.path.join(out, f"{mode}_step{step}.safetensors"))
        steps.append({"sums": [float(v) * c for v, c in zip(values, counts)], "counts": counts, "loss_tokens": tokens})
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= LR * p.grad
    return steps


def _with(ns, fields):
    for k, v in fields.items():
        setattr(ns, k, v)
    return ns


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
