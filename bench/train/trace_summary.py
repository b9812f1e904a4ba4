"""Summarise a Chrome trace written by os-train (debug.trace = FILE): GPU kernel time by
kernel and by the ATen operator that launched it, top N each, as a share of the kernels' total; then
where the GPU waits (gaps between kernels, the operators around them) and host-stalling CUDA calls.
Usage: trace_summary.py TRACE.json [N]"""
import collections, json, sys

events = json.load(open(sys.argv[1]))["traceEvents"]
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
kernels = [e for e in events if e.get("cat") == "kernel"]
ops = {}
for e in events:
    if e.get("cat") == "cpu_op" and "External id" in e.get("args", {}):
        ops.setdefault(e["args"]["External id"], e["name"])
if not kernels:
    sys.exit("no GPU kernels in the trace")
total = sum(k["dur"] for k in kernels)
span = max(k["ts"] + k["dur"] for k in kernels) - min(k["ts"] for k in kernels)
print(f"kernels: {len(kernels)}, busy {total / 1e3:.1f} ms of a {span / 1e3:.1f} ms span")
for title, key in [("by kernel", lambda k: k["name"][:90]), ("by operator", lambda k: ops.get(k["args"].get("External id"), "?"))]:
    acc = collections.defaultdict(lambda: [0.0, 0])
    for k in kernels:
        a = acc[key(k)]
        a[0] += k["dur"]
        a[1] += 1
    print(f"-- {title}: ms, share, launches")
    for name, (d, n) in sorted(acc.items(), key=lambda x: -x[1][0])[:top]:
        print(f"{d / 1e3:8.2f} {100 * d / total:5.1f}% {n:5d}  {name}")

# Where the GPU waits: gaps between consecutive kernels (any stream) and the operators around them.
kernels.sort(key=lambda k: k["ts"])
gaps, end, before = [], kernels[0]["ts"] + kernels[0]["dur"], kernels[0]
for k in kernels[1:]:
    if k["ts"] > end:
        gaps.append((k["ts"] - end, before, k))
    if k["ts"] + k["dur"] >= end:
        end, before = k["ts"] + k["dur"], k
idle = sum(g for g, _, _ in gaps)
small = sum(g for g, _, _ in gaps if g < 20)
print(f"-- GPU idle: {idle / 1e3:.1f} ms in {len(gaps)} gaps ({small / 1e3:.1f} ms in gaps < 20 us); largest:")
op = lambda k: ops.get(k["args"].get("External id"), "?")
for g, a, b in sorted(gaps, key=lambda x: -x[0])[:top]:
    print(f"{g / 1e3:8.2f} ms at +{(a['ts'] + a['dur'] - kernels[0]['ts']) / 1e3:8.1f}  after {op(a)} [{a['name'][:40]}]  before {op(b)} [{b['name'][:40]}]")
runtime = collections.defaultdict(lambda: [0.0, 0])
for e in events:
    if e.get("cat") == "cuda_runtime" and any(s in e["name"] for s in ("Synchronize", "Memcpy", "Malloc", "Free", "HostAlloc")):
        r = runtime[e["name"]]
        r[0] += e.get("dur", 0)
        r[1] += 1
print("-- CUDA runtime calls that can stall the host: ms, calls")
for name, (d, n) in sorted(runtime.items(), key=lambda x: -x[1][0]):
    print(f"{d / 1e3:8.2f} {n:6d}  {name}")
