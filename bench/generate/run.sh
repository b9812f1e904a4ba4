#!/usr/bin/env bash
# Greedy generation at the full OpenSeek-Small-v1 shape on the GPU machine: openseek-model vs transformers.
#   bench/generate/run.sh [OUT_DIR [EXTRA generate.py ARGS]]   (OUT_DIR defaults to $OUT, else bench/out/generate)
# Uses bench/out/gpu/greedy (a stripped copy of target/release/examples/greedy, the one carried to the
# device machine) when present, else target/release/examples/greedy; python is $PYTHON or python3 on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-bench/out/generate}}"
bin=bench/out/gpu/greedy
[ -x "$bin" ] || bin=target/release/examples/greedy
[ -x "$bin" ] || { echo "run.sh: no greedy binary (cargo build --release -p openseek-model --example greedy)" >&2; exit 66; }
py="${PYTHON:-python3}"
mkdir -p "$out"
{ echo "host: $(hostname)  date: $(date -u +%F' '%T' UTC')"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; "$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } | tee "$out/machine.txt"
"$py" bench/generate/generate.py --greedy "$bin" --out "$out" "${@:2}" 2>&1 | grep -v "Loading weights\|Writing model" | tee "$out/generate.log"
