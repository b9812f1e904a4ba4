"""Data-cleaning benchmark: os-dedup minhash vs datatrove 0.10.1's MinHash pipeline, and os-filter's
Gopher rules vs datatrove's Gopher filters, on the same generated corpus (English + Chinese, planted
near-duplicates: tests/python/dedup_corpus.py), on the same cores, side by side in one run. Reports
MB/s per core (wall) and MB per CPU-second, the ratios, peak memory and agreement (F1 of the removed /
kept sets).

usage: python bench/data/run.py [--mb 1024] [--threads N] [--files 8] [--bin DIR] [--out DIR]
"""
import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

parser = argparse.ArgumentParser()
parser.add_argument("--mb", type=float, default=1024)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--files", type=int, default=8)
parser.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "data"))
parser.add_argument("--python", default=sys.executable)
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)


CPU = {}


def run(cmd):
    """Run a command; return (stdout, wall seconds, peak RSS in MB of it and its waited-for children).
    Its CPU seconds (user + system, children included) are kept in CPU[the command's first word]."""
    start = time.perf_counter()
    before = os.times()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    after = os.times()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    # Grandchildren (datatrove's worker processes) are counted once their parent has waited for them.
    CPU["last"] = max(usage.ru_utime + usage.ru_stime, (after.children_user + after.children_system) - (before.children_user + before.children_system))
    return out.decode(), wall, usage.ru_maxrss / 1024


def ids(directory):
    found = []
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            found.extend(json.loads(line)["id"] for line in f if line.strip())
    return found


def f1(a, b):
    a, b = set(a), set(b)
    return 2 * len(a & b) / max(1, len(a) + len(b))


corpus = os.path.join(args.out, f"corpus-{args.mb:g}MB")
if not os.path.isdir(corpus):
    # About 900 bytes per document.
    docs = int(args.mb * 1e6 / 900 / args.files)
    run([args.python, os.path.join(ROOT, "tests", "python", "dedup_corpus.py"), corpus + ".tmp", "--files", str(args.files), "--docs", str(docs), "--seed", "1"])
    os.replace(corpus + ".tmp", corpus)
corpus_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(corpus, "*.jsonl")))
all_ids = ids(corpus)
results = {"machine": platform.node(), "cpus": os.cpu_count(), "threads": args.threads, "corpus_bytes": corpus_bytes, "documents": len(all_ids)}

# MinHash.
out = os.path.join(args.out, "os-dedup")
for p in [out, out + ".json", out + ".work"]:
    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
_, wall, rss = run([os.path.join(args.bin, "os-dedup"), "minhash", "--quiet", "--workers", str(args.threads), "--output", out, corpus])
ours = set(all_ids) - set(ids(out))
results["os-dedup minhash"] = {"seconds": wall, "cpu_seconds": CPU["last"], "peak_rss_mb": rss, "removed": len(ours)}
work = os.path.join(args.out, "datatrove-minhash")
shutil.rmtree(work, ignore_errors=True)
printed, wall, rss = run([args.python, os.path.join(ROOT, "tests", "python", "datatrove_minhash.py"), corpus, work, "--workers", str(args.threads)])
theirs = set(json.loads(printed.strip().splitlines()[-1]))
results["datatrove minhash"] = {"seconds": wall, "cpu_seconds": CPU["last"], "peak_rss_mb": rss, "removed": len(theirs)}
results["minhash removed-set F1"] = f1(ours, theirs)

# Gopher filters.
recipe = os.path.join(args.out, "gopher.toml")
with open(recipe, "w") as f:
    f.write('[[filter]]\nkind = "gopher_repetition"\n\n[[filter]]\nkind = "gopher_quality"\n')
out = os.path.join(args.out, "os-filter")
for p in [out, out + ".json", out + ".parts"]:
    shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
_, wall, rss = run([os.path.join(args.bin, "os-filter"), "--quiet", "--workers", str(args.threads), "--recipe", recipe, "--output", out, corpus])
ours = ids(out)
results["os-filter gopher"] = {"seconds": wall, "cpu_seconds": CPU["last"], "peak_rss_mb": rss, "kept": len(ours)}
work = os.path.join(args.out, "datatrove-gopher")
shutil.rmtree(work, ignore_errors=True)
# One worker: with two, datatrove's LocalPipelineExecutor deadlocked in this pipeline (forked workers
# waiting on a lock); the per-core figures divide by each tool's own worker count.
printed, wall, rss = run([args.python, os.path.join(HERE, "datatrove_gopher.py"), corpus, work, "--workers", "1"])
theirs = json.loads(printed.strip().splitlines()[-1])
results["datatrove gopher"] = {"seconds": wall, "cpu_seconds": CPU["last"], "peak_rss_mb": rss, "kept": len(theirs), "workers": 1}
results["gopher kept-set F1"] = f1(ours, theirs)

for name in ["os-dedup minhash", "datatrove minhash", "os-filter gopher", "datatrove gopher"]:
    r = results[name]
    r["mb_per_s_per_core"] = corpus_bytes / 1e6 / r["seconds"] / r.get("workers", args.threads)
    # On a shared machine wall time depends on the neighbours; MB per CPU-second does not.
    r["mb_per_cpu_second"] = corpus_bytes / 1e6 / r["cpu_seconds"]
for tool, ours, theirs in [("minhash", "os-dedup minhash", "datatrove minhash"), ("gopher", "os-filter gopher", "datatrove gopher")]:
    results[f"{tool} ratio (MB/s per core)"] = results[ours]["mb_per_s_per_core"] / results[theirs]["mb_per_s_per_core"]
    results[f"{tool} ratio (MB per CPU-second)"] = results[ours]["mb_per_cpu_second"] / results[theirs]["mb_per_cpu_second"]
print(json.dumps(results, indent=1))
with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
