"""Greedy generation at the full OpenSeek-Small-v1 shape: openseek-model's `greedy` (the example
binary lib/model/examples/greedy.rs) against transformers' `generate(do_sample=False)`, same random
checkpoint (bench/model/parity.py's `build`, bf16 on disk), same left-padded batches, no EOS.

Reports, per dtype: both wall times (generation only, after a warm-up), new tokens per second, and
token agreement (sequences identical; mean length of the common prefix over max_new); with both dtypes,
the yardstick: the common prefix of bf16 and fp32 decoding within each implementation.

  python generate.py --greedy PATH --out DIR [--device cuda] [--prompts 32] [--batch 32] [--max-new 128]
                     [--dtypes float32,bfloat16] [--shape full|small] [--ours-batch N]

`--batch` is transformers' static batch; `--ours-batch` (default: the same) the most sequences openseek-model
decodes together (continuous batching).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import torch
from transformers import DeepseekV3ForCausalLM, GenerationConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
from parity import FULL, SMALL, build  # noqa: E402


def common_prefix(a, b):
    return [next((i for i, (x, y) in enumerate(zip(p, q)) if x != y), min(len(p), len(q))) for p, q in zip(a, b)]


def mean(xs):
    return sum(xs) / len(xs)


def hf_generate(model, prompts, batch, max_new, pad, device):
    out = []
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new, min_new_tokens=max_new, eos_token_id=None, pad_token_id=pad)
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        t = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (t - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in chunk], device=device)
        with torch.no_grad():
            res = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        out += res[:, t:].tolist()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--greedy", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--shape", default="full", choices=["full", "small"])
    p.add_argument("--ours-batch", type=int)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    shape = FULL if a.shape == "full" else SMALL
    ckpt = os.path.join(a.out, "checkpoint")
    build(shape, a.device, 0, "scaled").save_pretrained(ckpt)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(100, 600, (a.prompts,), generator=g).tolist() if a.shape == "full" else [3, 9, 1, 5] * (a.prompts // 4)
    prompts = [torch.randint(3, shape["vocab_size"], (n,), generator=g).tolist() for n in lengths]
    with open(os.path.join(a.out, "prompts.json"), "w") as f:
        json.dump(prompts, f)
    results = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "prompts": a.prompts, "batch": a.batch,
               "ours_batch": a.ours_batch or a.batch,
               "max_new": a.max_new, "prompt_tokens": sum(lengths), "rows": []}
    outputs = {}
    for dtype in a.dtypes.split(","):
        model = DeepseekV3ForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).to(a.device).eval()
        hf_generate(model, prompts[:a.batch], a.batch, 4, shape["pad_token_id"], a.device)  # warm-up
        if a.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        want = hf_generate(model, prompts, a.batch, a.max_new, shape["pad_token_id"], a.device)
        if a.device == "cuda":
            torch.cuda.synchronize()
        hf_s = time.perf_counter() - t0
        del model
        if a.device == "cuda":
            torch.cuda.empty_cache()
        ours_file = os.path.join(a.out, f"ours_{dtype}.json")
        subprocess.run([a.greedy, ckpt, os.path.join(a.out, "prompts.json"), ours_file, a.device, dtype, str(a.ours_batch or a.batch), str(a.max_new)], check=True)
        ours = json.load(open(ours_file))
        got = ours["generated"]
        outputs[dtype] = (want, got)
        prefix = common_prefix(got, want)
        new_tokens = a.prompts * a.max_new
        row = {"dtype": dtype, "transformers_s": round(hf_s, 3), "ours_s": round(ours["seconds"], 3),
               "transformers_tok_per_s": round(new_tokens / hf_s, 1), "ours_tok_per_s": round(new_tokens / ours["seconds"], 1),
               "speedup": round(hf_s / ours["seconds"], 2), "identical_sequences": sum(g_ == w for g_, w in zip(got, want)),
               "mean_common_prefix": round(mean(prefix), 1), "all_full_length": all(len(x) == a.max_new for x in got)}
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
    if len(outputs) == 2:
        # The yardstick: how far bf16 rounding alone moves greedy decoding, for each implementation.
        (hf32, ours32), (hf16, ours16) = outputs["float32"], outputs["bfloat16"]
        results["bf16_vs_fp32_mean_common_prefix"] = {"transformers": round(mean(common_prefix(hf16, hf32)), 1),
                                                     "ours": round(mean(common_prefix(ours16, ours32)), 1)}
        print(json.dumps(results["bf16_vs_fp32_mean_common_prefix"]))
    with open(os.path.join(a.out, "generate.json"), "w") as f:
        json.dump(results, f, indent=1)
    shutil.rmtree(ckpt)


if __name__ == "__main__":
    main()
