"""Summarise a Chrome trace written by os-train (OPENSEEK_TRAIN_TRACE=FILE): GPU kernel time by
kernel and by the ATen operator that launched it, top N each, as a share of the kernels' total.
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
