#!/usr/bin/env bash
# os-train's CUDA fast paths one by one (on the device machine, after `bench/train/run.sh prepare`
# here): for each ';'-separated entry of ABLATE, `NAME=fast paths off (debug.disable)=os-train flags`,
# one bench/train/run.sh pass (os-train only); TRACE=1 adds a run whose third step is profiled
# (debug.trace) and summarised by bench/train/trace_summary.py.
#   ABLATE='new=;old=moe_fused,head_grad,grad_none;rc2==--recompute 0,1' bench/train/ablate.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-bench/out/ablate}}"
py="${PYTHON:-python3}"
mkdir -p "$out"
IFS=';' read -ra entries <<< "${ABLATE:-all=}"
for e in "${entries[@]}"; do
  name="${e%%=*}"; rest="${e#*=}"; off="${rest%%=*}"; flags=""
  [ "$rest" != "$off" ] && flags="${rest#*=}"
  echo "== $name: debug.disable=$off ${flags:-(no flags)}"
  HF=0 OS_VARIANTS="${flags:---recompute none} --debug.disable=$off" bench/train/run.sh "$out/$name" | grep -v '^host\|H100'
done
if [ "${TRACE:-0}" = 1 ]; then
  bin=bench/out/gpu/os-train; [ -x "$bin" ] || bin=target/release/os-train
  rm -rf "$out/trace-run"
  "$bin" --config bench/train/train.toml --run-dir "$out/trace-run" --debug.trace "$out/trace.json" --debug.profile true \
    --data "$out/$name/mix" --train-iters 6 > /dev/null 2> "$out/trace.err" || tail -5 "$out/trace.err"
  grep "profile" "$out/trace.err" | tail -1
  "$py" bench/train/trace_summary.py "$out/trace.json" 40
  gzip "$out/trace.json"
fi
