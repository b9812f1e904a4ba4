"""Real Megatron checkpoints of a small DeepSeek-V3-style model (MLA + MoE, dense first layer) for
os-megatron2hf's tests, made with megatron-core on CPU (gloo).

  make OUT   builds the model with megatron-core's local layer spec (TP=1), records its forward as
             per-token log-probs (untied and tied output), saves it as torch_dist, then lets
             megatron-core itself reshard that checkpoint into models of other parallel layouts
             (several processes, gloo) which are saved again:
               OUT/dist_tp1      torch_dist, TP1                       (megatron-core save)
               OUT/dist_tp2ep2   torch_dist, TP2 EP2                   (megatron-core save)
               OUT/dist_allmoe   torch_dist, TP1, a second model whose layers are all MoE, with q-LoRA:
                                 megatron-core stacks homogeneous layers into one tensor per name (layer
                                 axis first)
               OUT/torch_tp2ep2  legacy torch, TP2 EP2, untied         (Megatron's file layout)
               OUT/torch_pp2     legacy torch, PP2, tied embeddings    (Megatron's file layout)
               OUT/torch_te_ep2  legacy torch, EP2, bf16, Transformer Engine names (fused norms, grouped-GEMM
                                 experts linear_fc1.weight{k}, BytesIO extra state): TE does not run on CPU, so
                                 these files are the TP1 model's weights renamed and split as TE's spec
                                 names and splits them, written with torch in Megatron's layout
               OUT/torch_gg_tp2ep2  torch_tp2ep2 with the experts in the legacy GroupedMLP layout (weight1/weight2)
               OUT/bad_unknown   torch_tp2ep2 with a key no converter knows (GQA's fused linear_qkv, which MLA has not) in rank 0
               OUT/bad_shape     torch_tp2ep2 with rank 1's layer-0 q_proj cut to fewer rows
             and OUT/full.pt, OUT/full_allmoe.pt (the TP1 state dicts), OUT/reference.json, OUT/tokens.jsonl.
  check FULL HF[:tied][:bf16][:allmoe]...   every tensor of each converted HF dir equals the TP1 source
             FULL (full_allmoe.pt beside it with :allmoe) after the documented key mapping (prints the
             number of tensors compared per dir).
  transformers OUT HF:KEY...   transformers' DeepseekV3ForCausalLM loads each converted dir; prints the
             largest |log-prob difference| from megatron-core's forward (reference.json KEY) per dir.

megatron-core (no megatron.training) has no legacy-format writer, so the legacy files are written the
way megatron/training/checkpointing.py writes them: torch.save of {args, checkpoint_version,
iteration, model, optimizer, opt_param_scheduler, rng_state, ...} at
iter_%07d/mp_rank_{tp:02d}[_{pp:03d}][_{ep:03d}]/model_optim_rng.pt, the EP suffix only when EP > 1,
only expert-data-parallel rank 0 writing.
Megatron's MLA needs TE's core attention; on CPU a plain causal SDPA with MLA's softmax scale stands in.
"""
import argparse
import json
import os
import random
import sys
import warnings

warnings.filterwarnings("ignore")
import numpy as np
import torch
import torch.distributed as dist

torch.cuda.current_device = lambda: "cpu"  # RotaryEmbedding asks for a device even on CPU
torch.cuda.synchronize = lambda *a: None  # megatron-core's checkpoint writer syncs CUDA before writing
torch.Tensor.cuda = lambda self, *a, **k: self  # the tied output layer of the last pipeline stage is moved to CUDA

VOCAB, PADDED, ITER = 250, 256, 10
MOE_FREQ = [0, 1, 1, 1]  # layer 0 dense, as OpenSeek's first_k_dense_replace 1
Q_LORA = None  # OpenSeek's q_proj; the all-MoE model has a q-LoRA rank
SEQS_SEED = 7


def megatron():
    from megatron.core import parallel_state as ps
    import megatron.core.transformer.multi_latent_attention as mla
    import megatron.core.transformer.moe.moe_utils as mu
    mla.HAVE_TE = False
    mu.te_general_gemm = None
    return ps


def config(tp, pp, ep):
    from megatron.core.transformer.transformer_config import MLATransformerConfig
    return MLATransformerConfig(
        num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
        q_lora_rank=Q_LORA, kv_lora_rank=32, qk_head_dim=16, qk_pos_emb_head_dim=8, v_head_dim=16,
        normalization="RMSNorm", layernorm_epsilon=1e-6, rope_type="rope", rotary_base=10000,
        rotary_scaling_factor=1.0, apply_rope_fusion=False, qk_layernorm=True, gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False,
        num_moe_experts=8, moe_router_topk=2, moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=64,
        moe_layer_freq=MOE_FREQ, moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
        moe_router_topk_scaling_factor=2.5, moe_router_load_balancing_type="none",
        moe_token_dispatcher_type="allgather", moe_grouped_gemm=False, moe_router_dtype="fp32",
        use_cpu_initialization=True, params_dtype=torch.float32, pipeline_dtype=torch.float32, hidden_dropout=0.0, attention_dropout=0.0,
        init_method_std=0.02, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep, expert_tensor_parallel_size=1, sequence_parallel=False)


def args_namespace(tp, pp, ep, tied, fmt):
    """The fields of Megatron's args that a converter reads (names as megatron/training/arguments.py)."""
    return argparse.Namespace(
        num_layers=4, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=None,
        kv_channels=16, max_position_embeddings=64, seq_length=64, padded_vocab_size=PADDED, vocab_size=None,
        make_vocab_size_divisible_by=64, multi_latent_attention=True, q_lora_rank=Q_LORA, kv_lora_rank=32,
        qk_head_dim=16, qk_pos_emb_head_dim=8, v_head_dim=16, num_experts=8, moe_router_topk=2,
        moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=64, moe_layer_freq=MOE_FREQ,
        moe_router_score_function="sigmoid", moe_router_enable_expert_bias=True,
        moe_router_topk_scaling_factor=2.5, moe_router_num_groups=None, moe_router_group_topk=None,
        moe_grouped_gemm=False, norm_epsilon=1e-6, normalization="RMSNorm", rotary_base=10000,
        rope_type="rope", position_embedding_type="rope", swiglu=True, qk_layernorm=True,
        add_bias_linear=False, untie_embeddings_and_output_weights=not tied, bf16=False, fp16=False,
        params_dtype=torch.float32, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep, expert_tensor_parallel_size=1, ckpt_format=fmt, iteration=ITER,
        save="/checkpoints", lr=3e-4, seed=1234, micro_batch_size=1, global_batch_size=8)


def build(tp, pp, ep, tied):
    ps = megatron()
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
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

    ps.initialize_model_parallel(tp, pp, expert_model_parallel_size=ep, expert_tensor_parallel_size=1)
    cfg = config(tp, pp, ep)
    spec = get_gpt_decoder_block_spec(cfg, use_transformer_engine=False, normalization="RMSNorm",
                                      pp_rank=ps.get_pipeline_model_parallel_rank())
    for ls in spec.layer_specs:
        ls.submodules.self_attention.submodules.core_attention = SdpaMLA
    torch.manual_seed(1234)
    return GPTModel(config=cfg, transformer_layer_spec=spec, vocab_size=PADDED, max_sequence_length=64,
                    position_embedding_type="rope", share_embeddings_and_output_weights=tied,
                    pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage())


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_dist(rank, world, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def sequences():
    g = torch.Generator().manual_seed(SEQS_SEED)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (12, 7, 16)]


def logprobs(model, seq):
    ids = torch.tensor([seq])
    pos = torch.arange(len(seq)).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids, pos, attention_mask=None)[0, :, :VOCAB].double()
    lp = torch.log_softmax(logits, -1)
    tok = [lp[i, seq[i + 1]].item() for i in range(len(seq) - 1)]
    return {"sum_logprob": sum(tok), "token_logprobs": tok}


def save_dist(model, path, tp, pp, ep, tied):
    from megatron.core import dist_checkpointing
    it = os.path.join(path, f"iter_{ITER:07d}")
    os.makedirs(it, exist_ok=True)
    sd = {"model": model.sharded_state_dict(), "args": args_namespace(tp, pp, ep, tied, "torch_dist"),
          "iteration": ITER, "checkpoint_version": 3.0}
    dist_checkpointing.save(sd, it)
    if dist.get_rank() == 0:
        with open(os.path.join(path, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(ITER))


def save_legacy(model, path, tp, pp, ep, tied):
    ps = megatron()
    if ps.get_expert_data_parallel_rank() != 0:
        return
    t, p, e = ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(), ps.get_expert_model_parallel_rank()
    name = f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}"
    if ep > 1:
        name += f"_{e:03d}"
    d = os.path.join(path, f"iter_{ITER:07d}", name)
    os.makedirs(d, exist_ok=True)
    params = [q for q in model.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    for q in params:
        q.grad = torch.zeros_like(q)
    opt.step()  # optimizer state with tensors, as a real checkpoint carries
    state = {
        "args": args_namespace(tp, pp, ep, tied, "torch"),
        "checkpoint_version": 3.0,
        "iteration": ITER,
        "model": model.state_dict_for_save_checkpoint(),
        "optimizer": {"optimizer": opt.state_dict(), "param_groups": opt.state_dict()["param_groups"]},
        "opt_param_scheduler": {"max_lr": 3e-4, "num_steps": ITER * 8},
        "rng_state": [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                       "torch_rng_state": torch.get_rng_state(), "rng_tracker_states": {}}],
        "num_floating_point_operations_so_far": 1.5e12,
    }
    torch.save(state, os.path.join(d, "model_optim_rng.pt"))
    if dist.get_rank() == 0:
        with open(os.path.join(path, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(ITER))


def reshard(rank, world, out, tp, pp, ep, tied, saves, port):
    init_dist(rank, world, port)
    from megatron.core import dist_checkpointing
    model = build(tp, pp, ep, tied)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, os.path.join(out, "dist_tp1", f"iter_{ITER:07d}"))
    model.load_state_dict(loaded["model"], strict=False)
    for kind, name in saves:
        (save_dist if kind == "dist" else save_legacy)(model, os.path.join(out, name), tp, pp, ep, tied)
    dist.barrier()
    dist.destroy_process_group()


def source_model():
    model = build(1, 1, 1, False)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():  # norms and expert bias are constant at init: make every tensor distinctive
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=g))
    model.eval()
    return model


def make(out):
    global MOE_FREQ, Q_LORA
    os.makedirs(out, exist_ok=True)
    init_dist(0, 1, free_port())
    model = source_model()
    seqs = sequences()
    ref = {"vocab": VOCAB, "untied": [logprobs(model, s) for s in seqs]}
    emb = model.embedding.word_embeddings.weight
    saved = model.output_layer.weight.detach().clone()
    with torch.no_grad():
        model.output_layer.weight.copy_(emb)
        ref["tied"] = [logprobs(model, s) for s in seqs]
        model.output_layer.weight.copy_(saved)
    torch.save({k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}, os.path.join(out, "full.pt"))
    save_dist(model, os.path.join(out, "dist_tp1"), 1, 1, 1, False)
    megatron().destroy_model_parallel()
    MOE_FREQ, Q_LORA = 1, 24
    model = source_model()
    ref["allmoe"] = [logprobs(model, s) for s in seqs]
    torch.save({k: v for k, v in model.state_dict().items() if torch.is_tensor(v)}, os.path.join(out, "full_allmoe.pt"))
    save_dist(model, os.path.join(out, "dist_allmoe"), 1, 1, 1, False)
    MOE_FREQ, Q_LORA = [0, 1, 1, 1], None
    dist.destroy_process_group()
    megatron().destroy_model_parallel()
    with open(os.path.join(out, "tokens.jsonl"), "w") as f:
        for s in seqs:
            f.write(json.dumps({"tokens": s}) + "\n")
    import torch.multiprocessing as mp
    mp.spawn(reshard, args=(2, out, 2, 1, 2, False, [("torch", "torch_tp2ep2"), ("dist", "dist_tp2ep2")], free_port()), nprocs=2)
    mp.spawn(reshard, args=(2, out, 1, 2, 1, True, [("torch", "torch_pp2")], free_port()), nprocs=2)
    te_layout(out)
    broken(out, "torch_gg_tp2ep2", None, grouped_gemm)
    broken(out, "bad_unknown", "mp_rank_00_000", lambda m: m.__setitem__("decoder.layers.0.self_attention.linear_qkv.weight", torch.ones(192, 64)))
    key = "decoder.layers.0.self_attention.linear_q_proj.weight"
    broken(out, "bad_shape", "mp_rank_01_001", lambda m: m.__setitem__(key, m[key][:40].clone()))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f)


def te_layout(out):
    import io
    import re
    full = torch.load(os.path.join(out, "full.pt"))
    per_rank = 4  # 8 experts over EP 2
    models = [{}, {}]
    for k, v in full.items():
        v = v.to(torch.bfloat16) if not k.endswith("expert_bias") else v
        k = k.replace("self_attention.kv_layernorm.weight", "self_attention.linear_kv_up_proj.layer_norm_weight")
        k = k.replace("decoder.layers.0.pre_mlp_layernorm.weight", "decoder.layers.0.mlp.linear_fc1.layer_norm_weight")
        m = re.match(r"(decoder\.layers\.\d+\.mlp\.experts\.)local_experts\.(\d+)\.(linear_fc[12])\.weight$", k)
        if m:
            e = int(m.group(2))
            models[e // per_rank][f"{m.group(1)}{m.group(3)}.weight{e % per_rank}"] = v
            models[e // per_rank][f"{m.group(1)}{m.group(3)}._extra_state"] = io.BytesIO(b"")
            continue
        for r in models:
            r[k] = v
    for ep, model in enumerate(models):
        d = os.path.join(out, "torch_te_ep2", f"iter_{ITER:07d}", f"mp_rank_00_{ep:03d}")
        os.makedirs(d)
        args = args_namespace(1, 1, 2, False, "torch")
        args.bf16, args.params_dtype, args.moe_grouped_gemm, args.transformer_impl = True, torch.bfloat16, True, "transformer_engine"
        torch.save({"args": args, "checkpoint_version": 3.0, "iteration": ITER, "model": model}, os.path.join(d, "model_optim_rng.pt"))
    with open(os.path.join(out, "torch_te_ep2", "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(ITER))


def grouped_gemm(model):
    """Megatron's legacy GroupedMLP layout of a rank's local experts: weight1 [H, E_local * 2I] and
    weight2 [E_local * I, H], whose memory the forward reads as view(E_local, H, -1) / view(E_local, -1, H)."""
    for layer in range(1, 4):
        p = f"decoder.layers.{layer}.mlp.experts."
        fc1 = [model.pop(f"{p}local_experts.{k}.linear_fc1.weight") for k in range(4)]
        fc2 = [model.pop(f"{p}local_experts.{k}.linear_fc2.weight") for k in range(4)]
        for k in range(4):
            model.pop(f"{p}local_experts.{k}.linear_fc1._extra_state")
            model.pop(f"{p}local_experts.{k}.linear_fc2._extra_state")
        model[p + "weight1"] = torch.stack([w.t() for w in fc1]).contiguous().view(64, -1)
        model[p + "weight2"] = torch.stack([w.t() for w in fc2]).contiguous().view(-1, 64)


def broken(out, name, rank, change):
    """A copy of torch_tp2ep2 with `change` applied to the model of one rank (all when rank is None)."""
    import shutil
    shutil.copytree(os.path.join(out, "torch_tp2ep2"), os.path.join(out, name))
    ranks = [rank] if rank else sorted(os.listdir(os.path.join(out, name, f"iter_{ITER:07d}")))
    for r in ranks:
        path = os.path.join(out, name, f"iter_{ITER:07d}", r, "model_optim_rng.pt")
        state = torch.load(path, weights_only=False)
        change(state["model"])
        torch.save(state, path)


def hf_name(k):
    """The documented Megatron -> HF mapping (FORMATS.md section 6), local spec; None: no HF tensor."""
    import re
    fixed = {"embedding.word_embeddings.weight": "model.embed_tokens.weight",
             "decoder.final_layernorm.weight": "model.norm.weight", "output_layer.weight": "lm_head.weight"}
    if k in fixed:
        return fixed[k]
    m = re.match(r"decoder\.layers\.(\d+)\.(.*)$", k)
    n, rest = m.group(1), m.group(2)
    table = {"input_layernorm.weight": "input_layernorm.weight",
             "self_attention.linear_q_proj.weight": "self_attn.q_proj.weight",
             "self_attention.linear_q_down_proj.weight": "self_attn.q_a_proj.weight",
             "self_attention.q_layernorm.weight": "self_attn.q_a_layernorm.weight",
             "self_attention.linear_q_up_proj.weight": "self_attn.q_b_proj.weight",
             "self_attention.linear_kv_down_proj.weight": "self_attn.kv_a_proj_with_mqa.weight",
             "self_attention.kv_layernorm.weight": "self_attn.kv_a_layernorm.weight",
             "self_attention.linear_kv_up_proj.weight": "self_attn.kv_b_proj.weight",
             "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
             "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
             "mlp.linear_fc1.weight": "mlp.{gate,up}_proj.weight", "mlp.linear_fc2.weight": "mlp.down_proj.weight",
             "mlp.router.weight": "mlp.gate.weight", "mlp.router.expert_bias": "mlp.gate.e_score_correction_bias",
             "mlp.shared_experts.linear_fc1.weight": "mlp.shared_experts.{gate,up}_proj.weight",
             "mlp.shared_experts.linear_fc2.weight": "mlp.shared_experts.down_proj.weight"}
    e = re.match(r"mlp\.experts\.local_experts\.(\d+)\.linear_fc([12])\.weight$", rest)
    if e:
        return f"model.layers.{n}.mlp.experts.{e.group(1)}." + ("{gate,up}_proj.weight" if e.group(2) == "1" else "down_proj.weight")
    return f"model.layers.{n}." + table[rest]


def check(hf, full, tied, bf16):
    from safetensors import safe_open
    index = json.load(open(os.path.join(hf, "model.safetensors.index.json")))["weight_map"]
    got = {}
    for shard in sorted(set(index.values())):
        with safe_open(os.path.join(hf, shard), "pt") as f:
            for k in f.keys():
                got[k] = f.get_tensor(k)
    src = torch.load(full)
    want = {}
    for k, v in src.items():
        if k == "output_layer.weight" and tied:
            continue
        if k.endswith("_extra_state"):
            continue
        if bf16 and not k.endswith("expert_bias"):
            v = v.to(torch.bfloat16)
        name = hf_name(k)
        if k == "embedding.word_embeddings.weight" or k == "output_layer.weight":
            v = v[:VOCAB]
        if "{gate,up}" in name:
            half = v.shape[0] // 2
            want[name.replace("{gate,up}", "gate")] = v[:half]
            want[name.replace("{gate,up}", "up")] = v[half:]
        else:
            want[name] = v
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    for k, v in want.items():
        assert got[k].shape == v.shape and torch.equal(got[k], v), f"{k}: differs from the source"
    print(len(want))


def transformers_diff(out, specs):
    from transformers import AutoModelForCausalLM
    ref = json.load(open(os.path.join(out, "reference.json")))
    seqs = [json.loads(l)["tokens"] for l in open(os.path.join(out, "tokens.jsonl"))]
    for spec in specs:
        hf, key = spec.rsplit(":", 1)
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        worst = 0.0
        for s, r in zip(seqs, ref[key]):
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([s])).logits[0].double(), -1)
            worst = max([worst] + [abs(lp[i, s[i + 1]].item() - b) for i, b in enumerate(r["token_logprobs"])])
        print(worst)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "check":
        for spec in sys.argv[3:]:
            hf, *flags = spec.split(":")
            full = os.path.join(os.path.dirname(sys.argv[2]), "full_allmoe.pt") if "allmoe" in flags else sys.argv[2]
            check(hf, full, "tied" in flags, "bf16" in flags)
    elif sys.argv[1] == "transformers":
        transformers_diff(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
