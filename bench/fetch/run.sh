#!/usr/bin/env bash
# os-fetch vs huggingface_hub.snapshot_download, same local mock Hub (hub + CDN listeners on
# 127.0.0.1), same files, fresh cache directories. Reports MB/s of each and the ratio.
#
# usage: bench/fetch/run.sh [FILES] [BYTES_PER_FILE] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/../.."
FILES=${1:-4}
BYTES=${2:-$((128 * 1024 * 1024))}
REPEATS=${3:-3}
PY=${OPENSEEK_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "the project venv is missing at $PY; run make venv" >&2; exit 66; }

cargo build --release -q -p os-fetch -p openseek-fetch --example mock_hub --features openseek-fetch/mock-hub
OS_FETCH=target/release/os-fetch
WORK=$(mktemp -d)
trap 'exec 3>&-; rm -rf "$WORK"' EXIT

# The server lives as long as fd 3 (its stdin) is open.
coproc SERVER { target/release/examples/mock_hub "$FILES" "$BYTES"; }
exec 3>&"${SERVER[1]}"
read -r _ ENDPOINT <&"${SERVER[0]}"
TOTAL=$((FILES * BYTES))
echo "mock hub at $ENDPOINT: $FILES files x $BYTES bytes = $((TOTAL / 1000000)) MB; $(nproc) cores"

mbps() { python3 -c "print(f'{$TOTAL / 1e6 / $1:.1f}')"; }
best_os=1e9
best_py=1e9
for i in $(seq 1 "$REPEATS"); do
  rm -rf "$WORK/os" "$WORK/py"
  t0=$(date +%s.%N)
  HF_ENDPOINT=$ENDPOINT HF_HOME=$WORK/os "$OS_FETCH" bench/files --quiet > /dev/null
  t1=$(date +%s.%N)
  os_s=$(python3 -c "print($t1 - $t0)")
  py_s=$(HF_ENDPOINT=$ENDPOINT HF_HOME=$WORK/py HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_TELEMETRY=1 \
         "$PY" bench/fetch/snapshot_download.py bench/files 8)
  # Same bytes on both sides.
  if ! diff -rq "$WORK/os/hub/models--bench--files/snapshots" "$WORK/py/hub/models--bench--files/snapshots" > /dev/null; then
    echo "os-fetch and snapshot_download produced different snapshots" >&2; exit 1
  fi
  printf 'run %d: os-fetch %.2fs (%s MB/s)   snapshot_download %.2fs (%s MB/s)\n' "$i" "$os_s" "$(mbps "$os_s")" "$py_s" "$(mbps "$py_s")"
  best_os=$(python3 -c "print(min($best_os, $os_s))")
  best_py=$(python3 -c "print(min($best_py, $py_s))")
done
echo "best: os-fetch $(mbps "$best_os") MB/s, snapshot_download $(mbps "$best_py") MB/s, ratio $(python3 -c "print(f'{$best_py / $best_os:.2f}')")x"
