"""Shard scoring throughput: `os-eval score --shards` (forward only, documents packed, per-document
records) on COPIES copies of a Megatron shard, as tokens per second of the whole process (start, model
load, reading, writing included) and at the steady rate (the difference to a run over one
fiftieth of the documents, which pays the same start and load), for comparison with os-train's
training tokens/s on the same GPU (bench/train/run.sh).

  python score_shards.py --os-eval BIN --model DIR --shard PREFIX [--copies 10] [--batch-tokens N] [--device cuda]
      [--extra "--disable varlen_attention"] --out DIR
"""

import argparse
import json
import os
import subprocess
import time


def score(a, out, extra):
    cmd = [a.os_eval, "score", "--model", a.model, "--shards"] + [a.shard] * a.copies + ["--output", out, "--device", a.device, "--force"]
    cmd += (["--batch-tokens", str(a.batch_tokens)] if a.batch_tokens else []) + a.extra.split() + extra
    print("+", " ".join(cmd[:6]), "...", " ".join(cmd[6 + a.copies:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - t0
    records = [json.loads(line) for line in open(out)]
    return {"documents": len(records), "tokens": sum(r["tokens"] for r in records), "scored": sum(r["scored"] for r in records),
            "wall_s": round(wall, 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--os-eval", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--shard", required=True)
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--batch-tokens", type=int)
    p.add_argument("--device", default="cuda")
    p.add_argument("--extra", default="", help="more os-eval score arguments for both runs (e.g. --disable NAME)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    small = score(a, os.path.join(a.out, "small.jsonl"), ["--num-shards", "50", "--shard-index", "0"])
    full = score(a, os.path.join(a.out, "full.jsonl"), [])
    res = {"small": small, "full": full, "tokens_per_s": round(full["tokens"] / full["wall_s"]),
           "steady_tokens_per_s": round((full["tokens"] - small["tokens"]) / (full["wall_s"] - small["wall_s"]))}
    with open(os.path.join(a.out, "score.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
