#!/usr/bin/env bash
# Side by side: os-mix and megatron-core building the OpenSeek-Small-v1 baseline blend at full size
# (84 shards, 24,576,000 samples of 4,096 tokens) over synthetic .idx files with realistic document
# counts (~100M documents). Usage: bench/mix/run.sh [WORKDIR] [SCALE]   (run from the repo root,
# after `cargo build --release -p os-mix`; needs the project venv). Checks the two agree byte for byte.
set -euo pipefail
work=${1:-/tmp/os-mix-bench}
scale=${2:-1}
py=${OPENSEEK_PYTHON:-.venv/bin/python}
recipe=recipes/openseek-small-v1-baseline.toml
data="$work/data-$scale"
mkdir -p "$data" "$work/cache"
[ -f "$data/.done" ] || { $py bench/mix/make_shards.py $recipe "$data" "$scale"; touch "$data/.done"; }
samples=$($py -c "print(int(24576000*$scale))")
sed "s/^total_samples = .*/total_samples = $samples/" $recipe > "$work/recipe.toml"
rm -rf "$work/ours" "$work/cache"/*
echo "== os-mix"
/usr/bin/time -f "os-mix: %e s wall, peak RSS %M KiB" target/release/os-mix --recipe "$work/recipe.toml" --data-root "$data" --output "$work/ours" >/dev/null
echo "== megatron-core"
/usr/bin/time -f "megatron-core process: %e s wall, peak RSS %M KiB" $py bench/mix/megatron_build.py "$work/recipe.toml" "$data" "$work/cache"
echo "== agreement"
$py - "$work" <<'PY'
import filecmp, glob, json, os, sys, numpy
work = sys.argv[1]
ours = numpy.load(os.path.join(work, "ours", "blend_dataset_index.npy"))
theirs = numpy.load(glob.glob(os.path.join(work, "cache", "*BlendedDataset-train-dataset_index.npy"))[0])
assert (ours == theirs).all(), "blend differs"
m = json.load(open(os.path.join(work, "ours", "manifest.json")))
number = {os.path.normpath(d["prefix"]): i for i, d in enumerate(m["datasets"])}
same = 0
for desc in glob.glob(os.path.join(work, "cache", "*GPTDataset-train-description.txt")):
    i = number[os.path.normpath(os.path.abspath(json.load(open(desc))["dataset_path"]))]
    base = desc[: -len("description.txt")]
    for k in ("document_index", "sample_index", "shuffle_index"):
        assert filecmp.cmp(base + k + ".npy", os.path.join(work, "ours", f"d{i:03d}_{k}.npy"), shallow=False), f"dataset {i} {k} differs"
        same += 1
print(f"blend index identical ({len(ours)} samples); {same} per-dataset index files byte-identical")
PY
