#!/usr/bin/env bash
# Model parity on the GPU machine: os-eval score vs transformers at the full OpenSeek-Small-v1 shape, bf16.
#   bench/model/run.sh [OUT_DIR [EXTRA parity.py ARGS]]   (OUT_DIR defaults to $OUT, else bench/out/model)
# Runs both weight inits (see parity.py --init); figures in OUT_DIR/{scaled,hf}/parity.json.
# Uses the stripped copy bench/out/gpu/os-eval when present (the one carried to the device machine),
# else target/release/os-eval; python is the one on PATH (on the GPU machine: /opt/torch/.venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-bench/out/model}}"
bin=bench/out/gpu/os-eval
[ -x "$bin" ] || bin=target/release/os-eval
[ -x "$bin" ] || { echo "run.sh: no os-eval binary (build with 'make build')" >&2; exit 66; }
py="${PYTHON:-python3}"
mkdir -p "$out"
{ echo "host: $(hostname)  date: $(date -u +%F' '%T' UTC')"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; echo "python: $(command -v "$py")"; } | tee "$out/machine.txt"
for init in scaled hf; do
  mkdir -p "$out/$init"
  "$py" bench/model/parity.py --os-eval "$bin" --out "$out/$init" --device cuda --batch 4 --seq 2048 --init "$init" "${@:2}" \
    2>&1 | tee "$out/$init/parity.log"
done
