"""The whole OpenSeek table as one measured job: `os-eval run --tasks openseek` at the OpenSeek-Small-v1
shape (random weights, bench/model/parity.py's `scaled` init, bf16; generation runs to the full budget: the
worst case), wall time per task and in total (process start and model load included), for one or two
os-eval binaries (today's and a baseline) on the same data, and the same requests through transformers as
lighteval v0.3.0's HF backend runs them (multiple choice: one row per request, sorted by length, padded
batches; generation: `generate(do_sample=False)` on left-padded batches sorted by length, to each item's
budget) on a sample of every task, extrapolated per task to the full counts.

  python table.py --os-eval BIN [--base BIN] --data DIR --tokenizer DIR --out DIR [--model DIR]
                  [--hf-mc 20] [--hf-gen 64] [--batch 64] [--mc-batch 16] [--shape full|small] [--device cuda]
                  [--tasks LIST --limit N]   (smoke tests)

--model keeps the random checkpoint in DIR (made there if missing), for other benchmarks of the same call.

`--shape small --device cpu` is a smoke test of the script itself (tiny model), not a figure.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from transformers import DeepseekV3ForCausalLM, GenerationConfig

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
from hf_eval import TOKENIZER_FILES, hf_scores  # noqa: E402
from parity import FULL, SMALL, build  # noqa: E402

COLUMNS = {"hellaswag": "HellaSwag", "arc": "ARC", "piqa": "PIQA", "mmlu": "MMLU", "commonsense_qa": "CommonsenseQA",
           "triviaqa": "TriviaQA", "winogrande": "Winogrande", "openbookqa": "OpenBookQA", "gsm8k": "GSM8K",
           "siqa": "SIQA", "ceval": "CEval", "cmmlu": "CMMLU"}


def column(task):
    return COLUMNS[task.split(":")[0]]


def run_os_eval(binary, model_dir, data, out, device, tasks, extra):
    cmd = [binary, "run", "--model", model_dir, "--data", data, "--tasks", tasks, "--output", out, "--device", device,
           "--quiet"] + extra
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    r = json.load(open(os.path.join(out, "results.json")))
    per_column = {}
    for t, v in r["tasks"].items():
        per_column[column(t)] = per_column.get(column(t), 0.0) + v["seconds"]
    generated = {}
    for t in ("gsm8k", "triviaqa"):
        rec = json.load(open(os.path.join(out, "tasks", t + ".json")))
        generated[t] = [it["generated"] for it in rec["items"]]
    return {"wall_s": round(wall, 2), "load_s": round(r["timings"]["load_seconds"], 2),
            "task_s": round(r["timings"]["task_seconds"], 2), "per_column_s": {k: round(v, 2) for k, v in per_column.items()},
            "table": {c["name"]: c["value"] for c in r["table"]["columns"]}, "mean": r["table"]["mean"],
            "items": {t: v["n"] for t, v in r["tasks"].items()}, "backend": r["backend"]}, generated


def hf_generate(model, items, batch, pad, device):
    """lighteval v0.3.0's HF greedy_until: prompts sorted by length, left-padded batches, greedy to the
    batch's largest budget; each output cut at its stop strings afterwards (costs nothing here)."""
    order = sorted(range(len(items)), key=lambda k: -len(items[k]["context"]))
    for b in range(0, len(order), batch):
        chunk = [items[k] for k in order[b:b + batch]]
        t = max(len(it["context"]) for it in chunk)
        ids = torch.tensor([[pad] * (t - len(it["context"])) + it["context"] for it in chunk], device=device)
        mask = torch.tensor([[0] * (t - len(it["context"])) + [1] * len(it["context"]) for it in chunk], device=device)
        budget = max(it["max_new_tokens"] for it in chunk)
        config = GenerationConfig(do_sample=False, max_new_tokens=budget, eos_token_id=None, pad_token_id=pad)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--os-eval", required=True)
    p.add_argument("--base", help="a baseline os-eval binary, run on the same model and data")
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", help="where the random checkpoint is kept (made if missing; default: a temporary directory)")
    p.add_argument("--hf-mc", type=int, default=20, help="transformers: the first N items of each multiple-choice task")
    p.add_argument("--hf-gen", type=int, default=64, help="transformers: the first N items of each generative task")
    p.add_argument("--batch", type=int, default=64, help="transformers' generation batch")
    p.add_argument("--mc-batch", type=int, default=16,
                   help="transformers' multiple-choice batch (64 rows of MMLU's longest requests need 34 GiB of fp32 logits)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", choices=["full", "small"], default="full")
    p.add_argument("--tasks", default="openseek", help="another task list (smoke tests)")
    p.add_argument("--limit", type=int, help="the first N documents of each task (smoke tests)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="table-bench-", dir=os.environ.get("TMPDIR"))
    res = {"shape": a.shape, "device": a.device, "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
           "torch": torch.__version__, "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        small = SMALL | {k: FULL[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings")}
        shape = FULL if a.shape == "full" else small
        model_dir = a.model or os.path.join(work, "model")
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            build(shape, a.device, 0, "scaled").save_pretrained(model_dir, safe_serialization=True)
        for f in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(a.tokenizer, f)):
                shutil.copy(os.path.join(a.tokenizer, f), model_dir)
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
        extra = ([] if a.device.startswith("cuda") else ["--dtype", "float32"]) + (["--limit", str(a.limit)] if a.limit else [])
        res["os_eval"], ours_gen = run_os_eval(a.os_eval, model_dir, a.data, os.path.join(work, "new"), a.device, a.tasks, extra)
        print(json.dumps(res["os_eval"]), flush=True)
        if a.base:
            res["base"], base_gen = run_os_eval(a.base, model_dir, a.data, os.path.join(work, "base"), a.device, a.tasks, extra)
            print(json.dumps(res["base"]), flush=True)
            res["speedup_vs_base"] = round(res["base"]["wall_s"] / res["os_eval"]["wall_s"], 2)
            res["generated_identical_to_base"] = {t: sum(x == y for x, y in zip(ours_gen[t], base_gen[t])) for t in ours_gen}
            res["table_identical_to_base"] = res["base"]["table"] == res["os_eval"]["table"]

        # transformers on a sample of every task, extrapolated per task.
        reqs = os.path.join(work, "requests.jsonl")
        subprocess.run([a.os_eval, "requests", "--tokenizer", model_dir, "--data", a.data, "--tasks", a.tasks, "--output", reqs]
                       + (["--limit", str(a.limit)] if a.limit else []), check=True)
        by_task = {}
        for line in open(reqs):
            it = json.loads(line)
            by_task.setdefault(it["task"], []).append(it)
        model = DeepseekV3ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if a.device.startswith("cuda") else torch.float32,
                                                      attn_implementation="sdpa").to(a.device).eval()
        mc = [it for t, v in by_task.items() if t not in ("gsm8k", "triviaqa") for it in v[:a.hf_mc]]
        hf_scores(model, mc[:8], a.mc_batch, a.device)  # warm-up
        sync(a.device)
        t0 = time.time()
        hf_scores(model, mc, a.mc_batch, a.device)
        sync(a.device)
        mc_s = time.time() - t0
        mc_total = sum(len(v) for t, v in by_task.items() if t not in ("gsm8k", "triviaqa"))
        hf = {"mc_sample_items": len(mc), "mc_sample_s": round(mc_s, 2), "mc_items": mc_total,
              "mc_extrapolated_s": round(mc_s * mc_total / len(mc), 1)}
        pad = shape["pad_token_id"]
        for t in ("gsm8k", "triviaqa"):
            sample = by_task[t][:a.hf_gen]
            sync(a.device)
            t0 = time.time()
            hf_generate(model, sample, a.batch, pad, a.device)
            sync(a.device)
            s = time.time() - t0
            hf[t] = {"sample_items": len(sample), "sample_s": round(s, 2), "items": len(by_task[t]),
                     "extrapolated_s": round(s * len(by_task[t]) / len(sample), 1)}
        hf["total_extrapolated_s"] = round(hf["mc_extrapolated_s"] + hf["gsm8k"]["extrapolated_s"] + hf["triviaqa"]["extrapolated_s"], 1)
        res["transformers"] = hf
        res["speedup_vs_transformers"] = round(hf["total_extrapolated_s"] / res["os_eval"]["wall_s"], 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with open(os.path.join(a.out, "table.json"), "w") as f:
            json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
