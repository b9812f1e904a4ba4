#!/usr/bin/env bash
# Speed and peak RSS of os-soup vs mergekit (PyPI, CPU) on the same inputs: three bf16
# Llama-shaped checkpoints plus a base (~HIDDEN/LAYERS/VOCAB below; defaults ~130 MB each),
# merged with linear and ties. Prints wall seconds, peak RSS and the ratios mergekit / os-soup.
# Usage: bench/soup/run.sh [WORKDIR]   (env HIDDEN, LAYERS, VOCAB to resize)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${OPENSEEK_PYTHON:-$ROOT/.venv/bin/python}
SOUP=${OPENSEEK_BIN_DIR:-$ROOT/target/release}/os-soup
W=${1:-$(mktemp -d)}
HIDDEN=${HIDDEN:-1024} LAYERS=${LAYERS:-6} VOCAB=${VOCAB:-16000}
[ -x "$SOUP" ] || { echo "build os-soup first: cargo build --release -p os-soup" >&2; exit 66; }
[ -d "$W/m/base" ] || "$PY" "$ROOT/tests/python/soup_mergekit.py" make "$W/m" --models 3 --dtype bfloat16 \
    --hidden "$HIDDEN" --layers "$LAYERS" --vocab "$VOCAB"
du -sh "$W/m/base" | sed 's/^/input size per model: /'
M=$W/m
cat > "$W/linear.yaml" <<Y
merge_method: linear
models: [{model: $M/m1, parameters: {weight: 0.5}}, {model: $M/m2, parameters: {weight: 0.3}}, {model: $M/m3, parameters: {weight: 0.2}}]
Y
cat > "$W/ties.yaml" <<Y
merge_method: ties
base_model: $M/base
models: [{model: $M/m1, parameters: {weight: 0.7, density: 0.5}}, {model: $M/m2, parameters: {weight: 0.4, density: 0.3}}, {model: $M/m3, parameters: {weight: 0.5, density: 0.8}}]
dtype: float32
out_dtype: bfloat16
Y
measure() { # label command... -> "seconds rss_kb"
    /usr/bin/time -f "%e %M" -o "$W/time.txt" "$@" >/dev/null 2>"$W/err.txt" || { cat "$W/err.txt" >&2; exit 1; }
    cat "$W/time.txt"
}
printf "%-8s %10s %10s %12s %12s %8s %8s\n" method soup_s mk_s soup_rss_MB mk_rss_MB speedup mem_ratio
for m in linear ties; do
    rm -rf "$W/os_$m" "$W/mk_$m"
    read -r ts rs < <(measure "$SOUP" --config "$W/$m.yaml" --out "$W/os_$m" --no-hash -q)
    read -r tm rm_ < <(measure "$PY" "$ROOT/tests/python/soup_mergekit.py" mergekit "$W/$m.yaml" "$W/mk_$m")
    awk -v m=$m -v ts=$ts -v tm=$tm -v rs=$rs -v rm=$rm_ 'BEGIN{printf "%-8s %10.2f %10.2f %12.1f %12.1f %7.2fx %7.2fx\n", m, ts, tm, rs/1024, rm/1024, tm/ts, rm/rs}'
done
