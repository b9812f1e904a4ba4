#!/usr/bin/env bash
# Training throughput on one GPU: os-train and transformers (../shared/bench/hf_baseline.py) back to
# back at the OpenSeek-Small-v1 shape, seq 4096, micro-batch 4, fp32 master weights; prints tokens/s,
# TFLOP/s, MFU (of 989 TFLOP/s, H100 SXM dense bf16) and peak memory side by side.
#   bench/train/run.sh prepare        here: the 4096-token store and the stripped binary in bench/out/gpu/
#   bench/train/run.sh [OUT_DIR]      on the GPU machine (OUT_DIR defaults to $OUT, else bench/out/train)
# Env: OS_VARIANTS (os-train flag sets, ';'-separated), HF_VARIANTS (hf_baseline VARIANTS JSON),
# HF=0 skips transformers; OS_TRAIN_BIN another os-train binary (a baseline in the same call).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = prepare ]; then
  g=bench/out/gpu/train
  rm -rf "$g" && mkdir -p "$g"
  target/release/os-demo-data --output "$g/demo" >/dev/null
  target/release/os-tokenize --tokenizer "$g/demo/tokenizer" --wrap-docs --quiet --output "$g/shards/part-0" "$g/demo/corpus/part-0.jsonl"
  rm -rf "$g/demo"
  target/release/os-mix --weights "1.0 $g/shards/part-0" --seq-len 4096 --samples 512 --output "$g/mix"
  cp ../shared/bench/hf_baseline.py "$g/"
  objcopy --strip-debug target/release/os-train bench/out/gpu/os-train
  exit 0
fi
out="${1:-${OUT:-bench/out/train}}"
bin=${OS_TRAIN_BIN:-bench/out/gpu/os-train}
[ -x "$bin" ] || bin=target/release/os-train
py="${PYTHON:-python3}"
mkdir -p "$out"
# The store names its shards by absolute path: point it at this checkout.
rm -rf "$out/mix" && cp -r bench/out/gpu/train/mix "$out/mix"
sed -i "s|\"prefix\": \".*/bench/out/gpu/train/shards/|\"prefix\": \"$PWD/bench/out/gpu/train/shards/|" "$out/mix/manifest.json"
{ echo "host: $(hostname)  date: $(date -u +%F' '%T' UTC')"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } | tee "$out/machine.txt"
IFS=';' read -ra variants <<< "${OS_VARIANTS:---recompute none}"
i=0
for v in "${variants[@]}"; do
  i=$((i+1)); run="$out/os-train-$i"; rm -rf "$run"
  # shellcheck disable=SC2086
  "$bin" --config bench/train/train.toml --run-dir "$run" --data "$out/mix" $v > "$run.log.jsonl" 2> "$run.err" || { echo "os-train $v failed:"; tail -20 "$run.err"; continue; }
  "$py" - "$run/log.jsonl" "$v" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])][3:]  # 3 warm-up steps, as hf_baseline
t = sum(r["tokens"] for r in rows) / sum(r["step_time_s"] for r in rows)
f = rows[0]["tflops"] / rows[0]["tokens_per_s"]
mean = lambda k: sum(r[k] for r in rows) / len(rows)
print(json.dumps(dict(tool="os-train", flags=sys.argv[2], steps=len(rows), tokens_per_s=round(t), tflops=round(t * f, 1),
      mfu_vs_989=round(t * f / 989, 4), peak_gib=round(max(r["peak_memory_gib"] for r in rows), 1),
      peak_allocated_gib=round(max(r.get("peak_allocated_gib") or 0 for r in rows), 1),
      step_s=round(mean("step_time_s"), 4), fwd_bwd_s=round(mean("fwd_bwd_s"), 4), optimizer_s=round(mean("optimizer_s"), 4),
      data_wait_s=round(mean("data_wait_s"), 5), loss_first=rows[0]["loss"], loss_last=rows[-1]["loss"])))
PY
done | tee "$out/os-train.jsonl"
if [ "${HF:-1}" != 0 ]; then
  hf_default='[{"experts": "grouped_mm", "bf16_params": false, "compile": true}]'
  VARIANTS="${HF_VARIANTS:-$hf_default}" MBS='[4]' \
    "$py" bench/train/hf_reserved.py 2>&1 | grep -v Warning | tee "$out/hf.jsonl"
fi
