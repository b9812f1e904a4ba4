"""Tokenize benchmark: os-tokenize vs HF `tokenizers` (encode_batch) vs `tiktoken` (encode_batch)
on the same generated corpus, the same cores, side by side in one run. Reports tokens/s, the
ratios, peak memory, whether every id is identical, and os-tokenize's peak memory on a quarter
of the corpus (memory must not grow with input size).

usage: python bench/tokenize/run.py [--mb 200] [--threads N] [--tokenizer DIR] [--bin DIR] [--out DIR]
Defaults: the real OpenSeek tokenizer in ../shared, target/release, bench/out/tokenize.
"""
import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

parser = argparse.ArgumentParser()
parser.add_argument("--mb", type=float, default=200)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--tokenizer", default=os.path.join(ROOT, "..", "shared", "tokenizers", "openseek"))
parser.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "tokenize"))
parser.add_argument("--python", default=sys.executable)
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)


def run(cmd, env=None):
    """Run a command; return (stdout, wall seconds, peak RSS in MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return out.decode(), wall, usage.ru_maxrss / 1024


def sha(path, skip=0):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(skip)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


corpus = os.path.join(args.out, f"corpus-{args.mb:g}MB.jsonl")
if not os.path.exists(corpus):
    print(run([args.python, os.path.join(HERE, "gen_corpus.py"), os.path.join(args.tokenizer, "qwen.tiktoken"), corpus, "--mb", str(args.mb)])[0].strip())
quarter = corpus.replace(".jsonl", "-quarter.jsonl")
if not os.path.exists(quarter):
    size = os.path.getsize(corpus) // 4
    with open(corpus, "rb") as src, open(quarter + ".tmp", "wb") as dst:
        while dst.tell() < size:
            dst.write(src.readline())
    os.replace(quarter + ".tmp", quarter)
corpus_bytes = os.path.getsize(corpus)

results = {}
os_tokenize = os.path.join(args.bin, "os-tokenize")
for name, source in [("os-tokenize", corpus), ("os-tokenize (quarter corpus)", quarter)]:
    prefix = os.path.join(args.out, "os" if source == corpus else "os-quarter")
    _, wall, rss = run([os_tokenize, "--tokenizer", args.tokenizer, "--workers", str(args.threads), "--quiet", "--force", "--output", prefix, source])
    manifest = json.load(open(prefix + ".json"))
    results[name] = {"tokens": manifest["tokens"], "seconds": wall, "peak_rss_mb": rss, "bytes": os.path.getsize(source)}
    if source == corpus:
        results[name]["ids_sha256"] = sha(prefix + ".bin")

for kind, name in [("hf", "HF tokenizers encode_batch"), ("tiktoken", "tiktoken encode_batch")]:
    ids = os.path.join(args.out, f"{kind}.ids")
    out, wall, rss = run([args.python, os.path.join(HERE, "py_tokenize.py"), kind, args.tokenizer, corpus, ids, "--threads", str(args.threads)])
    inner = json.loads(out.strip().splitlines()[-1])
    results[name] = {"tokens": inner["tokens"], "seconds": wall, "tokenize_seconds": inner["seconds"], "peak_rss_mb": rss, "bytes": corpus_bytes, "ids_sha256": sha(ids)}

reference = results["os-tokenize"]
faster_peer = max(("HF tokenizers encode_batch", "tiktoken encode_batch"), key=lambda n: results[n]["tokens"] / results[n]["seconds"])
print(f"\nmachine: {platform.node()} ({os.cpu_count()} cores, {args.threads} threads used); corpus {corpus_bytes / 1e6:.0f} MB")
print(f"{'tool':32} {'tokens':>12} {'wall s':>8} {'Mtok/s':>8} {'MB/s':>7} {'peak MB':>8} {'ids = os-tokenize':>18}")
for name, r in results.items():
    rate = r["tokens"] / r["seconds"]
    same = "-" if "ids_sha256" not in r or name == "os-tokenize" else ("yes" if r["ids_sha256"] == reference["ids_sha256"] else "NO")
    print(f"{name:32} {r['tokens']:>12} {r['seconds']:>8.2f} {rate / 1e6:>8.3f} {r['bytes'] / r['seconds'] / 1e6:>7.1f} {r['peak_rss_mb']:>8.0f} {same:>18}")
ratio = (reference["tokens"] / reference["seconds"]) / (results[faster_peer]["tokens"] / results[faster_peer]["seconds"])
print(f"\nos-tokenize / {faster_peer} (the faster peer): {ratio:.2f}x tokens/s")
print(f"os-tokenize peak memory: {results['os-tokenize (quarter corpus)']['peak_rss_mb']:.0f} MB on a quarter of the corpus, {reference['peak_rss_mb']:.0f} MB on all of it")
json.dump(results, open(os.path.join(args.out, "results.json"), "w"), indent=2)
