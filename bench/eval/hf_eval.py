"""os-eval against transformers on the same multiple-choice requests, at the OpenSeek-Small-v1 shape.

Builds a random-weight DeepseekV3ForCausalLM (bench/model/parity.py's `scaled` init: peaked logits,
non-zero correction bias), saves it in bf16 with OpenSeek's tokenizer files, then
  1. `os-eval requests` writes the requests of the tasks (token ids, as lighteval builds them);
  2. `os-eval run --dtype bfloat16` scores them (shared contexts, head at scored positions);
  3. transformers scores the same requests the way lighteval v0.3.0's HF backend does: one row per
     (context + continuation)[:-1], rows sorted by length, padded batches of --batch, log_softmax
     over the whole batch's logits in fp32, the continuation's log-probs summed;
and prints items/s of each (model loaded, excluding load), the ratio, and how often the predictions
(argmax of the raw and of the length-normalised scores) agree. With --fp32-limit N both also score the
first N items of each task in fp32 (transformers: the same bf16 weights upcast; os-eval `--dtype float32`),
where bf16 rounding no longer decides the predictions.

  python hf_eval.py --os-eval BIN --data DIR --tokenizer DIR --tasks LIST --out DIR
                    [--limit N] [--split validation] [--batch 64] [--device cuda] [--shape full|small] [--fp32-limit N]

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
from transformers import DeepseekV3ForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
from parity import FULL, SMALL, build  # noqa: E402

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "qwen.tiktoken"]


def sh(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def hf_scores(model, items, batch, device):
    """lighteval v0.3.0 HF backend: per request one row, sorted by length (longest first)."""
    reqs = [(i, c, item["contexts"][c], cont) for i, item in enumerate(items) for c, cont in enumerate(item["continuations"])]
    order = sorted(range(len(reqs)), key=lambda k: -(len(reqs[k][2]) + len(reqs[k][3])))
    out = [[0.0] * len(item["continuations"]) for item in items]
    with torch.no_grad():
        for b in range(0, len(order), batch):
            rows = [reqs[k] for k in order[b:b + batch]]
            inputs = [(ctx + cont)[:-1] for _, _, ctx, cont in rows]
            width = max(len(x) for x in inputs)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for j, x in enumerate(inputs):
                ids[j, :len(x)] = torch.tensor(x)
                mask[j, :len(x)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            lp = torch.log_softmax(logits.float(), dim=-1)
            for j, (i, c, ctx, cont) in enumerate(rows):
                n = len(inputs[j])
                pos = torch.arange(n - len(cont), n, device=device)
                out[i][c] = lp[j, pos, torch.tensor(cont, device=device)].sum().item()
            del logits, lp
    return out


def argmax(xs):
    return max(range(len(xs)), key=lambda k: (xs[k], -k))


def agreement(items, ours, theirs):
    """How often os-eval's and transformers' predictions (acc, acc_norm) agree, and the score differences."""
    agree = agree_norm = 0
    deltas = []
    for it, th in zip(items, theirs):
        lp = ours[(it["task"], it["doc_index"])]
        agree += argmax(lp) == argmax(th)
        nc = it["norm_chars"]
        agree_norm += argmax([x / n for x, n in zip(lp, nc)]) == argmax([x / n for x, n in zip(th, nc)])
        deltas.extend(abs(x - y) for x, y in zip(lp, th))
    n = len(items)
    return {"agree_acc_pct": round(100 * agree / n, 2), "agree_acc_norm_pct": round(100 * agree_norm / n, 2),
            "mean_abs_delta_logprob": sum(deltas) / len(deltas), "max_abs_delta_logprob": max(deltas)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--os-eval", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--tasks", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--split", default="validation")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batch-tokens", default="32768", help="os-eval --batch-tokens; a comma list runs os-eval once per value")
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", choices=["full", "small"], default="full")
    p.add_argument("--init", choices=["scaled", "hf"], default="scaled",
                   help="random weights as bench/model/parity.py builds them (hf: transformers' init, less chaotic)")
    p.add_argument("--fp32-limit", type=int, default=0, help="also compare in fp32 on the first N items of each task")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="eval-bench-", dir=os.environ.get("TMPDIR"))
    model_dir = os.path.join(work, "model")
    res = {"tasks": a.tasks, "limit": a.limit, "split": a.split, "shape": a.shape, "init": a.init, "device": a.device,
           "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
           "torch": torch.__version__, "transformers": transformers.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "hf_batch": a.batch, "os_eval_batch_tokens": a.batch_tokens}
    try:
        # The small shape keeps the real vocabulary: the requests are OpenSeek token ids.
        small = SMALL | {k: FULL[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings")}
        model = build(FULL if a.shape == "full" else small, a.device, 0, a.init)
        model.save_pretrained(model_dir, safe_serialization=True)
        del model
        for f in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(a.tokenizer, f)):
                shutil.copy(os.path.join(a.tokenizer, f), model_dir)

        reqs = os.path.join(work, "requests.jsonl")
        limit = ["--limit", str(a.limit)] if a.limit else []
        sh([a.os_eval, "requests", "--tokenizer", model_dir, "--data", a.data, "--tasks", a.tasks, "--split", a.split,
            "--output", reqs] + limit)
        items = [json.loads(l) for l in open(reqs)]
        res["items"] = len(items)
        res["requests"] = sum(len(i["continuations"]) for i in items)

        # os-eval: model_seconds = time in the model backend (the requests built, loaded and warmed up);
        # task_seconds adds building the requests (tokenizing) and scoring; wall adds process start and loading.
        runs = []
        for bt in a.batch_tokens.split(","):
            ev = os.path.join(work, f"os-eval-out-{len(runs)}-{bt}")
            t0 = time.time()
            sh([a.os_eval, "run", "--model", model_dir, "--data", a.data, "--tasks", a.tasks, "--split", a.split,
                "--output", ev, "--device", a.device, "--dtype", "bfloat16" if a.device.startswith("cuda") else "float32",
                "--batch-tokens", bt, "--quiet"] + limit)
            results = json.load(open(os.path.join(ev, "results.json")))
            runs.append({"batch_tokens": int(bt), "wall_s": round(time.time() - t0, 2),
                         "load_s": round(results["timings"].get("load_seconds", 0), 2),
                         "task_s": round(results["timings"]["task_seconds"], 3),
                         "model_s": round(results["timings"]["model_seconds"], 3),
                         "per_task_model_s": {t: round(v["model_seconds"], 3) for t, v in results["tasks"].items()}})
            scores = {}
            for t in results["tasks"]:
                rec = json.load(open(os.path.join(ev, "tasks", t.replace(":", "__") + ".json")))
                scores.update(((t, it["doc_index"]), it["logprobs"]) for it in rec["items"])
            runs[-1]["scores"] = scores
        res["os_eval_runs"] = runs
        best = min(runs, key=lambda r: r["model_s"])
        res["os_eval_s"] = best["model_s"]
        ours = runs[-1]["scores"]
        # os-eval against itself at another batch size: the noise level of its own bf16 predictions.
        if len(runs) > 1:
            res["os_eval_self_agreement"] = agreement(items, runs[0]["scores"], [ours[(it["task"], it["doc_index"])] for it in items])

        # transformers, as lighteval runs it.
        kw = {}
        try:
            model = DeepseekV3ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa",
                                                          experts_implementation="grouped_mm")
            res["hf_experts"] = "grouped_mm"
        except (TypeError, ValueError):
            model = DeepseekV3ForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
            res["hf_experts"] = "default"
        model = model.to(a.device).eval()
        if a.device == "cpu":
            model = model.float()
        hf_scores(model, items[:8], a.batch, a.device)  # warm-up
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.time()
        theirs = hf_scores(model, items, a.batch, a.device)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        res["hf_s"] = round(time.time() - t0, 3)

        assert len(ours) == len(items), (len(ours), len(items))
        res.update(agreement(items, ours, theirs))
        n = len(items)
        res["os_eval_items_per_s"] = round(n / res["os_eval_s"], 1)
        res["hf_items_per_s"] = round(n / res["hf_s"], 1)
        res["speedup"] = round(res["hf_s"] / res["os_eval_s"], 2)
        for r in runs:
            r["agreement_with_hf"] = agreement(items, r.pop("scores"), theirs)
            r["items_per_s"] = round(n / r["model_s"], 1)
            r["speedup"] = round(res["hf_s"] / r["model_s"], 2)
        res["os_eval_table"] = {c["name"]: c["value"] for c in results["table"]["columns"] if c["value"] is not None}
        with open(os.path.join(a.out, "bench.json"), "w") as f:
            json.dump(res, f, indent=1)

        if a.fp32_limit:
            # The same weights in fp32 on both sides (TF32 off, PyTorch's default for matmuls).
            sub = [it for it in items if it["doc_index"] < a.fp32_limit]
            ev = os.path.join(work, "os-eval-out-fp32")
            sh([a.os_eval, "run", "--model", model_dir, "--data", a.data, "--tasks", a.tasks, "--split", a.split,
                "--output", ev, "--device", a.device, "--dtype", "float32", "--batch-tokens", a.batch_tokens.split(",")[-1],
                "--quiet", "--limit", str(a.fp32_limit)])
            results = json.load(open(os.path.join(ev, "results.json")))
            ours32 = {}
            for t in results["tasks"]:
                rec = json.load(open(os.path.join(ev, "tasks", t.replace(":", "__") + ".json")))
                ours32.update(((t, it["doc_index"]), it["logprobs"]) for it in rec["items"])
            model = model.float()
            theirs32 = hf_scores(model, sub, a.batch, a.device)
            res["fp32"] = {"items": len(sub), "os_eval_model_s": round(results["timings"]["model_seconds"], 3)} | agreement(sub, ours32, theirs32)
            # The yardstick: each tool's bf16 predictions against transformers in fp32 on these items.
            truth = {(it["task"], it["doc_index"]): lp for it, lp in zip(sub, theirs32)}
            hf16 = {(it["task"], it["doc_index"]): lp for it, lp in zip(items, theirs)}
            res["bf16_vs_hf_fp32"] = {"os_eval": agreement(sub, ours, [truth[(it["task"], it["doc_index"])] for it in sub]),
                                      "transformers": agreement(sub, hf16, [truth[(it["task"], it["doc_index"])] for it in sub])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(a.out, "bench.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
