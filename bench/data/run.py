"""Data-cleaning benchmark: os-dedup minhash vs datatrove 0.10.1's MinHash pipeline, os-filter's
Gopher rules vs datatrove's Gopher filters, and os-filter's data-juicer rules vs data-juicer 1.6.1's
(bench/data/data_juicer_filters.py, from its own venv), on the same generated corpus (English +
Chinese, planted near-duplicates: tests/python/dedup_corpus.py), on the same cores, side by side. Reports
MB/s per core (wall) and MB per CPU-second, the ratios, peak memory and agreement (F1 of the removed /
kept sets).

usage: python bench/data/run.py [--mb 1100 | --corpus DIR] [--threads N] [--files 8] [--gopher-peer-files K] [--sections minhash,gopher,data-juicer]
                                [--data-juicer-python PY] [--bin DIR] [--out DIR]

datatrove's Gopher pipeline runs at about a third of a MB per CPU-second (an hour per GB on one core, and
with more than one worker its LocalPipelineExecutor deadlocked here): `--gopher-peer-files K` runs it on the
first K files only, os-filter is timed on the same K files for the ratio (and on the whole corpus besides);
data-juicer runs on the same K files.
"""
import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

parser = argparse.ArgumentParser()
parser.add_argument("--mb", type=float, default=1100)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--files", type=int, default=8)
parser.add_argument("--corpus", default=None, help="an existing directory of JSON lines files instead of the generated corpus")
parser.add_argument("--gopher-peer-files", type=int, default=None)
parser.add_argument("--sections", default="minhash,gopher,data-juicer", help="which comparisons to run (comma-separated)")
parser.add_argument("--data-juicer-python", default=os.path.join(ROOT, "bench", "out", "dj-venv", "bin", "python"), help="a python with py-data-juicer 1.6.1 (its own venv: see data_juicer_filters.py)")
parser.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "data"))
parser.add_argument("--python", default=sys.executable)
args = parser.parse_args()
os.makedirs(args.out, exist_ok=True)


CPU = {}


def tree_cpu_seconds(root, seen):
    """Record in `seen` (pid -> CPU seconds) every process under `root` now, from /proc."""
    parents, cpu = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for pid in cpu:
        p = pid
        while p in parents and p != root and p > 1:
            p = parents[p]
        if p == root:
            seen[pid] = max(seen.get(pid, 0.0), cpu[pid])


def run(cmd):
    """Run a command; return (stdout, wall seconds, peak RSS in MB of it and its waited-for children).
    Its CPU seconds (user + system) are kept in CPU["last"]: the largest of its rusage (children it
    waited for included) and the sum over every process of its tree sampled from /proc every 0.2 s
    (datatrove's pool workers live under a forkserver whose children are never waited for)."""
    start = time.perf_counter()
    before = os.times()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen, done = {}, threading.Event()

    def sample():
        while not done.wait(0.2):
            tree_cpu_seconds(proc.pid, seen)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    after = os.times()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    CPU["last"] = max(usage.ru_utime + usage.ru_stime, (after.children_user + after.children_system) - (before.children_user + before.children_system), sum(seen.values()))
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


corpus = args.corpus or os.path.join(args.out, f"corpus-{args.mb:g}MB")
if not os.path.isdir(corpus):
    # About 830 bytes per document.
    docs = int(args.mb * 1e6 / 830 / args.files)
    run([args.python, os.path.join(ROOT, "tests", "python", "dedup_corpus.py"), corpus + ".tmp", "--files", str(args.files), "--docs", str(docs), "--seed", "1"])
    os.replace(corpus + ".tmp", corpus)
corpus_bytes = sum(os.path.getsize(p) for p in glob.glob(os.path.join(corpus, "*.jsonl")))
all_ids = ids(corpus)
planted = 0
for path in glob.glob(os.path.join(corpus, "*.jsonl")):
    with open(path, encoding="utf-8") as f:
        planted += sum(1 for line in f if line.strip() and json.loads(line).get("dup_of") is not None)
results = {
    "machine": platform.node(), "cpus": os.cpu_count(), "threads": args.threads, "corpus_bytes": corpus_bytes, "documents": len(all_ids), "planted_near_copies": planted,
    "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "load_average_at_start": os.getloadavg(),
    "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
}

def os_filter(recipe, inputs, name):
    out = os.path.join(args.out, name)
    for p in [out, out + ".json", out + ".parts"]:
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
    _, wall, rss = run([os.path.join(args.bin, "os-filter"), "--quiet", "--workers", str(args.threads), "--recipe", recipe, "--output", out, *inputs])
    return ids(out), {"seconds": wall, "cpu_seconds": CPU["last"], "peak_rss_mb": rss, "kept": len(ids(out)), "input_bytes": sum(os.path.getsize(p) for p in inputs)}


files = sorted(glob.glob(os.path.join(corpus, "*.jsonl")))
peer_files = files[: args.gopher_peer_files] if args.gopher_peer_files else files

if "minhash" in args.sections:
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

if "gopher" in args.sections:
    # Gopher filters.
    recipe = os.path.join(args.out, "gopher.toml")
    with open(recipe, "w") as f:
        f.write('[[filter]]\nkind = "gopher_repetition"\n\n[[filter]]\nkind = "gopher_quality"\n')
    _, results["os-filter gopher, whole corpus"] = os_filter(recipe, files, "os-filter")
    peer_input = corpus
    if peer_files != files:
        peer_input = os.path.join(args.out, f"gopher-peer-{len(peer_files)}-files")
        shutil.rmtree(peer_input, ignore_errors=True)
        os.makedirs(peer_input)
        for p in peer_files:
            os.symlink(os.path.abspath(p), os.path.join(peer_input, os.path.basename(p)))
    ours, results["os-filter gopher"] = os_filter(recipe, peer_files, "os-filter-peer-files")
    work = os.path.join(args.out, "datatrove-gopher")
    shutil.rmtree(work, ignore_errors=True)
    # One worker: with two, datatrove's LocalPipelineExecutor deadlocked in this pipeline (forked workers
    # waiting on a lock); the per-core figures divide by each tool's own worker count.
    printed, wall, rss = run([args.python, os.path.join(HERE, "datatrove_gopher.py"), peer_input, work, "--workers", "1"])
    theirs = json.loads(printed.strip().splitlines()[-1])
    results["datatrove gopher"] = {"seconds": wall, "cpu_seconds": CPU["last"], "peak_rss_mb": rss, "kept": len(theirs), "workers": 1, "input_bytes": sum(os.path.getsize(p) for p in peer_files)}
    results["gopher kept-set F1"] = f1(ours, theirs)

if "data-juicer" in args.sections:
    # data-juicer's text rules with the thresholds of bench/data/data_juicer_filters.py, on the peer files.
    dj_recipe = os.path.join(args.out, "data-juicer.toml")
    with open(dj_recipe, "w") as f:
        f.write('[[filter]]\nkind = "char_length"\nmin = 200\n\n[[filter]]\nkind = "average_line_length"\nmin_len = 10\nmax_len = 800\n\n'
                '[[filter]]\nkind = "special_characters"\nmax_ratio = 0.23\n\n[[filter]]\nkind = "word_repetition"\nrep_len = 2\nmax_ratio = 0.01\n')
    ours, results["os-filter data-juicer rules"] = os_filter(dj_recipe, peer_files, "os-filter-data-juicer")
    printed, wall, rss = run([args.data_juicer_python, os.path.join(HERE, "data_juicer_filters.py"), *peer_files])
    theirs = json.loads(printed.strip().splitlines()[-1])
    results["data-juicer rules"] = {"seconds": wall, "cpu_seconds": CPU["last"], "peak_rss_mb": rss, "kept": len(theirs), "workers": 1, "input_bytes": sum(os.path.getsize(p) for p in peer_files)}
    results["data-juicer kept-set F1"] = f1(ours, theirs)

results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
results["load_average_at_end"] = os.getloadavg()

for name in ["os-dedup minhash", "datatrove minhash", "os-filter gopher, whole corpus", "os-filter gopher", "datatrove gopher", "os-filter data-juicer rules", "data-juicer rules"]:
    if name not in results:
        continue
    r = results[name]
    size = r.get("input_bytes", corpus_bytes)
    r["mb_per_s_per_core"] = size / 1e6 / r["seconds"] / r.get("workers", args.threads)
    # On a shared machine wall time depends on the neighbours; MB per CPU-second does not.
    r["mb_per_cpu_second"] = size / 1e6 / r["cpu_seconds"]
for tool, ours, theirs in [("minhash", "os-dedup minhash", "datatrove minhash"), ("gopher", "os-filter gopher", "datatrove gopher"), ("data-juicer", "os-filter data-juicer rules", "data-juicer rules")]:
    if ours not in results:
        continue
    results[f"{tool} ratio (MB/s per core)"] = results[ours]["mb_per_s_per_core"] / results[theirs]["mb_per_s_per_core"]
    results[f"{tool} ratio (MB per CPU-second)"] = results[ours]["mb_per_cpu_second"] / results[theirs]["mb_per_cpu_second"]
print(json.dumps(results, indent=1))
with open(os.path.join(args.out, f"results-{args.sections.replace(',', '-')}.json"), "w") as f:
    json.dump(results, f, indent=1)
